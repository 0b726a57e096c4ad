"""The shape of the code: folders import downwards only, and only task modules know which task is which."""

import ast
import re
from pathlib import Path

import quantsense
from quantsense.cli import TASK_NAMES
from quantsense.tasks import TASKS

PACKAGE = Path(quantsense.__file__).resolve().parent


def _part(module: str) -> str:
    """The folder (or top-level module) a quantsense module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _part(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantsense."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("quantsense.")]
            for name in names:
                there = _part(name)
                if there != here:
                    graph.setdefault(here, set()).add(there)
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


def test_no_task_branches_outside_the_task_modules():
    """Nothing outside tasks/ asks which task it is or guesses it from a row's keys."""
    pattern = re.compile(r'\b(causal|is_lm|lm)\b\s*(?:=|\)|:|and|or|if)|"(drop|perplexity|delta_nll)" in |\.causal\b')
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "tasks" or path.name in ("verify_export.py", "verify_gguf.py"):
            continue  # the fresh-process verifiers are standalone scripts, one mode per model kind
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_cli_task_choices_are_the_registry():
    assert set(TASK_NAMES) == set(TASKS)
