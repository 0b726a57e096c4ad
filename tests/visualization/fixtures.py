"""Synthetic results dicts in the schema of results.json, for both tasks, with realistic numbers.

A 6-block MiniLM SST-2 classifier (integer formats) and a 30-block SmolLM2 language model (GGUF formats).
Every function is deterministic: the same call returns the same dict. The schema the reports read:
``formats`` (one entry per format used: family, spec, bits_per_weight, code_bits, variant, export_targets,
glossary), the task's description with its columns, ``baseline.summary`` and ``ablation.summary`` sentences,
``data.description``, plan rows with ``kind``/``format``/``budget``/``formats`` and the frontier's ``groups``.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from quantsense.tasks import make_task

MINILM_SUBS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
LLAMA_SUBS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
INT_GLOSSARY = ["int8, int4…", "N-bit integer weights, rounded to nearest on the grid: symmetric per-channel."]
GGUF_GLOSSARY = [
    "q4_0, q5_1, q8_0…",
    "GGUF block formats: weights in blocks of 32 sharing one fp16 scale "
    "(_1 also an fp16 minimum); the digit is the bits per weight before scales.",
]
GGUF = {
    "q8_0": (8.5, 8, "0"),
    "q5_1": (6.0, 5, "1"),
    "q5_0": (5.5, 5, "0"),
    "q4_1": (5.0, 4, "1"),
    "q4_0": (4.5, 4, "0"),
    "f16": (16.0, 16, "f16"),
}  # name -> (bits per weight, code bits, variant), as the GGUF family describes them
BITS_PER_WEIGHT = {
    "int8": 8.08,
    "int6": 6.08,
    "int5": 5.08,
    "int4": 4.08,
    "int3": 3.08,
    "int2": 2.08,
    "q8_0": 8.5,
    "q5_1": 6.0,
    "q5_0": 5.5,
    "q4_1": 5.0,
    "q4_0": 4.5,
    "f16": 16.0,
}
# How much one format hurts relative to the 8-bit format (KL scales roughly with the quantization noise power).
NOISE = {
    "int8": 1.0,
    "int6": 16.0,
    "int5": 64.0,
    "int4": 256.0,
    "int3": 1200.0,
    "int2": 9000.0,
    "q8_0": 1.0,
    "q5_1": 40.0,
    "q5_0": 55.0,
    "q4_1": 150.0,
    "q4_0": 220.0,
    "f16": 0.0004,
}


def format_entry(name: str) -> dict:
    """``results["formats"][name]``: the format's own description, as its registry entry writes it."""
    if name in GGUF:
        bits, code, variant = GGUF[name]
        return {
            "name": name,
            "family": "gguf",
            "spec": {"format": name},
            "label": name,
            "bits_per_weight": bits,
            "code_bits": code,
            "variant": variant,
            "export_targets": ["gguf"],
            "takes_scheme": False,
            "glossary": list(GGUF_GLOSSARY),
        }
    code = {"int8": 8, "int6": 6, "int5": 5, "int4": 4, "int3": 3, "int2": 2}[name]
    return {
        "name": name,
        "family": "int",
        "spec": {"bits": code, "symmetric": True, "granularity": "per_channel"},
        "label": name,
        "bits_per_weight": float(code),
        "code_bits": code,
        "variant": "",
        "export_targets": ["torchao"],
        "takes_scheme": True,
        "glossary": list(INT_GLOSSARY),
    }


def format_table(*names: str) -> dict:
    return {name: format_entry(name) for name in sorted(set(names))}


def _provenance(command: str) -> dict:
    return {
        "command": command,
        "created": "2026-11-27T23:00:00+0000",
        "versions": {
            "quantsense": "0.1.0",
            "python": "3.11.2",
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "numpy": "2.4.6",
        },
        "git": "0b3cf29a5e1c7d0f6c0e8b5d2a4f9e1b3c7d5a20",
    }


def _classification_workspace() -> dict:
    return {
        "model": {
            "source": "/data/models/minilm-l6-sst2",
            "fingerprint": "sha256:5d1f0c2a9b",
            "blocks": 6,
            "block_path": "bert.encoder.layer",
            "device": "cpu",
            "head": "classification head",
            "dtype": "float32",
        },
        "data": {
            "source": "/data/sst2/validation.tsv",
            "fingerprint": "sha256:a07be4412c",
            "task": "sst2",
            "examples": 872,
            "limit": None,
            "description": "872 examples",
        },
        "task": make_task("sst2").describe(),  # the real task's description, as a study writes it
        "scheme": {"symmetric": True, "granularity": "per_channel"},
        "seed": 0,
    }


def _causal_workspace() -> dict:
    return {
        "model": {
            "source": "HuggingFaceTB/SmolLM2-135M",
            "fingerprint": "sha256:9e0c77d13f",
            "blocks": 30,
            "block_path": "model.layers",
            "device": "cpu",
            "head": "language-model head",
            "dtype": "float32",
        },
        "data": {
            "source": "/data/wikitext-2-raw/wiki.test.raw",
            "fingerprint": "sha256:41c2d8e0b7",
            "task": "wikitext",
            "tokens": 4096,
            "context": 1024,
            "stride": 512,
            "description": "first 4096 tokens, context 1024, stride 512",
        },
        "task": make_task("wikitext").describe(),
        "scheme": {"symmetric": True, "granularity": "per_channel"},
        "seed": 0,
    }


CLASSIFICATION_BASELINE = {"accuracy": 89.45, "correct": 780, "n": 872}
CAUSAL_BASELINE = {"perplexity": 20.47, "scored_tokens": 4095, "max_tokens": 4096, "context": 1024, "stride": 512}


def _baseline(causal: bool) -> dict:
    """results["baseline"]: the figures and the task's sentence about them."""
    base = CAUSAL_BASELINE if causal else CLASSIFICATION_BASELINE
    return {**base, "summary": make_task("wikitext" if causal else "sst2").baseline_text(base)}


def _metrics(causal: bool, kl: float, rng: random.Random, baseline: dict) -> dict:
    """Loss and metric figures consistent with a mean KL of ``kl`` (plus sampling noise)."""
    if causal:
        delta = kl * 0.9 + rng.gauss(0, 0.0004)
        half = 0.0015 + 0.08 * kl
        return {
            "perplexity": baseline["perplexity"] * math.exp(delta),
            "ppl_ratio": math.exp(delta),
            "tokens": baseline["scored_tokens"],
            "delta_nll": delta,
            "delta_nll_ci_low": delta - half,
            "delta_nll_ci_high": delta + half,
            "top1_agreement": max(40.0, 100.0 - 50.0 * math.sqrt(kl)),
            "distinguishable_from_fp32": delta - half > 0,
        }
    n = baseline["n"]
    broken = max(0, round(n * kl * 0.9 + rng.random() * 2))
    fixed = max(0, round(broken * 0.25 + rng.random() * 1.5))
    correct = baseline["correct"] - broken + fixed
    drop = 100.0 * (broken - fixed) / n
    half = 100.0 * 1.96 * math.sqrt(broken + fixed + 1) / n
    flips = broken + fixed
    p = 1.0 if flips == 0 else min(1.0, 2 * sum(math.comb(flips, k) for k in range(min(fixed, broken) + 1)) / 2**flips)
    return {
        "accuracy": 100.0 * correct / n,
        "correct": correct,
        "n": n,
        "drop": drop,
        "drop_ci_low": drop - half,
        "drop_ci_high": drop + half,
        "mcnemar_p": p,
        "fixed": fixed,
        "broken": broken,
        "flip_rate": 100.0 * flips / n,
        "logit_sqnr_db": 10 * math.log10(1.0 / max(kl, 1e-9)) - 3.0,
        "distinguishable_from_fp32": p < 0.05,
    }


def _row(
    unit: str,
    block: int | None,
    sub: str | None,
    fmt: str,
    view: str,
    kl: float,
    causal: bool,
    rng: random.Random,
    baseline: dict,
) -> dict:
    spread = 0.12 + 0.1 * rng.random()
    row = {
        "unit": unit,
        "block": block,
        "sub": sub,
        "format": fmt,
        "bits_per_weight": BITS_PER_WEIGHT[fmt],
        "view": view,
        "kl_mean": kl,
        "kl_ci_low": kl * (1 - spread),
        "kl_ci_high": kl * (1 + spread),
        "kl_p95": kl * 3.4,
        "weight_sqnr_db": 6.02 * BITS_PER_WEIGHT[fmt] - 9.5 + rng.gauss(0, 0.4),
    }
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


def _sensitivity(
    causal: bool, unit: str, blocks: int, subs: tuple, formats: list[str], views: list[str], block_path: str, seed: int
) -> dict:
    rng = random.Random(seed)
    baseline = CAUSAL_BASELINE if causal else CLASSIFICATION_BASELINE
    units = (
        [(f"block {b}", b, None) for b in range(blocks)]
        if unit == "block"
        else [(f"{block_path}.{b}.{s}", b, s) for b in range(blocks) for s in subs]
    )
    weight = {
        name: (3.0 if b in (0, blocks - 1) else 1.0)
        * (1 + rng.random())
        * (2.5 if s in ("mlp.down_proj", "output.dense") else 1.0)
        for name, b, s in units
    }
    base_kl = 2e-4 if causal else 4e-5
    if unit == "linear":
        base_kl /= len(subs)
    rows = []
    for view in views:
        for fmt in formats:
            for name, b, s in units:
                kl = base_kl * NOISE[fmt] * (weight[name] if view == "only" else sum(weight.values()) - weight[name])
                rows.append(_row(name, b, s, fmt, view, kl, causal, rng, baseline))
    rankings = {
        f"{view}@{fmt}": assign_tiers([r for r in rows if r["view"] == view and r["format"] == fmt])
        for view in views
        for fmt in formats
    }
    return {"unit": unit, "formats": formats, "views": views, "rank_by": "kl_mean", "rows": rows, "rankings": rankings}


def _plan_row(
    plan: str,
    kind: str,
    avg_bits: float,
    kl: float,
    causal: bool,
    rng: random.Random,
    predicted: float | None,
    counts: dict,
    fmt: str | None = None,
    budget: dict | None = None,
) -> dict:
    baseline = CAUSAL_BASELINE if causal else CLASSIFICATION_BASELINE
    if causal:  # SmolLM2-135M: 106.2M block linear weights, 28.3M others kept in FP32
        model_mb, fp32_mb = (106.2e6 * avg_bits / 8 + 28.3e6 * 4) / 1e6, 538.0
    else:  # MiniLM-L6: 10.6M block linear weights, 12.1M others
        model_mb, fp32_mb = (10.6e6 * avg_bits / 8 + 12.1e6 * 4) / 1e6, 90.8
    row = {
        "plan": plan,
        "kind": kind,
        "format": fmt,
        "budget": budget,
        "avg_bits": avg_bits,
        "model_mb": model_mb,
        "compression": fp32_mb / model_mb,
        "kl_mean": kl,
        "kl_ci_low": kl * 0.85,
        "kl_ci_high": kl * 1.15,
        "kl_p95": kl * 3.1,
        "formats": dict(sorted(counts.items())),
    }
    row.update(_metrics(causal, kl, rng, baseline))
    loss = row["delta_nll" if causal else "drop"]
    row["predicted_loss"] = predicted
    row["measured_over_predicted"] = None if predicted in (None, 0) else loss / predicted
    return row


def _units(causal: bool) -> list[tuple[str, int, str]]:
    """(name, block, layer kind) of every linear unit."""
    if causal:
        return [(f"model.layers.{b}.{s}", b, s) for b in range(30) for s in LLAMA_SUBS]
    return [(f"bert.encoder.layer.{b}.{s}", b, s) for b in range(6) for s in MINILM_SUBS]


def _counts(choice: dict) -> dict:
    return dict(Counter(f for f in choice.values() if f is not None))


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
        units[name] = format_entry(fmt)["spec"]
    return {"version": 1, "units": units}


def _frontier(causal: bool, seed: int) -> dict:
    rng = random.Random(seed)
    names = [name for name, _, _ in _units(causal)]
    if causal:
        candidates = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"]
        kl_of = {"q4_0": 0.095, "q4_1": 0.066, "q5_0": 0.027, "q5_1": 0.019, "q8_0": 0.0007, "f16": 1e-6}
        targets = [
            (4.75, 0.041, 0.036),
            (5.0, 0.028, 0.025),
            (5.5, 0.014, 0.013),
            (6.0, 0.0062, 0.0059),
            (7.0, 0.0021, 0.0018),
        ]
        hand = [("targeted_single_block", 4.62, 0.071), ("first_last_q8_0", 4.83, 0.052)]
    else:
        candidates = ["int2", "int3", "int4", "int5", "int6", "int8"]
        kl_of = {"int2": 0.62, "int3": 0.11, "int4": 0.024, "int5": 0.0061, "int6": 0.0016, "int8": 0.0001}
        targets = [
            (3.5, 0.052, 0.040),
            (4.0, 0.017, 0.019),
            (4.5, 0.0052, 0.0060),
            (5.0, 0.0024, 0.0030),
            (6.0, 0.0007, 0.0009),
        ]
        hand = [("targeted_single_block", 4.42, 0.019), ("attention_int8_mlp_int4", 5.36, 0.013)]
    rows, plans, choices = [], {}, {}
    for fmt in candidates:
        rows.append(
            _plan_row(
                f"uniform {fmt}",
                "uniform",
                BITS_PER_WEIGHT[fmt],
                kl_of[fmt],
                causal,
                rng,
                None,
                {fmt: len(names)},
                fmt=fmt,
            )
        )
    for bits, kl, predicted_kl in targets:
        name = f"allocated@{bits:g} bits/weight"
        choice = _allocate(names, candidates, bits)
        row = _plan_row(
            name,
            "allocated",
            bits - 0.01 - 0.03 * rng.random(),
            kl,
            causal,
            rng,
            None,
            _counts(choice),
            budget={"avg_bits": bits},
        )
        loss_key = "delta_nll" if causal else "drop"
        row["predicted_loss"] = row[loss_key] * predicted_kl / kl
        row["measured_over_predicted"] = kl / predicted_kl
        rows.append(row)
        choices[name] = choice
        plans[name] = _plan_entry(choice)
    wide, narrow = ("q8_0", candidates[0]) if causal else ("int8", candidates[2])
    for name, bits, kl in hand:
        choice = {n: (wide if b in (0, 5) else narrow) for n, b, _ in _units(causal)}
        rows.append(_plan_row(name, "hand", bits, kl, causal, rng, None, _counts(choice)))
    groups = {n: {"block": b, "layer_kind": kind} for n, b, kind in _units(causal)}
    return {
        "objective": "kl",
        "unit": "linear",
        "candidates": candidates,
        "rows": rows,
        "plans": plans,
        "choices": choices,
        "groups": groups,
    }


def _results(command: str, causal: bool, formats, **sections) -> dict:
    """A results dict: provenance, workspace, baseline, the ``formats`` table of ``formats``, and ``sections``."""
    return {
        "provenance": _provenance(command),
        "workspace": _causal_workspace() if causal else _classification_workspace(),
        "baseline": _baseline(causal),
        "formats": format_table(*formats),
        **sections,
    }


def _mixed_rows(rng: random.Random) -> list[dict]:
    """The reference strategies on the 6-block classifier's 36 linear units."""
    return [
        _plan_row("uniform int8", "mixed", 8.08, 0.0001, False, rng, None, {"int8": 36}),
        _plan_row("uniform int4", "mixed", 4.08, 0.024, False, rng, None, {"int4": 36}),
        _plan_row(
            "sensitivity-aware 6 bits", "mixed", 6.0, 0.0009, False, rng, 0.0011, {"int8": 12, "int6": 12, "int4": 12}
        ),
        _plan_row("sensitivity-aware 5 bits", "mixed", 5.0, 0.0031, False, rng, 0.0035, {"int6": 18, "int4": 18}),
    ]


def _ablation(rng: random.Random) -> dict:
    """Only block 5 at int4: the measured row, its identity and the task's sentence about it."""
    row = _plan_row("block5@int4", "ablation", 27.35, 0.0061, False, rng, None, {"int4": 6})
    return {**row, "block": 5, "format": "int4", "summary": make_task("sst2").effect_text(row)}


def classification_run() -> dict:
    """`quantsense run` on the 6-block classifier: block sensitivity (only and all-but views), mixed plans, ablation."""
    rng = random.Random(11)
    sensitivity = _sensitivity(
        False, "block", 6, (), ["int8", "int4"], ["only", "all_but"], "bert.encoder.layer", seed=1
    )
    return _results(
        "quantsense run --model minilm-l6-sst2 --data sst2 --out results/run",
        False,
        ["int8", "int6", "int4"],
        sensitivity=sensitivity,
        mixed={"rows": _mixed_rows(rng)},
        ablation=_ablation(rng),
    )


def classification_linear() -> dict:
    """Linear-unit sensitivity of the 6-block classifier at int8 and int4."""
    return _results(
        "quantsense sensitivity --unit linear --formats int8,int4",
        False,
        ["int8", "int4"],
        sensitivity=_sensitivity(
            False, "linear", 6, MINILM_SUBS, ["int8", "int4"], ["only"], "bert.encoder.layer", seed=2
        ),
    )


def llm_blocks() -> dict:
    """Block sensitivity of the 30-block language model at three GGUF formats."""
    return _results(
        "quantsense sensitivity --model SmolLM2-135M --formats q8_0,q5_0,q4_0",
        True,
        ["q8_0", "q5_0", "q4_0"],
        sensitivity=_sensitivity(True, "block", 30, (), ["q8_0", "q5_0", "q4_0"], ["only"], "model.layers", seed=3),
    )


def llm_linear() -> dict:
    """Linear-unit sensitivity of the 30-block language model (210 units) at q8_0 and q4_0."""
    return _results(
        "quantsense sensitivity --unit linear --formats q8_0,q4_0",
        True,
        ["q8_0", "q4_0"],
        sensitivity=_sensitivity(True, "linear", 30, LLAMA_SUBS, ["q8_0", "q4_0"], ["only"], "model.layers", seed=4),
    )


def _with_frontier(results: dict, command: str, causal: bool, seed: int) -> dict:
    frontier = _frontier(causal, seed)
    return {
        **results,
        "provenance": _provenance(command),
        "frontier": frontier,
        "formats": format_table(*results["formats"], *frontier["candidates"]),
    }


def classification_frontier() -> dict:
    """Frontier of the 6-block classifier over int2..int8, with linear sensitivity."""
    return _with_frontier(
        classification_linear(), "quantsense frontier --candidates int2,int3,int4,int5,int6,int8", False, seed=5
    )


def llm_frontier() -> dict:
    """Frontier of the 30-block language model over GGUF formats, with block sensitivity."""
    return _with_frontier(llm_blocks(), "quantsense frontier --candidates q4_0,q4_1,q5_0,q5_1,q8_0,f16", True, seed=6)


def export_only() -> dict:
    """`quantsense export`: no sensitivity or plans, only what was written and how big it is."""
    return _results(
        "quantsense export --plan plan.json --out out/minilm-mixed",
        False,
        ["int8", "int4"],
        export={
            "out": "out/minilm-mixed",
            "format": "torchao int8/int4",
            "disk_bytes": 61_884_416,
            "predicted_bytes": 61_340_000,
            "verified_accuracy": 89.22,
            "verified_drop": 0.23,
        },
    )


ALL = {
    "classification_run": classification_run,
    "classification_linear": classification_linear,
    "llm_blocks": llm_blocks,
    "llm_linear": llm_linear,
    "classification_frontier": classification_frontier,
    "llm_frontier": llm_frontier,
    "export_only": export_only,
}
