"""What a synk.Function shares with its ``with_options`` variants, validated once.

`function.function` builds one `Core` per decorated function: the function,
its signature, in_axes, statics and donated arguments (`signature`), its
devices, process groups and mesh (`runtime`), and the caches of plans,
buckets, variants and ``f.serial`` executables that every variant shares.
"""

from __future__ import annotations

from typing import Any

from synk._src import runtime
from synk._src.recompiles import Recompiles
from synk._src.signature import Signature, Statics, as_tuple, check_in_axes


class Core:
    """What a synk.function validates once and shares with its with_options variants:
    the function, its signature and statics, its devices and mesh, and the caches."""

    def __init__(self, fn, in_axes, static_argnums, static_argnames, donate_argnums, devices):
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
        self.where = f"synk.function({self.name})"
        self.signature = Signature.of(fn)
        check_in_axes(in_axes, self.where)
        self.in_axes = in_axes
        self.statics = Statics.of(self.signature, static_argnums, static_argnames, self.where)
        self.has_statics = bool(self.statics.positions or self.statics.names)
        self.donate = frozenset(as_tuple(donate_argnums))
        if self.donate & self.statics.positions:
            raise ValueError(
                f"{self.where}: arguments {sorted(self.donate & self.statics.positions)} are "
                "both static and donated; a static argument has no buffer to donate."
            )
        self.devices = runtime.pick_devices(devices, self.where)
        self.groups = runtime.process_groups(self.devices, self.where)
        self.mesh = runtime.mesh(self.devices)
        self.platform = self.devices[0].platform
        self.cache: dict = {}  # plan key -> Plan, shared by every with_options variant
        self.buckets: dict = {}  # bucket key -> a bucket's executable (or False: none fits)
        self.variants: dict = {}  # options key -> Function
        self.recompiles = Recompiles()
        self.serials: dict = {}  # f.serial's executables, by the same key as a call's

    @property
    def compiled(self) -> int:
        """Executables built: a bucket's serves several plans (batch lengths)."""
        return len({id(plan.jitted) for plan in self.cache.values()})

    def bind(self, args: tuple, kwargs: dict) -> tuple[tuple, Any]:
        """(statics, dyn): the call bound to the signature, statics taken out."""
        if not kwargs and not self.has_statics:  # the common case, at every call
            return (), (args, kwargs)
        args, kwargs = self.signature.bind(args, kwargs)
        return self.statics.split(args, kwargs, self.signature, self.where)
