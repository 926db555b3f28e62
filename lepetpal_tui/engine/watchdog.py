"""What holds the arm when the engine can no longer see what it is doing: failing bus reads, failing goal
writes, unreadable or bad servo health, and a UI that stopped beating.

Reads, writes and health reads are counted apart: a bus that reads fine but cannot write (or cannot read
health) must hold too. Fail closed: an unread temperature is not a safe one.
"""

from __future__ import annotations

from lepetpal_tui.engine.control import ACTIVE, MOVING, Control
from lepetpal_tui.engine.safety import HEALTH_FIX, HEALTH_REMEDY, health_problem
from lepetpal_tui.wire import EngineState, EventKind, HoldCause

_BUS_FIX = "Check the arm's 12 V supply and the USB cable, then re-arm."


class Watchdog:
    def __init__(self, control: Control) -> None:
        self._c = control
        self._safety = control.settings.safety
        self.read_failures = 0
        self.write_failures = 0
        self.health_failures = 0
        self.heartbeat_at: float | None = None  # the UI's last sign of life; None until its first heartbeat
        # What the last health reading found wrong ("" when fine): a start or macro is refused while it
        # stands, since the health check only halts motion that is already under way.
        self.health_problem = ""

    def reset(self) -> None:
        """Re-armed: the operator has seen the faults."""
        self.read_failures = self.write_failures = self.health_failures = 0

    def read_ok(self) -> None:
        self.read_failures = 0

    def write_ok(self) -> None:
        self.write_failures = 0

    def read_failed(self, exc: BaseException) -> None:
        self.read_failures += 1
        if self.read_failures == self._safety.bus_retries + 1 and self._c.state != EngineState.ERROR:
            self._c.halt(EngineState.ERROR, f"bus errors: {exc}", HoldCause.FAULT)
            self._c.event("error", f"{self.read_failures} bus errors in a row ({exc}). Holding.", _BUS_FIX,
                          EventKind.BUS_FAULT)

    def write_failed(self, exc: BaseException) -> None:
        self.write_failures += 1
        if self.write_failures == self._safety.bus_retries + 1 and self._c.state != EngineState.ERROR:
            self._c.halt(EngineState.ERROR, f"goal writes failing: {exc}", HoldCause.FAULT)
            self._c.event("error", f"{self.write_failures} goal writes failed in a row ({exc}). Holding.",
                          _BUS_FIX, EventKind.BUS_FAULT)

    def check_health(self) -> None:
        arm = self._c.arm
        if arm is None:
            return
        result = arm.call(lambda a: a.read_health())
        if not result.ok or result.value is None:
            self._health_failed(result.error or RuntimeError("no reading"))
            return
        self.health_failures = 0
        self._c.coalescer.set_health(result.value)
        problem = health_problem(result.value, self._safety)
        self.health_problem = problem
        if problem and self._c.state in MOVING:
            self._c.halt(EngineState.ERROR, f"servo health: {problem}", HoldCause.FAULT)
            self._c.event("error", f"Holding: servo health: {problem}.", HEALTH_FIX, EventKind.HEALTH_FAULT)

    def motion_refusal(self) -> str:
        """Why the arm must not start moving now, from the last health reading; "" when it may."""
        if not self.health_problem:
            return ""
        return (f"servo health: {self.health_problem}. {HEALTH_REMEDY}; the arm may move once a reading (about one "
                "a second) is fine again. Thresholds are in [safety] of lepetpal.toml.")

    def _health_failed(self, exc: BaseException) -> None:
        self.health_failures += 1
        live = (*ACTIVE, EngineState.MACRO, EngineState.READY)
        if self.health_failures == self._safety.health_read_retries + 1 and self._c.state in live:
            self._c.halt(EngineState.ERROR, f"servo health unreadable: {exc}", HoldCause.FAULT)
            self._c.event(
                "error",
                f"Servo health (temperature, load, voltage) unreadable {self.health_failures} times in a row "
                f"({exc}). Holding.",
                HEALTH_FIX,
                EventKind.HEALTH_FAULT,
            )

    def beat(self, now: float, first: bool = False) -> None:
        """A sign of life from the UI: its heartbeat (`first`), or any command once it beats."""
        if first or self.heartbeat_at is not None:
            self.heartbeat_at = now

    def check_heartbeat(self, now: float) -> None:
        bound = self._safety.ui_heartbeat_s
        last = self.heartbeat_at
        if bound <= 0 or last is None or now - last <= bound or self._c.state not in MOVING:
            return
        silent = now - last
        self._c.halt(EngineState.READY, f"UI not responding (no heartbeat for {silent:.1f} s)", HoldCause.UI_LOST)
        self._c.event(
            "error",
            f"UI not responding: no heartbeat for {silent:.1f} s. Holding the arm.",
            "Nothing moves until you press start (F5) again once the screen answers.",
            EventKind.UI_SILENT,
        )
