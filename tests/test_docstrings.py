"""The examples in the package's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import dbm_ltr

MODULES = sorted(m.name for m in pkgutil.walk_packages(dbm_ltr.__path__, "dbm_ltr."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_examples_are_found():
    """An example reformatted out of doctest's ``>>>`` form would stop running unnoticed: the
    number of examples found only grows (38, in 16 docstrings, when this was written)."""
    finder = doctest.DocTestFinder()
    found = sum(len(test.examples) for name in MODULES for test in finder.find(importlib.import_module(name)))
    assert found >= 38, found
