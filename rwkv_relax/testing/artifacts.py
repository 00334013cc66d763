"""Readers for built artifacts, to check them on a machine that cannot run them."""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little endian
MACHO_MAGIC_64 = 0xFEEDFACF
CPU_TYPE_ARM64 = 0x0100000C
LC_BUILD_VERSION = 0x32
MACHO_PLATFORMS = {1: "macos", 2: "ios", 3: "tvos", 4: "watchos", 7: "iossimulator"}
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0xF3: "riscv"}


def tar_members(path: str | Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def macho_info(data: bytes) -> dict:
    """CPU type and LC_BUILD_VERSION platform of a 64-bit Mach-O object."""
    magic, cputype = struct.unpack_from("<II", data, 0)
    if magic != MACHO_MAGIC_64:
        return {"macho": False}
    ncmds = struct.unpack_from("<I", data, 16)[0]
    off, platform = 32, None
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, off)
        if cmd == LC_BUILD_VERSION:
            platform = MACHO_PLATFORMS.get(struct.unpack_from("<I", data, off + 8)[0], "other")
        off += size
    return {"macho": True, "arm64": cputype == CPU_TYPE_ARM64, "platform": platform}


def elf_machine(data: bytes) -> str | None:
    if data[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(struct.unpack_from("<H", data, 18)[0], "other")


def extract_fatbins(data: bytes) -> list[bytes]:
    """The nvcc fatbins TVM embeds (in its own blob, where cuobjdump does not look)."""
    out, off = [], data.find(FATBIN_MAGIC)
    while off >= 0:
        _, _, header, size = struct.unpack_from("<IHHQ", data, off)
        out.append(data[off:off + header + size])
        off = data.find(FATBIN_MAGIC, off + header + size)
    return out


def cuobjdump() -> str | None:
    """PyPI's nvidia-cuda-cuobjdump, else one on PATH."""
    here = Path(sys.prefix) / "lib"
    for cand in here.glob("python3*/site-packages/nvidia/cu*/bin/cuobjdump"):
        return str(cand)
    try:
        import nvidia  # pylint: disable=import-outside-toplevel
        for root in nvidia.__path__:
            for cand in Path(root).glob("cu*/bin/cuobjdump"):
                return str(cand)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def fatbin_contents(fatbin: bytes, workdir: Path) -> list[str]:
    """``cuobjdump -lelf -lptx``: lines like 'ELF file 1: x.1.sm_90.cubin', 'PTX file 1: ...'."""
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    path = workdir / "device.fatbin"
    path.write_bytes(fatbin)
    out = subprocess.run([tool, "-lelf", "-lptx", str(path)], check=True, capture_output=True, text=True)
    return [l.strip() for l in out.stdout.splitlines() if l.strip()]
