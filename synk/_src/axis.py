"""The name of the one mesh axis synk runs over.

A leaf: it imports nothing from synk, so every module that names the axis
(the mesh, the collectives, the traced bodies) can import it.
"""

AXIS = "synk"
"""The mesh axis name every synk collective runs over."""
