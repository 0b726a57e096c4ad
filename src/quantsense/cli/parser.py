"""The command line's flags, built from the registries: tasks (``--task`` and each task's settings), formats
(what ``--formats`` accepts) and export targets (``export --format``)."""

from __future__ import annotations

import argparse
import math
import os

from quantsense.config import (
    DEFAULT_STORE,
    DEFAULT_TASK,
    GRANULARITIES,
    LOSS_METRICS,
    REFERENCE_MODEL,
    UNIT_KINDS,
    VIEWS,
)
from quantsense.errors import QuantsenseError
from quantsense.exporters import export_targets
from quantsense.quantization.formats import format_vocabulary
from quantsense.tasks import TASKS


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default where it has one (not "None" or "False")."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Bad flags give one line on stderr and exit code 2, never a usage dump or a traceback; no prefix matching."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _integer_at_least(minimum: int, kind: str):
    """An argparse type: an integer >= ``minimum``, refused in words (``kind``) otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {value}")
        return value

    return parse


_positive = _integer_at_least(1, "positive")
_non_negative = _integer_at_least(0, "non-negative")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _format_name(text: str) -> str:
    """A format name as typed (4, int4, q4_0, f16): checked now, resolved against the model later."""
    from quantsense.quantization.formats import parse_format

    try:
        parse_format(text)
    except QuantsenseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _preset(text: str) -> str:
    """A llama.cpp preset name (any case), checked now."""
    from quantsense.mixed_precision.presets import preset_name

    try:
        return preset_name(text)
    except QuantsenseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _task_setting_flags(group) -> None:
    """One flag per task setting, from the task registry (a flag shared by tasks appears once)."""
    owners: dict[str, list] = {}
    for task in TASKS.values():
        for setting in task.settings_spec:
            owners.setdefault(setting.flag, []).append((task.name, setting))
    for flag, pairs in owners.items():
        setting = pairs[0][1]
        default = "" if setting.default is None else f" (default: {setting.default})"
        names = "/".join(name for name, _ in pairs)
        group.add_argument(
            flag,
            dest=setting.name,
            type=_integer_at_least(
                setting.minimum, "positive" if setting.minimum == 1 else f"at least {setting.minimum}"
            ),
            help=f"{names}: {setting.help}{default}",
        )


def task_settings(args) -> dict:
    """The task settings given on the command line (the task refuses one it does not take)."""
    return {
        s.name: getattr(args, s.name)
        for task in TASKS.values()
        for s in task.settings_spec
        if getattr(args, s.name, None) is not None
    }


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default=os.environ.get("QUANTSENSE_MODEL", REFERENCE_MODEL),
        help="hub id, local model directory or .gguf file",
    )
    g.add_argument(
        "--task",
        choices=tuple(TASKS),
        default=DEFAULT_TASK,
        help="; ".join(f"{name}: {task.summary}" for name, task in TASKS.items()),
    )
    g.add_argument(
        "--data", default=os.environ.get("QUANTSENSE_DATA"), help="; ".join(t.data_help for t in TASKS.values())
    )
    _task_setting_flags(g)
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="dtype of the unquantized reference model (auto: float32 on CPU, the model's own on CUDA)",
    )
    g.add_argument(
        "--stream-blocks",
        choices=("auto", "on", "off"),
        default="auto",
        help="keep each block's weights in the model's files (memory-mapped) until the block runs, so a model larger "
        "than memory opens: on, off, or auto (on when the weights would take over half of this machine's memory); "
        "the numbers are the same either way",
    )
    g.add_argument(
        "--blocks-regex", help="regex over module names matching the transformer blocks, for unknown architectures"
    )
    g.add_argument(
        "--imatrix",
        help="importance matrix file (GGUF, from 'quantsense imatrix' or llama-imatrix): the "
        "llama.cpp formats whose quantizer takes one (q4_0..q5_1, K, IQ4) weight their rounding by it",
    )
    q = p.add_argument_group("formats (the integer grid int<b> names use; the embedding)")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric (zero point) instead of symmetric")
    q.add_argument("--weight-granularity", choices=GRANULARITIES, default="per_channel", help="one scale per ...")
    q.add_argument("--group-size", type=_positive, help="input features per scale with --weight-granularity per_group")
    q.add_argument(
        "--embedding",
        type=_format_name,
        help="also quantize the token embedding in this format in every measured "
        "plan (strategies, allocations, uniform plans; not in sweeps), e.g. ort-int8 for an ONNX Runtime export",
    )
    q.add_argument(
        "--runtime-activations",
        action="store_true",
        help="also round each quantized linear's input as the format's runtime does in its products (llama.cpp: "
        "8-bit blocks), so losses are the runtime's own rather than the weights' alone",
    )
    r = p.add_argument_group("results")
    r.add_argument(
        "--store",
        default=os.environ.get("QUANTSENSE_STORE"),
        help=f"SQLite results store (default: {DEFAULT_STORE}, or OUT/store.sqlite for 'run')",
    )
    r.add_argument("--no-store", action="store_true", help="keep nothing between runs")
    r.add_argument("--fresh", action="store_true", help="recompute even what the store already holds")
    r.add_argument("--seed", type=_non_negative, default=0, help="bootstrap seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--out", help="results folder: results.json, CSV tables, PNG figures, summary.md, report.html")
    x = p.add_argument_group("execution")
    x.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray actors, each loading the model once (pip install -e '.[ray]')",
    )
    x.add_argument("--workers", type=_positive, default=2, help="Ray actors (one GPU each with --device cuda)")
    x.add_argument(
        "--ray-address", help="connect to this Ray cluster (auto or HOST:PORT); default: start one on this machine"
    )
    return p


def _unit_flag(p) -> None:
    p.add_argument(
        "--unit", choices=UNIT_KINDS, default="block", help="what one unit is: a whole block or one linear layer"
    )


def _sensitivity_flags(p) -> None:
    p.add_argument(
        "--formats",
        "--bits",
        dest="formats",
        type=_format_name,
        nargs="+",
        help=f"formats to sweep: {format_vocabulary()}; default: "
        + ", ".join(f"{' '.join(t.default_formats)} for {n}" for n, t in TASKS.items()),
    )
    _unit_flag(p)
    p.add_argument(
        "--views",
        nargs="+",
        choices=VIEWS,
        default=["only"],
        help="only: this unit quantized; all_but: all others quantized",
    )
    p.add_argument(
        "--include-extra", action="store_true", help="also embeddings and the classifier head (--unit linear)"
    )
    p.add_argument("--blocks", type=int, nargs="+", help="sweep only the units inside these block indices")
    p.add_argument("--rank-by", choices=LOSS_METRICS, default="kl", help="kl: mean KL; loss: the task's loss")


def _sequential_flag(p) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--exhaustive",
        action="store_true",
        help="measure every unit on all the data (the default for --unit block, and what --executor ray always does)",
    )
    how.add_argument(
        "--sequential",
        action="store_true",
        help="measure each unit on a growing share of the data, stopped once its interval overlaps no other "
        "unit's (its tier decided; the default for --unit linear)",
    )


def _calibration_flags(p, required: bool) -> None:
    p.add_argument(
        "--calibration-data",
        required=required,
        help="file to draw calibration examples from (e.g. SST-2 train.tsv); evaluation sentences are excluded"
        + ("" if required else "; with it, 'run' adds the proxy report"),
    )
    p.add_argument("--calibration-size", type=_positive, default=128, help="calibration examples")


def _allocation_flags(p) -> None:
    p.add_argument(
        "--candidates",
        type=_format_name,
        nargs="+",
        help="formats to choose from, FP32 always an option too; default: "
        + ", ".join(f"{' '.join(t.default_candidates)} for {n}" for n, t in TASKS.items()),
    )
    _unit_flag(p)
    p.add_argument(
        "--tie", help="regex over unit names inside a block; matching units share one format (e.g. 'query|key|value')"
    )
    p.add_argument(
        "--objective",
        choices=LOSS_METRICS,
        default="kl",
        help="sum of single-unit mean KL (kl) or of the task's loss (loss)",
    )
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="measure every (unit, format) pair on all the data, as --executor ray always does (default: a "
        "reduced sweep that measures each unit once on a data segment, estimates the rest and measures "
        "where a plan hinges on it)",
    )
    p.add_argument(
        "--estimate",
        choices=("weight-error", "fisher"),
        default="weight-error",
        help="how the reduced sweep estimates what it does not measure: each unit measured once and its "
        "other formats scaled by their weight errors, or every pair's KL predicted from one forward and "
        "backward pass, a few units measured (default: %(default)s)",
    )
    p.add_argument(
        "--plan-from-gguf",
        action="append",
        default=[],
        metavar="FILE",
        help="also measure the type assignment of this GGUF file (a preset's, llama-quantize --target-size's); "
        "a budget it fits gets it instead of an allocation that measures worse (repeatable)",
    )
    p.add_argument(
        "--outside",
        choices=("allocate", "preset", "fp32"),
        help="the token embedding and an untied output head: allocate them too, measured like any unit (the "
        "default with a llama.cpp preset's size: the budget is then the preset's whole size), keep the "
        "preset's own types there, or leave them unquantized (the default otherwise; or --embedding's format)",
    )


def _rank_format_flag(p) -> None:
    p.add_argument(
        "--rank-format",
        type=_format_name,
        help="format whose block ranking drives it (default: the lowest "
        "swept format, else " + " / ".join(t.default_ablation_format for t in TASKS.values()) + ")",
    )


def build_parser() -> argparse.ArgumentParser:
    from quantsense import __version__

    parser = _Parser(prog="quantsense", description="Layer-wise quantization sensitivity analysis for transformers.")
    parser.add_argument("--version", action="version", version=f"quantsense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    sub.add_parser("baseline", parents=[common], help="phase 1: the unquantized model's accuracy or perplexity")
    sens = sub.add_parser("sensitivity", parents=[common], help="phase 2: each unit alone in each format")
    _sensitivity_flags(sens)
    _sequential_flag(sens)
    mixed = sub.add_parser("mixed", parents=[common], help="phase 3: mixed-precision strategies and plan files")
    mixed.add_argument("--plan", action="append", default=[], help="also evaluate this plan JSON file (repeatable)")
    _rank_format_flag(mixed)
    abl = sub.add_parser("ablation", parents=[common], help="only the least sensitive block quantized")
    _rank_format_flag(abl)
    abl.add_argument("--block", type=int, help="use this block instead of the least sensitive one")
    abl.add_argument(
        "--format",
        dest="ablation_format",
        type=_format_name,
        help="its format (default: the low level of the ranking format's family, e.g. int4 or q4_0)",
    )
    plot = sub.add_parser("plot", parents=[common], help="per-unit sensitivity bar chart (PNG)")
    _sensitivity_flags(plot)
    _sequential_flag(plot)
    prox = sub.add_parser("proxies", parents=[common], help="cheap proxies and their rank correlation with the sweep")
    _sensitivity_flags(prox)
    _calibration_flags(prox, required=True)
    run = sub.add_parser("run", parents=[common], help="the whole study into one results folder")
    _sensitivity_flags(run)
    _sequential_flag(run)
    _calibration_flags(run, required=False)
    run.add_argument("--plan", action="append", default=[], help="also evaluate this plan JSON file (repeatable)")
    alloc = sub.add_parser(
        "allocate", parents=[common], help="best format per unit under a size budget (exact MILP), measured"
    )
    budget = alloc.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--avg-bits", type=_positive_float, help="average stored bits per block linear weight, scales included"
    )
    budget.add_argument("--max-size", help="whole-model size, e.g. 20MB or 18MiB")
    budget.add_argument(
        "--max-size-of",
        metavar="PRESET",
        type=_preset,
        help="the size of a llama.cpp preset (Q3_K_M, "
        "Q4_K_M...): its whole size (or with --outside preset its bits per block linear weight and its own "
        "types outside the blocks); the preset is measured beside",
    )
    _allocation_flags(alloc)
    front = sub.add_parser("frontier", parents=[common], help="allocate over many budgets and measure every plan")
    front.add_argument(
        "--budgets",
        type=_positive_float,
        nargs="+",
        help="average bits per weight to solve for (default: each uniform candidate's size and the midpoints)",
    )
    front.add_argument(
        "--preset",
        nargs="+",
        default=[],
        metavar="PRESET",
        type=_preset,
        help="also measure these llama.cpp presets (Q3_K_M, Q4_K_M, Q5_K_M...), each with an allocation at its size",
    )
    _allocation_flags(front)
    exp = sub.add_parser("export", parents=[common], help="write a plan as a real quantized model and verify it")
    exp.add_argument("plan_file", metavar="PLAN", help="plan JSON (from 'quantsense allocate' or by hand)")
    exp.add_argument(
        "--format",
        dest="export_format",
        choices=export_targets(),
        default="torchao",
        help="torchao: a transformers checkpoint (int formats); gguf: a llama.cpp file (GGUF formats, Llama models)",
    )
    exp.add_argument(
        "--emit", choices=("llama-quantize",), help="print the llama-quantize --tensor-type arguments for the plan"
    )
    exp.add_argument("--no-verify", action="store_true", help="skip the fresh-process checks")
    sub.add_parser(
        "imatrix", parents=[common], help="collect llama.cpp's importance matrix on --data into --out FILE.gguf"
    )
    units = sub.add_parser(
        "units", parents=[common], help="list the blocks and units quantsense finds (no data needed)"
    )
    units.set_defaults(no_data=True)
    rep = sub.add_parser("report", help="rebuild report.html of a results folder from its results.json")
    rep.add_argument("folder", metavar="DIR")
    rep.add_argument("--tolerance", type=_positive_float, help="also name the smallest plan whose loss is within this")
    from quantsense.cli.quantize import add_parser

    add_parser(sub, _Parser)
    return parser
