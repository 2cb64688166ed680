"""synk: Synkhronos-style data parallelism for JAX.

Write a single-device function; ``@synk.function`` runs it on every device,
slicing its batch and combining its outputs so that the result equals the
serial function's for any batch size.
"""

from synk import lax as lax
from synk._src.data import Batch as Batch
from synk._src.data import Data as Data
from synk._src.data import data as data
from synk._src.function import Function as Function
from synk._src.function import function as function
from synk._src.runtime import device_count as device_count
from synk._src.runtime import devices as devices
from synk._src.runtime import init as init
from synk._src.runtime import process_count as process_count
from synk._src.runtime import process_index as process_index

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Data",
    "Function",
    "data",
    "device_count",
    "devices",
    "function",
    "init",
    "lax",
    "process_count",
    "process_index",
]
