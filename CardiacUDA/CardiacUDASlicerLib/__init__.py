"""Qt-free helpers of the CardiacUDA Slicer module: MRML nodes <-> files and images, segments, the job runner.

Nothing here imports ``qt`` or ``ctk``, so the same code runs inside Slicer and, for the tests and the
plain-Python batch run, on the ``slicer-core`` wheel. Torch and the heavy parts of ``CardiacUDALib``
are imported only inside the functions that need them.

In a source checkout the library ``CardiacUDALib`` sits beside the module folder, which is all that
Slicer's *Additional module paths* puts on ``sys.path`` (its scan is not recursive, and it adds only the
folder of each module file found): the checkout's root is added here, so that the module, the batch
script and the worker (whose ``PYTHONPATH`` names the library's folder) find it. An installed extension
has both packages in one folder already.
"""

import importlib.util
import sys
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("CardiacUDALib") is None and (_CHECKOUT_ROOT / "CardiacUDALib").is_dir():
    sys.path.append(str(_CHECKOUT_ROOT))
