"""The webgpu target for real: a small random RWKV-5 / RWKV-4 compiled to a .wasm, run in
headless Chromium (WebGPU on SwiftShader, i.e. the CPU) through tvmjs (@mlc-ai/web-runtime), its
logits after a prefill and several decode steps compared with the llvm build of the same
checkpoint.

Needs emcc (Debian emscripten), chromium, node and ``npm ci`` in tests/web; .ci/setup_web.sh
installs them. Without them the browser tests skip and say what is missing.
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rwkv_relax import build as build_cli
from rwkv_relax import load_model
from rwkv_relax.model_dir import convert
from rwkv_relax.pipeline import export, resolve_model
from rwkv_relax.targets import get_target

WEB_DIR = Path(__file__).parent / "web"
ARCHS = {"rwkv5": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448),
         "rwkv4": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512),
         "rwkv6": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448, dim_mix_lora=16, dim_decay_lora=24),
         "rwkv7": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512, dim_decay_lora=32, dim_a_lora=32,
                       dim_v_lora=16, dim_gate_lora=64)}
PROMPT = [3, 141, 59, 265, 358, 979, 323, 846]
DECODE = [264, 338, 327, 950, 288]  # fixed tokens: a near-tie argmax cannot make the runs diverge
RTOL = 1e-3  # of max|logit|; SwiftShader computes in fp32 like llvm, in another order


def missing_browser_tools() -> str | None:
    for tool, package in (("emcc", "emscripten"), ("chromium", "chromium"), ("node", "nodejs")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install {package}; see .ci/setup_web.sh)"
    for module in ("puppeteer-core", "@mlc-ai/web-runtime"):
        if not (WEB_DIR / "node_modules" / module / "package.json").is_file():
            return f"{module} not installed (npm ci in tests/web; see .ci/setup_web.sh)"
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``/<name>/...`` from ``routes[name]``, quietly."""
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}

    def __init__(self, *args, routes: dict[str, Path], **kwargs):
        self.routes = routes
        super().__init__(*args, **kwargs)

    def translate_path(self, path):
        name, _, rest = path.split("?", 1)[0].lstrip("/").partition("/")
        root = self.routes.get(name)
        if root is None:
            return str(Path("/nonexistent"))
        target = (root / rest).resolve()
        return str(target) if target.is_relative_to(root.resolve()) else str(Path("/nonexistent"))

    def log_message(self, *args):
        pass


def serve(routes: dict[str, Path]):
    """A loopback HTTP server in a thread; returns (server, base url)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, routes=routes))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run_in_browser(configs: list[dict], model_dir: Path, tmp_path: Path) -> list[dict]:
    """Run ``window.runModel(cfg)`` (tests/web/harness.js) for each config in one fresh
    headless Chromium; URLs in the configs are relative to the served model_dir."""
    server, base = serve({"web": WEB_DIR, "m": model_dir})
    try:
        configs = [{**c, "wasm": f"{base}/m/{c['wasm']}", "params": f"{base}/m/{c['params']}/"}
                   for c in configs]
        profile = tmp_path / "chromium-profile"
        proc = subprocess.run(["node", str(WEB_DIR / "run_harness.mjs"), shutil.which("chromium"),
                               str(profile), f"{base}/web/harness.html", json.dumps(configs)],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    if proc.returncode != 0:
        raise AssertionError(f"browser run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# What tvmjs's detectGPUDevice requests of the adapter (WebGPU's default is 8): a kernel with
# more storage buffers fails pipeline creation in every browser.
MAX_STORAGE_BUFFERS = 10
ARCH_PARAMS = list(ARCHS)


@pytest.fixture(scope="module")
def compiled(factory):
    """arch -> (checkpoint, executable for webgpu at q0f32, system-lib prefix, compile seconds)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            ckpt = factory.checkpoint(arch, "web", **ARCHS[arch])
            source = resolve_model(str(ckpt))
            t0 = time.perf_counter()
            mod, _ = export(source, "q0f32")
            prefix = ""  # wasm libraries are unprefixed system libs (web-llm's loader expects it)
            ex = get_target("webgpu").compile(mod, get_target("webgpu").target())
            cache[arch] = (ckpt, ex, prefix, time.perf_counter() - t0)
        return cache[arch]
    return get


def wgsl_storage_buffers(ex) -> dict[str, int]:
    """Kernel name -> number of storage buffers it binds, from the WGSL in the executable."""
    def sources(m):
        if m.kind == "webgpu":
            yield m.inspect_source()
        for sub in m.imports:
            yield from sources(sub)
    counts = {}
    for wgsl in sources(ex.mod):
        for chunk in re.split(r"\n(?=// Function: )", wgsl):
            name = re.match(r"// Function: (\S+)", chunk)
            if name:
                counts[name.group(1)] = len(re.findall(r"var<storage\b", chunk))
    return counts


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_kernels_fit_the_webgpu_device_tvmjs_requests(compiled, arch):
    counts = wgsl_storage_buffers(compiled(arch)[1])
    assert len(counts) >= 10 and any(re.search(r"(^|_)wkv[4-7]_", k) for k in counts), sorted(counts)
    too_wide = {k: n for k, n in counts.items() if n > MAX_STORAGE_BUFFERS}
    assert not too_wide, f"kernels over {MAX_STORAGE_BUFFERS} storage buffers: {too_wide}"


@pytest.fixture(scope="module")
def web_tools():
    reason = missing_browser_tools()
    if reason:
        pytest.skip(reason)
    from rwkv_relax.targets.webgpu import runtime
    runtime.runtime_objects()  # the one-time runtime build (~2 min), cached afterwards


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_webgpu_in_chromium_matches_llvm(factory, web_tools, arch, tmp_path, capsys):
    ckpt = factory.checkpoint(arch, "web", **ARCHS[arch])
    model_dir = tmp_path / "model"
    t0 = time.perf_counter()
    assert build_cli.main(["--model", str(ckpt), "--target", "webgpu", "--quantization", "q0f32",
                           "-o", str(model_dir / "lib.wasm")]) == 0, capsys.readouterr().err
    seconds = {"build": time.perf_counter() - t0}
    assert (model_dir / "lib.wasm").read_bytes()[:4] == b"\0asm"
    convert(str(ckpt), "q0f32", model_dir / "params")
    prefix = ""

    t0 = time.perf_counter()
    [web_out] = run_in_browser([{"wasm": "lib.wasm", "params": "params", "prefix": prefix,
                                 "prompt": PROMPT, "decode": DECODE}], model_dir, tmp_path)
    seconds["browser"] = time.perf_counter() - t0
    assert web_out["n_params"] > 0 and web_out["vocab_size"] == ARCHS[arch]["vocab_size"]

    cpu = load_model(factory.library(ckpt), ckpt)
    expected, state = cpu.prefill(PROMPT)
    steps = [("prefill", web_out["prefill"], expected)]
    for i, token in enumerate(DECODE):
        expected, state = cpu.decode(token, state)
        steps.append((f"decode {i}", web_out["decode"][i], expected))
    report = []
    for name, got, want in steps:
        got = np.asarray(got, dtype=np.float32)
        assert got.shape == want.shape == (ARCHS[arch]["vocab_size"],), name
        assert np.isfinite(got).all(), name
        err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
        report.append(f"{name}: max|diff| {err:.2e}, relative to max|logit| {err / scale:.2e}")
        assert err <= RTOL * scale, f"{arch} {name}: max|webgpu - llvm| = {err} > {RTOL} * {scale}"
    print(f"\n{arch} on {web_out['adapter']}: seconds {seconds}, in page {web_out['seconds']}\n  "
          + "\n  ".join(report))


def test_replacement_headers_on_the_host(tmp_path):
    """rwkv_relax/targets/webgpu/headers/, compiled for this machine (tests/web/support_headers_test.cc)."""
    import tvm_ffi.libinfo

    from rwkv_relax.targets.webgpu.runtime import HEADERS_DIR
    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (apt install g++)")
    lib = Path(tvm_ffi.libinfo.find_libtvm_ffi())
    exe = tmp_path / "support_headers_test"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{HEADERS_DIR / 'include'}", f"-I{HEADERS_DIR}",
                    f"-I{HEADERS_DIR / '3rdparty/compiler-rt'}", f"-I{tvm_ffi.libinfo.find_include_path()}",
                    f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}", str(WEB_DIR / "support_headers_test.cc"),
                    f"-L{lib.parent}", "-ltvm_ffi", f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_emcc_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = tmp_path / "x.wasm"
    assert build_cli.main(["--model", "rwkv5-world-0.1b", "--target", "webgpu", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emscripten" in err[0], err
    assert not out.exists()
