"""The fault-injection suite's figures, repeated at the end of the terminal output (CI logs)."""

from __future__ import annotations

from typing import Any

from tests.faults import harness


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not harness.FIGURES:
        return
    terminalreporter.write_sep("=", "fault-injection figures")
    for line in harness.FIGURES:
        terminalreporter.write_line(line)
