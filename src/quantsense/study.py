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
from quantsense.data.classification import ClassificationData, load_classification_data
from quantsense.data.text import TextData, load_text
from quantsense.engine import Engine, Evaluator
from quantsense.errors import QuantsenseError
from quantsense.evaluation.batching import make_batches, tokenize_texts
from quantsense.evaluation.heads import CausalLMHead, ClassificationHead
from quantsense.evaluation.language_model import (
    compare_causal,
    make_windows,
    perplexity,
)
from quantsense.evaluation.metrics import EvalResult, compare_classification
from quantsense.mixed_precision.allocation import Allocation, allocate, make_groups
from quantsense.mixed_precision.size import average_bits, model_bytes
from quantsense.mixed_precision.strategies import (
    single_block_plan,
    strategy_plans,
    uniform_plan,
)
from quantsense.models.loading import LoadedModel, load_model, weights_fingerprint
from quantsense.models.units import UnitMap, discover_units
from quantsense.quantization.export import export_bytes, export_plan, weights_file_bytes
from quantsense.sensitivity.proxies import (
    fisher_diagonal,
    proxy_correlations,
    proxy_rows,
)
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
    batch_tokens: int = 1024
    blocks_regex: str | None = None
    store: str | None = None  # None: no store
    fresh: bool = False
    quiet: bool = False
    seed: int = 0
    scheme: QuantConfig = field(default_factory=lambda: QuantConfig(bits=8))
    prefix_reuse: bool = True
    task: str = "sst2"  # "sst2" (sentence classification) or "wikitext" (causal LM perplexity)
    max_tokens: int = 4096
    context: int = 1024
    stride: int = 512


TASKS = {"sst2": "classification", "wikitext": "causal"}


@dataclass
class Workspace:
    options: StudyOptions
    loaded: LoadedModel
    units: UnitMap
    data: ClassificationData | TextData
    engine: Engine
    model_fp: str
    data_fp: str

    @property
    def causal(self) -> bool:
        return self.loaded.kind == "causal"

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.causal else self.data.labels

    def compare(self, reference: EvalResult, quantized: EvalResult) -> dict:
        """Every paired metric of a quantized run against FP32, for this task."""
        if self.causal:
            return compare_causal(reference, quantized, seed=self.options.seed)
        return compare_classification(reference, quantized, self.labels, seed=self.options.seed)

    def describe(self) -> dict:
        batches = self.engine.evaluator.batches
        data = {"source": self.data.source, "fingerprint": self.data_fp, "task": self.options.task}
        if self.causal:
            data.update(batches.settings)
        else:
            data.update({"examples": len(self.data), "limit": self.options.limit})
        return {
            "model": {"source": self.loaded.source, "fingerprint": self.model_fp, "blocks": self.units.num_blocks,
                      "block_path": self.units.block_prefix, "device": str(self.loaded.device), "kind": self.loaded.kind},
            "data": data,
            "scheme": self.options.scheme.to_dict(),
            "seed": self.options.seed,
        }


def _sentence_batches(options: StudyOptions, loaded: LoadedModel, texts: list[str]):
    encoded = tokenize_texts(loaded.tokenizer, texts, options.max_length)
    return make_batches(encoded, loaded.tokenizer.pad_token_id, max_batch_tokens=options.batch_tokens)


def _classification_batches(options: StudyOptions, loaded: LoadedModel):
    data = load_classification_data(options.data, loaded.id2label, options.limit)
    return data, _sentence_batches(options, loaded, data.texts)


def _text_batches(options: StudyOptions, loaded: LoadedModel):
    data = load_text(options.data)
    if options.stride > options.context:
        raise QuantsenseError(f"--stride {options.stride} must not exceed --context {options.context}")
    ids = loaded.tokenizer(data.text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise QuantsenseError(f"text file {data.source} has fewer than 2 tokens")
    return data, make_windows(ids, options.max_tokens, options.context, options.stride)


def open_workspace(options: StudyOptions) -> Workspace:
    if options.task not in TASKS:
        raise QuantsenseError(f"unknown task {options.task!r}; use one of {', '.join(TASKS)}")
    loaded = load_model(options.model, TASKS[options.task], options.device)
    units = discover_units(loaded.model, options.blocks_regex)
    if loaded.kind == "causal":
        data, batches = _text_batches(options, loaded)
        head = CausalLMHead()
    else:
        data, batches = _classification_batches(options, loaded)
        head = ClassificationHead()
    evaluator = Evaluator(loaded.model, units, batches, loaded.device, prefix_reuse=options.prefix_reuse, head=head)
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
    if ws.causal:
        raise QuantsenseError("proxies are implemented for classification tasks (sst2) only")
    calib = calibration_data(ws, calibration_path, size)
    batches = _sentence_batches(ws.options, ws.loaded, calib.texts)
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
    if ws.causal:
        settings = ws.engine.evaluator.batches.settings
        return {**settings, "perplexity": perplexity(ref), "scored_tokens": int(len(ref.arrays["token_logprob"]))}
    correct = int((ref.predictions == ws.labels).sum())
    return {"accuracy": 100 * correct / len(ws.labels), "correct": correct, "n": len(ws.labels)}


def sensitivity(ws: Workspace, bits: list[int], granularity: str = "block", views: tuple[str, ...] = ("only",),
                include_extra: bool = False, rank_by: str = "kl_mean", blocks: list[int] | None = None) -> dict:
    """Rows for every unit x bit-width x view (optionally only inside ``blocks``), and a ranking per (bits, view)."""
    if rank_by == "drop" and ws.causal:
        rank_by = "delta_nll"
    entries = build_entries(ws.units, bits, ws.options.scheme, granularity, views, include_extra, blocks)
    rows = run_sweep(ws.engine, entries, ws.compare, desc=f"{granularity} sweep")
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
        metrics = ws.compare(reference, results[name])
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


def loss_key(ws: Workspace, objective: str) -> str:
    """The metric an allocation objective sums: mean KL, or the task's loss (accuracy drop / NLL increase)."""
    return {"kl": "kl_mean", "drop": "delta_nll" if ws.causal else "drop"}[objective]


def unit_losses(ws: Workspace, candidates: list[int], granularity: str, objective: str) -> tuple[dict, dict]:
    """Measured loss of every unit alone at every candidate bit-width (from the store when finished)."""
    sens = sensitivity(ws, sorted(candidates, reverse=True), granularity)
    key = loss_key(ws, objective)
    losses = {}
    for row in sens["rows"]:
        names = ws.units.block_units(int(row["unit"].split()[-1])) if granularity == "block" else [row["unit"]]
        value = max(row[key], 0.0) if objective == "drop" else row[key]
        for name in names:  # a block's loss is carried by its units so groups can sum them
            losses[(name, row["bits"])] = value / len(names)
    return losses, sens


def allocate_plans(ws: Workspace, budgets: list, candidates: list[int], granularity: str = "block",
                   tie: str | None = None, objective: str = "kl") -> list[tuple[str, Allocation]]:
    losses, _ = unit_losses(ws, candidates, granularity, objective)
    groups = make_groups(ws.units, granularity, tie)
    out = []
    for budget in budgets:
        allocation = allocate(ws.units, ws.loaded.model, groups, losses, candidates, budget, ws.options.scheme)
        out.append((f"allocated@{budget.label()}", allocation))
    return out


def frontier(ws: Workspace, budgets: list, candidates: list[int], granularity: str = "block", tie: str | None = None,
             objective: str = "kl") -> dict:
    """Allocated plans over budgets, uniform baselines and hand strategies, all measured; predicted vs measured."""
    allocations = allocate_plans(ws, budgets, candidates, granularity, tie, objective)
    named: dict[str, Plan] = {name: a.plan for name, a in allocations}
    kinds = {name: "allocated" for name in named}
    for bits in sorted(candidates, reverse=True):
        named[f"uniform int{bits}"] = uniform_plan(ws.units, bits, ws.options.scheme)
        kinds[f"uniform int{bits}"] = "uniform"
    ranking = block_ranking(sensitivity(ws, [min([b for b in candidates if b >= 4] or candidates)]))
    for name, (plan, _) in strategy_plans(ws.units, ranking, ws.options.scheme).items():
        named[name] = plan
        kinds[name] = "hand"
    rows = evaluate_plans(ws, named, desc="frontier")
    predicted = {name: a.predicted_loss for name, a in allocations}
    for row in rows:
        row["kind"] = kinds[row["plan"]]
        row["predicted_loss"] = predicted.get(row["plan"])
        if row["predicted_loss"]:
            row["measured_over_predicted"] = row[loss_key(ws, objective)] / row["predicted_loss"]
    plans = {name: a.plan.to_json_dict() for name, a in allocations}
    choices = {name: dict(a.choices) for name, a in allocations}
    return {"objective": objective, "granularity": granularity, "candidates": candidates, "rows": rows,
            "plans": plans, "choices": choices}


def export(ws: Workspace, plan: Plan, out: str | Path, verify: bool = True) -> dict:
    """Export ``plan`` with torchao, reload it in a fresh process without quantsense, and measure it."""
    path = export_plan(ws.loaded.source, ws.loaded.kind, ws.units, plan, out, ws.loaded.model, ws.loaded.tokenizer)
    fp32_bytes = model_bytes(ws.loaded.model, ws.units, Plan())
    report = {
        "out": str(path),
        "plan_avg_bits": average_bits(ws.units, plan),
        "disk_bytes": weights_file_bytes(path),
        "predicted_export_bytes": export_bytes(ws.loaded.model, ws.units, plan),
        "predicted_packed_bytes": model_bytes(ws.loaded.model, ws.units, plan),
        "fp32_param_bytes": fp32_bytes,
    }
    source = Path(ws.loaded.source)
    report["fp32_disk_bytes"] = weights_file_bytes(source) if source.is_dir() else fp32_bytes
    if source.suffix == ".gguf":
        report["note"] = "GGUF source: FP32 size is the de-quantized fp32 parameters, not the GGUF file"
    report["disk_factor"] = report["fp32_disk_bytes"] / report["disk_bytes"]
    report["predicted_factor"] = fp32_bytes / report["predicted_export_bytes"]
    report["packed_factor"] = fp32_bytes / report["predicted_packed_bytes"]
    if not verify:
        return report
    simulated = ws.engine.evaluate_many([("export plan", plan)], desc="simulated plan")["export plan"]
    report.update(_verify_causal_export(path, ws, simulated) if ws.causal else _verify_classification_export(path, ws, simulated))
    return report


def _run_verifier(args: list[str], cwd: str | None = None) -> dict:
    """Run ``verify_export.py`` in a fresh interpreter (no quantsense imported) and parse its JSON line."""
    import json
    import subprocess
    import sys

    from quantsense.quantization import verify_export

    proc = subprocess.run([sys.executable, verify_export.__file__, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"reloading the export failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reload_facts(check: dict) -> dict:
    return {"reloaded_weight_class": check["weight_class"], "quantsense_imported_by_reload": check["quantsense_imported"]}


def _verify_causal_export(path: Path, ws: Workspace, simulated: EvalResult) -> dict:
    """Reload in a fresh process and compare per-token log-probs with the simulated plan's."""
    o = ws.options
    if not o.data:
        raise QuantsenseError("verifying a causal export needs a local --data text file")
    check = _run_verifier(["--causal", str(path.resolve()), str(Path(o.data).resolve()), str(o.max_tokens),
                           str(o.context), str(o.stride)])
    exported = np.asarray(check["token_logprob"], dtype=np.float64)
    sim = simulated.arrays["token_logprob"].astype(np.float64)
    return {
        "exported_perplexity": float(np.exp(-exported.mean())),
        "simulated_perplexity": float(np.exp(-sim.mean())),
        "max_token_logprob_difference": float(np.abs(exported - sim).max()),
        **_reload_facts(check),
    }


def _verify_classification_export(path: Path, ws: Workspace, simulated: EvalResult) -> dict:
    """Reload in a fresh process: predictions against the simulation, and latency against FP32."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.tsv"
        data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(ws.data.texts, ws.labels.tolist())))
        source = Path(ws.loaded.source)
        fp32 = str(source.resolve()) if source.exists() else ws.loaded.source
        check = _run_verifier([str(path.resolve()), fp32, str(data)], cwd=tmp)
    exported = np.asarray(check["predictions"])
    return {
        "exported_accuracy": 100 * float((exported == ws.labels).mean()),
        "simulated_accuracy": 100 * float((simulated.predictions == ws.labels).mean()),
        "predictions_differing": int((exported != simulated.predictions).sum()),
        "latency_exported_ms": 1000 * check["latency_exported_s"],
        "latency_fp32_ms": 1000 * check["latency_fp32_s"],
        "latency_batch_shape": check["batch_shape"],
        **_reload_facts(check),
    }


__all__ = ["StudyOptions", "Workspace", "ablation", "allocate_plans", "baseline", "block_ranking", "export", "frontier",
           "least_sensitive_blocks", "mixed", "open_workspace", "proxies", "sensitivity", "unit_losses"]
