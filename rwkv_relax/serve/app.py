"""The HTTP side: FastAPI routes speaking the OpenAI API, streamed as server-sent events.

``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``,
``GET /metrics``. Requests are checked and tokenized here, in the event loop, then handed to the
:class:`~.scheduler.Scheduler` as a :class:`~.scheduler.Job` whose events come back through an
``asyncio.Queue``. Every error is ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import RWKVRelaxError
from ..runtime.conversation import check_messages
from ..runtime.generation import DEFAULT_MAX_TOKENS
from .metrics import CONTENT_TYPE
from .protocol import CHAT, COMPLETION, APIError, message_text, parse_body
from .scheduler import Job, Scheduler

SAMPLING = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty")


def create_app(scheduler: Scheduler, model_name: str, max_prompt_tokens: int) -> FastAPI:
    engine, metrics = scheduler.engine, scheduler.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        # uvicorn has drained the open requests by now (SIGTERM): end the loop
        await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)

    app = FastAPI(title="rwkv_relax", lifespan=lifespan)

    routes = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}

    def answer(endpoint: str, response: Response) -> Response:
        metrics.requests.labels(endpoint if endpoint in routes else "other", str(response.status_code)).inc()
        return response

    def error(endpoint: str, err: APIError) -> JSONResponse:
        return answer(endpoint, JSONResponse(err.body(), status_code=err.status, headers=err.headers))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown route, wrong method
        return error(request.url.path, APIError(str(exc.detail), status=exc.status_code,
                                                code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error(request.url.path, APIError(f"{type(exc).__name__}: {exc}", status=500, kind="server_error",
                                                code="internal_error"))

    @app.get("/health")
    async def health():
        ok = scheduler.alive
        return JSONResponse({"status": "ok" if ok else "engine loop not running"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "rwkv_relax"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    # ---- one generation request --------------------------------------------------------------
    async def generate(request: Request, chat: bool):
        endpoint = request.url.path
        try:
            body = parse_body(await request.body(), CHAT if chat else COMPLETION,
                              ("model", "messages" if chat else "prompt"))
            if body["model"] != model_name:
                raise APIError(f"unknown model '{body['model'][:80]}'; this server has '{model_name}'",
                               status=404, param="model", code="model_not_found")
            tokens, stop = prompt_tokens(body, chat)
            if len(tokens) > max_prompt_tokens:
                raise APIError(f"the prompt has {len(tokens)} tokens; this server takes at most "
                               f"{max_prompt_tokens} (--max-prompt-tokens)", param="messages" if chat else "prompt",
                               code="context_length_exceeded")
            try:
                sampler = engine.sampler(body.get("seed"), **{k: body[k] for k in SAMPLING if k in body})
            except RWKVRelaxError as err:
                raise APIError(str(err), code="invalid_value") from None
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            job = Job(tokens, sampler, body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS)),
                      emit=lambda event: _put(loop, queue, event), stop=stop, logprobs=logprob_count(body, chat),
                      strip_space=chat and not engine.conv_template.plain)
            scheduler.submit(job)
        except APIError as err:
            return error(endpoint, err)
        reply = Reply(chat, model_name)
        if body.get("stream"):
            return answer(endpoint, StreamingResponse(stream(job, queue, reply), media_type="text/event-stream"))
        event: dict = {}
        try:
            while "finish" not in (event := await queue.get()):
                if "error" in event:
                    return error(endpoint, event["error"])
                reply.add(event)
        finally:
            if "finish" not in event:  # cancelled (client gone) or failed: the loop drops it
                scheduler.cancel(job)
        return answer(endpoint, JSONResponse(reply.whole(event)))

    async def stream(job: Job, queue: asyncio.Queue, reply: "Reply"):
        done = False
        try:
            if reply.chat:
                yield sse(reply.chunk({"role": "assistant", "content": ""}))
            while True:
                event = await queue.get()
                if "error" in event:
                    yield sse(event["error"].body())
                    break
                if "finish" in event:
                    done = True
                    yield sse(reply.last(event))
                    break
                yield sse(reply.chunk(event))
            yield "data: [DONE]\n\n"
        finally:
            if not done:  # the client went away mid-stream: free the sequence at the next step
                scheduler.cancel(job)

    def prompt_tokens(body: dict, chat: bool) -> tuple[list[int], tuple[str, ...]]:
        stop = body.get("stop", [])
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if chat:
            try:
                messages = check_messages([message_text(m, i) for i, m in enumerate(body["messages"])])
            except RWKVRelaxError as err:
                raise APIError(str(err), param="messages") from None
            if messages[-1]["role"] != "user":
                raise APIError("the last message must be the user's", param="messages")
            text = engine.conv_template.render(messages)
            stop += engine.conv_template.stop_strings
        else:
            prompt = body["prompt"]
            if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
                prompt = prompt[0]
            if isinstance(prompt, list):
                bad = [t for t in prompt if not 0 <= t < engine.model.vocab_size]
                if bad:
                    raise APIError(f"token id {bad[0]} is outside the vocabulary [0, {engine.model.vocab_size})",
                                   param="prompt")
                return prompt, stop
            text = prompt
        if not text:
            raise APIError("the prompt is empty", param="messages" if chat else "prompt")
        try:
            return engine.tokenizer.encode(text), stop
        except RWKVRelaxError as err:
            raise APIError(str(err), param="messages" if chat else "prompt") from None

    return app


def logprob_count(body: dict, chat: bool) -> int | None:
    if chat:
        return body.get("top_logprobs", 0) if body.get("logprobs") else None
    return body.get("logprobs")


def _put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, event: dict) -> None:
    with contextlib.suppress(RuntimeError):  # the event loop closed (server shutting down)
        loop.call_soon_threadsafe(queue.put_nowait, event)


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class Reply:
    """The OpenAI response objects of one request: chunks while streaming, or one whole reply."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text: list[str] = []
        self.logprobs: list[dict] = []

    def _object(self, choice: dict, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice}]}

    def _logprobs(self, entries: list[dict]) -> dict | None:
        if not entries:
            return None
        if self.chat:
            return {"content": [{**_token(e["token"], e["logprob"]),
                                 "top_logprobs": [_token(t, lp) for t, lp in e["top"]]} for e in entries]}
        offsets, at = [], sum(len(t) for t in self.text)
        for e in entries:
            offsets.append(at)
            at += len(_text(e["token"]))
        return {"tokens": [_text(e["token"]) for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{_text(t): lp for t, lp in e["top"]} for e in entries], "text_offset": offsets}

    def add(self, event: dict) -> None:
        self.text.append(event["text"])
        if "logprobs" in event:
            self.logprobs.append(event["logprobs"])

    def chunk(self, event: dict) -> dict:
        """A streamed piece: ``event`` is a scheduler event, or the chat's opening delta."""
        if "text" not in event:
            return self._object({"delta": event, "logprobs": None, "finish_reason": None}, chunk=True)
        entries = [event["logprobs"]] if "logprobs" in event else []
        if self.chat:
            choice = {"delta": {"content": event["text"]}, "logprobs": self._logprobs(entries), "finish_reason": None}
        else:
            choice = {"text": event["text"], "logprobs": self._logprobs(entries), "finish_reason": None}
        self.add(event)
        return self._object(choice, chunk=True)

    def last(self, event: dict) -> dict:
        choice = {"delta": {}} if self.chat else {"text": ""}
        return {**self._object({**choice, "logprobs": None, "finish_reason": event["finish"]}, chunk=True),
                "usage": event["usage"]}

    def whole(self, event: dict) -> dict:
        text = "".join(self.text)
        if self.chat:
            choice = {"message": {"role": "assistant", "content": text}}
        else:
            choice = {"text": text}
        self.text = []  # text_offset counts from the start of the reply
        logprobs = self._logprobs(self.logprobs)
        return {**self._object({**choice, "logprobs": logprobs, "finish_reason": event["finish"]}, chunk=False),
                "usage": event["usage"]}


def _text(token: bytes) -> str:
    return token.decode("utf-8", "replace")


def _token(token: bytes, logprob: float) -> dict:
    return {"token": _text(token), "logprob": logprob, "bytes": list(token)}
