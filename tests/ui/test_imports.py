"""The UI process must never import torch or lerobot: the first screen cannot wait for them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "lerobot", "transformers", "cv2")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import lepetpal_tui.cli, lepetpal_tui.commands.ui
    from lepetpal_tui.settings import Settings
    from lepetpal_tui.ui.app import LePetPalApp
    from lepetpal_tui.ui.link import list_serial_ports
    from lepetpal_tui.ui.synthetic_link import SyntheticLink

    async def main():
        # The real port scan, a synthetic engine: everything the UI process itself runs.
        app = LePetPalApp(Settings(), link_factory=lambda s, p: SyntheticLink(), sim_factory=None,
                          port_lister=list_serial_ports)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(400):  # up to 10 s on a busy machine
                await pilot.pause(0.025)
                if app.store.batches > 2:
                    break
            await pilot.press("f12")
            await pilot.pause(0.1)
            batches = app.store.batches
        return batches

    batches = asyncio.run(main())
    print(json.dumps({"batches": batches, "modules": sorted(sys.modules)}))
    """
)


def test_ui_process_imports_no_torch_or_lerobot() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["batches"] > 0  # the app really ran and drew telemetry
    heavy = [m for m in result["modules"] if m.split(".")[0] in HEAVY]
    assert heavy == [], f"the UI process imported {heavy[:10]}"
    assert "textual" in result["modules"]


FIRST_SCREEN = textwrap.dedent(
    """
    import json, sys
    import lepetpal_tui.cli, lepetpal_tui.commands.ui
    from lepetpal_tui.settings import load_settings
    from lepetpal_tui.ui.app import LePetPalApp
    settings = load_settings(None)
    print(json.dumps(sorted(sys.modules)))
    """
)


# Mounted after the first paint (ui/screen.py `_mount_rest`): the first paint must not import them.
AFTER_FIRST_PAINT = ("lepetpal_tui.ui.widgets.camera", "lepetpal_tui.ui.widgets.latency",
                     "lepetpal_tui.ui.widgets.log", "lepetpal_tui.ui.widgets.model")


def test_first_screen_needs_no_numpy_nor_the_later_panes() -> None:
    # numpy costs ~0.1 s of a ~1 s first screen on a 2-core machine; only the camera pane needs it, and
    # it imports it when the first frame is drawn. The panes mounted after the first paint (and rich's
    # pretty-printer, which the log's RichLog pulls in) wait for it too.
    out = subprocess.run(
        [sys.executable, "-c", FIRST_SCREEN], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert "lepetpal_tui.ui.widgets.joints" in modules  # the test imported what the first screen shows
    assert "numpy" not in modules
    early = [m for m in AFTER_FIRST_PAINT if m in modules]
    assert early == [], f"imported before the first paint: {early}"
