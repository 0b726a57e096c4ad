"""Plans in llama.cpp's terms on a workspace: each unit's GGUF tensor name (how an imatrix file and llama.cpp's presets
name it), the bound importance matrix under those names, and a GGUF file's tensor types read back as a plan.

A preset's plan is :class:`~quantsense.backends.llama_cpp.presets.LlamaPresets` (registered with the presets every
runtime registers; how a preset gives an allocation its budget is in :mod:`quantsense.search`): it covers every block
linear and the token embedding (and an untied output head), as llama-quantize does, with the formats bound to the
workspace's imatrix when it has one (``--imatrix``), as ``llama-quantize --imatrix`` would weight them.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.quantization.plan import Plan
from quantsense.backends.llama_cpp.gguf_file import gguf_tensor_names
from quantsense.workspace import Workspace


def unit_gguf_names(ws: Workspace) -> dict[str, str]:
    """Unit name -> GGUF tensor name for the block linears and the units outside the blocks that GGUF stores
    (the token embedding; the output head unless it is tied to the embedding)."""
    extra = [
        name
        for name in ws.units.extra_units()
        if ws.units.get(name).kind == "embedding"
        or (ws.units.get(name).kind == "head" and not ws.units.get(name).tied_to)
    ]
    return gguf_tensor_names(ws.model, ws.units, "a llama.cpp preset", ws.units.linear_units() + extra)


def imatrix_by_tensor(ws: Workspace) -> dict:
    """The bound importance matrix under GGUF tensor names, as llama-quantize loads it: every entry the file has (block
    linears, and the output head's under the tensor it multiplies by, the token embedding when tied)."""
    names = unit_gguf_names(ws)
    return {names[u]: w for u in names if (w := ws.imatrix.weights(u)) is not None}


def plan_from_gguf(ws: Workspace, path: str | Path) -> Plan:
    """The type assignment of a GGUF file (a preset's, ``llama-quantize --target-size``'s, anyone's) as a plan on this
    workspace: every tensor stored in a quantized type (or f16/bf16) for the unit it belongs to, bound to the
    workspace's importance matrix where its type takes one (as the file was made with ``--imatrix``)."""
    import gguf

    from quantsense.errors import QuantsenseError

    path = Path(path)
    if not path.is_file() or path.suffix != ".gguf":
        raise QuantsenseError(f"{path} is not a .gguf file; pass a GGUF model file to read its tensor types from")
    try:
        tensors = gguf.GGUFReader(str(path)).tensors
    except Exception as exc:  # a truncated or foreign file
        raise QuantsenseError(f"{path} is not a readable GGUF file ({exc})") from None
    by_gguf = {gguf_name: unit for unit, gguf_name in unit_gguf_names(ws).items()}
    types = {t.name: t.tensor_type.name.lower() for t in tensors}
    missing = sorted(set(by_gguf) - set(types))
    if missing:
        raise QuantsenseError(
            f"{path} has no tensor {missing[0]} (and {len(missing) - 1} more) that this model has: it was "
            "made from another model"
        )
    mapping = {}
    for name, qtype in types.items():
        unit = by_gguf.get(name)
        if unit is None or qtype == "f32":
            continue
        try:
            fmt = ws.format(qtype)
        except QuantsenseError as exc:
            raise QuantsenseError(
                f"{path}: {name} is stored as {qtype}, which quantsense cannot simulate ({exc})"
            ) from None
        fmt.check_unit(ws.units.get(unit))
        mapping[unit] = fmt
    return Plan.of(mapping)
