"""A conversation whose RNN state is kept between turns."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import RWKVRelaxError
from .conversation import check_messages
from .generation import DEFAULT_MAX_TOKENS, GenerationStats, check_max_tokens, shown_text
from .model_dir import EngineError
from .tokenizers import TokenizerError


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

    def __init__(self, engine, system: str | None = None, *, seed: int | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, **sampling):
        engine.sampler(**sampling)  # unknown options fail here, not at the first turn
        check_max_tokens(max_tokens)
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
        check_max_tokens(max_tokens)
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

    def _feed(self, text: str, stats: GenerationStats):
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
