"""Matplotlib figures written as PNG files."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _yerr(rows, value, low, high):
    values = np.array([r[value] for r in rows])
    return values, np.vstack([values - np.array([r[low] for r in rows]), np.array([r[high] for r in rows]) - values])


def sensitivity_bars(rows: list[dict], path: str | Path, title: str = "Per-block quantization sensitivity") -> Path:
    """Grouped bars per unit and bit-width: accuracy drop (points) and mean KL, each with 95 % CIs."""
    rows = [r for r in rows if r["view"] == "only"]
    units = list(dict.fromkeys(r["unit"] for r in rows))
    bits = sorted({r["bits"] for r in rows}, reverse=True)
    stacked = len(units) > 12  # many units: one panel above the other, full width each
    if stacked:
        fig, axes = plt.subplots(2, 1, figsize=(min(22, 4 + 0.55 * len(units)), 8))
    else:
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(units)), 4.2))
    width = 0.8 / len(bits)
    x = np.arange(len(units))
    loss = "delta_nll" if "delta_nll" in rows[0] else "drop"
    for k, b in enumerate(bits):
        chosen = [next(r for r in rows if r["unit"] == u and r["bits"] == b) for u in units]
        drop, drop_err = _yerr(chosen, loss, f"{loss}_ci_low", f"{loss}_ci_high")
        kl, kl_err = _yerr(chosen, "kl_mean", "kl_ci_low", "kl_ci_high")
        offset = (k - (len(bits) - 1) / 2) * width
        axes[0].bar(x + offset, drop, width, yerr=drop_err, capsize=3, label=f"INT{b}")
        axes[1].bar(x + offset, kl, width, yerr=kl_err, capsize=3, label=f"INT{b}")
    axes[0].axhline(0, color="black", linewidth=0.8)
    axes[0].set_ylabel("accuracy drop vs FP32 (points, 95% CI)" if loss == "drop"
                       else "NLL increase per token vs FP32 (nats, 95% CI)")
    axes[1].set_ylabel("mean KL(FP32 || quantized) (nats, 95% CI, log)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(x, units, rotation=45 if len(units) > 8 else 0, ha="right" if len(units) > 8 else "center",
                      fontsize=8 if stacked else None)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_BLOCK_UNIT = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def _block_grid(rows: list[dict], metric: str):
    """For module-path units: (blocks, sub-unit names, {bits: grid[block, sub-unit]}), else None."""
    parsed = [_BLOCK_UNIT.match(r["unit"]) for r in rows]
    if not parsed or not all(parsed):
        return None
    blocks = sorted({int(m.group(2)) for m in parsed})
    subs = list(dict.fromkeys(m.group(3) for m in parsed))
    grids = {}
    for r, m in zip(rows, parsed):
        grid = grids.setdefault(r["bits"], np.full((len(blocks), len(subs)), np.nan))
        grid[blocks.index(int(m.group(2))), subs.index(m.group(3))] = r[metric]
    return blocks, subs, grids


def sensitivity_heatmap(rows: list[dict], path: str | Path, metric: str = "kl_mean", view: str = "only") -> Path:
    """``metric`` on a log colour scale: block x sub-unit panels per bit-width for linear units,
    else unit x bit-width."""
    rows = [r for r in rows if r["view"] == view]
    blocked = _block_grid(rows, metric)
    if blocked is not None:
        blocks, subs, grids = blocked
        panels = sorted(grids, reverse=True)
        fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 0.9 * len(subs) * len(panels), 2 + 0.3 * len(blocks)),
                                 squeeze=False)
        values = np.log10(np.clip(np.concatenate([g.ravel() for g in grids.values()]), 1e-8, None))
        vmin, vmax = np.nanmin(values), np.nanmax(values)
        for ax, bits in zip(axes[0], panels):
            image = ax.imshow(np.log10(np.clip(grids[bits], 1e-8, None)), aspect="auto", cmap="magma_r", vmin=vmin, vmax=vmax)
            ax.set_xticks(range(len(subs)), subs, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks], fontsize=7)
            ax.set_title(f"INT{bits}")
        fig.colorbar(image, ax=axes[0].tolist()).set_label(f"log10 {metric}")
        fig.suptitle(f"{metric} by block and linear unit ({view} view)")
    else:
        units = list(dict.fromkeys(r["unit"] for r in rows))
        bits = sorted({r["bits"] for r in rows}, reverse=True)
        grid = np.full((len(units), len(bits)), np.nan)
        for r in rows:
            grid[units.index(r["unit"]), bits.index(r["bits"])] = r[metric]
        fig, ax = plt.subplots(figsize=(3 + 1.2 * len(bits), 1.5 + 0.28 * len(units)))
        image = ax.imshow(np.log10(np.clip(grid, 1e-8, None)), aspect="auto", cmap="magma_r")
        ax.set_xticks(range(len(bits)), [f"INT{b}" for b in bits])
        ax.set_yticks(range(len(units)), units, fontsize=7)
        fig.colorbar(image, ax=ax).set_label(f"log10 {metric}")
        ax.set_title(f"{metric} by unit and bit-width ({view} view)")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def frontier_plot(rows: list[dict], path: str | Path, fp32_accuracy: float | None = None) -> Path:
    """Measured accuracy and KL against average bits per weight: allocated, uniform and hand plans."""
    styles = {"allocated": ("o-", "allocated (MILP)"), "uniform": ("s--", "uniform"), "hand": ("^", "hand strategies")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lm = bool(rows) and "perplexity" in rows[0]
    for kind, (style, label) in styles.items():
        chosen = sorted((r for r in rows if r.get("kind") == kind), key=lambda r: r["avg_bits"])
        if not chosen:
            continue
        x = [r["avg_bits"] for r in chosen]
        if lm:
            axes[0].plot(x, [r["perplexity"] for r in chosen], style, label=label)
        else:
            acc = np.array([r["accuracy"] for r in chosen])
            err = np.vstack([np.array([r["drop_ci_high"] for r in chosen]) - np.array([r["drop"] for r in chosen]),
                             np.array([r["drop"] for r in chosen]) - np.array([r["drop_ci_low"] for r in chosen])])
            axes[0].errorbar(x, acc, yerr=err, fmt=style, capsize=3, label=label)
        axes[1].plot(x, [max(r["kl_mean"], 1e-8) for r in chosen], style, label=label)
        if kind == "hand":
            for r in chosen:
                y = r["perplexity"] if lm else r["accuracy"]
                axes[0].annotate(r["plan"], (r["avg_bits"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if fp32_accuracy is None and rows:
        fp32_accuracy = rows[0]["perplexity"] / rows[0]["ppl_ratio"] if lm else rows[0]["accuracy"] + rows[0]["drop"]
    axes[0].axhline(fp32_accuracy, color="gray", linestyle=":", label="FP32")
    if lm:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("measured perplexity (log)" if lm else "measured accuracy % (95% CI of the drop)")
    axes[1].set_ylabel("measured mean KL(FP32 || plan), log")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("average stored bits per weight (block linear weights, scales included)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy / size frontier")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
