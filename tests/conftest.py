import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most tests compile small programs and run them briefly, so compiling is most of the suite's time: XLA's
# backend optimizations are off (`jax_disable_most_optimizations`: LLVM at -O0, its expensive passes skipped),
# which compiles about a third faster and runs slower; results can differ from an optimized build in the last
# bits, and every comparison in a test is between programs compiled alike. The environment variable reaches
# the tests' child processes too (XLA's memory figures are the same at -O0: tests/test_memory.py). A test that
# runs long (learning) or compares programs that agree only when optimized (the sweep modules: a vmapped
# seed's results moved with another seed's values at -O0) is marked `optimized` and compiles as users do. So
# are the modules that mostly run programs already compiled (the runner's resumes, the CLI, the step budget):
# there the slower -O0 programs cost more than their compiles save (those three files: 378 s at -O0, 302 s
# optimized). JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the whole suite optimized.
OPT_OFF = "JAX_DISABLE_MOST_OPTIMIZATIONS"
os.environ.setdefault(OPT_OFF, "1")
# XLA's CPU fusion emitters (its default) compile these small programs about twice as slowly as its older
# elemental emitter, and run them only a little faster: the `debug` chunk at -O0 compiled in 12.3 s against
# 6.6 s with the older emitter and ran in 4.8 s against 5.1 s (2026-12-07; the last session's figures, 8.8
# against 5.9 s, were on a faster day). So the suite and the processes it starts compile with the older
# emitter, where this jaxlib knows the flag: XLA aborts on a flag it does not know, so a child process tries
# it first. Its batched kernels sum in another order than its unbatched ones in more places than the default's
# do, so the one comparison of a trained sweep with its single runs compiles with the default emitter in a
# child process (tests/test_sweep.py). `XLA_FLAGS=--xla_cpu_use_fusion_emitters=true make test` runs the
# suite with the default.
LEGACY_EMITTER = "--xla_cpu_use_fusion_emitters=false"


def _xla_knows(flag: str) -> bool:
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0


# The opt-in Craftax runs (tests/test_craftax.py) compare a sweep's parameters with its single runs' in the
# pytest process itself, so a session that asks for them keeps the default emitter.
_DEFAULT_EMITTER_WANTED = os.environ.get("MBRL_JAX_TEST_CRAFTAX_RUNS") == "1"
if (
    not _DEFAULT_EMITTER_WANTED
    and "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "")
    and _xla_knows(LEGACY_EMITTER)
):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {LEGACY_EMITTER}".strip()


import jax  # noqa: E402

# Tests compile the same programs many times (each run, each resume): a persistent compilation cache shared
# by the whole session turns the repeats into cache hits. Programs that compile in under 0.2 s (single
# operations run outside jit) are left out: writing one costs about 10 ms, a fifth of compiling it, and few
# are loaded back (in a profile of the suite, 327 loads of 8,389 such programs written).
DEFAULT_TEST_CACHE = "/tmp/mbrl_jax_test_xla_cache"
jax.config.update("jax_compilation_cache_dir", os.environ.get("MBRL_JAX_TEST_CACHE", DEFAULT_TEST_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import contextlib  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


@contextlib.contextmanager
def _optimizations(on: bool):
    """Optimized (`on`) or -O0 compiles here and in the processes started meanwhile (they read the
    variable)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", not on)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(OPT_OFF, "0" if on else "1")
            yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def _as_marked(node):
    if node.get_closest_marker("unoptimized"):
        return _optimizations(on=False)
    return _optimizations(on=True) if node.get_closest_marker("optimized") else contextlib.nullcontext()


@pytest.fixture(autouse=True, scope="module")
def _module_optimizations_as_marked(request):
    """A module marked `optimized` (`pytestmark`) compiles with XLA's optimizations on, its module-scoped
    fixtures included (module comment above)."""
    with _as_marked(request.node):
        yield


@pytest.fixture(autouse=True)
def _optimizations_as_marked(request):
    """A test marked `optimized` compiles with XLA's optimizations on (module comment above); one marked
    `unoptimized` in an optimized module compiles at -O0: it compiles a program no other test shares and
    runs it briefly, so the optimized compile would cost more than the faster program saves."""
    with _as_marked(request.node):
        yield


@pytest.fixture
def poison_run(monkeypatch):
    """`poison_run(first_bad, value, params="wm" | None, loss=None)`: from the chunk that ends at env step
    `first_bad` on, the runner's chunk returns the agent's parameters (all, or the subtree `params`) and, if
    given, the metric `loss` set to `value` (inf or nan), with the finite flags of what it returns, as a
    diverging run's chunk would. The run's own compiled chunk runs unchanged and its outputs are spoiled
    after it, so a poisoned run shares its program (and its compile) with the healthy runs of its config."""
    import mbrl_jax.runner as runner

    real_compile = runner._compile
    flags = jax.jit(runner.finite_flags)

    def poison(first_bad: int, value: float, params: str | None = None, loss: str | None = None) -> None:
        spoil = lambda tree: jax.tree.map(lambda x: jnp.full_like(x, value), tree)  # noqa: E731

        def spoiled(chunk):
            def run_chunk(state, plan):
                state, metrics, finite = chunk(state, plan)
                if int(state.env_steps) < first_bad:
                    return state, metrics, finite
                p = state.agent.params
                p = spoil(p) if params is None else p.replace(**{params: spoil(getattr(p, params))})
                if loss is not None:
                    metrics = {**metrics, loss: jnp.full_like(metrics[loss], value)}
                state = state.replace(agent=state.agent.replace(params=p))
                return state, metrics, flags(state, metrics)

            return run_chunk

        def compile_spoiling_the_chunk(lowered, say):
            *others, chunk = real_compile(lowered, say)  # the chunk is the last program compiled
            return [*others, spoiled(chunk)]

        monkeypatch.setattr(runner, "_compile", compile_spoiling_the_chunk)

    return poison


@pytest.fixture
def restore_registries():
    """Puts the agent, backbone, config-group and preset registries back as they were after the test, so
    that a component a test registers does not leak into later tests."""
    import copy

    from mbrl_jax import settings
    from mbrl_jax.agents import AGENTS
    from mbrl_jax.world_models import BACKBONES

    registries = [AGENTS, BACKBONES, settings.REGISTERED_GROUPS, settings.PRESETS, settings.PRESET_OWNERS]
    saved = [copy.copy(r) if r is not settings.REGISTERED_GROUPS else copy.deepcopy(r) for r in registries]
    yield
    for registry, before in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(before)
    settings._changed()


def pytest_collection_modifyitems(config, items):
    """Test files with the most slow tests first (`-n 2 --dist loadfile --no-loadscope-reorder`, as `make
    test` runs them): each worker takes whole files from the front of this order, so the long files start
    at once and the short ones fill the end, instead of one long file at the end holding a worker alone.
    Within a file the order stays as written."""
    slow = {}
    for item in items:
        skipped = any(mark.args and mark.args[0] for mark in item.iter_markers("skipif"))
        runs_long = item.get_closest_marker("slow") is not None and not skipped
        slow[item.path] = slow.get(item.path, 0) + runs_long
    items.sort(key=lambda item: -slow[item.path])
