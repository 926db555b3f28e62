"""`lepetpal sim` as an operator runs it, and the sim's import weight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_lepetpal_sim_serves_until_ctrl_c_and_cleans_up(tmp_path: Path) -> None:
    import serial

    from lepetpal_tui.feetech.protocol import Instruction, build_packet

    link = tmp_path / "arm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepetpal_tui.cli", "sim", "--link", str(link), "--trace"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"ready on {link}" in first
        with serial.Serial(str(link), 1_000_000, timeout=1) as ser:
            ser.write(build_packet(5, Instruction.PING))
            assert ser.read(6) == build_packet(5, 0)
        time.sleep(0.5)  # one trace poll
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "rx PING       id=5" in out
    assert "tx STATUS     id=5" in out
    assert "Simulated arm stopped." in out
    assert "Traceback" not in err
    assert not os.path.lexists(link)


def test_lepetpal_sim_refuses_a_link_over_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "lepetpal_tui.cli", "sim", "--link", str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not a symlink" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sim_imports_no_torch_lerobot_or_textual() -> None:
    code = (
        "import sys; import lepetpal_tui.commands.sim, lepetpal_tui.sim.process, lepetpal_tui.sim.server; "
        "print(','.join(m for m in ('torch', 'lerobot', 'textual', 'serial') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
