"""Heads turn a batch's model logits into the per-example (or per-token) outputs an evaluation keeps.

- :class:`ClassificationHead`: each example's logits, in the original data order.
- :class:`CausalLMHead`: per scored token, the log-probability of the true next token; for a
  quantized run also KL(FP32 || quantized) of the next-token distribution and top-1 agreement.
  The FP32 log-probabilities of every scored position are written once, during the reference
  pass, to a float32 memory-mapped temporary file, so memory stays bounded for long token budgets.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import numpy as np
import torch

from quantsense.evaluation.batching import Batch, TokenBatches


class ClassificationHead:
    """Keeps each example's logits in the original data order."""

    needs_reference = False

    def kwargs_for(self, model, batch: Batch) -> dict:
        return {}

    def start(self, batches: TokenBatches, reference: bool) -> None:
        self.batches = batches
        self.logits = None
        self.seen = np.zeros(batches.num_examples, dtype=bool)

    def step(self, b: int, batch: Batch, logits: torch.Tensor) -> None:
        out = logits.float().cpu().numpy()
        if self.logits is None:
            self.logits = np.empty((self.batches.num_examples, out.shape[1]), dtype=np.float32)
        self.logits[batch.index] = out
        self.seen[batch.index] = True

    def finish(self) -> dict[str, np.ndarray]:
        """The examples the batches cover, in data order (all of them, unless the batches are one segment)."""
        return {"logits": self.logits if self.seen.all() else self.logits[self.seen]}

    def unchanged(self, reference):
        """What a quantized run whose weights equal FP32's keeps: the reference's outputs."""
        return reference


ROWS_PER_STEP = 128  # logit rows turned into outputs at a time (128 x a 50k vocabulary: about 25 MB)


class CausalLMHead:
    """Turns each window's logits into per-token outputs; keeps FP32 log-probs for KL."""

    needs_reference = True

    def __init__(self):
        self._ref: _RowFile | None = None
        self._row_of: dict[int, int] = {}
        self._keeps_logits: dict[type, bool] = {}  # model class -> forward accepts logits_to_keep

    def kwargs_for(self, model, batch: Batch) -> dict:
        """No KV cache; and where the model supports it, logits only for the rows that predict scored tokens."""
        kind = type(model)
        if kind not in self._keeps_logits:
            self._keeps_logits[kind] = "logits_to_keep" in inspect.signature(model.forward).parameters
        kwargs = {"use_cache": False}
        if self._keeps_logits[kind]:
            kwargs["logits_to_keep"] = len(batch.index) + 1
        return kwargs

    def _open_reference(self, batches: TokenBatches, vocab: int) -> None:
        rows = sum(len(b.index) for b in batches)
        self._ref = _RowFile(vocab)
        self._ref_top = np.empty(rows, dtype=np.int64)  # each row's most likely token under FP32
        offset = 0
        for b, batch in enumerate(batches):
            self._row_of[b] = offset
            offset += len(batch.index)

    def start(self, batches: TokenBatches, reference: bool) -> None:
        self.reference = reference
        self.batches = batches
        n = batches.num_examples
        self.token_logprob = np.full(n, np.nan, dtype=np.float32)
        if not reference:
            self.kl = np.full(n, np.nan, dtype=np.float32)
            self.top1 = np.zeros(n, dtype=bool)

    def step(self, b: int, batch: Batch, logits: torch.Tensor) -> None:
        positions = batch.index
        length = batch.inputs["input_ids"].shape[1]
        window_start = positions[-1] + 1 - length  # stream position of the window's token 0
        first_row = length - logits.shape[1]  # logits may cover only the window's last rows
        rows = torch.as_tensor(positions - window_start - 1 - first_row)  # window row r predicts token r + 1
        targets = batch.inputs["input_ids"][0, torch.as_tensor(positions - window_start)].to(logits.device)
        if self.reference and self._ref is None:
            self._open_reference(self.batches, logits.shape[-1])
        start = self._row_of[b]
        logprob = np.empty(len(positions), dtype=np.float32)
        kl = np.empty(len(positions), dtype=np.float32)
        top1 = np.empty(len(positions), dtype=bool)
        for lo in range(
            0, len(positions), ROWS_PER_STEP
        ):  # rows in chunks that stay in cache: same values, less traffic
            hi = min(lo + ROWS_PER_STEP, len(positions))
            logp = torch.log_softmax(logits[0, rows[lo:hi]].float(), dim=-1)
            logprob[lo:hi] = logp.gather(1, targets[lo:hi, None])[:, 0].cpu().numpy()
            if self.reference:
                self._ref.write(start + lo, logp.cpu().numpy())
                self._ref_top[start + lo : start + hi] = logp.argmax(dim=1).cpu().numpy()
                continue
            ref = torch.from_numpy(self._ref.read(start + lo, hi - lo)).to(logp.device)
            kl[lo:hi] = (ref.exp() * (ref - logp)).sum(dim=1).clamp_min(0).cpu().numpy()
            top1[lo:hi] = self._ref_top[start + lo : start + hi] == logp.argmax(dim=1).cpu().numpy()
        self.token_logprob[positions] = logprob
        if not self.reference:
            self.kl[positions] = kl
            self.top1[positions] = top1

    @staticmethod
    def unchanged(reference):
        """What a quantized run whose weights equal FP32's keeps: FP32's log-probs, KL 0, full top-1 agreement."""
        from quantsense.evaluation.metrics import EvalResult

        lp = reference.arrays["token_logprob"]
        return EvalResult({"token_logprob": lp, "kl": np.zeros_like(lp), "top1": np.ones(lp.shape, dtype=bool)})

    def finish(self) -> dict[str, np.ndarray]:
        scored = ~np.isnan(self.token_logprob)
        out = {"token_logprob": self.token_logprob[scored]}
        if not self.reference:
            out["kl"] = self.kl[scored]
            out["top1"] = self.top1[scored]
        return out


class _RowFile:
    """The FP32 reference's log-probs, rows of ``width`` float32, in an unlinked temporary file read and written with
    plain reads and writes: an 8B model's 128,256-word vocabulary makes them 2 GB at 4,096 tokens, which a memory map
    would keep in the process (pages touched through a map stay resident) while the page cache can let them go."""

    def __init__(self, width: int):
        handle, path = tempfile.mkstemp(prefix="quantsense-ref-", suffix=".f32")
        os.unlink(path)  # the open file stays valid; it vanishes with the process
        self.fd, self.row_bytes = handle, 4 * width
        self.width = width

    def write(self, row: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=np.float32).tobytes()
        if os.pwrite(self.fd, data, row * self.row_bytes) != len(data):
            raise OSError("the reference log-probs' temporary file was not written whole (is the disk full?)")

    def read(self, row: int, count: int) -> np.ndarray:
        data = os.pread(self.fd, count * self.row_bytes, row * self.row_bytes)
        return np.frombuffer(bytearray(data), dtype=np.float32).reshape(count, self.width)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass
