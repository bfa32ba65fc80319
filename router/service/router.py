"""The router process: fleet membership, the dispatcher, the front doors, in one object."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from predictors.base import OutputLengthPredictor
from predictors.drift import SourceSwitch
from predictors.guarded import GuardedPredictor, guard_learned
from predictors.running_average import RunningAveragePredictor
from protos.text import Tokenizer, load_tokenizer
from router.config import PredictorConfig, ReplicaConfig, RouterConfig, RouterConfigError
from router.policy.config import profile_from_yaml
from router.policy.profile import Profile
from router.policy.registry import build_policy
from router.request_shaper import RequestShaper, default_tokenizer
from router.service.dispatch import Dispatcher, DispatchSettings
from router.service.fleet import Fleet
from router.service.replica_client import ReplicaCallError
from router.service.router_metrics import RouterMetrics
from router.state.cluster import ClusterState

if TYPE_CHECKING:
    from router.service.grpc_server import RouterGrpcServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterPorts:
    http: int
    grpc: int


def load_policy(config: RouterConfig) -> Profile:
    try:
        if config.policy_file is not None:
            return profile_from_yaml(config.policy_file.read_text())
        return build_policy(config.policy, config.policy_params or None)
    except OSError as error:
        raise RouterConfigError(f"cannot read {config.policy_file}: {error.strerror}") from None
    except ValueError as error:
        raise RouterConfigError(f"policy: {error}") from None


def load_tokenizers(config: RouterConfig) -> dict[str, Tokenizer]:
    """The configured tokenizer of each model; a file that is missing or unreadable is a config error."""
    tokenizers: dict[str, Tokenizer] = {}
    for model, path in config.tokenizers.items():
        try:
            tokenizers[model] = load_tokenizer(path, vocab_size=default_tokenizer(model).vocab_size)
        except ValueError as error:  # no such file
            raise RouterConfigError(f"tokenizers.{model}: {error}") from None
        except Exception as error:  # the tokenizers library raises bare Exception for a malformed file
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            message = f"tokenizers.{model}: {path} is not a usable tokenizer.json: {reason}"
            raise RouterConfigError(message) from None
    return tokenizers


def load_length_predictor(config: PredictorConfig) -> OutputLengthPredictor:
    """The running average, or the saved model under online correction and a drift guard; a model
    directory that cannot be loaded is a config error."""
    if config.model_dir is None:
        return RunningAveragePredictor()
    # Imported only when a model is configured: the learned models pull in scikit-learn.
    from predictors.saved import PredictorLoadError, load_predictor

    try:
        learned = load_predictor(config.model_dir)
    except PredictorLoadError as error:
        raise RouterConfigError(f"predictor.model_dir: {error}") from None
    log.info("output-length predictor: the model in %s", config.model_dir)
    return guard_learned(learned, config.online_correction.settings(), config.drift.settings(), _log_switch)


def _log_switch(switch: SourceSwitch) -> None:
    log.warning(
        "output-length predictor switched from %s to %s: %s",
        switch.previous, switch.state.source, switch.reason,
    )  # fmt: skip


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.cluster = ClusterState()
        self.fleet = Fleet(self.cluster, config)
        self.policy = load_policy(config)
        self.predictor = load_length_predictor(config.predictor)
        guarded = self.predictor if isinstance(self.predictor, GuardedPredictor) else None
        self.metrics = RouterMetrics(
            view=lambda: self.cluster.view(time.monotonic()),
            predictor=None if guarded is None else (lambda: guarded.state),
        )
        self.shaper = RequestShaper(load_tokenizers(config))
        admission = config.admission
        self.dispatcher = Dispatcher(
            self.cluster,
            self.fleet.clients,
            self.policy,
            self.shaper,
            self.metrics,
            predictor=self.predictor,
            settings=DispatchSettings(
                max_attempts=admission.max_attempts,
                retry_backoff_s=admission.retry_backoff_s,
                max_queue_per_replica=admission.max_queue_per_replica,
                max_kv_usage=admission.max_kv_usage,
                retry_after_s=admission.retry_after_s,
            ),
            rng=random.Random(config.seed),
        )
        self._http_runner: web.AppRunner | None = None
        self._grpc_server: RouterGrpcServer | None = None
        self._pending: list[asyncio.Task[None]] = []
        self.ports = RouterPorts(0, 0)

    # -- membership ---------------------------------------------------------------------------
    async def add_replica(self, replica: ReplicaConfig) -> None:
        await self.fleet.add(replica)

    async def _join_with_retries(self, replica: ReplicaConfig) -> None:
        """A configured replica that is not up yet is retried in the background, not fatal."""
        delay = 0.2
        while True:
            try:
                await self.fleet.add(replica)
                return
            except ReplicaCallError as error:
                log.warning("%s; retrying in %.1f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def models(self) -> dict[str, int]:
        """Served model names with the smallest max model length among their replicas (0: unknown)."""
        lengths: dict[str, int] = {}
        for descriptor in self.fleet.descriptors():
            known = lengths.get(descriptor.model)
            length = descriptor.max_model_len
            lengths[descriptor.model] = length if known is None or (length and length < known) else known
        return lengths

    def ready(self) -> bool:
        view = self.cluster.view(time.monotonic())
        return any(r.healthy and not r.draining and not r.circuit_open for r in view.replicas)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, join_timeout_s: float = 10.0) -> RouterPorts:
        from replica_agent.service.http_app import start_http_server
        from router.service.http_app import build_router_app

        joins = [asyncio.create_task(self._join_with_retries(r)) for r in self.config.replicas]
        if joins:
            await asyncio.wait(joins, timeout=join_timeout_s)
        self._pending = [task for task in joins if not task.done()]
        await self._first_snapshots(timeout_s=2.0)
        self.fleet.start_health_checks()
        app = build_router_app(self)
        self._http_runner, http_port = await start_http_server(app, self.config.host, self.config.http_port)
        grpc_port = await self._start_grpc()
        self.ports = RouterPorts(http_port, grpc_port)
        return self.ports

    async def _first_snapshots(self, timeout_s: float) -> None:
        """Wait (bounded) until every joined replica reported its load once, so the first decisions
        see real capacities rather than replicas of unknown size."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ids = [d.replica_id for d in self.fleet.descriptors()]
            if all(self.cluster.snapshot(replica_id) is not None for replica_id in ids):
                return
            await asyncio.sleep(0.01)

    async def _start_grpc(self) -> int:
        from router.service.grpc_server import RouterGrpcServer

        server = RouterGrpcServer(self)
        self._grpc_server = server
        return await server.start(self.config.host, self.config.grpc_port)

    async def stop(self) -> None:
        for task in self._pending:
            task.cancel()
        if self._grpc_server is not None:
            await self._grpc_server.stop(1.0)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        await self.fleet.close()
