"""Rows in two halves on two threads: the runner, the vision encoder and where int8 routes them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lepetpal_tui.policy import smolvla as sv
from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME
from lepetpal_tui.policy.speed import int8_linear, kernel_probe, vision_encoder
from lepetpal_tui.policy.speed.row_halves import halves_of, run_halves
from lepetpal_tui.settings import ModelSettings


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def test_halves_split_rows_only_with_two_threads() -> None:
    assert halves_of(50) == [(0, 25), (25, 50)] and halves_of(7) == [(0, 4), (4, 7)]
    assert halves_of(1) == [(0, 1)]
    torch.set_num_threads(1)
    assert halves_of(50) == [(0, 50)]


@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_run_halves_runs_both_halves_on_their_own_threads_in_the_callers_mode(mode: str) -> None:
    seen: dict[int, tuple[str, int, bool, bool]] = {}

    def work(i: int, barrier: threading.Barrier) -> int:
        barrier.wait()  # both halves must be running at once to get past this
        seen[i] = (threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled(),
                   torch.is_grad_enabled())
        return 10 * i

    ctx = {"inference": torch.inference_mode(), "no_grad": torch.no_grad(), "grad": torch.enable_grad()}[mode]
    with ctx:
        assert run_halves(work, 2) == [0, 10]
    assert seen[0][0] == threading.current_thread().name and seen[1][0].startswith("lepetpal-rows")
    assert [s[1] for s in seen.values()] == [1, 1]  # one torch thread each on a 2-thread budget
    want = (mode == "inference", mode == "grad")
    assert all(s[2:] == want for s in seen.values())
    assert torch.get_num_threads() == 2  # restored


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failing_half_stops_the_other_and_its_error_is_raised(failing: int) -> None:
    def work(i: int, barrier: threading.Barrier) -> int:
        if i == failing:
            raise ValueError(f"half {i} failed")
        barrier.wait(timeout=10)  # would wait for ever without the abort
        return i

    with pytest.raises(ValueError, match=f"half {failing} failed"):
        run_halves(work, 2)
    assert torch.get_num_threads() == 2
    assert run_halves(lambda i, b: (b.wait(), i)[1], 2) == [0, 1]  # the worker is free again


def _layers(tiny: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    runner = sv.load_local(tiny, model=ModelSettings(path=str(tiny)), device="cpu",
                           backbone=str(tiny / BACKBONE_DIRNAME))
    vision = runner.policy.model.vlm_with_expert.get_vlm_model().vision_model
    cfg = vision.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    x = torch.randn(1, tokens, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    return vision.encoder, x


@pytest.mark.parametrize(("kernel", "threads"), [
    (kernel_probe.FP32_SDPA, 2), (kernel_probe.FP32_SDPA, 1), (kernel_probe.BF16_HEADS, 2),
    (kernel_probe.BF16_SDPA, 2), (kernel_probe.BF16_SDPA, 1),
])
def test_row_halves_encoder_matches_transformers(tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 kernel: str, threads: int) -> None:
    monkeypatch.setattr(vision_encoder, "attention_kernel", lambda *shape: kernel)
    calls: list[tuple[str, int]] = []
    real = kernel_probe.attention

    def counting(name: str, q: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append((name, q.shape[2]))  # the kernel, this half's query rows
        return real(name, q, *args)

    monkeypatch.setattr(kernel_probe, "attention", counting)
    encoder, x = _layers(tiny_policy_dir)
    with torch.inference_mode():
        want = encoder(x).last_hidden_state
        torch.set_num_threads(threads)
        ours = vision_encoder.RowHalvesVisionEncoder(encoder)
        got = ours(x).last_hidden_state
    assert got.shape == want.shape
    rows = x.shape[1] // threads
    assert sorted(calls) == sorted([(kernel, rows)] * threads * len(encoder.layers))
    if kernel == kernel_probe.FP32_SDPA:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    else:  # scores rounded through bf16: close, not equal
        assert 0 < float((got - want).abs().max()) < 0.02 * float(want.abs().max())


def test_row_halves_encoder_hands_a_padding_mask_to_transformers(tiny_policy_dir: Path) -> None:
    encoder, x = _layers(tiny_policy_dir)
    mask = torch.zeros(1, 1, x.shape[1], x.shape[1])
    mask[..., -3:] = float("-inf")  # the last patches are padding
    with torch.inference_mode():
        want = encoder(x, mask).last_hidden_state
        got = vision_encoder.RowHalvesVisionEncoder(encoder)(x, mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(not int8_linear.int8_supported(), reason="no quantized CPU engine")
def test_int8_runs_the_vision_encoder_in_row_halves(tiny_policy_dir: Path) -> None:
    runner = sv.load_local(tiny_policy_dir, model=ModelSettings(path=str(tiny_policy_dir)), device="cpu",
                           backbone=str(tiny_policy_dir / BACKBONE_DIRNAME))
    obs = sv.warmup_observation(("front",))
    noise = runner.make_noise(2)
    ref, _ = runner.raw_chunk(obs, noise=noise)
    runner.to_int8()
    encoder = runner.policy.model.vlm_with_expert.get_vlm_model().vision_model.encoder
    assert isinstance(vars(encoder)["forward"], vision_encoder.RowHalvesVisionEncoder)
    got, _ = runner.raw_chunk(obs, noise=noise)
    assert np.all(np.isfinite(got)) and 0 < np.max(np.abs(got - ref)) < sv.ACTION_TOLERANCE
