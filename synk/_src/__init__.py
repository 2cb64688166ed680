"""synk's implementation; the public names are in `synk`. Its frames are left
out of the tracebacks of errors that reach the user (`compat.hide_frames`).

The map of a call, one module per step, is `function`'s docstring. Beside a call: what a
Function and its ``with_options`` variants share, validated once (`core`, `options`); devices,
processes and the mesh (`runtime`, with `launch` starting jax.distributed, `allgather` for host
gathers between processes, `axis` the mesh axis name and `settings` the SYNK_* environment
variables); ``f.serial`` (`serial`);
device-resident data (`data`, `shards`) and its batch views (`views`, `indices`, and `take` for
rows taken on the devices); per-device values moved between host and devices (`transfers`),
collectives between devices on them (`collectives`) and inside a function (`lax`);
every private JAX access (`compat`); ``synk bench`` (`bench`). A check that refuses several
leaves names them all in one error (`refusals`), and synk's frames are left out of its traceback
(`compat.api_boundary`); `steps` names the types the steps hand one another.
"""

import os

from synk._src import compat

compat.hide_frames(os.path.dirname(os.path.abspath(__file__)))
