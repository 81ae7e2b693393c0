"""tests/conftest.py compiles tests at -O0 unless they are marked `optimized`: the mark turns XLA's
optimizations on for that test alone."""

import os

import jax
import pytest


def _optimizations_off() -> bool:
    return jax.config.read("jax_disable_most_optimizations")


SUITE_SETTING = _optimizations_off()  # at import, outside any test: the suite's own setting


def test_the_suite_compiles_as_the_environment_says():
    # tests/conftest.py sets JAX_DISABLE_MOST_OPTIMIZATIONS=1 unless it is set; =0 runs the suite optimized
    assert SUITE_SETTING == (os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() not in ("0", "false"))


@pytest.mark.optimized
def test_a_marked_test_compiles_optimized():
    assert not _optimizations_off()


def test_an_unmarked_test_after_it_compiles_as_the_suite_does():
    assert _optimizations_off() == SUITE_SETTING
