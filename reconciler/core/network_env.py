"""The network environment of every member process, built here and only here.

The vLLM server (single node, Ray driver, mp rank) and every Ray node get the same
variables from the Cluster's network section: `VLLM_HOST_IP`, the address vLLM and Ray's
workers advertise (it must equal the node's `--host` / `--node-ip-address`);
`NCCL_SOCKET_IFNAME` and `GLOO_SOCKET_IFNAME`, the interfaces (without the Gloo one it
can pick loopback: "connectFullMesh failed"); `NCCL_IB_HCA`, the InfiniBand adapters.
Unset ones are left to NCCL and Gloo.
"""

from __future__ import annotations


def network_env(
    node_ip: str,
    nccl_ifname: str | None = None,
    gloo_ifname: str | None = None,
    nccl_ib_hca: str | None = None,
) -> dict[str, str]:
    env = {"VLLM_HOST_IP": node_ip}
    if nccl_ifname:
        env["NCCL_SOCKET_IFNAME"] = nccl_ifname
    if gloo_ifname:
        env["GLOO_SOCKET_IFNAME"] = gloo_ifname
    if nccl_ib_hca:
        env["NCCL_IB_HCA"] = nccl_ib_hca
    return env
