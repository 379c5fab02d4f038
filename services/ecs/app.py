"""I/O shell: the ECS control-plane process."""

from __future__ import annotations

from typing import Sequence

from services.ecs.core import NAME, EcsCore
from services.runtime import service
from services.runtime.entropy import Entropy
from services.runtime.settings import Settings


def build(settings: Settings, entropy: Entropy) -> EcsCore:
    return EcsCore(account_id=settings.account_id, region_id=settings.region_id, zone_id=settings.zone_id,
                   credential_lifetime=settings.credential_lifetime, refresh_before=settings.refresh_before,
                   entropy=entropy.token_bytes, refresh_jitter=settings.refresh_jitter, vswitch_cidr=settings.vswitch_cidr)


def main(argv: Sequence[str] | None = None) -> None:
    service.main(NAME, "ECS control plane: instances, instance RAM roles, credential refresh.", build, argv=argv)
