"""The RNNState get/set kernels (tir_kernels/rnn_state.py) against their numpy twins.

Both forms run on llvm: "cpu" as built, "gpu" as its unscheduled block (what dlight's fallback
rule then binds to threads). Batches use scattered sequence slots and history entries, so a
kernel that ignored either index, or wrote the entry it read instead of the next one, fails.
"""

import functools

import numpy as np
import pytest
import tvm

from tir_kernels import kernel, retarget
from tir_kernels.rnn_state import state_copy, state_get_numpy, state_set_numpy

LLVM = {"kind": "llvm", "mcpu": tvm.get_global_func("target.llvm_get_system_cpu")()}
FORMS = ("cpu", "gpu")
# a token-shift row, a WKV-like (H, N, N) state, and a rank-2 one
SHAPES = [(24,), (3, 8, 8), (5, 6)]


@functools.lru_cache(maxsize=None)
def _fn(shape, dtype, direction, form):
    func = state_copy(shape, dtype, direction, target=form).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target(LLVM))["main"]


def _case(rng, shape, dtype, max_seqs, max_history, seq, hist):
    storage = rng.standard_normal((max_seqs, max_history, *shape)).astype(dtype)
    return storage, np.array(seq, np.int32), np.array(hist, np.int32)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("max_history,seq,hist", [(1, [0], [0]), (3, [2], [1]), (3, [3, 0, 2], [2, 0, 1])])
def test_get_and_set_match_numpy(form, shape, dtype, max_history, seq, hist):
    rng = np.random.default_rng(len(seq) * 10 + max_history)
    storage, seq, hist = _case(rng, shape, dtype, 4, max_history, seq, hist)

    out = tvm.runtime.tensor(np.zeros((len(seq), *shape), dtype))
    _fn(shape, dtype, "get", form)(tvm.runtime.tensor(storage), tvm.runtime.tensor(seq),
                                   tvm.runtime.tensor(hist), out)
    np.testing.assert_array_equal(out.numpy(), state_get_numpy(storage, seq, hist))

    data = rng.standard_normal((len(seq), *shape)).astype(dtype)
    dev_storage = tvm.runtime.tensor(storage)
    _fn(shape, dtype, "set", form)(dev_storage, tvm.runtime.tensor(seq), tvm.runtime.tensor(hist),
                                   tvm.runtime.tensor(data))
    expected = storage.copy()
    state_set_numpy(expected, seq, hist, data)
    np.testing.assert_array_equal(dev_storage.numpy(), expected)  # every other entry untouched


def test_cpu_form_is_parallel_per_leading_row_and_gpu_form_is_a_block():
    # rank-1 states (token-shift rows) stay serial: a thread-pool launch costs more than them
    assert "parallel" in state_copy((3, 8, 8), "float32", "get", target="cpu").script()
    assert "parallel" not in state_copy((24,), "float32", "get", target="cpu").script()
    assert "T.sblock" in state_copy((3, 8, 8), "float32", "get", target="gpu").script()
    with pytest.raises(ValueError, match="unknown state_copy target"):
        state_copy((3,), "float32", "get", target="vulkan")


def test_models_get_the_tagged_cpu_form_and_gpu_pipelines_can_swap_it():
    func = kernel("state_copy", [3, 8, 8], "float16", "set")
    assert str(func.attrs["rwkv_kernel"]) == "state_copy"
    gpu = retarget(func, "gpu")
    assert "T.sblock" in gpu.script() and "parallel" not in gpu.script()
    assert str(gpu.attrs["rwkv_kernel_args"]) == str(func.attrs["rwkv_kernel_args"])
