"""The package as a user installs it: a wheel built from the repo, installed into fresh virtual
environments, used from a folder outside the checkout.

* without TVM and torch (numpy only), the light parts import: the tokenizers, the sampler,
  conversation templates, configs and name tables, every CLI's ``--help``;
* with its dependencies, the default preset builds for llvm (presets and the webgpu headers are
  package data, found through importlib.resources) and the library loads.

pip installs from PyPI (its cache makes a second run cheap) and torch from the wheel the machine
has on disk (``torch==2.13.0``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd, cwd, timeout=1200):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    [whl] = out.glob("rwkv_relax-*.whl")
    return whl


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def test_light_parts_without_tvm_or_torch(wheel, tmp_path):
    py = fresh_venv(tmp_path / "light")
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "numpy", cwd=tmp_path)
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", wheel, cwd=tmp_path)
    code = ("import importlib.util, sys\n"
            "assert importlib.util.find_spec('tvm') is None and importlib.util.find_spec('torch') is None\n"
            "import rwkv_relax.tokenizer, rwkv_relax.runtime.sampler, rwkv_relax.runtime.conversation\n"
            "from rwkv_relax.registry import all_specs\n"
            "from rwkv_relax.config import list_presets\n"
            "assert list_presets() and all(spec.names.table for spec in all_specs())\n"
            "print(rwkv_relax.tokenizer.__file__)\n")
    where = run(py, "-c", code, cwd=tmp_path)
    assert str(tmp_path / "light") in where  # the installed copy, not the checkout
    for cli in ("build", "convert_weight", "gen_config", "chat", "generate", "serve"):
        assert "usage:" in run(py, "-m", f"rwkv_relax.{cli}", "--help", cwd=tmp_path)


def test_wheel_builds_the_default_preset_and_loads_it(wheel, tmp_path):
    py = fresh_venv(tmp_path / "full")
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "torch==2.13.0", wheel, cwd=tmp_path)
    out = run(py, "-m", "rwkv_relax.build", "--target", "llvm", "-o", "x.so", cwd=tmp_path)
    assert "wrote x.so" in out
    code = ("import json, tvm\n"
            "from tvm import relax\n"
            "vm = relax.VirtualMachine(tvm.runtime.load_module('x.so'), tvm.cpu())\n"
            "md = json.loads(str(vm['_metadata']()))\n"
            "print(md['model_name'], md['quantization'], len(md['params']))\n")
    name, mode, n_params = run(py, "-c", code, cwd=tmp_path).split()
    assert (name, mode) == ("rwkv5-world-1.5b", "q4f16_1") and int(n_params) > 100
    assert shutil.which("rwkv-relax-build", path=str(tmp_path / "full" / "bin"))
