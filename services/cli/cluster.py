"""I/O shell: the cluster file ``ramsim up`` writes and every other command reads.

JSON with the broker URL (with the ``operator`` broker identity's password, so tools that join
the bus can authenticate), the account, the root AccessKey pair and the endpoints. It holds
secrets, so it is written with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from services.cli.errors import CliError

DEFAULT_STATE_DIR = ".ramsim"
DEFAULT_FILE = f"{DEFAULT_STATE_DIR}/cluster.json"


class ClusterFile(msgspec.Struct, rename="pascal", kw_only=True):
    broker_url: str
    gateway_url: str
    account_id: str
    region_id: str
    access_key_id: str
    access_key_secret: str
    state_dir: str
    time_scale: float
    time_origin: float
    pid: int
    services: dict[str, int] = {}
    oss_url: str = ""  # the OSS endpoint (path-style: http://127.0.0.1:<port>)
    console_url: str = ""  # the web console (services/console), when `ramsim up` started one


class NoCluster(CliError):
    """No cluster file where one was expected."""


def locate(explicit: str | None) -> Path:
    """``--cluster-file``, else ``$RAMSIM_CLUSTER``, else ``.ramsim/cluster.json``."""
    return Path(explicit or os.environ.get("RAMSIM_CLUSTER") or DEFAULT_FILE)


def load(path: Path) -> ClusterFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ClusterFile)
    except FileNotFoundError:
        raise NoCluster(f"no cluster file at {path}: start one with `ramsim up` (or pass --cluster-file / set RAMSIM_CLUSTER)") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise NoCluster(f"{path} is not a ramsim cluster file: {exc}") from None


def save(path: Path, cluster: ClusterFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(cluster), indent=2) + b"\n")
    os.replace(tmp, path)
