"""Parity and speed of the cuda build on an NVIDIA GPU, in one run (issue #16).

    python tools/gpu_check.py --suite --device cuda --chip sm_90 --json gpu.json [--cuda-graph]
    python tools/gpu_check.py --suite --device cpu --json cpu.json      # llvm only, tiny shapes (CI)

(a) parity: every version x {q0f16, q4f16_1} on a small random checkpoint, the cuda library
    against the llvm library of the same checkpoint (--device cpu: the llvm library against the
    version's float64 numpy model on the library's own parameters): a prefill, 16 greedy decode
    steps and a batch_decode of 4 sequences, each as max|diff| / max|reference logit|.
(b) speed at the presets' shapes (--device cpu: the presets' versions at the parity shapes), on
    random weights made on the device in the library's parameter layout (nothing is uploaded):
    decode tok/s, prefill tok/s of --prefill tokens, and decode as a share of the bandwidth
    ceiling (weight bytes read per decode step / a device-to-device copy's bandwidth, read +
    write counted, measured in the same run). --cuda-graph also builds each with --cuda-graph,
    times its decode and checks its logits against the plain library's, a new sequence included.
(c) in-place batch decode at 1, 8 and 64 sequences: aggregate tok/s.
Without --suite: (a) only. Prints one markdown table; --json writes the numbers. Libraries are
built first, in parallel child processes. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_cases import NumpyReference, copy_bandwidth, parity_case, speed_case  # noqa: E402  (tools/: scripts)

ARCHS = ("rwkv4", "rwkv5", "rwkv6", "rwkv7")
SMALL = {"rwkv4": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512),
         "rwkv5": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448),
         "rwkv6": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448, dim_mix_lora=16, dim_decay_lora=24),
         "rwkv7": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=512, dim_decay_lora=32, dim_a_lora=32,
                       dim_v_lora=16, dim_gate_lora=64)}
TOLERANCE = 2e-2  # relative to max|logit|: fp16 activations over 16 decode steps


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run builds and measures on its device: the cuda and cpu runs differ only here."""

    device: str  # runtime device
    target: str  # the libraries under test
    reference: str  # "llvm": a second library on the host; "numpy": the float64 model
    prefill_tokens: int
    probe_bytes: int  # each of the two buffers of the bandwidth probe
    batch_sizes: tuple = (1, 8, 64)

    @staticmethod
    def of(device: str, prefill: int | None) -> "Plan":
        if device == "cuda":
            return Plan("cuda", "cuda", "llvm", prefill or 512, 1 << 30)
        return Plan("cpu", "llvm", "numpy", prefill or 64, 64 << 20)


@dataclasses.dataclass(frozen=True)
class Build:
    model: str  # checkpoint path or preset name
    target: str
    quantization: str
    chip: str | None
    output: Path
    cuda_graph: bool = False

    def command(self) -> list[str]:
        return ([sys.executable, "-m", "rwkv_relax.build", "--model", self.model, "--target", self.target,
                 "--quantization", self.quantization, "-o", str(self.output)]
                + (["--chip", self.chip] if self.chip else []) + (["--cuda-graph"] if self.cuda_graph else []))


def start_builds(builds: list[Build], jobs: int) -> dict:
    """Output path -> a future of (path, seconds from the start to its end), each build in a child process."""
    t0 = time.perf_counter()

    def run(b: Build) -> tuple[Path, float]:
        proc = subprocess.run(b.command(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {b.output.name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return b.output, time.perf_counter() - t0
    pool = ThreadPoolExecutor(max(1, jobs))
    futures = {b.output: pool.submit(run, b) for b in dict.fromkeys(builds)}
    pool.shutdown(wait=False)
    return futures


def one_case(fn, **known) -> dict:
    """``fn()``'s dict, or ``known`` with the error's first line: one failing build or kernel does
    not lose the other cases of a run on a lent GPU."""
    try:
        return {**known, **fn()}
    except Exception as err:  # noqa: BLE001  (reported in the table and the JSON)
        return {**known, "error": (str(err).strip().splitlines() or [type(err).__name__])[0][:300], "ok": False}


def table(report: dict) -> str:
    """One markdown table: a row per parity case, then per speed case (a failed case: its error)."""
    rows = ["| part | model | mode | prefill Δ | decode Δ | batch Δ | decode tok/s | % ceiling | graph decode "
            "tok/s (Δ) | prefill tok/s | batch tok/s (seqs) |", "|" + "---|" * 11]
    for p in report["parity"]:
        head = f"| parity vs {p['reference']} | {p['model_type']} {p['shape']} | {p['mode']} |"
        if "error" in p:
            rows.append(f"{head} ERROR: {p['error']} |" + " |" * 7)
            continue
        rows.append(f"{head} {p['prefill']:.1e} | {p['decode']:.1e} | {p['batch_decode']:.1e}"
                    f"{'' if p['ok'] else ' FAIL'} |" + " |" * 5)
    for s in report["speed"]:
        head = f"| speed | {s['preset']} | {s['mode']} | | | |"
        if "error" in s:
            rows.append(f"{head} ERROR: {s['error']} |" + " |" * 4)
            continue
        graph = f"{s['graph_decode_tok_s']:.1f} ({s['graph_max_rel_diff']:.0e})" if "graph_decode_tok_s" in s else ""
        batch = ", ".join(f"{b['tok_s']:.0f} ({b['sequences']})" for b in s["batch"])
        rows.append(f"{head} {s['decode_tok_s']:.1f}{'' if s['finite'] else ' NaN'} | "
                    f"{100 * s['ceiling_share']:.0f}% | {graph} | {s['prefill_tok_s']:.0f} | {batch} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    from rwkv_relax.registry import VERSIONS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="store_true", help="(a), (b) and (c); without it (a) only")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--chip", "--arch", dest="chip", default="sm_90", help="CUDA sm_XX")
    p.add_argument("--archs", default=",".join(ARCHS), help="versions checked in (a)")
    p.add_argument("--modes", default="q0f16,q4f16_1")
    p.add_argument("--presets", default="rwkv7-world-1.5b,rwkv5-world-7b", help="shapes timed in (b) and (c)")
    p.add_argument("--prefill", type=int, default=None, help="prefill tokens timed (default 512; cpu 64)")
    p.add_argument("--cuda-graph", action="store_true", help="also time decode of --cuda-graph builds")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel builds")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    archs, modes = args.archs.split(","), args.modes.split(",")
    if set(archs) - set(VERSIONS):
        p.error(f"unknown --archs {sorted(set(archs) - set(VERSIONS))}; valid: {', '.join(VERSIONS)}")
    if args.cuda_graph and args.device != "cuda":
        p.error("--cuda-graph needs --device cuda (CUDA graphs exist on cuda only)")
    import tvm

    from rwkv_relax import load_model
    from rwkv_relax.config import read_preset
    from rwkv_relax.registry import get_spec
    from rwkv_relax.targets import get_target
    from rwkv_relax.testing.random_weights import write_checkpoint
    if args.device == "cuda" and not tvm.cuda(0).exist:
        print("no CUDA device visible: run this on a machine with an NVIDIA GPU and driver (or --device cpu)")
        return 1
    t_start = time.perf_counter()
    plan = Plan.of(args.device, args.prefill)
    chip = args.chip if plan.target == "cuda" else None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rwkv_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    presets = {name: read_preset(name)["model_type"] for name in args.presets.split(",")} if args.suite else {}
    ckpts = {a: write_checkpoint(get_spec(a).random_tensors(**SMALL[a]), work / f"{a}.pth")
             for a in dict.fromkeys(archs + list(presets.values()))}

    def lib(model: str, target: str, mode: str, graph: bool = False) -> Build:
        stem = Path(model).stem if model.endswith(".pth") else model  # a preset name: "rwkv7-world-1.5b"
        return Build(model, target, mode, chip if target == "cuda" else None,
                     work / f"{stem}-{mode}-{target}{'-graph' if graph else ''}.so", graph)

    # (b)'s libraries: the presets on cuda; on cpu their versions at the parity shapes (the same
    # libraries as (a)'s, built once); the big builds go first, they take longest
    speed = {(name, m): lib(name if plan.device == "cuda" else str(ckpts[arch]), plan.target, m)
             for name, arch in presets.items() for m in modes}
    graphs = {key: lib(b.model, b.target, b.quantization, graph=True) for key, b in speed.items()} \
        if args.cuda_graph else {}
    parity = {(a, m): (lib(str(ckpts[a]), plan.target, m),
                       lib(str(ckpts[a]), "llvm", m) if plan.reference == "llvm" else None)
              for a in archs for m in modes}
    builds = list(speed.values()) + list(graphs.values()) + [b for pair in parity.values() for b in pair if b]
    futures = start_builds(builds, args.jobs)
    rng = np.random.default_rng(0)
    report = {"device": plan.device, "target": plan.target, "chip": chip, "tvm": tvm.__version__,
              "gpu": tvm.cuda(0).device_name if plan.device == "cuda" else None,
              "tolerance": TOLERANCE, "parity": [], "speed": []}

    def save():  # after every case: a run stopped at its time limit keeps what it measured
        report["seconds"] = time.perf_counter() - t_start
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    def built(b: Build) -> Path:
        return futures[b.output].result()[0]

    def parity_run(arch, mode, test_build, ref_build):
        ckpt = ckpts[arch]
        test = load_model(built(test_build), ckpt, device=plan.device)
        ref = load_model(built(ref_build), ckpt, device="cpu") if ref_build else NumpyReference(test)
        case = parity_case(test, ref, SMALL[arch]["vocab_size"], rng)
        return {**case, "ok": all(v <= TOLERANCE for v in case.values())}  # a NaN fails

    for (arch, mode), (test_build, ref_build) in parity.items():
        report["parity"].append(one_case(lambda: parity_run(arch, mode, test_build, ref_build), model_type=arch,
                                         mode=mode, reference=plan.reference,
                                         shape=f"{SMALL[arch]['n_layer']}x{SMALL[arch]['n_embd']}"))
        save()
    if args.suite:
        device = tvm.cuda(0) if plan.device == "cuda" else tvm.cpu(0)
        report["copy_bandwidth"] = copy_bandwidth(device, plan.probe_bytes)
        tvm_target = get_target(plan.target).target(chip)

        def speed_run(key, b):
            case = speed_case(built(b), b.quantization, plan, tvm_target, rng,
                              built(graphs[key]) if key in graphs else None)
            case["ceiling_tok_s"] = report["copy_bandwidth"] / case["weight_bytes_per_step"]
            case["ceiling_share"] = case["decode_tok_s"] / case["ceiling_tok_s"]
            case["ok"] = case["finite"] and case.get("graph_max_rel_diff", 0.0) <= TOLERANCE
            return case
        for key, b in speed.items():
            report["speed"].append(one_case(lambda: speed_run(key, b), preset=key[0], mode=key[1]))
            save()
    report["build_seconds"] = max((f.result()[1] for f in futures.values() if not f.exception()), default=0.0)
    report["ok"] = all(c["ok"] for c in report["parity"] + report["speed"])
    save()
    print(table(report))
    print(f"Δ = max|diff| / max|reference logit| (tolerance {TOLERANCE}); ceiling = copy bandwidth "
          f"{report.get('copy_bandwidth', 0) / 1e9:.0f} GB/s (read + write counted) / weight bytes per decode "
          f"step; builds done after {report['build_seconds']:.0f} s, all after {report['seconds']:.0f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
