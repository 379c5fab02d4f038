"""Pure core: DescribeInstances' answer: an instance as Alibaba describes it, and its paging.

ramsim's instances are pay-as-you-go VPC instances with one primary ENI, no public address, no
security groups or disks to speak of; every field below follows from that or from what the
instance record holds. vCPUs and memory come from the instance type's name as Alibaba's
families are built (``large`` = 2 vCPUs, ``xlarge`` = 4, ``<n>xlarge`` = 4n; memory per vCPU by
family: c 2 GiB, g 4 GiB, r 8 GiB; a type outside that naming gets 2 vCPUs and 8 GiB).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

from protocol.messages import ecs as m
from services.runtime import paging

if TYPE_CHECKING:
    from services.ecs.core import InstanceRecord

MAX_PAGE = 100  # PageSize and MaxResults: 1-100
DEFAULT_MAX_RESULTS = 10
EXPIRED_TIME = "2099-12-31T15:59Z"  # what Alibaba answers for a pay-as-you-go instance
_SIZE = re.compile(r"^(\d*)xlarge$")
_MEMORY_PER_CPU = {"c": 2, "g": 4, "r": 8}  # GiB per vCPU, by the family's first letter
# (image id prefix, OSName, OSNameEn, OSType); the first that matches
_IMAGES = (
    ("aliyun_3", "Alibaba Cloud Linux  3.2104 LTS 64位", "Alibaba Cloud Linux  3.2104 LTS 64 bit", "linux"),
    ("aliyun_2", "Alibaba Cloud Linux  2.1903 LTS 64位", "Alibaba Cloud Linux  2.1903 LTS 64 bit", "linux"),
    ("ubuntu_22_04", "Ubuntu  22.04 64位", "Ubuntu  22.04 64 bit", "linux"),
    ("ubuntu_20_04", "Ubuntu  20.04 64位", "Ubuntu  20.04 64 bit", "linux"),
    ("centos_7", "CentOS  7.9 64位", "CentOS  7.9 64 bit", "linux"),
    ("debian_12", "Debian  12.5 64位", "Debian  12.5 64 bit", "linux"),
    ("win", "Windows Server", "Windows Server", "windows"),
)


def shape(instance_type: str) -> tuple[str, int, int]:
    """(family, vCPUs, memory in MiB) of ``ecs.<family>.<size>``."""
    parts = instance_type.split(".")
    family = ".".join(parts[:2]) if len(parts) >= 3 else instance_type
    size = parts[-1] if len(parts) >= 3 else ""
    sized = _SIZE.match(size)
    cpus = 2 if size == "large" else (4 * int(sized.group(1) or 1) if sized else 0)
    if not cpus:
        return family, 2, 8 * 1024
    per_cpu = _MEMORY_PER_CPU.get(parts[1][:1], 4)
    return family, cpus, cpus * per_cpu * 1024


def os_of(image_id: str) -> tuple[str, str, str]:
    """(OSName, OSNameEn, OSType) of an image id."""
    for prefix, name, name_en, os_type in _IMAGES:
        if image_id.startswith(prefix):
            return name, name_en, os_type
    return image_id, image_id, "linux"


def described(r: "InstanceRecord") -> m.DescribedInstance:
    i, net = r.instance, r.network
    family, cpus, memory = shape(i.instance_type)
    os_name, os_name_en, os_type = os_of(i.image_id)
    primary = m.InstanceNetworkInterface(
        network_interface_id=net.network_interface_id, mac_address=net.mac, primary_ip_address=net.private_ip, type="Primary",
        private_ip_sets=m.PrivateIpSets(private_ip_set=[m.PrivateIpSet(private_ip_address=net.private_ip, primary=True)]))
    return m.DescribedInstance(
        instance_id=i.instance_id, instance_name=i.instance_name, description=r.description, status=i.status,
        region_id=i.region_id, zone_id=i.zone_id, instance_type=i.instance_type, instance_type_family=family, cpu=cpus,
        memory=memory, cpu_options=m.CpuOptions(core_count=max(1, cpus // 2), threads_per_core=2 if cpus > 1 else 1),
        image_id=i.image_id, os_name=os_name, os_name_en=os_name_en, os_type=os_type, host_name=i.host_name,
        serial_number=r.serial_number, creation_time=i.creation_time, start_time=r.start_time, expired_time=EXPIRED_TIME,
        auto_release_time="", instance_charge_type="PostPaid", internet_charge_type="PayByTraffic",
        internet_max_bandwidth_in=0, internet_max_bandwidth_out=0, instance_network_type="vpc", io_optimized=True,
        vpc_attributes=m.VpcAttributes(vpc_id=net.vpc_id, v_switch_id=net.vswitch_id,
                                       private_ip_address=m.IpAddressSet(ip_address=[net.private_ip]), nat_ip_address=""),
        network_interfaces=m.NetworkInterfaces(network_interface=[primary]),
        inner_ip_address=m.IpAddressSet(ip_address=[]), public_ip_address=m.IpAddressSet(ip_address=[]),
        metadata_options=m.MetadataOptions(http_endpoint=r.http_endpoint, http_tokens=r.http_tokens,
                                           http_put_response_hop_limit=r.hop_limit, instance_metadata_tags="disabled"),
        tags=m.Tags(tag=list(r.tags)), operation_locks=m.LockReasons(lock_reason=[]), deletion_protection=False,
        device_available=True, recyclable=False, stopped_mode="Not-applicable", gpu_amount=0, gpu_spec="",
        local_storage_amount=0, local_storage_capacity=0, spot_strategy="NoSpot", spot_interruption_behavior="Terminate",
        spot_price_limit=0.0, spot_duration=0,
        key_pair_name="", resource_group_id="", sale_cycle="", credit_specification="")


FILTERS = ("status", "zone_id", "instance_type", "instance_name")


def matches(body: m.DescribeInstances, r: "InstanceRecord") -> bool:
    """The filters of DescribeInstances besides InstanceIds (each one given must match)."""
    wanted = {name: getattr(body, name) for name in FILTERS if getattr(body, name)}
    if any(getattr(r.instance, name) != value for name, value in wanted.items()):
        return False
    return (not body.vpc_id or r.network.vpc_id == body.vpc_id) and (not body.v_switch_id or r.network.vswitch_id == body.v_switch_id)


def filtered(body: m.DescribeInstances) -> bool:
    return any(getattr(body, name) for name in (*FILTERS, "vpc_id", "v_switch_id"))


def page(body: m.DescribeInstances, selected: Sequence["InstanceRecord"]) -> m.DescribeInstancesOk | None:
    """One page of ``selected``: by NextToken/MaxResults when either is given (the token an
    opaque marker), else by PageNumber/PageSize. Only the page is touched (no work over the
    whole list unless a token's instance moved). None for a token that is not ours."""
    if body.next_token or body.max_results:
        size = body.max_results or DEFAULT_MAX_RESULTS
        found = paging.page(selected, lambda r: r.instance.instance_id, body.next_token, size)
        if found is None:
            return None
        chunk, token = found
        number = 1  # a token's page has no number; Alibaba answers the first
    else:
        size, number, token = body.page_size, body.page_number, ""
        start = (number - 1) * size
        chunk = list(selected[start:start + size])
    return m.DescribeInstancesOk(instances=m.InstanceList(instance=[described(r) for r in chunk]), total_count=len(selected),
                                 page_number=number, page_size=size, next_token=token)
