"""The shared store: a Redis connection built from config, and the names of our keys.

URLs: ``redis://`` and ``rediss://`` (TLS, AUTH in the URL), ``unix://``, and
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` (or
``rediss+sentinel://``) for a Sentinel-managed master, which follows Redis failovers.
Timeouts are short and redis-py's own retries are off: the election notices an
unreachable store in well under a second and degrades instead of stalling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from gateway.config import RedisConfig
from gateway.errors import ConfigError

if TYPE_CHECKING:
    import redis.asyncio as redis

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
        return redis.from_url(url, **options)
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
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        hosts,
        sentinel_kwargs={"password": password, "socket_timeout": SOCKET_TIMEOUT_S},
        password=password,
        db=db,
        ssl=scheme.startswith("rediss"),
        **options,
    )
    master: redis.Redis = sentinel.master_for(path[0])
    return master


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
