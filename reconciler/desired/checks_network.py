"""Node addresses and interface names that validate but cannot work between nodes.

Ray, NCCL and vLLM connect node to node at the declared addresses: an address another
node cannot reach, or one host entered twice in two spellings, fails only at runtime
(a Ray worker that never joins, a rank that hangs in NCCL init).
"""

from __future__ import annotations

import ipaddress
import re

from reconciler.core.errors import Problem
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import Cluster

# the rule ray_argv.ray_node_env applies before it sets NCCL/GLOO_SOCKET_IFNAME (Linux's
# IFNAMSIZ is 16 with the NUL): refused here so that no plan ever raises on it
IFNAME = re.compile(r"^[^\s/]{1,15}$")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical(address: str) -> Address | None:
    """One spelling per host: IPv4-mapped IPv6 (::ffff:10.0.0.1) is the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # the schema already said so
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _unreachable(ip: Address) -> str | None:
    if ip.is_unspecified:
        return "the unspecified address (it means 'any', not a host)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if ip.is_loopback:
        return "a loopback address (each node would reach itself)"
    if ip.is_link_local:
        return "a link-local address (needs an interface scope the daemon cannot give)"
    return None


def check_network(cluster_doc: Document, cluster: Cluster) -> list[Problem]:
    problems: list[Problem] = []
    nodes = cluster.spec.nodes
    seen: dict[Address, int] = {}
    versions: dict[int, int] = {}
    for i, node in enumerate(nodes):
        ip = canonical(node.address)
        if ip is None:
            continue
        where = ("spec", "nodes", i, "address")
        why = _unreachable(ip)
        # one node may talk to itself over loopback (the CPU demo); several cannot
        if why is not None and (len(nodes) > 1 or not ip.is_loopback):
            problems.append(
                cluster_doc.problem(
                    where,
                    f"{node.address} is {why}: other nodes cannot reach it; use the node's "
                    "address on the cluster network (the interface NCCL and Ray use)",
                )
            )
        first = seen.get(ip)
        if first is not None and nodes[first].address != node.address:
            problems.append(
                cluster_doc.problem(
                    where,
                    f"{node.address} is {nodes[first].address} (nodes[{first}]) in another "
                    "spelling: one host entered twice; remove one entry or give its real "
                    "address",
                )
            )
        seen.setdefault(ip, i)
        versions.setdefault(ip.version, i)
    if len(versions) > 1:
        i = max(versions.values())
        problems.append(
            cluster_doc.problem(
                ("spec", "nodes", i, "address"),
                "nodes mix IPv4 and IPv6 addresses: Ray and NCCL connect over one family; "
                "give every node an address of the same family",
            )
        )
    net = cluster.spec.network
    for field, value in (
        ("ncclSocketIfname", net.nccl_socket_ifname),
        ("glooSocketIfname", net.gloo_socket_ifname),
    ):
        if value is not None and not IFNAME.match(value):
            problems.append(
                cluster_doc.problem(
                    ("spec", "network", field),
                    f"{value!r} is not an interface name (at most 15 characters, no "
                    "whitespace or '/'); name the one interface on the cluster network, "
                    "e.g. eth2",
                )
            )
    hca = net.nccl_ib_hca
    if hca is not None and (not hca or any(c.isspace() for c in hca)):
        problems.append(
            cluster_doc.problem(
                ("spec", "network", "ncclIbHca"),
                "must be a non-empty HCA list without whitespace (e.g. mlx5 or mlx5_0,mlx5_1)",
            )
        )
    return problems
