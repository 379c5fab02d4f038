"""``ramsim demo`` runs anywhere: without Mosquitto it runs the cluster in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import demo, up


def test_demo_falls_back_to_the_in_memory_cluster_without_mosquitto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def missing() -> str:
        raise up.UpError(up.INSTALL_HINT)

    monkeypatch.setattr(up, "find_mosquitto", missing)
    monkeypatch.delenv("RAMSIM_CLUSTER", raising=False)
    monkeypatch.chdir(tmp_path)  # no live .ramsim/cluster.json here
    assert demo.run(None, up.Options()) == 0
    out = capsys.readouterr().out
    assert "Mosquitto is not installed" in out
    assert "assumed-role/MyApplicationRole/i-" in out
    assert "InvalidUser.PassRoleForbidden" in out
    assert "the same token is refused at once: Forbidden.RAM" in out
    assert "GetObject hello.txt -> 'hello from the instance'" in out
    assert "AliyunOSSFullAccess detached -> oss PutObject refused (AccessDenied)" in out
    assert "AliyunOSSFullAccess attached again -> oss PutObject allowed" in out
    assert "inside this process, over the in-memory bus" in out
