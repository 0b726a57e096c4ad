"""The sweep engine: prefix reuse, plain-data work items, executors, progress and the results store."""

from quantsense.engine.evaluator import Evaluator
from quantsense.engine.executor import LocalExecutor, WorkItem
from quantsense.engine.runner import Engine

__all__ = ["Engine", "Evaluator", "LocalExecutor", "WorkItem"]
