"""The one architectural rule: pure cores do no I/O and read no clock or random source.

Every module whose docstring starts "Pure core:" or "Pure protocol:" (and everything in
protocol/) may not import asyncio, time, random, secrets, os, socket, gmqtt or aiohttp; and
protocol/ imports nothing from services/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANNED = {"asyncio", "time", "random", "secrets", "os", "socket", "gmqtt", "aiohttp", "subprocess", "sqlite3", "structlog"}
MODULES = sorted(p for p in (ROOT / "protocol").rglob("*.py")) + sorted((ROOT / "services").rglob("*.py"))


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


PURE = [p for p in MODULES if _docstring(p).startswith(("Pure core:", "Pure protocol:"))]


def test_every_module_says_which_side_of_the_line_it_is_on() -> None:
    unmarked = [str(p.relative_to(ROOT)) for p in MODULES
                if p.name not in ("__init__.py", "__main__.py") and not _docstring(p).startswith(("Pure core:", "Pure protocol:", "I/O shell:"))]
    assert unmarked == []


def test_cores_exist_for_every_service() -> None:
    pure = {str(p.relative_to(ROOT)) for p in PURE}
    for service in ("ram", "sts", "ecs", "metadata", "gateway", "oss"):
        assert f"services/{service}/core.py" in pure


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_do_no_io(path: Path) -> None:
    bad = {name for name in _imports(path) if name.split(".")[0] in BANNED}
    assert bad == set(), f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_import_only_pure_project_modules(path: Path) -> None:
    for name in _imports(path):
        if name.split(".")[0] in ("protocol", "services"):
            target = ROOT / (name.replace(".", "/") + ".py")
            if not target.exists():
                target = ROOT / name.replace(".", "/") / "__init__.py"
            if target.name == "__init__.py":
                continue
            assert target in PURE, f"{path.relative_to(ROOT)} imports shell module {name}"


def test_protocol_imports_nothing_from_services() -> None:
    for path in (ROOT / "protocol").rglob("*.py"):
        assert not any(n.startswith("services") for n in _imports(path)), path
