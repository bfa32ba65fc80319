"""The whole agent process: a backend, its gRPC and HTTP front doors, metrics, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from replica_agent.config import AgentConfig
from replica_agent.factory import build_backend
from replica_agent.service.backend import Backend
from replica_agent.service.grpc_server import GrpcFrontDoor
from replica_agent.service.http_app import build_http_app, start_http_server
from replica_agent.service.metrics import AgentMetrics
from replica_agent.service.registration import Registrar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundPorts:
    grpc: int
    http: int


class Agent:
    def __init__(self, config: AgentConfig, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend if backend is not None else build_backend(config)
        self._http_runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self.grpc: GrpcFrontDoor | None = None
        self.registrar: Registrar | None = None
        self.ports = BoundPorts(0, 0)

    async def start(self) -> BoundPorts:
        await self.backend.start()
        # Built after start: remote and vLLM backends learn their model and KV shape while starting.
        self.metrics = AgentMetrics(self.backend.info, self.backend.latest_snapshot)
        self.grpc = GrpcFrontDoor(self.backend, self.metrics)
        try:
            grpc_port = await self.grpc.start(self.config.host, self.config.grpc_port)
            app = build_http_app(self.backend, self.metrics)
            self._http_runner, http_port = await start_http_server(
                app, self.config.host, self.config.http_port
            )
        except BaseException:
            await self.backend.stop(0.0)
            await self.grpc.stop(0.0)
            raise
        self.ports = BoundPorts(grpc_port, http_port)
        if self.config.register_with:
            self.registrar = Registrar(
                list(self.config.register_with),
                self.config.replica_id or f"{self.config.gpu}-{grpc_port}",
                self.config.advertise_address or f"{self.config.host}:{grpc_port}",
                self.config.router_key,
            )
            self.registrar.start()
        return self.ports

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop admitting (health turns NOT_SERVING, snapshots say draining), let in-flight requests
        finish for up to the drain timeout, abort the rest, then close both front doors."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.grpc is None:
            await self.backend.stop(0.0)
            return
        timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self.registrar is not None:
            await self.registrar.stop()  # routers stop sending before the drain begins
        await self.grpc.set_serving(False)
        await self.backend.stop(timeout)
        await self.grpc.stop(grace_s=1.0)
        if self._http_runner is not None:
            await self._http_runner.cleanup()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        log.info("signal received: draining for up to %.0f s", self.config.drain_timeout_s)
        await self.stop()
