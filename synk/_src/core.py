"""What a synk.Function validates once, and shares with its ``with_options`` variants.

`Core.of` checks the decorator's arguments and builds one frozen `Core` per
decorated function, as pjit's ``PjitInfo`` is built once per ``jax.jit``: the
function, its signature, in_axes, statics and donated arguments
(`signature`), its devices, process groups and mesh (`runtime`), and the
caches of plans, buckets, variants and ``f.serial`` executables that every
variant shares (the caches fill; the record itself never changes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from synk._src import runtime
from synk._src.recompiles import Recompiles
from synk._src.signature import Dyn, InAxes, Signature, Statics, as_tuple, check_in_axes


@dataclasses.dataclass(frozen=True, eq=False)
class Core:
    """A decorated function, validated: see the module's docstring."""

    fn: Callable[..., Any]
    name: str  # the function's qualified name, for messages and repr
    where: str  # "synk.function(<name>)": how every message starts
    signature: Signature
    in_axes: InAxes
    statics: Statics
    donate: frozenset[int]
    devices: tuple[jax.Device, ...]
    groups: int  # processes among the devices
    mesh: jax.sharding.Mesh
    platform: str  # "cpu", "gpu", ...
    has_statics: bool  # read at every call: is there anything to take out?
    cache: dict[tuple, Any] = dataclasses.field(default_factory=dict)  # plan key -> Plan
    # bucket key -> (executable, placer, out, outputs), or False: no bucket serves it
    buckets: dict[tuple, Any] = dataclasses.field(default_factory=dict)
    variants: dict[tuple, Any] = dataclasses.field(default_factory=dict)  # -> Function
    serials: dict[tuple, Any] = dataclasses.field(default_factory=dict)  # -> f.serial's
    recompiles: Recompiles = dataclasses.field(default_factory=Recompiles)

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        in_axes: InAxes,
        static_argnums: int | Sequence[int],
        static_argnames: str | Sequence[str],
        donate_argnums: int | Sequence[int],
        devices: Sequence[jax.Device] | int | None,
    ) -> Core:
        """Check the decorator's arguments, refusing the first that is wrong, by name."""
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
        where = f"synk.function({name})"
        signature = Signature.of(fn)
        check_in_axes(in_axes, where)
        statics = Statics.of(signature, static_argnums, static_argnames, where)
        donate = frozenset(as_tuple(donate_argnums))
        if donate & statics.positions:
            raise ValueError(_static_and_donated(where, donate & statics.positions))
        picked = tuple(runtime.pick_devices(devices, where))
        groups = runtime.process_groups(picked, where)
        has_statics = bool(statics.positions or statics.names)
        return cls(fn, name, where, signature, in_axes, statics, donate, picked, groups,
                   runtime.mesh(picked), picked[0].platform, has_statics)  # fmt: skip

    @property
    def compiled(self) -> int:
        """Executables built: a bucket's serves several plans (batch lengths)."""
        return len({id(plan.jitted) for plan in self.cache.values()})

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], Dyn]:
        """(statics, dyn): the call bound to the signature, statics taken out."""
        if not kwargs and not self.has_statics:  # the common case, at every call
            return (), (args, kwargs)
        args, kwargs = self.signature.bind(args, kwargs)
        return self.statics.split(args, kwargs, self.signature, self.where)


def _static_and_donated(where: str, both: frozenset[int]) -> str:
    return (
        f"{where}: arguments {sorted(both)} are both static and donated; a static "
        "argument has no buffer to donate. Leave them out of donate_argnums."
    )
