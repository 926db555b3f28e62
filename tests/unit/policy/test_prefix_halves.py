"""The prefix pass with its rows in two halves (policy/speed/prefix_halves.py) against LeRobot's own pass on
the tiny checkpoint: the same KV cache and hidden states, padding rows included, and every other call left
to LeRobot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lepetpal_tui.policy import smolvla as sv
from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME
from lepetpal_tui.policy.speed import int8_linear, kernel_probe
from lepetpal_tui.policy.speed.prefix_halves import RowHalvesPrefix, use_row_halves_prefix
from lepetpal_tui.settings import ModelSettings


def _runner(dir: Path) -> sv.SmolVLARunner:
    return sv.load_local(dir, model=ModelSettings(path=str(dir)), device="cpu", backbone=str(dir / BACKBONE_DIRNAME))


def _prefix_call(runner: sv.SmolVLARunner) -> dict[str, Any]:
    """The keyword arguments of the chunk's prefix pass (LeRobot's own call in sample_actions)."""
    vwe: Any = runner.policy.model.vlm_with_expert
    calls: list[dict[str, Any]] = []
    real = vwe.forward

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    vwe.forward = spy
    runner.raw_chunk(sv.warmup_observation(("front",), task="pick up the cube"), noise=runner.make_noise(1))
    del vwe.forward
    assert calls and calls[0]["past_key_values"] is None and calls[0]["inputs_embeds"][1] is None
    return calls[0]


@pytest.fixture
def two_threads() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the halves need two
    yield
    torch.set_num_threads(threads)


def _both(runner: sv.SmolVLARunner, call: dict[str, Any]) -> tuple[Any, Any]:
    vwe: Any = runner.policy.model.vlm_with_expert
    halves = RowHalvesPrefix(vwe, vwe.forward)
    with torch.inference_mode():
        return vwe.forward(**call), halves(**call)


@pytest.mark.usefixtures("two_threads")
def test_the_halves_fill_the_same_cache_as_lerobots_prefix_pass(tiny_policy_dir: Path) -> None:
    runner = _runner(tiny_policy_dir)
    call = _prefix_call(runner)
    (want_out, want_cache), (got_out, got_cache) = _both(runner, call)
    assert got_out[1] is None
    torch.testing.assert_close(got_out[0], want_out[0], rtol=1e-4, atol=1e-4)
    assert len(got_cache.layers) == len(want_cache.layers) > 1
    for want, got in zip(want_cache.layers, got_cache.layers, strict=True):
        assert got.keys.shape == want.keys.shape  # [B, H_kv, P, D], every row of both halves in order
        torch.testing.assert_close(got.keys, want.keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.values, want.values, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("two_threads")
def test_padding_rows_stay_finite_and_change_nothing_else(tiny_policy_dir: Path) -> None:
    """Padded tokens (an empty camera's image tokens) are fully masked rows: LeRobot's pass gives them
    uniform attention, an additive mask would give NaN, which would then reach every row."""
    from lerobot.policies.smolvla.modeling_smolvla import make_att_2d_masks

    runner = _runner(tiny_policy_dir)
    call = _prefix_call(runner)
    length = call["inputs_embeds"][0].shape[1]
    pad = torch.ones(1, length, dtype=torch.bool)
    pad[:, 1:3] = False  # two padded rows in the first half
    att = torch.zeros(1, length, dtype=torch.bool)
    att[:, -1] = True  # the state token, as embed_prefix marks it
    call = {**call, "attention_mask": make_att_2d_masks(pad, att), "position_ids": torch.cumsum(pad, dim=1) - 1}
    (want_out, want_cache), (got_out, got_cache) = _both(runner, call)
    kept = pad[0]
    assert torch.isfinite(got_out[0]).all()
    torch.testing.assert_close(got_out[0][:, kept], want_out[0][:, kept], rtol=1e-4, atol=1e-4)
    for want, got in zip(want_cache.layers, got_cache.layers, strict=True):
        assert torch.isfinite(got.keys).all() and torch.isfinite(got.values).all()
        torch.testing.assert_close(got.keys[:, :, kept], want.keys[:, :, kept], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.values[:, :, kept], want.values[:, :, kept], rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("two_threads")
def test_calls_other_than_the_prefix_pass_go_to_lerobot(tiny_policy_dir: Path) -> None:
    runner = _runner(tiny_policy_dir)
    call = _prefix_call(runner)
    vwe: Any = runner.policy.model.vlm_with_expert
    seen: list[dict[str, Any]] = []

    def fallback(**kwargs: Any) -> str:
        seen.append(kwargs)
        return "lerobot"

    halves = RowHalvesPrefix(vwe, fallback)
    suffix = torch.zeros(1, 3, call["inputs_embeds"][0].shape[-1])
    assert halves(**{**call, "inputs_embeds": [call["inputs_embeds"][0], suffix]}) == "lerobot"  # training
    assert halves(**{**call, "use_cache": False}) == "lerobot"
    torch.set_num_threads(1)  # one thread: nothing to split
    assert halves(**call) == "lerobot"
    assert len(seen) == 3
    assert kernel_probe.decisions()["prefix pass"].startswith("whole (one torch thread")  # the Model pane's note


@pytest.mark.usefixtures("two_threads")
def test_the_policy_process_runs_the_prefix_in_halves_within_tolerance(
        tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 with passive OpenMP waiting (the policy process): the prefix takes the halves, its int8 layers
    as TorchScript steps, and the chunk stays within the accuracy tolerance of fp32."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert int8_linear.openmp_waits_passively()
    runner = _runner(tiny_policy_dir)
    obs = sv.warmup_observation(("front",), task="put it in the box")
    noise = runner.make_noise(2)
    ref, _ = runner.raw_chunk(obs, noise=noise)
    runner.to_int8()
    prefix = runner.policy.model.vlm_with_expert.forward
    assert isinstance(prefix, RowHalvesPrefix)
    got, _ = runner.raw_chunk(obs, noise=noise)
    assert prefix._plans is not None and all(plan.scripted_step() for plan in prefix._plans)
    assert kernel_probe.decisions()["prefix pass"] == "row halves on two threads"
    assert np.all(np.isfinite(got)) and np.max(np.abs(got - ref)) < sv.ACTION_TOLERANCE


def test_layers_without_the_expected_parts_keep_lerobots_pass(tiny_policy_dir: Path) -> None:
    runner = _runner(tiny_policy_dir)
    vwe: Any = runner.policy.model.vlm_with_expert
    del vwe.get_vlm_model().text_model.layers[0].mlp.act_fn
    assert not use_row_halves_prefix(vwe, vwe.forward)
    assert "forward" not in vars(vwe)
    assert kernel_probe.decisions()["prefix pass"].startswith("LeRobot's")
