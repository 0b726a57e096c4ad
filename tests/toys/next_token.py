"""A test-only task, added as one module: next-token top-1 accuracy of a causal language model on a text file, in
windows of ``context`` tokens (reusing the language-model task's window cutting), with a paired bootstrap interval
of the accuracy drop and the per-token KL. It plugs into the task registry with ``register_task(NextTokenAccuracy)``."""

from __future__ import annotations

import numpy as np
import torch

from quantsense.data.text import TextData, load_text
from quantsense.evaluation.heads import CausalLMHead
from quantsense.evaluation.statistics import bootstrap_mean_ci, paired_bootstrap_ci
from quantsense.models.head import ModelHead
from quantsense.tasks.base import LossSpec, MetricSpec, Setting, Task
from quantsense.tasks.language_model import make_windows


class NextTokenHead(CausalLMHead):
    """The language-model head's outputs plus, per scored token, whether the most likely next token is the true one."""

    def start(self, batches, reference):
        super().start(batches, reference)
        self.correct = np.zeros(batches.num_examples, dtype=bool)

    def step(self, b, batch, logits):
        super().step(b, batch, logits)
        length = batch.inputs["input_ids"].shape[1]
        start = batch.index[-1] + 1 - length
        rows = torch.as_tensor(batch.index - start - 1 - (length - logits.shape[1]))
        targets = batch.inputs["input_ids"][0, torch.as_tensor(batch.index - start)]
        self.correct[batch.index] = (logits[0][rows].argmax(dim=-1).cpu() == targets).numpy()

    def finish(self):
        out = super().finish()
        out["correct"] = self.correct[~np.isnan(self.token_logprob)]
        return out

    def unchanged(self, reference):
        result = super().unchanged(reference)
        result.arrays["correct"] = reference.arrays["correct"]
        return result


class NextTokenAccuracy(Task):
    name = "next-token"
    summary = "next-token top-1 accuracy (a test task)"
    model_head = ModelHead("AutoModelForCausalLM", "language-model head", from_gguf=True)
    settings_spec = (Setting("max_tokens", 256, "first N tokens of the text"), Setting("context", 64, "window length"))
    metric = MetricSpec("next_token_accuracy", "next-token accuracy %", higher_is_better=True)
    loss = LossSpec("accuracy_drop", "next-token accuracy drop (points)")
    differs_test = "bootstrap 95% CI of the accuracy drop excludes 0"
    data_help = "next-token: a plain-text file"
    default_formats = ("int8", "int4")
    default_candidates = ("int4", "int8")
    default_ablation_format = "int4"
    sensitivity_columns = [
        ("unit", "unit"),
        ("format", "format"),
        ("next_token_accuracy", "acc %"),
        ("accuracy_drop", "drop pts"),
        ("kl_mean", "KL mean"),
    ]
    ranking_columns = [("rank", "rank"), ("unit", "unit"), ("kl_mean", "KL mean"), ("tier", "tier")]
    plan_columns = [
        ("plan", "plan"),
        ("next_token_accuracy", "acc %"),
        ("accuracy_drop", "drop pts"),
        ("avg_bits", "avg bits/weight"),
    ]
    report_columns = [
        ("accuracy %", "next-token accuracy", "next_token_accuracy"),
        ("drop (pts)", "FP32 minus quantized next-token accuracy", "accuracy_drop"),
        ("drop 95% CI", "paired bootstrap 95% CI", "loss_ci"),
    ]
    glossary_terms = [("next-token accuracy", "share of scored tokens whose most likely prediction is the true token.")]

    def __init__(self, max_tokens: int = 256, context: int = 64):
        self.max_tokens, self.context = max_tokens, context

    def load(self, source, tokenizer, id2label):
        data = load_text(source)
        ids = tokenizer(data.text, add_special_tokens=False)["input_ids"]
        return data, make_windows(ids, self.max_tokens, self.context, self.context)

    def length_setting(self):
        return "--context", self.context

    def describe_data(self, data: TextData, batches) -> dict:
        return {
            "source": data.source,
            "tokens": batches.settings["tokens"],
            "description": f"first {batches.settings['tokens']} tokens in windows of {self.context}",
        }

    def head(self):
        return NextTokenHead()

    def baseline(self, reference, data) -> dict:
        correct = reference.arrays["correct"]
        return {"next_token_accuracy": 100 * float(correct.mean()), "tokens": int(len(correct))}

    def compare(self, reference, quantized, data, seed: int = 0) -> dict:
        diff = reference.arrays["correct"].astype(np.float64) - quantized.arrays["correct"].astype(np.float64)
        lo, hi = paired_bootstrap_ci(diff, seed=seed)
        kl = quantized.arrays["kl"].astype(np.float64)
        kl_lo, kl_hi = bootstrap_mean_ci(kl, seed=seed)
        return {
            "next_token_accuracy": 100 * float(quantized.arrays["correct"].mean()),
            "accuracy_drop": 100 * float(diff.mean()),
            "accuracy_drop_ci_low": 100 * lo,
            "accuracy_drop_ci_high": 100 * hi,
            "distinguishable_from_fp32": not (lo <= 0.0 <= hi),
            "kl_mean": float(kl.mean()),
            "kl_ci_low": kl_lo,
            "kl_ci_high": kl_hi,
            "kl_p95": float(np.percentile(kl, 95)),
        }

    def arrays_valid(self, arrays, batches) -> bool:
        scored = sum(len(b.index) for b in batches)
        return all(k in arrays and arrays[k].shape == (scored,) for k in ("token_logprob", "correct"))

    @classmethod
    def baseline_text(cls, base: dict) -> str:
        return f"FP32 next-token accuracy: {base['next_token_accuracy']:.2f} % on {base['tokens']} tokens"

    @classmethod
    def effect_text(cls, row: dict) -> str:
        return f"next-token accuracy {row['next_token_accuracy']:.2f} %, drop {row['accuracy_drop']:.2f} points"
