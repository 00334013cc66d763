"""The size of TVM's CPU thread pool, set where a CPU model starts (never at import)."""
from __future__ import annotations

import functools
import os


def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity`` where the OS has it, e.g. not macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def use_all_cpus() -> int:
    """TVM's pool assumes hyper-threading and starts with half the logical CPUs (1 thread on a
    2-vCPU machine), and decode on llvm is bound by memory bandwidth, which one core cannot
    saturate: use every CPU we may run on, unless the user chose with ``TVM_NUM_THREADS``.
    Returns the pool size."""
    import tvm
    if os.environ.get("TVM_NUM_THREADS"):
        return int(tvm.get_global_func("runtime.NumThreads")())
    n = usable_cpus()
    # -3: kSpecifyThreadShareAllCore, every worker may run on any of our CPUs
    tvm.get_global_func("runtime.config_threadpool")(-3, n, [str(c) for c in _cpu_ids(n)])
    return n


def _cpu_ids(n: int) -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(n))
