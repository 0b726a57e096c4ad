"""Per-configuration metrics from per-example outputs, always paired against the FP32 reference.

Computed together in one pass from the logits that an evaluation keeps: accuracy, drop with a
paired bootstrap CI, exact McNemar p, fixed/broken counts, flip rate, KL(FP32 || quantized) mean and
95th percentile (with a bootstrap CI of the mean), and logit SQNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantsense.evaluation.statistics import (
    bootstrap_mean_ci,
    mcnemar_exact,
    paired_bootstrap_ci,
)

METRIC_VERSION = 1
ALPHA = 0.05  # a quantized run differs from FP32 when McNemar's p is below this


@dataclass
class EvalResult:
    """What one evaluation keeps, as named arrays (``logits`` [N, C] for classification;
    ``token_logprob``, ``kl``, ``top1`` per scored token for language models)."""

    arrays: dict[str, np.ndarray]

    @property
    def logits(self) -> np.ndarray:
        return self.arrays["logits"]

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def kl_per_example(ref_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p_ref || p_q) per example, in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(q_logits)
    return np.clip((np.exp(lp) * (lp - lq)).sum(axis=1), 0.0, None)


def logit_sqnr_db(ref_logits: np.ndarray, q_logits: np.ndarray) -> float:
    ref = ref_logits.astype(np.float64)
    noise = float(((ref - q_logits.astype(np.float64)) ** 2).sum())
    if noise == 0.0:
        return float("inf")
    return float(10 * np.log10((ref**2).sum() / noise))


def compare_classification(
    reference: EvalResult, quantized: EvalResult, labels: np.ndarray, seed: int = 0, resamples: int = 2000
) -> dict:
    """Every paired metric of ``quantized`` against ``reference``; accuracies and drops in points (%)."""
    ref_correct = (reference.predictions == labels).astype(np.float64)
    q_correct = (quantized.predictions == labels).astype(np.float64)
    diff = ref_correct - q_correct  # +1 broken, -1 fixed
    lo, hi = paired_bootstrap_ci(diff, seed=seed, resamples=resamples)
    broken = int((diff > 0).sum())
    fixed = int((diff < 0).sum())
    kl = kl_per_example(reference.logits, quantized.logits)
    kl_lo, kl_hi = bootstrap_mean_ci(kl, seed=seed, resamples=resamples)
    return {
        "accuracy": 100 * float(q_correct.mean()),
        "correct": int(q_correct.sum()),
        "n": int(len(labels)),
        "drop": 100 * float(diff.mean()),
        "drop_ci_low": 100 * lo,
        "drop_ci_high": 100 * hi,
        "mcnemar_p": (p := mcnemar_exact(fixed, broken)),
        "distinguishable_from_fp32": p < ALPHA,
        "fixed": fixed,
        "broken": broken,
        "flip_rate": 100 * float((reference.predictions != quantized.predictions).mean()),
        "kl_mean": float(kl.mean()),
        "kl_ci_low": kl_lo,
        "kl_ci_high": kl_hi,
        "kl_p95": float(np.percentile(kl, 95)),
        "logit_sqnr_db": logit_sqnr_db(reference.logits, quantized.logits),
    }


def perplexity(token_logprob: np.ndarray) -> float:
    """exp of the mean negative log-likelihood per token."""
    return float(np.exp(-np.mean(np.asarray(token_logprob, dtype=np.float64))))
