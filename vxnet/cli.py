"""The `vxnet` command line. Flags keep flanneld's names; FLANNELD_* environment variables set
them too, as they do for flanneld (e.g. FLANNELD_ETCD_ENDPOINTS)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

import click

from vxnet import __version__
from vxnet.agent.options import FLAG, AgentOptions, EtcdOptions, Flag
from vxnet.errors import VxnetError


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version: the installed distribution's version, so a build that carries its commit as a
    local version label (the image's 0.1.0+g<commit>, deploy/Containerfile) says which commit it
    is; this tree's __version__ when it runs uninstalled. Read only when asked for."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        said = version("vxnet")
    except PackageNotFoundError:
        said = __version__
    click.echo(f"vxnet, version {said}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and exit.")
def main() -> None:
    """vxnet: a flannel-compatible VXLAN overlay network agent."""


FC = TypeVar("FC", bound=Callable[..., Any])


def _env(name: str) -> str:
    return "FLANNELD_" + name.upper().replace("-", "_")


def flag(owner: type[EtcdOptions], name: str, **overrides: Any) -> Callable[[FC], FC]:
    """The click option of the options field `name` (see vxnet.agent.options): --<name>,
    FLANNELD_<NAME>, the field's default, its Flag; overrides are click.option's keywords, for a
    command whose flag says or accepts something else (`help=None` for none)."""
    fd = next(fd for fd in fields(owner) if fd.name == name)
    spec: Flag = fd.metadata[FLAG]
    opt = name.replace("_", "-")
    default = fd.default_factory if fd.default is MISSING else fd.default  # click calls a factory
    kw: dict[str, Any] = {"envvar": _env(opt), "show_envvar": True, "default": default,
                          "show_default": spec.show_default, "help": spec.help}
    if spec.type is not None:
        kw["type"] = spec.type
    if spec.multiple:
        kw["multiple"] = True
    if spec.is_flag:
        kw["is_flag"] = True
    decls = [f"--{opt}/--no-{opt}" if spec.negatable else f"--{opt}", name]
    return click.option(*decls, **(kw | overrides))


def flags(owner: type[EtcdOptions]) -> Callable[[FC], FC]:
    """A click option for every field of owner, in the fields' order."""
    def decorate(f: FC) -> FC:
        for fd in reversed(fields(owner)):
            f = flag(owner, fd.name)(f)
        return f
    return decorate


_GO_BOOL = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
            "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}


class _GoBools(click.Command):
    """flanneld's boolean flags also in Go's `--flag=true|false` form, which manifests and
    units written for flanneld use (`--iptables-forward-rules=false`): rewritten into click's
    `--flag` / `--no-flag` (a plain flag given false is left out, its default being off)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        specs = {"--" + fd.name.replace("_", "-"): fd.metadata[FLAG] for fd in fields(AgentOptions)}
        out = []
        for arg in args:
            name, eq, value = arg.partition("=")
            spec = specs.get(name)
            if eq and spec is not None and (spec.is_flag or spec.negatable) and value in _GO_BOOL:
                if _GO_BOOL[value] or spec.negatable:
                    out.append(name if _GO_BOOL[value] else "--no-" + name[2:])
                continue
            out.append(arg)
        return super().parse_args(ctx, out)


@main.command(cls=_GoBools)
@flags(AgentOptions)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def agent(verbose: bool, **values: Any) -> None:
    """Run the node agent: lease a subnet, program the VXLAN overlay, keep it in step."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the HTTP client logs every request at INFO (kube mode): our own lines say what matters
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)
    from vxnet.agent import main as agent_main

    opts = AgentOptions.from_flags(values)
    try:
        asyncio.run(agent_main.run(opts))
    except VxnetError as e:
        click.echo(f"vxnet agent: {e}", err=True)
        sys.exit(1)


@main.command()
@click.option("--nodes", type=click.IntRange(2, 20), default=3, show_default=True)
@click.option("--pods", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Pods per node.")
@click.option("--store", type=click.Choice(["etcd", "kube"]), default="etcd", show_default=True,
              help="Where the cluster keeps its state: etcd, or a Kubernetes API (the lab's "
              "simulator) with agents in kube mode.")
def demo(nodes: int, pods: int, store: str) -> None:
    """Build a lab cluster in network namespaces, prove pod-to-pod reachability, tear it down."""
    from vxnet.lab.demo import run_demo

    sys.exit(0 if run_demo(nodes, pods, lambda s: click.echo(s), store) else 1)


@main.command()
@flag(AgentOptions, "healthz_ip", help="The agent's API address.")
@flag(AgentOptions, "healthz_port", type=click.IntRange(1, 65535), help=None)
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
@flags(EtcdOptions)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def leases(as_json: bool, **values: Any) -> None:
    """The cluster's subnet leases, as etcd holds them."""
    from vxnet.status import LEASE_HEADERS, cluster_leases
    from vxnet.store.paths import Paths
    from vxnet.textui import table

    etcd = EtcdOptions.from_flags(values)

    async def go() -> list[list[str]]:
        etcd_ = etcd.client()
        try:
            return await cluster_leases(etcd_, Paths(etcd.etcd_prefix))
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
@flag(AgentOptions, "subnet_file", help=None)
@flag(AgentOptions, "healthz_ip", help="Where an agent would answer.")
@flag(AgentOptions, "healthz_port", type=click.IntRange(1, 65535), help=None)
@flag(AgentOptions, "cni_conf_file", help="The CNI conflist the agent kept written, removed too.")
@click.option("--release", is_flag=True, help="Also give this node's lease back in etcd.")
@flags(EtcdOptions)
@flag(AgentOptions, "node_name", help=None)
def cleanup(subnet_file: str, cni_conf_file: str | None, healthz_ip: str, healthz_port: int,
            release: bool, node_name: str, **values: Any) -> None:
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
        etcd = EtcdOptions.from_flags(values)

        async def give_back() -> None:
            etcd_ = etcd.client()
            try:
                await release_lease(etcd_, Paths(etcd.etcd_prefix), node_name, click.echo)
            finally:
                await etcd_.close()

        try:
            asyncio.run(give_back())
        except VxnetError as e:
            raise click.ClickException(str(e)) from None


@main.command("docker-opts")
@flag(AgentOptions, "subnet_file", help="The subnet.env the agent wrote.")
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
@click.option("--store", type=click.Choice(["etcd", "kube"]), default="etcd", show_default=True,
              help="Where the cluster keeps its state: etcd, or a Kubernetes API (the lab's "
              "simulator) with agents in kube mode.")
def lab_up(nodes: int, pods: int, store: str) -> None:
    """Start etcd (or a Kubernetes API), NODES agents and their pods; leave them running."""
    from vxnet.lab.cluster import Cluster
    from vxnet.lab.demo import preflight

    if LAB_STATE.exists():
        raise click.ClickException(f"a lab is already up ({LAB_STATE}); `vxnet lab down` first")
    for p in preflight(store):
        raise click.ClickException(p)
    cluster = Cluster("lab", store=store)
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
