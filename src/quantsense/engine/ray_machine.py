"""What the Ray executor asks of this machine and of Ray's driver: usable CPUs, and its cluster messages muted."""

from __future__ import annotations

import math
import os


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (containers started with --cpus)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
    except (OSError, ValueError):
        return count
    return count if quota == "max" else max(1, min(count, math.ceil(int(quota) / int(period))))


_QUIET = {"active": 0}  # quiet executors alive; while any is, Ray's cluster error messages are dropped


def silence_ray_error_messages(on: bool = True) -> None:
    """Drop (``on``) or show again the error messages Ray's driver prints for the cluster's events ("A worker died or
    was killed ...", several lines each); workers' own output is untouched. Ray has no switch for them: its listener
    calls the module's ``print_to_stdstream``, which is wrapped here once and filters only while a quiet executor is open."""
    _QUIET["active"] = max(0, _QUIET["active"] + (1 if on else -1))
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "quantsense_filtered", False):
        return

    def without_cluster_errors(data, *args, **kwargs):
        if _QUIET["active"] and data.get("pid") == "raylet":  # listen_error_messages' messages; worker logs carry a pid
            return None
        return original(data, *args, **kwargs)

    without_cluster_errors.quantsense_filtered = True
    ray_worker.print_to_stdstream = without_cluster_errors
