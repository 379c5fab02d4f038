"""I/O shell: settings from flags and environment (flag > ``RAMSIM_*`` variable > default).

Secrets (the root AccessKey, the STS signing key) come from the environment only, never from
flags, which any user can read in the process list.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    broker_url: str = _opt("mqtt://127.0.0.1:1883", "MQTT broker, mqtt://[user:pass@]host:port")
    state_dir: str = _opt(".ramsim", "directory for state, logs and generated files")
    time_scale: float = _opt(1.0, "simulated seconds per real second (60: an hour per minute)")
    time_origin: float = _opt(0.0, "epoch seconds where simulated and wall time coincide (0: now); shared by a cluster")
    log_format: str = _opt("console", "console or json")
    log_level: str = _opt("info", "debug, info, warning, error")
    account_id: str = _opt("1234567890123456", "the Alibaba Cloud account id (16 digits)")
    region_id: str = _opt("cn-hangzhou", "region of this cluster")
    zone_id: str = _opt("cn-hangzhou-i", "zone instances are placed in")
    credential_lifetime: int = _opt(3600, "seconds an instance's STS credential lasts (real ECS: 21600)")
    refresh_before: int = _opt(1800, "seconds before expiry that ECS issues the next credential")
    vswitch_cidr: str = _opt("172.16.0.0/16", "ECS: the vSwitch instances get their private IPs in (RunInstances' PrivateIpAddress must be in it)")
    ready_file: str = _opt("", "write this file (the pid) once the service is ready, delete it when it stops (a container healthcheck)")
    request_timeout: float = _opt(5.0, "real seconds to wait for a reply on the bus")
    host_id: str = _opt("host-1", "metadata agent: the simulated host it serves")
    http_host: str = _opt("127.0.0.1", "address HTTP servers listen on")
    http_port: int = _opt(0, "gateway: HTTP port (0: any free port)")
    gateway_url: str = _opt("", "metadata agent: where its proxy sends requests for hosts other than 100.100.100.200")
    metadata_mode: str = _opt("port", "metadata agent: port (a loopback port per instance), shared (one loopback port "
                                      "for all of the host's instances, named as http://<InstanceId>:@host:port or by a "
                                      "/<InstanceId>/ path prefix), netns (a network namespace per instance reaching "
                                      "100.100.100.200; needs root) or address (it holds 100.100.100.200 itself, as "
                                      "compose.yaml's agent: answers by source address)")
    refresh_jitter: float = _opt(0.0, "ECS: refresh each credential up to this fraction of --refresh-before earlier, "
                                      "at random, so instances attached together do not refresh together (ramsim up "
                                      "passes 0.1; 0: exactly refresh_before early, as experiments expect)")
    root_access_key_id: str = _opt("", "RAM: the root identity's AccessKeyId", secret=True)
    root_access_key_secret: str = _opt("", "RAM: the root identity's AccessKeySecret", secret=True)
    sts_key_rotation: float = _opt(21600.0, "STS: seconds between token key rotations (old keys verify until their tokens expire)")
    sts_signing_key: str = _opt("", "STS: hex master key the token keys derive from", secret=True)
    share_group: str = _opt("", "a stateless worker's shared-subscription group: its inbox is shared with the group's other "
                            "workers ($share/<group>/…), replies to its own requests come to every worker ('' = none)")
    state_key: str = _opt("", "hex AES key that encrypts secrets in the state files (AccessKey secrets, credentials)", secret=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"RAMSIM_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f, raw)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def parse(cls, argv: Sequence[str] | None, *, prog: str, description: str,
              environ: Mapping[str, str] | None = None) -> "Settings":
        base = cls.from_env(environ)
        parser = argparse.ArgumentParser(prog=prog, description=description,
                                         epilog="Every flag can also be set as RAMSIM_<FLAG> in the environment.")
        for f in dataclasses.fields(cls):
            if f.metadata.get("secret"):
                continue
            default = getattr(base, f.name)
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(default), default=default,
                                help=f"{f.metadata['help']} (default: {shown(default)})".replace("%", "%%"))
        args = parser.parse_args(argv)
        return dataclasses.replace(base, **vars(args))

    def environment(self) -> dict[str, str]:
        """These settings as ``RAMSIM_*`` variables, to hand to a child process."""
        return {f"RAMSIM_{f.name.upper()}": str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def shown(value: object) -> str:
    """A setting as it may be displayed: a password in a URL is masked."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", str(value))


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = type(f.default)
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"RAMSIM_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
