"""Real local Mosquitto and Redis processes on free loopback ports.

``gateway demo`` uses this to bring its own brokers, and the integration tests use it to inject
faults into real brokers (kill, SIGSTOP/SIGCONT, restart on the same port) instead of mocking
them. Every server is a child of this Python process and is never left behind: ``stop()``/
``__aexit__`` end it, a finalizer SIGKILLs it at garbage collection or interpreter exit, and on
Linux the kernel SIGKILLs it if this process dies abruptly (``PR_SET_PDEATHSIG``, which fires
when the *thread* that started it exits, so start servers from the event loop's thread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_READY_TIMEOUT = 5.0  # seconds to wait for a started server to listen
_STOP_TIMEOUT = 5.0  # seconds to wait for SIGTERM/SIGKILL to take effect
_POLL = 0.01


class SandboxError(RuntimeError):
    """A sandbox process could not be found, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that the OS reported free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_executable(name: str, package: str) -> str:
    """Return the path of ``name`` (also looking in the sbin dirs), or explain how to install it."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    path = shutil.which(name, path=search)
    if path is None:
        msg = f"{name} not found on PATH: install it with 'apt-get install -y {package}'"
        raise SandboxError(msg)
    return path


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files of a throwaway CA, a server certificate and a client certificate it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


async def _run(*argv: str) -> None:
    """Run a short helper command without blocking the loop; raise SandboxError on failure."""
    sub = asyncio.subprocess
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=sub.DEVNULL, stdout=sub.PIPE, stderr=sub.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        text = out.decode(errors="replace").strip()
        raise SandboxError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {text}")


_LEAF_EXTENSIONS = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage={usage}
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""
_TLS_FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")


def _tls_plan(directory: Path, hosts: Sequence[str]) -> list[list[str]]:
    """Create ``directory`` and the extension files; return the openssl commands to run."""
    ssl = find_executable("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    ca_key, ca_crt = str(directory / "ca.key"), str(directory / "ca.crt")
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_args = ["-subj", "/CN=gateway sandbox CA", "-keyout", ca_key, "-out", ca_crt]
    cmds = [[ssl, "req", "-x509", "-days", "2", *key_args, *ca_args]]
    sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    for role in ("server", "client"):
        key, csr, crt, ext = (str(directory / f"{role}.{s}") for s in ("key", "csr", "crt", "ext"))
        san = f"subjectAltName={sans}\n" if role == "server" and sans else ""
        Path(ext).write_text(_LEAF_EXTENSIONS.format(usage=f"{role}Auth") + san)
        subj = ["-subj", f"/CN=gateway-sandbox-{role}"]
        cmds.append([ssl, "req", "-new", *key_args, *subj, "-keyout", key, "-out", csr])
        sign = ["-CA", ca_crt, "-CAkey", ca_key, "-set_serial", str(secrets.randbits(63))]
        cmds.append([ssl, "x509", "-req", "-days", "2", "-in", csr, *sign, "-extfile", ext])
        cmds[-1] += ["-out", crt]
    return cmds


def _chmod_files(directory: Path, mode: int) -> None:
    for path in directory.iterdir():
        path.chmod(mode)


async def make_tls_material(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")
) -> TlsMaterial:
    """Create a throwaway CA, a server cert (SANs for ``hosts``) and a client cert in ``directory``.

    Uses the ``openssl`` CLI (P-256 keys, valid two days) without blocking the event loop. Every
    file is made world-readable so that a broker which drops privileges can still read it: this
    material is for tests and demos only.
    """
    for cmd in _tls_plan(directory, hosts):
        await _run(*cmd)
    _chmod_files(directory, 0o644)
    return TlsMaterial(*(directory / name for name in _TLS_FILES))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on HOST:port right now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _die_with_parent(argv: list[str]) -> list[str]:
    """Have the kernel SIGKILL the child when we die (util-linux ``setpriv``, if present).

    Done by exec'ing through ``setpriv`` rather than a ``preexec_fn``, which is unsafe
    once gRPC's threads are running.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


class _Slot:
    """The current child, shared with the finalizer (which must not reference the owner)."""

    proc: asyncio.subprocess.Process | None = None


def _finalize(slot: _Slot, owned_workdir: Path | None) -> None:
    proc = slot.proc
    if proc is not None and proc.returncode is None:
        log.warning("killing leftover sandbox process %d", proc.pid)
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
    if owned_workdir is not None:
        shutil.rmtree(owned_workdir, ignore_errors=True)


class _ServerProcess:
    """Lifecycle shared by the servers: one child at a time, always on the same loopback port."""

    name = "server"

    def __init__(self, *, port: int | None, workdir: Path | None) -> None:
        self._port = free_port() if port is None else port
        owned: Path | None = None
        if workdir is None:
            workdir = owned = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            owned.chmod(0o755)
        self._workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._slot = _Slot()
        self._paused = self._closed = False
        self._finalizer = weakref.finalize(self, _finalize, self._slot, owned)

    def _prepare(self) -> list[str]:
        """Write any config files and return the argv to spawn."""
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        """The server's own log file."""
        raise NotImplementedError

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port; stable across restarts."""
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the current child, if one was started."""
        return None if self._slot.proc is None else self._slot.proc.pid

    @property
    def running(self) -> bool:
        """True while the child has not exited (also when paused)."""
        return self._slot.proc is not None and self._slot.proc.returncode is None

    @property
    def paused(self) -> bool:
        """True between pause() and resume()."""
        return self._paused and self.running

    def _tail(self, lines: int = 20) -> str:
        text = []
        for path in (self.log_path, self._workdir / f"{self.name}.out"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text) or "(no output)"

    def _spawn_args(self) -> tuple[list[str], int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return self._prepare(), os.open(self._workdir / f"{self.name}.out", flags, 0o644)

    async def start(self) -> None:
        """Spawn the server and return once it accepts TCP connections (SandboxError otherwise)."""
        if self._closed:
            raise SandboxError(f"{self!r} is closed")
        if self.running:
            raise SandboxError(f"{self!r} is already running")
        if await _accepts(self._port):
            raise SandboxError(f"port {self._port} is already in use")
        argv, out = self._spawn_args()
        try:
            # A new session: a Ctrl-C meant for us must not reach the server directly.
            proc = await asyncio.create_subprocess_exec(
                *_die_with_parent(argv), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                cwd=self._workdir, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(out)
        self._slot.proc, self._paused = proc, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while not await _accepts(self._port):
            if proc.returncode is not None:
                msg = f"{self.name} exited with {proc.returncode} on start"
                raise SandboxError(f"{msg}:\n{self._tail()}")
            if loop.time() > deadline:
                await self.kill()
                msg = f"{self.name} did not listen on port {self._port} in time"
                raise SandboxError(f"{msg}:\n{self._tail()}")
            await asyncio.sleep(_POLL)
        log.info("%s started: pid %d on %s:%d", self.name, proc.pid, HOST, self._port)

    async def _wait_exit(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            raise SandboxError(f"{self.name} pid {proc.pid} did not exit after SIGKILL") from None
        self._paused = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_TIMEOUT
        while await _accepts(self._port):  # the port, not kill -0: a dead child may be a zombie
            if loop.time() > deadline:
                raise SandboxError(f"port {self._port} still accepts after {self.name} exited")
            await asyncio.sleep(_POLL)

    async def kill(self) -> None:
        """SIGKILL the server (a crash), reap it and wait until its port refuses connections."""
        proc = self._slot.proc
        if proc is None:
            return
        if proc.returncode is None:
            log.info("killing %s pid %d", self.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await self._wait_exit(proc)

    async def stop(self) -> None:
        """Stop gracefully: SIGCONT if paused, SIGTERM, then SIGKILL if it outlives a timeout."""
        proc = self._slot.proc
        if proc is None:
            return
        if proc.returncode is None:
            log.info("stopping %s pid %d", self.name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                log.warning("%s pid %d ignored SIGTERM; killing it", self.name, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await self._wait_exit(proc)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._slot.proc
        if proc is None or proc.returncode is not None:
            raise SandboxError(f"{self.name} is not running")
        proc.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered (a hang)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)
        self._paused = False

    async def restart(self) -> None:
        """Start again on the same port; a still running server is stopped first."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop the server and remove the workdir if this object created it; final."""
        try:
            await self.stop()
        finally:
            self._closed = True
            self._finalizer()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self._port} pid={self.pid} running={self.running}>"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _mosquitto_password(user: str, password: str) -> str:
    """One password_file line, as ``mosquitto_passwd`` 2.x writes it (PBKDF2-SHA512, 101 rounds)."""
    if not user or ":" in user or "\n" in user:
        raise ValueError(f"invalid MQTT user name {user!r}")
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class MosquittoProcess(_ServerProcess):
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


class RedisProcess(_ServerProcess):
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
