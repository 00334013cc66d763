"""The OpenAI request bodies this server takes, checked by hand into plain dicts, and the error JSON
it answers with (``{"error": {"message", "type", "param", "code"}}``).

Checked by hand rather than by pydantic models so that every bad body (wrong type, unknown field,
out of range) gets the OpenAI error shape and a message naming the field, not FastAPI's 422
validation list. Fields OpenAI has but that mean nothing here (``logit_bias``, ``tools``...) are
refused by name: silently ignoring them would give the caller something other than asked."""
from __future__ import annotations

import json

from ..cli import one_line
from ..config import is_finite_number, is_integer
from ..errors import RWKVRelaxError


class APIError(RWKVRelaxError):
    """A request answered with an OpenAI-style error JSON and ``status``."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(one_line(message))  # echoed user text must not break the line
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def _is_stop(x) -> bool:
    return isinstance(x, str) or (isinstance(x, list) and len(x) <= 4 and all(isinstance(s, str) for s in x))


def _is_token_list(x) -> bool:
    return isinstance(x, list) and bool(x) and all(is_integer(t) for t in x)


def _is_prompt(x) -> bool:
    # a string, a list of token ids, or a batch of one of either (n=1: one prompt per request)
    return isinstance(x, str) or _is_token_list(x) or (
        isinstance(x, list) and len(x) == 1 and (isinstance(x[0], str) or _is_token_list(x[0])))


def _nonneg_int(x) -> bool:
    return is_integer(x) and x >= 0


# field -> (check, what it must be); None is allowed for every optional field (OpenAI's "null")
COMMON = {
    "model": (lambda x: isinstance(x, str), "a string"),
    "max_tokens": (lambda x: is_integer(x) and x >= 1, "an integer >= 1"),
    "temperature": (lambda x: is_finite_number(x) and 0 <= x <= 2, "a number in [0, 2]"),
    "top_p": (lambda x: is_finite_number(x) and 0 < x <= 1, "a number in (0, 1]"),
    "top_k": (_nonneg_int, "an integer >= 0 (0 = off)"),
    "presence_penalty": (lambda x: is_finite_number(x) and -2 <= x <= 2, "a number in [-2, 2]"),
    "frequency_penalty": (lambda x: is_finite_number(x) and -2 <= x <= 2, "a number in [-2, 2]"),
    "stop": (_is_stop, "a string or a list of at most 4 strings"),
    "seed": (_nonneg_int, "an integer >= 0"),
    "stream": (lambda x: isinstance(x, bool), "a boolean"),
    "stream_options": (lambda x: isinstance(x, dict) and set(x) <= {"include_usage"}, '{"include_usage": bool}'),
    "n": (lambda x: x == 1 and is_integer(x), "1 (one choice per request)"),
    "user": (lambda x: isinstance(x, str), "a string"),
}
COMPLETION = {
    **COMMON,
    "prompt": (_is_prompt, "a string or a list of token ids"),
    "logprobs": (lambda x: is_integer(x) and 0 <= x <= 5, "an integer in [0, 5]"),
    "echo": (lambda x: x is False, "false (echo is not supported)"),
}
CHAT = {
    **COMMON,
    "messages": (lambda x: isinstance(x, list) and bool(x), "a non-empty list of messages"),
    "max_completion_tokens": COMMON["max_tokens"],
    "logprobs": (lambda x: isinstance(x, bool), "a boolean"),
    "top_logprobs": (lambda x: is_integer(x) and 0 <= x <= 20, "an integer in [0, 20]"),
}
UNSUPPORTED = ("logit_bias", "best_of", "suffix", "tools", "tool_choice", "functions", "function_call",
               "response_format", "parallel_tool_calls", "audio", "modalities", "prediction")


def parse_body(raw: bytes, fields: dict, required: tuple[str, ...]) -> dict:
    """The request body as a dict of the given fields (nulls dropped), or an APIError."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, not {type(body).__name__}")
    for name, value in body.items():
        if name in UNSUPPORTED:
            raise APIError(f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
        if name not in fields:
            raise APIError(f"unknown field '{name[:60]}'; valid: {', '.join(fields)}", param=name[:60],
                           code="unknown_parameter")
        check, want = fields[name]
        if value is not None and not check(value):
            raise APIError(f"'{name}' must be {want}, got {json.dumps(value)[:60]}", param=name,
                           code="invalid_value")
    out = {k: v for k, v in body.items() if v is not None}
    for name in required:
        if name not in out:
            raise APIError(f"'{name}' is required", param=name, code="missing_required_parameter")
    return out


def message_text(message, index: int) -> dict:
    """A chat message as ``{"role", "content": str}`` (content parts of type text are joined)."""
    if not isinstance(message, dict):
        raise APIError(f"messages[{index}] must be an object with role and content", param=f"messages[{index}]")
    content = message.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise APIError(f"messages[{index}].content: only text parts are supported",
                           param=f"messages[{index}].content")
        content = "".join(p["text"] for p in content)
    return {"role": message.get("role"), "content": content}
