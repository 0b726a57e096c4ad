"""The Fisher pass predicts the mean KL that a small weight error (or a rounding of a linear's inputs) causes, for
block linears, the token embedding and the output head, tied or not: checked against the KL measured by running
the model with the error applied."""

from types import SimpleNamespace

import pytest
import torch
import transformers

from quantsense.models.units import discover_units
from quantsense.sweeps.fisher import fisher_pass, row_sample
from quantsense.sweeps.loss_model import fit_loss_model

LINEARS = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"]


def _kwargs(model, batch):
    return {"use_cache": False}


def _model(tied: bool):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # peaked next-token distributions, as a trained model's
    ids = torch.randint(0, 500, (1, 256), generator=torch.Generator().manual_seed(1))
    batches = [SimpleNamespace(inputs={"input_ids": ids[:, :128]}), SimpleNamespace(inputs={"input_ids": ids[:, 128:]})]
    return model, discover_units(model), batches


def _measured_kl(model, batches, change) -> float:
    """Mean KL(FP32 || changed) per predicted token, ``change`` a context manager applying the change."""
    with torch.no_grad():
        ref = [torch.log_softmax(model(**b.inputs, use_cache=False).logits[0, :-1].float(), -1) for b in batches]
        with change():
            new = [torch.log_softmax(model(**b.inputs, use_cache=False).logits[0, :-1].float(), -1) for b in batches]
    return float(sum((r.exp() * (r - n)).sum() for r, n in zip(ref, new)) / sum(r.shape[0] for r in ref))


@pytest.mark.parametrize("tied", [True, False])
def test_the_fisher_pass_predicts_the_kl_of_a_small_weight_error(tied):
    model, units, batches = _model(tied)
    outside = [n for n in units.units if units.get(n).block is None]
    assert len(outside) == (1 if tied else 2)  # the embedding, and an untied head
    names = LINEARS + outside
    found = fisher_pass(model, units, names, batches, _kwargs, draws=64)
    assert found.rows == 2 * 127 * 64
    assert all(
        torch.isfinite(found.fisher[n]).all() and found.fisher[n].shape == units.get(n).weight.shape for n in names
    )
    for name in names:
        weight = units.get(name).weight
        delta = (
            0.02 * weight.detach().abs().mean() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
        )

        class Change:
            def __enter__(self):
                weight.data.add_(delta)

            def __exit__(self, *exc):
                weight.data.sub_(delta)

        measured = _measured_kl(model, batches, Change)
        predicted = found.predicted_kl((name,), {name: delta})
        assert measured > 0 and abs(predicted / measured - 1) < 0.2, (name, predicted, measured)


def test_a_row_sample_predicts_what_the_whole_tensor_does():
    """A format that quantizes rows alone is quantized only on a row sample: the heaviest rows exactly, a stride of the
    others standing for them; rows no gradient reached (an untied embedding's unseen tokens) are left out."""
    model, units, batches = _model(False)
    embedding = next(n for n in units.units if units.get(n).block is None and units.get(n).kind == "embedding")
    names = LINEARS + [embedding]
    found = fisher_pass(model, units, names, batches, _kwargs, draws=8)
    for name in names:
        weight = units.get(name).weight.detach()
        delta = 0.02 * weight.abs().mean() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
        whole = found.predicted_kl((name,), {name: delta})
        sample = found.row_sample(name, False)
        assert len(sample.index.unique()) == len(sample.index) < weight.shape[0] / 2  # each row once, most left out
        assert float(sample.count.sum()) == pytest.approx(int((found.fisher[name].sum(1) > 0).sum()))  # stands for all
        part = found.predicted_kl((name,), {name: delta[sample.index]}, samples={name: sample})
        assert abs(part / whole - 1) < 0.15, (name, part, whole)
        every = row_sample(found.fisher[name].sum(1), exact_share=1)  # every row with mass, exactly
        assert found.predicted_kl((name,), {name: delta[every.index]}, samples={name: every}) == pytest.approx(
            whole, rel=1e-5
        )
    seen = set(torch.cat([b.inputs["input_ids"].reshape(-1) for b in batches]).tolist())
    assert set(found.row_sample(embedding, False).index.tolist()) <= seen


def test_the_fisher_pass_predicts_the_kl_of_rounding_a_linears_inputs():
    model, units, batches = _model(False)
    name = "model.layers.1.self_attn.o_proj"

    def rounding(x):  # 6-bit symmetric per row: an activation rounding of the runtime's kind
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 31
        return torch.round(x / scale) * scale

    found = fisher_pass(model, units, [name], batches, _kwargs, roundings=[rounding], draws=64)
    module = units.get(name).module

    class Change:
        def __enter__(self):
            self.handle = module.register_forward_pre_hook(lambda _m, args: (rounding(args[0]),))

        def __exit__(self, *exc):
            self.handle.remove()

    measured = _measured_kl(model, batches, Change)
    predicted = found.predicted_kl((name,), {name: torch.zeros_like(units.get(name).weight)}, rounding)
    assert measured > 0 and abs(predicted / measured - 1) < 0.3, (predicted, measured)
    assert found.predicted_kl((name,), {name: torch.zeros_like(units.get(name).weight)}) == 0.0  # no rounding, no error


def test_the_fisher_pass_draws_its_labels_from_its_seed():
    model, units, batches = _model(True)
    first, again, other = (fisher_pass(model, units, LINEARS, batches, _kwargs, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(first.fisher[n], again.fisher[n]) for n in LINEARS)
    assert not all(torch.equal(first.fisher[n], other.fisher[n]) for n in LINEARS)


def test_a_shared_scale_puts_an_unmeasured_units_prediction_on_the_measured_scale():
    errors = {("a", "q4"): 0.01, ("b", "q4"): 0.04, ("c", "q4"): 0.02, ("c", "q8"): 0.001}
    model = fit_loss_model({("a", "q4"): 0.02, ("b", "q4"): 0.02}, errors, alpha=1.0, shared_scale=True)
    assert model.default == pytest.approx((2.0 * 0.5) ** 0.5)  # geometric mean of the measured ratios
    assert model.predict("c", 0.02) == pytest.approx(0.02 * model.default)
    assert fit_loss_model({}, errors, alpha=1.0, shared_scale=True).predict("c", 0.02) == 0.02  # taken as they are
    with pytest.raises(Exception, match="no measurement of unit c"):
        fit_loss_model({("a", "q4"): 0.02}, errors, alpha=1.0).predict("c", 0.02)


def test_fisher_estimates_rank_the_measured_single_unit_kl_of_a_workspace(offline_assets):
    """On a workspace (a tiny Llama, its text), every linear at q4_0: the Fisher pass's predicted KL against the KL
    measured with that linear quantized alone, on the same first data segment."""
    import numpy as np
    from scipy.stats import spearmanr

    import quantsense as qs
    from quantsense.quantization.plan import Plan
    from quantsense.mixed_precision.reduced import fisher_errors
    from quantsense.sweeps.sweep import sweep_units

    ws = qs.open_workspace(
        str(offline_assets["lm"]),
        data=str(offline_assets["text"]),
        task="wikitext",
        quiet=True,
        max_tokens=4096,
        context=128,
        stride=128,
    )
    fmt = ws.formats(["q4_0"])[0]
    units = {u.display: u for u in sweep_units(ws.units, "linear", ws.outside_units())}
    predicted = fisher_errors(ws, units, [(u, fmt.name) for u in units], {fmt.name: fmt})
    measured = ws.segments().compare([(u, Plan.of({n: fmt for n in units[u].names})) for u in units], 1)
    m = np.array([measured[u]["kl_mean"] for u in units])
    p = np.array([predicted[(u, fmt.name)] for u in units])
    assert len(units) == 3 * 7 + 2 and (p > 0).all()
    assert spearmanr(m, p).correlation > 0.8
    assert 0.5 < float(np.median(m / p)) < 2.0  # on the measured scale, not just in the same order
