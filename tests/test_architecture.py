"""The shape of the code: folders import downwards only and no module imports itself back, even inside a function;
only a task module knows which task it is; only a format family's module knows which kind of format it holds; a
runtime (llama.cpp, ONNX Runtime, torchao) lives in its own folder under backends/, reached from outside only through
the registries it fills, and llama.cpp's type facts sit in one table; export targets take explicit inputs; ruff
keeps the style. Each rule is an AST check that names the offending line.

``QUANTSENSE_ARCH_ROOT`` points the checks at another checkout's ``src/quantsense`` (to show they catch old code)."""

import ast
import os
import re
from pathlib import Path


import quantsense

PACKAGE = Path(os.environ.get("QUANTSENSE_ARCH_ROOT") or Path(quantsense.__file__).resolve().parent)
TASK_WORDS = {"causal", "classification", "sst2", "wikitext"}  # task names and model kinds
TASK_KEYS = {"drop", "perplexity", "delta_nll", "correct", "scored_tokens", "examples", "tokens", "accuracy"}
HEAD_CLASSES = {"ClassificationHead", "CausalLMHead"}
FORMAT_CLASSES = {"QuantConfig", "GGUFFormat"}
GGUF_NAMES = {"q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f16", "bf16"}
LABEL_FIELDS = {"plan", "unit", "format", "label", "name", "group"}  # names for people, never parsed back
WORKSPACE_TOOLS = {"plans.py", "calibrate.py", "quantize.py", "presets.py"}  # backend modules that work on a workspace
CHECK_SCRIPTS = ("verify_export.py", "verify_gguf.py", "torchao_check.py", "gguf_check.py")  # standalone, no quantsense


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def _inside(rel: str, *folders: str) -> bool:
    return any(rel == f or rel.startswith(f"{f}/") for f in folders)


def _where(rel: str, node: ast.AST, source: list[str]) -> str:
    return f"{rel}:{node.lineno}: {source[node.lineno - 1].strip()}"


def _offenders(rule, skip=lambda rel: False) -> list[str]:
    found = []
    for path, rel, tree in _modules():
        if skip(rel) or rel.endswith(CHECK_SCRIPTS):
            continue
        source = path.read_text().splitlines()
        found += [_where(rel, node, source) for node in ast.walk(tree) if rule(node, rel)]
    return found


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for _, rel, tree in _modules():
        here = _part("quantsense." + rel.removesuffix(".py").replace("/", "."))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantsense."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("quantsense.")]
            for name in names:
                if _part(name) != here:
                    graph.setdefault(here, set()).add(_part(name))
    return graph


def test_folder_import_graph_has_no_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(trail + [node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])
    assert "config" in graph  # the graph was really built


def _module_name(rel: str) -> str:
    return (
        "quantsense." + rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if rel != "__init__.py"
        else "quantsense"
    )


def _imported(node: ast.AST, known: set[str]) -> list[str]:
    """The quantsense modules an import statement loads: ``from a.b import c`` is ``a.b.c`` when that is a module."""
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantsense"):
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return subs if len(subs) == len(node.names) else [*subs, node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("quantsense")]
    return []


def _module_graph() -> dict[str, set[str]]:
    """Module -> the quantsense modules it imports anywhere: at module level, inside functions, under TYPE_CHECKING."""
    trees = {_module_name(rel): tree for _, rel, tree in _modules()}
    known = set(trees)
    return {
        name: {m for node in ast.walk(tree) for m in _imported(node, known) if m != name and m in known}
        for name, tree in trees.items()
    }


def test_no_module_imports_itself_back():
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        if state.get(node) == 1:
            cycles.append(" -> ".join(trail[trail.index(node) :] + [node]))
            return
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])
    assert len(graph) > 50 and "quantsense.workspace" in graph  # the graph was really built
    assert not cycles, "modules that import each other (move the shared part down, or pass it in):\n" + "\n".join(
        cycles
    )


# ------------------------------------------------------------------ backends: one folder per runtime


def _backend(rel: str) -> str | None:
    return rel.split("/")[1] if rel.startswith("backends/") and rel.count("/") >= 2 else None


def test_only_its_own_backend_imports_a_runtime_package():
    """Nothing outside backends/ imports a runtime's package by name, and no backend imports another: the core reaches a
    runtime through the registries it fills (formats, exporters, presets, calibration), found by discovery
    (``load_backends``). The CLI is the composition root: its llama.cpp commands (imatrix, quantize, --plan-from-gguf)
    call that backend."""
    known = set(_module_graph())

    def rule(node, rel):
        names = [m for m in _imported(node, known) if m.startswith("quantsense.backends.")]
        return any(m.split(".")[2] != _backend(rel) for m in names)

    offenders = _offenders(rule, skip=lambda rel: _inside(rel, "cli"))
    assert not offenders, "a runtime's package imported from outside it:\n" + "\n".join(offenders)


def _type_names() -> set[str]:
    from quantsense.backends.llama_cpp.ggml_types import TYPES

    return set(TYPES)


def test_no_module_beside_a_check_script_shadows_what_it_imports():
    """A check script runs as a file in a fresh interpreter, so its folder comes first on ``sys.path``: a sibling named
    like a standard-library module or an installed package (``types.py``, ``gguf.py``) would be imported instead."""
    import importlib.util
    import sys

    offenders = []
    for path, rel, _ in _modules():
        if rel.endswith(CHECK_SCRIPTS):
            for sibling in path.parent.iterdir():
                name = sibling.stem if sibling.suffix == ".py" else sibling.name if sibling.is_dir() else None
                if (
                    name
                    and not name.startswith("_")
                    and (name in sys.stdlib_module_names or importlib.util.find_spec(name) is not None)
                ):
                    offenders.append(f"{sibling.relative_to(PACKAGE)} (beside {rel})")
    assert not offenders, "modules that shadow an import of a check script:\n" + "\n".join(offenders)


def test_llama_cpp_type_facts_live_in_one_table():
    """Block sizes, bytes, code bits, fallbacks, imatrix needs and activation types of llama.cpp's types are rows of
    ``backends/llama_cpp/ggml_types.py``: a second table keyed by (or listing) three or more type names is refused."""
    types = _type_names()

    def rule(node, rel):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            keys = node.keys if isinstance(node, ast.Dict) else node.elts
            return len({k.value for k in keys if isinstance(k, ast.Constant)} & types) >= 3
        return isinstance(node, ast.FunctionDef) and node.name == "ggml_type"

    # a task's default formats are names it chooses, not facts about them
    offenders = _offenders(rule, skip=lambda rel: rel == "backends/llama_cpp/ggml_types.py" or _inside(rel, "tasks"))
    assert not offenders, "llama.cpp type facts outside backends/llama_cpp/ggml_types.py:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ tasks


def _task_branch(node, rel) -> bool:
    """A comparison with a task name or model kind, a table keyed by them, a task's row key tested for presence,
    the retired model_kind / TASK_FOR_KIND / .causal names, a concrete output head, or a second Task class."""
    if isinstance(node, ast.Compare):
        literals = _strings(node)
        if literals & TASK_WORDS:
            return True
        return (
            any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
            and isinstance(node.left, ast.Constant)
            and node.left.value in TASK_KEYS
        )
    if isinstance(node, (ast.Dict, ast.Tuple, ast.List, ast.Set)):
        keys = node.keys if isinstance(node, ast.Dict) else node.elts
        return len({k.value for k in keys if isinstance(k, ast.Constant)} & TASK_WORDS) >= 2
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return name in ("model_kind", "TASK_FOR_KIND", "TASK_KINDS", "causal", "is_lm") or (
            name in HEAD_CLASSES and not _inside(rel, "evaluation")
        )
    return isinstance(node, ast.ClassDef) and node.name == "Task"


def test_only_task_modules_know_which_task_it_is():
    offenders = _offenders(_task_branch, skip=lambda rel: _inside(rel, "tasks"))
    assert not offenders, "task decided outside tasks/:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ formats


def _format_branch(node, rel) -> bool:
    """``.family`` asked, an isinstance on a format class, a closed Union of them, a format name's prefix or regex
    tested, a second list of GGUF names, or a family's shape rule ("blocks of 32") written down elsewhere."""
    if isinstance(node, ast.Attribute) and node.attr == "family":
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
        checks_scheme = "scheme" in _names(node.args[0])  # the integer grid option is a QuantConfig by definition
        return len(node.args) == 2 and bool(_names(node.args[1]) & FORMAT_CLASSES) and not checks_scheme
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Union":
        return bool(_names(node.slice) & FORMAT_CLASSES)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith":
        return bool(_strings(node) & {"q", "int", "iq"})
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return "blocks of 32" in node.value or bool(re.search(r"\bint\|", node.value) and "q" in node.value)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
        keys = node.keys if isinstance(node, ast.Dict) else node.elts
        return len({k.value for k in keys if isinstance(k, ast.Constant)} & GGUF_NAMES) >= 3
    return False


def test_only_a_format_family_knows_which_format_it_is():
    offenders = _offenders(_format_branch, skip=lambda rel: _inside(rel, "quantization/formats", "tasks", "backends"))
    assert not offenders, "format kind decided outside its registry entry:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ exports, results, sizes


def test_export_targets_take_explicit_inputs():
    """Writers never reach into a workspace (``ws``) or its engine; quantization/ writes no files. In a backend, only
    the modules that work on a workspace (:data:`WORKSPACE_TOOLS`: presets and plans on a model, the imatrix command,
    the one-command quantize) take one."""

    def rule(node, rel):
        if isinstance(node, ast.arg) and node.arg == "ws":
            return True
        return isinstance(node, ast.ImportFrom) and node.module == "quantsense.workspace"

    def skip(rel):
        return not _inside(rel, "exporters", "quantization", "backends") or rel.rsplit("/", 1)[-1] in WORKSPACE_TOOLS

    offenders = _offenders(rule, skip=skip)
    assert not offenders, "\n".join(offenders)


def test_reports_read_fields_not_labels():
    """summary, plots and report.html read the results' typed fields: no regex over names, no label split apart."""

    def rule(node, rel):
        if isinstance(node, ast.Import):
            return any(a.name == "re" for a in node.names)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr in ("split", "rsplit", "partition"):
                return bool((_strings(func.value) | _names(func.value)) & LABEL_FIELDS)
        return False

    offenders = _offenders(rule, skip=lambda rel: not _inside(rel, "visualization"))
    assert not offenders, "\n".join(offenders)


def test_ruff_format_and_lint_pass():
    """ruff, as pyproject.toml sets it (format, and lint with pycodestyle and pyflakes, 120 columns), over the package,
    the tests, the benchmarks, the scripts and the experiments."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for args in (["format", "--check"], ["check"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "src", "tests", "benchmarks", "scripts", "experiments"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"


def test_cli_task_choices_and_flags_are_the_registry():
    from quantsense.cli import build_parser
    from quantsense.tasks import TASKS

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    actions = {a.dest: a for a in run._actions}
    assert set(actions["task"].choices) == set(TASKS)
    for task in TASKS.values():
        for setting in task.settings_spec:
            assert setting.flag in actions[setting.name].option_strings
