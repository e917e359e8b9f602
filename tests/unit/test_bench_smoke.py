"""The plan benchmark's inputs stay valid as the schema tightens (it broke once)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"


def test_plan_bench_builds_and_plans_a_small_cluster() -> None:
    spec = importlib.util.spec_from_file_location("plan_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    state = bench.make_state(10, 20)
    median, p90 = bench.measure(state, 1)
    assert len(state.deployments) == 20 and median > 0 and p90 >= median


def test_revision_bench_inputs_validate_and_plan(tmp_path: Path) -> None:
    """bench/revision_bench.py's generated repos must stay valid (both shapes, both
    address schemes): the whole-path measurement of a small one."""
    from testrigs.big_repo import write_repo

    spec = importlib.util.spec_from_file_location(
        "revision_bench", BENCH.parent / "revision_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for files, net in ((20, "10"), (0, "198.19")):
        root = tmp_path / f"repo-{files}"
        write_repo(root, 10, 20, files, net=net)
        result = bench.one_size(root, 1)
        assert result["deployments"] == 20 and result["total"] > 0


def _pcap(segments: list[tuple[float, int, int, bytes]]) -> bytes:
    """A little-endian, Ethernet-framed capture of TCP segments, as tcpdump -w writes."""
    import struct

    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for t, sport, dport, payload in segments:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 0, 0, 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                         b"\x7f\0\0\x01", b"\x7f\0\0\x01") + tcp
        frame = b"\0" * 12 + b"\x08\x00" + ip
        sec = int(t)
        out.append(struct.pack("<IIII", sec, round((t - sec) * 1e6), len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def test_wire_capture_splits_the_gateways_share(tmp_path: Path) -> None:
    """bench/wire_capture.py: inbound, engine and relay times of a gateway request, and a
    direct request told apart from it (the README's gateway table rests on this)."""
    spec = importlib.util.spec_from_file_location("wire_capture",
                                                  BENCH.parent / "wire_capture.py")
    assert spec is not None and spec.loader is not None
    wire = importlib.util.module_from_spec(spec)
    sys.modules["wire_capture"] = wire  # its dataclasses look their module up there
    spec.loader.exec_module(wire)
    engine, gateway, client1, client2, pooled = 8000, 9000, 50001, 50002, 50003
    token = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    path = tmp_path / "lo.pcap"
    path.write_bytes(_pcap([
        # direct: POST at 10.000, the role chunk, the first token 15 ms later
        (10.000, client1, engine, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (10.005, engine, client1, role),
        (10.015, engine, client1, token),
        # through the gateway: 0.8 ms inbound, 12 ms engine, 0.1 ms relay
        (11.0000, client2, gateway, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (11.0008, pooled, engine, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (11.0050, engine, pooled, role),
        (11.0128, engine, pooled, token),
        (11.0129, gateway, client2, token),
    ]))
    b = wire.breakdown(wire.read_pcap(path), engine, gateway)
    m = b.medians()
    assert [round(x, 3) for x in b.engine_direct_ms] == [15.0]
    assert round(m["inbound_ms"], 3) == 0.8
    assert round(m["engine_behind_gateway_ms"], 3) == 12.0
    assert round(m["relay_ms"], 3) == 0.1
