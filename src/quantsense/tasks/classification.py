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
        return f"FP32 accuracy: {base['accuracy']:.2f} % ({base['correct']}/{base['n']})"

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

    def export_check(self, target, source, data: ClassificationData, simulate, batches):
        if target == "onnx":
            return lambda export_dir: self._check_onnx(export_dir, data, simulate(), batches)
        if target != "torchao":
            return super().export_check(target, source, data, simulate, batches)
        return lambda export_dir: self._check_torchao(export_dir, source, data, simulate())

    def _check_onnx(self, export_dir, data: ClassificationData, simulated, batches) -> dict:
        """ONNX Runtime in a fresh process, on the simulation's own batches: accuracy and logits against the simulation."""
        import json
        import tempfile
        from pathlib import Path

        from quantsense.exporters import export_target

        onnx = export_target("onnx")
        with tempfile.TemporaryDirectory() as tmp:
            inputs = Path(tmp) / "inputs.json"
            inputs.write_text(
                json.dumps(
                    {"texts": data.texts, "max_length": self.max_length, "batches": [b.index.tolist() for b in batches]}
                )
            )
            check = onnx.run_check([str(Path(export_dir).resolve()), str(inputs)], cwd=tmp)
        logits = np.asarray(check["logits"], dtype=np.float32)
        exported, alone = logits.argmax(axis=1), np.asarray(check["predictions_alone"])
        rep = {
            **_agreement(exported, simulated.predictions, data.labels),
            "max_logit_difference": float(np.abs(logits - simulated.logits).max()),
            "largest_logit": float(np.abs(simulated.logits).max()),
            "batch1_accuracy": 100 * float((alone == data.labels).mean()),
            "batch1_predictions_differing": int((alone != exported).sum()),
            "operators": check["operators"],
            "onnxruntime": check["onnxruntime"],
            "quantsense_imported_by_reload": check["quantsense_imported"],
            "int8_kernel_saturates": "MatMulInteger" in check["operators"] and onnx.saturation_note() is not None,
        }
        ops = ", ".join(f"{n} {k}" for k, n in rep["operators"].items())
        rep["lines"] = [
            f"run in a fresh process by ONNX Runtime {rep['onnxruntime']} (quantsense imported: "
            f"{rep['quantsense_imported_by_reload']}); graph: {ops}",
            f"accuracy: ONNX Runtime {rep['exported_accuracy']:.2f} %, simulated {rep['simulated_accuracy']:.2f} %, "
            f"{rep['predictions_differing']} of {len(data.labels)} predictions differ; largest logit difference "
            f"{rep['max_logit_difference']:.2e} (logits up to {rep['largest_logit']:.2f})",
            f"one sentence at a time (batch 1): {rep['batch1_accuracy']:.2f} %, {rep['batch1_predictions_differing']} "
            "predictions differ from the batched run"
            + (" (its activation scales see one sentence)" if "DynamicQuantizeLinear" in rep["operators"] else ""),
        ]
        if rep["int8_kernel_saturates"]:
            rep["lines"].append(f"note: {onnx.saturation_note()}")
        return rep

    def _check_torchao(self, export_dir, source, data: ClassificationData, simulated) -> dict:
        """Reload in a fresh process: predictions against the simulation, and latency against FP32."""
        import tempfile
        from pathlib import Path

        from quantsense.exporters import export_target

        torchao = export_target("torchao")
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "data.tsv"
            table.write_text(
                "sentence\tlabel\n"
                + "".join(f"{text}\t{label}\n" for text, label in zip(data.texts, data.labels.tolist()))
            )
            fp32 = str(Path(source).resolve()) if Path(source).exists() else source
            check = torchao.run_check([str(Path(export_dir).resolve()), fp32, str(table)], cwd=tmp)
        exported = np.asarray(check["predictions"])
        rep = {
            **_agreement(exported, simulated.predictions, data.labels),
            "latency_exported_ms": 1000 * check["latency_exported_s"],
            "latency_fp32_ms": 1000 * check["latency_fp32_s"],
            "latency_batch_shape": check["batch_shape"],
            "reloaded_weight_class": check["weight_class"],
            "quantsense_imported_by_reload": check["quantsense_imported"],
        }
        rep["lines"] = [
            torchao.reload_line(check),
            f"accuracy: exported {rep['exported_accuracy']:.2f} %, simulated {rep['simulated_accuracy']:.2f} %, "
            f"{rep['predictions_differing']} predictions differ",
            f"CPU latency per batch {tuple(rep['latency_batch_shape'])}: exported {rep['latency_exported_ms']:.1f} ms, "
            f"FP32 {rep['latency_fp32_ms']:.1f} ms ({rep['latency_exported_ms'] / rep['latency_fp32_ms']:.2f}x)",
        ]
        return rep


def _agreement(exported: np.ndarray, simulated: np.ndarray, labels: np.ndarray) -> dict:
    """An exported model's predictions against the simulation's: both accuracies and how many predictions differ."""
    return {
        "exported_accuracy": 100 * float((exported == labels).mean()),
        "simulated_accuracy": 100 * float((simulated == labels).mean()),
        "predictions_differing": int((exported != simulated).sum()),
    }
