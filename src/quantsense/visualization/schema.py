"""The typed reader of results.json: what the task measured, what each format is, what each plan is.

Plots, report.html and summary.md read a results dict through these types and functions; none of them parses a
format or plan name, guesses the task from row keys or asks the task registry, so a report of a task that is not
registered in this process still renders.

results.json carries ``schema_version`` (:data:`SCHEMA_VERSION`); :func:`migrate` is the one place that knows an
older layout, bringing results written before up to this one a step at a time (and refusing a newer one); every
reader here reads the migrated results. Results with no ``formats`` table (written by API users, or very old) have
every format unknown (no widths, no family, a stable hash colour).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from quantsense.errors import QuantsenseError
from quantsense.results import SCHEMA_VERSION  # the layout of results.json this version writes and reads

FP32 = "fp32"  # how counts and texts name units left unquantized (a choice of None)


def migrate(results: dict) -> dict:
    """``results`` in this version's layout: unchanged when current, else a migrated copy (one step per version);
    results from a newer quantsense are refused."""
    version = results.get("schema_version", 0) if isinstance(results, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise QuantsenseError(f"results have schema_version {version!r}, not a version number: re-run the study")
    if version > SCHEMA_VERSION:
        raise QuantsenseError(
            f"these results were written by a newer quantsense (schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}): upgrade quantsense to read them"
        )
    if version == SCHEMA_VERSION:
        return results
    out = copy.deepcopy(results)
    for step in _STEPS[version:]:
        step(out)
    return out


def _to_v1(results: dict) -> None:
    """Results written before schema versions: the task's printed columns, a plan row's kind, the baseline's and the
    ablation's sentences, the frontier's unit groups and each format's ``takes_scheme`` were not recorded yet."""
    task = (results.get("workspace") or {}).get("task")
    if isinstance(task, dict) and isinstance(task.get("metric"), dict) and isinstance(task.get("loss"), dict):
        metric, loss = task["metric"], task["loss"]
        m, lo = (metric.get("key"), metric.get("label")), (loss.get("key"), loss.get("label"))
        losses = [list(lo), [loss.get("ci_low"), "CI low"], [loss.get("ci_high"), "CI high"]]
        task["sensitivity_columns"] = task.get("sensitivity_columns") or [
            ["unit", "unit"],
            ["format", "format"],
            ["view", "view"],
            list(m),
            *losses,
            ["kl_mean", "KL mean"],
        ]
        task["ranking_columns"] = task.get("ranking_columns") or [
            ["rank", "rank"],
            ["unit", "unit"],
            ["kl_mean", "KL mean"],
            ["kl_ci_low", "KL CI low"],
            ["kl_ci_high", "KL CI high"],
            list(lo),
            ["tier", "tier"],
            ["distinguishable_from_fp32", "differs from FP32"],
        ]
        task["plan_columns"] = task.get("plan_columns") or [
            ["plan", "plan"],
            list(m),
            *losses,
            ["kl_mean", "KL mean"],
            ["avg_bits", "avg bits/weight"],
            ["model_mb", "model MB"],
        ]
        base = results.get("baseline")
        if isinstance(base, dict) and not base.get("summary"):
            base["summary"] = f"FP32 {metric.get('label')}: {base.get(metric.get('key'), '—')}"
        abl = results.get("ablation")
        if isinstance(abl, dict) and not abl.get("summary"):
            abl["summary"] = (
                f"{loss.get('label')} {abl.get(loss.get('key'))} [95% CI {abl.get(loss.get('ci_low'))}, "
                f"{abl.get(loss.get('ci_high'))}]"
            )
    for section in ("frontier", "mixed"):
        for row in (results.get(section) or {}).get("rows", []):
            row["kind"] = row.get("kind") or "mixed"  # only mixed-precision rows had none
    if isinstance(results.get("frontier"), dict):
        results["frontier"].setdefault("groups", {})  # no groups: no by-layer-kind line rather than a guess
    for entry in (results.get("formats") or {}).values():
        if isinstance(entry, dict):
            entry.setdefault("takes_scheme", True)  # the integer grid was named whatever the formats
    results["schema_version"] = 1


_STEPS = [_to_v1]  # _STEPS[v] brings version v to v + 1


def _pairs(value) -> tuple:
    return tuple(tuple(item) for item in value or ())


@dataclass(frozen=True)
class TaskInfo:
    """What the study measured, as ``results["workspace"]["task"]`` describes it."""

    name: str
    head: str
    metric: str
    metric_label: str
    higher_is_better: bool
    loss: str
    loss_label: str
    ci_low: str
    ci_high: str
    differs_test: str
    report_columns: tuple = ()  # (header, explanation, row key or "loss_ci") for report.html
    sensitivity_columns: tuple = ()  # (row key, header) for printed tables
    ranking_columns: tuple = ()
    plan_columns: tuple = ()
    glossary: tuple = ()  # (term, explanation)

    @classmethod
    def from_results(cls, results: dict) -> "TaskInfo":
        try:
            t = migrate(results)["workspace"]["task"]
            metric, loss = t["metric"], t["loss"]
            task = cls(
                t["name"],
                str(t.get("head") or ""),
                metric["key"],
                metric["label"],
                bool(metric["higher_is_better"]),
                loss["key"],
                loss["label"],
                loss["ci_low"],
                loss["ci_high"],
                t["differs_test"],
                _pairs(t.get("report_columns")),
                _pairs(t.get("sensitivity_columns")),
                _pairs(t.get("ranking_columns")),
                _pairs(t.get("plan_columns")),
                _pairs(t.get("glossary")),
            )
        except (KeyError, TypeError) as err:
            raise QuantsenseError(
                f"results have no complete workspace.task (missing {err}): "
                "re-run the study with this version of quantsense"
            ) from None
        return task

    @property
    def loss_name(self) -> str:
        """The loss's label without its unit: 'accuracy drop' for 'accuracy drop (points)'."""
        return self.loss_label.split(" (")[0]


@dataclass(frozen=True)
class FormatInfo:
    """One format as ``results["formats"][name]`` describes it; an unknown format has only its name."""

    name: str
    family: str | None = None
    label: str = ""
    bits_per_weight: float | None = None  # with scales: q4_0 4.5, int4 4.0, f16 16.0
    code_bits: int | None = None  # one code's bits: int4 and q4_0 4, f16 and bf16 16
    variant: str = ""  # a shade within one code width: "" for int, "0"/"1" for q4_0/q4_1, "f16"/"bf16"
    export_targets: tuple = ()
    takes_scheme: bool | None = None  # whether the study's integer grid applies to it (None: not described)
    glossary: tuple | None = None  # (term, explanation) of its family

    @classmethod
    def from_entry(cls, name: str, entry) -> "FormatInfo":
        if not isinstance(entry, dict):
            return cls(str(name))
        bits, code = entry.get("bits_per_weight"), entry.get("code_bits")
        term = entry.get("glossary")
        return cls(
            str(name),
            entry.get("family"),
            str(entry.get("label") or name),
            float(bits) if isinstance(bits, (int, float)) and not isinstance(bits, bool) else None,
            int(code) if isinstance(code, int) and not isinstance(code, bool) else None,
            str(entry.get("variant") or ""),
            tuple(entry.get("export_targets") or ()),
            entry["takes_scheme"] if isinstance(entry.get("takes_scheme"), bool) else None,
            tuple(term) if isinstance(term, (list, tuple)) and len(term) == 2 else None,
        )


def format_table(results: dict) -> dict[str, FormatInfo]:
    """Every format the results describe, by name (empty when they have no format table)."""
    formats = migrate(results).get("formats") or {}
    return {str(name): FormatInfo.from_entry(name, entry) for name, entry in formats.items()}


def format_info(results: dict, name: str | None) -> FormatInfo | None:
    """The format called ``name`` (unknown when the results do not describe it); None for FP32 (no format)."""
    if name is None:
        return None
    entry = (results.get("formats") or {}).get(name)
    return FormatInfo.from_entry(name, entry)


def widest_first(results: dict, names) -> list[str]:
    """``names`` by bits per weight from the format table, widest first; unknown widths last, in the order given."""

    def width(name):
        bits = format_info(results, name).bits_per_weight
        return (bits is None, -(bits or 0.0))

    return sorted(dict.fromkeys(names), key=width)


def format_glossary(results: dict) -> list[tuple[str, str]]:
    """One (term, explanation) per format family the results describe, deduplicated by term."""
    terms: dict[str, str] = {}
    for info in format_table(results).values():
        if info.glossary is not None:
            terms.setdefault(*info.glossary)
    return list(terms.items())


# ---------------------------------------------------------------- plans


def plan_rows(results: dict, sections: tuple[str, ...] = ("frontier", "mixed")) -> list[dict]:
    """The plan rows of ``sections`` (frontier and mixed precision: the plans a user could ship), each with its
    ``kind``."""
    results = migrate(results)
    return [dict(r) for section in sections for r in (results.get(section) or {}).get("rows", [])]


def plan_label(row: dict) -> str:
    """A short label: a uniform plan's format, '@4.5' or '@20.00MB' for an allocated plan's budget, else its name."""
    budget = row.get("budget") or {}
    if row.get("kind") == "uniform" and row.get("format"):
        return str(row["format"])
    if row.get("kind") == "allocated" and budget.get("avg_bits") is not None:
        return f"@{budget['avg_bits']:g}"
    if row.get("kind") == "allocated" and budget.get("max_bytes") is not None:
        return f"@{budget['max_bytes'] / 1e6:.2f}MB"
    return str(row["plan"])


def format_counts(row: dict) -> dict[str, int]:
    """How many units each format got in a plan row (``fp32`` for block linear units left unquantized), most used first."""
    counts = dict(row.get("formats") or {})
    if row.get("fp32_units"):
        counts[FP32] = int(row["fp32_units"])
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- sentences the producer wrote


def baseline_summary(results: dict, task: TaskInfo) -> str:
    """The task's baseline sentence (e.g. 'FP32 accuracy: 89.45 % (780/872)')."""
    return str(migrate(results)["baseline"]["summary"])


def effect_summary(row: dict, task: TaskInfo) -> str:
    """A measured plan's effect sentence (the task's own, from the row)."""
    return str(row["summary"])


def data_description(results: dict) -> str:
    """The evaluation data's size in words ('872 examples'), '' when not recorded."""
    return str(((results.get("workspace") or {}).get("data") or {}).get("description") or "")
