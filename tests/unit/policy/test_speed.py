"""CPU speed settings: int8 linears, and how dtype "auto" picks int8 / bf16 / fp32 on the tiny checkpoint."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lepetpal_tui.policy import smolvla as sv
from lepetpal_tui.policy.demo_checkpoint import BACKBONE_DIRNAME
from lepetpal_tui.policy.speed import (
    accuracy_cache,
    decoder_layer,
    int8_linear,
    int8_saturation,
    kernel_probe,
    lean_denoiser,
    scripted_expert,
)
from lepetpal_tui.policy.speed import apply as policy_speed
from lepetpal_tui.policy.speed.cpu_caps import cpu_caps
from lepetpal_tui.policy.speed.int8_linear import Int8Linear, quantize_linears
from lepetpal_tui.policy.speed.prefix_halves import RowHalvesPrefix
from lepetpal_tui.settings import ModelSettings

pytestmark = pytest.mark.skipif(not int8_linear.int8_supported(), reason="no quantized CPU engine")


def emulated_int8(x: torch.Tensor, lin: nn.Linear, bits: int) -> torch.Tensor:
    """What dynamic int8 should compute, in fp32: activations quantized per call (asymmetric, `bits`
    wide, range including 0), weights symmetric per output channel."""
    qmax = 2**bits - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / qmax
    zp = round(-lo / scale)
    xd = (torch.clamp(torch.round(x / scale) + zp, 0, qmax) - zp) * scale
    w = lin.weight.detach()
    ws = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
    wd = torch.clamp(torch.round(w / ws[:, None]), -128, 127) * ws[:, None]
    out = xd @ wd.T
    return out if lin.bias is None else out + lin.bias.detach()


# Relative error of the quantization itself against fp32 (random normal inputs, 256-960 wide): 8-bit
# activations ~0.01, 7-bit ~0.02. Bounds with room, per width.
QUANT_ERROR_BOUND = {8: 0.015, 7: 0.03}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(256, 384), (960, 2560)])
def test_int8_linear_computes_the_quantized_product_on_this_cpu(bias: bool, shape: tuple[int, int]) -> None:
    """The kernel this CPU selects computes exactly what the quantization says (no int16 saturation: on
    an AVX2 CPU with 8-bit activations it is 0.09-0.16 off), and that is close to fp32."""
    torch.manual_seed(0)
    lin = nn.Linear(*shape, bias=bias)
    q = Int8Linear(lin)
    assert q.activation_bits == int8_saturation.activation_bits()
    x = torch.randn(3, 50, shape[0])
    with torch.inference_mode():
        want, got = lin(x), q(x)
        emulated = emulated_int8(x, lin, q.activation_bits)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert float((got - emulated).norm() / emulated.norm()) < 2e-3
    rel = float((got - want).norm() / want.norm())
    assert 0 < rel < QUANT_ERROR_BOUND[q.activation_bits]  # it is quantized (not a copy of fp32), and close
    # LeRobot casts inputs to `proj.weight.dtype`: the probe must say fp32.
    assert q.weight.dtype == torch.float32 and q.weight.numel() == 0


@pytest.mark.parametrize("engine", [e for e in int8_saturation._ENGINES if e in torch.backends.quantized.supported_engines])
def test_seven_bit_activations_are_exact_on_every_cpu(engine: str) -> None:
    """7-bit activations never saturate, whatever kernel runs (the fallback for CPUs without VNNI); qnnpack
    ignores reduce_range and takes 8 bits, and says so."""
    if not int8_saturation.sound(engine):
        pytest.skip(f"{engine}'s kernel is unsound here and never used")
    torch.manual_seed(1)
    lin = nn.Linear(256, 384)
    q = Int8Linear(lin, engine=engine, activation_bits=7)
    assert q.activation_bits == (8 if engine == "qnnpack" else 7)
    x = torch.randn(2, 40, 256) * 3.0
    with torch.inference_mode():
        got, emulated = q(x), emulated_int8(x, lin, q.activation_bits)
    assert float((got - emulated).norm() / emulated.norm()) < 2e-3


def test_int8_linear_refuses_other_widths() -> None:
    with pytest.raises(ValueError, match="7 or 8 bits"):
        Int8Linear(nn.Linear(8, 8), activation_bits=6)


def test_int8_linear_keeps_the_caller_dtype() -> None:
    q = Int8Linear(nn.Linear(64, 32))
    with torch.inference_mode():
        y: torch.Tensor = q(torch.randn(2, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_quantize_linears_skips_lm_head_and_kept_names() -> None:
    model = nn.ModuleDict({
        "a": nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)),
        "keep_me": nn.Linear(8, 8),
        "lm_head": nn.Linear(8, 100),
    })
    n = quantize_linears(model, keep=lambda name: name.startswith("keep"))
    assert n == 2
    seq = model["a"]
    assert isinstance(seq, nn.Sequential)
    assert isinstance(seq[0], Int8Linear) and isinstance(seq[2], Int8Linear)
    assert type(model["keep_me"]) is nn.Linear and type(model["lm_head"]) is nn.Linear


def _runner(dir: Path) -> sv.SmolVLARunner:
    return sv.load_local(dir, model=ModelSettings(path=str(dir)), device="cpu", backbone=str(dir / BACKBONE_DIRNAME))


def _int8_count(runner: sv.SmolVLARunner) -> int:
    return sum(isinstance(m, Int8Linear) for m in runner.policy.modules())


def test_int8_setting_quantizes_only_the_vlm_and_expert(tiny_policy_dir: Path) -> None:
    runner = _runner(tiny_policy_dir)
    obs = sv.warmup_observation(("front",))
    noise = runner.make_noise(3)
    ref, _ = runner.raw_chunk(obs, noise=noise)
    runner, note, warm_s = sv.choose_dtype(runner, "int8", obs, lambda: _runner(tiny_policy_dir))
    assert runner.dtype == "int8" and note.startswith("int8") and warm_s > 0
    inner = runner.policy.model
    assert _int8_count(runner) > 10
    assert all(not isinstance(m, Int8Linear) for m in (inner.state_proj, inner.action_out_proj))
    assert kernel_probe.decisions()["int8 linears"].startswith(policy_speed.int8_engines())  # in the Model pane's note
    got, _ = runner.raw_chunk(obs, noise=noise)
    assert np.all(np.isfinite(got)) and got.shape == ref.shape
    assert 0 < np.max(np.abs(got - ref)) < sv.ACTION_TOLERANCE


@pytest.fixture
def accuracy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    file = tmp_path / "accuracy.json"
    monkeypatch.setenv(accuracy_cache.ENV, str(file))
    return file


def test_auto_keeps_int8_when_close_and_caches_the_check(tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         accuracy_file: Path) -> None:
    # The tiny model is too small for auto; pretend it is big.
    monkeypatch.setattr(sv, "BF16_MIN_PARAMETERS", 0)
    steps: list[str] = []
    runner, note, _ = sv.choose_dtype(_runner(tiny_policy_dir), "auto", sv.warmup_observation(("front",)),
                                      lambda: _runner(tiny_policy_dir), progress=steps.append)
    bits = policy_speed.int8_activation_bits()
    assert runner.dtype == "int8" and f"int8 ({bits} activations) VLM" in note and "max diff to fp32's actions" in note
    # Kernels capped below this CPU (the suite's AVX2 run) are named in the Model pane's note.
    assert ("kernels capped by" in note) is bool(cpu_caps().capped_by)
    assert any("fp32 reference chunk" in s for s in steps) and str(accuracy_file) in note
    saved = json.loads(accuracy_file.read_text())
    assert len(saved) == 1 and next(iter(saved.values()))["max_diff"] < sv.ACTION_TOLERANCE
    # The second start takes the cached answer: no fp32 reference chunk.
    steps.clear()
    runner, note, _ = sv.choose_dtype(_runner(tiny_policy_dir), "auto", sv.warmup_observation(("front",)),
                                      lambda: _runner(tiny_policy_dir), progress=steps.append)
    assert runner.dtype == "int8" and "accuracy checked" in note
    assert not any("reference" in s for s in steps)
    assert policy_speed.int8_engines() in next(iter(saved))
    # Other int8 engines (AMX granted or not) are another path: checked again.
    monkeypatch.setattr(policy_speed, "int8_engines", lambda: "vision onednn, rest other-engine")
    steps.clear()
    sv.choose_dtype(_runner(tiny_policy_dir), "auto", sv.warmup_observation(("front",)),
                    lambda: _runner(tiny_policy_dir), progress=steps.append)
    assert any("fp32 reference chunk" in s for s in steps)
    # A result stored under an older check format (one that may be wrong) is checked again.
    monkeypatch.setattr(accuracy_cache, "CHECK_FORMAT", accuracy_cache.CHECK_FORMAT + 1)
    steps.clear()
    sv.choose_dtype(_runner(tiny_policy_dir), "auto", sv.warmup_observation(("front",)),
                    lambda: _runner(tiny_policy_dir), progress=steps.append)
    assert any("fp32 reference chunk" in s for s in steps)
    assert len(json.loads(accuracy_file.read_text())) == 3  # the older entries stay; they are never read


@pytest.mark.parametrize("setting", ["auto", "int8"])
def test_a_path_off_fp32_falls_back_to_a_fresh_fp32_runner(tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                           accuracy_file: Path, setting: str) -> None:
    """Explicit int8 goes through the same check as auto: kernels that are off never drive the arm."""
    monkeypatch.setattr(sv, "BF16_MIN_PARAMETERS", 0)
    monkeypatch.setattr(sv, "ACTION_TOLERANCE", -1.0)  # nothing can be close enough
    reloads: list[sv.SmolVLARunner] = []

    def reload() -> sv.SmolVLARunner:
        reloads.append(_runner(tiny_policy_dir))
        return reloads[-1]

    runner, note, _ = sv.choose_dtype(_runner(tiny_policy_dir), setting, sv.warmup_observation(("front",)), reload)
    assert runner.dtype == "fp32" and runner is reloads[-1] and len(reloads) == 1
    assert _int8_count(runner) == 0
    assert next(runner.policy.model.vlm_with_expert.parameters()).dtype == torch.float32
    assert "int8" in note and "rejected" in note and "(limit -1)" in note
    # Cached as rejected: the next start goes straight to fp32 without converting.
    runner, note, _ = sv.choose_dtype(_runner(tiny_policy_dir), setting, sv.warmup_observation(("front",)), reload)
    assert runner.dtype == "fp32" and "rejected" in note and "checked" in note and len(reloads) == 1
    assert "max diff to fp32's actions" in note and "(limit -1)" in note


def test_fast_path_follows_the_cpu() -> None:
    from lepetpal_tui.policy.speed.cpu_caps import CpuCaps

    avx2 = CpuCaps("EPYC", "x86_64", frozenset({"avx2"}), "AVX2")
    bf16 = CpuCaps("EPYC", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), "AVX512")
    big = 450_000_000
    assert sv.fast_path("auto", "cpu", big, avx2)[0] == "int8"
    assert sv.fast_path("auto", "cpu", 1000, avx2)[0] is None
    assert sv.fast_path("fp32", "cpu", big, bf16)[0] is None
    assert sv.fast_path("auto", "cuda", big, avx2)[0] == "bf16"
    assert "slower than fp32" in sv.fast_path("bf16", "cpu", big, avx2)[1]
    assert "slower" not in sv.fast_path("bf16", "cpu", big, bf16)[1]


def test_sdpa_attention_matches_lerobot_eager(tiny_policy_dir: Path) -> None:
    vwe = _runner(tiny_policy_dir).policy.model.vlm_with_expert
    heads, kv_heads = vwe.num_attention_heads, vwe.num_key_value_heads
    dim = vwe.vlm.config.text_config.head_dim
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 7, heads, dim, generator=gen)
    k = torch.randn(1, 12, kv_heads, dim, generator=gen)
    v = torch.randn(1, 12, kv_heads, dim, generator=gen)
    mask = torch.rand(1, 7, 12, generator=gen) > 0.3
    mask[0, :, 0] = True
    mask[0, 2] = False  # a padding token's row: nothing to attend to
    want = vwe.eager_attention_forward(mask, 1, dim, q, k, v)
    got = policy_speed.sdpa_attention(vwe, mask, 1, dim, q, k, v)
    assert got.shape == want.shape == (1, 7, heads * dim)
    keep = torch.ones(7, dtype=torch.bool)
    keep[2] = False
    torch.testing.assert_close(got[0, keep], want[0, keep], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()


class _Attn(nn.Module):
    def __init__(self, dim: int, kv_in: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, 96), nn.Linear(kv_in, 32), nn.Linear(kv_in, 32)


def test_fused_qkv_matches_separate_int8_linears() -> None:
    torch.manual_seed(0)
    attn = _Attn(64, 64)
    separate = [Int8Linear(lin) for lin in (attn.q_proj, attn.k_proj, attn.v_proj)]
    assert int8_linear.fuse_projections(attn) == 1
    assert all(isinstance(m, int8_linear.FusedPart) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    with torch.inference_mode():
        for x in (torch.randn(1, 50, 64), torch.randn(1, 7, 64)):
            got = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
            for g, s in zip(got, separate, strict=True):
                torch.testing.assert_close(g, s(x), atol=1e-5, rtol=1e-5)
        # k alone on another tensor (not after q on the same one) is still right
        x = torch.randn(1, 5, 64)
        torch.testing.assert_close(attn.k_proj(x), separate[1](x), atol=1e-5, rtol=1e-5)


def test_fused_rows_are_quantized_exactly_as_their_concatenation() -> None:
    """Quantized part by part and joined in int8 (no fp32 copy of the fused weights): the same integers
    and scales as quantizing the fp32 concatenation, and the packed weights hold them."""
    torch.manual_seed(0)
    parts = [nn.Linear(96, 64), nn.Linear(96, 32), nn.Linear(96, 48)]
    parts[1].weight.data[3] = 0.0  # an all-zero row keeps its floor scale
    w = torch.cat([lin.weight.detach() for lin in parts])
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8).to(torch.float64)
    want = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.int64), 0, torch.qint8)
    got = int8_linear.quantized_rows([lin.weight for lin in parts])
    assert torch.equal(got.int_repr(), want.int_repr())
    assert torch.equal(got.q_per_channel_scales(), want.q_per_channel_scales())
    packed_w, packed_b = torch.ops.quantized.linear_unpack(int8_linear.pack_all([(parts, None)])[0])
    assert torch.equal(packed_w.int_repr(), want.int_repr())
    assert torch.equal(packed_b, torch.cat([lin.bias.detach() for lin in parts]))


def test_pack_all_keeps_job_order_and_each_jobs_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs for several engines, interleaved, on all threads: each result is its own job's weights,
    packed while its own engine was the setting (linear_dynamic runs whichever packed them), and the
    global setting is restored."""
    engines = [e for e in ("fbgemm", "onednn", "x86", "qnnpack") if e in torch.backends.quantized.supported_engines]
    torch.manual_seed(0)
    jobs: list[int8_linear.PackJob] = [([nn.Linear(32, 8 + i)], engines[i % len(engines)]) for i in range(9)]
    seen: dict[int, str] = {}
    real_pack = int8_linear._pack

    def spy(linears: list[nn.Linear]) -> object:
        seen[id(linears[0])] = torch.backends.quantized.engine
        return real_pack(linears)

    monkeypatch.setattr(int8_linear, "_pack", spy)
    before = torch.backends.quantized.engine
    packed = int8_linear.pack_all(jobs)
    assert torch.backends.quantized.engine == before
    assert seen == {id(linears[0]): engine for linears, engine in jobs}
    for (linears, _), p in zip(jobs, packed, strict=True):
        qw, _ = torch.ops.quantized.linear_unpack(p)
        assert torch.equal(qw.int_repr(), int8_linear.quantized_rows([linears[0].weight]).int_repr())


def test_cross_attention_kv_projection_is_memoised_only_for_equal_inputs() -> None:
    torch.manual_seed(0)
    attn = _Attn(64, 32)  # k/v read another input size (the prefix K/V): memoised, not fused
    int8_linear.fuse_projections(attn)
    assert isinstance(attn.k_proj, int8_linear.MemoInt8Linear) and type(attn.q_proj) is nn.Linear
    with torch.inference_mode():
        x = torch.randn(1, 9, 32)
        first = attn.k_proj(x)
        assert attn.k_proj(x.clone()) is first
        other = attn.k_proj(x + 1)
        assert other is not first and not torch.equal(other, first)


def test_memoised_kv_projections_are_packed_by_the_engine_named_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    packed_for: list[str | None] = []
    real_pack_all = int8_linear.pack_all

    def spy(jobs: list[int8_linear.PackJob]) -> list[object]:
        packed_for.extend(engine for _, engine in jobs)
        return real_pack_all([(linears, None) for linears, _ in jobs])

    def engine(name: str) -> str:
        asked.append(name)
        return f"engine-for-{name}"

    monkeypatch.setattr(int8_linear, "pack_all", spy)
    int8_linear.fuse_projections(_Attn(64, 32), engine=engine)
    assert asked == ["k_proj", "v_proj"] and packed_for == ["engine-for-k_proj", "engine-for-v_proj"]


@pytest.mark.parametrize(("flags", "granted", "expert_engine"), [
    ("avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16", True, "onednn"),
    ("avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16", False, None),  # the kernel refused AMX
    ("avx2 avx512f avx512_vnni avx512_bf16", True, None),  # VNNI without AMX: fbgemm for small rows
])
def test_int8_engine_puts_small_rows_on_onednn_only_where_amx_is_granted(
        monkeypatch: pytest.MonkeyPatch, flags: str, granted: bool, expert_engine: str | None) -> None:
    if "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no oneDNN quantized engine")
    from lepetpal_tui.policy.speed.cpu_caps import CpuCaps, parse_cpuinfo

    model, parsed = parse_cpuinfo(f"model name\t: Xeon\nflags\t\t: {flags}\n")
    monkeypatch.setattr(policy_speed, "cpu_caps", lambda: CpuCaps(model, "x86_64", parsed, "AVX512"))
    monkeypatch.setattr(int8_saturation, "sound", lambda engine: True)  # as on that Xeon, whatever runs the suite
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: granted, raising=False)
    monkeypatch.setattr(policy_speed, "onednn_vnni_only", lambda: False)
    policy_speed.amx_int8_usable.cache_clear()
    try:
        assert policy_speed.int8_engine("vlm.model.vision_model.encoder.layers.0.mlp.fc1") == "onednn"
        assert policy_speed.int8_engine("lm_expert.layers.3.mlp.gate_proj") == expert_engine
        assert policy_speed.int8_engine("vlm.model.text_model.layers.0.self_attn.q_proj") == expert_engine
    finally:
        policy_speed.amx_int8_usable.cache_clear()


@pytest.mark.parametrize(("default_saturates", "onednn_saturates", "expert_engine"), [
    (True, False, "onednn"),  # AVX-VNNI without AVX-512: only oneDNN has VNNI kernels there
    (True, True, None),  # AVX2 only: both sum pairs in int16; fbgemm for small rows
    (False, False, None),  # AVX-512 VNNI: both exact; fbgemm for small rows
])
def test_int8_engine_puts_every_layer_on_onednn_where_only_its_kernels_have_vnni(
        monkeypatch: pytest.MonkeyPatch, default_saturates: bool, onednn_saturates: bool,
        expert_engine: str | None) -> None:
    if "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no oneDNN quantized engine")
    monkeypatch.setattr(policy_speed, "amx_int8_usable", lambda: False)
    # An x86 CPU's engines, whatever runs the suite (on aarch64 onednn is unsound and the default qnnpack).
    monkeypatch.setattr(int8_saturation, "sound", lambda engine: True)
    monkeypatch.setattr(int8_saturation, "default_engine", lambda: "x86")
    monkeypatch.setattr(int8_saturation, "_probe",
                        lambda engine: onednn_saturates if engine == "onednn" else default_saturates)
    policy_speed.onednn_vnni_only.cache_clear()
    try:
        assert policy_speed.int8_engine("vlm.model.vision_model.encoder.layers.0.mlp.fc1") == "onednn"
        assert policy_speed.int8_engine("lm_expert.layers.3.mlp.gate_proj") == expert_engine
        assert ("VNNI" in policy_speed.int8_engine_reason()) is (expert_engine == "onednn")
        assert policy_speed.int8_activation_bits() == ("8-bit" if expert_engine else
                                                       "7-bit" if default_saturates else "8-bit")
    finally:
        policy_speed.onednn_vnni_only.cache_clear()


@pytest.mark.parametrize("halves", [False, True])
def test_lean_denoiser_matches_lerobot_denoise_step(tiny_policy_dir: Path, halves: bool) -> None:
    torch.set_num_threads(2)  # halves: the action tokens' rows on two threads
    ref = _runner(tiny_policy_dir)
    lean = _runner(tiny_policy_dir)
    assert lean_denoiser.use_lean_denoiser(lean.policy, halves=halves)
    for seed, task in ((0, "pick up the cube"), (5, "put it in the box")):
        obs = sv.warmup_observation(("front",), task=task)
        noise = ref.make_noise(seed)
        want, _ = ref.raw_chunk(obs, noise=noise)
        got, _ = lean.raw_chunk(obs, noise=noise)
        np.testing.assert_allclose(got, want, atol=1e-3)
    chunk = lean.policy.model.denoise_step._chunk
    assert len(chunk["halves"]) == (2 if halves else 1)
    if halves:  # the action tokens attend causally: the first half reads only its own keys, never waits
        assert chunk["needs"] == [[0], [0, 1]]
        first, second = (h["self_mask"].shape[-1] for h in chunk["halves"])
        assert second - first == chunk["halves"][1]["rows"][1] - chunk["halves"][1]["rows"][0]


def test_small_ops_run_on_one_thread_and_int8_linears_on_all(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    lin = Int8Linear(nn.Linear(16, 8))
    x = torch.randn(3, 16)
    want = lin(x)
    seen: list[int] = []
    real = torch.ops.quantized.linear_dynamic

    def probe(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(torch.ops.quantized, "linear_dynamic", probe)
    with int8_linear.small_ops_on_one_thread():
        assert torch.get_num_threads() == 1
        with int8_linear.small_ops_on_one_thread():  # nested: no change
            got = lin(x)
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and seen == [2]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    lin(x)  # outside: torch's own setting, untouched
    assert seen == [2, 2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("passive", [True, False])
def test_small_ops_split_only_with_passive_openmp_waiting(tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          passive: bool) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive" if passive else "")
    torch.set_num_threads(2)
    runner = _runner(tiny_policy_dir)
    obs = sv.warmup_observation(("front",))
    noise = runner.make_noise(4)
    ref, _ = runner.raw_chunk(obs, noise=noise)
    runner.to_int8()
    lean = runner.policy.model.denoise_step
    assert isinstance(lean, lean_denoiser.LeanDenoiser)
    want = int8_linear.small_ops_on_one_thread if passive else contextlib.nullcontext
    assert lean.small_ops is want and lean.halves is passive
    assert ("forward" in vars(runner.policy.model.vlm_with_expert)) is passive  # the prefix pass, wrapped
    threads = torch.get_num_threads()
    model = runner.policy.model
    embed_threads: list[int] = []
    embed = model.embed_suffix

    def probe(*args: object) -> object:
        embed_threads.append(torch.get_num_threads())
        return embed(*args)

    model.embed_suffix = probe
    got, _ = runner.raw_chunk(obs, noise=noise)
    assert torch.get_num_threads() == threads  # restored after the split
    # each flow step's action/time embedding: small ops on one thread only with passive waiting
    assert len(embed_threads) == runner.policy.config.num_steps
    assert set(embed_threads) == {1 if passive else threads}
    assert np.all(np.isfinite(got)) and np.max(np.abs(got - ref)) < sv.ACTION_TOLERANCE


@pytest.mark.parametrize("passive", [True, False])
def test_int8_expert_layers_run_as_torchscript_with_the_eager_steps_values(
        tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch, passive: bool) -> None:
    """The scripted layer step (GIL released) gives the eager step's actions to the bit, in row halves
    (passive waiting, the policy process) and whole; it is the one that runs wherever the parts are int8."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive" if passive else "")
    torch.set_num_threads(2)
    runner = _runner(tiny_policy_dir)
    runner.to_int8()
    obs = sv.warmup_observation(("front",), task="pick up the cube")
    noise = runner.make_noise(7)
    lean = runner.policy.model.denoise_step
    calls: list[str] = []
    real = scripted_expert.scripted()
    assert real is not None, kernel_probe.decisions()

    def counted(name: str, fn: object) -> object:
        def call(*args: object) -> object:
            calls.append(name)
            return fn(*args)  # type: ignore[operator]
        return call

    spy = scripted_expert.ScriptedExpert(*(counted(n, f) for n, f in zip(("in", "out", "cross"), real, strict=True)))
    monkeypatch.setattr(scripted_expert, "scripted", lambda: spy)
    scripted, _ = runner.raw_chunk(obs, noise=noise)
    layers = [p for p in lean._expert_layers() if p is not None]
    steps = runner.policy.config.num_steps * len(lean._chunk["halves"])
    # the prefix pass's text layers too, in halves, where it runs them (policy/speed/prefix_halves.py)
    prefix = runner.policy.model.vlm_with_expert.forward
    prefix_steps = 2 * len(prefix._layers()) if passive else 0
    assert isinstance(prefix, RowHalvesPrefix) is passive
    assert calls.count("cross") == steps * sum(p.cross for p in layers) > 0
    assert calls.count("in") == calls.count("out") == steps * sum(not p.cross for p in layers) + prefix_steps > 0
    monkeypatch.setattr(scripted_expert, "scripted", lambda: None)  # as where TorchScript fails
    eager, _ = runner.raw_chunk(obs, noise=noise)
    # no more scripted calls
    assert len(calls) == steps * len(layers) + steps * sum(not p.cross for p in layers) + 2 * prefix_steps
    np.testing.assert_array_equal(scripted, eager)


def test_expert_layers_stay_eager_unless_all_parts_are_int8_and_silu() -> None:
    lin = Int8Linear(nn.Linear(8, 8), activation_bits=8)
    assert decoder_layer.int8_parts((lin, lin, lin, lin), nn.SiLU()) == ((lin.packed,) * 4, lin.reduce_range)
    assert decoder_layer.int8_parts((lin, lin, lin, lin), nn.GELU()) is None
    assert decoder_layer.int8_parts((lin, nn.Linear(8, 8), lin, lin), nn.SiLU()) is None
    seven = Int8Linear(nn.Linear(8, 8), activation_bits=7)
    # One width per layer. qnnpack (the default on aarch64) takes 8 bits whatever is asked: one width there.
    two_widths = seven.reduce_range != lin.reduce_range
    assert two_widths is (seven.engine != "qnnpack")
    assert (decoder_layer.int8_parts((lin, seven, lin, lin), nn.SiLU()) is None) is two_widths


def test_torchscript_that_fails_to_compile_or_to_run_leaves_the_eager_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_script(fn: object) -> object:
        raise RuntimeError("TorchScript is gone")

    try:
        scripted_expert.scripted.cache_clear()
        assert scripted_expert.scripted() is not None  # this torch scripts them, and they run
        scripted_expert.scripted.cache_clear()
        monkeypatch.setattr(torch.jit, "script", no_script)
        assert scripted_expert.scripted() is None
        assert kernel_probe.decisions()["action expert layers"].startswith("eager (TorchScript failed: RuntimeError")
        monkeypatch.undo()
        scripted_expert.scripted.cache_clear()
        monkeypatch.setattr(scripted_expert, "_tiny_layer_runs", lambda fns: False)
        assert scripted_expert.scripted() is None
        assert "wrong shape or non-finite" in kernel_probe.decisions()["action expert layers"]
    finally:
        monkeypatch.undo()
        scripted_expert.scripted.cache_clear()
