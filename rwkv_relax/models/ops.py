"""The one bridge from the models to ``tir_kernels``: each hand-written kernel as a function on
nn Tensors, hiding the single-sequence / ragged-batch choice, the placeholders and the reshapes.

Kernels are built in their default ("cpu") form and tagged (``tir_kernels.kernel``); the target
pipelines swap in other forms (GPU, instruction-set specific), so the models never see targets.
Letters: T tokens (packed over all sequences), B sequences, H heads, N head size, A = H * N.
"""
from __future__ import annotations

from tvm.relax.frontend.nn import Tensor, op

from tir_kernels import kernel
from tir_kernels.quant_matmul import dequantize_element, q_matmul_te  # noqa: F401  (TE helpers)

F32 = "float32"


def wkv4(k: Tensor, v: Tensor, w: Tensor, u: Tensor, aa: Tensor, bb: Tensor, pp: Tensor, seg_last):
    """RWKV-4 WKV with the max trick (tir_kernels/wkv4.py). k, v: (T, A) fp32; w, u: (A,);
    aa, bb, pp: (B, A) -> wkv (T, A), new (aa, bb, pp) each (B, A).

    The three states travel as one (3, ...) buffer in and one out: as separate buffers they would
    bind more storage buffers than a WebGPU shader may."""
    T, A = k.shape[0], k.shape[1]
    if seg_last is None:
        s_in = op.concat([aa, bb, pp], dim=0)  # 3 x (1, A) -> (3, A)
        out, s_out = op.tensor_ir_op(kernel("wkv4", A), "wkv4", [k, v, w, u, s_in],
                                     [Tensor.placeholder([T, A], F32), Tensor.placeholder([3, A], F32)])
        return out, op.split(s_out, 3, axis=0)  # (3, A) -> 3 x (1, A)
    B = aa.shape[0]
    s_in = op.concat([op.reshape(s, [1, B, A]) for s in (aa, bb, pp)], dim=0)  # (3, B, A)
    out, s_out = op.tensor_ir_op(kernel("wkv4_ragged", A), "wkv4_ragged", [k, v, w, u, s_in, seg_last],
                                 [Tensor.placeholder([T, A], F32), Tensor.placeholder([3, B, A], F32)])
    return out, [op.reshape(s, [B, A]) for s in op.split(s_out, 3, axis=0)]  # 3 x (B, A)


def _head_scan(name: str, args: list, s: Tensor, seg_last):
    """A WKV5/6/7 kernel call: ``args`` (the first (T, H, N)) then the state s (B, H, N, N) ->
    out (T, H, N), new s. One sequence (``seg_last`` None) takes the single-sequence kernel on
    the (H, N, N) state; a packed batch takes the ragged one with ``seg_last`` last."""
    T, H, N = args[0].shape
    if seg_last is None:
        out, s_new = op.tensor_ir_op(kernel(name, H, N), name, [*args, op.reshape(s, [H, N, N])],
                                     [Tensor.placeholder([T, H, N], F32), Tensor.placeholder([H, N, N], F32)])
        return out, op.reshape(s_new, [1, H, N, N])
    ragged = f"{name}_ragged"
    return op.tensor_ir_op(kernel(ragged, H, N), ragged, [*args, s, seg_last],
                           [Tensor.placeholder([T, H, N], F32), Tensor.placeholder(s.shape, F32)])


def wkv5(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, s: Tensor, seg_last):
    """RWKV-5 WKV (tir_kernels/wkv5/). r, k, v: (T, H, N) fp32; w, u: (H, N); s: (B, H, N, N)
    [h, key, value] -> out (T, H, N), new s (B, H, N, N)."""
    return _head_scan("wkv5", [r, k, v, w, u], s, seg_last)


def wkv6(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, s: Tensor, seg_last):
    """RWKV-6 WKV (tir_kernels/wkv6/). r, k, v, w: (T, H, N) fp32 (w the per-token decay);
    u: (H, N); s: (B, H, N, N) [h, key, value] -> out (T, H, N), new s (B, H, N, N)."""
    return _head_scan("wkv6", [r, k, v, w, u], s, seg_last)


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, s: Tensor, seg_last):
    """RWKV-7 WKV (tir_kernels/wkv7/). r, w, k, v, a, b: (T, H, N) fp32; s: (B, H, N, N)
    [h, value, key] -> out (T, H, N), new s (B, H, N, N)."""
    return _head_scan("wkv7", [r, w, k, v, a, b], s, seg_last)


def state_copy(shape, dtype: str, direction: str):
    """The RNNState get/set kernel for one state entry (tir_kernels/rnn_state.py)."""
    return kernel("state_copy", shape, dtype, direction)


def q_gemv(x: Tensor, q: Tensor, scale: Tensor, out_features: int, in_features: int, bits: int,
           group: int, out_dtype: str) -> Tensor:
    """One row times a group-quantized weight (tir_kernels/quant_matmul/): (1, K) -> (1, N)."""
    func = kernel("q_gemv", out_features, in_features, bits, group, x.dtype, out_dtype)
    return op.tensor_ir_op(func, "q_gemv", [x, q, scale], Tensor.placeholder([1, out_features], out_dtype))


def ffn_value(k: Tensor, w_t: Tensor, out_dtype: str) -> Tensor:
    """The channel mix's ``k @ w_t`` over the nonzero entries of k (tir_kernels/ffn_value/):
    k (T, F), w_t (F, C) hidden-major -> (T, C), fp32 accumulation."""
    F, C = (int(d) for d in w_t.shape)
    func = kernel("ffn_value", F, C, k.dtype, w_t.dtype, out_dtype)
    return op.tensor_ir_op(func, "ffn_value", [k, w_t], Tensor.placeholder([k.shape[0], C], out_dtype))


def ffn_value_q(k: Tensor, q: Tensor, scale: Tensor, out_features: int, bits: int, group: int,
                out_dtype: str) -> Tensor:
    """:func:`ffn_value` with the hidden-major weight group-quantized along C (each row's codes
    and scales self-contained): q (F, C*bits/32), scale (F, C/group)."""
    F = int(q.shape[0])
    func = kernel("ffn_value_q", F, out_features, bits, group, k.dtype, out_dtype)
    return op.tensor_ir_op(func, "ffn_value_q", [k, q, scale],
                           Tensor.placeholder([k.shape[0], out_features], out_dtype))
