"""Export targets, looked up by name: each runtime's package under :mod:`quantsense.backends` registers its own
(``torchao``: a transformers checkpoint, ``gguf``: a llama.cpp file, ``onnx``: an ONNX Runtime model) as an
:class:`~quantsense.exporters.base.Exporter` class with ``@register_exporter``, as formats and tasks register.

An exporter takes explicit inputs (:class:`~quantsense.exporters.base.ExportSource`, a plan, an output path), writes
atomically, and keeps its fresh-process check beside it in its backend folder (``torchao_check.py``,
``gguf_check.py``, ``onnx_check.py``).

The folder is ``exporters`` (not ``export``) because ``quantsense.export`` is the API function that runs a target.
"""

from __future__ import annotations

EMBEDDING_REFUSAL = (
    "--embedding adds the embedding to plans being measured; export writes PLAN as it is (a plan "
    "measured with --embedding names the embedding already): drop --embedding"
)


def _registered() -> dict:
    """Every registered exporter class by target name, every backend loaded first."""
    from quantsense.exporters.base import EXPORTERS
    from quantsense.quantization.formats.base import load_backends

    load_backends()
    return EXPORTERS


def export_target(name: str):
    """The registered exporter for target ``name`` (refused, naming the targets, when there is none)."""
    from quantsense.exporters.base import refuse_unknown_target

    exporters = _registered()
    refuse_unknown_target(name, exporters)
    return exporters[name]()


def export_targets() -> tuple[str, ...]:
    """The names of every registered export target, in registration order."""
    return tuple(_registered())


def task_check(target: str, task: str):
    """The registered check of a ``target`` export on task ``task``'s data, or None (see ``register_task_check``)."""
    from quantsense.exporters.base import TASK_CHECKS

    _registered()
    return TASK_CHECKS.get((target, task))
