"""Benchmark: how well each estimate ranks the measured single-tensor KL, before any of it is measured.

On one model, its importance matrix and the selection tokens of ``quantsense quantize`` (the first data segment, as
the reduced sweep measures), every allocatable tensor (block linears, the token embedding, an untied head) quantized
alone in its anchor type (the candidate with the fewest bits that its rows hold), as llama.cpp computes it:

- **measured**: the mean KL to FP32 (from ``--store`` when it holds them, e.g. a ``quantize --estimate weight-error``
  run's, else measured here: one evaluation per tensor);
- **Fisher**: the mean KL that ``--estimate fisher`` predicts from one forward and backward pass
  (:mod:`quantsense.sweeps.fisher`);
- **weight error**: the imatrix-weighted relative weight error (plus the activation rounding's) that ``--estimate
  weight-error`` scales by one measurement per tensor, and the kind of statistic ``llama-quantize --target-size`` ranks
  types by.

It prints the Spearman rank correlation of each with the measurements, and the Fisher prediction's median and spread
(root mean square of the log ratio) against them.

    python benchmarks/fisher_agreement.py --model results/smollm2-float --data wiki.test.raw \\
        --imatrix results/target-size/imatrix.gguf --first-token 8192 --store results/target-size/store.sqlite
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

import quantsense as qs
from quantsense.backends.llama_cpp.ggml_types import ALLOCATION_CANDIDATES
from quantsense.quantization.plan import Plan
from quantsense.mixed_precision.reduced import _anchor, activation_errors, fisher_errors
from quantsense.sweeps.candidates import Candidates
from quantsense.sweeps.sweep import sweep_units, weight_error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--imatrix", required=True)
    p.add_argument("--first-token", type=int, default=8192)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--store", help="results store with the anchors' measurements (computed and kept there if absent)")
    args = p.parse_args()
    ws = qs.open_workspace(
        args.model,
        data=args.data,
        first_token=args.first_token,
        max_tokens=args.max_tokens,
        task="wikitext",
        context=args.context,
        stride=args.context,
        dtype="float32",
        imatrix=args.imatrix,
        runtime_activations=True,
        store=args.store,
        quiet=True,
    )
    fmts = ws.formats(list(ALLOCATION_CANDIDATES))
    formats = {f.name: f for f in fmts}
    units = {u.display: u for u in sweep_units(ws.units, "linear", ws.outside_units())}
    fit = Candidates.resolve(ws.units, fmts)
    anchor = {u: _anchor([f for f in fmts if fit.fits(units[u].names, f)]).name for u in units}
    pairs = [(u, anchor[u]) for u in units]
    started = time.perf_counter()
    fisher = fisher_errors(ws, units, pairs, formats)
    fisher_seconds = time.perf_counter() - started
    columns = ws.input_power()
    rounding = activation_errors(ws, {u: units[u].names for u in units}, fmts)
    weighted = {
        (u, f): weight_error(ws.applier, units[u].names, formats[f], columns)
        + rounding.get((u, formats[f].activation_rounding()), 0.0)
        for u, f in pairs
    }
    labeled = [(f"only:{u.replace(' ', '')}@{f}", Plan.of({n: formats[f] for n in units[u].names})) for u, f in pairs]
    measured = ws.segments().compare(labeled, 1, desc="anchors")
    m = np.array([measured[label]["kl_mean"] for label, _ in labeled])
    f = np.array([fisher[pair] for pair in pairs])
    w = np.array([weighted[pair] for pair in pairs])
    ratio = np.log(np.maximum(m, 1e-9) / f)
    tokens = ws.segments().tokens_upto(1)
    print(f"{args.model}: {len(pairs)} tensors, each alone in its anchor type, on {tokens:,} selection tokens")
    print(
        f"Fisher estimate ({fisher_seconds:.0f} s, one forward and backward pass and every tensor's quantization): "
        f"Spearman {spearmanr(m, f).correlation:.3f} with the measured KL, measured/predicted median "
        f"{float(np.exp(np.median(ratio))):.2f}, RMS log ratio {float(np.sqrt(np.mean(ratio**2))):.2f}"
    )
    print(
        f"imatrix-weighted weight error (no forward pass): Spearman {spearmanr(m, w).correlation:.3f} with the "
        "measured KL"
    )


if __name__ == "__main__":
    main()
