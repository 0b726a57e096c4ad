"""Export target ``onnx``: a plan as the ONNX model people run with ONNX Runtime on a CPU.

The model is exported to ONNX by ``torch.onnx.export`` (the TorchScript exporter, whose graph ONNX Runtime's
session optimizer fuses well), then each planned unit is quantized by ONNX Runtime's own tools, the rest left in
FP32 (that is the mixed precision):

- ``ort-int8`` / ``ort-int8-tensor``: ``quantize_dynamic`` with ``nodes_to_quantize`` (``MatMulInteger`` after a
  ``DynamicQuantizeLinear``; an embedding's ``Gather`` gets a uint8 table), per output channel or per tensor;
- ``ort-int4`` / ``ort-int4-b32``: ``MatMulNBitsQuantizer`` with ``nodes_to_include`` and every other node in
  ``nodes_to_exclude`` (its ``nodes_to_include`` only adds to the op types it quantizes anyway) (``MatMulNBits``).

A planned unit is found in the graph by its weight: the ``MatMul`` whose constant B is the linear's weight
transposed, or the ``Gather`` whose table is the embedding, so the mapping does not depend on the exporter's names.
The folder holds ``model.onnx``, the tokenizer and the plan.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.exporters.base import (
    Exporter,
    ExportSource,
    check_plan_formats,
    register_exporter,
    run_fresh,
    write_folder,
)
from quantsense.quantization.plan import Plan

MODEL_FILE = "model.onnx"
PLAN_FILE = "quantsense_plan.json"
OPSET = 17
INSTALL = "the ONNX export needs onnx, onnxruntime and onnx-ir: pip install -c constraints.txt -e '.[onnx]'"


def _modules():
    try:
        import onnx
        import onnx_ir  # noqa: F401  (ONNX Runtime's MatMulNBitsQuantizer imports it; onnxruntime does not declare it)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise QuantsenseError(INSTALL) from None
    return onnx


def check_plan(source: ExportSource, plan: Plan) -> None:
    """Everything checkable before writing: onnx and onnxruntime installed, a classifier, ONNX formats on linears
    (and ort-int8 on embeddings)."""
    _modules()
    check_plan_formats(plan, "onnx")
    if source.head.auto_class != "AutoModelForSequenceClassification":
        raise QuantsenseError(
            f"the ONNX export writes sequence classifiers; this model has a {source.head.description} "
            "(export it with --format gguf or torchao)"
        )
    for name, fmt in plan.assignments:
        fmt.check_unit(source.units.get(name))


def export_bytes(source: ExportSource, plan: Plan) -> int:
    """The planned model's parameter bytes: each ONNX Runtime format's own storage, FP32 elsewhere."""
    from quantsense.quantization.size import model_bytes

    return model_bytes(source.model, source.units, plan)


def write(source: ExportSource, plan: Plan, out: str | Path, check=None) -> dict:
    """Write the folder and report its size against the prediction and the FP32 ONNX file; ``check(path)`` (the task's
    fresh-process check) adds its figures."""
    from quantsense.quantization.size import average_bits

    check_plan(source, plan)
    out = Path(out)
    sizes = {}

    def fill(staging: Path) -> None:
        sizes["fp32"] = export_fp32(source, staging / "fp32.onnx")
        quantize(staging / "fp32.onnx", staging / MODEL_FILE, source, plan)
        (staging / "fp32.onnx").unlink()
        source.tokenizer.save_pretrained(staging)
        source.model.config.save_pretrained(staging)  # the labels (id2label) and architecture, for whoever runs it
        plan.save(staging / PLAN_FILE)

    write_folder(out, fill)
    fp32_bytes, disk = sizes["fp32"], (out / MODEL_FILE).stat().st_size
    predicted = export_bytes(source, plan)
    report = {
        "out": str(out),
        "format": "onnx",
        "plan_avg_bits": average_bits(source.units, plan),
        "disk_bytes": disk,
        "predicted_bytes": predicted,
        "fp32_onnx_bytes": fp32_bytes,
        "size_factor": disk / fp32_bytes,
        "lines": [
            f"{MODEL_FILE}: {disk / 1e6:.2f} MB on disk, predicted {predicted / 1e6:.2f} MB of parameters "
            f"({disk / predicted:.3f}x); the FP32 ONNX model is {fp32_bytes / 1e6:.2f} MB: this one is "
            f"{disk / fp32_bytes:.3f} of it"
        ],
    }
    if check is not None:
        checked = check(out)
        report["lines"] += checked.pop("lines", [])
        report.update(checked)
    return report


def export_fp32(source: ExportSource, path: Path) -> int:
    """The FP32 model as ONNX (batch and sequence dynamic); returns the file's bytes."""
    import torch

    model = copy.deepcopy(source.model).to("cpu", torch.float32).eval()
    sample = source.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
    axes = {k: {0: "batch", 1: "sequence"} for k in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(path),
            kwargs={k: sample[k] for k in names},
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path.stat().st_size


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def graph_nodes(model, source: ExportSource, plan: Plan) -> dict[str, str]:
    """Unit name -> the ONNX node that uses its weight (MatMul with B = W^T, or Gather of the table)."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    by_weight: dict[str, list[str]] = {}
    for node in model.graph.node:
        index = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        if index is None or node.input[index] not in initializers:
            continue
        array = numpy_helper.to_array(initializers[node.input[index]])
        if array.ndim == 2:
            key = _digest(array.T if node.op_type == "MatMul" else array)
            by_weight.setdefault(key, []).append(node.name)
    found = {}
    for name in plan.units():
        weight = source.units.get(name).weight.detach().to("cpu").float().numpy()
        nodes = by_weight.get(_digest(weight), [])
        if len(nodes) != 1:
            what = "no node" if not nodes else f"{len(nodes)} nodes ({', '.join(nodes[:3])})"
            raise QuantsenseError(
                f"unit {name}: {what} of the exported ONNX graph uses its weight; it cannot be quantized "
                "alone (remove it from the plan)"
            )
        found[name] = nodes[0]
    return found


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools log at INFO and WARNING for every call; keep the terminal for quantsense."""
    names = ["", "onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def quantize(fp32_path: Path, out_path: Path, source: ExportSource, plan: Plan) -> None:
    """Quantize the planned nodes with ONNX Runtime's tools, one call per flavour, and save ``out_path``."""
    onnx = _modules()
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    nodes = graph_nodes(onnx.load(str(fp32_path)), source, plan)
    flavours: dict[tuple, list[str]] = {}
    for name, fmt in plan.assignments:
        flavours.setdefault((fmt.bits, fmt.block, fmt.per_channel), []).append(nodes[name])
    current = fp32_path
    with _quiet(), tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        for step, ((bits, block, per_channel), names) in enumerate(sorted(flavours.items(), key=lambda i: -i[0][0])):
            target = Path(tmp) / f"step{step}.onnx"
            if bits == 8:
                quantize_dynamic(
                    str(current),
                    str(target),
                    per_channel=per_channel,
                    nodes_to_quantize=names,
                    op_types_to_quantize=["MatMul", "Gather"],
                )
            else:
                graph, planned = onnx.load(str(current)), set(names)  # nodes_to_include adds to the op types:
                others = [n.name for n in graph.graph.node if n.name not in planned]  # exclude every other node
                quantizer = MatMulNBitsQuantizer(
                    graph,
                    block_size=block,
                    is_symmetric=False,
                    nodes_to_include=names,
                    nodes_to_exclude=others,
                    op_types_to_quantize=("MatMul",),
                )
                quantizer.process()
                quantizer.model.save_model_to_file(str(target))
            current = target
        shutil.copyfile(current, out_path)


def run_check(args: list[str], cwd: str | None = None) -> dict:
    """``onnx_check.py`` (the exported model run by ONNX Runtime and transformers' tokenizer alone) in a fresh process."""
    from quantsense.backends.onnxruntime import onnx_check

    return run_fresh(onnx_check, args, cwd)


@register_exporter
class OnnxExporter(Exporter):
    """Export target ``onnx`` (:func:`write`, :func:`check_plan`)."""

    name = "onnx"
    single_file = False  # writes a folder (--out DIR)
    check_plan = staticmethod(check_plan)
    write = staticmethod(write)
