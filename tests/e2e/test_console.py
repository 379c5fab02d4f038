"""The web console in a real headless browser (Debian's chromium, driven by Playwright) against
``ramsim up`` run as a user would: real processes, real Mosquitto, real HTTP.

The page loads after sign-in, lists the instances, an attach clicked on the page shows the role
at that instance's metadata path within a second (the metadata view itself is polled), a detach
shows the 404, the live feed draws the attach and explains a denial
seen on the bus (RAM's reason), a pause injected from the page shows on its health panel until healed from it, and a screenshot is kept (``test-artifacts/console.png``, its path printed). A
console request without the operator credential is refused.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.cli import api
from services.cli.instances import instances, read_metadata
from services.ram.policy import ECS_TRUST_POLICY
from tests.e2e.conftest import CREDENTIALS, load, ramsim_up, wait_until

CHROMIUM = os.environ.get("RAMSIM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ROLE = "ConsoleRole"

pytestmark = pytest.mark.e2e


def _browser_or_skip() -> None:
    missing = [what for what, ok in (("chromium", Path(CHROMIUM).exists()), ("playwright", _has_playwright())) if not ok]
    if missing:
        message = f"the console's browser test needs {' and '.join(missing)} (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def _status(request: urllib.request.Request) -> int:
    try:
        with api.opener.open(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _printed_line(proc, starts: str, timeout: float = 10.0) -> str:  # noqa: ANN001
    deadline, seen = time.monotonic() + timeout, b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            seen += os.read(proc.stdout.fileno(), 65536)  # the raw pipe: nothing waits in a reader's buffer
            found = next((line for line in seen.decode(errors="replace").splitlines() if line.strip().startswith(starts)), "")
            if found:
                return found
    raise AssertionError(f"`ramsim up` printed no {starts!r} line; it printed {seen!r}")


def test_console_in_a_browser(tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    with ramsim_up(tmp_path / "state", "--instances", "3", "--time-scale", "60") as (proc, path):
        cluster = load(path)
        console = cluster.console_url
        assert console.startswith("http://127.0.0.1:"), cluster
        assert console in _printed_line(proc, "console")
        root = api.Credential(cluster.access_key_id, cluster.access_key_secret)

        # Refused without the operator credential: no cookie, a made-up cookie, a wrong secret.
        assert _status(urllib.request.Request(f"{console}/api/instances")) == 401
        assert _status(urllib.request.Request(f"{console}/api/instances", headers={"Cookie": "ramsim_console=forged"})) == 401
        attach = urllib.request.Request(f"{console}/api/instances/i-x/role", data=b'{"RoleName": "x"}', method="POST",
                                        headers={"Content-Type": "application/json"})
        assert _status(attach) == 401
        rebound = urllib.request.Request(f"{console}/", headers={"Host": "attacker.example:80"})
        assert _status(rebound) == 421  # DNS rebinding: a page served under another name gets nothing
        wrong = json.dumps({"AccessKeyId": cluster.access_key_id, "AccessKeySecret": "not-the-secret"}).encode()
        assert _status(urllib.request.Request(f"{console}/api/login", data=wrong, method="POST",
                                              headers={"Content-Type": "application/json"})) == 403

        api.call(cluster.gateway_url, "ram", "CreateRole", {"RoleName": ROLE, "AssumeRolePolicyDocument": ECS_TRUST_POLICY}, root)
        api.call(cluster.gateway_url, "ram", "AttachPolicyToRole",
                 {"RoleName": ROLE, "PolicyType": "System", "PolicyName": "AliyunOSSReadOnlyAccess"}, root)
        listed = instances(cluster)
        target = sorted(listed, key=lambda i: i["InstanceId"])[0]
        instance_id, url = target["InstanceId"], target["MetadataUrl"]
        assert read_metadata(url, CREDENTIALS + ROLE)[0] == 404

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(console)
                expect(page.locator("#login")).to_be_visible()
                page.fill("#login-id", cluster.access_key_id)
                page.fill("#login-secret", cluster.access_key_secret)
                page.click("#login-submit")

                for each in listed:  # the page lists the instances
                    expect(page.locator(f'tr[data-instance="{each["InstanceId"]}"]')).to_be_visible(timeout=10_000)
                cookie = next(c for c in page.context.cookies() if c["name"] == "ramsim_console")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

                page.click(f'tr[data-instance="{instance_id}"]')
                expect(page.locator("#sel-id")).to_have_text(instance_id)
                expect(page.locator(f'#attach-role option[value="{ROLE}"]')).to_have_count(1, timeout=10_000)
                page.select_option("#attach-role", ROLE)

                clicked = time.monotonic()
                page.click("#attach-btn")
                wait_until(lambda: read_metadata(url, CREDENTIALS + ROLE)[0] == 200, timeout=1.0,
                           what=f"{ROLE} at {instance_id}'s metadata path within a second of the click")
                attached_in = time.monotonic() - clicked
                expect(page.locator("#sel-role")).to_have_text(ROLE, timeout=5_000)
                expect(page.locator(f'tr[data-instance="{instance_id}"] .role-cell')).to_have_text(ROLE, timeout=5_000)
                expect(page.locator("#cred-key")).to_contain_text("STS.", timeout=5_000)
                assert "…" in page.inner_text("#cred-key")  # masked: only the AccessKeyId's prefix
                expect(page.locator("#cred-left")).to_contain_text("expires in")
                expect(page.locator("#history tbody tr")).to_have_count(1)
                expect(page.locator(f'#roles tr[data-role="{ROLE}"]')).to_contain_text("AliyunOSSReadOnlyAccess")
                expect(page.locator('#health .chip[data-service="ecs"]')).to_have_class("chip healthy", timeout=10_000)
                # The live feed (the trace tap, over SSE) drew the attach as a sequence diagram.
                expect(page.locator("#diagram text", has_text="AttachInstanceRamRole").first).to_be_attached(timeout=5_000)
                expect(page.locator("#diagram text", has_text="RoleAttachedToInstance").first).to_be_attached(timeout=5_000)

                # A call denied elsewhere (a RAM user with no permission) is explained on the page: RAM's reason.
                api.call(cluster.gateway_url, "ram", "CreateUser", {"UserName": "nobody"}, root)
                key = api.call(cluster.gateway_url, "ram", "CreateAccessKey", {"UserName": "nobody"}, root)["AccessKey"]
                with pytest.raises(api.ApiError):
                    api.call(cluster.gateway_url, "ecs", "AttachInstanceRamRole",
                             {"RegionId": cluster.region_id, "RamRoleName": ROLE, "InstanceIds": json.dumps([instance_id])},
                             api.Credential(key["AccessKeyId"], key["AccessKeySecret"]))
                expect(page.locator("#notes li.denied").first).to_contain_text("Decided by: none", timeout=5_000)
                expect(page.locator("#notes li.denied").first).to_contain_text("ImplicitDeny")
                expect(page.locator("#notes li.denied").first).to_contain_text("no statement allowed ecs:AttachInstanceRamRole")

                served = json.loads(read_metadata(url, CREDENTIALS + ROLE)[1])
                for secret in (served["AccessKeySecret"], served["SecurityToken"], cluster.access_key_secret):
                    assert secret not in page.content()  # no secret reaches the page

                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "console.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nconsole screenshot: {shot} (attach seen at the metadata path {attached_in * 1000:.0f} ms after the click)")

                clicked = time.monotonic()
                page.click("#detach-btn")
                wait_until(lambda: read_metadata(url, CREDENTIALS + ROLE)[0] == 404, timeout=1.0,
                           what=f"the 404 at {instance_id}'s metadata path within a second of the detach")
                expect(page.locator("#md-status")).to_have_text("404", timeout=5_000)
                expect(page.locator("#sel-role")).to_have_text("none")

                # A fault injected from the page, its effect watched there, then healed from the page.
                page.select_option("#fault-kind", "pause")
                page.select_option("#fault-target", "sts")
                page.click("#fault-inject")
                expect(page.locator("#faults li")).to_have_count(1, timeout=5_000)
                expect(page.locator('#health .chip[data-service="sts"]')).to_have_class("chip paused", timeout=10_000)
                page.click("#faults li button")
                expect(page.locator("#faults li")).to_have_count(0, timeout=5_000)
                expect(page.locator('#health .chip[data-service="sts"]')).to_have_class("chip healthy", timeout=10_000)

                page.click("#logout")  # signed out: the API refuses the browser's next request
                expect(page.locator("#login")).to_be_visible()
                assert page.evaluate("fetch('/api/instances').then(r => r.status)") == 401
            finally:
                browser.close()
        log = (tmp_path / "state" / "logs" / "console.log").read_text()
        assert "console_login" in log and "console_login_refused" in log
        for secret in (served["AccessKeySecret"], served["SecurityToken"], cluster.access_key_secret, key["AccessKeySecret"]):
            assert secret not in log  # nor its log
    assert time.monotonic() - started < 90, "the console's browser test should stay well under a minute"
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
