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


class StoreError(VxnetError):
    """etcd refused a request for a reason that retrying will not change (a lease it does not
    know, a malformed request); `code` is etcd's gRPC status code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class RevisionCompacted(StoreError):
    """The revision asked for is older than etcd's history: list again instead."""

    def __init__(self, message: str, revision: int = 0) -> None:
        super().__init__(message, 11)
        self.revision = revision  # the oldest revision etcd still has, when it said
