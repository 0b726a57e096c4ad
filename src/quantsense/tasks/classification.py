"""Sentence classification (task ``sst2``): accuracy, paired drop with a bootstrap CI, exact McNemar,
KL of the class distribution. GLUE SST-2 validation by default; any local file with a text column and labels."""

from __future__ import annotations

import numpy as np

from quantsense.data.classification import ClassificationData, load_classification_data
from quantsense.errors import QuantsenseError
from quantsense.models.head import ModelHead
from quantsense.tasks.base import LossSpec, MetricSpec, Setting, Task, register_task

_PAIRED = [("drop_ci_low", "CI low"), ("drop_ci_high", "CI high"), ("mcnemar_p", "McNemar p")]


@register_task
class SentenceClassification(Task):
    name = "sst2"
    summary = "sentence classification accuracy"
    model_head = ModelHead("AutoModelForSequenceClassification", "classification head")
    settings_spec = (
        Setting("limit", None, "use only the first N examples (quick runs)"),
        Setting("max_length", 512, "truncate inputs to this many tokens"),
        Setting(
            "batch_tokens",
            1024,
            "padded tokens per length-sorted batch (1024 keeps activations in cache on small CPUs)",
        ),
    )
    metric = MetricSpec("accuracy", "accuracy %", higher_is_better=True)
    loss = LossSpec("drop", "accuracy drop (points)")
    differs_test = "exact McNemar p < 0.05"
    data_help = (
        "sst2: a local .tsv/.csv/.jsonl/.parquet with 'sentence' (or 'text') and 'label'; "
        "default: GLUE SST-2 validation via the datasets package"
    )
    default_formats = ("int8", "int4")
    default_candidates = ("int2", "int3", "int4", "int5", "int6", "int8")
    default_ablation_format = "int4"
    sensitivity_columns = [
        ("unit", "unit"),
        ("format", "format"),
        ("view", "view"),
        ("accuracy", "acc %"),
        ("drop", "drop pts"),
        *_PAIRED,
        ("fixed", "fixed"),
        ("broken", "broken"),
        ("flip_rate", "flip %"),
        ("kl_mean", "KL mean"),
        ("kl_p95", "KL p95"),
        ("logit_sqnr_db", "logit SQNR dB"),
        ("weight_sqnr_db", "weight SQNR dB"),
    ]
    ranking_columns = [
        ("rank", "rank"),
        ("unit", "unit"),
        ("kl_mean", "KL mean"),
        ("kl_ci_low", "KL CI low"),
        ("kl_ci_high", "KL CI high"),
        ("drop", "drop pts"),
        ("mcnemar_p", "McNemar p"),
        ("tier", "tier"),
        ("distinguishable_from_fp32", "differs from FP32"),
    ]
    plan_columns = [
        ("plan", "plan"),
        ("accuracy", "acc %"),
        ("drop", "drop pts"),
        *_PAIRED,
        ("flip_rate", "flip %"),
        ("kl_mean", "KL mean"),
        ("avg_bits", "avg bits/weight"),
        ("model_mb", "model MB"),
        ("compression", "x smaller"),
    ]

    report_columns = [
        ("accuracy %", "accuracy of the quantized model", "accuracy"),
        ("drop (pts)", "FP32 accuracy minus quantized accuracy", "drop"),
        ("drop 95% CI", "paired 95% CI of the drop", "loss_ci"),
        ("McNemar p", "exact McNemar test on the flipped examples", "mcnemar_p"),
        ("fixed", "examples wrong in FP32, right quantized", "fixed"),
        ("broken", "examples right in FP32, wrong quantized", "broken"),
        ("flip rate %", "share of examples whose prediction changed", "flip_rate"),
    ]
    glossary_terms = [
        (
            "accuracy drop",
            "FP32 accuracy minus the quantized model's, in percentage points "
            "(negative: quantization helped on this set).",
        ),
        (
            "McNemar p",
            "exact McNemar test on the examples whose prediction flipped (fixed vs broken); "
            "p < 0.05 means the accuracy difference is unlikely to be noise.",
        ),
        ("fixed / broken", "examples wrong in FP32 and right quantized / right in FP32 and wrong quantized."),
        ("flip rate", "share of examples whose predicted label changed."),
    ]

    def __init__(self, limit: int | None = None, max_length: int = 512, batch_tokens: int = 1024):
        if limit is not None and limit < 1:
            raise QuantsenseError(f"--limit must be a positive number of examples, got {limit}")
        self.limit = limit
        self.max_length = max_length
        self.batch_tokens = batch_tokens

    def _batches(self, tokenizer, texts: list[str]):
        from quantsense.evaluation.batching import make_batches, tokenize_texts

        encoded = tokenize_texts(tokenizer, texts, self.max_length)
        return make_batches(encoded, tokenizer.pad_token_id, max_batch_tokens=self.batch_tokens)

    def load(self, source, tokenizer, id2label):
        data = load_classification_data(source, id2label, self.limit)
        return data, self._batches(tokenizer, data.texts)

    def length_setting(self) -> tuple[str, int]:
        return "--max-length", self.max_length

    def describe_data(self, data: ClassificationData, batches) -> dict:
        return {
            "source": data.source,
            "examples": len(data),
            "limit": self.limit,
            "description": f"{len(data)} examples",
        }

    def head(self):
        from quantsense.evaluation.heads import ClassificationHead

        return ClassificationHead()

    def baseline(self, reference, data: ClassificationData) -> dict:
        correct = int((reference.predictions == data.labels).sum())
        return {"accuracy": 100 * correct / len(data.labels), "correct": correct, "n": len(data.labels)}

    def compare(self, reference, quantized, data: ClassificationData, seed: int = 0) -> dict:
        from quantsense.evaluation.metrics import compare_classification

        return compare_classification(reference, quantized, data.labels, seed=seed)

    def arrays_valid(self, arrays, batches) -> bool:
        logits = arrays.get("logits")
        return logits is not None and logits.ndim == 2 and logits.shape[0] == sum(len(b.index) for b in batches)

    def subset(self, data: ClassificationData, positions) -> ClassificationData:
        return ClassificationData([data.texts[i] for i in positions], data.labels[positions], data.source)

    @classmethod
    def baseline_text(cls, base: dict) -> str:
        return f"{base.get('reference', 'FP32')} accuracy: {base['accuracy']:.2f} % ({base['correct']}/{base['n']})"

    @classmethod
    def effect_text(cls, row: dict) -> str:
        return (
            f"{row['accuracy']:.2f} % ({row['correct']}/{row['n']}), drop {row['drop']:.2f} points "
            f"[95% CI {row['drop_ci_low']:.2f}, {row['drop_ci_high']:.2f}], McNemar p = {row['mcnemar_p']:.3g}"
        )

    def calibration_batches(self, path, size, tokenizer, id2label, exclude, seed):
        """A seeded sample of ``size`` labelled examples from ``path``, none of them in ``exclude``."""
        if not path:
            raise QuantsenseError(
                "proxies need calibration examples: pass --calibration-data FILE (e.g. SST-2 train.tsv)"
            )
        pool = load_classification_data(path, id2label, flag="--calibration-data")
        held_out = set(exclude.texts)
        order = np.random.default_rng(seed).permutation(len(pool))
        chosen = [i for i in order.tolist() if pool.texts[i] not in held_out][:size]
        if len(chosen) < size:
            raise QuantsenseError(
                f"calibration file {path} has only {len(chosen)} examples not in the evaluation set; need "
                f"{size}: pass a file with more examples outside the evaluation data (e.g. SST-2 train.tsv) "
                "or lower --calibration-size"
            )
        calib = ClassificationData([pool.texts[i] for i in chosen], pool.labels[chosen], f"{path} (sample of {size})")
        return calib, self._batches(tokenizer, calib.texts)


def agreement(exported: np.ndarray, simulated: np.ndarray, labels: np.ndarray) -> dict:
    """An exported model's predictions against the simulation's: both accuracies and how many predictions differ."""
    return {
        "exported_accuracy": 100 * float((exported == labels).mean()),
        "simulated_accuracy": 100 * float((simulated == labels).mean()),
        "predictions_differing": int((exported != simulated).sum()),
    }
