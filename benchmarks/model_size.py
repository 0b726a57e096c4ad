"""How quantsense grows with the model: peak memory and seconds per evaluation from 135M to an 8B-shaped Llama, and
the cost model that predicts a whole allocation's time for 8B and 70B (issue #32).

Each command runs as a user runs it, in a fresh process (``python -m quantsense ...``, the model streamed from its
files where --stream-blocks auto decides so), on few tokens (one window of ``--tokens``: the smallest that gives
the sweep its 8 bootstrap blocks of 128 tokens). Per model: ``baseline`` (one full forward, the FP32 reference),
``sensitivity --unit linear --blocks 0 LAST --formats q4_K iq4_xs`` (the linears of the first and the last block:
block 0's evaluations run every block, the last block's only that block, the prefix being replayed; on a model whose
rows are not multiples of 256 the formats' 256-weight blocks fit few linears, and the sweep says which it skipped)
and ``export --format gguf`` of a plan (every block at q4_0) with its llama.cpp check. Peak RSS is quantsense's own
process's (``ru_maxrss``); the checks it runs in fresh processes are reported apart, their RSS sampled every 0.2 s
(a child's own ``ru_maxrss`` would start from its parent's, copied at the fork); the seconds are the engine's own per
evaluation.

The cost model: a forward costs ``c`` seconds per token per billion parameters (from the baseline's one full
forward: the FP32 reference), so an allocation's sweep costs about ``c * tokens * params * (forwards)``, where a
reduced sweep of ``U`` linear units measures each once on a quarter of its tokens (its first data segment) and a
unit at depth d costs the blocks from d on (half a forward on average, the prefix replayed), plus its plan checks.
The GPU line is a prediction from an assumed effective throughput (no GPU was lent to measure one), and says so.

    python benchmarks/model_size.py --model smollm2=PATH.gguf l2=DIR l32=DIR --data wiki.test.raw --out results/size
    python benchmarks/model_size.py --run sensitivity --model DIR ...   # one command, then its peak RSS and seconds
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

PEAK = """
import json, os, resource, sys, threading, time
import quantsense.cli


def children_rss():
    \"\"\"RSS of each live child process (the checks quantsense runs in fresh processes), from /proc.\"\"\"
    me, found = str(os.getpid()), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] != me:
                    continue
            with open(f"/proc/{pid}/status") as f:
                found[pid] = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration, IndexError):
            pass
    return found


checks = [0]


def sample():
    while True:
        checks[0] = max(checks[0], sum(children_rss().values()))
        time.sleep(0.2)


threading.Thread(target=sample, daemon=True).start()
code = quantsense.cli.main(sys.argv[1:])
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "peak": own, "checks_peak": checks[0]}))
"""
COMPUTED = re.compile(r"(\d+) evaluation\(s\) computed in ([\d.]+) s")
GPU_TFLOPS = 200.0  # an assumed effective H100 bf16 throughput for these matrix products (not measured)
GPU_MEMORY = 80e9  # one H100's memory: a model's bf16 weights beyond it are streamed over PCIe each forward
PCIE_BYTES_PER_S = 25e9  # an assumed effective host-to-GPU copy rate (not measured)


def params_of(model: str) -> tuple[int, int]:
    """(parameters, blocks) from the model's config (a GGUF's, through transformers)."""
    import torch
    import transformers

    path = Path(model)
    kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    config = transformers.AutoConfig.from_pretrained(path.parent if kwargs else path, **kwargs)
    with torch.device("meta"):
        built = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in built.parameters()), config.num_hidden_layers


def run(argv: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed:\n{proc.stderr[-3000:]}")
    *printed, last = proc.stdout.strip().splitlines()
    found = json.loads(last)
    if found["code"] != 0:
        raise SystemExit(f"{' '.join(argv)} exited {found['code']}:\n{proc.stderr[-3000:]}")
    computed = COMPUTED.search(proc.stdout)
    evaluations, seconds = (int(computed.group(1)), float(computed.group(2))) if computed else (0, 0.0)
    return {
        "argv": argv,
        "wall_s": wall,
        "peak_gb": found["peak"] / 1e9,
        "checks_peak_gb": found["checks_peak"] / 1e9,
        "evaluations": evaluations,
        "eval_s": seconds,
        "stdout": "\n".join(printed),
    }


def commands(name: str, model: str, blocks: int, data: str, tokens: int, out: Path) -> dict[str, list[str]]:
    """The three commands measured per model, as a user types them."""
    common = ["--model", model, "--task", "wikitext", "--data", data, "--max-tokens", str(tokens), "--context"]
    common += [str(tokens), "--stride", str(tokens), "--device", "cpu", "--store", str(out / f"{name}.sqlite")]
    plan = out / f"{name}-plan.json"
    plan.write_text(json.dumps({"blocks": {str(b): {"format": "q4_0"} for b in range(blocks)}}))
    sweep = ["--unit", "linear", "--blocks", "0", str(blocks - 1), "--formats", "q4_K", "iq4_xs"]
    return {
        "baseline": ["baseline", *common, "--fresh", "--out", str(out / f"{name}-baseline")],
        "sensitivity": ["sensitivity", *common, *sweep, "--out", str(out / f"{name}-sensitivity")],
        "export": ["export", str(plan), *common, "--format", "gguf", "--out", str(out / f"{name}.gguf")],
    }


def measure(name: str, model: str, data: str, tokens: int, out: Path, done: dict, save) -> dict:
    """One model's row. ``done`` is the row an interrupted run left (model_size.json): a command it measured with the
    same arguments is not run again; ``save(row)`` runs after each command. Each command's own output is saved as
    NAME-COMMAND.txt."""
    params, blocks = params_of(model)
    row = {"model": name, "params": params, "blocks": blocks, "tokens": tokens}
    for key, argv in commands(name, model, blocks, data, tokens, out).items():
        if done.get(key, {}).get("argv") == argv:
            row[key] = done[key]
            continue
        row[key] = run(argv)
        printed = f"$ quantsense {' '.join(argv)}\n{row[key].pop('stdout')}\n{peak_line(row[key])}\n"
        (out / f"{name}-{key}.txt").write_text(printed)
        save(row)
    row["s_per_token_per_b"] = row["baseline"]["eval_s"] / tokens / (params / 1e9)
    save(row)
    return row


def allocation_seconds(c: float, params: float, blocks: int, tokens: int = 4096, candidates: int = 11) -> float:
    """A reduced allocation sweep's forward cost: every linear unit (7 per block) once at its anchor on the first of 4
    segments, half a forward each on average (the prefix replayed), plus the FP32 reference and about as many plan
    checks and deeper measurements again as units (what the SmolLM2 runs spent)."""
    units = 7 * blocks
    forwards = 1 + 2 * units * 0.5 / 4
    return c * tokens * (params / 1e9) * forwards


def peak_line(found: dict) -> str:
    checks = (
        f"; the checks it ran in fresh processes (llama.cpp, transformers) peaked at {found['checks_peak_gb']:.2f} GB, "
        "llama.cpp's RSS counting the pages of the model files it memory-maps"
        if found["checks_peak_gb"] > 0.1
        else ""
    )
    return (
        f"[{found['argv'][0]}: quantsense's peak RSS {found['peak_gb']:.2f} GB{checks}; {found['wall_s']:.0f} s in all]"
    )


def streamed_label(out: Path, name: str) -> str:
    """Whether the model's baseline said it streamed its blocks (its saved output)."""
    return "yes" if "Blocks streamed from" in (out / f"{name}-baseline.txt").read_text() else "no (whole)"


def sweep_seconds(row: dict) -> float:
    """The cost model's prediction of the row's sensitivity sweep (``--blocks 0 LAST``: half its evaluations quantize a
    unit of block 0 and run every block, half one of the last block and run that block alone, the prefix replayed)."""
    forwards = row["sensitivity"]["evaluations"] / 2 * (1 + 1 / row["blocks"])
    return row["s_per_token_per_b"] * row["tokens"] * row["params"] / 1e9 * forwards


def run_one(argv: list[str]) -> None:
    """``--run QUANTSENSE ARGS...``: one command, as a user runs it, then its peak RSS and seconds."""
    found = run(argv)
    print(found["stdout"].rstrip())
    print(peak_line(found))


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--run"]:
        return run_one(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="NAME=PATH, smallest first")
    p.add_argument("--data", required=True)
    p.add_argument("--tokens", type=int, default=1040)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "model_size.json"
    earlier = {r["model"]: r for r in json.loads(record.read_text())} if record.is_file() else {}
    rows: list[dict] = []

    def save(row: dict) -> None:
        kept = [r for r in rows if r["model"] != row["model"]] + [row]
        kept += [r for name, r in earlier.items() if name not in {k["model"] for k in kept}]
        record.write_text(json.dumps(kept, indent=1))

    for spec in args.model:
        name, _, path = spec.partition("=")
        rows.append(measure(name, path, args.data, args.tokens, out, earlier.get(name, {}), save))
        print(f"measured {name} (outputs: {out}/{name}-*.txt)", file=sys.stderr, flush=True)
    print(
        f"| model | parameters | blocks | blocks streamed | peak RSS baseline | sensitivity | export (its checks) | full forward, "
        f"{args.tokens} tokens | ms per token per B params | sensitivity evaluations | the cost model's prediction "
        "of them | export, in all |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, sens, exp = r["baseline"], r["sensitivity"], r["export"]
        print(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {r['blocks']} | {streamed_label(out, r['model'])} | "
            f"{b['peak_gb']:.2f} GB | "
            f"{sens['peak_gb']:.2f} GB | {exp['peak_gb']:.2f} GB ({exp['checks_peak_gb']:.2f} GB) | {b['eval_s']:.1f} s "
            f"| {r['s_per_token_per_b'] * 1e3:.2f} | {sens['evaluations']} in {sens['eval_s']:.0f} s "
            f"({sens['eval_s'] / max(1, sens['evaluations']):.1f} s each) | {sweep_seconds(r):.0f} s | "
            f"{exp['wall_s']:.0f} s |"
        )
    print(
        "Peak RSS is quantsense's own process; in brackets, the export's checks in fresh processes (llama.cpp's RSS "
        "counts the pages of the model files it memory-maps); --stream-blocks auto streams a model whose weights in "
        "float32 take over half of memory, and loads a smaller one whole. The cost model's prediction of a sweep: c (the row's own "
        "ms per token per B params) x tokens x parameters x the forwards it runs (half its evaluations on the first "
        "block run every block, half on the last run one block), weight quantization left out."
    )
    c = rows[-1]["s_per_token_per_b"]  # the largest model's: streaming's file reads included
    print(f"\ncost model: c = {c * 1e3:.2f} ms per token per billion parameters (CPU, measured on {rows[-1]['model']})")
    gpu_c = 2 / (GPU_TFLOPS * 1e12) * 1e9  # 2 FLOP per parameter per token
    for label, params, blocks in (("8B", 8.03e9, 32), ("70B", 70.6e9, 80)):
        cpu = allocation_seconds(c, params, blocks)
        gpu = allocation_seconds(gpu_c, params, blocks)
        streamed = max(0.0, 2 * params - GPU_MEMORY)  # bf16 bytes that do not fit the GPU, copied each forward
        per_forward = streamed / PCIE_BYTES_PER_S
        gpu += per_forward * allocation_seconds(1.0, 1e9, blocks, tokens=1)  # the same number of forwards
        print(
            f"{label}: predicted reduced-sweep allocation at 4,096 selection tokens: CPU (this machine, as measured on "
            f"{rows[-1]['model']}: its file reads included) {cpu / 3600:.1f} h; one GPU {gpu / 60:.1f} min of matrix products and "
            f"weight copies (predicted from an assumed {GPU_TFLOPS:.0f} TFLOP/s"
            + (
                f" and {streamed / 1e9:.0f} GB streamed per forward at {PCIE_BYTES_PER_S / 1e9:.0f} GB/s"
                if streamed
                else ""
            )
            + "; weight quantization and file reads left out; no GPU was lent to measure it)"
        )


if __name__ == "__main__":
    main()
