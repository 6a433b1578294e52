"""Continuous ICMP echo from one pod to several others, every send and reply accounted for:
`pinger.py STATUS_FILE INTERVAL DST...`, run inside the pod's namespace.

Unlike ping(8) it knows *when* each lost packet was sent (CLOCK_MONOTONIC, the same clock in
every namespace of this machine), so a chaos test can tell which fault a loss belongs to. It
rewrites STATUS_FILE a few times a second with, per destination, the send time of the newest
answered echo (so a test can wait until a pair is reachable again); on SIGTERM it waits for
outstanding answers, then prints one JSON object: per destination, packets sent and the send
times of those never answered."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

LATE = 2.0  # seconds without an answer before an echo counts as lost


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo(ident: int, seq: int) -> bytes:
    payload = b"vxnet-chaos" + bytes(21)
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(head + payload), ident, seq) + payload


def main(status_path: str, interval: float, dsts: list[str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    base = os.getpid() & 0xFF00  # echo id: this process's high byte, the destination's index
    pending: list[dict[int, float]] = [{} for _ in dsts]
    sent = [0] * len(dsts)
    lost: list[list[float]] = [[] for _ in dsts]
    last_ok = [0.0] * len(dsts)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    next_send = next_status = time.monotonic()
    seq = 0
    while True:
        now = time.monotonic()
        if stopping and (now - stopping[0] > LATE or not any(pending)):
            break
        if not stopping and now >= next_send:
            seq = (seq + 1) & 0xFFFF
            for i, dst in enumerate(dsts):
                pending[i][seq] = now
                sent[i] += 1
                with contextlib.suppress(OSError):  # no route: lost once LATE has passed
                    sock.sendto(echo(base | i, seq), (dst, 0))
            next_send += interval
        for i, waiting in enumerate(pending):
            for s, t in [(s, t) for s, t in waiting.items() if now - t > LATE]:
                del waiting[s]
                lost[i].append(t)
        if now >= next_status:
            tmp = status_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({d: last_ok[i] for i, d in enumerate(dsts)}, f)
            os.replace(tmp, status_path)
            next_status = now + 0.1
        for _ in sel.select(max(0.0, min(next_send, next_status) - time.monotonic())):
            while True:
                try:
                    pkt = sock.recv(2048)
                except BlockingIOError:
                    break
                hl = (pkt[0] & 0x0F) * 4
                if len(pkt) < hl + 8:
                    continue
                kind, _, _, ident, rseq = struct.unpack("!BBHHH", pkt[hl:hl + 8])
                i = ident & 0xFF
                if kind != 0 or ident & 0xFF00 != base or i >= len(dsts):
                    continue
                t = pending[i].pop(rseq, None)
                if t is not None:
                    last_ok[i] = max(last_ok[i], t)
    print(json.dumps({d: {"sent": sent[i], "lost": lost[i]} for i, d in enumerate(dsts)}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
