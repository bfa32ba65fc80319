"""Running a command's asyncio entry point: on uvloop when it is installed, else on asyncio's loop.

``FLEETROUTE_EVENT_LOOP=asyncio`` in the environment keeps asyncio's own loop even with uvloop
installed (for debugging, or to compare the two).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_VARIABLE = "FLEETROUTE_EVENT_LOOP"


def run(main: Coroutine[Any, Any, T]) -> T:
    choice = os.environ.get(EVENT_LOOP_VARIABLE, "auto")
    if choice not in ("auto", "asyncio", "uvloop"):
        main.close()
        raise ValueError(f"{EVENT_LOOP_VARIABLE} must be auto, asyncio or uvloop, got {choice!r}")
    if choice == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            main.close()
            raise RuntimeError(f"{EVENT_LOOP_VARIABLE}=uvloop but uvloop is not installed") from None
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
