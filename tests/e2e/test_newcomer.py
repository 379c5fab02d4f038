"""A newcomer's first minutes, as the README tells them: a fresh copy of the tree, a fresh
virtual environment with nothing in it, and the README's first command exactly as written
(read out of README.md). CI installs the test extra, so only this test can see what a
newcomer's own install lacks. Then the user mistakes a newcomer makes, each of which must end
in one line that says what to do, never a traceback."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.readme import commands

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# In the fresh venv: every third-party module that protocol/ and services/ import, at the top
# or inside a function, can be imported there (so it is a runtime dependency, not a test one).
IMPORTS_RESOLVE = """
import ast, importlib.util, pathlib, sys
missing = {}
for path in [*pathlib.Path("protocol").rglob("*.py"), *pathlib.Path("services").rglob("*.py")]:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \\
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("protocol", "services") and importlib.util.find_spec(top) is None:
                missing.setdefault(top, str(path))
print(missing)
sys.exit(1 if missing else 0)
"""


def _fresh_copy(dest: Path) -> Path:
    """The tree as a clone would have it: the tracked files and untracked, unignored ones."""
    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = ROOT / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    else:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".ramsim*", "__pycache__", "*.egg-info", ".venv", "build"))
    return dest


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the tree and the environment of a shell with a fresh venv activated."""
    base = tmp_path_factory.mktemp("newcomer")
    tree = _fresh_copy(base / "ramsim")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RAMSIM_", "VIRTUAL_ENV", "PYTEST"))}
    env.update(VIRTUAL_ENV=str(env_dir), PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}", HOME=str(base))
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # a newcomer's pip has a cache too
    env["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"
    return tree, env


def _run(newcomer: tuple[Path, dict[str, str]], command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    tree, env = newcomer
    return subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _narrated_nine_steps(out: str) -> None:
    for n in range(1, 10):
        assert f"\n[{n}] " in out, f"step {n} was not narrated:\n{out[-3000:]}"
    assert "Done: all nine steps ran" in out, out[-3000:]


def test_the_readmes_first_command_works_on_its_own_install(newcomer: tuple[Path, dict[str, str]]) -> None:
    demo = _run(newcomer, commands()["demo"])
    assert demo.returncode == 0, f"`{commands()['demo']}` failed ({demo.returncode}):\n{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}"
    _narrated_nine_steps(demo.stdout)
    assert "Traceback" not in demo.stdout + demo.stderr


def test_every_import_of_the_services_resolves_in_the_newcomers_install(newcomer: tuple[Path, dict[str, str]]) -> None:
    installed = _run(newcomer, "pip install -q -e . && python -c " + shlex.quote(IMPORTS_RESOLVE))
    assert installed.returncode == 0, f"imported but not installed by `pip install -e .`: {installed.stdout}{installed.stderr[-2000:]}"


def test_the_embedded_demo_works_on_its_own_install(newcomer: tuple[Path, dict[str, str]]) -> None:
    """The demo without Mosquitto: every service in one process over the in-memory bus."""
    demo = _run(newcomer, "pip install -q -e . && ramsim demo --embedded")
    assert demo.returncode == 0, f"{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}"
    _narrated_nine_steps(demo.stdout)
