"""Evaluate a GGUF file in a fresh process with transformers or llama.cpp alone, no quantsense.

    python gguf_check.py --runtime transformers GGUF_FILE TOKEN_IDS.json CONTEXT STRIDE
    python gguf_check.py --runtime llama.cpp GGUF_FILE TOKEN_IDS.json CONTEXT STRIDE [--threads N]
    python gguf_check.py --runtime llama.cpp GGUF_FILE TOKEN_IDS.json CONTEXT STRIDE --kl-against REFERENCE_GGUF
    python gguf_check.py --speed GGUF_FILE [--threads N] [--prompt-tokens 512] [--gen-tokens 64] [--repeats 3]

Prints one JSON object. TOKEN_IDS.json holds a list of token ids (or {"token_ids": [...]}) so both
runtimes score exactly the same ids. Windows: the first covers tokens [0, CONTEXT), each later one
starts STRIDE later and scores only tokens no earlier window scored; a window's own first token (token 0 too)
is never scored, as it has no context inside the window.
``token_logprob`` is the natural-log probability of each scored token given its window. With ``--kl-against``
(llama.cpp only) the reference file runs the same windows too: ``reference_logprob``, ``kl`` (KL(reference ‖ file)
over the whole vocabulary at each scored position) and ``top1`` (1 where both files' most likely token agree).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def windows(n_tokens, context, stride):
    """(begin, end, first scored position) of each sliding window over ``n_tokens`` ids."""
    scored_until, begin = 1, 0
    while scored_until < n_tokens:
        end = min(begin + context, n_tokens)
        first = max(scored_until, begin + 1)  # a window's first token has no context in it: never scored
        if first < end:
            yield begin, end, first
        scored_until = end
        if end == n_tokens:
            break
        begin += stride


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def window_logprobs(ids, begin, end, first, logp):
    """Log-probs of the true next tokens ``ids[first:end]``; ``logp`` rows are the window's positions."""
    return [float(logp[position - begin - 1, ids[position]]) for position in range(first, end)]


def transformers_logprobs(path, ids, context, stride):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), trust_remote_code=False, gguf_file=path.name, dtype=torch.float32
    ).eval()
    logprobs = []
    with torch.inference_mode():
        for begin, end, first in windows(len(ids), context, stride):
            logits = model(torch.tensor([ids[begin:end]]), use_cache=False).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1).numpy()
            logprobs += window_logprobs(ids, begin, end, first, logp)
    return {"token_logprob": logprobs}


def llama(path, n_ctx, threads, logits_all):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        logits_all=logits_all,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def llama_cpp_logprobs(path, ids, context, stride, threads):
    model = llama(path, context, threads, logits_all=True)
    logprobs = []
    for begin, end, first in windows(len(ids), context, stride):
        model.reset()
        model.eval(ids[begin:end])
        logp = log_softmax(model.scores[: end - begin])
        logprobs += window_logprobs(ids, begin, end, first, logp)
    return {"token_logprob": logprobs}


def llama_cpp_kl(path, reference, ids, context, stride, threads):
    """Per scored token: both files' log-probs of the true token, KL(reference || file) and top-1 agreement."""
    model, ref = llama(path, context, threads, logits_all=True), llama(reference, context, threads, logits_all=True)
    out = {"token_logprob": [], "reference_logprob": [], "kl": [], "top1": []}
    for begin, end, first in windows(len(ids), context, stride):
        rows = slice(first - begin - 1, end - begin - 1)  # the positions that predict ids[first:end]
        logp = {}
        for name, runner in (("file", model), ("reference", ref)):
            runner.reset()
            runner.eval(ids[begin:end])
            logp[name] = log_softmax(runner.scores[rows])
        p_ref = np.exp(logp["reference"])
        out["kl"] += (p_ref * (logp["reference"] - logp["file"])).sum(axis=-1).tolist()
        out["top1"] += (logp["reference"].argmax(axis=-1) == logp["file"].argmax(axis=-1)).astype(int).tolist()
        targets = np.asarray(ids[first:end])
        out["token_logprob"] += logp["file"][np.arange(len(targets)), targets].tolist()
        out["reference_logprob"] += logp["reference"][np.arange(len(targets)), targets].tolist()
    return out


def prompt_ids(model, n_tokens):
    """A fixed, tokenizer-independent prompt: ordinary-token ids spread over the vocabulary."""
    n_vocab = model.n_vocab()
    return [1000 + (i * 7919) % (n_vocab - 1000) for i in range(n_tokens)]


def prompt_seconds(model, prompt):
    model.reset()
    start = time.perf_counter()
    model.eval(prompt)
    return time.perf_counter() - start


def generation_seconds(model, prompt, gen_tokens):
    """Seconds for ``gen_tokens`` greedy single-token steps after a short prompt."""
    model.reset()
    model.eval(prompt)
    start = time.perf_counter()
    for _ in range(gen_tokens):
        model.eval([int(np.argmax(model.scores[model.n_tokens - 1]))])
    return time.perf_counter() - start


def speed(path, threads, prompt_tokens, gen_tokens, repeats):
    model = llama(path, prompt_tokens + gen_tokens + 16, threads, logits_all=False)
    prompt = prompt_ids(model, prompt_tokens)
    short = prompt[:16]
    prompt_seconds(model, prompt)  # warm-up
    pp = statistics.median(prompt_seconds(model, prompt) for _ in range(repeats))
    tg = statistics.median(generation_seconds(model, short, gen_tokens) for _ in range(repeats))
    return {
        "prompt_tokens_per_s": prompt_tokens / pp,
        "gen_tokens_per_s": gen_tokens / tg,
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "repeats": repeats,
    }


def read_ids(path):
    data = json.loads(Path(path).read_text())
    ids = data["token_ids"] if isinstance(data, dict) else data
    return [int(i) for i in ids]


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", choices=("transformers", "llama.cpp"))
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("token_ids", nargs="?")
    parser.add_argument("context", nargs="?", type=int)
    parser.add_argument("stride", nargs="?", type=int)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--kl-against", type=Path, help="reference GGUF (llama.cpp): per-token KL against its logits")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.speed == bool(args.runtime):
        parser.error("give exactly one of --runtime and --speed")
    if args.runtime and args.stride is None:
        parser.error("--runtime needs GGUF_FILE TOKEN_IDS.json CONTEXT STRIDE")
    if args.kl_against and args.runtime != "llama.cpp":
        parser.error("--kl-against needs --runtime llama.cpp")
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.speed:
        result = speed(args.gguf, args.threads, args.prompt_tokens, args.gen_tokens, args.repeats)
    elif args.runtime == "transformers":
        result = transformers_logprobs(args.gguf, read_ids(args.token_ids), args.context, args.stride)
    elif args.kl_against:
        result = llama_cpp_kl(
            args.gguf, args.kl_against, read_ids(args.token_ids), args.context, args.stride, args.threads
        )
    else:
        result = llama_cpp_logprobs(args.gguf, read_ids(args.token_ids), args.context, args.stride, args.threads)
    if "token_logprob" in result:
        result["perplexity"] = math.exp(-sum(result["token_logprob"]) / len(result["token_logprob"]))
    result["quantsense_imported"] = "quantsense" in sys.modules
    print(json.dumps(result))


if __name__ == "__main__":
    main()
