"""Rendering shared by plan and diff: members with argv and env, secrets masked, every
value from git escaped so that it stays on its line."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from reconciler.core.converged import ConvergedMember
from reconciler.core.printable import escape_controls

# Values of these names are secrets as far as printing goes (HF_TOKEN, *_API_KEY, ...):
# a plan is pasted into pull requests and CI logs.
SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSW(OR)?D|API_?KEY|CREDENTIAL|PRIVATE|(^|_)KEY$|AUTH)", re.IGNORECASE
)
MASK = "***"


def masked_env(env: Mapping[str, str]) -> dict[str, str]:
    return {
        escape_controls(k): MASK if SECRET_NAME.search(k) else escape_controls(v)
        for k, v in sorted(env.items())
    }


def argv_text(argv: tuple[str, ...] | list[str]) -> str:
    return escape_controls(shlex.join(argv))


def gpu_text(gpus: tuple[int, ...]) -> str:
    if not gpus:
        return "-"
    if list(gpus) == list(range(gpus[0], gpus[0] + len(gpus))) and len(gpus) > 2:
        return f"{gpus[0]}-{gpus[-1]}"
    return ",".join(map(str, gpus))


def member_lines(m: ConvergedMember, status: str, indent: str = "    ") -> list[str]:
    launch = m.launch
    role: str = launch.member.role
    if role == "engine" and m.placement.multi_node:
        if launch.port == 0:
            role = "engine (headless rank)"
        else:
            role = "engine (vLLM driver)" if not launch.gpus else "engine (rank 0)"
    lines = [
        f"{indent}{launch.member.replica} {role}  [{status}]  gpus {gpu_text(launch.gpus)}  "
        f"port {launch.port or '-'}  hash {launch.spec_hash}",
        f"{indent}  argv: {argv_text(launch.argv)}",
        f"{indent}  env:",
    ]
    lines += [f"{indent}    {k}={v}" for k, v in masked_env(launch.env).items()]
    return lines


def member_json(m: ConvergedMember, status: str) -> dict[str, Any]:
    launch = m.launch
    return {
        "member": str(launch.member),
        "replica": str(launch.member.replica),
        "role": launch.member.role,
        "status": status,
        "argv": list(launch.argv),
        "env": masked_env(launch.env),
        "gpus": list(launch.gpus),
        "port": launch.port,
        "specHash": launch.spec_hash,
        "nodes": list(m.placement.nodes),
    }
