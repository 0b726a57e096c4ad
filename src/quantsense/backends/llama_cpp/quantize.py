"""One command from a model to the shipped GGUF file (``quantsense quantize MODEL OUT.gguf --size-of Q4_K_M``).

On three disjoint token ranges of one text (or the importance matrix from its own text):

1. the importance matrix (collected on the first range unless ``--imatrix`` or ``--calibration-data`` gives one);
2. the plan: a reduced sweep and the exact allocation over every stored tensor (block linears, the token embedding,
   an untied output head) under the file size, measured as llama.cpp computes (``runtime_activations``), beside the
   candidate plans (the preset of ``--size-of``, the files of ``--plan-from-gguf``): the best measured plan within the
   size is written, so the result is never worse on the selection tokens than a plan it was given;
3. the file, written by quantsense's GGUF writer (ggml's own quantizers, the imatrix's weights), and scored in
   llama.cpp on the held-out range against the model's F32 file: mean KL with its 95 % block-bootstrap interval, the
   99th-percentile KL and the same-top-token share, as ``llama-perplexity --kl-divergence`` reports them, beside the
   preset's own file made by ``llama_model_quantize`` with the same imatrix;
4. the recipe: ``OUT.tensor-types.txt`` and the ``llama-quantize --tensor-type-file`` command that writes the same file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from quantsense.errors import QuantsenseError

from quantsense.backends.llama_cpp.ggml_types import ALLOCATION_CANDIDATES as CANDIDATES
from quantsense.sweeps.fisher import check_not_streamed

ALIGNMENT_SLACK = 32  # bytes per tensor a GGUF file may pad between tensors


def check_inputs(
    out, size, size_of, imatrix, calibration_data, tokens: dict[str, int] | None = None, context: int = 1024
) -> Path:
    """Everything about the request that needs no model, refused in one line before any work (``tokens``: the
    token count of each flag, e.g. ``{"--choose-tokens": 4096}``, checked against ``context`` for an interval)."""
    from quantsense.evaluation.statistics import MIN_BOOTSTRAP_BLOCKS
    from quantsense.io import check_output
    from quantsense.tasks.language_model import tokens_for_interval

    out = Path(out)
    if out.suffix != ".gguf":
        raise QuantsenseError(f"{out} does not end in .gguf; name the file to write, e.g. model-quantsense.gguf")
    check_output(out, single_file=True)
    beside = [out] + ([out.with_suffix(".imatrix.gguf")] if imatrix is None else [])
    for path in beside:
        if path.exists():
            raise QuantsenseError(f"{path} already exists; choose another file name or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise QuantsenseError(f"cannot write to {out.parent}; choose a folder you can write to")
    if (size is None) == (size_of is None):
        raise QuantsenseError(
            "give the file size: exactly one of --size (e.g. 105MB) or --size-of PRESET (e.g. Q4_K_M)"
        )
    if imatrix is not None and calibration_data is not None:
        raise QuantsenseError("--imatrix and --calibration-data both give the importance matrix: pass one")
    need = tokens_for_interval(context, context, MIN_BOOTSTRAP_BLOCKS)
    for flag, count in (tokens or {}).items():
        if count < need:
            raise QuantsenseError(
                f"{flag} {count} is too few for an interval at --context {context}: the mean KL's "
                f"95 % interval needs {MIN_BOOTSTRAP_BLOCKS} blocks of scored tokens; use {flag} "
                f"{need} or more, or a shorter --context"
            )
    from quantsense.backends.llama_cpp.writer import check_llama_cpp, llama_cpp_available
    from quantsense.backends.llama_cpp import ggml_lib

    ggml_lib.library()  # the K and IQ types and the scoring need llama-cpp-python
    if not llama_cpp_available():
        raise QuantsenseError(ggml_lib.INSTALL_HINT.replace("ggml formats need", "quantsense quantize needs"))
    check_llama_cpp()
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # a missing file is refused, naming it, when it is read
        return False


def token_ranges(imatrix_tokens: int, choose: int, score: int, own_imatrix: bool) -> dict[str, tuple[int, int]]:
    """(first token, tokens) of each use of the text: calibration (when the imatrix is collected from it), selection,
    held-out scoring; disjoint and in that order."""
    first = imatrix_tokens if own_imatrix else 0
    return {"imatrix": (0, imatrix_tokens), "choose": (first, choose), "score": (first + choose, score)}


def quantize(
    model: str,
    out: str | Path,
    data: str,
    size: str | None = None,
    size_of: str | None = None,
    imatrix: str | None = None,
    calibration_data: str | None = None,
    candidates=CANDIDATES,
    calibration_tokens: int = 8192,
    choose_tokens: int = 4096,
    score_tokens: int = 4096,
    context: int = 1024,
    plans_from=(),
    store: str | None = None,
    quiet: bool = False,
    score: bool = True,
    runtime_activations: bool = True,
    device: str = "auto",
    estimate: str = "fisher",
    say=print,
) -> dict:
    """Write ``model`` as a GGUF file of at most ``size`` bytes (or the size ``size_of``'s preset has on this model) at
    ``out``, as described in this module; returns the report (also written beside ``out`` as ``.quantsense.json``)."""
    import quantsense as qs
    from quantsense.mixed_precision.allocation import parse_size
    from quantsense.mixed_precision.presets import preset_name

    started = time.perf_counter()
    if calibration_data is not None and _same_file(calibration_data, data):
        calibration_data = None  # the imatrix from --data's own first tokens, selection and scoring after them
    counts = {"--choose-tokens": choose_tokens, **({"--score-tokens": score_tokens} if score else {})}
    out = check_inputs(out, size, size_of, imatrix, calibration_data, counts, context)
    target = parse_size(size) if size is not None else None
    preset = preset_name(size_of) if size_of is not None else None
    collect = imatrix is None
    ranges = token_ranges(calibration_tokens, choose_tokens, score_tokens, collect and calibration_data is None)
    common = dict(
        task="wikitext", context=context, stride=context, quiet=quiet, device=device, dtype="float32"
    )  # the F32 reference file's weights, whatever dtype the checkpoint was saved in
    imatrix_path = Path(imatrix) if imatrix else out.with_suffix(".imatrix.gguf")
    if collect:
        from quantsense.backends.llama_cpp.calibrate import imatrix_text, make_imatrix

        first, tokens = (0, calibration_tokens) if calibration_data else ranges["imatrix"]
        cal = qs.open_workspace(model, data=calibration_data or data, first_token=first, max_tokens=tokens, **common)
        say(imatrix_text(*make_imatrix(cal, imatrix_path)))
        del cal
    elif (
        calibration_data is None
    ):  # a given imatrix: select and score after the range it was collected on, if this text's
        ranges = _after_imatrix(str(imatrix_path), data, ranges)
    searching = time.perf_counter()  # the search's cost: from here (imatrix excluded) to the file written
    ws = qs.open_workspace(
        model,
        data=data,
        first_token=ranges["choose"][0],
        max_tokens=choose_tokens,
        store=store,
        imatrix=str(imatrix_path),
        runtime_activations=runtime_activations,
        **common,
    )
    if estimate == "fisher":
        check_not_streamed(ws.units)  # before any evaluation
    scorer = (
        qs.open_workspace(
            model,
            data=data,
            first_token=ranges["score"][0],
            max_tokens=score_tokens,
            imatrix=str(imatrix_path),
            **common,
        )
        if score
        else None
    )
    given = _given_plans(ws, plans_from)
    with tempfile.TemporaryDirectory(prefix=".quantsense-quantize-", dir=out.parent) as tmp:
        reference = _reference_gguf(ws, model, Path(tmp))
        chosen, report = _choose(ws, reference, target, preset, candidates, given, estimate, say)
        written = _write(ws, chosen, reference, out)
        report.update(written, search_seconds=time.perf_counter() - searching)
        report["recipe"] = _recipe(ws, chosen, out, reference)
        report.update(
            {
                "model": model,
                "data": data,
                "imatrix_data": calibration_data or data,
                "ranges": ranges,
                "imatrix": str(imatrix_path),
            }
        )
        out.with_suffix(".quantsense.json").write_text(
            json.dumps(report, indent=1, default=str)
        )  # kept if scoring fails
        if scorer is not None:
            report["scores"] = _score(ws, scorer, chosen, out, reference, preset, Path(tmp), say)
    report["seconds"] = time.perf_counter() - started
    out.with_suffix(".quantsense.json").write_text(json.dumps(report, indent=1, default=str))
    say(
        f"Wrote {out} ({written['file_bytes'] / 1e6:.2f} MB) and {out.with_suffix('.quantsense.json')}; "
        f"{report['seconds']:.0f} s in all"
    )
    return report


def _after_imatrix(path: str, data: str, ranges: dict) -> dict:
    """Selection and scoring ranges moved past the tokens a given imatrix was collected on, when it was this text's."""
    from quantsense.data.text import load_text
    from quantsense.backends.llama_cpp.imatrix_file import calibration_of

    cal = calibration_of(path)
    if not cal or cal["data"] != load_text(data).fingerprint():
        return ranges
    first = cal["first_token"] + cal["tokens"]
    (_, choose), (_, score) = ranges["choose"], ranges["score"]
    return {"imatrix": (cal["first_token"], cal["tokens"]), "choose": (first, choose), "score": (first + choose, score)}


def _given_plans(ws, paths) -> dict:
    from quantsense.backends.llama_cpp.plans import plan_from_gguf

    names = [Path(p).name for p in paths]
    return {f"file:{p if names.count(Path(p).name) > 1 else Path(p).name}": plan_from_gguf(ws, p) for p in paths}


def _reference_gguf(ws, model: str, folder: Path) -> Path:
    """The model as an F32 GGUF: the source of every file written and the reference every score is taken against."""
    out = folder / "reference-f32.gguf"
    if str(model).endswith(".gguf"):
        from quantsense.backends.llama_cpp.llama_quantize import llama_quantize

        return llama_quantize(model, out, ftype=0, nthread=2)  # LLAMA_FTYPE_ALL_F32: llama.cpp de-quantizes the source
    from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf

    return convert_hf_to_gguf(ws.model, ws.tokenizer, out, name=Path(str(model)).name)


def _file_bytes(ws, plan, reference: Path) -> int:
    from quantsense.backends.llama_cpp.gguf_file import predicted_gguf_bytes
    from quantsense.backends.llama_cpp.plans import unit_gguf_names

    names = unit_gguf_names(ws)
    types = {names[unit]: fmt.name for unit, fmt in plan.assignments}
    return predicted_gguf_bytes(reference, types, default_type=None, provenance=ws.imatrix.provenance())["file_bytes"]


def _choose(ws, reference: Path, target: int | None, preset: str | None, candidates, given: dict, estimate: str, say):
    """The plan to write: the allocation under the file size and every candidate plan within it, measured on the
    selection tokens; the lowest mean KL wins."""
    from quantsense.mixed_precision.presets import preset_plan
    from quantsense.mixed_precision.allocation import Budget
    from quantsense.quantization.plan import Plan
    from quantsense.quantization.size import model_bytes
    from quantsense.search import sweep_and_allocate
    from quantsense.study import evaluate_plans

    named = dict(given)
    if preset is not None:
        named[f"preset {preset}"] = preset_plan(ws, preset)
        target = _file_bytes(ws, named[f"preset {preset}"], reference)
    overhead = _file_bytes(ws, Plan(), reference) - model_bytes(ws.model, ws.units, Plan())  # header and padding
    tensors = len(ws.units.linear_units()) + 3 * ws.units.num_blocks
    budget = Budget(max_bytes=target - overhead - ALIGNMENT_SLACK * tensors)
    plans, sweep = sweep_and_allocate(ws, [budget], candidates, "linear", reduced=estimate, outside="allocate")
    allocation = plans[0][1]
    say(
        f"reduced sweep: {sweep.measured} of {sweep.pairs} (tensor, type) pairs measured, "
        f"{sweep.share:.1f} % of a full sweep's token evaluations"
    )
    named = {"allocated": allocation.plan, **named}
    fits = {n: _file_bytes(ws, p, reference) for n, p in named.items()}
    if fits["allocated"] > target:  # the budget left room for the header and padding: a bug if it ever happens
        raise QuantsenseError(
            f"the allocation came to {fits['allocated']:,} bytes as a file, over the {target:,} asked "
            "for; ask for a slightly smaller --size"
        )
    within = {n: p for n, p in named.items() if fits[n] <= target}
    sweep_record = {
        "estimate": getattr(sweep, "estimate", None),  # None: every pair measured (an exhaustive sweep)
        **{
            k: getattr(sweep, k)
            for k in ("pairs", "measured", "token_evaluations", "full_token_evaluations", "seconds")
        },
    }
    if len(within) == 1:  # nothing to choose between: the held-out score in llama.cpp (unless --no-score) measures it
        say(
            f"the allocation is the only plan within the size (predicted KL {allocation.predicted_loss:.4f}): nothing "
            "to choose between, so it is not measured on the selection tokens"
        )
        return allocation.plan, {
            "target_bytes": target,
            "preset": preset,
            "chosen": "allocated",
            "selection": [],
            "predicted_kl": allocation.predicted_loss,
            "sweep": sweep_record,
        }
    rows = evaluate_plans(ws, within, desc="candidate plans")
    best = min(rows, key=lambda r: r["kl_mean"])
    for row in rows:
        say(
            f"selection ({ws.batches.num_tokens:,} tokens): {row['plan']} KL {row['kl_mean']:.4f} "
            f"[{row['kl_ci_low']:.4f}, {row['kl_ci_high']:.4f}], {fits[row['plan']] / 1e6:.2f} MB"
            + (" <- written" if row is best else "")
        )
    if best["plan"] != "allocated":
        say(f"{best['plan']} measured lower than the allocation within the size, so it is the plan written")
    return named[best["plan"]], {
        "target_bytes": target,
        "preset": preset,
        "chosen": best["plan"],
        "selection": rows,
        "predicted_kl": allocation.predicted_loss,
        "sweep": sweep_record,
    }


def _write(ws, plan, reference: Path, out: Path) -> dict:
    from quantsense.backends.llama_cpp.gguf_file import write_gguf
    from quantsense.backends.llama_cpp.plans import unit_gguf_names

    names = unit_gguf_names(ws)
    types = {names[unit]: fmt.name for unit, fmt in plan.assignments}
    importance = {names[u]: f.importance(u) for u, f in plan.assignments if f.importance(u) is not None}
    written = write_gguf(
        reference, types, out, default_type=None, importance=importance, provenance=ws.imatrix.provenance()
    )
    (out.with_suffix(".plan.json")).write_text(json.dumps(plan.to_json_dict(), indent=1))
    return {
        "file_bytes": written["bytes"],
        "tensor_types": written["types"],
        "plan_file": str(out.with_suffix(".plan.json")),
    }


def _recipe(ws, plan, out: Path, reference: Path) -> dict:
    """``OUT.tensor-types.txt`` (one ``tensor=type`` per line, as ``--tensor-type-file`` reads) and the llama-quantize
    command that writes the same file from the model's F32 GGUF."""
    from quantsense.backends.llama_cpp.gguf_file import llama_quantize_args
    from quantsense.backends.llama_cpp.plans import unit_gguf_names

    names = unit_gguf_names(ws)
    planned = {names[unit]: fmt.name for unit, fmt in plan.assignments}
    args = llama_quantize_args({**{name: "f32" for name in names.values()}, **planned})  # unplanned tensors stay F32
    overrides = [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--tensor-type"]
    flags = [f"{args[i]} {args[i + 1]}" for i in range(0, len(args), 2) if args[i] != "--tensor-type"]
    path = out.with_suffix(".tensor-types.txt")
    path.write_text("\n".join(overrides) + "\n")
    command = (
        f"llama-quantize --pure --imatrix {ws.options.imatrix} --tensor-type-file {path} {' '.join(flags)} "
        f"MODEL-F32.gguf {out.name} q8_0"
    )
    return {"tensor_type_file": str(path), "command": command}


def _score(ws, scorer, plan, out: Path, reference: Path, preset: str | None, folder: Path, say) -> dict:
    """The written file (and the preset's own, made by llama.cpp) scored in llama.cpp on the held-out tokens."""
    from quantsense.backends.llama_cpp.llama_score import score_in_llama_cpp
    from quantsense.tasks.language_model import token_ids

    ids = token_ids(scorer.batches)
    files = {out.name: out}
    if preset is not None:
        from quantsense.backends.llama_cpp.llama_quantize import llama_quantize
        from quantsense.backends.llama_cpp.plans import imatrix_by_tensor
        from quantsense.backends.llama_cpp.presets import FTYPES

        importance = imatrix_by_tensor(ws)
        files[f"{preset} (llama.cpp)"] = llama_quantize(
            reference,
            folder / f"{preset}.gguf",
            FTYPES[preset],
            nthread=2,
            importance=importance,
            provenance=ws.imatrix.provenance(),
        )
    first, tokens = scorer.task.token_range(scorer.batches)
    scores = {}
    for name, path in files.items():
        found = score_in_llama_cpp(path, reference, ids, scorer.task.context, scorer.task.stride)
        scores[name] = {**found, "file_bytes": path.stat().st_size}
        say(
            f"llama.cpp on held-out tokens {first}..{first + tokens}: {name} {path.stat().st_size / 1e6:.2f} MB, mean KL "
            f"{found['kl_mean']:.4f} [95% CI {found['kl_ci_low']:.4f}, {found['kl_ci_high']:.4f}], 99th-percentile KL "
            f"{found['kl_p99']:.4f}, same top token {found['top1_agreement']:.1f} %, perplexity {found['perplexity']:.2f} "
            f"(F32 {found['reference_perplexity']:.2f})"
        )
    return scores
