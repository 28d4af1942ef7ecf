"""Reading hostile bytes safely: capped files, strict JSON, and fields that name themselves.

A config file is input from outside the process, and a hot reload reads it again while
the sidecar serves. Whatever the bytes (too large, a FIFO, not UTF-8, nested too deeply,
NaN, an integer of a million digits, lone surrogates), what leaves this module is a
``ConfigError`` whose message names the file and the field: never RecursionError,
UnicodeDecodeError, OverflowError or MemoryError, so one bad file is kept out instead of
ending the process. Messages are bounded and cleaned, because they reach log lines and
protobuf strings, and they never show a value that may be a secret.

``Section`` is how the parsers read a document: one JSON object, field by field, each
read typed and range-checked, with unknown fields refused in the strict format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import reprlib
import stat
from typing import Any, NoReturn

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024
"""The largest config file the loader reads; anything bigger is refused, not truncated."""

CREDENTIAL_KEYS = ("username", "password")
"""The fields that may hold any text, even control characters (a password is opaque)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # not encodable as UTF-8: paho and redis-py fail
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_MESSAGE_CHARS = 2000
_MAX_INT_DIGITS = 100


# --- files and JSON ---------------------------------------------------------------------


class Unreadable(Exception):
    """A file that cannot be used; ``problem`` says why, never what the file holds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def read_capped(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (the file may change while it is read)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL byte in the path
        raise Unreadable(f"cannot read: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("cannot read: not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"file is {info.st_size} bytes; at most {limit}")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise Unreadable(f"file is more than {limit} bytes; at most {limit}")
    return data


def decode_json(raw: bytes, source: str) -> Any:
    """The document in ``raw``; NaN, Infinity and numbers beyond a float are refused."""
    try:
        return json.loads(
            raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int
        )
    except RecursionError as exc:
        fail(f"{source}: not valid JSON: nested too deeply", exc)
    except MemoryError as exc:
        fail(f"{source}: not valid JSON: too large to decode", exc)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the hooks below
        fail(f"{source}: not valid JSON: {exc}", exc)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows; write a finite number")


def _short_int(text: str) -> int:
    # Before int(): Python refuses over 4300 digits, and no field needs more than 19.
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits; at most {_MAX_INT_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a float")
    return value


# --- messages: bounded, clean, never a secret -------------------------------------------


def text_problem(value: str, *, controls: bool) -> str | None:
    """What makes a string unusable on the wire or in a path, without showing it."""
    found = _SURROGATE.search(value)
    if found:
        return f"is not valid Unicode text (a lone surrogate at character {found.start()})"
    found = _CONTROL.search(value) if controls else None
    if found:
        code = ord(found.group())
        return f"holds a control character (U+{code:04X}) at character {found.start()}"
    return None


class _Brief(reprlib.Repr):
    """A bounded repr for messages: deep, long or huge values never make the error fail."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 2, 80, 80
        self.maxlist = self.maxdict = self.maxtuple = 4

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an integer over 4300 digits raises ValueError.
        return repr(x) if x.bit_length() <= 128 else f"<an integer of {x.bit_length()} bits>"


show = _Brief().repr
"""A bounded repr of a value from the document, safe to put in a message."""


def clean(text: str) -> str:
    """A message safe for a log line and a protobuf string: no lone surrogates, no control
    characters, bounded length."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "..."
    return text


def fail(message: str, cause: BaseException | None = None) -> NoReturn:
    """Raise the ConfigError every problem becomes, its message cleaned."""
    raise ConfigError(clean(message)) from cause


# --- typed field access with precise error messages ----------------------------------

_MISSING: Any = object()


class Section:
    """One JSON object of the config, read field by field; errors name file and field."""

    def __init__(self, data: dict[str, Any], where: str, source: str, *, strict: bool) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.strict = strict
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        """The field's full path in the document, as messages name it (``brokers[0].port``)."""
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise ConfigError naming the file and this field."""
        fail(f"{self.source}: {self.path(key)}: {problem}")

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            self.fail(key, "is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> str:
        """A string field (required unless a default is given)."""
        value = self._get(key, default)
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {type(value).__name__}")
        return self._text(key, value)

    def opt_string(self, key: str) -> str | None:
        """A string field that may be absent (None)."""
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, got {type(value).__name__}")
        return None if value is None else self._text(key, value)

    def _text(self, key: str, value: str) -> str:
        """Every string goes on the wire or into a path: it must encode as UTF-8, and only
        credentials may hold control characters."""
        problem = text_problem(value, controls=key not in CREDENTIAL_KEYS)
        if problem is not None:
            self.fail(key, problem)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, lo: int, hi: int) -> int:
        """An integer field within ``lo..hi`` (a boolean is not an integer here)."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, got {show(value)}")
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}, got {show(value)}")
        return value

    def number(self, key: str, default: Any = _MISSING, *, lo: float, hi: float) -> float:
        """A finite number field within ``lo..hi``, as a float."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number, got {show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}")
        if not lo <= value <= hi:
            self.fail(key, f"must be between {lo:g} and {hi:g}, got {show(value)}")
        return float(value)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        """A true/false field."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {show(value)}")
        return value

    def section(self, key: str) -> Section:
        """A required nested object, read with the same strictness."""
        value = self._get(key, _MISSING)
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, got {type(value).__name__}")
        return Section(value, self.path(key), self.source, strict=self.strict)

    def opt_section(self, key: str) -> Section | None:
        """A nested object that may be absent (None)."""
        return self.section(key) if self.data.get(key) is not None else self._get(key, None)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings that may be absent (empty)."""
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, "must be a list of strings")
        return tuple(self._text(f"{key}[{i}]", v) for i, v in enumerate(value))

    def sections(self, key: str) -> list[Section]:
        """A required list of objects, each read as a Section."""
        value = self._get(key, _MISSING)
        if not isinstance(value, list):
            self.fail(key, f"must be a list, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", f"must be an object, got {type(item).__name__}")
            out.append(Section(item, self.path(f"{key}[{i}]"), self.source, strict=self.strict))
        return out

    def done(self) -> None:
        """Reject unknown fields (they are usually typos) in the strict format."""
        unknown = sorted((_field_name(k) for k in set(self.data) - self._read), key=str)
        if unknown and self.strict:
            self.fail(unknown[0], "unknown field")
        for key in unknown:
            log.debug("%s: ignoring field %s", clean(self.source), clean(self.path(key)))


def _field_name(key: object) -> str:
    """A field's name as a message shows it: quoted unless it is a plain word."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else show(key)
