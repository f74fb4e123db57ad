"""The Usage blocks written as doctests run, so what they show is what the code does."""

import doctest
import importlib

import pytest

DOCTESTED = ["registry", "settings"]  # modules whose Usage block is a doctest


@pytest.mark.parametrize("name", DOCTESTED)
def test_usage_block_runs(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
