"""I/O shell: the STS service process."""

from __future__ import annotations

from typing import Sequence

from services.runtime import service
from services.runtime.entropy import Entropy
from services.runtime.settings import Settings
from services.sts.core import NAME, StsCore


def build(settings: Settings, entropy: Entropy) -> StsCore:
    key = bytes.fromhex(settings.sts_signing_key) if settings.sts_signing_key else entropy.token_bytes(32)
    return StsCore(account_id=settings.account_id, signing_key=key, entropy=entropy.token_bytes)


def main(argv: Sequence[str] | None = None) -> None:
    service.main(NAME, "STS: AssumeRole and temporary credentials.", build, argv=argv)
