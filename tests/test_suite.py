"""The suite's own settings (tests/conftest.py)."""

from pathlib import Path

from conftest import LONGEST_FIRST


def test_the_longest_first_order_names_modules_that_exist():
    """A module renamed or removed would silently fall back to the end of the order."""
    here = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (here / f"{name}.py").is_file()] == []
