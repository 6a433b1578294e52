"""The `vxnet` command line."""

from __future__ import annotations

import click

from vxnet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vxnet")
def main() -> None:
    """vxnet: a flannel-compatible VXLAN overlay network agent."""


@main.command()
def demo() -> None:
    """Build a lab cluster in network namespaces, prove pod-to-pod reachability, tear it down."""
    click.echo("vxnet demo: the demo arrives with the agent (issue 4); nothing to run yet.")


if __name__ == "__main__":
    main()
