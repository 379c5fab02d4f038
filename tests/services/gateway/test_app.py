"""The gateway shell's nonce file (real SQLite): the gateway workers of one cluster share it, so a
nonce one worker took within the window is reported to another as taken (a replay it could not
otherwise know of), and one whose window passed may be used again."""

from __future__ import annotations

from pathlib import Path

from services.gateway.app import NonceLog

WINDOW = 900.0


def test_a_nonce_another_worker_took_is_taken_until_its_window_passes(tmp_path: Path) -> None:
    one, two = NonceLog(tmp_path / "gateway.db"), NonceLog(tmp_path / "gateway.db")  # two workers, one file
    try:
        assert one.add([("n-1", 1000.0)], 1000.0, WINDOW) == []
        assert two.add([("n-1", 1000.0), ("n-2", 1000.0)], 1001.0, WINDOW) == ["n-1"]  # a replay to the other worker
        assert one.add([("n-2", 1000.0)], 1002.0, WINDOW) == ["n-2"]
        assert two.add([("n-1", 2000.0)], 2000.0, WINDOW) == []  # its window passed: usable again, stamped anew
        assert one.add([("n-1", 2000.0)], 2001.0, WINDOW) == ["n-1"]
        restarted = NonceLog(tmp_path / "gateway.db")
        assert set(restarted.load(2001.0, WINDOW)) == {"n-1"}  # a restart gets the window back
        restarted.close()
    finally:
        one.close()
        two.close()
