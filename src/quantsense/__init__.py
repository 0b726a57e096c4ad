"""quantsense: layer-wise quantization sensitivity analysis and mixed precision for transformer models.

The library in one screen::

    import quantsense as qs
    ws = qs.open_workspace("path/to/model", data="validation.tsv", task="sst2")  # or a model in memory + tokenizer
    qs.baseline(ws)                                   # FP32 figures
    sens = qs.sensitivity(ws, ["int8", "int4"])       # each block alone, ranked with tiers
    qs.mixed(ws, sens.block_ranking())                # the reference's three strategies
    qs.ablation(ws, sens.block_ranking())             # least sensitive block alone at int4
    front = qs.frontier(ws, [qs.Budget(avg_bits=4.5)], ["int4", "int8"])  # exact allocation, measured
    qs.export(ws, qs.Plan.from_json_dict(front.plans[front.rows[0]["plan"]]), "out-dir")

Everything imported here is lazy: ``import quantsense`` costs nothing until a name is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "open_workspace": "quantsense.workspace",
    "Workspace": "quantsense.workspace",
    "StudyOptions": "quantsense.workspace",
    "run_study": "quantsense.study",
    "StudyRequest": "quantsense.study",
    "run_frontier": "quantsense.search",
    "run_export": "quantsense.study",
    "baseline": "quantsense.study",
    "sensitivity": "quantsense.study",
    "proxies": "quantsense.study",
    "mixed": "quantsense.study",
    "ablation": "quantsense.study",
    "allocate": "quantsense.search",
    "allocations": "quantsense.search",
    "frontier": "quantsense.search",
    "export": "quantsense.study",
    "evaluate_plans": "quantsense.study",
    "block_ranking": "quantsense.study",
    "load_plan": "quantsense.study",
    "Budget": "quantsense.mixed_precision.allocation",
    "preset_budget": "quantsense.search",
    "Plan": "quantsense.quantization.plan",
    "BlockPlan": "quantsense.quantization.plan",
    "QuantConfig": "quantsense.quantization.formats",
    "GGUFFormat": "quantsense.backends.llama_cpp.formats",
    "parse_format": "quantsense.quantization.formats",
    "register_format": "quantsense.quantization.formats",
    "WeightFormat": "quantsense.quantization.formats",
    "SensitivityResult": "quantsense.results",
    "FrontierResult": "quantsense.results",
    "StudyResult": "quantsense.results",
    "PlanRows": "quantsense.results",
    "QuantsenseError": "quantsense.errors",
    "TASKS": "quantsense.tasks",
    "Task": "quantsense.tasks",
    "register_task": "quantsense.tasks",
    "write_results_folder": "quantsense.visualization.results_folder",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantsense' has no attribute {name!r}")
