"""llama.cpp's quantization presets (``llama-quantize MODEL OUT Q4_K_M``) as per-tensor types.

A port of ``llama_tensor_get_type`` (src/llama-quant.cpp, the version llama-cpp-python 0.3.36 vendors) for dense
models (no experts; not Falcon, not a 70B), for the presets :data:`PRESETS` names. Each tensor starts at the preset's
base type; then:

- the output tensor (and the token embedding when they are tied, i.e. the file has no ``output.weight``): q8_0 when
  its rows do not hold whole blocks of the base type, else q6_K unless the base is q8_0;
- ``attn_v``, by its index i among the model's n ``attn_v`` tensors: Q3_K_M q5_K for the first two, else q4_K;
  Q4_K_M and Q5_K_M q6_K where :func:`use_more_bits` (the first and last eighth of the layers and every third one
  between); Q4_K_S q5_K for the first four;
- ``ffn_down``, by layer: Q3_K_M q5_K in the first sixteenth, else q4_K; Q4_K_M and Q5_K_M q6_K where
  :func:`use_more_bits`; Q4_K_S q5_K in the first eighth; Q4_0 / Q5_0 with an imatrix q4_1 / q5_1 in the first eighth;
- ``attn_output``: Q3_K_M q4_K;
- finally a row that does not hold whole blocks of the chosen type falls back (its ``fallback`` in :mod:`.ggml_types`, then f16).

Tensors are visited in llama.cpp's order (layer number, then name), which the counters depend on. A test checks the
result against the types ``llama_model_quantize`` itself writes.
"""

from __future__ import annotations

import re

from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.presets import PresetFamily, preset_name, register_presets
from quantsense.quantization.formats import parse_format
from quantsense.backends.llama_cpp.ggml_types import TYPES

PRESETS = {
    "Q3_K_M": "q3_K",
    "Q4_K_S": "q4_K",
    "Q4_K_M": "q4_K",
    "Q5_K_S": "q5_K",
    "Q5_K_M": "q5_K",
    "Q6_K": "q6_K",
    "Q8_0": "q8_0",
    "Q4_0": "q4_0",
    "Q5_0": "q5_0",
}
# llama_ftype numbers (llama.h), for llama_model_quantize
FTYPES = {
    "Q4_0": 2,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q3_K_M": 12,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
}
_LAYER = re.compile(r"blk\.(\d+)\.")


@register_presets
class LlamaPresets(PresetFamily):
    """llama-quantize's presets, as the plans :func:`preset_types` gives a workspace's model (:mod:`.plans`)."""

    runtime = "llama.cpp"
    names = tuple(PRESETS)

    def plan(self, ws, name: str):
        """The plan llama-quantize's preset ``name`` gives the workspace's model (its tensor types,
        :func:`preset_types`), bound to the workspace's imatrix where a type takes one."""
        from quantsense.backends.llama_cpp.plans import unit_gguf_names
        from quantsense.quantization.plan import Plan

        names = unit_gguf_names(ws)
        rows = {gguf: int(ws.units.get(unit).shape[-1]) for unit, gguf in names.items()}
        types = preset_types(name, rows, ws.units.num_blocks, has_imatrix=ws.imatrix is not None)
        by_gguf = {gguf: unit for unit, gguf in names.items()}
        return Plan.of({by_gguf[gguf]: ws.format(qtype) for gguf, qtype in types.items()})


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _order(name: str) -> tuple[int, str]:
    """llama.cpp's weight order: by layer number (tensors outside the blocks first), then by name."""
    found = _LAYER.match(name)
    return (int(found.group(1)) if found else -1, name)


def quantizable(name: str) -> bool:
    """Whether llama-quantize quantizes a 2-D tensor of this name (weights, not norms)."""
    return name.endswith("weight") and "_norm.weight" not in name


def holds(qtype: str, row: int) -> bool:
    """Whether a row of ``row`` weights holds whole blocks of ``qtype`` (the format's own shape rule)."""
    try:
        parse_format(qtype).check_shape((1, row))
    except QuantsenseError:
        return False
    return True


def fallback(qtype: str, row: int) -> str:
    """llama.cpp's tensor_type_fallback: a type whose block the row holds (f16 when even the fallback's does not)."""
    if holds(qtype, row):
        return qtype
    chosen = (TYPES[qtype].fallback or qtype) if qtype in TYPES else qtype
    return chosen if holds(chosen, row) else "f16"


def preset_types(preset: str, rows: dict[str, int], n_layer: int, has_imatrix: bool = False) -> dict[str, str]:
    """The type llama-quantize gives each quantizable 2-D tensor (``rows``: GGUF tensor name -> row width, ne[0])."""
    preset = preset_name(preset)
    base = PRESETS[preset]
    tied = "output.weight" not in rows
    n_attn_v = sum("attn_v.weight" in name for name in rows)
    counters = {"attn_v": 0, "ffn_down": 0}
    types = {}
    for name in sorted((n for n in rows if quantizable(n)), key=_order):
        qtype = _rule(preset, base, name, rows[name], tied, n_attn_v, n_layer, counters, has_imatrix)
        types[name] = fallback(qtype, rows[name])
    return types


def _rule(
    preset: str,
    base: str,
    name: str,
    row: int,
    tied: bool,
    n_attn_v: int,
    n_layer: int,
    counters: dict,
    has_imatrix: bool,
) -> str:
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if not holds(base, row):
            return "q8_0"
        return "q6_K" if base != "q8_0" else base
    if name == "token_embd.weight":
        return base
    if "attn_v.weight" in name:
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if preset == "Q3_K_M":
            return "q5_K" if i < 2 else "q4_K"
        if preset in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_attn_v):
            return "q6_K"
        if preset == "Q4_K_S" and i < 4:
            return "q5_K"
        return base
    if "ffn_down" in name:
        i = counters["ffn_down"]
        counters["ffn_down"] += 1
        if preset == "Q3_K_M":
            return "q5_K" if i < n_layer // 16 else "q4_K"
        if preset in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
            return "q6_K"
        if preset == "Q4_K_S" and i < n_layer // 8:
            return "q5_K"
        if preset in ("Q4_0", "Q5_0") and has_imatrix and i < n_layer // 8:
            return "q4_1" if preset == "Q4_0" else "q5_1"
        return base
    if "attn_output.weight" in name and preset == "Q3_K_M":
        return "q4_K"
    return base
