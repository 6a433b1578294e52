"""The store: cluster network config and subnet leases in etcd, in flannel's data model."""
