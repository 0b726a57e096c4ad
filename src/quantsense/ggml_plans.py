"""Plans in llama.cpp's terms on a workspace: each unit's GGUF tensor name, and llama.cpp's presets
(:mod:`quantsense.mixed_precision.presets`) as quantsense plans, so a preset is simulated, measured, sized and
exported like any allocation, and an allocation can be given exactly a preset's budget.

A preset plan covers every block linear and the token embedding (and an untied output head), as llama-quantize
does; the formats are bound to the workspace's imatrix when it has one (``--imatrix``), as ``llama-quantize
--imatrix`` would weight them.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.mixed_precision.allocation import Budget
from quantsense.mixed_precision.presets import preset_name, preset_types
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import average_bits, model_bytes
from quantsense.workspace import Workspace, gguf_tensor_names


def unit_gguf_names(ws: Workspace) -> dict[str, str]:
    """Unit name -> GGUF tensor name for the block linears and the units outside the blocks that GGUF stores
    (the token embedding; the output head unless it is tied to the embedding)."""
    extra = [name for name in ws.units.extra_units() if ws.units.get(name).kind == "embedding"
             or (ws.units.get(name).kind == "head" and not ws.units.get(name).tied_to)]
    return gguf_tensor_names(ws.model, ws.units, "a llama.cpp preset", ws.units.linear_units() + extra)


def imatrix_by_tensor(ws: Workspace) -> dict:
    """The bound importance matrix under GGUF tensor names, as llama-quantize loads it: every entry the file has (block
    linears, and the output head's under the tensor it multiplies by, the token embedding when tied)."""
    names = unit_gguf_names(ws)
    return {names[u]: w for u in names if (w := ws.imatrix.weights(u)) is not None}


def preset_plan(ws: Workspace, preset: str) -> Plan:
    """The plan llama-quantize's ``preset`` gives this model (its tensor types, :func:`preset_types`)."""
    names = unit_gguf_names(ws)
    rows = {gguf: int(ws.units.get(unit).shape[-1]) for unit, gguf in names.items()}
    types = preset_types(preset, rows, ws.units.num_blocks, has_imatrix=ws.imatrix is not None)
    by_gguf = {gguf: unit for unit, gguf in names.items()}
    return Plan.of({by_gguf[gguf]: ws.format(qtype) for gguf, qtype in types.items()})


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
        raise QuantsenseError(f"{path} has no tensor {missing[0]} (and {len(missing) - 1} more) that this model has: it was "
                              "made from another model")
    mapping = {}
    for name, qtype in types.items():
        unit = by_gguf.get(name)
        if unit is None or qtype == "f32":
            continue
        try:
            fmt = ws.format(qtype)
        except QuantsenseError as exc:
            raise QuantsenseError(f"{path}: {name} is stored as {qtype}, which quantsense cannot simulate ({exc})") from None
        fmt.check_unit(ws.units.get(unit))
        mapping[unit] = fmt
    return Plan.of(mapping)


def preset_budget(ws: Workspace, preset: str, outside: str = "allocate") -> Budget:
    """An allocation budget equal to ``preset``'s on this workspace's model: its whole model's bytes, for an allocation
    that chooses the token embedding and output head too (``outside="allocate"``), or its average bits per block linear
    weight, for one that takes the preset's own types outside the blocks (``"preset"``); either way the allocated file is
    no larger. ``qs.frontier(ws, [budget], outside=...)`` measures the preset beside it."""
    return _budget_of(ws, preset, preset_plan(ws, preset), outside)[0]


def _budget_of(ws: Workspace, preset: str, plan: Plan, outside: str) -> tuple[Budget, Plan | None]:
    if outside == "allocate":
        return Budget(max_bytes=model_bytes(ws.model, ws.units, plan), preset=preset_name(preset), model=ws.model_fp), None
    linears = set(ws.units.linear_units())
    kept = Plan.of({name: fmt for name, fmt in plan.assignments if name not in linears})
    bits = average_bits(ws.units, plan, scope=sorted(linears))
    return Budget(avg_bits=bits, preset=preset_name(preset), model=ws.model_fp), kept


def with_presets(ws: Workspace, budgets: list[Budget], presets,
                 outside: str = "preset") -> tuple[list[Budget], dict[str, Plan], dict[str, Plan]]:
    """``budgets`` and each preset's own budget; the preset plans to measure beside the allocations (``preset Q4_K_M``);
    with ``outside="preset"``, per preset the types it gives outside the blocks, which an allocation at its size takes
    too (with ``"allocate"`` the budget is the preset's whole size and the allocation chooses those units itself)."""
    budgets, named, kept = list(budgets), {}, {}
    for budget in budgets:
        budget.check_model(ws.model_fp)  # a preset's budget from another model is refused before anything is built
    for preset in dict.fromkeys([*(preset_name(p) for p in presets), *(b.preset for b in budgets if b.preset)]):
        named[f"preset {preset}"] = plan = preset_plan(ws, preset)
        budget, types = _budget_of(ws, preset, plan, "allocate" if outside == "allocate" else "preset")
        if types is not None:
            kept[preset] = types
        if not any(b.preset == preset for b in budgets):  # a budget given as qs.preset_budget(ws, preset) is this one
            budgets.append(budget)
    return budgets, named, kept


def with_outside(plan: Plan, budget: Budget, outside: dict[str, Plan]) -> Plan:
    """An allocated plan with its preset's types outside the blocks (unchanged for a budget without a preset)."""
    extra = outside.get(budget.preset) if budget.preset else None
    return Plan.of({**plan.as_dict(), **extra.as_dict()}) if extra else plan
