"""Benchmark: a per-block sweep run by a plain implementation and by the quantsense engine.

Both run in this one process, on the same model and data, one after the other:

(a) plain, written here for comparison: for each (block, bits) deep-copy the model, quantize the
    block's linear weights, evaluate every sentence in file order, tokenizing and padding each
    batch of 32;
(b) the engine: tokenize once, length-sorted batches under a token budget, FP32 reference once,
    prefix reuse, each (unit, config) quantized once, no results store (pure compute).

It prints both wall times, the ratio, evaluations per minute, and the engine's share of the
FLOP-bound limit: the matmul FLOPs the sweep cannot avoid (reference pass plus, for each
configuration, blocks from the quantized one on, counted on unpadded tokens) divided by this
machine's fp32 matmul rate measured on the model's own linear shapes. It checks that (a) and (b)
give the same accuracies.

Then, because start-up counts for a user, it times both sides again as whole processes (imports,
model loading and tokenization included): ``python benchmarks/plain_sweep.py --bits 8 4`` against
``quantsense sensitivity --bits 8 4 --no-store`` (the seed sweep: 12 configurations + FP32).

    python benchmarks/sweep_speed.py --model ../shared/assets/models/minilm-l6-sst2 \
        --data ../shared/assets/sst2/validation.tsv
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from plain_sweep import plain_correct
from quantsense.quantization.formats import QuantConfig
from quantsense.quantization.plan import Plan
from quantsense.workspace import open_workspace

HERE = Path(__file__).resolve().parent


def matmul_rate(shapes: list[tuple[int, int]], tokens: int = 4096, repeats: int = 10) -> float:
    """fp32 GFLOP/s of x[tokens, k] @ w[k, n] over the model's linear shapes, FLOP-weighted."""
    flops = seconds = 0.0
    g = torch.Generator().manual_seed(0)
    for k, n in shapes:
        x, w = torch.randn(tokens, k, generator=g), torch.randn(k, n, generator=g)
        for _ in range(3):
            x @ w
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
        seconds += time.perf_counter() - start
        flops += 2.0 * tokens * k * n * repeats
    return flops / seconds / 1e9


def unavoidable_gflop(ws, starts: list[int]) -> float:
    """Matmul GFLOP of the reference pass plus each configuration from its first quantized block, unpadded.

    When the engine runs the last block for the classifier's position only, that block's linears act
    on one position per sentence and its attention reads every token once per head.
    """
    lengths = np.array([int(b.inputs["attention_mask"][i].sum()) for b in ws.batches for i in range(len(b.index))])
    tokens, attn_pairs = lengths.sum(), (lengths.astype(np.float64) ** 2).sum()
    hidden, last = ws.model.config.hidden_size, ws.units.num_blocks - 1
    per_block = []
    for i in range(ws.units.num_blocks):
        params = sum(ws.units.get(n).numel for n in ws.units.block_units(i))
        if i == last and ws.evaluator.first_position:
            heads = (
                ws.model.config.num_attention_heads
                if hasattr(ws.model.config, "num_attention_heads")
                else ws.model.config.n_heads
            )
            per_block.append(2.0 * params * len(lengths) + 2 * 2.0 * tokens * hidden * heads)
            continue
        per_block.append(2.0 * params * tokens + 2 * 2.0 * attn_pairs * hidden)  # linears + QK^T and AV
    head = sum(
        2.0 * ws.units.get(n).numel * len(lengths) for n in ws.units.extra_units() if ws.units.get(n).kind == "head"
    )
    total = sum(per_block) + head  # the reference pass
    total += sum(sum(per_block[s:]) + head for s in starts)
    return total / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4, 3, 2])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--pairs", type=int, default=3, help="alternating whole-process pairs (at least 3)")
    args = parser.parse_args()
    if args.pairs < 3:
        parser.error("--pairs must be at least 3: a median needs three")
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

    ws = open_workspace(args.model, data=args.data, limit=args.limit, device="cpu", quiet=True)
    model, tokenizer = ws.model, ws.tokenizer
    texts, labels = ws.data.texts, ws.data.labels
    blocks = ws.units.all_block_units()
    configs = [(block, bits) for bits in args.bits for block in range(len(blocks))]
    print(
        f"model {args.model}: {len(blocks)} blocks; {len(texts)} sentences; {len(configs)} configurations; "
        f"torch threads {torch.get_num_threads()}"
    )

    start = time.perf_counter()
    plain = {(b, bits): plain_correct(model, tokenizer, texts, labels, blocks[b], bits) for b, bits in configs}
    plain_s = time.perf_counter() - start

    start = time.perf_counter()
    ws = open_workspace(args.model, data=args.data, limit=args.limit, device="cpu", quiet=True)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = ws.engine.reference()
    results = ws.engine.evaluate_many(
        [
            (f"{block}@{bits}", Plan.of({n: QuantConfig(bits) for n in ws.units.block_units(block)}))
            for block, bits in configs
        ]
    )
    engine_s = time.perf_counter() - start
    engine = {cfg: int((results[f"{cfg[0]}@{cfg[1]}"].predictions == ws.data.labels).sum()) for cfg in configs}
    assert reference is not None

    rate = matmul_rate(sorted({tuple(ws.units.get(n).shape[::-1]) for names in blocks for n in names}))
    gflop = unavoidable_gflop(ws, [block for block, _ in configs])
    mismatches = [cfg for cfg in configs if plain[cfg] != engine[cfg]]
    print(f"{'block':>5} {'bits':>4} {'plain acc %':>11} {'engine acc %':>12}")
    for cfg in configs:
        n = len(texts)
        print(f"{cfg[0]:>5} {cfg[1]:>4} {100 * plain[cfg] / n:>11.2f} {100 * engine[cfg] / n:>12.2f}")
    print(f"plain:  {plain_s:7.1f} s  ({len(configs) / plain_s * 60:.1f} evaluations/min)")
    print(
        f"engine: {engine_s:7.1f} s  ({len(configs) / engine_s * 60:.1f} evaluations/min; "
        f"+{setup_s:.1f} s to load and tokenize, done once)"
    )
    print(f"ratio plain/engine: {plain_s / engine_s:.2f}x")
    print(f"fp32 matmul rate on the model's linear shapes: {rate:.1f} GFLOP/s")
    print(
        f"unavoidable matmul work: {gflop:.0f} GFLOP -> FLOP-bound limit {gflop / rate:.1f} s; "
        f"engine reaches {100 * gflop / rate / engine_s:.0f} % of it ({gflop / engine_s:.1f} GFLOP/s)"
    )
    print("accuracies identical: " + ("yes" if not mismatches else f"NO, differ at {mismatches}"))
    if mismatches:
        raise SystemExit(1)
    whole_process(args, args.pairs)


def _timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def whole_process(args, pairs: int = 3) -> None:
    """The seed sweep (bits 8 and 4 over every block) timed as a user sees it: from the shell prompt to the result.

    The two commands alternate ``pairs`` times so that both see the same machine load; the figures are the medians
    over the pairs with their ranges, and the ratio is the median of the per-pair ratios.
    """
    data = ["--model", args.model, "--data", args.data]
    commands = {
        "plain": [sys.executable, str(HERE / "plain_sweep.py"), *data, "--bits", "8", "4"],
        "quantsense": [
            sys.executable,
            "-m",
            "quantsense.cli",
            "sensitivity",
            *data,
            "--bits",
            "8",
            "4",
            "--no-store",
            "--quiet",
        ],
    }
    runs = {name: [] for name in commands}
    for _ in range(pairs):
        for name, command in commands.items():
            runs[name].append(_timed(command))
    seconds = {name: [s for s, _ in runs[name]] for name in commands}
    ratios = [p / q for p, q in zip(seconds["plain"], seconds["quantsense"])]
    evaluations = len(runs["plain"][0][1].strip().splitlines())
    print(
        f"whole processes (imports, loading, tokenizing included), seed sweep of {evaluations} configurations, "
        f"median of {pairs} alternating pairs [range]:"
    )
    for name, shown in (("plain", "plain script:          "), ("quantsense", "quantsense sensitivity:")):
        what = (
            "python benchmarks/plain_sweep.py ... --bits 8 4"
            if name == "plain"
            else "quantsense sensitivity ... --bits 8 4 --no-store"
        )
        print(
            f"{shown} {statistics.median(seconds[name]):7.1f} s  [{min(seconds[name]):.1f}, {max(seconds[name]):.1f}]  ({what})"
        )
    print(
        f"whole-process ratio plain/quantsense: {statistics.median(ratios):.2f}x "
        f"[{min(ratios):.2f}, {max(ratios):.2f}] over the {pairs} pairs"
    )


if __name__ == "__main__":
    main()
