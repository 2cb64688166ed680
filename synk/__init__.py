"""synk: Synkhronos-style data parallelism for JAX.

Write a single-device function; ``@synk.function`` runs it on every device,
slicing its batch and combining its outputs so that the result equals the
serial function's for any batch size.
"""

from synk import lax as lax
from synk._src.collectives import all_gather as all_gather
from synk._src.collectives import all_reduce as all_reduce
from synk._src.collectives import reduce as reduce
from synk._src.data import Data as Data
from synk._src.data import data as data
from synk._src.first import first_rows as first_rows
from synk._src.function import Function as Function
from synk._src.function import function as function
from synk._src.runtime import device_count as device_count
from synk._src.runtime import devices as devices
from synk._src.runtime import global_batch as global_batch
from synk._src.runtime import init as init
from synk._src.runtime import process_count as process_count
from synk._src.runtime import process_index as process_index
from synk._src.runtime import process_share as process_share
from synk._src.transfers import broadcast as broadcast
from synk._src.transfers import gather as gather
from synk._src.transfers import get_value as get_value
from synk._src.transfers import scatter as scatter
from synk._src.transfers import set_value as set_value
from synk._src.views import Batch as Batch

__version__ = "0.2.0"

__all__ = [
    "Batch",
    "Data",
    "Function",
    "all_gather",
    "all_reduce",
    "broadcast",
    "data",
    "device_count",
    "devices",
    "first_rows",
    "function",
    "gather",
    "get_value",
    "global_batch",
    "init",
    "lax",
    "process_count",
    "process_index",
    "process_share",
    "reduce",
    "scatter",
    "set_value",
]
