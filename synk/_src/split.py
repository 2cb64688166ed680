"""How a batch of B rows is split over n devices and num_slices pieces.

Rows are dealt out so that no padding row ever reaches the user's function.
With P processes (``groups``) of m devices each, every process holds
``L = B / P`` rows (its own share of the global batch) and splits them over
its own devices:

* the first ``m * q`` local rows (``q = L // m``) form the *main block*:
  local device j gets rows ``[j*q, (j+1)*q)``, processed in ``num_slices``
  sequential pieces;
* the ``r = L % m`` remaining rows are the *extra rows*: local device j < r
  gets row ``m*q + j`` and processes it as one more piece, guarded by
  ``lax.cond`` so that devices j >= r never call the function on padding.

Gathered outputs are reassembled per process as ``concat(main rows, extra
rows[:r])``, which is exactly the input order. One process is the case P = 1.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from synk._src import compat


@dataclasses.dataclass(frozen=True)
class Split:
    """The static split of one call: B rows, n devices in P groups, s slices."""

    rows: int  # B, the global batch
    devices: int  # n, over all processes
    slices: int  # s
    groups: int = 1  # P, processes; each holds rows / groups rows

    @property
    def local_rows(self) -> int:
        """Rows each process holds (L)."""
        return self.rows // self.groups

    @property
    def local_devices(self) -> int:
        """Devices in each process (m)."""
        return self.devices // self.groups

    @property
    def main(self) -> int:
        """Rows each device takes from the main block (q)."""
        return self.local_rows // self.local_devices

    @property
    def extra(self) -> int:
        """Devices per process that take one extra row (r)."""
        return self.local_rows % self.local_devices

    @property
    def even(self) -> bool:
        return self.extra == 0

    def pieces(self) -> list[tuple[int, int]]:
        """The main block as (count, size) runs of equal pieces: sizes differ by <= 1."""
        q, s = self.main, self.slices
        if q == 0:
            return []
        size, bigger = divmod(q, s)
        runs = [(bigger, size + 1), (s - bigger, size)]
        return [(count, sz) for count, sz in runs if count > 0 and sz > 0]

    def piece_sizes(self) -> list[int]:
        """Every distinct piece size the function is called with."""
        sizes = [size for _, size in self.pieces()]
        if self.extra:
            sizes.append(1)
        return sorted(set(sizes))


def make_split(rows: int, devices: int, slices: int, *, groups: int = 1, where: str) -> Split:
    """Validate a split and build it. `where` names the function in errors."""
    check_not_empty(rows, where)
    split = Split(rows, devices, slices, groups)
    if slices > max(split.main, 1):
        raise ValueError(_slices_past_rows_error(where, split))
    return split


def _slices_past_rows_error(where: str, split: Split) -> str:
    q, many = split.main, split.main + (1 if split.extra else 0)
    if q == 0:
        gets, fix = "at most 1 row", "Use num_slices=1 for batches smaller than the device count."
    else:
        gets = f"{q} row(s)" + (f" (or {many})" if many != q else "")
        fix = f"Use num_slices <= {q}, or a larger batch."
    return (
        f"{where}: num_slices={split.slices} is larger than the rows a device gets: a batch "
        f"of {split.rows} rows on {split.devices} devices gives each device {gets}. {fix}"
    )


def check_not_empty(rows: int, where: str) -> None:
    """A batch needs rows: refused before anything is split or compiled."""
    if rows < 1:
        raise ValueError(_empty_batch_error(where))


def _empty_batch_error(where: str) -> str:
    return (
        f"{where}: the batch is empty (0 rows along the sliced axis). "
        "Pass at least one row, or mark the argument as broadcast with in_axes=None."
    )


def host_parts(x: np.ndarray, axis: int, split: Split) -> list[np.ndarray]:
    """Split this process's rows into its main block and, if uneven, the padded extra rows.

    The main block is a view (no copy); only the < m remainder rows are copied,
    padded to one row per local device. The padding rows are never computed on.
    """
    m, q, r = split.local_devices, split.main, split.extra
    index = (slice(None),) * axis
    main = x[(*index, slice(0, m * q))]
    if not r:
        return [main]
    shape = list(x.shape)
    shape[axis] = m
    extra = np.zeros(shape, x.dtype)
    extra[(*index, slice(0, r))] = x[(*index, slice(m * q, None))]
    return [main, extra]


def device_parts(x: jax.Array, axis: int, split: Split) -> list[jax.Array]:
    """`host_parts` for a global array already on the devices (traced inside jit)."""
    g, m, q, r = split.groups, split.local_devices, split.main, split.extra
    rows = jax.numpy.moveaxis(x, axis, 0)
    rows = rows.reshape((g, split.local_rows, *rows.shape[1:]))  # one block per process
    main = rows[:, : m * q].reshape((g * m * q, *rows.shape[2:]))
    parts = [main]
    if r:  # padded with placeholder rows (zeros; zero bits for typed keys): never computed on
        filler = compat.zeros((g, m - r, *rows.shape[2:]), rows.dtype)
        extra = jax.numpy.concatenate([rows[:, m * q :], filler], axis=1)
        parts.append(extra.reshape((g * m, *rows.shape[2:])))
    return [jax.numpy.moveaxis(p, 0, axis) for p in parts]


def reassemble(main: jax.Array, extra: jax.Array, split: Split) -> jax.Array:
    """Gathered rows back in input order: per process, its main rows then its extra rows."""
    g, m, q, r = split.groups, split.local_devices, split.main, split.extra
    main = main.reshape((g, m * q, *main.shape[1:]))
    extra = extra.reshape((g, m, *extra.shape[1:]))[:, :r]
    both = jax.numpy.concatenate([main, extra], axis=1)
    return both.reshape((split.rows, *both.shape[2:]))


# --------------------------------------------------------------------------
# The default path: a whole batch, padded evenly for the devices


@dataclasses.dataclass(frozen=True)
class Pad:
    """A batch of `rows` rows sharded evenly over `devices` devices, padded where needed.

    Each of the `groups` processes holds ``L = rows / groups`` rows (its share;
    one group when the batch is global) and pads them to ``m * per`` rows for
    its ``m`` devices, ``per = ceil(L / m)``: device j of a process holds that
    process's rows ``[j * per, (j + 1) * per)``, the last devices ending in
    zero rows. `unpad`, inside the executable, cuts the real rows back out in
    their order before the function sees them; the padding never reaches it.
    """

    rows: int
    devices: int
    groups: int = 1

    @property
    def local_rows(self) -> int:
        return self.rows // self.groups

    @property
    def per(self) -> int:
        """Rows each device holds, padding included."""
        return -(-self.local_rows // (self.devices // self.groups))

    @property
    def padded(self) -> int:
        """Rows of the padded batch, over every process."""
        return self.per * self.devices

    @property
    def needed(self) -> bool:
        return self.padded != self.rows

    def host(self, x: np.ndarray, axis: int) -> np.ndarray:
        """This process's share, padded for its devices (a copy only when needed)."""
        if not self.needed:
            return x
        shape = list(x.shape)
        shape[axis] = self.padded // self.groups - self.local_rows
        return np.concatenate([x, np.zeros(shape, x.dtype)], axis=axis)

    def device(self, x: jax.Array, axis: int) -> jax.Array:
        """`host` for a global array (traced, inside jit): every group's rows padded."""
        if not self.needed:
            return x
        g, extra = self.groups, self.padded // self.groups - self.local_rows
        rows = jax.numpy.moveaxis(x, axis, 0)
        rows = rows.reshape((g, self.local_rows, *rows.shape[1:]))
        filler = compat.zeros((g, extra, *rows.shape[2:]), rows.dtype)
        rows = jax.numpy.concatenate([rows, filler], axis=1)
        return jax.numpy.moveaxis(rows.reshape((self.padded, *rows.shape[2:])), 0, axis)

    def unpad(self, x: jax.Array, axis: int) -> jax.Array:
        """The real rows of a padded batch, in order (inside the executable)."""
        if not self.needed:
            return x
        step, size = self.padded // self.groups, self.local_rows
        parts = [
            jax.lax.slice_in_dim(x, g * step, g * step + size, axis=axis)
            for g in range(self.groups)
        ]
        return parts[0] if len(parts) == 1 else jax.numpy.concatenate(parts, axis=axis)

    def index(self, index: np.ndarray) -> np.ndarray:
        """A global index padded with row 0 (a real row, never used) to the padded length."""
        if not self.needed:
            return index
        return np.concatenate([index, np.zeros(self.padded - len(index), index.dtype)])
