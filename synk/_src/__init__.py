"""synk's implementation; the public names are in `synk`. Its frames are left
out of the tracebacks of errors that reach the user (`compat.hide_frames`)."""

import os

from synk._src import compat

compat.hide_frames(os.path.dirname(os.path.abspath(__file__)))
