"""Benchmark: how well one measurement per unit predicts a whole per-unit sweep (the loss model of issue #20).

Runs (or, with ``--store``, reuses) the full sweep of every unit alone in every format, then fits
:mod:`quantsense.sweeps.loss_model` from the anchor format's measurements only (plus, with ``--alpha-units K``,
a second format on K units to fit the exponent) and prints, on the pairs the fit never saw: Spearman rank
correlation and the median measured/predicted mean KL, and the share of the full sweep's evaluations used.

    python benchmarks/loss_model.py --model ../shared/assets/models/minilm-l6-sst2 \
        --data ../shared/assets/sst2/validation.tsv --unit linear --formats 2 3 4 5 6 8 --anchor int4
"""

from __future__ import annotations

import argparse

import quantsense as qs
from quantsense.sweeps.loss_model import agreement, fit_loss_model
from quantsense.sweeps.sweep import weight_error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data")
    p.add_argument("--task", default="sst2")
    p.add_argument("--store", help="results store to reuse (and fill) for the full sweep")
    p.add_argument("--unit", default="linear", choices=("block", "linear"))
    p.add_argument("--formats", nargs="+", required=True)
    p.add_argument("--anchor", required=True, help="the one format every unit is measured in")
    p.add_argument("--second", help="a second format, measured on --alpha-units units to fit the exponent")
    p.add_argument("--alpha-units", type=int, default=0)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--stride", type=int)
    args = p.parse_args()
    settings = {
        k: v
        for k, v in (("max_tokens", args.max_tokens), ("context", args.context), ("stride", args.stride))
        if v is not None
    }
    ws = qs.open_workspace(args.model, data=args.data, task=args.task, store=args.store, quiet=True, **settings)
    sens = qs.sensitivity(ws, args.formats, unit=args.unit)
    fmts = {f.name: f for f in ws.formats(sens.formats)}
    anchor, second = ws.format(args.anchor).name, ws.format(args.second).name if args.second else None
    names = {
        r["unit"]: tuple(ws.units.block_units(r["block"])) if args.unit == "block" else (r["unit"],) for r in sens.rows
    }
    measured = {(r["unit"], r["format"]): r["kl_mean"] for r in sens.rows}
    errors = {(u, f): weight_error(ws.applier, names[u], fmts[f]) for u, f in measured}
    units = list(dict.fromkeys(u for u, _ in measured))
    used = {k: v for k, v in measured.items() if k[1] == anchor}
    if second:
        used.update({(u, second): measured[(u, second)] for u in units[: args.alpha_units]})
    model = fit_loss_model(used, errors)
    held_out = {k: v for k, v in measured.items() if k not in used}
    agree = agreement(held_out, model.predict_all(errors))
    print(
        f"{ws.source}: {len(units)} {args.unit} units x {len(fmts)} formats = {len(measured)} evaluations in the full sweep"
    )
    print(
        f"fit from {len(used)} measurements ({100 * len(used) / len(measured):.1f} % of the sweep): anchor {anchor}"
        + (f", {second} on {args.alpha_units} units" if second else "")
        + f"; alpha = {model.alpha:.3f}"
    )
    print(
        f"on the {agree['pairs']} pairs the fit never saw: Spearman {agree['spearman']:.3f}, "
        f"median measured/predicted mean KL {agree['median_ratio']:.3f}"
    )
    ws.close()


if __name__ == "__main__":
    main()
