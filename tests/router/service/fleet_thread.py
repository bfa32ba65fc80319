"""A local fleet (sim agents + router) on a background thread, for tests that drive it with the
openai SDK from the main thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import openai

from router.service.local_fleet import FleetSpec, LocalFleet
from router.service.router import Router

T = TypeVar("T")


class FleetThread:
    def __init__(self, spec: FleetSpec, speedup: float = 20.0, **router_settings: Any) -> None:
        settings = {"http_port": 0, "grpc_port": 0, "health_check_interval_s": 0.5, **router_settings}
        self.fleet = LocalFleet(spec, settings, speedup=speedup)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> FleetThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the fleet did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    async def _main(self) -> None:
        try:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.router: Router = await self.fleet.start()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.fleet.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router.ports.http}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return function()

        return self.run(wrapped())

    def client(self, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=20, **options)

    def engine_requests(self) -> list[int]:
        """Requests currently in each agent's engine."""
        return self.call(lambda: [agent.backend.loop.engine.num_requests for agent in self.fleet.agents])  # type: ignore[attr-defined]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()
