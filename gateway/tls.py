"""Client TLS contexts that verify a broker's certificate against a configured server name.

A broker is often dialled by an address its certificate does not name: an IP address, a
Kubernetes service name, a port-forward or a proxy in front of it. Configuration says which
name the certificate carries (``tls.server_name``), but paho-mqtt, under aiomqtt, always
passes the host it dials as ``server_hostname`` to ``SSLContext.wrap_socket`` and offers no
option to change it. So the context itself substitutes the configured name: it is checked
against the certificate and sent as SNI. The sidecar and the device simulator both connect
this way, so the workaround lives here once. Standard library only.
"""

from __future__ import annotations

import socket
import ssl


class ServerNameContext(ssl.SSLContext):
    """A TLS context that verifies against ``server_name``, not the host the client dials.

    Needed because paho always passes the dialled host as ``server_hostname``.
    """

    def __new__(cls, protocol: int, server_name: str) -> ServerNameContext:
        """Create the context (``ssl.SSLContext`` takes only the protocol in ``__new__``)."""
        return super().__new__(cls, protocol)

    def __init__(self, protocol: int, server_name: str) -> None:
        """Remember ``server_name`` for every socket this context wraps."""
        self.server_name = server_name

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap ``sock`` as usual, but for the configured server name."""
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )


def client_context(server_name: str | None = None) -> ssl.SSLContext:
    """A fresh client TLS context, checking ``server_name`` when one is configured.

    Without a name it is a plain ``PROTOCOL_TLS_CLIENT`` context (the dialled host is checked).
    """
    if server_name:
        return ServerNameContext(ssl.PROTOCOL_TLS_CLIENT, server_name)
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
