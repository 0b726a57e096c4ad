"""Causal language-model evaluation: sliding-window perplexity with per-token outputs kept.

Token selection is reproducible: the text is tokenized whole and the first ``max_tokens`` tokens
are used. Windows of ``context`` tokens start every ``stride`` tokens; each window scores only the
tokens no earlier window scored (the usual sliding-window perplexity), so every token after the
first is predicted exactly once, with up to ``context - stride`` tokens of extra context.

What each evaluation keeps per token is in :mod:`quantsense.evaluation.heads`; the paired metrics
against FP32 are :func:`compare_causal`.
"""

from __future__ import annotations

import numpy as np
import torch

from quantsense.evaluation.batching import Batch, TokenBatches


def make_windows(token_ids: list[int], max_tokens: int, context: int, stride: int) -> TokenBatches:
    """One batch per window; ``Batch.index`` holds the positions (in the token stream) it scores."""
    if stride > context:
        raise ValueError(f"stride {stride} must not exceed context {context}")
    ids = token_ids[:max_tokens]
    batches = []
    scored_until = 1  # token 0 has no prediction
    begin = 0
    while scored_until < len(ids):
        end = min(begin + context, len(ids))
        window = torch.tensor([ids[begin:end]], dtype=torch.long)
        positions = np.arange(scored_until, end)  # token positions scored by this window
        batches.append(Batch(index=positions, inputs={"input_ids": window}))
        scored_until = end
        if end == len(ids):
            break
        begin += stride
    settings = {"max_tokens": max_tokens, "context": context, "stride": stride, "tokens": len(ids)}
    return TokenBatches(batches=batches, num_examples=len(ids), settings=settings)


def perplexity(result) -> float:
    return float(np.exp(-np.mean(result.arrays["token_logprob"].astype(np.float64))))


def compare_causal(reference, quantized, seed: int = 0, resamples: int = 2000) -> dict:
    """Paired per-token metrics of ``quantized`` against ``reference`` on the same tokens.

    ``delta_nll`` is the mean increase of the per-token negative log-likelihood (ln of the
    perplexity ratio) with a bootstrap CI over tokens; a configuration differs from FP32 when that
    interval excludes zero. Tokens of one window are correlated, so these intervals are somewhat
    optimistic.
    """
    from quantsense.sensitivity.statistics import bootstrap_mean_ci

    ref_lp = reference.arrays["token_logprob"].astype(np.float64)
    q_lp = quantized.arrays["token_logprob"].astype(np.float64)
    delta = ref_lp - q_lp
    lo, hi = bootstrap_mean_ci(delta, seed=seed, resamples=resamples)
    kl = quantized.arrays["kl"].astype(np.float64)
    kl_lo, kl_hi = bootstrap_mean_ci(kl, seed=seed, resamples=resamples)
    ppl_ref, ppl = float(np.exp(-ref_lp.mean())), float(np.exp(-q_lp.mean()))
    return {
        "perplexity": ppl,
        "ppl_ratio": ppl / ppl_ref,
        "tokens": int(len(q_lp)),
        "delta_nll": float(delta.mean()),
        "delta_nll_ci_low": lo,
        "delta_nll_ci_high": hi,
        "distinguishable_from_fp32": not (lo <= 0.0 <= hi),
        "kl_mean": float(kl.mean()),
        "kl_ci_low": kl_lo,
        "kl_ci_high": kl_hi,
        "kl_p95": float(np.percentile(kl, 95)),
        "top1_agreement": 100 * float(quantized.arrays["top1"].mean()),
    }
