"""What the steps of a call hand one another: the user's function, ready to
trace (`UserCall`), and the placer of a plan's arguments (`Placer`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from synk._src.partition import Updates

# The user's function on the traced leaves: (its outputs, what it wrote into Variables).
UserCall = Callable[[list[Any]], tuple[Any, Updates]]
# A call's leaves -> the executable's arguments (placed, padded, or as they are).
Placer = Callable[[list[Any]], list[Any]]
