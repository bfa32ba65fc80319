"""Commands run their asyncio entry point on uvloop when it is installed, on asyncio's loop otherwise."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Coroutine
from typing import Any

import pytest

from fleetroute import runtime


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_without_uvloop_asyncio_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    assert runtime.run(loop_module()).startswith("asyncio.")


def test_with_uvloop_importable_uvloop_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def uvloop_run(main: Coroutine[Any, Any, str]) -> str:
        ran.append("uvloop.run")
        return asyncio.run(main)

    fake_uvloop = types.ModuleType("uvloop")
    fake_uvloop.run = uvloop_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", fake_uvloop)
    assert runtime.run(loop_module()) and ran == ["uvloop.run"]


def test_the_real_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert runtime.run(loop_module()).startswith("uvloop")


def test_the_environment_can_keep_asyncio_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.setenv(runtime.EVENT_LOOP_VARIABLE, "asyncio")
    assert runtime.run(loop_module()).startswith("asyncio.")


def test_a_bad_event_loop_choice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.EVENT_LOOP_VARIABLE, "tokio")
    with pytest.raises(ValueError, match="auto, asyncio or uvloop"):
        runtime.run(loop_module())
