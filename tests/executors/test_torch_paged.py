"""Paged attention in the torch executor against a dense, non-paged reference with the same weights."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from replica_agent.engine import Engine, EngineConfig, RequestSpec, SamplingParams
from replica_agent.engine.step import ScheduledChunk, StepPlan
from replica_agent.executors.base import Executor
from replica_agent.executors.torch_model import (
    TinyLlama,
    TinyLlamaConfig,
    dense_generate,
    dense_logits,
    random_state_dict,
)
from replica_agent.executors.torch_runner import TorchExecutor

CONFIG = TinyLlamaConfig()  # default: 4 layers, 4 heads over 2 KV heads (GQA), untied head
TINY = TinyLlamaConfig(vocab_size=96, hidden_size=64, num_layers=2, head_dim=16, ffn_size=128)
BS = 4
TOL = 1e-4


def chunk(
    rid: str, start: int, tokens: list[int], blocks: tuple[int, ...], samples: bool = False
) -> ScheduledChunk:
    return ScheduledChunk(rid, start, tuple(tokens), blocks, is_prefill=len(tokens) > 1, samples=samples)


def plan(*chunks: ScheduledChunk, step: int = 0) -> StepPlan:
    return StepPlan(step_id=step, chunks=chunks)


def prompt_of(length: int, seed: int, vocab: int = CONFIG.vocab_size) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(length)]


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return actual.shape == expected.shape and bool((actual - expected).abs().max() < TOL)


@pytest.fixture
def executor() -> TorchExecutor:
    return TorchExecutor(CONFIG, num_blocks=32, block_size=BS, seed=3)


def test_whole_prompt_prefill_matches_dense(executor: TorchExecutor) -> None:
    prompt = prompt_of(19, seed=1)
    logits = executor.step_logits(plan(chunk("a", 0, prompt, (7, 2, 30, 11, 0), samples=True)))
    assert close(logits["a"], dense_logits(executor.model, prompt))


def test_chunked_prefill_mixed_with_another_requests_decode(executor: TorchExecutor) -> None:
    model = executor.model
    a_tokens, a_blocks = prompt_of(10, seed=2), (4, 9, 1, 12)
    b_prompt, b_blocks = prompt_of(21, seed=3), (20, 5, 3, 17, 8, 6)
    first = executor.execute(plan(chunk("a", 0, a_tokens, a_blocks, samples=True)))
    a_tokens.append(first.sampled_token_ids["a"])
    for step, (begin, end) in enumerate([(0, 6), (6, 15), (15, 21)], start=1):
        logits = executor.step_logits(
            plan(
                chunk("a", len(a_tokens) - 1, a_tokens[-1:], a_blocks, samples=True),
                chunk("b", begin, b_prompt[begin:end], b_blocks, samples=end == 21),
                step=step,
            )
        )
        assert close(logits["a"], dense_logits(model, a_tokens)[-1:])
        assert close(logits["b"], dense_logits(model, b_prompt)[begin:end])
        a_tokens.append(int(logits["a"][-1].argmax()))


def test_prefix_cache_hit_reads_blocks_written_by_another_request(executor: TorchExecutor) -> None:
    shared = prompt_of(3 * BS, seed=4)
    a_prompt = [*shared, *prompt_of(5, seed=5)]
    b_prompt = [*shared, *prompt_of(6, seed=6)]
    a_blocks = (3, 8, 1, 10, 12)
    executor.execute(plan(chunk("a", 0, a_prompt, a_blocks, samples=True)))
    b_blocks = (*a_blocks[:3], 6, 14)  # the engine hands B the same physical blocks for the prefix
    logits = executor.step_logits(plan(chunk("b", 3 * BS, b_prompt[3 * BS :], b_blocks, samples=True)))
    assert close(logits["b"], dense_logits(executor.model, b_prompt)[3 * BS :])


def test_prefix_hit_recomputing_only_the_last_prompt_token(executor: TorchExecutor) -> None:
    prompt = prompt_of(2 * BS, seed=7)
    executor.execute(plan(chunk("a", 0, prompt, (5, 6), samples=True)))
    # same prompt again: the first block is a hit, the second (holding the last token) is fresh
    fresh = (5, 9)
    executor.execute(plan(chunk("b", BS, prompt[BS:-1], fresh)))
    logits = executor.step_logits(plan(chunk("b", 2 * BS - 1, prompt[-1:], fresh, samples=True)))
    assert close(logits["b"], dense_logits(executor.model, prompt)[-1:])


def paged_generate(
    executor: TorchExecutor, rid: str, tokens: list[int], blocks: tuple[int, ...], count: int, start: int = 0
) -> list[int]:
    """Prefill ``tokens[start:]`` in one chunk, then decode greedily ``count - 1`` more times."""
    out: list[int] = []
    sampled = executor.execute(plan(chunk(rid, start, tokens[start:], blocks, samples=True)))
    out.append(sampled.sampled_token_ids[rid])
    while len(out) < count:
        position = len(tokens) + len(out) - 1
        sampled = executor.execute(plan(chunk(rid, position, out[-1:], blocks, samples=True)))
        out.append(sampled.sampled_token_ids[rid])
    return out


def test_preemption_then_recompute_into_new_blocks(executor: TorchExecutor) -> None:
    prompt = prompt_of(9, seed=8)
    expected = dense_generate(executor.model, prompt, 10)
    before = paged_generate(executor, "a", prompt, (0, 1, 2, 3), count=4)
    assert before == expected[:4]
    # "a" is preempted; "c" takes its blocks and overwrites them
    executor.execute(plan(chunk("c", 0, prompt_of(15, seed=9), (2, 0, 3, 1), samples=True)))
    assert not torch.equal(executor.cache.k[0, 0], torch.zeros_like(executor.cache.k[0, 0]))
    # "a" is recomputed from position 0 (prompt and the tokens it already produced) into new blocks
    resumed = paged_generate(executor, "a", [*prompt, *before], (7, 11, 13, 4, 5), count=6)
    assert [*before, *resumed] == expected


@settings(max_examples=12, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=22), max_size=5),
    block_seed=st.integers(min_value=0, max_value=10_000),
)
def test_any_chunking_and_block_placement_matches_dense(cuts: list[int], block_seed: int) -> None:
    executor = TorchExecutor(TINY, num_blocks=12, block_size=BS, seed=1)
    prompt = prompt_of(23, seed=block_seed, vocab=TINY.vocab_size)
    blocks = tuple(random.Random(block_seed).sample(range(12), 6))
    expected = dense_logits(executor.model, prompt)
    bounds = [0, *sorted(set(cuts)), len(prompt)]
    for step, (begin, end) in enumerate(itertools.pairwise(bounds)):
        logits = executor.step_logits(plan(chunk("a", begin, prompt[begin:end], blocks), step=step))
        assert close(logits["a"], expected[begin:end])


def test_execute_samples_only_sampling_chunks(executor: TorchExecutor) -> None:
    result = executor.execute(
        plan(chunk("a", 0, [1, 2, 3], (0,), samples=False), chunk("b", 0, [4, 5], (1,), samples=True))
    )
    expected = int(dense_logits(executor.model, [4, 5])[-1].argmax())
    assert dict(result.sampled_token_ids) == {"b": expected}
    assert result.duration_s > 0
    executor.release("a")  # a no-op: the engine owns the blocks
    assert executor.execute(plan()).sampled_token_ids == {}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (chunk("a", 0, [1] * 9, (0, 1)), "blocks cannot hold"),
        (chunk("a", 0, [1, 2], (32,)), "outside"),
        (chunk("a", 0, [1, CONFIG.vocab_size], (0,)), "token ids"),
        (chunk("a", 0, [], (0,)), "empty chunk"),
        (chunk("a", CONFIG.max_position, [1], tuple(range(32))), "max_position"),
    ],
)
def test_bad_chunks_raise_value_error(executor: TorchExecutor, bad: ScheduledChunk, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        executor.execute(plan(bad))


def test_same_request_twice_in_a_step_is_rejected(executor: TorchExecutor) -> None:
    with pytest.raises(ValueError, match="twice"):
        executor.execute(plan(chunk("a", 0, [1], (0,)), chunk("a", 1, [2], (0,))))
    with pytest.raises(ValueError, match="same KV slot"):
        executor.execute(plan(chunk("a", 0, [1, 2], (5,)), chunk("b", 4, [3], (6, 5))))


def test_safetensors_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    TinyLlama.random(TINY, seed=5).save_safetensors(path)
    loaded = TorchExecutor(TINY, num_blocks=4, block_size=BS, weights_path=path)
    assert torch.equal(
        dense_logits(loaded.model, [1, 2, 3]), dense_logits(TinyLlama.random(TINY, 5), [1, 2, 3])
    )
    state = random_state_dict(TINY)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, str(path))
    with pytest.raises(
        ValueError, match=r"missing model\.layers\.1\.mlp\.up_proj.*model\.norm\.weight has shape"
    ):
        TinyLlama.from_safetensors(TINY, path)
    with pytest.raises(FileNotFoundError):
        TinyLlama.from_safetensors(TINY, tmp_path / "absent.safetensors")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        TinyLlamaConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="even"):
        TinyLlamaConfig(head_dim=7)
    tied = TinyLlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, head_dim=8, tie_word_embeddings=True)
    assert "lm_head.weight" not in tied.tensor_shapes()
    model = TinyLlama.random(tied)
    assert model.lm_head is model.embed


# -- end to end through the real scheduler -------------------------------------------------------


def run_engine(
    engine: Engine, executor: Executor, waves: list[list[RequestSpec]], gap: int = 3
) -> tuple[dict[str, list[int]], int]:
    """Add each wave ``gap`` steps after the previous one; run to completion.

    Returns every request's output tokens and the prompt tokens served from the prefix cache."""
    outputs: dict[str, list[int]] = {}
    cached = 0
    step = 0
    pending = list(waves)
    while pending or engine.has_unfinished():
        if pending and (step % gap == 0 or not engine.has_unfinished()):
            for spec in pending.pop(0):
                engine.add(spec)
        current = engine.schedule(float(step))
        step += 1
        if current is None:
            continue
        for out in engine.update(current, executor.execute(current), float(step)):
            outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
            cached += out.num_cached_tokens if out.finished else 0
        if step > 5000:
            raise AssertionError("engine did not finish")
    return outputs, cached


def make_waves(num_waves: int, per_wave: int, max_tokens: int) -> list[list[RequestSpec]]:
    """Requests over two shared system prompts (7 and 2 blocks long), with their own tails."""
    systems = [
        prompt_of(7 * BS + 1, seed=100, vocab=TINY.vocab_size),
        prompt_of(2 * BS, seed=101, vocab=TINY.vocab_size),
    ]
    waves = []
    for w in range(num_waves):
        wave = []
        for i in range(per_wave):
            n = w * per_wave + i
            tail = prompt_of(3 + (5 * n) % 11, seed=200 + n, vocab=TINY.vocab_size)
            params = SamplingParams(max_tokens=max_tokens - n % 3, ignore_eos=True)
            wave.append(RequestSpec(f"r{n}", (*systems[n % 2], *tail), arrival_time=0.0, params=params))
        waves.append(wave)
    return waves


def check_against_dense(
    model: TinyLlama, waves: list[list[RequestSpec]], outputs: dict[str, list[int]]
) -> None:
    for spec in (s for wave in waves for s in wave):
        expected = dense_generate(model, spec.prompt_token_ids, spec.params.max_tokens)
        assert outputs[spec.request_id] == expected, spec.request_id


def test_engine_chunked_prefill_and_prefix_hits_match_dense_greedy() -> None:
    config = EngineConfig(num_blocks=64, block_size=BS, max_num_batched_tokens=24, max_num_seqs=6)
    engine = Engine(config)
    executor = TorchExecutor(TINY, num_blocks=64, block_size=BS, seed=11)
    waves = make_waves(num_waves=3, per_wave=4, max_tokens=8)
    outputs, cached = run_engine(engine, executor, waves)
    check_against_dense(executor.model, waves, outputs)
    assert cached > 0


def test_engine_under_memory_pressure_preempts_and_still_matches_dense() -> None:
    config = EngineConfig(num_blocks=24, block_size=BS, max_num_batched_tokens=16, max_num_seqs=8)
    engine = Engine(config)
    executor = TorchExecutor(TINY, num_blocks=24, block_size=BS, seed=12)
    waves = make_waves(num_waves=2, per_wave=4, max_tokens=12)
    outputs, _ = run_engine(engine, executor, waves, gap=2)
    check_against_dense(executor.model, waves, outputs)
    assert engine.scheduler.num_preemptions > 0
