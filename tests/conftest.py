"""Test-session settings.

``CUBLAS_WORKSPACE_CONFIG``: cuBLAS reads it when the process makes its first handle, so it is set
before any test touches CUDA; the resume tests run with ``train.deterministic=true`` and need
cuBLAS to be deterministic too.  No effect without CUDA.
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
