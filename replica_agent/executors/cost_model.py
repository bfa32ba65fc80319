"""Roofline step-time model of one model served on one GPU (calibrated; pure, no I/O).

A step is ``num_layers`` decoder layers plus the embedding, the LM head and a fixed host overhead:

- dense part of a layer (QKV / O / gate-up / down GEMMs): a smooth roofline
  ``(mem^p + compute^p)^(1/p)`` of streaming the weights and the GEMM activations at the achievable
  bandwidth versus ``2 · params · tokens`` FLOPs at the achievable compute, plus the small
  memory-bound kernels (norms, rotary, activation, residual add) and their launch floor;
- attention: decode sequences read their whole KV context (memory bound, plus a per-sequence cost);
  a prefill chunk of ``n`` tokens on ``c`` cached ones costs ``4 · n · (c + n/2) · heads · head_dim``
  FLOPs (causal), a per-query-token cost and one read of its cached context;
- LM head: one token of logits per sequence in the batch.

The constants live in :mod:`replica_agent.executors.gpu_profiles` and are fitted by
``benchmarks/calibration.py``. This is called once per simulated step, so it is plain float math.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from replica_agent.engine.step import BatchShape, ScheduledChunk, StepPlan
from replica_agent.executors.gpu_profiles import GpuProfile, ModelProfile

DEFAULT_ACTIVATION_RESERVE_BYTES = 2 * 1024**3  # activations, CUDA graphs, allocator slack (vLLM-like)
IDLE_POWER_FRACTION = 0.25  # board power at zero utilisation, as a fraction of TDP
_LOGIT_BYTES = 4  # logits are produced in fp32

_Tally = tuple[int, int, int, int, int, float]


class StepCostModel:
    """Step time, KV capacity, prefill rate and energy of ``model`` on ``gpu``."""

    def __init__(self, gpu: GpuProfile, model: ModelProfile) -> None:
        self.gpu = gpu
        self.model = model
        eff = gpu.efficiency
        d = model.dtype_bytes
        h, f = model.hidden_size, model.ffn_size
        q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
        layer_params = h * (q + 2 * kv) + q * h + 3 * h * f
        bandwidth = gpu.mem_bandwidth_bytes_s * eff.bandwidth_fraction
        flops = gpu.dense_fp16_flops * eff.compute_fraction
        attn_bandwidth = gpu.mem_bandwidth_bytes_s * eff.attn_bandwidth_fraction
        self._p = eff.roofline_exponent
        self._layers = model.num_layers
        self._weights_s = layer_params * d / bandwidth
        self._gemm_act_s = (4 * h + 2 * q + 2 * kv + 3 * f) * d / bandwidth
        self._gemm_flop_s = 2 * layer_params / flops
        self._elementwise_s = (10 * h + 2 * q + 2 * kv + 3 * f) * d / bandwidth
        self._layer_floor_s = eff.layer_floor_s
        self._embed_s = 2 * h * d / bandwidth
        self._head_weights_s = model.vocab_size * h * d / bandwidth
        self._head_act_s = (h * d + model.vocab_size * _LOGIT_BYTES) / bandwidth
        self._head_flop_s = 2 * model.vocab_size * h / flops
        self._step_overhead_s = eff.step_overhead_s
        self._kv_token_layer_bytes = 2 * kv * d
        self._attn_kv_s = self._kv_token_layer_bytes / attn_bandwidth
        self._attn_flop_s = 4 * q / (gpu.dense_fp16_flops * eff.attn_compute_fraction)
        self._decode_floor_s, self._prefill_floor_s = eff.attention_floors(model.attention_backend)
        self.request_overhead_s = eff.request_overhead_s
        self._attn_seq_s = eff.attn_decode_head_s * model.num_kv_heads
        self._attn_token_s = eff.attn_prefill_head_token_s * model.num_heads

    # --- step time -------------------------------------------------------------------------------

    def step_seconds(self, shape: BatchShape) -> float:
        """Wall time of one engine step computing ``shape`` (0.0 for an empty step)."""
        return self._step(*self._tally(shape))

    def plan_seconds(self, plan: StepPlan) -> float:
        """``step_seconds(plan.shape())`` without building the shape (the simulator's hot path)."""
        tally = self._tally_chunks(plan.chunks, (0, 0, 0, 0, 0, 0.0))
        if plan.padding:
            tally = self._tally(BatchShape(plan.padding), tally)
        return self._step(*tally)

    def decode_batch_seconds(
        self, batch: int, context_tokens: int, alongside: Sequence[ScheduledChunk] = ()
    ) -> float:
        """``plan_seconds`` of a step decoding ``batch`` sequences on ``context_tokens`` cached
        tokens in all (each sequence has at least one), followed by the chunks ``alongside``."""
        tally: _Tally = (batch, batch, batch, context_tokens, 0, 0.0)
        if alongside:
            tally = self._tally_chunks(alongside, tally)
        return self._step(*tally)

    def decode_step_seconds(self, batch: int, mean_context: float) -> float:
        """One step of ``batch`` decoding sequences with ``mean_context`` cached tokens each."""
        _check_non_negative(batch=batch, mean_context=mean_context)
        if batch == 0:
            return 0.0
        context = max(mean_context, 1.0)
        return self._step(batch, batch, batch, batch * context, 0, 0.0)

    def prefill_tokens_per_s(
        self, num_running_decodes: int, mean_context: float, chunk_tokens: int = 2048
    ) -> float:
        """Effective prefill rate of a new prompt: chunks of ``chunk_tokens`` (from an empty cache)
        batched with ``num_running_decodes`` decodes of ``mean_context`` tokens, as chunked prefill
        does; the decodes ride along and slow every chunk down."""
        _check_non_negative(num_running_decodes=num_running_decodes, mean_context=mean_context)
        if chunk_tokens <= 0:
            raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
        decodes = num_running_decodes
        context = max(mean_context, 1.0)
        prefill_s = self._prefill_attention(chunk_tokens, 0)
        step = self._step(chunk_tokens + decodes, 1 + decodes, decodes, decodes * context, 1, prefill_s)
        return chunk_tokens / step

    def _step(
        self, tokens: int, seqs: int, decodes: int, decode_context: float, prefills: int, prefill_s: float
    ) -> float:
        if tokens == 0:
            return 0.0
        attention = self._attention(decodes, decode_context, prefills, prefill_s)
        layer = self.dense_layer_seconds(tokens) + attention
        head = _roofline(self._head_weights_s + seqs * self._head_act_s, seqs * self._head_flop_s, self._p)
        return self._layers * layer + tokens * self._embed_s + head + self._step_overhead_s

    def _attention(self, decodes: int, decode_context: float, prefills: int, prefill_s: float) -> float:
        """One layer's attention: decodes read their KV context (plus the new token's); each kind of
        kernel the step launches (decode, prefill) pays its backend's floor once."""
        attention = prefill_s + (self._prefill_floor_s if prefills else 0.0)
        if decodes:
            attention += self._decode_floor_s + decodes * self._attn_seq_s
            attention += (decode_context + decodes) * self._attn_kv_s
        return attention

    def _tally_chunks(self, chunks: Sequence[ScheduledChunk], start: _Tally) -> _Tally:
        """``_tally`` of the chunks' shapes (each computes its tokens on ``start`` cached ones)."""
        return self._tally_pairs(((len(chunk.token_ids), chunk.start) for chunk in chunks), start)

    def _tally(self, shape: BatchShape, start: _Tally = (0, 0, 0, 0, 0, 0.0)) -> _Tally:
        """``shape`` as (tokens, sequences, decodes, decode context, prefills, prefill attention s),
        added to ``start`` (the tally of the seqs before ``shape``'s, in batch order)."""
        return self._tally_pairs(((seq.new_tokens, seq.context_tokens) for seq in shape.seqs), start)

    def _tally_pairs(self, pairs: Iterable[tuple[int, int]], start: _Tally) -> _Tally:
        """The tally of sequences given as (new tokens, cached context tokens), added to ``start``."""
        tokens, seqs, decodes, decode_context, prefills, prefill_s = start
        for new, context in pairs:
            if new < 0 or context < 0:
                raise ValueError(f"negative token counts: {new} new on {context} cached")
            if new == 0:
                continue
            tokens += new
            seqs += 1
            if new == 1 and context > 0:
                decodes += 1
                decode_context += context
            else:
                prefills += 1
                prefill_s += self._prefill_attention(new, context)
        return tokens, seqs, decodes, decode_context, prefills, prefill_s

    def _prefill_attention(self, new: int, context: int) -> float:
        flops_s = new * (context + new / 2) * self._attn_flop_s
        return new * self._attn_token_s + flops_s + context * self._attn_kv_s

    # --- parts, exposed for calibration ----------------------------------------------------------

    def dense_layer_seconds(self, num_tokens: int) -> float:
        """One layer without attention (the Vidur ``mlp.csv`` ops): GEMMs + small kernels."""
        if num_tokens <= 0:
            return 0.0
        gemm = _roofline(
            self._weights_s + num_tokens * self._gemm_act_s, num_tokens * self._gemm_flop_s, self._p
        )
        return gemm + self._layer_floor_s + num_tokens * self._elementwise_s

    def attention_layer_seconds(self, shape: BatchShape) -> float:
        """The attention kernels of one layer for ``shape`` (decode and prefill sequences)."""
        _, _, decodes, decode_context, prefills, prefill_s = self._tally(shape)
        return self._attention(decodes, decode_context, prefills, prefill_s)

    # --- memory ----------------------------------------------------------------------------------

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes of one token across all layers (K and V)."""
        return self.model.num_layers * self._kv_token_layer_bytes

    def kv_capacity_tokens(
        self,
        gpu_memory_utilization: float = 0.9,
        activation_reserve_bytes: int = DEFAULT_ACTIVATION_RESERVE_BYTES,
    ) -> int:
        """Tokens of KV cache that fit: (HBM · utilisation − weights − reserve) / bytes per token."""
        return (
            self._kv_budget_bytes(gpu_memory_utilization, activation_reserve_bytes)
            // self.kv_bytes_per_token()
        )

    def kv_capacity_blocks(
        self,
        block_size: int,
        gpu_memory_utilization: float = 0.9,
        activation_reserve_bytes: int = DEFAULT_ACTIVATION_RESERVE_BYTES,
    ) -> int:
        """Whole KV blocks of ``block_size`` tokens that fit (at least one, or ValueError)."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        budget = self._kv_budget_bytes(gpu_memory_utilization, activation_reserve_bytes)
        blocks = budget // (block_size * self.kv_bytes_per_token())
        if blocks == 0:
            raise ValueError(self._no_fit_message(f"not even one {block_size}-token KV block fits"))
        return blocks

    def _kv_budget_bytes(self, utilization: float, reserve: int) -> int:
        if not 0.0 < utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
        _check_non_negative(activation_reserve_bytes=reserve)
        budget = math.floor(self.gpu.hbm_bytes * utilization) - self.model.weight_bytes - reserve
        if budget < self.kv_bytes_per_token():
            raise ValueError(self._no_fit_message(f"no room for KV cache at utilisation {utilization}"))
        return budget

    def _no_fit_message(self, why: str) -> str:
        return (
            f"model {self.model.name} ({self.model.weight_bytes / 1e9:.1f} GB of weights) does not fit on "
            f"{self.gpu.name} ({self.gpu.hbm_bytes / 1e9:.1f} GB): {why}"
        )

    # --- energy ----------------------------------------------------------------------------------

    def power_watts(self, utilisation: float = 1.0) -> float:
        """Board power: idle floor plus the rest of the TDP in proportion to utilisation."""
        if not 0.0 <= utilisation <= 1.0:
            raise ValueError(f"utilisation must be in [0, 1], got {utilisation}")
        return self.gpu.power_watts * (IDLE_POWER_FRACTION + (1.0 - IDLE_POWER_FRACTION) * utilisation)

    def energy_joules(self, seconds: float, utilisation: float = 1.0) -> float:
        """Energy of ``seconds`` at ``utilisation`` (1.0 while stepping, 0.0 while idle)."""
        _check_non_negative(seconds=seconds)
        return seconds * self.power_watts(utilisation)


def _roofline(memory_s: float, compute_s: float, p: float) -> float:
    """Smooth maximum ``(m^p + c^p)^(1/p)``; ``p = inf`` is the sharp roofline ``max(m, c)``."""
    high, low = (memory_s, compute_s) if memory_s >= compute_s else (compute_s, memory_s)
    if high <= 0.0 or math.isinf(p):
        return high
    return float(high * (1.0 + (low / high) ** p) ** (1.0 / p))


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
