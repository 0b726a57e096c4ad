"""Typed results of each phase; ``to_dict()`` gives the plain data written to results.json.

Rows stay dicts (one per evaluation, the task's metric keys), so tables, CSVs and reports read
them without knowing the task; a result's own fields say what was measured.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from copy import deepcopy
from dataclasses import dataclass, field, fields
from pathlib import Path

from quantsense.sweeps.record import SweepRecord

SCHEMA_VERSION = 1  # the layout of results.json; visualization.schema.migrate reads every older one


@dataclass
class SensitivityResult:
    unit: str  # "block" or "linear"
    formats: list[str]
    views: list[str]
    rank_by: str  # the row key rankings sort by, e.g. "kl_mean"
    rows: list[dict]
    rankings: dict[str, list[dict]]  # "only@int4" -> ranked rows
    sweep: SweepRecord | None = None  # how the rows were measured: exhaustive, or sequential and its cost

    def ranking(self, fmt: str | None = None, view: str = "only") -> list[dict]:
        """Ranked rows of one format (default: the one with the fewest bits per weight) and view."""
        return self.rankings[f"{view}@{fmt or self.lowest_format()}"]

    def lowest_format(self) -> str:
        bits = {f: [r["bits_per_weight"] for r in self.rows if r["format"] == f] for f in self.formats}
        return min(self.formats, key=lambda f: sum(bits[f]) / len(bits[f]))

    def block_ranking(self, fmt: str | None = None) -> list[int]:
        """Block indices, most sensitive first (needs a block sweep)."""
        ranked = self.ranking(fmt)
        if any(r["block"] is None or r["sub"] is not None for r in ranked):
            raise ValueError("a block ranking needs a sweep with unit='block'")
        return [r["block"] for r in ranked]

    def to_dict(self) -> dict:
        return _with_sweep(self)


@dataclass
class PlanRows:
    """Measured plans (strategies, plan files, an ablation): one row per plan."""

    rows: list[dict]
    plans: dict[str, dict] = field(default_factory=dict)  # plan name -> plan JSON, as measured (to export one)
    skipped: dict[str, str] = field(default_factory=dict)  # plans not measured -> why (e.g. formats that do not fit)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "plans": self.plans, "skipped": self.skipped}


@dataclass
class FrontierResult:
    objective: str  # "kl" or "loss"
    unit: str
    candidates: list[str]
    rows: list[dict]  # allocated, uniform and hand plans, all measured
    plans: dict[str, dict]  # allocated plan name -> plan JSON
    choices: dict[str, dict]  # allocated plan name -> group -> format name (None = FP32)
    groups: dict[str, dict] = field(default_factory=dict)  # group name -> {"block", "layer_kind"}
    sweep: SweepRecord | None = None  # how the single-unit losses were obtained (quantsense.mixed_precision.reduced)
    skipped: dict[str, str] = field(default_factory=dict)  # uniform or hand plans not measured -> why
    # allocated plan -> a given plan that measured better, returned
    preferred: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _with_sweep(self)


@dataclass
class StudyResult:
    provenance: dict
    workspace: dict
    baseline: dict
    sensitivity: SensitivityResult | None = None
    proxies: dict | None = None
    mixed: PlanRows | None = None
    ablation: dict | None = None
    frontier: FrontierResult | None = None
    export: dict | None = None
    ranking: dict | None = None  # {"format": name, "blocks": [...]}: the block ranking the strategies used
    formats: dict = field(default_factory=dict)  # name -> the format's own description (its registry entry's describe)

    def to_dict(self) -> dict:
        out = {
            "schema_version": SCHEMA_VERSION,
            "provenance": self.provenance,
            "workspace": self.workspace,
            "baseline": self.baseline,
        }
        for name in ("sensitivity", "proxies", "ranking", "mixed", "ablation", "frontier", "export"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        if self.formats:
            out["formats"] = self.formats
        return out


def _with_sweep(result) -> dict:
    """A result as results.json holds it: its typed sweep record as a dict with its mode ({} when there is none)."""
    return {
        f.name: (result.sweep.to_dict() if result.sweep else {})
        if f.name == "sweep"
        else deepcopy(getattr(result, f.name))
        for f in fields(result)
    }


def _git_hash() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def provenance(argv: list[str] | None = None) -> dict:
    """Command, time, library versions and git hash: every results file carries them."""
    import numpy
    import torch
    import transformers

    from quantsense import __version__

    argv = list(argv if argv is not None else sys.argv)
    if argv and argv[0].endswith(("quantsense", "cli.py", "__main__.py")):
        argv[0] = "quantsense"  # the command as a user types it, not where it is installed
    return {
        "command": " ".join(argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "quantsense": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
        },
        "git": _git_hash(),
    }
