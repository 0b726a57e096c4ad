"""Cheap proxies of sensitivity, and how well each predicts the measured sweep.

- ``weight_error``: relative weight error ||W - Q(W)||^2 / ||W||^2 of the unit (no data at all).
- ``calib_kl``: mean KL(FP32 || quantized) on a small calibration subset (64-128 sentences drawn
  from another split, disjoint from the evaluation sentences).
- ``fisher``: sum over the unit's weights of F * (W - Q(W))^2, where F is the empirical Fisher
  diagonal: squared per-example gradients of the cross-entropy loss, averaged over the
  calibration subset (a second-order estimate of the loss increase).

:func:`proxy_correlations` reports the Spearman rank correlation of each proxy with the measured
full-set mean KL and accuracy drop, per bit-width and pooled, so a user knows when a proxy can
stand in for the full sweep.
"""

from __future__ import annotations

import numpy as np
import torch

from quantsense.evaluation.metrics import kl_per_example
from quantsense.sweeps.sweep import weight_error

PROXIES = ("weight_error", "calib_kl", "fisher")


def fisher_diagonal(model: torch.nn.Module, unit_map, batches, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of the loss for every unit weight (one example at a time).

    ``batches``: (example positions, model inputs) pairs, as ``Evaluator.device_batches()`` gives.
    """
    params = {name: unit_map.get(name).weight for name in unit_map.units}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    requires = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    count = 0
    try:
        for index, batch_inputs in batches:
            for row, example in enumerate(index.tolist()):
                inputs = {k: v[row : row + 1] for k, v in batch_inputs.items()}
                width = int(inputs["attention_mask"].sum())
                inputs = {k: v[:, :width] for k, v in inputs.items()}
                model.zero_grad(set_to_none=True)
                logits = model(**inputs).logits
                loss = torch.nn.functional.cross_entropy(
                    logits, torch.tensor([int(labels[example])], device=logits.device)
                )
                loss.backward()
                for name, p in params.items():
                    if p.grad is not None:
                        sums[name] += p.grad.detach() ** 2
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in params.items():
            p.requires_grad_(requires[name])
        model.train(was_training)
    return {name: s / max(count, 1) for name, s in sums.items()}


def fisher_error(applier, fisher: dict[str, torch.Tensor], names, config) -> float:
    total = 0.0
    for name in names:
        delta = applier.original(name) - applier.quantized(name, config)
        total += float((fisher[name] * delta.pow(2)).sum())
    return total


def proxy_rows(entries, applier, calib_evaluator, calib_reference, fisher) -> list[dict]:
    """One row per sweep entry ("only" view) with every proxy."""
    rows = []
    for entry in entries:
        calib = calib_evaluator.evaluate(entry.plan)
        rows.append(
            {
                "unit": entry.unit.display,
                "format": entry.format.name,
                "weight_error": weight_error(applier, entry.unit.names, entry.format),
                "calib_kl": float(kl_per_example(calib_reference.logits, calib.logits).mean()),
                "fisher": fisher_error(applier, fisher, entry.unit.names, entry.format),
            }
        )
    return rows


def _spearman(x, y) -> float | None:
    """Spearman's rho, or None when it is undefined (fewer than 3 points, or a constant side)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def proxy_correlations(proxy: list[dict], measured: list[dict], loss_key: str) -> list[dict]:
    """Spearman rho of each proxy against measured KL and the task's loss, per format and over all formats."""
    by_key = {(r["unit"], r["format"]): r for r in measured if r["view"] == "only"}
    pairs = [(p, by_key[(p["unit"], p["format"])]) for p in proxy if (p["unit"], p["format"]) in by_key]
    out = []
    formats = list(dict.fromkeys(p["format"] for p, _ in pairs))
    for fmt in formats + (["all"] if len(formats) > 1 else []):
        chosen = [(p, m) for p, m in pairs if fmt == "all" or p["format"] == fmt]
        for name in PROXIES:
            x = np.array([p[name] for p, _ in chosen])
            out.append(
                {
                    "format": fmt,
                    "proxy": name,
                    "units": len(chosen),
                    "spearman_vs_kl": _spearman(x, np.array([m["kl_mean"] for _, m in chosen])),
                    "spearman_vs_loss": _spearman(x, np.array([m[loss_key] for _, m in chosen])),
                }
            )
    return out
