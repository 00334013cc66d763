r"""Conversation templates: how a list of ``{"role", "content"}`` messages becomes the text an RWKV
model continues, and which strings end the assistant's reply.

* ``rwkv-world`` (World models): ``[System: s\n\n]User: u\n\nAssistant: a\n\nUser: u\n\nAssistant:``,
  stop string ``\n\nUser:``;
* ``raven`` (RWKV-4 Raven): ``[s\n\n]Bob: u\n\nAlice: a\n\nBob: u\n\nAlice:``, stop string
  ``\n\nBob:``, with ChatRWKV's preamble sentence as the default system text;
* ``LM``: the contents joined as they are (plain continuation), no stop string.

The role turns follow ChatRWKV (``v2/chat.py``, ``API_DEMO_CHAT.py``): ``f"{user}: {msg}\n\n{bot}:"``,
the reply generated after ``"{bot}:"`` (so it starts with a space), and ``"\n\n"`` as the turn
separator. Since a blank line separates turns, ChatRWKV rewrites the user's text before it goes in
(``strip()``, CRLF -> LF, blank lines collapsed); so does :meth:`ConvTemplate.clean`. Assistant
text goes back in exactly as generated (``raw_replies``), so that a conversation's text keeps
matching the tokens already in the RNN state (see ``engine.ChatSession``).
"""
from __future__ import annotations

import dataclasses
import re

from ..errors import RWKVRelaxError

ROLES = ("system", "user", "assistant")


class ConversationError(RWKVRelaxError):
    """An unknown template name or a malformed message list."""


@dataclasses.dataclass(frozen=True)
class ConvTemplate:
    """One chat format. ``user`` / ``assistant`` are the role names written in the text; both
    empty means plain continuation (no roles, no separator, no stop strings)."""

    name: str
    user: str = ""
    assistant: str = ""
    system_format: str = "{system}"  # how a system message is written before the first turn
    default_system: str | None = None
    sep: str = "\n\n"  # after every turn
    stop_strings: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        return not self.user

    def clean(self, text: str) -> str:
        """User and system text as ChatRWKV feeds it: stripped, LF line ends, no blank lines
        (a blank line would read as the end of the turn)."""
        if self.plain:
            return text
        return re.sub(r"\n{2,}", "\n", text.replace("\r\n", "\n").strip())

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               raw_replies: dict[int, str] | None = None) -> str:
        """The text of ``messages``; with ``add_generation_prompt``, ending where the assistant's
        reply begins (``"...\n\nAssistant:"``).

        An assistant message is written ``"Assistant: " + content``, unless ``raw_replies`` holds
        its index: then the text that followed ``"Assistant:"`` when it was generated (usually
        ``" " + content``, but a reply need not start with a space)."""
        messages = check_messages(messages)
        raw_replies = raw_replies or {}
        if self.plain:
            return "".join(raw_replies.get(i, m["content"]) for i, m in enumerate(messages))
        parts = []
        system = self.default_system
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"]
        if system:
            parts.append(self.system_format.format(system=self.clean(system)) + self.sep)
        for i, m in enumerate(messages):
            if m["role"] == "user":
                parts.append(f"{self.user}: {self.clean(m['content'])}{self.sep}")
            elif m["role"] == "assistant":
                reply = raw_replies.get(i, " " + m["content"])
                parts.append(f"{self.assistant}:{reply}{self.sep}")
        if add_generation_prompt:
            parts.append(f"{self.assistant}:")
        return "".join(parts)

    def shown(self, raw: str) -> str:
        """A reply as shown: the space it starts with after ``"Assistant:"`` dropped."""
        return raw[1:] if not self.plain and raw.startswith(" ") else raw


def check_messages(messages) -> list[dict]:
    """``messages`` as a list of ``{"role", "content"}`` dicts; one-line errors otherwise."""
    if not isinstance(messages, (list, tuple)):
        raise ConversationError(f"messages must be a list of {{'role', 'content'}} dicts, "
                                f"not {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ConversationError(f"message {i} must be {{'role': one of {', '.join(ROLES)}, "
                                    f"'content': str}}, got {str(m)[:80]!r}")
        if m["role"] == "system" and i != 0:
            raise ConversationError(f"message {i}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    return out


# ChatRWKV v2/chat.py, English Raven prompt: the first sentence of its preamble
RAVEN_SYSTEM = ("The following is a coherent verbose detailed conversation between a girl named Alice "
                "and her friend Bob. Alice is very intelligent, creative and friendly. Alice is unlikely "
                "to disagree with Bob, and Alice doesn't like to ask Bob questions. Alice likes to tell "
                "Bob a lot about herself and her opinions. Alice usually gives Bob kind, helpful and "
                "informative advices.")

TEMPLATES: dict[str, ConvTemplate] = {t.name: t for t in (
    ConvTemplate("rwkv-world", user="User", assistant="Assistant", system_format="System: {system}",
                 stop_strings=("\n\nUser:",)),
    ConvTemplate("raven", user="Bob", assistant="Alice", default_system=RAVEN_SYSTEM,
                 stop_strings=("\n\nBob:",)),
    ConvTemplate("LM", sep=""),
)}


def get_template(name: str) -> ConvTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConversationError(f"unknown conv template '{name}'; valid: {', '.join(TEMPLATES)}") from None
