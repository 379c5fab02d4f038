"""Settings: flag > RAMSIM_* variable > default; secrets only from the environment."""

from __future__ import annotations

import pytest

from services.runtime.clock import ScaledClock
from services.runtime.settings import Settings


def test_environment_then_flags() -> None:
    env = {"RAMSIM_TIME_SCALE": "60", "RAMSIM_REGION_ID": "cn-beijing", "RAMSIM_ROOT_ACCESS_KEY_SECRET": "s3cret"}
    s = Settings.parse(["--region-id", "ap-southeast-1"], prog="t", description="d", environ=env)
    assert s.time_scale == 60.0 and s.region_id == "ap-southeast-1" and s.root_access_key_secret == "s3cret"
    assert "s3cret" not in repr(s)


def test_secrets_are_not_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.parse(["--root-access-key-secret", "x"], prog="t", description="d", environ={})
    assert "unrecognized arguments" in capsys.readouterr().err


def test_bad_environment_value_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="RAMSIM_TIME_SCALE='fast' is not a valid float"):
        Settings.from_env({"RAMSIM_TIME_SCALE": "fast"})


def test_environment_round_trip() -> None:
    s = Settings(time_scale=2.5, host_id="host-9", credential_lifetime=900)
    assert Settings.from_env(s.environment()) == s


def test_scaled_clock_shares_an_origin() -> None:
    a, b = ScaledClock(60.0, origin=1000.0), ScaledClock(60.0, origin=1000.0)
    assert abs(a.now() - b.now()) < 60  # two processes agree on simulated time
    assert a.real_seconds(120) == 2.0
    with pytest.raises(ValueError):
        ScaledClock(0)


def test_help_never_shows_a_broker_password(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"RAMSIM_BROKER_URL": "mqtt://ram:s3cretpassw0rd@127.0.0.1:1883"}
    with pytest.raises(SystemExit):
        Settings.parse(["--help"], prog="t", description="d", environ=env)
    out = capsys.readouterr().out
    assert "s3cretpassw0rd" not in out and "mqtt://ram:***@127.0.0.1:1883" in out
