"""Apply a plan to a model in place, reversibly, by overwriting weights with fake-quantized copies.

Module names, classes and ``state_dict`` keys never change, a forward pass costs nothing extra, and
leaving the context restores every weight bit-exactly from a saved clone. A format that also quantizes a
module's input (ONNX Runtime's dynamic int8) gets a forward pre-hook on that module, removed with the plan; the
prefix reuse of :mod:`quantsense.engine.prefix` stays valid because a hook only changes its own module's output.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from contextlib import contextmanager

import torch

from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan


class PlanApplier:
    """Applies plans to one model, quantizing each (unit, config) weight at most once.

    Quantized weights are kept in an LRU cache bounded by ``cache_bytes`` so that a sweep that
    visits the same (unit, config) again (e.g. in the "all but one" view) pays for it once. On a model whose blocks are
    streamed from its files the cache holds one weight (the largest streamed one, in float32): an evaluation asks for
    its unit's weight up to three times (whether it changes anything, the plan, the weight SQNR), and a sweep's later
    data segments quantize it again, a cost small beside a forward that reads every block from disk, while a 1 GB cache
    would be an eighth of an 8B model's memory bound.
    """

    def __init__(self, unit_map: UnitMap, cache_bytes: int = 1 << 30, runtime_activations: bool = False):
        self.unit_map = unit_map
        self.runtime_activations = runtime_activations  # also round inputs as the format's runtime does (llama.cpp)
        if self._stream is not None:
            streamed = [u.numel for u in unit_map.units.values() if self._streamed(u.name)]
            cache_bytes = min(cache_bytes, 4 * max(streamed, default=0))
        self.cache_bytes = cache_bytes
        self._originals: dict[str, torch.Tensor] = {}
        self._cache: OrderedDict[tuple[str, Format], torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._active: list[str] = []
        self._hooks: list = []

    @property
    def _stream(self):
        return getattr(self.unit_map, "stream", None)

    def _streamed(self, name: str) -> bool:
        """Whether unit ``name``'s weight stays in its file until its block runs (:mod:`quantsense.models.streaming`)."""
        return self._stream is not None and self._stream.streams(name)

    def original(self, name: str) -> torch.Tensor:
        if self._streamed(name):
            return self._stream.weight(name)  # read again when needed: keeping every original would hold the model
        if name not in self._originals:
            self._originals[name] = self.unit_map.get(name).weight.detach().clone()
        return self._originals[name]

    def quantized(self, name: str, config: Format) -> torch.Tensor:
        key = (name, config)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        unit = self.unit_map.get(name)
        tensor = config.quantize_weight(self.original(name), unit.transposed, name, unit.kind)
        size = tensor.numel() * tensor.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = tensor
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return tensor

    def check(self, plan: Plan) -> None:
        """Every unit name exists and every weight's shape fits its format (a clear error naming the unit)."""
        for name, config in plan.assignments:
            config.check_unit(self.unit_map.get(name))

    def input_quantized(self, plan: Plan) -> list[str]:
        """The planned units whose inputs the plan quantizes too (ONNX Runtime's dynamic int8)."""
        return [name for name, fmt in plan.assignments if fmt.input_quantizer(self.unit_map.get(name).kind) is not None]

    def changes_nothing(self, plan: Plan) -> bool:
        """True when every planned weight is already on its format's grid (e.g. q4_1 on a Q4_1 GGUF model)."""
        self.check(plan)
        if self.input_quantized(plan) or (
            self.runtime_activations and any(f.activation_rounding() for _, f in plan.assignments)
        ):
            return False
        return all(torch.equal(self.quantized(name, fmt), self.original(name)) for name, fmt in plan.assignments)

    @torch.no_grad()
    def apply(self, plan: Plan) -> None:
        if self._active:
            raise RuntimeError("a plan is already applied; restore() it first")
        self.check(plan)  # every name and shape before touching weights
        try:
            for name, config in plan.assignments:
                if self._streamed(name):  # quantized when its block runs (the LRU cache bounds what is kept)
                    self._active.append(name)
                    self._stream.overrides[name] = functools.partial(self.quantized, name, config)
                    continue
                q = self.quantized(name, config)
                self._active.append(name)
                self.unit_map.get(name).weight.copy_(q)
                self._hook_inputs(name, config)
        except BaseException:
            self.restore()
            raise

    def _hook_inputs(self, name: str, config: Format) -> None:
        unit = self.unit_map.get(name)
        quantize = config.input_quantizer(unit.kind)
        modules = [unit.module]
        if (
            quantize is None and self.runtime_activations
        ):  # the matrix products that use this weight: not a table lookup
            quantize = config.activation_rounding()
            modules = [m for m in [unit.module, *unit.tied_modules] if not isinstance(m, torch.nn.Embedding)]
        if quantize is not None:

            def pre_hook(module, args, quantize=quantize):
                return (quantize(args[0]), *args[1:])

            self._hooks += [module.register_forward_pre_hook(pre_hook) for module in modules]

    @torch.no_grad()
    def restore(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for name in self._active:
            if self._streamed(name):
                self._stream.overrides.pop(name, None)
            else:
                self.unit_map.get(name).weight.copy_(self._originals[name])
        self._active = []

    @contextmanager
    def applied(self, plan: Plan):
        self.apply(plan)
        try:
            yield
        finally:
            self.restore()


@contextmanager
def apply_plan(unit_map: UnitMap, plan: Plan):
    """``with apply_plan(units, plan): ...`` runs the body on the fake-quantized model."""
    applier = PlanApplier(unit_map, cache_bytes=0)
    with applier.applied(plan):
        yield
