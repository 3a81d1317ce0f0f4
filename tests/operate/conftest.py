"""Fixtures of the operate tests: a migrated engine and a running group-commit writer."""

from __future__ import annotations

from tests.deploy.conftest import engine, writer

__all__ = ["engine", "writer"]
