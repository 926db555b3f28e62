"""int8 linears for SmolVLA on a CPU: weights quantized per output channel, activations per call.

Measured with the real SmolVLA shapes: an int8 linear (fbgemm, weights quantized per output channel,
activations per call) runs at 500-700 GFLOP/s on the AVX-512 VNNI EPYC (fp32 120-190, bf16 200-400) and
at ~250 on the AVX2-only EPYC (fp32 130). Activations use 8 bits where the kernel accumulates in int32
(VNNI) and 7 bits elsewhere, where int16 pair sums would saturate (probed per engine: policy/speed/
int8_saturation.py). Also: q/k/v and
gate/up fused into one int8 linear each, and the cross-attention K/V projections memoised within a chunk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from lepetpal_tui.policy.speed import int8_saturation

# Modules never quantized: the VLM's lm_head is never called by SmolVLA (quantizing it only costs time).
SKIP_NAMES = ("lm_head",)


# The torch threads int8 linears use inside `small_ops_on_one_thread` (0: outside it, leave torch alone).
_linear_threads = 0


def openmp_waits_passively() -> bool:
    """Whether OpenMP's workers sleep between ops (OMP_WAIT_POLICY=PASSIVE, as in the policy process).

    Then every multi-threaded op pays a wake-up (~100 us on this VM), and ops are best kept on one
    thread unless they are large. With spinning workers (the default) it is the other way round: a
    single-threaded op competes with the spinners for the cores (measured: a chunk 0.79 s with all ops
    multi-threaded and spinning, 0.92 s splitting; 1.03 s not splitting and passive, 0.87 s splitting).
    """
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


@contextlib.contextmanager
def small_ops_on_one_thread() -> Iterator[None]:
    """Run the block's ops on one torch thread, except the int8 linears, which keep torch's threads.

    Every multi-threaded op wakes the OpenMP workers, which sleep between ops in the policy process
    (passive waiting, so that inference never spins on the cores the control loop needs): tens of
    microseconds each. The text prefix (~70 tokens) and the action expert (50, when it runs whole, not
    in row halves) run ~400 small ops per layer stack on a few thousand values, where those wake-ups
    cost more than the ops themselves; only their projections gain from more threads.
    """
    global _linear_threads
    threads = torch.get_num_threads()
    if threads == 1 or _linear_threads:  # nothing to split, or already inside
        yield
        return
    _linear_threads = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _linear_threads = 0


def linear_threads_raised() -> bool:
    """Whether this is inside `small_ops_on_one_thread` (int8 linears raise torch's threads there)."""
    return _linear_threads != 0


def int8_supported() -> bool:
    """Dynamic int8 linears need a quantized CPU engine whose kernel is sound here (x86 on x86-64, qnnpack on
    aarch64: policy/speed/int8_saturation.py checks it once)."""
    return int8_saturation.sound(int8_saturation.default_engine())


def quantized_rows(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The rows of `weights` (one matrix, or several to be fused into one linear) as one symmetric
    per-output-channel qint8 tensor.

    Each row has its own scale, so quantizing part by part and joining the int8 rows gives exactly the
    values of quantizing the fp32 concatenation, without a fp32 copy of the fused weights (1.4 s of the
    conversion on the 2-core Intel Xeon); max |w| per row is a reduction, not a |w| copy of the weights.
    """
    rows: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []
    for weight in weights:
        w = weight.detach()
        if w.dtype != torch.float32:
            w = w.to(torch.float32)
        s = (torch.linalg.vector_norm(w, ord=float("inf"), dim=1) / 127.0).clamp_min(1e-8).to(torch.float64)
        q = torch.quantize_per_channel(w, s, torch.zeros(w.shape[0], dtype=torch.int64), axis=0, dtype=torch.qint8)
        if len(weights) == 1:
            return q
        rows.append(q.int_repr())
        scales.append(s)
    scale = torch.cat(scales)
    return torch._make_per_channel_quantized_tensor(torch.cat(rows), scale,
                                                    torch.zeros(scale.shape[0], dtype=torch.int64), 0)


PackJob = tuple[Sequence[nn.Linear], str | None]  # the linears whose rows one int8 linear holds; its engine


def _pack(linears: Sequence[nn.Linear]) -> Any:
    biases = [lin.bias for lin in linears]
    bias = None if biases[0] is None else torch.cat([b.detach().to(torch.float32) for b in biases if b is not None])
    packed = torch.ops.quantized.linear_prepack(quantized_rows([lin.weight for lin in linears]), bias)
    settle_first_call(packed, linears[0].in_features)
    return packed


# The rows of the first call `settle_first_call` makes: a shape the policy never runs (its calls have tens
# to hundreds of rows), so no later call matches oneDNN's cached primitive.
SETTLING_ROWS = 1


def settle_first_call(packed: Any, in_features: int) -> None:
    """Make the packed weights' first call now, on one row, so that two threads may call them at once.

    torch's oneDNN dynamic linear (`PackedLinearWeightsOnednn::apply_dynamic_impl`) caches one primitive,
    set up by the first call and used by every later call with that call's rows and thread count. That
    cached path is not safe for two threads at once, which is what the row halves do (the vision
    encoder's linears are oneDNN's everywhere, the expert's too with AMX or AVX-VNNI): measured on the AMD EPYC,
    two threads calling fresh weights gave a wrong result (relative error 1.1) about once in 10^4 calls,
    and the tiny policy's first chunk differed from its later ones about once in 40. Calls that do not
    match the key take the uncached path, which builds its own state per call: there the same test gave
    no wrong result and bit-identical values. It costs ~25 us a call: nothing at the vision encoder's 512
    rows (its four linears, one thread: 19.5 against 19.6 ms), 12-13 % at the expert's 25 rows (four
    linears 1.02-1.09 against 0.90-0.93 ms), where oneDNN runs the expert (AMX, AVX-VNNI). There the
    cached path raced in almost every chunk (a fresh tiny policy's chunks differed in 180 runs of 200).
    fbgemm keeps no such cache; for it this is one cheap call.
    """
    with torch.inference_mode():
        torch.ops.quantized.linear_dynamic(torch.zeros(SETTLING_ROWS, in_features), packed)


def pack_all(jobs: Sequence[PackJob]) -> list[Any]:
    """Quantize and pack each job's weights (torch's packed linear parameters), in job order.

    The jobs run on as many threads as torch uses: quantize_per_channel and linear_prepack are
    single-threaded and release the GIL. The quantized engine is one process-wide setting that
    linear_prepack reads, so jobs run grouped by engine, with the setting fixed for the group.
    """
    packed: list[Any] = [None] * len(jobs)
    by_engine: dict[str | None, list[int]] = {}
    for i, (_, engine) in enumerate(jobs):
        by_engine.setdefault(engine, []).append(i)
    workers = max(1, torch.get_num_threads())
    previous = torch.backends.quantized.engine
    # Resolved and probed now, not while the engine setting is switched for a group below.
    names = {engine: int8_saturation.engine_name(engine) for engine in by_engine}
    for name in names.values():
        int8_saturation.saturates(name)
    try:
        for engine, indices in by_engine.items():
            torch.backends.quantized.engine = names[engine]
            if workers == 1 or len(indices) == 1:
                results = [_pack(jobs[i][0]) for i in indices]
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="int8-pack") as pool:
                    results = list(pool.map(lambda i: _pack(jobs[i][0]), indices))
            for i, result in zip(indices, results, strict=True):
                packed[i] = result
    finally:
        torch.backends.quantized.engine = previous
    return packed


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights (symmetric, per output channel) and per-call int8 activations.

    `linear` may be several linears with the same input, fused into one (their outputs side by side).
    `packed`: the weights already packed by `pack_all` (the linears' rows, same engine). LeRobot reads
    `layer.<proj>.weight.dtype` to cast its inputs, so `weight` is kept as an empty fp32 buffer that only
    carries the dtype; the real weights live in the packed parameters.
    """

    weight: torch.Tensor

    def __init__(self, linear: nn.Linear | Sequence[nn.Linear], engine: str | None = None,
                 activation_bits: int | None = None, packed: Any = None) -> None:
        super().__init__()
        # The packed weights carry their engine (linear_dynamic runs whichever packed them), and so the
        # kernel whose accumulation decides how many activation bits are exact.
        engine = int8_saturation.engine_name(engine)
        self.engine = engine
        bits = int8_saturation.activation_bits(engine) if activation_bits is None else activation_bits
        if bits not in (7, 8):
            raise ValueError(f"int8 activations use 7 or 8 bits, not {bits}")
        self.activation_bits = int8_saturation.bits_run(engine, bits)  # what the kernel computes (qnnpack: 8)
        # reduce_range: 7-bit activations (0..127), so a u8 x s8 pair sum fits in int16 (no saturation).
        self._reduce_range = self.activation_bits == 7
        linears = [linear] if isinstance(linear, nn.Linear) else list(linear)
        self._packed = pack_all([(linears, engine)])[0] if packed is None else packed
        self.in_features = linears[0].in_features
        self.out_features = sum(lin.out_features for lin in linears)
        self.register_buffer("weight", torch.empty(0, dtype=torch.float32), persistent=False)

    @property
    def packed(self) -> Any:
        """torch's packed int8 weights (what quantized::linear_dynamic takes)."""
        return self._packed

    @property
    def reduce_range(self) -> bool:
        """7-bit activations (quantized::linear_dynamic's reduce_range)."""
        return self._reduce_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype != torch.float32:
            x = x.to(torch.float32)
        wide = _linear_threads
        if wide:
            torch.set_num_threads(wide)  # ~0.3 us
        try:
            y: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=self._reduce_range)
        finally:
            if wide:
                torch.set_num_threads(1)
        return y if dtype == torch.float32 else y.to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel "
                f"({self.engine}), {self.activation_bits}-bit activations")


def quantize_linears(module: nn.Module, keep: Callable[[str], bool] = lambda name: False,
                     engine: Callable[[str], str | None] = lambda name: None) -> int:
    """Replace every nn.Linear under `module` (except SKIP_NAMES and names `keep` accepts) in place;
    `engine(name)` may name the quantized engine that packs that layer's weights.

    Returns how many were replaced. The module's other parameters are left as they are.
    """
    targets = [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear)
        and not any(part in SKIP_NAMES for part in name.split("."))
        and not keep(name)
    ]
    engines = [engine(name) for name, _ in targets]
    packed = pack_all([([child], e) for (_, child), e in zip(targets, engines, strict=True)])
    for (name, child), e, p in zip(targets, engines, packed, strict=True):
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Int8Linear(child, e, packed=p))
    return len(targets)


class _FusedInt8:
    """One int8 linear over several projections' concatenated weights (q/k/v, or an MLP's gate/up).

    Per-channel weight scales make the fused weights the same as the separate ones, and the activation
    scale is per call over the same input, so the result matches the separate linears; one call instead
    of three pays the quantize/dequantize overhead once (most of the cost for the expert's 50 tokens).
    """

    def __init__(self, linears: list[nn.Linear], engine: str | None = None, packed: Any = None) -> None:
        self.linear = Int8Linear(linears, engine, packed=packed)
        self.bounds: list[tuple[int, int]] = []
        start = 0
        for lin in linears:
            self.bounds.append((start, start + lin.out_features))
            start += lin.out_features
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # The callers (LeRobot, transformers) call q, k, v in turn on the very same tensor: the first
        # call computes all of them, the others take their slice.
        if self._input is not x or self._output is None:
            self._input, self._output = x, self.linear(x)
        lo, hi = self.bounds[index]
        out = self._output[..., lo:hi]
        if index == len(self.bounds) - 1:
            self._input = self._output = None
        return out


class FusedPart(nn.Module):
    """One projection of a `_FusedInt8` group, standing in for its nn.Linear."""

    weight: torch.Tensor

    def __init__(self, group: _FusedInt8, index: int, linear: nn.Linear) -> None:
        super().__init__()
        self.group = group
        self.index = index
        self.fused = group.linear if index == 0 else None  # registered once, for repr and state
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("weight", torch.empty(0, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.part(self.index, x)


class MemoInt8Linear(Int8Linear):
    """Int8Linear that returns its previous output for an equal input.

    The expert's cross-attention layers project the cached prefix K/V again on every flow step; the
    prefix does not change within a chunk, so the 2nd..10th projections are the same (checked exactly).
    """

    def __init__(self, linear: nn.Linear, engine: str | None = None, packed: Any = None) -> None:
        super().__init__(linear, engine, packed=packed)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self._last
        if last is not None and last[0].shape == x.shape and last[0].dtype == x.dtype and torch.equal(last[0], x):
            return last[1]
        y = super().forward(x)
        self._last = (x.clone(), y)
        return y


def _child(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def fuse_projections(module: nn.Module, engine: Callable[[str], str | None] = lambda name: None) -> int:
    """Fuse q/k/v (same input size) and MLP gate/up into single int8 linears; memoise cross-attention
    K/V projections (k/v input size differs from q's). Returns the number of groups changed."""
    memos: list[tuple[nn.Module, str, nn.Linear, str | None]] = []
    groups: list[tuple[nn.Module, tuple[str, ...], list[nn.Linear], str | None]] = []
    n = 0
    for mod_name, mod in list(module.named_modules()):
        names: tuple[str, ...] = ()
        if all(isinstance(getattr(mod, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj")):
            lins = [getattr(mod, a) for a in ("q_proj", "k_proj", "v_proj")]
            if len({lin.in_features for lin in lins}) == 1:
                names = ("q_proj", "k_proj", "v_proj")
            else:
                memos.extend((mod, a, getattr(mod, a), engine(_child(mod_name, a))) for a in ("k_proj", "v_proj"))
                n += 1
        elif all(isinstance(getattr(mod, a, None), nn.Linear) for a in ("gate_proj", "up_proj")):
            names = ("gate_proj", "up_proj")
        if not names:
            continue
        lins = [getattr(mod, a) for a in names]
        if len({lin.bias is None for lin in lins}) != 1:
            continue
        groups.append((mod, names, lins, engine(_child(mod_name, names[0]))))
        n += 1
    # All weights quantized and packed first, on all threads (pack_all), then put in place.
    packed = pack_all([([lin], e) for _, _, lin, e in memos] + [(lins, e) for _, _, lins, e in groups])
    for (mod, a, lin, e), p in zip(memos, packed[:len(memos)], strict=True):
        setattr(mod, a, MemoInt8Linear(lin, e, packed=p))
    for (mod, names, lins, e), p in zip(groups, packed[len(memos):], strict=True):
        group = _FusedInt8(lins, e, packed=p)
        for i, (a, lin) in enumerate(zip(names, lins, strict=True)):
            setattr(mod, a, FusedPart(group, i, lin))
    return n


Project = Callable[[torch.Tensor], torch.Tensor]


def side_by_side(mod: nn.Module, names: tuple[str, ...]) -> Project:
    """One call that computes the projections `names` of `mod` side by side ([..., sum of their sizes]).

    An int8 group fused by `fuse_projections` already is that call; plain nn.Linear weights are
    concatenated into one (a copy: the module keeps its own); anything else is called in turn.
    """
    parts = [getattr(mod, name) for name in names]
    first = parts[0]
    if isinstance(first, FusedPart) and len(first.group.bounds) == len(parts) and all(
            isinstance(p, FusedPart) and p.group is first.group and p.index == i for i, p in enumerate(parts)):
        fused: Project = first.group.linear
        return fused
    if all(type(p) is nn.Linear for p in parts) and len({p.bias is None for p in parts}) == 1:
        weight = torch.cat([p.weight.detach() for p in parts])
        bias = None if parts[0].bias is None else torch.cat([p.bias.detach() for p in parts])
        return lambda x: torch.nn.functional.linear(x, weight, bias)
    return lambda x: torch.cat([p(x) for p in parts], dim=-1)
