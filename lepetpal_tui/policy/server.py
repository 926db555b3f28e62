"""The GPU machine's side: LeRobot's own `PolicyServer`, with the few defaults `lepetpal serve` needs.

It is LeRobot's server class and gRPC service, unchanged on the wire (any LeRobot 0.6.1 robot client can
use it). A subclass adds three things, all server-local:
- device "auto" from a client means this server's `--device` (a plain LeRobot server would fail on it);
- an empty checkpoint path means the built-in demo checkpoint (built offline here on first use);
- `seed`: every chunk's flow-matching noise drawn from that seed, exactly as `SmolVLARunner.make_noise`
  draws it locally, so a chunk from the server can be compared with a local one (the parity test).

Imports torch and lerobot: only `lepetpal serve` and tests import this module.
"""

from __future__ import annotations

import pickle  # nosec B403: LeRobot's protocol (issue 3047); serve on loopback behind an SSH tunnel
from concurrent import futures
from typing import Any

import grpc
import torch
from lerobot.async_inference.configs import PolicyServerConfig
from lerobot.async_inference.helpers import RemotePolicyConfig
from lerobot.async_inference.policy_server import PolicyServer
from lerobot.transport import services_pb2, services_pb2_grpc  # type: ignore[attr-defined]

# One robot at a time, as LeRobot's own serve(): a second client's Ready resets the first.
MAX_WORKERS = 4


def resolve_server_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class LepetpalPolicyServer(PolicyServer):  # type: ignore[misc]  # LeRobot's class is untyped
    """LeRobot's PolicyServer with server-side defaults (see the module docstring)."""

    def __init__(self, config: PolicyServerConfig, device: str = "auto", seed: int | None = None) -> None:
        super().__init__(config)
        self.default_device = resolve_server_device(device)
        self.seed = seed

    def SendPolicyInstructions(self, request: Any, context: Any) -> Any:  # gRPC's method name
        spec = pickle.loads(request.data)  # nosec B301: the same call LeRobot's server makes next
        if isinstance(spec, RemotePolicyConfig):
            if spec.device in ("", "auto"):
                spec.device = self.default_device
            if not spec.pretrained_name_or_path:
                from lepetpal_tui.policy.demo_checkpoint import ensure_demo_policy

                spec.pretrained_name_or_path = str(ensure_demo_policy())
            request = services_pb2.PolicySetup(data=pickle.dumps(spec))
        return super().SendPolicyInstructions(request, context)

    def _get_action_chunk(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.seed is None:
            return super()._get_action_chunk(observation)  # type: ignore[no-any-return]
        cfg = self.policy.config
        gen = torch.Generator().manual_seed(self.seed)  # as SmolVLARunner.make_noise: same seed, same noise
        noise = torch.randn((1, cfg.chunk_size, cfg.max_action_dim), generator=gen, dtype=torch.float32)
        chunk = self.policy.predict_action_chunk(observation, noise=noise.to(self.device))
        if chunk.ndim != 3:
            chunk = chunk.unsqueeze(0)
        return chunk[:, : self.actions_per_chunk, :]  # type: ignore[no-any-return]


def start_server(config: PolicyServerConfig, device: str = "auto", seed: int | None = None) -> tuple[Any, Any]:
    """Start the gRPC server as LeRobot's `serve(cfg)` does, with our servicer; returns (server, servicer).

    Raises OSError when the port cannot be bound."""
    servicer = LepetpalPolicyServer(config, device=device, seed=seed)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {config.host}:{config.port}: the port is in use or the address is not "
                      "this machine's")
    server.start()
    return server, servicer
