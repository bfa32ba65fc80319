"""The replicas a router knows: one client per replica, its snapshot watch, its health checks.

Membership comes from the fleet YAML at start, and from the admin API (add, drain, remove) later.
A replica's snapshot stream that breaks is reopened with capped exponential backoff; meanwhile its
snapshots age, and the cluster state penalises, then ejects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos.generation import AgentInfo
from router.config import ReplicaConfig, RouterConfig
from router.service.agent_client import AgentClient
from router.service.replica_client import ReplicaCallError, ReplicaClient
from router.state.cluster import ClusterState
from router.state.replica import ReplicaDescriptor

log = logging.getLogger(__name__)

WATCH_BACKOFF_S = (0.05, 2.0)


@dataclass
class _Member:
    config: ReplicaConfig
    client: ReplicaClient
    descriptor: ReplicaDescriptor
    watch: asyncio.Task[None] | None = None


class Fleet:
    def __init__(
        self, cluster: ClusterState, config: RouterConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cluster = cluster
        self.config = config
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self.clients: dict[str, ReplicaClient] = {}
        self._health_task: asyncio.Task[None] | None = None

    def start_health_checks(self) -> None:
        if self._health_task is None:
            self._health_task = asyncio.create_task(self._check_health(), name="health-checks")

    def descriptors(self) -> list[ReplicaDescriptor]:
        return [member.descriptor for member in self._members.values()]

    def _client(self, replica: ReplicaConfig) -> ReplicaClient:
        timeouts = self.config.timeouts
        if replica.transport == "agent":
            return AgentClient(
                replica.replica_id,
                replica.address,
                connect_timeout_s=timeouts.connect_s,
                first_token_timeout_s=timeouts.first_token_s,
                idle_timeout_s=timeouts.idle_s,
            )
        from router.service.http_client import HttpReplicaClient

        return HttpReplicaClient(
            replica.replica_id,
            replica.address,
            model=replica.model,
            api_key=replica.api_key,
            scrape_interval_s=self.config.scrape_interval_s,
            gpu=replica.gpu or "unknown",
            tier=(replica.tier.value if replica.tier else "cloud"),
            connect_timeout_s=timeouts.connect_s,
            first_token_timeout_s=timeouts.first_token_s,
            idle_timeout_s=timeouts.idle_s,
        )

    async def add(self, replica: ReplicaConfig) -> ReplicaDescriptor:
        """Connect to ``replica``, learn what it serves and start watching its load.

        Raises :class:`ReplicaCallError` when it cannot be reached or does not describe itself."""
        replica_id = replica.replica_id
        if replica_id in self._members:
            raise ValueError(f"replica {replica_id!r} is already in the fleet")
        client = self._client(replica)
        try:
            info = await asyncio.wait_for(client.info(), timeout=self.config.timeouts.connect_s * 2)
        except (ReplicaCallError, TimeoutError, OSError) as error:
            await client.close()
            raise ReplicaCallError(
                f"replica {replica_id} at {replica.address}: {error}", retryable=True
            ) from None
        descriptor = _describe(replica, info)
        self.cluster.register(descriptor, self._clock())
        member = _Member(replica, client, descriptor)
        member.watch = asyncio.create_task(self._watch(member), name=f"watch-{replica_id}")
        self._members[replica_id] = member
        self.clients[replica_id] = client
        log.info(
            "replica %s joined: %s on %s, %s", replica_id, descriptor.model, descriptor.gpu, replica.address
        )
        return descriptor

    def drain(self, replica_id: str, draining: bool = True) -> None:
        if replica_id not in self._members:
            raise KeyError(replica_id)
        self.cluster.set_draining(replica_id, draining)

    async def remove(self, replica_id: str) -> bool:
        member = self._members.pop(replica_id, None)
        if member is None:
            return False
        self.clients.pop(replica_id, None)
        self.cluster.remove(replica_id)
        await _stop(member.watch)
        await member.client.close()
        return True

    async def close(self) -> None:
        await _stop(self._health_task)
        for replica_id in list(self._members):
            await self.remove(replica_id)

    async def _watch(self, member: _Member) -> None:
        backoff = WATCH_BACKOFF_S[0]
        replica_id = member.descriptor.replica_id
        while True:
            try:
                async for snapshot in member.client.watch_snapshots():
                    if snapshot.replica_id != replica_id:  # the fleet's name for it wins
                        snapshot = dataclasses.replace(snapshot, replica_id=replica_id)
                    self.cluster.apply_snapshot(snapshot, self._clock())
                    backoff = WATCH_BACKOFF_S[0]
            except ReplicaCallError as error:
                log.warning(
                    "replica %s: snapshot stream broke (%s); retrying in %.2f s", replica_id, error, backoff
                )
            except Exception:
                log.exception("replica %s: snapshot stream failed", replica_id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_S[1])

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_check_interval_s)
            for replica_id, member in list(self._members.items()):
                try:
                    ok = await asyncio.wait_for(member.client.check_health(), self.config.timeouts.connect_s)
                except (ReplicaCallError, TimeoutError, OSError):
                    ok = False
                self.cluster.record_check(replica_id, ok, self._clock())


def _describe(replica: ReplicaConfig, info: AgentInfo) -> ReplicaDescriptor:
    return ReplicaDescriptor(
        replica_id=replica.replica_id,
        model=replica.model or info.model,
        gpu=replica.gpu or info.gpu or "unknown",
        tier=(replica.tier.value if replica.tier else info.tier) or "cloud",
        address=replica.address,
        transport=replica.transport,
        max_model_len=replica.max_model_len or info.max_model_len,
        block_size=info.block_size or 16,
        model_profile=replica.model_profile or "",
    )


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
