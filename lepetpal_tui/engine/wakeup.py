"""The tick's wake-up at real-time priority: SCHED_FIFO while the actuator sleeps, normal while it works.

Why: on a busy 2-core machine the actuator (nice -10) was often runnable but not running: `perf sched`
showed wake-up delays of 2-10 ms (73 of 1831 deadline wake-ups over 1 ms, 2-core Intel Xeon, recording on),
while a nice 10-15 thread (the scene renderer, the recorder's PNG writers) finished its slice. A
real-time thread preempts any normal one the moment its timer fires.

Only the sleep is real-time: LeRobot's bus client spins while it waits for a reply, and a real-time
spinner could starve the USB stack or the simulator it waits for. So the thread switches to SCHED_FIFO
just before it sleeps towards its deadline and back to SCHED_OTHER (its nice is kept) as soon as it runs:
two system calls, 3.6 us a tick measured. Needs CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf);
without it, and off Linux, the sleep is a plain sleep.
"""

from __future__ import annotations

import os
import time

RT_PRIORITY = 10  # above every normal thread, below the kernel's own real-time threads (50, 99)


class RealtimeWakeup:
    """`sleep(seconds)` at real-time priority where allowed; `why_not` says why not ("" when it is)."""

    def __init__(self, enabled: bool = True, priority: int = RT_PRIORITY) -> None:
        self.why_not = ""
        self.available = False
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

    def sleep(self, seconds: float) -> None:
        if not self.available:
            time.sleep(seconds)
            return
        os.sched_setscheduler(0, self._fifo, self._rt)
        try:
            time.sleep(seconds)
        finally:
            # Lowering one's own priority is always allowed: the tick's work never runs real-time.
            os.sched_setscheduler(0, self._other, self._normal)
