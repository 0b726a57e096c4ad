"""Benchmark: the reduced sweep against the exhaustive one, cost and decisions side by side in one run.

1. The exhaustive sweep (every unit alone in every candidate, on all the data) and its allocation per budget;
   with ``--full-store`` an earlier exhaustive run's store is reused and its recorded seconds are reported.
2. The reduced sweep (:mod:`quantsense.mixed_precision.reduced`) from a fresh, empty store (or ``--reduced-store``), and its
   allocation per budget.
3. Both plans of every budget measured on all the data: the reduced plan's mean KL against the exhaustive plan's
   95 % interval, and how many groups got another format.
4. The loss model against the full measurements: fitted from the exhaustive sweep's anchor column alone (plus a second
   format on 8 units) it predicts every pair; the reduced sweep's own values (measured on a data segment, or
   estimated) against the full measurements too.

    python benchmarks/reduced_sweep.py --task wikitext --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data wiki.test.raw --max-tokens 4096 --context 1024 --stride 1024 --unit linear \\
        --candidates q4_0 q5_0 q8_0 --budgets 5 5.5 6 --full-store results/smollm2.sqlite
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import quantsense as qs
from quantsense.inputs import allocation_request
from quantsense.mixed_precision.allocation import Budget, allocate as solve_allocation
from quantsense.mixed_precision.reduced import reduced_sweep
from quantsense.search import sweep_and_allocate, unit_losses
from quantsense.study import evaluate_plans, metric_key
from quantsense.sweeps.loss_model import agreement, fit_loss_model
from quantsense.sweeps.sweep import sweep_units, weight_error


def _workspace(args, store):
    settings = {
        k: getattr(args, k) for k in ("max_tokens", "context", "stride", "limit") if getattr(args, k) is not None
    }
    return qs.open_workspace(args.model, data=args.data, task=args.task, store=str(store), quiet=True, **settings)


def _per_unit(ws, losses: dict, unit: str) -> dict:
    """(sweep unit, format) -> loss, from the allocator's per-module losses (a block's loss is shared by its modules)."""
    out = {}
    for u in sweep_units(ws.units, unit):
        for fmt in {f for _, f in losses}:
            out[(u.display, fmt)] = sum(losses[(n, fmt)] for n in u.names)
    return out


def _line(name: str, agree: dict) -> str:
    return (
        f"{name}: {agree['pairs']} pairs, Spearman {agree['spearman']:.3f}, "
        f"median measured/predicted {agree['median_ratio']:.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data")
    p.add_argument("--task", default="sst2")
    p.add_argument("--unit", default="linear", choices=("block", "linear"))
    p.add_argument("--candidates", nargs="+", required=True)
    p.add_argument("--budgets", nargs="+", type=float, required=True)
    p.add_argument("--full-store", help="store of an earlier exhaustive run to reuse (else a fresh one is filled)")
    p.add_argument(
        "--reduced-store", help="store of an earlier reduced run to reuse (else an empty one: its wall time)"
    )
    for name in ("max-tokens", "context", "stride", "limit"):
        p.add_argument(f"--{name}", type=int)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="quantsense-reduced-"))

    full_ws = _workspace(args, args.full_store or scratch / "full.sqlite")
    started = time.perf_counter()
    full_plans, full_record = sweep_and_allocate(full_ws, args.budgets, args.candidates, args.unit, reduced=False)
    full_record = full_record.to_dict()
    full_seconds = time.perf_counter() - started
    stats = full_ws.engine.stats
    full_losses = unit_losses(full_ws, full_ws.formats(args.candidates), args.unit, "kl")

    red_ws = _workspace(args, args.reduced_store or scratch / "reduced.sqlite")
    started = time.perf_counter()
    budgets = [Budget.of(b) for b in args.budgets]
    request = allocation_request(red_ws, budgets, red_ws.formats(args.candidates), args.unit)
    sweep = reduced_sweep(red_ws, request)
    record = sweep.record.to_dict()
    red_plans = [
        (
            f"allocated@{b.label()}",
            solve_allocation(red_ws.units, red_ws.model, list(request.groups), sweep.losses, request.candidates, b),
        )
        for b in budgets
    ]
    red_seconds = time.perf_counter() - started

    pairs = record["pairs"]
    print(f"{full_ws.source}: {pairs} (unit, format) pairs, {len(args.budgets)} budgets")
    print(
        f"exhaustive sweep: {pairs} evaluations, {full_record['token_evaluations']:,} token evaluations; "
        f"{stats.computed} computed now in {full_seconds:.1f} s, {stats.from_store} from the store "
        f"(recorded {stats.stored_seconds:.1f} s when computed)"
    )
    share = 100 * record["token_evaluations"] / record["full_token_evaluations"]
    print(
        f"reduced sweep: {record['measured']} pairs measured ({record['deeper']} on more than one of "
        f"{record['segments']} segments), {record['estimated']} estimated; {record['token_evaluations']:,} token "
        f"evaluations ({share:.1f} % of the exhaustive), plus {record['plan_checks']} plan checks "
        f"({record['plan_check_tokens']:,} tokens, {100 * (record['token_evaluations'] + record['plan_check_tokens']) / record['full_token_evaluations']:.1f} % in all); "
        f"{len(record['rounds'])} rounds; {red_ws.engine.stats.computed} evaluations computed now in {red_seconds:.1f} s, "
        f"{red_ws.engine.stats.from_store} from the store (recorded {red_ws.engine.stats.stored_seconds:.1f} s when computed)"
    )

    named = {f"exhaustive {name}": a.plan for name, a in full_plans}
    named.update({f"reduced {name}": a.plan for name, a in red_plans})
    rows = {r["plan"]: r for r in evaluate_plans(full_ws, named, desc="plans on all the data")}
    key = metric_key(full_ws, "kl")
    print("| budget | exhaustive KL [95% CI] | reduced KL | inside | groups with another format |")
    print("|---|---|---|---|---|")
    for (name, full_alloc), (_, red_alloc) in zip(full_plans, red_plans):
        f, r = rows[f"exhaustive {name}"], rows[f"reduced {name}"]
        differ = sum(full_alloc.choices[g] != red_alloc.choices[g] for g in full_alloc.choices)
        inside = f["kl_ci_low"] <= r[key] <= f["kl_ci_high"]
        print(
            f"| {name} | {f[key]:.4f} [{f['kl_ci_low']:.4f}, {f['kl_ci_high']:.4f}] | {r[key]:.4f} | "
            f"{'yes' if inside else 'no'} | {differ} of {len(full_alloc.choices)} |"
        )

    truth = _per_unit(full_ws, full_losses, args.unit)
    fmts = {f.name: f for f in full_ws.formats(args.candidates)}
    names = {u.display: u.names for u in sweep_units(full_ws.units, args.unit)}
    errors = {(u, f): weight_error(full_ws.applier, names[u], fmts[f]) for u, f in truth}
    anchor, second = record["anchor"], record["second"]
    used = {k: v for k, v in truth.items() if k[1] == anchor}
    strongest = sorted((u for u, _ in used), key=lambda u: -used[(u, anchor)])[:8]
    used.update({(u, second): truth[(u, second)] for u in strongest} if second else {})
    model = fit_loss_model(used, errors)
    predicted = {k: v if k in used else model.predict(k[0], errors[k]) for k, v in truth.items()}
    print(
        f"loss model fitted on the exhaustive sweep's {anchor} column (+ {second} on 8 units): alpha {model.alpha:.3f}"
    )
    print("  " + _line("all pairs", agreement(truth, predicted)))
    print("  " + _line("pairs it did not see", agreement({k: v for k, v in truth.items() if k not in used}, predicted)))
    reduced_values = _per_unit(red_ws, sweep.losses, args.unit)
    estimated = {tuple(s.rsplit("@", 1)) for s in record["estimated_pairs"]}
    print("the reduced sweep's own values against the full measurements:")
    print("  " + _line("all pairs", agreement(truth, reduced_values)))
    print(
        "  " + _line("estimated pairs", agreement({k: v for k, v in truth.items() if k in estimated}, reduced_values))
    )
    print(
        "  "
        + _line(
            "pairs measured on a segment",
            agreement({k: v for k, v in truth.items() if k not in estimated}, reduced_values),
        )
    )
    print(
        f"  reduced sweep's own check (pairs predicted, then measured): Spearman "
        f"{_fmt(record['agreement']['spearman'])}, median {_fmt(record['agreement']['median_ratio'])} "
        f"on {record['agreement']['pairs']} pairs"
    )
    full_ws.close()
    red_ws.close()


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


if __name__ == "__main__":
    main()
