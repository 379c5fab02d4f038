"""I/O shell: ``<state-dir>/keys.json``, what a ``ramsim up`` cluster keeps across restarts.

Services keep their state in the state directory (``<node>.db``, OSS's ``oss/``), and that
state only means something with the secrets it was made under: the account id, the root
AccessKey pair RAM is started with, STS's master key (every SecurityToken issued is sealed
under keys derived from it), the state key the services encrypt their secrets at rest with,
and the broker passwords (the cluster file's operator URL stays valid). ``ramsim up`` writes
them here on a first start and reads them back on the next start in the same directory, with
the time origin and scale (simulated time must not run backwards: the stored times of tokens
and timers are simulated) and the ports (URLs stay stable when their ports are still free).
It holds secrets, so it is written with mode 0600. :func:`reset` deletes it and the services'
state, for ``ramsim up --reset``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import msgspec

from protocol import ids
from services.cli import broker

FILE = "keys.json"
VERSION = 1
STATE_KEY_BYTES = 32
SERVICES = ("ram", "sts", "ecs", "gateway", "oss")       # <node>.db; metadata agents are metadata-<host>.db
DB_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")  # SQLite and its WAL, shared-memory and journal files
OSS_STATE = ("meta.sqlite3", "meta.sqlite3-wal", "meta.sqlite3-shm", "blobs", "tmp")  # what services/oss/store.py writes


class KeysError(Exception):
    """keys.json cannot be used; the message says why and what to do."""


class Keys(msgspec.Struct, rename="pascal", kw_only=True):
    version: int = VERSION
    account_id: str
    root_access_key_id: str
    root_access_key_secret: str
    sts_signing_key: str            # hex, RAMSIM_STS_SIGNING_KEY
    state_key: str                  # hex, RAMSIM_STATE_KEY
    broker_passwords: dict[str, str]
    time_origin: float
    time_scale: float
    broker_port: int
    gateway_port: int
    oss_port: int
    services_port: int = 0          # the broker's services listener (client id = username); 0 in older keys.json


def generate(*, account_id: str, time_origin: float, time_scale: float, broker_port: int, gateway_port: int, oss_port: int,
             random: Callable[[int], bytes] = os.urandom) -> Keys:
    """A new cluster's secrets (``account_id`` "" draws one)."""
    return Keys(account_id=account_id or ids.numeric_id(random(8), 16), root_access_key_id=ids.access_key_id(random(20)),
                root_access_key_secret=ids.secret(random(30)), sts_signing_key=random(32).hex(),
                state_key=random(STATE_KEY_BYTES).hex(), broker_passwords={}, time_origin=time_origin, time_scale=time_scale,
                broker_port=broker_port, gateway_port=gateway_port, oss_port=oss_port)


def identities(keys: Keys, host_ids: Iterable[str], random: Callable[[int], bytes] = os.urandom,
               workers: dict[str, int] | None = None) -> broker.Identities:
    """The broker identities of a cluster with these hosts (and workers): the passwords kept in ``keys``, new
    ones for identities it has none for (a host added since). ``keys`` is updated to match."""
    rules = broker.acl_rules(host_ids, workers)
    passwords = {user: keys.broker_passwords.get(user) or broker.new_password(random(broker.PASSWORD_BYTES)) for user in rules}
    keys.broker_passwords = dict(passwords)
    return broker.Identities(rules, passwords)


def resume_problem(keys: Keys, *, account_id: str, time_scale: float) -> str | None:
    """Why the cluster in ``keys`` cannot be resumed with these options, or None.

    Simulated time is ``origin + (wall - origin) * scale``: with the same origin a larger scale
    only moves it ahead (as a longer outage would), a smaller one can move it back, before
    tokens and timers the services stored."""
    if account_id and account_id != keys.account_id:
        return f"it is account {keys.account_id}, not {account_id}"
    if time_scale < keys.time_scale:
        return (f"it ran at --time-scale {keys.time_scale:g}, and at {time_scale:g} simulated time would run backwards: "
                f"pass --time-scale {keys.time_scale:g} (or more)")
    return None


def load(state_dir: Path) -> Keys | None:
    """The kept keys of ``state_dir``, or None for a directory no cluster ran in."""
    path = state_dir / FILE
    try:
        keys = msgspec.json.decode(path.read_bytes(), type=Keys)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeysError(f"{path} is not a ramsim keys file ({exc}); `ramsim up --reset` starts a new cluster there") from None
    if keys.version > VERSION:
        raise KeysError(f"{path} was written by a newer ramsim (version {keys.version}); upgrade, or `ramsim up --reset`")
    return keys


def save(state_dir: Path, keys: Keys) -> None:
    """Write keys.json, mode 0600 from its creation (never readable by others, even briefly)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = state_dir / FILE, state_dir / (FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(keys), indent=2) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _is_service_db(name: str) -> bool:
    for suffix in DB_SUFFIXES:
        if name.endswith(suffix):
            node = name[: -len(suffix)]
            return node in SERVICES or node.startswith("metadata-")
    return False


def service_databases(state_dir: Path) -> list[Path]:
    """The services' state files (``<node>.db`` and SQLite's companions) in ``state_dir``."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.iterdir() if p.is_file() and _is_service_db(p.name))


def reset(state_dir: Path) -> list[str]:
    """Delete the previous cluster's state in ``state_dir``: keys.json, the services' databases
    and OSS's objects. Only files ramsim writes (by name), never anything else in the directory;
    logs stay. Returns what was deleted, relative to ``state_dir``."""
    doomed = [state_dir / FILE, state_dir / (FILE + ".tmp"), state_dir / "mosquitto.db", *service_databases(state_dir),
              *(state_dir / "oss" / name for name in OSS_STATE)]
    deleted = []
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(str(path.relative_to(state_dir)))
    oss = state_dir / "oss"
    if oss.is_dir() and not any(oss.iterdir()):
        oss.rmdir()
    return deleted
