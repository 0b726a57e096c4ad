"""Synthetic results dicts in the schema of results.json, for both tasks, with realistic numbers.

A 6-block MiniLM SST-2 classifier (integer formats) and a 30-block SmolLM2 language model (GGUF formats).
Every function is deterministic: the same call returns the same dict.
"""

from __future__ import annotations

import math
import random

from quantsense.tasks import make_task

MINILM_SUBS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "intermediate.dense", "output.dense")
LLAMA_SUBS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj")
BITS_PER_WEIGHT = {"int8": 8.08, "int6": 6.08, "int5": 5.08, "int4": 4.08, "int3": 3.08, "int2": 2.08,
                   "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0, "q4_0": 4.5, "f16": 16.0}
# How much one format hurts relative to the 8-bit format (KL scales roughly with the quantization noise power).
NOISE = {"int8": 1.0, "int6": 16.0, "int5": 64.0, "int4": 256.0, "int3": 1200.0, "int2": 9000.0,
         "q8_0": 1.0, "q5_1": 40.0, "q5_0": 55.0, "q4_1": 150.0, "q4_0": 220.0, "f16": 0.0004}


def _provenance(command: str) -> dict:
    return {"command": command, "created": "2026-11-27T23:00:00+0000",
            "versions": {"quantsense": "0.1.0", "python": "3.11.2", "torch": "2.13.0", "transformers": "5.24.0",
                         "numpy": "2.4.6"},
            "git": "0b3cf29a5e1c7d0f6c0e8b5d2a4f9e1b3c7d5a20"}


def _classification_workspace() -> dict:
    return {
        "model": {"source": "/data/models/minilm-l6-sst2", "fingerprint": "sha256:5d1f0c2a9b", "blocks": 6,
                  "block_path": "bert.encoder.layer", "device": "cpu", "kind": "classification", "dtype": "float32"},
        "data": {"source": "/data/sst2/validation.tsv", "fingerprint": "sha256:a07be4412c", "task": "sst2",
                 "examples": 872},
        "task": make_task("sst2").describe(),  # the real task's description, as a study writes it
        "scheme": {"bits": 8, "symmetric": True, "granularity": "per_channel"}, "seed": 0}


def _causal_workspace() -> dict:
    return {
        "model": {"source": "HuggingFaceTB/SmolLM2-135M", "fingerprint": "sha256:9e0c77d13f", "blocks": 30,
                  "block_path": "model.layers", "device": "cpu", "kind": "causal", "dtype": "float32"},
        "data": {"source": "/data/wikitext-2-raw/wiki.test.raw", "fingerprint": "sha256:41c2d8e0b7",
                 "task": "wikitext", "tokens": 4096, "context": 1024, "stride": 512},
        "task": make_task("wikitext").describe(),
        "scheme": {"bits": 8, "symmetric": True, "granularity": "per_channel"}, "seed": 0}


CLASSIFICATION_BASELINE = {"accuracy": 89.45, "correct": 780, "n": 872}
CAUSAL_BASELINE = {"perplexity": 20.47, "scored_tokens": 4095, "max_tokens": 4096, "context": 1024, "stride": 512}


def _metrics(causal: bool, kl: float, rng: random.Random, baseline: dict) -> dict:
    """Loss and metric figures consistent with a mean KL of ``kl`` (plus sampling noise)."""
    if causal:
        delta = kl * 0.9 + rng.gauss(0, 0.0004)
        half = 0.0015 + 0.08 * kl
        return {"perplexity": baseline["perplexity"] * math.exp(delta), "ppl_ratio": math.exp(delta),
                "tokens": baseline["scored_tokens"], "delta_nll": delta, "delta_nll_ci_low": delta - half,
                "delta_nll_ci_high": delta + half, "top1_agreement": max(40.0, 100.0 - 50.0 * math.sqrt(kl)),
                "distinguishable_from_fp32": delta - half > 0}
    n = baseline["n"]
    broken = max(0, round(n * kl * 0.9 + rng.random() * 2))
    fixed = max(0, round(broken * 0.25 + rng.random() * 1.5))
    correct = baseline["correct"] - broken + fixed
    drop = 100.0 * (broken - fixed) / n
    half = 100.0 * 1.96 * math.sqrt(broken + fixed + 1) / n
    flips = broken + fixed
    p = 1.0 if flips == 0 else min(1.0, 2 * sum(math.comb(flips, k) for k in range(min(fixed, broken) + 1)) / 2 ** flips)
    return {"accuracy": 100.0 * correct / n, "correct": correct, "n": n, "drop": drop, "drop_ci_low": drop - half,
            "drop_ci_high": drop + half, "mcnemar_p": p, "fixed": fixed, "broken": broken,
            "flip_rate": 100.0 * flips / n, "logit_sqnr_db": 10 * math.log10(1.0 / max(kl, 1e-9)) - 3.0,
            "distinguishable_from_fp32": p < 0.05}


def _row(unit: str, block: int | None, sub: str | None, fmt: str, view: str, kl: float, causal: bool,
         rng: random.Random, baseline: dict) -> dict:
    spread = 0.12 + 0.1 * rng.random()
    row = {"unit": unit, "block": block, "sub": sub, "format": fmt, "bits_per_weight": BITS_PER_WEIGHT[fmt],
           "view": view, "kl_mean": kl, "kl_ci_low": kl * (1 - spread), "kl_ci_high": kl * (1 + spread),
           "kl_p95": kl * 3.4, "weight_sqnr_db": 6.02 * BITS_PER_WEIGHT[fmt] - 9.5 + rng.gauss(0, 0.4)}
    row.update(_metrics(causal, kl, rng, baseline))
    return row


def assign_tiers(rows: list[dict]) -> list[dict]:
    """Rank by mean KL (1 = most sensitive); tiers are connected components of overlapping KL intervals."""
    ranked = sorted(rows, key=lambda r: -r["kl_mean"])
    out, tier, floor = [], 0, math.inf
    for rank, row in enumerate(ranked, 1):
        if row["kl_ci_high"] < floor:
            tier += 1
        floor = row["kl_ci_low"] if row["kl_ci_high"] < floor else min(floor, row["kl_ci_low"])
        out.append({**row, "rank": rank, "tier": tier})
    return out


def _sensitivity(causal: bool, unit: str, blocks: int, subs: tuple, formats: list[str], views: list[str],
                 block_path: str, seed: int) -> dict:
    rng = random.Random(seed)
    baseline = CAUSAL_BASELINE if causal else CLASSIFICATION_BASELINE
    units = ([(f"block {b}", b, None) for b in range(blocks)] if unit == "block"
             else [(f"{block_path}.{b}.{s}", b, s) for b in range(blocks) for s in subs])
    weight = {name: (3.0 if b in (0, blocks - 1) else 1.0) * (1 + rng.random()) * (2.5 if s in ("mlp.down_proj", "output.dense") else 1.0)
              for name, b, s in units}
    base_kl = 2e-4 if causal else 4e-5
    if unit == "linear":
        base_kl /= len(subs)
    rows = []
    for view in views:
        for fmt in formats:
            for name, b, s in units:
                kl = base_kl * NOISE[fmt] * (weight[name] if view == "only" else sum(weight.values()) - weight[name])
                rows.append(_row(name, b, s, fmt, view, kl, causal, rng, baseline))
    rankings = {f"{view}@{fmt}": assign_tiers([r for r in rows if r["view"] == view and r["format"] == fmt])
                for view in views for fmt in formats}
    return {"unit": unit, "formats": formats, "views": views, "rank_by": "kl_mean", "rows": rows, "rankings": rankings}


def _plan_row(plan: str, kind: str | None, avg_bits: float, kl: float, causal: bool, rng: random.Random,
              predicted: float | None) -> dict:
    baseline = CAUSAL_BASELINE if causal else CLASSIFICATION_BASELINE
    if causal:  # SmolLM2-135M: 106.2M block linear weights, 28.3M others kept in FP32
        model_mb, fp32_mb = (106.2e6 * avg_bits / 8 + 28.3e6 * 4) / 1e6, 538.0
    else:  # MiniLM-L6: 10.6M block linear weights, 12.1M others
        model_mb, fp32_mb = (10.6e6 * avg_bits / 8 + 12.1e6 * 4) / 1e6, 90.8
    row = {"plan": plan, "avg_bits": avg_bits, "model_mb": model_mb, "compression": fp32_mb / model_mb,
           "kl_mean": kl, "kl_ci_low": kl * 0.85, "kl_ci_high": kl * 1.15, "kl_p95": kl * 3.1}
    if kind is not None:
        row["kind"] = kind
    row.update(_metrics(causal, kl, rng, baseline))
    loss = row["delta_nll" if causal else "drop"]
    row["predicted_loss"] = predicted
    row["measured_over_predicted"] = None if predicted in (None, 0) else loss / predicted
    return row


def _unit_names(causal: bool) -> list[str]:
    if causal:
        return [f"model.layers.{b}.{s}" for b in range(30) for s in LLAMA_SUBS]
    return [f"bert.encoder.layer.{b}.{s}" for b in range(6) for s in MINILM_SUBS]


def _allocate(names: list[str], candidates: list[str], target_bits: float) -> dict:
    """A plausible allocation: the first and last blocks and the down projections get the widest formats."""
    ordered = sorted(candidates, key=lambda f: BITS_PER_WEIGHT[f])
    cheap = [f for f in ordered if f != "f16"]
    choice = {}
    for i, name in enumerate(names):
        sensitive = ".0." in name or ".29." in name or ".5." in name or "down" in name or name.endswith("output.dense")
        level = (target_bits - BITS_PER_WEIGHT[cheap[0]]) / (BITS_PER_WEIGHT[cheap[-1]] - BITS_PER_WEIGHT[cheap[0]])
        index = min(len(cheap) - 1, int(level * len(cheap) + (1.5 if sensitive else 0) + (i % 3) * 0.2))
        choice[name] = cheap[max(0, index)]
    return choice


def _plan_entry(choice: dict) -> dict:
    units = {}
    for name, fmt in choice.items():
        if fmt is None:
            continue
        units[name] = ({"bits": int(fmt[3:]), "symmetric": True, "granularity": "per_channel"} if fmt.startswith("int")
                       else {"format": fmt})
    return {"version": 1, "units": units}


def _frontier(causal: bool, seed: int) -> dict:
    rng = random.Random(seed)
    names = _unit_names(causal)
    if causal:
        candidates = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"]
        kl_of = {"q4_0": 0.095, "q4_1": 0.066, "q5_0": 0.027, "q5_1": 0.019, "q8_0": 0.0007, "f16": 1e-6}
        targets = [(4.75, 0.041, 0.036), (5.0, 0.028, 0.025), (5.5, 0.014, 0.013), (6.0, 0.0062, 0.0059),
                   (7.0, 0.0021, 0.0018)]
        hand = [("targeted_single_block", 4.62, 0.071), ("first_last_q8_0", 4.83, 0.052)]
    else:
        candidates = ["int2", "int3", "int4", "int5", "int6", "int8"]
        kl_of = {"int2": 0.62, "int3": 0.11, "int4": 0.024, "int5": 0.0061, "int6": 0.0016, "int8": 0.0001}
        targets = [(3.5, 0.052, 0.040), (4.0, 0.017, 0.019), (4.5, 0.0052, 0.0060), (5.0, 0.0024, 0.0030),
                   (6.0, 0.0007, 0.0009)]
        hand = [("targeted_single_block", 4.42, 0.019), ("attention_int8_mlp_int4", 5.36, 0.013)]
    rows, plans, choices = [], {}, {}
    for fmt in candidates:
        name = f"uniform {fmt}"
        rows.append(_plan_row(name, "uniform", BITS_PER_WEIGHT[fmt], kl_of[fmt], causal, rng, None))
        choices[name] = {n: fmt for n in names}
    for bits, kl, predicted_kl in targets:
        name = f"allocated@{bits:g} bits/weight"
        choice = _allocate(names, candidates, bits)
        row = _plan_row(name, "allocated", bits - 0.01 - 0.03 * rng.random(), kl, causal, rng, None)
        loss_key = "delta_nll" if causal else "drop"
        row["predicted_loss"] = row[loss_key] * predicted_kl / kl
        row["measured_over_predicted"] = kl / predicted_kl
        rows.append(row)
        choices[name] = choice
        plans[name] = _plan_entry(choice)
    for name, bits, kl in hand:
        rows.append(_plan_row(name, "hand", bits, kl, causal, rng, None))
        wide = "q8_0" if causal else "int8"
        choices[name] = {n: (wide if ".5." in n or ".0." in n else candidates[0 if causal else 2]) for n in names}
    return {"objective": "kl", "unit": "linear", "candidates": candidates, "rows": rows, "plans": plans,
            "choices": choices}


def classification_run() -> dict:
    """`quantsense run` on the 6-block classifier: block sensitivity (only and all-but views), mixed plans, ablation."""
    rng = random.Random(11)
    results = {"provenance": _provenance("quantsense run --model minilm-l6-sst2 --data sst2 --out results/run"),
               "workspace": _classification_workspace(), "baseline": dict(CLASSIFICATION_BASELINE),
               "sensitivity": _sensitivity(False, "block", 6, (), ["int8", "int4"], ["only", "all_but"],
                                           "bert.encoder.layer", seed=1)}
    results["mixed"] = {"rows": [_plan_row("uniform int8", None, 8.08, 0.0001, False, rng, None),
                                 _plan_row("uniform int4", None, 4.08, 0.024, False, rng, None),
                                 _plan_row("sensitivity-aware 6 bits", None, 6.0, 0.0009, False, rng, 0.0011),
                                 _plan_row("sensitivity-aware 5 bits", None, 5.0, 0.0031, False, rng, 0.0035)]}
    ablation = _row("block 5", 5, None, "int4", "only", 0.0061, False, rng, CLASSIFICATION_BASELINE)
    results["ablation"] = {"block": 5, "format": "int4", **{k: v for k, v in ablation.items()
                                                            if k not in ("unit", "block", "sub", "format", "view")}}
    return results


def classification_linear() -> dict:
    """Linear-unit sensitivity of the 6-block classifier at int8 and int4."""
    return {"provenance": _provenance("quantsense sensitivity --unit linear --formats int8,int4"),
            "workspace": _classification_workspace(), "baseline": dict(CLASSIFICATION_BASELINE),
            "sensitivity": _sensitivity(False, "linear", 6, MINILM_SUBS, ["int8", "int4"], ["only"],
                                        "bert.encoder.layer", seed=2)}


def llm_blocks() -> dict:
    """Block sensitivity of the 30-block language model at three GGUF formats."""
    return {"provenance": _provenance("quantsense sensitivity --model SmolLM2-135M --formats q8_0,q5_0,q4_0"),
            "workspace": _causal_workspace(), "baseline": dict(CAUSAL_BASELINE),
            "sensitivity": _sensitivity(True, "block", 30, (), ["q8_0", "q5_0", "q4_0"], ["only"], "model.layers",
                                        seed=3)}


def llm_linear() -> dict:
    """Linear-unit sensitivity of the 30-block language model (210 units) at q8_0 and q4_0."""
    return {"provenance": _provenance("quantsense sensitivity --unit linear --formats q8_0,q4_0"),
            "workspace": _causal_workspace(), "baseline": dict(CAUSAL_BASELINE),
            "sensitivity": _sensitivity(True, "linear", 30, LLAMA_SUBS, ["q8_0", "q4_0"], ["only"], "model.layers",
                                        seed=4)}


def classification_frontier() -> dict:
    """Frontier of the 6-block classifier over int2..int8, with linear sensitivity."""
    results = classification_linear()
    results["provenance"] = _provenance("quantsense frontier --candidates int2,int3,int4,int5,int6,int8")
    results["frontier"] = _frontier(False, seed=5)
    return results


def llm_frontier() -> dict:
    """Frontier of the 30-block language model over GGUF formats, with block sensitivity."""
    results = llm_blocks()
    results["provenance"] = _provenance("quantsense frontier --candidates q4_0,q4_1,q5_0,q5_1,q8_0,f16")
    results["frontier"] = _frontier(True, seed=6)
    return results


def export_only() -> dict:
    """`quantsense export`: no sensitivity or plans, only what was written and how big it is."""
    return {"provenance": _provenance("quantsense export --plan plan.json --out out/minilm-mixed"),
            "workspace": _classification_workspace(), "baseline": dict(CLASSIFICATION_BASELINE),
            "export": {"out": "out/minilm-mixed", "format": "torchao int8/int4", "disk_bytes": 61_884_416,
                       "predicted_bytes": 61_340_000, "verified_accuracy": 89.22, "verified_drop": 0.23}}


ALL = {"classification_run": classification_run, "classification_linear": classification_linear,
       "llm_blocks": llm_blocks, "llm_linear": llm_linear, "classification_frontier": classification_frontier,
       "llm_frontier": llm_frontier, "export_only": export_only}
