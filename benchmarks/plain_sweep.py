"""The plain way, written out independently of quantsense: for each (block, bits) deep-copy the model,
quantize the block's linear weights (symmetric per-output-channel round-to-nearest on torchao's grid),
evaluate every sentence in file order in batches of 32, print the accuracy.

    python benchmarks/plain_sweep.py --model DIR --data validation.tsv --bits 8 4
"""

from __future__ import annotations

import argparse
import copy
import csv

import torch
import transformers


def plain_quantize_(weight: torch.Tensor, bits: int) -> None:
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    scale = (weight.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2)).clamp(
        min=torch.finfo(torch.float32).smallest_normal
    )
    weight.copy_(torch.clamp(torch.round(weight * (1.0 / scale)), qmin, qmax) * scale)


@torch.inference_mode()
def plain_correct(model, tokenizer, texts, labels, names: list[str], bits: int, batch_size: int = 32) -> int:
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name in names:
        plain_quantize_(modules[name].weight, bits)
    correct = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=512, return_tensors="pt"
        )
        preds = model(**enc).logits.argmax(dim=1).tolist()
        correct += sum(int(p == y) for p, y in zip(preds, labels[start : start + batch_size]))
    return correct


def block_linears(model, prefix: str) -> list[list[str]]:
    blocks = dict(model.named_modules())[prefix]
    return [
        [f"{prefix}.{i}.{n}" for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        for i, block in enumerate(blocks)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--blocks-path", default="bert.encoder.layer")
    args = parser.parse_args()
    with open(args.data, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts, labels = [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    for bits in args.bits:
        for block, names in enumerate(block_linears(model, args.blocks_path)):
            correct = plain_correct(model, tokenizer, texts, labels, names, bits)
            print(f"block {block} int{bits}: {100 * correct / len(texts):.2f} %", flush=True)


if __name__ == "__main__":
    main()
