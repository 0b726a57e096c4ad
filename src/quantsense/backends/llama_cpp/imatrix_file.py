"""llama.cpp's GGUF importance-matrix file: written so that ``llama-quantize --imatrix`` reads it, read whether
quantsense or ``llama-imatrix`` wrote it; registered as the ``imatrix`` calibration (:class:`ImatrixCalibration`).

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
from quantsense.backends.llama_cpp.imatrix import Imatrix, collect, product_modules
from quantsense.quantization.calibration import Calibration, register_calibration

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


MAKE_ONE = "make one for this model with: quantsense imatrix --model MODEL --data TEXT --out {path}"
CONVERT = "convert it with llama.cpp: llama-imatrix --in-file {path} -o {stem}.gguf"


def check_path(path) -> Path:
    """An imatrix path as given (a string or path-like naming an existing file), refused in one line otherwise."""
    import os

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise QuantsenseError(
            f"imatrix (--imatrix) is the path of an importance matrix file (a str or Path), got "
            f"{path!r}; make one with: quantsense imatrix --model MODEL --data TEXT --out imatrix.gguf"
        )
    path = Path(path)
    if path.is_dir():
        raise QuantsenseError(
            f"--imatrix {path} is a folder; pass the importance matrix file itself (a .gguf from "
            "quantsense imatrix or llama-imatrix)"
        )
    if not path.is_file():
        raise QuantsenseError(f"imatrix file {path} not found; {MAKE_ONE.format(path=path)}")
    return path


def load(path: str | Path, gguf_names: Mapping[str, str], columns: Mapping[str, int] | None = None) -> Imatrix:
    """Read a GGUF imatrix; ``gguf_names`` maps the model's module names to GGUF tensor names (entries for other
    tensors, e.g. ``output.weight``, are ignored; a module the file lacks is quantized without one). ``columns``: each
    module's input width, which its entry must have (an imatrix of another model is refused by name)."""
    import gguf

    path = check_path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF" and path.suffix != ".gguf":  # llama-imatrix's legacy binary layout starts with an entry count
        raise QuantsenseError(
            f"{path} is not a GGUF file (legacy .dat imatrix files are not read); "
            + CONVERT.format(path=path, stem=path.with_suffix(""))
        )
    if magic != b"GGUF":
        raise QuantsenseError(
            f"{path} is not a GGUF imatrix file (it does not start with GGUF's magic: truncated or "
            f"another kind of file); {MAKE_ONE.format(path=path)}"
        )
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise QuantsenseError(
            f"{path} is not a readable GGUF imatrix file ({exc}); {MAKE_ONE.format(path=path)}"
        ) from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    if not any(name.endswith(".in_sum2") for name in tensors):
        raise QuantsenseError(
            f"{path} holds no '<tensor>.in_sum2' entries: it is a GGUF file but not an importance "
            f"matrix; {MAKE_ONE.format(path=path)}"
        )
    by_tensor = {gguf_name: module for module, gguf_name in gguf_names.items()}
    sums, counts = {}, {}
    for name, values in tensors.items():
        if not name.endswith(".in_sum2") or name.removesuffix(".in_sum2") not in by_tensor:
            continue
        module = by_tensor[name.removesuffix(".in_sum2")]
        count = tensors.get(name.removesuffix(".in_sum2") + ".counts")
        if count is None or count.size != 1:
            raise QuantsenseError(f"{path}: {name} has no single .counts entry (per-expert imatrix files are not read)")
        width = (columns or {}).get(module)
        if width is not None and values.size != width:
            raise QuantsenseError(
                f"imatrix file {path} was made for another model: its {name.removesuffix('.in_sum2')} "
                f"has {values.size} columns where this model's weight takes {width} inputs; "
                + MAKE_ONE.format(path=path)
            )
        sums[module], counts[module] = values.copy(), int(round(float(count[0])))
    if not sums:
        raise QuantsenseError(
            f"imatrix file {path} has no entry for any of this model's linear weights (e.g. "
            f"{next(iter(gguf_names.values()))}): it was made for another model; " + MAKE_ONE.format(path=path)
        )
    fields = reader.fields
    datasets = (
        tuple(
            str(bytes(fields[gguf.Keys.IMatrix.DATASETS].parts[i]), "utf-8")
            for i in fields[gguf.Keys.IMatrix.DATASETS].data
        )
        if gguf.Keys.IMatrix.DATASETS in fields
        else ()
    )

    def u32(key: str) -> int:
        return int(fields[key].parts[fields[key].data[0]][0]) if key in fields else 0

    return Imatrix(
        sums,
        counts,
        datasets,
        u32(gguf.Keys.IMatrix.CHUNK_SIZE),
        u32(gguf.Keys.IMatrix.CHUNK_COUNT),
        calibration=_calibration(fields),
        source=str(path),
    )


def _calibration(fields) -> dict:
    """quantsense's record of the tokens an imatrix was collected on (``{}`` for llama-imatrix's files)."""
    if not all(f"quantsense.calibration.{k}" in fields for k in CALIBRATION_KEYS):
        return {}
    data = fields["quantsense.calibration.data"]
    number = {
        k: int(fields[f"quantsense.calibration.{k}"].parts[fields[f"quantsense.calibration.{k}"].data[0]][0])
        for k in ("first_token", "tokens")
    }
    return {"data": str(bytes(data.parts[data.data[0]]), "utf-8"), **number}


def calibration_of(path: str | Path) -> dict:
    """The token range an imatrix file was collected on (``{}`` when it does not say), without reading its tensors."""
    import gguf

    try:
        return _calibration(gguf.GGUFReader(str(check_path(path))).fields)
    except QuantsenseError:
        raise
    except Exception as exc:  # a foreign file: load() says so with the fix
        raise QuantsenseError(f"{path} is not a readable GGUF imatrix file ({exc})") from None


@register_calibration
class ImatrixCalibration(Calibration):
    """``--imatrix FILE``: llama.cpp's importance matrix file, read under the model's module names; collected with
    :func:`collect` on the modules :func:`product_modules` names."""

    kind = "imatrix"

    def check_path(self, path):
        return check_path(path)

    def load(self, path, model, units) -> Imatrix:
        from quantsense.backends.llama_cpp.gguf_file import gguf_tensor_names

        names = list(product_modules(model, units))
        columns = {name: units.get(name).shape[0 if units.get(name).transposed else -1] for name in names}
        return load(path, gguf_tensor_names(model, units, names=names), columns)

    def modules(self, model, units) -> dict:
        return product_modules(model, units)

    def collect(self, model, modules, inputs) -> Imatrix:
        return collect(model, modules, inputs)
