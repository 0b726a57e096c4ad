"""Run a model over tokenized data and compare quantized outputs with the FP32 reference."""

from quantsense.evaluation.batching import Batch, TokenBatches, make_batches, tokenize_texts
from quantsense.evaluation.metrics import EvalResult, compare_classification

__all__ = ["Batch", "EvalResult", "TokenBatches", "compare_classification", "make_batches", "tokenize_texts"]
