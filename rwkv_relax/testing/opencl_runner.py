"""Run the OpenCL kernels of a real android build on an OpenCL device (PoCL on CI) and compare
each with its unscheduled twin compiled for llvm.

The TVM wheel has no OpenCL runtime (USE_OPENCL=OFF), so this module plays its part:

* :class:`AndroidBuild` runs the android preset's own ``compile`` and
  keeps, through a pass instrument, every function after ``FuseTIR`` (each kernel as it was
  before dlight scheduled it: the llvm twin) and after the last ``tirx.SplitHostDevice`` (each
  host function with its ``call_ffi_kernel`` launches, and the device kernels' signatures).
  The OpenCL text that runs is the shipped one: the executable's opencl module, one
  ``// Function: <kernel>`` section per kernel, built on its own as TVM's OpenCL runtime does.
* :meth:`AndroidBuild.check` fills a host function's buffers with random data, runs its kernels
  through ``pyopencl`` and the llvm twin on copies, and returns every buffer of both sides. All
  buffers start equal, so in-place kernels (``rnn_state_set``) and partial writes compare like
  plain outputs.

Pitfalls, each handled once here:
* A kernel's parameters are NOT the PrimFunc's: SplitHostDevice sorts the buffers by name and
  appends the scalars the device code needs (symbolic sizes, or host ``cse_v*`` lets). The
  launch call gives the host expression of each, so buffers are matched through it.
* Launch sizes are the call's trailing arguments, one per ``launch_params`` tag; OpenCL's global
  size is blocks * threads per axis (x = 0, y = 1, z = 2).
* Scalars are ``long`` for int64 sizes: pass them as ``np.int64``.
* In tirx 0.27 a buffer is a Var: the call passes ``buffer_data(b)`` of a ``DeclBuffer`` whose
  ``data`` is ``buffer_data(param)``; follow the chain back to the parameter.
* Later passes update the IRModule in place: keep the functions, not the module.
* The WKV kernels reach the GPU pipeline already re-targeted to their thread-bound form; their
  llvm twin is the "cpu" form of the same tagged kernel (a different code path, same math).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np
import tvm
from tvm import tirx
from tvm.sym import Analyzer

from tir_kernels import retarget

from ..targets import get_target
from .opencl_launches import KernelFunction, Launch, _launches, _opencl_source, _split_sources  # noqa: F401


class OpenCLUnavailable(RuntimeError):
    """pyopencl, an ICD loader or an OpenCL platform is missing."""


@dataclasses.dataclass
class OpenCLDevice:
    context: object  # pyopencl.Context
    queue: object  # pyopencl.CommandQueue
    description: str


def open_device() -> OpenCLDevice:
    """The first OpenCL device, or :class:`OpenCLUnavailable` saying what is missing."""
    try:
        import pyopencl as cl  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise OpenCLUnavailable(f"pyopencl is not installed ({err}); run .ci/setup_opencl.sh") from None
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except cl.Error as err:  # no ICD loader, or no platform registered with it
        raise OpenCLUnavailable(f"no OpenCL platform ({err}); run .ci/setup_opencl.sh") from None
    if not devices:
        raise OpenCLUnavailable("the OpenCL platforms have no device; run .ci/setup_opencl.sh")
    dev = devices[0]
    ctx = cl.Context([dev])
    return OpenCLDevice(ctx, cl.CommandQueue(ctx), f"{dev.platform.name}: {dev.name} ({dev.version})")


# ---- the build -------------------------------------------------------------------------------
class AndroidBuild:
    """A compile of ``mod`` for an OpenCL target (the android preset), kept runnable kernel by
    kernel. ``functions`` maps each host function that launches kernels to what it launches."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, prefix: str | None = None):
        captured = {}

        @tvm.instrument.pass_instrument
        class Capture:
            """``{name: function}`` after the passes named; the last run wins (sub-builds inside
            FoldConstant run SplitHostDevice before the real one)."""

            def run_after_pass(self, mod, info):
                if info.name in ("FuseTIR", "tirx.SplitHostDevice"):
                    captured[info.name] = {gv.name_hint: f for gv, f in mod.functions.items()}

        with tvm.transform.PassContext(instruments=[Capture()]):
            self.executable = get_target("android").compile(mod, target, prefix)
        self.prefix = prefix or ""
        self.source = _opencl_source(self.executable.mod)
        self.sources = _split_sources(self.source)
        split, fused = captured["tirx.SplitHostDevice"], captured["FuseTIR"]
        kernels = {name: f for name, f in split.items()
                   if f.attrs is not None and int(f.attrs.get("calling_conv", 0)) == 2}
        self.functions: dict[str, KernelFunction] = {}
        for name, host in split.items():
            if name in kernels or not isinstance(host, tirx.PrimFunc):
                continue
            launches, lets = _launches(host, kernels)
            if not launches:  # host-only code (VM shape functions)
                continue
            ref = fused[name[len(self.prefix):]]
            if ref.attrs is not None and "rwkv_kernel" in ref.attrs:
                ref = retarget(ref, "cpu")
            self.functions[name] = KernelFunction(name, host, launches, lets, ref)
        absent = [l.kernel for f in self.functions.values() for l in f.launches if l.kernel not in self.sources]
        if absent:
            raise RuntimeError(f"kernels launched but absent from the OpenCL source: {absent}")
        self._llvm = None
        self._kernels = {}

    def find(self, pattern: str) -> list[str]:
        """Host functions whose name, without the prefix, fully matches the regex ``pattern``."""
        return [n for n in self.functions if re.fullmatch(pattern, n[len(self.prefix):])]

    def llvm(self) -> tvm.runtime.Module:
        """All llvm twins in one module (``ref_<i>``, in ``functions`` order), compiled once."""
        if self._llvm is None:
            mod = tvm.IRModule({f"ref_{i}": f.reference.with_attr("global_symbol", f"ref_{i}")
                                for i, f in enumerate(self.functions.values())})
            self._llvm = tvm.tirx.build(mod, target=tvm.target.Target("llvm"))
        return self._llvm

    def _kernel(self, device: OpenCLDevice, kernel: str):
        """The built kernel, once per device (a build costs ~0.3 s on PoCL; pyopencl warns when
        a kernel is fetched from its program twice)."""
        import pyopencl as cl  # pylint: disable=import-outside-toplevel
        key = (id(device.context), kernel)
        if key not in self._kernels:
            program = cl.Program(device.context, self.sources[kernel]).build()
            self._kernels[key] = cl.Kernel(program, kernel)
        return self._kernels[key]

    def check(self, name: str, sizes: dict[str, int], rng: np.random.Generator, device: OpenCLDevice,
              fill: Callable | None = None) -> "KernelCheck":
        """Run host function ``name`` on ``device`` and its twin on llvm from the same buffers.

        ``sizes`` gives a value to each symbolic size of the parameters (others are ignored).
        ``fill(function, param, shape, dtype, sizes, rng)`` (function without the prefix) returns
        a parameter's initial contents, or None for the default: standard normal floats, ints by
        :func:`default_int_fill`."""
        import pyopencl as cl  # pylint: disable=import-outside-toplevel
        func = self.functions[name]
        missing = [v for v in func.size_vars if v not in sizes]
        if missing:
            raise KeyError(f"{name} needs values for {missing}")
        analyzer = Analyzer()
        bound = []
        for p in func.host.params:
            for dim in p.shape:
                if isinstance(dim, tirx.Var) and not any(dim.same_as(v) for v in bound):
                    analyzer.bind(dim, tirx.IntImm(str(dim.ty.dtype), sizes[dim.name]))
                    bound.append(dim)
        for var, val in func.lets:
            analyzer.bind(var, val)

        def evaluate(expr) -> int:
            out = analyzer.simplify(expr)
            if not isinstance(out, tirx.IntImm):
                raise ValueError(f"{name}: {expr} is not a constant with sizes {sizes}")
            return int(out.value)

        inputs = []
        for p in func.host.params:
            shape, dtype = tuple(evaluate(d) for d in p.shape), str(p.dtype)
            data = fill(name[len(self.prefix):], p.name, shape, dtype, sizes, rng) if fill else None
            if data is None:
                data = (default_int_fill(p.name, shape, func, sizes, rng) if "int" in dtype
                        else rng.standard_normal(shape))
            inputs.append(np.ascontiguousarray(data, dtype=dtype))

        twin = [tvm.runtime.tensor(x.copy(), tvm.cpu()) for x in inputs]
        self.llvm()[f"ref_{list(self.functions).index(name)}"](*twin)
        expected = [t.numpy() for t in twin]

        flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
        bufs = [cl.Buffer(device.context, flags, hostbuf=x) if x.nbytes else None for x in inputs]
        launched = []
        for launch in func.launches:
            args = [bufs[a[1]] if a[0] == "buffer" else np.dtype(a[2]).type(evaluate(a[1]))
                    for a in launch.args]
            grid = tuple(evaluate(e) for e in launch.grid)
            block = tuple(evaluate(e) for e in launch.block)
            if 0 in grid:  # an empty launch: the runtime skips it too
                continue
            global_size = tuple(g * b for g, b in zip(grid, block))
            self._kernel(device, launch.kernel)(device.queue, global_size, block, *args)
            launched.append((launch.kernel, grid, block))
        got = []
        for x, buf in zip(inputs, bufs):
            out = np.empty_like(x)
            if buf is not None:
                cl.enqueue_copy(device.queue, out, buf)
            got.append(out)
        device.queue.finish()
        return KernelCheck(name, [p.name for p in func.host.params], inputs, expected, got, launched)


def default_int_fill(param: str, shape: tuple, func: KernelFunction, sizes: dict,
                     rng: np.random.Generator) -> np.ndarray:
    """Valid contents for a 1-D int buffer of this project's kernels, by the buffer's role.

    * ``input_ids``: ids below the row count of the table gathered from (the function's first
      float buffer: the embedding);
    * ``seq`` / ``hist`` (RNN-state gather/scatter): distinct slots below ``max_seqs``, history
      entries below ``max_history``;
    * any other is a packed batch's segment ends (``seg_last``, ``logit_positions``, or a relax
      temporary such as ``arange``'s output): strictly increasing, the last one the last token.
      The token count is the leading size of the function's first float buffer whose leading
      size is symbolic (the packed activations); without one, each sequence is one token."""
    if len(shape) != 1:
        raise ValueError(f"{func.name}: no rule to fill int buffer {param} of shape {shape}")
    n = shape[0]
    floats = [p for p in func.host.params if "float" in str(p.dtype) and p.shape]
    if param == "input_ids":
        return rng.integers(0, int(floats[0].shape[0]), n)
    if param == "seq":
        return rng.permutation(sizes["max_seqs"])[:n]
    if param == "hist":
        return rng.integers(0, sizes["max_history"], n)
    tokens = next((sizes[p.shape[0].name] for p in floats if isinstance(p.shape[0], tirx.Var)), n)
    if tokens < n:
        raise ValueError(f"{func.name}: {n} sequences cannot share {tokens} tokens")
    cuts = np.sort(rng.choice(np.arange(1, tokens), n - 1, replace=False))  # sequence starts
    return np.append(cuts - 1, tokens - 1)


@dataclasses.dataclass
class KernelCheck:
    """One run's buffers in parameter order: ``inputs`` as filled, ``expected`` after the llvm
    twin, ``got`` after the OpenCL kernels; ``launched`` lists (kernel, grid, block)."""

    name: str
    params: list[str]
    inputs: list[np.ndarray]
    expected: list[np.ndarray]
    got: list[np.ndarray]
    launched: list

    def errors(self) -> dict[str, float]:
        """Per parameter: max |got - expected| / max |expected| (ints: 0 if equal, else inf;
        inf too where the NaN patterns differ)."""
        out = {}
        for p, e, g in zip(self.params, self.expected, self.got):
            if e.size == 0:
                out[p] = 0.0
            elif e.dtype.kind in "iu":
                out[p] = 0.0 if np.array_equal(e, g) else float("inf")
            elif not np.array_equal(np.isnan(e), np.isnan(g)):
                out[p] = float("inf")
            else:
                e64, g64 = np.nan_to_num(e.astype(np.float64)), np.nan_to_num(g.astype(np.float64))
                out[p] = float(np.abs(e64 - g64).max() / max(np.abs(e64).max(), 1e-30))
        return out

    def max_error(self) -> float:
        return max(self.errors().values(), default=0.0)

    def written(self) -> list[str]:
        """Parameters the llvm twin changed: the outputs this check really compared."""
        return [p for p, x, e in zip(self.params, self.inputs, self.expected)
                if not np.array_equal(x, e, equal_nan=True)]

    def __getitem__(self, param: str) -> np.ndarray:
        """The OpenCL side's buffer ``param``."""
        return self.got[self.params.index(param)]

    def input(self, param: str) -> np.ndarray:
        return self.inputs[self.params.index(param)]
