"""`python -m synk info` shows devices and processes."""

import subprocess
import sys

from helpers import clean_env, in_a_fresh_process


@in_a_fresh_process
def test_info_lists_devices_and_processes():
    res = subprocess.run(
        [sys.executable, "-m", "synk", "info"],
        env=clean_env(SYNK_CPU_DEVICES="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "process 0 of 1" in res.stdout
    assert "devices: 3 in all, 3 in this process" in res.stdout
