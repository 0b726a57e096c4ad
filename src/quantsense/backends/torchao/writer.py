"""Export target ``torchao``: a plan as a real quantized Hugging Face checkpoint, its size predicted and measured.

Each planned linear unit gets a torchao ``IntxWeightOnlyConfig`` with the plan's bit-width,
symmetry and granularity (``PerAxis(0)`` for per-channel, ``PerGroup(g)``), keyed by the weight's
fully qualified name in an ``FqnToConfig``; transformers applies it while loading
(``TorchAoConfig``) and ``save_pretrained`` writes safetensors that reload with transformers and
torchao alone. torchao and the fake quantizer use the same grid, so the exported model computes
the weights the simulation measured.

torchao 0.18's portable layout (``IntxPackingFormat.UNPACKED_TO_INT8``) stores every code in an
int8, one fp32 scale and one int8 zero point per scale group, whatever the bit-width: INT4 weights
take as much disk as INT8 ones. :func:`export_bytes` predicts that layout; the plan's own
``storage_bits`` is the packed size a sub-byte kernel format would reach.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from quantsense.errors import QuantsenseError
from quantsense.exporters.base import (
    Exporter,
    ExportSource,
    check_plan_formats,
    register_exporter,
    run_fresh,
    write_folder,
)
from quantsense.io import check_output
from quantsense.quantization.formats import QuantConfig
from quantsense.quantization.plan import Plan

if TYPE_CHECKING:
    import torch

    from quantsense.models.units import UnitMap

PLAN_FILE = "quantsense_plan.json"


def torchao_config(config: QuantConfig, unit: str = "a unit"):
    import torch

    config.check_export("torchao", unit)
    try:
        from torchao.quantization import IntxWeightOnlyConfig, MappingType
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError:
        raise QuantsenseError("export needs torchao: pip install -c constraints.txt -e '.[export]'") from None
    if config.granularity == "per_tensor":
        raise QuantsenseError(
            "torchao's IntxWeightOnlyConfig has no per-tensor granularity; plan with per_channel or per_group"
        )
    granularity = PerAxis(0) if config.granularity == "per_channel" else PerGroup(config.group_size)
    mapping = MappingType.SYMMETRIC if config.symmetric else MappingType.ASYMMETRIC
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{config.bits}"), granularity=granularity, mapping_type=mapping
    )


def check_plan(source: ExportSource, plan: Plan) -> None:
    """Everything checkable before writing: torchao can store every planned format and unit."""
    check_plan_formats(plan, "torchao")
    check_exportable(source.units, plan)
    for name, fmt in plan.assignments:
        torchao_config(fmt, name)  # a grid torchao has no config for (per-tensor) is refused now, not after the work


def check_exportable(unit_map: UnitMap, plan: Plan) -> None:
    for name in plan.units():
        unit = unit_map.get(name)
        if unit.kind == "embedding":
            raise QuantsenseError(
                f"unit {name} is an embedding; export quantizes linear weights only, remove it from the plan"
            )
        if unit.transposed:
            raise QuantsenseError(
                f"unit {name} is a GPT-2 Conv1D ([in, out] weight); torchao's IntxWeightOnlyConfig "
                "quantizes nn.Linear only, so it cannot be exported"
            )


def _torchao_unit_bits(unit, config: QuantConfig) -> int:
    rows = unit.shape[0]
    groups = rows if config.granularity == "per_channel" else unit.numel // config.group_size
    return 8 * (unit.numel + groups * (4 + 1))


def export_bytes(model: torch.nn.Module, unit_map: UnitMap, plan: Plan) -> int:
    """Bytes of every parameter in torchao's unpacked layout: int8 codes, fp32 scale + int8 zero point per group."""
    from quantsense.quantization.size import model_bytes

    return model_bytes(model, unit_map, plan, unit_bits=_torchao_unit_bits)


def write(source: ExportSource, plan: Plan, out: str | Path, check=None) -> dict:
    """Write the checkpoint and report its sizes; ``check(path)`` (the task's fresh-process check) adds its figures."""
    from quantsense.quantization.size import average_bits, model_bytes

    path = export_plan(source, plan, out)
    fp32_bytes = model_bytes(source.model, source.units, Plan())
    report = {
        "out": str(path),
        "format": "torchao",
        "plan_avg_bits": average_bits(source.units, plan),
        "disk_bytes": weights_file_bytes(path),
        "predicted_export_bytes": export_bytes(source.model, source.units, plan),
        "predicted_packed_bytes": model_bytes(source.model, source.units, plan),
        "fp32_param_bytes": fp32_bytes,
    }
    local = Path(source.name)
    report["fp32_disk_bytes"] = weights_file_bytes(local) if local.is_dir() else fp32_bytes
    if source.gguf_file is not None:
        report["note"] = "GGUF source: FP32 size is the de-quantized fp32 parameters, not the GGUF file"
    report["disk_factor"] = report["fp32_disk_bytes"] / report["disk_bytes"]
    report["predicted_factor"] = fp32_bytes / report["predicted_export_bytes"]
    report["packed_factor"] = fp32_bytes / report["predicted_packed_bytes"]
    report["lines"] = [
        f"weights on disk: {report['disk_bytes'] / 1e6:.2f} MB vs FP32 {report['fp32_disk_bytes'] / 1e6:.2f} MB: "
        f"{report['disk_factor']:.3f}x smaller; predicted for torchao's int8-container layout "
        f"{report['predicted_factor']:.3f}x (packed sub-byte storage would give {report['packed_factor']:.3f}x)"
    ]
    if check is not None:
        checked = check(path)
        report["lines"] += checked.pop("lines", [])
        report.update(checked)
    if "note" in report:
        report["lines"].append(report["note"])
    return report


def reload_line(check: dict) -> str:
    """What the fresh-process reload used, in words (the tasks' checks start with it)."""
    return (
        f"reloaded in a fresh process with transformers + torchao only (weights: {check['weight_class']}, "
        f"quantsense imported: {check['quantsense_imported']})"
    )


def export_plan(source: ExportSource, plan: Plan, out: str | Path) -> Path:
    """Write the quantized checkpoint, tokenizer and plan to ``out`` (which must not exist or be empty).

    A GGUF source is first written as an ordinary fp32 checkpoint from the loaded model and tokenizer
    (the de-quantized weights quantsense measured), then quantized from there.
    """
    import torch

    import transformers

    check_plan(source, plan)
    out = check_output(out, empty_folder=True)  # before loading the model (write_folder checks again as it writes)
    fqn_configs = {f"{name}.weight": torchao_config(config, name) for name, config in plan.assignments}
    from torchao.quantization import FqnToConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fp32.") as fp32_dir:
        load_from = source.name
        if source.gguf_file is not None or str(source.name).endswith(".gguf"):
            _save_plain_fp32(source.model, fp32_dir)
            source.tokenizer.save_pretrained(fp32_dir)
            load_from = fp32_dir
        model = source.head.auto().from_pretrained(
            load_from,
            trust_remote_code=False,
            dtype=torch.float32,
            quantization_config=transformers.TorchAoConfig(FqnToConfig(fqn_configs)),
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(load_from, trust_remote_code=False)

    def fill(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        plan.save(staging / PLAN_FILE)

    write_folder(out, fill)
    return out


def _save_plain_fp32(model: torch.nn.Module, directory: str) -> None:
    """Save a model loaded from GGUF as an ordinary fp32 checkpoint (transformers refuses to re-serialise GGUF)."""
    import copy

    config = copy.deepcopy(model.config)
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(directory)


def weights_file_bytes(directory: str | Path) -> int:
    """Bytes of the safetensors weight files in a saved model directory."""
    files = list(Path(directory).glob("*.safetensors"))
    if not files:
        raise QuantsenseError(f"{directory} holds no .safetensors weights")
    return sum(f.stat().st_size for f in files)


def run_check(args: list[str], cwd: str | None = None) -> dict:
    """``torchao_check.py`` (the torchao checkpoint reloaded by transformers + torchao alone) in a fresh process."""
    from quantsense.backends.torchao import torchao_check

    return run_fresh(torchao_check, args, cwd)


@register_exporter
class TorchaoExporter(Exporter):
    """Export target ``torchao`` (:func:`write`, :func:`check_plan`)."""

    name = "torchao"
    single_file = False  # writes a folder (--out DIR)
    check_plan = staticmethod(check_plan)
    write = staticmethod(write)
