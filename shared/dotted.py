"""Nested dicts addressed by dotted keys (``routing.threshold``): command-line overrides of the
settings and the operator's desired documents use the same helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    """``doc[a][b] = value`` for ``key`` ``a.b``; ValueError for an empty part or a non-table."""
    parts = key.split(".")
    if not all(parts):
        raise ValueError(f"invalid key {key!r}: expected dotted names like routing.threshold")
    node = doc
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"invalid key {key!r}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def get_dotted(doc: Mapping[str, Any], key: str) -> Any:
    """The value at ``key``; None when any part is missing."""
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def unset_dotted(doc: dict[str, Any], key: str) -> None:
    """Drop the value at ``key`` if it is there."""
    *parents, last = key.split(".")
    node = get_dotted(doc, ".".join(parents)) if parents else doc
    if isinstance(node, dict):
        node.pop(last, None)


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of base with patch applied; tables merge key by key, other values replace."""
    merged = dict(base)
    for key, value in patch.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def expand_dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a": {"c": 2}} -> {"a": {"b": 1, "c": 2}}."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        nested = {leaf: expand_dotted(value) if isinstance(value, Mapping) else value}
        for parent in reversed(parents):
            nested = {parent: nested}
        result = deep_merge(result, nested)
    return result
