"""rwkv_relax: compile RWKV language models with Apache TVM Relax."""
import os as _os

# TVM's CPU thread pool assumes hyper-threading and starts with half the logical CPUs (1 thread on
# a 2-vCPU machine), and its size is fixed at the first kernel launch: decode on llvm is bound by
# memory bandwidth, which one core cannot saturate. Use every CPU we may run on unless the user
# chose otherwise.
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0))))

from .engine import Engine  # noqa: E402
from .errors import RWKVRelaxError  # noqa: E402
from .runtime import load_model  # noqa: E402

__all__ = ["Engine", "RWKVRelaxError", "load_model"]
