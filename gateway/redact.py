"""Secrets out of text: URLs with their password masked, for log lines and error messages.

A URL may carry a password (``redis://:PASSWORD@host``, ``rtmp://user:PASSWORD@cam/live``)
or a token in its query (``?token=...``). Any URL that goes into a log line, an exception
message or a gRPC status goes through ``redact`` first, so the user and host stay readable
(``rtmp://user:***@cam/live``) while the secret does not leave the process. The sidecar's
logging also runs every record through ``redact`` as a last line of defence.

Pure functions and a logging filter; imports nothing of the gateway, so every module (and
the operator) may use them.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
"""What a password or secret query value is replaced with."""

# scheme://user:password@ ; the password runs to the last '@' before the path, as
# urlsplit reads it, so an unencoded '@' inside a password is masked too.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):[^\s/?#]*@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pass|pwd|secret|token|access_token|auth|key|"
    r"api_key|apikey|sig|signature)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every URL's password (and secret query values) replaced by ``***``.

    Works on a bare URL and on any text holding URLs (a message, a repr).
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_url(url: str) -> str:
    """One URL with its password (and secret query values) replaced by ``***``.

    Reads the URL as ``urlsplit`` does, even when it is not a valid one (whitespace,
    control characters): the user info is everything before the last ``@`` of the part
    between ``://`` (or the start) and the first ``/``, ``?`` or ``#``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL at all ("user:password@host"): the same reading, from the start
        scheme, rest = "", url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + MASK
    url = f"{scheme}{sep}{userinfo}{at}{hostport}{tail}"
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", url)


def has_password(url: str) -> bool:
    """Whether the URL carries a password: ``scheme://[user]:password@host``, or a
    ``password=`` query parameter (redis-py reads one)."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(
            key.lower() == "password" and value for key, value in parse_qsl(parts.query)
        )
    except ValueError:
        return _USERINFO.search(url) is not None or "password=" in url.lower()


class RedactingFilter(logging.Filter):
    """Masks the password of any URL (``scheme://user:***@host``) and secret query values
    in every record, its exception included: the last line of defence should a secret
    reach a log call. Install it on a handler (``configure_logging`` does, for the sidecar
    and the other ``gateway`` commands), so it sees every logger's records."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Always lets the record through, rewritten if it held a secret."""
        try:
            message = record.getMessage()
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and not record.exc_text:
                record.exc_text = self._plain.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        except Exception:  # a broken record must still be logged; the formatter reports it
            pass
        return True
