"""Suite-wide settings: the full-reference extras, and cuBLAS determinism.

Tests (or parameters) marked ``reference`` read the full official reference files in
``../shared/reference``, next to a checkout on the project's machines.  Their compact forms ship in
``tests/data`` and run on any clone; without ``../shared/reference`` the ``reference`` items are
deselected, not skipped (``make test`` on a plain clone skips only what needs CUDA or dciodvfy),
and the report header says so.

``CUBLAS_WORKSPACE_CONFIG``: cuBLAS reads it when the process makes its first handle, so it is set
before any test touches CUDA; the resume tests run with ``train.deterministic=true`` and need
cuBLAS to be deterministic too.  No effect without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def pytest_report_header(config) -> str:
    if REFERENCE.is_dir():
        return f"full reference: {REFERENCE} (tests marked 'reference' run too)"
    return f"full reference: {REFERENCE} absent; tests marked 'reference' are deselected (compact forms in tests/data run)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REFERENCE.is_dir():
        return
    extras = [item for item in items if item.get_closest_marker("reference") is not None]
    if extras:
        config.hook.pytest_deselected(items=extras)
        items[:] = [item for item in items if item.get_closest_marker("reference") is None]
