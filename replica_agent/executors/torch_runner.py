"""The torch executor: a TinyLlama over a paged KV cache, one batched forward per engine step.

Position ``p`` of a request lives in block ``block_ids[p // block_size]`` at offset ``p % block_size``.
A step concatenates the new tokens of every chunk; linear layers run once over all of them. Per
layer, the new K/V are first written into their slots, then each token attends to positions
``0..its own`` gathered through its request's block table: single-token chunks (decodes) together
in one padded batch, longer chunks (prefills) one by one with an offset causal mask. Blocks are
owned by the engine, so K/V written by earlier steps, or by another request with the same prefix,
are read back as they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from replica_agent.engine.step import ScheduledChunk, StepPlan, StepResult
from replica_agent.executors.torch_model import TinyLlama, TinyLlamaConfig


class PagedKVCache:
    """K and V of every layer, each shaped [num_layers, num_blocks, block_size, kv_heads, head_dim]."""

    def __init__(
        self,
        config: TinyLlamaConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_layers, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._scratch_k = self.k.new_empty((0, *shape[2:]))
        self._scratch_v = self.v.new_empty((0, *shape[2:]))

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """Store ``k``/``v`` [T, kv_heads, d] at flat slots ``block * block_size + offset``."""
        self.k[layer].flatten(0, 1).index_copy_(0, slots, k)
        self.v[layer].flatten(0, 1).index_copy_(0, slots, v)

    def gather(self, layer: int, blocks: Tensor) -> tuple[Tensor, Tensor]:
        """K and V of whole ``blocks`` (any shape S): [*S, block_size, kv_heads, head_dim] each.

        The results live in scratch buffers reused by the next call (no fresh allocation, and so no
        page faults, per layer): consume them before gathering again.
        """
        flat = blocks.flatten()
        count = flat.numel()
        if count > self._scratch_k.shape[0]:
            capacity = max(count, 2 * self._scratch_k.shape[0])
            self._scratch_k = self.k.new_empty((capacity, *self.k.shape[2:]))
            self._scratch_v = self.v.new_empty((capacity, *self.v.shape[2:]))
        k_out, v_out = self._scratch_k[:count], self._scratch_v[:count]
        torch.index_select(self.k[layer], 0, flat, out=k_out)
        torch.index_select(self.v[layer], 0, flat, out=v_out)
        shape = (*blocks.shape, *self.k.shape[2:])
        return k_out.view(shape), v_out.view(shape)

    def block_table(self, chunk: ScheduledChunk) -> tuple[int, ...]:
        """The blocks holding positions ``0..chunk.end-1`` of the chunk's request, validated."""
        needed = -(-chunk.end // self.block_size)
        if len(chunk.block_ids) < needed:
            raise ValueError(
                f"request {chunk.request_id!r}: {len(chunk.block_ids)} blocks cannot hold positions "
                f"up to {chunk.end} at block size {self.block_size}"
            )
        table = chunk.block_ids[:needed]
        if min(table) < 0 or max(table) >= self.num_blocks:
            raise ValueError(
                f"request {chunk.request_id!r}: block ids {table} outside [0, {self.num_blocks})"
            )
        return table

    def slots(self, table: tuple[int, ...], start: int, end: int) -> list[int]:
        """Flat slots of positions ``[start, end)`` through a block table."""
        size = self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]


@dataclass(frozen=True, slots=True)
class _Span:
    """A multi-token chunk: rows ``[begin, end)`` attend to the positions held in ``blocks``."""

    begin: int
    end: int
    blocks: Tensor  # [context blocks]
    mask: Tensor  # [new tokens, context blocks * block_size], True where attention is allowed


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where every token of a step comes from and what it attends to."""

    token_ids: Tensor  # [T]
    positions: Tensor  # [T]
    write_slots: Tensor  # [T]
    spans: tuple[_Span, ...]
    decode_rows: Tensor  # [B] rows of single-token chunks
    decode_blocks: Tensor  # [B, widest block table], padded with block 0
    decode_mask: Tensor  # [B, 1, 1, widest block table * block_size]
    last_rows: tuple[int, ...]  # per chunk, the row of its last token


class TorchExecutor:
    """Executes engine steps on a TinyLlama with real paged attention (Executor protocol)."""

    def __init__(
        self,
        config: TinyLlamaConfig,
        num_blocks: int,
        block_size: int,
        seed: int = 0,
        weights_path: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        num_threads: int | None = None,
    ) -> None:
        if num_threads is not None:
            if num_threads <= 0:
                raise ValueError(f"num_threads must be positive, got {num_threads}")
            torch.set_num_threads(num_threads)  # process-wide, as torch offers it
        if weights_path is None:
            self.model = TinyLlama.random(config, seed, dtype, device)
        else:
            self.model = TinyLlama.from_safetensors(config, weights_path, dtype, device)
        self.config = config
        self.device = self.model.device
        self.cache = PagedKVCache(config, num_blocks, block_size, dtype, self.device)

    def execute(self, plan: StepPlan) -> StepResult:
        """Run the step and greedily sample the last token of every chunk with ``samples`` set."""
        begin = time.perf_counter()
        sampled: dict[str, int] = {}
        with torch.inference_mode():
            if plan.chunks:
                layout, hidden = self._forward(plan)
                chosen = [i for i, chunk in enumerate(plan.chunks) if chunk.samples]
                if chosen:
                    rows = torch.tensor([layout.last_rows[i] for i in chosen], device=self.device)
                    tokens = self.model.logits(hidden[rows]).argmax(dim=-1).tolist()
                    sampled = {plan.chunks[i].request_id: int(t) for i, t in zip(chosen, tokens, strict=True)}
        return StepResult(sampled_token_ids=sampled, duration_s=time.perf_counter() - begin)

    def step_logits(self, plan: StepPlan) -> dict[str, Tensor]:
        """Run the step (writing K/V like ``execute``) and return every chunk's logits [n, vocab]."""
        with torch.inference_mode():
            if not plan.chunks:
                return {}
            _, hidden = self._forward(plan)
            logits = self.model.logits(hidden)
            out: dict[str, Tensor] = {}
            row = 0
            for chunk in plan.chunks:
                out[chunk.request_id] = logits[row : row + chunk.num_tokens].clone()
                row += chunk.num_tokens
            return out

    def release(self, request_id: str) -> None:
        """Nothing to free: K/V live in blocks the engine owns and reuses."""

    def _forward(self, plan: StepPlan) -> tuple[_Layout, Tensor]:
        layout = self._layout(plan)
        hidden = self.model.hidden_states(
            layout.token_ids,
            layout.positions,
            lambda layer, q, k, v: self._attend(layout, layer, q, k, v),
        )
        return layout, hidden

    def _layout(self, plan: StepPlan) -> _Layout:
        if len({c.request_id for c in plan.chunks}) != len(plan.chunks):
            raise ValueError(f"step {plan.step_id} schedules a request twice")
        token_ids: list[int] = []
        positions: list[int] = []
        write_slots: list[int] = []
        spans: list[_Span] = []
        decodes: list[tuple[int, ScheduledChunk, tuple[int, ...]]] = []
        last_rows: list[int] = []
        for chunk in plan.chunks:
            self._check_chunk(chunk)
            table = self.cache.block_table(chunk)
            row = len(token_ids)
            token_ids.extend(chunk.token_ids)
            positions.extend(range(chunk.start, chunk.end))
            write_slots.extend(self.cache.slots(table, chunk.start, chunk.end))
            last_rows.append(row + chunk.num_tokens - 1)
            if chunk.num_tokens == 1:
                decodes.append((row, chunk, table))
            else:
                spans.append(self._span(row, chunk, table))
        if len(set(write_slots)) != len(write_slots):
            raise ValueError(f"step {plan.step_id} writes two tokens into the same KV slot")
        ids = torch.tensor(token_ids, dtype=torch.long)
        self.model.check_tokens(ids)
        decode_rows, decode_blocks, decode_mask = self._decode_batch(decodes)
        device = self.device
        return _Layout(
            token_ids=ids.to(device),
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            write_slots=torch.tensor(write_slots, dtype=torch.long, device=device),
            spans=tuple(spans),
            decode_rows=decode_rows,
            decode_blocks=decode_blocks,
            decode_mask=decode_mask,
            last_rows=tuple(last_rows),
        )

    def _check_chunk(self, chunk: ScheduledChunk) -> None:
        if chunk.num_tokens == 0 or chunk.start < 0:
            raise ValueError(f"request {chunk.request_id!r}: empty chunk or negative start {chunk.start}")
        if chunk.end > self.config.max_position:
            raise ValueError(
                f"request {chunk.request_id!r}: position {chunk.end - 1} exceeds max_position "
                f"{self.config.max_position}"
            )

    def _span(self, row: int, chunk: ScheduledChunk, table: tuple[int, ...]) -> _Span:
        """A prefill chunk: its context blocks and an offset causal mask over their positions."""
        key_pos = torch.arange(len(table) * self.cache.block_size)
        query_pos = torch.arange(chunk.start, chunk.end)
        return _Span(
            begin=row,
            end=row + chunk.num_tokens,
            blocks=torch.tensor(table, dtype=torch.long, device=self.device),
            mask=(key_pos[None, :] <= query_pos[:, None]).to(self.device),
        )

    def _decode_batch(
        self, decodes: list[tuple[int, ScheduledChunk, tuple[int, ...]]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rows, padded block tables [B, W] and key mask [B, 1, 1, W * block_size] of one-token chunks."""
        width = max((len(table) for _, _, table in decodes), default=0)
        # padding points at block 0: real memory whose keys the mask hides
        tables = [[*table, *([0] * (width - len(table)))] for _, _, table in decodes]
        key_pos = torch.arange(width * self.cache.block_size)
        ends = torch.tensor([chunk.end for _, chunk, _ in decodes], dtype=torch.long)
        mask = key_pos[None, :] < ends[:, None]
        device = self.device
        return (
            torch.tensor([row for row, _, _ in decodes], dtype=torch.long, device=device),
            torch.tensor(tables, dtype=torch.long, device=device).reshape(len(decodes), width),
            mask[:, None, None, :].to(device),
        )

    def _attend(self, layout: _Layout, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Write this step's K/V into the cache, then attend through the block tables."""
        self.cache.write(layer, layout.write_slots, k, v)
        out = torch.empty_like(q)
        for span in layout.spans:
            keys, values = self.cache.gather(layer, span.blocks)  # [blocks, block_size, kv_heads, d]
            attn = F.scaled_dot_product_attention(
                q[span.begin : span.end].transpose(0, 1),
                keys.flatten(0, 1).transpose(0, 1),
                values.flatten(0, 1).transpose(0, 1),
                attn_mask=span.mask,
                enable_gqa=True,
            )
            out[span.begin : span.end] = attn.transpose(0, 1)
        if layout.decode_rows.numel():
            keys, values = self.cache.gather(layer, layout.decode_blocks)  # [B, W, block_size, kv_heads, d]
            attn = F.scaled_dot_product_attention(
                q[layout.decode_rows][:, :, None, :],
                keys.flatten(1, 2).transpose(1, 2),
                values.flatten(1, 2).transpose(1, 2),
                attn_mask=layout.decode_mask,
                enable_gqa=True,
            )
            out[layout.decode_rows] = attn[:, :, 0, :]
        return out
