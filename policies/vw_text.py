"""Vowpal Wabbit text encoding of contexts and actions.

Context features go to namespace ``c``, action features to namespace ``a`` (with the action id
as a feature, so each action can have its own weights), slot features to ``s``. Names are
sanitised (VW's text format reserves whitespace, ``:`` and ``|``). Strings become
``name=value`` indicator features, numbers ``name:value``, booleans ``name`` when true,
lists one feature per element, nested mappings are flattened with dots.
"""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Mapping, Sequence
from typing import Any

from explore.types import Action

_BAD = re.compile(r"[\s:|]")


@lru_cache(maxsize=65536)
def _clean(text: str) -> str:
    return _BAD.sub("_", text)


def _features(features: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in features.items():
        name = _clean(prefix + str(key))
        if isinstance(value, bool):
            if value:
                out.append(name)
        elif isinstance(value, int | float):
            out.append(f"{name}:{float(value):.9g}")
        elif isinstance(value, str):
            out.append(f"{name}={_clean(value)}")
        elif isinstance(value, Mapping):
            out.extend(_features(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    if item:
                        out.append(f"{name}={str(item).lower()}")
                elif isinstance(item, int | float):
                    out.append(f"{name}_{i}:{float(item):.9g}")
                elif item is not None:
                    out.append(f"{name}={_clean(str(item))}")
    return out


def shared_line(context: Mapping[str, Any], slot: Mapping[str, Any] | None = None) -> str:
    line = "shared |c " + " ".join(_features(context))
    if slot:
        line += " |s " + " ".join(_features(slot))
    return line


def action_line(action: Action, label: str = "") -> str:
    head = f"{label} " if label else ""
    return f"{head}|a id={_clean(action.id)} " + " ".join(_features(action.features))


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
