"""The lab: a real multi-node cluster on one machine, built from network namespaces."""
