"""Pure core: the metadata agent of one simulated host.

It keeps the newest :class:`InstanceView` of every instance ECS placed on the host (views
arrive as bus events, never by restart) and answers metadata reads from them with
:func:`MetadataCore.read`. On start it registers with ECS and receives every view it should
hold, so a restarted agent serves the right credentials before anything else; after the bus
reconnects (a partition, a broker restart) it registers again to catch up on what it missed.

HTTP rules (Alibaba's, see ``../shared/reference/alibaba.md`` section 2): scalar items and the
role listing have no trailing newline; the ``ram`` path segment matches case-insensitively;
no role (or a wrong role name) is 404; hardened mode uses ``PUT /latest/api/token`` with
``X-aliyun-ecs-metadata-token-ttl-seconds`` (1-21600) and ``X-aliyun-ecs-metadata-token``.

**No expired credential is ever served.** The view holds the role's newest credential; once it
has expired at ``now`` (STS was away longer than its remaining life, so no refresh arrived) no
valid credential exists for the role, and its path answers :data:`CREDENTIAL_UNAVAILABLE`'s
status (503) with a JSON body whose ``Code`` is not ``Success``, until a fresh view arrives.
Every client refuses that rather than use it: alibabacloud-credentials raises
``CredentialException(... HttpCode=503)`` on any non-200, credentials-go and the legacy core
error out, and a client that only reads the body sees ``Code`` != ``Success`` (the exact status
real ECS uses here is unverified). Each such answer is counted (:attr:`MetadataCore.refused`);
the first for a credential is logged, and so is the fresh one that ends the run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

from protocol import topics
from protocol.envelope import Envelope
from protocol.errors import Error
from protocol.messages import ecs as m
from protocol.times import iso
from services.runtime.effects import Effect, Log, Request, dispatch

TOKEN_TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
MAX_TOKEN_TTL = 21600
TREES = 256  # rendered metadata trees kept (the instances read last); see MetadataCore._rendered


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain"
    log: Log | None = None  # what the shell logs about this answer (rarely: not one line per request)


NOT_FOUND = Answer(404, "Not Found")
CREDENTIAL_UNAVAILABLE = "CredentialUnavailable"  # Code of the answer for a role whose newest credential expired


_string = json.encoder.encode_basestring_ascii  # how json.dumps writes a str (ensure_ascii)


def _credential_json(view: m.InstanceView) -> str:
    """``json.dumps`` of the six items with ``indent=2``, byte for byte: indent makes json use its slow
    pure-Python encoder, so this is its string escaping, in C (the simulator renders one per rotation)."""
    c = view.credentials
    assert c is not None
    return ('{\n  "AccessKeyId": ' + _string(c.access_key_id) + ',\n  "AccessKeySecret": ' + _string(c.access_key_secret)
            + ',\n  "Expiration": ' + _string(iso(c.expiration)) + ',\n  "SecurityToken": ' + _string(c.security_token)
            + ',\n  "LastUpdated": ' + _string(iso(c.last_updated)) + ',\n  "Code": "Success"\n}')


class MetadataCore:
    def __init__(self, *, host_id: str, token_key: bytes) -> None:
        self.host_id = host_id
        self.node_id = f"metadata-{host_id}"
        self._token_key = token_key
        self.views: dict[str, m.InstanceView] = {}
        self._trees: OrderedDict[str, tuple[int, dict[str, str]]] = OrderedDict()  # the last TREES rendered (per generation)
        self._credentials: dict[str, tuple[int, str]] = {}  # the credential document per view generation (the hot path)
        self.registered = 0  # how many times ECS answered RegisterHost (re-announce endpoints each time)
        self._registering = False
        self._received = 0  # views received so far in this registration (its pages)
        self._table = {m.InstanceChanged: self._instance_changed, m.InstancesChanged: self._instances_changed}
        self.refused = 0  # credential reads answered 503: the role's newest credential had expired
        self._refusing: dict[str, tuple[str, int]] = {}  # instance id -> (expired AccessKeyId, reads refused)
        self._touched: set[str] = set()  # instances whose view changed since the shell last asked (take_touched)

    # -- the Core protocol ----------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return [topics.host_instances(self.host_id)]

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        return dispatch(self._table, msg, now, product="metadata")

    def on_timer(self, now: float) -> list[Effect]:
        if self.registered or self._registering:
            return []
        self._registering = True
        return [Request("ecs", m.RegisterHost(host_id=self.host_id), "register")]

    def next_deadline(self) -> float | None:
        return None

    def on_reconnect(self, now: float) -> list[Effect]:
        """Back from a partition (or a broker restart): views may have been missed; ask ECS for
        all of them again. The current views keep serving meanwhile (they are still valid)."""
        if self._registering:
            return []
        self._registering = True
        return [Log("host_resync", "info", {}), Request("ecs", m.RegisterHost(host_id=self.host_id), "register")]

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        if isinstance(body, m.RegisterHostOk):
            restored = [log for view in body.instances if self._apply(view) for log in self._restored(view, now)]
            self._received += len(body.instances)
            if body.next_after:  # a page of a large host: ask for the next one (still registering)
                return [*restored, Request("ecs", m.RegisterHost(host_id=self.host_id, after=body.next_after), "register")]
            received, self._received = self._received, 0
            self._registering = False
            self.registered += 1
            return [Log("host_registered", "info", {"instances": received}), *restored]
        self._registering = False
        self._received = 0
        reason = body.message if isinstance(body, Error) else type(body).__name__
        # Not registered yet: ask again (a timeout already paced this attempt).
        return [Log("register_failed", "warning", {"reason": reason}), *self.on_timer(now)]

    def _instance_changed(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.InstanceChanged)
        view = body.view
        if msg.src != "ecs":  # views carry credentials: only ECS hands them out (on the host topic, or its own direct message)
            return [Log("view_not_from_ecs", "warning", {"src": msg.src, "instance_id": view.instance_id})]
        if view.host_id != self.host_id:
            return [Log("view_for_other_host", "warning", {"instance_id": view.instance_id, "host_id": view.host_id})]
        applied = self._apply(view)
        return [Log("instance_view_applied" if applied else "instance_view_stale", "debug",  # one per refresh: not at info
                    {"instance_id": view.instance_id, "generation": view.generation, "role": view.ram_role_name}),
                *(self._restored(view, now) if applied else [])]

    def _instances_changed(self, msg: Envelope, now: float) -> list[Effect]:
        """Several views at once (ECS's direct message after a batch): each applied as one
        :class:`InstanceChanged` would be, with one log line for the batch."""
        body = msg.body
        assert isinstance(body, m.InstancesChanged)
        if msg.src != "ecs":
            return [Log("view_not_from_ecs", "warning", {"src": msg.src, "instances": len(body.views)})]
        effects: list[Effect] = []
        applied = stale = foreign = 0
        for view in body.views:
            if view.host_id != self.host_id:
                foreign += 1
            elif self._apply(view):
                applied += 1
                effects += self._restored(view, now)
            else:
                stale += 1
        if foreign:
            effects.append(Log("view_for_other_host", "warning", {"instances": foreign}))
        return [Log("instance_views_applied", "info", {"applied": applied, "stale": stale}), *effects]

    def _restored(self, view: m.InstanceView, now: float) -> list[Effect]:
        """A new view ends a run of refused reads when it brings a credential valid at ``now``
        (or no role at all): say so once, with how many reads were refused."""
        refusing = self._refusing.get(view.instance_id)
        c = view.credentials
        if refusing is None or (view.ram_role_name and (c is None or c.expiration <= now)):
            return []
        del self._refusing[view.instance_id]
        return [Log("credential_available_again", "info", {
            "instance_id": view.instance_id, "role": view.ram_role_name, "expired": refusing[0], "refused": refusing[1],
            "access_key_id": c.access_key_id if c is not None and view.ram_role_name else ""})]

    def _apply(self, view: m.InstanceView) -> bool:
        current = self.views.get(view.instance_id)
        if current is not None and current.generation >= view.generation:
            return False
        self.views[view.instance_id] = view
        self._touched.add(view.instance_id)
        return True

    @property
    def ready(self) -> bool:
        """Ready once ECS has answered RegisterHost: before that, ECS cannot place instances here."""
        return self.registered > 0

    def take_touched(self) -> set[str]:
        """The instances whose view changed since the last call (the shell reconciles only those)."""
        touched, self._touched = self._touched, set()
        return touched

    def serving(self) -> set[str]:
        """The instances whose metadata view should be listening."""
        return {i for i, v in self.views.items() if not v.deleted}

    # -- HTTP -----------------------------------------------------------------------------
    def read(self, instance_id: str, method: str, path: str, headers: Mapping[str, str], now: float) -> Answer:
        """Answer one metadata request. ``headers`` must be looked up case-insensitively (lower-case
        keys, or a case-insensitive mapping such as aiohttp's)."""
        view = self.views.get(instance_id)
        if view is None or view.deleted:
            return NOT_FOUND
        if view.http_endpoint == "disabled":
            return Answer(403, "Forbidden: the metadata service is disabled for this instance (HttpEndpoint=disabled)")
        path = "/" + "".join(path.split("/", 3)[3:]) if path.startswith("http://") else path  # "http://h" is "/"
        if path == "/latest/api/token":
            return self._issue_token(view, method, headers, now) if method == "PUT" else Answer(405, "Method Not Allowed")
        if method not in ("GET", "HEAD"):
            return Answer(405, "Method Not Allowed")
        token = headers.get(TOKEN_HEADER)
        if token is not None and not self._token_valid(view, token, now):
            return Answer(401, "Unauthorized: invalid or expired metadata token")
        if token is None and view.http_tokens == "required":
            return Answer(401, "Unauthorized: this instance requires a metadata token (HttpTokens=required)")
        if not path.startswith("/latest/"):
            return NOT_FOUND
        return self._item(view, path[len("/latest/"):], now)

    def _item(self, view: m.InstanceView, path: str, now: float) -> Answer:
        parts = path.split("/")
        if len(parts) >= 2 and parts[0] == "meta-data" and parts[1].lower() == "ram":
            parts[1] = "ram"
        key = "/".join(parts)
        c = view.credentials
        if c is not None and view.ram_role_name and key == f"meta-data/ram/security-credentials/{view.ram_role_name}":
            if c.expiration <= now:
                return self._unavailable(view, c, now)
            return Answer(200, self._credential_document(view), "application/json")
        tree = self._rendered(view)
        if key in tree:
            return Answer(200, tree[key], "application/json" if tree[key].startswith("{") else "text/plain")
        prefix = key if key.endswith("/") or not key else key + "/"
        if key.endswith("/") or not key:
            children = sorted({k[len(prefix):].split("/")[0] + ("/" if "/" in k[len(prefix):] else "")
                               for k in tree if k.startswith(prefix) and k != prefix})
            if children:
                # the role listing is the bare role name, no trailing newline
                return Answer(200, "\n".join(children))
        return NOT_FOUND

    def _unavailable(self, view: m.InstanceView, c: m.InstanceCredentials, now: float) -> Answer:
        """The role's newest credential expired at ``now``: no valid one exists until a fresh view
        arrives. Never Success; no secret in the body; logged at the first refusal of ``c``."""
        self.refused += 1
        expired, count = self._refusing.get(view.instance_id, ("", 0))
        first = expired != c.access_key_id
        self._refusing[view.instance_id] = (c.access_key_id, 1 if first else count + 1)
        body = json.dumps({"Code": CREDENTIAL_UNAVAILABLE, "Message": (
            f"No valid credential for role {view.ram_role_name}: the newest one expired at {iso(c.expiration)} "
            "and no fresh one has arrived yet. Try again later."), "Expiration": iso(c.expiration)}, indent=2)
        log = Log("credential_expired_unserved", "warning", {
            "instance_id": view.instance_id, "role": view.ram_role_name, "access_key_id": c.access_key_id,
            "expired_at": iso(c.expiration), "now": iso(now)}) if first else None
        return Answer(503, body, "application/json", log)

    def _rendered(self, view: m.InstanceView) -> dict[str, str]:
        """The view's tree, rendered once per generation (a view never changes, it is replaced)
        and kept for the :data:`TREES` instances read last: a tree is ~4 KB, which 10,000
        instances need not hold all the time. The credential document, what SDKs read over and
        over, is kept for every instance (:meth:`_credential_document`)."""
        cached = self._trees.get(view.instance_id)
        if cached is None or cached[0] != view.generation:
            cached = self._trees[view.instance_id] = (view.generation, self._tree(view))
            while len(self._trees) > TREES:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(view.instance_id)
        return cached[1]

    def _credential_document(self, view: m.InstanceView) -> str:
        cached = self._credentials.get(view.instance_id)
        if cached is None or cached[0] != view.generation:
            cached = self._credentials[view.instance_id] = (view.generation, _credential_json(view))
        return cached[1]

    def _tree(self, view: m.InstanceView) -> dict[str, str]:
        """Every item of the instance's metadata, by path below ``/latest/``."""
        net = view.network
        md = {
            "instance-id": view.instance_id, "region-id": view.region_id, "zone-id": view.zone_id,
            "hostname": view.host_name, "private-ipv4": net.private_ip, "mac": net.mac,
            "instance/instance-type": view.instance_type, "instance/virtualization-solution": "ECS Virt",
            "image-id": view.image_id, "owner-account-id": view.account_id, "serial-number": view.serial_number,
            "network-type": "vpc", "vpc-id": net.vpc_id, "vpc-cidr-block": net.vpc_cidr_block,
            "vswitch-id": net.vswitch_id, "vswitch-cidr-block": net.vswitch_cidr_block,
            "dns-conf/nameservers": "100.100.2.136\n100.100.2.138",
            "ntp-conf/ntp-servers": "ntp.cloud.aliyuncs.com\nntp7.cloud.aliyuncs.com",
            "source-address": "http://mirrors.cloud.aliyuncs.com",
        }
        nic = {"network-interface-id": net.network_interface_id, "netmask": net.netmask,
               "vswitch-cidr-block": net.vswitch_cidr_block, "vpc-cidr-block": net.vpc_cidr_block,
               "private-ipv4s": json.dumps([net.private_ip]), "vswitch-id": net.vswitch_id, "vpc-id": net.vpc_id,
               "primary-ip-address": net.private_ip, "gateway": net.gateway}
        md.update({f"network/interfaces/macs/{net.mac}/{k}": v for k, v in nic.items()})
        tree = {f"meta-data/{k}": v for k, v in md.items()}
        identity = {"zone-id": view.zone_id, "serial-number": view.serial_number, "instance-id": view.instance_id,
                    "region-id": view.region_id, "private-ipv4": net.private_ip, "owner-account-id": view.account_id,
                    "mac": net.mac, "image-id": view.image_id, "instance-type": view.instance_type}
        tree["dynamic/instance-identity/document"] = json.dumps(identity, separators=(",", ":"))
        if view.user_data:
            try:
                tree["user-data"] = base64.b64decode(view.user_data, validate=True).decode("utf-8", "replace")
            except ValueError:
                tree["user-data"] = view.user_data
        if view.ram_role_name and view.credentials is not None:
            tree[f"meta-data/ram/security-credentials/{view.ram_role_name}"] = self._credential_document(view)
        return tree

    # -- hardened mode tokens -------------------------------------------------------------
    def _issue_token(self, view: m.InstanceView, method: str, headers: Mapping[str, str], now: float) -> Answer:
        if "x-forwarded-for" in headers:
            return Answer(403, "Forbidden: token requests may not carry X-Forwarded-For")
        try:
            ttl = int(headers.get(TOKEN_TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return Answer(400, f"Bad Request: {TOKEN_TTL_HEADER} must be 1-{MAX_TOKEN_TTL}")
        claim = f"{view.instance_id}|{int(now) + ttl}"
        mac = hmac.new(self._token_key, claim.encode(), hashlib.sha256).digest()[:16]
        return Answer(200, base64.urlsafe_b64encode(claim.encode() + b"|" + mac).decode())

    def _token_valid(self, view: m.InstanceView, token: str, now: float) -> bool:
        try:
            raw = base64.urlsafe_b64decode(token.encode())
            instance_id, expires, mac = raw.split(b"|", 2)
            expected = hmac.new(self._token_key, instance_id + b"|" + expires, hashlib.sha256).digest()[:16]
            return hmac.compare_digest(mac, expected) and instance_id.decode() == view.instance_id and int(expires) > now
        except (ValueError, TypeError):
            return False
