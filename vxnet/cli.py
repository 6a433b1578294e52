"""The `vxnet` command line. Flags keep flanneld's names; FLANNELD_* environment variables set
them too, as they do for flanneld (e.g. FLANNELD_ETCD_ENDPOINTS)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import click

from vxnet import __version__
from vxnet.errors import VxnetError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vxnet")
def main() -> None:
    """vxnet: a flannel-compatible VXLAN overlay network agent."""


def _env(name: str) -> str:
    return "FLANNELD_" + name.upper().replace("-", "_")


def flag(name: str, **kw):  # type: ignore[no-untyped-def]
    return click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kw)


@main.command()
@flag("etcd-endpoints", default="http://127.0.0.1:2379", show_default=True,
      help="Comma-separated etcd endpoints.")
@flag("etcd-prefix", default="/coreos.com/network", show_default=True,
      help="etcd prefix holding config and subnets/.")
@flag("etcd-cafile", type=click.Path(dir_okay=False), help="CA for etcd's TLS certificate.")
@flag("etcd-certfile", type=click.Path(dir_okay=False), help="Client certificate for etcd.")
@flag("etcd-keyfile", type=click.Path(dir_okay=False), help="Client key for etcd.")
@flag("iface", help="External interface, by name or IP (default: the default route's).")
@flag("public-ip", help="IPv4 address other nodes reach this one at.")
@flag("public-ipv6", help="IPv6 address other nodes reach this one at.")
@flag("subnet-file", default="/run/flannel/subnet.env", show_default=True,
      help="Where to write subnet.env.")
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
@flag("etcd-timeout", type=click.FloatRange(0.1, None), default=5.0, show_default=True,
      help="Seconds before an etcd request is given up (and retried).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def agent(verbose: bool, **kw: object) -> None:
    """Run the node agent: lease a subnet, program the VXLAN overlay, keep it in step."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vxnet.agent.agent import AgentOptions

    opts = AgentOptions(**{k.replace("-", "_"): v for k, v in kw.items()})  # type: ignore[arg-type]
    try:
        asyncio.run(_run_agent(opts))
    except VxnetError as e:
        click.echo(f"vxnet agent: {e}", err=True)
        sys.exit(1)


async def _run_agent(opts: object) -> None:
    from vxnet.agent.agent import Agent
    from vxnet.agent.http import ApiServer
    from vxnet.agent.metrics import AgentMetrics

    agent = Agent(opts)  # type: ignore[arg-type]
    api = ApiServer(agent, AgentMetrics(agent))
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly; kernel state and lease stay
        loop.add_signal_handler(sig, main_task.cancel)  # type: ignore[union-attr]
    if agent.opts.healthz_port:
        try:
            await api.start(agent.opts.healthz_ip, agent.opts.healthz_port)
        except OSError as e:
            raise VxnetError(f"--healthz-port: cannot listen on {agent.opts.healthz_ip}:"
                             f"{agent.opts.healthz_port}: {e.strerror}") from None
    try:
        await agent.run()
    except asyncio.CancelledError:
        logging.getLogger("vxnet").info("stopping; kernel state and lease are left in place")
    finally:
        await api.close()


@main.command()
def demo() -> None:
    """Build a lab cluster in network namespaces, prove pod-to-pod reachability, tear it down."""
    click.echo("vxnet demo: the demo arrives with issue 5; nothing to run yet.")


if __name__ == "__main__":
    main()
