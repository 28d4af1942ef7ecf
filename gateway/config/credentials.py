"""Secrets: broker credentials and the Redis URL, from mounted files or the environment.

A password written inside a ConfigMap is readable by anyone who can read the ConfigMap, so
both formats let a secret come from elsewhere: a file (``password_file``, a mounted
Kubernetes Secret under ``credentials_dir``, the Redis ``url_file``) or an environment
variable, named (``password_env``, ``url_env``) or conventional (``GATEWAY_BROKER_*``,
``GATEWAY_REDIS_URL``). A secret still written in the file works but logs a warning.

Secret files are read capped and must be UTF-8; environment values may hold undecodable
bytes. Every problem is a ConfigError naming the field and, for a file, its path, and no
message or log line ever holds a secret's value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.reading import (
    CREDENTIAL_KEYS,
    Section,
    Unreadable,
    fail,
    read_capped,
    text_problem,
)
from gateway.redact import has_password

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 64 * 1024
"""The largest credential file or Redis URL file read; a secret is never bigger."""

_REDIS_SCHEMES = re.compile(r"^(rediss?|unix|rediss?\+sentinel)://")


def read_secret(s: Section, key: str, path: str, *, missing_ok: bool) -> str | None:
    """A credential or URL file's text, stripped (None if absent and ``missing_ok``)."""
    try:
        data = read_capped(path, MAX_SECRET_BYTES)
    except Unreadable as exc:
        if missing_ok and isinstance(exc.__cause__, FileNotFoundError | NotADirectoryError):
            return None
        s.fail(key, f"{path}: {exc.problem}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        s.fail(key, f"{path}: not UTF-8 text")
    return text.strip()


def env_secret(s: Section, key: str, name: str, value: str) -> str:
    """A secret from the environment; the process's environment may hold undecodable bytes."""
    if text_problem(value, controls=False) is not None:  # a lone surrogate
        s.fail(key, f"environment variable {name} is not UTF-8 text")
    return value


def broker_credentials(
    b: Section, broker_id: str, env: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """Username and password: explicit file/env references first, then the environment
    (``GATEWAY_BROKER_<ID>_USERNAME`` / ``_PASSWORD``, then ``GATEWAY_BROKER_USERNAME`` /
    ``_PASSWORD`` for every broker), then the values written in the file."""
    found: list[str | None] = []
    slug = re.sub(r"[^A-Z0-9]", "_", broker_id.upper())
    directory = b.opt_string("credentials_dir")
    for part in CREDENTIAL_KEYS:
        inline = b.opt_string(part)
        value: str | None = None
        path = b.opt_string(f"{part}_file")
        if path is not None:
            value = read_secret(b, f"{part}_file", path, missing_ok=False)
        elif directory is not None:
            # An absent file in the mounted Secret is not an error: the environment may supply it.
            value = read_secret(b, "credentials_dir", str(Path(directory) / part), missing_ok=True)
        ref = b.opt_string(f"{part}_env")
        if value is None and ref is not None:
            if ref not in env:
                b.fail(f"{part}_env", f"environment variable {ref} is not set")
            value = env_secret(b, f"{part}_env", ref, env[ref])
        if value is None:
            for name in (f"GATEWAY_BROKER_{slug}_{part.upper()}", f"GATEWAY_BROKER_{part.upper()}"):
                if env.get(name):
                    value = env_secret(b, part, name, env[name])
                    break
        if value is None and inline is not None:
            value = inline
            if part == "password" and inline:
                log.warning(
                    "%s: broker %s has its password written in the config file; "
                    "prefer password_file or an environment variable",
                    b.source,
                    broker_id,
                )
        found.append(value or None)
    return found[0], found[1]


def redis_url(r: Section | None, env: Mapping[str, str], source: str) -> str | None:
    """The Redis URL from ``url_file``, ``url_env``, ``url``, then GATEWAY_REDIS_URL."""
    url = env.get("GATEWAY_REDIS_URL") or None
    if r is None:
        problem = None if url is None else redis_url_problem(url)
        if problem is not None:
            fail(f"{source}: environment variable GATEWAY_REDIS_URL {problem}")
        return url
    path = r.opt_string("url_file")
    ref = r.opt_string("url_env")
    if path is not None:
        url = read_secret(r, "url_file", path, missing_ok=False) or None
    elif ref is not None:
        if ref not in env:
            r.fail("url_env", f"environment variable {ref} is not set")
        url = env_secret(r, "url_env", ref, env[ref])
    elif inline := r.opt_string("url"):
        url = inline
        if has_password(url):
            log.warning(
                "%s: redis.url has its password written in the config file; "
                "prefer url_file or url_env",
                r.source,
            )
    problem = None if url is None else redis_url_problem(url)
    if problem is not None:
        r.fail("url", problem)
    return url


def command_line_redis_url(url: str) -> str:
    """``--redis-url``, checked: a URL with a password is refused, since a command line is
    visible to every process on the node (``ps``, ``/proc``) and in the pod spec."""
    if has_password(url):
        fail(
            "--redis-url: the URL holds a password, which would be visible in the process "
            "list and the pod spec; pass it with --redis-url-file PATH, the environment "
            "variable GATEWAY_REDIS_URL, or redis.url_file / redis.url_env in the config"
        )
    problem = redis_url_problem(url)
    if problem is not None:
        fail(f"--redis-url: {problem}")
    return url


def redis_url_file(path: str) -> str:
    """The Redis URL in the file ``--redis-url-file`` names (a mounted Secret), checked."""
    try:
        data = read_capped(path, MAX_SECRET_BYTES)
    except Unreadable as exc:
        fail(f"--redis-url-file: {path}: {exc.problem}", exc)
    try:
        url = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        fail(f"--redis-url-file: {path}: not UTF-8 text", exc)
    problem = "is empty" if not url else redis_url_problem(url)
    if problem is not None:
        fail(f"--redis-url-file: {path}: the URL {problem}")
    return url


def redis_url_problem(url: str) -> str | None:
    """Why the Redis client could not use the URL; never the URL itself (it may hold a
    password)."""
    problem = text_problem(url, controls=True)
    if problem is not None:
        return problem
    if not _REDIS_SCHEMES.match(url):
        return "must start with redis://, rediss://, unix:// or redis+sentinel://"
    try:
        parts = urlsplit(url)
        if "+sentinel" not in parts.scheme:  # a Sentinel URL lists several host:port pairs
            _ = parts.port  # parsing the port is the check
    except ValueError:
        return "is not a valid URL (bad host or port)"
    return None
