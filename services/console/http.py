"""I/O shell: the web console's HTTP routes (aiohttp): the page, the sign-in guard and the JSON API.

The guard: a request whose Host is not the loopback's is answered 421 (DNS rebinding); every
``/api/`` request but ``/api/login`` needs the session cookie (401); a write must be JSON (415).
Each route calls :class:`services.console.app.Console`, which makes the signed gateway calls; an
error answer is shown with RAM's explanation (``Denied``, ``DecidedBy``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from services.cli import api
from services.console import core
from services.console.faults import FaultError

if TYPE_CHECKING:
    from services.console.app import Console

STATIC = Path(__file__).parent / "static"
log = structlog.get_logger("console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"Code": code, "Message": message}, status=status)


def _refused(exc: core.Refused) -> web.Response:
    shown = core.explain_error(exc.status, exc.body)
    if "Denied" in shown:  # the same "Decided by:" the CLI and the tour print
        shown["Denied"]["DecidedBy"] = api.decided_by(exc.body.get("AccessDeniedDetail"))
    return web.json_response(shown, status=exc.status if exc.status >= 400 else 502)


def make_app(console: Console) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host.rsplit(":", 1)[0] not in core.LOCAL_HOSTS:  # a page on another name (DNS rebinding) gets nothing
            return _error(421, "MisdirectedRequest", "the console answers only as 127.0.0.1 or localhost")
        if request.path.startswith("/api/") and request.path != "/api/login":
            if not console.sessions.valid(request.cookies.get(core.COOKIE), time.time()):
                return _error(401, "NotSignedIn", "sign in with the cluster's operator AccessKey first")
        if request.method in ("POST", "DELETE", "PUT") and request.content_type != "application/json":
            return _error(415, "UnsupportedMediaType", "send JSON (Content-Type: application/json)")
        try:
            return await handler(request)
        except core.Refused as exc:
            return _refused(exc)
        except FaultError as exc:
            return _error(400, "InvalidFault", str(exc))

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            found = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"Code": "InvalidJson", "Message": "the body is not JSON"}),
                                     content_type="application/json") from None
        return found if isinstance(found, dict) else {}

    async def index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login(request: web.Request) -> web.Response:
        given = await body(request)
        if not core.credential_matches(str(given.get("AccessKeyId", "")), str(given.get("AccessKeySecret", "")),
                                       console.settings.root_access_key_id, console.settings.root_access_key_secret):
            log.warning("console_login_refused")
            return _error(403, "InvalidAccessKey", "that is not this cluster's operator AccessKey pair (see the cluster file)")
        token = console.sessions.open(secrets.token_urlsafe(32), time.time())
        answer = web.json_response({"SignedIn": True, "AccountId": console.settings.account_id, "RegionId": console.settings.region_id,
                                    "TimeScale": console.settings.time_scale})
        answer.set_cookie(core.COOKIE, token, httponly=True, samesite="Strict", path="/", max_age=int(core.SESSION_SECONDS))
        log.info("console_login")
        return answer

    async def logout(request: web.Request) -> web.Response:
        console.sessions.close(request.cookies.get(core.COOKIE))
        answer = web.json_response({"SignedIn": False})
        answer.del_cookie(core.COOKIE, path="/")
        return answer

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"SignedIn": True, "AccountId": console.settings.account_id, "RegionId": console.settings.region_id,
                                  "TimeScale": console.settings.time_scale})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"Services": console.health})

    async def instances(request: web.Request) -> web.Response:
        page, size = core.page_request(request.query.get("page"), request.query.get("size"))
        return web.json_response(await console.instances(page, size))

    async def instance(request: web.Request) -> web.Response:
        return web.json_response(await console.instance(request.match_info["id"]))

    async def attach_role(request: web.Request) -> web.Response:
        instance_id, role = request.match_info["id"], str((await body(request)).get("RoleName", ""))
        answer = await console.gateway.ok("ecs", "AttachInstanceRamRole", RegionId=console.settings.region_id,
                                          RamRoleName=role, InstanceIds=json.dumps([instance_id]))
        return _per_instance(console, answer, "AttachInstanceRamRoleResults", "AttachInstanceRamRoleResult",
                             f"AttachInstanceRamRole {role} -> {instance_id}")

    async def detach_role(request: web.Request) -> web.Response:
        instance_id = request.match_info["id"]
        answer = await console.gateway.ok("ecs", "DetachInstanceRamRole", RegionId=console.settings.region_id,
                                          InstanceIds=json.dumps([instance_id]))
        return _per_instance(console, answer, "DetachInstanceRamRoleResults", "DetachInstanceRamRoleResult",
                             f"DetachInstanceRamRole {instance_id}")

    async def roles(request: web.Request) -> web.Response:
        return web.json_response({"Roles": await console.roles()})

    async def policies(request: web.Request) -> web.Response:
        return web.json_response({"Policies": await console.policies()})

    async def role_policy(request: web.Request) -> web.Response:
        role, given = request.match_info["name"], await body(request)
        action = "AttachPolicyToRole" if request.method == "POST" else "DetachPolicyFromRole"
        name, kind = str(given.get("PolicyName", "")), str(given.get("PolicyType", "System"))
        answer = await console.gateway.ok("ram", action, RoleName=role, PolicyName=name, PolicyType=kind)
        console.note("action", f"{action} {kind}:{name} {'->' if action.startswith('Attach') else 'from'} {role}")
        return web.json_response({"Done": True, "RequestId": answer.get("RequestId", "")})

    async def explain(request: web.Request) -> web.Response:
        given = await body(request)
        answer = await console.gateway.ok("ram", "SimulatePrincipalPolicy", PrincipalType=str(given.get("PrincipalType", "User")),
                                          PrincipalName=str(given.get("PrincipalName", "")), ActionName=str(given.get("ActionName", "")),
                                          ResourceName=str(given.get("ResourceName", "") or "*"))
        return web.json_response(core.explain_decision(answer))

    async def faults(request: web.Request) -> web.Response:
        if console.faults is None:
            return _error(409, "NoCluster", "the console was started without a cluster file: no faults")
        return web.json_response({"Active": console.faults.active(), "Targets": console.faults.targets()})

    async def inject(request: web.Request) -> web.Response:
        if console.faults is None:
            return _error(409, "NoCluster", "the console was started without a cluster file: no faults")
        given = await body(request)
        types = [t.strip() for t in str(given.get("Types", "")).split(",") if t.strip()]
        try:
            entry = await console.faults.inject(str(given.get("Kind", "")), str(given.get("Target", "")), types,
                                                float(given.get("Probability", 1.0) or 1.0), float(given.get("Delay", 0.0) or 0.0))
        except (TypeError, ValueError) as exc:
            raise FaultError(str(exc)) from None
        console.note("fault", f"fault {entry['Id']}: {entry['Kind']} {entry['Target']}" + (f" {','.join(types)}" if types else ""))
        return web.json_response(entry)

    async def heal(request: web.Request) -> web.Response:
        if console.faults is None or not await console.faults.heal(request.match_info["id"]):
            return _error(404, "FaultNotFound", f"no active fault {request.match_info['id']}")
        console.note("fault", f"fault {request.match_info['id']} healed")
        return web.json_response({"Healed": request.match_info["id"]})

    async def feed(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await stream.prepare(request)
        token = request.cookies.get(core.COOKIE)
        with console.hub.subscribe() as queue:
            while console.sessions.valid(token, time.time()):  # a session signed out or expired ends its stream
                try:
                    item = await asyncio.wait_for(queue.get(), console.keepalive)
                    await stream.write(f"data: {json.dumps(item)}\n\n".encode())
                except asyncio.TimeoutError:
                    await stream.write(b": keep-alive\n\n")
                except (ConnectionResetError, RuntimeError):
                    break
        return stream

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.add_routes([
        web.get("/", index), web.static("/static", STATIC),
        web.post("/api/login", login), web.post("/api/logout", logout), web.get("/api/whoami", whoami),
        web.get("/api/health", health), web.get("/api/instances", instances), web.get("/api/instances/{id}", instance),
        web.post("/api/instances/{id}/role", attach_role), web.delete("/api/instances/{id}/role", detach_role),
        web.get("/api/roles", roles), web.get("/api/policies", policies),
        web.post("/api/roles/{name}/policies", role_policy), web.delete("/api/roles/{name}/policies", role_policy),
        web.post("/api/explain", explain),
        web.get("/api/faults", faults), web.post("/api/faults", inject), web.delete("/api/faults/{id}", heal),
        web.get("/api/feed", feed),
    ])
    return app


def _per_instance(console: Console, answer: Mapping[str, Any], outer: str, inner: str, what: str) -> web.Response:
    """Attach/Detach answer per instance: a failed one is an error on the page, with its code."""
    results = answer.get(outer, {}).get(inner, [])
    failed = [r for r in results if not r.get("Success", True)]
    if failed:
        return web.json_response({"Status": 400, "Code": failed[0].get("Code", ""), "Message": failed[0].get("Message", "")}, status=400)
    console.note("action", what, At=time.time())
    return web.json_response({"Done": True, "RequestId": answer.get("RequestId", "")})
