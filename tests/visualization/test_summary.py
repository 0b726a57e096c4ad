"""The frontier's printed plan lines: format counts per plan and, for linear units, per layer kind."""

import re
from collections import Counter

from quantsense.visualization.summary import frontier_text
from tests.visualization.fixtures import llm_frontier


def _parse_counts(text: str) -> Counter:
    return Counter({fmt: int(n) for fmt, n in re.findall(r"(\w+) x(\d+)", text)})


def test_linear_frontier_lines_count_every_unit_by_format_and_by_layer_kind():
    results = llm_frontier()
    text = frontier_text(results)
    for name, choice in results["frontier"]["choices"].items():
        line = next(l for l in text.splitlines() if l.startswith(f"{name}: "))
        assert _parse_counts(line[len(name) + 2:]) == Counter(choice.values())
        kinds_line = text.splitlines()[text.splitlines().index(line) + 1]
        assert kinds_line.startswith("  by layer kind: ")
        for part in kinds_line[len("  by layer kind: "):].split("; "):
            kind, counts = part.split(" ", 1)
            expected = Counter(fmt for unit, fmt in choice.items() if unit.split(".", 3)[3] == kind)
            assert _parse_counts(counts) == expected and sum(expected.values()) == 30


def test_block_frontier_lists_each_block_and_has_no_kind_line():
    results = llm_frontier()
    fr = results["frontier"]
    fr["unit"] = "block"
    fr["choices"] = {"allocated@5 bits/weight": {f"block {b}": ("q8_0" if b == 0 else "q5_0") for b in range(3)}}
    text = frontier_text(results)
    assert "allocated@5 bits/weight: block 0: q8_0, block 1: q5_0, block 2: q5_0" in text
    assert "by layer kind" not in text
