"""`lepetpal run --headless` end to end on the simulated arm."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepetpal_tui.cli import main
from lepetpal_tui.engine.session_log import summarize

pytestmark = pytest.mark.slow


def test_run_headless_on_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--headless", "--sim", "--model-mode", "scripted", "--task", "pick up the ball",
                 "--duration", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "state RUNNING" in out and "summary:" in out and "ended cleanly   yes" in out
    logs = list((tmp_path / "logs").glob("session-*.jsonl"))
    assert len(logs) == 1
    s = summarize(logs[0])
    assert s.ticks >= 80 and s.written_ticks >= 80 and s.starved_ticks == 0 and s.chunks >= 2


def test_run_rejects_empty_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--headless", "--sim", "--task", "  "]) == 2
    err = capsys.readouterr().err
    assert "--task is empty" in err


def test_run_says_when_the_log_folder_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lepetpal.toml").write_text('[logging]\ndir = "taken"\n')
    (tmp_path / "taken").write_text("a file where the log folder should be\n")
    code = main(["run", "--headless", "--sim", "--model-mode", "scripted", "--task", "wave", "--duration", "3"])
    err = capsys.readouterr().err
    assert code != 0
    assert "Cannot write the session log in taken" in err and "[logging] dir" in err
    assert "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "a file where the log folder should be\n"


def test_run_says_why_the_scripted_demo_ran_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lepetpal.toml").write_text("[model]\nfallback_to_scripted = true\n")
    code = main(["run", "--headless", "--sim", "--task", "wave", "--duration", "2",
                 "--model-path", str(tmp_path / "no-such-checkpoint")])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "model fallback, because:" in captured.out and "no-such-checkpoint does not exist" in captured.out
    assert "scripted demo motion ran instead" in captured.err


def test_run_refuses_a_recording_folder_it_cannot_write_before_moving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file\n")
    code = main(["run", "--headless", "--sim", "--model-mode", "scripted", "--task", "wave", "--duration", "2",
                 "--record", "taken/ds"])
    captured = capsys.readouterr()
    assert code == 2
    assert "taken is a file, not a folder" in captured.err
    assert not (tmp_path / "logs").exists()  # refused before any engine started
