"""llama.cpp's GGUF importance-matrix file: written so that ``llama-quantize --imatrix`` reads it, read whether
quantsense or ``llama-imatrix`` wrote it.

Layout (tools/imatrix/imatrix.cpp): per tensor ``<tensor>.in_sum2`` (F32, ne [n_in, 1]: the sum of squared
activations per input column) and ``<tensor>.counts`` (F32, ne [1, 1]: the tokens summed); keys ``general.type =
imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``. quantsense adds
``quantsense.calibration.{data,first_token,tokens}`` (the text's fingerprint and the token range), which llama.cpp
ignores, so that an evaluation can refuse to score the tokens an imatrix was collected on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.quantization.imatrix import Imatrix

CALIBRATION_KEYS = ("data", "first_token", "tokens")  # stored as quantsense.calibration.<key> (llama.cpp ignores them)


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
                   calibration=calibration, source=str(path))
