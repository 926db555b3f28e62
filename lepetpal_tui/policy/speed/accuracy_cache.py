"""Results of the int8/bf16 accuracy check, kept per checkpoint + CPU kind + path, so it runs once.

The check (a chunk in fp32 and in the fast path with the same noise, compared) costs a whole fp32 chunk
plus the conversion: 5-10 s with the full-size model on a 2-core CPU. Its answer only changes with the
checkpoint's weights, the CPU's kernels (cpu_caps kind, int8 activation width and engines) and the library versions,
so it is stored in `$XDG_CACHE_HOME/lepetpal/accuracy.json` (default ~/.cache), or the file named by
LEPETPAL_ACCURACY_CACHE ("off": check on every start). A damaged file is ignored and rewritten.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ENV = "LEPETPAL_ACCURACY_CACHE"


@dataclass(frozen=True)
class AccuracyResult:
    path: str  # "int8 (7-bit activations)", "bf16"
    max_diff: float  # robot units (degrees), max over joints and chunk steps
    tolerance: float
    speedup: float  # fp32 chunk time / fast-path chunk time in the check (one sample: indicative)
    checked_at: str  # ISO date of the check

    @property
    def accepted(self) -> bool:
        return self.max_diff <= self.tolerance


def cache_file() -> Path | None:
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lepetpal" / "accuracy.json"


def checkpoint_fingerprint(dir: Path) -> str:
    """Identifies the weights without hashing gigabytes: resolved folder + size and mtime of the files
    that carry weights, configuration and statistics."""
    parts = [str(dir.resolve())]
    for f in sorted(dir.glob("*.json")) + sorted(dir.glob("*.safetensors")):
        try:
            st = f.stat()
        except OSError:
            continue
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


# Raised when results an older lepetpal stored may be wrong, so that each is checked again once.
# 2 (2026-12-06): until then two row halves could call fresh oneDNN int8 weights at once and get a wrong
# result (see int8_linear.settle_first_call); the check's int8 chunk is such a first chunk, so it could
# have rejected a good path, and the rejection was kept.
# 3 (2026-12-06): the prefix pass's int8 rows run in two halves (policy/speed/prefix_halves.py), each
# quantizing its own activations: other rounding, so a result kept for the whole pass is checked again.
CHECK_FORMAT = 3


def cache_key(fingerprint: str, cpu_kind: str, path: str, flow_steps: int, versions: str) -> str:
    return f"{fingerprint}#{cpu_kind}#{path}#steps={flow_steps}#{versions}#check={CHECK_FORMAT}"


def _read(file: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(key: str) -> AccuracyResult | None:
    file = cache_file()
    if file is None:
        return None
    entry = _read(file).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        return AccuracyResult(
            path=str(entry["path"]), max_diff=float(entry["max_diff"]),  # type: ignore[arg-type]
            tolerance=float(entry["tolerance"]), speedup=float(entry["speedup"]),  # type: ignore[arg-type]
            checked_at=str(entry["checked_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def store(key: str, result: AccuracyResult) -> Path | None:
    """Write the result (atomically: a crash never leaves half a file). Returns the file, or None when
    caching is off or the folder is not writable (the check then simply runs again next time)."""
    file = cache_file()
    if file is None:
        return None
    data = _read(file)
    data[key] = asdict(result)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(file)
    except OSError:
        return None
    return file


def today() -> str:
    return time.strftime("%Y-%m-%d")
