"""Port pane: serial ports with SO-101 detection, the simulated arm, refresh and connect."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Select, Static

from lepetpal_tui.wire import PortInfo

SIM_PORT = PortInfo(device="sim", description="simulated SO-101 (no hardware)", is_sim=True, is_so101=True)


def port_label(p: PortInfo) -> str:
    if p.is_sim:
        return "sim · simulated SO-101"
    mark = "✓ SO-101" if p.is_so101 else ("?" if not p.probed else "✗")
    return f"{p.device} {mark}"


def port_detail(p: PortInfo) -> str:
    if p.is_sim:
        return "Simulated arm on a pty: six STS3215 servos, real protocol."
    parts = [p.description or "serial port"]
    if p.vid_pid:
        parts.append(p.vid_pid)
    if p.is_so101:
        ids = ",".join(str(i) for i in p.motor_ids)
        volts = f", {p.voltage_v:.1f} V" if p.voltage_v is not None else ""
        parts.append(f"motors {ids}{volts}")
    if p.note:
        parts.append(p.note)
    return " · ".join(parts)


class PortPane(Vertical):
    """Lists ports; posts ConnectRequested / RefreshRequested."""

    class ConnectRequested(Message):
        def __init__(self, device: str) -> None:
            super().__init__()
            self.device = device

    class RefreshRequested(Message):
        pass

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ports: list[PortInfo] = [SIM_PORT]
        self.connected: str = ""

    def compose(self) -> ComposeResult:
        yield Select[str](
            [(port_label(SIM_PORT), "sim")], prompt="choose a port", allow_blank=True, compact=True, type_to_search=False,
            id="port-select",
        )
        yield Static("Scanning ports...", id="port-detail")
        with Horizontal(id="port-buttons"):
            yield Button("Refresh", id="port-refresh", compact=True)
            yield Button("Connect", id="port-connect", compact=True, variant="primary")

    def on_mount(self) -> None:
        self.border_title = "Port"

    def set_ports(self, ports: list[PortInfo], error: str = "", preferred: str = "") -> None:
        if not any(p.is_sim for p in ports):
            ports = [*ports, SIM_PORT]
        self.ports = ports
        select = self.query_one("#port-select", Select)
        current = select.value
        select.set_options([(port_label(p), p.device) for p in ports])
        devices = [p.device for p in ports]
        for want in (self.connected, current, preferred):
            if isinstance(want, str) and want in devices:
                select.value = want
                break
        else:
            so101 = [p.device for p in ports if p.is_so101 and not p.is_sim]
            if so101:
                select.value = so101[0]
        n = sum(1 for p in ports if p.is_so101 and not p.is_sim)
        summary = f"{n} SO-101 found" if n else "no SO-101 found on serial ports"
        self._summary = f"{summary}. {error}" if error else summary
        self._show_detail()

    def set_connected(self, device: str) -> None:
        self.connected = device
        self.border_subtitle = f"connected: {device}" if device else ""

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._show_detail()

    def _show_detail(self) -> None:
        select = self.query_one("#port-select", Select)
        chosen = next((p for p in self.ports if p.device == select.value), None)
        summary = getattr(self, "_summary", "")
        detail = port_detail(chosen) if chosen else "Pick a port, then Connect."
        self.query_one("#port-detail", Static).update(f"{detail}\n[dim]{summary}[/]")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "port-refresh":
            self.query_one("#port-detail", Static).update("Scanning ports...")
            self.post_message(self.RefreshRequested())
        elif event.button.id == "port-connect":
            value = self.query_one("#port-select", Select).value
            if isinstance(value, str):
                self.post_message(self.ConnectRequested(value))
            else:
                self.app.notify("Pick a port first.", severity="warning")
