"""Requests no HTTP parser can read, sent to a real cluster's gateway, OSS and a metadata view:
each answers in its own error shape (Alibaba's JSON error, OSS's XML error document, the
metadata service's plain text) with the status services/runtime/refusals.py names, never
aiohttp's plain-text 400, and keeps serving. Everything goes to 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import xml.etree.ElementTree as ET

import pytest

from services.cli.instances import read_metadata
from services.cli.up import Cluster
from tests.e2e.conftest import metadata_url

UNREADABLE = {  # what is sent -> the status it must get
    "a 1 MB query": (b"GET /?q=" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    "Content-Length: abc": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400),
    "a request line that is not HTTP": (b"NOT HTTP AT ALL\r\n\r\n", 400),
    "a 20 kB header": (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431),
}


def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as-is (reading while it is written: the server answers before it has read
    all of a huge request); the status, headers (lower-case) and body of the answer."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    answer: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=10) as s:
        def read() -> None:
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:  # reset after the answer: the rest of the request was never read
                pass
            answer.append(data)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            s.sendall(request)
        except OSError:  # the server stopped reading (and answered) first
            pass
        reader.join(15)
    head, _, body = answer[0].partition(b"\r\n\r\n") if answer else (b"", b"", b"")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1."), answer[:1]
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line))
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
async def cluster(make_cluster) -> Cluster:  # noqa: ANN001
    return await make_cluster(instances=1)


async def test_the_gateway_answers_unreadable_http_with_an_alibaba_json_error(cluster: Cluster) -> None:
    for what, (request, expected) in UNREADABLE.items():
        status, headers, body = exchange(cluster.file.gateway_url, request)
        assert status == expected and headers["content-type"].startswith("application/json"), (what, status, headers)
        shaped = json.loads(body)
        assert {"RequestId", "HostId", "Code", "Message"} <= shaped.keys() and shaped["Code"] and shaped["Message"], shaped
        assert b"aaaaaaaa" not in body and b"bbbbbbbb" not in body  # the reason never echoes the request's bytes
        assert cluster.call("ram", "ListRoles")["Roles"] is not None  # and it keeps serving


async def test_oss_answers_unreadable_http_with_an_oss_error_document(cluster: Cluster) -> None:
    for what, (request, expected) in UNREADABLE.items():
        status, headers, body = exchange(cluster.file.oss_url, request)
        assert status == expected and headers["content-type"].startswith("application/xml"), (what, status, headers)
        error = ET.fromstring(body)
        assert error.tag == "Error" and error.findtext("Code") and error.findtext("Message")
        assert error.findtext("RequestId") == headers["x-oss-request-id"]
    status, _, body = exchange(cluster.file.oss_url, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # still serving: an anonymous
    assert status == 403 and ET.fromstring(body).findtext("Code") == "AccessDenied", body  # ListBuckets is refused as usual


async def test_a_metadata_view_answers_unreadable_http_in_plain_text(cluster: Cluster) -> None:
    [instance] = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"]
    url = metadata_url(cluster, instance["InstanceId"])
    phrases = {400: "Bad Request", 414: "Request-URI Too Long", 431: "Request Header Fields Too Large"}
    for what, (request, expected) in UNREADABLE.items():
        status, headers, body = exchange(url, request)
        assert status == expected and headers["content-type"].startswith("text/plain"), (what, status, headers)
        assert body.decode().startswith(phrases[expected] + ": "), body
        assert read_metadata(url, "/latest/meta-data/instance-id") == (200, instance["InstanceId"])


async def test_the_gateway_answers_what_is_no_call_in_alibaba_shape(cluster: Cluster) -> None:
    for request, expected, code in (
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000, 413, "RequestEntityTooLarge"),
            (b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", 405, "UnsupportedHTTPMethod"),
            (b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n", 404, "InvalidApi.NotFound")):
        status, _, body = exchange(cluster.file.gateway_url, request)
        assert (status, json.loads(body)["Code"]) == (expected, code)
