"""The README's two commands stay true: CI runs exactly the README's test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# The README's test command:") + 1]
    readme = (ROOT / "README.md").read_text()
    assert f"pip install -e '.[test]' && {command}" in readme


def test_readme_demo_command_uses_the_console_script() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && ramsim demo" in readme
