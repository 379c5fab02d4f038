"""The README's two commands, read out of README.md, so that CI and the tests run exactly what
it tells a newcomer to run (and the two can never drift apart).

    python3 tests/readme.py demo     the command that installs ramsim and runs the demo
    python3 tests/readme.py test     the command that installs the test extra and runs the suite

Both are the one-line ``sh`` blocks of the "Quick start" section: the demo's names
``ramsim demo``, the suite's names ``pytest``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(text: str | None = None) -> dict[str, str]:
    text = README.read_text() if text is None else text
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M)
    if section is None:
        raise LookupError("README.md has no '## Quick start' section")
    blocks = [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)]
    found = {"demo": [b for b in blocks if "ramsim demo" in b], "test": [b for b in blocks if "pytest" in b]}
    for name, matching in found.items():
        if len(matching) != 1 or "\n" in matching[0]:
            raise LookupError(f"README.md's Quick start should have one one-line sh block for the {name} command, found {matching}")
    return {name: matching[0] for name, matching in found.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("demo", "test"):
        sys.exit("usage: python3 tests/readme.py demo|test")
    print(commands()[sys.argv[1]])
