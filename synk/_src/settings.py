"""synk's environment variables, read and checked in one place.

- ``SYNK_CPU_DEVICES``: how many CPU devices to simulate when `synk.init` is
  not given ``cpu_devices`` (a positive integer).
- ``SYNK_TIMEOUT``: seconds after which the other processes stop when one has
  died (a positive integer; 60 when unset).
- ``SYNK_LOCAL_DEVICES``: which local devices a process drives, read by
  `launch`: ``all`` or ids like ``0,1,2,3``.
- ``SYNK_CHECK``: ``0`` (or ``false``, ``no``) switches off the per-call
  comparison of signatures across processes.
"""

from __future__ import annotations

import os


def cpu_devices() -> int | None:
    """``SYNK_CPU_DEVICES``, or None when unset."""
    return _positive_int("SYNK_CPU_DEVICES", "the number of CPU devices to simulate", 8)


def timeout() -> int:
    """``SYNK_TIMEOUT``, 60 when unset."""
    meaning = "the seconds after which the other processes stop when one has died"
    seconds = _positive_int("SYNK_TIMEOUT", meaning, 60)
    return 60 if seconds is None else seconds


def local_devices() -> str:
    """``SYNK_LOCAL_DEVICES`` as written, '' when unset (`launch` parses it)."""
    return os.environ.get("SYNK_LOCAL_DEVICES", "")


def check_calls() -> bool:
    """Whether ``SYNK_CHECK`` leaves the per-call comparison across processes on."""
    return os.environ.get("SYNK_CHECK", "1") not in ("0", "false", "False", "no")


def _positive_int(var: str, meaning: str, example: int) -> int | None:
    value = os.environ.get(var, "")
    if value == "":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(_not_positive_error(var, value, meaning, example))
    return int(value)


def _not_positive_error(var: str, value: str, meaning: str, example: int) -> str:
    return (
        f"{var}={value!r} is not a positive integer. Set it to {meaning} "
        f"(e.g. {var}={example}), or unset it."
    )
