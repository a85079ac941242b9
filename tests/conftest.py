"""Shared test configuration.

Tests run in float64 by default (``jax_enable_x64``); ``--float32`` or ``JAXDIFF_TEST_FLOAT32=1``
runs the precision-dependent part of the suite in float32 (see ``pytest_collection_modifyitems``).
CI runs both.  The library itself never changes JAX's config.
"""

import os
from pathlib import Path

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--float32", action="store_true", default=False, help="run the suite in float32")


def pytest_configure(config):
    import jax

    float32 = config.getoption("--float32") or os.environ.get("JAXDIFF_TEST_FLOAT32") == "1"
    os.environ["JAXDIFF_TEST_FLOAT32"] = "1" if float32 else "0"
    jax.config.update("jax_enable_x64", not float32)
    _share_compilations(jax)


def _share_compilations(jax):
    """One persistent XLA cache per test session, shared by the xdist workers.

    Many tests compile the same programs (the same shapes through different wrappers, and each
    worker compiles what the other already has); compilation is most of the suite's time on two
    cores.  The controller makes a fresh directory (so no run sees another's programs) and the
    workers inherit it through the environment.  ``JAXDIFF_TEST_COMPILE_CACHE=0`` turns it off.
    """
    if os.environ.get("JAXDIFF_TEST_COMPILE_CACHE", "1") == "0":
        return
    path = os.environ.get("JAXDIFF_TEST_CACHE_DIR")
    if not path:
        import tempfile

        path = tempfile.mkdtemp(prefix="jaxdiff-test-xla-")
        os.environ["JAXDIFF_TEST_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


#: Fixtures through which a test depends on the precision of the run.
PRECISION_FIXTURES = frozenset({"float_dtype", "x64", "rtol", "need_x64"})


def pytest_collection_modifyitems(config, items):
    """Decide which tests run in which of the two runs (float64, float32) of CI, and their order.

    * Tests marked ``once_in_float32`` run once per CI: in the float32 run.  They are the
      full-size science scenes (2048^2 star fields, crowded Moffat fields, 1024^2 noise
      statistics) and the ``jaxdiff`` command, which users run in JAX's default float32.  float64
      agreement is tested on the small images against float64 references.
    * Tests that take none of :data:`PRECISION_FIXTURES` (the shell's errors, configs, metadata,
      file handling, the simulator's bookkeeping) run once: in the float64 run.  Every test whose
      numbers depend on the precision asks for ``float_dtype`` / ``x64`` / ``rtol`` and runs in both.
    * The notebooks (minutes each) are scheduled first, so that they do not form a long tail.

    ``JAXDIFF_TEST_ALL=1`` runs every test in both runs.
    """
    import jax

    items.sort(key=lambda it: 0 if "test_notebooks" in it.nodeid else 1)  # stable: the rest keeps its order
    if os.environ.get("JAXDIFF_TEST_ALL") == "1":
        return
    if jax.config.jax_enable_x64:
        skip = pytest.mark.skip(reason="run once, in the float32 run (JAXDIFF_TEST_ALL=1 runs it here too)")
        for item in items:
            if item.get_closest_marker("once_in_float32"):
                item.add_marker(skip)
        return
    skip32 = pytest.mark.skip(reason="precision-independent: run once, in the float64 run (JAXDIFF_TEST_ALL=1 runs it "
                                     "here too)")  # fmt: skip
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if not item.get_closest_marker("once_in_float32") and not fixtures & PRECISION_FIXTURES:
            item.add_marker(skip32)


def pytest_report_header(config):
    import jax

    return f"jaxdiff tests: jax {jax.__version__}, x64={jax.config.jax_enable_x64}, backend={jax.default_backend()}"


@pytest.fixture(scope="session")
def x64():
    """True when the suite runs in float64."""
    import jax

    return bool(jax.config.jax_enable_x64)


@pytest.fixture(scope="session")
def float_dtype(x64):
    return np.float64 if x64 else np.float32


@pytest.fixture(scope="session")
def rtol(x64):
    """Default relative tolerance for comparisons against float64 references."""
    return 1e-10 if x64 else 1e-4


def _shared_dir():
    env = os.environ.get("JAXDIFF_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
    """The project's ``shared/`` folder (beside the repository); skips data tests if absent."""
    path = _shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"shared data folder not found at {path} (set JAXDIFF_SHARED)")
    return path


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic per test."""
    import jax

    state = {"key": jax.random.key(0)}

    def _next():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _next


class CompileCounter:
    """Counts JAX traces and XLA compilations while active (public ``jax.monitoring`` events).

    Use as ``with CompileCounter() as c: ...; assert c.compiles == 0``.  The listener sees every
    jitted function (the library's own ``jax.jit`` wrappers included), so a second call with new data
    of the same shapes and dtypes must report no new traces or compilations.  Eager operations
    compile too: build the inputs before entering.
    """

    TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
    COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.traces = 0
        self.compiles = 0

    def _listener(self, event, duration_secs, **kwargs):
        if event == self.TRACE_EVENT:
            self.traces += 1
        elif event == self.COMPILE_EVENT:
            self.compiles += 1

    def __enter__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)
        return False


@pytest.fixture
def compile_counter():
    """A fresh :class:`CompileCounter` (enter it with ``with``)."""
    return CompileCounter()
