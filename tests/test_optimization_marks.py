"""tests/conftest.py compiles tests at -O0 unless they are marked `optimized`: the mark turns XLA's
optimizations on for that test alone, and for the processes it starts (`unoptimized` turns them off again
for one test of an optimized module); XLA's older CPU emitter is on where the jaxlib knows its flag."""

import os
import subprocess
import sys

import jax
import pytest


def _optimizations_off() -> bool:
    return jax.config.read("jax_disable_most_optimizations")


def _child_optimizations_off() -> bool:
    """The setting a process started now compiles with (as the multi-host and CLI tests start theirs)."""
    code = "import jax; print(jax.config.read('jax_disable_most_optimizations'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


SUITE_SETTING = _optimizations_off()  # at import, outside any test: the suite's own setting


def test_the_suite_compiles_as_the_environment_says():
    # tests/conftest.py sets JAX_DISABLE_MOST_OPTIMIZATIONS=1 unless it is set; =0 runs the suite optimized
    assert SUITE_SETTING == (os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() not in ("0", "false"))


@pytest.mark.optimized
def test_a_marked_test_compiles_optimized_and_so_do_its_child_processes():
    assert not _optimizations_off()
    assert not _child_optimizations_off()


@pytest.mark.optimized  # as a module's mark would
@pytest.mark.unoptimized
def test_unoptimized_in_an_optimized_module_compiles_at_o0_and_so_do_its_child_processes():
    assert _optimizations_off()
    assert _child_optimizations_off()


def test_an_unmarked_test_after_it_compiles_as_the_suite_does():
    assert _optimizations_off() == SUITE_SETTING
    assert _child_optimizations_off() == SUITE_SETTING


def test_an_xla_flag_is_set_only_where_this_jaxlib_knows_it():
    """The probe behind the suite's emitter flag: a flag XLA does not know aborts the process that reads
    it, so the probe answers no and the suite starts with its flags as they were."""
    from conftest import _DEFAULT_EMITTER_WANTED, LEGACY_EMITTER, _xla_knows

    assert not _xla_knows("--xla_cpu_no_such_flag_in_any_jaxlib=true")
    assert _xla_knows("--xla_force_host_platform_device_count=2")
    flags = os.environ.get("XLA_FLAGS", "")
    default_asked = _DEFAULT_EMITTER_WANTED or "--xla_cpu_use_fusion_emitters=true" in flags
    assert (LEGACY_EMITTER in flags) == (_xla_knows(LEGACY_EMITTER) and not default_asked)
