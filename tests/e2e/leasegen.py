"""Fake peers' leases for the burst test, written from inside the lab's fabric namespace:
`leasegen.py ENDPOINT PREFIX load N | burst N | expect N | clear N`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys

from vxnet.store import txn
from vxnet.store.etcd import Etcd
from vxnet.store.lease import LeaseAttrs
from vxnet.store.paths import Paths


def subnet(i: int) -> str:
    return f"10.{i // 256}.{i % 256}.0/24"


def value(i: int, variant: int) -> bytes:
    return LeaseAttrs(ipaddress.ip_address(f"203.0.113.{1 + i % 200}"),
                      f"0e:{variant:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:00:01").encode()


async def main(endpoint: str, prefix: str, what: str, n: int) -> None:
    etcd, paths = Etcd(endpoint, timeout=60), Paths(prefix)
    key = [paths.subnet(subnet(i).replace("/", "-")) for i in range(n)]
    try:
        if what == "load":
            lease = await etcd.grant(3600)
            for at in range(0, n, 1000):
                await etcd.txn([], [txn.put(key[i], value(i, 1), lease)
                                    for i in range(at, min(n, at + 1000))])
        elif what == "burst":  # 4 transactions, n changes each: 4n lease changes in all
            lease = await etcd.grant(3600)
            await etcd.txn([], [txn.put(key[i], value(i, 2), lease) for i in range(n)])
            await etcd.txn([], [txn.delete(key[i]) for i in range(1, n, 2)]
                           + [txn.put(key[i], value(i, 3), lease) for i in range(0, n, 2)])
            print("half", flush=True)
            await etcd.txn([], [txn.put(key[i], value(i, 3), lease) for i in range(n)])
            await etcd.txn([], [txn.put(key[i], value(i, 4), lease) for i in range(n)])
        elif what == "clear":
            await etcd.txn([], [txn.delete(k) for k in key])
        elif what == "expect":
            print(json.dumps({"subnets": [subnet(i) for i in range(n)],
                              "macs": [f"0e:04:{i >> 8 & 255:02x}:{i & 255:02x}:00:01"
                                       for i in range(n)]}))
    finally:
        await etcd.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
