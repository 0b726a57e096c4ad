"""Sentences per second of an ONNX export against PyTorch FP32 and ONNX Runtime FP32, measured side by side.

    python benchmarks/onnx_speed.py --model ../shared/assets/models/minilm-l6-sst2 \
        --data ../shared/assets/sst2/validation.tsv --export results/minilm-ort-7bits [more exports]

Each ``--export`` is a folder written by ``quantsense export PLAN --format onnx``. The FP32 ONNX model is exported here
the same way (``torch.onnx.export``, no quantization). For each thread count (1 and 2) and batch size (1 and 32),
the engines (PyTorch FP32, ONNX Runtime FP32, each export) take turns, ``--repeats`` times over the same ``--sentences`` sentences (file order, each batch
padded to its longest sentence); the median pass of each is reported, with each engine's size on disk beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def read_sentences(path: str, count: int) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0].strip() for line in lines[:count]]


def batches(tokenizer, sentences: list[str], size: int) -> list[dict]:
    return [
        dict(tokenizer(sentences[i : i + size], padding=True, truncation=True, max_length=512, return_tensors="np"))
        for i in range(0, len(sentences), size)
    ]


def torch_runner(model, threads: int):
    import torch

    def run(inputs):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for batch in inputs:
                model(**{k: torch.from_numpy(v) for k, v in batch.items()})

    return run


def ort_runner(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def run(inputs):
        for batch in inputs:
            session.run(["logits"], {k: batch[k].astype(np.int64) for k in wanted})

    return run


def fp32_onnx(model, tokenizer, folder: str) -> Path:
    """The unquantized model exported exactly as quantsense exports a plan (before quantizing)."""
    from quantsense.exporters.base import ExportSource
    from quantsense.backends.onnxruntime.writer import export_fp32

    path = Path(folder) / "fp32.onnx"
    export_fp32(ExportSource("fp32", model, tokenizer, None, "float32", None), path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the FP32 Hugging Face model folder the plan was made from")
    parser.add_argument("--data", required=True, help="TSV with a 'sentence' column (SST-2)")
    parser.add_argument(
        "--export", required=True, nargs="+", help="folders from 'quantsense export PLAN --format onnx'"
    )
    parser.add_argument("--sentences", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exports = {Path(folder).name: Path(folder) / "model.onnx" for folder in args.export}
    for folder, path in zip(args.export, exports.values()):
        if not path.is_file():
            print(
                f"error: {path} not found; write it with quantsense export PLAN --format onnx --out {folder}",
                file=sys.stderr,
            )
            return 2
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32).eval()
    sentences = read_sentences(args.data, args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = fp32_onnx(model, tokenizer, tmp)
        sizes = {
            "PyTorch FP32": sum(p.stat().st_size for p in Path(args.model).glob("*.safetensors")),
            "ONNX Runtime FP32": fp32_path.stat().st_size,
            **{n: p.stat().st_size for n, p in exports.items()},
        }
        print(f"{len(sentences)} sentences, median of {args.repeats} alternating passes; torch {torch.__version__}")
        print(
            "| threads | batch | engine | sentences/s | x PyTorch FP32 | x ONNX Runtime FP32 | size MB | x FP32 size |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for threads in (1, 2):
            engines = {
                "PyTorch FP32": torch_runner(model, threads),
                "ONNX Runtime FP32": ort_runner(fp32_path, threads),
                **{n: ort_runner(p, threads) for n, p in exports.items()},
            }
            for size in (1, 32):
                inputs = batches(tokenizer, sentences, size)
                seconds = {name: [] for name in engines}
                for run in engines.values():  # warm-up
                    run(inputs[:2])
                for _ in range(args.repeats):
                    for name, run in engines.items():
                        start = time.perf_counter()
                        run(inputs)
                        seconds[name].append(time.perf_counter() - start)
                rate = {name: len(sentences) / statistics.median(s) for name, s in seconds.items()}
                for name in engines:
                    print(
                        f"| {threads} | {size} | {name} | {rate[name]:.1f} | {rate[name] / rate['PyTorch FP32']:.2f} | "
                        f"{rate[name] / rate['ONNX Runtime FP32']:.2f} | {sizes[name] / 1e6:.2f} | "
                        f"{sizes[name] / sizes['PyTorch FP32']:.3f} |"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
