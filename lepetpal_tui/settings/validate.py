"""Validation: raw TOML values -> typed settings, collecting every problem with a message that names the
file, the key, the value and what is accepted."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from lepetpal_tui.joints import JOINT_NAMES
from lepetpal_tui.settings.schema import ConfigError, Settings, default_limits, default_macros

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def split_address(text: str) -> tuple[str, int] | None:
    """"host:port" (an IPv6 host in brackets) -> (host, port); None when it is no such address (a URL, no
    port, a port outside 1-65535). One parser for the settings check and the policy-server client."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if "/" in text or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def parse_bool_text(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(
        f"{where} is {text!r}, which is not a yes/no value. Use 1/0, true/false, yes/no or on/off."
    )


# ------------------------------------------------------------------------------------------ validation


class Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, value: Any, accepted: str) -> None:
        shown = _show(value)
        self.items.append(f"{self.source}: [{key}] = {shown} is not accepted; expected {accepted}.")

    def unknown(self, key: str, known: list[str]) -> None:
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        section = key.rsplit(".", 1)[0] if "." in key else "top level"
        self.items.append(
            f'{self.source}: unknown setting "{key}".{hint} Known keys in {section}: {", ".join(known)}.'
        )


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}"
    return ""


def coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any], errs: Errors) -> Any:
    """Check one value against its declared type; returns the typed value or None after recording an error."""
    lo, hi = meta.get("lo"), meta.get("hi")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        errs.add(key, value, "one of " + ", ".join(f'"{c}"' for c in choices))
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        errs.add(key, value, "true or false")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errs.add(key, value, "a whole number" + _range_text(lo, hi))
                return None
            return value
        errs.add(key, value, "a whole number" + _range_text(lo, hi))
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                errs.add(key, value, "a number" + _range_text(lo, hi))
                return None
            return float(value)
        errs.add(key, value, "a number" + _range_text(lo, hi))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errs.add(key, value, "a text string in quotes")
        return None
    if origin in (types.UnionType, typing.Union):  # int | str (camera source)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                errs.add(key, value, "a device index of 0 or more")
                return None
            return value
        if isinstance(value, str) and value:
            if (typo := _source_typo(value)) is not None:
                errs.add(key, value, f'"{typo}" (a word, not a file path: did you mean it?), a device index or a '
                                     "video file path")
                return None
            return value
        errs.add(key, value, 'a device index (0, 1, ...), a video file path, or "synthetic"')
        return None
    if origin is tuple:  # joint limit [min, max]
        if (
            isinstance(value, list)
            and len(value) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
        ):
            if value[0] >= value[1]:
                errs.add(key, value, "[min, max] with min smaller than max")
                return None
            return (float(value[0]), float(value[1]))
        errs.add(key, value, "a pair of numbers [min, max]")
        return None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            errs.add(key, value, "a list")
            return None
        if inner is float:
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                errs.add(key, value, "a list of numbers")
                return None
            return [float(v) for v in value]
        out = [coerce(v, inner, f"{key}[{i}]", meta, errs) for i, v in enumerate(value)]
        return None if any(v is None for v in out) else out
    raise TypeError(f"unsupported settings type {tp!r}")  # a programming error, caught by the tests


def build(cls: type, raw: Any, prefix: str, errs: Errors, origins: dict[str, str], origin: str) -> Any:
    """Build dataclass `cls` from a TOML table, recording errors and the origin of each key present."""
    if not isinstance(raw, dict):
        errs.add(prefix, raw, "a table ([" + prefix + "])")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source_path", "origins")}
    known = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            errs.unknown(full, known)
            continue
        f = fields[key]
        tp = hints[key]
        built = _build_value(tp, value, full, f.metadata, errs, origins, origin, f)
        if built is not None:
            kwargs[key] = built
            if _is_leaf(tp) and full != "arm.limits":
                origins.setdefault(full, origin)
    return cls(**kwargs)


def _is_leaf(tp: Any) -> bool:
    """A value whose origin is recorded as one (not a table of further settings)."""
    if dataclasses.is_dataclass(tp):
        return False
    if typing.get_origin(tp) is dict:
        return not dataclasses.is_dataclass(typing.get_args(tp)[1])
    return True


_CAMERA_WORDS = ("synthetic", "pattern")


def _source_typo(source: str) -> str | None:
    """The camera word `source` is a misspelling of ("synthetik" -> "synthetic"), when it is no path that
    exists and looks like no path at all; else None (it is then a video file, checked when the camera opens)."""
    import os

    if source in _CAMERA_WORDS or "/" in source or "." in source or os.path.exists(source):
        return None
    close = difflib.get_close_matches(source.lower(), _CAMERA_WORDS, n=1, cutoff=0.7)
    return close[0] if close else None


def _build_value(
    tp: Any,
    value: Any,
    full: str,
    meta: Mapping[str, Any],
    errs: Errors,
    origins: dict[str, str],
    origin: str,
    f: dataclasses.Field[Any] | None = None,
) -> Any:
    if dataclasses.is_dataclass(tp):
        return build(tp, value, full, errs, origins, origin)  # type: ignore[arg-type]
    if typing.get_origin(tp) is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            errs.add(full, value, "a table")
            return None
        if full == "arm.limits":
            return _build_limits(value, full, errs, origins, origin, meta)
        # Macros merge over the built-in ones (a file that only tunes "home" keeps "throw");
        # cameras replace them (the file lists the cameras that exist).
        out: dict[str, Any] = default_macros() if full == "macros" else {}
        for name, item in value.items():
            item_key = f"{full}.{name}"
            if dataclasses.is_dataclass(val_tp):
                out[name] = build(val_tp, item, item_key, errs, origins, origin)  # type: ignore[arg-type]
            else:
                v = coerce(item, val_tp, item_key, meta, errs)
                if v is not None:
                    out[name] = v
        if full == "cameras" and not out:
            errs.add(full, value, "at least one camera table, e.g. [cameras.front]")
        return out
    return coerce(value, tp, full, meta, errs)


def _build_limits(
    value: dict[str, Any],
    full: str,
    errs: Errors,
    origins: dict[str, str],
    origin: str,
    meta: Mapping[str, Any],
) -> dict[str, tuple[float, float]]:
    limits = default_limits()
    for name, item in value.items():
        key = f"{full}.{name}"
        if name not in JOINT_NAMES:
            errs.unknown(key, list(JOINT_NAMES))
            continue
        pair = coerce(item, tuple[float, float], key, meta, errs)
        if pair is not None:
            limits[name] = pair
            origins[key] = origin
    return limits


def check_cross_field(s: Settings, errs: Errors) -> None:
    """Rules that involve more than one value."""
    if s.safety.min_voltage_v >= s.safety.max_voltage_v:
        errs.add(
            "safety.min_voltage_v",
            s.safety.min_voltage_v,
            f"a value below safety.max_voltage_v ({s.safety.max_voltage_v:g})",
        )
    lo, hi = s.arm.limits["gripper"]
    if lo < 0 or hi > 100:
        errs.add("arm.limits.gripper", [lo, hi], "a range inside [0, 100] (the gripper is 0-100)")
    for name, macro in s.macros.items():
        for i, wp in enumerate(macro.waypoints):
            if len(wp) != len(JOINT_NAMES):
                errs.add(
                    f"macros.{name}.waypoints[{i}]",
                    wp,
                    f"six numbers, one per joint ({', '.join(JOINT_NAMES)})",
                )
        if macro.start_pose and len(macro.start_pose) != len(JOINT_NAMES):
            errs.add(f"macros.{name}.start_pose", macro.start_pose, "six numbers, or [] for anywhere")
    for src, dst in s.model.camera_map.items():
        if src not in s.cameras:
            errs.add(
                f"model.camera_map.{src}",
                dst,
                f"a key naming one of the configured cameras ({', '.join(s.cameras)})",
            )
