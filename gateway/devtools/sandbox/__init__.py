"""Real local Mosquitto and Redis processes on free loopback ports.

``gateway demo`` uses this to bring its own brokers, and the integration tests use it to inject
faults into real brokers (kill, SIGSTOP/SIGCONT, restart on the same port) instead of mocking
them. Every server is a child of this Python process and is never left behind: ``stop()``/
``__aexit__`` end it, a finalizer SIGKILLs it at garbage collection or interpreter exit, and on
Linux the kernel SIGKILLs it if this process dies abruptly (``PR_SET_PDEATHSIG``, which fires
when the *thread* that started it exits, so start servers from the event loop's thread).

The modules, by job: :mod:`~gateway.devtools.sandbox.process` (one child process's lifecycle,
free ports, finding executables), :mod:`~gateway.devtools.sandbox.servers` (mosquitto and
redis-server) and :mod:`~gateway.devtools.sandbox.certificates` (throwaway TLS material for them).
"""

from gateway.devtools.sandbox.certificates import TlsMaterial, make_tls_material
from gateway.devtools.sandbox.process import HOST, SandboxError, find_executable, free_port
from gateway.devtools.sandbox.servers import MosquittoProcess, RedisProcess

__all__ = [
    "HOST",
    "MosquittoProcess",
    "RedisProcess",
    "SandboxError",
    "TlsMaterial",
    "find_executable",
    "free_port",
    "make_tls_material",
]
