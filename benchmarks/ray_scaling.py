"""Benchmark: one block sweep on the local executor and on Ray actors, and a cost model for more workers.

All runs are in this one invocation, on the same model, data and work items, one after the other:

(a) local executor, torch with --threads threads (2 = every core of a 2-core machine);
(b) local executor at 1 thread, measured in phases: the FP32 reference pass, the sweep's items with
    prefix reuse, and the same items without it (every item a full forward pass);
(c) Ray with 1 actor and with --workers actors (1 thread each): Ray start-up, actor start + model
    load (until every actor reports ready) and the sweep, each timed separately.

Cost model, from (b) and the measured start-up and load: T(N) = startup + load + reference +
ceil(items / N) * per_item, where every actor pays one load and one reference pass (its prefix
cache) in parallel with the others. It is checked against the measured 1- and N-actor runs and
then evaluated for 8 and 64 GPUs with a per-item GPU time (--gpu-item-seconds; by default the
1-thread CPU time divided by --gpu-speedup, an assumption stated in the output). On a 2-core machine
shared with other work, two 1-thread actors can at best halve the compute phase; nothing here
measures a GPU or a network, so the GPU rows are arithmetic, not measurements.

    python benchmarks/ray_scaling.py --model ../shared/assets/models/minilm-l6-sst2 \\
        --data ../shared/assets/sst2/validation.tsv --limit 256
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import time

import numpy as np
import torch

from quantsense.engine import Evaluator, LocalExecutor, WorkItem
from quantsense.engine.ray_executor import RayExecutor
from quantsense.evaluation.heads import ClassificationHead
from quantsense.sweeps.sweep import build_entries
from quantsense.workspace import StudyOptions, open_workspace


def options(args) -> StudyOptions:
    return StudyOptions(
        model=args.model, data=args.data, settings={"limit": args.limit}, device="cpu", quiet=True, store=None
    )


def worker_evaluator(opts: StudyOptions) -> Evaluator:
    """The factory each actor calls once: the same workspace as the driver's, its evaluator."""
    return open_workspace(opts).evaluator


def fresh_evaluator(ws, prefix_reuse: bool) -> Evaluator:
    """A new evaluator on the loaded model: empty reference, prefix and quantized-weight caches."""
    ev = ws.evaluator
    return Evaluator(ws.model, ws.units, ev.batches, ws.device, prefix_reuse=prefix_reuse, head=ClassificationHead())


def load_average() -> str:
    """The 1-minute load average: other processes on the machine slow every phase they overlap."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def timed_map(executor, items) -> tuple[dict, float]:
    start = time.perf_counter()
    arrays = {item.label: result.arrays for item, result in executor.map(items)}
    return arrays, time.perf_counter() - start


def local_phases(ws, items, threads: int) -> dict:
    """Reference, prefix-reuse sweep and full-forward sweep on the local executor at ``threads`` threads."""
    torch.set_num_threads(threads)
    ev = fresh_evaluator(ws, prefix_reuse=True)
    start = time.perf_counter()
    ev.reference()
    reference = time.perf_counter() - start
    arrays, sweep = timed_map(LocalExecutor(ev), items)
    _, full = timed_map(LocalExecutor(fresh_evaluator(ws, prefix_reuse=False)), items)
    return {
        "reference": reference,
        "sweep": sweep,
        "per_item": sweep / len(items),
        "per_item_full": full / len(items),
        "arrays": arrays,
    }


def ray_run(args, items, workers: int, order_key) -> dict:
    """Ray start-up, actor load and the sweep on ``workers`` 1-thread actors, timed apart."""
    factory = functools.partial(worker_evaluator, options(args))
    executor = RayExecutor(factory, workers, order_key=order_key)
    try:
        start = time.perf_counter()
        executor.actor_pids()  # starts Ray, then waits until every actor has loaded
        ready = time.perf_counter() - start
        arrays, sweep = timed_map(executor, items)
        startup = executor.startup_seconds
        compute = sum(executor.seconds[item.key] for item in items)
    finally:
        executor.close()
    return {
        "workers": workers,
        "startup": startup,
        "load": ready - startup,
        "sweep": sweep,
        "arrays": arrays,
        "total": ready + sweep,
        "worker_seconds": compute,
    }


def identical(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k]["logits"], b[k]["logits"]) for k in a)


def max_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k]["logits"] - b[k]["logits"]).max()) for k in a)


def predicted(startup: float, load: float, reference: float, per_item: float, items: int, workers: int) -> float:
    return startup + load + reference + math.ceil(items / workers) * per_item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local baseline")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (1 thread each) of the parallel run")
    parser.add_argument("--gpu-item-seconds", type=float, help="per-item time on one GPU for the predictions")
    parser.add_argument(
        "--gpu-speedup",
        type=float,
        default=50.0,
        help="without --gpu-item-seconds: one GPU is assumed this many times faster than one CPU thread here",
    )
    args = parser.parse_args()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)

    start = time.perf_counter()
    ws = open_workspace(options(args))
    load = time.perf_counter() - start
    entries = build_entries(ws.units, [ws.options.scheme.replace(bits=b) for b in args.bits], "block")
    items = [WorkItem(e.label, e.plan.canonical_json(), ws.model_fp, ws.data_fp) for e in entries]
    n = len(items)

    def first_block(item: WorkItem) -> int:
        return ws.units.first_block_of(item.plan().units())

    print(
        f"model {args.model}: {ws.units.num_blocks} blocks; {len(ws.data)} sentences; {n} items "
        f"(blocks x int{', int'.join(map(str, args.bits))}); driver load {load:.1f} s"
    )

    torch.set_num_threads(args.threads)
    local_ev = fresh_evaluator(ws, prefix_reuse=True)
    local_arrays, local_s = timed_map(LocalExecutor(local_ev), items)  # includes its reference pass
    loads = [load_average()]
    one = local_phases(ws, items, threads=1)
    loads.append(load_average())
    ray1 = ray_run(args, items, 1, first_block)
    loads.append(load_average())
    rayn = ray_run(args, items, args.workers, first_block)
    loads.append(load_average())

    print(
        f"\n(a) local, {args.threads} threads:   sweep {local_s:6.1f} s (reference pass included); after it {loads[0]}"
    )
    print(
        f"(b) local, 1 thread:    reference {one['reference']:5.2f} s; per item {one['per_item']:5.2f} s with prefix "
        f"reuse, {one['per_item_full']:5.2f} s without ({one['per_item_full'] / one['per_item']:.2f}x); after it {loads[1]}"
    )
    for run, after in ((ray1, loads[2]), (rayn, loads[3])):
        idle = (run["workers"] * run["sweep"] - run["worker_seconds"]) / n
        print(
            f"(c) Ray, {run['workers']} actor(s) x 1 thread: start-up {run['startup']:5.1f} s, actor start + load "
            f"{run['load']:5.1f} s, sweep {run['sweep']:6.1f} s -> total {run['total']:6.1f} s; "
            f"actor time not spent evaluating {idle:5.2f} s/item; after it {after}"
        )
    print(
        f"\nRay {args.workers} actors vs local {args.threads} threads: sweep only {local_s / rayn['sweep']:.2f}x, "
        f"with start-up and load {local_s / rayn['total']:.2f}x"
    )
    print(f"Ray {args.workers} actors vs Ray 1 actor (sweep only): {ray1['sweep'] / rayn['sweep']:.2f}x")
    print(
        f"Ray per-item overhead (1 actor: sweep wall minus the actor's own evaluation time, per item): "
        f"{(ray1['sweep'] - ray1['worker_seconds']) / n * 1000:.1f} ms"
    )
    print(
        f"results: Ray 1 actor == Ray {args.workers} actors == local 1 thread bit for bit: "
        f"{identical(ray1['arrays'], rayn['arrays']) and identical(ray1['arrays'], one['arrays'])}; "
        f"local {args.threads} threads differs by at most {max_difference(local_arrays, ray1['arrays']):.2e} in a logit "
        f"(CPU matmul rounding depends on the thread count)"
    )

    startup = (ray1["startup"] + rayn["startup"]) / 2
    actor_load = (ray1["load"] + rayn["load"]) / 2
    print(
        "\ncost model T(N) = startup + load + reference + ceil(items/N) * per_item, "
        f"startup {startup:.1f} s, actor load {actor_load:.1f} s, reference {one['reference']:.2f} s, "
        f"per item {one['per_item']:.2f} s (measured at 1 thread, with prefix reuse)"
    )
    for run in (ray1, rayn):
        model = predicted(startup, actor_load, one["reference"], one["per_item"], n, run["workers"])
        print(
            f"  N={run['workers']}: predicted {model:6.1f} s, measured {run['total']:6.1f} s "
            f"({run['total'] / model:.2f}x of predicted)"
        )

    gpu_item = args.gpu_item_seconds or one["per_item"] / args.gpu_speedup
    gpu_ref = gpu_item * one["reference"] / one["per_item"]
    source = (
        "--gpu-item-seconds"
        if args.gpu_item_seconds
        else (
            f"assumption: one GPU = {args.gpu_speedup:g}x one CPU thread here; pass --gpu-item-seconds with a measured value"
        )
    )
    print(
        f"\npredictions on GPUs: per item {gpu_item * 1000:.1f} ms ({source}); start-up and load as measured here "
        "(a real cluster adds node scheduling and model download)"
    )
    for items_count in (n, 100 * n):
        for gpus in (1, 8, 64):
            compute = math.ceil(items_count / gpus) * gpu_item
            total = predicted(startup, actor_load, gpu_ref, gpu_item, items_count, gpus)
            print(f"  {items_count:6d} items on {gpus:2d} GPU(s): {total:8.1f} s, of which compute {compute:8.2f} s")


if __name__ == "__main__":
    main()
