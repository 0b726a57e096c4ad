"""Decoder LMs built from configs: units (Conv1D, tied heads), prefix reuse on windows, sweeps, metrics."""

import numpy as np
import pytest
import torch
import transformers

from quantsense.config import Plan, QuantConfig
from quantsense.engine import Evaluator
from quantsense.evaluation.heads import CausalLMHead
from quantsense.errors import QuantsenseError
from quantsense.models.units import discover_units
from quantsense.quantization.apply import apply_plan
from quantsense.sweeps.sweep import build_entries, run_sweep
from quantsense.tasks.language_model import LanguageModelPerplexity, compare_language_model, make_windows, perplexity
from tests.conftest import EXPECTED_BLOCK_UNITS


def causal_model(arch: str, tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "gpt2":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        )
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=96,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                tie_word_embeddings=tie,
            )
        )
    else:
        model = transformers.OPTForCausalLM(
            transformers.OPTConfig(
                vocab_size=96,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                ffn_dim=64,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
            )
        )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def _windows(n=150, context=40, stride=16):
    ids = torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(1)).tolist()
    return make_windows(ids, n, context, stride)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_units_and_tied_head(arch):
    units = discover_units(causal_model(arch))
    assert units.num_blocks == 3
    short = [units.get(n).short_name(units.block_prefix) for n in units.block_units(0)]
    assert short == EXPECTED_BLOCK_UNITS[arch]
    embeddings = [units.get(n) for n in units.extra_units() if units.get(n).kind == "embedding"]
    tied = [u for u in embeddings if u.tied_to]
    assert len(tied) == 1 and tied[0].tied_to[0].endswith("lm_head")  # one unit for the shared weight
    assert all(units.get(n).transposed for n in units.block_units(0)) == (arch == "gpt2")


def test_untied_lm_head_is_its_own_unit():
    units = discover_units(causal_model("llama", tie=False))
    assert units.get("lm_head").kind == "head"


def test_windows_score_every_token_after_the_first_once():
    w = _windows(150, 40, 16)
    positions = np.concatenate([b.index for b in w.batches])
    assert positions.tolist() == list(range(1, 150))
    assert all(b.inputs["input_ids"].shape[1] <= 40 for b in w.batches)
    with pytest.raises(QuantsenseError, match="--stride 8 must be between 1 and --context 4"):
        LanguageModelPerplexity(max_tokens=10, context=4, stride=8)
    with pytest.raises(QuantsenseError, match="--context 1 is too short"):
        LanguageModelPerplexity(max_tokens=10, context=1, stride=1)
    with pytest.raises(QuantsenseError, match="--max-tokens 1 scores fewer tokens than one --context 1024 window"):
        LanguageModelPerplexity(max_tokens=1)


@pytest.mark.parametrize("n, stride", [(120, 40), (120, 25), (121, 40)])
def test_window_scores_equal_a_plain_hugging_face_loop(n, stride):
    """Each window scores only tokens with context inside it (stride == context leaves each window's first token
    unscored, as the Hugging Face recipe does), and every score equals a plain forward over that window."""
    model, context = causal_model("llama"), 40
    ids = torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(1)).tolist()
    batches = make_windows(ids, n, context, stride)
    got = Evaluator(model, discover_units(model), batches, torch.device("cpu"), head=CausalLMHead()).reference()
    expected, prev_end = [], 0
    with torch.no_grad():
        for begin in range(0, n, stride):  # the Hugging Face perplexity recipe: score the last end - prev_end labels
            end = min(begin + context, n)
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].float(), dim=-1)
            targets = torch.tensor(ids[begin + 1 : end])
            scores = logp[:-1].gather(1, targets[:, None])[:, 0]
            new = min(end - prev_end, end - begin - 1)
            expected.append(scores[len(scores) - new :])
            prev_end = end
            if end == n:
                break
    expected = torch.cat(expected).numpy()
    windows = -(-n // stride) if stride == context else None  # the last of 121 tokens is a window of its own
    assert len(got.arrays["token_logprob"]) == len(expected) == (n - windows if stride == context else n - 1)
    assert np.abs(got.arrays["token_logprob"] - expected).max() < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_prefix_reuse_identical_on_causal_windows(arch):
    model = causal_model(arch)
    units = discover_units(model)
    fast = Evaluator(model, units, _windows(), torch.device("cpu"), head=CausalLMHead())
    plain = Evaluator(model, units, _windows(), torch.device("cpu"), head=CausalLMHead(), prefix_reuse=False)
    bounded = Evaluator(model, units, _windows(), torch.device("cpu"), head=CausalLMHead(), prefix_cache_bytes=1)
    assert bounded.prefix.every > 1
    for block in range(units.num_blocks):
        plan = Plan.of({n: QuantConfig(3) for n in units.block_units(block)})
        a, b, c = fast.evaluate(plan).arrays, plain.evaluate(plan).arrays, bounded.evaluate(plan).arrays
        for key in ("token_logprob", "kl", "top1"):
            assert np.array_equal(a[key], b[key]) and np.array_equal(a[key], c[key]), (arch, block, key)


def test_causal_sweep_and_metrics():
    model = causal_model("llama")
    units = discover_units(model)
    ev = Evaluator(model, units, _windows(), torch.device("cpu"), head=CausalLMHead())

    class _Engine:  # the sweep only needs reference/evaluate_many/evaluator
        evaluator = ev

        def reference(self):
            return ev.reference()

        def evaluate_many(self, pairs, desc=""):
            return {label: ev.evaluate(plan) for label, plan in pairs}

    entries = build_entries(units, [QuantConfig(8), QuantConfig(2)])
    rows = run_sweep(_Engine(), ev.applier, units, entries, compare_language_model, "delta_nll")
    assert len(rows) == 6
    for row in rows:
        assert row["kl_ci_low"] <= row["kl_mean"] <= row["kl_ci_high"] and row["kl_mean"] >= 0
        assert 0 <= row["top1_agreement"] <= 100
    by_format = {f: np.mean([r["kl_mean"] for r in rows if r["format"] == f]) for f in ("int8", "int2")}
    assert by_format["int2"] > 100 * by_format["int8"]
    assert [r["block"] for r in rows[:3]] == [0, 1, 2] and all(r["sub"] is None for r in rows)
    same = compare_language_model(ev.reference(), ev.evaluate(Plan.of({units.block_units(0)[0]: QuantConfig(8)})))
    assert same["top1_agreement"] > 90
    ident = ev.reference()
    ident_q = type(ident)(
        {
            **ident.arrays,
            "kl": np.zeros_like(ident.arrays["token_logprob"]),
            "top1": np.ones_like(ident.arrays["token_logprob"], dtype=bool),
        }
    )
    m = compare_language_model(ident, ident_q)
    assert m["ppl_ratio"] == 1.0 and m["delta_nll"] == 0.0 and not m["distinguishable_from_fp32"]
    assert perplexity(ident.arrays["token_logprob"]) == pytest.approx(
        np.exp(-ident.arrays["token_logprob"].mean()), rel=1e-6
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_restore_is_bit_exact_for_causal_models(arch):
    model = causal_model(arch)
    units = discover_units(model)
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        fp32_logits = model(ids).logits
    plan = Plan.of({n: QuantConfig(2) for n in units.linear_units()})
    with apply_plan(units, plan), torch.inference_mode():
        changed = [n for n in plan.units() if not torch.equal(units.get(n).weight, before[f"{n}.weight"])]
        assert changed == plan.units()  # every planned weight really is quantized inside the context
        assert not torch.allclose(model(ids).logits, fp32_logits, atol=1e-3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # and restored bit for bit
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, fp32_logits)


def test_a_plan_that_changes_no_weight_gives_the_computed_result_without_a_forward_pass():
    """q4_1 on weights already on a q4_1 grid (SmolLM2's GGUF) is a no-op: the shortcut must equal a real run."""
    from quantsense.backends.llama_cpp.formats import GGUFFormat

    model = causal_model("llama")
    units = discover_units(model)
    names = units.block_units(1)
    fmt = GGUFFormat("q4_1")
    with torch.no_grad():  # put block 1's weights on the q4_1 grid, as a Q4_1 GGUF model's are
        for n in names:
            units.get(n).weight.copy_(fmt.fake_quantize(units.get(n).weight))
    ev = Evaluator(model, units, _windows(), torch.device("cpu"), head=CausalLMHead())
    plan = Plan.of({n: fmt for n in names})
    assert ev.applier.changes_nothing(plan)
    shortcut = ev.evaluate(plan).arrays
    with ev.applier.applied(plan):
        computed = ev._run(ev.start_block(plan), reference=False).arrays
    for key in ("token_logprob", "kl", "top1"):
        assert np.array_equal(shortcut[key], computed[key]), key
    assert not ev.applier.changes_nothing(Plan.of({n: GGUFFormat("q4_0") for n in names}))
