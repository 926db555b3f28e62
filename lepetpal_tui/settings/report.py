"""Reporting: every setting as (dotted key, value) and where each came from (`lepetpal config`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lepetpal_tui.settings.schema import Settings

# ------------------------------------------------------------------------------------------- reporting


def flatten(settings: Settings) -> list[tuple[str, Any]]:
    """(dotted key, value) for every setting, in declaration order."""
    out: list[tuple[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.name in ("source_path", "origins"):
                    continue
                walk(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        elif (
            isinstance(obj, dict)
            and obj
            and (prefix in ("cameras", "macros") or dataclasses.is_dataclass(next(iter(obj.values()))))
        ):
            for k, v in obj.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(obj, dict) and prefix == "arm.limits":
            for k, v in obj.items():
                out.append((f"{prefix}.{k}", list(v)))
        else:
            out.append((prefix, obj))

    walk(settings, "")
    return out


def origin_of(settings: Settings, key: str) -> str:
    """Where a value came from: "default", "file NAME", "env VAR" or "flag --x"."""
    return settings.origins.get(key, "default")
