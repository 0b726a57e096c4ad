"""Run a sweep's work items on Ray actors: one machine's cores, or a cluster's GPUs.

Each actor calls the evaluator factory once (loads the model and the data once) and then evaluates
plans sent to it as JSON. Items are sorted by ``order_key`` and cut into contiguous chunks; an idle
actor takes the next chunk (or, when none is left, the back half of the largest unstarted remainder
of another actor), so similar plans stay on one actor and the actor's caches (FP32 prefix outputs,
quantized weights) serve the whole chunk. Results come back as each item finishes, in any order;
the driver (:class:`quantsense.engine.Engine`) alone writes the store.

Faults: an actor that dies (process killed, node lost) is replaced and its unfinished items go
back to the front of the queue, at most ``max_retries`` times per item. A Python exception inside
an evaluation is not retried: it is raised once in the driver as a :class:`QuantsenseError` naming
the item.

Ray is optional (``pip install -c constraints.txt -e '.[ray]'``) and imported only when used.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from quantsense.config import Plan
from quantsense.engine.evaluator import Evaluator
from quantsense.engine.executor import Lookup, WorkItem
from quantsense.engine.ray_machine import available_cpus, silence_ray_error_messages  # noqa: F401  (public here too)
from quantsense.errors import QuantsenseError
from quantsense.evaluation.metrics import EvalResult

INSTALL_HINT = "--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]'"
IN_FLIGHT_PER_ACTOR = 2  # one running, one queued on the actor so it never waits for the driver


def import_ray():
    try:
        import ray
    except ImportError:
        raise QuantsenseError(INSTALL_HINT) from None
    return ray


def contiguous_chunks(items: list[WorkItem], workers: int, chunks_per_worker: int) -> list[list[WorkItem]]:
    """Consecutive runs of ``ceil(n / (workers * chunks_per_worker))`` items."""
    size = max(1, math.ceil(len(items) / (workers * chunks_per_worker)))
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Worker:
    """The actor body (wrapped with ``ray.remote`` at run time, so this module imports without Ray)."""

    def __init__(self, factory: Callable[[], Evaluator], threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.evaluator = None
        self.error = None
        try:
            self.evaluator = factory()
        except Exception as exc:  # reported by ready(), not retried: it would fail the same way again
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict:
        """Where the actor runs and which weights and token batches it loaded (or why it could not load)."""
        from quantsense.models.loading import weights_fingerprint

        info = {"pid": os.getpid(), "host": socket.gethostname(), "error": self.error}
        if self.evaluator is not None:
            info["model_fp"] = weights_fingerprint(self.evaluator.model)
            info["batches_fp"] = self.evaluator.batches.fingerprint()
            info["variant"] = self.evaluator.variant
        return info

    def evaluate(self, plan_json: str) -> tuple[str, object, float]:
        """("ok", arrays, seconds), or ("error", message, seconds) for an exception inside the evaluation."""
        import json

        start = time.perf_counter()
        try:
            arrays = self.evaluator.evaluate(Plan.from_json_dict(json.loads(plan_json))).arrays
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            return "error", f"{type(exc).__name__}: {first_line}", time.perf_counter() - start
        return "ok", arrays, time.perf_counter() - start


@dataclass
class _Slot:
    """One actor, and while a map runs: its unstarted items and its submitted ones (ref -> item)."""

    actor: object
    ready_ref: object | None  # set until the actor has loaded
    info: dict | None = None
    pending: deque = field(default_factory=deque)
    in_flight: dict = field(default_factory=dict)


class RayExecutor:
    """Executes work items on ``workers`` Ray actors, each built once by ``factory``.

    ``factory`` must be picklable (a top-level function or a ``functools.partial`` of one) and
    return an :class:`Evaluator` on the same weights and token batches as the driver's.
    ``address=None`` starts a private Ray instance on this machine (stopped by :meth:`close`);
    ``"auto"`` or ``"HOST:PORT"`` connects to a running cluster. Actors start on the first
    :meth:`map` and are reused by later ones.

    Every actor checks that it loaded the driver's weights (``WorkItem.model_fp`` is
    ``weights_fingerprint(model)``) and token batches (``WorkItem.data_fp`` ends with
    ``batches.fingerprint()``, as :func:`quantsense.study.open_workspace` builds it). CPU actors run
    ``num_cpus_per_worker`` torch threads; results are bit-identical to the local executor at that
    thread count (CPU matmul rounding can change with the thread count). ``seconds`` holds each
    item's evaluation time on its worker, which the driver's time between results is not.
    """

    def __init__(
        self,
        factory: Callable[[], Evaluator],
        workers: int,
        *,
        address: str | None = None,
        num_cpus_per_worker: int = 1,
        num_gpus_per_worker: float = 0,
        order_key: Callable[[WorkItem], int] | None = None,
        max_retries: int = 2,
        chunks_per_worker: int = 4,
        quiet: bool = False,
    ):
        if workers < 1:
            raise QuantsenseError(f"--workers {workers} must be at least 1")
        self.ray = import_ray()
        self.factory = factory
        self.workers = workers
        self.address = address
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.order_key = order_key
        self.max_retries = max_retries
        self.chunks_per_worker = chunks_per_worker
        self.quiet = quiet  # hide Ray's own worker-death messages (this executor retries and reports them itself)
        self._silenced = False
        self.seconds: dict[str, float] = {}  # item key -> seconds its evaluation took on the worker
        self.startup_seconds = 0.0  # connecting to or starting Ray
        self.restarts = 0
        self._started_ray = False
        self._slots: list[_Slot] = []
        self._actor_class = None
        if address is None and not self.ray.is_initialized():
            self._check_machine()

    def _check_machine(self) -> None:
        """A private Ray holds one worker per CPU (or GPU) of this machine: refuse more now, before any work,
        rather than start actors that queue for cores and each load the model."""
        if self.num_gpus_per_worker:
            import torch

            have, each, kind = torch.cuda.device_count(), self.num_gpus_per_worker, "GPU"
        else:
            have, each, kind = available_cpus(), self.num_cpus_per_worker, "CPU"
        most = int(have // each)
        if self.workers > most:
            raise QuantsenseError(
                f"--workers {self.workers} needs {self.workers * each:g} {kind}s but this machine has {have}; "
                f"use --workers {max(most, 1)} or less, or a Ray cluster with --ray-address"
            )

    # -- cluster and actors -------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        if self.quiet and not self._silenced:
            silence_ray_error_messages(True)
            self._silenced = True
        if ray.is_initialized():
            return
        start = time.perf_counter()
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        if self.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                num_cpus=self.workers * self.num_cpus_per_worker,
                object_store_memory=256 << 20,
                **quiet,
            )
            self._started_ray = True
        else:
            try:
                ray.init(address=self.address, **quiet)
            except ConnectionError as exc:
                raise QuantsenseError(
                    f"cannot reach the Ray cluster at --ray-address {self.address} ({exc}); "
                    "start it with `ray start --head` or pass its HOST:PORT"
                ) from None
            self._started_ray = True  # our connection, not the cluster: shutdown() only disconnects
        self.startup_seconds += time.perf_counter() - start

    def _new_slot(self) -> _Slot:
        options = {"num_cpus": self.num_cpus_per_worker, "num_gpus": self.num_gpus_per_worker, "max_restarts": 0}
        threads = self.num_cpus_per_worker if not self.num_gpus_per_worker else None
        if self._actor_class is None:
            self._actor_class = self.ray.remote(_Worker)
        actor = self._actor_class.options(**options).remote(self.factory, threads)
        return _Slot(actor, actor.ready.remote())

    def _check_capacity(self) -> None:
        """Refuse a request the whole cluster cannot hold, instead of waiting forever for the actors."""
        total = self.ray.cluster_resources()
        for resource, each in (("CPU", self.num_cpus_per_worker), ("GPU", self.num_gpus_per_worker)):
            need = self.workers * each
            if need > total.get(resource, 0):
                raise QuantsenseError(
                    f"--workers {self.workers} x {each:g} {resource} each needs {need:g} {resource}s but the Ray cluster "
                    f"has {total.get(resource, 0):g}; lower --workers or add nodes to the cluster"
                )

    def _ensure_actors(self) -> None:
        self._connect()
        if not self._slots:
            self._check_capacity()
        while len(self._slots) < self.workers:
            self._slots.append(self._new_slot())

    def actor_pids(self) -> list[int]:
        """Process ids of the actors that have finished loading (waits for all to load)."""
        self._ensure_actors()
        return [self._await_ready(slot)["pid"] for slot in self._slots]

    def _await_ready(self, slot: _Slot) -> dict:
        if slot.ready_ref is not None:
            self._on_ready(slot, self.ray.get(slot.ready_ref))
        return slot.info

    def _on_ready(self, slot: _Slot, info: dict) -> None:
        if info["error"]:
            raise QuantsenseError(f"a Ray worker on {info['host']} could not build the evaluator: {info['error']}")
        slot.ready_ref, slot.info = None, info

    def close(self) -> None:
        for slot in self._slots:
            self.ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_ray = False
        if self._silenced:
            silence_ray_error_messages(False)
            self._silenced = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- scheduling ---------------------------------------------------------------------------------

    def map(self, items: Iterable[WorkItem], lookup: Lookup | None = None) -> Iterator[tuple[WorkItem, EvalResult]]:
        """``lookup`` is asked for each item just before it goes to an actor (another writer may have finished it)."""
        items = list(items)
        if not items:
            return
        if self.order_key is not None:
            items.sort(key=self.order_key)
        self._ensure_actors()
        run = _Run(self, contiguous_chunks(items, self.workers, self.chunks_per_worker), items[0], lookup)
        yield from run.results(len(items))


class _Run:
    """The state of one ``map``: the chunk queue, the refs in flight, retries per item."""

    def __init__(
        self, executor: RayExecutor, chunks: list[list[WorkItem]], sample: WorkItem, lookup: Lookup | None = None
    ):
        self.ex = executor
        self.ray = executor.ray
        self.lookup = lookup
        self.found: deque[tuple[WorkItem, EvalResult]] = deque()  # items the lookup answered, to yield next
        self.queue = deque(deque(chunk) for chunk in chunks)
        self.sample = sample
        self.attempts: dict[str, int] = {}
        self.load_deaths = 0
        for slot in executor._slots:
            slot.pending.clear()
            slot.in_flight.clear()
            if slot.info is not None:
                self._check_inputs(slot.info)

    def _check_inputs(self, info: dict) -> None:
        """A worker must have loaded the driver's weights and token batches, or its results would be stored under wrong keys."""
        if info["model_fp"] != self.sample.model_fp or not self.sample.data_fp.endswith(info["batches_fp"]):
            raise QuantsenseError(
                f"the Ray worker on {info['host']} loaded different weights or data (model {info['model_fp']}, "
                f"batches {info['batches_fp']}) than the driver (model {self.sample.model_fp}, data {self.sample.data_fp}); "
                "give every node the same model and data files"
            )
        if info["variant"] != self.sample.variant:
            raise QuantsenseError(
                f"the Ray worker on {info['host']} runs forward {info['variant'] or 'plain'!r}, the driver "
                f"{self.sample.variant or 'plain'!r}; install the same quantsense and transformers on every node"
            )

    def _next_run_for(self, slot: _Slot) -> bool:
        """Give an actor with nothing left the next chunk, or the back half of the largest remainder."""
        if self.queue:
            slot.pending = self.queue.popleft()
            return True
        donor = max(self.ex._slots, key=lambda s: len(s.pending))
        if len(donor.pending) < 2:
            return False
        for _ in range(len(donor.pending) // 2):
            slot.pending.appendleft(donor.pending.pop())
        return True

    def _feed(self, slot: _Slot) -> None:
        while slot.ready_ref is None and len(slot.in_flight) < IN_FLIGHT_PER_ACTOR:
            if not slot.pending and not self._next_run_for(slot):
                return
            item = slot.pending.popleft()
            found = self.lookup(item) if self.lookup is not None else None
            if found is not None:
                self.found.append((item, found))
                continue
            slot.in_flight[slot.actor.evaluate.remote(item.plan_json)] = item

    def _owner(self, ref) -> _Slot | None:
        for slot in self.ex._slots:
            if ref == slot.ready_ref or ref in slot.in_flight:
                return slot
        return None

    def _replace(self, dead: _Slot, reason: Exception) -> None:
        """Requeue a dead actor's unfinished items (in their order) and start another actor in its place."""
        if dead.in_flight:  # an actor runs its calls in order: the first one was running when it died
            item = next(iter(dead.in_flight.values()))
            self.attempts[item.key] = self.attempts.get(item.key, 0) + 1
            if self.attempts[item.key] > self.ex.max_retries:
                raise QuantsenseError(
                    f"{item.label}: Ray workers died {self.attempts[item.key]} times while evaluating it "
                    f"({type(reason).__name__}); check the workers' memory and logs"
                )
        unfinished = deque(dead.in_flight.values())
        unfinished.extend(dead.pending)
        if unfinished:
            self.queue.appendleft(unfinished)
        index = self.ex._slots.index(dead)
        self.ex._slots[index] = self.ex._new_slot()
        self.ex.restarts += 1

    def _on_load_death(self, slot: _Slot, reason: Exception) -> None:
        self.load_deaths += 1
        if self.load_deaths > self.ex.max_retries:
            raise QuantsenseError(
                f"Ray workers died {self.load_deaths} times while loading the evaluator "
                f"({reason}); check the workers' memory and logs"
            )
        self._replace(slot, reason)

    def results(self, total: int) -> Iterator[tuple[WorkItem, EvalResult]]:
        done = 0
        while done < total:
            for slot in self.ex._slots:
                self._feed(slot)
            while self.found:
                done += 1
                yield self.found.popleft()
            if done >= total:
                return
            waiting = [
                r for s in self.ex._slots for r in ([s.ready_ref] if s.ready_ref is not None else [*s.in_flight])
            ]
            if not waiting:
                raise RuntimeError(f"Ray scheduler stalled with {total - done} item(s) unassigned")
            ready, _ = self.ray.wait(waiting, num_returns=1)
            for ref in ready:
                slot = self._owner(ref)
                if slot is None:  # belonged to an actor replaced while handling an earlier ref of this batch
                    continue
                if ref == slot.ready_ref:
                    self._handle_ready(slot, ref)
                    continue
                finished = self._handle_item(slot, ref)
                if finished is not None:
                    done += 1
                    yield finished

    def _handle_ready(self, slot: _Slot, ref) -> None:
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._on_load_death(slot, exc)
            return
        self.ex._on_ready(slot, info)
        self._check_inputs(info)

    def _handle_item(self, slot: _Slot, ref) -> tuple[WorkItem, EvalResult] | None:
        try:
            status, payload, seconds = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._replace(slot, exc)
            return None
        item = slot.in_flight.pop(ref)
        if status == "error":
            raise QuantsenseError(f"{item.label}: the evaluation failed on a Ray worker: {payload}")
        self.ex.seconds[item.key] = seconds
        return item, EvalResult({name: np.array(value) for name, value in payload.items()})


__all__ = ["RayExecutor", "contiguous_chunks", "import_ray"]
