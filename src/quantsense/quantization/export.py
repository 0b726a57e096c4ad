"""Export a plan as a real quantized Hugging Face checkpoint with torchao, and predict its size.

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

import os
import shutil
import tempfile
from pathlib import Path

import torch

from quantsense.errors import QuantsenseError
from quantsense.models.units import UnitMap
from quantsense.quantization.formats import QuantConfig
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import model_bytes

PLAN_FILE = "quantsense_plan.json"


def torchao_config(config: QuantConfig, unit: str = "a unit"):
    if not isinstance(config, QuantConfig):
        raise QuantsenseError(f"{unit} is planned as {config.name}, a GGUF format: export it with --format gguf")
    try:
        from torchao.quantization import IntxWeightOnlyConfig, MappingType
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError:
        raise QuantsenseError("export needs torchao: pip install -c constraints.txt -e '.[export]'") from None
    if config.granularity == "per_tensor":
        raise QuantsenseError("torchao's IntxWeightOnlyConfig has no per-tensor granularity; plan with per_channel or per_group")
    granularity = PerAxis(0) if config.granularity == "per_channel" else PerGroup(config.group_size)
    mapping = MappingType.SYMMETRIC if config.symmetric else MappingType.ASYMMETRIC
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{config.bits}"), granularity=granularity, mapping_type=mapping)


def check_exportable(unit_map: UnitMap, plan: Plan) -> None:
    for name in plan.units():
        unit = unit_map.get(name)
        if unit.kind == "embedding":
            raise QuantsenseError(f"unit {name} is an embedding; export quantizes linear weights only, remove it from the plan")
        if unit.transposed:
            raise QuantsenseError(f"unit {name} is a GPT-2 Conv1D ([in, out] weight); torchao's IntxWeightOnlyConfig "
                                  "quantizes nn.Linear only, so it cannot be exported")


def _torchao_unit_bits(unit, config: QuantConfig) -> int:
    rows = unit.shape[0]
    groups = rows if config.granularity == "per_channel" else unit.numel // config.group_size
    return 8 * (unit.numel + groups * (4 + 1))


def export_bytes(model: torch.nn.Module, unit_map: UnitMap, plan: Plan) -> int:
    """Bytes of every parameter in torchao's unpacked layout: int8 codes, fp32 scale + int8 zero point per group."""
    return model_bytes(model, unit_map, plan, unit_bits=_torchao_unit_bits)


def export_plan(source: str, kind: str, unit_map: UnitMap, plan: Plan, out: str | Path,
                fp32_model=None, tokenizer=None) -> Path:
    """Write the quantized checkpoint, tokenizer and plan to ``out`` (which must not exist or be empty).

    A GGUF source is first written as an ordinary fp32 checkpoint from ``fp32_model`` and
    ``tokenizer`` (the de-quantized weights quantsense measured), then quantized from there.
    """
    import transformers

    check_exportable(unit_map, plan)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise QuantsenseError(f"export folder {out} already exists and is not empty; choose another --out or remove it")
    fqn_configs = {f"{name}.weight": torchao_config(config, name) for name, config in plan.assignments}
    from torchao.quantization import FqnToConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fp32.") as fp32_dir:
        if str(source).endswith(".gguf"):
            if fp32_model is None or tokenizer is None:
                raise QuantsenseError("exporting a GGUF model needs the loaded fp32 model and tokenizer")
            _save_plain_fp32(fp32_model, fp32_dir)
            tokenizer.save_pretrained(fp32_dir)
            source = fp32_dir
        auto = transformers.AutoModelForSequenceClassification if kind == "classification" else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(source, trust_remote_code=False, dtype=torch.float32,
                                     quantization_config=transformers.TorchAoConfig(FqnToConfig(fqn_configs)))
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        plan.save(staging / PLAN_FILE)
        share(staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def share(directory: Path) -> None:
    """mkdtemp makes folders private; an export is meant to be shared (0755 folder, 0644 files)."""
    directory.chmod(0o755)
    for item in directory.iterdir():
        item.chmod(0o644)


def run_fresh(script, args: list[str], cwd: str | None = None, what: str = "reloading the export") -> dict:
    """Run a standalone checker module (``verify_export``, ``verify_gguf``) in a fresh interpreter, where
    quantsense is not imported, and parse the JSON object on its last output line."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script.__file__, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_verifier(args: list[str], cwd: str | None = None) -> dict:
    """``verify_export.py`` (the torchao checkpoint reloaded by transformers + torchao alone)."""
    from quantsense.quantization import verify_export

    return run_fresh(verify_export, args, cwd)
