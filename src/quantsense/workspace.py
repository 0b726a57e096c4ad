"""A workspace holds what every phase shares: the task, the model and its units, the data, the engine.

Open one from a model name (hub id, local directory, ``.gguf`` file) or from a model already in
memory with its tokenizer; every phase in :mod:`quantsense.study` takes it.

    ws = quantsense.open_workspace("path/to/model", data="validation.tsv", task="sst2")
    ws = quantsense.open_workspace(model, tokenizer=tokenizer, data="validation.tsv")
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import torch

from quantsense.config import DEFAULT_TASK, REFERENCE_MODEL
from quantsense.engine import Engine, Evaluator
from quantsense.errors import QuantsenseError
from quantsense.models.loading import check_tokenizer, resolve_device, weights_fingerprint
from quantsense.models.units import UnitMap, discover_units
from quantsense.quantization.calibration import calibration
from quantsense.quantization.formats import Format, QuantConfig, WeightFormat, parse_format
from quantsense.quantization.plan import Plan
from quantsense.store import ResultStore
from quantsense.tasks import Task, make_task


POSITIVE_OPTIONS = ("workers",)
OUTSIDE_MODES = ("fp32", "preset", "allocate")  # what an allocation does with the token embedding and output head
CHOICE_OPTIONS = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "executor": ("local", "ray"),
    "stream_blocks": ("auto", "on", "off"),
}


def _flag(name: str) -> str:
    """An option as both spellings: the keyword argument and the command-line flag."""
    return f"{name} (--{name.replace('_', '-')})"


def _check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise QuantsenseError(f"{_flag(name)} must be {kind}, got {value!r}")


@dataclass
class StudyOptions:
    """Everything that shapes a workspace besides the model itself, as plain data (it can travel to workers)."""

    model: str = REFERENCE_MODEL  # the source name, also for an in-memory model (used in reports)
    data: str | None = None
    task: str = DEFAULT_TASK
    device: str = "auto"
    dtype: str = "auto"
    # keep each block's weights in the model's files until it runs (models larger than memory; auto: when needed)
    stream_blocks: str = "auto"
    blocks_regex: str | None = None
    store: str | None = None  # None: keep nothing between runs
    fresh: bool = False
    quiet: bool = False
    seed: int = 0
    scheme: QuantConfig = field(default_factory=lambda: QuantConfig(bits=8))  # the integer grid that int<b> names use
    prefix_reuse: bool = True
    executor: str = "local"  # "local" or "ray"
    workers: int = 2  # Ray actors
    ray_address: str | None = None  # None: start a private Ray on this machine; "auto" or HOST:PORT: connect
    settings: dict = field(default_factory=dict)  # the task's own settings (its settings_spec), e.g. {"limit": 100}
    # a GGUF importance matrix file: llama.cpp formats that take one weight their rounding by it
    imatrix: str | None = None
    # a format for the token embedding in every measured plan (e.g. ort-int8), not in sweeps
    embedding: str | None = None
    # also round each quantized linear's input as the format's runtime does (llama.cpp)
    runtime_activations: bool = False

    def __post_init__(self):
        """The same checks, and the same one-line messages, as the command line's flags."""
        for name in POSITIVE_OPTIONS:
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        for name, allowed in CHOICE_OPTIONS.items():
            if getattr(self, name) not in allowed:
                raise QuantsenseError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.scheme, QuantConfig):
            raise QuantsenseError(
                f"scheme must be a QuantConfig, the integer grid that int<b> names use "
                f"(e.g. QuantConfig(bits=8, symmetric=False)), got {self.scheme!r}"
            )
        if not isinstance(self.settings, dict):
            raise QuantsenseError(
                f"settings must be a dict of the task's settings (e.g. {{'limit': 100}}), got {self.settings!r}"
            )
        make_task(self.task, **self.settings)  # the task refuses a setting it does not take, or a bad value
        if self.imatrix is not None:
            self.imatrix = str(calibration("imatrix").check_path(self.imatrix))

    def task_settings(self) -> dict:
        return dict(self.settings)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["scheme"] = self.scheme.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "StudyOptions":
        return cls(**{**data, "scheme": QuantConfig.from_dict(data["scheme"])})


@dataclass
class Workspace:
    options: StudyOptions
    task: Task
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: str
    units: UnitMap
    data: object
    batches: object
    engine: Engine
    model_fp: str
    data_fp: str
    formats_used: dict = field(default_factory=dict)  # name -> format, every format a phase resolved or measured
    # the importance matrix from options.imatrix (quantization/calibration.py), bound to every format named
    imatrix: object = None
    _segments: object = field(default=None, repr=False)  # the data's segments, built on first use
    _embedding: object = field(default=None, repr=False)  # the --embedding plan, built on first use
    _input_power: object = field(
        default=None, repr=False
    )  # the linears' input power per column, collected on first use

    @property
    def source(self) -> str:
        return self.options.model

    @property
    def evaluator(self) -> Evaluator:
        return self.engine.evaluator

    @property
    def applier(self):
        return self.engine.evaluator.applier

    def reference(self):
        return self.engine.reference()

    def segments(self):
        """The data cut into interleaved segments (:mod:`quantsense.engine.segments`), one set per workspace, so every
        phase scoring on part of the data shares its segment evaluations and their FP32 references."""
        if self._segments is None:
            from quantsense.engine.segments import Segments

            self._segments = Segments(self.engine, self.task, self.data, seed=self.options.seed)
        return self._segments

    def check_intervals(self) -> None:
        """Refuse, before any evaluation, data too small for the task's intervals (see ``Task.check_intervals``)."""
        self.task.check_intervals(self.batches)

    def compare(self, reference, quantized) -> dict:
        """Every paired metric of a quantized run against FP32, for this task."""
        return self.task.compare(reference, quantized, self.data, seed=self.options.seed)

    def format(self, text: str | int | Format) -> Format:
        """A format from a name (``int4`` on this workspace's integer grid, ``q4_0``...), checked against every block unit."""
        named = not isinstance(text, WeightFormat)
        fmt = parse_format(text, self.options.scheme).with_imatrix(self.imatrix)
        fmt.check_model(self.units, named)
        self.formats_used.setdefault(fmt.name, fmt)
        return fmt

    def input_power(self) -> dict:
        """Each block linear's mean squared input per column: the importance matrix's when there is one, else
        collected once on the first data segment (one forward pass, llama.cpp's imatrix statistic on the selection
        data). The reduced sweep weights weight errors by it."""
        imatrix = calibration("imatrix")
        modules = imatrix.modules(self.model, self.units)
        if self.imatrix is not None:
            return {name: self.imatrix.weights(name) for name in modules}
        if self._input_power is None:
            first = self.segments().parts[0]
            inputs = [{k: v.to(self.device) for k, v in b.inputs.items()} for b in first]
            found = imatrix.collect(self.model, modules, inputs)
            self._input_power = {name: found.weights(name) for name in modules}
        return self._input_power

    def outside_units(self) -> tuple[str, ...]:
        """The units outside the blocks that a model file stores as weights of their own: the token embedding (which an
        output head tied to it shares) and an untied output head; what ``outside="allocate"`` adds to an allocation."""
        wanted = [self.model.get_input_embeddings(), getattr(self.model, "get_output_embeddings", lambda: None)()]
        return tuple(
            name
            for name, unit in self.units.units.items()
            if unit.block is None and any(unit.module is module for module in wanted if module is not None)
        )

    def allocated_outside(self, mode: str, presets=()) -> tuple[str, ...]:
        """The units outside the blocks an allocation chooses formats for: with ``mode="allocate"`` those of
        :meth:`outside_units`; none with ``"fp32"`` (left unquantized, or ``--embedding``'s format) or ``"preset"``
        (each preset's own types, at its size: needs ``presets``)."""
        if mode not in OUTSIDE_MODES:
            raise QuantsenseError(f"unknown --outside mode {mode!r}; use one of {', '.join(OUTSIDE_MODES)}")
        if mode == "preset" and not presets:
            raise QuantsenseError(
                "--outside preset takes a preset's own types outside the blocks: give --max-size-of "
                "PRESET or --preset, or use --outside allocate or fp32"
            )
        if mode != "allocate":
            return ()
        if self.options.embedding:
            raise QuantsenseError(
                "--outside allocate chooses the token embedding's format, and --embedding fixes it: drop one"
            )
        return self.outside_units()

    def embedding_plan(self) -> Plan:
        """The token embedding in ``--embedding``'s format, or an empty plan: every measured plan (strategies,
        allocations, uniform plans, the ablation) takes it, single-unit sweeps do not. Checked on first use."""
        if not self.options.embedding:
            return Plan()
        if self._embedding is None:
            self._embedding = self._make_embedding_plan()
        return self._embedding

    def _make_embedding_plan(self) -> Plan:
        table = self.model.get_input_embeddings()
        name = next((n for n, u in self.units.units.items() if u.module is table), None)
        if name is None:
            raise QuantsenseError(
                "--embedding: this model's token embedding is not a unit quantsense found; drop --embedding"
            )
        tied = self.units.get(name).tied_to
        if tied:
            raise QuantsenseError(
                f"--embedding: {name} shares its weight with {', '.join(tied)}, so it would quantize that too; "
                "name the unit in a plan file instead (quantsense units lists it)"
            )
        plan = Plan.of({name: self.format(self.options.embedding)})
        self.applier.check(plan)  # a format that cannot store a table refuses here
        return plan

    def embedding_loss(self, key: str) -> dict:
        """``{"embedding": {"plan", "loss"}}``: the loss (metric ``key``) of ``--embedding``'s table quantized alone, which
        every allocated plan carries beside its predicted single-unit losses; ``{}`` without ``--embedding``."""
        plan = self.embedding_plan()
        if not plan:
            return {}
        result = self.engine.evaluate_many([("embedding alone", plan)], desc="embedding alone")["embedding alone"]
        loss = max(self.compare(self.reference(), result)[key], 0.0)
        return {"embedding": {"plan": {n: f.name for n, f in plan.assignments}, "loss": loss}}

    def finish(self, plan: Plan) -> Plan:
        """``plan`` with the token embedding in ``--embedding``'s format where the plan does not name it already."""
        extra = {n: f for n, f in self.embedding_plan().assignments if n not in plan.as_dict()}
        return plan.merged(Plan.of(extra)) if extra else plan

    def record_formats(self, formats) -> None:
        """Note formats that reached a result without a name (plan files, strategies) for :meth:`format_table`."""
        for fmt in formats:
            self.formats_used.setdefault(fmt.name, fmt)

    def format_table(self) -> dict[str, dict]:
        """Every format used so far, described by its own registry entry (what results.json keeps)."""
        return {name: fmt.describe(self.options.scheme) for name, fmt in sorted(self.formats_used.items())}

    def formats(self, names) -> list[Format]:
        """Formats from names, duplicates dropped (``--formats 8 8`` evaluates once)."""
        if isinstance(names, (str, bytes, numbers.Number, WeightFormat)) or not hasattr(names, "__iter__"):
            raise QuantsenseError(
                f"formats are a list of format names, e.g. ['q4_0', 'q8_0'], got {names!r}; write [{names!r}] for one"
            )
        return list(dict.fromkeys(self.format(n) for n in names))

    def close(self) -> None:
        """Release what the workspace started (Ray actors); the store commits as it goes."""
        close = getattr(self.engine.executor, "close", None)
        if close is not None:
            close()

    def id2label(self) -> dict[int, str]:
        mapping = getattr(self.model.config, "id2label", None) or {}
        return {int(k): v for k, v in mapping.items()}

    def describe(self) -> dict:
        return {
            "model": {
                "source": self.source,
                "fingerprint": self.model_fp,
                "blocks": self.units.num_blocks,
                "block_path": self.units.block_prefix,
                "device": str(self.device),
                "dtype": self.dtype,
                "head": self.task.model_head.description,
            },
            "data": {
                "task": self.task.name,
                "fingerprint": self.data_fp,
                **self.task.describe_data(self.data, self.batches),
            },
            "task": self.task.describe(),
            "scheme": {
                k: v for k, v in self.options.scheme.to_dict().items() if k != "bits"
            },  # the grid int<b> names use
            "seed": self.options.seed,
            **({"runtime_activations": True} if self.options.runtime_activations else {}),
            **(
                {"imatrix": {"file": self.options.imatrix, **self.imatrix.describe()}}
                if self.imatrix is not None
                else {}
            ),
        }


def _options(model, kwargs: dict) -> StudyOptions:
    """StudyOptions from keyword arguments: its own fields, and the task's settings (``limit=100``) given flat."""
    known = {f.name for f in fields(StudyOptions)}
    takes = {
        s.name for s in make_task(kwargs.get("task", DEFAULT_TASK)).settings_spec
    }  # an unknown task is refused here
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k not in known and k in takes}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        allowed = sorted(known - {"settings"} | takes)
        raise QuantsenseError(f"open_workspace: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if settings:
        kwargs["settings"] = {**kwargs.get("settings", {}), **settings}
    if isinstance(model, str):
        kwargs["model"] = model
    elif "model" not in kwargs:
        kwargs["model"] = type(model).__name__
    return StudyOptions(**kwargs)


def open_workspace(
    model: str | torch.nn.Module | StudyOptions = REFERENCE_MODEL, *, tokenizer=None, **options
) -> Workspace:
    """Load (or take) the model, find its units, load the task's data, and set up the engine.

    ``model`` is a hub id, a local directory, a ``.gguf`` file, a model in memory (then pass its
    ``tokenizer``), or a :class:`StudyOptions`. ``options`` are :class:`StudyOptions` fields.
    """
    opts = model if isinstance(model, StudyOptions) else _options(model, options)
    task = make_task(opts.task, **opts.task_settings())
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise QuantsenseError(
                "open_workspace on a model in memory needs its tokenizer: open_workspace(model, tokenizer=tok, ...)"
            )
        check_tokenizer(model, tokenizer, opts.model)
        device = resolve_device(opts.device)
        net, dtype = model.to(device).eval(), str(next(model.parameters()).dtype).replace("torch.", "")
    else:
        loaded = task.load_model(opts.model, opts.device, dtype=opts.dtype, quiet=opts.quiet, stream=opts.stream_blocks)
        net, tokenizer, device, dtype = loaded.model, loaded.tokenizer, loaded.device, loaded.dtype
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(net.config, "pad_token_id", None) is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    units = discover_units(net, opts.blocks_regex)
    imatrix = calibration("imatrix").load(opts.imatrix, net, units) if opts.imatrix else None  # before a plan names it
    data, batches = task.load(
        opts.data, tokenizer, {int(k): v for k, v in (getattr(net.config, "id2label", None) or {}).items()}
    )
    task.check_model(net, batches, opts.model)
    check_held_out(task, data, batches, imatrix)
    evaluator = Evaluator(
        net,
        units,
        batches,
        device,
        prefix_reuse=opts.prefix_reuse,
        head=task.head(),
        runtime_activations=opts.runtime_activations,
    )
    model_fp = weights_fingerprint(net)
    data_fp = f"{data.fingerprint()}-{batches.fingerprint()}"
    store = ResultStore(opts.store) if opts.store else None
    engine = Engine(
        evaluator,
        model_fp,
        data_fp,
        store=store,
        fresh=opts.fresh,
        quiet=opts.quiet,
        valid=lambda arrays: task.arrays_valid(arrays, batches),
        executor=_executor(opts, model, units),
    )
    ws = Workspace(
        opts, task, net, tokenizer, device, dtype, units, data, batches, engine, model_fp, data_fp, imatrix=imatrix
    )
    ws.embedding_plan()  # --embedding checked before any evaluation
    return ws


def check_held_out(task: Task, data, batches, imatrix) -> None:
    """Refuse an evaluation that scores tokens its importance matrix was collected on."""
    span = task.token_range(batches)
    shared = imatrix.overlap(data.fingerprint(), *span) if imatrix is not None and span else None
    if shared:
        cal = imatrix.calibration
        end = cal["first_token"] + cal["tokens"]
        raise QuantsenseError(
            f"the importance matrix was collected on tokens {cal['first_token']}..{end} of this text "
            f"and the evaluation would score tokens {span[0]}..{span[0] + span[1]} (both cover "
            f"{shared[0]}..{shared[1]}): score held-out tokens instead, e.g. --first-token {end}"
        )


def worker_evaluator(options: StudyOptions) -> Evaluator:
    """What a Ray actor builds once: the same workspace as the driver's, without a store, evaluating locally."""
    return open_workspace(replace(options, store=None, quiet=True, executor="local")).evaluator


def _executor(opts: StudyOptions, model, units: UnitMap):
    """None for the in-process executor; a RayExecutor whose actors rebuild this workspace from ``opts``."""
    if opts.executor == "local":
        return None
    if opts.executor != "ray":
        raise QuantsenseError(f"unknown executor {opts.executor!r}; use local or ray")
    if isinstance(model, torch.nn.Module):
        raise QuantsenseError("--executor ray needs a model name or path its workers can load, not a model in memory")
    from quantsense.engine.ray_executor import RayExecutor

    gpus = 1 if resolve_device(opts.device).type == "cuda" else 0
    return RayExecutor(
        partial(worker_evaluator, opts),
        opts.workers,
        address=opts.ray_address,
        num_gpus_per_worker=gpus,
        quiet=opts.quiet,
        order_key=lambda item: units.first_block_of(item.plan().units()),
    )
