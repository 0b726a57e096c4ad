"""Export targets, one writer module each, looked up by name: ``torchao`` (a transformers checkpoint), ``gguf`` (a
llama.cpp file) and ``onnx`` (an ONNX Runtime model). Each takes explicit inputs (:class:`~quantsense.exporters.base.ExportSource`, a plan, an output
path), writes atomically, and keeps its fresh-process check beside it (``torchao_check.py``, ``gguf_check.py``).

The folder is ``exporters`` (not ``export``) because ``quantsense.export`` is the API function that runs a target;
writer modules are ``<target>_writer.py`` because a check script run from this folder must import the real
``torchao`` and ``gguf`` packages, not a sibling file of that name.

A target module provides ``write(source, plan, out, check=None) -> report``, ``check_plan(source, plan)``
(everything checkable before writing) and ``SINGLE_FILE`` (``--out`` is a file, else a folder). Modules are imported on first use (torchao and gguf are optional).
"""

from __future__ import annotations

import importlib

TARGETS = {"torchao": "quantsense.exporters.torchao_writer", "gguf": "quantsense.exporters.gguf_writer",
           "onnx": "quantsense.exporters.onnx_writer"}
EMBEDDING_REFUSAL = ("--embedding adds the embedding to plans being measured; export writes PLAN as it is (a plan "
                     "measured with --embedding names the embedding already): drop --embedding")


def export_target(name: str):
    """The module that writes target ``name``."""
    from quantsense.exporters.base import refuse_unknown_target

    refuse_unknown_target(name, TARGETS)
    return importlib.import_module(TARGETS[name])
