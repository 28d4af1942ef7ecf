"""Fixtures: real mosquitto processes on free loopback ports, killed by the tests at will."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.devtools.sandbox import MosquittoProcess


@pytest.fixture
async def broker() -> AsyncIterator[MosquittoProcess]:
    async with MosquittoProcess() as b:
        yield b


@pytest.fixture
async def two_brokers() -> AsyncIterator[list[MosquittoProcess]]:
    async with MosquittoProcess() as b1, MosquittoProcess() as b2:
        yield [b1, b2]
