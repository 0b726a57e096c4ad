"""How an ``onnx`` export is checked on a task's data (registered per task): ONNX Runtime in a fresh process."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from quantsense.backends.onnxruntime.ort_lib import SATURATION_NOTE, int8_kernel_saturates
from quantsense.backends.onnxruntime.writer import run_check
from quantsense.exporters.base import register_task_check
from quantsense.tasks.classification import agreement


@register_task_check("onnx", "sst2")
def classification_check(task, source, data, simulate, batches):
    """Accuracy and logits of ONNX Runtime, on the simulation's own batches, against the simulation."""
    return lambda export_dir: _check(task, export_dir, data, simulate(), batches)


def _check(task, export_dir, data, simulated, batches) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.json"
        inputs.write_text(
            json.dumps(
                {"texts": data.texts, "max_length": task.max_length, "batches": [b.index.tolist() for b in batches]}
            )
        )
        check = run_check([str(Path(export_dir).resolve()), str(inputs)], cwd=tmp)
    logits = np.asarray(check["logits"], dtype=np.float32)
    exported, alone = logits.argmax(axis=1), np.asarray(check["predictions_alone"])
    note = SATURATION_NOTE if int8_kernel_saturates() else None
    rep = {
        **agreement(exported, simulated.predictions, data.labels),
        "max_logit_difference": float(np.abs(logits - simulated.logits).max()),
        "largest_logit": float(np.abs(simulated.logits).max()),
        "batch1_accuracy": 100 * float((alone == data.labels).mean()),
        "batch1_predictions_differing": int((alone != exported).sum()),
        "operators": check["operators"],
        "onnxruntime": check["onnxruntime"],
        "quantsense_imported_by_reload": check["quantsense_imported"],
        "int8_kernel_saturates": "MatMulInteger" in check["operators"] and note is not None,
    }
    ops = ", ".join(f"{n} {k}" for k, n in rep["operators"].items())
    rep["lines"] = [
        f"run in a fresh process by ONNX Runtime {rep['onnxruntime']} (quantsense imported: "
        f"{rep['quantsense_imported_by_reload']}); graph: {ops}",
        f"accuracy: ONNX Runtime {rep['exported_accuracy']:.2f} %, simulated {rep['simulated_accuracy']:.2f} %, "
        f"{rep['predictions_differing']} of {len(data.labels)} predictions differ; largest logit difference "
        f"{rep['max_logit_difference']:.2e} (logits up to {rep['largest_logit']:.2f})",
        f"one sentence at a time (batch 1): {rep['batch1_accuracy']:.2f} %, {rep['batch1_predictions_differing']} "
        "predictions differ from the batched run"
        + (" (its activation scales see one sentence)" if "DynamicQuantizeLinear" in rep["operators"] else ""),
    ]
    if rep["int8_kernel_saturates"]:
        rep["lines"].append(f"note: {note}")
    return rep
