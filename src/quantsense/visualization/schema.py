"""The typed reader of results.json: what the task measured, what each format is, what each plan is.

Plots, report.html and summary.md read a results dict through these types and functions; none of them parses a
format or plan name, guesses the task from row keys or asks the task registry, so a report of a task that is not
registered in this process still renders. Results written by older versions have no ``formats`` table: every format
is then unknown (no widths, no family, a stable hash colour).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantsense.errors import QuantsenseError

FP32 = "fp32"  # how counts and texts name units left unquantized (a choice of None)


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
            t = results["workspace"]["task"]
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
        return task._with_default_columns()

    def _with_default_columns(self) -> "TaskInfo":
        """Results written before the task listed its printed columns: the metric's and loss's own keys."""
        loss = ((self.loss, self.loss_label), (self.ci_low, "CI low"), (self.ci_high, "CI high"))
        return replace(
            self,
            sensitivity_columns=self.sensitivity_columns
            or (
                ("unit", "unit"),
                ("format", "format"),
                ("view", "view"),
                (self.metric, self.metric_label),
                *loss,
                ("kl_mean", "KL mean"),
            ),
            ranking_columns=self.ranking_columns
            or (
                ("rank", "rank"),
                ("unit", "unit"),
                ("kl_mean", "KL mean"),
                ("kl_ci_low", "KL CI low"),
                ("kl_ci_high", "KL CI high"),
                (self.loss, self.loss_label),
                ("tier", "tier"),
                ("distinguishable_from_fp32", "differs from FP32"),
            ),
            plan_columns=self.plan_columns
            or (
                ("plan", "plan"),
                (self.metric, self.metric_label),
                *loss,
                ("kl_mean", "KL mean"),
                ("avg_bits", "avg bits/weight"),
                ("model_mb", "model MB"),
            ),
        )

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
    takes_scheme: bool | None = None  # whether the study's integer grid applies to it (None: results written before)
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
    """Every format the results describe, by name (empty for results written before the table existed)."""
    return {str(name): FormatInfo.from_entry(name, entry) for name, entry in (results.get("formats") or {}).items()}


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
    ``kind`` (rows of older results without one are mixed-precision plans)."""
    rows = [r for section in sections for r in (results.get(section) or {}).get("rows", [])]
    return [{**r, "kind": r.get("kind") or "mixed"} for r in rows]


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
    """The task's baseline sentence (e.g. 'FP32 accuracy: 89.45 % (780/872)'); for older results, the metric alone."""
    base = results.get("baseline") or {}
    if base.get("summary"):
        return str(base["summary"])
    return f"FP32 {task.metric_label}: {base.get(task.metric, '—')}"


def effect_summary(row: dict, task: TaskInfo) -> str:
    """A measured plan's effect sentence (the task's own, from the row); for older results, the loss and its CI."""
    if row.get("summary"):
        return str(row["summary"])
    return f"{task.loss_label} {row.get(task.loss)} [95% CI {row.get(task.ci_low)}, {row.get(task.ci_high)}]"


def data_description(results: dict) -> str:
    """The evaluation data's size in words ('872 examples'), '' when not recorded."""
    return str(((results.get("workspace") or {}).get("data") or {}).get("description") or "")
