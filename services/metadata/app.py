"""I/O shell: the metadata agent process for one simulated host."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncIterator, Sequence

from protocol.messages import ecs
from services.metadata.core import MetadataCore
from services.metadata.http import Listeners, SharedListener
from services.metadata.netns import AddressListener, NamespaceError, NamespaceListeners
from services.runtime import service
from services.runtime.driver import Driver
from services.runtime.entropy import Entropy
from services.runtime.settings import Settings

ANNOUNCE_BATCH = 500  # endpoints per InstanceEndpointsReady (well under the bus's message limit)
DESCRIPTION = "Metadata agent: serves 100.100.100.200 for the instances of one simulated host."


def build(settings: Settings, entropy: Entropy) -> MetadataCore:
    return MetadataCore(host_id=settings.host_id, token_key=entropy.token_bytes(32))


@contextlib.asynccontextmanager
async def http_listeners(driver: Driver, settings: Settings) -> AsyncIterator[None]:
    core = driver.core
    assert isinstance(core, MetadataCore)

    async def announce(instance_id: str, url: str) -> None:
        await driver.endpoint.send("ecs", ecs.InstanceEndpointReady(instance_id=instance_id, host_id=core.host_id, url=url))

    async def announce_many(endpoints: Sequence[tuple[str, str]]) -> None:
        """Tell ECS where views serve: one message per :data:`ANNOUNCE_BATCH`, not one per instance."""
        if len(endpoints) == 1:
            await announce(*endpoints[0])
            return
        for start in range(0, len(endpoints), ANNOUNCE_BATCH):
            await driver.endpoint.send("ecs", ecs.InstanceEndpointsReady(host_id=core.host_id, endpoints=[
                ecs.MetadataEndpoint(instance_id=i, host_id=core.host_id, url=url) for i, url in endpoints[start:start + ANNOUNCE_BATCH]]))

    listeners: Listeners | SharedListener | NamespaceListeners | AddressListener
    if settings.metadata_mode == "address":
        try:
            listeners = AddressListener(core, driver.clock, announce)
            await listeners.start()
        except NamespaceError as exc:
            raise SystemExit(f"metadata agent: {exc}") from None
    elif settings.metadata_mode == "netns":
        try:
            listeners = NamespaceListeners(core, driver.clock, announce, cluster=str(Path(settings.state_dir).resolve()))
            await listeners.start()
        except NamespaceError as exc:
            raise SystemExit(f"metadata agent: {exc}") from None
    elif settings.metadata_mode == "port":
        listeners = Listeners(core, driver.clock, settings.http_host, announce, settings.gateway_url)
        listeners.announce_many = announce_many
    elif settings.metadata_mode == "shared":
        listeners = SharedListener(core, driver.clock, settings.http_host, announce, settings.gateway_url, announce_many)
    else:
        raise SystemExit(f"metadata agent: --metadata-mode must be port, shared, netns or address, not {settings.metadata_mode!r}")
    driver.after_step = listeners.reconcile
    try:
        yield
    finally:
        await listeners.close()


def main(argv: Sequence[str] | None = None) -> None:
    settings = Settings.parse(argv, prog="python -m services.metadata", description=DESCRIPTION)
    service.main(f"metadata-{settings.host_id}", DESCRIPTION, build, [http_listeners], settings=settings)
