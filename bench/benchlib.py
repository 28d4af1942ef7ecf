"""What the benches share: a description of the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Cores, Python, CPU model and load: printed next to every measurement."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    nproc, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    return {"nproc": nproc, "python": platform.python_version(), "cpu": cpu, "load_1m": load}
