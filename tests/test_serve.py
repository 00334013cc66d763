"""The OpenAI-compatible server (``python -m rwkv_relax.serve``), started for real on 127.0.0.1 and
driven by the official ``openai`` client and raw HTTP: completions and chat (streamed and not),
stop / max_tokens / seed / logprobs, batching that does not change results, the state cache, a
bounded 64-client load (RSS flat, sequences back to idle), disconnects, bad requests, a full
queue (429), SIGTERM draining."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import threading
import time

import pytest
from serve_harness import Server, assert_openai_error
from test_engine import world_model

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model(factory):
    return world_model(factory)


@pytest.fixture(scope="module")
def tokenizer(model):
    from rwkv_relax.runtime.model_dir import load_dir_tokenizer, read_chat_config
    return load_dir_tokenizer(model[0], read_chat_config(model[0]))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """Up to 16 running and 16 waiting requests, prompts up to 256 tokens, a 2 MiB state cache
    (~30 states of this model: the warm-up load fills it)."""
    s = Server(*model, tmp_path_factory.mktemp("serve") / "server.log", "--max-sequences", 16,
               "--max-queue", 16, "--max-prompt-tokens", 256, "--state-cache-mb", 2)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small(model, tmp_path_factory):
    """2 running, 2 waiting, no state cache."""
    s = Server(*model, tmp_path_factory.mktemp("serve") / "small.log", "--max-sequences", 2, "--max-queue", 2,
               "--state-cache-mb", 0)
    yield s
    s.stop()


def client(server: Server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


# ---- the openai client ------------------------------------------------------------------------
def test_completions_with_the_openai_client(server, tokenizer):
    c, prompt = client(server), "The capital of France is"
    assert [m.id for m in c.models.list().data] == [server.model]
    r = c.completions.create(model=server.model, prompt=prompt, max_tokens=12, seed=3)
    text = r.choices[0].text
    assert text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tokenizer.encode(prompt)), 12)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert c.completions.create(model=server.model, prompt=prompt, max_tokens=12, seed=3).choices[0].text == text
    assert c.completions.create(model=server.model, prompt=prompt, max_tokens=12, seed=4).choices[0].text != text
    chunks = list(c.completions.create(model=server.model, prompt=prompt, max_tokens=12, seed=3, stream=True))
    pieces = [ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].text]
    assert "".join(pieces) == text and len(pieces) > 1  # streamed token by token
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12
    # stop: the text up to the stop string, which is not included
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = c.completions.create(model=server.model, prompt=prompt, max_tokens=12, seed=3, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 12
    one = c.completions.create(model=server.model, prompt=prompt, max_tokens=1, seed=3)
    assert one.usage.completion_tokens == 1 and text.startswith(one.choices[0].text)
    # token ids as the prompt, and logprobs of the model's distribution
    lp = c.completions.create(model=server.model, prompt=tokenizer.encode(prompt), max_tokens=5, seed=3,
                              logprobs=2).choices[0]
    assert lp.text == text[:len(lp.text)] and len(lp.logprobs.tokens) == 5
    assert "".join(lp.logprobs.tokens) == lp.text and lp.logprobs.text_offset[0] == 0
    for value, top in zip(lp.logprobs.token_logprobs, lp.logprobs.top_logprobs):
        assert value <= 0 and len(top) == 2 and max(top.values()) >= value


def test_chat_with_the_openai_client(server, tokenizer):
    c = client(server)
    messages = [{"role": "user", "content": "Hi there!"}]
    r = c.chat.completions.create(model=server.model, messages=messages, max_tokens=10, seed=7)
    reply = r.choices[0].message.content
    assert reply and not reply.startswith(" ") and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(tokenizer.encode("User: Hi there!\n\nAssistant:"))
    chunks = list(c.chat.completions.create(model=server.model, messages=messages, max_tokens=10, seed=7,
                                            stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == reply
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    lp = c.chat.completions.create(model=server.model, messages=messages, max_tokens=4, seed=7, logprobs=True,
                                   top_logprobs=3).choices[0]
    assert reply.startswith(lp.message.content) and 1 <= len(lp.logprobs.content) <= 4
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp.logprobs.content)


# ---- batching ---------------------------------------------------------------------------------
def test_batch_kernels_compute_each_sequence_alone(model):
    """What the server's exactness rests on (serve/scheduler.py): through ``advance_batch`` (the
    batch_prefill / batch_decode kernels), a sequence's logits and state are bit-identical
    whatever it is batched with and however its tokens are split into calls. Token counts on
    both sides of 16 and batches up to 64: a kernel that switches form with the row count must
    keep each row's arithmetic."""
    import numpy as np

    from rwkv_relax.runtime.model import CompiledModel
    m = CompiledModel(model[1], model[0], max_sequences=80, max_history=1)
    toks = np.random.default_rng(0).integers(1, m.vocab_size, 40).tolist()

    def fresh(n):
        return [m.new_state() for _ in range(n)]
    for T in (1, 5, 15, 16, 40):
        alone = m.advance_batch(fresh(1), [toks[:T]])[0]
        assert (alone == m.advance_batch(fresh(2), [toks[:T], toks])[0]).all(), f"{T} tokens packed with 40"
    whole_state = fresh(1)
    whole = m.advance_batch(whole_state, [toks])[0]
    split = fresh(1)
    m.advance_batch(split, [toks[:13]])
    m.advance_batch(split, [toks[13:30]])
    for t in toks[30:]:
        last = m.advance_batch(split, [[t]])[0]
    assert (last == whole).all(), "40 tokens in one call against 13 + 17 + ten single steps"
    a, b = m.state_tensors(whole_state[0]), m.state_tensors(split[0])
    assert all((a[key] == b[key]).all() for key in a)
    one = m.advance_batch(fresh(1), [[7]])[0]
    for B in (8, 16, 64):
        assert (m.advance_batch(fresh(B), [[7]] * B)[0] == one).all(), f"decode row alone against {B} rows"


def test_batching_does_not_change_results(server):
    """Each request alone, then the 8 at once: the same texts (sampled, not greedy). The batch
    kernels compute every row alone, so this is exact, not a tolerance."""
    c = client(server)
    prompts = [f"Story number {i}: once upon a time" + " there was" * i for i in range(8)]

    def run(i):
        return c.completions.create(model=server.model, prompt=prompts[i], max_tokens=16, seed=100 + i,
                                    temperature=1.0, top_p=0.9).choices[0].text
    alone = [run(i) for i in range(8)]
    before = server.metrics()
    start = threading.Barrier(8)

    def together(i):
        start.wait()
        return run(i)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_texts = list(pool.map(together, range(8)))
    after = server.metrics()
    assert concurrent_texts == alone
    assert len(set(alone)) == 8
    # they really were batched: more than one token per decode forward on average
    steps = delta(after, before, "rwkv_decode_steps_total")
    assert delta(after, before, "rwkv_generation_tokens_total") / steps > 2, steps


# ---- the state cache --------------------------------------------------------------------------
def test_second_chat_turn_prefills_only_the_new_turn(server, small):
    c = client(server)
    first = [{"role": "user", "content": "Tell me about the sea."}]
    r1 = c.chat.completions.create(model=server.model, messages=first, max_tokens=8, seed=1)
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And the mountains?"}]
    before = server.metrics()
    r2 = c.chat.completions.create(model=server.model, messages=second, max_tokens=8, seed=2)
    after = server.metrics()
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # the whole first turn (prompt and the reply tokens fed back; the last sampled one never is)
    assert cached >= r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
    assert delta(after, before, "rwkv_state_cache_hits_total") == 1
    assert delta(after, before, "rwkv_state_cache_tokens_saved_total") == cached
    assert delta(after, before, "rwkv_prefill_tokens_total") == r2.usage.prompt_tokens - cached
    # the same text as a server without a cache, which prefills the whole conversation
    fresh = client(small).chat.completions.create(model=small.model, messages=second, max_tokens=8, seed=2)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert fresh.choices[0].message.content == r2.choices[0].message.content


# ---- load -------------------------------------------------------------------------------------
def _load(server: Server, clients: int, rounds: int) -> list[int]:
    """``clients`` threads, each sending ``rounds`` short requests (completions and chat, streamed
    or not) at once, a 429 retried after a pause (10 tries at most); returns every answer's
    status, each a 200 or an OpenAI-style 429 with Retry-After."""
    start = threading.Barrier(clients)

    def one_client(i):
        start.wait()
        statuses = []
        for k in range(rounds):
            chat, stream = (i + k) % 2 == 0, (i + k) % 3 == 0
            body = {"model": server.model, "max_tokens": 8, "seed": i, "stream": stream}
            if chat:
                body["messages"] = [{"role": "user", "content": f"client {i} round {k}"}]
            else:
                body["prompt"] = f"client {i} round {k}:"
            for _ in range(10):
                status, headers, raw = server.request("POST", "/v1/chat/completions" if chat else "/v1/completions",
                                                      json.dumps(body).encode())
                statuses.append(status)
                if status != 429:
                    break
                assert headers.get("retry-after") == "1"
                assert_openai_error(status, json.loads(raw), statuses=(429,))
                time.sleep(0.2)
            assert status in (200, 429), raw[:300]
            if status == 200:
                assert raw.rstrip().endswith(b"data: [DONE]") if stream else "usage" in json.loads(raw)
        return statuses
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [s for out in pool.map(one_client, range(clients)) for s in out]


def test_64_concurrent_clients_keep_memory_flat(server):
    _load(server, 64, 1)  # warm-up: allocator pools, the state cache filled
    server.wait_idle()
    warm = server.rss_kib()
    t0 = time.monotonic()
    statuses = _load(server, 64, 3)
    idle = server.wait_idle()
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 64, statuses  # most complete, retried
    assert time.monotonic() - t0 < 120
    assert idle["rwkv_active_sequences"] == 0 and idle["rwkv_runtime_sequences"] == 0
    assert server.rss_kib() <= warm * 1.10, (warm, server.rss_kib())


# ---- faults -----------------------------------------------------------------------------------
def _open_stream(server: Server, path: str, body: dict) -> tuple[http.client.HTTPConnection, object]:
    """A streaming request whose first ``data:`` line has arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    while not resp.fp.readline().startswith(b"data:"):
        pass
    return conn, resp


def _rest(resp) -> list[dict]:
    """The remaining events of a stream opened by _open_stream (read raw: chunk framing lines
    are skipped), up to ``data: [DONE]``."""
    events = []
    while (line := resp.fp.readline()) and not line.startswith(b"data: [DONE]"):
        if line.startswith(b"data: {"):
            events.append(json.loads(line[6:]))
    assert line.startswith(b"data: [DONE]"), "the stream was cut"
    return events


def _hang_up(conn, resp) -> None:
    resp.close()
    conn.close()


def _wait_active(server: Server, n: int, timeout: float = 60) -> None:
    """Until the loop has admitted ``n`` requests: a stream's first event comes before admission,
    and a loop busy with a long step (a loaded machine) admits late, so opening more at once
    could meet a full queue."""
    deadline = time.monotonic() + timeout
    while server.metrics()["rwkv_active_sequences"] < n:
        assert time.monotonic() < deadline, f"fewer than {n} requests admitted in {timeout} s"
        time.sleep(0.02)


def test_clients_that_disconnect_free_their_sequences(server):
    idle = server.wait_idle()["rwkv_runtime_sequences"]
    before = server.metrics()
    # chat streams send their first event at once: 16 are admitted, 4 hang up while waiting
    chat = [{"model": server.model, "messages": [{"role": "user", "content": f"Go on {i}"}],
             "max_tokens": 2000, "seed": i} for i in range(20)]
    streams = [_open_stream(server, "/v1/chat/completions", body) for body in chat[:16]]
    _wait_active(server, 16)
    streams += [_open_stream(server, "/v1/chat/completions", body) for body in chat[16:]]
    for conn, resp in streams:
        _hang_up(conn, resp)
    after = server.wait_idle()
    assert after["rwkv_active_sequences"] == 0 and after["rwkv_runtime_sequences"] == idle
    assert delta(after, before, "rwkv_generation_tokens_total") < 20 * 2000 / 4  # cut short, not run out
    assert client(server).completions.create(model=server.model, prompt="Still there?", max_tokens=3).usage


M = "<the served model>"
BAD = [
    ("/v1/completions", b'{"model": ', 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", {"prompt": "hi"}, 400, "'model' is required"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "unknown model"),
    ("/v1/completions", {"model": M, "prompt": "hi", "max_tokens": "ten"}, 400, "'max_tokens' must be"),
    ("/v1/completions", {"model": M, "prompt": "hi", "max_tokens": -5}, 400, "'max_tokens' must be"),
    ("/v1/completions", {"model": M, "prompt": "word " * 400}, 400, "at most 256"),
    ("/v1/completions", {"model": M, "prompt": "hi", "colour": "red"}, 400, "unknown field 'colour'"),
    ("/v1/completions", {"model": M, "prompt": "hi", "logit_bias": {}}, 400, "not supported"),
    ("/v1/completions", {"model": M, "prompt": "hi", "n": 2}, 400, "'n' must be 1"),
    ("/v1/completions", {"model": M, "prompt": "hi", "temperature": -1}, 400, "'temperature' must be"),
    ("/v1/completions", {"model": M, "prompt": "hi", "seed": -1}, 400, "'seed' must be"),
    ("/v1/completions", {"model": M, "prompt": "hi", "top_p": float("nan")}, 400, "'top_p' must be"),
    ("/v1/completions", {"model": M, "prompt": [70000]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"model": M, "prompt": ""}, 400, "empty"),
    ("/v1/chat/completions", {"model": M, "messages": "hi"}, 400, "'messages' must be"),
    ("/v1/chat/completions", {"model": M, "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"model": M, "messages": [{"role": "assistant", "content": "x"}]}, 400, "last message"),
    ("/v1/chat/completions", {"model": M, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
]


@pytest.mark.parametrize("path, body, status, match", BAD, ids=[f"{p[4:]}-{m}" for p, _, _, m in BAD])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, path, body, status, match):
    if isinstance(body, dict) and body.get("model") == M:
        body = {**body, "model": server.model}
    got, _, answer = server.post(path, body)
    error = assert_openai_error(got, answer, statuses=(status,))
    assert match in error["message"], error
    ok, _, good = server.post("/v1/completions", {"model": server.model, "prompt": "fine", "max_tokens": 2})
    assert ok == 200 and good["usage"]["completion_tokens"] >= 1


def test_unknown_routes_and_methods_are_openai_errors(server):
    for method, path, status in (("GET", "/v1/completions", 405), ("GET", "/v2/nothing", 404)):
        got, _, raw = server.request(method, path)
        assert_openai_error(got, json.loads(raw), statuses=(status,))
    assert server.alive()


def test_full_queue_is_a_429_and_sigterm_drains(small):
    """2 running + 2 waiting: the 5th request is a 429 with Retry-After. SIGTERM then lets the
    running streams finish whole and the process exits 0. (Runs last: it stops ``small``.)"""
    chat = {"model": small.model, "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 60}
    running = [_open_stream(small, "/v1/chat/completions", {**chat, "seed": i}) for i in range(2)]
    _wait_active(small, 2)
    waiting = [_open_stream(small, "/v1/chat/completions", {**chat, "seed": i}) for i in range(2, 4)]
    status, headers, body = small.post("/v1/chat/completions", chat)
    assert_openai_error(status, body, statuses=(429,))
    assert headers["retry-after"] == "1"
    for conn, resp in waiting:
        _hang_up(conn, resp)
    small.proc.send_signal(15)  # SIGTERM
    for conn, resp in running:
        events = _rest(resp)
        assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop")
        assert events[-1]["usage"]["completion_tokens"] >= 1
        conn.close()
    assert small.proc.wait(30) == 0
