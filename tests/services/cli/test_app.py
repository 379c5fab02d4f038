"""``ramsim app``'s pure parts: how an oss2 outcome is classified, percentiles, the summary, the
Put/Get alternation; and the workload loop against a fake bucket (no network)."""

from __future__ import annotations

import asyncio
import json

import oss2
from alibabacloud_credentials.exceptions import CredentialException
import pytest

from protocol import codec
from protocol.envelope import Envelope
from protocol.messages.app import AppCallCompleted
from services.cli import app


def server_error(code: str, status: int = 403, kind: type = oss2.exceptions.ServerError) -> Exception:
    return kind(status, {"x-oss-request-id": "RID"}, b"", {"Code": code, "Message": "m"})


@pytest.mark.parametrize(("exc", "outcome", "code"), [
    (None, "ok", ""),
    (server_error("AccessDenied", kind=oss2.exceptions.AccessDenied), "denied", "AccessDenied"),
    (server_error("AccessDenied"), "denied", "AccessDenied"),
    (server_error("SecurityTokenExpired"), "expired", "SecurityTokenExpired"),
    (server_error("InvalidSecurityToken"), "expired", "InvalidSecurityToken"),
    (server_error("InvalidSecurityToken.Expired"), "expired", "InvalidSecurityToken.Expired"),
    (server_error("InvalidAccessKeyId"), "error", "InvalidAccessKeyId"),
    (server_error("NoSuchBucket", 404, oss2.exceptions.NoSuchBucket), "error", "NoSuchBucket"),
    (server_error("SignatureDoesNotMatch"), "error", "SignatureDoesNotMatch"),
    (oss2.exceptions.RequestError(ConnectionRefusedError("refused")), "error", "RequestError"),
    (ValueError("credentials unavailable"), "error", "ValueError"),
])
def test_classify(exc: Exception | None, outcome: str, code: str) -> None:
    assert app.classify(exc) == (outcome, code)


def test_percentile_is_nearest_rank() -> None:
    assert app.percentile([], 50) == 0.0
    assert app.percentile([7.0], 99) == 7.0
    values = [float(v) for v in range(100, 0, -1)]  # unsorted input
    assert (app.percentile(values, 50), app.percentile(values, 99), app.percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert app.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert app.percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0


def test_operations_alternate_and_get_only_what_was_put() -> None:
    assert app.next_operation(None, None) == app.PUT
    assert app.next_operation(app.PUT, "k") == app.GET
    assert app.next_operation(app.PUT, None) == app.PUT  # the put was refused: nothing of ours to read yet
    assert app.next_operation(app.GET, "k") == app.PUT


def test_summary_counts_outcomes_codes_and_latencies_per_operation() -> None:
    stats = app.Stats()
    for call in (app.Call("PutObject", "ok", 2.0), app.Call("GetObject", "ok", 1.0),
                 app.Call("PutObject", "denied", 4.0, "AccessDenied"), app.Call("GetObject", "expired", 3.0, "SecurityTokenExpired")):
        stats.add(call)
    with pytest.raises(ValueError):
        stats.add(app.Call("PutObject", "maybe", 1.0))
    summary = stats.summary(instance_id="i-1", bucket="b", elapsed_s=1.0, events_published=4, events_failed=0)
    assert (summary["calls"], summary["ok"], summary["denied"], summary["expired"], summary["error"]) == (4, 2, 1, 1, 0)
    assert summary["codes"] == {"AccessDenied": 1, "SecurityTokenExpired": 1}
    assert summary["latency_ms"] == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0}
    assert summary["by_operation"]["PutObject"]["denied"] == 1 and summary["by_operation"]["GetObject"]["calls"] == 2
    json.dumps(summary)
    assert "calls=4 ok=2 denied=1 expired=1 error=0 p50=2.0ms p99=4.0ms" in stats.progress(1.0)
    text = app.table(summary)
    assert "i-1" in text and "AccessDenied x1" in text and text.splitlines()[-2].startswith("all")


class FakeResult:
    def __init__(self, data: bytes = b"") -> None:
        self.data, self.request_id = data, "RID"

    def read(self) -> bytes:
        return self.data


class FakeBucket:
    """Denies every call after ``deny_after`` calls; can corrupt reads; ``no_role_for`` calls fail as the
    credentials provider does while the instance has no role yet (its metadata view 404s)."""

    bucket_name = "b"

    def __init__(self, deny_after: int = 10**9, corrupt: bool = False, no_role_for: int = 0) -> None:
        self.objects: dict[str, bytes] | None = {} if not no_role_for else None  # None: not created yet
        self.calls, self.deny_after, self.corrupt, self.no_role_for = 0, deny_after, corrupt, no_role_for

    def create_bucket(self) -> None:
        if self.no_role_for > 0:
            self.no_role_for -= 1
            raise CredentialException("Failed to get RAM session credentials from ECS metadata service. HttpCode=404")
        if self.objects is not None:
            raise server_error("BucketAlreadyExists", kind=oss2.exceptions.Conflict)
        self.objects = {}

    def _count(self) -> None:
        self.calls += 1
        if self.calls > self.deny_after:
            raise server_error("AccessDenied", kind=oss2.exceptions.AccessDenied)

    def put_object(self, key: str, data: bytes) -> FakeResult:
        self._count()
        if self.objects is None:
            raise server_error("NoSuchBucket", kind=oss2.exceptions.NoSuchBucket)
        self.objects[key] = data
        return FakeResult()

    def get_object(self, key: str) -> FakeResult:
        self._count()
        return FakeResult(self.objects[key] + (b"!" if self.corrupt else b""))


def test_workload_records_every_call_and_publishes_an_event_for_each() -> None:
    published: list[AppCallCompleted] = []
    options = app.Options(instance_id="i-1", rate=0, duration=5, max_calls=7, key_prefix="p/")
    workload = app.Workload(options, FakeBucket(deny_after=4), published.append, lambda line: None)
    asyncio.run(workload.run())
    assert [(c.operation, c.outcome) for c in workload.stats.calls] == [
        ("PutObject", "ok"), ("GetObject", "ok"), ("PutObject", "ok"), ("GetObject", "ok"),
        ("PutObject", "denied"), ("GetObject", "denied"), ("PutObject", "denied")]
    assert [(e.operation, e.outcome, e.code) for e in published][-1] == ("PutObject", "denied", "AccessDenied")
    assert all(e.instance_id == "i-1" and e.request_id == "RID" and e.latency_ms >= 0 for e in published)
    envelope = codec.decode(codec.encode(Envelope(src="operator", dest="*", msg_id=1, body=published[0])))
    assert envelope.body == published[0]


def test_an_application_started_before_its_role_gets_its_bucket_once_the_role_arrives() -> None:
    lines: list[str] = []
    bucket = FakeBucket(no_role_for=2)
    workload = app.Workload(app.Options(instance_id="i-1", rate=0, max_calls=6), bucket, lambda e: None, lines.append)
    asyncio.run(workload.run())
    assert [(c.operation, c.outcome, c.code) for c in workload.stats.calls] == [
        ("PutObject", "error", "CredentialException"), ("PutObject", "error", "CredentialException"),
        ("PutObject", "ok", ""), ("GetObject", "ok", ""), ("PutObject", "ok", ""), ("GetObject", "ok", "")]
    assert lines.count("created bucket b") == 1  # asked again only until it worked


def test_an_existing_bucket_is_used_as_it_is() -> None:
    bucket = FakeBucket()
    workload = app.Workload(app.Options(instance_id="i-1", rate=0, max_calls=2), bucket, lambda e: None, lambda line: None)
    asyncio.run(workload.run())
    assert [c.outcome for c in workload.stats.calls] == ["ok", "ok"] and workload.bucket_ready


def test_a_read_that_returns_other_bytes_is_an_error() -> None:
    workload = app.Workload(app.Options(instance_id="i-1", rate=0, max_calls=2), FakeBucket(corrupt=True),
                            lambda e: None, lambda line: None)
    asyncio.run(workload.run())
    assert [(c.outcome, c.code) for c in workload.stats.calls] == [("ok", ""), ("error", "ContentMismatch")]


def test_the_rate_and_duration_bound_the_run() -> None:
    lines: list[str] = []
    workload = app.Workload(app.Options(instance_id="i-1", rate=20, duration=1.2), FakeBucket(), lambda e: None, lines.append)
    elapsed = asyncio.run(workload.run())
    assert 1.1 <= elapsed < 2.0 and 20 <= len(workload.stats.calls) <= 26
    assert len(lines) >= 2 and all(" calls=" in line for line in lines)  # a progress line every second, and at the end


def test_the_provider_is_built_only_with_a_local_proxy_and_metadata_stays_disabled() -> None:
    from alibabacloud_credentials.utils import auth_util

    with pytest.raises(ValueError, match="not a local listener"):
        app.instance_provider("http://100.100.100.200")
    provider = app.instance_provider("http://127.0.0.1:9")
    assert auth_util.environment_ecs_metadata_disabled == "true"  # lifted only while building the proxied provider
    assert provider is not None


def test_on_a_time_scaled_cluster_the_sdk_asks_again_before_the_simulated_expiration() -> None:
    """At 600x an hour's credential lives six real seconds: the SDK's cache (15 minutes before
    Expiration, read on the wall clock) is moved onto the cluster's clock, 45 simulated minutes =
    4.5 real seconds; on an unscaled cluster the provider is the SDK's own class."""
    import time

    from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider

    from services.runtime.clock import ScaledClock

    clock = ScaledClock(600, origin=time.time() - 1000)
    provider = app.instance_provider("http://127.0.0.1:9", clock=clock)
    expiration = int(clock.now() + 3600)
    assert abs(provider._get_stale_time(expiration) - (time.time() + 4.5)) <= 1.5
    assert abs(provider._get_prefetch_time(expiration) - (time.time() + 6)) <= 1.5
    assert provider._get_stale_time(-1) > time.time() + 3000  # no Expiration: the SDK's own rule
    assert type(app.instance_provider("http://127.0.0.1:9", clock=ScaledClock(1))) is EcsRamRoleCredentialsProvider
