"""The router's client for a plain OpenAI-compatible server (``vllm serve``, SGLang, or a fleetroute
agent's HTTP port): answers over streaming HTTP, load from scraping its Prometheus ``/metrics``.

Such servers never acknowledge request ids, so a snapshot's ``admitted_ids`` are the ids this client
*sent* (and the server accepted with 200) since the previous scrape; the router's ledger therefore
folds those entries into the next scrape's gauges. The load gauges follow vLLM's metric names, which
fleetroute agents export too. One snapshot watcher per client: each scrape hands over the sent ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from protos.block_hash import DEFAULT_HASH_SEED
from protos.generation import AgentInfo, GenerateEvent, GenerateInput, Usage, output_event
from protos.snapshot import ReplicaSnapshot, Tier
from protos.text import ApproxTokenizer, render_chat
from replica_agent.backends import prometheus_scrape as vllm_metrics
from replica_agent.engine.engine import ReplicaIdentity
from router.service import sse
from router.service.replica_client import ReplicaCallError, one_by_one
from router.service.upstream import UpstreamPool

MIN_SCRAPE_INTERVAL_S, MAX_SCRAPE_INTERVAL_S = 0.1, 0.25
RATE_WINDOW_S = 2.0
MAX_UNREPORTED_IDS = 65536  # sent ids wait here for the next scrape; without a watcher they would pile up
CONNECTION_ERRORS = (aiohttp.ClientError, OSError)


def default_session() -> aiohttp.ClientSession:
    # No connection cap: every concurrent stream to a replica holds a connection of its own.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


class _Answer(Protocol):
    """An accepted answer's body, whichever client fetched it."""

    async def readany(self, deadline: float | None = None) -> bytes: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class _AiohttpAnswer:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def readany(self, deadline: float | None = None) -> bytes:
        async with asyncio.timeout_at(deadline):
            return await self._response.content.readany()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def _upstream_pool(base: str, connect_timeout_s: float) -> UpstreamPool:
    url = URL(base)
    host, port = url.raw_host or "", url.port or 80
    name = f"[{host}]" if ":" in host else host
    return UpstreamPool(host, port, name if port == 80 else f"{name}:{port}", connect_timeout_s)


@dataclass(slots=True)
class _Flight:
    request: GenerateInput
    tokenizer: ApproxTokenizer
    output_tokens: int = 0
    response: _Answer | None = None
    aborted: bool = False
    _prompt_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        """Estimated (the server reports the real count only at the end), and only when asked: most
        answers end before a scrape looks at them, and carry the server's own usage."""
        if self._prompt_tokens is None:
            request = self.request
            if request.prompt_token_ids:
                self._prompt_tokens = len(request.prompt_token_ids)
            else:
                text = render_chat(request.messages) if request.is_chat else request.prompt or ""
                self._prompt_tokens = self.tokenizer.count(text)
        return self._prompt_tokens


class HttpReplicaClient:
    """``base_url`` is the server root (a trailing ``/v1`` is dropped: ``/metrics`` lives at the root).
    ``model`` None serves the first model the server lists at :meth:`info`. ``session_factory``
    supplies the ``aiohttp`` session (TLS settings, connection limits); timeouts are set per call."""

    def __init__(
        self,
        replica_id: str,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        scrape_interval_s: float = 0.15,
        gpu: str = "unknown",
        tier: Tier | str = Tier.CLOUD,
        connect_timeout_s: float = 2.0,
        first_token_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        scrape_timeout_s: float = 1.0,
        return_token_ids: bool = True,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the replica URL must start with http:// or https://, got {base_url!r}")
        if not MIN_SCRAPE_INTERVAL_S <= scrape_interval_s <= MAX_SCRAPE_INTERVAL_S:
            raise ValueError(f"scrape_interval_s must be within 0.1-0.25 s, got {scrape_interval_s}")
        if min(connect_timeout_s, first_token_timeout_s, idle_timeout_s, scrape_timeout_s) <= 0:
            raise ValueError("every timeout must be positive")
        self._replica_id, self._base = replica_id, base_url.rstrip("/").removesuffix("/v1")
        self._model, self._interval, self._clock = model, scrape_interval_s, clock
        self._first_token_timeout, self._idle_timeout = first_token_timeout_s, idle_timeout_s
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        self._scrape_timeout = aiohttp.ClientTimeout(total=scrape_timeout_s, sock_connect=connect_timeout_s)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._post_headers = {**self._auth, "Content-Type": "application/json"}
        self._to_json = json.JSONEncoder(separators=(",", ":")).encode
        # Parsed once: aiohttp would parse a string URL on every request.
        self._urls = {path: URL(self._base + path) for path in ("/v1/completions", "/v1/chat/completions")}
        self._return_token_ids = return_token_ids
        self._session_factory = session_factory or default_session
        self._session: aiohttp.ClientSession | None = None
        # Answers over plain HTTP skip aiohttp (the costliest part of relaying one); a custom session
        # (TLS settings, limits) and every other call keep it.
        self._pool: UpstreamPool | None = None
        self._targets: dict[str, str] = {}
        if session_factory is None and self._base.startswith("http://"):
            self._pool = _upstream_pool(self._base, connect_timeout_s)
            self._targets = {path: url.raw_path_qs for path, url in self._urls.items()}
        self._closed = False
        self._info = AgentInfo(
            replica_id=replica_id, model=model or "", gpu=gpu, tier=Tier(tier).value, executor="http",
            block_size=0, num_blocks=0, max_model_len=0, hash_seed=DEFAULT_HASH_SEED, version="",
            tokenizer="upstream",
        )  # fmt: skip
        self._tokenizer = ApproxTokenizer()
        self._flights: dict[str, _Flight] = {}
        self._sent: deque[str] = deque(maxlen=MAX_UNREPORTED_IDS)
        self._samples: deque[tuple[float, vllm_metrics.VllmLoad]] = deque()
        self._seq = 0

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def _check_open(self) -> None:
        if self._closed:
            raise ReplicaCallError(f"the client for replica {self._replica_id} is closed", retryable=True)

    def _client_session(self) -> aiohttp.ClientSession:
        self._check_open()
        if self._session is None:
            self._session = self._session_factory()
        return self._session

    def _unreachable(self, what: str, error: BaseException) -> ReplicaCallError:
        where = f"replica {self._replica_id} at {self._base}"
        return ReplicaCallError(f"{where}: {what}: {str(error) or type(error).__name__}", retryable=True)

    # -- description and health --------------------------------------------------------------------
    async def info(self) -> AgentInfo:
        """The served model from ``/v1/models``, KV block size and count from a first ``/metrics``
        scrape (zero when the server does not export ``vllm:cache_config_info``)."""
        status, text = await self._get("/v1/models")
        if status != 200:
            raise sse.http_error(self._replica_id, status, text)
        try:
            models = sse.model_cards(text)
        except ValueError as error:
            raise self._unreachable("GET /v1/models", error) from None
        model = self._model or next(iter(models), "")
        if model not in models:
            message = f"replica {self._replica_id} serves {list(models)}, not the model {model!r}"
            raise ReplicaCallError(message, retryable=False, kind="model_not_found", status=404)
        max_len = models[model].get("max_model_len")
        self._info = dataclasses.replace(
            self._info,
            model=model,
            served_model_names=tuple(name for name in models if name != model),
            max_model_len=max_len if isinstance(max_len, int) else 0,
        )
        with contextlib.suppress(ReplicaCallError):  # the snapshot watch reports unusable metrics
            await self._scrape()
        return self._info

    async def _get(self, path: str) -> tuple[int, str]:
        session = self._client_session()
        url = self._base + path
        try:
            async with session.get(url, headers=self._auth, timeout=self._scrape_timeout) as answer:
                return answer.status, await answer.text()
        except (*CONNECTION_ERRORS, TimeoutError, UnicodeDecodeError) as error:
            raise self._unreachable(f"GET {path} failed", error) from None

    async def check_health(self) -> bool:
        """``GET /health`` answers 200."""
        try:
            status, _ = await self._get("/health")
        except ReplicaCallError:
            return False
        return status == 200

    # -- load --------------------------------------------------------------------------------------
    async def watch_snapshots(self) -> AsyncGenerator[ReplicaSnapshot, None]:
        """A snapshot per ``/metrics`` scrape, every scrape interval; a failed scrape raises
        :class:`ReplicaCallError` (the caller marks the replica stale and reconnects)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            yield self._snapshot(await self._scrape())
            # A fixed grid, so the cadence does not drift by each scrape's own duration.
            due = max(due + self._interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _scrape(self) -> vllm_metrics.VllmLoad:
        status, text = await self._get("/metrics")
        if status != 200:
            raise self._unreachable("/metrics failed", RuntimeError(f"HTTP {status}: {text[:200]}"))
        try:
            try:
                load = vllm_metrics.parse_vllm_metrics(text, self._info.model or None)
            except vllm_metrics.MissingMetricError:  # vLLM labels series with its first served name
                load = vllm_metrics.parse_vllm_metrics(text)
        except vllm_metrics.MetricsFormatError as error:
            raise self._unreachable("/metrics has no vLLM load gauges", error) from None
        now = self._clock()
        self._samples.append((now, load))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        if load.num_gpu_blocks is not None and load.block_size is not None:
            self._info = dataclasses.replace(
                self._info, num_blocks=load.num_gpu_blocks, block_size=load.block_size
            )
        return load

    def _snapshot(self, load: vllm_metrics.VllmLoad) -> ReplicaSnapshot:
        sent = tuple(self._sent)
        self._sent.clear()
        samples, info = self._samples, self._info
        rates = vllm_metrics.token_rates(samples[0], samples[-1]) if len(samples) > 1 else None
        # Only requests the server accepted: one still connecting counts in the router's ledger alone.
        accepted = [f for f in self._flights.values() if f.response is not None]
        self._seq += 1
        return vllm_metrics.snapshot_from_load(
            load,
            identity=ReplicaIdentity(info.replica_id, info.model, info.gpu, Tier(info.tier)),
            seq=self._seq,
            now=self._clock(),
            in_flight=[vllm_metrics.ForwardedRequest(f.prompt_tokens, f.output_tokens) for f in accepted],
            rates=rates or vllm_metrics.TokenRates(),
            admitted_ids=sent,
        )

    # -- generation --------------------------------------------------------------------------------
    def generate(self, request: GenerateInput) -> AsyncGenerator[GenerateEvent, None]:
        return one_by_one(self.generate_batches(request))

    async def generate_batches(self, request: GenerateInput) -> AsyncGenerator[list[GenerateEvent], None]:
        """:meth:`generate`, the events that arrived together in one list (never empty)."""
        request_id = request.request_id
        if request_id in self._flights:
            message = f"request id {request_id!r} is already in flight"
            raise ReplicaCallError(message, retryable=False, kind="invalid_request", status=400)
        arrived, opened_at = self._clock(), asyncio.get_running_loop().time()
        flight = self._flights[request_id] = _Flight(request, self._tokenizer)
        completed = False
        try:
            flight.response = await self._open(request, opened_at + self._first_token_timeout)
            self._sent.append(request_id)
            reader = sse.AnswerReader(
                flight.response, replica_id=self._replica_id, opened_at=opened_at,
                first_token_timeout_s=self._first_token_timeout, idle_timeout_s=self._idle_timeout,
                aborted=lambda: flight.aborted,
            )  # fmt: skip
            reason, usage = None, None
            events: list[GenerateEvent] = []
            while (chunks := await reader.next_batch()) is not None:
                now = self._clock()  # one read, one time
                elapsed = max(0.0, now - arrived)
                for chunk in chunks:
                    reason, usage = chunk.finish_reason or reason, chunk.usage or usage
                    if chunk.text or chunk.token_ids:
                        flight.output_tokens += len(chunk.token_ids) or 1
                        events.append(output_event(request_id, chunk.token_ids, chunk.text, now, elapsed))
                if reader.ended:
                    break  # the final event goes out with these
                if events:
                    yield events
                    events = []
            if flight.aborted:
                reason = "abort"
            elif reason is None:
                if events:
                    yield events
                ended = "the stream ended before the answer finished"
                raise sse.stream_failure(self._replica_id, ended, started=flight.output_tokens > 0)
            completed = not flight.aborted
            final_usage = usage or Usage(flight.prompt_tokens, flight.output_tokens)
            last = sse.StreamChunk(finish_reason=reason, usage=final_usage)
            events.append(self._event(request_id, arrived, last, True))
            yield events
        finally:
            self._flights.pop(request_id, None)
            if flight.response is not None:
                # Closing (not releasing) drops the connection: that is how the server notices the
                # client went away and aborts the request.
                flight.response.release() if completed else flight.response.close()

    def _event(
        self, request_id: str, arrived: float, chunk: sse.StreamChunk, final: bool = False
    ) -> GenerateEvent:
        now, last = self._clock(), (chunk.finish_reason, chunk.usage) if final else (None, None)
        return GenerateEvent(
            request_id, chunk.token_ids, chunk.text, now, max(0.0, now - arrived), final, *last
        )

    async def _open(self, request: GenerateInput, deadline: float) -> _Answer:
        self._check_open()
        path = "/v1/chat/completions" if request.is_chat else "/v1/completions"
        body = sse.request_body(
            request, request.model or self._info.model, return_token_ids=self._return_token_ids
        )
        data = self._to_json(body).encode()
        headers = {**self._post_headers, **sse.request_headers(request)}
        try:
            if self._pool is not None:
                upstream = await self._pool.post(self._targets[path], headers, data, deadline)
                if upstream.status == 200:
                    return upstream
                status = upstream.status
                try:
                    text = await upstream.text(deadline)
                finally:
                    upstream.close()
            else:
                async with asyncio.timeout_at(deadline):
                    response = await self._client_session().post(
                        self._urls[path], data=data, headers=headers, timeout=self._stream_timeout
                    )
                    if response.status == 200:
                        return _AiohttpAnswer(response)
                    status = response.status
                    async with response:
                        text = await response.text()
        except CONNECTION_ERRORS as error:
            raise self._unreachable(f"POST {path} failed", error) from None
        except TimeoutError:
            silent = f"no answer within {self._first_token_timeout:g} s"
            raise sse.stream_failure(self._replica_id, silent, started=False, kind="timeout") from None
        raise sse.http_error(self._replica_id, status, text)

    async def abort(self, request_id: str) -> bool:
        """Close the request's open response (the server aborts it); False when none was open."""
        flight = self._flights.get(request_id)
        if flight is None or flight.aborted:
            return False
        flight.aborted = True
        if flight.response is not None:
            flight.response.close()
        return True

    async def close(self) -> None:
        self._closed = True
        for flight in self._flights.values():
            if flight.response is not None:
                flight.response.close()
        if self._pool is not None:
            self._pool.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
