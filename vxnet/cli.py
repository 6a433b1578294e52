"""The `vxnet` command line. Flags keep flanneld's names; FLANNELD_* environment variables set
them too, as they do for flanneld (e.g. FLANNELD_ETCD_ENDPOINTS)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vxnet import __version__
from vxnet.errors import VxnetError

if TYPE_CHECKING:
    from vxnet.store.etcd import Etcd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vxnet")
def main() -> None:
    """vxnet: a flannel-compatible VXLAN overlay network agent."""


def _env(name: str) -> str:
    return "FLANNELD_" + name.upper().replace("-", "_")


def flag(name: str, **kw):  # type: ignore[no-untyped-def]
    return click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kw)


def etcd_flags(f):  # type: ignore[no-untyped-def]
    """The flags every command that talks to etcd takes, with flanneld's names."""
    for opt in reversed((
        flag("etcd-endpoints", default="http://127.0.0.1:2379", show_default=True,
             help="Comma-separated etcd endpoints."),
        flag("etcd-prefix", default="/coreos.com/network", show_default=True,
             help="etcd prefix holding config and subnets/."),
        flag("etcd-cafile", type=click.Path(dir_okay=False), help="CA for etcd's TLS "
             "certificate."),
        flag("etcd-certfile", type=click.Path(dir_okay=False), help="Client certificate for "
             "etcd."),
        flag("etcd-keyfile", type=click.Path(dir_okay=False), help="Client key for etcd."),
        flag("etcd-username", help="etcd user (etcd authentication)."),
        flag("etcd-password", help="Password of --etcd-username (prefer "
             "FLANNELD_ETCD_PASSWORD: flags show in ps)."),
    )):
        f = opt(f)
    return f


def etcd_client(kw: dict[str, Any], timeout: float = 5.0) -> Etcd:
    """An etcd client from etcd_flags' values (which it takes out of kw)."""
    from vxnet.store.etcd import Etcd, TLSFiles, credentials

    return Etcd(kw.pop("etcd_endpoints"), timeout=timeout,
                tls=TLSFiles(kw.pop("etcd_cafile"), kw.pop("etcd_certfile"),
                             kw.pop("etcd_keyfile")),
                auth=credentials(kw.pop("etcd_username"), kw.pop("etcd_password")))


@main.command()
@etcd_flags
@flag("iface", multiple=True, help="External interface, by name or IP; may be given several "
      "times, the first present wins (default: the default route's).")
@flag("iface-regex", multiple=True, help="Regex matched against interfaces' addresses, then "
      "names; may be given several times (used when --iface is not).")
@flag("iface-can-reach", help="Use the interface of the route to this address.")
@flag("public-ip", help="IPv4 address other nodes reach this one at.")
@flag("public-ipv6", help="IPv6 address other nodes reach this one at.")
@flag("subnet-file", default="/run/flannel/subnet.env", show_default=True,
      help="Where to write subnet.env.")
@flag("cni-conf-file", help="Also keep this CNI conflist written (bridge + host-local, from "
      "the lease; e.g. /etc/cni/net.d/10-vxnet.conflist): nodes then need only the standard CNI "
      "plugins, not vxnet-cni.")
@flag("cni-data-dir", help="host-local's state directory for that conflist is <dir>/ipam "
      "(default: host-local's own).")
@flag("ip-masq", is_flag=True, help="Masquerade pod traffic leaving the network.")
@flag("healthz-ip", default="127.0.0.1", show_default=True, help="HTTP API address.")
@flag("healthz-port", type=click.IntRange(0, 65535), default=10280, show_default=True,
      help="HTTP API port (0: no API).")
@flag("subnet-lease-renew-margin", type=click.IntRange(1, None), default=60, show_default=True,
      help="Minutes before expiry to renew the lease.")
@flag("subnet-lease-ttl", type=click.IntRange(3, None), default=86400, show_default=True,
      help="Seconds a subnet lease lives without renewal.")
@flag("node-name", default=socket.gethostname, show_default="hostname",
      help="This node's name (owner of its lease, key of its node ID).")
@flag("resync-interval", type=click.FloatRange(0.1, None), default=30.0, show_default=True,
      help="Seconds between full kernel resyncs.")
@flag("health-interval", type=click.FloatRange(0, None), default=60.0, show_default=True,
      help="Seconds in which every peer is probed once (overlay, underlay, and every few "
      "rounds a full-size packet), spread evenly; 0: no probes.")
@click.option("--vxlan-allowlist/--no-vxlan-allowlist", envvar=_env("vxlan-allowlist"),
              show_envvar=True, default=True, show_default=True,
              help="Accept VXLAN only from cluster members' public IPs (nftables).")
@click.option("--tx-checksum-offload/--no-tx-checksum-offload", envvar=_env("tx-checksum-offload"),
              show_envvar=True, default=None,
              help="Transmit checksum offload on the VXLAN device (off cures the kernels and "
              "NICs that corrupt VXLAN checksums). Default: Backend.TxChecksumOffload, else "
              "as the kernel has it.")
@flag("neighbours", type=click.Choice(["up-front", "on-demand"]),
      help="Remote pods' ARP/NDP entries programmed per peer up front, or answered when the "
      "kernel asks (kopeio's design). Default: Backend.Neighbours, else up-front.")
@flag("fdb", type=click.Choice(["up-front", "on-demand"]),
      help="Peers' FDB entries up front, or answered when the kernel asks (flannel's first "
      "vxlan backend). Default: Backend.FDB, else up-front.")
@flag("etcd-timeout", type=click.FloatRange(0.1, None), default=5.0, show_default=True,
      help="Seconds before an etcd request is given up (and retried).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def agent(verbose: bool, **kw: object) -> None:
    """Run the node agent: lease a subnet, program the VXLAN overlay, keep it in step."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vxnet.agent import main as agent_main
    from vxnet.agent.options import AgentOptions

    opts = AgentOptions(**{k.replace("-", "_"): v for k, v in kw.items()})  # type: ignore[arg-type]
    try:
        asyncio.run(agent_main.run(opts))
    except VxnetError as e:
        click.echo(f"vxnet agent: {e}", err=True)
        sys.exit(1)


@main.command()
@click.option("--nodes", type=click.IntRange(2, 20), default=3, show_default=True)
@click.option("--pods", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Pods per node.")
def demo(nodes: int, pods: int) -> None:
    """Build a lab cluster in network namespaces, prove pod-to-pod reachability, tear it down."""
    from vxnet.lab.demo import run_demo

    sys.exit(0 if run_demo(nodes, pods, lambda s: click.echo(s)) else 1)


@main.command()
@flag("healthz-ip", default="127.0.0.1", show_default=True, help="The agent's API address.")
@flag("healthz-port", type=click.IntRange(1, 65535), default=10280, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(healthz_ip: str, healthz_port: int, as_json: bool) -> None:
    """This node's lease, device, peers and drift (from the running agent)."""
    from vxnet.status import fetch, render_health, render_status

    try:
        ipam = fetch(healthz_ip, healthz_port, "/v1/ipam")
        state = fetch(healthz_ip, healthz_port, "/v1/state")
        health = fetch(healthz_ip, healthz_port, "/v1/health")
    except VxnetError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps({"ipam": ipam, "state": state, "health": health}, indent=2,
                              sort_keys=True))
    else:
        click.echo(render_status(ipam, state) + "\n\n" + render_health(health))


@main.command()
@etcd_flags
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def leases(etcd_prefix: str, as_json: bool, **etcd: Any) -> None:
    """The cluster's subnet leases, as etcd holds them."""
    from vxnet.status import LEASE_HEADERS, cluster_leases
    from vxnet.store.paths import Paths
    from vxnet.textui import table

    async def go() -> list[list[str]]:
        etcd_ = etcd_client(etcd)
        try:
            return await cluster_leases(etcd_, Paths(etcd_prefix))
        finally:
            await etcd_.close()

    try:
        rows = asyncio.run(go())
    except VxnetError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps([dict(zip(LEASE_HEADERS, r, strict=True)) for r in rows],
                              indent=2))
    else:
        click.echo(table(LEASE_HEADERS, rows) if rows else "no leases")


@main.command()
@flag("subnet-file", default="/run/flannel/subnet.env", show_default=True)
@flag("healthz-ip", default="127.0.0.1", show_default=True, help="Where an agent would answer.")
@flag("healthz-port", type=click.IntRange(1, 65535), default=10280, show_default=True)
@flag("cni-conf-file", help="The CNI conflist the agent kept written, removed too.")
@click.option("--release", is_flag=True, help="Also give this node's lease back in etcd.")
@etcd_flags
@flag("node-name", default=socket.gethostname, show_default="hostname")
def cleanup(subnet_file: str, cni_conf_file: str | None, healthz_ip: str, healthz_port: int,
            release: bool, etcd_prefix: str, node_name: str, **etcd: Any) -> None:
    """Remove what vxnet put on this node: devices, routes, nexthops, neighbours, FDB entries,
    nftables tables, subnet.env, the CNI conflist (and with --release, the lease). The agent must
    be stopped."""
    from vxnet.cleanup import agent_answers, clean_node, release_lease
    from vxnet.store.paths import Paths

    if agent_answers(healthz_ip, healthz_port):
        raise click.ClickException(f"an agent answers on {healthz_ip}:{healthz_port}; stop it "
                                   "first (a running agent would put everything back)")
    clean_node([subnet_file, cni_conf_file], click.echo)
    if release:
        async def give_back() -> None:
            etcd_ = etcd_client(etcd)
            try:
                await release_lease(etcd_, Paths(etcd_prefix), node_name, click.echo)
            finally:
                await etcd_.close()

        try:
            asyncio.run(give_back())
        except VxnetError as e:
            raise click.ClickException(str(e)) from None


@main.command("docker-opts")
@flag("subnet-file", default="/run/flannel/subnet.env", show_default=True,
      help="The subnet.env the agent wrote.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Write here (atomically) instead of to stdout, e.g. /run/docker_opts.env.")
def docker_opts_command(subnet_file: str, output: str | None) -> None:
    """dockerd's --bip/--ip-masq/--mtu for this node, as flannel's mk-docker-opts.sh writes
    them (DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU, DOCKER_OPTS)."""
    from vxnet.dockeropts import render
    from vxnet.store.subnetenv import SubnetEnv, write_atomic

    try:
        text = render(SubnetEnv.read(subnet_file))
        if output:
            write_atomic(output, text)
        else:
            click.echo(text, nl=False)
    except (VxnetError, OSError) as e:
        raise click.ClickException(str(e)) from None


LAB_STATE = Path("/run/vxnet-lab.json")


@main.group()
def lab() -> None:
    """A lab cluster that stays up for you to poke at (`up`, `exec`, `down`)."""


@lab.command("up")
@click.option("--nodes", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--pods", type=click.IntRange(0, 10), default=1, show_default=True,
              help="Pods per node, wired by vxnet-cni.")
def lab_up(nodes: int, pods: int) -> None:
    """Start etcd, NODES agents and their pods; leave them running."""
    from vxnet.lab.cluster import Cluster
    from vxnet.lab.demo import preflight

    if LAB_STATE.exists():
        raise click.ClickException(f"a lab is already up ({LAB_STATE}); `vxnet lab down` first")
    for p in preflight():
        raise click.ClickException(p)
    cluster = Cluster("lab")
    try:
        cluster.start(nodes)
        for n in cluster.nodes:
            cluster.wait_ready(n)
            for _ in range(pods):
                cluster.add_cni_pod(n)
        cluster.save(LAB_STATE)
    except BaseException:
        cluster.close()
        raise
    for n in cluster.nodes:
        click.echo(f"{n.name}: {n.ip}, subnet.env {cluster.subnet_env(n)}, log "
                   f"{cluster.workdir / n.name / 'agent.log'}")
        for k, pod in enumerate(n.pods, 1):
            click.echo(f"  {n.name}-pod{k}: {pod.ip}")
    click.echo("try: vxnet lab exec node1-pod1 -- ping -c 3 <a pod IP>;  vxnet lab exec node1 "
               "-- vxnet status;  vxnet lab down")


@lab.command("down")
def lab_down() -> None:
    """Stop everything `vxnet lab up` started and delete its namespaces."""
    from vxnet.lab.cluster import teardown_saved

    if not LAB_STATE.exists():
        click.echo("no lab is up")
        return
    for line in teardown_saved(LAB_STATE):
        click.echo(line)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("where")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(where: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a lab namespace: node1, node1-pod1, fabric."""
    if not LAB_STATE.exists():
        raise click.ClickException("no lab is up: `vxnet lab up` first")
    names = json.loads(LAB_STATE.read_text())["namespaces"]
    if where not in names:
        raise click.ClickException(f"no {where!r} in the lab; one of: {', '.join(names)}")
    os.execvp("ip", ["ip", "netns", "exec", names[where], *command])


if __name__ == "__main__":
    main()
