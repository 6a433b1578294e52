"""The kernel half: VXLAN device, peer state in routes/neighbours/FDB/nexthops, monitor."""
