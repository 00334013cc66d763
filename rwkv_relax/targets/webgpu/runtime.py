"""The webgpu target's toolchain: TVM's web runtime built from the wheel's own sources with
emscripten, and model libraries linked against it into one ``.wasm`` that tvmjs
(``@mlc-ai/web-runtime``) instantiates.

The apache-tvm wheel ships the runtime's sources (``tvm/web/emcc``, ``tvm/src/runtime``,
tvm_ffi's ``src`` and headers) but not its built objects (``web/dist/wasm/*.bc``) and not nine
headers those sources include; ``headers/`` beside this file holds our own minimal versions
of those headers. The runtime is compiled once per (TVM, emcc, our headers) and cached under
``$XDG_CACHE_HOME/rwkv_relax/web_runtime/`` (about 2 minutes on 2 cores).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..._fs import cache_dir
from ...cli import log, one_line_errors
from ...errors import ToolchainError

RUNTIME_UNITS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
HEADERS_DIR = Path(__file__).parent / "headers"
# tvm/web/Makefile's EMCC_CFLAGS, at -O2 instead of -O3 (113 s for all three on 2 cores)
RUNTIME_CFLAGS = ["-O2", "-std=c++17", "-Wno-ignored-attributes"]
# What tvm.support.emcc.create_tvmjs_wasm passes, minus its fixed -O3. The link time is nearly
# all wasm-opt: ~2 min at -O3, ~47 s at -O2, ~2 s at -O1 (7 MB instead of 4 MB for a small model),
# so export_wasm links at -O1; the kernels run on the GPU either way.
LINK_FLAGS = ["--no-entry", "-s", "WASM_BIGINT=1", "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
              "-s", "STANDALONE_WASM=1", "-s", "ALLOW_MEMORY_GROWTH=1", "-s", "TOTAL_MEMORY=160MB"]


def check_web_toolchain() -> str:
    """Path of emcc, or a one-line ToolchainError naming what to install."""
    emcc = shutil.which("emcc")
    if emcc is None:
        raise ToolchainError("emcc not found: the webgpu target links with emscripten "
                             "(apt install emscripten, or activate an emsdk)")
    return emcc


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if "error" in l.lower()]
        first = (lines or (proc.stderr + proc.stdout).strip().splitlines() or ["?"])[0]
        raise ToolchainError(f"{what} failed (emcc exit {proc.returncode}): {first[:300]}")


def emcc_version(emcc: str) -> str:
    out = subprocess.run([emcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"\b(\d+\.\d+\.\d+)\b", out)
    return match.group(1) if match else "unknown"


# ---- the runtime ----------------------------------------------------------------------------
def _wheel_dirs() -> dict[str, Path]:
    """Where the installed wheels keep the runtime sources, by their place in a TVM checkout."""
    import tvm
    import tvm_ffi
    tvm_dir, ffi_dir = Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent
    dirs = {
        "web/emcc": tvm_dir / "web" / "emcc",
        "src/runtime": tvm_dir / "src" / "runtime",
        "include": tvm_dir / "include",
        "3rdparty/tvm-ffi/include": ffi_dir / "include",
        "3rdparty/tvm-ffi/src": ffi_dir / "src",
        "3rdparty/tvm-ffi/3rdparty/dlpack/include": ffi_dir / "3rdparty" / "dlpack" / "include",
    }
    missing = [str(p) for p in dirs.values() if not p.is_dir()]
    if missing:
        raise ToolchainError(f"the TVM wheel lacks the web runtime sources ({missing[0]}); "
                             "reinstall apache-tvm")
    if not (HEADERS_DIR / "include" / "tvm" / "support" / "io.h").is_file():
        raise ToolchainError(f"{HEADERS_DIR} (rwkv_relax's replacement headers) is missing from this "
                             "install; reinstall rwkv_relax")
    return dirs


def _headers_digest() -> str:
    h = hashlib.sha256(" ".join(RUNTIME_CFLAGS).encode())
    for f in sorted(HEADERS_DIR.rglob("*.h")):
        h.update(str(f.relative_to(HEADERS_DIR)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def runtime_cache_dir(emcc: str) -> Path:
    import tvm
    return cache_dir("web_runtime") / f"tvm-{tvm.__version__}-emcc-{emcc_version(emcc)}-{_headers_digest()}"


def stage_sources(root: Path) -> Path:
    """Lay out a TVM checkout's runtime part under ``root`` from the wheels plus our headers.
    Real copies, not symlinks: the sources include ``../support/x.h`` relative to themselves,
    and a symlinked file would resolve that through its real (wheel) path."""
    for rel, src in _wheel_dirs().items():
        shutil.copytree(src, root / rel, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc"))
    shutil.copytree(HEADERS_DIR, root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc", "*.md"))
    return root


def _include_flags(root: Path) -> list[str]:
    # as tvm/web/Makefile's INCLUDE_FLAGS
    return [f"-I{root}", f"-I{root / 'include'}", f"-I{root / '3rdparty/tvm-ffi/include'}",
            f"-I{root / '3rdparty/tvm-ffi/3rdparty/dlpack/include'}",
            f"-I{root / '3rdparty/compiler-rt'}"]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same runtime waits
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def runtime_objects(emcc: str | None = None) -> list[Path]:
    """The web runtime's wasm object files, built on first use and cached."""
    emcc = emcc or check_web_toolchain()
    out = runtime_cache_dir(emcc)
    objects = [out / f"{unit}.o" for unit in RUNTIME_UNITS]
    if all(o.is_file() for o in objects):
        return objects
    with _locked(out.with_name(out.name + ".lock")):
        if all(o.is_file() for o in objects):  # built while we waited
            return objects
        log.info("building TVM's web runtime with emcc into %s (once, ~2 min on 2 cores)", out)
        t0 = time.perf_counter()
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            root = stage_sources(work / "tvm")
            flags = _include_flags(root) + RUNTIME_CFLAGS

            def compile_unit(unit: str) -> None:
                _run([emcc, *flags, "-c", "-o", str(work / f"{unit}.o"),
                      str(root / "web" / "emcc" / f"{unit}.cc")], f"compiling the web runtime's {unit}.cc")
            # wasm_runtime.cc is most of the work; the others overlap with it
            with ThreadPoolExecutor(max_workers=min(len(RUNTIME_UNITS), os.cpu_count() or 1)) as pool:
                list(pool.map(compile_unit, RUNTIME_UNITS))
            out.mkdir(parents=True, exist_ok=True)
            for unit in RUNTIME_UNITS:
                os.replace(work / f"{unit}.o", out / f"{unit}.o")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("web runtime built in %.0f s", time.perf_counter() - t0)
    return objects


# ---- model libraries ------------------------------------------------------------------------
def link_wasm(output: str | Path, objects: list[str], opt: str = "-O1") -> None:
    """Link model objects with the runtime into a standalone ``.wasm`` for tvmjs."""
    emcc = check_web_toolchain()
    runtime = runtime_objects(emcc)
    with tempfile.TemporaryDirectory() as tmp:
        # emcc picks the output kind from the extension: link to *.wasm, then move into place
        linked = Path(tmp) / "lib.wasm"
        _run([emcc, opt, *LINK_FLAGS, "-o", str(linked), *map(str, runtime), *map(str, objects)],
             "linking the .wasm")
        shutil.move(str(linked), str(output))


def export_wasm(ex, path: str | Path, opt: str = "-O1") -> None:
    """Write the executable ``ex`` (built for webgpu, system lib) as a tvmjs ``.wasm``.

    The host code is written as wasm object files (``object_format = "o"``): TVM's LLVM emits
    bitcode newer than emscripten's LLVM reads ("Opaque pointers are only supported in
    -opaque-pointers mode")."""
    def fcompile(output, objects, **kwargs):
        link_wasm(output, objects, opt)
    fcompile.object_format = "o"
    fcompile.need_system_lib = True
    ex.export_library(str(path), fcompile=fcompile)


@one_line_errors
def main(argv=None) -> int:
    """``python -m rwkv_relax.targets.webgpu.runtime``: build (or find) the cached web runtime;
    print its objects."""
    for obj in runtime_objects():
        print(obj)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
