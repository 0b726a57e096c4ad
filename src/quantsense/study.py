"""The reference study as library calls: baseline, per-block sensitivity, mixed precision, ablation.

A :class:`Workspace` holds what every phase shares (model, units, data, token batches, engine);
each phase is a function of it, so the CLI, the ``experiments`` scripts, notebooks and tests call
the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantsense.config import BlockPlan, Plan, QuantConfig
from quantsense.errors import QuantsenseError
from quantsense.data.classification import ClassificationData, load_classification_data
from quantsense.engine import Engine, Evaluator
from quantsense.evaluation.batching import make_batches, tokenize_texts
from quantsense.evaluation.metrics import compare_classification
from quantsense.mixed_precision.size import average_bits, model_bytes
from quantsense.mixed_precision.strategies import single_block_plan, strategy_plans
from quantsense.models.loading import LoadedModel, load_model, weights_fingerprint
from quantsense.models.units import UnitMap, discover_units
from quantsense.sensitivity.proxies import fisher_diagonal, proxy_correlations, proxy_rows
from quantsense.sensitivity.ranking import least_sensitive_blocks, rank_rows
from quantsense.sensitivity.sweep import build_entries, run_sweep
from quantsense.store import ResultStore

REFERENCE_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"


@dataclass
class StudyOptions:
    model: str = REFERENCE_MODEL
    data: str | None = None
    limit: int | None = None
    device: str = "auto"
    max_length: int = 512
    batch_tokens: int = 4096
    blocks_regex: str | None = None
    store: str | None = None  # None: no store
    fresh: bool = False
    quiet: bool = False
    seed: int = 0
    scheme: QuantConfig = field(default_factory=lambda: QuantConfig(bits=8))
    prefix_reuse: bool = True


@dataclass
class Workspace:
    options: StudyOptions
    loaded: LoadedModel
    units: UnitMap
    data: ClassificationData
    engine: Engine
    model_fp: str
    data_fp: str

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels

    def describe(self) -> dict:
        return {
            "model": {"source": self.loaded.source, "fingerprint": self.model_fp, "blocks": self.units.num_blocks,
                      "block_path": self.units.block_prefix, "device": str(self.loaded.device)},
            "data": {"source": self.data.source, "examples": len(self.data), "fingerprint": self.data_fp,
                     "limit": self.options.limit},
            "scheme": self.options.scheme.to_dict(),
            "seed": self.options.seed,
        }


def open_workspace(options: StudyOptions) -> Workspace:
    loaded = load_model(options.model, "classification", options.device)
    units = discover_units(loaded.model, options.blocks_regex)
    data = load_classification_data(options.data, loaded.id2label, options.limit)
    encoded = tokenize_texts(loaded.tokenizer, data.texts, options.max_length)
    batches = make_batches(encoded, loaded.tokenizer.pad_token_id, max_batch_tokens=options.batch_tokens)
    evaluator = Evaluator(loaded.model, units, batches, loaded.device, prefix_reuse=options.prefix_reuse)
    model_fp = weights_fingerprint(loaded.model)
    data_fp = f"{data.fingerprint()}-{batches.fingerprint()}"
    store = ResultStore(options.store) if options.store else None
    engine = Engine(evaluator, model_fp, data_fp, store=store, fresh=options.fresh, quiet=options.quiet)
    return Workspace(options, loaded, units, data, engine, model_fp, data_fp)


def calibration_data(ws: Workspace, path: str, size: int) -> ClassificationData:
    """A seeded sample of ``size`` examples from ``path`` with every evaluation sentence excluded."""
    pool = load_classification_data(path, ws.loaded.id2label)
    held_out = set(ws.data.texts)
    order = np.random.default_rng(ws.options.seed).permutation(len(pool))
    chosen = [i for i in order.tolist() if pool.texts[i] not in held_out][:size]
    if len(chosen) < size:
        raise QuantsenseError(f"calibration file {path} has only {len(chosen)} examples not in the evaluation set; need {size}")
    return ClassificationData([pool.texts[i] for i in chosen], pool.labels[chosen], f"{path} (sample of {size})")


def proxies(ws: Workspace, calibration_path: str, size: int, bits: list[int], granularity: str = "block") -> dict:
    """Proxy scores per unit and their Spearman correlation with the measured sweep."""
    calib = calibration_data(ws, calibration_path, size)
    encoded = tokenize_texts(ws.loaded.tokenizer, calib.texts, ws.options.max_length)
    batches = make_batches(encoded, ws.loaded.tokenizer.pad_token_id, max_batch_tokens=ws.options.batch_tokens)
    applier = ws.engine.evaluator.applier
    calib_eval = Evaluator(ws.loaded.model, ws.units, batches, ws.loaded.device, applier=applier)
    measured = sensitivity(ws, bits, granularity)
    fisher = fisher_diagonal(ws.loaded.model, ws.units, calib_eval.device_batches(), calib.labels)
    entries = build_entries(ws.units, bits, ws.options.scheme, granularity, ("only",))
    rows = proxy_rows(entries, applier, calib_eval, calib_eval.reference(), fisher)
    return {"calibration": {"source": calib.source, "examples": len(calib), "disjoint_from_evaluation": True},
            "granularity": granularity, "rows": rows, "correlations": proxy_correlations(rows, measured["rows"])}


def baseline(ws: Workspace) -> dict:
    ref = ws.engine.reference()
    correct = int((ref.predictions == ws.labels).sum())
    return {"accuracy": 100 * correct / len(ws.labels), "correct": correct, "n": len(ws.labels)}


def sensitivity(ws: Workspace, bits: list[int], granularity: str = "block", views: tuple[str, ...] = ("only",),
                include_extra: bool = False, rank_by: str = "kl_mean") -> dict:
    """Rows for every unit x bit-width x view, and a ranking per (bits, view)."""
    entries = build_entries(ws.units, bits, ws.options.scheme, granularity, views, include_extra)
    rows = run_sweep(ws.engine, entries, ws.labels, seed=ws.options.seed, desc=f"{granularity} sweep")
    rankings = {}
    for b in bits:
        for view in views:
            subset = [r for r in rows if r["bits"] == b and r["view"] == view]
            rankings[f"{view}@int{b}"] = rank_rows(subset, rank_by, view=view)
    return {"granularity": granularity, "bits": bits, "views": list(views), "rank_by": rank_by, "rows": rows,
            "rankings": rankings}


def block_ranking(sens: dict) -> list[int]:
    """Block indices, most sensitive first, by the lowest bit-width's "only" ranking."""
    ranked = sens["rankings"][f"only@int{min(sens['bits'])}"]
    return [int(r["unit"].split()[-1]) for r in ranked]


def evaluate_plans(ws: Workspace, named: dict[str, Plan], desc: str) -> list[dict]:
    """Evaluate named plans and return a row per plan with metrics and size."""
    reference = ws.engine.reference()
    results = ws.engine.evaluate_many(list(named.items()), desc=desc)
    fp32_bytes = model_bytes(ws.loaded.model, ws.units, Plan())
    rows = []
    for name, plan in named.items():
        metrics = compare_classification(reference, results[name], ws.labels, seed=ws.options.seed)
        size = model_bytes(ws.loaded.model, ws.units, plan)
        rows.append({"plan": name, **metrics, "avg_bits": average_bits(ws.units, plan),
                     "model_mb": size / 1e6, "compression": fp32_bytes / size})
    return rows


def mixed(ws: Workspace, ranking: list[int], plan_files: list[str] = ()) -> dict:
    """The three reference strategies derived from ``ranking``, plus user plan files."""
    named, bits_by_plan = {}, {}
    for name, (plan, bits) in strategy_plans(ws.units, ranking, ws.options.scheme).items():
        named[name], bits_by_plan[name] = plan, bits
    for path in plan_files:
        plan = Plan.load(path)
        if isinstance(plan, BlockPlan):
            plan = plan.resolve(ws.units.all_block_units())
        for unit in plan.units():
            ws.units.get(unit)
        named[f"file:{Path(path).name}"] = plan
    rows = evaluate_plans(ws, named, desc="mixed precision")
    for row in rows:
        row["bits_by_block"] = bits_by_plan.get(row["plan"])
    return {"rows": rows}


def ablation(ws: Workspace, ranking: list[int], bits: int = 4) -> dict:
    """Only the least sensitive block at ``bits``, all others FP32."""
    block = ranking[-1]
    rows = evaluate_plans(ws, {f"block{block}@int{bits}": single_block_plan(ws.units, block, bits, ws.options.scheme)},
                          desc="ablation")
    return {"block": block, "bits": bits, **rows[0]}


__all__ = ["StudyOptions", "Workspace", "ablation", "baseline", "block_ranking", "least_sensitive_blocks",
           "mixed", "open_workspace", "sensitivity"]
