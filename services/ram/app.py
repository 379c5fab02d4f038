"""I/O shell: the RAM service process (its directory persists in ``<state_dir>/ram.db``)."""

from __future__ import annotations

from typing import Sequence

from services.ram.core import NAME, RamCore
from services.runtime import service
from services.runtime.entropy import Entropy
from services.runtime.settings import Settings

WATCHER_ACK_TIMEOUT = 1.0  # real seconds RAM holds a change's reply for a watcher's acknowledgement


def build(settings: Settings, entropy: Entropy) -> RamCore:
    if not settings.root_access_key_id or not settings.root_access_key_secret:
        raise SystemExit("ram: set RAMSIM_ROOT_ACCESS_KEY_ID and RAMSIM_ROOT_ACCESS_KEY_SECRET (ramsim up does this)")
    return RamCore(account_id=settings.account_id, root_access_key_id=settings.root_access_key_id,
                   root_access_key_secret=settings.root_access_key_secret, entropy=entropy.token_bytes,
                   now=service.clock_for(settings).now(), ack_timeout=WATCHER_ACK_TIMEOUT * settings.time_scale)


def main(argv: Sequence[str] | None = None) -> None:
    service.main(NAME, "RAM: identities, roles, policies, authentication and authorization.", build, argv=argv)
