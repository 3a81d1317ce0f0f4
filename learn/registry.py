"""What training needs from the model registry, as a protocol.

`learn` may not import `deploy` (DESIGN §2), so the registry is passed in by the caller (the
composition root): the module ``deploy.registry`` (or the ``deploy`` package) satisfies
:class:`Registry` as it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from log.schema import Engine

__all__ = ["ModelInfo", "Registry"]


class ModelInfo(Protocol):
    """A registered model version (``deploy.registry.ModelVersion``)."""

    @property
    def version(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def vw_args(self) -> str: ...

    @property
    def checkpoint(self) -> datetime | None: ...

    @property
    def checkpoint_seq(self) -> int | None: ...

    def to_json(self) -> dict[str, object]: ...


class Registry(Protocol):
    """Reads the live version and its artifact; registers a version in one transaction."""

    def live_version(self, engine: Engine, loop: str) -> ModelInfo | None: ...

    def load_artifact(self, engine: Engine, version: str) -> bytes: ...

    def register(
        self,
        engine: Engine,
        *,
        loop: str,
        kind: str,
        vw_args: str,
        artifact: bytes,
        parent: str | None = None,
        trained_from: datetime | None = None,
        trained_until: datetime | None = None,
        n_events: int = 0,
        checkpoint: datetime | None = None,
        checkpoint_seq: int | None = None,
        promote_now: bool = False,
    ) -> ModelInfo: ...
