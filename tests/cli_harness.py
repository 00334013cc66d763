"""What the bad-input tests share: a build that must fail in one line and leave nothing behind."""
from __future__ import annotations

from rwkv_relax import build as build_cli


def run_build(tmp_path, capsys, model, *extra) -> str:
    """``build --model model --target llvm -o tmp_path/out/lib.so *extra``: exit status 2, exactly one
    ``error:`` line on stderr (TVM's own log lines, which start with ``[``, aside), and no output
    file or folder. Returns the error line."""
    out = tmp_path / "out" / "lib.so"
    code = build_cli.main(["--model", str(model), "--target", "llvm", "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists() and not (tmp_path / "out").exists()
    return lines[0]


def build_lib(ckpt, tmp_path, *extra):
    """``build --model ckpt --target llvm -o tmp_path/lib.so *extra``, which must succeed."""
    lib = tmp_path / "lib.so"
    assert build_cli.main(["--model", str(ckpt), "--target", "llvm", "-o", str(lib), *extra]) == 0
    return lib
