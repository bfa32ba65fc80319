"""What the agent's front doors (gRPC, HTTP) need from whatever generates: the ``Backend`` contract.

Backends: the built-in engine driven in real time (``sim`` and ``torch`` executors), vLLM in-process,
and a remote OpenAI-compatible server. The front doors translate wire formats to these types and back
and hold no generation logic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from protos.generation import (
    AgentError as AgentError,
)
from protos.generation import (
    AgentInfo as AgentInfo,
)
from protos.generation import (
    DrainingError as DrainingError,
)
from protos.generation import (
    GenerateEvent as GenerateEvent,
)
from protos.generation import (
    GenerateInput as GenerateInput,
)
from protos.generation import (
    InvalidRequestError as InvalidRequestError,
)
from protos.generation import (
    ModelNotFoundError as ModelNotFoundError,
)
from protos.generation import (
    UpstreamError as UpstreamError,
)
from protos.generation import (
    Usage as Usage,
)
from protos.snapshot import ReplicaSnapshot


async def close_stream(events: AsyncIterator[object]) -> None:
    """Close an event stream early (an async generator's ``aclose``), which aborts its request."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class Backend(Protocol):
    @property
    def info(self) -> AgentInfo: ...

    @property
    def draining(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop admitting, let in-flight requests finish for up to ``drain_timeout_s``, then abort."""
        ...

    def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        """Validate, admit and stream one request.

        Raises :class:`AgentError` on the first ``__anext__`` for a request that is refused, before
        the engine is touched. Closing the iterator early (a consumer that goes away) aborts the
        request and frees its blocks.
        """
        ...

    async def abort(self, request_id: str) -> bool: ...

    def latest_snapshot(self) -> ReplicaSnapshot: ...

    def watch_snapshots(self, interval_s: float | None = None) -> AsyncIterator[ReplicaSnapshot]:
        """Every new snapshot, coalesced: a slow watcher sees the latest, never a backlog."""
        ...
