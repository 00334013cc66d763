"""metal (Apple silicon Macs) and iphone (iOS): Metal kernels, arm64 host code. On Linux the
artifact is a tar of Mach-O objects for Xcode to link; a macOS host with Xcode writes a .dylib."""
from __future__ import annotations

import platform
import shutil

from ..errors import ToolchainError
from .preset import TargetPreset, export_tar


def _metal(chip: str | None) -> dict:
    return {"kind": "metal", "max_threads_per_block": 1024, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 32,
            "host": {"kind": "llvm", "mtriple": "arm64-apple-macos11.0.0", "mcpu": chip or "apple-m1"}}


def _iphone(chip: str | None) -> dict:
    return {"kind": "metal", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 1, "libs": ["iphoneos"],
            "host": {"kind": "llvm", "mtriple": "arm64-apple-ios14.0.0", "mcpu": chip or "apple-a12"}}


def _check_dylib(output: str) -> None:
    if output.endswith(".dylib") and (platform.system() != "Darwin" or not shutil.which("xcrun")):
        raise ToolchainError("a metal .dylib needs Xcode (xcrun) on macOS; on Linux write a .tar "
                             "(-o lib.tar) and link it on the Mac")


def _export_metal(ex, path: str, prefix: str | None) -> None:
    if path.endswith(".dylib"):
        _check_dylib(path)
        from tvm.support import xcode
        ex.export_library(path, fcompile=xcode.create_dylib, arch="arm64", sdk="macosx")
    else:
        export_tar(ex, path, prefix)


METAL = TargetPreset("metal", _metal, ".dylib" if platform.system() == "Darwin" else ".tar", _export_metal,
                     False, "Apple silicon Macs (Metal)", chip_help="an Apple LLVM cpu (default apple-m1)",
                     toolchain=_check_dylib)
IPHONE = TargetPreset("iphone", _iphone, ".tar", export_tar, True, "iOS (Metal, static system lib)",
                      chip_help="an Apple LLVM cpu (default apple-a12)")
