"""What the benches share: a description of the machine they ran on."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Cores, Python, CPU model and load: printed next to every measurement."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    nproc, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    return {"nproc": nproc, "python": platform.python_version(), "cpu": cpu, "load_1m": load}


def run_bounded(
    measure: Callable[[], Awaitable[dict[str, Any]]],
    limit_s: float,
    failures: tuple[type[BaseException], ...] = (RuntimeError,),
) -> dict[str, Any] | int:
    """Run a bench's measurement within ``limit_s``; Ctrl-C and SIGTERM stop it cleanly.

    Returns the result, or an exit code: 130 when interrupted, 2 when the bench itself
    failed (one of ``failures``: a wrong answer, a service that would not start...).
    """

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(limit_s):
            return await measure()

    try:
        return asyncio.run(bounded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except failures as exc:
        print(f"bench failed: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


def finish(
    result: dict[str, Any] | int,
    *,
    as_json: bool,
    report: Callable[[dict[str, Any]], None],
    passed: Callable[[dict[str, Any]], bool],
) -> int:
    """Print a bench's result (JSON or its report) and give its exit status: 0 if every
    target was met, 1 if not; ``run_bounded``'s exit code as it is."""
    if isinstance(result, int):
        return result
    if as_json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if passed(result) else 1
