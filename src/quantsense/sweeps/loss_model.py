"""A per-unit loss model: a unit's loss in any format from one measurement and the formats' weight errors.

For a unit ``u`` quantized alone in format ``f``, with ``e_u(f)`` the relative weight error
``||W - Q_f(W)||^2 / ||W||^2`` of its weights (:func:`quantsense.sweeps.sweep.weight_error`, no forward pass):

    loss_u(f) ~ S_u * e_u(f) ** alpha

``S_u`` (the unit's sensitivity) comes from measuring the unit in one format (its anchor); ``alpha`` is shared by the
model and fitted by least squares in log space over the units measured in two or more formats (ExLlamaV3 models a
tensor's KL the same way from a noise-injection pass). With no such unit, ``alpha`` is 1: for small perturbations the
KL of the outputs grows with the noise power, i.e. linearly in ``e``. :func:`agreement` says how well predictions
match measurements (Spearman rank correlation and the median measured/predicted ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantsense.errors import QuantsenseError

Pair = tuple[str, str]  # (unit, format name)


@dataclass(frozen=True)
class LossModel:
    alpha: float
    scale: dict[str, float]  # unit -> S_u (0 for a unit whose anchor loss is 0: it is predicted insensitive)
    default: float | None = None  # S of an unmeasured unit, when the errors already say how sensitive each unit is

    def predict(self, unit: str, error: float) -> float:
        scale = self.scale.get(unit, self.default)
        if scale is None:
            raise QuantsenseError(f"the loss model has no measurement of unit {unit}: measure it in one format first")
        return scale * error**self.alpha if error > 0 else 0.0

    def predict_all(self, errors: dict[Pair, float]) -> dict[Pair, float]:
        return {
            (unit, fmt): self.predict(unit, e)
            for (unit, fmt), e in errors.items()
            if unit in self.scale or self.default is not None
        }


def _positive(measured: dict[Pair, float], errors: dict[Pair, float]) -> dict[Pair, tuple[float, float]]:
    """(loss, error) of the measured pairs where both are positive (logs defined)."""
    return {k: (v, errors[k]) for k, v in measured.items() if v > 0 and errors.get(k, 0) > 0}


def fit_alpha(measured: dict[Pair, float], errors: dict[Pair, float]) -> float:
    """The shared exponent: slope of log loss on log error with one intercept per unit, over units measured in two
    or more formats with different errors; 1.0 when there are none."""
    points = _positive(measured, errors)
    by_unit: dict[str, list[tuple[float, float]]] = {}
    for (unit, _), (loss, err) in points.items():
        by_unit.setdefault(unit, []).append((math.log(err), math.log(loss)))
    centred_x, centred_y = [], []
    for pairs in by_unit.values():
        if len(pairs) < 2:
            continue
        x, y = np.array(pairs).T
        centred_x.append(x - x.mean())
        centred_y.append(y - y.mean())
    if not centred_x:
        return 1.0
    x, y = np.concatenate(centred_x), np.concatenate(centred_y)
    if not np.any(x):
        return 1.0
    return float(x @ y / (x @ x))


def fit_loss_model(
    measured: dict[Pair, float], errors: dict[Pair, float], alpha: float | None = None, shared_scale: bool = False
) -> LossModel:
    """``S_u`` of every measured unit (geometric mean over its measured formats of loss / error**alpha) and ``alpha``
    (fitted with :func:`fit_alpha` unless given). ``errors`` must hold the error of every measured pair.
    ``shared_scale``: errors that are already predicted losses (:mod:`quantsense.sweeps.fisher`), so an unmeasured
    unit takes the geometric mean of the measured units' ``S`` (1 before any measurement)."""
    missing = [k for k in measured if k not in errors]
    if missing:
        raise QuantsenseError(
            f"no weight error for measured pair(s) {missing[:3]}: compute the error of every measured pair"
        )
    alpha = fit_alpha(measured, errors) if alpha is None else float(alpha)
    logs: dict[str, list[float]] = {}
    for (unit, fmt), loss in measured.items():
        err = errors[(unit, fmt)]
        if loss <= 0 or err <= 0:
            logs.setdefault(unit, [])
            continue
        logs.setdefault(unit, []).append(math.log(loss) - alpha * math.log(err))
    every = [x for v in logs.values() for x in v]
    default = (math.exp(float(np.mean(every))) if every else 1.0) if shared_scale else None
    return LossModel(alpha, {unit: math.exp(float(np.mean(v))) if v else 0.0 for unit, v in logs.items()}, default)


def agreement(measured: dict[Pair, float], predicted: dict[Pair, float]) -> dict:
    """How well predictions match measurements on the pairs both have: Spearman, median measured/predicted."""
    from scipy.stats import spearmanr

    keys = [k for k in measured if k in predicted]
    if len(keys) < 3:
        return {"pairs": len(keys), "spearman": None, "median_ratio": None}
    m = np.array([measured[k] for k in keys], dtype=np.float64)
    p = np.array([predicted[k] for k in keys], dtype=np.float64)
    both = (m > 0) & (p > 0)
    return {
        "pairs": len(keys),
        "spearman": float(spearmanr(m, p).correlation),
        "median_ratio": float(np.median(m[both] / p[both])) if both.any() else None,
    }
