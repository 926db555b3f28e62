"""bf16 attention is chosen by timing it on this CPU, not by the flag: the probe's verdict follows its own
figures, a CPU without bf16 dot products is never probed, and the bf16 kernel computes attention."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from lepetpal_tui.policy.speed import kernel_probe
from lepetpal_tui.policy.speed.cpu_caps import CpuCaps, cpu_caps, parse_cpuinfo


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    kernel_probe.bf16_attention_pays.cache_clear()
    yield
    kernel_probe.bf16_attention_pays.cache_clear()


def test_bf16_attention_matches_fp32_attention() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, n, 16, generator=g) for n in (40, 64, 64))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = kernel_probe.bf16_attention(*(t.to(torch.bfloat16) for t in (q * 16**-0.5, k, v))).float()
    err = float((got - want).abs().max())
    assert 0 < err < 0.03 * float(want.abs().max())  # rounded through bf16: close, not equal


def test_no_bf16_dot_products_means_fp32_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, flags = parse_cpuinfo("model name\t: AMD EPYC\nflags\t\t: avx avx2 fma\n")
    monkeypatch.setattr(kernel_probe, "cpu_caps", lambda: CpuCaps(model, "x86_64", flags, "AVX2"))
    monkeypatch.setattr(kernel_probe, "bf16_attention", lambda *a: pytest.fail("timed bf16 on a CPU without it"))
    assert kernel_probe.bf16_attention_pays(64, 128, 16, 1) is False
    assert kernel_probe.decisions()["vision attention"] == "fp32 (no bf16 dot products on x86-avx2)"


@pytest.mark.skipif(not cpu_caps().bf16_native, reason="this CPU has no bf16 dot products to time")
def test_the_verdict_follows_the_measured_times() -> None:
    pays = kernel_probe.bf16_attention_pays(256, 512, 64, 1)
    text = kernel_probe.decisions()["vision attention"]
    found = re.search(r"bf16 took ([0-9.]+) of fp32's time, ([0-9.]+) vs ([0-9.]+) ms", text)
    assert found, text
    ratio, bf16_ms, fp32_ms = (float(x) for x in found.groups())
    e = 0.0005  # every figure is printed to 3 decimals: the ratio must lie within what rounding allows
    assert fp32_ms > e and (bf16_ms - e) / (fp32_ms + e) - e <= ratio <= (bf16_ms + e) / (fp32_ms - e) + e
    assert text.startswith("bf16" if pays else "fp32")
    if abs(ratio - kernel_probe.BF16_MARGIN) > e:  # the verdict, unless rounding hides which side it is on
        assert pays == (ratio <= kernel_probe.BF16_MARGIN)
    assert kernel_probe.bf16_attention_pays(256, 512, 64, 1) is pays  # timed once per shape
