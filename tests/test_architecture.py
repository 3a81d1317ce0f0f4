"""DESIGN §2: imports flow one way between our packages; nothing does I/O at import time."""

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
    "deploy": {"evaluation", "log", "policies", "explore"},
    "decision_service": set(PACKAGES) - {"decision_service"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our top-level packages imported by each module of `package`."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & set(PACKAGES)) - {package}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    bad = {
        module: sorted(deps - ALLOWED[package])
        for module, deps in imported_packages(package).items()
        if deps - ALLOWED[package]
    }
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_importing_opens_no_database(tmp_path: Path) -> None:
    """Importing every package creates no file and starts no thread."""
    code = (
        "import threading, decision_service, explore, policies, log, learn, evaluation, deploy;"
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []
