"""One local server process: start it on a loopback port, crash, hang, stop or restart it.

:class:`ServerProcess` is the lifecycle the sandbox's servers share. It keeps one child at a
time on a port that stays the same across restarts, so a client configured once can be
disconnected and reconnected by the test. ``start()`` returns only once the port accepts
connections; ``kill()`` (a crash) and ``stop()`` return only once it refuses them again;
``pause()``/``resume()`` SIGSTOP/SIGCONT it (a hang with the connections left open). The
child never outlives this process: ``close()`` ends it, a finalizer SIGKILLs it at garbage
collection or interpreter exit, and on Linux the kernel SIGKILLs it if we die abruptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Self

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


class ServerProcess:
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
