"""The task interface: what is evaluated and how a quantized run is compared with FP32.

A task owns everything that differs between, say, sentence classification and language-model
perplexity: loading and batching its data, the head that turns logits into kept outputs, the
paired comparison and its statistics, the loss key, the default formats, the table columns and
plot axes, and how an exported model is checked. The engine, sweeps, allocation and reports ask
the task; none of them asks "which task is this?". Adding a task is one module plus
``@register_task``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.models.head import ModelHead


@dataclass(frozen=True)
class MetricSpec:
    key: str  # row key, e.g. "accuracy" or "perplexity"
    label: str  # axis / column label for people
    higher_is_better: bool


@dataclass(frozen=True)
class LossSpec:
    """The task's loss of a quantized run against FP32 (positive = worse), with its 95 % interval keys."""

    key: str
    label: str

    @property
    def ci_low(self) -> str:
        return f"{self.key}_ci_low"

    @property
    def ci_high(self) -> str:
        return f"{self.key}_ci_high"


@dataclass(frozen=True)
class Setting:
    """One task setting: a keyword of the task's constructor, and the command-line flag built from it."""

    name: str
    default: int | None  # None: optional, unset by default
    help: str
    minimum: int = 1

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    def check(self, value) -> None:
        if value is None and self.default is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < self.minimum:
            kind = "a positive integer" if self.minimum == 1 else f"an integer of at least {self.minimum}"
            raise QuantsenseError(f"{self.name} ({self.flag}) must be {kind}, got {value!r}")


class Task:
    """Base class; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --task's help
    model_head: ClassVar[ModelHead]  # which head the model must have, and how transformers builds it
    settings_spec: ClassVar[tuple[Setting, ...]] = ()  # the constructor's keywords, each a CLI flag
    metric: ClassVar[MetricSpec]
    loss: ClassVar[LossSpec]
    differs_test: ClassVar[str]  # what "differs from FP32" means, in words
    data_help: ClassVar[str]
    default_formats: ClassVar[tuple[str, ...]]  # sweep default
    default_candidates: ClassVar[tuple[str, ...]]  # allocation default (FP32 is always an option too)
    default_ablation_format: ClassVar[str]
    # (row key, column header) for printed tables and CSVs
    sensitivity_columns: ClassVar[list[tuple[str, str]]]
    ranking_columns: ClassVar[list[tuple[str, str]]]
    plan_columns: ClassVar[list[tuple[str, str]]]
    # (header, explanation, row key or "loss_ci") for report.html, and the task's glossary entries
    report_columns: ClassVar[list[tuple[str, str, str]]]
    glossary_terms: ClassVar[list[tuple[str, str]]]

    # -- model --------------------------------------------------------------------------------
    def load_model(self, source: str, device="auto", dtype: str = "auto", quiet: bool = False, stream: str = "off"):
        """The model ``source`` with this task's head (refused in one line when it has none)."""
        from quantsense.models.loading import load_model

        return load_model(
            source, self.model_head, device, dtype=dtype, quiet=quiet, hint=self.head_hint(), stream=stream
        )

    @classmethod
    def head_hint(cls) -> str:
        """What to do when a model lacks this task's head: the tasks whose head it may have instead."""
        others = [t for t in TASKS.values() if t.model_head != cls.model_head]
        alternatives = "".join(f"use --task {t.name} if it has a {t.model_head.description}, or " for t in others)
        return f"{alternatives}a model trained for --task {cls.name}"

    # -- data ---------------------------------------------------------------------------------
    def load(self, source: str | None, tokenizer, id2label: dict[int, str]):
        """(data, TokenBatches) for this task from a local file or the hub."""
        raise NotImplementedError

    def describe_data(self, data, batches) -> dict:
        """Plain data for results.json's ``data``, including ``description`` (its size in words)."""
        raise NotImplementedError

    def token_range(self, batches) -> tuple[int, int] | None:
        """(first token, number of tokens) of a text stream the batches cover, for a task that reads one (so that an
        importance matrix and an evaluation can be kept to disjoint ranges of the same text); None otherwise."""
        return None

    def length_setting(self) -> tuple[str, int]:
        """The flag that bounds one input's length and its value (e.g. ``("--max-length", 512)``)."""
        raise NotImplementedError

    def check_model(self, model, batches, source: str) -> None:
        """Refuse, before any evaluation, inputs longer than the model has positions for (an index error, or
        position embeddings extrapolated past training: numbers that mean nothing)."""
        from quantsense.models.loading import max_positions

        limit = max_positions(model)
        longest = max((b.inputs["input_ids"].shape[1] for b in batches), default=0)
        if limit is not None and longest > limit:
            flag, value = self.length_setting()
            raise QuantsenseError(
                f"{flag} {value} gives inputs of {longest} tokens but model {source} has {limit} positions; "
                f"use {flag} {limit} or less"
            )
        rows = model.get_input_embeddings().weight.shape[0]
        largest = max((int(b.inputs["input_ids"].max()) for b in batches if b.inputs["input_ids"].numel()), default=-1)
        if largest >= rows:
            raise QuantsenseError(
                f"the tokenizer gives token id {largest} but model {source} has {rows} token embeddings: "
                "the tokenizer belongs to another model; save the model's own tokenizer beside it"
            )

    def head(self):
        """A fresh head (see :mod:`quantsense.evaluation.heads`) for the evaluator."""
        raise NotImplementedError

    # -- numbers ------------------------------------------------------------------------------
    def baseline(self, reference, data) -> dict:
        """The FP32 figures: ``{metric.key: value, ...}``."""
        raise NotImplementedError

    def compare(self, reference, quantized, data, seed: int = 0) -> dict:
        """Every paired metric of a quantized run against FP32, including ``kl_mean`` with its
        interval, ``loss.key`` with its interval and ``distinguishable_from_fp32``."""
        raise NotImplementedError

    def arrays_valid(self, arrays: dict[str, np.ndarray], batches) -> bool:
        """Whether stored arrays have the shapes this task's evaluation produces (else recompute)."""
        raise NotImplementedError

    def interval_blocks(self, scored: int) -> int:
        """The independent blocks :meth:`compare`'s intervals resample from ``scored`` examples (one per example)."""
        return scored

    def check_intervals(self, batches) -> None:
        """Refuse, before any evaluation, data too small for an interval: fewer than ``MIN_BOOTSTRAP_BLOCKS`` blocks
        (a one-block interval has zero width, so every difference would look real)."""
        from quantsense.evaluation.statistics import MIN_BOOTSTRAP_BLOCKS

        scored = sum(len(b.index) for b in batches)
        blocks = self.interval_blocks(scored)
        if blocks < MIN_BOOTSTRAP_BLOCKS:
            raise QuantsenseError(self.too_few_blocks(scored, blocks, MIN_BOOTSTRAP_BLOCKS))

    def too_few_blocks(self, scored: int, blocks: int, minimum: int) -> str:
        return (
            f"the data has {scored} examples and an interval needs at least {minimum}: use more data "
            f"(--data with {minimum} or more examples)"
        )

    def subset(self, data, positions):
        """The data that :meth:`compare` needs for the examples at ``positions`` (ascending) only; a task whose
        comparison reads nothing from ``data`` returns it unchanged."""
        return data

    # -- words --------------------------------------------------------------------------------
    @classmethod
    def baseline_text(cls, base: dict) -> str:
        """The unquantized model's headline figures; ``base["reference"]`` names it by its dtype (FP32, BF16, FP16)."""
        raise NotImplementedError

    @classmethod
    def effect_text(cls, row: dict) -> str:
        """A plan's headline figures in a few words (used in ablation and export summaries)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain data for results.json: reports and plots read the task's names and keys from here."""
        return {
            "name": self.name,
            "head": self.model_head.description,
            "metric": {
                "key": self.metric.key,
                "label": self.metric.label,
                "higher_is_better": self.metric.higher_is_better,
            },
            "loss": {
                "key": self.loss.key,
                "label": self.loss.label,
                "ci_low": self.loss.ci_low,
                "ci_high": self.loss.ci_high,
            },
            "differs_test": self.differs_test,
            "report_columns": [list(c) for c in self.report_columns],
            "sensitivity_columns": [list(c) for c in self.sensitivity_columns],
            "ranking_columns": [list(c) for c in self.ranking_columns],
            "plan_columns": [list(c) for c in self.plan_columns],
            "glossary": [list(t) for t in self.glossary_terms],
            **self.settings(),
        }

    def settings(self) -> dict:
        """The settings this task was built with (recorded in results.json)."""
        return {s.name: getattr(self, s.name) for s in self.settings_spec}

    # -- optional abilities -------------------------------------------------------------------
    def calibration_batches(self, path: str, size: int, tokenizer, id2label: dict[int, str], exclude, seed: int):
        raise QuantsenseError(
            f"proxies need a labelled calibration set; task {self.name!r} has none "
            "(they are implemented for sentence classification)"
        )

    def export_check(self, target: str, source: str, data, simulate, batches):
        """The fresh-process check of an export to ``target`` on this task's data: a callable the target's
        ``write`` calls with the written path (and, for GGUF, the source file), returning figures and ``lines``.
        ``simulate()`` evaluates the plan in simulation (called only when the check runs). The checks live with their
        runtime (each backend registers its own per task, ``register_task_check``); a target this task has none for
        is refused."""
        from quantsense.exporters import task_check

        make = task_check(target, self.name)
        if make is None:
            raise QuantsenseError(
                f"task {self.name!r} has no check for a {target} export; pass --no-verify to write it unchecked"
            )
        return make(self, source, data, simulate, batches)


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **settings) -> Task:
    """The registered task ``name`` built with ``settings``; a setting the task does not take is an error."""
    if name not in TASKS:
        raise QuantsenseError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    cls = TASKS[name]
    spec = {s.name: s for s in cls.settings_spec}
    unknown = [k for k in settings if k not in spec]
    if unknown:
        takes = ", ".join(f"{s.name} ({s.flag})" for s in cls.settings_spec) or "none"
        owners = {k: [t.name for t in TASKS.values() if any(s.name == k for s in t.settings_spec)] for k in unknown}
        said = "; ".join(
            f"{k} belongs to task {', '.join(o)}" if o else f"no task takes {k}" for k, o in owners.items()
        )
        raise QuantsenseError(f"task {name} takes no setting {', '.join(unknown)} ({said}); its settings: {takes}")
    for key, value in settings.items():
        spec[key].check(value)
    return cls(**settings)
