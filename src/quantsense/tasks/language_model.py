"""Causal language modelling (task ``wikitext``): sliding-window perplexity with per-token outputs kept,
per-token KL(FP32 || quantized) and top-1 agreement; intervals by a block bootstrap over tokens.

Token selection is reproducible: the text is tokenized whole and the first ``max_tokens`` tokens
are used. Windows of ``context`` tokens start every ``stride`` tokens; each window scores only the
tokens no earlier window scored (the usual sliding-window perplexity), so every token after the
first is predicted at most once, with up to ``context - stride`` tokens of extra context; a window's own first
token is never scored (with ``stride == context``, one token per later window goes unscored).

Neighbouring tokens' losses are strongly correlated, so intervals resample consecutive blocks of
:data:`BOOTSTRAP_BLOCK_TOKENS` scored tokens rather than single tokens
(:func:`quantsense.evaluation.statistics.block_bootstrap_mean_ci`).
"""

from __future__ import annotations


import numpy as np

from quantsense.data.text import TextData, load_text
from quantsense.errors import QuantsenseError
from quantsense.evaluation.statistics import block_bootstrap_mean_ci
from quantsense.models.head import ModelHead
from quantsense.tasks.base import LossSpec, MetricSpec, Setting, Task, register_task

BOOTSTRAP_BLOCK_TOKENS = 128
MIN_CONTEXT = 2


def perplexity(token_logprob: np.ndarray) -> float:
    from quantsense.evaluation.metrics import perplexity as compute

    return compute(token_logprob)


def make_windows(token_ids: list[int], max_tokens: int, context: int, stride: int, first_token: int = 0):
    """One batch per window; ``Batch.index`` holds the positions (in the token stream) it scores.

    A window scores only tokens with at least one token of context inside it: its first token is
    never scored (with ``stride == context`` that token is left unscored, as in the Hugging Face
    recipe and llama.cpp's perplexity, rather than predicted from a row that belongs to the next one).
    ``first_token``: the stream starts that many tokens into the text (a range disjoint from calibration data).
    """
    import torch

    from quantsense.evaluation.batching import Batch, TokenBatches

    ids = token_ids[first_token : first_token + max_tokens]
    batches = []
    scored_until = 1  # token 0 has no prediction
    begin = 0
    while scored_until < len(ids):
        end = min(begin + context, len(ids))
        first = max(scored_until, begin + 1)
        if first < end:  # a last window of one token has nothing to score
            window = torch.tensor([ids[begin:end]], dtype=torch.long)
            batches.append(Batch(index=np.arange(first, end), inputs={"input_ids": window}))
        scored_until = end
        if end == len(ids):
            break
        begin += stride
    settings = {
        "max_tokens": max_tokens,
        "context": context,
        "stride": stride,
        "tokens": len(ids),
        "first_token": first_token,
    }
    return TokenBatches(batches=batches, num_examples=len(ids), settings=settings)


def _scored(max_tokens: int, context: int, stride: int) -> int:
    """How many tokens the windows of a stream of ``max_tokens`` tokens score."""
    return sum(len(b.index) for b in make_windows(list(range(max_tokens)), max_tokens, context, stride).batches)


def tokens_for_interval(context: int, stride: int, minimum: int, at_least: int = 0) -> int:
    """The fewest stream tokens (``at_least`` or more, in steps of ``context``) whose windows score ``minimum``
    bootstrap blocks."""
    if context < MIN_CONTEXT:
        raise QuantsenseError(
            f"--context {context} is too short: a window needs at least {MIN_CONTEXT} tokens to predict one"
        )
    need = max(at_least, context)
    while need < 1 << 30 and -(-_scored(need, context, stride) // BOOTSTRAP_BLOCK_TOKENS) < minimum:
        need += context
    return need


def token_ids(batches) -> list[int]:
    """The token stream the windows were cut from (every window's tokens at their stream positions)."""
    ids: dict[int, int] = {}
    for batch in batches:
        window = batch.inputs["input_ids"][0].tolist()
        start = int(batch.index[-1]) + 1 - len(window)
        ids.update({start + j: t for j, t in enumerate(window)})
    return [ids[i] for i in range(len(ids))]


def compare_language_model(reference, quantized, seed: int = 0, block: int = BOOTSTRAP_BLOCK_TOKENS) -> dict:
    """Paired per-token metrics of ``quantized`` against ``reference`` on the same tokens.

    ``delta_nll`` is the mean increase of the per-token negative log-likelihood (ln of the
    perplexity ratio); it and the mean KL get block-bootstrap 95 % intervals. A run differs from
    FP32 when the ``delta_nll`` interval excludes zero.
    """
    if "kl" not in quantized.arrays:  # the FP32 run itself (a plan that quantizes nothing): its row is FP32's
        from quantsense.evaluation.heads import CausalLMHead

        quantized = CausalLMHead.unchanged(reference)
    ref_lp = reference.arrays["token_logprob"].astype(np.float64)
    q_lp = quantized.arrays["token_logprob"].astype(np.float64)
    delta = ref_lp - q_lp
    lo, hi = block_bootstrap_mean_ci(delta, block, seed=seed)
    kl = quantized.arrays["kl"].astype(np.float64)
    kl_lo, kl_hi = block_bootstrap_mean_ci(kl, block, seed=seed)
    ppl_ref, ppl = perplexity(ref_lp), perplexity(q_lp)
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


@register_task
class LanguageModelPerplexity(Task):
    name = "wikitext"
    summary = "causal-LM perplexity and per-token KL"
    model_head = ModelHead("AutoModelForCausalLM", "language-model head", from_gguf=True)
    settings_spec = (
        Setting("max_tokens", 4096, "N tokens of the text, from --first-token on"),
        Setting("context", 1024, "window length in tokens"),
        Setting("stride", 512, "tokens between window starts"),
        Setting("first_token", 0, "skip the text's first N tokens (e.g. those an imatrix was collected on)", minimum=0),
    )
    metric = MetricSpec("perplexity", "perplexity", higher_is_better=False)
    loss = LossSpec("delta_nll", "NLL increase per token (nats)")
    differs_test = f"block-bootstrap 95% CI of the NLL increase (blocks of {BOOTSTRAP_BLOCK_TOKENS} tokens) excludes 0"
    data_help = (
        "wikitext: a local plain-text file (e.g. wiki.test.raw); default: WikiText-2 raw test via the datasets package"
    )
    default_formats = ("q8_0", "q5_0", "q4_0")
    default_candidates = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16")
    default_ablation_format = "q4_0"
    sensitivity_columns = [
        ("unit", "unit"),
        ("format", "format"),
        ("view", "view"),
        ("perplexity", "ppl"),
        ("ppl_ratio", "ppl ratio"),
        ("delta_nll", "dNLL/token"),
        ("delta_nll_ci_low", "CI low"),
        ("delta_nll_ci_high", "CI high"),
        ("kl_mean", "KL mean"),
        ("kl_ci_low", "KL CI low"),
        ("kl_ci_high", "KL CI high"),
        ("kl_p95", "KL p95"),
        ("top1_agreement", "top-1 agree %"),
        ("weight_sqnr_db", "weight SQNR dB"),
    ]
    ranking_columns = [
        ("rank", "rank"),
        ("unit", "unit"),
        ("kl_mean", "KL mean"),
        ("kl_ci_low", "KL CI low"),
        ("kl_ci_high", "KL CI high"),
        ("ppl_ratio", "ppl ratio"),
        ("tier", "tier"),
        ("distinguishable_from_fp32", "differs from FP32"),
    ]
    plan_columns = [
        ("plan", "plan"),
        ("perplexity", "ppl"),
        ("ppl_ratio", "ppl ratio"),
        ("delta_nll", "dNLL/token"),
        ("delta_nll_ci_low", "CI low"),
        ("delta_nll_ci_high", "CI high"),
        ("kl_mean", "KL mean"),
        ("kl_ci_low", "KL CI low"),
        ("kl_ci_high", "KL CI high"),
        ("top1_agreement", "top-1 agree %"),
        ("avg_bits", "avg bits/weight"),
        ("model_mb", "model MB"),
    ]

    report_columns = [
        ("perplexity", "perplexity of the quantized model", "perplexity"),
        ("ppl ratio", "quantized / FP32 perplexity", "ppl_ratio"),
        ("dNLL", "NLL increase per token (nats)", "delta_nll"),
        ("dNLL 95% CI", "block-bootstrap 95% CI", "loss_ci"),
        ("top-1 agree %", "tokens whose top-1 prediction matches FP32", "top1_agreement"),
    ]
    glossary_terms = [
        (
            "dNLL",
            "increase of the negative log-likelihood per token over FP32, in nats; exp(dNLL) is the perplexity ratio.",
        ),
        ("ppl ratio", "perplexity of the quantized model divided by FP32's (1 = no change)."),
        ("top-1 agreement", "share of tokens whose most likely next token is the same as FP32's."),
    ]

    def __init__(self, max_tokens: int = 4096, context: int = 1024, stride: int = 512, first_token: int = 0):
        if context < MIN_CONTEXT:
            raise QuantsenseError(
                f"--context {context} is too short: a window needs at least {MIN_CONTEXT} tokens to predict one"
            )
        if not 1 <= stride <= context:
            raise QuantsenseError(f"--stride {stride} must be between 1 and --context {context}")
        if max_tokens < context:
            raise QuantsenseError(
                f"--max-tokens {max_tokens} scores fewer tokens than one --context {context} window; "
                f"raise --max-tokens to at least {context} or lower --context"
            )
        self.max_tokens = max_tokens
        self.context = context
        self.stride = stride
        self.first_token = first_token

    def settings(self) -> dict:
        return {**super().settings(), "bootstrap_block_tokens": BOOTSTRAP_BLOCK_TOKENS}

    def interval_blocks(self, scored: int) -> int:
        return -(-scored // BOOTSTRAP_BLOCK_TOKENS)

    def too_few_blocks(self, scored: int, blocks: int, minimum: int) -> str:
        need = tokens_for_interval(self.context, self.stride, minimum, at_least=self.max_tokens)
        return (
            f"--max-tokens {self.max_tokens} scores {scored} tokens, {blocks} bootstrap block(s) of "
            f"{BOOTSTRAP_BLOCK_TOKENS} tokens, and an interval needs at least {minimum}: use --max-tokens {need} or "
            f"more (an interval from fewer blocks would have about zero width and call every difference real)"
        )

    def load(self, source, tokenizer, id2label):
        data = load_text(source)
        ids = tokenizer(data.text, add_special_tokens=False)["input_ids"]
        if len(ids) - self.first_token < self.context:
            raise QuantsenseError(
                f"text file {data.source} has {len(ids)} tokens, fewer than one --context {self.context} "
                f"window after --first-token {self.first_token}; use a longer text, a smaller "
                "--first-token or a shorter --context"
            )
        return data, make_windows(ids, self.max_tokens, self.context, self.stride, self.first_token)

    def token_range(self, batches) -> tuple[int, int]:
        return batches.settings["first_token"], batches.settings["tokens"]

    def length_setting(self) -> tuple[str, int]:
        return "--context", self.context

    def describe_data(self, data: TextData, batches) -> dict:
        settings = batches.settings
        first = settings.get("first_token", 0)
        where = f"first {settings['tokens']} tokens" if not first else f"tokens {first}..{first + settings['tokens']}"
        return {
            "source": data.source,
            **settings,
            "description": f"{where}, context {settings['context']}, stride {settings['stride']}",
        }

    def head(self):
        from quantsense.evaluation.heads import CausalLMHead

        return CausalLMHead()

    def baseline(self, reference, data) -> dict:
        lp = reference.arrays["token_logprob"]
        return {
            "perplexity": perplexity(lp),
            "scored_tokens": int(len(lp)),
            "max_tokens": self.max_tokens,
            "context": self.context,
            "stride": self.stride,
            "first_token": self.first_token,
        }

    def compare(self, reference, quantized, data, seed: int = 0) -> dict:
        return compare_language_model(reference, quantized, seed=seed)

    def arrays_valid(self, arrays, batches) -> bool:
        scored = sum(len(b.index) for b in batches)
        lp = arrays.get("token_logprob")
        if lp is None or lp.shape != (scored,):
            return False
        return all(arrays[k].shape == (scored,) for k in ("kl", "top1") if k in arrays)

    @classmethod
    def baseline_text(cls, base: dict) -> str:
        first = base.get("first_token", 0)
        where = f"first {base['max_tokens']} tokens" if not first else f"{base['max_tokens']} tokens from token {first}"
        return (
            f"{base.get('reference', 'FP32')} perplexity: {base['perplexity']:.3f} on {base['scored_tokens']} scored tokens "
            f"({where}, context {base['context']}, stride {base['stride']})"
        )

    @classmethod
    def effect_text(cls, row: dict) -> str:
        return (
            f"perplexity {row['perplexity']:.3f} (x{row['ppl_ratio']:.4f}), dNLL {row['delta_nll']:.4f} "
            f"[95% CI {row['delta_nll_ci_low']:.4f}, {row['delta_nll_ci_high']:.4f}], KL {row['kl_mean']:.2e}"
        )
