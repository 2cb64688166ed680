"""synk.function: plan a call once per signature, then dispatch it cheaply.

The map of a call, one module per step, in call order:

1. `function` (here): ``Function.__call__`` binds the arguments to the wrapped function's
   signature and takes out the statics (`signature`), partitions the rest into traced leaves and
   the call's key by one rule (`partition`: arrays and plain Python numbers traced, the fields of
   objects static, Flax NNX Variables as state), and looks up a plan by the key.
2. On a miss, `plan.Plan.build`:
   - several processes agree on the call (`agreement`);
   - each traced leaf gets its role, sliced, broadcast or per-device (`roles`); a static number
     that keeps changing is warned about (`recompiles`);
   - with no ``reduce`` (the default path, `partitioned`): the whole function is compiled for the
     whole batch, sharded over the devices, an uneven batch padded (`split.Pad`), and XLA's
     partitioner places the collectives;
   - with explicit reductions: the batch is split over the devices and num_slices (`split`); the
     function is traced abstractly and the reduce spec matched to its outputs (`abstract`,
     `outputs`); the executable's arguments are laid out (`layout`) and the per-device body
     compiled as one ``jit(shard_map(body))`` followed, in the same jit, by the reduction of each
     output over the devices (`body`, `reduce`, with the dtypes that travel from `wire` and the
     derivatives of max/min at ties from `ties`); `placement` decides how each leaf reaches the
     executable;
   - with explicit reductions and a batch that can share a bucket (`buckets`): the bucket's
     executable, built at its first length, runs each device's real rows as pieces of a fixed
     ladder; a new length gets only its own placer, which deals and pads the rows. Inside a
     trace, ``synk.first_rows`` batches (`first`) take a bucket's executable too.
3. A hit with several processes agrees on the call (one hash, `agreement`).
4. ``plan.place`` carries out what was decided per leaf: host arrays go to jit as they are (its
   in_shardings place them), or padded; device arrays already laid out pass through; synk.Data
   views hand over their data and indices.
5. The executable runs; on CPU, `throttle` bounds the calls in flight. What the function wrote
   into NNX Variables is written back to the caller's (`partition.Call.write_back`), and static
   outputs are put back (`outputs.Outputs`).

A repeated call costs one ``tree_flatten`` and a pass over its leaves, one dict lookup, the
placement, one jit dispatch and one ``tree_unflatten``. The modules beside a call: `synk._src`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast, overload

import jax
from jax.typing import DTypeLike

from synk._src import agreement, allgather, compat, first, roles, serial
from synk._src import lax as synk_lax
from synk._src.buckets import Buckets, as_option
from synk._src.core import Core
from synk._src.options import UNCHANGED, Options, Unchanged
from synk._src.partition import partition
from synk._src.plan import Plan
from synk._src.reduce import ReduceSpec
from synk._src.signature import InAxes
from synk._src.throttle import throttle

# --------------------------------------------------------------------------
# The decorator


if TYPE_CHECKING:  # the overloads' keywords, for type checkers only
    from typing_extensions import TypedDict, Unpack

    class FunctionOptions(TypedDict, total=False, closed=True):
        """The keyword arguments of `function` (see its docstring)."""

        in_axes: InAxes
        reduce: ReduceSpec
        num_slices: int
        static_argnums: int | Sequence[int]
        static_argnames: str | Sequence[str]
        donate_argnums: int | Sequence[int]
        devices: Sequence[jax.Device] | int | None
        comm_dtype: DTypeLike | None
        buckets: Buckets


@overload
def function(fn: Callable[..., Any], /, **options: Unpack[FunctionOptions]) -> Function: ...
@overload
def function(
    fn: None = None, /, **options: Unpack[FunctionOptions]
) -> Callable[[Callable[..., Any]], Function]: ...


@compat.api_boundary
def function(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    in_axes: InAxes = 0,
    reduce: ReduceSpec = None,
    num_slices: int = 1,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    devices: Sequence[jax.Device] | int | None = None,
    comm_dtype: DTypeLike | None = None,
    buckets: Buckets = "geometric",
) -> Function | Callable[[Callable[..., Any]], Function]:
    """Replicate a single-device function over every device, exactly.

    The wrapped function is written for one device and a whole batch; synk slices its batch over
    the devices so that the result equals ``fn(*args)`` on one device, for any batch size. With
    no ``reduce`` (the default) the whole function runs under XLA's partitioner, exact for any
    function; with explicit reductions it runs on each device's rows and combines their outputs.

    Args:
      fn: the function. Use ``@synk.function`` bare or ``@synk.function(...)``.
      in_axes: for each positional argument (a pytree prefix of them, like ``jax.vmap``): an
        int, slice along that axis (default 0); ``None``, broadcast (every device sees the whole
        value); ``'per_device'``, the value has a leading axis of length ``device_count()`` and
        device i sees entry i. Python numbers and 0-d arrays are always broadcast. Keyword-only
        arguments take a single (non-tuple) ``in_axes``, else they are broadcast.
      reduce: None (default): outputs as the function returns them on one device, for any
        function (batch statistics, root mean squares, dropout from one key, per-row outputs).
        Or explicit reductions, the statement that outputs combine over rows, one op or a pytree
        prefix of the outputs: ``'avg'`` (outputs are means over rows; weighted by rows),
        ``'sum'``, ``'max'``, ``'min'``, ``'prod'``, ``'gather'`` (one row per input row,
        concatenated in input order), ``'per_device'`` (no reduction). ``num_slices``,
        ``comm_dtype``, ``'per_device'`` in_axes and collectives across devices need them.
      num_slices: each device runs its rows as this many sequential pieces and accumulates them:
        less memory per step, the same result (explicit reductions only).
      static_argnums: positions of arguments that are compile-time constants.
      static_argnames: names of arguments that are compile-time constants.
      donate_argnums: positions of arguments whose device buffers the call may reuse (effective
        for device arrays already laid out for the call).
      devices: the devices to run on: a sequence of jax devices, or an int (the first that
        many). Default: every device.
      comm_dtype: floating outputs are reduced in this dtype (e.g. ``jnp.bfloat16``) and cast
        back; complex outputs travel as their real and imaginary parts in it. ``'avg'`` divides
        before the cast, so it overflows only where the mean itself would; other reductions
        beyond the dtype's range (65504 for float16) become inf. Without it, float16 and
        bfloat16 outputs are reduced in float32.
      buckets: with explicit reductions, batch lengths that share one executable.
        ``'geometric'`` (default): each batch gets a capacity of the next power of two rows per
        device, so a few executables serve every length; a sequence of batch lengths, e.g.
        ``(256, 1024)``: the smallest that holds the batch (longer batches compile their own);
        None: each length compiles its own. A bucket pads what travels (up to 2x the rows,
        'geometric'), never what the function sees: each device runs its real rows only, as
        pieces of a few fixed sizes. Calls inside a trace, with synk.lax collectives, 'gather'
        or 'per_device' outputs, or batches already on the devices as arrays (pass synk.data
        views) compile per length.

    Returns:
      A `synk.Function`: call it like ``fn``.

    Raises:
      ValueError, TypeError: bad options (num_slices without an explicit reduce, say).

    Example:
      >>> import numpy as np, jax.numpy as jnp, synk
      >>> @synk.function(in_axes=(None, 0))
      ... def mse(w, x):
      ...     return jnp.mean((x @ w) ** 2)
      >>> w, x = np.ones(3, np.float32), np.ones((1001, 3), np.float32)
      >>> float(mse(w, x))  # 1001 rows over every device; equals mse.serial(w, x)
      9.0
      >>> rms = synk.function(lambda w, x: jnp.sqrt(jnp.mean((x @ w) ** 2)), in_axes=(None, 0))
      >>> float(rms(w, x))  # not a mean over rows: exact all the same
      3.0
      >>> total = synk.function(lambda x: x.sum(), reduce="sum")  # a row-separable sum
      >>> float(total.with_options(num_slices=2)(np.ones(64)))  # in 2 pieces per device
      64.0
    """
    if fn is None:  # a partial of the overloaded function: its type is the second overload's
        return cast(
            Callable[[Callable[..., Any]], Function],
            functools.partial(
                function,
                in_axes=in_axes,
                reduce=reduce,
                num_slices=num_slices,
                static_argnums=static_argnums,
                static_argnames=static_argnames,
                donate_argnums=donate_argnums,
                devices=devices,
                comm_dtype=comm_dtype,
                buckets=buckets,
            ),
        )
    if not callable(fn):
        raise TypeError(f"synk.function expects a callable, got {type(fn).__name__}.")
    core = Core.of(fn, in_axes, static_argnums, static_argnames, donate_argnums, devices)
    return Function(core, Options.of(reduce, num_slices, comm_dtype, core.where, buckets))


# --------------------------------------------------------------------------
# The public object


class Function:
    """A single-device function replicated over every device. See `synk.function`.

    Example:
      >>> import synk
      >>> synk.function(lambda x: x.sum())
      synk.Function(<lambda>, in_axes=0, reduce=None, path='whole', devices=8xcpu, compiled=0)
    """

    def __init__(self, core: Core, options: Options) -> None:
        self._core = core
        self._options = options
        self._key = options.key
        functools.update_wrapper(self, core.fn)

    @compat.api_boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` over the devices, on its batch split between them.

        Args:
          args, kwargs: its arguments, each sliced, broadcast or per device by ``in_axes``.

        Returns:
          ``fn(*args, **kwargs)``'s outputs for the whole batch, as on one device.

        Raises:
          TypeError, ValueError, IndexError, RuntimeError: arguments refused before anything runs.

        Example:
          >>> import numpy as np, synk
          >>> float(synk.function(lambda x: x.sum())(np.ones(1001)))  # 1001 rows, every device
          1001.0
        """
        core = self._core
        if synk_lax.inside():
            # Called inside another synk.Function's body (or f.serial): that
            # function already runs on the devices, and this one is part of it,
            # as an undecorated function would be: the serial result.
            return core.fn(*args, **kwargs)
        statics, dyn = core.bind(args, kwargs)
        call = partition(dyn)
        leaves = call.traced
        key = (self._key, statics, call.key)
        if call.tracing and core.groups > 1 and not compat.under_jit():
            # An eager jax.grad or vmap under several processes: host arrays are
            # still each process's share, as in an eager call; gathered whole, the
            # call goes on as inside a trace, where every value is global.
            traced, _ = roles.entries(core, dyn, call, call.structure())
            call.traced = leaves = allgather.shares(core.where, traced)
            key = (*key, "gathered")
        plan = core.cache.get(key)
        share = True
        if plan is not None and plan.shared and not plan.sharing_holds(leaves):
            # synk.Data views planned to share one index no longer have equal indices.
            key, share = (*key, "unshared"), False
            plan = core.cache.get(key)
        if plan is None:  # building agrees across processes itself
            core.signature.check(args, kwargs, core.where)
            if first.slots(call.treedef) and not first.traced_count(call):
                # synk.first_rows with a count known here: simply its rows.
                return self(*first.concrete(args), **first.concrete(kwargs))
            plan = core.cache[key] = Plan.build(core, self._options, statics, dyn, call, share)
        elif plan.digest is not None:  # several processes: all must make this same call
            agreement.agree(core.where, plan.description, plan.digest, plan.values(leaves))
        out = plan.jitted(*(leaves if plan.place is list else plan.place(leaves)))
        if plan.eager:  # inside a trace the outer executable is what runs
            throttle(out[0] if out else None, core.platform)
        result, new = jax.tree_util.tree_unflatten(plan.out.treedef, out)
        if new:  # Flax NNX Variables the function wrote into
            call.write_back(new, plan.structure)
        return plan.outputs.restore(result)

    @property
    def path(self) -> str:
        """How a call runs, ``'whole'`` or ``'per-device'``.

        ``'whole'`` with no reduce (the whole function under XLA's partitioner, exact for any
        function); ``'per-device'`` with explicit reductions (each device's rows, outputs combined).
        """
        return "whole" if self._options.reduce is None else "per-device"

    @compat.api_boundary
    def with_options(
        self,
        *,
        reduce: ReduceSpec | Unchanged = UNCHANGED,
        num_slices: int | None = None,
        comm_dtype: DTypeLike | None = None,
        buckets: Buckets | Unchanged = UNCHANGED,
    ) -> Function:
        """The same function with other options; shares the compile cache.

        Args:
          reduce: a new reduce spec (see `synk.function`), or None for the whole
            function under XLA's partitioner; default: unchanged.
          num_slices: a new number of sequential pieces per device.
          comm_dtype: a new dtype for reductions to travel in.
          buckets: a new bucket policy (see `synk.function`); None turns them off.

        Returns:
          A `synk.Function`. Calling it compiles once per new option set; the object itself is
          cached, so calling ``with_options`` in a loop is cheap.

        Raises:
          ValueError, TypeError: an option that `synk.function` refuses.

        Example:
          >>> import numpy as np, synk
          >>> g = synk.function(lambda x: x.sum(), reduce="sum").with_options(num_slices=2)
          >>> float(g(np.arange(32.0)))
          496.0
        """
        opts = self._options
        if buckets is not UNCHANGED:  # checked before it keys the variants
            buckets = as_option(buckets, self._core.where)
        new = Options(
            opts.reduce if reduce is UNCHANGED else reduce,
            opts.num_slices if num_slices is None else num_slices,
            opts.comm_dtype if comm_dtype is None else comm_dtype,
            opts.buckets if buckets is UNCHANGED else buckets,
        )
        variants = self._core.variants
        hit = variants.get(new.key)
        if hit is None:
            checked = Options.of(
                new.reduce, new.num_slices, new.comm_dtype, self._core.where, new.buckets
            )
            hit = variants[new.key] = Function(self._core, checked)
        return hit

    @compat.api_boundary
    def serial(self, *args: Any, **kwargs: Any) -> Any:
        """Run the undecorated function on one device: the reference result.

        Args:
          args, kwargs: what a call takes; it writes into Flax NNX Variables as a call does.

        Returns:
          ``fn(*args, **kwargs)``'s outputs, from one device (jitted once per call signature).

        Raises:
          TypeError, ValueError, IndexError, RuntimeError: arguments that a call refuses.

        Example:
          >>> import numpy as np, synk
          >>> f, x = synk.function(lambda x: (x**2).mean()), np.arange(10.0)
          >>> bool(np.isclose(f(x), f.serial(x)))
          True
        """
        return serial.call(self._core, args, kwargs)

    @compat.api_boundary
    def lower(self, *args: Any, **kwargs: Any) -> jax.stages.Lowered:
        """JAX's ``Lowered`` for these arguments: inspect the HLO and its collectives.

        Args:
          args, kwargs: what a call takes; a ``jax.ShapeDtypeStruct`` stands for an array.

        Returns:
          A ``jax.stages.Lowered`` (nothing has run), its program named for the path the function
          takes: ``jit_synk_whole_<name>`` or ``jit_synk_per_device_<name>``.

        Raises:
          TypeError, ValueError, IndexError, RuntimeError: arguments that a call refuses.

        Example:
          >>> import numpy as np, synk
          >>> f = synk.function(lambda x: x.mean())
          >>> "all-reduce" in f.lower(np.ones(16)).compile().as_text()
          True
        """
        core = self._core
        core.signature.check(args, kwargs, core.where)
        statics, dyn = core.bind(args, kwargs)
        call = partition(dyn)
        # Shapes alone (jax.ShapeDtypeStruct) lower as arrays of zeros would.
        call.traced = [
            compat.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x
            for x in call.traced
        ]
        plan = Plan.build(core, self._options, statics, dyn, call)
        return plan.jitted.lower(*plan.place(call.traced))

    @property
    def options(self) -> dict[str, Any]:
        """The options this function was built with."""
        o = self._options
        return {
            "reduce": o.reduce,
            "num_slices": o.num_slices,
            "comm_dtype": o.comm_dtype,
            "buckets": o.buckets,
        }

    def __repr__(self) -> str:
        core, o = self._core, self._options
        n = len(core.devices)
        kind = core.devices[0].platform
        extras = ""
        if o.reduce is not None:
            extras = f", num_slices={o.num_slices}"
            extras += f", comm_dtype={o.comm_dtype}" if o.comm_dtype is not None else ""
            extras += f", buckets={o.buckets!r}"
        return (
            f"synk.Function({core.name}, in_axes={core.in_axes!r}, reduce={o.reduce!r}, "
            f"path={self.path!r}{extras}, devices={n}x{kind}, compiled={core.compiled})"
        )
