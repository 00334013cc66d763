"""What a host function of an OpenCL build launches, read from its TIR after SplitHostDevice, and
the shipped OpenCL source cut into one section per kernel (for :mod:`.opencl_runner`)."""
from __future__ import annotations

import dataclasses
import re

import tvm
from tvm import tirx

THREAD_AXES = {"x": 0, "y": 1, "z": 2}


@dataclasses.dataclass
class Launch:
    """One ``call_ffi_kernel`` of a host function."""

    kernel: str
    args: list  # per kernel parameter: ("buffer", host param index) or ("scalar", PrimExpr, dtype)
    grid: list  # 3 PrimExprs over host variables: blocks along x, y, z
    block: list  # 3 PrimExprs: threads per block along x, y, z


@dataclasses.dataclass
class KernelFunction:
    """A host function of the build, the device kernels it launches and its llvm twin."""

    name: str  # symbol, with the system-lib prefix
    host: tirx.PrimFunc  # after SplitHostDevice: buffer params, then launches
    launches: list[Launch]
    lets: list  # (var, value) bound by the host code before its launches, in order
    reference: tirx.PrimFunc  # before dlight (or the WKV "cpu" form): same params

    @property
    def size_vars(self) -> list[str]:
        """Names of the symbolic sizes in the parameters' shapes."""
        names = []
        for p in self.host.params:
            for dim in p.shape:
                if isinstance(dim, tirx.Var) and dim.name not in names:
                    names.append(dim.name)
        return names


def _is_call(expr, op_name: str) -> bool:
    return isinstance(expr, tvm.ir.expr.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name


def _lookup(pairs, var):
    """Value paired with ``var`` (Vars compare by identity; ``==`` would build an expression)."""
    return next((value for key, value in pairs if key.same_as(var)), None)


def _launches(host: tirx.PrimFunc, kernels: dict) -> tuple[list[Launch], list]:
    """The kernel launches of ``host`` in program order, each argument traced to a host parameter
    or a scalar expression, and the host's ``(var, value)`` lets those expressions may use."""
    symbol = host.attrs["global_symbol"]
    buffers = [(p, i) for i, p in enumerate(host.params)]  # buffer var -> host param index
    lets, launches, unsupported = [], [], set()

    def launch(call) -> Launch:
        name = str(call.args[0].value)
        tags = [str(t) for t in call.attrs.launch_params]
        dev_params = kernels[name].params
        n = len(dev_params)
        values = list(call.args[1:])
        if len(values) != n + len(tags):
            raise NotImplementedError(f"{name}: {len(values)} launch arguments for {n} parameters "
                                      f"and launch parameters {tags}")
        args = []
        for dev_param, value in zip(dev_params, values[:n]):
            if _is_call(value, "tirx.buffer_data"):
                index = _lookup(buffers, value.args[0])
                if index is None:
                    raise NotImplementedError(f"{name}: argument {value} is not a buffer parameter of {symbol}")
                args.append(("buffer", index))
            else:
                args.append(("scalar", value, str(dev_param.ty.dtype)))
        grid, block = [tirx.IntImm("int64", 1)] * 3, [tirx.IntImm("int64", 1)] * 3
        for tag, extent in zip(tags, values[n:]):
            kind, _, axis = tag.partition(".")
            if kind == "blockIdx":
                grid[THREAD_AXES[axis]] = extent
            elif kind == "threadIdx":
                block[THREAD_AXES[axis]] = extent
            else:  # e.g. tirx.use_dyn_shared_memory: our schedules do not produce it
                raise NotImplementedError(f"{name}: launch parameter {tag!r}")
        return Launch(name, args, grid, block)

    def walk(stmt):  # pre-order: lets and DeclBuffers come before the launches that use them
        if isinstance(stmt, tirx.DeclBuffer) and _is_call(stmt.data, "tirx.buffer_data"):
            root = _lookup(buffers, stmt.data.args[0])
            if root is not None:
                buffers.append((stmt.buffer, root))
        elif isinstance(stmt, (tirx.Bind, tirx.LetStmt)):
            lets.append((stmt.var, stmt.value))
        elif isinstance(stmt, tirx.Evaluate) and _is_call(stmt.value, "tirx.call_ffi_kernel"):
            launches.append(launch(stmt.value))
        elif isinstance(stmt, (tirx.AllocBuffer, tirx.IfThenElse, tirx.For, tirx.While)):
            unsupported.add(type(stmt).__name__)
        if isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                walk(s)
        elif isinstance(getattr(stmt, "body", None), tirx.Stmt):
            walk(stmt.body)

    walk(host.body)
    if unsupported and launches:
        # host-side control flow or scratch buffers around launches: none of this project's
        # functions has them (each is one launch); refuse rather than run them wrong
        raise NotImplementedError(f"{symbol}: host code with {sorted(unsupported)} around its launches")
    return launches, lets


def _split_sources(source: str) -> dict[str, str]:
    """``{kernel: its section}`` of an OpenCL module's ``inspect_source()``. Each section declares
    every kernel and defines its own, so it builds on its own (TVM's runtime builds them so)."""
    parts = re.split(r"^// Function: (\w+)\n", source, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _opencl_source(module) -> str:
    if module.kind == "opencl":
        return module.inspect_source()
    return "".join(_opencl_source(m) for m in module.imports)
