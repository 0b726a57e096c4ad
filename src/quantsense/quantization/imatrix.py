"""The importance matrix (imatrix): llama.cpp's per-input-column statistic that its quantizers weight rounding by.

For every linear weight, the sum over calibration tokens of each input column's squared activation (``in_sum2``) and
the number of tokens (``counts``); a quantizer is given their ratio, the mean squared activation per column, exactly
as ``llama-quantize --imatrix`` passes it to ``ggml_quantize_chunk``. :func:`collect` gathers it with forward hooks on
the model quantsense evaluates (so on the same activations its simulation sees), :func:`save` writes llama.cpp's GGUF
imatrix layout (``<tensor>.in_sum2`` [1 x n_in], ``<tensor>.counts`` [1 x 1], ``general.type = imatrix``,
``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``) so ``llama-quantize --imatrix`` reads it,
and :func:`load` reads such a file (quantsense's or llama-imatrix's own).

Tensors are keyed by the model's module names (``model.layers.0.self_attn.q_proj``); the GGUF file uses llama.cpp's
tensor names (``blk.0.attn_q.weight``), given by the caller as a mapping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
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

    def __post_init__(self):
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", _fingerprint(self.sums, self.counts))
        _KNOWN.setdefault(self.fingerprint, self)

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
        return {"fingerprint": self.fingerprint, "tensors": len(self.sums), "datasets": list(self.datasets),
                "tokens": max(self.counts.values(), default=0), "chunk_size": self.chunk_size,
                "chunk_count": self.chunk_count, "calibration": dict(self.calibration)}

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


CALIBRATION_KEYS = ("data", "first_token", "tokens")  # stored as quantsense.calibration.<key> (llama.cpp ignores them)


def collect(model, modules: Mapping[str, object], inputs: Iterable[dict], datasets: tuple[str, ...] = (),
            chunk_size: int = 0, calibration: Mapping | None = None) -> Imatrix:
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
    return Imatrix({n: t.float().cpu().numpy() for n, t in sums.items()}, counts, tuple(datasets), chunk_size,
                   tokens // chunk_size if chunk_size else 0, calibration=dict(calibration or {}))


def save(imatrix: Imatrix, path: str | Path, gguf_names: Mapping[str, str]) -> Path:
    """Write ``imatrix`` in llama.cpp's GGUF imatrix layout, each module under its GGUF tensor name as llama-imatrix
    names them (``blk.0.attn_q.weight.in_sum2``)."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch="imatrix", use_temp_file=False)
    writer.add_type("imatrix")
    writer.add_array(gguf.Keys.IMatrix.DATASETS, list(imatrix.datasets) or ["unknown"])
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
    for key, value in imatrix.calibration.items():
        (writer.add_string if isinstance(value, str) else writer.add_uint32)(f"quantsense.calibration.{key}", value)
    for name in sorted(imatrix.sums, key=lambda n: gguf_names[n]):
        tensor = gguf_names[name]
        writer.add_tensor(f"{tensor}.in_sum2", imatrix.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{tensor}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load(path: str | Path, gguf_names: Mapping[str, str]) -> Imatrix:
    """Read a GGUF imatrix; ``gguf_names`` maps the model's module names to GGUF tensor names (entries for other
    tensors, e.g. ``output.weight``, are ignored; a module the file lacks is quantized without one)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise QuantsenseError(f"imatrix file {path} not found; make one with: quantsense imatrix --model M --data TEXT --out {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise QuantsenseError(f"{path} is not a GGUF imatrix file ({exc}); make one with quantsense imatrix") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    if not any(name.endswith(".in_sum2") for name in tensors):
        raise QuantsenseError(f"{path} holds no '<tensor>.in_sum2' entries: not a GGUF imatrix (legacy .dat imatrix "
                              "files are not read; convert it with llama-imatrix --in-file X --output-format gguf)")
    by_tensor = {gguf_name: module for module, gguf_name in gguf_names.items()}
    sums, counts = {}, {}
    for name, values in tensors.items():
        if not name.endswith(".in_sum2") or name.removesuffix(".in_sum2") not in by_tensor:
            continue
        module = by_tensor[name.removesuffix(".in_sum2")]
        count = tensors.get(name.removesuffix(".in_sum2") + ".counts")
        if count is None or count.size != 1:
            raise QuantsenseError(f"{path}: {name} has no single .counts entry (per-expert imatrix files are not read)")
        sums[module], counts[module] = values.copy(), int(round(float(count[0])))
    if not sums:
        raise QuantsenseError(f"{path} has no entry for any of this model's linear weights (e.g. {next(iter(gguf_names.values()))}); "
                              "was it made for another model?")
    fields = reader.fields
    datasets = tuple(str(bytes(fields[gguf.Keys.IMatrix.DATASETS].parts[i]), "utf-8")
                     for i in fields[gguf.Keys.IMatrix.DATASETS].data) if gguf.Keys.IMatrix.DATASETS in fields else ()

    def u32(key: str) -> int:
        return int(fields[key].parts[fields[key].data[0]][0]) if key in fields else 0

    calibration = {}
    if all(f"quantsense.calibration.{k}" in fields for k in CALIBRATION_KEYS):
        data_field = fields["quantsense.calibration.data"]
        calibration = {"data": str(bytes(data_field.parts[data_field.data[0]]), "utf-8"),
                       "first_token": u32("quantsense.calibration.first_token"), "tokens": u32("quantsense.calibration.tokens")}
    return Imatrix(sums, counts, datasets, u32(gguf.Keys.IMatrix.CHUNK_SIZE), u32(gguf.Keys.IMatrix.CHUNK_COUNT),
                   calibration=calibration)
