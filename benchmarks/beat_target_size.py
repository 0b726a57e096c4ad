"""Benchmark: ``quantsense quantize`` against llama.cpp's own automatic allocator (``llama-quantize --target-size``,
PR #15550) and its presets, all with the same importance matrix, scored in llama.cpp on held-out tokens.

For one model and each preset size (Q3_K_M, Q4_K_M, Q5_K_M by default):

1. an importance matrix from tokens [0, C) of the text (quantsense's, which llama-quantize loads), and the model's
   F32 GGUF, the reference of every score;
2. the preset's file (``llama_model_quantize`` with the imatrix) and its size in bytes;
3. ``llama-quantize --target-size <those bytes> --imatrix`` (the anchor build, ``benchmarks/llama_cpp_anchor.sh``):
   its first run (fresh state file) is timed; later sizes reuse its state file, as a user would;
4. ``quantsense quantize MODEL OUT --size <the --target-size file's bytes> --imatrix IMATRIX --no-score`` in a fresh
   process (plan chosen on tokens [C, C+A)), so its file is never the larger; the first size starts from an empty results store and is timed, whole process, between two
   first runs of --target-size (A B A); later sizes reuse the store (the sweep is shared);
5. every file scored on tokens [C+A, C+A+S) by quantsense's llama.cpp scorer (mean KL to the F32 file with its 95 %
   block-bootstrap interval, 99th-percentile KL, same top token) and by ``llama-perplexity --kl-divergence`` on the
   same text.

    bash benchmarks/llama_cpp_anchor.sh /path/to/EAddario-llama.cpp.git   # builds the anchor into its cache folder
    python benchmarks/beat_target_size.py --model results/smollm2-float --data wiki.test.raw --out results/target-size
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import quantsense as qs
from quantsense.backends.llama_cpp.calibrate import make_imatrix
from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf
from quantsense.backends.llama_cpp.llama_quantize import llama_quantize
from quantsense.backends.llama_cpp.llama_score import score_in_llama_cpp
from quantsense.backends.llama_cpp.plans import imatrix_by_tensor
from quantsense.backends.llama_cpp.presets import FTYPES
from quantsense.mixed_precision.presets import preset_name
from quantsense.tasks.language_model import token_ids

# where benchmarks/llama_cpp_anchor.sh puts its build of llama.cpp's PR #15550 (commit a50ddb66, upstream b10572 + PR)
ANCHOR_BIN = (
    Path(os.environ.get("QS_LLAMA_CPP_CACHE", Path.home() / ".cache" / "quantsense" / "llama-cpp-anchor"))
    / "a50ddb660834b626befdb5b9aeda9bd6a2dd5666"
    / "bin"
)


def _workspace(args, first: int, tokens: int, imatrix: str | None = None):
    return qs.open_workspace(
        args.model,
        data=args.data,
        task="wikitext",
        first_token=first,
        max_tokens=tokens,
        context=args.context,
        stride=args.context,
        imatrix=imatrix,
        quiet=True,
    )


def target_size(args, reference: Path, imatrix: Path, size: int, out: Path, state: Path, fresh: bool) -> float:
    """``llama-quantize --target-size``; seconds, whole process (a fresh state file when ``fresh``)."""
    if fresh and state.exists():
        state.unlink()
    command = [
        str(Path(args.llama_bin) / "llama-quantize"),
        "--imatrix",
        str(imatrix),
        "--target-size",
        str(size),
        "--state-file",
        str(state),
        str(reference),
        str(out),
        "F16",
        "2",
    ]
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def quantsense_quantize(args, imatrix: Path, size: int, out: Path, store: Path) -> float:
    """``quantsense quantize --size <bytes>`` in a fresh process; seconds, whole process."""
    for stale in (out, out.with_suffix(".quantsense.json")):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "quantsense",
        "quantize",
        args.model,
        str(out),
        "--size",
        str(size),
        "--data",
        args.data,
        "--imatrix",
        str(imatrix),
        "--choose-tokens",
        str(args.choose_tokens),
        "--context",
        str(args.context),
        "--store",
        str(store),
        "--estimate",
        args.estimate,
        "--no-score",
        "--quiet",
    ]
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def perplexity_kl(args, reference: Path, files: dict[str, Path], text: Path, folder: Path) -> dict[str, dict]:
    """``llama-perplexity --kl-divergence`` of each file against the F32 file's logits on ``text``."""
    binary = str(Path(args.llama_bin) / "llama-perplexity")
    base = folder / "f32.kld"
    common = ["-f", str(text), "-c", str(args.context), "-t", "2", "-b", str(args.context)]
    subprocess.run(
        [binary, "-m", str(reference), *common, "--kl-divergence-base", str(base)], check=True, capture_output=True
    )
    out = {}
    for name, path in files.items():
        found = subprocess.run(
            [binary, "-m", str(path), *common, "--kl-divergence-base", str(base), "--kl-divergence"],
            check=True,
            capture_output=True,
            text=True,
        )
        printed = found.stdout + found.stderr
        mean = re.search(r"Mean\s+KLD:\s+([-\d.]+)\s+±\s+([\d.]+)", printed)
        if mean is None:
            sys.exit(f"llama-perplexity printed no 'Mean KLD' line for {path}:\n{printed[-2000:]}")
        top = re.search(r"Same top p:\s+([\d.]+)\s+±\s+([\d.]+)", printed)
        out[name] = {
            "kl_mean": float(mean.group(1)),
            "kl_se": float(mean.group(2)),
            "same_top": float(top.group(1)) if top else None,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a Hugging Face directory (the F32 reference is converted from it)")
    p.add_argument("--data", required=True)
    p.add_argument(
        "--llama-bin",
        default=os.environ.get("QS_LLAMA_BIN", str(ANCHOR_BIN)),
        help="folder with the anchor's llama-quantize and llama-perplexity (default: $QS_LLAMA_BIN, else where "
        "benchmarks/llama_cpp_anchor.sh builds them: %(default)s)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["Q4_K_M", "Q3_K_M", "Q5_K_M"],
        help="presets whose sizes are targets (the first is the one timed)",
    )
    p.add_argument("--calibration-tokens", type=int, default=8192)
    p.add_argument("--choose-tokens", type=int, default=4096)
    p.add_argument("--score-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument(
        "--estimate",
        choices=("fisher", "weight-error"),
        default="fisher",
        help="quantsense quantize --estimate (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="folder for every file (kept: rerun to add what is missing)")
    p.add_argument(
        "--report", action="store_true", help="print the table of --out's results.json again, measuring nothing"
    )
    args = p.parse_args()
    if args.report:
        print("\n".join(summary(json.loads((Path(args.out) / "results.json").read_text()))))
        return
    for tool in ("llama-quantize", "llama-perplexity"):
        if not (Path(args.llama_bin) / tool).is_file():
            sys.exit(
                f"{Path(args.llama_bin) / tool} not found: build the anchor with benchmarks/llama_cpp_anchor.sh "
                "(llama.cpp's PR #15550), or pass --llama-bin"
            )
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    presets = [preset_name(x) for x in args.sizes]
    cal_end = args.calibration_tokens
    score_first = cal_end + args.choose_tokens

    imatrix, reference = folder / "imatrix.gguf", folder / "reference-f32.gguf"
    cal = _workspace(args, 0, cal_end)
    if not imatrix.exists():
        make_imatrix(cal, imatrix)
    if not reference.exists():
        convert_hf_to_gguf(cal.model, cal.tokenizer, reference, name=Path(args.model).name)
    del cal
    score = _workspace(args, score_first, args.score_tokens, str(imatrix))
    importance = imatrix_by_tensor(score)
    print(
        f"{args.model}: imatrix on tokens 0..{cal_end} ({len(importance)} tensors), plans chosen on tokens "
        f"{cal_end}..{score_first}, scored on {score_first}..{score_first + args.score_tokens}",
        flush=True,
    )

    files: dict[str, dict[str, Path]] = {}
    sizes = {}
    for preset in presets:
        path = folder / f"preset-{preset}.gguf"
        if not path.exists():
            llama_quantize(
                reference, path, FTYPES[preset], nthread=2, importance=importance, provenance=score.imatrix.provenance()
            )
        sizes[preset] = path.stat().st_size
        files[preset] = {
            "preset": path,
            "target-size": folder / f"target-{preset}.gguf",
            "quantsense": folder / f"quantsense-{preset}.gguf",
        }

    state, store = folder / "target.bpw_state", folder / "store.sqlite"
    first = presets[0]
    timing = {"target-size first run (s)": [], "quantsense quantize, empty store (s)": []}
    store.unlink(missing_ok=True)
    timing["target-size first run (s)"].append(
        target_size(args, reference, imatrix, sizes[first], files[first]["target-size"], state, fresh=True)
    )
    target_bytes = files[first]["target-size"].stat().st_size
    timing["quantsense quantize, empty store (s)"].append(
        quantsense_quantize(args, imatrix, target_bytes, files[first]["quantsense"], store)
    )
    timing["target-size first run (s)"].append(
        target_size(args, reference, imatrix, sizes[first], files[first]["target-size"], state, fresh=True)
    )
    target_mean = sum(timing["target-size first run (s)"]) / 2
    ratio = timing["quantsense quantize, empty store (s)"][0] / target_mean
    print(
        f"cost at {first} size, whole processes, alternating: --target-size first runs "
        f"{', '.join(f'{s:.0f}' for s in timing['target-size first run (s)'])} s; quantsense quantize "
        f"{timing['quantsense quantize, empty store (s)'][0]:.0f} s; ratio {ratio:.1f}x",
        flush=True,
    )
    for preset in presets[1:]:
        target_size(args, reference, imatrix, sizes[preset], files[preset]["target-size"], state, fresh=False)
        quantsense_quantize(
            args, imatrix, files[preset]["target-size"].stat().st_size, files[preset]["quantsense"], store
        )

    ids = token_ids(score.batches)
    text = folder / "held-out.txt"
    text.write_text(score.tokenizer.decode(ids))
    rows = []
    for preset in presets:
        kl = perplexity_kl(args, reference, files[preset], text, folder)
        for kind, path in files[preset].items():
            found = score_in_llama_cpp(path, reference, ids, args.context, args.context)
            rows.append(
                {
                    "size of": preset,
                    "file": kind,
                    "bytes": path.stat().st_size,
                    **found,
                    "llama-perplexity KL": kl[kind]["kl_mean"],
                    "llama-perplexity KL se": kl[kind]["kl_se"],
                }
            )
            print(
                f"{preset} size ({sizes[preset]:,} B) {kind:>11}: {path.stat().st_size:,} B, mean KL "
                f"{found['kl_mean']:.4f} [{found['kl_ci_low']:.4f}, {found['kl_ci_high']:.4f}], p99 "
                f"{found['kl_p99']:.4f}, same top token {found['top1_agreement']:.1f} %; llama-perplexity "
                f"--kl-divergence {kl[kind]['kl_mean']:.4f} ± {kl[kind]['kl_se']:.4f}",
                flush=True,
            )
    results = {"rows": rows, "timing": timing, "ratio": ratio, "estimate": args.estimate}
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(summary(results)))


def summary(results: dict) -> list[str]:
    """The table of every file and, per size, whether quantsense's file is below the others, with its intervals."""
    rows, lines = results["rows"], []
    lines.append("| size of | file | bytes | llama.cpp KL [95% CI] | p99 KL | same top % | llama-perplexity KL |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['size of']} | {r['file']} | {r['bytes']:,} | {r['kl_mean']:.4f} [{r['kl_ci_low']:.4f}, "
            f"{r['kl_ci_high']:.4f}] | {r['kl_p99']:.4f} | {r['top1_agreement']:.1f} | "
            f"{r['llama-perplexity KL']:.4f} ± {r['llama-perplexity KL se']:.4f} |"
        )
    for preset in dict.fromkeys(r["size of"] for r in rows):
        of = {r["file"]: r for r in rows if r["size of"] == preset}
        ours = of["quantsense"]
        verdicts = []
        for other in ("target-size", "preset"):
            theirs = of[other]
            below = ours["kl_mean"] < theirs["kl_mean"]
            apart = ours["kl_ci_high"] < theirs["kl_ci_low"] or theirs["kl_ci_high"] < ours["kl_ci_low"]
            agrees = below == (ours["llama-perplexity KL"] < theirs["llama-perplexity KL"])
            verdicts.append(
                f"{'below' if below else 'NOT below'} {other} ({ours['kl_mean']:.4f} vs "
                f"{theirs['kl_mean']:.4f}, intervals {'apart' if apart else 'overlap'}, llama-perplexity "
                f"{'agrees' if agrees else 'DISAGREES'})"
            )
        size = "no larger" if ours["bytes"] <= of["target-size"]["bytes"] else "LARGER"
        lines.append(f"{preset} size: quantsense's file ({size} than --target-size's) is " + "; ".join(verdicts))
    timing = results["timing"]
    lines.append(
        f"cost, whole processes, alternating: --target-size first runs "
        f"{', '.join(f'{x:.0f}' for x in timing['target-size first run (s)'])} s, quantsense quantize (empty "
        f"store) {timing['quantsense quantize, empty store (s)'][0]:.0f} s: {results['ratio']:.1f}x"
    )
    return lines


if __name__ == "__main__":
    main()
