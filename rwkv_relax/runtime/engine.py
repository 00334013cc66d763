"""Text in, text out: a model directory (``model_dir.py``) driven through its compiled library.
::

    engine = Engine("dist/rwkv5-world-0.1b-q4f16_1", "lib.so")
    # (rwkv_relax.Engine builds and caches the library on first use: see rwkv_relax/jit.py)
    for piece in engine.generate("The Eiffel tower is", max_tokens=50, seed=0):
        print(piece, end="")
    chat = engine.chat_session()
    print("".join(chat.send("Hi! Who are you?")))
    print(engine.stats)                                   # prefill / decode tokens and tok/s

A :class:`ChatSession` keeps its sequence's RNN state between turns and remembers which token ids
that state has consumed; a new turn feeds only the text that extends them (``Engine.chat`` does the
same with one session of its own, so resending a conversation plus one message is cheap).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import CHAT_CONFIG
from .chat_session import ChatSession
from .conversation import ConvTemplate, get_template
from .generation import (
    DEFAULT_MAX_TOKENS,
    SAMPLING_FIELDS,
    Clock,
    ExactStream,
    GenerationStats,
    check_max_tokens,
    shown_text,
)
from .model import CompiledModel
from .model_dir import DEVICES, EngineError, load_dir_tokenizer, read_chat_config
from .sampler import Sampler, StopStrings
from .tokenizers import StreamDecoder, TokenizerError


class Engine:
    """A model directory, its tokenizer, its conversation template and its compiled library.

    ``model_lib``: a library built for this directory (``rwkv_relax.Engine`` builds one when it is
    None, see ``jit.py``). ``conv_template`` overrides the directory's. ``max_sequences`` bounds
    the live sequences (chat sessions plus one per running ``generate``). ``time_state``: a
    state-tuning file (RWKV-5/6 ``blocks.i.att.time_state``) every sequence starts from, in place
    of the model directory's own (``time_state.safetensors``, kept by convert_weight) or zeros.
    """

    def __init__(self, model_dir: str | Path, model_lib: str | Path | None = None,
                 device: str = "cpu", *, conv_template: str | None = None, max_sequences: int = 8,
                 time_state: str | Path | None = None):
        self.model_dir = Path(model_dir)
        self.config = read_chat_config(self.model_dir)
        if device not in DEVICES:
            raise EngineError(f"unknown device '{device}'; valid: {', '.join(DEVICES)}")
        self.device = device
        self.tokenizer = load_dir_tokenizer(self.model_dir, self.config)
        self.conv_template: ConvTemplate = get_template(
            conv_template or self.config.get("conv_template", "LM"))
        self.sampling_defaults = {k: self.config[k] for k in SAMPLING_FIELDS if k in self.config}
        if float(self.config.get("repetition_penalty", 1.0)) != 1.0:
            raise EngineError(f"{CHAT_CONFIG}: repetition_penalty is not supported (RWKV sampling uses "
                              "presence_penalty / frequency_penalty); set it to 1.0")
        self.model_lib = self._library(model_lib)
        # one history entry per sequence: the engine never rolls back, and the runtime reserves
        # state memory for every (sequence, history entry)
        self.model = CompiledModel(self.model_lib, self.model_dir, device,
                                   max_sequences=max_sequences, max_history=1)
        if self.model.metadata["model_type"] != self.config["model_type"]:
            raise EngineError(f"library {self.model_lib} is for {self.model.metadata['model_type']}, "
                              f"the model directory for {self.config['model_type']}; build a library "
                              "for this directory")
        if self.tokenizer.vocab_size > self.model.vocab_size:
            raise EngineError(f"the tokenizer has {self.tokenizer.vocab_size} ids but the model only "
                              f"{self.model.vocab_size}; wrong tokenizer in {self.model_dir}")
        if time_state is not None:
            from .time_state import load_time_state
            self.model.initial_state = load_time_state(time_state, self.model)
        self.stats = GenerationStats()
        self._session: ChatSession | None = None

    def _library(self, model_lib: str | Path | None) -> Path:
        """The library to load (the JIT engine builds one here when none is given)."""
        if model_lib is None:
            raise EngineError(f"no model library given for {self.model_dir}; build one with python -m "
                              "rwkv_relax.build --model <dir>, or use rwkv_relax.Engine, which builds it")
        return Path(model_lib)

    # ---- pieces ------------------------------------------------------------------------------
    @functools.cached_property
    def _vocab_scan(self) -> tuple[list[int], frozenset[int]]:
        """(ids the tokenizer cannot decode -- never sampled, ids ChatRWKV leaves out of the
        frequency penalty: tokens whose text is in ``' \\t0123456789'``)."""
        banned, uncounted = [], set()
        for token_id in range(self.model.vocab_size):
            try:
                text = self.tokenizer.decode([token_id])
            except TokenizerError:
                banned.append(token_id)
                continue
            if text and text in b" \t0123456789":
                uncounted.add(token_id)
        return banned, frozenset(uncounted)

    def sampler(self, seed: int | np.random.Generator | None = None, **overrides) -> Sampler:
        """A sampler with the directory's defaults, ``overrides`` (``SAMPLING_FIELDS``) applied."""
        unknown = sorted(set(overrides) - set(SAMPLING_FIELDS))
        if unknown:
            raise EngineError(f"unknown sampling option {', '.join(unknown)}; "
                              f"valid: {', '.join(SAMPLING_FIELDS)}")
        params = {**self.sampling_defaults, **{k: v for k, v in overrides.items() if v is not None}}
        banned, uncounted = self._vocab_scan
        return Sampler(**params, token_ban=banned, token_stop=[self.tokenizer.eos_id],
                       uncounted_ids=uncounted, seed=seed)

    def encode(self, text: str | bytes) -> list[int]:
        return self.tokenizer.encode(text)

    # ---- one-shot ----------------------------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, *,
                 seed: int | None = None, stop: tuple[str, ...] | list[str] = (),
                 **sampling) -> Iterator[str]:
        """Stream the continuation of ``prompt`` (no template) as text pieces; ends at an
        end-of-text token, a string of ``stop`` (not included) or ``max_tokens``."""
        if not isinstance(prompt, str) or not prompt:
            raise EngineError("empty prompt; give some text to continue")
        ids = self.tokenizer.encode(prompt)
        sampler = self.sampler(seed, **sampling)
        check_max_tokens(max_tokens)

        def run():
            stats = self.stats = GenerationStats()
            state = self.model.new_state()
            logits = self._prefill(state, ids, stats)
            for piece in self._decode(state, logits, sampler, tuple(stop), max_tokens, stats, []):
                yield shown_text(piece)
        return run()

    # ---- chat --------------------------------------------------------------------------------
    def chat_session(self, system: str | None = None, *, seed: int | None = None,
                     max_tokens: int = DEFAULT_MAX_TOKENS, **sampling) -> "ChatSession":
        """A conversation that keeps its RNN state between turns (see :class:`ChatSession`)."""
        return ChatSession(self, system, seed=seed, max_tokens=max_tokens, **sampling)

    def chat(self, messages: list[dict], max_tokens: int = DEFAULT_MAX_TOKENS, *,
             seed: int | None = None, **sampling) -> Iterator[str]:
        """Stream the assistant's reply to ``messages`` (``[{"role", "content"}]``, the last one
        the user's), formatted with the model's conversation template. The engine keeps one
        session: when ``messages`` extend the conversation it last answered, only the new text is
        prefilled."""
        if self._session is None:
            self._session = ChatSession(self)
        return self._session.reply(messages, max_tokens=max_tokens, seed=seed, **sampling)

    # ---- the loop ----------------------------------------------------------------------------
    def _prefill(self, state, ids: list[int], stats: GenerationStats):
        """Feed ``ids`` into ``state`` in place (the runtime chunks by prefill_chunk_size); the last
        logits as the library returned them (``CompiledModel.sample`` draws from them)."""
        t0 = time.perf_counter()
        logits = self.model.advance_raw(state, ids)
        stats.prefill_tokens += len(ids)
        stats.prefill_seconds += time.perf_counter() - t0
        return logits

    def _decode(self, state, logits, sampler: Sampler, stop_strings: tuple[str, ...],
                max_tokens: int, stats: GenerationStats, fed: list[int]) -> Iterator[str]:
        """Sample, stream and feed back tokens; ``fed`` collects the ids fed into ``state``.

        The pieces are the exact bytes generated, as str with invalid UTF-8 (a character cut by
        the end of generation) kept as surrogate escapes (:func:`shown_text` turns them into
        U+FFFD). The token that ends generation (end-of-text, the one completing a stop string,
        the ``max_tokens``-th) is not fed: nothing needs its logits."""
        stream = self.tokenizer.stream()
        if isinstance(stream, StreamDecoder):  # byte-level: keep the exact bytes
            stream = ExactStream(self.tokenizer.id_to_token)
        stops = StopStrings(stop_strings)
        clock = Clock()
        stats.finish_reason = "length"
        for i in range(max_tokens):
            token = self.model.sample(logits, sampler)
            stats.decode_tokens += 1
            if sampler.is_stop_token(token):
                stats.finish_reason = "eos"
                break
            sampler.accept(token)
            text = stops.put(stream.put(token))
            if text:
                clock.pause()
                yield text
                clock.resume()
            if stops.stopped:
                stats.finish_reason = "stop"
                break
            if i + 1 == max_tokens:
                break
            logits = self.model.advance_raw(state, [token])
            fed.append(token)
        tail = stops.put(stream.flush()) + stops.flush()
        clock.pause()
        stats.decode_seconds += clock.total
        if tail:
            yield tail


