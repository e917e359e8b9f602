"""The daemon's parts behind the console: the in-memory history (bounded, one sample per
interval, events on change only) and the engine log reader (bounded, no path escapes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon import engine_logs
from reconciler.daemon.history import History
from testrigs.status_docs import node_status

GPU = {"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "memoryTotalMib": 81559,
       "memoryUsedMib": 1200, "utilizationPct": 37, "temperatureC": 51, "healthy": True,
       "healthDetail": "", "state": "assigned", "foreignPids": []}


def status(state: str = "Ready", *, attempted: str | None = "a" * 40,
           applied: str | None = "a" * 40, failure: dict[str, Any] | None = None) -> Any:
    def commit(rev: str | None) -> dict[str, Any] | None:
        return None if rev is None else {"revision": rev, "subject": "<b>s</b>",
                                         "author": "x", "committedAt": None}
    return node_status(
        "n0", [{"deployment": "chat", "index": 0, "state": state, "nodes": ["n0"]}],
        revisions={"fetched": commit(attempted), "attempted": commit(attempted),
                   "applied": commit(applied), "lastGood": commit(applied)},
        source={"url": "u", "branch": "main", "path": ".", "lastFetchSuccessAt": None,
                "failure": failure},
        gpus={"declared": None, "observed": {"count": 1, "available": True, "simulated": False,
                                             "error": "", "driverVersion": "", "cudaVersion": "",
                                             "devices": [GPU]},
              "counts": {}, "simulated": False, "foreignPids": []},
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_one_sample_per_interval_and_an_hour_kept() -> None:
    clock = Clock()
    h = History(interval_s=5, keep_s=60, clock=clock)
    for _ in range(100):  # a tick every second for 100 s
        h.record(status())
        clock.t += 1
    view = h.view()
    assert len(view["samples"]) == 12  # 60 s / 5 s
    assert view["samples"][-1]["gpus"] == [{"index": 0, "memoryUsedMib": 1200,
                                            "memoryTotalMib": 81559, "utilizationPct": 37,
                                            "temperatureC": 51}]
    assert view["samples"][-1]["replicas"] == {"chat/0": "Ready"}
    assert view["now"] - view["samples"][0]["t"] <= 60


def test_events_on_change_only_and_ready_since() -> None:
    clock = Clock()
    h = History(clock=clock)
    h.record(status("Starting"))
    clock.t += 30
    for _ in range(5):
        h.record(status("Ready"))
    ready_at = clock.t
    clock.t += 10
    h.record(status("Ready"))
    view = h.view()
    replica = [e for e in view["events"] if e["kind"] == "replica"]
    assert [(e["before"], e["after"]) for e in replica] == [(None, "Starting"),
                                                            ("Starting", "Ready")]
    assert [e["kind"] for e in view["events"] if e["kind"] != "replica"] == ["attempted", "applied"]
    # the first tick that saw Ready, not the last one
    assert view["readySince"] == {"chat/0": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime(ready_at))}
    clock.t += 1
    h.record(status("Failed"))
    assert "chat/0" not in h.view()["readySince"]


def test_a_refused_revision_is_one_event_with_its_error_lines() -> None:
    h = History(clock=Clock())
    fail = {"reason": "InvalidDesiredState", "message": "2 problems", "revision": "b" * 40,
            "retryable": False, "problems": [f"chat.yaml:{i}: bad" for i in range(30)]}
    for _ in range(3):
        h.record(status(attempted="b" * 40, applied="a" * 40, failure=fail))
    refused = [e for e in h.view()["events"] if e["kind"] == "refused"]
    assert len(refused) == 1
    assert refused[0]["reason"] == "InvalidDesiredState"
    assert refused[0]["problems"][:2] == ["chat.yaml:0: bad", "chat.yaml:1: bad"]
    assert len(refused[0]["problems"]) == 20  # bounded


def test_events_bounded() -> None:
    clock = Clock()
    h = History(max_events=10, clock=clock)
    for i in range(50):
        h.record(status("Ready" if i % 2 else "Starting"))
    assert len(h.view()["events"]) == 10


# --- engine logs ----------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (logs / "chat.0.engine.log").write_bytes(b"line one\nline two\n")
    (tmp_path / "state" / "secret.txt").write_text("not for you")
    return tmp_path / "state"


def test_log_read_follow_and_rotation(state: Path) -> None:
    piece = engine_logs.read_log(state, "chat.0.engine", None)
    assert piece["text"] == "line one\nline two\n" and piece["offset"] == 0
    nxt = piece["next"]
    assert engine_logs.read_log(state, "chat.0.engine", nxt)["text"] == ""
    with (state / "logs" / "chat.0.engine.log").open("ab") as fh:
        fh.write(b"three\n")
    assert engine_logs.read_log(state, "chat.0.engine", nxt)["text"] == "three\n"
    (state / "logs" / "chat.0.engine.log").write_bytes(b"new\n")  # rotated: shorter
    again = engine_logs.read_log(state, "chat.0.engine", nxt + 6)
    assert again["reset"] and again["text"] == "new\n"
    assert [x["member"] for x in engine_logs.list_logs(state)] == ["chat.0.engine"]


def test_log_piece_bounded(state: Path) -> None:
    big = state / "logs" / "big.0.engine.log"
    big.write_bytes(b"x" * (engine_logs.MAX_CHUNK * 3))
    tail = engine_logs.read_log(state, "big.0.engine", None)
    assert len(tail["text"]) == engine_logs.DEFAULT_TAIL
    assert tail["next"] == tail["size"]
    piece = engine_logs.read_log(state, "big.0.engine", 0, limit=10**9)
    assert len(piece["text"]) == engine_logs.MAX_CHUNK


@pytest.mark.parametrize("name", [
    "../secret.txt", "..", "chat.0.engine/../../secret", "/etc/passwd", "chat.0.engine\x00",
    "Chat.0.engine", "chat.0.shell", "chat.x.engine", "", "a" * 300 + ".0.engine",
])
def test_no_name_escapes_the_logs_dir(state: Path, name: str) -> None:
    with pytest.raises(engine_logs.LogNotFound):
        engine_logs.read_log(state, name, None)


def test_a_symlink_is_not_followed(state: Path) -> None:
    os.symlink(state / "secret.txt", state / "logs" / "evil.0.engine.log")
    with pytest.raises(engine_logs.LogNotFound):
        engine_logs.read_log(state, "evil.0.engine", None)
    assert "evil.0.engine" not in [x["member"] for x in engine_logs.list_logs(state)]
