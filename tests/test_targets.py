"""Every target builds RWKV-4 and RWKV-5 at q0f16 and q4f16_1, RWKV-6 and RWKV-7 at q4f16_1;
each artifact gets the strongest check this GPU-less machine allows."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from rwkv_relax import RWKVRelaxError
from rwkv_relax import build as build_cli
from rwkv_relax.pipeline import export, resolve_model, system_lib_prefix
from rwkv_relax.targets import PRESETS, get_target
from rwkv_relax.testing import artifacts

ARCHS = {"rwkv5": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448),
         "rwkv4": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512),
         "rwkv6": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448, dim_mix_lora=16, dim_decay_lora=24),
         "rwkv7": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512, dim_decay_lora=32, dim_a_lora=32,
                       dim_v_lora=16, dim_gate_lora=64)}
MODES = ["q0f16", "q4f16_1"]
# every (version, mode) pair the target tests build; RWKV-6 and RWKV-7 only at q4f16_1 (fp16
# activations and the dequantizing kernels both; the q0f16 graph adds nothing target-specific),
# to keep CI short
CASES = [(arch, mode) for arch in ARCHS for mode in MODES if arch in ("rwkv4", "rwkv5") or mode == "q4f16_1"]


def device_sources(mod) -> dict[str, str]:
    found = {}

    def walk(m):
        if m.kind in ("cuda", "metal", "opencl", "webgpu", "vulkan"):
            found[m.kind] = found.get(m.kind, "") + m.inspect_source()
        for sub in m.imports:
            walk(sub)
    walk(mod)
    return found


@pytest.fixture(scope="module")
def built(factory, tmp_path_factory):
    """(arch, mode, target) -> (artifact path, device source, system-lib prefix)."""
    cache = {}
    root = tmp_path_factory.mktemp("targets")

    def get(arch, mode, target):
        key = (arch, mode, target)
        if key not in cache:
            source = resolve_model(str(factory.checkpoint(arch, "targets", **ARCHS[arch])))
            preset = get_target(target)
            mod, _ = export(source, mode)
            prefix = system_lib_prefix(source, mode) if preset.prefixed_system_lib else None
            ex = preset.compile(mod, preset.target(), prefix)
            path = root / f"{arch}-{mode}-{target}{preset.extension}"
            preset.export(ex, str(path), prefix)
            cache[key] = (path, device_sources(ex.mod), prefix)
        return cache[key]
    return get


def kernel_names(source: str, pattern: str) -> list[str]:
    return re.findall(pattern, source)


@pytest.mark.parametrize("arch,mode", CASES)
@pytest.mark.parametrize("target,platform", [("metal", "macos"), ("iphone", "ios")])
def test_metal_and_iphone_tars(built, arch, mode, target, platform):
    path, sources, prefix = built(arch, mode, target)
    members = artifacts.tar_members(path)
    assert len(members) >= 2
    for name, data in members.items():
        info = artifacts.macho_info(data)
        assert info["macho"] and info["arm64"] and info["platform"] == platform, (name, info)
    blob = b"".join(members.values())
    msl = sources["metal"]
    names = kernel_names(msl, r"kernel void (\w+)\(")
    assert any("wkv" in n for n in names) and len(names) >= 10
    if mode == "q4f16_1":
        assert any("dequantize" in n for n in names)
    # every kernel's Metal source travels inside the object (the module keeps one per function)
    for chunk in msl.split("// Function: ")[1:]:
        body = chunk.split("\n", 1)[1].strip()
        assert body.encode() in blob, chunk.splitlines()[0]
    if prefix:
        assert prefix.encode() in blob  # static system-lib symbols carry the model's prefix


@pytest.mark.parametrize("arch,mode", CASES)
def test_android_tar_objects_and_opencl_syntax(built, arch, mode, tmp_path):
    path, sources, prefix = built(arch, mode, "android")
    members = artifacts.tar_members(path)
    for name, data in members.items():
        assert artifacts.elf_machine(data) == "aarch64", name
    ocl = sources["opencl"]
    assert ocl.encode() in b"".join(members.values())
    names = kernel_names(ocl, r"__kernel void (\w+)\(")
    assert any("wkv" in n for n in names) and len(names) >= 10
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed (apt install clang)")
    src = tmp_path / "kernels.cl"
    src.write_text(ocl)
    subprocess.run([clang, "-x", "cl", "-cl-std=CL2.0", "--target=spir64", "-Xclang", "-finclude-default-header",
                    "-fsyntax-only", str(src)], check=True)
    broken = tmp_path / "broken.cl"
    broken.write_text(ocl.replace("__kernel void", "__kernel vodi", 1))
    assert subprocess.run([clang, "-x", "cl", "-cl-std=CL2.0", "--target=spir64", "-Xclang",
                           "-finclude-default-header", "-fsyntax-only", str(broken)],
                          capture_output=True).returncode != 0


@pytest.mark.parametrize("arch,mode", CASES)
def test_cuda_so_holds_cubin_and_ptx_for_the_arch(factory, arch, mode, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    out = tmp_path / "lib.so"
    ckpt = factory.checkpoint(arch, "targets", **ARCHS[arch])
    assert build_cli.main(["--model", str(ckpt), "--target", "cuda", "--arch", "sm_80",
                           "--quantization", mode, "-o", str(out)]) == 0
    fatbins = artifacts.extract_fatbins(out.read_bytes())
    assert fatbins, "no fatbin embedded"
    listing = artifacts.fatbin_contents(fatbins[0], tmp_path)
    assert any(l.startswith("ELF file") and l.endswith("sm_80.cubin") for l in listing), listing
    assert any(l.startswith("PTX file") and "sm_80" in l for l in listing), listing
    assert b'extern "C" __global__' not in out.read_bytes()  # compiled, not source


@pytest.mark.parametrize("arch,mode", CASES)
def test_vulkan_fails_clearly_after_lowering(factory, arch, mode):
    source = resolve_model(str(factory.checkpoint(arch, "targets", **ARCHS[arch])))
    mod, _ = export(source, mode)
    preset = get_target("vulkan")
    lowered = []

    import tvm

    @tvm.instrument.pass_instrument
    class Record:
        def run_after_pass(self, mod, info):
            lowered.append(info.name)

    with tvm.transform.PassContext(instruments=[Record()]):
        with pytest.raises(RWKVRelaxError, match="USE_VULKAN=ON") as err:
            preset.compile(mod, preset.target())
    assert "\n" not in str(err.value)
    # scheduling (dlight) and TIR lowering ran before codegen was found missing
    assert "ApplyDefaultSchedule" in lowered[0:] or any("ApplyDefaultSchedule" in n for n in lowered)
    assert any(n.endswith("LowerIntrin") or n == "tirx.LowerIntrin" for n in lowered), lowered[-20:]


def test_bad_targets_and_arches(capsys, tmp_path):
    out = tmp_path / "x.so"
    assert build_cli.main(["--model", "rwkv5-world-0.1b", "--target", "ps5", "-o", str(out)]) == 2
    assert "unknown target 'ps5'; valid targets: " + ", ".join(PRESETS) in capsys.readouterr().err
    assert build_cli.main(["--model", "rwkv5-world-0.1b", "--target", "cuda", "--arch", "ampere",
                           "-o", str(out)]) == 2
    assert "not of the form sm_XX" in capsys.readouterr().err
    assert not out.exists()


def test_cuda_arch_the_toolchain_rejects(factory, capsys, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    out = tmp_path / "x.so"
    ckpt = factory.checkpoint("rwkv5", "targets", **ARCHS["rwkv5"])
    assert build_cli.main(["--model", str(ckpt), "--target", "cuda", "--arch", "sm_10", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sm_10" in err[0]
    assert not out.exists()


def test_missing_nvcc_is_named(factory, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = tmp_path / "x.so"
    assert build_cli.main(["--model", "rwkv5-world-0.1b", "--target", "cuda", "-o", str(out)]) == 2
    assert "nvcc not found" in capsys.readouterr().err
    assert not out.exists()
