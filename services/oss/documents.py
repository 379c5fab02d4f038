"""Pure core: the XML documents OSS answers with (and the few it reads), shaped as Alibaba's.

Object rows are anything with ``key``, ``size``, ``etag`` (hex MD5) and ``last_modified``
(epoch seconds); bucket rows have ``name``, ``created_at``, ``storage_class``.
"""

from __future__ import annotations

import base64
import datetime
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Iterable

from services.oss.core import OssError, Page, oss_error

MAX_REQUEST_XML = 64 * 1024


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _doc(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def error(problem: OssError, request_id: str, host_id: str) -> bytes:
    root = ET.Element("Error")
    _add(root, "Code", problem.code)
    _add(root, "Message", problem.message)
    _add(root, "RequestId", request_id)
    _add(root, "HostId", host_id)
    for tag, value in problem.extra:
        _add(root, tag, value)
    if problem.ec:
        _add(root, "EC", problem.ec)
        _add(root, "RecommendDoc", f"https://api.aliyun.com/troubleshoot?q={problem.ec}")
    return _doc(root)


def error_header(body: bytes) -> str:
    """``x-oss-err``: the error document of a HEAD response (which has no body), base64."""
    return base64.b64encode(body).decode()


def _owner(parent: ET.Element, account_id: str) -> None:
    owner = _add(parent, "Owner")
    _add(owner, "ID", account_id)
    _add(owner, "DisplayName", account_id)


def _endpoints(parent: ET.Element, region_id: str) -> None:
    _add(parent, "ExtranetEndpoint", f"oss-{region_id}.aliyuncs.com")
    _add(parent, "IntranetEndpoint", f"oss-{region_id}-internal.aliyuncs.com")
    _add(parent, "Location", f"oss-{region_id}")


def list_buckets(buckets: Iterable, account_id: str, region_id: str, *, prefix: str, marker: str, max_keys: int,
                 truncated: bool, next_marker: str) -> bytes:
    root = ET.Element("ListAllMyBucketsResult")
    if prefix or marker or truncated:
        _add(root, "Prefix", prefix)
        _add(root, "Marker", marker)
        _add(root, "MaxKeys", max_keys)
        _add(root, "IsTruncated", str(truncated).lower())
        if truncated:
            _add(root, "NextMarker", next_marker)
    _owner(root, account_id)
    listed = _add(root, "Buckets")
    for b in buckets:
        node = _add(listed, "Bucket")
        _add(node, "CreationDate", iso(b.created_at))
        _endpoints(node, region_id)
        _add(node, "Name", b.name)
        _add(node, "Region", region_id)
        _add(node, "StorageClass", b.storage_class)
    return _doc(root)


def bucket_info(b, account_id: str, region_id: str) -> bytes:  # noqa: ANN001
    root = ET.Element("BucketInfo")
    node = _add(root, "Bucket")
    _add(node, "AccessMonitor", "Disabled")
    _add(node, "CreationDate", iso(b.created_at))
    _endpoints(node, region_id)
    _add(node, "StorageClass", b.storage_class)
    _add(node, "TransferAcceleration", "Disabled")
    _add(node, "CrossRegionReplication", "Disabled")
    _add(node, "DataRedundancyType", "LRS")
    _add(node, "Name", b.name)
    _add(node, "Region", region_id)
    _add(node, "ResourceGroupId", "")
    _owner(node, account_id)
    acl = _add(node, "AccessControlList")
    _add(acl, "Grant", "private")
    _add(node, "Comment", "")
    sse = _add(node, "ServerSideEncryptionRule")
    _add(sse, "SSEAlgorithm", "None")
    policy = _add(node, "BucketPolicy")
    _add(policy, "LogBucket", "")
    _add(policy, "LogPrefix", "")
    return _doc(root)


def location(region_id: str) -> bytes:
    root = ET.Element("LocationConstraint")
    root.text = f"oss-{region_id}"
    return _doc(root)


def _enc(value: str, url: bool) -> str:
    return urllib.parse.quote(value, safe="/") if url else value


def _contents(root: ET.Element, row, url: bool, owner: str | None) -> None:  # noqa: ANN001
    node = _add(root, "Contents")
    _add(node, "Key", _enc(row.key, url))
    _add(node, "LastModified", iso(row.last_modified))
    _add(node, "ETag", f'"{row.etag.upper()}"')
    _add(node, "Type", "Normal")
    _add(node, "Size", row.size)
    _add(node, "StorageClass", "Standard")
    if owner is not None:
        _owner(node, owner)


def list_objects(bucket: str, page: Page, *, prefix: str, marker: str, delimiter: str, max_keys: int, url: bool,
                 account_id: str) -> bytes:
    root = ET.Element("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", _enc(prefix, url))
    _add(root, "Marker", _enc(marker, url))
    _add(root, "MaxKeys", max_keys)
    _add(root, "Delimiter", _enc(delimiter, url))
    if url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", str(page.truncated).lower())
    if page.truncated:
        _add(root, "NextMarker", _enc(page.next_marker, url))
    for row in page.contents:
        _contents(root, row, url, account_id)
    for p in page.prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(p, url))
    return _doc(root)


def list_objects_v2(bucket: str, page: Page, *, prefix: str, start_after: str, token: str, next_token: str,
                    delimiter: str, max_keys: int, url: bool, account_id: str | None) -> bytes:
    root = ET.Element("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", _enc(prefix, url))
    if start_after:
        _add(root, "StartAfter", _enc(start_after, url))
    if token:
        _add(root, "ContinuationToken", token)
    _add(root, "MaxKeys", max_keys)
    _add(root, "Delimiter", _enc(delimiter, url))
    if url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", str(page.truncated).lower())
    _add(root, "KeyCount", len(page.contents) + len(page.prefixes))
    if page.truncated:
        _add(root, "NextContinuationToken", next_token)
    for row in page.contents:
        _contents(root, row, url, account_id)
    for p in page.prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(p, url))
    return _doc(root)


def copy_result(etag: str, last_modified: float) -> bytes:
    root = ET.Element("CopyObjectResult")
    _add(root, "ETag", f'"{etag.upper()}"')
    _add(root, "LastModified", iso(last_modified))
    return _doc(root)


def token(key: str) -> str:
    """An opaque ListObjectsV2 continuation token for 'after ``key``'."""
    return base64.urlsafe_b64encode(key.encode()).decode()


def untoken(value: str) -> str | OssError:
    try:
        return base64.urlsafe_b64decode(value.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return oss_error("InvalidArgument", "The continuation token is not valid.", 400, ArgumentName="continuation-token")


def create_bucket_configuration(body: bytes) -> str | OssError:
    """PutBucket's optional ``<CreateBucketConfiguration><StorageClass>`` -> the storage class."""
    if not body.strip():
        return "Standard"
    if len(body) > MAX_REQUEST_XML:
        return oss_error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400)
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return oss_error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400)
    if root.tag != "CreateBucketConfiguration":
        return oss_error("MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", 400)
    storage = (root.findtext("StorageClass") or "Standard").strip()
    if storage not in ("Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"):
        return oss_error("InvalidArgument", "The storage class is not valid.", 400, ArgumentName="StorageClass")
    return storage
