"""Typed errors. Every one carries what an operator needs to find the culprit."""


class VxnetError(Exception):
    """Base of every error vxnet raises on purpose."""


class ConfigError(VxnetError):
    """The network config in etcd is missing or invalid; `key` names the culprit."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"network config: {key}: {message}")
        self.key = key


class LeaseDecodeError(VxnetError):
    """A subnet key or lease value in the store could not be decoded."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"lease {key!r}: {message}")
        self.key = key
        self.reason = message


class SubnetEnvError(VxnetError):
    """subnet.env is unreadable or malformed."""


class ExhaustedError(VxnetError):
    """No free subnet is left in the configured range."""


class SubnetTaken(VxnetError):
    """The one subnet this node may have (SubnetAllocation node-id) is someone else's."""


class StoreUnavailable(VxnetError):
    """etcd could not be reached (transient: callers retry)."""


class StoreAuthError(VxnetError):
    """etcd refused our credentials or our role's permissions (a configuration error)."""
