"""The pieces of the vLLM backend that do not drive the engine: finding vLLM (one clear line when it
is missing), the stat-logger hook that feeds snapshots, the engine's KV shape, and one request's
output stream between vLLM's generator and its consumer.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

from replica_agent.backends import vllm_stats as vs
from replica_agent.config import ConfigError
from replica_agent.service.backend import AgentError, Usage

INSTALL_HINT = "pip install 'fleetroute[vllm]' on a GPU node with CUDA"


class VllmUnavailableError(RuntimeError):
    """vLLM is missing, broken or too old; the message says what to install."""


def vllm_available() -> bool:
    """Whether vLLM is installed (found without importing it, which is slow)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def require_vllm() -> None:
    installed = vllm_available()
    try:
        import vllm
    except ImportError as error:
        if installed:
            raise VllmUnavailableError(
                f"vLLM is installed but does not import ({error}); {INSTALL_HINT}"
            ) from None
        raise VllmUnavailableError(
            f"the vllm executor needs vLLM, which is not installed: {INSTALL_HINT}"
        ) from None
    if importlib.util.find_spec("vllm.v1.engine.async_llm") is None:
        version = getattr(vllm, "__version__", "?")
        raise VllmUnavailableError(f"vLLM {version} has no V1 engine (0.8 or newer needed): {INSTALL_HINT}")


def stat_logger_factory(sink: Callable[[Any, Any], None]) -> Callable[..., Any]:
    """A ``StatLoggerFactory`` whose loggers hand each ``record`` call's stats to ``sink``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SnapshotStatLogger(StatLoggerBase):  # type: ignore[misc, unused-ignore]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        # Newer vLLM passes more (mm_cache_stats, engine_idx), positionally or by keyword.
        def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
            sink(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    def make(vllm_config: Any, engine_index: int = 0) -> Any:
        return SnapshotStatLogger(vllm_config, engine_index)

    return make


def engine_shape(engine_args: Mapping[str, Any]) -> tuple[int, int, int]:
    """(block size, max model length, KV blocks or 0 until profiled) as vLLM resolves the settings."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    try:
        config = AsyncEngineArgs(**engine_args).create_engine_config()
    except TypeError as error:
        raise ConfigError(f"vllm engine settings: {error}") from None
    except (ValueError, OSError) as error:
        raise ConfigError(f"vllm: {error}") from None
    cache, model = config.cache_config, config.model_config
    return int(cache.block_size or 16), int(model.max_model_len), int(cache.num_gpu_blocks_override or 0)


class RequestStream:
    """One request's output, from the task reading vLLM to the consumer; a slow consumer gets all
    that arrived since it last read as one delta."""

    def __init__(self, prompt_tokens: int) -> None:
        self.record = vs.InFlightRequest(prompt_tokens)
        self.task: asyncio.Task[None] | None = None
        self._tokens: list[int] = []
        self._text: list[str] = []
        self._final: vs.OutputDelta | None = None
        self._error: AgentError | None = None
        self._ready = asyncio.Event()

    @property
    def done(self) -> bool:
        return self._final is not None or self._error is not None

    def push(self, delta: vs.OutputDelta) -> None:
        if self.done:
            return
        self._tokens.extend(delta.token_ids)
        self._text.append(delta.text)
        self._final = delta if delta.finished else None
        self._ready.set()

    def fail(self, error: AgentError) -> None:
        if not self.done:
            self._error = error
            self._ready.set()

    def abort(self) -> bool:
        """End the stream with finish reason "abort"; False if it had already ended."""
        if self.done:
            return False
        record = self.record
        usage = Usage(record.prompt_tokens, record.output_tokens, record.cached_tokens)
        self.push(vs.OutputDelta((), "", True, "abort", usage))
        return True

    async def next(self) -> vs.OutputDelta:
        while not (self._tokens or any(self._text) or self.done):
            self._ready.clear()
            await self._ready.wait()
        tokens, text = tuple(self._tokens), "".join(self._text)
        self._tokens.clear()
        self._text.clear()
        if self._error is not None and not tokens and not text:
            raise self._error
        final = self._final
        if final is None or self._error is not None:
            return vs.OutputDelta(tokens, text)
        return vs.OutputDelta(tokens, text, True, final.finish_reason, final.usage)
