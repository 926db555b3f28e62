"""Pilot tests: every key sends the right command, and the e-stop works whatever has focus.

The scripted link only drives the layout here: what state the engine goes to on each key is asserted
against the real engine on the simulated arm in test_keys_engine.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from support.scripted_link import ScriptedLink
from textual.command import CommandPalette
from textual.widgets import Input, Select
from textual.widgets._select import SelectOverlay

from lepetpal_tui.settings import ArmSettings, Settings
from lepetpal_tui.ui.app import LePetPalApp
from lepetpal_tui.ui.widgets.confirm import ConfirmScreen
from lepetpal_tui.wire import Command, EngineState, RunMacro, SetDryRun, SetTask, Start, UiLost, command_name

SIZE = (120, 40)
Body = Callable[[Any, LePetPalApp, ScriptedLink], Awaitable[None]]


def plain(sent: list[Command]) -> list[Command]:
    """The commands without their send times, to compare with the expected ones."""
    return [dataclasses.replace(c, sent_at=0.0) for c in sent]


def drive(make_app: Any, settle: Any, scenario: str | None, body: Body, batches: int = 1, **kw: Any) -> None:
    async def go() -> None:
        app, link = make_app(scenario, **kw)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app, batches)
            await body(pilot, app, link)

    asyncio.run(go())


async def until(pilot: Any, pred: Callable[[], bool], what: str, tries: int = 200) -> None:
    """Wait for the UI (screens open asynchronously; the machine may be busy)."""
    for _ in range(tries):
        if pred():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"never happened: {what}")


async def leave_field(pilot: Any, app: LePetPalApp) -> None:
    await pilot.press("escape")
    await pilot.pause()
    assert app.focused is None


# ------------------------------------------------------------------------------------------- e-stop


def test_f12_estops_from_the_task_field(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        assert app.focused is not None and app.focused.id == "task-input"
        await pilot.press("f12")
        await pilot.pause()
        assert link.kinds() == ["estop"]
        assert link.sent[0].sent_at == 1000.0
        assert app.store.state == EngineState.ESTOP
        app.redraw()
        assert "E-STOP" in str(app.query_one("#banner").render())

    drive(make_app, settle, "running", body, 2)


def test_space_types_in_the_task_field_and_estops_outside_it(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("a", "space", "b")
        assert app.query_one("#task-input", Input).value == "a b"
        assert link.kinds() == []
        await leave_field(pilot, app)
        await pilot.press("space")
        await pilot.pause()
        assert link.kinds() == ["estop"]

    drive(make_app, settle, "running", body, 2)


def test_f12_estops_with_the_port_select_open(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        select = app.query_one("#port-select", Select)
        select.focus()
        await pilot.press("enter")
        await until(pilot, lambda: select.expanded, "select open")
        assert isinstance(app.focused, SelectOverlay)
        await pilot.press("f12")
        await pilot.pause()
        assert link.kinds() == ["estop"]
        # Space too: the overlay is not a text field.
        await pilot.press("space")
        await pilot.pause()
        assert link.kinds() == ["estop", "estop"]

    drive(make_app, settle, "running", body, 2)


def test_f12_and_space_estop_with_a_dialog_open(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("ctrl+q")  # arm moving: quit asks first
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "dialog open")
        await pilot.press("f12")
        await pilot.pause()
        assert link.kinds() == ["estop"]
        await pilot.press("space")
        await pilot.pause()
        assert link.kinds() == ["estop", "estop"]
        assert isinstance(app.screen, ConfirmScreen)  # the dialog stays; the arm is stopped already

    drive(make_app, settle, "running", body, 2)


def test_f12_estops_with_the_command_palette_open(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "palette open")
        await pilot.press("f12")
        await pilot.pause()
        assert link.kinds() == ["estop"]

    drive(make_app, settle, "running", body, 2)


def test_f11_is_the_torque_off_stop_with_a_warning(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("f11")
        await pilot.pause()
        assert link.kinds() == ["estop_torque_off"]
        assert any("falls" in str(n.message) for n in app._notifications)

    drive(make_app, settle, "running", body, 2)


def test_estop_without_an_engine_says_so(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("f12")
        await pilot.pause()
        assert link.kinds() == []
        assert any("No engine" in str(n.message) for n in app._notifications)

    drive(make_app, settle, None, body, 0, autoconnect=False)


# ------------------------------------------------------------------------------------ other keys


def test_enter_in_task_field_starts_then_changes_the_task(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press(*"pick up the cube", "enter")
        await pilot.pause()
        assert plain(link.sent) == [Start(task="pick up the cube")]
        assert app.focused is None  # left the field: Space is an e-stop again
        await settle(pilot, app, 2)
        await pilot.press("enter")  # back into the field
        assert app.focused is not None and app.focused.id == "task-input"
        field = app.query_one("#task-input", Input)
        field.value = ""
        await pilot.press(*"stack it", "enter")
        await pilot.pause()
        assert plain(link.sent)[-1] == SetTask(task="stack it")

    drive(make_app, settle, "ready", body)


def test_f5_starts_with_the_typed_task_and_f6_stops(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("f5")  # no task yet: refused with a hint
        await pilot.pause()
        assert link.kinds() == []
        await pilot.press(*"wave", "f5")
        await pilot.pause()
        assert plain(link.sent) == [Start(task="wave")]
        await pilot.press("f6")
        await pilot.pause()
        assert link.kinds() == ["start", "stop"]

    drive(make_app, settle, "ready", body)


def test_d_toggles_dry_run(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await leave_field(pilot, app)
        await pilot.press("d")
        await settle(pilot, app, 2)
        assert plain(link.sent) == [SetDryRun(on=True)]
        assert app.store.dry_run  # the next press must send the opposite
        await pilot.press("d")
        await settle(pilot, app, 3)
        assert plain(link.sent)[-1] == SetDryRun(on=False)

    drive(make_app, settle, "running", body, 2)


def test_letters_in_the_task_field_are_text_not_commands(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("d", "h", "t", "r", "q")
        await pilot.pause()
        assert link.kinds() == []
        assert app.query_one("#task-input", Input).value == "dhtrq"
        assert app.is_running

    drive(make_app, settle, "running", body, 2)


def test_h_and_t_run_macros(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await leave_field(pilot, app)
        await pilot.press("h")
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause()
        assert plain(link.sent) == [RunMacro(name="home"), RunMacro(name="throw")]

    drive(make_app, settle, "ready", body)


def test_rearm_asks_first(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        assert app.store.state == EngineState.ESTOP
        await leave_field(pilot, app)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert link.kinds() == []
        await pilot.press("r")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot, app, 4)
        assert link.kinds() == ["rearm"]

    drive(make_app, settle, "estop", body, 3)


def test_rearm_when_not_stopped_does_nothing(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await leave_field(pilot, app)
        await pilot.press("r")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert link.kinds() == []

    drive(make_app, settle, "ready", body)


def test_q_quits_at_once_when_the_arm_is_still(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await leave_field(pilot, app)
        await pilot.press("q")
        for _ in range(100):
            await pilot.pause(0.01)
            if not app.is_running:
                break
        assert link.closed_with == (False, 5.0)
        assert link.kinds() == []
        assert not app.is_running

    drive(make_app, settle, "ready", body)


def test_quit_while_moving_asks_then_stops_and_closes(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await leave_field(pilot, app)
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and link.kinds() == []
        await pilot.press("q")
        await pilot.pause()
        await pilot.press("g")  # go home, then quit
        for _ in range(100):
            await pilot.pause(0.01)
            if not app.is_running:
                break
        assert link.kinds() == ["stop"]
        assert link.closed_with == (True, 5.0)
        assert not app.is_running

    drive(make_app, settle, "running", body, 2)


def test_engine_that_dies_is_reported(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        link.die()
        for _ in range(100):
            await pilot.pause(0.01)
            if app.store.state == EngineState.ERROR:
                break
        assert app.store.state == EngineState.ERROR
        assert "exited" in app.store.hold_reason

    drive(make_app, settle, "ready", body)


def test_connect_switches_port(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        select = app.query_one("#port-select", Select)
        assert select.value == "/dev/ttyACM0"  # the detected SO-101 is preselected
        await pilot.click("#port-connect")
        await settle(pilot, app, 1)
        assert app.port == "/dev/ttyACM0"
        assert app.link is link

    auto = Settings(arm=ArmSettings(port="auto"))
    drive(make_app, settle, "ready", body, 0, autoconnect=False, settings=auto)


def test_telemetry_keeps_flowing_under_a_dialog(make_app: Any, settle: Any) -> None:
    """Panes live on the main screen: a dialog on top must not break the redraw."""

    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        from dataclasses import replace

        await leave_field(pilot, app)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "dialog open")
        last = link._last
        link.push(replace(last, events=[type(last.events[0])(1001.0, "info", "under the dialog")] if last.events
                          else [], tick_count=999))
        await settle(pilot, app, 3)
        app.redraw(throttled=True)
        app.redraw()
        assert app.store.tick_count == 999
        assert "999" in str(app.main.query_one("#latency-counters").render())

    drive(make_app, settle, "running", body, 2)


def test_command_palette_offers_the_operator_actions(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "palette open")
        await pilot.press(*"Macro: home")
        for _ in range(50):
            await pilot.pause(0.02)
        await pilot.press("enter")
        for _ in range(50):
            await pilot.pause(0.02)
            if link.kinds():
                break
        assert plain(link.sent) == [RunMacro(name="home")]

    drive(make_app, settle, "ready", body)


def test_enter_while_loading_queues_the_start_and_keeps_the_task(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        banner = app.main.query_one("#banner")
        assert "LOADING" in str(banner.render()) and "READY" not in str(banner.render())
        await pilot.press(*"wave", "enter")
        await until(pilot, lambda: "queued" in app.store.hold_reason, "the queued start shown")
        assert plain(link.sent) == [Start(task="wave")]
        assert app.main.query_one("#task-input", Input).value == "wave"
        app.redraw()
        assert "starts when the policy is ready" in str(banner.render())
        await pilot.press("f6")
        await until(pilot, lambda: "queued" not in app.store.hold_reason, "the queued start cancelled")
        assert link.kinds() == ["start", "stop"]

    drive(make_app, settle, "loading", body)


def test_the_event_loop_sends_heartbeats(make_app: Any, settle: Any) -> None:
    """Four a second from the UI's own loop (the engine holds after safety.ui_heartbeat_s without one)."""

    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        before = link.heartbeats
        await pilot.pause(1.0)
        assert link.heartbeats - before >= 2, link.heartbeats
        assert "heartbeat" not in link.kinds()  # kept out of the operator's commands

    drive(make_app, settle, "running", body, 2)


def test_a_crash_in_the_ui_hands_over_to_the_engine(make_app: Any, settle: Any) -> None:
    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        app.call_later(lambda: 1 / 0)
        await until(pilot, lambda: "ui_lost" in link.kinds(), "the engine told")
        lost = [c for c in link.sent if isinstance(c, UiLost)]
        assert "the UI crashed (ZeroDivisionError" in lost[0].reason
        assert link.closed_with is None  # not a quit: the engine holds and disconnects per [safety]

    async def go() -> None:
        app, link = make_app("running")
        try:
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot, app, 2)
                await body(pilot, app, link)
        except ZeroDivisionError:
            pass  # run_test re-raises the UI's crash, as it should
        assert [command_name(c) for c in link.sent] == ["ui_lost"]

    asyncio.run(go())


def test_a_hangup_hands_over_to_the_engine_and_leaves(make_app: Any, settle: Any) -> None:
    codes: list[int] = []

    async def body(pilot: Any, app: LePetPalApp, link: ScriptedLink) -> None:
        app.hard_exit = codes.append
        app.terminal_hung_up()
        assert codes == [129]
        assert [(command_name(c), "hung up" in c.reason) for c in link.sent] == [("ui_lost", True)]

    drive(make_app, settle, "running", body, 2)


def test_model_pane_says_an_old_checkpoint_was_converted_and_where() -> None:
    from lepetpal_tui.ui.widgets.model import describe
    from lepetpal_tui.wire import ModelStatus, PreflightCheck

    note = PreflightCheck("format", True, "saved before LeRobot 0.4 (statistics in the weights): converted with "
                          "LeRobot's migration into /cache/lepetpal/converted/x-1234; the original is untouched")
    text = describe(ModelStatus("ready", source="me/old", preflight=(note,)), "me/old")
    assert "converted with LeRobot's migration into /cache/lepetpal/converted/x-1234" in text
