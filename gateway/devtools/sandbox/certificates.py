"""Throwaway TLS material for sandbox brokers: a CA, a server and a client certificate.

Made with the ``openssl`` CLI, run as child processes so the event loop never blocks: P-256
keys, valid for two days, the server certificate naming the loopback hosts it is reached by
(IP or DNS subject alternative names), the client certificate usable for mutual TLS. Every
file is world-readable so a broker that drops privileges can read it: this is for tests and
demos only, never for a real studio.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.devtools.sandbox.process import SandboxError, find_executable


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
