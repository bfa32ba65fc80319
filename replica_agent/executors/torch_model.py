"""A small Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) in plain torch.

The network is written once, with attention as a pluggable function: the paged executor plugs in
attention that writes and gathers K/V through block tables, and ``dense_logits`` plugs in plain
causal attention over one whole sequence (the reference the paged path is tested against).
Weights use Hugging Face Llama names, so a local safetensors checkpoint of that layout loads as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import Tensor

# (layer index, q [T, heads, d], k [T, kv_heads, d], v [T, kv_heads, d]) -> attention out [T, heads, d]
AttendFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True, slots=True)
class TinyLlamaConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    ffn_size: int = 344
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    max_position: int = 4096
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number (RoPE), got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.rope_theta <= 0 or self.rms_eps <= 0 or self.max_position <= 0:
            raise ValueError("rope_theta, rms_eps and max_position must be positive")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight's Hugging Face Llama name and shape."""
        hidden = self.hidden_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, hidden)}
        for i in range(self.num_layers):
            prefix = f"model.layers.{i}."
            shapes[prefix + "input_layernorm.weight"] = (hidden,)
            shapes[prefix + "self_attn.q_proj.weight"] = (q_out, hidden)
            shapes[prefix + "self_attn.k_proj.weight"] = (kv_out, hidden)
            shapes[prefix + "self_attn.v_proj.weight"] = (kv_out, hidden)
            shapes[prefix + "self_attn.o_proj.weight"] = (hidden, q_out)
            shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
            shapes[prefix + "mlp.gate_proj.weight"] = (self.ffn_size, hidden)
            shapes[prefix + "mlp.up_proj.weight"] = (self.ffn_size, hidden)
            shapes[prefix + "mlp.down_proj.weight"] = (hidden, self.ffn_size)
        shapes["model.norm.weight"] = (hidden,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, hidden)
        return shapes


@dataclass(frozen=True, slots=True)
class _Layer:
    """One decoder layer with q/k/v and gate/up fused into single matmuls."""

    attn_norm: Tensor
    qkv: Tensor
    o: Tensor
    mlp_norm: Tensor
    gate_up: Tensor
    down: Tensor


def random_state_dict(config: TinyLlamaConfig, seed: int = 0) -> dict[str, Tensor]:
    """Seeded float32 weights: linears ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms ~ 1 ± 0.1."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape in config.tensor_shapes().items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            state[name] = 1.0 + 0.1 * noise
        elif name == "model.embed_tokens.weight":
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(shape[1])
    return state


def check_state_dict(config: TinyLlamaConfig, state: Mapping[str, Tensor], source: str) -> None:
    """Raise ValueError naming every missing or mis-shaped tensor."""
    problems: list[str] = []
    for name, shape in config.tensor_shapes().items():
        tensor = state.get(name)
        if tensor is None:
            problems.append(f"missing {name}")
        elif tuple(tensor.shape) != shape:
            problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
    if problems:
        raise ValueError(f"weights from {source} do not match the config: " + "; ".join(problems))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [T, heads, d] by per-token angles (``cos``/``sin`` [T, d], HF rotate-half layout)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class TinyLlama:
    """The decoder's weights and forward pass; stateless apart from its (read-only) weights."""

    def __init__(
        self,
        config: TinyLlamaConfig,
        state: Mapping[str, Tensor],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        source: str = "state dict",
    ) -> None:
        check_state_dict(config, state, source)
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        names = config.tensor_shapes()
        self._state = {name: state[name].to(device=self.device, dtype=dtype) for name in names}
        self.embed = self._state["model.embed_tokens.weight"]
        self.final_norm = self._state["model.norm.weight"]
        self.lm_head = self._state.get("lm_head.weight", self.embed)
        self.layers = tuple(self._layer(i) for i in range(config.num_layers))
        self.cos, self.sin = self._rope_tables()

    @classmethod
    def random(
        cls,
        config: TinyLlamaConfig,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TinyLlama:
        return cls(config, random_state_dict(config, seed), dtype, device, source=f"random seed {seed}")

    @classmethod
    def from_safetensors(
        cls,
        config: TinyLlamaConfig,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> TinyLlama:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no safetensors weights file at {file}")
        state: dict[str, Tensor] = load_file(str(file))
        return cls(config, state, dtype, device, source=str(file))

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self._state)

    def save_safetensors(self, path: str | Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self._state.items()}, str(path))

    def _layer(self, i: int) -> _Layer:
        def w(name: str) -> Tensor:
            return self._state[f"model.layers.{i}.{name}.weight"]

        return _Layer(
            attn_norm=w("input_layernorm"),
            qkv=torch.cat([w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")]),
            o=w("self_attn.o_proj"),
            mlp_norm=w("post_attention_layernorm"),
            gate_up=torch.cat([w("mlp.gate_proj"), w("mlp.up_proj")]),
            down=w("mlp.down_proj"),
        )

    def _rope_tables(self) -> tuple[Tensor, Tensor]:
        cfg = self.config
        exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta**exponents)
        angles = torch.outer(torch.arange(cfg.max_position, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return (
            angles.cos().to(device=self.device, dtype=self.dtype),
            angles.sin().to(device=self.device, dtype=self.dtype),
        )

    def hidden_states(self, token_ids: Tensor, positions: Tensor, attend: AttendFn) -> Tensor:
        """Final-normed hidden states [T, hidden] of ``token_ids`` at absolute ``positions``."""
        cfg = self.config
        num_tokens = token_ids.shape[0]
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        cos, sin = self.cos[positions], self.sin[positions]
        h = self.embed[token_ids]
        for index, layer in enumerate(self.layers):
            qkv = F.linear(rms_norm(h, layer.attn_norm, cfg.rms_eps), layer.qkv)
            q, k, v = torch.split(qkv, [q_dim, kv_dim, kv_dim], dim=-1)
            q = apply_rope(q.reshape(num_tokens, cfg.num_heads, cfg.head_dim), cos, sin)
            k = apply_rope(k.reshape(num_tokens, cfg.num_kv_heads, cfg.head_dim), cos, sin)
            v = v.reshape(num_tokens, cfg.num_kv_heads, cfg.head_dim)
            attn = attend(index, q, k, v)
            h = h + F.linear(attn.reshape(num_tokens, q_dim), layer.o)
            gate, up = F.linear(rms_norm(h, layer.mlp_norm, cfg.rms_eps), layer.gate_up).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.down)
        return rms_norm(h, self.final_norm, cfg.rms_eps)

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.lm_head)

    def check_tokens(self, token_ids: Tensor) -> None:
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {token_ids.tolist()}")


def _dense_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax attention of a whole sequence over itself (no cache, no SDPA)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    n = q.shape[0]
    future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def dense_logits(model: TinyLlama, token_ids: list[int] | tuple[int, ...]) -> Tensor:
    """Logits [len, vocab] of every position of one sequence, with plain causal attention."""
    if not token_ids:
        raise ValueError("token_ids must not be empty")
    if len(token_ids) > model.config.max_position:
        raise ValueError(f"{len(token_ids)} tokens exceed max_position {model.config.max_position}")
    with torch.inference_mode():
        ids = torch.tensor(token_ids, dtype=torch.long, device=model.device)
        model.check_tokens(ids)
        positions = torch.arange(len(token_ids), device=model.device)
        hidden = model.hidden_states(ids, positions, lambda _layer, q, k, v: _dense_causal_attention(q, k, v))
        return model.logits(hidden)


def dense_generate(model: TinyLlama, prompt: list[int] | tuple[int, ...], max_tokens: int) -> list[int]:
    """Greedy continuation of ``prompt`` by ``max_tokens`` tokens, recomputing densely every step."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(int(dense_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt) :]
