"""Collectives inside a `synk.function` (as on one device under ``f.serial``).

``axis_name`` is the name of synk's device axis, for libraries that take an
``axis_name`` (e.g. ``flax.nnx.BatchNorm(..., axis_name=synk.lax.axis_name)``
synchronises batch statistics over every device). ``row_keys(key)`` gives one
PRNG key per row, the same on any device count.
"""

from synk._src.lax import all_gather as all_gather
from synk._src.lax import axis_name as axis_name
from synk._src.lax import device_index as device_index
from synk._src.lax import pmax as pmax
from synk._src.lax import pmean as pmean
from synk._src.lax import pmin as pmin
from synk._src.lax import psum as psum
from synk._src.lax import row_keys as row_keys

__all__ = ["all_gather", "axis_name", "device_index", "pmax", "pmean", "pmin", "psum", "row_keys"]
