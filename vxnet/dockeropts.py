"""Docker's own bridge on the node's subnet: the options flannel's mk-docker-opts.sh derives
from subnet.env, for dockerd's `--bip`, `--ip-masq`, `--mtu` (and IPv6 when it is on)."""

from __future__ import annotations

from vxnet.ip import first_host
from vxnet.store.subnetenv import SubnetEnv


def docker_opts(env: SubnetEnv) -> dict[str, str]:
    """mk-docker-opts.sh's variables, in its order; DOCKER_OPTS combines them."""
    opts: dict[str, str] = {}
    if env.subnet is not None:
        opts["DOCKER_OPT_BIP"] = f"--bip={first_host(env.subnet)}/{env.subnet.prefixlen}"
    # when the agent masquerades (FLANNEL_IPMASQ=true) docker must not do it a second time
    opts["DOCKER_OPT_IPMASQ"] = f"--ip-masq={str(not env.ipmasq).lower()}"
    opts["DOCKER_OPT_MTU"] = f"--mtu={env.mtu}"
    if env.ipv6_subnet is not None:
        opts["DOCKER_OPT_IPV6"] = f"--ipv6 --fixed-cidr-v6={env.ipv6_subnet}"
    opts["DOCKER_OPTS"] = " " + " ".join(opts.values())
    return opts


def render(env: SubnetEnv) -> str:
    return "".join(f'{k}="{v}"\n' for k, v in docker_opts(env).items())
