"""The two servers a sandbox runs: a ``mosquitto`` broker and a ``redis-server``.

Each writes its own config (mosquitto: a config file with listener, optional password file
and TLS; redis: command-line options) into its workdir before every start, listens on
127.0.0.1 only, keeps nothing across restarts and logs to a file in its workdir, whose tail
is shown when it fails to start. The lifecycle is :class:`ServerProcess`'s.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from gateway.devtools.sandbox.certificates import TlsMaterial
from gateway.devtools.sandbox.process import HOST, ServerProcess, find_executable


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _mosquitto_password(user: str, password: str) -> str:
    """One password_file line, as ``mosquitto_passwd`` 2.x writes it (PBKDF2-SHA512, 101 rounds)."""
    if not user or ":" in user or "\n" in user:
        raise ValueError(f"invalid MQTT user name {user!r}")
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class MosquittoProcess(ServerProcess):
    """A private ``mosquitto`` broker on 127.0.0.1 with its own config, optional auth and TLS."""

    name = "mosquitto"

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        tcp_nodelay: bool = True,
        users: Mapping[str, str] | None = None,
        tls: TlsMaterial | None = None,
        require_client_cert: bool = False,
    ) -> None:
        if require_client_cert and tls is None:
            raise ValueError("require_client_cert needs tls material")
        self._exe = find_executable("mosquitto", "mosquitto")
        self._tcp_nodelay, self._users, self._tls = tcp_nodelay, dict(users or {}), tls
        self._require_client_cert = require_client_cert
        super().__init__(port=port, workdir=workdir)

    @property
    def log_path(self) -> Path:
        """Mosquitto's log file."""
        return self._workdir / "mosquitto.log"

    def _prepare(self) -> list[str]:
        lines = ["user root", "persistence false", f"log_dest file {self.log_path}", "log_type all"]
        lines += [f"set_tcp_nodelay {_bool(self._tcp_nodelay)}", f"listener {self._port} {HOST}"]
        if self._users:
            passwd = self._workdir / "passwd"
            passwd.write_text("".join(_mosquitto_password(u, p) for u, p in self._users.items()))
            passwd.chmod(0o644)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self._tls is not None:
            tls = self._tls
            lines += [f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}"]
            lines += [f"keyfile {tls.server_key}"]
            lines += [f"require_certificate {_bool(self._require_client_cert)}"]
        conf = self._workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o644)
        return [self._exe, "-c", str(conf)]


class RedisProcess(ServerProcess):
    """A private, non-persistent ``redis-server`` on 127.0.0.1, optionally password protected."""

    name = "redis"

    def __init__(
        self, *, port: int | None = None, workdir: Path | None = None, password: str | None = None
    ) -> None:
        self._exe = find_executable("redis-server", "redis-server")
        self._password = password
        super().__init__(port=port, workdir=workdir)

    @property
    def log_path(self) -> Path:
        """Redis' log file."""
        return self._workdir / "redis.log"

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0`` for ``redis.asyncio.from_url``."""
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        return f"redis://{auth}{HOST}:{self._port}/0"

    def _prepare(self) -> list[str]:
        argv = [self._exe, "--port", str(self._port), "--bind", HOST, "--daemonize", "no"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
        argv += ["--logfile", str(self.log_path)]
        if self._password is not None:
            argv += ["--requirepass", self._password]
        return argv
