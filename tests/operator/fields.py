"""Field ownership for the API server stand-in: server-side apply and ``managedFields``.

What the operator depends on, as the API server does it: every write records, per field
manager, the fields it set (``metadata.managedFields``, ``FieldsV1``); an apply sets the
fields of its configuration, removes the fields its manager applied before and leaves out
(unless another manager holds them too), and fails with 409 when it would change a field
another manager holds, unless forced, which moves those fields to the applier.

Simplified: lists are atomic (no ``k:`` keys of map lists) and entries are not separated
by subresource. Paths are tuples of keys; a leaf is anything but a non-empty dict.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str, ...]
APPLY_TYPE = "application/apply-patch+yaml"
_UNOWNED: tuple[Path, ...] = (
    ("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
    ("metadata", "uid"), ("metadata", "resourceVersion"), ("metadata", "generation"),
    ("metadata", "creationTimestamp"), ("metadata", "managedFields"),
    ("metadata", "deletionTimestamp"),
)  # fmt: skip


class Conflict(Exception):
    """An apply would change fields other managers hold."""


def leaves(obj: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every owned leaf of ``obj`` with its value."""
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            yield from leaves(value, (*prefix, str(key)))
    elif prefix and not any(prefix[: len(u)] == u for u in _UNOWNED):
        yield prefix, obj


def _fields(paths: set[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(paths):
        node = out
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return out


def _paths(fields: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    children = {k: v for k, v in fields.items() if k.startswith("f:")}
    if not children:
        return {prefix} if prefix else set()
    out: set[Path] = set()
    for key, value in children.items():
        out |= _paths(value if isinstance(value, Mapping) else {}, (*prefix, key[2:]))
    return out


def _get(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = value


def _entries(obj: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    meta = (obj or {}).get("metadata") or {}
    return [dict(e) for e in meta.get("managedFields") or [] if isinstance(e, dict)]


def _owned(entry: Mapping[str, Any]) -> set[Path]:
    return _paths(entry.get("fieldsV1") or {})


def _entry(manager: str, operation: str, api_version: str, paths: set[Path]) -> dict[str, Any]:
    now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now,
            "fieldsType": "FieldsV1", "fieldsV1": _fields(paths)}  # fmt: skip


def apply(
    current: Mapping[str, Any] | None, applied: Mapping[str, Any], manager: str, force: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The object after the apply, and the merge patch that turns ``current`` into it."""
    mine = dict(leaves(dict(applied)))
    entries = _entries(current)
    conflicts = [
        (e["manager"], path)
        for e in entries
        if e.get("manager") != manager
        for path in _owned(e) & set(mine)
        if current is not None and _get(current, path) != mine[path]
    ]
    if conflicts and not force:
        listed = ", ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
        raise Conflict(f"Apply failed with {len(conflicts)} conflict(s): {listed}")
    kept: list[dict[str, Any]] = []
    previous: set[Path] = set()
    for e in entries:
        if e.get("manager") == manager and e.get("operation") == "Apply":
            previous = _owned(e)
            continue
        paths = _owned(e) - set(mine) if force and e.get("manager") != manager else _owned(e)
        if paths:
            kept.append({**e, "fieldsV1": _fields(paths)})
    held = set().union(*(_owned(e) for e in kept)) if kept else set()
    removed = previous - set(mine) - held
    api_version = str(applied.get("apiVersion", ""))
    kept.append(_entry(manager, "Apply", api_version, set(mine)))
    new = copy.deepcopy(dict(current or {}))
    patch: dict[str, Any] = {}
    for path, value in mine.items():
        _set(new, path, copy.deepcopy(value))
        _set(patch, path, copy.deepcopy(value))
    for path in removed:
        parent = _get(new, path[:-1]) if len(path) > 1 else new
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        _set(patch, path, None)
    meta = applied.get("metadata") or {}
    new.update(apiVersion=applied.get("apiVersion"), kind=applied.get("kind"))
    new.setdefault("metadata", {}).update(name=meta.get("name"), managedFields=kept)
    patch.setdefault("metadata", {})["managedFields"] = kept
    if meta.get("resourceVersion"):
        patch["metadata"]["resourceVersion"] = meta["resourceVersion"]  # a precondition
    return new, patch


def record_update(current: Mapping[str, Any] | None, data: dict[str, Any], manager: str) -> None:
    """Give ``manager`` the fields a create or merge patch (``data``) changes, in place."""
    changed = {p for p, v in leaves(data) if v is not None and _get(current, p) != v}
    gone = {p for p, v in leaves(data) if v is None}
    entries: list[dict[str, Any]] = []
    updater: set[Path] = set()
    for e in _entries(current):
        paths = _owned(e) - changed - {p for p in _owned(e) if any(p[: len(g)] == g for g in gone)}
        if e.get("manager") == manager and e.get("operation") == "Update":
            updater = paths
        elif paths:
            entries.append({**e, "fieldsV1": _fields(paths)})
    if changed | updater:
        api_version = str(data.get("apiVersion") or (current or {}).get("apiVersion", ""))
        entries.append(_entry(manager, "Update", api_version, changed | updater))
    if entries or _entries(current):
        data.setdefault("metadata", {})["managedFields"] = entries
