"""Matplotlib figures written as PNG files."""

from __future__ import annotations

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
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(units) * 2), 4.2))
    width = 0.8 / len(bits)
    x = np.arange(len(units))
    for k, b in enumerate(bits):
        chosen = [next(r for r in rows if r["unit"] == u and r["bits"] == b) for u in units]
        drop, drop_err = _yerr(chosen, "drop", "drop_ci_low", "drop_ci_high")
        kl, kl_err = _yerr(chosen, "kl_mean", "kl_ci_low", "kl_ci_high")
        offset = (k - (len(bits) - 1) / 2) * width
        axes[0].bar(x + offset, drop, width, yerr=drop_err, capsize=3, label=f"INT{b}")
        axes[1].bar(x + offset, kl, width, yerr=kl_err, capsize=3, label=f"INT{b}")
    axes[0].axhline(0, color="black", linewidth=0.8)
    axes[0].set_ylabel("accuracy drop vs FP32 (points, 95% CI)")
    axes[1].set_ylabel("mean KL(FP32 || quantized) (nats, 95% CI, log)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(x, units, rotation=30 if len(units) > 8 else 0, ha="right" if len(units) > 8 else "center")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sensitivity_heatmap(rows: list[dict], path: str | Path, metric: str = "kl_mean", view: str = "only") -> Path:
    """Unit x bit-width heatmap of ``metric`` (log colour scale for KL)."""
    rows = [r for r in rows if r["view"] == view]
    units = list(dict.fromkeys(r["unit"] for r in rows))
    bits = sorted({r["bits"] for r in rows}, reverse=True)
    grid = np.full((len(units), len(bits)), np.nan)
    for r in rows:
        grid[units.index(r["unit"]), bits.index(r["bits"])] = r[metric]
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(bits), 1.5 + 0.28 * len(units)))
    shown = np.log10(np.clip(grid, 1e-8, None)) if metric.startswith("kl") else grid
    image = ax.imshow(shown, aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(bits)), [f"INT{b}" for b in bits])
    ax.set_yticks(range(len(units)), units, fontsize=7)
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label(f"log10 {metric}" if metric.startswith("kl") else metric)
    ax.set_title(f"{metric} by unit and bit-width ({view} view)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
