"""How a ``torchao`` export is checked on a task's data (registered per task): the checkpoint reloaded by transformers
in a fresh process (:mod:`.torchao_check`), against the simulation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from quantsense.backends.torchao.writer import reload_line, run_check
from quantsense.errors import QuantsenseError
from quantsense.exporters.base import register_task_check
from quantsense.tasks.classification import agreement
from quantsense.tasks.language_model import perplexity


@register_task_check("torchao", "sst2")
def classification_check(task, source, data, simulate, batches):
    """Predictions against the simulation's, and CPU latency against FP32."""
    return lambda export_dir: _classification(export_dir, source, data, simulate())


@register_task_check("torchao", "wikitext")
def language_model_check(task, source, data, simulate, batches):
    """Per-token log-probs against the simulation's, on the task's own windows of a local text file."""
    if not Path(data.source).is_file():
        raise QuantsenseError("verifying a language-model export needs a local --data text file")
    return lambda export_dir: _language_model(task, export_dir, data, simulate())


def _classification(export_dir, source, data, simulated) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "data.tsv"
        table.write_text(
            "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in zip(data.texts, data.labels.tolist()))
        )
        fp32 = str(Path(source).resolve()) if Path(source).exists() else source
        check = run_check([str(Path(export_dir).resolve()), fp32, str(table)], cwd=tmp)
    exported = np.asarray(check["predictions"])
    rep = {
        **agreement(exported, simulated.predictions, data.labels),
        "latency_exported_ms": 1000 * check["latency_exported_s"],
        "latency_fp32_ms": 1000 * check["latency_fp32_s"],
        "latency_batch_shape": check["batch_shape"],
        "reloaded_weight_class": check["weight_class"],
        "quantsense_imported_by_reload": check["quantsense_imported"],
    }
    rep["lines"] = [
        reload_line(check),
        f"accuracy: exported {rep['exported_accuracy']:.2f} %, simulated {rep['simulated_accuracy']:.2f} %, "
        f"{rep['predictions_differing']} predictions differ",
        f"CPU latency per batch {tuple(rep['latency_batch_shape'])}: exported {rep['latency_exported_ms']:.1f} ms, "
        f"FP32 {rep['latency_fp32_ms']:.1f} ms ({rep['latency_exported_ms'] / rep['latency_fp32_ms']:.2f}x)",
    ]
    return rep


def _language_model(task, export_dir, data, simulated) -> dict:
    check = run_check(
        [
            "--causal",
            str(Path(export_dir).resolve()),
            str(Path(data.source).resolve()),
            str(task.max_tokens),
            str(task.context),
            str(task.stride),
            str(task.first_token),
        ]
    )
    exported = np.asarray(check["token_logprob"], dtype=np.float64)
    sim = simulated.arrays["token_logprob"].astype(np.float64)
    rep = {
        "exported_perplexity": perplexity(exported),
        "simulated_perplexity": perplexity(sim),
        "max_token_logprob_difference": float(np.abs(exported - sim).max()),
        "reloaded_weight_class": check["weight_class"],
        "quantsense_imported_by_reload": check["quantsense_imported"],
    }
    rep["lines"] = [
        reload_line(check),
        f"perplexity: exported {rep['exported_perplexity']:.4f}, simulated {rep['simulated_perplexity']:.4f}; "
        f"largest per-token log-prob difference {rep['max_token_logprob_difference']:.2e}",
    ]
    return rep
