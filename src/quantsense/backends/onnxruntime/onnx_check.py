"""Run an exported ONNX model in a fresh process with ONNX Runtime and transformers' tokenizer only, no quantsense.

    python onnx_check.py EXPORT_DIR INPUTS.json

INPUTS.json holds ``texts`` (the examples), ``max_length`` (the tokenizer's truncation) and ``batches`` (lists of example
positions: the simulation's own batches, so that a dynamic per-tensor activation scale sees the same tensor). Prints
one JSON object: each example's logits (in ``texts`` order) when run in those batches, the predictions when each
example is run alone (batch 1, as a service would), the operators the graph holds, and whether quantsense was imported.
"""

import collections
import json
import sys

import numpy as np
import onnx
import onnxruntime
import transformers


def main():
    export_dir, inputs_file = sys.argv[1:3]
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
    model_file = f"{export_dir}/model.onnx"
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]
    with open(inputs_file, encoding="utf-8") as handle:
        inputs = json.load(handle)
    texts, batches = inputs["texts"], inputs["batches"]

    def run(positions):
        enc = tokenizer(
            [texts[i] for i in positions],
            padding=True,
            truncation=True,
            max_length=inputs["max_length"],
            return_tensors="np",
        )
        return session.run(["logits"], {k: enc[k].astype(np.int64) for k in wanted})[0]

    logits = np.zeros((len(texts), 0), dtype=np.float32)
    for positions in batches:
        out = run(positions)
        if logits.shape[1] == 0:
            logits = np.zeros((len(texts), out.shape[1]), dtype=np.float32)
        logits[positions] = out
    alone = [int(run([i])[0].argmax()) for i in range(len(texts))]
    ops = collections.Counter(node.op_type for node in onnx.load(model_file, load_external_data=False).graph.node)
    print(
        json.dumps(
            {
                "logits": logits.tolist(),
                "predictions_alone": alone,
                "operators": {
                    k: ops[k]
                    for k in (
                        "MatMul",
                        "MatMulInteger",
                        "DynamicQuantizeLinear",
                        "MatMulNBits",
                        "Gather",
                        "DequantizeLinear",
                    )
                    if ops[k]
                },
                "onnxruntime": onnxruntime.__version__,
                "quantsense_imported": "quantsense" in sys.modules,
            }
        )
    )


if __name__ == "__main__":
    main()
