"""`python -m synk info` shows devices and processes."""

import os
import subprocess
import sys


def test_info_lists_devices_and_processes():
    env = {**os.environ, "SYNK_CPU_DEVICES": "3"}
    env = {k: v for k, v in env.items() if not k.startswith(("PMI_", "OMPI_"))}
    res = subprocess.run(
        [sys.executable, "-m", "synk", "info"], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "process 0 of 1" in res.stdout
    assert "devices: 3 in all, 3 in this process" in res.stdout
