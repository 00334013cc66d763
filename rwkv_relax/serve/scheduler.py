"""The engine loop: one thread owns the model and its runtime RNNState and runs steps
(continuous batching)::

    step: drop cancelled requests
          decode: sample one token for every decoding request, then feed all of them in ONE forward
          admit:  waiting requests take free sequence slots (starting from a cached state when
                  their tokens extend one, see state_cache.py)
          prefill: the admitted requests' prompts, at most ``prefill_chunk`` tokens per step in ONE
                  packed forward, so a long prompt delays the others' next token by one chunk only

Every forward goes through ``CompiledModel.advance_batch`` (the batch kernels, which compute each
row alone): a request's logits, hence its text with a fixed seed, do not depend on the requests
batched with it nor on how its prompt was split into chunks or resumed from the cache.

HTTP handlers talk to the loop through :meth:`Scheduler.submit` (a bounded queue: a full one is a
429) and the ``emit`` callback of their :class:`Job`, which the loop calls from its thread.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import weakref
from typing import Callable

import numpy as np

from ..runtime.generation import ExactStream, shown_text
from ..runtime.sampler import Sampler, StopStrings
from ..runtime.tokenizers import StreamDecoder
from .metrics import Metrics
from .protocol import APIError
from .state_cache import StateCache

log = logging.getLogger("rwkv_relax")


@dataclasses.dataclass(eq=False)
class Job:
    """One request: its prompt tokens, sampling, limits, and where its events go.

    Events (dicts, passed to ``emit`` from the engine thread): ``{"text", "logprobs"}`` for each
    sampled token (text may be empty while a possible stop string is held back), then
    ``{"finish": "stop" | "length", "usage"}``, or ``{"error": APIError}``."""

    tokens: list[int]
    sampler: Sampler
    max_tokens: int
    emit: Callable[[dict], None]
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; k: the sampled token's logprob and the k most likely
    strip_space: bool = False  # chat: the reply's first space (after "Assistant:") is not shown
    cancelled: bool = False  # set by the HTTP side (client gone); the loop drops the job
    # the loop's own
    state: object = None
    history: list[int] = dataclasses.field(default_factory=list)  # tokens the state has consumed
    prefilled: int = 0  # prompt tokens in the state
    cached: int = 0  # of which came from the state cache
    # its logits: (the last forward's, as the library returned them; its row; that forward's rows)
    source: tuple | None = None
    token_logprobs: dict | None = None  # the drawn token's, read before the kernel consumes the row
    generated: int = 0
    shown: bool = False  # some reply text went out (strip_space applies to the first)
    stream: object = None  # token ids -> text pieces
    stops: StopStrings | None = None


class Scheduler:
    """``engine``: a runtime :class:`~rwkv_relax.runtime.engine.Engine` whose model has room for
    ``max_sequences`` running requests (see :func:`runtime_slots`)."""

    def __init__(self, engine, metrics: Metrics, *, max_sequences: int, max_queue: int,
                 prefill_chunk: int, cache: StateCache):
        self.engine, self.model, self.metrics, self.cache = engine, engine.model, metrics, cache
        self.max_sequences, self.max_queue, self.prefill_chunk = max_sequences, max_queue, prefill_chunk
        self.waiting: collections.deque[Job] = collections.deque()  # guarded by _wake
        self.prefilling: list[Job] = []
        self.decoding: list[Job] = []
        self._states: weakref.WeakSet = weakref.WeakSet()  # every State this loop made: runtime sequences
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="rwkv-engine-loop", daemon=True)
        engine.sampler()  # the vocabulary scan (ids that cannot be decoded) once, now, not in a request

    # ---- the HTTP side ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping:
                raise APIError("the server is shutting down", status=503, kind="server_error",
                               code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise APIError(f"the server is busy ({self.max_sequences} sequences running, {len(self.waiting)} "
                               "waiting); retry later", status=429, kind="rate_limit_error",
                               code="rate_limit_exceeded", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.metrics.queue_length.set(len(self.waiting))
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: a waiting job leaves the queue now, a running one at the next step."""
        job.cancelled = True
        with self._wake:
            if job in self.waiting:
                self.waiting.remove(job)
                self.metrics.queue_length.set(len(self.waiting))
            self._wake.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every admitted and waiting request, then end the loop."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self.waiting or self.prefilling or self.decoding or self._stopping):
                    self._wake.wait()
                if self._stopping and not (self.waiting or self.prefilling or self.decoding):
                    return
            try:
                self._step()
            except Exception as err:  # a bug below: fail the requests in flight, keep serving
                log.exception("engine step failed")
                for job in self.prefilling + self.decoding:
                    self._fail(job, err)

    def _step(self) -> None:
        for job in [j for j in self.prefilling + self.decoding if j.cancelled]:
            self._drop(job)
        self._decode()
        self._admit()
        self._prefill()
        m = self.metrics
        m.active_sequences.set(len(self.prefilling) + len(self.decoding))
        m.runtime_sequences.set(len(self._states))
        m.cache_entries.set(len(self.cache))
        m.cache_bytes.set(self.cache.bytes)

    def _new_state(self, cached: dict | None, length: int):
        state = self.model.new_state() if cached is None else self.model.load_state(cached, length)
        self._states.add(state)
        return state

    def _admit(self) -> None:
        while len(self.prefilling) + len(self.decoding) < self.max_sequences:
            with self._wake:
                if not self.waiting:
                    break
                job = self.waiting.popleft()
                self.metrics.queue_length.set(len(self.waiting))
            if job.cancelled:
                continue
            n, cached = self.cache.lookup(job.tokens)
            job.state, job.prefilled, job.cached = self._new_state(cached, n), n, n
            job.history = list(job.tokens[:n])
            self.metrics.prompt_tokens.inc(len(job.tokens))
            if cached is None:
                self.metrics.cache_misses.inc()
            else:
                self.metrics.cache_hits.inc()
                self.metrics.cache_tokens_saved.inc(n)
            job.stream = self.engine.tokenizer.stream()
            if isinstance(job.stream, StreamDecoder):  # byte-level: keep the exact bytes
                job.stream = ExactStream(self.engine.tokenizer.id_to_token)
            job.stops = StopStrings(job.stop)
            self.prefilling.append(job)

    def _prefill(self) -> None:
        budget, batch = self.prefill_chunk, []
        for job in self.prefilling:
            if budget <= 0:
                break
            piece = job.tokens[job.prefilled:job.prefilled + budget]
            batch.append((job, piece))
            budget -= len(piece)
        logits = self._forward(batch, self.metrics.prefill_tps)
        if logits is None:
            return
        self.metrics.prefill_tokens.inc(sum(len(piece) for _, piece in batch))
        for row, (job, piece) in enumerate(batch):
            job.prefilled += len(piece)
            if job.prefilled == len(job.tokens):
                job.source = (logits, row, len(batch))
                self.prefilling.remove(job)
                self.decoding.append(job)

    def _decode(self) -> None:
        batch = []
        jobs = list(self.decoding)
        for job, token in zip(jobs, self._draw(jobs)):
            try:
                if isinstance(token, Exception):  # e.g. logits that leave nothing to sample
                    raise token
                token = self._judge(job, token)
            except Exception as err:  # this request only
                self._fail(job, err)
                continue
            if token is not None:
                batch.append((job, [token]))
        logits = self._forward(batch, self.metrics.decode_tps)
        if logits is None:
            return
        self.metrics.decode_steps.inc()
        for row, (job, _) in enumerate(batch):
            job.source = (logits, row, len(batch))

    def _forward(self, batch: list[tuple[Job, list[int]]], rate):
        """Feed each job its piece, all in one forward; sets the ``rate`` gauge (tokens/s). Returns
        the logits as the library returned them; None when there was nothing to feed, or the
        forward failed (its requests are failed)."""
        if not batch:
            return None
        t0 = time.perf_counter()
        try:
            states = [job.state for job, _ in batch]
            raw = self.model.advance_batch_raw(states, [piece for _, piece in batch])
        except Exception as err:  # the states of this batch are in doubt: fail its requests
            log.exception("forward failed")
            for job, _ in batch:
                self._fail(job, err)
            return None
        rate.set(sum(len(piece) for _, piece in batch) / max(time.perf_counter() - t0, 1e-9))
        for job, piece in batch:
            job.history += piece
        return raw

    # ---- one request's token ---------------------------------------------------------------------
    def _draw(self, jobs: list[Job]) -> list:
        """Each job's next token (or the error drawing it raised), from its row of logits: the rows
        of one forward in one call of the library's sampling kernel (``sample_rows``), which
        consumes them. A job that asked for logprobs reads its row first, in numpy, where it is
        also drawn (the forward's rows reach numpy once, however many such jobs share it)."""
        out, forwards = {}, {}
        for job in jobs:
            raw, row, rows = job.source
            forwards.setdefault(id(raw), (raw, rows, []))[2].append((row, job))
        for raw, rows, members in forwards.values():
            samplers, host = [None] * rows, None
            for row, job in members:
                if job.logprobs is None:
                    samplers[row] = job.sampler
                    continue
                try:
                    host = self.model.rows(raw, rows) if host is None else host
                    out[id(job)] = token = job.sampler.sample(host[row])
                    job.token_logprobs = self._logprobs(host[row], token, job.logprobs)
                except Exception as err:
                    out[id(job)] = err
            if any(s is not None for s in samplers):
                drawn = self.model.sample_rows(raw, samplers)
                for row, job in members:
                    if samplers[row] is not None:
                        out[id(job)] = drawn[row]
        return [out[id(job)] for job in jobs]

    def _judge(self, job: Job, token: int) -> int | None:
        """Stream and judge a drawn token; returns it when it is to be fed, None when the request
        ended on it (that token is never fed: nothing needs its logits)."""
        if job.sampler.is_stop_token(token):
            return self._finish(job, "stop")
        job.generated += 1
        self.metrics.generation_tokens.inc()
        job.sampler.accept(token)
        self._send(job, job.stops.put(job.stream.put(token)), token)
        if job.stops.stopped:
            return self._finish(job, "stop")
        if job.generated == job.max_tokens:
            return self._finish(job, "length")
        return token

    def _send(self, job: Job, raw: str, token: int | None = None) -> None:
        if job.strip_space and not job.shown and raw:
            raw, job.shown = raw[1:] if raw.startswith(" ") else raw, True
        event = {"text": shown_text(raw)}
        if token is not None and job.logprobs is not None:
            event["logprobs"] = job.token_logprobs
        if event["text"] or "logprobs" in event:
            job.emit(event)

    def _logprobs(self, logits: np.ndarray, token: int, top: int) -> dict:
        """The model's log-probabilities (raw logits, before penalties and temperature)."""
        z = logits.astype(np.float64)
        z -= z.max()
        z -= np.log(np.exp(z).sum())
        best = np.argpartition(-z, top)[:top] if top else np.array([], dtype=np.int64)
        best = best[np.argsort(-z[best], kind="stable")]
        word = self.engine.tokenizer.id_to_token
        return {"token": word(token), "logprob": float(z[token]),
                "top": [(word(int(t)), float(z[t])) for t in best]}

    def _finish(self, job: Job, reason: str) -> None:
        self._send(job, job.stops.put(job.stream.flush()) + job.stops.flush())
        job.emit({"finish": reason, "usage": usage(job)})
        self.decoding.remove(job)
        if self.cache.capacity:  # the state of exactly job.history: a later turn resumes it
            self.cache.put(job.history, self.model.state_tensors(job.state))
        job.state = None  # releases its runtime sequence
        return None

    def _fail(self, job: Job, err: Exception) -> None:
        if not isinstance(err, APIError):
            err = APIError(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                           status=500, kind="server_error", code="internal_error")
        job.emit({"error": err})
        self._drop(job)

    def _drop(self, job: Job) -> None:
        for queue in (self.prefilling, self.decoding):
            if job in queue:
                queue.remove(job)
        job.state = None  # releases its runtime sequence


def usage(job: Job) -> dict:
    return {"prompt_tokens": len(job.tokens), "completion_tokens": job.generated,
            "total_tokens": len(job.tokens) + job.generated,
            "prompt_tokens_details": {"cached_tokens": job.cached}}


def runtime_slots(max_sequences: int) -> int:
    """Runtime sequences the loop may hold at once: one per running request, plus the model's
    initial state (a state tuning's)."""
    return max_sequences + 1
