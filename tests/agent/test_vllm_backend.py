"""The vLLM backend without vLLM: the optional import, and every translation between vLLM's objects
and the agent's (stats → snapshots, cumulative outputs → deltas, requests → sampling params).

vLLM's own stats and output objects are stood in by plain namespaces with the same attribute names,
which is all the translation functions read.
"""

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protos.snapshot import Tier
from replica_agent.backends import vllm_stats as vs
from replica_agent.backends.vllm_engine import (
    RequestStream,
    VllmBackend,
    VllmUnavailableError,
    require_vllm,
    vllm_available,
)
from replica_agent.config import AgentConfig
from replica_agent.engine.engine import ReplicaIdentity
from replica_agent.factory import build_backend
from replica_agent.service.backend import (
    AgentInfo,
    DrainingError,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
    Usage,
)

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = ReplicaIdentity(replica_id="h100-a", model="llama", gpu="h100-80gb", tier=Tier.EDGE)


def run(body, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(body, timeout))


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM unimportable, whether or not it is installed."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


# -- the optional dependency -----------------------------------------------------------------------
def test_the_module_imports_without_pulling_in_vllm() -> None:
    script = (
        "import sys\n"
        "import replica_agent.backends.vllm_engine, replica_agent.factory\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vllm'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_require_vllm_says_in_one_line_how_to_install_it(no_vllm: None) -> None:
    assert not vllm_available()
    with pytest.raises(VllmUnavailableError) as caught:
        require_vllm()
    message = str(caught.value)
    assert "\n" not in message
    assert "pip install 'fleetroute[vllm]'" in message and "GPU" in message
    assert isinstance(caught.value, RuntimeError) and caught.value.__suppress_context__


def test_building_a_vllm_agent_without_vllm_fails_with_that_line(no_vllm: None) -> None:
    with pytest.raises(VllmUnavailableError, match=r"fleetroute\[vllm\]"):
        build_backend(AgentConfig(executor="vllm", gpu="h100-80gb", model="meta-llama/Llama-3.1-8B"))


# -- stats → snapshot ------------------------------------------------------------------------------
def scheduler_stats(**fields) -> SimpleNamespace:
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # vLLM ≥ 0.10
            scheduler_stats(
                num_running_reqs=3,
                num_waiting_reqs=2,
                kv_cache_usage=0.25,
                prefix_cache_stats=SimpleNamespace(requests=2, queries=300, hits=100),
            ),
            vs.VllmSchedulerStats(3, 2, 0.25, prefix_cache_queries=300, prefix_cache_hits=100),
        ),
        (  # older V1: gpu_cache_usage, no prefix-cache stats
            scheduler_stats(num_running_reqs=1, num_waiting_reqs=0, gpu_cache_usage=0.5),
            vs.VllmSchedulerStats(1, 0, 0.5),
        ),
        (  # preempted requests' lookups counted apart, as newer vLLM does
            scheduler_stats(
                kv_cache_usage=1.5,
                prefix_cache_stats=SimpleNamespace(queries=10, hits=4, preempted_queries=6, preempted_hits=6),
            ),
            vs.VllmSchedulerStats(0, 0, 1.0, prefix_cache_queries=16, prefix_cache_hits=10),
        ),
        (scheduler_stats(), vs.VllmSchedulerStats()),
    ],
)
def test_fold_stats_reads_either_spelling_and_what_is_there(raw, expected) -> None:
    assert vs.fold_stats(vs.VllmSchedulerStats(), raw, None) == expected


def test_fold_stats_keeps_gauges_it_is_not_given_and_adds_up_counters() -> None:
    stats = vs.fold_stats(
        vs.VllmSchedulerStats(),
        scheduler_stats(
            num_running_reqs=4, kv_cache_usage=0.5, prefix_cache_stats=SimpleNamespace(queries=64, hits=32)
        ),
        SimpleNamespace(num_preempted_reqs=1),
    )
    stats = vs.fold_stats(
        stats, scheduler_stats(prefix_cache_stats=SimpleNamespace(queries=16, hits=0)), None
    )
    stats = vs.fold_stats(stats, None, SimpleNamespace(num_preempted_reqs=2, num_generation_tokens=9))
    assert stats == vs.VllmSchedulerStats(4, 0, 0.5, 80, 32, preemptions_total=3)
    assert stats.computed_prefill_tokens == 48
    assert vs.VllmSchedulerStats(prefix_cache_queries=0, prefix_cache_hits=0).computed_prefill_tokens is None
    assert vs.VllmSchedulerStats().computed_prefill_tokens is None


@pytest.mark.parametrize(
    ("usage_field", "usage", "blocks", "free"),
    [
        ("kv_cache_usage", 0.0, 1000, 1000),
        ("kv_cache_usage", 0.25, 1000, 750),
        ("gpu_cache_usage", 0.25, 1000, 750),
        ("gpu_cache_usage", 1.0, 1000, 0),
        ("kv_cache_usage", 1 / 3, 3, 2),
        ("kv_cache_usage", 0.7, 0, 0),  # blocks not known yet (engine not started)
    ],
)
def test_kv_usage_becomes_free_blocks(usage_field, usage, blocks, free) -> None:
    stats = vs.fold_stats(vs.VllmSchedulerStats(), scheduler_stats(**{usage_field: usage}), None)
    snapshot = vs.snapshot_from_stats(
        stats, identity=IDENTITY, seq=1, now=0.0, num_gpu_blocks=blocks, block_size=16
    )
    assert (snapshot.total_blocks, snapshot.free_blocks, snapshot.cached_blocks) == (blocks, free, 0)


def test_snapshot_carries_identity_counts_and_the_requests_in_flight() -> None:
    stats = vs.VllmSchedulerStats(
        num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.5, preemptions_total=7
    )
    in_flight = [
        vs.InFlightRequest(prompt_tokens=100, output_tokens=10, cached_tokens=32, started=True),
        vs.InFlightRequest(prompt_tokens=50, output_tokens=1, started=True),
        vs.InFlightRequest(prompt_tokens=300),
        vs.InFlightRequest(prompt_tokens=40),  # submitted after vLLM's last stats
    ]
    snapshot = vs.snapshot_from_stats(
        stats,
        identity=IDENTITY,
        seq=9,
        now=1234.5,
        num_gpu_blocks=2048,
        block_size=16,
        in_flight=in_flight,
        rates=vs.Throughput(1500.0, 80.0),
        admitted_ids=("a", "b"),
        draining=True,
    )
    assert (snapshot.replica_id, snapshot.model, snapshot.gpu, snapshot.tier) == (
        "h100-a",
        "llama",
        "h100-80gb",
        "edge",
    )
    assert (snapshot.seq, snapshot.time, snapshot.block_size) == (9, 1234.5, 16)
    assert (snapshot.num_running, snapshot.num_waiting, snapshot.free_blocks) == (2, 2, 1024)
    assert snapshot.waiting_prefill_tokens == 340
    assert snapshot.running_context_tokens == 110 + 51
    assert (snapshot.prefill_tokens_per_s, snapshot.decode_tokens_per_s) == (1500.0, 80.0)
    assert snapshot.preemptions_total == 7 and snapshot.admitted_ids == ("a", "b")
    assert snapshot.draining and snapshot.healthy


def test_advance_counts_the_prefill_once_and_every_generated_token() -> None:
    request = vs.InFlightRequest(prompt_tokens=100)
    request, prefilled, generated = vs.advance(request, vs.CumulativeOutput((), ""))
    assert (request.started, prefilled, generated) == (False, 0, 0)
    request, prefilled, generated = vs.advance(
        request, vs.CumulativeOutput([7, 8], "ab", num_cached_tokens=64)
    )
    assert (request.started, request.cached_tokens, prefilled, generated) == (True, 64, 36, 2)
    request, prefilled, generated = vs.advance(request, vs.CumulativeOutput([7, 8, 9, 10, 11], "abcde"))
    assert (request.output_tokens, request.cached_tokens, prefilled, generated) == (5, 64, 0, 3)


def test_throughput_prefers_the_engine_prefill_count_and_falls_back_without_prefix_stats() -> None:
    samples = [
        vs.TokenCounters(0.0, observed_prefill_tokens=0, generated_tokens=0, engine_prefill_tokens=0),
        vs.TokenCounters(10.0, observed_prefill_tokens=100, generated_tokens=0, engine_prefill_tokens=100),
        vs.TokenCounters(12.0, observed_prefill_tokens=500, generated_tokens=40, engine_prefill_tokens=700),
    ]
    assert vs.throughput(samples, window_s=5.0) == vs.Throughput(300.0, 20.0)
    assert vs.throughput(samples, window_s=60.0) == vs.Throughput(700 / 12, 40 / 12)
    without_prefix_stats = [
        vs.TokenCounters(s.time, s.observed_prefill_tokens, s.generated_tokens) for s in samples
    ]
    assert vs.throughput(without_prefix_stats, window_s=5.0) == vs.Throughput(200.0, 20.0)
    assert vs.throughput(samples[:1], window_s=5.0) == vs.Throughput()


# -- cumulative outputs → deltas -------------------------------------------------------------------
def request_output(token_ids, text, finished=False, reason=None, cached=None) -> SimpleNamespace:
    completion = SimpleNamespace(index=0, text=text, token_ids=list(token_ids), finish_reason=reason)
    return SimpleNamespace(request_id="r", outputs=[completion], finished=finished, num_cached_tokens=cached)


CUMULATIVE = [
    request_output([], ""),
    request_output([101], "Hel", cached=16),
    request_output([101, 102, 103], "Hello wor", cached=16),
    request_output([101, 102, 103, 104], "Hello world!", cached=16),
    request_output([101, 102, 103, 104, 2], "Hello world!", True, "stop", cached=16),
]


@pytest.mark.parametrize("seen", [range(5), [4], [1, 3, 4], [0, 2, 4]])
def test_deltas_add_up_to_the_answer_however_many_outputs_are_skipped(seen) -> None:
    position, deltas = vs.StreamPosition(), []
    for index in seen:
        delta, position = vs.output_delta(position, vs.cumulative_from_request_output(CUMULATIVE[index]), 20)
        deltas.append(delta)
    assert "".join(d.text for d in deltas) == "Hello world!"
    assert [t for d in deltas for t in d.token_ids] == [101, 102, 103, 104, 2]
    assert not any(d.finished or d.usage or d.finish_reason for d in deltas[:-1])
    assert deltas[-1].finished and deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(prompt_tokens=20, completion_tokens=5, cached_tokens=16)


def test_a_single_step_delta_is_exactly_what_was_added() -> None:
    before = vs.cumulative_from_request_output(CUMULATIVE[1])
    _, position = vs.output_delta(vs.StreamPosition(), before, 20)
    delta, _ = vs.output_delta(position, vs.cumulative_from_request_output(CUMULATIVE[2]), 20)
    assert delta == vs.OutputDelta((102, 103), "lo wor")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("abort", "abort"), ("repetition", "stop"), ("error", "abort"),
     (None, "abort"), ("something-new", "abort")],
)  # fmt: skip
def test_finish_reasons_map_to_stop_length_or_abort(reason, expected) -> None:
    output = vs.cumulative_from_request_output(request_output([5], "x", True, reason))
    delta, _ = vs.output_delta(vs.StreamPosition(), output, 3)
    assert delta.finish_reason == expected
    assert delta.usage == Usage(3, 1, 0)  # no num_cached_tokens reported: nothing cached


def test_an_output_without_completions_reads_as_empty() -> None:
    assert (
        vs.cumulative_from_request_output(SimpleNamespace(outputs=[], finished=False))
        == vs.CumulativeOutput()
    )


# -- requests --------------------------------------------------------------------------------------
def request(request_id: str = "r1", **fields) -> GenerateInput:
    fields.setdefault("prompt", "Explain paged attention.")
    return GenerateInput(
        request_id=request_id,
        model=fields.pop("model", "llama"),
        max_tokens=fields.pop("max_tokens", 16),
        **fields,
    )


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "param"),
    [(4096, 1, "prompt"), (5000, 1, "prompt"), (4000, 97, "max_tokens"), (1, 4096, "max_tokens")],
)
def test_requests_that_do_not_fit_the_context_are_refused(prompt, max_tokens, param) -> None:
    with pytest.raises(InvalidRequestError, match="maximum context length") as caught:
        vs.check_lengths(prompt, max_tokens, max_model_len=4096)
    assert caught.value.param == param


@pytest.mark.parametrize(("prompt", "max_tokens"), [(4000, 96), (1, 4095), (4095, 1)])
def test_requests_that_fit_exactly_pass(prompt, max_tokens) -> None:
    vs.check_lengths(prompt, max_tokens, max_model_len=4096)


def test_sampling_kwargs_name_vllm_fields_and_leave_unset_options_to_vllm() -> None:
    plain = request(max_tokens=64)
    assert vs.sampling_kwargs(plain) == {"max_tokens": 64, "ignore_eos": False, "stop_token_ids": []}
    tuned = request(max_tokens=8, ignore_eos=True, stop_token_ids=(2, 7), temperature=0.0, top_p=0.9, seed=11)
    assert vs.sampling_kwargs(tuned) == {
        "max_tokens": 8,
        "ignore_eos": True,
        "stop_token_ids": [2, 7],
        "temperature": 0.0,
        "top_p": 0.9,
        "seed": 11,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop_token_ids": (1000,)}, "stop token"),
    ],
)
def test_bad_sampling_options_are_refused(fields, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        vs.check_sampling(request(**fields), vocab_size=1000)


class RecordingTokenizer:
    """Just enough of a Hugging Face tokenizer to see which text and flags reach it."""

    def __init__(self, chat_template: str | None = None) -> None:
        self.chat_template = chat_template
        self.calls: list[tuple[str, bool]] = []

    def apply_chat_template(self, conversation, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"[{m['role']}]{m['content']}" for m in conversation) + "[assistant]"

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        self.calls.append((text, add_special_tokens))
        return [len(word) for word in text.split()]


def test_prompts_are_tokenized_the_way_vllm_would() -> None:
    messages = (("system", "Be brief."), ("user", "Hi"))
    templated = RecordingTokenizer(chat_template="{{ messages }}")
    vs.prompt_token_ids(request(prompt=None, messages=messages), templated, 100)
    assert templated.calls == [("[system]Be brief.[user]Hi[assistant]", False)]
    plain = RecordingTokenizer()
    vs.prompt_token_ids(request(prompt=None, messages=messages), plain, 100)
    vs.prompt_token_ids(request(prompt="one two"), plain, 100)
    assert plain.calls == [("<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n", True), ("one two", True)]
    assert vs.prompt_token_ids(request(prompt=None, prompt_token_ids=(5, 99)), plain, 100) == [5, 99]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt_token_ids": (3,)}, "exactly one"),
        ({"prompt": None}, "exactly one"),
        ({"prompt": None, "prompt_token_ids": (3, 100)}, "vocabulary"),
    ],
)
def test_bad_prompts_are_refused(fields, message) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        vs.prompt_token_ids(request(**fields), RecordingTokenizer(), 100)


def agent_info(**fields) -> AgentInfo:
    settings: dict[str, Any] = dict(
        replica_id="h100-a", model="llama", gpu="h100-80gb", tier="edge", executor="vllm", block_size=16,
        num_blocks=0, max_model_len=8192, hash_seed=0, version="0", tokenizer="meta-llama/Llama-3.1-8B",
    )  # fmt: skip
    settings.update(fields)
    return AgentInfo(**settings)


def test_info_takes_what_the_started_engine_settled_on() -> None:
    vllm_config = SimpleNamespace(
        cache_config=SimpleNamespace(num_gpu_blocks=27000, block_size=32),
        model_config=SimpleNamespace(max_model_len=4096),
    )
    tokenizer = SimpleNamespace(name_or_path="llama-tok", vocab_size=128000)
    info, vocab = vs.info_from_vllm_config(agent_info(), vllm_config, tokenizer)
    assert (info.num_blocks, info.block_size, info.max_model_len, info.tokenizer) == (
        27000,
        32,
        4096,
        "llama-tok",
    )
    assert vocab == 128000
    unchanged, _ = vs.info_from_vllm_config(agent_info(), None, tokenizer)
    assert unchanged == agent_info(tokenizer="llama-tok")


# -- one request's stream --------------------------------------------------------------------------
def test_a_slow_consumer_gets_everything_since_it_last_read_as_one_delta() -> None:
    async def body() -> None:
        stream = RequestStream(prompt_tokens=10)
        stream.push(vs.OutputDelta((1,), "a"))
        stream.push(vs.OutputDelta((2, 3), "bc"))
        assert await stream.next() == vs.OutputDelta((1, 2, 3), "abc")
        stream.push(vs.OutputDelta((4,), "d"))
        stream.push(vs.OutputDelta((), "", True, "length", Usage(10, 4)))
        assert await stream.next() == vs.OutputDelta((4,), "d", True, "length", Usage(10, 4))
        assert not stream.abort()

    run(body())


def test_aborting_a_stream_ends_it_with_the_usage_so_far() -> None:
    async def body() -> None:
        stream = RequestStream(prompt_tokens=10)
        stream.record = vs.InFlightRequest(10, output_tokens=2, cached_tokens=4, started=True)
        stream.push(vs.OutputDelta((1, 2), "ab"))
        waiting = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        assert waiting.done() and waiting.result() == vs.OutputDelta((1, 2), "ab")
        waiting = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0)
        assert not waiting.done()
        assert stream.abort() and stream.done
        assert await waiting == vs.OutputDelta((), "", True, "abort", Usage(10, 2, 4))

    run(body())


def test_an_engine_failure_reaches_the_consumer_after_the_tokens_before_it() -> None:
    async def body() -> None:
        stream = RequestStream(prompt_tokens=10)
        stream.push(vs.OutputDelta((1,), "a"))
        stream.fail(UpstreamError("engine died"))
        assert await stream.next() == vs.OutputDelta((1,), "a")
        with pytest.raises(UpstreamError, match="engine died"):
            await stream.next()

    run(body())


# -- the backend before and after its engine -------------------------------------------------------
def make_backend() -> VllmBackend:
    return VllmBackend(
        {"model": "meta-llama/Llama-3.1-8B"}, agent_info(num_blocks=512), wall_clock=lambda: 99.0
    )


async def first_event(backend: VllmBackend, req: GenerateInput) -> object:
    return await anext(aiter(backend.generate(req)))


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"model": "gpt-4"}, ModelNotFoundError, "not served"),
        ({"max_tokens": 0}, InvalidRequestError, "max_tokens"),
        ({}, DrainingError, "not running"),
    ],
)
def test_requests_are_refused_before_any_engine_is_touched(fields, error, message) -> None:
    backend = make_backend()
    with pytest.raises(error, match=message):
        run(first_event(backend, request(**fields)))
    assert backend.latest_snapshot().admitted_ids == ()


def test_a_stopped_backend_drains_and_says_so() -> None:
    async def body() -> None:
        backend = make_backend()
        first = backend.latest_snapshot()
        assert (first.seq, first.total_blocks, first.free_blocks, first.time) == (1, 512, 512, 99.0)
        assert not first.healthy and not first.draining
        watcher = backend.watch_snapshots()
        assert await anext(watcher) == first
        await backend.stop(0.0)
        assert backend.draining and await backend.abort("nothing") is False
        assert backend.latest_snapshot().draining and not backend.latest_snapshot().healthy
        assert [s async for s in watcher] == []  # the hub closed: watchers end
        with pytest.raises(DrainingError, match="draining"):
            await first_event(backend, request())

    run(body())


def test_the_backend_needs_a_model_to_load() -> None:
    with pytest.raises(ValueError, match="model"):
        VllmBackend({"tensor_parallel_size": 2}, agent_info())
