"""A sidecar in front of an OpenAI-compatible server (vLLM, SGLang), as a ``Backend``.

Requests go upstream as streaming completions; closing a stream closes its HTTP response, which is
how vLLM notices a client went away and aborts the request. Load comes from scraping the server's
Prometheus ``/metrics`` every 0.1–0.25 s, plus this sidecar's book of the requests it forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from fleetroute import __version__
from protos.block_hash import DEFAULT_HASH_SEED
from protos.snapshot import ReplicaSnapshot, Tier
from protos.text import ApproxTokenizer, render_chat
from replica_agent.backends.openai_upstream import (
    parse_chunk,
    request_body,
    sse_data,
    upstream_error,
)
from replica_agent.backends.prometheus_scrape import (
    ForwardedRequest,
    MissingMetricError,
    TokenRates,
    VllmLoad,
    parse_vllm_metrics,
    snapshot_from_load,
    token_rates,
)
from replica_agent.config import AgentConfig, ConfigError
from replica_agent.engine.engine import ReplicaIdentity
from replica_agent.service.backend import (
    AgentError,
    AgentInfo,
    DrainingError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
    Usage,
)
from replica_agent.service.snapshot_hub import SnapshotHub

log = logging.getLogger(__name__)

MIN_INTERVAL_S, MAX_INTERVAL_S, MAX_BACKOFF_S = 0.1, 0.25, 2.0
NO_LOAD = VllmLoad(0, 0, 0.0)
HTTP_ERRORS = (aiohttp.ClientError, TimeoutError)


# -- the backend -----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Flight:
    """A request forwarded upstream and not finished yet."""

    prompt_tokens: int  # estimated: upstream reports the real count only at the end
    output_tokens: int = 0
    aborted: bool = False
    response: aiohttp.ClientResponse | None = None


class RemoteBackend:
    """``base_url`` is the server root (a trailing ``/v1`` is dropped: ``/metrics`` lives at the
    root); ``model`` None takes the first model the server lists at :meth:`start`."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        replica_id: str = "remote",
        gpu: str = "unknown",
        tier: Tier | str = Tier.CLOUD,
        scrape_interval_s: float = 0.15,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 300.0,
        scrape_timeout_s: float = 1.0,
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
        throughput_window_s: float = 2.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the upstream URL must start with http:// or https://, got {base_url!r}")
        if not MIN_INTERVAL_S <= scrape_interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"scrape_interval_s must be within 0.1-0.25 s, got {scrape_interval_s}")
        if min(connect_timeout_s, read_timeout_s, scrape_timeout_s, throughput_window_s) <= 0:
            raise ValueError("timeouts and the throughput window must be positive")
        self._base = base_url.rstrip("/").removesuffix("/v1")
        self._model, self._interval, self._window = model, scrape_interval_s, throughput_window_s
        self._request_timeout = aiohttp.ClientTimeout(connect=connect_timeout_s, sock_read=read_timeout_s)
        self._scrape_timeout = aiohttp.ClientTimeout(total=scrape_timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._clock = clock
        self._info = AgentInfo(
            replica_id=replica_id, model=model or "", gpu=gpu, tier=Tier(tier).value, executor="remote",
            block_size=0, num_blocks=0, max_model_len=0, hash_seed=DEFAULT_HASH_SEED, version=__version__,
            tokenizer="upstream",
        )  # fmt: skip
        self._tokenizer = ApproxTokenizer()
        self._session: aiohttp.ClientSession | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._models_known = self._healthy = self._draining = False
        self._load = NO_LOAD
        self._samples: deque[tuple[float, VllmLoad]] = deque()
        self._flights: dict[str, _Flight] = {}
        self._admitted: list[str] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = 0
        self._hub = SnapshotHub(self._snapshot())

    @classmethod
    def from_config(cls, config: AgentConfig) -> RemoteBackend:
        if not config.remote_url:
            raise ConfigError(
                "the remote executor needs --remote-url (the OpenAI-compatible server to front)"
            )
        explicit = config.model_fields_set
        return cls(
            config.remote_url,
            model=config.served_model_name or (config.model if "model" in explicit else None),
            replica_id=config.id,
            gpu=config.gpu if "gpu" in explicit else "unknown",
            tier=config.tier,
            scrape_interval_s=min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, config.snapshot_interval_s)),
            api_key=config.remote_api_key,
        )

    @property
    def info(self) -> AgentInfo:
        return self._info

    @property
    def draining(self) -> bool:
        return self._draining

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the session and read the upstream's models; without a configured model name an
        unreachable upstream is an :class:`UpstreamError`, with one the scraper keeps trying."""
        if self._session is not None:
            raise RuntimeError("the remote backend is already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=self._headers, timeout=self._request_timeout
        )
        try:
            await self._read_models(self._session)
        except AgentError:
            if self._model is None:
                await self._session.close()
                self._session = None
                raise
            log.warning("upstream %s is not answering yet; the scraper keeps trying", self._base)
        await self._scrape(self._session)
        self._scraper = asyncio.create_task(self._scrape_loop(self._session), name="remote-scraper")

    async def stop(self, drain_timeout_s: float) -> None:
        self._draining = True
        self._publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, drain_timeout_s))
        for request_id in list(self._flights):
            await self.abort(request_id)
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
            self._scraper = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._publish()
        self._hub.close()

    async def _read_models(self, session: aiohttp.ClientSession) -> None:
        url = f"{self._base}/v1/models"
        try:
            async with session.get(url, timeout=self._scrape_timeout) as response:
                if response.status != 200:
                    raise UpstreamError(f"{url} answered HTTP {response.status}")
                listing = await response.json(content_type=None)
        except (*HTTP_ERRORS, ValueError) as error:
            raise UpstreamError(f"cannot list the models at {url}: {error}") from None
        entries = listing.get("data") if isinstance(listing, dict) else None
        models = [m for m in entries or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        ids = [m["id"] for m in models]
        model = self._model or (ids[0] if ids else "")
        if model not in ids:
            raise UpstreamError(f"{url} lists {ids}, not the model {model!r} this agent serves")
        max_len = models[ids.index(model)].get("max_model_len")
        self._info = dataclasses.replace(
            self._info,
            model=model,
            served_model_names=tuple(i for i in ids if i != model),
            max_model_len=max_len if isinstance(max_len, int) else 0,
        )
        self._models_known = True

    # -- snapshots ---------------------------------------------------------------------------------
    async def _scrape_loop(self, session: aiohttp.ClientSession) -> None:
        loop, failures = asyncio.get_running_loop(), 0
        due = loop.time()
        while True:
            if failures:
                due = loop.time() + min(MAX_BACKOFF_S, self._interval * 2**failures)
            else:  # a grid, so scrape durations do not add up; a late wake-up never bunches two
                due = max(due + self._interval, loop.time() + MIN_INTERVAL_S)
            await asyncio.sleep(due - loop.time())
            failures = 0 if await self._scrape(session) else failures + 1

    async def _scrape(self, session: aiohttp.ClientSession) -> bool:
        """One scrape and one published snapshot; a failure keeps the last good numbers."""
        try:
            if not self._models_known:
                await self._read_models(session)
            async with session.get(f"{self._base}/metrics", timeout=self._scrape_timeout) as response:
                if response.status != 200:
                    raise UpstreamError(f"/metrics answered HTTP {response.status}")
                text = await response.text()
            try:
                load = parse_vllm_metrics(text, self._info.model)
            except MissingMetricError:  # vLLM labels series with its first served name, maybe another
                load = parse_vllm_metrics(text)
        except (*HTTP_ERRORS, ValueError, AgentError) as error:
            if self._healthy:
                log.warning("scraping %s/metrics failed: %s", self._base, error)
            self._healthy = False
            self._publish()
            return False
        self._record(load)
        self._publish()
        return True

    def _record(self, load: VllmLoad) -> None:
        now = self._clock()
        self._healthy, self._load = True, load
        self._samples.append((now, load))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        if load.num_gpu_blocks is not None and load.block_size is not None:
            self._info = dataclasses.replace(
                self._info, num_blocks=load.num_gpu_blocks, block_size=load.block_size
            )

    def _snapshot(self) -> ReplicaSnapshot:
        admitted, self._admitted = tuple(self._admitted), []
        samples, info = self._samples, self._info
        self._seq += 1
        return snapshot_from_load(
            self._load,
            identity=ReplicaIdentity(info.replica_id, info.model, info.gpu, Tier(info.tier)),
            seq=self._seq,
            now=self._clock(),
            in_flight=[ForwardedRequest(f.prompt_tokens, f.output_tokens) for f in self._flights.values()],
            rates=token_rates(samples[0], samples[-1]) if len(samples) > 1 else TokenRates(),
            admitted_ids=admitted,
            healthy=self._healthy,
            draining=self._draining,
        )

    def _publish(self) -> None:
        self._hub.publish(self._snapshot())

    def latest_snapshot(self) -> ReplicaSnapshot:
        return self._hub.latest

    def watch_snapshots(self, interval_s: float | None = None) -> AsyncIterator[ReplicaSnapshot]:
        return self._hub.watch(interval_s or MAX_BACKOFF_S)

    # -- generation --------------------------------------------------------------------------------
    def _admit(self, request: GenerateInput) -> aiohttp.ClientSession:
        if request.model and not self._info.serves(request.model):
            raise ModelNotFoundError(
                f"model {request.model!r} is not served here (serving {self._info.model!r})"
            )
        if self._draining:
            raise DrainingError("the replica is draining and admits no new requests")
        if request.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1, got {request.max_tokens}", "max_tokens"
            )
        if sum((request.prompt is not None, bool(request.messages), bool(request.prompt_token_ids))) != 1:
            raise InvalidRequestError("give exactly one of prompt, messages or prompt token ids", "prompt")
        if request.request_id in self._flights:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in flight", "request_id")
        if self._session is None:
            raise DrainingError("the remote backend is not started")
        return self._session

    def _prompt_tokens(self, request: GenerateInput) -> int:
        if request.prompt_token_ids:
            return len(request.prompt_token_ids)
        return self._tokenizer.count(
            render_chat(request.messages) if request.messages else request.prompt or ""
        )

    async def _open(self, session: aiohttp.ClientSession, request: GenerateInput) -> aiohttp.ClientResponse:
        path = "/v1/chat/completions" if request.is_chat else "/v1/completions"
        headers = {"X-Request-Id": request.request_id}
        if request.traceparent:
            headers["traceparent"] = request.traceparent
        if request.tracestate:
            headers["tracestate"] = request.tracestate
        body = request_body(request, request.model or self._info.model)
        try:
            response = await session.post(f"{self._base}{path}", json=body, headers=headers)
            if response.status == 200:
                return response
            async with response:  # an error body is short: read it and let the connection go
                text = await response.text()
        except HTTP_ERRORS as error:
            raise UpstreamError(f"cannot reach the upstream server at {self._base}: {error!r}") from None
        raise upstream_error(response.status, text)

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        session = self._admit(request)
        arrived, request_id = self._clock(), request.request_id
        flight = self._flights[request_id] = _Flight(self._prompt_tokens(request))
        self._idle.clear()
        finished, reason, usage = False, None, None
        try:
            flight.response = response = await self._open(session, request)
            self._admitted.append(request_id)
            if flight.aborted:  # while connecting
                response.close()
            try:
                async for data in sse_data(response.content):
                    if flight.aborted:
                        break
                    if data.strip() == "[DONE]":
                        reason = reason or "stop"
                        break
                    chunk = parse_chunk(data)
                    reason, usage = chunk.finish_reason or reason, chunk.usage or usage
                    if chunk.text or chunk.token_ids:
                        flight.output_tokens += len(chunk.token_ids) or 1
                        now = self._clock()
                        yield GenerateEvent(
                            request_id, chunk.token_ids, chunk.text, now, max(0.0, now - arrived)
                        )
            except (*HTTP_ERRORS, ValueError) as error:
                if not flight.aborted:
                    raise UpstreamError(f"the upstream stream broke off: {error!r}") from None
            if flight.aborted:
                response.close()
                reason = "abort"
            elif reason is None:
                raise UpstreamError("the upstream stream ended before the answer finished")
            final_usage = usage or Usage(flight.prompt_tokens, flight.output_tokens)
            finished, now = True, self._clock()
            reason = reason if reason in ("stop", "length", "abort") else "stop"
            yield GenerateEvent(request_id, (), "", now, max(0.0, now - arrived), True, reason, final_usage)
        finally:
            if self._flights.get(request_id) is flight:
                del self._flights[request_id]
            if flight.response is not None:
                # Closing (not releasing) drops the connection: upstream sees the client go and aborts.
                flight.response.release() if finished and not flight.aborted else flight.response.close()
            if not self._flights:
                self._idle.set()

    async def abort(self, request_id: str) -> bool:
        flight = self._flights.get(request_id)
        if flight is None or flight.aborted:
            return False
        flight.aborted = True
        if flight.response is not None:
            flight.response.close()
        return True
