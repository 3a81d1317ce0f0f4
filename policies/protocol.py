"""The plug point every scorer implements (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from explore.types import Action


@runtime_checkable
class Policy(Protocol):
    """Scores candidates for a context; higher is better. Exploration is not its concern."""

    version: str

    def scores(self, context: Mapping[str, Any], actions: Sequence[Action]) -> np.ndarray: ...
