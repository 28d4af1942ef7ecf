"""The shared store: a Redis connection built from config, and the names of our keys.

URLs: ``redis://`` and ``rediss://`` (TLS, AUTH in the URL), ``unix://``, and
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` (or
``rediss+sentinel://``: TLS to the Sentinels and to the master) for a Sentinel-managed
master, which follows Redis failovers. A ``rediss+sentinel://`` URL takes the TLS query
options of a ``rediss://`` one (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``ssl_check_hostname``), for both the Sentinels and the master.
Timeouts are short and redis-py's own retries are off: the election notices an
unreachable store in well under a second and degrades instead of stalling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from gateway.config import RedisConfig
from gateway.errors import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as redis
    from redis.asyncio.sentinel import SentinelConnectionPool

SOCKET_TIMEOUT_S = 0.5
RECORD_FIELD = "record"  # in Keys.group_hash
VIEW_PREFIX = "view:"  # in Keys.group_hash, followed by the instance id


def connect(config: RedisConfig) -> redis.Redis:
    """A client (connection pool) for the configured store; connects lazily."""
    # Imported here: redis-py costs ~9 MB, and most sidecars without Redis never need it.
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    url = config.url
    if url is None:
        raise ConfigError("no Redis URL configured")
    options: dict[str, object] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "decode_responses": True,
        # Values are read as text; bytes that are not UTF-8 (anyone can write the keys)
        # become U+FFFD instead of an exception inside redis-py's reply parser.
        "encoding_errors": "replace",
    }
    scheme = url.split("://", 1)[0]
    if not scheme.endswith("+sentinel"):
        # One immediate retry, on a connection error only: a pooled connection that a
        # restarted Redis closed is replaced at once instead of failing the command (and
        # the election calling the store unreachable until its next refresh). A timeout
        # (a paused Redis) is not retried: it costs one socket timeout, never two. Not
        # through Sentinel, where "no master found" is a connection error too and a
        # retry would only repeat the discovery.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        return redis.from_url(url, **{**options, "retry": retry})
    plan = sentinel_plan(url)
    # Any: redis-py before 8.2 leaves Sentinel unannotated, 8.2 types each keyword.
    make_sentinel: Any = Sentinel
    sentinel = make_sentinel(
        plan.hosts, sentinel_kwargs=plan.sentinel_kwargs, **plan.master_kwargs, **options
    )
    master: redis.Redis = sentinel.master_for(
        plan.service, connection_pool_class=_closing_sentinel_pool()
    )
    return master


@functools.cache
def _closing_sentinel_pool() -> type[SentinelConnectionPool]:
    """The master's pool class, which closes the Sentinel clients too: the caller holds
    only the master's client, and its ``aclose()`` must free every socket it opened."""
    from redis.asyncio.sentinel import SentinelConnectionPool

    class ClosingSentinelPool(SentinelConnectionPool):
        """A Sentinel-managed master's pool that closes its Sentinels with itself."""

        async def aclose(self) -> None:
            """Close the master's connections, then the Sentinels' clients."""
            try:
                await super().aclose()
            finally:
                await self.sentinel_manager.aclose()

    return ClosingSentinelPool


@dataclass(frozen=True)
class SentinelPlan:
    """What a Sentinel URL asks for: where the Sentinels are, the master's service name,
    and the connection options for the Sentinels and for the master."""

    hosts: list[tuple[str, int]]
    service: str
    sentinel_kwargs: dict[str, object] = field(repr=False)
    master_kwargs: dict[str, object] = field(repr=False)


def sentinel_plan(url: str) -> SentinelPlan:
    """How ``connect`` reaches a ``redis+sentinel://`` or ``rediss+sentinel://`` master.

    With ``rediss+sentinel`` both the Sentinels and the master are spoken to over TLS
    (redis-py's Sentinel would otherwise ask the Sentinels in plaintext, the password
    included). Messages never show the password.
    """
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Redis Sentinel URL: bad host:port {item!r}")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError("Redis Sentinel URL: the master's service name is missing")
    db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    tls: dict[str, object] = {}
    if parts.scheme.startswith("rediss"):
        tls = {"ssl": True, **_tls_options(parse_qsl(parts.query))}
    sentinels = {"password": password, "socket_timeout": SOCKET_TIMEOUT_S,
                 "socket_connect_timeout": SOCKET_TIMEOUT_S, **tls}  # fmt: skip
    return SentinelPlan(hosts, path[0], sentinels, {"password": password, "db": db, **tls})


_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _tls_options(query: list[tuple[str, str]]) -> dict[str, object]:
    """The TLS options a ``rediss://`` URL may carry in its query, as redis-py's names."""
    out: dict[str, object] = {}
    for key, value in query:
        if key in _TLS_FILES:
            out[key] = value
        elif key == "ssl_cert_reqs":
            if value not in ("none", "optional", "required"):
                raise ConfigError("Redis Sentinel URL: ssl_cert_reqs is none, optional or required")
            out[key] = value
        elif key == "ssl_check_hostname":
            if value.lower() not in _BOOLS:
                raise ConfigError("Redis Sentinel URL: ssl_check_hostname is true or false")
            out[key] = _BOOLS[value.lower()]
    return out


@dataclass(frozen=True)
class Keys:
    """Every key and channel of one broker group, under the configured prefix."""

    prefix: str
    group: str

    @property
    def _base(self) -> str:
        return f"{self.prefix}:group:{self.group}"

    @property
    def group_hash(self) -> str:
        """Hash of the group: field ``record`` (the active broker, epoch, who decided, when,
        why; JSON) and one field ``view:<instance>`` per sidecar (its view of the brokers).
        One HGETALL reads the whole shared state, whatever the number of sidecars."""
        return self._base

    @property
    def channel(self) -> str:
        """Pub/sub channel announcing every new record (the message is its epoch)."""
        return f"{self._base}:changed"

    def stats(self, instance_id: str) -> str:
        """Hash with a TTL: one sidecar's counters."""
        return f"{self._base}:stats:{instance_id}"

    @property
    def stats_pattern(self) -> str:
        """The SCAN pattern matching every statistics key of the group."""
        return f"{self._base}:stats:*"
