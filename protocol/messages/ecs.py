"""Pure protocol: ECS (API version 2014-05-26) commands and replies, and the internal
exchange between the ECS control plane and the metadata agents.

``InstanceIds`` is a JSON-array string on the wire, as in Alibaba's API.
"""

from __future__ import annotations

import msgspec

from protocol.base import Message, Shape
from protocol.messages.common import ApiCommand


# -- shapes ---------------------------------------------------------------------------------
class InstanceIdSets(Shape):
    instance_id_set: list[str] = []


class Instance(Shape):
    instance_id: str
    instance_name: str
    status: str
    region_id: str
    zone_id: str
    instance_type: str
    image_id: str
    host_name: str
    creation_time: str


class Tag(Shape):
    """An instance's tag as DescribeInstances answers it."""

    tag_key: str
    tag_value: str


class TagParameter(Shape):
    """RunInstances' ``Tag.N.Key`` / ``Tag.N.Value``."""

    key: str
    value: str = ""


# -- DescribeInstances' answer: every field Alibaba's model names that ramsim knows (none has a
# default, so none is left out of the JSON); tests/compat/omissions.toml lists the rest.
class IpAddressSet(Shape):
    ip_address: list[str]


class VpcAttributes(Shape):
    vpc_id: str
    v_switch_id: str
    private_ip_address: IpAddressSet
    nat_ip_address: str


class PrivateIpSet(Shape):
    private_ip_address: str
    primary: bool


class PrivateIpSets(Shape):
    private_ip_set: list[PrivateIpSet]


class InstanceNetworkInterface(Shape):
    network_interface_id: str
    mac_address: str
    primary_ip_address: str
    type: str
    private_ip_sets: PrivateIpSets


class NetworkInterfaces(Shape):
    network_interface: list[InstanceNetworkInterface]


class MetadataOptions(Shape):
    http_endpoint: str
    http_tokens: str
    http_put_response_hop_limit: int
    instance_metadata_tags: str


class Tags(Shape):
    tag: list[Tag]


class LockReasons(Shape):
    lock_reason: list[str]


class CpuOptions(Shape):
    core_count: int
    threads_per_core: int


class DescribedInstance(Shape):
    instance_id: str
    instance_name: str
    description: str
    status: str
    region_id: str
    zone_id: str
    instance_type: str
    instance_type_family: str
    cpu: int
    memory: int  # MiB
    cpu_options: CpuOptions
    image_id: str
    os_name: str = msgspec.field(name="OSName")
    os_name_en: str = msgspec.field(name="OSNameEn")
    os_type: str = msgspec.field(name="OSType")
    host_name: str
    serial_number: str
    creation_time: str
    start_time: str
    expired_time: str
    auto_release_time: str
    instance_charge_type: str
    internet_charge_type: str
    internet_max_bandwidth_in: int
    internet_max_bandwidth_out: int
    instance_network_type: str
    io_optimized: bool
    vpc_attributes: VpcAttributes
    network_interfaces: NetworkInterfaces
    inner_ip_address: IpAddressSet
    public_ip_address: IpAddressSet
    metadata_options: MetadataOptions
    tags: Tags
    operation_locks: LockReasons
    deletion_protection: bool
    device_available: bool
    recyclable: bool
    stopped_mode: str
    gpu_amount: int = msgspec.field(name="GPUAmount")
    gpu_spec: str = msgspec.field(name="GPUSpec")
    local_storage_amount: int
    local_storage_capacity: int
    spot_strategy: str
    spot_interruption_behavior: str
    spot_price_limit: float
    spot_duration: int
    key_pair_name: str
    resource_group_id: str
    sale_cycle: str
    credit_specification: str


class InstanceList(Shape):
    instance: list[DescribedInstance] = []


class RamRoleResult(Shape):
    instance_id: str
    code: str
    message: str
    success: bool
    instance_ram_role_sets: InstanceRamRoleSets | None = None  # DetachInstanceRamRole's: the role it had


class AttachResults(Shape):
    attach_instance_ram_role_result: list[RamRoleResult] = []


class DetachResults(Shape):
    detach_instance_ram_role_result: list[RamRoleResult] = []


class InstanceRamRole(Shape):
    instance_id: str
    ram_role_name: str


class InstanceRamRoleSets(Shape):
    instance_ram_role_set: list[InstanceRamRole] = []


class InstanceCredentials(Shape):
    """An STS credential for an instance. Times are epoch seconds in simulated time."""

    access_key_id: str
    access_key_secret: str
    security_token: str
    expiration: float
    last_updated: float


class NetworkInterface(Shape):
    """The instance's primary network interface (eth0) in its VPC."""

    mac: str
    private_ip: str
    network_interface_id: str
    vpc_id: str
    vswitch_id: str
    vpc_cidr_block: str
    vswitch_cidr_block: str
    gateway: str
    netmask: str


class InstanceView(Shape):
    """Everything a metadata agent needs to answer for one instance; full state, not a delta.

    ``generation`` grows with every change, so an agent keeps the newest view whatever order
    views arrive in.
    """

    instance_id: str
    host_id: str
    generation: int
    account_id: str
    region_id: str
    zone_id: str
    host_name: str
    instance_type: str
    image_id: str
    serial_number: str
    network: NetworkInterface
    http_tokens: str = "optional"
    http_endpoint: str = "enabled"
    user_data: str = ""  # base64, as given to RunInstances
    ram_role_name: str = ""
    credentials: InstanceCredentials | None = None
    deleted: bool = False
    endpoint_url: str = ""  # where the agent last served this view (a restarted agent listens there again)


class MetadataEndpoint(Shape):
    instance_id: str
    host_id: str
    url: str


# -- API commands and replies ----------------------------------------------------------------
class RunInstances(ApiCommand):
    region_id: str
    image_id: str = "aliyun_3_x64_20G_alibase_20240819.vhd"
    instance_type: str = "ecs.g7.large"
    instance_name: str = ""
    zone_id: str = ""
    ram_role_name: str = ""
    amount: int = 1
    private_ip_address: str = ""  # within the vSwitch's CIDR block, unused; only with Amount 1 (as Alibaba's)
    http_tokens: str = "optional"
    http_endpoint: str = "enabled"
    user_data: str = ""
    description: str = ""
    tag: list[TagParameter] = []


class RunInstancesOk(Message):
    instance_id_sets: InstanceIdSets


class AttachInstanceRamRole(ApiCommand):
    region_id: str
    ram_role_name: str
    instance_ids: str
    policy: str = ""


class AttachInstanceRamRoleOk(Message):
    total_count: int
    fail_count: int
    ram_role_name: str
    attach_instance_ram_role_results: AttachResults


class DetachInstanceRamRole(ApiCommand):
    region_id: str
    instance_ids: str
    ram_role_name: str = ""


class DetachInstanceRamRoleOk(Message):
    total_count: int
    fail_count: int
    ram_role_name: str
    detach_instance_ram_role_results: DetachResults


class DescribeInstances(ApiCommand):
    """Pages by PageNumber/PageSize, or by NextToken/MaxResults when either is given."""

    region_id: str
    instance_ids: str = ""
    status: str = ""
    zone_id: str = ""
    instance_type: str = ""
    instance_name: str = ""
    vpc_id: str = ""
    v_switch_id: str = ""
    page_number: int = 1
    page_size: int = 10
    next_token: str = ""
    max_results: int = 0


class DescribeInstancesOk(Message):
    instances: InstanceList
    total_count: int
    page_number: int
    page_size: int
    next_token: str  # "" on the last page (answered all the same, as Alibaba does)


class DescribeInstanceRamRole(ApiCommand):
    region_id: str
    instance_ids: str = ""
    ram_role_name: str = ""
    page_number: int = 1
    page_size: int = 10


class DescribeInstanceRamRoleOk(Message):
    region_id: str
    total_count: int
    instance_ram_role_sets: InstanceRamRoleSets


class ModifyInstanceMetadataOptions(ApiCommand):
    region_id: str
    instance_id: str
    http_tokens: str = ""
    http_endpoint: str = ""
    http_put_response_hop_limit: int = 0  # 0: unchanged


class ModifyInstanceMetadataOptionsOk(Message):
    pass


class DescribeInstanceMetadataEndpoints(ApiCommand):
    """ramsim extension (not an Alibaba API): where each instance's metadata view listens, in
    pages of ``MaxResults`` (1-1000, default 1000) from ``NextToken`` (the previous page's).
    ``instance_ids`` (a JSON list, as DescribeInstances takes it) asks for those only: every
    endpoint of thousands of instances is more than one bus message may carry (256 KiB)."""

    instance_ids: str = ""
    max_results: int = 0
    next_token: str = ""


class DescribeInstanceMetadataEndpointsOk(Message):
    endpoints: list[MetadataEndpoint]
    next_token: str = ""  # "" on the last page


# -- ECS <-> metadata agents -----------------------------------------------------------------
class RegisterHost(Message):
    """A metadata agent announces itself; ECS answers with every instance it hosts."""

    host_id: str
    after: str = ""  # the next page: the views after this instance (RegisterHostOk.next_after)


class RegisterHostOk(Message):
    instances: list[InstanceView]
    next_after: str = ""  # more views follow: ask again with RegisterHost(after=next_after)


class InstanceChanged(Message):
    """ECS -> the agent hosting the instance: its complete current view."""

    view: InstanceView


class InstanceEndpointReady(Message):
    """Agent -> ECS: the instance's metadata view is being served at ``url``."""

    instance_id: str
    host_id: str
    url: str


class InstancesChanged(Message):
    """ECS -> one host's agent, as a direct message: the complete current views of several of
    its instances at once (a batch launch, attach or refresh: one message per host, not per
    instance). Each view is applied as an :class:`InstanceChanged` would be."""

    views: list[InstanceView]


class InstanceEndpointsReady(Message):
    """Agent -> ECS: several instances' metadata views are being served (one message, not one
    :class:`InstanceEndpointReady` each)."""

    host_id: str
    endpoints: list[MetadataEndpoint]


class RoleAttachedToInstance(Message):
    """Event: a role now serves on an instance."""

    instance_id: str
    ram_role_name: str


class RoleDetachedFromInstance(Message):
    instance_id: str
    ram_role_name: str


class InstanceCredentialsRefreshed(Message):
    """Event: a fresh credential was pushed (no secret material)."""

    instance_id: str
    ram_role_name: str
    access_key_id: str
    expiration: float


COMMANDS = (RunInstances, AttachInstanceRamRole, DetachInstanceRamRole, DescribeInstances,
            DescribeInstanceRamRole, ModifyInstanceMetadataOptions, DescribeInstanceMetadataEndpoints)
ALL = (*COMMANDS, RunInstancesOk, AttachInstanceRamRoleOk, DetachInstanceRamRoleOk,
       DescribeInstancesOk, DescribeInstanceRamRoleOk, ModifyInstanceMetadataOptionsOk, DescribeInstanceMetadataEndpointsOk,
       RegisterHost, RegisterHostOk, InstanceChanged, InstanceEndpointReady, InstancesChanged, InstanceEndpointsReady,
       RoleAttachedToInstance, RoleDetachedFromInstance, InstanceCredentialsRefreshed)
