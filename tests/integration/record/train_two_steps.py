"""Run LeRobot's own trainer (`lerobot-train`) for 2 steps on a recorded dataset, offline, on the CPU.

    python train_two_steps.py DATASET_ROOT REPO_ID POLICY_DIR OUTPUT_DIR

Exit 0 when both steps logged a finite loss; prints the step lines. The tiny SmolVLA of
`lepetpal_tui.policy.demo_checkpoint` keeps it to a few seconds of training after LeRobot's imports.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STEP = re.compile(r"step:(\d+) .*?loss:([-+0-9.eE]+|nan|inf)")


def main(argv: list[str]) -> int:
    root, repo_id, policy, out = argv
    trainer = shutil.which("lerobot-train") or str(Path(sys.executable).with_name("lerobot-train"))
    cmd = [trainer, f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", f"--policy.path={policy}",
           "--steps=2", "--batch_size=2", f"--output_dir={out}", "--policy.device=cpu",
           "--policy.push_to_hub=false", "--save_checkpoint=false", "--num_workers=0", "--log_freq=1",
           "--wandb.enable=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    text = (proc.stdout + proc.stderr).replace("\r", "\n")
    steps = {int(m.group(1)): float(m.group(2)) for m in STEP.finditer(text)}
    for k, loss in sorted(steps.items()):
        print(f"step {k}: loss {loss:.4f}")
    if proc.returncode != 0 or sorted(steps) != [1, 2] or not all(math.isfinite(v) for v in steps.values()):
        print(text[-4000:], file=sys.stderr)
        print(f"lerobot-train exit {proc.returncode}, steps logged {sorted(steps)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
