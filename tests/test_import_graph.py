"""Imports point one way. The graph of every import in rwkv_relax and tir_kernels (function-local
ones included) has no cycle, and no edge runs against the flow

    CLIs -> pipeline -> {targets, quantization, loaders, registry} -> models -> models.ops -> tir_kernels

with the runtime beside it (reading artifacts, never the compiler). Parts that must import
without TVM or torch (the tokenizers, the sampler, configs and name tables, every CLI for its
``--help``) are checked by importing them in a fresh interpreter.
"""
from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rwkv_relax", "tir_kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.AST) -> list[str]:
    """The modules an import statement names (``from X import a`` names X.a when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def _edges() -> dict[str, set[str]]:
    """module -> every module it imports anywhere (top level or inside functions)."""
    graph = {}
    for module, path in MODULES.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(_resolve(module, path, node))
        graph[module] = targets
    return graph


GRAPH = _edges()


def _internal(targets):
    return {t for t in targets if t.split(".")[0] in PACKAGES and t in MODULES}


def test_no_import_cycle():
    internal = {m: _internal(t) for m, t in GRAPH.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(internal[m]):
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(internal):
        if m not in state:
            visit(m)


# (importer pattern, imported pattern, why it is forbidden); patterns are fnmatch on module names
FORBIDDEN = [
    ("rwkv_relax.runtime*", "rwkv_relax.pipeline", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.jit", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.model_dir", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.debug", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.targets*", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.models*", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.versions.*.model", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "rwkv_relax.quantization.transform", "the runtime never imports the compiler"),
    ("rwkv_relax.runtime*", "tir_kernels*", "the runtime never imports the compiler"),
    *[("rwkv_relax.serve*", compiler, "the server is runtime-side: it never imports the compiler")
      for compiler in ("rwkv_relax.pipeline", "rwkv_relax.jit", "rwkv_relax.model_dir", "rwkv_relax.debug",
                       "rwkv_relax.targets*", "rwkv_relax.models*", "rwkv_relax.versions.*.model",
                       "rwkv_relax.quantization.transform", "tir_kernels*")],
    ("rwkv_relax.runtime*", "rwkv_relax.serve*", "the server is built on the runtime, not the reverse"),
    ("rwkv_relax.weights", "rwkv_relax.pipeline", "weights are read without the compiler"),
    ("rwkv_relax.weights", "rwkv_relax.models*", "weights are read without the compiler"),
    ("rwkv_relax.models*", "rwkv_relax.loaders*", "models never import loaders"),
    ("rwkv_relax.models*", "rwkv_relax.quantization*", "models never import quantization"),
    ("rwkv_relax.models*", "rwkv_relax.targets*", "models never import targets"),
    ("rwkv_relax.models*", "rwkv_relax.pipeline", "models are below the pipeline"),
    ("rwkv_relax.models*", "rwkv_relax.runtime*", "models are below the pipeline"),
    ("rwkv_relax.versions.*.model", "rwkv_relax.loaders*", "models never import loaders"),
    ("rwkv_relax.versions.*.model", "rwkv_relax.quantization*", "models never import quantization"),
    ("rwkv_relax.versions.*.model", "rwkv_relax.targets*", "models never import targets"),
    ("rwkv_relax.versions.*.model", "tir_kernels*", "models call kernels through models.ops"),
    ("rwkv_relax.loaders*", "rwkv_relax.models*", "loaders are beside models, not above them"),
    ("rwkv_relax.loaders*", "rwkv_relax.pipeline", "loaders are below the pipeline"),
    ("rwkv_relax.loaders*", "rwkv_relax.targets*", "loaders are below the pipeline"),
    ("rwkv_relax.loaders*", "rwkv_relax.runtime*", "loaders are below the runtime"),
    ("rwkv_relax.targets*", "rwkv_relax.pipeline", "targets are below the pipeline"),
    ("rwkv_relax.targets*", "rwkv_relax.models*", "targets see IRModules, not models"),
    ("rwkv_relax.quantization*", "rwkv_relax.pipeline", "quantization is below the pipeline"),
    ("rwkv_relax.quantization*", "tir_kernels*", "quantized layers call kernels through models.ops"),
    ("tir_kernels*", "rwkv_relax*", "kernels know nothing of the compiler"),
]
# the only modules besides models.ops that may build kernels: target passes (retargeting),
# references (the kernels' numpy twins), testing
KERNEL_IMPORTERS = ("rwkv_relax.models.ops", "rwkv_relax.targets*", "rwkv_relax.versions.*.reference",
                    "rwkv_relax.testing*", "tir_kernels*")


def _violations():
    out = []
    for importer, targets in GRAPH.items():
        for target in _internal(targets):
            for a, b, why in FORBIDDEN:
                if fnmatch.fnmatch(importer, a) and fnmatch.fnmatch(target, b):
                    out.append(f"{importer} -> {target}: {why}")
            if target.startswith("tir_kernels") and not any(fnmatch.fnmatch(importer, p) for p in KERNEL_IMPORTERS):
                out.append(f"{importer} -> {target}: models call kernels through rwkv_relax.models.ops")
            test_side = importer.startswith("rwkv_relax.testing") or fnmatch.fnmatch(
                importer, "rwkv_relax.versions.*.random")
            if target.startswith("rwkv_relax.testing") and not test_side:
                out.append(f"{importer} -> {target}: product code never imports test helpers")
    return out


def test_no_forbidden_edge():
    assert not _violations(), "\n".join(_violations())


def test_the_rules_see_real_edges():
    """The walker finds function-local imports and resolves relative ones (a rule that matched
    nothing would pass vacuously)."""
    assert "rwkv_relax.pipeline" in GRAPH["rwkv_relax.jit"]  # imported inside ensure_library
    assert "rwkv_relax.models.ops" in GRAPH["rwkv_relax.versions.rwkv5.model"]
    assert "tir_kernels" in GRAPH["rwkv_relax.models.ops"]
    assert "rwkv_relax.runtime.engine" in GRAPH["rwkv_relax.serve.__main__"]  # imported inside build_app


# Parts that import without TVM and torch (a fresh interpreter; sys.modules checked after)
LIGHT = ["rwkv_relax", "rwkv_relax.tokenizer", "rwkv_relax.runtime.tokenizers", "rwkv_relax.runtime.sampler",
         "rwkv_relax.runtime.conversation", "rwkv_relax.config", "rwkv_relax.registry", "rwkv_relax.targets",
         "rwkv_relax.loaders", "rwkv_relax.quantization", "rwkv_relax.build", "rwkv_relax.convert_weight",
         "rwkv_relax.gen_config", "rwkv_relax.chat", "rwkv_relax.generate", "rwkv_relax.serve.__main__"]


def test_light_parts_import_without_tvm_or_torch():
    code = ("import importlib, sys\n"
            f"for m in {LIGHT!r}: importlib.import_module(m)\n"
            "from rwkv_relax.registry import all_specs\n"
            "for spec in all_specs(): spec.names.table\n"  # every version's name tables
            "heavy = sorted(m for m in ('tvm', 'torch', 'tvm_ffi', 'safetensors') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"imported heavy modules: {out.stdout.strip()}"
