"""Tokenize once, sort by length, batch under a token budget with dynamic padding."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    index: np.ndarray  # positions of these examples in the original data order
    inputs: dict[str, torch.Tensor]  # padded model inputs

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) tokens in the batch (all of them when there is no attention mask: a language model's windows)."""
        mask = self.inputs.get("attention_mask")
        return int(mask.sum()) if mask is not None else int(self.inputs["input_ids"].numel())


@dataclass
class TokenBatches:
    batches: list[Batch]
    num_examples: int
    settings: dict

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_tokens(self) -> int:
        return sum(b.num_tokens for b in self.batches)

    def fingerprint(self) -> str:
        """Identifies the exact token ids and batch layout (numerics depend on both)."""
        digest = hashlib.sha256()
        for batch in self.batches:
            digest.update(batch.index.tobytes())
            for key in sorted(batch.inputs):
                digest.update(key.encode())
                digest.update(batch.inputs[key].numpy().tobytes())
        return digest.hexdigest()[:16]


def tokenize_texts(tokenizer, texts: list[str], max_length: int = 512) -> list[dict[str, list[int]]]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]


def _pad(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long)
    return out


def make_batches(
    encoded: list[dict[str, list[int]]],
    pad_id: int,
    max_batch_tokens: int = 8192,
    max_batch_size: int = 256,
    sort_by_length: bool = True,
    batch_size: int | None = None,
) -> TokenBatches:
    """Group examples into padded batches.

    Sorted (default): longest first, each batch as large as fits ``max_batch_tokens`` padded
    tokens, so padding is nearly nil. ``sort_by_length=False, batch_size=N``: fixed-size batches in
    file order (the plain way, kept for comparison).
    """
    lengths = np.array([len(e["input_ids"]) for e in encoded])
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(encoded))
    groups: list[list[int]] = []
    current: list[int] = []
    for idx in order.tolist():
        if batch_size is not None:
            full = len(current) >= batch_size
        else:
            width = max(lengths[current[0]] if current else 0, lengths[idx])
            full = bool(current) and ((len(current) + 1) * width > max_batch_tokens or len(current) >= max_batch_size)
        if full:
            groups.append(current)
            current = []
        current.append(idx)
    if current:
        groups.append(current)
    batches = [Batch(index=np.array(g), inputs=_pad([encoded[i] for i in g], pad_id)) for g in groups]
    settings = {
        "max_batch_tokens": max_batch_tokens,
        "max_batch_size": max_batch_size,
        "sorted": sort_by_length,
        "batch_size": batch_size,
    }
    return TokenBatches(batches=batches, num_examples=len(encoded), settings=settings)
