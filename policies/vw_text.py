"""Vowpal Wabbit text encoding of contexts and actions.

Context features go to namespace ``c``, action features to namespace ``a`` (with the action id
as a feature, so each action can have its own weights), slot features to ``s``. Names are
sanitised (VW's text format reserves whitespace, ``:`` and ``|``). Strings become
``name=value`` indicator features, numbers ``name:value``, booleans ``name`` when true,
lists one feature per element, nested mappings are flattened with dots.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from explore.types import Action

_BAD = re.compile(r"[\s:|]")


_CLEAN_CACHE: dict[str, str] = {}
_CLEAN_CACHE_MAX = 1 << 17


def _clean(text: str) -> str:
    """`text` with VW's reserved characters replaced; memoised (names and values repeat)."""
    out = _CLEAN_CACHE.get(text)
    if out is None:
        out = _BAD.sub("_", text)
        if len(_CLEAN_CACHE) >= _CLEAN_CACHE_MAX:
            _CLEAN_CACHE.clear()
        _CLEAN_CACHE[text] = out
    return out


def _number(value: float | int) -> str:
    # repr is the shortest round-trip form; VW reads it as a float either way.
    return repr(float(value)) if type(value) is not int else str(value)


def _features(features: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    append = out.append
    for key, value in features.items():
        name = _clean(prefix + key if prefix else key)
        t = type(value)
        if t is str:
            append(f"{name}={_clean(value)}")
        elif t is float or t is int:
            append(f"{name}:{_number(value)}")
        elif t is bool:
            if value:
                append(name)
        elif isinstance(value, Mapping):
            out.extend(_features(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    if item:
                        append(f"{name}={str(item).lower()}")
                elif isinstance(item, int | float):
                    append(f"{name}_{i}:{_number(item)}")
                elif item is not None:
                    append(f"{name}={_clean(str(item))}")
        elif isinstance(value, int | float):  # numpy and other number types
            append(f"{name}:{_number(float(value))}")
    return out


def shared_line(context: Mapping[str, Any], slot: Mapping[str, Any] | None = None) -> str:
    line = "shared |c " + " ".join(_features(context))
    if slot:
        line += " |s " + " ".join(_features(slot))
    return line


_LINE_CACHE: dict[tuple[Any, ...], str] = {}
_LINE_CACHE_MAX = 1 << 16


def _action_text(action: Action) -> str:
    line = f"|a id={_clean(action.id)} " + " ".join(_features(action.features))
    return line


def action_line(action: Action, label: str = "") -> str:
    """The action's line; memoised on (id, features) since catalogs repeat the same items."""
    try:
        key = (action.id, *action.features.items())
        line = _LINE_CACHE.get(key)
    except TypeError:  # unhashable values (lists, nested objects): no cache
        key, line = None, None
    if line is None:
        line = _action_text(action)
        if key is not None:
            if len(_LINE_CACHE) >= _LINE_CACHE_MAX:
                _LINE_CACHE.clear()
            _LINE_CACHE[key] = line
    return f"{label} {line}" if label else line


def example_lines(
    context: Mapping[str, Any],
    actions: Sequence[Action],
    *,
    label: tuple[int, float, float] | None = None,
    slot: Mapping[str, Any] | None = None,
) -> list[str]:
    """Multi-line ADF example; `label` = (chosen index, cost, probability) marks the chosen line."""
    lines = [shared_line(context, slot)]
    for i, action in enumerate(actions):
        tag = ""
        if label is not None and i == label[0]:
            tag = f"0:{label[1]:.9g}:{label[2]:.9g}"
        lines.append(action_line(action, tag))
    return lines
