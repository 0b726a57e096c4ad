"""Calibration on a workspace: the importance matrix (``quantsense imatrix``), collected on the workspace's own data
(``--data``, ``--first-token``, ``--max-tokens``) and model. A workspace opened with ``--imatrix`` refuses to score
the tokens it was collected on (:func:`quantsense.workspace.check_held_out`)."""

from __future__ import annotations

from pathlib import Path

from quantsense.backends.llama_cpp.imatrix_file import save
from quantsense.backends.llama_cpp.imatrix import Imatrix, collect, product_modules
from quantsense.backends.llama_cpp.gguf_file import gguf_tensor_names
from quantsense.workspace import Workspace


def make_imatrix(ws: Workspace, out: str | Path) -> tuple[Imatrix, Path]:
    """Collect llama.cpp's importance matrix for every block linear on ``ws``'s data and write it to ``out`` (GGUF)."""
    modules = product_modules(ws.model, ws.units)  # the block linears and the output head (under the tensor it shares)
    names = gguf_tensor_names(ws.model, ws.units, names=list(modules))  # refuses a model llama.cpp has no names for
    inputs = [batch for _, batch in ws.evaluator.device_batches()]
    span = ws.task.token_range(ws.batches)
    calibration = {"data": ws.data.fingerprint(), "first_token": span[0], "tokens": span[1]} if span else {}
    chunk = max(int(b["input_ids"].shape[-1]) for b in inputs)
    imatrix = collect(
        ws.model, modules, inputs, datasets=(Path(ws.data.source).name,), chunk_size=chunk, calibration=calibration
    )
    return imatrix, save(imatrix, out, names)


def imatrix_text(imatrix: Imatrix, path: Path) -> str:
    cal = imatrix.calibration
    where = f" (tokens {cal['first_token']}..{cal['first_token'] + cal['tokens']})" if cal else ""
    return (
        f"Wrote {path}: importance matrix of {len(imatrix.sums)} weight tensors from "
        f"{max(imatrix.counts.values()):,} tokens of {', '.join(imatrix.datasets)}{where}, fingerprint "
        f"{imatrix.fingerprint}. Use it with --imatrix {path} (scoring tokens outside that range, e.g. "
        f"--first-token {cal['first_token'] + cal['tokens'] if cal else 0}), or llama-quantize --imatrix {path}."
    )
