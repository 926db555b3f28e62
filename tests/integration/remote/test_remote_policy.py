"""The policy-server client against a real `lepetpal serve` on 127.0.0.1: parity with the local policy,
and the faults that must become one clear sentence (bad checkpoint path, a second client, versions)."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepetpal_tui.policy.server_client import (
    PolicyServerClient,
    PolicyServerError,
    connect_policy_server,
    explain_rpc_error,
    parse_address,
)
from lepetpal_tui.policy.smolvla import warmup_observation

from .conftest import remote_settings  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow
SEED = 7


def _observation(settings: Any, seed: int = 1) -> Any:
    obs = warmup_observation(list(settings.cameras), task="pick up the cube")
    obs.joints = np.random.default_rng(seed).uniform(-30, 30, 6)
    return obs


def test_server_chunk_equals_local_chunk(serve: Any, tmp_path: Path, tiny_policy_dir: Path) -> None:
    from lepetpal_tui.policy.load import load_policy

    server = serve(seed=SEED)
    settings = remote_settings(tmp_path, server.address, tiny_policy_dir)
    settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, dtype="fp32"))
    local = load_policy(dataclasses.replace(settings.model, server=""), settings.cameras, settings.arm.units,
                        lambda st: None)
    client = connect_policy_server(settings, lambda st: None, threading.Event())
    try:
        for seed in (1, 2):
            obs = _observation(settings, seed)
            want, _ = local.raw_chunk(obs, noise=local.make_noise(SEED))  # type: ignore[attr-defined]
            got = client.infer(obs)
            diff = float(np.max(np.abs(got.actions - want[: len(got.actions)])))
            print(f"parity (observation {seed}): max |server - local| = {diff:.2e} over {got.actions.shape}")
            assert got.actions.shape == (settings.model.actions_per_chunk, 6)
            assert got.source == "remote"
            assert diff <= 1e-4
        # The seed is what makes them equal: a different noise gives a different chunk.
        other, _ = local.raw_chunk(obs, noise=local.make_noise(SEED + 1))  # type: ignore[attr-defined]
        assert float(np.max(np.abs(got.actions - other))) > 1e-3
    finally:
        client.close()


def test_checkpoint_the_server_cannot_resolve(serve: Any, tmp_path: Path, tiny_policy_dir: Path) -> None:
    server = serve()
    settings = remote_settings(tmp_path, server.address, tmp_path / "not-on-the-server")
    statuses: list[Any] = []
    with pytest.raises(PolicyServerError) as err:
        connect_policy_server(settings, statuses.append, threading.Event())
    assert "could not load the checkpoint" in err.value.message and "not-on-the-server" in err.value.message
    assert "GPU machine" in err.value.fix
    assert statuses[-1].phase == "failed" and statuses[-1].error == err.value.message


def test_second_client_resetting_the_server_is_detected(serve: Any, tmp_path: Path, tiny_policy_dir: Path) -> None:
    """LeRobot's own client polls GetActions from a thread: it takes our observation; we say so and hold."""
    import grpc
    from lerobot.transport import services_pb2, services_pb2_grpc  # type: ignore[attr-defined]

    server = serve()
    settings = remote_settings(tmp_path, server.address, tiny_policy_dir)
    ours = connect_policy_server(settings, lambda st: None, threading.Event())
    obs = _observation(settings)
    assert ours.infer(obs).actions.shape[1] == 6
    other = services_pb2_grpc.AsyncInferenceStub(grpc.insecure_channel(server.address))
    other.Ready(services_pb2.Empty())  # a second robot client connects: the server resets
    stolen = threading.Thread(target=lambda: other.GetActions(services_pb2.Empty()))
    stolen.start()
    time.sleep(0.3)
    try:
        with pytest.raises(PolicyServerError) as err:
            ours.infer(obs)
        assert "another robot client" in err.value.message or "second robot client" in err.value.message
        assert "one robot at a time" in err.value.fix
    finally:
        stolen.join(10.0)
        ours.close()


class _Elsewhere:
    """Pickled under a module the other side does not have (stands for another LeRobot version)."""


def test_version_mismatch_is_one_sentence(tmp_path: Path) -> None:
    # Protocol 0 names classes as text lines, so the module can be swapped for one that does not exist.
    payload = pickle.dumps(_Elsewhere(), protocol=0).replace(_Elsewhere.__module__.encode(),
                                                             b"lerobot.async_inference.helpers_v9")
    try:
        pickle.loads(payload)
    except Exception as exc:
        err = explain_rpc_error(exc, "127.0.0.1:8080", "reading a chunk")
    else:
        pytest.fail("the doctored pickle loaded")
    from lerobot import __version__

    assert "different LeRobot version" in err.message and "\n" not in err.message
    assert f"lerobot[async,smolvla]=={__version__}" in err.fix


def test_address_and_closed_port(tmp_path: Path, tiny_policy_dir: Path) -> None:
    with pytest.raises(PolicyServerError, match="host:port"):
        parse_address("gpu-box")
    assert parse_address("[::1]:8080") == ("::1", 8080)
    from .conftest import free_port  # type: ignore[import-not-found]

    settings = remote_settings(tmp_path, f"127.0.0.1:{free_port()}", tiny_policy_dir)
    with pytest.raises(PolicyServerError, match="No policy server answers"):
        PolicyServerClient(settings).connect()


def test_a_camera_the_checkpoint_lacks_is_refused_before_the_server_is_asked(tmp_path: Path,
                                                                            tiny_policy_dir: Path) -> None:
    """The server would drop the checkpoint's camera without a word; the local preflight says so first."""
    from lepetpal_tui.settings import CameraSettings
    from lepetpal_tui.wire import ModelStatus

    from .conftest import free_port  # type: ignore[import-not-found]

    base = remote_settings(tmp_path, f"127.0.0.1:{free_port()}", tiny_policy_dir)
    wanted = list(base.cameras)
    settings = dataclasses.replace(base, cameras={"wrist": CameraSettings(source="synthetic")})
    statuses: list[ModelStatus] = []
    t0 = time.monotonic()
    with pytest.raises(PolicyServerError, match="Preflight cameras") as caught:
        connect_policy_server(settings, statuses.append, threading.Event())
    assert time.monotonic() - t0 < 5.0  # no waiting for a server that is not there
    assert f"Missing: {wanted[0]}" in caught.value.message
    assert "[model.camera_map]" in caught.value.fix
    assert statuses and statuses[-1].phase == "failed" and statuses[-1].error == caught.value.message
    # Mapped onto the checkpoint's name, the same settings pass the preflight and go on to the server.
    mapped = dataclasses.replace(settings, model=dataclasses.replace(settings.model,
                                                                    camera_map={"wrist": wanted[0]}))
    cancel = threading.Event()
    cancel.set()  # nothing listens: stop at the first wait
    with pytest.raises(PolicyServerError, match="Stopped waiting"):
        connect_policy_server(mapped, lambda status: None, cancel)


def test_model_pane_shows_the_server() -> None:
    from lepetpal_tui.ui.widgets.model import describe
    from lepetpal_tui.wire import ModelStatus, RemoteServerInfo

    info = RemoteServerInfo("127.0.0.1:8080", "cuda", network_s=0.006, server_s=0.090, last_contact=time.time())
    text = describe(ModelStatus("ready", source="ckpt", remote=info), "")
    assert "127.0.0.1:8080" in text and "device cuda" in text and "round trip 96 ms (network 6 + server 90)" in text
    assert "last contact " + time.strftime("%H:%M", time.localtime(info.last_contact)) in text
    assert "[b]server[/]" not in describe(ModelStatus("ready", source="ckpt"), "")


@pytest.mark.parametrize(("argv", "words"), [
    (["--fps", "0"], "--fps 0 is not a control rate"),
    (["--obs-queue-timeout", "-1"], "--obs-queue-timeout -1 must be a positive"),
    (["--port", "abc"], "--port abc is not a TCP port"),
])
def test_serve_rejects_bad_arguments_in_one_line(argv: list[str], words: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lepetpal_tui.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and "stop what uses it" not in err


def test_a_port_where_something_else_listens_is_told_apart_from_nothing(tmp_path: Path,
                                                                         tiny_policy_dir: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as other:  # a program that is no gRPC server
        port = other.getsockname()[1]
        settings = remote_settings(tmp_path, f"127.0.0.1:{port}", tiny_policy_dir)
        with pytest.raises(PolicyServerError, match="not a LeRobot policy server") as info:
            PolicyServerClient(settings).connect()
    assert f"lepetpal serve --port {port}" in info.value.fix and f"-L {port}:127.0.0.1:{port}" in info.value.fix
