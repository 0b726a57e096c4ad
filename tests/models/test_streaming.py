"""Blocks streamed from their files (--stream-blocks on): the same numbers, fingerprints and store keys as a model
loaded whole, with no block's weights left in memory between forwards."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import quantsense as qs
from quantsense.errors import QuantsenseError
from quantsense.quantization.plan import Plan
from tests.conftest import save_tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def sharded_lm(tmp_path_factory):
    """A 3-block tiny Llama (tied and untied) saved in several safetensors shards with an index, as large models are."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for tied in (False, True):
        path = root / ("tied" if tied else "untied")
        model = save_tiny_llama(path, tiny_tokenizer(), layers=3, intermediate=128, tied=tied)
        (path / "model.safetensors").unlink()
        model.save_pretrained(path, max_shard_size="40KB")
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 2
        out[tied] = path
    return out


def _workspace(path, text, mode, **options):
    return qs.open_workspace(
        str(path),
        task="wikitext",
        data=str(text),
        max_tokens=1024,
        context=64,
        stride=32,
        quiet=True,
        stream_blocks=mode,
        **options,
    )


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_blocks_give_the_same_numbers_and_keys(sharded_lm, offline_assets, tied):
    whole = _workspace(sharded_lm[tied], offline_assets["text"], "off")
    streamed = _workspace(sharded_lm[tied], offline_assets["text"], "on")
    assert whole.units.stream is None and streamed.units.stream is not None
    assert streamed.model_fp == whole.model_fp  # the store keys: same weights, same fingerprint
    blocks = streamed.units.blocks
    assert all(p.is_meta for b in blocks for p in b.parameters())  # nothing of a block is resident before it runs
    ref_whole, ref_streamed = whole.engine.reference(), streamed.engine.reference()
    for key in ref_whole.arrays:
        assert np.array_equal(ref_whole.arrays[key], ref_streamed.arrays[key]), key
    reads = streamed.units.stream.reads
    plans = {
        "block 2 int4": Plan.of({n: whole.format("int4") for n in whole.units.block_units(2)}),
        "mixed": Plan.of(
            {whole.units.block_units(0)[1]: whole.format("int3"), whole.units.extra_units()[-1]: whole.format("int8")}
        ),
    }
    for label, plan in plans.items():
        a = whole.engine.evaluate_many([(label, plan)])[label]
        b = streamed.engine.evaluate_many([(label, plan)])[label]
        for key in a.arrays:
            assert np.array_equal(a.arrays[key], b.arrays[key]), (label, key)
    batches = len(streamed.batches)
    # prefix reuse: "block 2 int4" replays blocks 0 and 1 (never read) and reads block 2 once per batch
    assert streamed.units.stream.reads - reads == batches * (1 + 3)
    assert all(p.is_meta for b in blocks for p in b.parameters())  # and released after each forward
    assert not streamed.units.stream.overrides  # the plan's weights are gone with the plan
    assert float(np.mean(b.arrays["kl"])) > 1e-4  # the plans changed the outputs (the comparison is not vacuous)


def test_a_file_missing_a_block_weight_is_refused_as_the_eager_load_refuses_it(sharded_lm, offline_assets, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_lm[False], broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    key = "model.layers.1.mlp.down_proj.weight"
    shard = broken / index["weight_map"].pop(key)
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    for mode in ("off", "on"):
        with pytest.raises(QuantsenseError, match="incomplete.*model.layers.1.mlp.down_proj.weight"):
            _workspace(broken, offline_assets["text"], mode)


def test_a_streamed_model_refuses_what_needs_it_whole(sharded_lm, offline_assets, tmp_path):
    ws = _workspace(sharded_lm[False], offline_assets["text"], "on")
    plan = Plan.of({ws.units.block_units(0)[0]: ws.format("int8")})
    with pytest.raises(QuantsenseError, match="torchao export builds the whole quantized model in memory"):
        qs.export(ws, plan, tmp_path / "out", target="torchao")
    with pytest.raises(QuantsenseError, match="Fisher estimate back-propagates"):
        qs.run_frontier(ws, budgets=[6.0], candidates=["int4", "int8"], unit="linear", reduced="fisher")
    with pytest.raises(QuantsenseError, match=r"stream_blocks \(--stream-blocks\) must be one of auto, on, off"):
        _workspace(sharded_lm[False], offline_assets["text"], "always")
    assert not (tmp_path / "out").exists()


def test_auto_streams_only_a_model_too_large_for_memory(sharded_lm, offline_assets, monkeypatch):
    from quantsense.models import streaming

    assert _workspace(sharded_lm[False], offline_assets["text"], "auto").units.stream is None
    monkeypatch.setattr(streaming, "memory_bytes", lambda: 1000)  # a machine smaller than this tiny model
    assert _workspace(sharded_lm[False], offline_assets["text"], "auto").units.stream is not None


def test_a_streamed_model_converts_to_the_same_gguf(sharded_lm, tmp_path):
    """The GGUF conversion of a streamed model reads each block tensor from its file: the file is byte-identical."""
    pytest.importorskip("gguf")
    from quantsense.backends.llama_cpp.gguf_convert import gguf_tensors
    from quantsense.models.loading import load_model
    from quantsense.tasks import make_task

    head = make_task("wikitext").model_head
    whole = load_model(str(sharded_lm[False]), head, "cpu", stream="off", quiet=True).model
    streamed = load_model(str(sharded_lm[False]), head, "cpu", stream="on", quiet=True).model
    a, b = gguf_tensors(whole), gguf_tensors(streamed)
    assert [n for n, _, _ in a] == [n for n, _, _ in b]
    for (name, _, read_a), (_, _, read_b) in zip(a, b):
        assert torch.equal(read_a(), read_b()), name


def test_a_gguf_model_streams_its_blocks_from_the_file(smollm2):
    """SmolLM2's Q4_1 GGUF: each block de-quantized from the file as it runs gives what transformers' whole load gives."""
    from quantsense.models.streaming import GGUFSource  # noqa: F401  (the source under test)

    from tests.conftest import WIKI

    def ws(mode):
        return qs.open_workspace(
            str(smollm2),
            task="wikitext",
            data=str(WIKI),
            max_tokens=96,
            context=48,
            stride=48,
            quiet=True,
            stream_blocks=mode,
        )

    whole, streamed = ws("off"), ws("on")
    assert streamed.model_fp == whole.model_fp and streamed.units.stream is not None
    plan = Plan.of({n: whole.format("q4_0") for n in whole.units.block_units(29)})
    a = whole.engine.evaluate_many([("p", plan)])["p"]
    b = streamed.engine.evaluate_many([("p", plan)])["p"]
    for key in a.arrays:
        assert np.array_equal(a.arrays[key], b.arrays[key]), key
    assert float(np.mean(a.arrays["kl"])) > 1e-5


def test_bfloat16_runs_the_reference_and_the_plans_in_bfloat16(sharded_lm, offline_assets):
    """--dtype bfloat16 on CPU: blocks computed in bfloat16 (streamed or not), the KL measured against the bfloat16
    reference, the baseline named for its dtype; the figures stay close to float32's."""
    from quantsense.study import baseline

    runs = {}
    for dtype, mode in (("float32", "off"), ("bfloat16", "on"), ("bfloat16", "off")):
        ws = _workspace(sharded_lm[False], offline_assets["text"], mode, dtype=dtype)
        seen = []
        hook = ws.units.blocks[0].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(m.weight.dtype))
        plan = Plan.of({n: ws.format("int4") for n in ws.units.block_units(1)})
        runs[(dtype, mode)] = (baseline(ws), ws.engine.evaluate_many([("p", plan)])["p"], ws.model_fp)
        hook.remove()
        assert seen and set(seen) == {getattr(torch, dtype)}
    fp32, bf16, bf16_whole = runs[("float32", "off")], runs[("bfloat16", "on")], runs[("bfloat16", "off")]
    assert fp32[0]["summary"].startswith("FP32 perplexity") and bf16[0]["summary"].startswith("BF16 perplexity")
    assert bf16[2] == bf16_whole[2] != fp32[2]  # the bfloat16 weights have their own store key, streamed or not
    assert np.array_equal(bf16[1].arrays["kl"], bf16_whole[1].arrays["kl"])
    assert abs(bf16[0]["perplexity"] / fp32[0]["perplexity"] - 1) < 0.02
    kl_fp32, kl_bf16 = float(np.mean(fp32[1].arrays["kl"])), float(np.mean(bf16[1].arrays["kl"]))
    assert 0.5 < kl_bf16 / kl_fp32 < 2.0  # against its own dtype's reference, the plan's effect is the same size


def test_the_command_line_says_when_it_streams(sharded_lm, offline_assets, capsys):
    from quantsense.cli import main

    argv = ["baseline", "--model", str(sharded_lm[False]), "--task", "wikitext", "--data", str(offline_assets["text"])]
    argv += ["--max-tokens", "256", "--context", "64", "--stride", "64", "--no-store"]
    assert main([*argv, "--stream-blocks", "on"]) == 0
    said = capsys.readouterr().out
    assert "Blocks streamed from the model's files (--stream-blocks): 3 blocks of" in said and "FP32 perplexity" in said
    assert main([*argv, "--stream-blocks", "off"]) == 0
    assert "Blocks streamed" not in capsys.readouterr().out


def test_a_plan_over_every_block_quantizes_each_weight_when_its_block_runs(sharded_lm, offline_assets):
    """Applying a plan to a streamed model holds no quantized weight: each is made when its block runs (a whole-model
    plan on an 8B model would otherwise hold every quantized weight at once), with the same outputs as a whole load."""
    whole = _workspace(sharded_lm[False], offline_assets["text"], "off")
    streamed = _workspace(sharded_lm[False], offline_assets["text"], "on")
    plan = Plan.of({n: whole.format("int4") for b in range(3) for n in whole.units.block_units(b)})
    streamed.applier.cache_bytes = 0  # nothing kept between blocks either
    with streamed.applier.applied(plan):
        assert set(streamed.units.stream.overrides) == {n for n, _ in plan.assignments}
        assert all(callable(v) for v in streamed.units.stream.overrides.values())
        assert not streamed.applier._cache
    a = whole.engine.evaluate_many([("all", plan)])["all"]
    b = streamed.engine.evaluate_many([("all", plan)])["all"]
    for key in a.arrays:
        assert np.array_equal(a.arrays[key], b.arrays[key]), key


def test_a_streamed_model_bounds_its_caches(sharded_lm, offline_assets):
    """On a streamed model the quantized-weight cache holds one weight (the largest streamed one, in float32), where a
    whole load keeps 1 GB; and the FP32 reference's log-probs, kept in a file, read back exactly as written."""
    from quantsense.evaluation.heads import _RowFile

    whole = _workspace(sharded_lm[False], offline_assets["text"], "off")
    streamed = _workspace(sharded_lm[False], offline_assets["text"], "on")
    largest = max(u.numel for u in streamed.units.units.values() if streamed.units.stream.streams(u.name))
    assert streamed.applier.cache_bytes == 4 * largest < whole.applier.cache_bytes == 1 << 30
    rows = _RowFile(7)
    values = np.arange(5 * 7, dtype=np.float32).reshape(5, 7) / 3
    rows.write(0, values[:2])
    rows.write(2, values[2:])
    assert np.array_equal(rows.read(1, 3), values[1:4])
