"""Where the gateway's added time to first token goes, read off the loopback wire.

tcpdump captures the engine's and the gateway's ports on `lo` while the TTFT benchmark
runs; the capture is then cut into requests by their `POST` segments:

- inbound: the client's POST reaching the gateway -> the gateway's POST to the engine
  (accept, parse, route, the upstream request written);
- engine: the engine's POST -> its first segment carrying a non-empty `content`;
- relay: that segment -> the gateway's segment carrying it on to the client.

Needs root and tcpdump (`apt-get install tcpdump`); `available()` says whether it can run.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_CONTENT = re.compile(rb'"content": ?"[^"]')
# a gateway POST belongs to the client POST that came at most this long before it
_MATCH_S = 0.05


@dataclass(frozen=True)
class Segment:
    t: float
    sport: int
    dport: int
    payload: bytes


@dataclass
class Breakdown:
    inbound_ms: list[float] = field(default_factory=list)
    engine_behind_gateway_ms: list[float] = field(default_factory=list)
    engine_direct_ms: list[float] = field(default_factory=list)
    relay_ms: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in vars(self).items() if v}


def available() -> bool:
    return shutil.which("tcpdump") is not None


def read_pcap(path: Path) -> list[Segment]:
    """TCP segments with a payload from a little-endian, Ethernet-framed (lo) capture."""
    data = path.read_bytes()
    off, out = 24, []
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack("<IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[14:]
        if len(ip) < 20 or ip[9] != 6:  # TCP only
            continue
        tcp = ip[(ip[0] & 15) * 4:]
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append(Segment(sec + usec / 1e6, sport, dport, payload))
    return out


def _first(segments: list[Segment], start: int, sport: int) -> int | None:
    """Index of the first segment from `start` on that `sport` sent with token text."""
    for i in range(start, len(segments)):
        if segments[i].sport == sport and _CONTENT.search(segments[i].payload):
            return i
    return None


def breakdown(segments: list[Segment], engine_port: int, gateway_port: int) -> Breakdown:
    out = Breakdown()
    client_post: float | None = None  # the last client POST to the gateway so far
    for i, s in enumerate(segments):
        if not s.payload.startswith(b"POST"):
            continue
        if s.dport == gateway_port:
            client_post = s.t
            continue
        if s.dport != engine_port:
            continue
        token = _first(segments, i, engine_port)
        if token is None:
            continue
        t_token = segments[token].t
        if client_post is None or not 0 <= s.t - client_post < _MATCH_S:
            out.engine_direct_ms.append((t_token - s.t) * 1e3)
            continue
        relayed = _first(segments, token, gateway_port)
        out.inbound_ms.append((s.t - client_post) * 1e3)
        out.engine_behind_gateway_ms.append((t_token - s.t) * 1e3)
        if relayed is not None:
            out.relay_ms.append((segments[relayed].t - t_token) * 1e3)
    return out


@contextmanager
def capture(path: Path, ports: tuple[int, ...]) -> Iterator[None]:
    expr = " or ".join(f"tcp port {p}" for p in ports)
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-s", "65535", "-w", str(path), expr],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # tcpdump attaches its filter asynchronously
    try:
        yield
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
