"""The vision attention kernel is chosen by timing the candidates on this CPU, not by the flags: the
probe's verdict follows its own figures, a CPU without bf16 dot products is never probed, and every
kernel computes attention."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from lepetpal_tui.policy.speed import kernel_probe
from lepetpal_tui.policy.speed.cpu_caps import CpuCaps, cpu_caps, parse_cpuinfo


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    kernel_probe.vision_attention_kernel.cache_clear()
    yield
    kernel_probe.vision_attention_kernel.cache_clear()


def test_bf16_attention_matches_fp32_attention() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, n, 16, generator=g) for n in (40, 64, 64))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = kernel_probe.bf16_attention(*(t.to(torch.bfloat16) for t in (q * 16**-0.5, k, v))).float()
    err = float((got - want).abs().max())
    assert 0 < err < 0.03 * float(want.abs().max())  # rounded through bf16: close, not equal


@pytest.mark.parametrize("kernel", kernel_probe.ATTENTION_KERNELS)
def test_every_kernel_computes_attention(kernel: str) -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 3, n, 16, generator=g) for n in (40, 64, 64))
    scale = 0.3  # not the default 1/sqrt(16): the scale must be the one passed
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    dtype = kernel_probe.kernel_dtype(kernel)
    # q as the encoder passes it: a transposed (non-contiguous) view
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    got = kernel_probe.attention(kernel, q_view, k.to(dtype), v.to(dtype), scale)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = float((got - want).abs().max())
    if kernel == kernel_probe.FP32_SDPA:
        assert err < 1e-5
    else:
        assert 0 < err < 0.03 * float(want.abs().max())


def test_an_unknown_kernel_is_refused() -> None:
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(ValueError, match="unknown attention kernel 'int4'"):
        kernel_probe.attention("int4", q, q, q, 1.0)


def test_no_bf16_dot_products_means_fp32_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, flags = parse_cpuinfo("model name\t: AMD EPYC\nflags\t\t: avx avx2 fma\n")
    monkeypatch.setattr(kernel_probe, "cpu_caps", lambda: CpuCaps(model, "x86_64", flags, "AVX2"))
    monkeypatch.setattr(kernel_probe, "attention", lambda *a: pytest.fail("timed a kernel on a CPU without bf16"))
    assert kernel_probe.vision_attention_kernel(64, 128, 16, 4, 1) == kernel_probe.FP32_SDPA
    assert kernel_probe.decisions()["vision attention"] == "fp32-sdpa (no bf16 dot products on x86-avx2)"


@pytest.mark.skipif(not cpu_caps().bf16_native, reason="this CPU has no bf16 dot products to time")
def test_the_verdict_follows_the_measured_times() -> None:
    chosen = kernel_probe.vision_attention_kernel(256, 512, 64, 2, 1)
    assert chosen in kernel_probe.ATTENTION_KERNELS
    text = kernel_probe.decisions()["vision attention"]
    found = re.search(r"of fp32's time: bf16-sdpa ([0-9.]+), bf16-heads ([0-9.]+); fp32-sdpa ([0-9.]+) ms "
                      r"for 2 heads", text)
    assert found, text
    sdpa, heads, fp32_ms = (float(x) for x in found.groups())
    assert fp32_ms > 0 and sdpa > 0 and heads > 0
    assert text.startswith(chosen + " ")
    e = 0.0005  # every share is printed to 3 decimals: a verdict is only checked where rounding cannot hide it
    best = min(sdpa, heads)
    if best < kernel_probe.BF16_MARGIN - e:
        if abs(sdpa - heads) > 2 * e:
            assert chosen == (kernel_probe.BF16_SDPA if sdpa < heads else kernel_probe.BF16_HEADS)
        else:
            assert chosen != kernel_probe.FP32_SDPA
    elif best > kernel_probe.BF16_MARGIN + e:
        assert chosen == kernel_probe.FP32_SDPA
    assert kernel_probe.vision_attention_kernel(256, 512, 64, 2, 1) == chosen  # timed once per shape
