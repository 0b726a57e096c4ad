"""What every export target is (an :class:`Exporter`, registered by name), what it takes (explicit inputs, never the
workspace) and how its fresh-process check runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from quantsense.errors import QuantsenseError


@dataclass
class ExportSource:
    """The measured model as an export target needs it.

    name: what the user passed as the model (hub id, folder, ``.gguf`` file); model/tokenizer: the loaded
    fp32 (or float) model the simulation measured; units: its unit map; dtype: its parameters' dtype;
    head: the task's :class:`~quantsense.models.head.ModelHead` (which Auto class rebuilds it)."""

    name: str
    model: object
    tokenizer: object
    units: object
    dtype: str
    head: object

    @property
    def gguf_file(self) -> Path | None:
        """The model's own GGUF file, or None for a Hugging Face model."""
        path = Path(self.name)
        return path if path.suffix == ".gguf" and path.is_file() else None


class Exporter:
    """An export target, registered with :func:`register_exporter` by its runtime's package.

    ``name``: what ``export --format`` takes; ``single_file``: ``--out`` is a file (else a folder);
    :meth:`check_plan`: everything checkable before writing (refusals before work); :meth:`write`: the file or folder,
    written atomically, and a report (its size, and the fresh-process ``check`` when one is given); :meth:`own_check`:
    a check of the written file that the target runs itself, whatever the task (else the task's check is used)."""

    name: ClassVar[str]
    single_file: ClassVar[bool] = False
    streams: ClassVar[bool] = False  # writes a model whose blocks stay in their files, a tensor at a time

    def check_plan(self, source: ExportSource, plan) -> None:
        raise NotImplementedError

    def write(self, source: ExportSource, plan, out, check=None) -> dict:
        raise NotImplementedError

    def own_check(self, source: ExportSource, plan):
        """A callable the writer calls with the written path, returning figures and ``lines`` (e.g. the file read back
        in a fresh process against the simulated weights), or None: then the task checks the export on its data."""
        return None


EXPORTERS: dict[str, type[Exporter]] = {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Add an export target to the registry (a decorator), under ``cls.name``."""
    EXPORTERS[cls.name] = cls
    return cls


TASK_CHECKS: dict[tuple[str, str], Callable] = {}


def register_task_check(target: str, task: str):
    """A decorator: how an export to ``target`` is checked on task ``task``'s data, registered by the target's backend.

    The function takes ``(task, source, data, simulate, batches)`` (the task object, the model as the user named it, the
    task's evaluation data, a callable that evaluates the plan in simulation, and the evaluation batches), refuses
    what it cannot check before anything is written, and returns the callable the target's ``write`` calls with the
    written path (and, for a single-file target, the source file), which returns figures and ``lines``."""

    def add(fn: Callable) -> Callable:
        TASK_CHECKS[(target, task)] = fn
        return fn

    return add


def check_plan_formats(plan, target: str) -> None:
    """Every planned format's registry entry must list ``target`` among the writers that can store it."""
    for name, fmt in plan.assignments:
        fmt.check_export(target, name)


def run_fresh(script, args: list[str], cwd: str | None = None, what: str = "reloading the export") -> dict:
    """Run a standalone checker module (``torchao_check``, ``gguf_check``) in a fresh interpreter, where
    quantsense is not imported, and parse the JSON object on its last output line."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script.__file__, *args], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_folder(out: Path, fill) -> None:
    """Write folder ``out`` (absent or empty) atomically: ``fill(staging)`` writes into a private folder beside it, which
    then replaces ``out`` in one rename; on any error, or Ctrl-C, nothing is left behind."""
    import os
    import shutil
    import tempfile

    from quantsense.io import check_output

    check_output(out, empty_folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fill(staging)
        share(staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def share(directory: Path) -> None:
    """mkdtemp makes folders private; an export is meant to be shared (0755 folder, 0644 files)."""
    directory.chmod(0o755)
    for item in directory.iterdir():
        item.chmod(0o644)


def refuse_unknown_target(target: str, known) -> None:
    if target not in known:
        raise QuantsenseError(f"unknown export format {target!r}; use one of {', '.join(known)}")
