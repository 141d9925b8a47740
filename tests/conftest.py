"""Suite-wide settings: the full-reference extras.

Tests (or parameters) marked ``reference`` read the full official reference files in
``../shared/reference``, next to a checkout on the project's machines.  Their compact forms ship in
``tests/data`` and run on any clone; without ``../shared/reference`` the ``reference`` items are
deselected, not skipped (``make test`` on a plain clone skips only what needs CUDA or dciodvfy),
and the report header says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
