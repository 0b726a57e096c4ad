"""Regenerate the README's figures from the tool's own output (never typed by hand).

Each README section between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` is replaced by the
command that produced it and what that command printed. Run from the repository root:

    python scripts/update_readme.py [name ...]

Models and data come from ../shared/assets (or $QUANTSENSE_ASSETS).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = os.environ.get("QUANTSENSE_ASSETS", "../shared/assets")
MODEL = f"{ASSETS}/models/minilm-l6-sst2"
DATA = f"{ASSETS}/sst2/validation.tsv"

SECTIONS = {
    "study": (f"quantsense run --model {MODEL} --data {DATA} --out results/minilm-sst2 --quiet --fresh",
              [("results/minilm-sst2/sensitivity.png", "docs/figures/sensitivity.png"),
               ("results/minilm-sst2/heatmap.png", "docs/figures/heatmap.png")]),
}


def run_section(name: str) -> str:
    command, copies = SECTIONS[name]
    proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{command} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for src, dst in copies:
        (REPO / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / src, REPO / dst)
    output = proc.stdout.strip()
    return f"```console\n$ {command}\n{output}\n```"


def main(names: list[str]) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    for name in names or list(SECTIONS):
        block = run_section(name)
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"README has no <!-- BEGIN {name} --> ... <!-- END {name} --> section")
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
        print(f"updated section {name}")
    readme.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
