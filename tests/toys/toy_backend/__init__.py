"""A test-only runtime, added as one folder: the ``toyrt`` backend. It brings what a real backend brings, through the
same registries: a format family (``tr4``, 4-bit codes per row with one float32 scale per row), an export target
(``toyrt``: the planned weights' codes and scales in one ``.npz`` file) and that target's own check (the file read back
by a standalone script in a fresh interpreter, against the weights the simulation used). Importing it registers it;
nothing in quantsense names it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantsense.errors import QuantsenseError
from quantsense.exporters.base import Exporter, check_plan_formats, register_exporter, run_fresh
from quantsense.io import atomic_output
from quantsense.quantization.formats import WeightFormat, register_format

LEVELS = 7  # symmetric 4-bit codes -7..7


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and one float32 scale per row (the file's contents)."""
    scale = (np.abs(weight).max(axis=1, keepdims=True) / LEVELS).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    return np.clip(np.round(weight / safe), -LEVELS, LEVELS).astype(np.int8), scale


@register_format
@dataclass(frozen=True)
class ToyRowFormat(WeightFormat):
    family = "toyrt"
    vocabulary = "tr4 (the toy runtime's format)"
    export_targets = ("toyrt",)
    rows_independent = True

    @classmethod
    def parse(cls, text: str, scheme=None) -> "ToyRowFormat | None":
        return cls() if text == "tr4" else None

    @property
    def name(self) -> str:
        return "tr4"

    @property
    def nominal_bits(self) -> float:
        return 4.0

    @property
    def code_bits(self) -> int:
        return 4

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return "tr4", "toy runtime: 4-bit codes per row with one float32 scale."

    def check_shape(self, shape, transposed=False, where="weight") -> None:
        if len(shape) != 2:
            raise QuantsenseError(f"tr4 stores 2-D weights; {where} has shape {tuple(shape)}")

    def storage_bits(self, shape, transposed=False) -> int:
        rows = shape[1] if transposed else shape[0]
        return 4 * int(torch.Size(shape).numel()) + 32 * rows

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        rows = (weight.t() if transposed else weight).detach().float().cpu().numpy()
        codes, scale = quantize_rows(rows)
        out = torch.from_numpy(codes.astype(np.float32) * scale)
        return (out.t() if transposed else out).to(device=weight.device, dtype=weight.dtype)


def _rows(source, name: str) -> np.ndarray:
    unit = source.units.get(name)
    weight = unit.module.weight.detach().float().cpu()
    return (weight.t() if unit.transposed else weight).numpy()


@register_exporter
class ToyExporter(Exporter):
    name = "toyrt"
    single_file = True

    def check_plan(self, source, plan) -> None:
        check_plan_formats(plan, self.name)

    def write(self, source, plan, out, check=None) -> dict:
        self.check_plan(source, plan)
        arrays = {}
        for name, _ in plan.assignments:
            arrays[f"{name}.codes"], arrays[f"{name}.scale"] = quantize_rows(_rows(source, name))
        with atomic_output(Path(out)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        report = {
            "out": str(out),
            "format": self.name,
            "disk_bytes": Path(out).stat().st_size,
            "lines": [f"{Path(out).name}: {len(plan.assignments)} tensors"],
        }
        if check is not None:
            checked = check(Path(out))
            report["lines"] += checked.pop("lines", [])
            report.update(checked)
        return report

    def own_check(self, source, plan):
        """The file de-quantized by ``toy_check.py`` in a fresh interpreter, against each planned weight as the
        simulation quantized it."""
        from tests.toys.toy_backend import toy_check

        def check(path: Path) -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "weights.npz"
                found = run_fresh(toy_check, [str(path), str(out)], what="the toyrt check")
                read = dict(np.load(out))
            diff = max(
                float(np.abs(read[name] - fmt.fake_quantize(torch.from_numpy(_rows(source, name))).numpy()).max())
                for name, fmt in plan.assignments
            )
            return {
                "max_weight_difference": diff,
                "tensors_read": found["tensors"],
                "quantsense_imported_by_reload": found["quantsense_imported"],
                "lines": [
                    f"read back in a fresh process ({found['tensors']} tensors, quantsense imported: "
                    f"{found['quantsense_imported']}); largest weight difference {diff:.2e}"
                ],
            }

        return check


def unregister() -> None:
    """Take the toy runtime out of the registries again (tests leave them as they found them)."""
    from quantsense.exporters.base import EXPORTERS
    from quantsense.quantization.formats import FORMAT_FAMILIES

    FORMAT_FAMILIES.pop(ToyRowFormat.family, None)
    EXPORTERS.pop(ToyExporter.name, None)


__all__ = ["ToyExporter", "ToyRowFormat", "quantize_rows", "unregister"]
