"""`lepetpal.toml` → typed, validated settings, with the origin of every value.

The package: `schema` (sections, defaults, ranges, the replace helpers), `validate` (raw values -> typed,
every problem collected), `load` (file, environment, flags), `report` (`lepetpal config`). This module
re-exports what the rest of the app uses.

Precedence: CLI flag > environment variable > settings file > built-in default.
A bad file never produces a traceback: `load_settings` raises `ConfigError`, whose message names the
file, the key, the value and what is accepted; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

from lepetpal_tui.joints import JOINT_NAMES, joint_vector
from lepetpal_tui.settings.load import (
    OVERRIDES,
    USE_HARDWARE_ENV,
    Override,
    find_config_file,
    load_settings,
    parse_toml_file,
)
from lepetpal_tui.settings.report import flatten, origin_of
from lepetpal_tui.settings.schema import (
    CONFIG_ENV,
    DEFAULT_CONFIG_NAME,
    ArmSettings,
    CameraSettings,
    ConfigError,
    ControlSettings,
    LoggingSettings,
    MacroSettings,
    ModelSettings,
    RecordingSettings,
    SafetySettings,
    Settings,
    UISettings,
    replace_sections,
    replace_setting,
)
from lepetpal_tui.settings.validate import parse_bool_text, split_address

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_NAME",
    "JOINT_NAMES",
    "OVERRIDES",
    "USE_HARDWARE_ENV",
    "ArmSettings",
    "CameraSettings",
    "ConfigError",
    "ControlSettings",
    "LoggingSettings",
    "MacroSettings",
    "ModelSettings",
    "Override",
    "RecordingSettings",
    "SafetySettings",
    "Settings",
    "UISettings",
    "find_config_file",
    "flatten",
    "joint_vector",
    "load_settings",
    "origin_of",
    "parse_bool_text",
    "parse_toml_file",
    "replace_sections",
    "replace_setting",
    "split_address",
]
