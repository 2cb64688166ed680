"""The wrapped function's signature: binding a call, static arguments, in_axes."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax

from synk._src.refusals import Refusals

PerDevice = Literal["per_device"]
PER_DEVICE: PerDevice = "per_device"
# One in_axes entry: slice along that axis, broadcast (None), or one entry per device.
InAxis = int | PerDevice | None
# An entry for every positional argument, or a pytree prefix of the arguments.
InAxes = InAxis | tuple[Any, ...] | list[Any] | Mapping[Any, Any]
# A call's traced part: (positional arguments, keyword arguments), statics taken out.
Dyn = tuple[tuple[Any, ...], dict[str, Any]]


# --------------------------------------------------------------------------
# Binding a call


@dataclasses.dataclass(frozen=True)
class Signature:
    """The wrapped function's parameters, read once."""

    sig: inspect.Signature | None
    positional: tuple[str, ...]
    varargs: bool
    kwonly: tuple[str, ...]

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Signature:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return cls(None, (), True, ())
        kinds = inspect.Parameter
        params = list(sig.parameters.values())
        positional = tuple(
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        varargs = any(p.kind == kinds.VAR_POSITIONAL for p in params)
        kwonly = tuple(p.name for p in params if p.kind == kinds.KEYWORD_ONLY)
        return cls(sig, positional, varargs, kwonly)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Dyn:
        """The call's arguments by position and name, as the caller passed them.

        Parameters left to their defaults stay out: the function sees its own
        Python default, as under ``jax.jit``, and nothing is traced for it.
        """
        if not kwargs or self.sig is None:
            return args, kwargs
        bound = self.sig.bind(*args, **kwargs)
        return bound.args, bound.kwargs

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> None:
        """Refuse a call that does not fit the signature, before anything is traced."""
        if self.sig is None:
            return
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(_unfit_call_error(where, self.sig, e)) from None

    def name(self, i: int) -> str:
        """The name of positional argument i, as the user wrote it."""
        return self.positional[i] if i < len(self.positional) else f"args[{i}]"

    def names(self, n: int) -> str:
        return ", ".join(f"`{self.name(i)}`" for i in range(n))


# --------------------------------------------------------------------------
# Static arguments


@dataclasses.dataclass(frozen=True)
class Statics:
    """Which arguments are compile-time constants; taking them out and putting them back."""

    positions: frozenset[int]
    names: tuple[str, ...]  # keyword-only statics
    keywords: tuple[str, ...] = ()  # every static's name, as a call may pass it by keyword

    @classmethod
    def of(
        cls,
        signature: Signature,
        argnums: int | Sequence[int] | None,
        argnames: str | Sequence[str] | None,
        where: str,
    ) -> Statics:
        pos = set()
        for i in as_tuple(argnums):
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"{where}: static_argnums entries must be ints, got {i!r}.")
            if i < 0:
                if signature.varargs:
                    raise ValueError(_negative_argnum_error(where, i))
                i += len(signature.positional)
            pos.add(i)
        kw = []
        for name in as_tuple(argnames):
            if name in signature.positional:
                pos.add(signature.positional.index(name))
            elif name in signature.kwonly or signature.sig is None:
                kw.append(name)
            else:
                raise ValueError(_unknown_argname_error(where, name, signature))
        named = tuple(signature.positional[i] for i in sorted(pos) if i < len(signature.positional))
        return cls(frozenset(pos), tuple(kw), (*kw, *named))

    def split(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], signature: Signature, where: str
    ) -> tuple[tuple[Any, ...], Dyn]:
        """(statics, dyn): hashable static values (part of the key), and the traced pytree."""
        if not self.positions and not self.names:
            return (), (args, kwargs)
        # (name, type, value): the type too, as jax.jit keys them (1 == 1.0, same hash).
        statics = tuple(
            (i, type(args[i]), args[i]) for i in sorted(self.positions) if i < len(args)
        )
        # A positional static passed by keyword (an earlier default left out) counts too.
        statics += tuple((k, type(kwargs[k]), kwargs[k]) for k in self.keywords if k in kwargs)
        try:
            hash(statics)
        except TypeError:
            _raise_unhashable(statics, signature, where)
        dyn_args = tuple(None if i in self.positions else a for i, a in enumerate(args))
        dyn_kw = {k: v for k, v in kwargs.items() if k not in self.keywords}
        return statics, (dyn_args, dyn_kw)

    @staticmethod
    def merge(statics: tuple[Any, ...], dyn: Dyn) -> Dyn:
        """The call's arguments again: the traced pytree with the statics put back."""
        args, kwargs = dyn
        if not statics:
            return args, kwargs
        args, kwargs = list(args), dict(kwargs)
        for name, _, value in statics:
            if isinstance(name, int):
                args[name] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs


def _negative_argnum_error(where: str, i: int) -> str:
    return (
        f"{where}: negative static_argnums ({i}) are ambiguous for a "
        "function with *args; use a non-negative position."
    )


def _unknown_argname_error(where: str, name: str, signature: Signature) -> str:
    return (
        f"{where}: static_argnames names {name!r}, which is not a parameter; the "
        f"parameters are {list(signature.positional) + list(signature.kwonly)}."
    )


def _unfit_call_error(where: str, sig: inspect.Signature, error: TypeError) -> str:
    return (
        f"{where}: the call does not fit the function's parameters {sig}: {error}. Pass "
        "the arguments the function takes."
    )


def _raise_unhashable(statics: tuple[Any, ...], signature: Signature, where: str) -> None:
    refusals = Refusals(where)
    for name, _, value in statics:
        try:
            hash(value)
        except TypeError:
            label = signature.name(name) if isinstance(name, int) else name
            refusals.add(TypeError(_unhashable_static_error(where, label, value)))
    refusals.raise_all()


def _unhashable_static_error(where: str, label: str, value: object) -> str:
    return (
        f"{where}: static argument `{label}` is a {type(value).__name__}, which is not "
        "hashable; static arguments are part of the compile cache key. Pass a tuple "
        "instead of a list, or make it a traced argument."
    )


def as_tuple(x: object) -> tuple[Any, ...]:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, Sequence) and not isinstance(x, str) else (x,)


# --------------------------------------------------------------------------
# in_axes


def check_in_axes(in_axes: Any, where: str) -> None:
    """Every in_axes entry is an int, None or 'per_device'."""
    leaves = jax.tree_util.tree_flatten_with_path(in_axes, is_leaf=lambda x: x is None)[0]
    for path, leaf in leaves:
        ok = leaf is None or leaf == PER_DEVICE
        ok = ok or (isinstance(leaf, int) and not isinstance(leaf, bool))
        if not ok:
            raise ValueError(_bad_in_axes_entry_error(where, path, leaf))


def _bad_in_axes_entry_error(where: str, path: jax.tree_util.KeyPath, leaf: object) -> str:
    return (
        f"{where}: in_axes{jax.tree_util.keystr(path)} is {leaf!r}; each in_axes "
        "entry must be an int (slice along that axis), None (broadcast) or "
        "'per_device' (one entry per device along axis 0)."
    )


def leaf_entries(
    in_axes: InAxes,
    signature: Signature,
    dyn: Dyn,
    where: str,
    is_leaf: Callable[[Any], bool] | None = None,
) -> list[tuple[str, Any, InAxis]]:
    """(name, leaf, in_axes entry) for every leaf of the call, in tree_flatten's order.

    The name is the argument as the user wrote it, with its pytree path.
    `is_leaf` stops the flattening where `partition` stops it (at Variables).
    """
    args, kwargs = dyn
    if isinstance(in_axes, tuple | list):
        # Entries may name parameters the caller left to their defaults (not
        # traced), or passed by keyword: an entry goes with its parameter.
        known = len(signature.positional) if signature.sig is not None else len(args)
        if len(in_axes) < len(args) or len(in_axes) > max(known, len(args)):
            raise ValueError(_in_axes_count_error(where, len(in_axes), len(args), signature))
        pos_axes = list(in_axes)
        by_name = dict(zip(signature.positional, in_axes))
        kw_axes = [by_name.get(k) for k in sorted(kwargs)]  # keyword-only: broadcast
    else:
        pos_axes, kw_axes = [in_axes] * len(args), [in_axes] * len(kwargs)
    labelled = [(signature.name(i), a, ax) for i, (a, ax) in enumerate(zip(args, pos_axes))]
    # In the order tree_flatten gives the leaves: a dict's keys sorted.
    keywords = sorted(kwargs.items())
    labelled += [(k, v, ax) for (k, v), ax in zip(keywords, kw_axes, strict=True)]
    out = []
    for label, arg, axes in labelled:
        try:
            subtrees = jax.tree_util.tree_structure(axes, is_leaf=lambda x: x is None)
            subtrees = subtrees.flatten_up_to(arg)
        except (ValueError, TypeError):
            raise ValueError(_in_axes_prefix_error(where, label, axes, arg)) from None
        entries = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: x is None)[0]
        for (prefix, entry), sub in zip(entries, subtrees, strict=True):
            for path, leaf in jax.tree_util.tree_flatten_with_path(sub, is_leaf=is_leaf)[0]:
                out.append((label + jax.tree_util.keystr((*prefix, *path)), leaf, entry))
    return out


def _in_axes_count_error(where: str, entries: int, args: int, signature: Signature) -> str:
    return (
        f"{where}: in_axes has {entries} entries but the call has {args} "
        f"positional arguments ({signature.names(args)}). Give one entry per "
        "positional argument (None for broadcast), or a single entry for all of them."
    )


def _in_axes_prefix_error(where: str, label: str, axes: InAxes, arg: object) -> str:
    return (
        f"{where}: the in_axes entry for argument `{label}` is {axes!r}, which is not "
        f"a pytree prefix of the argument (structure "
        f"{jax.tree_util.tree_structure(arg)}). Give one entry for the whole argument, "
        "or a tree of entries that matches it."
    )
