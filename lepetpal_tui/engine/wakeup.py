"""The control thread at real-time priority: SCHED_FIFO through its sleep, and through its work when that
work never spins.

Why the sleep: on a busy 2-core machine the actuator (nice -10) was often runnable but not running:
`perf sched` showed wake-up delays of 2-10 ms (73 of 1831 deadline wake-ups over 1 ms, 2-core Intel Xeon,
recording on), while a nice 10-15 thread (the scene renderer, the recorder's PNG writers) finished its
slice. A real-time thread preempts any normal one the moment its timer fires.

Why the work too: dropping back to SCHED_OTHER right after the wake-up gave the CPU straight back to the
policy thread the wake-up had preempted, for the rest of its slice (seen under the kernel's EEVDF scheduler,
nice 10 against nice -10). Measured with the full-size policy on the 2-core
Intel Xeon with AMX (`perf sched timehist`): the timer wake-up itself was never later than 0.1 ms, but the
tick started up to 5 ms late, the thread having been preempted 2-4 ms inside its own return to normal
priority; tick lateness p99 3.6 ms. Real-time through the work (bench/full_size_run.py, 60 s runs): lateness
p99 0.46-0.62 ms, period deviation p99 0.69-0.81 ms (was 4.9).

But LeRobot's bus client spins while it waits for a servo's reply, and a real-time spinner would starve
the kernel worker that moves the reply's bytes to the port (and the simulator). So the work stays
real-time only while the bus waits block (`arm.adapter.block_bus_waits` gives its port a read timeout,
so the client sleeps in select()); otherwise the thread drops to SCHED_OTHER (its nice kept) as soon as
it wakes, as before. Needs CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf); without it, and
off Linux, the sleep is a plain sleep.
"""

from __future__ import annotations

import os
import time

RT_PRIORITY = 10  # above every normal thread, below the kernel's own real-time threads (50, 99)


class RealtimeWakeup:
    """`sleep(seconds, keep=...)` at real-time priority where allowed; `why_not` says why not ("" when
    it is). One instance per thread: it tracks that thread's scheduling class."""

    def __init__(self, enabled: bool = True, priority: int = RT_PRIORITY) -> None:
        self.why_not = ""
        self.available = False
        self._realtime = False  # the calling thread is SCHED_FIFO now
        if not enabled:
            self.why_not = "off ([control] realtime_wakeup = false)"
            return
        try:
            self._rt = os.sched_param(priority)
            self._normal = os.sched_param(0)
            fifo, other = os.SCHED_FIFO, os.SCHED_OTHER
        except AttributeError:
            self.why_not = "this system has no real-time scheduling classes"
            return
        self._fifo, self._other = fifo, other
        try:
            os.sched_setscheduler(0, fifo, self._rt)  # the calling thread (Linux)
        except OSError as exc:
            self.why_not = f"no permission for real-time priority ({exc.strerror or exc})"
            return
        os.sched_setscheduler(0, other, self._normal)
        self.available = True

    @property
    def realtime(self) -> bool:
        """Whether the calling thread runs SCHED_FIFO now (between sleeps: only with keep=True)."""
        return self._realtime

    def sleep(self, seconds: float, keep: bool = False) -> None:
        """Sleep `seconds` (none when <= 0) at real-time priority; with `keep`, stay real-time after it,
        through the work that follows (only for work that never spins: see the module's note)."""
        if not self.available:
            if seconds > 0:
                time.sleep(seconds)
            return
        if not self._realtime:
            try:
                os.sched_setscheduler(0, self._fifo, self._rt)
            except OSError as exc:  # the right was taken away while running: tick on at normal priority
                self.available = False
                self.why_not = f"real-time priority refused while running ({exc.strerror or exc})"
                if seconds > 0:
                    time.sleep(seconds)
                return
            self._realtime = True
        try:
            if seconds > 0:
                time.sleep(seconds)
        finally:
            if not keep:
                # Lowering one's own priority is always allowed.
                os.sched_setscheduler(0, self._other, self._normal)
                self._realtime = False
