"""Loading: the settings file, then the environment, then CLI flags (in rising precedence), with the
origin of every value."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli

from lepetpal_tui.settings.schema import (
    CONFIG_ENV,
    DEFAULT_CONFIG_NAME,
    ConfigError,
    Settings,
    replace_setting,
)
from lepetpal_tui.settings.validate import (
    Errors,
    build,
    check_cross_field,
    coerce,
    parse_bool_text,
    split_address,
)

# ------------------------------------------------------------------------- environment and CLI overrides


@dataclass(frozen=True)
class Override:
    key: str  # dotted settings key
    env: str
    flag: str


OVERRIDES: tuple[Override, ...] = (
    Override("arm.port", "ARM_PORT", "--port"),
    Override("model.mode", "MODEL_MODE", "--model-mode"),
    Override("model.path", "MODEL_PATH", "--model-path"),
    Override("control.rate_hz", "INFERENCE_RATE_HZ", "--rate-hz"),
    Override("model.device", "DEVICE", "--device"),
    Override("control.dry_run", "DRY_RUN", "--dry-run"),
    Override("model.hf_transfer", "HF_HUB_ENABLE_HF_TRANSFER", "--hf-transfer"),
    Override("model.server", "POLICY_SERVER", "--policy-server"),
    Override("recording.enabled", "RECORD", "--rec"),
    Override("recording.root", "RECORD_ROOT", "--rec-root"),
)
# USE_HARDWARE / --sim / --hardware steer arm.port: false -> "sim"; true with port "sim" -> "auto".
USE_HARDWARE_ENV = "USE_HARDWARE"



# --------------------------------------------------------------------------------------------- loading


def find_config_file(explicit: str | None) -> Path | None:
    """--config, then $LEPETPAL_CONFIG, then ./lepetpal.toml; None means built-in defaults."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_dir():
            raise ConfigError(f"--config {p} is a folder; give the settings file itself, e.g. {p / DEFAULT_CONFIG_NAME}.")
        if not p.is_file():
            raise ConfigError(
                f"Settings file {p} does not exist. Check the --config path, or omit --config to use "
                f"./{DEFAULT_CONFIG_NAME} or the built-in defaults."
            )
        return p
    env = os.environ.get(CONFIG_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            raise ConfigError(f"${CONFIG_ENV} points to the folder {p}; point it at the settings file itself, e.g. "
                              f"{p / DEFAULT_CONFIG_NAME}.")
        if not p.is_file():
            raise ConfigError(f"${CONFIG_ENV} points to {p}, which does not exist. Fix or unset it.")
        return p
    p = Path.cwd() / DEFAULT_CONFIG_NAME
    return p if p.is_file() else None


def parse_toml_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 and retry."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Cannot read settings file {path}: {exc.strerror}. Check the path and permissions."
        ) from None
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        msg = getattr(exc, "msg", str(exc))
        line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
        lines = text.splitlines()
        shown = ""
        if line and 0 < line <= len(lines):
            shown = f' The line reads: "{lines[line - 1].strip()}".'
        raise ConfigError(
            f"{path} is not valid TOML: {msg} at line {line}, column {col}.{shown} "
            "Fix the syntax (strings need quotes, tables are [name], lists are [a, b]) and retry."
        ) from None


def field_of(key: str) -> tuple[Any, Mapping[str, Any]]:
    section, _, leaf = key.partition(".")
    cls = typing.get_type_hints(Settings)[section]
    f = next(f for f in dataclasses.fields(cls) if f.name == leaf)
    return typing.get_type_hints(cls)[leaf], f.metadata


def _parse_text_value(text: str, key: str, where: str, errs: Errors) -> Any:
    tp, meta = field_of(key)
    if tp is bool:
        try:
            return parse_bool_text(text, where)
        except ConfigError as exc:
            errs.items.append(str(exc))
            return None
    value: Any = text
    if tp in (int, float):
        with contextlib.suppress(ValueError):
            value = int(text) if tp is int else float(text)
    sub = Errors(where)
    out = coerce(value, tp, key, meta, sub)
    errs.items.extend(sub.items)
    return out


def load_settings(
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from defaults, the file, the environment and CLI flags (in rising precedence).

    `flags` maps dotted keys to values already parsed by argparse (`None` = not given), plus the special
    key "use_hardware" (bool) for --sim/--hardware.
    """
    env = os.environ if environ is None else environ
    flags = flags or {}
    path = find_config_file(config_path)
    origins: dict[str, str] = {}
    settings = Settings()
    if path is not None:
        raw = parse_toml_file(path)
        errs = Errors(str(path))
        settings = build(Settings, raw, "", errs, origins, f"file {path.name}")
        if not errs.items:
            check_cross_field(settings, errs)
        if errs.items:
            raise ConfigError(_join(errs.items, _FIX_FILE))
        settings = dataclasses.replace(settings, source_path=str(path))

    errs = Errors("environment")
    use_hw_env = env.get(USE_HARDWARE_ENV)
    for ov in OVERRIDES:
        text = env.get(ov.env)
        if text is None or (ov.key != "model.path" and text == ""):
            continue
        value = _parse_text_value(text, ov.key, f"${ov.env}", errs)
        if value is not None:
            settings = replace_setting(settings, ov.key, value)
            origins[ov.key] = f"env {ov.env}"
    if use_hw_env not in (None, ""):
        env_port = env.get("ARM_PORT")
        # USE_HARDWARE=0 beside a device in ARM_PORT is a toggle (the port waits for USE_HARDWARE=1);
        # the hardware asked for with the port "sim" is a contradiction.
        if env_port == "sim" and _contradicts(use_hw_env, env_port):
            errs.items.append(f"${USE_HARDWARE_ENV}={use_hw_env} asks for the real arm, but $ARM_PORT=sim names the "
                              "simulated one: set ARM_PORT to the arm's serial port (or auto), or unset it.")
        try:
            settings = _use_hardware(
                settings,
                parse_bool_text(use_hw_env, f"${USE_HARDWARE_ENV}"),
                origins,
                f"env {USE_HARDWARE_ENV}",
            )
        except ConfigError as exc:
            errs.items.append(str(exc))

    for ov in OVERRIDES:
        value = flags.get(ov.key)
        if value is None:
            continue
        if isinstance(value, str) and ov.key not in ("arm.port", "model.path", "model.mode", "model.device", "model.server"):
            value = _parse_text_value(value, ov.key, ov.flag, errs)
        else:
            sub = Errors(ov.flag)
            tp, meta = field_of(ov.key)
            value = coerce(value, tp, ov.key, meta, sub)
            errs.items.extend(sub.items)
        if value is not None:
            settings = replace_setting(settings, ov.key, value)
            origins[ov.key] = f"flag {ov.flag}"
    use_hw_flag = flags.get("use_hardware")
    flag_port = flags.get("arm.port")
    if use_hw_flag is not None and flag_port and _contradicts("1" if use_hw_flag else "0", str(flag_port)):
        errs.items.append(f"{'--hardware' if use_hw_flag else '--sim'} and --port {flag_port} contradict each "
                          "other: give only one of them.")
    if use_hw_flag is not None:
        settings = _use_hardware(
            settings, bool(use_hw_flag), origins, "flag --hardware" if use_hw_flag else "flag --sim"
        )
    check_addresses(settings, origins, errs)
    if errs.items:
        raise ConfigError(_join(errs.items, _FIX_OVERRIDES))
    return dataclasses.replace(settings, origins=origins)


def _contradicts(use_hardware: str, port: str) -> bool:
    """Whether a "use the hardware" choice and a port given beside it disagree (sim with a device path, or
    the hardware with "sim")."""
    try:
        on = parse_bool_text(use_hardware, USE_HARDWARE_ENV)
    except ConfigError:
        return False  # reported on its own
    return (port == "sim") == on


def check_addresses(settings: Settings, origins: Mapping[str, str], errs: Errors) -> None:
    """The arm's port and the policy server's address, wherever they came from: wrong here, they would only
    show once the arm is connected (or the policy loading), as a fault of something else."""
    def where(key: str) -> str:
        origin = origins.get(key, "default")
        return origin.removeprefix("file ").removeprefix("flag ").replace("env ", "$")

    if not settings.arm.port.strip():
        errs.items.append(f'{where("arm.port")}: [arm.port] is empty; expected a serial port path, "auto" or "sim".')
    server = settings.model.server.strip()
    if server and split_address(server) is None:
        errs.items.append(f'{where("model.server")}: [model.server] = "{server}" is not a "host:port" address; '
                          'write it as "127.0.0.1:8080" (no http://), or "" to run the policy here.')


def _use_hardware(settings: Settings, on: bool, origins: dict[str, str], origin: str) -> Settings:
    if not on:
        origins["arm.port"] = origin
        return replace_setting(settings, "arm.port", "sim")
    if settings.arm.port == "sim":
        origins["arm.port"] = origin
        return replace_setting(settings, "arm.port", "auto")
    return settings


_FIX_FILE = "Fix the file (see the comments in the shipped lepetpal.toml) and retry."
_FIX_OVERRIDES = "Fix (or unset) what each line names: an environment variable, a flag or the file; then retry."


def _join(items: list[str], fix: str) -> str:
    head = "Settings problem" if len(items) == 1 else f"{len(items)} settings problems"
    return head + ":\n  " + "\n  ".join(items) + "\n" + fix
