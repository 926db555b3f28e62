"""`block_bus_waits` gives LeRobot's pyserial port a read timeout, and says when it could not: a port it
cannot set keeps its client spinning, so the control thread must not do that work at real-time priority."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lepetpal_tui.arm.adapter import BUS_READ_WAIT_S, block_bus_waits, bus_waits_block


class _Port:
    def __init__(self, timeout: Any = 0) -> None:
        self.timeout = timeout


class _RefusingPort:
    @property
    def timeout(self) -> float:
        return 0

    @timeout.setter
    def timeout(self, value: float) -> None:
        raise ValueError("not a serial port")


def _bus(ser: Any) -> Any:
    return SimpleNamespace(port_handler=SimpleNamespace(ser=ser))


def test_a_pyserial_like_port_gets_the_read_timeout() -> None:
    bus = _bus(_Port(0))
    assert not bus_waits_block(bus)  # as scservo_sdk opens it: timeout=0, the client polls
    assert block_bus_waits(bus) is True
    assert bus.port_handler.ser.timeout == BUS_READ_WAIT_S and bus_waits_block(bus)


@pytest.mark.parametrize("bus", [
    _bus(None),  # not open
    SimpleNamespace(),  # no port handler at all
    _bus(object()),  # a port without a timeout
    _bus(_RefusingPort()),  # one that refuses it
], ids=["closed", "no-handler", "no-timeout", "refusing"])
def test_a_port_that_cannot_wait_is_reported_as_spinning(bus: Any) -> None:
    assert block_bus_waits(bus) is False
    assert not bus_waits_block(bus)


@pytest.mark.parametrize("timeout", [None, 0, -1, "2"])
def test_only_a_positive_number_counts_as_waiting(timeout: Any) -> None:
    assert not bus_waits_block(_bus(_Port(timeout)))
