"""Model pane: where the policy comes from, download progress, loading, device, preflight, errors."""

from __future__ import annotations

import time

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from lepetpal_tui.wire import ModelStatus

_PHASES = {
    "idle": "not loaded",
    "resolving": "resolving the checkpoint",
    "downloading": "downloading",
    "loading": "loading weights",
    "warming_up": "warming up (first inference)",
    "ready": "[green]ready[/]",
    "failed": "[red]failed[/]",
    "fallback": "[yellow]fallback: scripted policy[/]",
}


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f} B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


def describe(m: ModelStatus | None, configured: str) -> str:
    """Markup lines for the pane; pure so it is easy to test."""
    if m is None:
        source = configured or "built-in demo checkpoint"
        return f"[b]source[/]  {escape(source)}\n[b]phase[/]   waiting for the engine"
    lines = [f"[b]source[/]  {escape(m.source or configured or '-')}"
             + (f" @ {escape(m.revision)}" if m.revision else "")]
    phase = _PHASES.get(m.phase, m.phase)
    if m.phase == "downloading" and m.bytes_total:
        phase += f"  {human_bytes(m.bytes_done)} / {human_bytes(m.bytes_total)}"
        if m.current_file:
            phase += f"  [dim]{escape(m.current_file)}[/]"
    elif m.message and m.phase not in ("failed",):
        phase += f"  [dim]{escape(m.message)}[/]"
    lines.append(f"[b]phase[/]   {phase}")
    if m.device or m.dtype or m.parameters:
        bits = [b for b in (m.device, m.dtype) if b]
        if m.parameters:
            bits.append(f"{human_count(m.parameters)} params")
        if m.warmup_s is not None:
            bits.append(f"warm-up {m.warmup_s:.2f} s")
        lines.append(f"[b]device[/]  {' · '.join(bits)}")
    if m.remote is not None:  # chunks come from a policy server ([model] server)
        r = m.remote
        bits = [escape(r.address), f"device {escape(r.device or 'auto')}"]
        if r.last_contact:
            bits.append(f"round trip {1000 * (r.network_s + r.server_s):.0f} ms (network {1000 * r.network_s:.0f}"
                        f" + server {1000 * r.server_s:.0f})")
            bits.append("last contact " + time.strftime("%H:%M:%S", time.localtime(r.last_contact)))
        lines.append("[b]server[/]  " + " · ".join(bits))
    passed = [c for c in m.preflight if c.ok]
    if passed:  # one line for what passed; details only for what failed
        lines.append("[b]checks[/]  " + "  ".join(f"[green]✓[/] {escape(c.name)}" for c in passed))
    for check in m.preflight:
        if check.ok and check.name == "format":  # a converted old checkpoint: say so, and where
            lines.append(f"[b]format[/]  {escape(check.detail)}")
        if check.ok:
            continue
        line = f"[red]✗ {escape(check.name)}[/]: {escape(check.detail)}"
        if check.fix:
            line += f"  [yellow]→ {escape(check.fix)}[/]"
        lines.append(line)
    if m.error:
        lines.append(f"[b red]error[/]   {escape(m.error)}")
    if m.fix:
        lines.append(f"[b yellow]fix[/]     {escape(m.fix)}")
    return "\n".join(lines)


class ModelPane(Vertical):
    def __init__(self, configured_source: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.configured_source = configured_source
        self._shown: ModelStatus | bool | None = False

    def compose(self) -> ComposeResult:
        yield Static(describe(None, self.configured_source), id="model-info")
        yield ProgressBar(total=100, show_eta=False, id="model-progress")

    def on_mount(self) -> None:
        self.border_title = "Model"
        self.query_one(ProgressBar).display = False

    def show(self, m: ModelStatus | None) -> None:
        if m == self._shown:
            return
        self._shown = m
        self.query_one("#model-info", Static).update(describe(m, self.configured_source))
        bar = self.query_one(ProgressBar)
        downloading = m is not None and m.phase == "downloading" and m.bytes_total > 0
        bar.display = downloading
        if m is not None and downloading:
            bar.update(total=m.bytes_total, progress=m.bytes_done)
        self.set_class(m is not None and m.phase == "failed", "-failed")
