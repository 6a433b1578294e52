"""This node's side of the network, in one place: the external interface its devices were last
set up for (underlay address, MTU), the lease they follow, the addresses its lease publishes,
and whether it can serve now. What follows from those -- each family's device, the lease's
VTEP attributes, subnet.env, the masquerade rules -- is derived here and nowhere else."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vxnet.agent.iface import ExternalInterface
from vxnet.agent.options import AgentOptions
from vxnet.cni.netconf import write_conflist
from vxnet.ip import IPAddress
from vxnet.kernel.device import DeviceSpec, default_name, device_mtu
from vxnet.kernel.forward import ForwardRules
from vxnet.kernel.mac import vtep_mac
from vxnet.kernel.masq import MasqRules
from vxnet.store.config import NetworkConfig
from vxnet.store.lease import Lease, LeaseAttrs, SubnetKey
from vxnet.store.store import AttrsFor, NodeInfo
from vxnet.store.subnetenv import SubnetEnv

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    ip: str | None
    ip6: str | None
    lease_key: str
    subnet: str | None
    subnet6: str | None
    network: str | None
    network6: str | None
    subnet_allocation: str
    underlay_changes: int
    not_ready: str | None


def lease_attrs(cfg: NetworkConfig, ext: ExternalInterface) -> AttrsFor:
    """What our lease says about us at a key: public addresses and VTEP MACs."""

    def attrs(key: SubnetKey) -> LeaseAttrs:
        return LeaseAttrs(ext.ip, vtep_mac(key.subnet) if key.subnet else None,
                          cfg.backend.vni, ext.ip6,
                          vtep_mac(key.subnet6) if key.subnet6 else None)
    return attrs


class Node:
    def __init__(self, opts: AgentOptions, cfg: NetworkConfig, ext: ExternalInterface,
                 lease: Lease) -> None:
        self.opts, self.cfg = opts, cfg
        self.ext = ext  # the underlay as last applied
        self.lease = lease  # the lease devices, subnet.env and masquerade were last set up for
        # the addresses our lease says we have (acquired with ext's)
        self.published: tuple[IPAddress | None, IPAddress | None] = (ext.ip, ext.ip6)
        self.not_ready: str | None = None  # why the node cannot serve now (no usable underlay)
        self.underlay_changes = 0

    # -- derived ----------

    def info(self, ext: ExternalInterface | None = None) -> NodeInfo:
        ext = ext or self.ext
        return NodeInfo(self.opts.node_name, ext.ip, ext.ip6)

    def attrs_for(self, ext: ExternalInterface | None = None) -> AttrsFor:
        return lease_attrs(self.cfg, ext or self.ext)

    def families(self) -> list[int]:
        return [v for v, pool in ((4, self.cfg.ipv4), (6, self.cfg.ipv6)) if pool is not None]

    def device_spec(self, version: int, ext: ExternalInterface | None = None,
                    lease: Lease | None = None) -> DeviceSpec:
        ext, lease = ext or self.ext, lease or self.lease
        subnet = lease.key.subnet if version == 4 else lease.key.subnet6
        local = ext.ip if version == 4 else ext.ip6
        if subnet is None or local is None:  # start-up found both for every enabled family
            raise ValueError(f"no IPv{version} subnet or address for the IPv{version} overlay")
        b, opts = self.cfg.backend, self.opts
        tx = b.tx_checksum if opts.tx_checksum_offload is None else opts.tx_checksum_offload
        neigh_on_demand, fdb_on_demand = opts.on_demand(b.neigh_on_demand, b.fdb_on_demand)
        return DeviceSpec(default_name(b.vni, version), b.vni, b.port, local, ext.index,
                          vtep_mac(subnet), device_mtu(b.mtu or ext.mtu, local.version), subnet,
                          b.gbp, b.learning, tx, l2miss=fdb_on_demand,
                          app_solicit=neigh_on_demand)

    def masquerade_rules(self, lease: Lease | None = None) -> list[MasqRules]:
        cfg, key = self.cfg, (lease or self.lease).key
        return [MasqRules(pool.network, sub) for pool, sub in (
            (cfg.ipv4, key.subnet), (cfg.ipv6, key.subnet6)) if pool and sub]

    def forward_rules(self) -> list[ForwardRules]:
        return [ForwardRules(pool.network) for pool in (self.cfg.ipv4, self.cfg.ipv6) if pool]

    def write_subnet_env(self, mtu: int, lease: Lease | None = None) -> None:
        """subnet.env, and the CNI conflist if we keep one: both follow the lease and the MTU
        (the smaller overlay's: pods get one MTU for both families)."""
        cfg, key, opts = self.cfg, (lease or self.lease).key, self.opts
        env = SubnetEnv(cfg.ipv4.network if cfg.ipv4 else None, key.subnet, mtu, opts.ip_masq,
                        cfg.ipv6.network if cfg.ipv6 else None, key.subnet6)
        env.write(opts.subnet_file)
        if opts.cni_conf_file and write_conflist(opts.cni_conf_file, env, opts.cni_data_dir):
            log.info("CNI network config %s written (subnet %s, MTU %d)", opts.cni_conf_file,
                     ", ".join(str(s) for s in (env.subnet, env.ipv6_subnet) if s), mtu)

    def status(self) -> NodeStatus:
        cfg, key, ext = self.cfg, self.lease.key, self.ext
        return NodeStatus(
            self.opts.node_name, str(ext.ip) if ext.ip else None,
            str(ext.ip6) if ext.ip6 else None, str(key),
            str(key.subnet) if key.subnet else None, str(key.subnet6) if key.subnet6 else None,
            str(cfg.ipv4.network) if cfg.ipv4 else None,
            str(cfg.ipv6.network) if cfg.ipv6 else None, cfg.subnet_allocation,
            self.underlay_changes, self.not_ready)
