"""Benchmark: quantsense allocations against llama.cpp's presets, both with the same imatrix, scored in llama.cpp.

For one model (a GGUF file or a Hugging Face directory) and each preset:

1. an importance matrix from tokens [0, C) of the text (``quantsense imatrix``);
2. the preset's file, written by llama.cpp itself (``llama_model_quantize``, the imatrix's weights passed in) from an
   F32 GGUF of the model, which is also the reference every score is taken against;
3. a quantsense allocation at the preset's size (its average bits per block linear, the preset's own types outside
   the blocks), chosen by a reduced sweep on tokens [C, C+A) and written by quantsense's GGUF writer;
4. both files scored in llama.cpp on held-out tokens [C+A, C+A+S): mean KL to the F32 file with a block-bootstrap
   95 % interval, perplexity, top-1 agreement; the simulation's KL on the same tokens beside them.

    python benchmarks/beat_presets.py --model SmolLM2-135M-Instruct.Q4_1.gguf --data wiki.test.raw \\
        --presets Q3_K_M Q4_K_M Q5_K_M --store results/beat-presets.sqlite
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import quantsense as qs
from quantsense.backends.llama_cpp.calibrate import make_imatrix
from quantsense.backends.llama_cpp.gguf_file import write_gguf
from quantsense.backends.llama_cpp.llama_quantize import llama_quantize
from quantsense.backends.llama_cpp.llama_score import score_in_llama_cpp
from quantsense.backends.llama_cpp.plans import imatrix_by_tensor, unit_gguf_names
from quantsense.backends.llama_cpp.presets import FTYPES
from quantsense.mixed_precision.presets import preset_name
from quantsense.quantization.plan import Plan
from quantsense.search import sweep_and_allocate, with_outside, with_presets
from quantsense.study import evaluate_plans
from quantsense.tasks.language_model import token_ids

CANDIDATES = ("q2_K", "q3_K", "q4_0", "iq4_xs", "iq4_nl", "q4_K", "q5_0", "q5_1", "q5_K", "q6_K", "q8_0")


def _workspace(args, first: int, tokens: int, imatrix: str | None, store: str | None):
    return qs.open_workspace(
        args.model,
        data=args.data,
        task="wikitext",
        first_token=first,
        max_tokens=tokens,
        context=args.context,
        stride=args.context,
        imatrix=imatrix,
        store=store,
        quiet=args.quiet,
    )


def reference_gguf(ws, model: str, folder: Path) -> Path:
    """The model as an F32 GGUF: llama.cpp de-quantizes a GGUF source; quantsense converts a Hugging Face directory."""
    out = folder / "reference-f32.gguf"
    if model.endswith(".gguf"):
        return llama_quantize(model, out, ftype=0, nthread=2)  # LLAMA_FTYPE_ALL_F32
    from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf

    return convert_hf_to_gguf(ws.model, ws.tokenizer, out, name=Path(model).name)


def write_plan(ws, plan: Plan, reference: Path, out: Path) -> Path:
    """``plan`` (every 2-D tensor of the file planned) written from the F32 reference by quantsense's GGUF writer."""
    names = unit_gguf_names(ws)
    types = {names[unit]: fmt.name for unit, fmt in plan.assignments}
    importance = {
        names[unit]: fmt.importance(unit) for unit, fmt in plan.assignments if fmt.importance(unit) is not None
    }
    provenance = ws.imatrix.provenance() if ws.imatrix is not None else None
    write_gguf(reference, types, out, default_type=None, importance=importance, provenance=provenance)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--presets", nargs="+", default=["Q3_K_M", "Q4_K_M", "Q5_K_M"])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--calibration-tokens", type=int, default=8192)
    p.add_argument("--choose-tokens", type=int, default=4096)
    p.add_argument("--score-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--store", help="results store for the allocation's sweep (resumable)")
    p.add_argument("--out", help="folder for the files (default: a temporary one)")
    p.add_argument("--exhaustive", action="store_true", help="measure every (linear, format) pair")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    presets = [preset_name(x) for x in args.presets]
    folder = Path(args.out or tempfile.mkdtemp(prefix="quantsense-presets-"))
    folder.mkdir(parents=True, exist_ok=True)
    cal_end, choose_end = args.calibration_tokens, args.calibration_tokens + args.choose_tokens
    started = time.perf_counter()

    cal_ws = _workspace(args, 0, args.calibration_tokens, None, None)
    imatrix_path = folder / "calibration.imatrix.gguf"
    if not imatrix_path.exists():
        make_imatrix(cal_ws, imatrix_path)
    reference = folder / "reference-f32.gguf"
    if not reference.exists():
        reference = reference_gguf(cal_ws, args.model, folder)
    del cal_ws
    choose = _workspace(args, cal_end, args.choose_tokens, str(imatrix_path), args.store)
    score = _workspace(args, choose_end, args.score_tokens, str(imatrix_path), args.store)
    print(
        f"{args.model}: imatrix on tokens 0..{cal_end}, plans chosen on tokens {cal_end}..{choose_end}, scored in "
        f"llama.cpp on tokens {choose_end}..{choose_end + args.score_tokens} (windows of {args.context}), KL against "
        f"the F32 GGUF; imatrix {choose.imatrix.fingerprint}"
    )

    budgets, named, outside = with_presets(choose, [], presets)
    presets_plans = {preset: named[f"preset {preset}"] for preset in presets}
    plans, record = sweep_and_allocate(choose, budgets, args.candidates, "linear", reduced=not args.exhaustive)
    record = record.to_dict()
    share = 100 * record["token_evaluations"] / record["full_token_evaluations"]
    print(
        f"allocation sweep ({record['mode']}): {record.get('measured', record['pairs'])} of {record['pairs']} (linear, format) "
        f"pairs measured, {share:.1f} % of a full sweep's token evaluations"
    )

    importance = imatrix_by_tensor(choose)  # as llama-quantize loads it
    rows = []
    for preset, budget, (label, allocation) in zip(presets, budgets, plans):
        allocated = with_outside(allocation.plan, budget, outside)
        preset_file = llama_quantize(
            reference,
            folder / f"{preset}-imatrix.gguf",
            FTYPES[preset],
            nthread=2,
            importance=importance,
            provenance=choose.imatrix.provenance(),
        )
        ours = write_plan(choose, allocated, reference, folder / f"quantsense-at-{preset}.gguf")
        simulated = {
            r["plan"]: r
            for r in evaluate_plans(
                score, {f"{preset}": presets_plans[preset], f"quantsense@{preset}": allocated}, desc="simulation"
            )
        }
        ids = token_ids(score.batches)
        for name, path in ((preset, preset_file), (f"quantsense@{preset}", ours)):
            found = score_in_llama_cpp(path, reference, ids, args.context, args.context)
            rows.append(
                {"plan": name, "bytes": path.stat().st_size, **found, "simulated_kl": simulated[name]["kl_mean"]}
            )
        a, b = rows[-2], rows[-1]
        apart = b["kl_ci_high"] < a["kl_ci_low"]
        rows[-1]["verdict"] = (
            "lower, intervals apart"
            if apart
            else "lower, intervals overlap"
            if b["kl_mean"] < a["kl_mean"]
            else "not lower"
        )
    print("| file | MB | llama.cpp KL [95% CI] | ppl | top-1 % | simulated KL | vs preset |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['plan']} | {r['bytes'] / 1e6:.2f} | {r['kl_mean']:.4f} [{r['kl_ci_low']:.4f}, {r['kl_ci_high']:.4f}] | "
            f"{r['perplexity']:.2f} | {r['top1_agreement']:.1f} | {r['simulated_kl']:.4f} | {r.get('verdict', '')} |"
        )
    print(
        f"F32 reference perplexity in llama.cpp: {rows[0]['reference_perplexity']:.2f} on {rows[0]['scored_tokens']} "
        f"scored tokens; {time.perf_counter() - started:.0f} s in all; files in {folder}"
    )


if __name__ == "__main__":
    main()
