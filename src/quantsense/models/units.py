"""Discover a model's transformer blocks and the quantizable units (linear weights) inside them.

Blocks are found by known paths for common architectures (DistilBERT, BERT, RoBERTa, GPT-2,
Llama/Qwen/Mistral/SmolLM, OPT), else as the longest ``ModuleList`` of identical modules, or by a
user regex over module names. A unit is any module with a 2-D ``weight``: ``nn.Linear``,
transformers' ``Conv1D`` (GPT-2, weight stored transposed as [in, out]) and ``nn.Embedding``.
Units are named by their module path, so names survive into plans and exported checkpoints.
"""

from __future__ import annotations

import numbers

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from quantsense.errors import QuantsenseError

KNOWN_BLOCK_PATHS = (
    "distilbert.transformer.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "deberta.encoder.layer",
    "transformer.h",
    "model.layers",
    "model.decoder.layers",
    "gpt_neox.layers",
    "encoder.layer",
    "layers",
)


@dataclass
class Unit:
    """One quantizable weight, named by its module path."""

    name: str
    module: nn.Module
    block: int | None  # index of the containing block, None outside blocks
    kind: str  # "linear", "embedding" or "head"
    transposed: bool = False  # weight stored [in, out] (GPT-2 Conv1D)
    tied_to: list[str] = field(default_factory=list)  # other module paths sharing this weight
    tied_modules: list = field(default_factory=list, repr=False)  # those modules

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.weight.shape)

    @property
    def numel(self) -> int:
        return self.module.weight.numel()

    def short_name(self, block_prefix: str) -> str:
        """The name inside its block, e.g. ``attention.self.query``."""
        if self.block is None:
            return self.name
        return self.name[len(f"{block_prefix}.{self.block}.") :]


@dataclass
class UnitMap:
    """The blocks of a model and every unit, in module order."""

    block_prefix: str
    blocks: list[nn.Module]
    units: dict[str, Unit]
    stream: object | None = None  # the model's StreamedBlocks when its blocks stay in their files (models.streaming)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_units(self, index: int) -> list[str]:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise QuantsenseError(f"a block index is an integer 0..{self.num_blocks - 1}, got {index!r}")
        index = int(index)
        if not 0 <= index < self.num_blocks:
            raise QuantsenseError(f"block index {index} is out of range: the model has blocks 0..{self.num_blocks - 1}")
        return [u.name for u in self.units.values() if u.block == index and u.kind == "linear"]

    def all_block_units(self) -> list[list[str]]:
        return [self.block_units(i) for i in range(self.num_blocks)]

    def linear_units(self) -> list[str]:
        return [u.name for u in self.units.values() if u.kind == "linear"]

    def extra_units(self) -> list[str]:
        """Units outside the blocks: embeddings and heads."""
        return [u.name for u in self.units.values() if u.block is None]

    def get(self, name: str) -> Unit:
        try:
            return self.units[name]
        except KeyError:
            close = [n for n in self.units if name in n][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else "; list them with 'quantsense units'"
            raise QuantsenseError(f"unknown unit {name!r}{hint}") from None

    def first_block_of(self, names) -> int:
        """The first block any of ``names`` touches (0 when a unit outside the blocks is in it)."""
        first = self.num_blocks
        for name in names:
            unit = self.get(name)
            if unit.block is None:
                if unit.kind == "embedding":
                    return 0
                continue  # heads come after every block
            first = min(first, unit.block)
        return first


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _unit_kind(module: nn.Module) -> str | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Linear) or _is_conv1d(module):
        return "linear"
    return None


def _find_block_list(model: nn.Module, blocks_regex: str | None) -> tuple[str, list[nn.Module]]:
    modules = dict(model.named_modules())
    if blocks_regex:
        try:
            pattern = re.compile(blocks_regex)
        except re.error as exc:
            raise QuantsenseError(f"--blocks-regex {blocks_regex!r} is not a valid regex: {exc}") from None
        names = [n for n in modules if n and pattern.fullmatch(n)]
        if not names:
            raise QuantsenseError(
                f"--blocks-regex {blocks_regex!r} matched no module; module names look like {next(iter(n for n in modules if n))}"
            )
        prefixes = {n.rsplit(".", 1)[0] for n in names}
        if len(prefixes) != 1 or not all(n.rsplit(".", 1)[1].isdigit() for n in names):
            raise QuantsenseError(f"--blocks-regex must match the numbered children of one ModuleList, got {names[:4]}")
        prefix = prefixes.pop()
        return prefix, [modules[f"{prefix}.{i}"] for i in sorted(int(n.rsplit(".", 1)[1]) for n in names)]
    for path in KNOWN_BLOCK_PATHS:
        module = modules.get(path)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path, list(module)
    candidates = [
        (len(m), name)
        for name, m in modules.items()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
    ]
    if not candidates:
        raise QuantsenseError(
            "found no transformer blocks in this model; pass --blocks-regex 'path\\.to\\.layers\\.\\d+'"
        )
    _, path = max(candidates)
    return path, list(modules[path])


def discover_units(model: nn.Module, blocks_regex: str | None = None) -> UnitMap:
    """Blocks and units of ``model``. Weights shared by several modules form one unit."""
    prefix, blocks = _find_block_list(model, blocks_regex)
    block_index = {id(b): i for i, b in enumerate(blocks)}
    units: dict[str, Unit] = {}
    by_weight: dict[int, Unit] = {}
    for name, module in model.named_modules():
        kind = _unit_kind(module)
        if kind is None:
            continue
        block = None
        if name.startswith(prefix + "."):
            index_text = name[len(prefix) + 1 :].split(".", 1)[0]
            if index_text.isdigit():
                block = int(index_text)
        if kind == "linear" and block is None:
            kind = "head"
        shared = by_weight.get(id(module.weight))
        if shared is not None:
            shared.tied_to.append(name)
            shared.tied_modules.append(module)
            continue
        unit = Unit(name=name, module=module, block=block, kind=kind, transposed=_is_conv1d(module))
        units[name] = unit
        by_weight[id(module.weight)] = unit
    assert all(block_index.get(id(blocks[u.block])) == u.block for u in units.values() if u.block is not None)
    return UnitMap(block_prefix=prefix, blocks=blocks, units=units, stream=getattr(model, "quantsense_stream", None))
