"""The CNI plugin: pods wired through the standard bridge and host-local plugins."""
