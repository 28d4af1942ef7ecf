"""Walking JSON documents: the property tests mutate a valid document at every field."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

DELETE = object()
"""Put at a path by ``mutations``: the field is removed instead."""


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field of a document, as the keys and indices that lead to it."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``doc`` with the field at ``path`` set to ``value`` (or removed)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def mutations(doc: Any, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The document with one field replaced by one of ``values``, or deleted."""
    return st.builds(replaced, st.just(doc), st.sampled_from(paths(doc)), values | st.just(DELETE))
