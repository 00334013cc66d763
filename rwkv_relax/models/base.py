"""What every RWKV version shares above its layers: the block (``x += att(ln1 x)``,
``x += ffn(ln2 x)``) with its carried state, and the language model shell with the MLC-style
exported interface.

A version supplies its time mix and channel mix classes. Each one's ``forward(xx, sx, st, ctx)``
takes the LayerNorm output ``xx`` (T, C), its token shift ``sx`` (T, C), the layer's
:class:`~.state.LayerState` ``st`` (to read and stage the state entries it declares in
``state_entries(cfg)``) and ``ctx``, a dict that lives for one forward pass: what layer 0 writes
there, later layers read (RWKV-7's ``v_first``).
"""
from __future__ import annotations

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ..config import RWKVConfig
from .layers import Embedding, LayerNorm, Linear, Segments, last_tokens
from .state import LayerState, RNNState, StateEntry, StateSpec


def layer_config(cfg: RWKVConfig, layer: int) -> RWKVConfig:
    """The config a layer is built with: ``cfg`` itself, or an fp32 copy for the layers listed in
    ``cfg.fp32_layers`` (fp16 overflows first in the early layers of small models)."""
    return cfg.replace(dtype="float32") if layer in cfg.fp32_layers else cfg


class Block(nn.Module):
    """One RWKV layer with its carried state."""

    def __init__(self, layer: int, cfg: RWKVConfig, att: nn.Module, ffn: nn.Module, io_dtype: str):
        # cfg.dtype: this layer's compute dtype; io_dtype: the residual stream's between layers.
        # They differ for layers kept in fp32 inside an fp16 model (``fp32_layers``).
        self.layer, self.dtype, self.io_dtype = layer, cfg.dtype, io_dtype
        self.ln1 = LayerNorm(cfg.n_embd, cfg.dtype, cfg.layer_norm_eps)
        self.ln2 = LayerNorm(cfg.n_embd, cfg.dtype, cfg.layer_norm_eps)
        self.att = att
        self.ffn = ffn

    def forward(self, x: Tensor, seg: Segments, state: RNNState, spec: StateSpec, ctx: dict):
        st = LayerState(state, self.layer, spec, seg, self.dtype)
        if self.dtype != self.io_dtype:
            x = x.astype(self.dtype)
        xx = self.ln1(x)
        x = x + self.att(xx, st.shift("att_x", xx), st, ctx)
        xx = self.ln2(x)
        x = x + self.ffn(xx, st.shift("ffn_x", xx))
        return (x if self.dtype == self.io_dtype else x.astype(self.io_dtype)), st.commit()


class RNNLanguageModel(nn.Module):
    """The exported interface shared by every RWKV version (MLC-LLM's RNN model functions).

    Subclasses name their parts: ``TimeMix`` and ``ChannelMix`` classes taking the layer's config
    (``TimeMix.state_entries(cfg)`` lists what the time mix carries besides the token shift).
    """

    TimeMix: type
    ChannelMix: type

    def __init__(self, cfg: RWKVConfig):
        self.cfg = cfg
        blocks = []
        for i in range(cfg.n_layer):
            lc = layer_config(cfg, i)
            blocks.append(Block(i, lc, self.TimeMix(lc, i), self.ChannelMix(lc), io_dtype=cfg.dtype))
        self.dtype, self.n_layer, self.n_embd, self.vocab_size = (
            cfg.dtype, cfg.n_layer, cfg.n_embd, cfg.vocab_size)
        self.embeddings = Embedding(cfg.vocab_size, cfg.n_embd, cfg.dtype)
        self.blocks = nn.ModuleList(blocks)
        self.ln_out = LayerNorm(cfg.n_embd, cfg.dtype, cfg.layer_norm_eps)
        self.head = Linear(cfg.n_embd, cfg.vocab_size, cfg.dtype, out_dtype="float32", role="head")

    def state_spec(self) -> StateSpec:
        """Per layer: the time mix's token-shift row, its own entries, the channel mix's row.
        Token-shift rows are stored in the model dtype."""
        c = self.cfg
        return StateSpec([StateEntry("att_x", (c.n_embd,), c.dtype), *self.TimeMix.state_entries(c),
                          StateEntry("ffn_x", (c.n_embd,), c.dtype)])

    def forward_packed(self, x: Tensor, seg: Segments, state: RNNState):
        """x: (T, C) packed tokens -> (hidden (B, C) at each sequence's last token, state)."""
        spec, ctx = self.state_spec(), {}
        for i, block in enumerate(self.blocks):
            x, state = block(x, seg, state, spec, ctx)
            # ChatRWKV's RESCALE_LAYER: halve the residual to stay in fp16 range (weights were
            # pre-divided at load to match)
            if self.cfg.rescale_every and (i + 1) % self.cfg.rescale_every == 0:
                x = x / 2.0
        return last_tokens(x, seg), state

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.head(self.ln_out(hidden))  # (B, V) fp32

    # ---- exported functions -------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids: (T,) int32 -> (T, C)."""
        return self.embeddings(input_ids)

    def prefill(self, input_embed: Tensor, state: RNNState):
        """One sequence: (1, T, C) -> logits of its last token (1, 1, V)."""
        x = op.reshape(input_embed, [input_embed.shape[1], self.n_embd])  # (T, C)
        hidden, state = self.forward_packed(x, Segments(), state)
        return op.reshape(self._logits(hidden), [1, 1, self.vocab_size]), state

    def decode(self, input_embed: Tensor, state: RNNState):
        """One sequence, one token: (1, 1, C) -> (1, 1, V)."""
        return self.prefill(input_embed, state)

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, state: RNNState):
        """B sequences packed back to back: (1, T, C), last-token indices (B,) -> (1, B, V)."""
        x = op.reshape(input_embeds, [input_embeds.shape[1], self.n_embd])  # (T, C)
        hidden, state = self.forward_packed(x, Segments(logit_positions), state)
        return op.reshape(self._logits(hidden), [1, logit_positions.shape[0], self.vocab_size]), state

    def batch_decode(self, input_embeds: Tensor, state: RNNState):
        """B sequences, one token each: (B, 1, C) -> (B, 1, V)."""
        batch = input_embeds.shape[0]
        x = op.reshape(input_embeds, [batch, self.n_embd])  # (B, C)
        hidden, state = self.forward_packed(x, Segments.one_token_each(batch), state)
        return op.reshape(self._logits(hidden), [batch, 1, self.vocab_size]), state

    def create_rnn_state(self, max_batch_size: tirx.Var, max_history: tirx.Var) -> RNNState:
        return RNNState.create(max_batch_size, max_history, self.n_layer,
                               self.state_spec().init_values())

    def get_default_spec(self) -> dict:
        emb = self.n_embd
        obj = nn.spec.Object(object_type=RNNState)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", emb], self.dtype),
                        "state": obj, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, emb], self.dtype),
                       "state": obj, "$": packed},
            "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", emb], self.dtype),
                              "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                              "state": obj, "$": packed},
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, emb], self.dtype),
                             "state": obj, "$": packed},
            "create_rnn_state": {"max_batch_size": int, "max_history": int,
                                 "$": {"param_mode": "none", "effect_mode": "none"}},
        }
