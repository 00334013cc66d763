"""Every input surface fuzzed (hypothesis, bounded): each case ends in success with a correct
result, or one ``error:`` line (an ``RWKVRelaxError`` with a one-line message in the API), never a
traceback, and never a file or folder left behind.

Surfaces: checkpoint files (random bytes, truncations, flipped header bytes, wrong dtypes,
dropped / duplicated / renamed tensors) through ``convert_weight``; config JSON (random types per
field) through ``resolve_model`` and ``--overrides``; tensor-cache directories (shards truncated,
md5 / size edited, index fields removed) through ``load_model``; state files (truncated, random
metadata, wrong shapes); World vocab files (bad lines, escapes, duplicate ids); sampler
parameters; the CLIs' flags; the server's request bodies (a 2xx or an OpenAI-style 4xx JSON, the
server alive after every case). The number of cases per surface is printed at the end of the run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rwkv_relax import convert_weight as convert_cli
from rwkv_relax import load_model
from rwkv_relax.errors import RWKVRelaxError
from rwkv_relax.registry import get_spec
from rwkv_relax.testing.random_weights import write_checkpoint

TINY = dict(n_layer=1, n_embd=64, vocab_size=100, head_size=32, seed=1)
CASES = dict(max_examples=int(os.environ.get("RWKV_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
             suppress_health_check=list(HealthCheck))
COUNTS_DIR = Path(os.environ.get("RWKV_FUZZ_COUNTS", "/nonexistent"))


def count(surface: str) -> None:
    """One more case tried on ``surface`` (summed over xdist workers in conftest's summary)."""
    if COUNTS_DIR.is_dir():
        with open(COUNTS_DIR / f"{surface}.{os.getpid()}", "a") as f:
            f.write(".")


def one_line(message: str) -> None:
    assert message and len(message.splitlines()) == 1 and "Traceback" not in message, message


def run_cli(main, argv, capsys) -> tuple[int, str]:
    """A CLI in-process: exit 0, or 2 with exactly one ``error:`` line and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("[")]  # TVM's own log lines
    assert "Traceback" not in err, err
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return code, (lines[0] if lines else "")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny RWKV-5 checkpoint (.pth and .safetensors), its tensors, and its converted params."""
    root = tmp_path_factory.mktemp("fuzz")
    tensors = get_spec("rwkv5").random_tensors(**TINY)
    pth = write_checkpoint(tensors, root / "tiny.pth")
    safe = write_checkpoint(tensors, root / "tiny.safetensors")
    assert convert_cli.main([str(pth), "--quantization", "q0f32", "-o", str(root / "want")]) == 0
    return Fixture(root=root, tensors=tensors, pth=pth, safetensors=safe, want=read_params(root / "want"))


class Fixture(dict):
    """A dict with a short repr (hypothesis prints the fixtures of a falsifying example)."""

    def __repr__(self):
        return f"<{', '.join(self)}>"


def read_params(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("params_shard_*.bin"))}


def convert_case(tiny, path: Path, capsys, same_as_pristine: bool) -> str:
    """convert_weight on ``path``: success (with the pristine params when the case must not change
    them) or one line; no output folder or staging folder left on failure."""
    out = path.parent / (path.stem + "-out")
    code, msg = run_cli(convert_cli.main, [path, "--quantization", "q0f32", "-o", out], capsys)
    if code == 0:
        if same_as_pristine:
            assert read_params(out) == tiny["want"], f"{path.name}: converted to other weights without a word"
        shutil.rmtree(out)
    else:
        assert not out.exists(), msg
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") and "out" in p.name], "staging left"
    return msg


# ---- checkpoint files -------------------------------------------------------------------------


@settings(**CASES)
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".pth", ".safetensors", ".bin", ".pt"]))
def test_random_bytes(tiny, capsys, data, suffix):
    count("checkpoint: random bytes")
    path = tiny["root"] / f"random{suffix}"
    path.write_bytes(data)
    convert_case(tiny, path, capsys, same_as_pristine=False)


@settings(**CASES)
@given(kind=st.sampled_from(["pth", "safetensors"]), cut=st.floats(0.0, 0.999))
def test_truncated_at_random_offsets(tiny, capsys, kind, cut):
    count("checkpoint: truncation")
    data = tiny[kind].read_bytes()
    path = tiny["root"] / f"cut.{kind}"
    path.write_bytes(data[:int(len(data) * cut)])
    msg = convert_case(tiny, path, capsys, same_as_pristine=True)
    assert msg, "a truncated file converted"


@settings(**CASES)
@given(offset=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_flipped_bit_in_safetensors_header(tiny, capsys, offset, bit):
    """Any single bit flip in the header (length, JSON: names, dtypes, shapes, offsets) is either
    refused or leaves the weights exactly as they were."""
    count("checkpoint: flipped header bit")
    data = bytearray(tiny["safetensors"].read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    data[offset % header_end] ^= 1 << bit
    path = tiny["root"] / "flip.safetensors"
    path.write_bytes(bytes(data))
    convert_case(tiny, path, capsys, same_as_pristine=True)


DTYPES = [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.float64,
          torch.float16, torch.bfloat16]


@settings(**CASES)
@given(which=st.integers(0, 10_000), dtype=st.sampled_from(DTYPES),
       suffix=st.sampled_from([".pth", ".safetensors"]))
def test_wrong_dtype(tiny, capsys, which, dtype, suffix):
    count("checkpoint: tensor dtype")
    names = sorted(tiny["tensors"])
    name = names[which % len(names)]
    state = {k: torch.from_numpy(v.copy()) for k, v in tiny["tensors"].items()}
    state[name] = state[name].to(dtype)
    path = tiny["root"] / f"dtype{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        if dtype == torch.complex64:
            return  # safetensors cannot store complex
        from safetensors.torch import save_file
        save_file(state, str(path))
    msg = convert_case(tiny, path, capsys, same_as_pristine=dtype == torch.float64)
    if dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert not msg, msg  # floating point: converted (fp16/bf16 rounding changes the values)
    else:
        assert name in msg and "floating point" in msg, msg


@settings(**CASES)
@given(which=st.integers(0, 10_000), how=st.sampled_from(["drop", "duplicate", "rename"]))
def test_dropped_duplicated_renamed_tensors(tiny, capsys, which, how):
    count("checkpoint: tensor names")
    tensors = dict(tiny["tensors"])
    names = sorted(tensors)
    name = names[which % len(names)]
    if how == "drop":
        del tensors[name]
    elif how == "duplicate":
        tensors[name + "_copy"] = tensors[name]
    else:
        tensors[name.replace(".", "_", 1)] = tensors.pop(name)
    path = write_checkpoint(tensors, tiny["root"] / f"{how}.pth")
    msg = convert_case(tiny, path, capsys, same_as_pristine=True)
    assert msg, f"{how} {name}: converted"


# ---- config JSON ------------------------------------------------------------------------------

ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=8), st.lists(st.integers(-3, 300), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ["n_layer", "n_embd", "vocab_size", "head_size", "dim_att", "dim_ffn", "layer_norm_eps", "ln_x_eps",
          "rescale_every", "dtype", "prefill_chunk_size", "max_batch_size", "fp32_layers", "model_type"]


@settings(**CASES)
@given(fields=st.dictionaries(st.sampled_from(FIELDS), ANY_JSON, min_size=1, max_size=4))
def test_config_json_with_random_types(tmp_path_factory, fields):
    """A config JSON (as a preset file / HF config would give it): a valid config with fields of
    their declared types, or one line naming the problem."""
    count("config JSON")
    from rwkv_relax.pipeline import resolve_model
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps({"model_type": "rwkv5", "n_layer": 2, "n_embd": 128, "vocab_size": 100, **fields}))
    try:
        cfg = resolve_model(str(path)).config
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    for name in ("n_layer", "n_embd", "vocab_size", "head_size", "dim_att", "dim_ffn", "rescale_every"):
        assert type(getattr(cfg, name)) is int and getattr(cfg, name) >= 0, name
    assert cfg.dtype in ("float32", "float16") and all(type(i) is int for i in cfg.fp32_layers)


@settings(**CASES)
@given(text=st.text(max_size=40))
def test_overrides_flag(tiny, capsys, text):
    """--overrides with any text: converted, or one line."""
    count("CLI: --overrides")
    out = tiny["root"] / "ov-out"
    code, msg = run_cli(convert_cli.main, [tiny["pth"], "--quantization", "q0f32", "-o", out, "--overrides", text],
                        capsys)
    if out.exists():
        shutil.rmtree(out)


# ---- CLI flags ----------------------------------------------------------------------------------

FLAG_VALUES = st.sampled_from(["", "x", "-1", "0", "999999999999", "nan", "q4f16_1", "q9f9", "llvm", "vulkan",
                               "metal", "/nonexistent/path", "rwkv9-world-1b", "a=b", "{}", "[1]", "\u2603",
                               "--", "sm_xx"])
BUILD_FLAGS = ["--model", "--target", "--quantization", "--chip", "--overrides", "--fp32-layers", "-o", "--device",
               "--prompt", "--max-tokens", "--temperature", "--top-p", "--seed", "--bogus"]


@settings(**CASES)
@given(cli=st.sampled_from(["build", "convert_weight", "gen_config", "generate", "chat"]),
       argv=st.lists(st.tuples(st.sampled_from(BUILD_FLAGS), FLAG_VALUES), max_size=5))
def test_cli_flags(tmp_path_factory, capsys, cli, argv):
    """Random flags and values: never a traceback; nothing written where -o points on failure.
    Models are never valid here, so nothing compiles."""
    count("CLI flags")
    import importlib
    main = importlib.import_module(f"rwkv_relax.{cli}").main
    work = tmp_path_factory.mktemp("cli")
    flat = []
    for flag, value in argv:
        if flag == "--model" and value in ("q4f16_1", "llvm", "metal", "x"):
            value = "/nonexistent/model"
        flat += [flag, str(work / "out") if flag == "-o" else value]
    # a model that is never valid, first (argparse keeps the last --model): without one, build
    # compiles its default preset
    flat = {"convert_weight": ["/nonexistent/ckpt.pth"], "gen_config": ["/nonexistent/model"]}.get(
        cli, ["--model", "/nonexistent/model"]) + flat
    cwd = os.getcwd()
    os.chdir(work)
    try:
        try:
            code, _ = run_cli(main, flat, capsys)
        except SystemExit as exit_:  # argparse's own exit (e.g. --help)
            code = exit_.code
            capsys.readouterr()
    finally:
        os.chdir(cwd)
    assert code in (0, 2)
    assert code == 0 or not (work / "out").exists()


# ---- sampler ------------------------------------------------------------------------------------

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.booleans(),
                   st.text(max_size=3))


@settings(**CASES)
@given(params=st.fixed_dictionaries({}, optional={k: NUMBER for k in (
    "temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "penalty_decay")}))
def test_sampler_parameters(params):
    count("sampler parameters")
    from rwkv_relax.runtime.sampler import Sampler
    try:
        sampler = Sampler(seed=0, **params)
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    except TypeError as err:  # a str where a number belongs, in the Python API
        pytest.fail(f"TypeError instead of a SamplerError: {err}")
    logits = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    token = sampler.sample(logits)
    assert 0 <= token < 50


# ---- tensor-cache directories and state files (need a compiled library) ------------------------


@pytest.fixture(scope="module")
def compiled(tiny, factory):
    lib = factory.library(tiny["pth"])
    model = load_model(lib, tiny["root"] / "want")
    tokens = [3, 14, 15, 92, 65]
    logits, state = model.prefill(tokens)
    from rwkv_relax.runtime.state_file import save_state
    state_path = save_state(tiny["root"] / "state.safetensors", model, state, tokens=tokens)
    return Fixture(lib=lib, model=model, logits=logits, state_path=state_path, tokens=tokens)


@settings(**CASES)
@given(edit=st.sampled_from(["truncate shard", "md5", "nbytes", "drop field", "json garbage", "drop record",
                             "shard missing"]),
       where=st.integers(0, 10_000))
def test_tensor_cache_edits(tiny, compiled, edit, where):
    count("tensor cache")
    folder = tiny["root"] / "cache-case"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(tiny["root"] / "want", folder)
    index_path = folder / "tensor-cache.json"
    index = json.loads(index_path.read_text())
    shard = folder / index["records"][0]["dataPath"]
    if edit == "truncate shard":
        shard.write_bytes(shard.read_bytes()[:where % max(shard.stat().st_size, 1)])
    elif edit == "shard missing":
        shard.unlink()
    elif edit == "json garbage":
        index_path.write_text(index_path.read_text()[:where % 200])
    else:
        record = index["records"][0]
        if edit == "md5":
            record["md5sum"] = "0" * 32
        elif edit == "nbytes":
            record["nbytes"] = int(record.get("nbytes", 0)) + 1 + where % 7
        elif edit == "drop record":
            index["records"].pop(0)
        else:
            keys = sorted(index) + [f"records.{k}" for k in sorted(record)]
            key = keys[where % len(keys)]
            if key.startswith("records."):
                del record[key.split(".", 1)[1]]
            else:
                del index[key]
        index_path.write_text(json.dumps(index))
    try:
        model = load_model(compiled["lib"], folder)
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    np.testing.assert_array_equal(model.prefill(compiled["tokens"])[0], compiled["logits"])


@settings(**CASES)
@given(edit=st.sampled_from(["truncate", "metadata", "shape", "drop tensor", "random bytes"]),
       where=st.integers(0, 10_000), value=st.text(max_size=6))
def test_state_file_edits(tiny, compiled, edit, where, value):
    count("state files")
    from safetensors.numpy import load_file, save_file

    from rwkv_relax.runtime.state_file import load_state, read_state_file
    src = compiled["state_path"]
    path = tiny["root"] / "state-case.safetensors"
    if edit == "truncate":
        data = src.read_bytes()
        path.write_bytes(data[:where % len(data)])
    elif edit == "random bytes":
        path.write_bytes(np.random.default_rng(where).bytes(where % 3000))
    else:
        tensors, metadata = read_state_file(src)
        if edit == "metadata":
            key = sorted(metadata)[where % len(metadata)]
            metadata[key] = value
        elif edit == "shape":
            key = sorted(k for k in tensors if k != "tokens")[where % (len(tensors) - 1)]
            tensors[key] = np.concatenate([tensors[key].reshape(-1), tensors[key].reshape(-1)[:1]])
        else:
            del tensors[sorted(tensors)[where % len(tensors)]]
        save_file(tensors, str(path), metadata=metadata)
    assert load_file  # the numpy reader is the one state files use
    try:
        loaded = load_state(path, compiled["model"])
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    # accepted: it must be the saved state (an informational field edited, or nothing that matters)
    np.testing.assert_array_equal(compiled["model"].prefill([7], loaded.state)[0],
                                  compiled["model"].prefill([7], compiled["model"].prefill(compiled["tokens"])[1])[0])


# ---- World vocab files --------------------------------------------------------------------------

VOCAB_LINES = st.one_of(
    st.tuples(st.integers(-3, 70), st.sampled_from(["'a'", "b'\\xff'", "'\\u00e9'", "'abc'", "b'x'", "'", "'\\q'",
                                                      "'\\x4'", "abc", "''", "b''", "'a' 'b'", "\"q\""]),
              st.integers(-2, 6)).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.text(max_size=12))


@settings(**CASES)
@given(lines=st.lists(VOCAB_LINES, max_size=12))
def test_world_vocab_files(tmp_path_factory, lines):
    """A World vocab file: loads (and round-trips what it can encode), or one line."""
    count("World vocab files")
    from rwkv_relax.runtime.tokenizers import load_tokenizer
    path = tmp_path_factory.mktemp("vocab") / "rwkv_vocab_fuzz.txt"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        tok = load_tokenizer(path)
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    except UnicodeError as err:
        pytest.fail(f"UnicodeError escaped: {err}")
    for token_id in range(1, tok.vocab_size):
        try:
            piece = tok.id_to_token(token_id)
        except RWKVRelaxError:
            continue
        assert tok.decode(tok.encode(piece)) == piece


# ---- Hugging Face config.json and mlc-chat-config.json ------------------------------------------


@settings(**CASES)
@given(value=ANY_JSON, raw=st.one_of(st.none(), st.text(max_size=12)))
def test_hf_config_json(tiny, value, raw):
    """An HF folder's config.json with any rescale_every (or any text): a config, or one line."""
    count("HF config.json")
    from rwkv_relax.pipeline import resolve_model
    folder = tiny["root"] / "hf-case"
    folder.mkdir(exist_ok=True)
    if not (folder / "model.safetensors").exists():
        shutil.copy(tiny["safetensors"], folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"rescale_every": value}) if raw is None else raw)
    try:
        cfg = resolve_model(str(folder)).config
    except RWKVRelaxError as err:
        one_line(str(err))
        return
    assert type(cfg.rescale_every) is int and cfg.rescale_every >= 0


CHAT_FIELDS = ["model_type", "conv_template", "tokenizer_files", "temperature", "top_p", "top_k",
               "presence_penalty", "frequency_penalty", "penalty_decay", "repetition_penalty"]


@settings(**CASES)
@given(fields=st.dictionaries(st.sampled_from(CHAT_FIELDS), ANY_JSON, max_size=3))
def test_chat_config_json(tiny, fields):
    """mlc-chat-config.json with fields of random types: read, or one line."""
    count("mlc-chat-config.json")
    from rwkv_relax.runtime.model_dir import read_chat_config
    folder = tiny["root"] / "chat-case"
    folder.mkdir(exist_ok=True)
    (folder / "mlc-chat-config.json").write_text(json.dumps({"model_type": "rwkv5", **fields}))
    try:
        read_chat_config(folder)
    except RWKVRelaxError as err:
        one_line(str(err))


# ---- the server's request bodies -----------------------------------------------------------------
BODY_FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "top_k", "presence_penalty", "frequency_penalty", "stop", "seed", "stream", "n", "logprobs",
               "top_logprobs", "user", "echo", "stream_options", "logit_bias", "colour"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                 "content": st.one_of(st.text(max_size=12), ANY_JSON)})
BODY_VALUE = st.one_of(ANY_JSON, st.lists(MESSAGE, max_size=3), st.sampled_from(["<model>", "Hi there"]))


@pytest.fixture(scope="module")
def server(factory, tmp_path_factory):
    from serve_harness import Server
    from test_engine import world_model
    pytest.importorskip("fastapi")
    s = Server(*world_model(factory), tmp_path_factory.mktemp("fuzz-serve") / "server.log",
               "--max-prompt-tokens", 64)
    yield s
    s.stop()


@settings(**CASES)
@given(chat=st.booleans(), valid_base=st.booleans(),
       fields=st.dictionaries(st.sampled_from(BODY_FIELDS), BODY_VALUE, max_size=6),
       raw=st.one_of(st.none(), st.binary(max_size=24)))
def test_server_request_bodies(server, chat, valid_base, fields, raw):
    """Any body for /v1/completions or /v1/chat/completions (random fields, over a valid body half
    the time): a 200 whose answer has usage, or a 4xx with an OpenAI error JSON; the server answers
    /health after every case."""
    from serve_harness import assert_openai_error
    count("server request bodies")
    base = {"model": "<model>", **({"messages": [{"role": "user", "content": "Hi"}]} if chat else {"prompt": "Hi"})}
    body = {k: server.model if v == "<model>" else v for k, v in {**(base if valid_base else {}), **fields}.items()}
    for key in ("max_tokens", "max_completion_tokens"):  # valid lengths stay short: 40 cases, not 40 x 256 tokens
        if type(body.get(key)) is int and body[key] > 4:
            body[key] = 4
    body.setdefault("max_tokens", 2)
    data = raw if raw is not None else json.dumps(body).encode()
    status, headers, answer = server.request("POST", "/v1/chat/completions" if chat else "/v1/completions", data)
    if status == 200:
        if headers["content-type"].startswith("text/event-stream"):
            assert answer.rstrip().endswith(b"data: [DONE]") or b'"error"' in answer, answer[-300:]
        else:
            assert json.loads(answer)["usage"]["completion_tokens"] >= 0
    else:
        assert_openai_error(status, json.loads(answer))
    assert server.alive()
