"""Engine: model directories (gen_config + convert_weight) -> streamed text, chat sessions that keep
their RNN state, stop strings, stats, the library cache; RWKV-5 with the World tokenizer and RWKV-4
with a Hugging Face tokenizer.json."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from rwkv_relax import Engine, RWKVRelaxError
from rwkv_relax.jit import cached_library_path

# World vocabulary (65536 rows): the smallest RWKV-5 the World tokenizer can drive
WORLD_SHAPE = dict(n_layer=2, n_embd=128, vocab_size=65536, head_size=64, seed=11)
RAVEN_SHAPE = dict(n_layer=2, n_embd=128, vocab_size=512, seed=12)
BPE_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Bob: Hello Alice, how are you?",
                 "Alice: I am fine, thank you! What about you?", "Hello world, hello tokenizer!"]


def make_model_dir(factory, arch: str, name: str, quantization: str, conv_template: str,
                   tokenizer: Path, **shape) -> Path:
    """A model directory (once per session) from a random checkpoint of ``arch``."""
    from rwkv_relax.model_dir import convert, gen_config
    out = factory.root / f"dir-{arch}-{name}-{quantization}"
    if not (out / "tensor-cache.json").is_file():
        ckpt = factory.checkpoint(arch, name, **shape)
        gen_config(str(ckpt), quantization, conv_template, out, tokenizer=str(tokenizer))
        convert(str(ckpt), quantization, out)
    return out


def world_model(factory, name: str = "engine", **shape) -> tuple[Path, Path]:
    """(model directory, library) of a random RWKV-5 World model, q4f16_1."""
    from rwkv_relax.tokenizer import default_world_vocab
    vocab = default_world_vocab()
    if vocab is None:
        pytest.skip("the rwkv package (which ships the World vocab) is not installed")
    model_dir = make_model_dir(factory, "rwkv5", name, "q4f16_1", "rwkv-world", vocab,
                               **{**WORLD_SHAPE, **shape})
    return model_dir, factory.library(model_dir)


def bpe_tokenizer(folder: Path) -> Path:
    """A tiny GPT-NeoX-style byte-level BPE (``<|endoftext|>`` = 0) with fewer ids than RAVEN_SHAPE."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    path = folder / "bpe" / "tokenizer.json"
    if not path.is_file():
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(BPE_SENTENCES * 5, trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return path


def raven_model(factory) -> tuple[Path, Path]:
    """(model directory, library) of a random RWKV-4 with a BPE tokenizer.json, q0f32, raven."""
    model_dir = make_model_dir(factory, "rwkv4", "engine", "q0f32", "raven", bpe_tokenizer(factory.root),
                               **RAVEN_SHAPE)
    return model_dir, factory.library(model_dir)


@pytest.fixture(scope="module")
def engine(factory):
    model_dir, lib = world_model(factory)
    return Engine(model_dir, lib)


def text(stream) -> str:
    return "".join(stream)


def exact(s: str) -> bytes:
    """A rendered conversation as bytes (replies cut inside a character keep their bytes as
    surrogate escapes)."""
    return s.encode("utf-8", "surrogateescape")


def consumed(session) -> bytes:
    return session.engine.tokenizer.decode(session.token_ids)


# ---- generate ---------------------------------------------------------------------------------
def test_generate_is_reproducible_with_a_seed(engine):
    a = text(engine.generate("The capital of France is", max_tokens=12, seed=3))
    b = text(engine.generate("The capital of France is", max_tokens=12, seed=3))
    c = text(engine.generate("The capital of France is", max_tokens=12, seed=4))
    assert a == b and a
    assert c != a
    stats = engine.stats
    assert stats.prefill_tokens == len(engine.encode("The capital of France is"))
    assert stats.decode_tokens == 12 and stats.finish_reason == "length"
    assert stats.prefill_tokens_per_second > 0 and stats.decode_tokens_per_second > 0
    assert "tok/s" in str(stats)


def test_generate_streams_the_tokens_it_samples(engine):
    pieces = list(engine.generate("Once upon a time", max_tokens=10, seed=0, temperature=0))
    assert len(pieces) > 1  # streamed, not one block at the end
    # greedy: the same text as argmax decoding the model by hand
    model, ids = engine.model, engine.encode("Once upon a time")
    sampler = engine.sampler(temperature=0)
    logits, state = model.prefill(ids)
    out = []
    for _ in range(10):
        token = sampler.sample(logits)
        sampler.accept(token)
        out.append(token)
        logits, state = model.decode(token, state)
    assert "".join(pieces) == engine.tokenizer.decode_text(out)


def test_the_library_draws_the_tokens_the_numpy_sampler_would(engine, monkeypatch):
    """llvm libraries carry sample_logits: generate draws there (numpy never sees the logits) and
    yields what the numpy sampler yields for the same seed."""
    from rwkv_relax.runtime.sampler import Sampler
    assert engine.model.has_sampler and engine.model.metadata["sampler"] == "sample_logits"
    numpy_draws = []
    real_sample = Sampler.sample
    monkeypatch.setattr(Sampler, "sample", lambda self, *a, **k: numpy_draws.append(1) or real_sample(self, *a, **k))
    settings = [dict(), dict(temperature=0.7, top_p=0.6), dict(top_p=1.0, top_k=20, frequency_penalty=0.5),
                dict(temperature=0)]
    prompt = "The capital of France is"
    in_library = [text(engine.generate(prompt, max_tokens=16, seed=s, **kw)) for s, kw in enumerate(settings)]
    assert not numpy_draws
    monkeypatch.setitem(engine.model.metadata, "sampler", None)  # a library without the kernel
    in_numpy = [text(engine.generate(prompt, max_tokens=16, seed=s, **kw)) for s, kw in enumerate(settings)]
    assert len(numpy_draws) == 4 * 16
    assert in_library == in_numpy


def test_stop_string_ends_the_reply(engine):
    full = text(engine.generate("Stop here:", max_tokens=16, seed=5))
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = text(engine.generate("Stop here:", max_tokens=16, seed=5, stop=[stop]))
    assert cut == full[:full.index(stop)]
    assert engine.stats.finish_reason == "stop"
    assert engine.stats.decode_tokens < 16


def test_long_prompt_is_prefilled_in_chunks(engine):
    prompt = "lorem ipsum dolor sit amet " * 150  # > prefill_chunk_size (512) tokens
    ids = engine.encode(prompt)
    assert len(ids) > engine.model.chunk
    first = text(engine.generate(prompt, max_tokens=1, seed=1))
    assert engine.stats.prefill_tokens == len(ids)
    logits, _ = engine.model.prefill(ids)
    assert first == engine.tokenizer.decode_text([engine.sampler(seed=1).sample(logits)])


# ---- chat -------------------------------------------------------------------------------------
def test_chat_formats_with_the_template_and_is_reproducible(engine):
    messages = [{"role": "user", "content": "Hi there!"}]
    a = text(engine.chat(messages, max_tokens=10, seed=7))
    assert engine.stats.prefill_tokens == len(engine.encode("User: Hi there!\n\nAssistant:"))
    b = text(engine.chat(messages, max_tokens=10, seed=7))
    assert a == b and a
    assert not a.startswith(" ")  # the space after "Assistant:" is not shown


def test_chat_session_prefills_only_the_new_text(engine):
    session = engine.chat_session(seed=2, max_tokens=8)
    first = text(session.send("Hello, who are you?"))
    stats1 = dataclasses.replace(session.stats)
    assert stats1.prefill_tokens == len(engine.encode("User: Hello, who are you?\n\nAssistant:"))
    before = consumed(session)
    n_before = session.n_tokens
    second = text(session.send("Tell me a story."))
    rendered = exact(session.render(session.messages[:-1]))  # the prompt of the second turn
    assert rendered.startswith(before)
    assert session.stats.prefill_tokens == len(engine.encode(rendered[len(before):]))
    assert session.stats.prefill_tokens < len(engine.encode(rendered))
    assert rendered.endswith(exact(f"Assistant:{session._raw[1]}\n\nUser: Tell me a story.\n\nAssistant:"))
    assert session.messages[1] == {"role": "assistant", "content": first}
    assert session.messages[3]["content"] == second
    assert session.n_tokens > n_before
    for stats in (stats1, session.stats):
        assert stats.prefill_tokens > 0 and stats.decode_tokens > 0
        assert stats.prefill_tokens_per_second > 0 and stats.decode_tokens_per_second > 0


def test_session_state_equals_a_fresh_prefill_of_its_tokens(engine):
    session = engine.chat_session(seed=4, max_tokens=6)
    text(session.send("one"))
    text(session.send("two"))
    _, fresh = engine.model.prefill(session.token_ids)
    for layer in range(engine.model.n_layer):
        for name in engine.model.state_names:
            a, b = session.state.layer(layer, name), fresh.layer(layer, name)
            assert abs(a.astype("float64") - b.astype("float64")).max() <= 1e-2, (layer, name)


def test_engine_chat_reuses_its_state_when_messages_extend(engine):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    reply = text(engine.chat(messages, max_tokens=6, seed=1))
    full = len(engine.encode("User: What is 2+2?\n\nAssistant:"))
    assert engine.stats.prefill_tokens == full
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And 3+3?"}]
    text(engine.chat(messages, max_tokens=6, seed=1))
    # the new turn, plus the last reply token (never fed: generation ended on it)
    assert 0 < engine.stats.prefill_tokens < len(engine.encode(engine.conv_template.render(messages))) - full


def test_template_stop_string_ends_a_chat_reply_and_the_next_turn_continues(engine, monkeypatch):
    probe = engine.chat_session(seed=9, max_tokens=16)
    reply = text(probe.send("Say something."))
    # a stop string that starts a word: a cut inside a multi-byte or multi-token run would leave
    # text whose re-encoding differs from the fed tokens (the session then re-prefills instead)
    words = [m.group(0) for m in re.finditer(r" [A-Za-z]{2,}", reply)]
    assert words, reply
    stop = words[len(words) // 2]
    template = dataclasses.replace(engine.conv_template, stop_strings=(stop,))
    monkeypatch.setattr(engine, "conv_template", template)
    session = engine.chat_session(seed=9, max_tokens=16)
    cut = text(session.send("Say something."))
    assert cut == reply[:reply.index(stop)]
    assert session.stats.finish_reason == "stop"
    # the tokens of the stop string already fed stay: the next turn still extends them
    before = consumed(session)
    text(session.send("Go on."))
    assert consumed(session).startswith(before)
    assert session.stats.prefill_tokens < len(engine.encode(exact(session.render(session.messages[:-1]))))


def test_abandoned_and_interrupted_replies_keep_the_session_consistent(engine, monkeypatch):
    session = engine.chat_session(seed=6, max_tokens=12)
    stream = session.send("Count to ten.")
    next(stream)
    stream.close()  # the reader stops early: what was fed is still known
    before = consumed(session)
    text(session.send("Again"))
    prompt = exact(session.render(session.messages[:-1]))
    assert prompt.startswith(before)
    assert session.stats.prefill_tokens == len(engine.encode(prompt[len(before):]))

    real_advance = engine.model.advance_raw
    calls = []

    def interrupted(state, tokens):  # Ctrl-C during the first decode step
        if len(tokens) == 1 and not calls:
            calls.append(tokens)
            raise KeyboardInterrupt
        return real_advance(state, tokens)
    monkeypatch.setattr(engine.model, "advance_raw", interrupted)
    with pytest.raises(KeyboardInterrupt):
        text(session.send("Once more"))
    text(session.send("Last"))  # the state was in doubt: the whole conversation is prefilled
    assert session.stats.prefill_tokens == len(engine.encode(exact(session.render(session.messages[:-1]))))


def test_session_reset_starts_over(engine):
    session = engine.chat_session(seed=5, max_tokens=6)
    a = text(session.send("Hi"))
    text(session.send("More"))
    session.reset()
    assert session.messages == [] and session.n_tokens == 0
    assert text(session.send("Hi")) == a


def test_system_prompt(engine):
    session = engine.chat_session("You are terse.", seed=0, max_tokens=4)
    text(session.send("Hi"))
    assert consumed(session).startswith(b"System: You are terse.\n\nUser: Hi\n\nAssistant:")


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda e: e.generate(""), "empty prompt"),
    (lambda e: e.generate("x", top_q=1), "unknown sampling option top_q"),
    (lambda e: e.generate("x", max_tokens=-1), "max_tokens"),
    (lambda e: e.chat([{"role": "assistant", "content": "x"}]), "last message must be the user's"),
    (lambda e: e.chat([{"role": "robot", "content": "x"}]), "role"),
    (lambda e: e.chat_session().send("  "), "empty message"),
    (lambda e: e.chat_session().save("/tmp/never"), "nothing to save"),
])
def test_bad_requests_are_one_line_errors(engine, call, match):
    with pytest.raises(RWKVRelaxError, match=match) as err:
        call(engine)
    assert "\n" not in str(err.value)


def test_bad_engine_arguments(factory, tmp_path):
    model_dir, lib = world_model(factory)
    with pytest.raises(RWKVRelaxError, match="does not exist"):
        Engine(tmp_path / "missing")
    with pytest.raises(RWKVRelaxError, match="no mlc-chat-config.json"):
        Engine(tmp_path)
    with pytest.raises(RWKVRelaxError, match="unknown device 'tpu'; valid: cpu"):
        Engine(model_dir, lib, device="tpu")
    with pytest.raises(RWKVRelaxError, match="unknown conv template 'chatml'; valid: rwkv-world, raven, LM"):
        Engine(model_dir, lib, conv_template="chatml")
    with pytest.raises(RWKVRelaxError, match="does not exist"):
        Engine(model_dir, tmp_path / "nope.so")


# ---- library cache ----------------------------------------------------------------------------
def test_library_is_built_once_and_cached(factory, tmp_path, monkeypatch):
    model_dir, _ = world_model(factory)
    cache = tmp_path / "libs"
    expected = cached_library_path(model_dir, "cpu", cache)
    assert not expected.exists()
    first = Engine(model_dir, lib_cache_dir=cache)
    assert first.model_lib == expected and expected.is_file()

    import rwkv_relax.pipeline
    monkeypatch.setattr(rwkv_relax.pipeline, "build", lambda *a, **k: pytest.fail("rebuilt a cached library"))
    second = Engine(model_dir, lib_cache_dir=cache)
    assert second.model_lib == expected
    assert text(second.generate("Hi", max_tokens=5, seed=0)) == \
        text(first.generate("Hi", max_tokens=5, seed=0))


# ---- RWKV-4 with a Hugging Face tokenizer -------------------------------------------------------
def test_rwkv4_with_hf_tokenizer_generates_and_chats(factory):
    model_dir, lib = raven_model(factory)
    engine = Engine(model_dir, lib)
    assert engine.conv_template.name == "raven"
    a = text(engine.generate("Hello world", max_tokens=10, seed=0))
    assert a == text(engine.generate("Hello world", max_tokens=10, seed=0))
    assert engine.stats.decode_tokens >= 1
    session = engine.chat_session(seed=0, max_tokens=8)
    text(session.send("Hello Alice"))
    preamble = engine.conv_template.default_system
    assert consumed(session).startswith(exact(preamble + "\n\nBob: Hello Alice\n\nAlice:"))
    text(session.send("How are you?"))
    assert session.messages[-2] == {"role": "user", "content": "How are you?"}
    assert session.stats.prefill_tokens > 0 and session.stats.decode_tokens > 0


WORLD7_SHAPE = dict(n_layer=2, n_embd=128, vocab_size=65536, head_size=64, dim_decay_lora=16, dim_a_lora=16,
                    dim_v_lora=8, dim_gate_lora=32, seed=13)


WORLD6_SHAPE = dict(n_layer=2, n_embd=128, vocab_size=65536, head_size=64, dim_mix_lora=8, dim_decay_lora=16,
                    seed=13)


@pytest.mark.parametrize("arch,shape", [("rwkv6", WORLD6_SHAPE), ("rwkv7", WORLD7_SHAPE)])
def test_rwkv6_rwkv7_generate_chat_and_save_state(factory, tmp_path, arch, shape):
    """The runtime is version-blind: an RWKV-6 / RWKV-7 World model directory generates
    (deterministic with a seed), chats prefilling only the new turn, and its state file continues
    the conversation exactly."""
    from rwkv_relax.tokenizer import default_world_vocab
    vocab = default_world_vocab()
    if vocab is None:
        pytest.skip("the rwkv package (which ships the World vocab) is not installed")
    model_dir = make_model_dir(factory, arch, "engine", "q4f16_1", "rwkv-world", vocab, **shape)
    engine = Engine(model_dir, factory.library(model_dir))
    assert engine.model.metadata["model_type"] == arch
    first = "".join(engine.generate("The capital of France is", max_tokens=12, seed=3))
    assert first == "".join(engine.generate("The capital of France is", max_tokens=12, seed=3))
    assert engine.stats.decode_tokens > 0
    chat = engine.chat_session(seed=5, max_tokens=8)
    "".join(chat.send("Hello there!"))
    fed = chat.n_tokens
    "".join(chat.send("And again?"))
    assert chat.stats.prefill_tokens < chat.n_tokens - fed + 16  # only the new turn (and template) prefilled
    path = chat.save(tmp_path / "chat.safetensors")
    after = "".join(chat.send("One more."))
    again = engine.chat_session(seed=5, max_tokens=8)
    again.load(path)
    assert "".join(again.send("One more.")) == after


def test_time_state_flag_starts_every_sequence_from_a_state_tuning(factory, tmp_path, capsys):
    """``--time-state`` / ``Engine(time_state=...)``: an RWKV-6 state-tuning file (here: the state a
    prompt reached, saved with save_time_state) is where generation starts; an RWKV-7 model refuses
    one in one line."""
    from rwkv_relax.generate import main as generate_main
    from rwkv_relax.runtime.time_state import TimeStateError, save_time_state
    from rwkv_relax.tokenizer import default_world_vocab
    vocab = default_world_vocab()
    if vocab is None:
        pytest.skip("the rwkv package (which ships the World vocab) is not installed")
    model_dir = make_model_dir(factory, "rwkv6", "engine", "q4f16_1", "rwkv-world", vocab, **WORLD6_SHAPE)
    lib = factory.library(model_dir)
    plain = Engine(model_dir, lib)
    _, state = plain.model.prefill(plain.encode("User: tell me about the sea\n\nAssistant:"))
    tuning = save_time_state(tmp_path / "tuning.pth", plain.model, state)
    tuned = Engine(model_dir, lib, time_state=tuning)
    assert tuned.model.initial_state is not None and plain.model.initial_state is None
    a = "".join(tuned.generate("Once", max_tokens=10, seed=1))
    assert a != "".join(plain.generate("Once", max_tokens=10, seed=1))
    capsys.readouterr()
    assert generate_main(["--model", str(model_dir), "--model-lib", str(lib), "--time-state", str(tuning),
                          "--prompt", "Once", "--max-tokens", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == a
    dir7 = make_model_dir(factory, "rwkv7", "engine", "q4f16_1", "rwkv-world", vocab, **WORLD7_SHAPE)
    with pytest.raises(TimeStateError, match="RWKV7 has no time_state"):
        Engine(dir7, factory.library(dir7), time_state=tuning)


# ---- the functional API's in-place fast path -------------------------------------------------
@pytest.fixture(scope="module")
def functional_model(factory):
    """The engine's library with the default rollback history (4), where ``decode`` steps the
    runtime sequence in place and keeps the State it was given in the history."""
    from rwkv_relax.runtime.model import CompiledModel
    model_dir, lib = world_model(factory)
    return CompiledModel(lib, model_dir)


def snapshot(model, state) -> dict:
    return {(i, n): state.layer(i, n) for i in range(model.n_layer) for n in model.state_names}


def assert_same(got: dict, want: dict) -> None:
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))


def test_decode_in_place_keeps_every_state_passed_in(functional_model):
    model, rng = functional_model, np.random.default_rng(5)
    tokens = [int(t) for t in rng.integers(0, model.vocab_size, 14)]
    inplace = model.new_state()
    want = [model.advance(inplace, tokens[:3])] + [model.advance(inplace, [t]) for t in tokens[3:]]

    _, state = model.prefill(tokens[:3])
    seq_id = state.seq_id
    for i, t in enumerate(tokens[3:]):  # rebinding the state: one runtime sequence throughout
        logits, state = model.decode(t, state)
        np.testing.assert_array_equal(logits, want[i + 1])
    assert state.seq_id == seq_id and state.length == len(tokens)

    # keeping every State alive: more steps than the history holds, so the oldest are copied out
    _, state = model.prefill(tokens[:3])
    kept = [(state, snapshot(model, state))]
    for t in tokens[3:]:
        _, state = model.decode(t, state)
        kept.append((state, snapshot(model, state)))
    for i, (old, values) in enumerate(kept):
        assert_same(snapshot(model, old), values)
        assert old.length == 3 + i
        if i + 1 < len(kept):  # each one still continues to its successor's logits
            np.testing.assert_array_equal(model.decode(tokens[3 + i], old)[0], want[i + 1])


def test_branching_and_batches_leave_the_state_passed_in(functional_model):
    model, rng = functional_model, np.random.default_rng(6)
    _, state = model.prefill([int(t) for t in rng.integers(0, model.vocab_size, 5)])
    before = snapshot(model, state)
    a, _ = model.decode(11, state)
    b, _ = model.decode(12, state)  # from `state` again, not from the step before
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(model.decode(11, state)[0], a)
    np.testing.assert_array_equal(model.prefill([11], state)[0], a)
    longer, _ = model.prefill([11, 12, 13], state)
    logits, new = model.batch_decode([11, 12, 11], [state, state, state])  # one State thrice
    np.testing.assert_array_equal(logits[0], logits[2])
    assert not np.array_equal(logits[0], logits[1])
    assert_same(snapshot(model, new[0]), snapshot(model, new[2]))
    assert_same(snapshot(model, state), before)
    np.testing.assert_array_equal(model.prefill([11, 12, 13], state)[0], longer)
    np.testing.assert_array_equal(model.decode(11, state)[0], a)


def test_sample_rows_draws_each_row_as_its_sampler_would_alone(functional_model):
    """The server's step: every row of one forward drawn in one kernel call, each with its own
    sampler (penalties, bans, settings, random stream, one keeping every token); None rows are not
    drawn; the same tokens as each sampler drawing its row in numpy."""
    from rwkv_relax.runtime.sampler import Sampler
    model, rng = functional_model, np.random.default_rng(7)
    states = [model.new_state() for _ in range(4)]
    prompts = [[int(t) for t in rng.integers(0, model.vocab_size, n)] for n in (3, 9, 1, 5)]
    settings = [dict(temperature=1.0, top_p=0.3), dict(temperature=0.7, top_p=0.8, top_k=30),
                dict(temperature=1.0, top_p=1.0), dict(temperature=0.0)]

    def samplers(seed):
        out = []
        for i, kw in enumerate(settings):
            s = Sampler(**kw, presence_penalty=0.3, frequency_penalty=0.6, token_ban=[i + 1], seed=seed + i)
            for t in prompts[i]:
                s.accept(t)
            out.append(s)
        return out
    raw = model.advance_batch_raw(states, prompts)
    rows = model.rows(raw, 4).copy()
    want = [s.sample(rows[i]) for i, s in enumerate(samplers(0))]
    drawn = model.sample_rows(raw, [*samplers(0)[:2], None, samplers(0)[3]])
    assert drawn[2] is None and [drawn[i] for i in (0, 1, 3)] == [want[i] for i in (0, 1, 3)]
    raw = model.advance_batch_raw(states, [[5]] * 4)
    rows = model.rows(raw, 4).copy()
    want = [s.sample(rows[i]) for i, s in enumerate(samplers(1))]
    assert model.sample_rows(raw, samplers(1)) == want
    # the same samplers over several steps, accepting what they draw: their adjustment lists grow
    # (or not, on a repeated token) and move in the kernel's tensors; a row dropped and taken back
    in_numpy, in_kernel, tokens = samplers(2), samplers(2), [5] * 4
    for step in range(5):
        raw = model.advance_batch_raw(states, [[t] for t in tokens])
        rows = model.rows(raw, 4).copy()
        drawn_rows = [0, 2, 3] if step == 2 else [0, 1, 2, 3]
        want = [in_numpy[i].sample(rows[i]) if i in drawn_rows else None for i in range(4)]
        got = model.sample_rows(raw, [in_kernel[i] if i in drawn_rows else None for i in range(4)])
        assert got == want, step
        for i in drawn_rows:
            in_numpy[i].accept(got[i])
            in_kernel[i].accept(got[i])
            tokens[i] = got[i]


def test_a_model_run_from_another_thread_sizes_that_threads_pool(functional_model, monkeypatch):
    """TVM keeps one CPU thread pool per calling thread, of half the CPUs by default: the server's
    engine-loop thread ran every step on one core of two until the model sized its pool."""
    import threading

    from rwkv_relax.runtime import threads
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    seen = {}

    def run():
        functional_model.advance(functional_model.new_state(), [1, 2])
        seen["ident"] = threading.get_ident()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert threads._configured[seen["ident"]] == threads.usable_cpus()
