"""A port blocked by a TIME_WAIT connection (no process holds it) is named as such."""

from __future__ import annotations

import os
import socket
import time

from reconciler.ports.processes import check_port_free, who_holds_port


def test_time_wait_is_named_not_an_unknown_process() -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        client = socket.socket()  # no SO_REUSEADDR, like most outgoing connections
        client.connect(srv.getsockname())
        port = int(client.getsockname()[1])
        accepted, _ = srv.accept()
        client.close()  # the client closes first: its side goes to TIME_WAIT
        accepted.close()
    time.sleep(0.1)
    taken = check_port_free("127.0.0.1", port)
    assert taken is not None, "a TIME_WAIT of a socket without SO_REUSEADDR blocks the bind"
    assert "TIME_WAIT" in taken and "unknown process" not in taken, taken
    assert "TIME_WAIT" in who_holds_port(port)


def test_a_listening_holder_is_named_by_pid() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = int(srv.getsockname()[1])
        assert who_holds_port(port).startswith(f"pid {os.getpid()} (")
