"""Tasks looked up by name: ``sst2`` (sentence classification) and ``wikitext`` (causal-LM perplexity).

Importing this package registers both; :func:`make_task` builds one with its settings.
"""

from quantsense.tasks import classification, language_model  # noqa: F401  (registration)
from quantsense.tasks.base import TASKS, LossSpec, MetricSpec, Task, make_task, register_task

__all__ = ["TASKS", "LossSpec", "MetricSpec", "Task", "make_task", "register_task"]
