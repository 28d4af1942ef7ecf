"""Collection rules for the whole suite."""

from __future__ import annotations

import inspect
from typing import Any

import pytest


def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Any:
    """A product function imported into a test module is not a test, whatever its name.

    ``gateway.compat.test_broker_connection`` keeps the predecessor's name, which pytest
    would otherwise collect from any test module that imports it.
    """
    if inspect.isfunction(obj) and (obj.__module__ or "").startswith("gateway."):
        return []
    return None
