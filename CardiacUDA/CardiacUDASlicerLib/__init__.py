"""Qt-free helpers of the CardiacUDA Slicer module: MRML nodes <-> files and images, segments, the job runner.

Nothing here imports ``qt`` or ``ctk``, so the same code runs inside Slicer and, for the tests and the
plain-Python batch run, on the ``slicer-core`` wheel. Torch and the heavy parts of ``CardiacUDALib``
are imported only inside the functions that need them.
"""
