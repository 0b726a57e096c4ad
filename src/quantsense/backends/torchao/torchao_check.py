"""Reload an exported checkpoint in a fresh process with transformers + torchao only, no quantsense.

    python torchao_check.py EXPORT_DIR FP32_DIR DATA.tsv [LIMIT]
    python torchao_check.py --causal EXPORT_DIR TEXT_FILE MAX_TOKENS CONTEXT STRIDE

Prints one JSON object. Classification: per-example predictions of the exported model (data
file order) and CPU latency per batch of 32 for the exported and the FP32 model, side by side.
Causal: the per-token log-probabilities of the exported model over the same sliding windows
quantsense uses (first MAX_TOKENS tokens; each window scores the tokens no earlier one did).
"""

import csv
import json
import statistics
import sys
import time

import torch
import transformers


def read_texts(path, limit):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(
            handle,
            delimiter="\t" if path.endswith(".tsv") else ",",
            quoting=csv.QUOTE_NONE if path.endswith(".tsv") else csv.QUOTE_MINIMAL,
        )
        rows = [row.get("sentence") or row.get("text") for row in reader]
    return [r.strip() for r in rows[:limit]]


@torch.inference_mode()
def predictions(model, tokenizer, texts, batch_size=64):
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i])["input_ids"]))
    preds = [0] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
        for i, p in zip(idx, model(**enc).logits.argmax(dim=1).tolist()):
            preds[i] = p
    return preds


@torch.inference_mode()
def latency(model, enc, repeats=15):
    for _ in range(3):
        model(**enc)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**enc)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def causal_main(export_dir, text_file, max_tokens, context, stride, first_token=0):
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=False).eval()
    with open(text_file, encoding="utf-8") as handle:
        ids = tokenizer(handle.read(), add_special_tokens=False)["input_ids"][first_token : first_token + max_tokens]
    logprobs, scored_until, begin = [], 1, 0
    while scored_until < len(ids):
        end = min(begin + context, len(ids))
        window = torch.tensor([ids[begin:end]])
        logp = torch.log_softmax(model(window, use_cache=False).logits[0].float(), dim=-1)
        for position in range(max(scored_until, begin + 1), end):  # a window's first token has no context in it
            logprobs.append(logp[position - begin - 1, ids[position]].item())
        scored_until = end
        if end == len(ids):
            break
        begin += stride
    print(
        json.dumps(
            {
                "token_logprob": logprobs,
                "weight_class": ", ".join(sorted({type(p).__name__ for p in model.parameters()} - {"Parameter"}))
                or "Parameter",
                "quantsense_imported": "quantsense" in sys.modules,
            }
        )
    )


def main():
    if sys.argv[1] == "--causal":
        export_dir, text_file, max_tokens, context, stride = sys.argv[2:7]
        first = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        return causal_main(export_dir, text_file, int(max_tokens), int(context), int(stride), first)
    export_dir, fp32_dir, data = sys.argv[1:4]
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export_dir, trust_remote_code=False).eval()
    fp32 = transformers.AutoModelForSequenceClassification.from_pretrained(
        fp32_dir, trust_remote_code=False, dtype=torch.float32
    ).eval()
    texts = read_texts(data, limit)
    enc = tokenizer(texts[:32], padding=True, return_tensors="pt")
    exported_s, fp32_s = [], []
    for _ in range(3):  # interleaved, so both see the same machine load
        exported_s.append(latency(model, enc))
        fp32_s.append(latency(fp32, enc))
    print(
        json.dumps(
            {
                "predictions": predictions(model, tokenizer, texts),
                "latency_exported_s": min(exported_s),
                "latency_fp32_s": min(fp32_s),
                "weight_class": ", ".join(sorted({type(p).__name__ for p in model.parameters()} - {"Parameter"}))
                or "Parameter",
                "quantsense_imported": "quantsense" in sys.modules,
                "batch_shape": list(enc["input_ids"].shape),
            }
        )
    )


if __name__ == "__main__":
    main()
