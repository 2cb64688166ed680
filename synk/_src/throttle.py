"""The CPU throttle: a bound on the synk calls in flight on the CPU backend.

`throttle` runs after every eager call (a synk.Function's, a collective's).
"""

from __future__ import annotations

import collections

import jax

# XLA's CPU collectives rendezvous every device of a call; with too many
# calls queued the rendezvous times out and aborts the process, the sooner
# when the machine is busy and when other jitted work (an optimiser update)
# runs between our calls, which are the only ones counted here.
#
# We hold one output of each call. Once 8 are held, those that finished (or
# that the user deleted or donated since: blocking on a deleted buffer
# raises) are let go; only if 4 or more are still running do we wait, for
# all but the newest 4 (calls run in order). A loop that waits for its
# results itself never waits here.
_MAX_IN_FLIGHT = 8
_KEEP = 4
_in_flight: collections.deque[jax.Array] = collections.deque()


def throttle(leaf: jax.Array | None, platform: str) -> None:
    """Bound the number of collective calls in flight on the CPU backend."""
    if platform != "cpu" or leaf is None:
        return
    if not hasattr(leaf, "is_ready"):  # a typed PRNG key: its buffer tells when it is ready
        leaf = jax.random.key_data(leaf)
    _in_flight.append(leaf)
    if len(_in_flight) < _MAX_IN_FLIGHT:
        return
    # Calls finish in order: the running ones are the newest. Find the oldest
    # of them by bisection (a handful of checks, not one per held output). A
    # deleted output tells nothing: its call counts as running.
    held = list(_in_flight)
    lo, hi = 0, len(held)
    while lo < hi:
        mid = (lo + hi) // 2
        # jax.Array's stub lacks is_ready, which every concrete array (ArrayImpl) has.
        # pyrefly: ignore[missing-attribute]
        if not held[mid].is_deleted() and held[mid].is_ready():
            lo = mid + 1
        else:
            hi = mid
    running = held[lo:]
    if len(running) >= _MAX_IN_FLIGHT - _KEEP:
        # Wait for all but the newest 4, on the first live output from there on
        # (at worst this call's own, which cannot be gone yet: a full drain).
        wait = next(x for x in running[-_KEEP - 1 :] if not x.is_deleted())
        wait.block_until_ready()  # calls run in order: the older ones are done too
        running = running[-_KEEP:]
    _in_flight.clear()
    _in_flight.extend(running)
