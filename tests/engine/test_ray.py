"""The Ray executor gives the local executor's exact arrays, survives dead actors and a killed driver.

Every test runs on a local Ray instance on this machine (started once for the module).
Run as ``python -m tests.engine.test_ray STORE MODEL DATA`` it is the driver of the killed-driver test.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from quantsense.evaluation.heads import ClassificationHead
from quantsense.config import Plan, QuantConfig
from quantsense.engine import Engine, Evaluator, LocalExecutor, WorkItem
from quantsense.errors import QuantsenseError
from quantsense.evaluation.metrics import EvalResult
from quantsense.evaluation.batching import make_batches
from quantsense.models.loading import weights_fingerprint
from quantsense.models.units import discover_units
from quantsense.sweeps.sweep import build_entries
from quantsense.store import ResultStore
from quantsense.workspace import StudyOptions, open_workspace
from tests.conftest import REPO, random_encoded, store_rows, tiny_model

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -c constraints.txt -e '.[ray]'")

STANDIN_LIMIT = 64


def tiny_evaluator(arch: str = "bert") -> Evaluator:
    """The same tiny model and token batches in every process (seeded), on CPU."""
    model = tiny_model(arch)
    return Evaluator(
        model,
        discover_units(model),
        make_batches(random_encoded(), pad_id=0, max_batch_tokens=64),
        torch.device("cpu"),
        head=ClassificationHead(),
    )


def standin_evaluator(model: str, data: str, limit: int) -> Evaluator:
    return open_workspace(
        StudyOptions(model=model, data=data, settings={"limit": limit}, device="cpu", quiet=True, store=None)
    ).evaluator


def _items(
    evaluator: Evaluator, model_fp: str, data_fp: str, bits: list[int], granularity: str = "block"
) -> list[WorkItem]:
    entries = build_entries(evaluator.unit_map, [QuantConfig(b) for b in bits], granularity)
    return [WorkItem(e.label, e.plan.canonical_json(), model_fp, data_fp, evaluator.variant) for e in entries]


def _tiny_items(evaluator: Evaluator, bits: list[int], granularity: str = "block") -> list[WorkItem]:
    return _items(evaluator, weights_fingerprint(evaluator.model), evaluator.batches.fingerprint(), bits, granularity)


def _first_block(evaluator: Evaluator):
    return lambda item: evaluator.unit_map.first_block_of(item.plan().units())


def _arrays(executor, items) -> dict[str, dict[str, np.ndarray]]:
    return {item.label: result.arrays for item, result in executor.map(items)}


def _local_arrays(evaluator: Evaluator, items) -> dict[str, dict[str, np.ndarray]]:
    """The local executor's arrays at the actors' thread count (CPU matmul rounding depends on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _arrays(LocalExecutor(evaluator), items)
    finally:
        torch.set_num_threads(threads)


def _assert_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for label in want:
        assert sorted(got[label]) == sorted(want[label]), label
        for name in want[label]:
            assert got[label][name].dtype == want[label][name].dtype, (label, name)
            assert np.array_equal(got[label][name], want[label][name]), (label, name)


@pytest.fixture(scope="module")
def ray_local():
    from quantsense.engine.ray_executor import RayExecutor

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    # 4 logical CPUs on this 2-core machine: the shared 2-actor executor below and one more 2-actor executor fit at once
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    yield RayExecutor
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_on_ray(ray_local):
    """Two actors on the tiny model, shared by the tests that leave them usable (they are kept between maps)."""
    local_eval = tiny_evaluator()
    with ray_local(tiny_evaluator, 2, order_key=_first_block(local_eval)) as executor:
        yield local_eval, executor


def test_block_sweep_on_two_actors_equals_local_tiny_model(tiny_on_ray):
    local_eval, executor = tiny_on_ray
    items = _tiny_items(local_eval, [8, 4, 2])
    want = _local_arrays(local_eval, items)
    got = _arrays(executor, items)
    pids = executor.actor_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    again = _arrays(executor, items[:3])
    assert executor.actor_pids() == pids  # the second map ran on the same actors
    _assert_identical(got, want)
    _assert_identical(again, {k: want[k] for k in again})
    assert not np.array_equal(want[items[0].label]["logits"], want[items[-1].label]["logits"])


def test_block_sweep_on_two_actors_equals_local_standin(ray_local, standin_dir, sst2_validation):
    ws = open_workspace(
        StudyOptions(
            model=str(standin_dir),
            data=str(sst2_validation),
            settings={"limit": STANDIN_LIMIT},
            device="cpu",
            quiet=True,
            store=None,
        )
    )
    evaluator = ws.evaluator
    items = _items(evaluator, ws.model_fp, ws.data_fp, [4])
    want = _local_arrays(evaluator, items)
    factory = functools.partial(standin_evaluator, str(standin_dir), str(sst2_validation), STANDIN_LIMIT)
    with ray_local(factory, 2, order_key=_first_block(evaluator)) as executor:
        got = _arrays(executor, items)
    _assert_identical(got, want)
    assert got[items[0].label]["logits"].shape == (STANDIN_LIMIT, 2)


def test_killed_actor_is_replaced_and_results_are_unchanged(tiny_on_ray):
    local_eval, executor = tiny_on_ray
    items = _tiny_items(local_eval, [8, 6, 4], "linear")  # 3 blocks x 6 linears x 3 bit-widths
    want = _local_arrays(local_eval, items)
    victim, restarts = executor.actor_pids()[0], executor.restarts
    got = {}
    for item, result in executor.map(items):
        if not got:
            os.kill(victim, signal.SIGKILL)
        got[item.label] = result.arrays
    assert executor.restarts == restarts + 1
    assert victim not in executor.actor_pids()
    _assert_identical(got, want)


def test_worker_exception_is_raised_once_with_the_item_label(tiny_on_ray):
    local_eval, executor = tiny_on_ray
    items = _tiny_items(local_eval, [4])
    uneven = QuantConfig(
        4, granularity="per_group", group_size=5
    )  # valid as a config, but 5 does not divide 32 features
    plan = Plan.of({name: uneven for name in local_eval.unit_map.block_units(1)})
    bad = WorkItem("block1@int4-g5", plan.canonical_json(), items[0].model_fp, items[0].data_fp)
    pids, restarts = executor.actor_pids(), executor.restarts
    seen = []
    with pytest.raises(
        QuantsenseError,
        match=r"^block1@int4-g5: the evaluation failed on a Ray worker: "
        r"QuantsenseError: group size 5 does not divide the 32 input features of \S+layer\.1\.",
    ):
        for item, _ in executor.map([*items, bad]):
            seen.append(item.label)
    assert executor.restarts == restarts
    assert set(seen) <= {i.label for i in items}
    assert executor.actor_pids() == pids  # not a crash: the actors live on and are not replaced


class CrashingEvaluator(Evaluator):
    """Dies like a native crash (no Python exception) on any plan at int3."""

    def evaluate(self, plan):
        if any(config.bits == 3 for config in plan.as_dict().values()):
            os._exit(1)
        return super().evaluate(plan)


def crashing_evaluator() -> Evaluator:
    ev = tiny_evaluator()
    return CrashingEvaluator(ev.model, ev.unit_map, ev.batches, ev.device, head=ev.head)


def test_an_item_that_keeps_killing_workers_stops_after_max_retries(ray_local):
    local_eval = tiny_evaluator()
    items = _tiny_items(local_eval, [3])[:1]
    with ray_local(crashing_evaluator, 1, max_retries=1) as executor:
        with pytest.raises(QuantsenseError, match=rf"^{items[0].label}: Ray workers died 2 times while evaluating it"):
            list(executor.map(items))
        assert executor.restarts == 1  # the second death ends the run instead of starting another actor


def test_factory_error_names_the_problem(ray_local):
    factory = functools.partial(standin_evaluator, "/nonexistent/model", "/nonexistent/data.tsv", 4)
    local_eval = tiny_evaluator()
    with ray_local(factory, 1) as executor:
        with pytest.raises(QuantsenseError, match="could not build the evaluator: .*nonexistent"):
            list(executor.map(_tiny_items(local_eval, [4])))


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    from quantsense.engine.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(
        QuantsenseError, match=r"^--executor ray needs Ray: pip install -c constraints.txt -e '\.\[ray\]'$"
    ):
        RayExecutor(tiny_evaluator, 2)


def test_more_workers_than_the_cluster_holds_is_refused_before_any_actor_starts(ray_local):
    local_eval = tiny_evaluator()
    with ray_local(tiny_evaluator, 8) as executor:
        with pytest.raises(QuantsenseError, match=r"--workers 8 x 1 CPU each needs 8 CPUs but the Ray cluster has 4"):
            list(executor.map(_tiny_items(local_eval, [4])))
        assert executor._slots == []


def test_worker_with_other_weights_is_refused(ray_local):
    local_eval = tiny_evaluator()
    items = _tiny_items(local_eval, [4])
    with ray_local(functools.partial(tiny_evaluator, "distilbert"), 1) as executor:
        with pytest.raises(QuantsenseError, match="loaded different weights or data"):
            list(executor.map(items))


# -- a killed driver: the Engine with a store resumes where it stopped ---------------------------


def _sweep(store: str, model: str, data: str, executor: str) -> dict:
    """A block sweep (6 blocks x 5 bit-widths) through the Engine with a results store; its run statistics."""
    from quantsense.engine.ray_executor import RayExecutor

    ws = open_workspace(
        StudyOptions(model=model, data=data, settings={"limit": STANDIN_LIMIT}, device="cpu", quiet=True, store=None)
    )
    evaluator = ws.evaluator
    if executor == "ray":
        factory = functools.partial(standin_evaluator, model, data, STANDIN_LIMIT)
        chosen = RayExecutor(factory, 2, order_key=_first_block(evaluator))
    else:
        torch.set_num_threads(1)  # the actors' thread count: CPU matmul rounding depends on it
        chosen = LocalExecutor(evaluator)
    engine = Engine(evaluator, ws.model_fp, ws.data_fp, store=ResultStore(store), executor=chosen, quiet=True)
    entries = build_entries(ws.units, [QuantConfig(b) for b in (8, 6, 4, 3, 2)], "block")
    try:
        engine.evaluate_many([(e.label, e.plan) for e in entries])
    finally:
        if executor == "ray":
            chosen.close()
    return {"computed": engine.stats.computed, "from_store": engine.stats.from_store}


def _stored(store) -> dict[str, dict[str, np.ndarray]]:
    from quantsense.store import _decode

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as conn:
        return {label: _decode(blob) for label, blob in conn.execute("SELECT label, payload FROM evaluations")}


def _driver(store, model, data) -> list[str]:
    return [sys.executable, "-m", "tests.engine.test_ray", str(store), str(model), str(data)]


def _env() -> dict:
    pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": pythonpath, "RAY_USAGE_STATS_ENABLED": "0"}


def test_killed_driver_then_rerun_computes_only_the_rest(standin_dir, sst2_validation, tmp_path):
    import psutil

    total, at_least = 6 * 5, 4
    store = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(
        _driver(store, standin_dir, sst2_validation),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while store_rows(store) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    saved = store_rows(store)
    assert at_least <= saved < total
    # Ray's own agents exit a minute or two later, once they give up reporting to the dead GCS; the
    # processes that hold the model, CPUs and ports (GCS, raylet, actors) must go with the driver.
    agents = [p for p in ray_processes if p.name().endswith("Agent")]
    _, alive = psutil.wait_procs([p for p in ray_processes if p not in agents], timeout=30)
    assert not alive, f"Ray processes outlived the killed driver: {[p.name() for p in alive]}"
    for agent in agents:
        if agent.is_running():
            agent.kill()

    resumed = subprocess.run(
        _driver(store, standin_dir, sst2_validation), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {"computed": total - saved, "from_store": saved}

    clean = tmp_path / "clean.sqlite"
    assert _sweep(str(clean), str(standin_dir), str(sst2_validation), "local") == {"computed": total, "from_store": 0}
    _assert_identical(_stored(store), _stored(clean))


if __name__ == "__main__":
    print(json.dumps(_sweep(sys.argv[1], sys.argv[2], sys.argv[3], "ray")))


def test_cli_sweep_with_the_ray_executor_equals_the_local_one(
    ray_local, tiny_model_dir, sst2_validation, tmp_path, capsys
):
    """The user's way in: --executor ray --workers 2 gives the rows the local executor gives."""
    from quantsense.cli import main

    common = [
        "sensitivity",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "40",
        "--bits",
        "8",
        "3",
        "--no-store",
        "--quiet",
        "--device",
        "cpu",
        "--exhaustive",
    ]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert (
        main([*common, "--executor", "ray", "--workers", "2", "--ray-address", "auto", "--out", str(tmp_path / "ray")])
        == 0
    )
    capsys.readouterr()
    local = json.loads((tmp_path / "local" / "results.json").read_text())["sensitivity"]["rows"]
    on_ray = json.loads((tmp_path / "ray" / "results.json").read_text())["sensitivity"]["rows"]
    assert [(r["unit"], r["format"]) for r in local] == [(r["unit"], r["format"]) for r in on_ray]
    for a, b in zip(local, on_ray):
        assert a["kl_mean"] == pytest.approx(
            b["kl_mean"], rel=1e-4, abs=1e-9
        )  # 1 thread per actor vs 2: float rounding only
        assert a["accuracy"] == b["accuracy"]


def test_quiet_drops_rays_cluster_error_messages_but_not_worker_output(capsys, monkeypatch):
    import ray._private.worker as ray_worker

    from quantsense.engine.ray_executor import silence_ray_error_messages

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored after the test
    died = {"lines": ["A worker died or was killed while executing a task"], "pid": "raylet", "is_err": False}
    silence_ray_error_messages(True)
    silence_ray_error_messages(True)  # two quiet executors: wrapped once
    ray_worker.print_to_stdstream(died, ignore_prefix=True)
    assert "worker died" not in capsys.readouterr().out
    ray_worker.print_to_stdstream(
        {
            "lines": ["a worker's own line"],
            "pid": 4242,
            "ip": "127.0.0.1",
            "is_err": False,
            "actor_name": "",
            "task_name": "",
            "job": "01",
        },
        ignore_prefix=True,
    )
    assert "a worker's own line" in capsys.readouterr().out
    silence_ray_error_messages(False)
    ray_worker.print_to_stdstream(died, ignore_prefix=True)
    assert "worker died" not in capsys.readouterr().out  # one quiet executor is still open
    silence_ray_error_messages(False)
    ray_worker.print_to_stdstream(died, ignore_prefix=True)
    assert "worker died" in capsys.readouterr().out  # none is: Ray's messages are back


def test_the_lookup_is_asked_before_each_item_goes_to_an_actor(tiny_on_ray):
    """What another writer committed meanwhile is yielded as found, not evaluated on an actor."""
    local_eval, executor = tiny_on_ray
    items = _tiny_items(local_eval, [5])
    known = {items[1].key: _local_arrays(local_eval, [items[1]])[items[1].label]}
    asked = []

    def lookup(item):
        asked.append(item.label)
        return EvalResult(known[item.key]) if item.key in known else None

    executor.seconds.clear()
    got = {item.label: result.arrays for item, result in executor.map(items, lookup=lookup)}
    assert sorted(asked) == sorted(item.label for item in items)
    assert items[1].key not in executor.seconds and all(
        item.key in executor.seconds for item in items if item is not items[1]
    )
    assert np.array_equal(got[items[1].label]["logits"], known[items[1].key]["logits"])
    assert set(got) == {item.label for item in items}
