"""A GGUF file scored where it ships: llama.cpp (through llama-cpp-python, in a fresh process without quantsense) runs
it and a reference GGUF (F32 or F16) on the same token windows; per scored token the KL of the reference's
next-token distribution to the file's, both log-probs and top-1 agreement. Summarised as the simulation's own metrics
are: mean KL with a block-bootstrap 95 % interval, perplexity of both, top-1 agreement."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from quantsense.evaluation.statistics import block_bootstrap_mean_ci
from quantsense.exporters.base import run_fresh

BOOTSTRAP_BLOCK_TOKENS = 128  # as the simulation's language-model comparison


def score_in_llama_cpp(
    path: str | Path,
    reference: str | Path,
    token_ids: list[int],
    context: int,
    stride: int,
    threads: int = 2,
    seed: int = 0,
) -> dict:
    """``path`` against ``reference`` in llama.cpp on ``token_ids`` (windows of ``context`` every ``stride``)."""
    from quantsense.backends.llama_cpp import gguf_check

    with tempfile.TemporaryDirectory(prefix="quantsense-score-") as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(list(map(int, token_ids))))
        found = run_fresh(
            gguf_check,
            [
                "--runtime",
                "llama.cpp",
                str(path),
                str(ids),
                str(context),
                str(stride),
                "--kl-against",
                str(reference),
                "--threads",
                str(threads),
            ],
            what="the llama.cpp score",
        )
    return summarise(found, seed)


def summarise(found: dict, seed: int = 0) -> dict:
    kl = np.asarray(found["kl"], dtype=np.float64)
    lp, ref = (np.asarray(found[k], dtype=np.float64) for k in ("token_logprob", "reference_logprob"))
    low, high = block_bootstrap_mean_ci(kl, BOOTSTRAP_BLOCK_TOKENS, seed=seed)
    return {
        "kl_mean": float(kl.mean()),
        "kl_ci_low": low,
        "kl_ci_high": high,
        "kl_p99": float(np.percentile(kl, 99)),
        "perplexity": float(np.exp(-lp.mean())),
        "reference_perplexity": float(np.exp(-ref.mean())),
        "top1_agreement": 100 * float(np.mean(found["top1"])),
        "scored_tokens": int(kl.size),
        "quantsense_imported_by_check": found["quantsense_imported"],
    }
