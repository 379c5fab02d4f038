"""I/O shell: the STS service process."""

from __future__ import annotations

from typing import Sequence

import structlog

from services.runtime import service
from services.runtime.entropy import Entropy
from services.runtime.settings import Settings
from services.sts.core import NAME, StsCore


log = structlog.get_logger(NAME)


def build(settings: Settings, entropy: Entropy) -> StsCore:
    if settings.sts_signing_key:
        key = bytes.fromhex(settings.sts_signing_key)
    else:
        log.warning("sts_master_key_generated", hint="set RAMSIM_STS_SIGNING_KEY so tokens survive an STS restart")
        key = entropy.token_bytes(32)
    return StsCore(account_id=settings.account_id, signing_key=key, entropy=entropy.token_bytes,
                   key_rotation=settings.sts_key_rotation)


def main(argv: Sequence[str] | None = None) -> None:
    service.main(NAME, "STS: AssumeRole and temporary credentials.", build, argv=argv)
