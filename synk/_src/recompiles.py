"""A warning for static parts of the arguments that keep taking new values.

Each new value of a static leaf compiles the function anew (`partition`'s
rule: Python numbers inside objects are static, as under
``equinox.filter_jit``). `Recompiles` notes every plan built and warns once
where that keeps happening for arguments of the same shapes.
"""

from __future__ import annotations

import warnings

from synk._src.partition import NUMBERS, Call, Static, Structure, leaf_key


class Recompiles:
    """Warns once when a static part of the arguments keeps taking new values.

    Each value compiles the function anew; a hyperparameter kept as a Python
    float field of a module and changed every step would silently recompile
    every step. A number inside an object is named; other static parts (a
    field marked static, an object that is no pytree) show as new executables
    for arguments of the same shapes and dtypes.
    """

    LIMIT = 5

    def __init__(self) -> None:
        self._seen: dict[tuple, set] = {}
        self._warned: set[tuple] = set()

    def note(self, where: str, structure: Structure, names: list[str], call: Call) -> None:
        shapes = ("shapes", tuple(leaf_key(x) for x in call.traced))
        keys = self._seen.setdefault(shapes, set())
        keys.add(call.key)
        for i, slot in enumerate(structure.slots):
            if type(slot) is not Static or type(slot.value) not in NUMBERS:
                continue
            at = (structure.treedef, i)
            values = self._seen.setdefault(at, set())
            values.add(slot.key)
            if len(values) >= self.LIMIT and at not in self._warned:
                self._warned.update((at, shapes))
                warnings.warn(
                    f"{where}: `{names[i]}` is a Python {type(slot.value).__name__} inside an "
                    f"object, which synk keeps static (as equinox.filter_jit does); it has "
                    f"taken {len(values)} different values, and each one compiles the function "
                    "anew. Make it an array (jnp.asarray(value)) to trace it, or pass it as an "
                    "argument of its own (Python numbers there are traced).",
                    stacklevel=4,
                )
        if len(keys) >= self.LIMIT and shapes not in self._warned:
            self._warned.add(shapes)
            warnings.warn(
                f"{where}: compiled {len(keys)} times for arguments of the same shapes and "
                "dtypes: a static part of them keeps changing (a Python number or a field "
                "marked static inside a module, an object that is not a pytree, a function "
                "made anew each call). Each new value compiles anew. Keep what changes in "
                "arrays, or pass it as an argument of its own.",
                stacklevel=4,
            )
