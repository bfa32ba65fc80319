"""The pieces that keep the router's relay cheap give the same results as the plain ones: chunks
encoded from templates, events decoded from whole reads, prompt ids from the piece table, and
answer batches that keep text, order and errors as the stream had them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.generation import GenerateEvent, GenerateInput, Usage, output_event
from protos.openai_wire import SseDecoder, sse_data
from protos.text import ApproxTokenizer
from replica_agent.service.openai_responses import Answer
from replica_agent.service.openai_stream import ChunkEncoder
from router.request_shaper import RequestShaper
from router.service.http_client import HttpReplicaClient, default_session
from router.service.replica_client import ReplicaCallError
from tests.agent.fake_vllm import FakeVllm

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@given(texts, st.lists(st.integers(0, 2**31), max_size=4), st.floats(0, 1e9), st.floats(0, 1e3))
def test_an_output_event_built_fast_is_the_plain_one(
    text: str, ids: list[int], time: float, elapsed: float
) -> None:
    plain = GenerateEvent("req-1", tuple(ids), text, time, elapsed)
    fast = output_event("req-1", tuple(ids), text, time, elapsed)
    assert type(fast) is GenerateEvent
    assert (fast, hash(fast), repr(fast)) == (plain, hash(plain), repr(plain))
    with pytest.raises(AttributeError):
        fast.text = "changed"  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(
    chat=st.booleans(),
    include_usage=st.booleans(),
    return_token_ids=st.booleans(),
    text=texts,
    token_ids=st.lists(st.integers(0, 2**31 - 1), max_size=4).map(tuple),
    finished=st.booleans(),
    reason=st.one_of(st.none(), st.sampled_from(["stop", "length", "abort"])),
    model=texts,
)
def test_template_chunks_are_the_json_of_the_answer_chunk(
    chat: bool,
    include_usage: bool,
    return_token_ids: bool,
    text: str,
    token_ids: tuple[int, ...],
    finished: bool,
    reason: str | None,
    model: str,
) -> None:
    answer = Answer('cmpl-"x"', 1700000000, model, chat, include_usage, return_token_ids)
    event = GenerateEvent("r", token_ids, text, 1.0, 0.5, finished, reason, Usage(3, 1) if finished else None)
    expected = "data: " + json.dumps(answer.chunk(event), separators=(",", ":")) + "\n\n"
    assert ChunkEncoder(answer).encode(event) == expected


async def _lines(raw: bytes) -> AsyncIterator[bytes]:
    for line in raw.splitlines(keepends=True):
        yield line


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.lists(texts.map(lambda t: t.replace("\r", "").replace("\n", "")), min_size=1, max_size=3)
    ),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    unterminated=st.booleans(),
)
def test_events_decoded_from_arbitrary_reads_match_the_line_reader(
    events: list[list[str]], crlf: bool, cuts: list[int], unterminated: bool
) -> None:
    end = "\r\n" if crlf else "\n"
    stream = "".join(
        "".join(f"data: {line}{end}" for line in lines) + ": comment" + end + end for lines in events
    )
    if unterminated:
        stream += "data: tail"
    raw = stream.encode()

    async def reference() -> list[str]:
        return [data async for data in sse_data(_lines(raw))]

    decoder, decoded, start = SseDecoder(), [], 0
    for cut in [*sorted({min(cut, len(raw)) for cut in cuts}), len(raw)]:
        decoded += decoder.feed(raw[start:cut])
        start = cut
    decoded += decoder.finish()
    assert decoded == asyncio.run(reference())


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_the_piece_table_gives_the_tokenizers_ids(text: str) -> None:
    shaper = RequestShaper()
    request = GenerateInput("t", "fake-model", 4, prompt=text)
    first, again = shaper.prompt_tokens(request), shaper.prompt_tokens(request)
    assert first == again == tuple(ApproxTokenizer().encode(text))


CHUNK = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}


def _data(choices: list[Any], usage: dict[str, int] | None = None) -> bytes:
    return f"data: {json.dumps({**CHUNK, 'choices': choices, 'usage': usage})}\n\n".encode()


async def _serve(body: list[bytes]) -> tuple[web.AppRunner, str]:
    async def completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(body))  # every chunk in one read
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _collect(body: list[bytes]) -> tuple[list[list[GenerateEvent]], ReplicaCallError | None]:
    async def scenario() -> tuple[list[list[GenerateEvent]], ReplicaCallError | None]:
        runner, url = await _serve(body)
        client = HttpReplicaClient("r", url, model="m")
        batches: list[list[GenerateEvent]] = []
        try:
            async for batch in client.generate_batches(GenerateInput("q", "m", 4, prompt="hi")):
                batches.append(batch)
        except ReplicaCallError as error:
            return batches, error
        finally:
            await client.close()
            await runner.cleanup()
        return batches, None

    return asyncio.run(asyncio.wait_for(scenario(), 10.0))


def test_chunks_that_arrive_together_come_out_as_one_batch_ending_with_the_final_event() -> None:
    words = [{"index": 0, "text": word, "finish_reason": None} for word in ("a", " b", " c")]
    words[-1]["finish_reason"] = "length"
    usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    body = [*(_data([word]) for word in words), _data([], usage), b"data: [DONE]\n\n"]
    batches, error = _collect(body)
    assert error is None
    assert len(batches) == 1
    events = batches[0]
    assert [e.text for e in events] == ["a", " b", " c", ""]
    assert events[-1].finished and events[-1].finish_reason == "length"
    assert events[-1].usage == Usage(1, 3)


def test_an_error_behind_text_in_the_same_read_comes_after_that_text_and_is_final() -> None:
    error_body = json.dumps({"error": {"message": "engine died", "code": 500}})
    body = [
        _data([{"index": 0, "text": "partial", "finish_reason": None}]),
        f"data: {error_body}\n\n".encode(),
    ]
    batches, error = _collect(body)
    assert [[e.text for e in batch] for batch in batches] == [["partial"]]
    assert error is not None and not error.retryable and "engine died" in error.message


@pytest.mark.parametrize("aborted_body", [[b"data: not json\n\n"], [b""]])
def test_a_broken_or_empty_stream_before_any_text_may_be_retried(aborted_body: list[bytes]) -> None:
    batches, error = _collect(aborted_body)
    assert batches == []
    assert error is not None and error.retryable


@pytest.mark.parametrize("session", ["own client", "aiohttp session"])
def test_both_ways_to_the_server_give_the_same_answers_refusals_and_aborts(session: str) -> None:
    async def scenario() -> tuple[list[GenerateEvent], ReplicaCallError | None, bool]:
        server = FakeVllm(answer_tokens=5, token_delay_s=0.0)
        url = await server.start()
        factory = default_session if session == "aiohttp session" else None
        client = HttpReplicaClient("r", url, model=server.model, session_factory=factory)
        try:
            events = [e async for e in client.generate(GenerateInput("ok", server.model, 9, prompt="hi"))]
            refusal = None
            try:
                await anext(client.generate(GenerateInput("bad", "other-model", 9, prompt="hi")))
            except ReplicaCallError as error:
                refusal = error
            server.token_delay_s = 0.05
            stream = client.generate(GenerateInput("gone", server.model, 200, prompt="hi", ignore_eos=True))
            await anext(stream)
            await stream.aclose()
            for _ in range(100):
                if server.seen("gone").disconnected:
                    break
                await asyncio.sleep(0.02)
            return events, refusal, server.seen("gone").disconnected
        finally:
            await client.close()
            await server.stop()

    events, refusal, disconnected = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    assert "".join(e.text for e in events) == "the router sends each request"
    assert events[-1].finished and events[-1].usage is not None and events[-1].usage.completion_tokens == 5
    assert refusal is not None and refusal.status == 404 and not refusal.retryable
    assert disconnected
