"""The engine-process port (vLLM engines, Ray head and worker nodes), one concern a module:

- port.py: the ProcessPort protocol and LocalProcessPort (start, list, stop, forget)
- threads.py: the waiter and prober threads; tracking.py: a member's observed state
- spawn.py: the child's environment and its start; members.py: a member's process tree
- adoption.py: members that no state file owns, found at start
- state_files.py: the state file codec; log_rotation.py: copy-truncate and the last line
- proc.py: /proc parsing; sockets.py: who holds a port; probe.py: the HTTP readiness probe
"""

from reconciler.ports.processes.log_rotation import rotate_log
from reconciler.ports.processes.port import LocalProcessPort, ProcessPort
from reconciler.ports.processes.probe import probe_engine
from reconciler.ports.processes.proc import ProcStat, read_environ, read_stat
from reconciler.ports.processes.sockets import (
    check_port_free,
    is_listening,
    port_holders,
    who_holds_port,
)
from reconciler.ports.processes.state_files import EngineRecord, read_state_files

__all__ = [
    "EngineRecord",
    "LocalProcessPort",
    "ProcStat",
    "ProcessPort",
    "check_port_free",
    "is_listening",
    "port_holders",
    "probe_engine",
    "read_environ",
    "read_stat",
    "read_state_files",
    "rotate_log",
    "who_holds_port",
]
