"""Command line: thin subcommands over the library (``quantsense --help``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quantsense.config import GRANULARITIES, MAX_BITS, MIN_BITS, QuantConfig
from quantsense.errors import QuantsenseError

DEFAULT_STORE = os.path.join(os.path.expanduser("~"), ".cache", "quantsense", "results.sqlite")


class _Parser(argparse.ArgumentParser):
    """Bad flags give one line on stderr and exit code 2, never a usage dump or a traceback."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {text!r}") from None
    if not MIN_BITS <= value <= MAX_BITS:
        raise argparse.ArgumentTypeError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=os.environ.get("QUANTSENSE_MODEL", "distilbert-base-uncased-finetuned-sst-2-english"),
                   help="hub id, local model directory or .gguf file (default: the reference DistilBERT SST-2)")
    g.add_argument("--data", default=os.environ.get("QUANTSENSE_DATA"),
                   help="local .tsv/.csv/.jsonl/.parquet with 'sentence' (or 'text') and 'label'; default: GLUE SST-2 validation via datasets")
    g.add_argument("--limit", type=_positive, help="use only the first N examples (quick runs)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    g.add_argument("--max-length", type=_positive, default=512, help="truncate inputs to this many tokens")
    g.add_argument("--batch-tokens", type=_positive, default=1024,
                   help="padded tokens per batch (length-sorted batches; 1024 keeps activations in cache on small CPUs)")
    g.add_argument("--blocks-regex", help="regex over module names matching the transformer blocks, for unknown architectures")
    g.add_argument("--task", choices=("sst2", "wikitext"), default="sst2",
                   help="sst2: sentence classification accuracy; wikitext: causal-LM perplexity and per-token KL on a text file")
    g.add_argument("--max-tokens", type=_positive, default=4096, help="wikitext: first N tokens of the text")
    g.add_argument("--context", type=_positive, default=1024, help="wikitext: window length in tokens")
    g.add_argument("--stride", type=_positive, default=512, help="wikitext: tokens between window starts")
    q = p.add_argument_group("quantization scheme")
    q.add_argument("--asymmetric", action="store_true", help="asymmetric (zero point) instead of symmetric")
    q.add_argument("--weight-granularity", choices=GRANULARITIES, default="per_channel")
    q.add_argument("--group-size", type=_positive, help="group size for --weight-granularity per_group")
    r = p.add_argument_group("results")
    r.add_argument("--store", default=os.environ.get("QUANTSENSE_STORE"),
                   help=f"SQLite results store (default: {DEFAULT_STORE}, or OUT/store.sqlite for 'run')")
    r.add_argument("--no-store", action="store_true", help="keep nothing between runs")
    r.add_argument("--fresh", action="store_true", help="recompute even what the store already holds")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--out", help="write results (JSON, CSV, PNG, Markdown) to this folder")
    return p


def _sensitivity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=_bits, nargs="+", default=[8, 4], help="bit-widths to sweep (default: 8 4)")
    p.add_argument("--granularity", choices=("block", "linear"), default="block", help="unit: whole blocks or each linear layer")
    p.add_argument("--views", nargs="+", choices=("only", "all_but"), default=None,
                   help="only: this unit quantized; all_but: all others quantized (default: only; both for linear)")
    p.add_argument("--include-extra", action="store_true", help="also embeddings and the classifier head (linear granularity)")
    p.add_argument("--blocks", type=int, nargs="+", help="sweep only the units inside these block indices")
    p.add_argument("--rank-by", choices=("kl_mean", "drop", "flip_rate"), default="kl_mean")


def _calibration_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--calibration-data", required=required,
                   help="file to draw calibration examples from (e.g. SST-2 train.tsv); evaluation sentences are excluded"
                   + ("" if required else "; with it, 'run' adds the proxy report"))
    p.add_argument("--calibration-size", type=_positive, default=128, help="calibration examples (default 128)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantsense", description="Layer-wise quantization sensitivity analysis for transformers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common()
    sub.add_parser("baseline", parents=[common], help="phase 1: FP32 accuracy")
    _sensitivity_flags(sub.add_parser("sensitivity", parents=[common], help="phase 2: each unit alone at each bit-width"))
    mixed = sub.add_parser("mixed", parents=[common], help="phase 3: mixed-precision strategies and plan files")
    mixed.add_argument("--plan", action="append", default=[], help="also evaluate this plan JSON file (repeatable)")
    mixed.add_argument("--rank-bits", type=_bits, default=4, help="bit-width whose block ranking drives the strategies")
    abl = sub.add_parser("ablation", parents=[common], help="only the least sensitive block at INT4")
    abl.add_argument("--rank-bits", type=_bits, default=4)
    abl.add_argument("--block", type=int, help="use this block instead of the least sensitive one")
    abl.add_argument("--bits", type=_bits, default=4, dest="ablation_bits")
    plot = sub.add_parser("plot", parents=[common], help="per-block sensitivity bar chart (PNG)")
    plot.add_argument("--bits", type=_bits, nargs="+", default=[8, 4])
    prox = sub.add_parser("proxies", parents=[common], help="cheap proxies and their rank correlation with the sweep")
    _sensitivity_flags(prox)
    _calibration_flags(prox, required=True)
    run = sub.add_parser("run", parents=[common], help="the whole study into one results folder")
    _sensitivity_flags(run)
    _calibration_flags(run, required=False)
    run.add_argument("--plan", action="append", default=[])
    alloc = sub.add_parser("allocate", parents=[common], help="best bit-width per unit under a size budget (exact MILP)")
    budget = alloc.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="average stored bits per block linear weight, scales included")
    budget.add_argument("--max-size", help="whole-model size, e.g. 20MB or 18MiB")
    _allocation_flags(alloc)
    front = sub.add_parser("frontier", parents=[common], help="allocate over many budgets and measure every plan")
    front.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0],
                       help="average bits per weight to solve for")
    _allocation_flags(front)
    exp = sub.add_parser("export", parents=[common], help="write a plan as a torchao-quantized checkpoint and verify it")
    exp.add_argument("plan_file", metavar="PLAN", help="plan JSON (from 'quantsense allocate' or by hand)")
    exp.add_argument("--no-verify", action="store_true", help="skip reloading, accuracy and latency checks")
    sub.add_parser("units", parents=[common], help="list the blocks and units that quantsense found")
    return parser


def _allocation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", type=_bits, nargs="+", default=[2, 3, 4, 5, 6, 8],
                   help="bit-widths to choose from (FP32 is always an option)")
    p.add_argument("--granularity", choices=("block", "linear"), default="linear", help="allocate per block or per linear unit")
    p.add_argument("--tie", help="regex over unit names inside a block; matching units share one bit-width (e.g. 'query|key|value')")
    p.add_argument("--objective", choices=("kl", "drop"), default="kl", help="sum of single-unit mean KL (default) or accuracy drop")


def _options(args):
    from quantsense.study import StudyOptions

    scheme = QuantConfig(bits=8, symmetric=not args.asymmetric, granularity=args.weight_granularity,
                         group_size=args.group_size)
    if args.no_store:
        store = None
    elif args.store:
        store = args.store
    elif args.command == "run" and args.out:
        store = str(Path(args.out) / "store.sqlite")
    else:
        store = DEFAULT_STORE
    return StudyOptions(model=args.model, data=args.data, limit=args.limit, device=args.device,
                        max_length=args.max_length, batch_tokens=args.batch_tokens, blocks_regex=args.blocks_regex,
                        store=store, fresh=args.fresh, quiet=args.quiet, seed=args.seed, scheme=scheme, task=args.task,
                        max_tokens=args.max_tokens, context=args.context, stride=args.stride)


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


def _run_study(args, ws) -> dict:
    from quantsense import study
    from quantsense.visualization import summary as text
    from quantsense.visualization.report import provenance

    results = {"provenance": provenance(), "workspace": ws.describe()}
    cmd = args.command
    for index in [getattr(args, "block", None), *(getattr(args, "blocks", None) or [])]:
        if index is not None:
            ws.units.block_units(index)  # a bad index fails before any evaluation runs
    results["baseline"] = study.baseline(ws)
    _say(text.baseline_text(results["baseline"]))
    if cmd == "baseline":
        return results
    if cmd in ("sensitivity", "run", "proxies"):
        views = tuple(args.views or (("only", "all_but") if args.granularity == "linear" else ("only",)))
        sens = study.sensitivity(ws, args.bits, args.granularity, views, args.include_extra, args.rank_by, args.blocks)
    else:
        bits = sorted({*getattr(args, "bits", []), getattr(args, "rank_bits", 4)}, reverse=True) if cmd == "plot" else [args.rank_bits]
        sens = study.sensitivity(ws, bits)
    results["sensitivity"] = sens
    if cmd in ("sensitivity", "run", "plot"):
        _say(text.sensitivity_text(sens))
    if cmd in ("proxies", "run") and args.calibration_data:
        results["proxies"] = study.proxies(ws, args.calibration_data, args.calibration_size, args.bits, args.granularity)
        _say(text.proxies_text(results["proxies"]))
    if cmd in ("sensitivity", "plot", "proxies"):
        return results
    block_sens = sens if sens["granularity"] == "block" else study.sensitivity(ws, [min(args.bits)])
    ranking = study.block_ranking(block_sens)
    _say(f"Block ranking, most sensitive first: {ranking}")
    if cmd in ("mixed", "run"):
        results["mixed"] = study.mixed(ws, ranking, args.plan)
        _say(text.plans_text(results["mixed"]["rows"]))
    if cmd in ("ablation", "run"):
        bits = getattr(args, "ablation_bits", 4)
        if getattr(args, "block", None) is not None:
            ranking = [b for b in ranking if b != args.block] + [args.block]
        results["ablation"] = study.ablation(ws, ranking, bits)
        _say(text.ablation_text(results["ablation"]))
    return results


def _budgets(args):
    from quantsense.mixed_precision.allocation import Budget, parse_size

    if args.command == "frontier":
        return [Budget(avg_bits=b) for b in args.budgets]
    if args.max_size is not None:
        return [Budget(max_bytes=parse_size(args.max_size))]
    return [Budget(avg_bits=args.avg_bits)]


def _run_allocation(args, ws) -> dict:
    from quantsense import study
    from quantsense.visualization import summary as text
    from quantsense.visualization.report import provenance

    results = {"provenance": provenance(), "workspace": ws.describe(), "baseline": study.baseline(ws)}
    _say(text.baseline_text(results["baseline"]))
    fr = study.frontier(ws, _budgets(args), args.candidates, args.granularity, args.tie, args.objective)
    results["frontier"] = fr
    _say(text.frontier_text(fr))
    return results


def _run_export(args, ws) -> dict:
    from quantsense import study
    from quantsense.config import BlockPlan, Plan
    from quantsense.visualization import summary as text
    from quantsense.visualization.report import provenance, write_json

    plan = Plan.load(args.plan_file)
    if isinstance(plan, BlockPlan):
        plan = plan.resolve(ws.units.all_block_units())
    if not args.out:
        raise QuantsenseError("export needs --out DIR for the quantized checkpoint")
    report = study.export(ws, plan, args.out, verify=not args.no_verify)
    write_json(Path(args.out) / "quantsense_export.json", {"provenance": provenance(), **report})
    _say(text.export_text(report))
    return {"export": report}


def _list_units(ws) -> None:
    for name, unit in ws.units.units.items():
        block = "-" if unit.block is None else unit.block
        tied = f" (tied: {', '.join(unit.tied_to)})" if unit.tied_to else ""
        _say(f"{block:>3}  {unit.kind:9}  {tuple(unit.shape)!s:14}  {name}{' [transposed]' if unit.transposed else ''}{tied}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = None
    try:
        from quantsense.study import open_workspace
        from quantsense.visualization.summary import write_results_folder

        options = _options(args)
        _quiet_third_party(args.quiet)
        ws = open_workspace(options)
        if args.command == "units":
            _list_units(ws)
            return 0
        if args.command == "export":
            _run_export(args, ws)
            _store_note(ws)
            return 0
        if args.command in ("allocate", "frontier"):
            results = _run_allocation(args, ws)
        else:
            results = _run_study(args, ws)
        _store_note(ws)
        if args.command == "plot" and not args.out:
            args.out = "."
        if args.out:
            if args.command == "plot":
                from quantsense.visualization.plots import sensitivity_bars

                path = sensitivity_bars(results["sensitivity"]["rows"], Path(args.out) / "sensitivity.png")
                _say(f"Wrote {path}")
            else:
                written = write_results_folder(Path(args.out), results)
                _say(f"Wrote {len(written)} files to {args.out}")
        return 0
    except QuantsenseError as exc:
        print(f"quantsense: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        store = options.store if options else None
        where = f"in the results store {store}" if store else "nowhere (no store was in use)"
        print(f"\nquantsense: interrupted. Finished evaluations are kept {where}; "
              "run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
