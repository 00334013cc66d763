"""The size of TVM's CPU thread pool, set where a CPU model runs (never at import).

TVM keeps one pool per calling thread (``ThreadPool::ThreadLocal``): a model driven from another
thread (the server's engine loop) gets a fresh pool of the default size unless that thread
configures its own, which ran the server's steps at half speed on 2 vCPUs."""
from __future__ import annotations

import os
import threading


def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity`` where the OS has it, e.g. not macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_configured: dict[int, int] = {}  # thread ident -> its pool size


def use_all_cpus() -> int:
    """TVM's pool assumes hyper-threading and starts with half the logical CPUs (1 thread on a
    2-vCPU machine), and decode on llvm is bound by memory bandwidth, which one core cannot
    saturate: use every CPU we may run on, unless the user chose with ``TVM_NUM_THREADS``.
    Configures the calling thread's pool (once per thread; later calls cost a dict lookup) and
    returns its size."""
    ident = threading.get_ident()
    if ident in _configured:
        return _configured[ident]
    import tvm
    if os.environ.get("TVM_NUM_THREADS"):
        n = int(tvm.get_global_func("runtime.NumThreads")())
    else:
        n = usable_cpus()
        # -3: kSpecifyThreadShareAllCore, every worker may run on any of our CPUs
        tvm.get_global_func("runtime.config_threadpool")(-3, n, [str(c) for c in _cpu_ids(n)])
    _configured[ident] = n
    return n


def _cpu_ids(n: int) -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(n))
