"""`vxnet agent`'s options, each declared once: a field is its flag. The flag is the field's name
with dashes (`healthz_port`: `--healthz-port`), set by a FLANNELD_* variable too
(FLANNELD_HEALTHZ_PORT), as flanneld's are; its help, click type and kind are the field's
metadata (`flag(...)`), its default the field's default. vxnet.cli builds the command line from
these fields, so a new option is one new field."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Self

import click

from vxnet.store.paths import DEFAULT_PREFIX

if TYPE_CHECKING:
    from vxnet.store.etcd import Etcd

FLAG = "vxnet.flag"  # the metadata key of a field's Flag


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line (beyond its name, default and variable)."""

    help: str | None = None
    type: click.ParamType[Any] | None = None  # None: click's, from the default (TEXT if none)
    multiple: bool = False  # may be given several times; the field is a tuple
    is_flag: bool = False  # --x alone, no value
    negatable: bool = False  # --x/--no-x; with a None default, None when neither is given
    show_default: bool | str = True  # a str stands in for a computed default, e.g. "hostname"


def flag(help: str | None = None, *, type: click.ParamType[Any] | None = None,
         multiple: bool = False, is_flag: bool = False, negatable: bool = False,
         show_default: bool | str = True) -> dict[str, Flag]:
    """A field's metadata declaring its flag: `field(default=..., metadata=flag(...))`."""
    return {FLAG: Flag(help, type, multiple, is_flag, negatable, show_default)}


@dataclass(frozen=True)
class EtcdOptions:
    """Where etcd is and how to talk to it: the flags every command that talks to etcd takes."""

    etcd_endpoints: str = field(default="http://127.0.0.1:2379", metadata=flag(
        "Comma-separated etcd endpoints."))
    etcd_prefix: str = field(default=DEFAULT_PREFIX, metadata=flag(
        "etcd prefix holding config and subnets/."))
    etcd_cafile: str | None = field(default=None, metadata=flag(
        "CA for etcd's TLS certificate.", type=click.Path(dir_okay=False)))
    etcd_certfile: str | None = field(default=None, metadata=flag(
        "Client certificate for etcd.", type=click.Path(dir_okay=False)))
    etcd_keyfile: str | None = field(default=None, metadata=flag(
        "Client key for etcd.", type=click.Path(dir_okay=False)))
    etcd_username: str | None = field(default=None, metadata=flag(
        "etcd user (etcd authentication)."))
    etcd_password: str | None = field(default=None, repr=False, metadata=flag(
        "Password of --etcd-username (prefer FLANNELD_ETCD_PASSWORD: flags show in ps)."))

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> Self:
        """These options from click's parsed values (keys other than our fields are skipped)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def client(self, timeout: float = 5.0) -> Etcd:
        """An etcd client for these options (the caller closes it)."""
        from vxnet.store.etcd import Etcd, TLSFiles, credentials

        return Etcd(self.etcd_endpoints, timeout=timeout,
                    tls=TLSFiles(self.etcd_cafile, self.etcd_certfile, self.etcd_keyfile),
                    auth=credentials(self.etcd_username, self.etcd_password))


@dataclass(frozen=True)
class AgentOptions(EtcdOptions):
    """Everything `vxnet agent` is told; the fields' order is `vxnet agent --help`'s."""

    iface: tuple[str, ...] = field(default=(), metadata=flag(
        "External interface, by name or IP; may be given several times, the first present wins "
        "(default: the default route's).", multiple=True))
    iface_regex: tuple[str, ...] = field(default=(), metadata=flag(
        "Regex matched against interfaces' addresses, then names; may be given several times "
        "(used when --iface is not).", multiple=True))
    iface_can_reach: str | None = field(default=None, metadata=flag(
        "Use the interface of the route to this address."))
    public_ip: str | None = field(default=None, metadata=flag(
        "IPv4 address other nodes reach this one at."))
    public_ipv6: str | None = field(default=None, metadata=flag(
        "IPv6 address other nodes reach this one at."))
    subnet_file: str = field(default="/run/flannel/subnet.env", metadata=flag(
        "Where to write subnet.env."))
    cni_conf_file: str | None = field(default=None, metadata=flag(
        "Also keep this CNI conflist written (bridge + host-local, from the lease; e.g. "
        "/etc/cni/net.d/10-vxnet.conflist): nodes then need only the standard CNI plugins, not "
        "vxnet-cni."))
    cni_data_dir: str | None = field(default=None, metadata=flag(
        "host-local's state directory for that conflist is <dir>/ipam (default: host-local's "
        "own)."))
    ip_masq: bool = field(default=False, metadata=flag(
        "Masquerade pod traffic leaving the network.", is_flag=True))
    iptables_forward_rules: bool = field(default=True, metadata=flag(
        "Accept the cluster network in iptables' FORWARD chain (chain VXNET-FWD, as flanneld's "
        "FLANNEL-FWD), for hosts whose FORWARD policy is DROP.", negatable=True))
    healthz_ip: str = field(default="127.0.0.1", metadata=flag("HTTP API address."))
    healthz_port: int = field(default=10280, metadata=flag(
        "HTTP API port (0: no API).", type=click.IntRange(0, 65535)))
    subnet_lease_renew_margin: int = field(default=60, metadata=flag(  # minutes, as flanneld
        "Minutes before expiry to renew the lease.", type=click.IntRange(1, None)))
    # flannel's 24 h; vxnet.store.manager.DEFAULT_TTL too (importing it here would load etcd's
    # client into every vxnet command; tests/unit/agent/test_options.py keeps them equal)
    subnet_lease_ttl: int = field(default=24 * 3600, metadata=flag(
        "Seconds a subnet lease lives without renewal.", type=click.IntRange(3, None)))
    node_name: str = field(default_factory=socket.gethostname, metadata=flag(
        "This node's name (owner of its lease, key of its node ID).", show_default="hostname"))
    resync_interval: float = field(default=30.0, metadata=flag(
        "Seconds between full kernel resyncs.", type=click.FloatRange(0.1, None)))
    health_interval: float = field(default=60.0, metadata=flag(
        "Seconds in which every peer is probed once (overlay, underlay, and every few rounds a "
        "full-size packet), spread evenly; 0: no probes.", type=click.FloatRange(0, None)))
    vxlan_allowlist: bool = field(default=True, metadata=flag(
        "Accept VXLAN only from cluster members' public IPs (nftables).", negatable=True))
    tx_checksum_offload: bool | None = field(default=None, metadata=flag(  # None: as Backend's
        "Transmit checksum offload on the VXLAN device (off cures the kernels and NICs that "
        "corrupt VXLAN checksums). Default: Backend.TxChecksumOffload, else as the kernel has "
        "it.", negatable=True))
    neighbours: str | None = field(default=None, metadata=flag(
        "Remote pods' ARP/NDP entries programmed per peer up front, or answered when the kernel "
        "asks (kopeio's design). Default: Backend.Neighbours, else up-front.",
        type=click.Choice(["up-front", "on-demand"])))
    fdb: str | None = field(default=None, metadata=flag(
        "Peers' FDB entries up front, or answered when the kernel asks (flannel's first vxlan "
        "backend). Default: Backend.FDB, else up-front.",
        type=click.Choice(["up-front", "on-demand"])))
    kube_subnet_mgr: bool = field(default=False, metadata=flag(
        "Keep state in the Kubernetes API instead of etcd, as flanneld's --kube-subnet-mgr: "
        "the lease is this Node's spec.podCIDR(s), the VTEP goes in its annotations.",
        is_flag=True))
    kubeconfig_file: str | None = field(default=None, metadata=flag(
        "kubeconfig for the Kubernetes API (default: the pod's service account).",
        type=click.Path(dir_okay=False)))
    kube_api_url: str | None = field(default=None, metadata=flag(
        "The Kubernetes API server's URL (overrides the kubeconfig's)."))
    kube_annotation_prefix: str = field(default="flannel.alpha.coreos.com", metadata=flag(
        "Prefix of the Node annotations the VTEP is published in (flannel's)."))
    net_config_path: str = field(default="/etc/kube-flannel/net-conf.json", metadata=flag(
        "The network config in kube mode (the same JSON as etcd's <prefix>/config)."))
    etcd_timeout: float = field(default=5.0, metadata=flag(  # agent only; last in --help, as ever
        "Seconds before an etcd request is given up (and retried).",
        type=click.FloatRange(0.1, None)))

    def on_demand(self, neighbours: bool, fdb: bool) -> tuple[bool, bool]:
        """(neighbours, FDB) on demand on this node: our flags over the cluster's Backend."""
        return (neighbours if self.neighbours is None else self.neighbours == "on-demand",
                fdb if self.fdb is None else self.fdb == "on-demand")
