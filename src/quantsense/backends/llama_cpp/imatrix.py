"""The importance matrix (imatrix): llama.cpp's per-input-column statistic that its quantizers weight rounding by.

For every linear weight, the sum over calibration tokens of each input column's squared activation (``in_sum2``) and
the number of tokens (``counts``); a quantizer is given their ratio, the mean squared activation per column, exactly
as ``llama-quantize --imatrix`` passes it to ``ggml_quantize_chunk``. :func:`collect` gathers it with forward hooks on
the model quantsense evaluates (so on the same activations its simulation sees);
:mod:`quantsense.backends.llama_cpp.imatrix_file` writes and reads llama.cpp's GGUF imatrix files.

Tensors are keyed by the model's module names (``model.layers.0.self_attn.q_proj``); the GGUF file uses llama.cpp's
tensor names (``blk.0.attn_q.weight``), given by the caller as a mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from quantsense.errors import QuantsenseError

_KNOWN: dict[str, "Imatrix"] = {}  # fingerprint -> every imatrix this process made or loaded


@dataclass(frozen=True, eq=False)
class Imatrix:
    """Per tensor: the sum of squared activations per input column and the number of tokens they were summed over."""

    sums: Mapping[str, np.ndarray] = field(repr=False)
    counts: Mapping[str, int] = field(repr=False)
    datasets: tuple[str, ...] = ()
    chunk_size: int = 0
    chunk_count: int = 0
    fingerprint: str = ""
    calibration: Mapping = field(default_factory=dict)  # {"data": text fingerprint, "first_token", "tokens"}, if known
    source: str = ""  # the file it was read from ('' when collected in this process)

    def provenance(self) -> dict:
        """What llama-quantize records of the imatrix a file was quantized with (``quantize.imatrix.*``)."""
        return {
            "file": self.source or f"imatrix {self.fingerprint}",
            "dataset": self.datasets[0] if self.datasets else "",
            "entries": len(self.sums),
            "chunks": self.chunk_count,
        }

    def __post_init__(self):
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", _fingerprint(self.sums, self.counts))
        _KNOWN[self.fingerprint] = self  # the latest wins: a loaded file (with its path) over the same one collected

    def __eq__(self, other) -> bool:
        return isinstance(other, Imatrix) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def weights(self, tensor: str) -> np.ndarray | None:
        """What a quantizer is given for ``tensor``: its mean squared activation per input column (None if absent)."""
        if tensor not in self.sums:
            return None
        return (self.sums[tensor] / max(self.counts[tensor], 1)).astype(np.float32)

    def describe(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "tensors": len(self.sums),
            "datasets": list(self.datasets),
            "tokens": max(self.counts.values(), default=0),
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
            "calibration": dict(self.calibration),
        }

    def overlap(self, data: str, first: int, tokens: int) -> tuple[int, int] | None:
        """The token range this imatrix was collected on that ``tokens`` tokens from ``first`` of text ``data`` (its
        fingerprint) also cover, or None (another text, disjoint ranges, or an imatrix without that record)."""
        cal = self.calibration
        if not cal or cal.get("data") != data:
            return None
        lo, hi = max(first, cal["first_token"]), min(first + tokens, cal["first_token"] + cal["tokens"])
        return (lo, hi) if lo < hi else None


def known(fingerprint: str) -> Imatrix | None:
    """The imatrix with ``fingerprint`` if this process made or loaded it (a plan file names it by fingerprint)."""
    return _KNOWN.get(fingerprint)


def _fingerprint(sums: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> str:
    digest = hashlib.sha256()
    for name in sorted(sums):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(sums[name], dtype=np.float32).tobytes())
        digest.update(str(int(counts[name])).encode())
    return digest.hexdigest()[:16]


def collect(
    model,
    modules: Mapping[str, object],
    inputs: Iterable[dict],
    datasets: tuple[str, ...] = (),
    chunk_size: int = 0,
    calibration: Mapping | None = None,
) -> Imatrix:
    """Run ``model`` on every batch of ``inputs`` and sum each module's squared inputs per column (float64), counting
    tokens; positions an ``attention_mask`` marks as padding are left out."""
    import torch

    sums = {name: None for name in modules}
    counts = {name: 0 for name in modules}
    mask: list = [None]

    def hook(name):
        def record(_module, args):
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1]).double()
            if mask[0] is not None and mask[0].numel() == rows.shape[0]:
                rows = rows[mask[0].reshape(-1).bool()]
            total = rows.pow(2).sum(dim=0)
            sums[name] = total if sums[name] is None else sums[name] + total
            counts[name] += int(rows.shape[0])

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for batch in inputs:
                mask[0] = batch.get("attention_mask")
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, total in sums.items() if total is None]
    if missing:
        raise QuantsenseError(f"no activations reached {missing[0]} (and {len(missing) - 1} more) during calibration")
    tokens = max(counts.values())
    return Imatrix(
        {n: t.float().cpu().numpy() for n, t in sums.items()},
        counts,
        tuple(datasets),
        chunk_size,
        tokens // chunk_size if chunk_size else 0,
        calibration=dict(calibration or {}),
    )


def product_modules(model, units) -> dict:
    """Unit name -> the module whose input an importance matrix records for it: each block linear itself, the output
    head (its own unit when untied; the token embedding's, which it shares, when tied), as llama-imatrix records the
    output projection (``--process-output``) under the name of the tensor it multiplies by."""
    found = {name: units.get(name).module for name in units.linear_units()}
    head = getattr(model, "get_output_embeddings", lambda: None)()
    for name in units.extra_units():
        unit = units.get(name)
        if head is not None and (unit.module is head or any(m is head for m in unit.tied_modules)):
            found[name] = head
    return found
