"""Established CPU inference runtimes vs our hand-tuned torch path, on the real SmolVLA architecture.

Issue 12: ONNX Runtime (fp32; int8 via quantize_dynamic, per channel), OpenVINO (fp32; int8 weights via
NNCF where installed), torch.compile (inductor, CPU) against LeRobot's torch fp32 and the project's int8
path ("ours": policy/speed/apply.to_int8). Random weights, full size (bench/policy_latency.py builds it).

Parts (all variants of a part timed interleaved in one loop, A,B,C,A,B,C..., a short pause between
them so that one runtime's spinning workers do not eat the next one's time; medians and ratios to torch
fp32 of the same run):
  vision  SmolVLA's `embed_image` (SigLIP, 12 layers over 1024 patches, hidden 768, + the connector) on
          one 512x512 camera image made by LeRobot's own preprocessor and `prepare_images`.
  layers  proxy for the rest of a chunk: the linears of the real VLM text layers (16, hidden 960, the
          ~113-token prefix) and of the action expert (16, hidden 720, 50 action tokens), with their
          RMSNorms and SiLU-gated MLPs, attention left out (see `LinearStack`). Exporting the expert's
          denoise step with its KV cache into ONNX/OpenVINO was not attempted.
  chunk   a whole chunk (`predict_action_chunk` through LeRobot's processors): torch fp32, ours, and the
          fp32 VLM + expert under torch.compile (inductor).
  kernels one linear at a time (`part_kernels`): the chunk's largest linears, torch's int8 engines against
          ONNX Runtime's int8 matmul, on one thread and on torch's threads.

"ours" on a CPU without VNNI uses 7-bit activations (reduce_range=True: fbgemm/oneDNN's AVX2 int8 kernels
add int8 products in int16 pairs, which saturate with full 8-bit activations); full range is timed too,
for reference. Each variant's output is compared with torch fp32's: max abs difference relative to the
largest fp32 value (chunk: degrees). A runtime that is not installed is skipped and said so (that is
also how an integration would degrade: ImportError -> the torch path).

Findings on the 2-core AMD EPYC, AVX2 only (x86-avx2; 2026-12-01, machine shared with other test runs, load
2.5-7: ratios are medians of interleaved runs, see the JSON for every time): vision encoder torch fp32 1.00,
ours int8 0.57-0.64, ORT int8 u8s8 0.59-0.61 (same accuracy, 0.05-0.06 relative), ORT fp32 0.84, OpenVINO
fp32 1.01, OpenVINO int8 (NNCF static) 0.66, torch.compile fp32 0.69; layer linears ORT int8 0.40-0.49
vs ours 0.43-0.61; whole chunk ours 0.29, torch.compile fp32 0.53 after a 5-minute compile. Nothing beats
the torch int8 path by a margin that survives the noise; the JSON holds the figures.

On the 2-core Intel Xeon (x86-avx512-vnni-bf16, no AMX; 2026-12-02, 7 interleaved reps, vision only): torch
fp32 1.00, ours int8 0.49 (8-bit act.), ORT int8 s8 0.51, OpenVINO fp32 0.88, OpenVINO int8 weights 0.56,
OpenVINO int8 static (NNCF, activations calibrated on 4 images, attention matmuls int8 too) 0.37 with 48 s
of quantize + compile: 130 ms a chunk faster than ours, but its setup alone would double a first start
and its activation ranges come from calibration images, not from the camera; not taken.

On the 2-core Intel Xeon with AMX (x86-avx512-vnni-bf16-amx; 2026-12-04, 5 interleaved reps, vision only):
torch fp32 1.00, ours int8 0.24 (oneDNN's AMX int8, bf16 SDPA), OpenVINO bf16 (the CPU plugin's default
precision with AMX) 0.19 with 10 s of convert + compile and closer to fp32 (0.012 relative against 0.034),
OpenVINO int8 static 0.23, ORT int8 0.40 (MLAS AMX), torch.compile fp32 0.89. Tried in the app's setting
(the policy process's passive OpenMP, our int8 for the rest of the chunk, ov.convert_model of embed_image):
vision 181-185 ms against ours 188-196, whole chunk 522-553 ms against 524-546: the isolated gain does
not survive beside the rest of the chunk; not taken (it would add a dependency and 7 s to every start).

On the 2-core AMD EPYC (Zen 4, x86-avx512-vnni-bf16; 2026-12-07, two runs of 5 interleaved reps, the JSON
holds the second): vision torch fp32 1.00, ours int8 0.34-0.35, ORT int8 s8 0.40-0.41, OpenVINO bf16
0.41-0.43, OpenVINO int8 static 0.29-0.30 (37-39 s of quantize + compile, calibrated activations: not taken,
as on the Intel Xeon), torch.compile 0.99; layer proxies ours 0.26 / 0.30, ORT int8
0.21 / 0.27; whole chunk ours 0.30, torch.compile fp32 0.93 after 84 s of compiling. `kernels` (one linear at
a time, real weights, the app's rows) says where the proxies' gap comes from: on one thread (each row half)
ORT's DynamicQuantizeMatMul takes 0.90-0.99 of the app's engine's time per call (both near VNNI's peak);
on two threads without spinning 0.82-1.01 at the vision encoder's 1024 rows and 0.93-1.63 at the
prefix's and expert's 50-113 (its workers' wake-ups). So the proxies'
ORT lead is its graph (the norms and activations between the linears; the app runs the prefix and the
expert in row halves, where those are on one thread each), not a faster int8 kernel.
The same part with the kernels capped to AVX2 (`--without onnxruntime,openvino,nncf`: MLAS ignores the
caps) confirms the app's engine per layer stack with 7-bit activations: the vision encoder's linears on
oneDNN 0.46-0.50 of fp32 against x86's 0.51-0.56, the prefix's and expert's on x86 (fbgemm) 0.35-0.47
against oneDNN's 0.41-0.61 (one thread; two threads the same order).

Install the runtimes into the venv only (not project dependencies):
    .venv/bin/pip install onnxruntime onnx openvino nncf
and uninstall them (and what they pulled in: nncf downgrades networkx) when done: `make` does not, and
scripts/emulated-cpus builds its aarch64 sysroot from the venv's `pip freeze`.
Usage: .venv/bin/python bench/cpu_runtimes.py [--parts vision,layers,chunk,kernels] [--reps 5] [--without onnxruntime]
Writes bench/results/<vendor>-<cpu kind>/cpu_runtimes.json (kind from lepetpal_tui.policy.speed.cpu_caps, e.g. x86-avx2).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import results_path  # bench/ is not a package
from policy_latency import observations, our_runner

RUN = time.strftime("%Y-%m-%dT%H:%M:%S")  # rows from different runs: compare ratios within a run only
PAUSE_S = 0.05  # between variants: OpenMP / ORT workers stop spinning first


# ------------------------------------------------------------------------------------------------ CPU

def cpu_info() -> dict[str, Any]:
    """The CPU as bench/machine.py describes it (model, kind, ISA flags), in the keys this bench uses."""
    from lepetpal_tui.policy.speed.cpu_caps import RELEVANT_FLAGS, cpu_caps

    caps = cpu_caps()
    wanted = frozenset(RELEVANT_FLAGS) | {"avx", "f16c", "avx512bw"}  # and three that tell older x86 CPUs apart
    return {"model": caps.model, "machine": caps.arch, "flags": sorted(caps.flags & wanted),
            "kind": caps.kind, "vnni": caps.int8_vnni, "cpus": os.cpu_count()}


def ort_int8_kernel(cpu: dict[str, Any], weights: str) -> str:
    """Which MLAS QGEMM kernel ONNX Runtime picks for u8 activations x `weights` on this CPU (from MLAS's
    dispatch in platform.cpp, by the flags; ORT does not report it)."""
    flags = set(cpu["flags"])
    if cpu["machine"] not in ("x86_64", "AMD64"):
        return "MLAS NEON (dot product / i8mm where present)"
    if "amx_int8" in flags:
        return "MLAS AMX"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return f"MLAS u8{weights[0]}8 VNNI (int32 accumulation)"
    if weights == "s8":
        return "MLAS u8s8 AVX2/AVX512 (vpmaddubsw: int16 pair sums, can saturate)"
    return "MLAS u8u8 AVX2 (widened to int16, vpmaddwd: no saturation)"


# ------------------------------------------------------------------------------------- our int8 path

_REDUCE_RANGE = [True]
SKIP: list[str] = []  # --skip: variants whose name contains one of these are not built


def wanted(label: str) -> bool:
    return not any(part.lower() in label.lower() for part in SKIP)


def patch_reduce_range() -> None:
    """Our Int8Linear with a switchable reduce_range, to time 7-bit and full-range activations side by side
    (the app picks 7-bit on CPUs without VNNI, policy/speed/cpu_caps.py). `_REDUCE_RANGE[0]` is read on every call."""
    from lepetpal_tui.policy.speed import int8_linear

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype != torch.float32:
            x = x.to(torch.float32)
        wide = int8_linear._linear_threads
        if wide:
            torch.set_num_threads(wide)
        try:
            y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=_REDUCE_RANGE[0])
        finally:
            if wide:
                torch.set_num_threads(1)
        return y if dtype == torch.float32 else y.to(dtype)

    int8_linear.Int8Linear.forward = forward  # type: ignore[method-assign]


def convert_7bit_weights(runner: Any) -> float:
    """`runner.to_int8()` with 7-bit weights (|q| <= 63) and full 8-bit activations (a u8 x s8 pair sum,
    2 x 255 x 63, fits in int16): tried for CPUs without VNNI and rejected (whole chunks 2.8-3.2 degrees
    off fp32, see policy/speed/cpu_caps.py); kept here as a variant to time. Returns seconds."""
    from lepetpal_tui.policy.speed import int8_linear

    cls = int8_linear.Int8Linear
    original = cls.__init__

    def init(self: Any, linear: Any, engine: str | None = None, activation_bits: int | None = None,
             packed: Any = None) -> None:
        # The packed 8-bit weights `to_int8` made (one linear or a fused group) are replaced by 7-bit ones.
        original(self, linear, engine, activation_bits, packed=packed)
        linears = [linear] if isinstance(linear, torch.nn.Linear) else list(linear)
        w = torch.cat([lin.weight.detach().to(torch.float32) for lin in linears])
        scales = (w.abs().amax(dim=1) / 63.0).clamp_min(1e-8).to(torch.float64)
        qweight = torch.quantize_per_channel(w, scales, torch.zeros(w.shape[0], dtype=torch.int64), axis=0,
                                             dtype=torch.qint8)
        bias = None if linears[0].bias is None else torch.cat([lin.bias.detach().to(torch.float32)
                                                               for lin in linears])
        previous = torch.backends.quantized.engine
        if engine is not None:
            torch.backends.quantized.engine = engine
        try:
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        finally:
            torch.backends.quantized.engine = previous

    t = time.perf_counter()
    cls.__init__ = init  # type: ignore[method-assign]
    try:
        runner.to_int8()
    finally:
        cls.__init__ = original  # type: ignore[method-assign]
    return time.perf_counter() - t


def with_reduce_range(flag: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        _REDUCE_RANGE[0] = flag
        return fn()
    return run


# ------------------------------------------------------------------------------------------ variants

@dataclass
class Variant:
    name: str
    run: Callable[[], Any]  # one call; returns the output (a tensor, array or tuple of them)
    setup_s: float = 0.0  # export / quantize / compile (+ its first call)
    note: str = ""
    times: list[float] = field(default_factory=list)
    output: Any = None


def as_arrays(out: Any) -> list[np.ndarray]:
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in as_arrays(o)]
    if hasattr(out, "detach"):
        return [out.detach().float().numpy()]
    return [np.asarray(out, dtype=np.float32)]


def rel_diff(got: Any, want: Any) -> float:
    """max |got - want| / max |want| over all outputs."""
    g, w = as_arrays(got), as_arrays(want)
    return max(float(np.max(np.abs(a.reshape(b.shape) - b))) / max(float(np.max(np.abs(b))), 1e-12)
               for a, b in zip(g, w, strict=True))


def interleave(variants: list[Variant], reps: int, label: str) -> None:
    for v in variants:  # warm-up + the output to compare
        v.output = v.run()
    for i in range(reps):
        line = []
        for v in variants:
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            v.run()
            v.times.append(time.perf_counter() - t)
            line.append(f"{v.name} {v.times[-1] * 1e3:.0f}")
        print(f"  {label} rep {i + 1}: " + ", ".join(line) + f" ms (load {os.getloadavg()[0]:.2f})", flush=True)


def summarise(variants: list[Variant], compare: Callable[[Any, Any], float], unit: str) -> list[dict[str, Any]]:
    base = variants[0]
    base_med = statistics.median(base.times)
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        paired = statistics.median(t / b for t, b in zip(v.times, base.times, strict=True))
        rows.append({"variant": v.name, "run": RUN, "median_ms": med * 1e3, "ratio_to_fp32": med / base_med,
                     "median_paired_ratio": paired, "best_of_ratio": min(v.times) / min(base.times), "times_ms": [t * 1e3 for t in v.times],
                     f"max_diff_{unit}": compare(v.output, base.output), "setup_s": v.setup_s, "note": v.note})
    return rows


def print_table(title: str, rows: list[dict[str, Any]], unit: str) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<34} {'median ms':>10} {'ratio':>6} {'paired':>6} {'best':>6} {'max diff ' + unit:>12} {'setup s':>8}  note")
    for r in rows:
        print(f"  {r['variant']:<34} {r['median_ms']:>10.1f} {r['ratio_to_fp32']:>6.2f} {r['median_paired_ratio']:>6.2f} "
              f"{r['best_of_ratio']:>6.2f} {r[f'max_diff_{unit}']:>12.3g} {r['setup_s']:>8.1f}  {r['note']}")


# -------------------------------------------------------------------------------------- runtimes

def runtime_versions(without: set[str]) -> dict[str, str]:
    """Installed runtimes ("missing: ..." when an import fails: the graceful path is to skip them)."""
    out: dict[str, str] = {}
    for name in ("onnxruntime", "onnx", "openvino", "nncf"):
        if name in without:
            out[name] = "missing: disabled by --without"
            continue
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except Exception as exc:  # ImportError, or a broken install
            out[name] = f"missing: {type(exc).__name__}: {exc}"
    return out


def have(versions: dict[str, str], *names: str) -> bool:
    return all(not versions.get(n, "missing").startswith("missing") for n in names)


def _fixed_positions(self: Any, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor) -> torch.Tensor:
    """SmolVLMVisionEmbeddings.forward for an unpadded full-size image: its position ids are 0..N-1 (the
    bucketized fractional coordinates), which the traced graph would otherwise compute with a ScatterND
    that ONNX Runtime rejects (float/int64 mix)."""
    embeddings = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    return embeddings + self.position_embedding.weight[: embeddings.shape[1]]  # type: ignore[no-any-return]


@contextlib.contextmanager
def exportable_smolvlm() -> Iterator[None]:
    """transformers' vision-mask helper breaks under tracing (it takes the traced sequence length for a
    deprecated tensor argument); SmolVLA's images are never padded, so its all-true mask is `None`. The
    position ids are fixed (`_fixed_positions`)."""
    from unittest import mock

    import transformers.models.smolvlm.modeling_smolvlm as smolvlm

    with (mock.patch.object(smolvlm, "create_bidirectional_mask", lambda **_: None),
          mock.patch.object(smolvlm.SmolVLMVisionEmbeddings, "forward", _fixed_positions)):
        yield


def export_onnx(module: Any, args: tuple[Any, ...], path: Path, output_names: list[str]) -> float:
    """TorchScript-traced ONNX export (fixed shapes) of `module`, checked against its eager output first
    under the same patches; returns seconds."""
    t = time.perf_counter()
    with torch.no_grad():
        want = as_arrays(module(*args))
        with exportable_smolvlm():
            got = as_arrays(module(*args))
            if any(not np.array_equal(a, b) for a, b in zip(got, want, strict=True)):
                raise RuntimeError("the export patches change the output")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17,
                              input_names=[f"in{i}" for i in range(len(args))], output_names=output_names,
                              do_constant_folding=True)
    return time.perf_counter() - t


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(sess: Any, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    def run() -> Any:
        return sess.run(None, feeds)
    return run


def ort_variants(onnx_path: Path, feeds: dict[str, np.ndarray], threads: int, cpu: dict[str, Any],
                 export_s: float, tmp: Path) -> list[Variant]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out: list[Variant] = []
    t = time.perf_counter()
    sess = ort_session(onnx_path, threads)
    run = ort_runner(sess, feeds)
    run()
    out.append(Variant("ORT fp32", run, export_s + time.perf_counter() - t, "MLAS sgemm"))
    for label, weight, reduce_range in (("ORT int8 s8", QuantType.QInt8, False),
                                        ("ORT int8 s8 reduce_range", QuantType.QInt8, True),
                                        ("ORT int8 u8 weights", QuantType.QUInt8, False)):
        if not wanted(label):
            continue
        t = time.perf_counter()
        q = tmp / f"{onnx_path.stem}-{label.replace(' ', '_')}.onnx"
        quantize_dynamic(str(onnx_path), str(q), per_channel=True, reduce_range=reduce_range, weight_type=weight,
                         op_types_to_quantize=["MatMul", "Gemm"])
        sess = ort_session(q, threads)
        run = ort_runner(sess, feeds)
        run()
        kernel = ort_int8_kernel(cpu, "s8" if weight == QuantType.QInt8 else "u8")
        out.append(Variant(label, run, export_s + time.perf_counter() - t,
                           kernel + ("; 7-bit" if reduce_range else "")))
    return out


def ov_variants(onnx_path: Path, feeds: dict[str, np.ndarray], threads: int, export_s: float,
                versions: dict[str, str], calibration: list[dict[str, np.ndarray]] | None) -> list[Variant]:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    out: list[Variant] = []

    def compiled(model: Any, label: str, note: str, t0: float, precision: str = "f32") -> None:
        cm = core.compile_model(model, "CPU", {**config, "INFERENCE_PRECISION_HINT": precision})
        request = cm.create_infer_request()

        def run() -> Any:
            res = request.infer(feeds)
            return [np.array(res[o]) for o in cm.outputs]
        run()
        out.append(Variant(label, run, export_s + time.perf_counter() - t0, note))

    t = time.perf_counter()
    compiled(core.read_model(str(onnx_path)), "OpenVINO fp32", "CPU plugin, f32 precision hint", t)
    if "BF16" in {str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")} \
            and wanted("OpenVINO bf16"):
        # The CPU plugin's own default where the CPU has bf16 dot products (AMX, AVX512-BF16).
        t = time.perf_counter()
        compiled(core.read_model(str(onnx_path)), "OpenVINO bf16", "CPU plugin, bf16 precision hint", t, "bf16")
    if not have(versions, "nncf"):
        return out
    import nncf

    t = time.perf_counter()
    if wanted("OpenVINO int8 weights (NNCF)"):
        compiled(nncf.compress_weights(core.read_model(str(onnx_path))), "OpenVINO int8 weights (NNCF)",
                 "nncf.compress_weights INT8_ASYM: int8 weights, fp32 compute", t)
    if calibration and wanted("OpenVINO int8 static (NNCF)"):
        t = time.perf_counter()
        model = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(calibration),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        compiled(model, "OpenVINO int8 static (NNCF)",
                 f"nncf.quantize on {len(calibration)} images (activations static int8)", t)
    return out


def compiled_variant(fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> Variant:
    """torch.compile (inductor, freezing: weights folded/prepacked for CPU), first call included."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    t = time.perf_counter()
    compiled = torch.compile(fn)

    def run() -> Any:
        with torch.inference_mode():
            return compiled(*args)
    run()
    return Variant(label, run, time.perf_counter() - t, "inductor, freezing=True, fp32")


# -------------------------------------------------------------------------------------------- parts

class EmbedImage(nn.Module):
    """SmolVLA's image embedding (vision encoder + connector) of one policy, as a module for export."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.vlm_with_expert = policy.model.vlm_with_expert
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vlm_with_expert.embed_image(image)  # type: ignore[no-any-return,operator]


def part_vision(ref: Any, ours: Any, ours7: Any, obs: Any, args: argparse.Namespace, cpu: dict[str, Any],
                versions: dict[str, str], tmp: Path) -> list[Variant]:
    threads = torch.get_num_threads()
    batch = ref.pre(ref._batch(obs))
    images, _ = ref.policy.prepare_images(batch)
    image = images[0].contiguous()
    print(f"vision input from LeRobot's preprocessor + prepare_images: {tuple(image.shape)}, "
          f"range [{float(image.min()):.2f}, {float(image.max()):.2f}]", flush=True)
    fp32 = EmbedImage(ref.policy)
    mine = EmbedImage(ours.policy)

    def call(module: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return module(image)
        return run

    variants = [Variant("torch fp32 (LeRobot)", call(fp32), 0.0, "eager, as LeRobot runs it"),
                Variant("ours int8, 7-bit act." if not cpu["vnni"] else "ours int8 (7-bit act.)",
                        with_reduce_range(True, call(mine)), ours.convert_s,
                        "policy_speed.to_int8 + reduce_range=True"),
                Variant("ours int8, full-range act.", with_reduce_range(False, call(mine)), ours.convert_s,
                        "8-bit weights and activations (saturates without VNNI)")]
    if ours7 is not None:
        variants.append(Variant("ours int8, 7-bit weights", with_reduce_range(False, call(EmbedImage(ours7.policy))),
                                ours7.convert_s, "main since b6ec2e9: |q| <= 63, full 8-bit activations"))
    feeds = {"in0": image.numpy()}
    if have(versions, "onnx") and (have(versions, "onnxruntime") or have(versions, "openvino")):
        onnx_path = tmp / "embed_image.onnx"
        export_s = export_onnx(fp32, (image,), onnx_path, ["image_embeds"])
        print(f"exported embed_image to ONNX in {export_s:.1f} s ({onnx_path.stat().st_size / 1e6:.0f} MB)", flush=True)
        if have(versions, "onnxruntime"):
            variants += ort_variants(onnx_path, feeds, threads, cpu, export_s, tmp)
        if have(versions, "openvino"):
            calib = [{"in0": ref.policy.prepare_images(ref.pre(ref._batch(o)))[0][0].numpy()}
                     for o in observations(4)]
            variants += ov_variants(onnx_path, feeds, threads, export_s, versions, calib)
    if not args.no_compile:
        variants.append(compiled_variant(EmbedImage(copy.deepcopy(ref.policy)), (image,), "torch.compile fp32"))
    return variants


class LinearStack(nn.Module):
    """Proxy for a layer stack's linears (the real layers' weights): per layer RMSNorm -> q|k|v -> o_proj
    (of q: attention left out) -> residual -> RMSNorm -> gate/up -> SiLU * up -> down -> residual.
    k/v are computed where they take the layer's own input (self-attention layers) and returned, so that
    no runtime drops them; the expert's cross-attention k/v (over the cached prefix, memoised by ours
    within a chunk) are left out."""

    def __init__(self, layers: Any) -> None:
        super().__init__()
        self.layers = layers
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kvs = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            h = layer.input_layernorm(x)
            q = attn.q_proj(h)
            if attn.k_proj.in_features == x.shape[-1]:
                kvs.append(attn.k_proj(h) + attn.v_proj(h))
            x = x + attn.o_proj(q)
            h = layer.post_attention_layernorm(x)
            x = x + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        return (x, torch.stack(kvs))


def part_layers(ref: Any, ours: Any, ours7: Any, args: argparse.Namespace, cpu: dict[str, Any], versions: dict[str, str],
                tmp: Path) -> dict[str, list[Variant]]:
    threads = torch.get_num_threads()
    out: dict[str, list[Variant]] = {}
    prefix_len = 64 + int(ref.policy.config.tokenizer_max_length) + 1  # image tokens + text + state
    for label, tokens, getter in (
        ("VLM prefix linears", prefix_len, lambda p: p.model.vlm_with_expert.get_vlm_model().text_model.layers),
        ("expert step linears", int(ref.policy.config.chunk_size), lambda p: p.model.vlm_with_expert.lm_expert.layers),
    ):
        layers32 = getter(ref.policy)
        hidden = layers32[0].self_attn.q_proj.in_features
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(1, tokens, hidden, generator=gen)
        fp32, mine = LinearStack(layers32), LinearStack(getter(ours.policy))
        print(f"{label}: {len(layers32)} layers, hidden {hidden}, {tokens} tokens", flush=True)

        def call(module: Any, x: torch.Tensor = x) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return module(x)
            return run

        variants = [Variant("torch fp32", call(fp32)),
                    Variant("ours int8, 7-bit act.", with_reduce_range(True, call(mine)), 0.0,
                            "fbgemm, fused q|k|v and gate|up, reduce_range=True"),
                    Variant("ours int8, full-range act.", with_reduce_range(False, call(mine)), 0.0,
                            "reduce_range=False")]
        if ours7 is not None:
            variants.append(Variant("ours int8, 7-bit weights", with_reduce_range(False, call(LinearStack(
                getter(ours7.policy)))), 0.0, "main since b6ec2e9: |q| <= 63, full 8-bit activations"))
        feeds = {"in0": x.numpy()}
        if have(versions, "onnx") and (have(versions, "onnxruntime") or have(versions, "openvino")):
            path = tmp / f"{label.split()[0].lower()}_linears.onnx"
            export_s = export_onnx(fp32, (x,), path, ["x", "kv"])
            if have(versions, "onnxruntime"):
                variants += ort_variants(path, feeds, threads, cpu, export_s, tmp)
            if have(versions, "openvino"):
                calib = [{"in0": torch.randn(1, tokens, hidden, generator=gen).numpy()} for _ in range(4)]
                variants += ov_variants(path, feeds, threads, export_s, versions, calib)
        if not args.no_compile:
            variants.append(compiled_variant(LinearStack(copy.deepcopy(layers32)), (x,), "torch.compile fp32"))
        out[label] = variants
    return out


def part_chunk(ref: Any, ours: Any, obs: Any, args: argparse.Namespace) -> list[Variant]:
    """Whole chunks through LeRobot's processors: fp32, ours, fp32 with the VLM + expert compiled."""
    from lepetpal_tui.policy.smolvla import SmolVLARunner

    noise = ref.make_noise(args.seed)
    comp = SmolVLARunner(source="bench", policy=copy.deepcopy(ref.policy), pre=ref.pre, post=ref.post,
                         device="cpu", camera_map={}, chunk_length=ref.chunk_length)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    vwe = comp.policy.model.vlm_with_expert
    t = time.perf_counter()
    vwe.forward = torch.compile(vwe.forward)
    vwe.embed_image = torch.compile(vwe.embed_image)

    def chunk(runner: Any) -> Callable[[], Any]:
        def run() -> Any:
            return runner.raw_chunk(obs, noise=noise)[0]
        return run

    variants = [Variant("torch fp32 (LeRobot)", chunk(ref), 0.0, f"{ref.policy.config.num_steps} flow steps"),
                Variant("ours int8, 7-bit act.", with_reduce_range(True, chunk(ours)), ours.convert_s,
                        f"{ours.policy.config.num_steps} flow steps")]
    run_comp = chunk(comp)
    try:
        run_comp()  # compiles the prefix pass, the expert step (with the KV cache) and embed_image
    except Exception as exc:  # a bench: say what failed, time the rest
        print(f"torch.compile of the chunk failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return variants
    variants.append(Variant("torch.compile fp32 (VLM+expert)", run_comp, time.perf_counter() - t,
                            "vlm_with_expert.forward + embed_image compiled, inductor freezing"))
    return variants


def linear_shapes(policy: Any) -> list[tuple[str, int, list[nn.Linear]]]:
    """The chunk's largest int8 linears as the app runs them: (label, rows, the linears fused into one)."""
    vwe = policy.model.vlm_with_expert
    vision_model = vwe.get_vlm_model().vision_model
    vision = vision_model.encoder.layers[0]
    text = vwe.get_vlm_model().text_model.layers[0]
    expert = vwe.lm_expert.layers[0]
    patches = int(vision_model.embeddings.num_patches)
    prefix = 64 + int(policy.config.tokenizer_max_length) + 1  # image tokens + text + state
    actions = int(policy.config.chunk_size)
    out = []
    for stack, rows, attn, mlp in (("vision", patches, vision.self_attn, vision.mlp),
                                   ("prefix", prefix, text.self_attn, text.mlp),
                                   ("expert", actions, expert.self_attn, expert.mlp)):
        if stack == "vision":
            mlp_in, mlp_out = [mlp.fc1], [mlp.fc2]
        else:
            mlp_in, mlp_out = [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]
        for name, linears in (("q|k|v", [attn.q_proj, attn.k_proj, attn.v_proj]),
                              ("fc1" if stack == "vision" else "gate|up", mlp_in),
                              ("fc2" if stack == "vision" else "down", mlp_out)):
            out.append((f"{stack} {name}", rows, linears))
    return out


def ort_int8_linear(linears: list[nn.Linear], threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """One ONNX Runtime DynamicQuantizeMatMul over the linears' weights (int8 per output channel, as ours):
    what `quantize_dynamic` makes of a MatMul, without a graph around it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = torch.cat([lin.weight.detach().float() for lin in linears])
    bias = torch.cat([lin.bias.detach().float() if lin.bias is not None else torch.zeros(lin.out_features)
                      for lin in linears])
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    n, k = w.shape
    inits = [helper.make_tensor("B", TensorProto.INT8, [k, n], q.t().contiguous().numpy().tobytes(), raw=True),
             helper.make_tensor("scale", TensorProto.FLOAT, [n], scale.tolist()),
             helper.make_tensor("zero", TensorProto.INT8, [n], [0] * n),
             helper.make_tensor("bias", TensorProto.FLOAT, [n], bias.tolist())]
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale", "zero", "bias"], ["Y"], domain="com.microsoft")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into the next variant
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a: sess.run(None, {"A": a})[0]


def part_kernels(ref: Any, args: argparse.Namespace, cpu: dict[str, Any], versions: dict[str, str]
                 ) -> dict[str, list[Variant]]:
    """One linear at a time: is a runtime's int8 GEMM faster than torch's, or only its graph around it?

    The chunk's largest linears (real weights), each at the rows one row half runs on one thread, and
    whole on torch's threads: torch fp32, torch's dynamic int8 linear on each quantized engine torch has
    (the app's activation bits for that engine), ONNX Runtime's DynamicQuantizeMatMul.
    """
    from lepetpal_tui.policy.speed import int8_saturation
    from lepetpal_tui.policy.speed.apply import int8_engine
    from lepetpal_tui.policy.speed.int8_linear import Int8Linear

    # The engines the app chooses between on this CPU: its default (x86, or qnnpack on ARM) and oneDNN
    # where oneDNN's kernels are sound here.
    engines = list(dict.fromkeys([int8_saturation.engine_name(None)] + [
        e for e in ("onednn",) if e in torch.backends.quantized.supported_engines and int8_saturation.sound(e)]))
    threads = torch.get_num_threads()
    out: dict[str, list[Variant]] = {}
    gen = torch.Generator().manual_seed(args.seed)
    for label, rows, linears in linear_shapes(ref.policy):
        k = linears[0].in_features
        n = sum(lin.out_features for lin in linears)
        mods = {e: Int8Linear(linears, engine=e) for e in engines}
        for t, r in ((1, (rows + 1) // 2), (threads, rows)):
            if t == 1 and threads == 1:
                continue
            x = torch.randn(r, k, generator=gen)
            # Tens of ms a run on any CPU: a worker thread's wake-up after the pause between variants
            # (up to ~10 ms on a VM) stays a small part of it.
            calls = max(10, int(4e9 / (2 * r * k * n)))
            w = torch.cat([lin.weight.detach() for lin in linears])
            b = torch.cat([lin.bias.detach() for lin in linears]) if linears[0].bias is not None else None

            def repeat(fn: Callable[[], Any], t: int = t, calls: int = calls) -> Callable[[], Any]:
                def run() -> Any:
                    torch.set_num_threads(t)
                    try:
                        with torch.inference_mode():
                            for _ in range(calls):
                                y = fn()
                        return y
                    finally:
                        torch.set_num_threads(threads)
                return run

            variants = [Variant("torch fp32", repeat(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b)),
                                note=f"{calls} calls a run")]
            app = int8_saturation.engine_name(int8_engine("vision_model.x" if label.startswith("vision") else "x"))
            for e, mod in mods.items():
                variants.append(Variant(f"torch int8 {e}", repeat(
                    lambda x=x, mod=mod: torch.ops.quantized.linear_dynamic(x, mod.packed, reduce_range=mod.reduce_range)),
                    note=f"{mod.activation_bits}-bit activations" + ("; the app's" if e == app else "")))
            if have(versions, "onnxruntime", "onnx"):
                ort_linear = ort_int8_linear(linears, t)
                a = x.numpy()
                variants.append(Variant("ORT int8 s8", repeat(lambda a=a, f=ort_linear: f(a)),
                                        note=f"DynamicQuantizeMatMul, {ort_int8_kernel(cpu, 's8')}"))
            out[f"linear {label} {r}x{k}x{n}, {t} thread{'s' if t > 1 else ''}"] = variants
    return out


# --------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="vision,layers", help="comma-separated: vision, layers, chunk, kernels")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per variant (after one warm-up)")
    ap.add_argument("--chunk-reps", type=int, default=3)
    ap.add_argument("--without", default="", help="runtimes to treat as not installed (onnxruntime,openvino,nncf)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--no-7bit-weights", action="store_true", help="skip ours with 7-bit weights")
    ap.add_argument("--skip", default="", help="comma-separated parts of variant names not to build")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    SKIP.extend(w for w in args.skip.split(",") if w)
    parts = set(args.parts.split(","))
    without = {w for w in args.without.split(",") if w}
    for name in without:
        sys.modules[name] = None  # type: ignore[assignment]  # import now raises ImportError

    from lepetpal_tui.settings import ModelSettings

    cpu = cpu_info()
    versions = runtime_versions(without)
    print(f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['cpus']} CPUs), kind {cpu['kind']}; ISA flags: "
          f"{' '.join(cpu['flags'])}; VNNI: {cpu['vnni']}", flush=True)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, quantized engines "
          f"{torch.backends.quantized.supported_engines}); " + ", ".join(f"{k} {v}" for k, v in versions.items()),
          flush=True)
    load_start = os.getloadavg()
    patch_reduce_range()
    t = time.perf_counter()
    ref, ours, obs, _ = our_runner(argparse.Namespace(seed=args.seed))
    print(f"built SmolVLA in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    ours.to_int8()
    ours.convert_s = time.perf_counter() - t
    # As the app: [model] flow_steps, where 0 (the default) means the checkpoint's own.
    ours.policy.config.num_steps = ModelSettings().flow_steps or int(ours.policy.config.num_steps)
    ours7 = None
    if not args.no_7bit_weights and parts & {"vision", "layers"}:
        from lepetpal_tui.policy.smolvla import SmolVLARunner

        ours7 = SmolVLARunner(source="bench", policy=copy.deepcopy(ref.policy), pre=ref.pre, post=ref.post,
                              device="cpu", camera_map={}, chunk_length=ref.chunk_length)
        ours7.convert_s = convert_7bit_weights(ours7)

    result: dict[str, Any] = {"cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                              "runtimes": versions, "reps": args.reps, "parts": {}}
    with tempfile.TemporaryDirectory(prefix="cpu-runtimes-") as tmpdir:
        tmp = Path(tmpdir)
        if "vision" in parts:
            variants = part_vision(ref, ours, ours7, obs, args, cpu, versions, tmp)
            interleave(variants, args.reps, "vision")
            rows = summarise(variants, rel_diff, "rel")
            print_table("vision encoder + connector (embed_image, 1 image 512x512 -> 64 x 960)", rows, "rel")
            result["parts"]["vision"] = rows
            save(result, load_start)
        if "layers" in parts:
            for label, variants in part_layers(ref, ours, ours7, args, cpu, versions, tmp).items():
                interleave(variants, args.reps, label)
                rows = summarise(variants, rel_diff, "rel")
                print_table(f"{label} (proxy: attention left out)", rows, "rel")
                result["parts"][label] = rows
                save(result, load_start)
        if "chunk" in parts:
            variants = part_chunk(ref, ours, obs, args)
            interleave(variants, args.chunk_reps, "chunk")

            def degrees(got: Any, want: Any) -> float:
                return float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
            rows = summarise(variants, degrees, "deg")
            print_table("whole chunk (predict_action_chunk through LeRobot's processors)", rows, "deg")
            result["parts"]["chunk"] = rows
            save(result, load_start)
        if "kernels" in parts:
            for label, variants in part_kernels(ref, args, cpu, versions).items():
                interleave(variants, args.reps, label)
                rows = summarise(variants, rel_diff, "rel")
                print_table(f"{label} (ms per run)", rows, "rel")
                result["parts"][label] = rows
            save(result, load_start)
    return 0


def save(result: dict[str, Any], load_start: tuple[float, float, float]) -> None:
    """Write the parts measured so far (after each part: a later part that fails keeps the earlier ones)."""
    load_end = os.getloadavg()
    print(f"\nload average (1 min): start {load_start[0]:.2f}, end {load_end[0]:.2f} on {os.cpu_count()} CPUs "
          f"(shared machine: compare ratios, not absolute times)")
    result = {**result, "load_average_1min": {"start": load_start[0], "end": load_end[0]},
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = results_path("cpu_runtimes")
    if out.exists():  # keep parts measured by an earlier run with other --parts
        try:
            old = json.loads(out.read_text())
            merged = old.get("parts", {})
            for part, rows in result["parts"].items():  # a rerun replaces its variants, keeps the others
                new = {r["variant"] for r in rows}
                kept = [{"run": old.get("timestamp", "?"), **r} for r in merged.get(part, []) if r["variant"] not in new]
                merged[part] = rows + kept
            result["parts"] = merged
        except (OSError, ValueError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
