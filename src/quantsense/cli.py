"""Command line: thin subcommands over the library (``quantsense --help``).

Every bad input exits 2 with one line on stderr, checked after the model loads and before the first
evaluation; Ctrl-C exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from quantsense.config import DEFAULT_STORE, DEFAULT_TASK, GRANULARITIES, LOSS_METRICS, REFERENCE_MODEL, UNIT_KINDS, VIEWS
from quantsense.errors import QuantsenseError

TASK_NAMES = ("sst2", "wikitext")  # checked against the registry in tests (importing it here would cost start-up time)
DATA_HELP = ("sst2: a .tsv/.csv/.jsonl/.parquet with 'sentence' (or 'text') and 'label' (default: GLUE SST-2 validation via "
             "the datasets package); wikitext: a plain-text file such as wiki.test.raw (default: WikiText-2 test via datasets)")


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


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=os.environ.get("QUANTSENSE_MODEL", REFERENCE_MODEL),
                   help="hub id, local model directory or .gguf file")
    g.add_argument("--task", choices=TASK_NAMES, default=DEFAULT_TASK,
                   help="sst2: sentence classification accuracy; wikitext: causal-LM perplexity and per-token KL")
    g.add_argument("--data", default=os.environ.get("QUANTSENSE_DATA"), help=DATA_HELP)
    g.add_argument("--limit", type=_positive, help="sst2: use only the first N examples (quick runs)")
    g.add_argument("--max-length", type=_positive, default=512, help="sst2: truncate inputs to this many tokens")
    g.add_argument("--batch-tokens", type=_positive, default=1024,
                   help="sst2: padded tokens per length-sorted batch (1024 keeps activations in cache on small CPUs)")
    g.add_argument("--max-tokens", type=_positive, default=4096, help="wikitext: first N tokens of the text")
    g.add_argument("--context", type=_positive, default=1024, help="wikitext: window length in tokens")
    g.add_argument("--stride", type=_positive, default=512, help="wikitext: tokens between window starts")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="dtype of the unquantized reference model (auto: float32 on CPU, the model's own on CUDA)")
    g.add_argument("--blocks-regex", help="regex over module names matching the transformer blocks, for unknown architectures")
    q = p.add_argument_group("integer grid (what int<b> formats mean)")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric (zero point) instead of symmetric")
    q.add_argument("--weight-granularity", choices=GRANULARITIES, default="per_channel", help="one scale per ...")
    q.add_argument("--group-size", type=_positive, help="input features per scale with --weight-granularity per_group")
    r = p.add_argument_group("results")
    r.add_argument("--store", default=os.environ.get("QUANTSENSE_STORE"),
                   help=f"SQLite results store (default: {DEFAULT_STORE}, or OUT/store.sqlite for 'run')")
    r.add_argument("--no-store", action="store_true", help="keep nothing between runs")
    r.add_argument("--fresh", action="store_true", help="recompute even what the store already holds")
    r.add_argument("--seed", type=_non_negative, default=0, help="bootstrap seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--out", help="results folder: results.json, CSV tables, PNG figures, summary.md, report.html")
    x = p.add_argument_group("execution")
    x.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray actors, each loading the model once (pip install -e '.[ray]')")
    x.add_argument("--workers", type=_positive, default=2, help="Ray actors (one GPU each with --device cuda)")
    x.add_argument("--ray-address", help="connect to this Ray cluster (auto or HOST:PORT); default: start one on this machine")
    return p


def _unit_flag(p) -> None:
    p.add_argument("--unit", choices=UNIT_KINDS, default="block", help="what one unit is: a whole block or one linear layer")


def _sensitivity_flags(p) -> None:
    p.add_argument("--formats", "--bits", dest="formats", type=_format_name, nargs="+",
                   help="formats to sweep: bits (8 4, int8 = the integer grid) or GGUF (q8_0 q5_1 q5_0 q4_1 q4_0 f16 bf16); "
                        "default: int8 int4 for sst2, q8_0 q5_0 q4_0 for wikitext")
    _unit_flag(p)
    p.add_argument("--views", nargs="+", choices=VIEWS, default=["only"],
                   help="only: this unit quantized; all_but: all others quantized")
    p.add_argument("--include-extra", action="store_true", help="also embeddings and the classifier head (--unit linear)")
    p.add_argument("--blocks", type=int, nargs="+", help="sweep only the units inside these block indices")
    p.add_argument("--rank-by", choices=LOSS_METRICS, default="kl", help="kl: mean KL; loss: the task's loss")


def _calibration_flags(p, required: bool) -> None:
    p.add_argument("--calibration-data", required=required,
                   help="file to draw calibration examples from (e.g. SST-2 train.tsv); evaluation sentences are excluded"
                   + ("" if required else "; with it, 'run' adds the proxy report"))
    p.add_argument("--calibration-size", type=_positive, default=128, help="calibration examples")


def _allocation_flags(p) -> None:
    p.add_argument("--candidates", type=_format_name, nargs="+",
                   help="formats to choose from, FP32 always an option too; default: int2..int8 for sst2, "
                        "q4_0 q4_1 q5_0 q5_1 q8_0 f16 for wikitext")
    _unit_flag(p)
    p.add_argument("--tie", help="regex over unit names inside a block; matching units share one format (e.g. 'query|key|value')")
    p.add_argument("--objective", choices=LOSS_METRICS, default="kl",
                   help="sum of single-unit mean KL (kl) or of the task's loss (loss)")


def _rank_format_flag(p) -> None:
    p.add_argument("--rank-format", type=_format_name, help="format whose block ranking drives it (default: int4 / q4_0)")


def build_parser() -> argparse.ArgumentParser:
    from quantsense import __version__

    parser = _Parser(prog="quantsense", description="Layer-wise quantization sensitivity analysis for transformers.")
    parser.add_argument("--version", action="version", version=f"quantsense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    sub.add_parser("baseline", parents=[common], help="phase 1: the unquantized model's accuracy or perplexity")
    _sensitivity_flags(sub.add_parser("sensitivity", parents=[common], help="phase 2: each unit alone in each format"))
    mixed = sub.add_parser("mixed", parents=[common], help="phase 3: mixed-precision strategies and plan files")
    mixed.add_argument("--plan", action="append", default=[], help="also evaluate this plan JSON file (repeatable)")
    _rank_format_flag(mixed)
    abl = sub.add_parser("ablation", parents=[common], help="only the least sensitive block quantized")
    _rank_format_flag(abl)
    abl.add_argument("--block", type=int, help="use this block instead of the least sensitive one")
    abl.add_argument("--format", dest="ablation_format", type=_format_name, help="its format (default: int4 / q4_0)")
    plot = sub.add_parser("plot", parents=[common], help="per-unit sensitivity bar chart (PNG)")
    _sensitivity_flags(plot)
    prox = sub.add_parser("proxies", parents=[common], help="cheap proxies and their rank correlation with the sweep")
    _sensitivity_flags(prox)
    _calibration_flags(prox, required=True)
    run = sub.add_parser("run", parents=[common], help="the whole study into one results folder")
    _sensitivity_flags(run)
    _calibration_flags(run, required=False)
    run.add_argument("--plan", action="append", default=[], help="also evaluate this plan JSON file (repeatable)")
    alloc = sub.add_parser("allocate", parents=[common], help="best format per unit under a size budget (exact MILP), measured")
    budget = alloc.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=_positive_float, help="average stored bits per block linear weight, scales included")
    budget.add_argument("--max-size", help="whole-model size, e.g. 20MB or 18MiB")
    _allocation_flags(alloc)
    front = sub.add_parser("frontier", parents=[common], help="allocate over many budgets and measure every plan")
    front.add_argument("--budgets", type=_positive_float, nargs="+",
                       help="average bits per weight to solve for (default: each uniform candidate's size and the midpoints)")
    _allocation_flags(front)
    exp = sub.add_parser("export", parents=[common], help="write a plan as a real quantized model and verify it")
    exp.add_argument("plan_file", metavar="PLAN", help="plan JSON (from 'quantsense allocate' or by hand)")
    exp.add_argument("--format", dest="export_format", choices=("torchao", "gguf"), default="torchao",
                     help="torchao: a transformers checkpoint (int formats); gguf: a llama.cpp file (GGUF formats, Llama models)")
    exp.add_argument("--emit", choices=("llama-quantize",), help="print the llama-quantize --tensor-type arguments for the plan")
    exp.add_argument("--no-verify", action="store_true", help="skip the fresh-process checks")
    units = sub.add_parser("units", parents=[common], help="list the blocks and units quantsense finds (no data needed)")
    units.set_defaults(no_data=True)
    rep = sub.add_parser("report", help="rebuild report.html of a results folder from its results.json")
    rep.add_argument("folder", metavar="DIR")
    rep.add_argument("--tolerance", type=_positive_float, help="also name the smallest plan whose loss is within this")
    return parser


def _store(args) -> str | None:
    if args.no_store:
        return None
    if args.store:
        return args.store
    if args.command == "run" and args.out:
        return str(Path(args.out) / "store.sqlite")
    return DEFAULT_STORE


def _options(args):
    from quantsense.quantization.formats import QuantConfig
    from quantsense.workspace import StudyOptions

    scheme = QuantConfig(bits=8, symmetric=not args.asymmetric, granularity=args.weight_granularity,
                         group_size=args.group_size if args.weight_granularity == "per_group" else None)
    if args.group_size and args.weight_granularity != "per_group":
        raise QuantsenseError("--group-size needs --weight-granularity per_group")
    return StudyOptions(model=args.model, data=args.data, task=args.task, device=args.device, dtype=args.dtype,
                        blocks_regex=args.blocks_regex, store=_store(args), fresh=args.fresh, quiet=args.quiet,
                        seed=args.seed, scheme=scheme, limit=args.limit, max_length=args.max_length,
                        batch_tokens=args.batch_tokens, max_tokens=args.max_tokens, context=args.context, stride=args.stride,
                        executor=args.executor, workers=args.workers, ray_address=args.ray_address)


def _check_out(args) -> None:
    """--out must be a folder we can write (or, for a GGUF export, a file path that does not exist yet)."""
    from quantsense.io import check_output

    if getattr(args, "out", None):
        export = args.command == "export"
        check_output(args.out, single_file=export and args.export_format == "gguf", empty_folder=export)


def _quiet_third_party(quiet: bool) -> None:
    """Keep the terminal for quantsense's own output: other libraries' warnings go to ERROR level."""
    import logging

    for name in ("torchao", "torch.utils._pytree", "huggingface_hub", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import huggingface_hub.utils
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if quiet:
        transformers.utils.logging.disable_progress_bar()


def _say(text: str = "") -> None:
    print(text, flush=True)


def _store_note(ws) -> None:
    stats = ws.engine.stats
    if stats.from_store and not stats.computed:
        _say(f"All {stats.from_store} evaluation(s) came from the results store {ws.options.store} (nothing recomputed; "
             f"they took {stats.stored_seconds:.1f} s to compute when first run).")
    elif stats.computed:
        where = f"; all saved in {ws.options.store}" if ws.options.store else ""
        _say(f"{stats.computed} evaluation(s) computed in {stats.seconds:.1f} s, {stats.from_store} came from the store{where}.")


def _budgets(args) -> list | None:
    from quantsense.mixed_precision.allocation import Budget, parse_size

    if args.command == "frontier":
        return [Budget(avg_bits=b) for b in dict.fromkeys(args.budgets)] if args.budgets else None
    if args.max_size is not None:
        return [Budget(max_bytes=parse_size(args.max_size))]
    return [Budget(avg_bits=args.avg_bits)]


def _validate(args, ws) -> dict:
    """Everything that can be checked before the first evaluation; returns what it resolved."""
    from quantsense import study

    resolved = {}
    defaults = {"formats": ws.task.default_formats, "candidates": ws.task.default_candidates,
                "rank_format": ws.task.default_ablation_format, "ablation_format": ws.task.default_ablation_format}
    for name, default in defaults.items():
        if hasattr(args, name):  # every format the command will use, checked against every layer's shape now
            value = getattr(args, name) or default
            checked = ws.formats(value) if isinstance(value, (list, tuple)) else ws.format(value)
            if getattr(args, name):
                resolved[name] = checked
    for index in [getattr(args, "block", None), *(getattr(args, "blocks", None) or [])]:
        if index is not None:
            ws.units.block_units(index)
    resolved["plans"] = [study.load_plan(ws, path) for path in getattr(args, "plan", [])]
    if getattr(args, "calibration_data", None):
        study.calibration(ws, args.calibration_data, args.calibration_size)
    if args.command == "export":
        resolved["plan"] = study.load_plan(ws, args.plan_file)
        if args.export_format == "gguf" or args.emit:
            from quantsense.quantization.gguf_plan import gguf_tensor_types

            gguf_tensor_types(ws, resolved["plan"])  # a mapped architecture and tokenizer, GGUF formats only
    if args.command in ("allocate", "frontier"):
        candidates = resolved.get("candidates") or ws.formats(ws.task.default_candidates)
        resolved["budgets"] = _budgets(args)
        study.check_allocation(ws, resolved["budgets"] or [], candidates, args.unit, args.tie)  # from sizes alone
    return resolved


def _list_units(args) -> None:
    from quantsense.models.loading import load_model
    from quantsense.models.units import discover_units
    from quantsense.tasks import make_task

    task = make_task(args.task, max_tokens=args.max_tokens, context=args.context, stride=args.stride)
    loaded = load_model(args.model, task.model_kind, args.device, dtype=args.dtype, quiet=args.quiet)
    units = discover_units(loaded.model, args.blocks_regex)
    total = sum(u.numel for u in units.units.values())
    _say(f"{units.num_blocks} blocks under {units.block_prefix}; {len(units.units)} units, {total:,} weights")
    _say(f"{'block':>5}  {'kind':9}  {'shape':14}  {'params':>11}  name")
    for name, unit in units.units.items():
        block = "-" if unit.block is None else unit.block
        tied = f" (tied: {', '.join(unit.tied_to)})" if unit.tied_to else ""
        _say(f"{block:>5}  {unit.kind:9}  {str(tuple(unit.shape)):14}  {unit.numel:>11,}  {name}"
             f"{' [transposed]' if unit.transposed else ''}{tied}")


def _run_phases(args, ws, resolved):
    """The study phases the command asks for; prints as it goes; returns the StudyResult."""
    from quantsense import study
    from quantsense.results import StudyResult, provenance
    from quantsense.visualization import summary as text

    result = StudyResult(provenance(), ws.describe(), study.baseline(ws))
    _say(text.baseline_text(result.to_dict()))
    cmd = args.command
    if cmd == "baseline":
        return result
    if cmd in ("run", "sensitivity", "plot", "proxies"):
        result.sensitivity = study.sensitivity(ws, resolved.get("formats"), args.unit, args.views, args.include_extra,
                                               args.rank_by, args.blocks)
        if cmd != "proxies":
            _say(text.sensitivity_text(result.to_dict()))
    if cmd == "proxies" or (cmd == "run" and args.calibration_data):
        result.proxies = study.proxies(ws, args.calibration_data, args.calibration_size, result.sensitivity.formats, args.unit)
        _say(text.proxies_text(result.to_dict()))
    if cmd in ("mixed", "ablation", "run"):
        rank_fmt = resolved.get("rank_format") or (ws.format(result.sensitivity.lowest_format()) if result.sensitivity
                                                   else ws.format(ws.task.default_ablation_format))
        ranking = study.block_ranking(ws, rank_fmt)
        _say(f"Block ranking at {rank_fmt.name}, most sensitive first: {ranking}")
        if cmd in ("mixed", "run"):
            result.mixed = study.mixed(ws, ranking, getattr(args, "plan", []), rank_fmt.name)
            _say(text.plans_text(result.to_dict(), result.mixed.rows))
        if cmd in ("ablation", "run"):
            from quantsense.mixed_precision.strategies import Levels

            fmt = resolved.get("ablation_format") or Levels.for_family(rank_fmt, ws.options.scheme).low
            result.ablation = study.ablation(ws, ranking, fmt, getattr(args, "block", None))
            _say(text.ablation_text(result.to_dict()))
    return result


def _run_allocation(args, ws, resolved):
    from quantsense import study
    from quantsense.results import StudyResult, provenance
    from quantsense.visualization import summary as text

    result = StudyResult(provenance(), ws.describe(), study.baseline(ws))
    _say(text.baseline_text(result.to_dict()))
    result.frontier = study.frontier(ws, resolved["budgets"], resolved.get("candidates"), args.unit, args.tie, args.objective)
    _say(text.frontier_text(result.to_dict()))
    return result


def _run_export(args, ws, resolved):
    from quantsense import study
    from quantsense.results import StudyResult, provenance
    from quantsense.visualization import summary as text

    plan = resolved["plan"]
    if args.emit == "llama-quantize":
        from quantsense.quantization.gguf_plan import llama_quantize_command

        _say(llama_quantize_command(ws, plan))
        return None
    if not args.out:
        raise QuantsenseError("export needs --out (a folder for torchao, a .gguf file for gguf)")
    report = study.export(ws, plan, args.out, target=args.export_format, verify=not args.no_verify)
    _say(text.export_text(report))
    return StudyResult(provenance(), ws.describe(), study.baseline(ws), export=report)


def _write_outputs(args, results: dict) -> None:
    if args.command == "plot":
        from quantsense.visualization.plots import sensitivity_bars

        path = Path(args.out or ".") / "sensitivity.png"
        _say(f"Wrote {sensitivity_bars(results, path)}")
        return
    if not args.out:
        return
    from quantsense.visualization.summary import write_results_folder

    folder = Path(args.out)
    if args.command == "export" and args.export_format == "gguf":
        folder = folder.parent / f"{folder.stem}-report"  # beside the .gguf file
    written = write_results_folder(folder, results)
    _say(f"Wrote {len(written)} files to {written[0].parent} (open report.html)")


def _report(args) -> int:
    from quantsense.visualization.html_report import rebuild_report

    _say(f"Wrote {rebuild_report(Path(args.folder), tolerance=args.tolerance)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad flag (already reported in one line)
        return exc.code
    store, ws = None, None
    try:
        if args.command == "report":
            return _report(args)
        _quiet_third_party(args.quiet)
        if args.command == "units":
            _list_units(args)
            return 0
        _check_out(args)
        if args.command == "plot" and not args.out and Path("sensitivity.png").exists():
            raise QuantsenseError("sensitivity.png already exists here; pass --out DIR or remove it (plot never overwrites silently)")
        from quantsense.workspace import open_workspace

        options = _options(args)
        store = options.store
        ws = open_workspace(options)
        resolved = _validate(args, ws)
        if args.command == "export":
            result = _run_export(args, ws, resolved)
        elif args.command in ("allocate", "frontier"):
            result = _run_allocation(args, ws, resolved)
        else:
            result = _run_phases(args, ws, resolved)
        _store_note(ws)
        if result is not None:
            _write_outputs(args, result.to_dict())
        return 0
    except QuantsenseError as exc:
        print(f"quantsense: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"in the results store {store}" if store else "nowhere (no store was in use)"
        print(f"\nquantsense: interrupted. Finished evaluations are kept {where}; "
              "run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        if ws is not None:
            ws.close()


if __name__ == "__main__":
    sys.exit(main())
