"""Errors raised while resolving, loading or running a policy. No heavy imports here."""

from __future__ import annotations


class PolicyError(Exception):
    """A policy problem the user can fix: `message` says what is wrong, `fix` what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


class PolicyCancelled(Exception):
    """Loading was cancelled through the cancel event."""
