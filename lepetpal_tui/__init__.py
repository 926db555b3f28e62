"""LePetPal TUI: run a SmolVLA policy on an SO-101 arm from a terminal, safely."""

__version__ = "0.1.0"
