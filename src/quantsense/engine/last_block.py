"""The last block computes only the position the classifier reads.

A BERT, RoBERTa or DistilBERT sequence classifier reads one position of the last block's output: the first
(``[CLS]``). Attention is the only step that mixes positions, so the last block needs the query, the
attention output projection, the residual, the layer norms and the feed-forward network for the
first position alone, and its attention over every position costs two matrix-vector products per
head (:func:`_attend_first`) instead of projecting every position to keys and values. The block
then returns a sequence of length one, which the classifier reads exactly as before.

The numbers equal the full forward pass up to float rounding (the same sums, in another order), so
results computed this way are stored under their own key. Other architectures (or any model whose head is not one of these classes) run unchanged,
and so does the last block under a plan that quantizes the inputs of one of its linears per tensor (see
``Evaluator._first_position_under``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

VARIANT = "last-block-first-position"  # names this forward in the results store's key


def _attend_first(query, hidden, key: nn.Linear, value: nn.Linear, mask, heads: int) -> torch.Tensor:
    """Multi-head attention of one query position per sentence over every position of ``hidden``.

    The keys and values are never formed: per head, q . (W_k h + b_k) = (W_k^T q) . h + q . b_k and
    sum_l p_l (W_v h_l + b_v) = W_v (sum_l p_l h_l) + b_v (the weights sum to 1). That is two
    matrix-vector products per sentence and head instead of projecting every position.
    """
    batch, dim = query.shape[0], query.shape[-1]
    head_dim = dim // heads
    q = query.reshape(batch, heads, head_dim)
    w_k, w_v = key.weight.view(heads, head_dim, -1), value.weight.view(heads, head_dim, -1)
    scores = torch.einsum("bli,bhi->bhl", hidden, torch.einsum("bhd,hdi->bhi", q, w_k))
    if key.bias is not None:
        scores = scores + (q * key.bias.view(heads, head_dim)).sum(-1, keepdim=True)
    scores = scores * head_dim**-0.5
    if mask is not None:  # transformers passes [batch, 1, queries or 1, keys]: keep the first query's row
        row = mask[:, :, 0, :] if mask.dim() == 4 else mask[:, None, :]
        scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row
    weights = torch.softmax(scores, dim=-1)
    context = torch.einsum("bhi,hdi->bhd", torch.einsum("bhl,bli->bhi", weights, hidden), w_v)
    if value.bias is not None:
        context = context + value.bias.view(heads, head_dim)
    return context.reshape(batch, 1, dim)


def _bert_layer(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """transformers' BertLayer or RobertaLayer (self-attention encoder) for the first position only."""
    attention, first = layer.attention.self, hidden_states[:, :1]
    context = _attend_first(
        attention.query(first),
        hidden_states,
        attention.key,
        attention.value,
        attention_mask,
        attention.num_attention_heads,
    )
    attended = layer.attention.output(context, first)
    return layer.output(layer.intermediate(attended), attended)


def _distilbert_block(block, hidden_states, attention_mask=None, *args, **kwargs):
    """transformers' DistilBERT TransformerBlock for the first position only."""
    attention, first = block.attention, hidden_states[:, :1]
    context = _attend_first(
        attention.q_lin(first), hidden_states, attention.k_lin, attention.v_lin, attention_mask, attention.n_heads
    )
    attended = block.sa_layer_norm(attention.out_lin(context) + first)
    return block.output_layer_norm(block.ffn(attended) + attended)


# classifier class name -> the first-position forward of its blocks
_FORWARDS = {
    "BertForSequenceClassification": _bert_layer,
    "RobertaForSequenceClassification": _bert_layer,
    "DistilBertForSequenceClassification": _distilbert_block,
}


def supported(model) -> bool:
    """Whether ``model``'s head reads only the first position of blocks this module knows (and it is not training)."""
    config = getattr(model, "config", None)
    is_decoder = bool(getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False))
    return type(model).__name__ in _FORWARDS and not is_decoder and not model.training


def last_layer(model):
    """The model's own last encoder layer (whatever blocks a sweep chose to treat as units)."""
    base = model.base_model
    layers = base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer
    return layers[-1]


@contextmanager
def first_position_only(model, last_block):
    """Within the context, ``last_block`` (the model's :func:`last_layer`) computes only the first position."""
    forward = _FORWARDS[type(model).__name__]
    last_block.forward = lambda *args, **kwargs: forward(last_block, *args, **kwargs)
    try:
        yield
    finally:
        del last_block.forward
