"""What the official SDKs' response models document, against what ramsim answers.

A tea model (``<Action>ResponseBody`` in ``alibabacloud_<product>.models``) reads its fields in
``from_map``: ``if m.get('Key') is not None:`` then either a nested model, a list of them
(``for k1 in m.get('Key')``) or a plain value. :func:`documented` walks that into paths
(``Roles.Role[].RoleName``: ``[]`` marks a list's items); :func:`answered` gives the paths an
answer (the gateway's JSON) holds, so a path is answered when at least one list item has it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {"ram": "alibabacloud_ram20150501", "sts": "alibabacloud_sts20150401", "ecs": "alibabacloud_ecs20140526"}
OMISSIONS = Path(__file__).with_name("omissions.toml")
RESULTS: dict[str, "Report"] = {}  # filled by test_fidelity, printed by conftest's terminal summary
_BLOCK = re.compile(r"if m\.get\('([^']+)'\) is not None:(.*?)(?=\n\s*if m\.get\(|\n\s*return self)", re.S)
_MODEL = re.compile(r"main_models\.(\w+)\(\)")


def model(product: str, action: str) -> type | None:
    """The response body model of an action, or None (not an Alibaba API: a ramsim extension)."""
    return getattr(importlib.import_module(f"{PACKAGES[product]}.models"), f"{action}ResponseBody", None)


def documented(cls: type, prefix: str = "") -> list[str]:
    """Every path the model reads, parents before their children."""
    models = importlib.import_module(cls.__module__.rsplit(".", 1)[0])  # <package>.models
    paths: list[str] = []
    for key, block in _BLOCK.findall(inspect.getsource(cls.from_map)):
        path = f"{prefix}{key}"
        paths.append(path)
        child = _MODEL.search(block)
        if child is not None:
            inner = f"{path}[]." if "for k1 in" in block else f"{path}."
            paths += documented(getattr(models, child.group(1)), inner)
    return paths


def answered(answer: object, prefix: str = "") -> set[str]:
    """Every path present in a JSON answer (dicts and lists of dicts)."""
    found: set[str] = set()
    if isinstance(answer, dict):
        for key, value in answer.items():
            path = f"{prefix}{key}"
            found.add(path)
            found |= answered(value, f"{path}.")
    elif isinstance(answer, list):
        for item in answer:
            found |= answered(item, prefix[:-1] + "[]." if prefix else "")
    return found


def load_omissions(path: Path = OMISSIONS) -> dict[str, dict[str, str]]:
    """``{"ram.ListRoles": {"Roles.Role[].Tags": "why"}}``: the one list of deliberate omissions."""
    data = tomllib.loads(path.read_text())
    return {f"{product}.{action}": dict(fields) for product, actions in data.items() for action, fields in actions.items()}


@dataclass
class Report:
    """One action: what its model documents, what ramsim answered, and what is off."""

    action: str
    documented: list[str]
    answered: set[str]
    omitted: dict[str, str]
    missing: list[str] = field(default_factory=list)       # neither answered nor listed
    listed_but_answered: list[str] = field(default_factory=list)
    listed_but_undocumented: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path in self.documented:
            if path in self.answered:
                continue
            if not any(path == o or path.startswith(o + ".") or path.startswith(o + "[].") for o in self.omitted):
                self.missing.append(path)
        self.listed_but_answered = sorted(o for o in self.omitted if o in self.answered)
        self.listed_but_undocumented = sorted(o for o in self.omitted if o not in self.documented)

    @property
    def covered(self) -> int:
        return sum(1 for p in self.documented if p in self.answered)


def summary(reports: dict[str, Report]) -> list[str]:
    """The coverage lines: per service, then per action (answered / documented)."""
    lines = []
    for product in PACKAGES:
        mine = [r for name, r in sorted(reports.items()) if name.startswith(product + ".")]
        if mine:
            covered, total = sum(r.covered for r in mine), sum(len(r.documented) for r in mine)
            lines.append(f"{product}: {covered}/{total} documented fields answered ({100 * covered / total:.1f}%), {len(mine)} actions")
    lines += [f"  {r.action}: {r.covered}/{len(r.documented)}" for _, r in sorted(reports.items())]
    return lines
