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
from policies.memo import ByteLRU

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "action_line",
    "configure_text_caches",
    "example_lines",
    "shared_line",
    "text_cache_bytes",
]

_BAD = re.compile(r"[\s:|]")


# The memo caches of the encoding, bounded in bytes (`configure_text_caches`): names and values
# are memoised by `_clean`, whole action lines by `action_line`.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
_CLEAN_SHARE = 4  # the clean cache gets a quarter of the budget, action lines the rest
_CLEAN_CACHE: ByteLRU[str, str] = ByteLRU(DEFAULT_CACHE_BYTES // _CLEAN_SHARE)
_clean_get, _clean_touch = _CLEAN_CACHE.data.get, _CLEAN_CACHE.data.move_to_end


def _clean(text: str) -> str:
    """`text` with VW's reserved characters replaced; memoised (names and values repeat)."""
    out = _clean_get(text)
    if out is None:
        out = _BAD.sub("_", text)
        _CLEAN_CACHE.put(text, out)
    else:
        _clean_touch(text)
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
        # exact types first, formatted inline: `_number` of a float is its repr, of an int str
        if t is float:
            append(f"{name}:{value!r}")
        elif t is str:
            append(f"{name}={_clean(value)}")
        elif t is int:
            append(f"{name}:{value}")
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


_LINE_CACHE: ByteLRU[tuple[Any, ...], str] = ByteLRU(
    DEFAULT_CACHE_BYTES - DEFAULT_CACHE_BYTES // _CLEAN_SHARE
)
_line_get, _line_touch = _LINE_CACHE.data.get, _LINE_CACHE.data.move_to_end


def configure_text_caches(max_bytes: int) -> None:
    """Set the memory budget (bytes) of the encoding's memo caches of this process (0: none);
    least recently used entries are evicted to stay within it."""
    _CLEAN_CACHE.resize(max_bytes // _CLEAN_SHARE)
    _LINE_CACHE.resize(max_bytes - max_bytes // _CLEAN_SHARE)


def text_cache_bytes() -> int:
    """Estimated bytes held by the encoding's memo caches now."""
    return _CLEAN_CACHE.nbytes + _LINE_CACHE.nbytes


def _action_text(action: Action) -> str:
    line = f"|a id={_clean(action.id)} " + " ".join(_features(action.features))
    return line


def action_line(action: Action, label: str = "") -> str:
    """The action's line; memoised on (id, features) since catalogs repeat the same items."""
    key: tuple[Any, ...] = (action.id, *action.features.items())
    try:
        line = _line_get(key)
    except TypeError:  # unhashable values (lists, nested objects): no cache
        line = _action_text(action)
    else:
        if line is None:
            line = _action_text(action)
            _LINE_CACHE.put(key, line)
        else:
            _line_touch(key)
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
