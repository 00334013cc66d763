"""The packed group format's constants, shared by the factory and the llvm forms."""


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _check(n: int, k: int, bits: int, group: int) -> None:
    if bits not in (4, 8) or k % group or group % (32 // bits) or k % 32:
        raise ValueError(f"unsupported quantized matmul: N={n} K={k} bits={bits} group={group}")
