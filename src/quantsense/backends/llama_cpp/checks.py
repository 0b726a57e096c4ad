"""How a ``gguf`` export is checked on a task's data (registered per task): the file scored by llama.cpp on the
task's own windows, against the simulation's per-token log-probs (:func:`.writer.verify`)."""

from __future__ import annotations

from quantsense.backends.llama_cpp.writer import check_llama_cpp, verify
from quantsense.exporters.base import register_task_check
from quantsense.tasks.language_model import token_ids


@register_task_check("gguf", "wikitext")
def language_model_check(task, source, data, simulate, batches):
    check_llama_cpp()  # a broken install is refused now, not after the file is written

    def check(path, source_file):
        arrays = simulate().arrays
        return verify(
            path,
            source_file,
            token_ids(batches),
            task.context,
            task.stride,
            arrays["token_logprob"],
            simulated_kl=arrays.get("kl"),
        )

    return check
