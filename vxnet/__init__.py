"""vxnet: a flannel-compatible VXLAN overlay agent for container clusters."""

__version__ = "0.1.0"
