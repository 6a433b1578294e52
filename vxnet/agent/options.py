"""`vxnet agent`'s options, as the command line (or FLANNELD_* variables) gives them."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from vxnet.store.manager import DEFAULT_TTL
from vxnet.store.paths import DEFAULT_PREFIX


@dataclass(frozen=True)
class AgentOptions:
    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    etcd_username: str | None = None
    etcd_password: str | None = field(default=None, repr=False)
    etcd_timeout: float = 5.0
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str | None = None
    public_ip: str | None = None
    public_ipv6: str | None = None
    subnet_file: str = "/run/flannel/subnet.env"
    cni_conf_file: str | None = None  # a bridge + host-local conflist the agent keeps written
    cni_data_dir: str | None = None  # host-local's state under <dir>/ipam (None: its default)
    ip_masq: bool = False
    healthz_ip: str = "127.0.0.1"
    healthz_port: int = 10280
    subnet_lease_renew_margin: int = 60  # minutes, as flanneld
    subnet_lease_ttl: int = DEFAULT_TTL  # seconds
    node_name: str = field(default_factory=socket.gethostname)
    resync_interval: float = 30.0
    health_interval: float = 60.0  # seconds per round of peer probes; 0: no probes
    vxlan_allowlist: bool = True
    tx_checksum_offload: bool | None = None  # None: as Backend.TxChecksumOffload says
    neighbours: str | None = None  # "up-front"/"on-demand"; None: as Backend.Neighbours says
    fdb: str | None = None  # the same for Backend.FDB

    def on_demand(self, neighbours: bool, fdb: bool) -> tuple[bool, bool]:
        """(neighbours, FDB) on demand on this node: our flags over the cluster's Backend."""
        return (neighbours if self.neighbours is None else self.neighbours == "on-demand",
                fdb if self.fdb is None else self.fdb == "on-demand")
