"""I/O shell: the bus over a real MQTT broker, on gmqtt. The only module that imports gmqtt.

* MQTT 5 by default, or 3.1.1 when the URL says ``?version=3.1.1`` (RabbitMQ's MQTT plugin speaks
  only 3.1.1); QoS 1, persistent session (``clean_session=False`` and, on MQTT 5, an unbounded
  session expiry), so messages published while this client is away are kept by the broker for it.
* Manual acknowledgement (``optimistic_acknowledgement=False``): gmqtt sends the PUBACK when
  ``on_message`` returns, and ours returns only after every handler finished. A crash while
  handling therefore means redelivery, never loss.
* Handlers run one message at a time, in arrival order (one pump task per client).
* gmqtt reconnects by itself but does not re-subscribe: when the broker answers
  ``session_present=0`` (it lost our session) we subscribe again to everything.
* TCP_NODELAY on the socket: without it a QoS 1 round trip costs ~88 ms instead of < 1 ms.
* Backpressure: gmqtt's ``publish()`` returns at once and fails outright once the broker's
  Receive Maximum of unacknowledged QoS 1 messages is in flight. ``publish`` here waits for
  PUBACKs to open the window instead (tracked by :class:`_Inflight`, gmqtt's own store of
  in-flight messages, which it replays after a reconnect).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import gmqtt
import structlog
from gmqtt.storage import PersistentStorage

from protocol import topics
from services.runtime.bus import BusError, Handler, deliver

log = structlog.get_logger("mqtt_bus")

SESSION_NEVER_EXPIRES = 0xFFFFFFFF


VERSIONS = {"5": gmqtt.constants.MQTTv50, "5.0": gmqtt.constants.MQTTv50, "3.1.1": gmqtt.constants.MQTTv311}


@dataclass(frozen=True)
class BrokerAddress:
    """What a broker URL says: ``mqtt://[user[:password]@]host[:port][?version=3.1.1|5]``.
    User and password are percent-decoded (a RabbitMQ username ``vhost:user`` is ``vhost%3Auser``)."""

    host: str
    port: int
    user: str | None
    password: str | None
    version: str = "5"

    @property
    def mqtt_version(self) -> int:
        return VERSIONS[self.version]


def parse(url: str) -> BrokerAddress:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise BusError(f"broker URL must look like mqtt://host:port, got {url!r}")
    query = urllib.parse.parse_qs(parts.query)
    unknown = sorted(set(query) - {"version"})
    if unknown:
        raise BusError(f"broker URL {url.split('@')[-1]!r}: unknown parameter(s) {', '.join(unknown)}; only version=3.1.1|5")
    version = query.get("version", ["5"])[-1]
    if version not in VERSIONS:
        raise BusError(f"broker URL: version={version!r} is not an MQTT version ramsim speaks (3.1.1 or 5)")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise BusError(f"broker URL {url.split('@')[-1]!r}: {exc}") from None
    unquote = urllib.parse.unquote
    return BrokerAddress(parts.hostname, port, None if parts.username is None else unquote(parts.username),
                         None if parts.password is None else unquote(parts.password), version)


def parse_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``mqtt://[user[:password]@]host[:port]`` -> (host, port, user, password)."""
    address = parse(url)
    return address.host, address.port, address.user, address.password


def session_client_id(base: str, password: str | None) -> str:
    """``base`` plus a suffix derived from the identity's password, when there is one: a client id
    nobody without that password can guess, so nobody can take the session on a broker that does
    not bind client ids to usernames (RabbitMQ; Mosquitto's services listener replaces it anyway)."""
    if not password:
        return base
    return f"{base}-{hmac.new(password.encode(), b'ramsim client id', hashlib.sha256).hexdigest()[:20]}"


class _Inflight(PersistentStorage):
    """gmqtt's in-flight store, plus an event that fires whenever a PUBACK frees a slot."""

    def __init__(self) -> None:
        super().__init__()
        self.freed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:  # gmqtt does `persistent_storage or PersistentStorage()`
        return True

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.freed.set()

    def clear(self) -> None:
        super().clear()
        self.freed.set()


class MqttBus:
    def __init__(self, url: str, client_id: str, *, persistent: bool = True, reconnect_delay: float = 0.5) -> None:
        self.client_id = client_id
        self.url = url
        self.address = parse(url)
        self._handlers: list[tuple[str, Handler]] = []
        self._inbox: asyncio.Queue[tuple[str, bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._pending_subacks: dict[int, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._open = asyncio.Event()
        self.reconnects = 0
        mqtt5 = self.address.mqtt_version == gmqtt.constants.MQTTv50
        kwargs = {"session_expiry_interval": SESSION_NEVER_EXPIRES} if persistent and mqtt5 else {}
        self._inflight = _Inflight()
        self._client = gmqtt.Client(client_id, clean_session=not persistent, optimistic_acknowledgement=False,
                                    persistent_storage=self._inflight, **kwargs)
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": reconnect_delay})
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._first_connect = True
        self._closing = False
        self.on_reconnect: Callable[[], None] | None = None  # the owner's hook (a driver resyncs its core)

    @classmethod
    async def connect(cls, url: str, client_id: str, *, persistent: bool = True, hold: bool = False,
                      timeout: float = 10.0) -> "MqttBus":
        """Connect. With ``hold``, nothing is delivered until :meth:`open`: a persistent session
        may hold messages from while we were away, and they must wait for our handlers."""
        bus = cls(url, client_id, persistent=persistent)
        if not hold:
            bus.open()
        address = bus.address
        host, port, user, password = address.host, address.port, address.user, address.password
        if user:
            bus._client.set_auth_credentials(user, password)
        bus._pump = asyncio.get_running_loop().create_task(bus._deliver(), name=f"mqtt-bus:{client_id}")
        try:
            await asyncio.wait_for(bus._client.connect(host, port, version=address.mqtt_version), timeout)
        except (OSError, asyncio.TimeoutError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
            bus._pump.cancel()
            who = f" as {user!r}" if user else " anonymously"
            # a refusal reads "code 135 (Connection Refused: Not authorized)": wrong or missing credentials
            detail = str(exc) if isinstance(exc, gmqtt.mqtt.handler.MQTTConnectError) else repr(exc)
            raise BusError(f"cannot connect to MQTT broker at {host}:{port}{who}: {detail}") from exc
        bus._set_nodelay()
        return bus

    async def __aenter__(self) -> "MqttBus":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Start delivering messages to the handlers subscribed so far (and later)."""
        self._open.set()

    @property
    def connected(self) -> bool:
        return self._client.is_connected

    async def subscribe(self, topic_filter: str, handler: Handler, *, timeout: float = 10.0) -> None:
        """Subscribe; :class:`BusError` when the broker refuses (a SUBACK failure code, or, as RabbitMQ
        does, closing the connection), and then the subscription is forgotten, never renewed."""
        entry = (topic_filter, handler)
        self._handlers.append(entry)
        try:
            await self._subscribe(topic_filter, timeout)
        except BusError:
            self._handlers.remove(entry)
            raise

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1; waits while the broker's window of unacknowledged messages is full."""
        # gmqtt refuses a packet id once Receive Maximum - 1 are in use; keep one for SUBSCRIBE.
        window = max(1, self._client._package_handler.id_generator._max - 2)
        while len(self._inflight) >= window:
            self._inflight.freed.clear()
            await self._inflight.freed.wait()
        self._client.publish(topic, payload, qos=1, retain=False)

    async def close(self) -> None:
        self._closing = True
        try:
            if self._client.is_connected:
                await self._client.disconnect()
            else:
                self._client.stop_reconnect()
        finally:
            if self._pump is not None:
                self._pump.cancel()
                try:
                    await self._pump
                except asyncio.CancelledError:
                    pass

    # -- internals ------------------------------------------------------------------------
    async def _subscribe(self, topic_filter: str, timeout: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mid = self._client.subscribe(topic_filter, qos=1)
        self._pending_subacks[mid] = future
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise BusError(f"no SUBACK for {topic_filter!r} within {timeout}s") from None
        finally:
            self._pending_subacks.pop(mid, None)

    def _set_nodelay(self) -> None:
        connection = getattr(self._client, "_connection", None)
        transport = getattr(connection, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, properties: dict) -> None:
        self._set_nodelay()
        if self._first_connect:
            self._first_connect = False
            return
        self.reconnects += 1
        log.info("broker_reconnected", client_id=self.client_id, session_present=bool(flags))
        if not flags:  # the broker lost our session: subscribe again (gmqtt does not)
            for topic_filter in {f for f, _ in self._handlers}:
                client.subscribe(topic_filter, qos=1)
        if self.on_reconnect is not None:
            self.on_reconnect()

    def _on_disconnect(self, client: gmqtt.Client, packet: object, exc: object = None) -> None:
        if not self._closing:
            log.warning("broker_connection_lost", client_id=self.client_id)
        for future in self._pending_subacks.values():  # RabbitMQ answers a forbidden SUBSCRIBE by closing the connection
            if not future.done():
                future.set_exception(BusError("the broker closed the connection before its SUBACK (refused?)"))

    def _on_subscribe(self, client: gmqtt.Client, mid: int, qos: tuple[int, ...], properties: dict) -> None:
        future = self._pending_subacks.get(mid)
        if future is None or future.done():
            return
        if any(q >= 128 for q in qos):
            future.set_exception(BusError(f"subscription refused by broker (codes {qos})"))
        else:
            future.set_result(None)

    async def _on_message(self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((topic, payload, done))
        await done  # PUBACK goes out when this returns: after the handlers ran
        return 0

    async def _deliver(self) -> None:
        await self._open.wait()
        while True:
            topic, payload, done = await self._inbox.get()
            try:
                # a shared subscription ($share/<group>/<filter>) delivers topics its <filter> matches
                await deliver([(topics.unshared(f), h) for f, h in self._handlers], topic, payload, self.client_id)
            finally:
                if not done.done():
                    done.set_result(None)
