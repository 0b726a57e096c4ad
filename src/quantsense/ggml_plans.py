"""Plans in llama.cpp's terms on a workspace: each unit's GGUF tensor name, and llama.cpp's presets
(:mod:`quantsense.mixed_precision.presets`) as quantsense plans, so a preset is simulated, measured, sized and
exported like any allocation, and an allocation can be given exactly a preset's budget.

A preset plan covers every block linear and the token embedding (and an untied output head), as llama-quantize
does; the formats are bound to the workspace's imatrix when it has one (``--imatrix``), as ``llama-quantize
--imatrix`` would weight them.
"""

from __future__ import annotations

from quantsense.mixed_precision.allocation import Budget
from quantsense.mixed_precision.presets import preset_name, preset_types
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import average_bits
from quantsense.workspace import Workspace, gguf_tensor_names


def unit_gguf_names(ws: Workspace) -> dict[str, str]:
    """Unit name -> GGUF tensor name for the block linears and the units outside the blocks that GGUF stores
    (the token embedding; the output head unless it is tied to the embedding)."""
    from quantsense.exporters.gguf_file import hf_to_gguf_name

    names = gguf_tensor_names(ws.model, ws.units)
    arch = getattr(ws.model.config, "model_type", "")
    for name in ws.units.extra_units():
        unit = ws.units.get(name)
        if unit.kind == "embedding" or (unit.kind == "head" and not unit.tied_to):
            names[name] = hf_to_gguf_name(name, ws.units.num_blocks, arch)
    return names


def preset_plan(ws: Workspace, preset: str) -> Plan:
    """The plan llama-quantize's ``preset`` gives this model (its tensor types, :func:`preset_types`)."""
    names = unit_gguf_names(ws)
    rows = {gguf: int(ws.units.get(unit).shape[-1]) for unit, gguf in names.items()}
    types = preset_types(preset, rows, ws.units.num_blocks, has_imatrix=ws.imatrix is not None)
    by_gguf = {gguf: unit for unit, gguf in names.items()}
    return Plan.of({by_gguf[gguf]: ws.format(qtype) for gguf, qtype in types.items()})


def preset_budget(ws: Workspace, preset: str) -> tuple[Budget, Plan]:
    """An allocation budget equal to ``preset``'s: its average bits per block linear weight (so the allocated file,
    with the preset's own types outside the blocks, is no larger), and those outside types as a plan."""
    return _budget_of(ws, preset, preset_plan(ws, preset))


def _budget_of(ws: Workspace, preset: str, plan: Plan) -> tuple[Budget, Plan]:
    linears = set(ws.units.linear_units())
    outside = Plan.of({name: fmt for name, fmt in plan.assignments if name not in linears})
    bits = average_bits(ws.units, plan, scope=sorted(linears))
    return Budget(avg_bits=bits, preset=preset_name(preset)), outside


def with_presets(ws: Workspace, budgets: list[Budget], presets) -> tuple[list[Budget], dict[str, Plan], dict[str, Plan]]:
    """``budgets`` and each preset's own budget; the preset plans to measure beside the allocations (``preset Q4_K_M``);
    per preset, the types it gives outside the blocks, which an allocation at its size takes too."""
    budgets, named, outside = list(budgets), {}, {}
    for preset in dict.fromkeys(preset_name(p) for p in presets):
        named[f"preset {preset}"] = plan = preset_plan(ws, preset)
        budget, outside[preset] = _budget_of(ws, preset, plan)
        budgets.append(budget)
    return budgets, named, outside


def with_outside(plan: Plan, budget: Budget, outside: dict[str, Plan]) -> Plan:
    """An allocated plan with its preset's types outside the blocks (unchanged for a budget without a preset)."""
    extra = outside.get(budget.preset) if budget.preset else None
    return Plan.of({**plan.as_dict(), **extra.as_dict()}) if extra else plan
