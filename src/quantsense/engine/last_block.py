"""The last block computes only the position the classifier reads.

A BERT, RoBERTa or DistilBERT sequence classifier reads one position of the last block's output: the first
(``[CLS]``). Attention is the only step that mixes positions, so the last block needs keys and values
for every position but queries, the attention output projection, the residual, the layer norms and
the feed-forward network for the first position alone: about a sixth of the block's work. The block
then returns a sequence of length one, which the classifier reads exactly as before.

The numbers equal the full forward pass up to float rounding (the same operations on fewer rows;
a matrix kernel may sum in another order), so results computed this way are stored under their own
key. Other architectures (or any model whose head is not one of these classes) run unchanged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

VARIANT = "last-block-first-position"  # names this forward in the results store's key


def _attend(query, key, value, mask, heads: int) -> torch.Tensor:
    """Multi-head attention of ``query`` positions over all ``key``/``value`` positions, heads merged back."""
    batch, dim = query.shape[0], query.shape[-1]
    split = lambda x: x.view(batch, x.shape[1], heads, dim // heads).transpose(1, 2)  # noqa: E731
    if mask is not None and mask.dim() == 4 and mask.shape[-2] > 1:
        mask = mask[..., :1, :]
    out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=mask,
                                         scale=1 / math.sqrt(dim // heads))
    return out.transpose(1, 2).reshape(batch, query.shape[1], dim)


def _bert_layer(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """transformers' BertLayer or RobertaLayer (self-attention encoder) for the first position only."""
    attention, first = layer.attention.self, hidden_states[:, :1]
    context = _attend(attention.query(first), attention.key(hidden_states), attention.value(hidden_states),
                      attention_mask, attention.num_attention_heads)
    attended = layer.attention.output(context, first)
    return layer.output(layer.intermediate(attended), attended)


def _distilbert_block(block, hidden_states, attention_mask=None, *args, **kwargs):
    """transformers' DistilBERT TransformerBlock for the first position only."""
    attention, first = block.attention, hidden_states[:, :1]
    context = _attend(attention.q_lin(first), attention.k_lin(hidden_states), attention.v_lin(hidden_states),
                      attention_mask, attention.n_heads)
    attended = block.sa_layer_norm(attention.out_lin(context) + first)
    return block.output_layer_norm(block.ffn(attended) + attended)


# classifier class name -> the first-position forward of its blocks
_FORWARDS = {"BertForSequenceClassification": _bert_layer, "RobertaForSequenceClassification": _bert_layer,
             "DistilBertForSequenceClassification": _distilbert_block}


def supported(model) -> bool:
    """Whether ``model``'s head reads only the first position of blocks this module knows (and it is not training)."""
    config = getattr(model, "config", None)
    is_decoder = bool(getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False))
    return type(model).__name__ in _FORWARDS and not is_decoder and not model.training


@contextmanager
def first_position_only(model, last_block):
    """Within the context, ``last_block`` computes only the first position (``model`` must be :func:`supported`)."""
    forward = _FORWARDS[type(model).__name__]
    last_block.forward = lambda *args, **kwargs: forward(last_block, *args, **kwargs)
    try:
        yield
    finally:
        del last_block.forward
