"""Command line: parse, call the library, print (``quantsense --help``).

Every bad input exits 2 with one line on stderr, checked by the library after the model loads and before the
first evaluation; Ctrl-C exits 130 and says how to resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quantsense.cli.parser import build_parser, task_settings
from quantsense.config import DEFAULT_STORE
from quantsense.errors import QuantsenseError

PHASES_OF = {
    "baseline": ("baseline",),
    "sensitivity": ("baseline", "sensitivity"),
    "plot": ("baseline", "sensitivity"),
    "proxies": ("baseline", "proxies"),
    "mixed": ("baseline", "mixed"),
    "ablation": ("baseline", "ablation"),
    "run": ("baseline", "sensitivity", "proxies", "mixed", "ablation"),
}


def _say(text: str = "") -> None:
    print(text, flush=True)


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

    if args.group_size and args.weight_granularity != "per_group":
        raise QuantsenseError("--group-size needs --weight-granularity per_group")
    scheme = QuantConfig(
        bits=8,
        symmetric=not args.asymmetric,
        granularity=args.weight_granularity,
        group_size=args.group_size if args.weight_granularity == "per_group" else None,
    )
    return StudyOptions(
        model=args.model,
        data=args.data,
        task=args.task,
        device=args.device,
        dtype=args.dtype,
        stream_blocks=args.stream_blocks,
        blocks_regex=args.blocks_regex,
        store=_store(args),
        fresh=args.fresh,
        quiet=args.quiet,
        seed=args.seed,
        scheme=scheme,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        settings=task_settings(args),
        imatrix=args.imatrix,
        embedding=args.embedding,
        runtime_activations=args.runtime_activations,
    )


def _check_out(args) -> None:
    """--out must be a folder we can write (or, for a GGUF export, a file path that does not exist yet)."""
    from quantsense.exporters import EMBEDDING_REFUSAL
    from quantsense.io import check_output

    if args.command == "export" and getattr(args, "embedding", None):
        raise QuantsenseError(EMBEDDING_REFUSAL)
    if getattr(args, "out", None):
        export = args.command == "export"
        single = args.command == "imatrix" or (export and _writer(args).single_file)
        check_output(args.out, single_file=single, empty_folder=export)
    if args.command == "plot" and not args.out and Path("sensitivity.png").exists():
        raise QuantsenseError(
            "sensitivity.png already exists here; pass --out DIR or remove it (plot never overwrites silently)"
        )


def _writer(args):
    from quantsense.exporters import export_target

    return export_target(args.export_format)


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


def _stream_note(ws) -> None:
    """Say so when the blocks are read from the model's files as they run (--stream-blocks), with what stays."""
    stream = ws.units.stream
    if stream is None:
        return
    resident = sum(p.numel() * p.element_size() for p in ws.model.parameters() if not p.is_meta)
    block = sum(p.numel() for p in ws.units.blocks[0].parameters()) * _element_size(stream.dtype)
    dtype = str(stream.dtype).removeprefix("torch.")
    _say(
        f"Blocks streamed from the model's files (--stream-blocks): {ws.units.num_blocks} blocks of "
        f"{block / 1e9:.2f} GB ({dtype}) read as each runs; {resident / 1e9:.2f} GB stays in memory."
    )


def _element_size(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _store_note(ws) -> None:
    stats = ws.engine.stats
    if stats.from_store and not stats.computed:
        _say(
            f"All {stats.from_store} evaluation(s) came from the results store {ws.options.store} (nothing recomputed; "
            f"they took {stats.stored_seconds:.1f} s to compute when first run)."
        )
    elif stats.computed:
        where = f"; all saved in {ws.options.store}" if ws.options.store else ""
        _say(
            f"{stats.computed} evaluation(s) computed in {stats.seconds:.1f} s, {stats.from_store} came from the store{where}."
        )


def _printer(command: str):
    """``on_phase`` for the library: print each phase's text as it finishes."""
    from quantsense.visualization import summary as text

    texts = {
        "baseline": text.baseline_text,
        "proxies": text.proxies_text,
        "ablation": text.ablation_text,
        "frontier": text.frontier_text,
        "sensitivity": None if command == "proxies" else text.sensitivity_text,
        "mixed": lambda r: text.plans_text(r, r["mixed"]["rows"], r["mixed"].get("skipped")),
        "export": lambda r: text.export_text(r["export"]),
        "ranking": lambda r: (
            f"Block ranking at {r['ranking']['format']}, most sensitive first: {r['ranking']['blocks']}"
        ),
    }

    def show(phase: str, result) -> None:
        if texts.get(phase) is not None:
            _say(texts[phase](result.to_dict()))

    return show


def _reduced(args) -> bool | str:
    """Reduced sweeps for allocations (named by their --estimate) and sequential sweeps of linear units by default
    (block sweeps, the reference study's table: all the data unless --sequential); all of it: --exhaustive or ray."""
    if getattr(args, "executor", "local") == "ray" or getattr(args, "exhaustive", True):
        return False
    if args.command in ("allocate", "frontier"):
        return args.estimate
    return getattr(args, "sequential", False) or args.unit == "linear"


def _budgets(args) -> list | None:
    from quantsense.mixed_precision.allocation import Budget, parse_size

    if args.command == "frontier":
        return [Budget(avg_bits=b) for b in dict.fromkeys(args.budgets)] if args.budgets else None
    if args.max_size_of is not None:
        return None  # the preset's own budget (_presets)
    if args.max_size is not None:
        return [Budget(max_bytes=parse_size(args.max_size))]
    return [Budget(avg_bits=args.avg_bits)]


def _run(args, ws):
    """The library call for the command; None when it only prints."""
    from quantsense import study

    show = _printer(args.command)
    if args.command == "imatrix":
        from quantsense.backends.llama_cpp.calibrate import imatrix_text, make_imatrix

        if not args.out:
            raise QuantsenseError("imatrix needs --out FILE.gguf (the importance matrix file to write)")
        _say(imatrix_text(*make_imatrix(ws, args.out)))
        return None
    if args.command == "export":
        if args.emit == "llama-quantize":
            _say(study.llama_quantize_command(ws, args.plan_file))
            return None
        if not args.out:
            raise QuantsenseError("export needs --out (a folder for torchao, a .gguf file for gguf)")
        return study.run_export(ws, args.plan_file, args.out, args.export_format, not args.no_verify, on_phase=show)
    if args.command in ("allocate", "frontier"):
        from quantsense.backends.llama_cpp.plans import plan_from_gguf
        from quantsense.search import run_frontier

        presets = args.preset if args.command == "frontier" else [args.max_size_of] if args.max_size_of else []
        given = {f"file:{Path(p).name}": plan_from_gguf(ws, p) for p in args.plan_from_gguf}  # read before any work
        return run_frontier(
            ws,
            _budgets(args),
            args.candidates,
            args.unit,
            args.tie,
            args.objective,
            on_phase=show,
            reduced=_reduced(args),
            presets=presets,
            outside=args.outside or ("allocate" if presets else "fp32"),
            given=given,
        )
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731  (flags a command may lack)
    request = study.StudyRequest(
        formats=get("formats"),
        unit=get("unit", "block"),
        views=get("views", ("only",)),
        include_extra=get("include_extra", False),
        rank_by=get("rank_by", "kl"),
        blocks=get("blocks"),
        plan_files=get("plan", []),
        calibration_data=get("calibration_data"),
        calibration_size=get("calibration_size", 128),
        phases=PHASES_OF[args.command],
        rank_format=get("rank_format"),
        ablation_format=get("ablation_format"),
        ablation_block=get("block"),
        reduced=_reduced(args),
    )
    return study.run_study(ws, request, on_phase=show)


def _list_units(args) -> None:
    from quantsense.models.units import discover_units
    from quantsense.tasks import make_task

    task = make_task(args.task, **task_settings(args))
    units = discover_units(
        task.load_model(args.model, args.device, dtype=args.dtype, quiet=args.quiet, stream=args.stream_blocks).model,
        args.blocks_regex,
    )
    total = sum(u.numel for u in units.units.values())
    _say(f"{units.num_blocks} blocks under {units.block_prefix}; {len(units.units)} units, {total:,} weights")
    _say(f"{'block':>5}  {'kind':9}  {'shape':14}  {'params':>11}  name")
    for name, unit in units.units.items():
        block = "-" if unit.block is None else unit.block
        tied = f" (tied: {', '.join(unit.tied_to)})" if unit.tied_to else ""
        _say(
            f"{block:>5}  {unit.kind:9}  {str(tuple(unit.shape)):14}  {unit.numel:>11,}  {name}"
            f"{' [transposed]' if unit.transposed else ''}{tied}"
        )


def _write_outputs(args, results: dict) -> None:
    if args.command == "plot":
        from quantsense.visualization.plots import sensitivity_bars

        _say(f"Wrote {sensitivity_bars(results, Path(args.out or '.') / 'sensitivity.png')}")
        return
    if not args.out:
        return
    from quantsense.visualization.results_folder import write_results_folder

    folder = Path(args.out)
    if args.command == "export" and _writer(args).single_file:
        folder = folder.parent / f"{folder.stem}-report"  # beside the exported file
    written = write_results_folder(folder, results)
    plan = folder / "plan.json" if args.command == "allocate" and (folder / "plan.json").is_file() else None
    _say(
        f"Wrote {len(written)} {'report ' if args.command == 'export' else ''}files to {written[0].parent} (open report.html)"
        + (f"; the plan to export: {plan}" if plan else "")
    )


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
        if args.command == "quantize":
            from quantsense.cli.quantize import run

            return run(args)
        if args.command == "units":
            _list_units(args)
            return 0
        _check_out(args)
        from quantsense.workspace import open_workspace

        options = _options(args)
        store = options.store
        ws = open_workspace(options)
        _stream_note(ws)
        result = _run(args, ws)
        _store_note(ws)
        if result is not None:
            _write_outputs(args, result.to_dict())
        return 0
    except QuantsenseError as exc:
        print(f"quantsense: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"in the results store {store}" if store else "nowhere (no store was in use)"
        print(
            f"\nquantsense: interrupted. Finished evaluations are kept {where}; run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    finally:
        if ws is not None:
            ws.close()
