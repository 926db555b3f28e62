"""The engine's policy on another machine: a client of LeRobot's async-inference `PolicyServer` (gRPC).

Why: a small robot computer cannot compute SmolVLA chunks in time (2-6 s per 1.67 s chunk on a 2-core
AVX2 CPU). LeRobot's own robot client runs its own loop with no e-stop, no safety filter and no screen, so
only the chunk computation moves: this class satisfies the engine's `PolicyLike` (`infer`, `reset`,
`chunk_length`) and every chunk still goes through the engine's splice, safety filter, speed factor,
e-stop, dry-run and session log, exactly like a local one.

Protocol: LeRobot's own, unchanged (stubs `lerobot.transport.services_pb2*`, messages
`lerobot.async_inference.helpers`): `Ready` (resets the server), `SendPolicyInstructions`
(`RemotePolicyConfig`: the server loads the checkpoint itself, from *its* disk or the hub),
`SendObservations` (a pickled `TimedObservation`, in chunks via `send_bytes_in_chunks`) and `GetActions`
(a pickled `list[TimedAction]`, already unnormalised). Every observation is sent with `must_go`: the engine
asks only when it needs a chunk, and the server would otherwise drop an observation whose joints moved
less than 1 (L2) since the last one and leave `GetActions` empty.

Payloads are Python pickles both ways (LeRobot issue 3047): only talk to a server reached through a
trusted path (an SSH tunnel to 127.0.0.1), and only run a server whose port nobody else can reach.

Faults never raise anything but `PolicyServerError` (one sentence plus a fix); the engine holds the arm
on it. After a lost server a background thread watches for it to come back (no RPC: `Ready` would reset a
server another robot might be using) and says so; the next operator start shakes hands again.
"""

from __future__ import annotations

import contextlib
import pickle  # nosec B403: LeRobot's protocol; see the module docstring
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lepetpal_tui.policy.errors import PolicyError
from lepetpal_tui.settings import JOINT_NAMES, Settings, split_address
from lepetpal_tui.wire import (
    ActionChunk,
    InferenceTiming,
    ModelStatus,
    Observation,
    PreflightCheck,
    RemoteServerInfo,
)

StatusFn = Callable[[ModelStatus], None]

IMAGE_PREFIX = "observation.images."
# Loading a checkpoint on the server can include a hub download: allow it minutes.
SETUP_TIMEOUT_S = 300.0
# One observation or one chunk: far above any chunk a plain CPU computes (2-6 s), so a slow link or a slow
# server is the speed factor's business, while a dead link still ends in a hold with a reason.
CALL_TIMEOUT_S = 15.0
RETRY_EVERY_S = 1.0
_VERSION_HINTS = ("No module named", "Can't get attribute", "unpickl", "pickle", "__setstate__",
                  "invalid load key", "_reconstruct")
def tunnel_fix(port: int = 8080) -> str:
    return (f"Start it on the GPU machine (`lepetpal serve --port {port}`), open the tunnel "
            f"(`ssh -N -L {port}:127.0.0.1:{port} gpu-box`), then restart lepetpal; "
            "or clear [model] server to run the policy here.")


def _something_listens(host: str, port: int) -> bool:
    """Whether a plain TCP connection to host:port opens (something listens, gRPC or not)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class PolicyServerError(PolicyError):
    """A policy-server fault the operator can fix; `message` is one sentence, `fix` says what to do.
    `unreachable`: nothing answers (yet): waiting may fix it, unlike a server that answered with a fault."""

    def __init__(self, message: str, fix: str = "", *, unreachable: bool = False) -> None:
        super().__init__(message, fix)
        self.unreachable = unreachable


def parse_address(text: str) -> tuple[str, int]:
    """"host:port" -> (host, port); raises PolicyServerError with the expected form."""
    address = split_address(text)
    if address is None:
        raise PolicyServerError(
            f'[model] server = "{text}" is not a "host:port" address.',
            'Write it as "127.0.0.1:8080" (the local end of the SSH tunnel to the GPU machine).',
        )
    return address


def explain_rpc_error(exc: BaseException, address: str, what: str, checkpoint: str = "") -> PolicyServerError:
    """Turn a gRPC failure (or an unreadable reply) into one clear sentence and a fix."""
    import grpc

    if isinstance(exc, PolicyServerError):
        return exc
    code = exc.code() if isinstance(exc, grpc.RpcError) else None  # type: ignore[attr-defined]
    details = (exc.details() if isinstance(exc, grpc.RpcError) else str(exc)) or ""  # type: ignore[attr-defined]
    details = " ".join(str(details).split())[:300]
    if any(h in details for h in _VERSION_HINTS) or isinstance(exc, pickle.UnpicklingError | ModuleNotFoundError
                                                                   | AttributeError):
        from lerobot import __version__ as ours

        return PolicyServerError(
            f"The policy server at {address} runs a different LeRobot version than this computer "
            f"(lerobot {ours} here): the two sides cannot read each other's pickled messages ({details}).",
            f'Install the same version on both machines: pip install "lerobot[async,smolvla]=={ours}".',
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        port = address.rpartition(":")[2]
        return PolicyServerError(f"The policy server at {address} is not reachable while {what} ({details}).",
                                 tunnel_fix(int(port) if port.isdigit() else 8080), unreachable=True)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PolicyServerError(
            f"The policy server at {address} did not answer within its time limit while {what}: the link "
            "or the server is too slow.",
            "Check the network (ping, the SSH tunnel) and the server's load; a faster link or GPU helps.",
        )
    if what == "loading the checkpoint":
        low = details.lower()
        if "device" in low or "cuda" in low:
            return PolicyServerError(
                f"The policy server at {address} cannot use the requested device ({details}).",
                'Set [model] device to one the server has ("cuda" or "cpu"), or leave it "auto" with '
                "`lepetpal serve --device ...` choosing.",
            )
        return PolicyServerError(
            f'The policy server at {address} could not load the checkpoint "{checkpoint}"; it resolves the '
            f"path on its own machine ({details}).",
            "Put the checkpoint on the GPU machine (or use a hub repo id it can download) and set [model] path "
            "to the path as the server sees it.",
        )
    return PolicyServerError(f"The policy server at {address} failed while {what} ({code}: {details}).",
                             "See the server's own output; restart it if it keeps failing.")


def checkpoint_image_shapes(path: str) -> dict[str, tuple[int, int]]:
    """The checkpoint's camera -> (H, W), when its config.json is readable here too; {} otherwise.

    Why: the server resizes each frame to this shape with plain bilinear interpolation before its
    preprocessor (LeRobot issue 2980); sending frames already at this shape makes that a no-op."""
    import json

    from lepetpal_tui.policy.demo_checkpoint import ensure_demo_policy

    folder = Path(path).expanduser() if path else None
    try:
        if folder is None:
            folder = ensure_demo_policy()
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[int, int]] = {}
    for key, feature in (cfg.get("input_features") or {}).items():
        shape: list[int] = list(feature.get("shape") or [])
        if key.startswith(IMAGE_PREFIX) and len(shape) == 3:
            out[key[len(IMAGE_PREFIX):]] = (int(shape[1]), int(shape[2]))
    return out


def fit_frame(frame: npt.NDArray[np.uint8], shape: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """`frame` at (H, W) = `shape`, resized the way SmolVLA itself shows it to the model (keep the aspect,
    pad left and top with black: `resize_with_pad`), so the server's bilinear stretch changes nothing and
    the model sees the geometry of the sync path (LeRobot issue 2980). A frame already that size is sent
    as it is."""
    if frame.shape[:2] == shape:
        return frame
    import torch
    from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad

    img = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].to(torch.float32)
    out = resize_with_pad(img, shape[1], shape[0], pad_value=0)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


@dataclass
class _Link:
    channel: Any
    stub: Any


class PolicyServerClient:
    """`PolicyLike` backed by a LeRobot `PolicyServer`. `infer` runs on the engine's inference thread only,
    never on the actuator tick; it blocks in gRPC (no GIL held while waiting)."""

    name = "smolvla (policy server)"
    dtype = "remote"
    parameters = 0

    def __init__(self, settings: Settings, on_status: StatusFn | None = None) -> None:
        self.address = settings.model.server.strip()
        self.host, self.port = parse_address(self.address)
        self.settings = settings
        self.model = settings.model
        self.chunk_length = settings.model.actions_per_chunk
        self.device = settings.model.device  # "auto": the server's own choice (`lepetpal serve --device`)
        self.source = self.model.path or "(demo checkpoint)"
        self._on_status = on_status or (lambda status: None)
        self._camera_map = dict(settings.model.camera_map)
        self._shapes = checkpoint_image_shapes(self.model.path)
        self._lock = threading.Lock()  # one observation/chunk exchange at a time
        self._link: _Link | None = None
        self._needs_setup = True
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        # Timesteps from a random base: a chunk for another client's observation (LeRobot's client counts
        # from 0) can never be taken for ours.
        self._timestep = random.randrange(1 << 40, 1 << 41)
        self.info = RemoteServerInfo(address=self.address, device=self.device)
        self._status_at = 0.0

    # ------------------------------------------------------------------------------------ connection

    def _open(self) -> _Link:
        import grpc
        from lerobot.transport import services_pb2_grpc  # type: ignore[attr-defined]
        from lerobot.transport.utils import grpc_channel_options

        # No automatic retries: a dead server must be reported at once, not after 5 backed-off attempts.
        channel = grpc.insecure_channel(f"{self.host}:{self.port}", grpc_channel_options(enable_retries=False))
        return _Link(channel, services_pb2_grpc.AsyncInferenceStub(channel))

    def _features(self) -> dict[str, dict[str, Any]]:
        """The robot's features in LeRobot's dataset format, as its client builds them from the robot."""
        from lerobot.utils.feature_utils import hw_to_dataset_features

        hw: dict[str, Any] = {f"{j}.pos": float for j in JOINT_NAMES}
        for ours, cam in self.settings.cameras.items():
            theirs = self._camera_map.get(ours, ours)
            h, w = self._shapes.get(theirs, (cam.height, cam.width))
            hw[theirs] = (h, w, 3)
        return dict(hw_to_dataset_features(hw, "observation", use_video=False))

    def connect(self, cancel: threading.Event | None = None) -> None:
        """Handshake: `Ready` (resets the server; one client at a time) and the policy instructions
        (the server loads the checkpoint). Raises PolicyServerError."""
        import grpc
        from lerobot.async_inference.helpers import RemotePolicyConfig
        from lerobot.transport import services_pb2  # type: ignore[attr-defined]

        link = self._link or self._open()
        self._link = link
        self._status("loading", f"connecting to the policy server at {self.address}")
        try:
            grpc.channel_ready_future(link.channel).result(timeout=5.0)
        except grpc.FutureTimeoutError:
            if _something_listens(self.host, self.port):
                raise PolicyServerError(
                    f"Something listens at {self.address}, but it is not a LeRobot policy server (another program "
                    "on that port, or a tunnel to the wrong port).",
                    f"Check the port `lepetpal serve` printed on the GPU machine and the tunnel's ports. "
                    f"{tunnel_fix(self.port)}", unreachable=True) from None
            raise PolicyServerError(f"No policy server answers at {self.address} (nothing listens there, or the "
                                    "SSH tunnel is down).", tunnel_fix(self.port), unreachable=True) from None
        spec = RemotePolicyConfig(
            policy_type="smolvla",
            pretrained_name_or_path=self.model.path,
            lerobot_features=self._features(),  # type: ignore[arg-type]  # LeRobot's own client passes these
            actions_per_chunk=self.model.actions_per_chunk,
            device=self.device,
        )
        try:
            link.stub.Ready(services_pb2.Empty(), timeout=10.0)
            self._status("loading", f"the policy server at {self.address} is loading {self.source}")
            link.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=pickle.dumps(spec)),
                                             timeout=SETUP_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise explain_rpc_error(exc, self.address, "loading the checkpoint", self.source) from None
        self._needs_setup = False
        self._lost.clear()
        self._status("ready", f"remote: policy server at {self.address}")

    # -------------------------------------------------------------------------------------- PolicyLike

    def infer(self, obs: Observation) -> ActionChunk:
        with self._lock:
            if self._lost.is_set() and self._watcher is not None and self._watcher.is_alive():
                raise PolicyServerError(f"The policy server at {self.address} is still not reachable.",
                                        tunnel_fix(self.port), unreachable=True)
            try:
                if self._needs_setup:
                    self.connect()
                return self._exchange(obs)
            except Exception as exc:
                err = explain_rpc_error(exc, self.address, "computing a chunk")
                self._needs_setup = True  # whatever happened, the next start shakes hands again
                self._server_lost(err)
                raise err from None

    def reset(self) -> None:
        """Nothing to reset remotely: the server computes each chunk from scratch (`predict_action_chunk`)."""

    def close(self) -> None:
        self._closed.set()
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                link.channel.close()

    # ------------------------------------------------------------------------------------------ helpers

    def raw_observation(self, obs: Observation) -> dict[str, Any]:
        """Our observation as LeRobot's robot client sends it: `<joint>.pos` floats (robot units), one
        H x W x 3 uint8 frame per checkpoint camera, and the task."""
        joints = np.asarray(obs.joints, dtype=np.float64).reshape(-1)
        if joints.shape != (len(JOINT_NAMES),):
            raise PolicyServerError(f"observation has {joints.shape[0]} joints, the policy needs {len(JOINT_NAMES)}.")
        raw: dict[str, Any] = {f"{j}.pos": float(v) for j, v in zip(JOINT_NAMES, joints, strict=True)}
        for ours in self.settings.cameras:
            frame = obs.images.get(ours)
            if frame is None:
                raise PolicyServerError(f"no frame from camera {ours} for the policy server.",
                                        "Check [cameras] in lepetpal.toml.")
            theirs = self._camera_map.get(ours, ours)
            shape = self._shapes.get(theirs)
            raw[theirs] = fit_frame(frame, shape) if shape else np.ascontiguousarray(frame)
        raw["task"] = obs.task
        return raw

    def encode(self, obs: Observation) -> tuple[bytes, int]:
        """(pickled TimedObservation, its timestep)."""
        from lerobot.async_inference.helpers import TimedObservation

        self._timestep += 1
        timed = TimedObservation(timestamp=time.time(), timestep=self._timestep,
                                 observation=self.raw_observation(obs), must_go=True)
        return pickle.dumps(timed), self._timestep

    def _exchange(self, obs: Observation) -> ActionChunk:
        from lerobot.transport import services_pb2  # type: ignore[attr-defined]
        from lerobot.transport.utils import send_bytes_in_chunks

        link = self._link
        assert link is not None
        t0 = time.perf_counter()
        data, timestep = self.encode(obs)
        t1 = time.perf_counter()
        link.stub.SendObservations(send_bytes_in_chunks(data, services_pb2.Observation), timeout=CALL_TIMEOUT_S)
        t2 = time.perf_counter()
        reply = link.stub.GetActions(services_pb2.Empty(), timeout=CALL_TIMEOUT_S)
        t3 = time.perf_counter()
        payload = getattr(reply, "data", b"")
        if not payload:
            raise PolicyServerError(
                f"The policy server at {self.address} returned no actions for our observation: it was reset "
                "(another robot client connected to it, or it restarted) and lost our observation or policy.",
                "A policy server serves one robot at a time: stop the other client, then re-arm and start.",
            )
        try:
            timed_actions = pickle.loads(payload)  # nosec B301: see the module docstring
        except Exception as exc:
            raise explain_rpc_error(exc, self.address, "reading a chunk") from None
        actions = np.stack([np.asarray(a.get_action(), dtype=np.float64).reshape(-1) for a in timed_actions])
        first = int(timed_actions[0].get_timestep()) if timed_actions else -1
        if first != timestep:
            raise PolicyServerError(
                f"The policy server at {self.address} answered with a chunk for another client's observation "
                f"(timestep {first}, ours {timestep}): a second robot client is using it and reset it.",
                "A policy server serves one robot at a time: stop the other client, then re-arm and start.",
            )
        t4 = time.perf_counter()
        # Upload = network (plus the server's unpickling); GetActions = the server's compute plus the
        # small reply (and its inference_latency pad): the split the Model pane shows.
        self.info = RemoteServerInfo(address=self.address, device=self.device, network_s=t2 - t1,
                                     server_s=t3 - t2, last_contact=time.time(), bytes_sent=len(data))
        if self.info.last_contact - self._status_at >= 1.0:  # the pane and the session log: ~1 line a second
            self._status_at = self.info.last_contact
            self._status("ready", f"remote: policy server at {self.address}")
        return ActionChunk(
            actions=actions,
            timing=InferenceTiming(preprocess_s=t1 - t0, model_s=t3 - t2, postprocess_s=t4 - t3, network_s=t2 - t1),
            task=obs.task,
            observed_at=obs.timestamp,
            source="remote",
        )

    def _status(self, phase: str, message: str, error: str = "", fix: str = "") -> None:
        with contextlib.suppress(Exception):  # the pane is informative; never fail a chunk on it
            self._on_status(ModelStatus(phase=phase, source=self.source, message=message, device=self.device,  # type: ignore[arg-type]
                                        dtype=self.dtype, error=error, fix=fix, remote=self.info))

    def _server_lost(self, err: PolicyServerError) -> None:
        """Say why, then watch in the background for the server to come back (no RPC, see docstring)."""
        self._lost.set()
        self._status("failed", "policy server lost: the arm holds", error=err.message,
                     fix=err.fix + " Retrying in the background; once it is back, re-arm and start to resume.")
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._watcher = threading.Thread(target=self._watch, name="policy-server-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        import grpc

        while not self._closed.wait(RETRY_EVERY_S):
            link = self._link
            if link is None:
                return
            try:
                grpc.channel_ready_future(link.channel).result(timeout=RETRY_EVERY_S)
            except grpc.FutureTimeoutError:
                continue
            except Exception:
                return
            self._lost.clear()
            self._status("ready", f"the policy server at {self.address} is back: re-arm and start to resume "
                         "(the next start loads the policy on it again)")
            return


def local_preflight(settings: Settings) -> list[PreflightCheck]:
    """The checks that need only the checkpoint's config.json (cameras, state and action sizes), where the
    checkpoint the server loads is readable here too (the same path, or the demo); [] where it is not.

    Why: LeRobot's policy server drops a camera the checkpoint expects but the observation lacks without a
    word, and the policy then acts on the cameras it has; the local path refuses that in its preflight."""
    from lepetpal_tui.policy.demo_checkpoint import ensure_demo_policy
    from lepetpal_tui.policy.preflight import check_cameras, check_sizes, read_checkpoint

    path = settings.model.path
    try:
        folder = Path(path).expanduser() if path else ensure_demo_policy()
    except Exception:
        return []
    if not (folder / "config.json").is_file():
        return []  # a hub id, or a path on the server's machine: the server's own load is the check
    info = read_checkpoint(folder)
    if not info.config:
        return []
    return [check_cameras(info, settings.cameras, settings.model.camera_map), *check_sizes(info)]


def connect_policy_server(settings: Settings, on_status: StatusFn, cancel: threading.Event) -> PolicyServerClient:
    """The engine's policy factory when [model] server is set: hand-shake now, so the Model pane shows
    "ready" only once the server has the checkpoint. Waits for a server that is not up yet (the arm holds
    meanwhile, and the Model pane says why); raises PolicyServerError for what waiting cannot fix."""
    client = PolicyServerClient(settings, on_status)
    bad = [c for c in local_preflight(settings) if not c.ok]
    if bad:
        more = f" ({len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
        err = PolicyServerError(f"Preflight {bad[0].name}: {bad[0].detail}{more}", bad[0].fix)
        client._status("failed", "the checkpoint does not fit this arm's settings", error=err.message, fix=err.fix)
        client.close()
        raise err
    while True:
        try:
            client.connect(cancel)
            return client
        except PolicyServerError as exc:
            if not exc.unreachable:
                client._status("failed", "the policy server could not load the policy", error=exc.message, fix=exc.fix)
                client.close()
                raise
            client._status("failed", "waiting for the policy server", error=exc.message,
                           fix=exc.fix + f" Retrying every {RETRY_EVERY_S:g} s; the arm holds meanwhile.")
        if cancel.wait(RETRY_EVERY_S):
            client.close()
            raise PolicyServerError(f"Stopped waiting for the policy server at {client.address}.")

