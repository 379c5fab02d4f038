"""The README's two commands stay true: CI runs exactly the README's test command, read out of
README.md (tests/readme.py), and the newcomer's command is the console script's demo."""

from __future__ import annotations

from pathlib import Path

from tests.readme import commands

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'test_command=$(python3 tests/readme.py test)' in ci and 'bash -euo pipefail -c "$test_command"' in ci
    assert commands()["test"].endswith("python3 -m pytest -q")


def test_readme_demo_command_uses_the_console_script() -> None:
    assert commands()["demo"] == "pip install -e . && ramsim demo"
