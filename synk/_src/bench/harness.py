"""How every benchmark checks and times its variants, and sums up the samples.

Called by every subcommand module that times its variants: first
`check_close` on every variant, then `measure`, then `stats` (and `paired`
for ratios); by ``memory`` for `check_close` alone. Calls JAX only to block
on outputs and fetch them; numpy for the figures; tqdm, if installed, for the
progress bar.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np


def check_close(name: str, got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same tree, same values (``assert_allclose`` per leaf), or AssertionError."""
    got_leaves, got_tree = jax.tree_util.tree_flatten(jax.device_get(got))
    want_leaves, want_tree = jax.tree_util.tree_flatten(jax.device_get(want))
    assert got_tree == want_tree, f"{name}: output structure {got_tree} != {want_tree}"
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def time_block(call: Callable, calls: int) -> float:
    """Seconds per call of ``calls`` calls, then one ``block_until_ready`` on the last."""
    out = None  # set by the loop: calls >= 1
    t0 = time.perf_counter()
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def measure(
    variants: dict[str, Callable],
    *,
    rounds: int,
    calls: int | dict[str, int],
    desc: str,
    quiet: bool,
    warmup: int = 2,
    sample: Callable[[Callable, int], float] = time_block,
) -> dict[str, list[float]]:
    """Interleaved samples (seconds per call) of each variant.

    Every round runs each variant once, in a new shuffled order, so that
    drifts of a shared, noisy machine and the after-effects of a heavy variant
    on the next one fall on all variants alike. (A rotating start is not
    enough: it keeps the neighbours fixed, and the variant after the heaviest
    one was measured 4-5 % slow.) The order comes from a fixed seed, so every
    process runs the same one. A sample is ``sample(call, calls)``: by default
    `time_block`, a block of ``calls`` calls (per variant if a dict) and one
    block; ``warmup`` samples of each variant come first and are dropped.
    """
    names = list(variants)
    per = calls if isinstance(calls, dict) else dict.fromkeys(names, calls)
    bar = progress((rounds + warmup) * len(names), desc, quiet)
    for name in names:  # compile and warm every cache first
        for _ in range(warmup):
            sample(variants[name], per[name])
            bar.update()
    samples: dict[str, list[float]] = {k: [] for k in names}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for k in order.permutation(len(names)):
            name = names[k]
            samples[name].append(sample(variants[name], per[name]))
            bar.update()
    bar.close()
    return samples


class Bar(Protocol):
    """A progress bar: tqdm's, or `_NoBar`."""

    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


def measured(
    variants: dict[str, Callable[[], Any]], args: argparse.Namespace, desc: str
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """`measure` with the flags every timing subcommand has (``--rounds``, ``--calls``,
    ``--quiet``): the samples, and their `stats` by variant."""
    samples = measure(variants, rounds=args.rounds, calls=args.calls, desc=desc, quiet=args.quiet)
    return samples, {k: stats(v) for k, v in samples.items()}


def progress(total: int, desc: str, quiet: bool) -> Bar:
    """A tqdm bar on stderr (nothing if ``quiet`` or tqdm is missing)."""
    if quiet or importlib.util.find_spec("tqdm") is None:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, unit="sample")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def stats(samples: list[float]) -> dict[str, float]:
    """Median and quartiles of a list of seconds, in microseconds."""
    q1, med, q3 = np.percentile(np.asarray(samples) * 1e6, [25, 50, 75])
    return {"median_us": float(med), "q1_us": float(q1), "q3_us": float(q3)}


def paired(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[r] / b[r] (samples taken in the same round)."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


# A ratio's name, the variant timed over the variant it is timed against, and
# its target: ("<=", 1.03), or None.
Pair = tuple[str, str, str, tuple[str, float] | None]


class Ratio(NamedTuple):
    """One variant's time over another's, and its target."""

    name: str
    value: float  # of the medians
    paired: float  # the median of the per-round ratios
    target: tuple[str, float] | None

    @property
    def met(self) -> bool | None:
        """Whether the target holds; None without a target."""
        if self.target is None:
            return None
        op, limit = self.target
        return self.value <= limit if op == "<=" else self.value < limit


def ratios(pairs: tuple[Pair, ...], samples: dict[str, list[float]], st: dict) -> list[Ratio]:
    """The `pairs` whose variants both ran: of the medians, and paired by round (the
    samples of one round ran back to back, so this cancels a shared machine's drifts)."""
    med = {k: v["median_us"] for k, v in st.items()}
    return [
        Ratio(name, med[a] / med[b], paired(samples[a], samples[b]), target)
        for name, a, b, target in pairs
        if a in med and b in med
    ]
