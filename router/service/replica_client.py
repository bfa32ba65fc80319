"""How the router talks to one replica (DESIGN.md section 4.6), whatever the transport.

Two transports: fleetroute agents over gRPC (snapshots pushed), and plain OpenAI-compatible servers
such as ``vllm serve`` over HTTP (snapshots built by scraping their Prometheus ``/metrics``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from protos.generation import AgentInfo, GenerateEvent, GenerateInput
from protos.snapshot import ReplicaSnapshot


class ReplicaCallError(Exception):
    """A call to a replica failed. ``retryable`` is true when nothing reached the client yet and
    another replica may well succeed (connection refused, draining, overloaded, timed out before the
    first token); false when the request itself is at fault (the replica answered 4xx /
    INVALID_ARGUMENT), in which case ``status``/``kind`` say what to tell the client."""

    def __init__(
        self, message: str, *, retryable: bool, kind: str = "unavailable", status: int = 503
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.kind = kind
        self.status = status


class ReplicaClient(Protocol):
    @property
    def replica_id(self) -> str: ...

    async def info(self) -> AgentInfo:
        """What the replica serves (model, GPU, block size, KV capacity, max model length, tier)."""
        ...

    def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        """Stream one answer. Raises :class:`ReplicaCallError` (on the first ``__anext__`` for
        refusals and connection failures, later for a stream that breaks). Closing the iterator early
        cancels the call, which aborts the request on the replica."""
        ...

    async def abort(self, request_id: str) -> bool: ...

    def watch_snapshots(self) -> AsyncIterator[ReplicaSnapshot]:
        """Snapshots as they come; raises :class:`ReplicaCallError` when the stream breaks (the
        caller reconnects with backoff)."""
        ...

    async def check_health(self) -> bool:
        """One active health check (gRPC health service, or ``GET /health``)."""
        ...

    async def close(self) -> None: ...


async def one_by_one(
    batches: AsyncGenerator[list[GenerateEvent], None],
) -> AsyncGenerator[GenerateEvent, None]:
    """The events of ``batches`` one at a time; closing this closes ``batches`` too."""
    try:
        async for batch in batches:
            for event in batch:
                yield event
    finally:
        await batches.aclose()
