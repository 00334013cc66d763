"""The server's Prometheus metrics, in a registry of its own (not prometheus-client's global one,
so that one process can hold several servers, as the tests do)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported for app.py)
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rwkv_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("rwkv_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.prefill_tokens = Counter("rwkv_prefill_tokens", "tokens prefilled (prompt tokens less those "
                                      "the state cache held)", registry=r)
        self.generation_tokens = Counter("rwkv_generation_tokens", "tokens sampled", registry=r)
        self.decode_steps = Counter("rwkv_decode_steps", "decode forwards (one for all running sequences)",
                                    registry=r)
        self.queue_length = Gauge("rwkv_queue_length", "requests waiting for a sequence slot", registry=r)
        self.active_sequences = Gauge("rwkv_active_sequences", "requests prefilling or decoding", registry=r)
        self.runtime_sequences = Gauge("rwkv_runtime_sequences", "sequences held in the runtime RNNState "
                                       "(active ones, cached states, the initial state)", registry=r)
        self.prefill_tps = Gauge("rwkv_prefill_tokens_per_second", "prefill rate of the last prefill step",
                                 registry=r)
        self.decode_tps = Gauge("rwkv_decode_tokens_per_second", "aggregate decode rate of the last decode "
                                "step (tokens of all sequences / step time)", registry=r)
        self.cache_hits = Counter("rwkv_state_cache_hits", "requests that resumed a cached state", registry=r)
        self.cache_misses = Counter("rwkv_state_cache_misses", "requests that found no cached prefix", registry=r)
        self.cache_tokens_saved = Counter("rwkv_state_cache_tokens_saved", "prompt tokens not prefilled "
                                          "thanks to the state cache", registry=r)
        self.cache_entries = Gauge("rwkv_state_cache_entries", "states in the cache", registry=r)
        self.cache_bytes = Gauge("rwkv_state_cache_bytes", "bytes of states in the cache", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
