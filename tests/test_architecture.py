"""DESIGN §2: imports flow one way between our packages; each third-party framework stays in
the one package that owns it (the database libraries in `log`, the web stack in
`decision_service`); nothing does I/O at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("decision_service", "explore", "policies", "log", "learn", "evaluation", "deploy")
ALLOWED: dict[str, set[str]] = {
    "explore": set(),
    "evaluation": set(),
    "policies": {"explore"},
    "log": {"explore"},  # explore holds the shared value types and the error hierarchy
    "learn": {"log", "policies", "evaluation", "explore"},
    "deploy": {"evaluation", "learn", "log", "policies", "explore"},
    "decision_service": set(PACKAGES) - {"decision_service"},
}


# Third-party packages only one of ours may import (benchmarks/ and tests/ are exempt).
# Every import counts: at module level, inside functions, under TYPE_CHECKING.
OWNER: dict[str, str] = {
    "sqlalchemy": "log",
    "psycopg": "log",
    "psycopg2": "log",
    "psycopg_pool": "log",
    "alembic": "log",
    "fastapi": "decision_service",
    "pydantic": "decision_service",
    "pydantic_settings": "decision_service",
    "pydantic_core": "decision_service",
    "starlette": "decision_service",
    "uvicorn": "decision_service",
    "faiss": "policies",
}


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in the module at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages imported by each module of `package`."""
    return {
        str(path.relative_to(ROOT)): (top_level_imports(path) & set(PACKAGES)) - {package}
        for path in (ROOT / package).rglob("*.py")
    }


def misplaced_third_party() -> dict[str, set[str]]:
    """Each module of ours importing a third-party package another package owns."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            bad = {n for n in top_level_imports(path) if OWNER.get(n, package) != package}
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    bad = {
        module: sorted(deps - ALLOWED[package])
        for module, deps in imported_packages(package).items()
        if deps - ALLOWED[package]
    }
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_third_party_frameworks_stay_in_their_package() -> None:
    found = {m: sorted(bad) for m, bad in misplaced_third_party().items() if bad}
    owners = {
        owner: sorted(n for n, o in OWNER.items() if o == owner) for owner in set(OWNER.values())
    }
    assert not found, f"only their owner may import these {owners}: {found}"


def test_the_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import sqlalchemy.orm as orm\n"
        "if TYPE_CHECKING:\n    from fastapi import Request\n"
        "def f():\n    from psycopg import sql\n"
        "from . import relative\n"
    )
    assert top_level_imports(module) == {"typing", "sqlalchemy", "fastapi", "psycopg"}


def test_importing_opens_no_database(tmp_path: Path) -> None:
    """Importing every package creates no file and starts no thread."""
    code = (
        "import threading, decision_service, explore, policies, log, learn, evaluation, deploy;"
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []
