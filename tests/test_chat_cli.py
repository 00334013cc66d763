"""``python -m rwkv_relax.chat`` in a real pseudo-terminal and through a pipe, and
``python -m rwkv_relax.generate``: streamed replies, commands, state files, one-line errors."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from test_engine import world_model

from rwkv_relax import chat as chat_cli
from rwkv_relax import generate as generate_cli

TIMEOUT = 240  # seconds for one step of a child process (importing TVM, loading the model)


def child_env() -> dict:
    return dict(os.environ, PYTHONIOENCODING="utf-8", TERM="dumb")


def error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.strip() and not l.startswith("[")]  # TVM logs start with [


@pytest.fixture(scope="module")
def world(factory):
    return world_model(factory)


def model_args(world) -> list[str]:
    model_dir, lib = world
    return ["--model", str(model_dir), "--model-lib", str(lib)]


def test_chat_in_a_terminal(world, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_relax.chat", *model_args(world), "--seed", "1",
                                           "--max-tokens", "8"],
                          encoding="utf-8", codec_errors="replace", timeout=TIMEOUT, env=child_env(),
                          cwd=str(tmp_path), dimensions=(50, 500))
    try:
        child.expect_exact("/help for commands")
        child.expect_exact(chat_cli.PROMPT)

        def say(line: str) -> str:
            """Send a line; return what the program printed before the next prompt."""
            child.sendline(line)
            child.expect_exact(chat_cli.PROMPT)
            echo, _, out = child.before.partition("\r\n")  # the terminal echoes the line
            assert echo == line
            return out.removesuffix("\r\n")

        first = say("Hello there")
        assert first.strip()
        stats = say("/stats")
        assert stats.startswith("prefill: ") and stats.count("tok/s") == 2
        assert say("/save conv.safetensors").startswith("[saved ")
        assert (tmp_path / "conv.safetensors").is_file()
        second = say("Tell me more")
        assert say("/reset") == "[conversation reset]"
        bad = say("/load missing.file")
        assert bad == "error: state file missing.file does not exist"
        assert say("/load conv.safetensors").startswith("[loaded ")
        assert say("Tell me more") == second  # same seed, same state, same message: same reply
        assert say("/bogus").startswith("error: unknown command '/bogus'; valid: /reset")
        assert say("/save").startswith("error: usage: /save FILE")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


def test_chat_through_a_pipe(world):
    proc = subprocess.run([sys.executable, "-m", "rwkv_relax.chat", *model_args(world), "--seed", "2",
                           "--max-tokens", "6"], input="Hi\n\n/stats\n/load nope\nBye\n",
                          capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert chat_cli.PROMPT not in proc.stdout  # no prompts when stdin is not a terminal
    assert any(l.startswith("prefill: ") for l in out)
    assert error_lines(proc.stderr) == ["error: state file nope does not exist"]


def test_repl_streams_token_by_token(world):
    """Each piece is written and flushed as it comes (checked on a recording stdout)."""
    from rwkv_relax.jit import Engine

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    model_dir, lib = world
    session = Engine(model_dir, lib).chat_session(seed=0, max_tokens=10)
    out = Recorder()
    chat_cli.Repl(session, stdin=io.StringIO("Hello\n/exit\n"), stdout=out, stderr=io.StringIO()).run()
    reply = session.messages[1]["content"]
    assert out.getvalue() == reply + "\n"
    growing = [v for v in dict.fromkeys(out.flushed) if v and v != out.getvalue()]
    assert len(growing) >= 2  # the reply was seen in pieces before it was complete


# ---- generate ---------------------------------------------------------------------------------
def test_generate_one_shot(world):
    from rwkv_relax.jit import Engine
    proc = subprocess.run([sys.executable, "-m", "rwkv_relax.generate", *model_args(world), "--prompt",
                           "The sky is", "--max-tokens", "8", "--seed", "0", "--stats"],
                          capture_output=True, timeout=TIMEOUT, env=child_env())
    assert proc.returncode == 0, proc.stderr
    model_dir, lib = world
    expected = "".join(Engine(model_dir, lib).generate("The sky is", max_tokens=8, seed=0))
    assert proc.stdout.decode("utf-8") == expected + "\n"
    assert "decode: 8 tok" in proc.stderr.decode()


def test_generate_missing_model_dir_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rwkv_relax.generate", "--model", str(tmp_path / "none"),
                           "--prompt", "hi"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"error: model directory {tmp_path / 'none'} does not exist "
                                        "(make one with python -m rwkv_relax.gen_config and convert_weight)"]


@pytest.mark.parametrize("main, args, message", [
    (generate_cli.main, ["--prompt", ""], "error: empty prompt; give some text to continue"),
    (generate_cli.main, ["--prompt", "x", "--temperature", "-1"],
     "error: temperature must be >= 0, got -1.0"),
    (generate_cli.main, ["--prompt", "x", "--device", "tpu"],
     "error: unknown device 'tpu'; valid: cpu, cuda"),
    (generate_cli.main, [], "error: the following arguments are required: --prompt"),
    (chat_cli.main, ["--max-tokens", "-3"], "error: max_tokens must be a whole number >= 0, got -3"),
    (chat_cli.main, ["--conv-template", "vicuna"],
     "error: unknown conv template 'vicuna'; valid: rwkv-world"),
])
def test_cli_errors_are_one_line(world, capsys, main, args, message):
    assert exit_code(main, [*model_args(world), *args]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(message), err


def test_usage_errors_are_one_line(capsys):
    assert exit_code(generate_cli.main, ["--prompt", "x"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: the following arguments are required: --model (see python -m rwkv_relax.generate --help)"]


def exit_code(main, argv) -> int:
    """What ``python -m ...`` would exit with: main's return value, or argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code
