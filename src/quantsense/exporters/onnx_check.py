"""Run an exported ONNX model in a fresh process with ONNX Runtime and transformers' tokenizer only, no quantsense.

    python onnx_check.py EXPORT_DIR DATA.tsv BATCHES.json

Prints one JSON object: each example's logits (data file order) when the examples are run in the batches listed in
BATCHES.json (lists of example positions: the simulation's own batches, so that a dynamic per-tensor activation scale
sees the same tensor), the predictions when each example is run alone (batch 1, as a service would), the operators
the graph holds, and whether quantsense was imported.
"""

import collections
import csv
import json
import sys

import numpy as np
import onnx
import onnxruntime
import transformers


def read_texts(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row.get("sentence") or row.get("text")).strip() for row in reader]


def main():
    export_dir, data, batches_file = sys.argv[1:4]
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
    model_file = f"{export_dir}/model.onnx"
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    texts = read_texts(data)
    with open(batches_file, encoding="utf-8") as handle:
        batches = json.load(handle)

    def run(positions):
        enc = tokenizer([texts[i] for i in positions], padding=True, truncation=True, max_length=512, return_tensors="np")
        return session.run(["logits"], {k: enc[k].astype(np.int64) for k in wanted})[0]

    logits = np.zeros((len(texts), 0), dtype=np.float32)
    for positions in batches:
        out = run(positions)
        if logits.shape[1] == 0:
            logits = np.zeros((len(texts), out.shape[1]), dtype=np.float32)
        logits[positions] = out
    alone = [int(run([i])[0].argmax()) for i in range(len(texts))]
    ops = collections.Counter(node.op_type for node in onnx.load(model_file, load_external_data=False).graph.node)
    print(json.dumps({
        "logits": logits.tolist(),
        "predictions_alone": alone,
        "operators": {k: ops[k] for k in ("MatMul", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits", "Gather",
                                          "DequantizeLinear") if ops[k]},
        "onnxruntime": onnxruntime.__version__,
        "quantsense_imported": "quantsense" in sys.modules,
    }))


if __name__ == "__main__":
    main()
