"""docs/experiments.md cannot drift from the code: every ```yaml block in it is a valid experiment
(and the short ones run in the simulator with the verdict they expect), every property of the
published JSON Schema is named in it, and so is every fault kind, action, invariant and SLO."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.cli.main import main
from services.experiment import checks, spec
from services.experiment.sim import run_sim

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "experiments.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC, re.S)
SCHEMA = json.loads((ROOT / "docs" / "experiment.schema.json").read_text())


def _named(name: str) -> bool:
    return f"`{name}`" in DOC or re.search(rf"\b{re.escape(name)}:", DOC) is not None


def test_the_doc_has_yaml_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_yaml_block_validates_and_runs_in_the_simulator(index, tmp_path):
    x = spec.loads(BLOCKS[index], f"docs/experiments.md block {index}")
    assert x.total_instances() * x.settings.duration <= 10 * 3600, "a doc example should run in a few seconds"
    outcome = checks.evaluate(run_sim(x).history, x)
    assert outcome.verdict.matches, outcome.verdict.explanation
    assert all(c.checked > 0 for c in outcome.checks), [c.detail for c in outcome.checks]  # it measured something


def test_the_first_example_runs_through_the_cli_as_the_doc_says(tmp_path, capsys):
    first = tmp_path / "first.yaml"
    first.write_text(BLOCKS[0])
    assert main(["experiment", "validate", str(first)]) == 0
    assert "ok (2 steps, 2 checks, expect pass)" in capsys.readouterr().out
    for out in ("a", "b"):
        assert main(["experiment", "run", str(first), "--sim", "--seed", "7", "--out", str(tmp_path / out), "--no-plots"]) == 0
    for name in ("report.json", "history.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_every_schema_property_is_in_the_doc():
    missing = sorted({f"{name}.{prop}" for name, definition in SCHEMA["$defs"].items()
                      for prop in definition.get("properties", {}) if not _named(prop)})
    assert not missing, f"docs/experiments.md does not mention: {missing}"


def test_every_kind_invariant_and_slo_is_in_the_doc():
    tags = [kind.__struct_config__.tag for kind in (*spec.Action.__args__, *spec.Fault.__args__)]
    names = [*tags, *spec.INVARIANTS, *spec.SLOS, *spec.SERVICES]
    for definition in SCHEMA["$defs"].values():
        for prop in definition.get("properties", {}).values():
            names += [v for v in prop.get("enum", []) if isinstance(v, str)]
    missing = sorted({n for n in names if f"`{n}`" not in DOC})
    assert not missing, f"docs/experiments.md does not mention: {missing}"


def test_every_library_file_is_in_the_doc():
    missing = [p.name for p in (ROOT / "deploy" / "experiments").glob("*.yaml") if f"`{p.name}`" not in DOC]
    assert not missing


def test_the_doc_names_no_field_the_schema_lacks():
    """Each row of the doc's tables that starts with a `name` is a real property, kind, check or
    value (a renamed field must not linger in the doc)."""
    known = {prop for d in SCHEMA["$defs"].values() for prop in d.get("properties", {})}
    known |= {kind.__struct_config__.tag for kind in (*spec.Action.__args__, *spec.Fault.__args__)}
    known |= {*spec.INVARIANTS, *spec.SLOS}
    rows = re.findall(r"^\| `([a-z_0-9]+)` \|", DOC, re.M)
    assert len(rows) > 50 and not sorted(set(rows) - known)
