"""vLLM's V1 async engine in-process, as a ``Backend`` (the optional ``fleetroute[vllm]`` extra).

vLLM is imported only inside functions, so this module imports anywhere; :func:`require_vllm` says
in one line what to install where it is missing. Snapshots come from vLLM's scheduler stats (a stat
logger handed to the engine) plus this backend's book of the requests it submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from protos.block_hash import DEFAULT_HASH_SEED
from protos.snapshot import ReplicaSnapshot, Tier
from replica_agent.backends import vllm_stats as vs
from replica_agent.backends.vllm_hooks import (
    INSTALL_HINT as INSTALL_HINT,
)
from replica_agent.backends.vllm_hooks import (
    RequestStream as RequestStream,
)
from replica_agent.backends.vllm_hooks import (
    VllmUnavailableError as VllmUnavailableError,
)
from replica_agent.backends.vllm_hooks import (
    engine_shape,
    stat_logger_factory,
)
from replica_agent.backends.vllm_hooks import (
    require_vllm as require_vllm,
)
from replica_agent.backends.vllm_hooks import (
    vllm_available as vllm_available,
)
from replica_agent.config import AgentConfig
from replica_agent.engine.engine import ReplicaIdentity
from replica_agent.service.backend import (
    AgentInfo,
    DrainingError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
)
from replica_agent.service.snapshot_hub import SnapshotHub

log = logging.getLogger(__name__)


class VllmBackend:
    """``engine_args`` are ``AsyncEngineArgs`` fields (``model`` required); :meth:`start` refreshes
    ``info`` from the engine (KV blocks, block size, max model length, tokenizer)."""

    def __init__(
        self,
        engine_args: Mapping[str, Any],
        info: AgentInfo,
        *,
        snapshot_interval_s: float = 0.1,
        throughput_window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(engine_args.get("model"), str) or not engine_args["model"]:
            raise ValueError("engine_args must name the model to load ('model')")
        if snapshot_interval_s <= 0 or throughput_window_s <= 0:
            raise ValueError("snapshot_interval_s and throughput_window_s must be positive")
        self._engine_args = dict(engine_args)
        self._info = info
        self._identity = ReplicaIdentity(info.replica_id, info.model, info.gpu, Tier(info.tier))
        self._interval, self._window = snapshot_interval_s, throughput_window_s
        self._clock, self._wall_clock = clock, wall_clock
        self._engine: Any = None
        self._tokenizer: Any = None
        self._vocab_size = 0
        self._use_priority = False
        self._draining = False
        self._stats = vs.VllmSchedulerStats()
        self._streams: dict[str, RequestStream] = {}
        self._admitted: list[str] = []
        self._seq = 0
        self._observed_prefill = 0
        self._generated = 0
        self._samples: deque[vs.TokenCounters] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ticker: asyncio.Task[None] | None = None
        self._hub = SnapshotHub(self._snapshot())

    @classmethod
    def from_config(cls, config: AgentConfig) -> VllmBackend:
        """``config.model`` is a Hugging Face id or local path; ``config.engine`` adds engine args."""
        from fleetroute import __version__

        require_vllm()
        engine_args: dict[str, Any] = {
            "model": config.model,
            "seed": config.seed,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            **config.engine,
        }
        block_size, max_model_len, num_blocks = engine_shape(engine_args)
        info = AgentInfo(
            replica_id=config.id,
            model=config.name,
            gpu=config.gpu,
            tier=config.tier.value,
            executor=config.executor.value,
            block_size=block_size,
            num_blocks=num_blocks,
            max_model_len=max_model_len,
            hash_seed=DEFAULT_HASH_SEED,
            version=__version__,
            tokenizer=str(engine_args.get("tokenizer") or config.model),
            served_model_names=(config.model,) if config.served_model_name else (),
        )
        return cls(engine_args, info, snapshot_interval_s=config.snapshot_interval_s)

    @property
    def info(self) -> AgentInfo:
        return self._info

    @property
    def draining(self) -> bool:
        return self._draining

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model and start vLLM (the event loop waits while the weights load)."""
        if self._engine is not None:
            raise RuntimeError("the vLLM engine is already running")
        require_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**self._engine_args), stat_loggers=[stat_logger_factory(self._on_stats)]
        )
        tokenizer = engine.get_tokenizer()  # a coroutine in older vLLM
        if inspect.isawaitable(tokenizer):
            tokenizer = await tokenizer
        self._engine, self._tokenizer = engine, tokenizer
        vllm_config = getattr(engine, "vllm_config", None)
        self._info, self._vocab_size = vs.info_from_vllm_config(self._info, vllm_config, tokenizer)
        policy = getattr(getattr(vllm_config, "scheduler_config", None), "policy", "fcfs")
        self._use_priority = str(policy) == "priority"
        self._ticker = asyncio.create_task(self._tick(), name="vllm-snapshots")
        self._publish()

    async def stop(self, drain_timeout_s: float) -> None:
        self._draining = True
        self._publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, drain_timeout_s))
        for request_id in list(self._streams):
            await self.abort(request_id)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
        self._publish()
        self._hub.close()

    # -- snapshots ---------------------------------------------------------------------------------
    def _on_stats(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        self._stats = vs.fold_stats(self._stats, scheduler_stats, iteration_stats)

    def _snapshot(self) -> ReplicaSnapshot:
        now = self._clock()
        engine_prefill = self._stats.computed_prefill_tokens
        self._samples.append(vs.TokenCounters(now, self._observed_prefill, self._generated, engine_prefill))
        while self._samples[0].time < now - self._window:
            self._samples.popleft()
        admitted, self._admitted = tuple(self._admitted), []
        self._seq += 1
        return vs.snapshot_from_stats(
            self._stats,
            identity=self._identity,
            seq=self._seq,
            now=self._wall_clock(),
            num_gpu_blocks=self._info.num_blocks,
            block_size=self._info.block_size,
            in_flight=[s.record for s in self._streams.values() if not s.done],
            rates=vs.throughput(self._samples, self._window),
            admitted_ids=admitted,
            healthy=self._engine is not None and not getattr(self._engine, "errored", False),
            draining=self._draining,
        )

    def _publish(self) -> None:
        self._hub.publish(self._snapshot())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._publish()

    def latest_snapshot(self) -> ReplicaSnapshot:
        return self._hub.latest

    def watch_snapshots(self, interval_s: float | None = None) -> AsyncIterator[ReplicaSnapshot]:
        return self._hub.watch(interval_s or self._interval)

    # -- generation --------------------------------------------------------------------------------
    def _admit(self, request: GenerateInput) -> Any:
        """The running engine, once ``request`` passes the checks that need no tokenizer."""
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
        if self._engine is None:
            raise DrainingError("the vLLM engine is not running")
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in flight", "request_id")
        return self._engine

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        engine = self._admit(request)
        prompt = vs.prompt_token_ids(request, self._tokenizer, self._vocab_size)
        vs.check_lengths(len(prompt), request.max_tokens, self._info.max_model_len)
        vs.check_sampling(request, self._vocab_size)
        arrived = self._wall_clock()
        stream = RequestStream(len(prompt))
        self._streams[request.request_id] = stream
        self._idle.clear()
        stream.task = asyncio.create_task(self._pump(engine, request, prompt, stream))
        self._admitted.append(request.request_id)
        self._publish()
        finished = False
        try:
            while not finished:
                delta = await stream.next()
                finished, now = delta.finished, self._wall_clock()
                yield GenerateEvent(
                    request.request_id, delta.token_ids, delta.text, now, max(0.0, now - arrived),
                    delta.finished, delta.finish_reason, delta.usage,
                )  # fmt: skip
        finally:
            await self._release(request.request_id, stream, finished)

    async def _pump(
        self, engine: Any, request: GenerateInput, prompt: list[int], stream: RequestStream
    ) -> None:
        """Turn vLLM's cumulative outputs into deltas on ``stream``, whatever its consumer's pace."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra = {"priority": request.priority} if self._use_priority else {}
        position = vs.StreamPosition()
        try:
            params = SamplingParams(**vs.sampling_kwargs(request), output_kind=RequestOutputKind.CUMULATIVE)
            async for raw in engine.generate(
                {"prompt_token_ids": prompt}, params, request.request_id, **extra
            ):
                output = vs.cumulative_from_request_output(raw)
                delta, position = vs.output_delta(position, output, len(prompt))
                stream.record, prefilled, generated = vs.advance(stream.record, output)
                self._observed_prefill += prefilled
                self._generated += generated
                stream.push(delta)
                if delta.finished:
                    self._publish()
                    return
            stream.abort()
        except asyncio.CancelledError:
            raise
        except ValueError as error:  # vLLM's own validation
            stream.fail(InvalidRequestError(str(error)))
        except Exception as error:
            log.exception("vLLM failed on request %s", request.request_id)
            stream.fail(UpstreamError(f"the vLLM engine failed: {error.__class__.__name__}: {error}"))

    async def _release(self, request_id: str, stream: RequestStream, finished: bool) -> None:
        if self._streams.get(request_id) is stream:
            del self._streams[request_id]
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()  # vLLM aborts a request whose generate() is cancelled
        if not finished:
            await self._abort_in_engine(request_id)
        if not self._streams:
            self._idle.set()
        self._publish()

    async def _abort_in_engine(self, request_id: str) -> None:
        if self._engine is None:
            return
        try:
            await self._engine.abort(request_id)
        except Exception:
            log.warning("vLLM could not abort request %s", request_id, exc_info=True)

    async def abort(self, request_id: str) -> bool:
        stream = self._streams.get(request_id)
        if stream is None or not stream.abort():
            return False
        if stream.task is not None:
            stream.task.cancel()
        await self._abort_in_engine(request_id)
        self._publish()
        return True
