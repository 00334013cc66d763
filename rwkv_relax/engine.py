"""Text in, text out: a model directory driven through its compiled library.

A model directory is what ``gen_config`` and ``convert_weight`` write (MLC-LLM's layout):
``mlc-chat-config.json`` (model config, conversation template, sampling defaults, tokenizer file
names), the tensor cache and the tokenizer files. ::

    engine = Engine("dist/rwkv5-world-0.1b-q4f16_1")      # builds + caches the library on first use
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

import codecs
import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import CHAT_CONFIG
from .conversation import ConvTemplate, check_messages, get_template
from .errors import RWKVRelaxError
from .sampler import Sampler, StopStrings
from .tokenizer import StreamDecoder, TokenizerError, load_tokenizer

# Engine device -> build target (the library must be loadable by this process on that device)
DEVICE_TARGETS = {"cpu": "llvm", "cuda": "cuda", "metal": "metal", "vulkan": "vulkan"}
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty",
                   "penalty_decay")
DEFAULT_MAX_TOKENS = 256


class EngineError(RWKVRelaxError):
    """A model directory that cannot be used, or a request the engine cannot serve."""


@dataclasses.dataclass
class GenerationStats:
    """What the last generate / chat call did. Times are the engine's own work: time the caller
    spends between two pieces of the stream is not counted."""

    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled (the last one is not fed back when generation ends)
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (a stop string), "eos" (end-of-text token), "length"

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"prefill: {self.prefill_tokens} tok, {self.prefill_tokens_per_second:.1f} tok/s; "
                f"decode: {self.decode_tokens} tok, {self.decode_tokens_per_second:.1f} tok/s")


# ---- model directory and library cache -----------------------------------------------------------
def read_chat_config(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model directory {model_dir} does not exist (make one with "
                          "python -m rwkv_relax.gen_config and convert_weight)")
    path = model_dir / CHAT_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{model_dir} has no {CHAT_CONFIG}; write it with "
                          "python -m rwkv_relax.gen_config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineError(f"{path} is not valid JSON ({err}); re-run gen_config") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise EngineError(f"{path} has no model_type; re-run gen_config")
    return config


def default_cache_dir() -> Path:
    """``~/.cache/rwkv_relax/libs`` (under ``$XDG_CACHE_HOME`` when set, as other caches are)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rwkv_relax" / "libs"


@functools.lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    """The source of this package and of its kernels: a library built by other code is stale."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for folder in (root, root.parent / "tir_kernels"):
        for f in sorted(folder.rglob("*.py")):
            digest.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def cached_library_path(model_dir: str | Path, device: str = "cpu",
                        cache_dir: str | Path | None = None) -> Path:
    """Where :func:`ensure_library` keeps the library of ``model_dir`` for ``device``: keyed by
    ``mlc-chat-config.json``, the device (for the CPU: its LLVM name, as -mcpu is this host's),
    the TVM version and the compiler's source."""
    import tvm

    from .targets import get_target, host_cpu
    target = _device_target(device)
    config = read_chat_config(model_dir)
    key = hashlib.sha256()
    key.update((Path(model_dir) / CHAT_CONFIG).read_bytes())
    key.update(f"\0{device}\0{host_cpu() if target == 'llvm' else ''}\0{tvm.__version__}\0".encode())
    key.update(_compiler_fingerprint().encode())
    name = f"{config['model_type']}-{config.get('quantization', 'q0f32')}-{device}-{key.hexdigest()[:16]}"
    return Path(cache_dir or default_cache_dir()) / (name + get_target(target).extension)


def ensure_library(model_dir: str | Path, device: str = "cpu",
                   cache_dir: str | Path | None = None) -> Path:
    """The cached library of ``model_dir`` for ``device``, built first if it is not there."""
    path = cached_library_path(model_dir, device, cache_dir)
    if not path.is_file():
        from .pipeline import build
        build(str(model_dir), target=_device_target(device), output=path)
    return path


def _device_target(device: str) -> str:
    try:
        return DEVICE_TARGETS[device]
    except KeyError:
        raise EngineError(f"unknown device '{device}'; valid: {', '.join(DEVICE_TARGETS)}") from None


def _load_dir_tokenizer(model_dir: Path, config: dict):
    names = [n for n in config.get("tokenizer_files", []) if (model_dir / n).is_file()]
    if not names:
        raise EngineError(f"{model_dir} has no tokenizer (tokenizer_files in {CHAT_CONFIG}: "
                          f"{config.get('tokenizer_files', [])}); re-run gen_config with --tokenizer")
    return load_tokenizer(model_dir / names[0])


class _ExactStream:
    """:class:`~rwkv_relax.tokenizer.StreamDecoder` that keeps invalid UTF-8 as surrogate escapes
    (``errors="surrogateescape"``) instead of U+FFFD, so the text encodes back to the exact bytes
    the tokens carry."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def put(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class _Clock:
    """Adds up the engine's own time in a generator, leaving out the time spent outside it."""

    def __init__(self):
        self.total, self._t0 = 0.0, time.perf_counter()

    def pause(self) -> None:
        self.total += time.perf_counter() - self._t0

    def resume(self) -> None:
        self._t0 = time.perf_counter()


# ---- engine ----------------------------------------------------------------------------------
class Engine:
    """A model directory, its tokenizer, its conversation template and its compiled library.

    ``model_lib``: a library built for this directory; None builds one for ``device`` on first use
    and caches it (``lib_cache_dir``, default ``~/.cache/rwkv_relax/libs``). ``conv_template``
    overrides the directory's. ``max_sequences`` bounds the live sequences (chat sessions plus
    one per running ``generate``).
    """

    def __init__(self, model_dir: str | Path, model_lib: str | Path | None = None,
                 device: str = "cpu", *, lib_cache_dir: str | Path | None = None,
                 conv_template: str | None = None, max_sequences: int = 8):
        from .runtime.model import CompiledModel
        self.model_dir = Path(model_dir)
        self.config = read_chat_config(self.model_dir)
        _device_target(device)
        self.device = device
        self.tokenizer = _load_dir_tokenizer(self.model_dir, self.config)
        self.conv_template: ConvTemplate = get_template(
            conv_template or self.config.get("conv_template", "LM"))
        self.sampling_defaults = {k: self.config[k] for k in SAMPLING_FIELDS if k in self.config}
        if float(self.config.get("repetition_penalty", 1.0)) != 1.0:
            raise EngineError(f"{CHAT_CONFIG}: repetition_penalty is not supported (RWKV sampling uses "
                              "presence_penalty / frequency_penalty); set it to 1.0")
        self.model_lib = (Path(model_lib) if model_lib
                          else ensure_library(self.model_dir, device, lib_cache_dir))
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
        self.stats = GenerationStats()
        self._session: ChatSession | None = None

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
        _check_max_tokens(max_tokens)

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
    def _prefill(self, state, ids: list[int], stats: GenerationStats) -> np.ndarray:
        """Feed ``ids`` into ``state`` in place (the runtime chunks by prefill_chunk_size)."""
        t0 = time.perf_counter()
        logits = self.model.advance(state, ids)
        stats.prefill_tokens += len(ids)
        stats.prefill_seconds += time.perf_counter() - t0
        return logits

    def _decode(self, state, logits: np.ndarray, sampler: Sampler, stop_strings: tuple[str, ...],
                max_tokens: int, stats: GenerationStats, fed: list[int]) -> Iterator[str]:
        """Sample, stream and feed back tokens; ``fed`` collects the ids fed into ``state``.

        The pieces are the exact bytes generated, as str with invalid UTF-8 (a character cut by
        the end of generation) kept as surrogate escapes (:func:`shown_text` turns them into
        U+FFFD). The token that ends generation (end-of-text, the one completing a stop string,
        the ``max_tokens``-th) is not fed: nothing needs its logits."""
        stream = self.tokenizer.stream()
        if isinstance(stream, StreamDecoder):  # byte-level: keep the exact bytes
            stream = _ExactStream(self.tokenizer.id_to_token)
        stops = StopStrings(stop_strings)
        clock = _Clock()
        stats.finish_reason = "length"
        for i in range(max_tokens):
            token = sampler.sample(logits)
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
            logits = self.model.advance(state, [token])
            fed.append(token)
        tail = stops.put(stream.flush()) + stops.flush()
        clock.pause()
        stats.decode_seconds += clock.total
        if tail:
            yield tail


def shown_text(raw: str) -> str:
    """Generated text for people: surrogate-escaped bytes (invalid UTF-8) become U+FFFD."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_max_tokens(max_tokens) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise EngineError(f"max_tokens must be a whole number >= 0, got {max_tokens!r}")


class ChatSession:
    """A conversation with its sequence's RNN state kept between turns.

    The session remembers the ids its state has consumed. Each turn renders the whole
    conversation with the template; when that text extends the text of those ids (always, for
    turns sent through :meth:`send`), only the extension is tokenized and prefilled, else the
    state is rebuilt from the full text. Replies are stored as shown (less the space after
    "Assistant:") and, aside, as generated, which is how they are rendered again.

    With ``seed``, turn n samples from ``default_rng([seed, n])``: a conversation saved with
    :meth:`save` and continued after :meth:`load` gives the replies the original would have.
    """

    def __init__(self, engine: Engine, system: str | None = None, *, seed: int | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, **sampling):
        engine.sampler(**sampling)  # unknown options fail here, not at the first turn
        _check_max_tokens(max_tokens)
        self.engine, self.template = engine, engine.conv_template
        self.system, self.seed, self.max_tokens, self.sampling = system, seed, max_tokens, sampling
        self.messages: list[dict] = []
        self.stats = GenerationStats()
        self._state = None
        self._ids: list[int] = []
        self._raw: dict[int, str] = {}  # message index -> the reply as generated
        self.reset()

    @property
    def n_tokens(self) -> int:
        """Tokens in the state (prompt and generated)."""
        return len(self._ids)

    @property
    def state(self):
        """The runtime sequence (``runtime.State``), or None before the first turn."""
        return self._state

    @property
    def token_ids(self) -> list[int]:
        """The ids the state has consumed, in order."""
        return list(self._ids)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self._state, self._ids, self._raw = None, [], {}

    def send(self, message: str, **kwargs) -> Iterator[str]:
        """Add a user message and stream the reply (``kwargs``: max_tokens, seed, sampling)."""
        if not isinstance(message, str) or not self.template.clean(message):
            raise EngineError("empty message; type some text")
        return self.reply(self.messages + [{"role": "user", "content": message}], **kwargs)

    def render(self, messages: list[dict]) -> str:
        """The prompt text of ``messages``, with the replies this session generated as generated."""
        return self.template.render(messages, raw_replies=self._raw_replies(messages))

    def _raw_replies(self, messages: list[dict]) -> dict[int, str]:
        """This session's generated replies that ``messages`` still hold at the same place."""
        return {i: r for i, r in self._raw.items()
                if i < len(messages) and i < len(self.messages) and messages[i] == self.messages[i]}

    def reply(self, messages: list[dict], *, max_tokens: int | None = None, seed: int | None = None,
              **sampling) -> Iterator[str]:
        """Make ``messages`` the conversation and stream the assistant's reply to it."""
        messages = check_messages(messages)
        if not messages or messages[-1]["role"] != "user":
            raise EngineError("the last message must be the user's")
        if not self.template.clean(messages[-1]["content"]):
            raise EngineError("empty message; type some text")
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        _check_max_tokens(max_tokens)
        raw = self._raw_replies(messages)
        text = self.template.render(messages, raw_replies=raw)
        seed = self.seed if seed is None else seed
        turn = sum(m["role"] == "user" for m in messages)
        rng = np.random.default_rng(None if seed is None else [seed, turn])
        sampler = self.engine.sampler(rng, **{**self.sampling, **sampling})

        def run():
            stats = self.stats = self.engine.stats = GenerationStats()
            try:
                logits = self._feed(text, stats)
                index = len(messages)
                self.messages = messages + [{"role": "assistant", "content": ""}]
                self._raw = {**raw, index: ""}
                for piece in self.engine._decode(self._state, logits, sampler, self.template.stop_strings,
                                                 max_tokens, stats, self._ids):
                    shown_before = self.messages[index]["content"]
                    self._raw[index] += piece
                    self.messages[index]["content"] = shown_text(self.template.shown(self._raw[index]))
                    if len(self.messages[index]["content"]) > len(shown_before):
                        yield self.messages[index]["content"][len(shown_before):]
            except GeneratorExit:  # the caller stopped reading at a yield: state and ids agree
                raise
            except BaseException:  # e.g. Ctrl-C inside a forward: the state may hold an extra token
                self._state = None  # the next turn prefills the whole conversation
                raise
        return run()

    def _feed(self, text: str, stats: GenerationStats) -> np.ndarray:
        """Bring the state to ``text``: prefill what extends the ids already fed, or start over."""
        try:  # replies hold the bytes they were generated as (surrogate escapes)
            target = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as err:
            raise EngineError(f"the conversation has an unpaired surrogate at index {err.start}, which "
                              "UTF-8 cannot encode") from None
        ids = None
        if self._state is not None:
            fed = self.engine.tokenizer.decode(self._ids)
            if len(target) > len(fed) and target.startswith(fed):
                ids = self._encode(target[len(fed):])
        if ids is None:
            self._state, self._ids = self.engine.model.new_state(), []
            ids = self._encode(target)
            if ids is None:  # a tokenizer that takes only text: invalid UTF-8 as U+FFFD
                ids = self.engine.tokenizer.encode(target.decode("utf-8", "replace"))
        logits = self.engine._prefill(self._state, ids, stats)
        self._ids.extend(ids)
        return logits

    def _encode(self, data: bytes) -> list[int] | None:
        try:
            return self.engine.tokenizer.encode(data)
        except TokenizerError:  # a Hugging Face tokenizer given bytes that are not UTF-8
            return None

    # ---- state files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the state, its token ids and the conversation to a state file."""
        from .state_file import save_state
        if self._state is None:
            raise EngineError("the conversation is empty; nothing to save")
        extra = {"conversation": json.dumps({"conv_template": self.template.name, "system": self.system,
                                             "messages": self.messages,
                                             "raw_replies": {str(i): r for i, r in self._raw.items()}})}
        return save_state(path, self.engine.model, self._state, tokens=self._ids, extra=extra)

    def load(self, path: str | Path) -> None:
        """Continue the conversation saved in ``path`` (by :meth:`save`, for this model)."""
        from .state_file import StateFileError, load_state
        loaded = load_state(path, self.engine.model)
        try:
            conversation = json.loads(loaded.metadata["conversation"])
            messages = check_messages(conversation["messages"])
            raw = {int(i): str(r) for i, r in conversation.get("raw_replies", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, RWKVRelaxError):
            raise StateFileError(f"{path} holds no conversation (not saved by a chat session)") from None
        if loaded.tokens is None:
            raise StateFileError(f"{path} holds no token ids; a chat session needs them")
        if conversation.get("conv_template") != self.template.name:
            raise StateFileError(f"{path} is a '{conversation.get('conv_template')}' conversation; this "
                                 f"session uses '{self.template.name}'")
        self._state, self._ids = loaded.state, loaded.tokens
        self.messages, self.system, self._raw = messages, conversation.get("system"), raw
