"""GPU and model profiles for the calibrated roofline cost model (pure data, no I/O).

Spec numbers (memory, bandwidth, dense FP16/BF16 tensor FLOPS, board TDP) come from the NVIDIA
datasheets listed in ``shared/data/gpu_profiles/README.md`` section 3. ``hbm_bytes`` is the total
memory nvidia-smi reports for the board (MiB, ECC on), which is what an engine can size against.

The efficiency parameters are fitted by ``python benchmarks/calibration.py`` (results in
``benchmarks/results/calibration.md``) against the Vidur per-operator timings and the vLLM end-to-end
numbers in ``shared/data/gpu_profiles/``; that script refits them from the CSVs and prints the values
hard-coded below. Where they come from, per GPU:

- ``a100-80gb``, ``h100-80gb``, ``a40-48gb`` (``calibrated=True``): fitted to their own measured
  dense-layer timings; attention is measured on the A100 only, so the H100 and A40 take the A100's
  attention fractions, with its per-unit costs scaled by bandwidth.
- ``a100-40gb``: the same A100 silicon and HBM2 memory system as the 80 GB board, so the a100-80gb
  fit applied to its own (lower, 1,555 GB/s) bandwidth. One vLLM TPOT point checks it; not fitted.
- ``v100-32gb`` and ``l4-24gb``: spec-sheet extrapolations, no measured data. The V100 borrows the
  A100 fractions (HBM2 too; cuBLAS reaches a similar share of its lower FP16 tensor peak), the L4
  the A40's (GDDR6 too, and its Ada die succeeds the A40's Ampere GA102).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

_MIB = 1024 * 1024


AttentionBackend = Literal["flash-attn", "flashinfer"]


@dataclass(frozen=True, slots=True)
class GpuEfficiency:
    """Fitted fractions of the spec sheet a real serving stack achieves, and fixed costs.

    Dense part (GEMMs + small per-layer kernels): ``bandwidth_fraction`` and ``compute_fraction`` of
    peak, combined by a smooth roofline ``(mem^p + compute^p)^(1/p)`` with ``p = roofline_exponent``
    (p -> inf is the sharp ``max``; the fitted ~1.6 reflects the slow knee of real GEMMs), plus
    ``layer_floor_s`` per layer for launch gaps and the small kernels (norms, rotary, activation,
    residual add). Attention: KV reads at ``attn_bandwidth_fraction`` of peak, prefill FLOPs at
    ``attn_compute_fraction``, ``attn_decode_head_s`` per (decoding sequence x KV head) and
    ``attn_prefill_head_token_s`` per (prompt token x query head), plus a per-layer launch floor for
    each kernel a step runs (the decode kernel if it has decodes, the prefill kernel if it has
    prefill chunks). The floors depend on the attention backend (:data:`AttentionBackend`):
    ``attn_{decode,prefill}_floor_s`` for FlashAttention, ``flashinfer_{decode,prefill}_floor_s``
    for FlashInfer, whose batch-decode kernel costs ~20 us per layer however small the batch.

    ``step_overhead_s`` is the fixed host cost of one step (scheduling, input preparation, sampling)
    left over once the rest is fitted. It fits to ~0 against vLLM: the Vidur per-kernel timings
    already include the launch gaps that vLLM's CUDA graphs and asynchronous scheduling hide.
    ``request_overhead_s`` is the serving front end's fixed latency per request (HTTP, tokenisation,
    hand-off to the engine, first chunk streamed back), fitted to the vLLM TTFT points. It is not
    part of any step: a simulator adds it to each request's TTFT (and end-to-end latency).
    """

    bandwidth_fraction: float
    compute_fraction: float
    roofline_exponent: float
    layer_floor_s: float
    step_overhead_s: float
    attn_bandwidth_fraction: float
    attn_compute_fraction: float
    attn_decode_floor_s: float
    attn_prefill_floor_s: float
    flashinfer_decode_floor_s: float
    flashinfer_prefill_floor_s: float
    attn_decode_head_s: float
    attn_prefill_head_token_s: float
    request_overhead_s: float

    def attention_floors(self, backend: AttentionBackend) -> tuple[float, float]:
        """(decode, prefill) per-layer launch floor of ``backend``'s attention kernels."""
        if backend == "flashinfer":
            return self.flashinfer_decode_floor_s, self.flashinfer_prefill_floor_s
        return self.attn_decode_floor_s, self.attn_prefill_floor_s


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """One GPU board: spec-sheet peaks, TDP, and the efficiencies that turn peaks into step times."""

    name: str
    hbm_bytes: int
    mem_bandwidth_bytes_s: float
    dense_fp16_flops: float
    power_watts: float
    calibrated: bool
    efficiency: GpuEfficiency


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A Llama-style decoder (gated SiLU MLP, RMSNorm, rotary, grouped-query attention).

    ``attention_backend`` picks the attention kernels' launch floors. It follows the measured data:
    vLLM picked FlashInfer for Llama-3-8B and FlashAttention for Llama-2-7B in Vidur's profiling
    (the backends named in ``shared/data/gpu_profiles/README.md``).
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    num_params: int
    dtype_bytes: int = 2
    attention_backend: AttentionBackend = "flash-attn"

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes


# --- fitted constants (python benchmarks/calibration.py refits and prints them) ------------------

A100_80GB_FIT = GpuEfficiency(
    bandwidth_fraction=0.7152,
    compute_fraction=0.6979,
    roofline_exponent=1.586,  # shared by all GPUs (joint fit)
    layer_floor_s=0.0,
    step_overhead_s=0.0,  # shared; fits to ~0 (see GpuEfficiency)
    attn_bandwidth_fraction=0.9836,
    attn_compute_fraction=0.3441,
    attn_decode_floor_s=7.972e-6,  # FlashAttention (Vidur's Llama-2-7B rows)
    attn_prefill_floor_s=1.249e-6,
    flashinfer_decode_floor_s=15.64e-6,  # FlashInfer (Vidur's Llama-3-8B rows)
    flashinfer_prefill_floor_s=4.177e-6,
    attn_decode_head_s=30.74e-9,
    attn_prefill_head_token_s=6.525e-9,
    request_overhead_s=2.525e-3,  # shared; current vLLM front end (see GpuEfficiency)
)
# The attention fields of these two are replaced by the A100's in make_gpu_profiles.
H100_80GB_FIT = replace(
    A100_80GB_FIT, bandwidth_fraction=0.9, compute_fraction=0.7267, layer_floor_s=46.05e-6
)
A40_48GB_FIT = replace(
    A100_80GB_FIT, bandwidth_fraction=0.7814, compute_fraction=0.7755, layer_floor_s=27.22e-6
)

_A100_80GB_BANDWIDTH = 2039e9


def _with_a100_attention(fit: GpuEfficiency, a100: GpuEfficiency, bandwidth: float) -> GpuEfficiency:
    """Attention rows exist for the A100 only: every GPU takes the A100's attention fractions and
    kernel floor, and its per-sequence / per-token costs (memory-latency bound) scaled by the A100's
    bandwidth over this GPU's."""
    ratio = _A100_80GB_BANDWIDTH / bandwidth
    return replace(
        fit,
        attn_bandwidth_fraction=a100.attn_bandwidth_fraction,
        attn_compute_fraction=a100.attn_compute_fraction,
        attn_decode_floor_s=a100.attn_decode_floor_s,
        attn_prefill_floor_s=a100.attn_prefill_floor_s,
        flashinfer_decode_floor_s=a100.flashinfer_decode_floor_s,
        flashinfer_prefill_floor_s=a100.flashinfer_prefill_floor_s,
        attn_decode_head_s=a100.attn_decode_head_s * ratio,
        attn_prefill_head_token_s=a100.attn_prefill_head_token_s * ratio,
    )


def make_gpu_profiles(
    a100: GpuEfficiency, h100: GpuEfficiency, a40: GpuEfficiency
) -> Mapping[str, GpuProfile]:
    """Every GPU profile from the three fitted efficiency sets (the calibration benchmark calls this
    with freshly fitted values, so its report describes exactly what the library ships)."""

    def gpu(
        name: str, mib: int, bw: float, flops: float, watts: float, cal: bool, fit: GpuEfficiency
    ) -> GpuProfile:
        return GpuProfile(name, mib * _MIB, bw, flops, watts, cal, _with_a100_attention(fit, a100, bw))

    gpus = (
        # Calibrated: Vidur per-operator timings (dense layers), A100 attention rows, vLLM e2e points.
        gpu("a100-80gb", 81920, _A100_80GB_BANDWIDTH, 312e12, 400.0, True, a100),
        gpu("h100-80gb", 81559, 3350e9, 989e12, 700.0, True, h100),
        gpu("a40-48gb", 46068, 696e9, 149.7e12, 300.0, True, a40),
        # Same A100 silicon and HBM2 technology as the 80 GB board: the a100-80gb fractions applied to
        # its own (lower) bandwidth; checked against the one A100-40GB vLLM TPOT point.
        gpu("a100-40gb", 40960, 1555e9, 312e12, 400.0, False, a100),
        # Spec-sheet extrapolations, no measured data. V100: HBM2 like the A100, so the A100 fractions
        # (cuBLAS reaches a similar share of its lower FP16 tensor peak). L4: GDDR6 like the A40 and
        # the Ada successor of its Ampere GA102 die, so the A40 fractions.
        gpu("v100-32gb", 32510, 900e9, 125e12, 300.0, False, a100),
        gpu("l4-24gb", 23034, 300e9, 121e12, 72.0, False, a40),
    )
    return MappingProxyType({g.name: g for g in gpus})


_MODELS: tuple[ModelProfile, ...] = (
    # Llama-3.1-8B has the Llama-3-8B architecture (the Vidur Meta-Llama-3-8B rows).
    ModelProfile(
        "llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, attention_backend="flashinfer"
    ),
    ModelProfile("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616),
    ModelProfile("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 13_015_864_320),
)

GPU_PROFILES: Mapping[str, GpuProfile] = make_gpu_profiles(A100_80GB_FIT, H100_80GB_FIT, A40_48GB_FIT)
MODEL_PROFILES: Mapping[str, ModelProfile] = MappingProxyType({m.name: m for m in _MODELS})


def gpu_profile_names() -> tuple[str, ...]:
    return tuple(GPU_PROFILES)


def model_profile_names() -> tuple[str, ...]:
    return tuple(MODEL_PROFILES)


def get_gpu_profile(name: str) -> GpuProfile:
    profile = GPU_PROFILES.get(name)
    if profile is None:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(gpu_profile_names())}")
    return profile


def get_model_profile(name: str) -> ModelProfile:
    profile = MODEL_PROFILES.get(name)
    if profile is None:
        raise ValueError(f"unknown model profile {name!r}; known: {', '.join(model_profile_names())}")
    return profile
