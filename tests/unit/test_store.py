"""Redis URLs and key names of the shared store (no I/O)."""

from __future__ import annotations

import pytest

from gateway.config import RedisConfig
from gateway.errors import ConfigError
from gateway.fleet.store import Keys, connect


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service name is missing"),
        ("redis+sentinel://127.0.0.1/tables", "bad host:port '127.0.0.1'"),
        ("redis+sentinel://:pw@h1:26379,h2/tables", "bad host:port 'h2'"),
    ],
)
def test_bad_sentinel_urls_name_the_problem(url: str, names: str) -> None:
    """A malformed Sentinel URL is a ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=names):
        connect(RedisConfig(url=url))


def test_no_url_is_a_config_error() -> None:
    """Connecting without a URL says so."""
    with pytest.raises(ConfigError, match="no Redis URL"):
        connect(RedisConfig())


def test_keys_are_per_prefix_and_group() -> None:
    """Two groups or two prefixes never share a key."""
    a, b, c = Keys("p", "g1"), Keys("p", "g2"), Keys("q", "g1")
    names = {k.group_hash for k in (a, b, c)} | {k.channel for k in (a, b, c)}
    assert len(names) == 6
    assert a.stats("i1").startswith(a.group_hash) and a.stats("i1") != a.stats("i2")
