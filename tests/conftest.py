"""Test session setup.

Eight simulated CPU devices for every test process, so the data-parallel tests can compare a 1-device
mesh (devices[:1]) with an 8-device mesh in one process. Must run before jax is imported.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Low XLA compile effort for the test session: most of the suite's time is XLA:CPU compiling tiny
# steps (docs/notes/issue27.md), which LLVM's optimisation passes dominate; the executables run
# slower, but these steps are tiny. Numbers move only by float32 reassociation, which every
# tolerance is derived to cover (equivalence tests compare in float64). DAKPN_TEST_XLA_OPT=default
# keeps XLA's defaults (what users run; .ci/run's smoke subset uses it).
# Subprocesses that set their own XLA_FLAGS add XLA_OPT_FLAGS to them: a process compiled at
# another effort can differ from this one by more than round-off (transcendental functions).
XLA_OPT_FLAGS = (
    ""
    if os.environ.get("DAKPN_TEST_XLA_OPT", "low") == "default"
    else "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
for _opt in XLA_OPT_FLAGS.split():
    if _opt.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " " + _opt).strip()

# One persistent compilation cache for the whole session (every xdist worker inherits the variable
# from the controller, which loads this file first): many files compile the same tiny steps (the
# DA-KPN, segmenter and GAN configs' "tiny" variants), and a cached executable is the one a fresh
# compilation produces, so no result changes. A test that needs its own cache (the protocol's
# reuse checks) sets it with persistent_compilation_cache below and restores this one after.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="dakpn-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")
    atexit.register(
        shutil.rmtree, _cache, ignore_errors=True
    )  # the process that made it removes it


import contextlib  # noqa: E402  (after the XLA_FLAGS set-up above, which must precede jax)


@contextlib.contextmanager
def persistent_compilation_cache(directory, min_compile_time_secs=0.0):
    """jax's persistent compilation cache in ``directory`` for the block, then the previous settings.

    Runs that repeat one compilation (a straight and a resumed run, every segmenter of a protocol)
    share it; the executables are the ones a fresh compilation produces, so results do not change.
    """
    import jax  # pylint: disable=import-outside-toplevel

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], str(directory))
    jax.config.update(names[1], min_compile_time_secs)
    jax.config.update(names[2], 0)
    try:
        yield
    finally:
        for n, v in before.items():
            jax.config.update(n, v)


def snapshot(directory):
    """{relative path: (bytes, mtime_ns)} of every file under ``directory``: equal snapshots before
    and after an operation mean it created, changed and touched nothing there."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


def two_domain_batch(seed, n=8, h=32, w=32):
    """A GAN training batch of two visibly different domains: smooth-ish synthetic frames and noisy,
    darker real ones (the synthetic batch reversed), both (n, h, w, 3) float32 in [0, 1]."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    r = np.random.default_rng(seed)
    syn = r.random((n, h, w, 3), dtype=np.float32) * 0.5 + 0.25
    real = np.clip(syn[::-1] * 0.8 + 0.1 * r.standard_normal((n, h, w, 3)).astype(np.float32), 0, 1)
    return {"synthetic": syn, "real": real}


def two_train_steps(module, config):
    """``(jitted step, [s0, s1, s2], [m1, m2])`` of a GAN method module (``init_state`` /
    ``make_train_step``): the state at key 1, then one single-device step on each of
    ``two_domain_batch(0)`` and ``two_domain_batch(1)``. Tests cache it: compiles and CPU steps are
    the cost."""
    import jax  # pylint: disable=import-outside-toplevel

    step = jax.jit(module.make_train_step(config))
    states, metrics = [module.init_state(config, jax.random.key(1))], []
    for i in range(2):
        s, m = step(states[-1], two_domain_batch(i))
        states.append(s)
        metrics.append(m)
    return step, states, metrics


def values_around_half_levels(below: int, count: int):
    """float32 values stepping one ulp at a time through every uint8 rounding boundary (k + 1/2) / 255,
    k = 0..254: ``count`` consecutive floats per boundary, starting ``below`` ulps beneath it."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    vals = []
    for k in range(255):
        v = np.float32((k + 0.5) / 255)
        for _ in range(below):
            v = np.nextafter(v, np.float32(0))
        for _ in range(count):
            vals.append(v)
            v = np.nextafter(v, np.float32(2))
    return vals


# Equivalence in float64 (1 device against 8, two processes against one, resumed against straight):
# see tests/float64_method.py for why. Observed here: <= 2e-11 of a network's scale for DA-KPN
# (whose translation keeps float32 image arithmetic) and ~1e-15 for the all-float64 GAN steps.
# A missing cross-device reduction moves Adam's first moment by tens of per cent of its scale.
FLOAT64_REL = 1e-8
# Steps report their metrics as float32: two float64 values within FLOAT64_REL round to float32
# values at most one ulp apart each way.
METRIC_REL = FLOAT64_REL + 2 * 2.0**-23


def assert_float64_equivalent(
    a, b, *, rel: float = FLOAT64_REL, depth: int = 2, group=None
) -> float:
    """Two state pytrees of one structure agree per network: for each group of leaves that share
    their first ``depth`` keys (``['params']['G']``, ``['opt']['D']``, ...), or the same
    ``group(path)`` when given, every leaf is within ``rel * (largest |value| in the group)`` of the
    other. Per group, not per leaf: a conv bias in front of a normalisation has a true gradient of 0,
    so its own scale is round-off. Returns the worst err / tol (AssertionError naming the leaf if it
    exceeds 1)."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    groups = {}
    for (path, x), y in zip(la, lb):
        key = group(path) if group is not None else jax.tree_util.keystr(path[:depth])
        groups.setdefault(key, []).append(
            (jax.tree_util.keystr(path), np.asarray(x, np.float64), np.asarray(y, np.float64))
        )
    worst = 0.0
    for leaves in groups.values():
        scale = max((float(np.max(np.abs(x))) for _, x, _ in leaves if x.size), default=0.0)
        tol = rel * scale if scale > 0 else rel
        for name, x, y in leaves:
            assert x.shape == y.shape, (name, x.shape, y.shape)
            err = float(np.max(np.abs(x - y))) if x.size else 0.0
            assert err <= tol, (name, err, tol)
            worst = max(worst, err / tol)
    return worst


def float64_config(config, method: str | None = None):
    """A copy of ``config`` that trains ``method`` (default ``config.method``) through
    tests.float64_method (run it inside ``jax.enable_x64(True)``)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.float64_of = method or config.method
        c.method = "tests.float64_method"
    return c


def one_and_eight_device_steps_float64(make_train_step, config, states, batches):
    """``[(s1, s8, m1, m8), ...]``: from each float64-cast ``states[i]``, the jitted step on
    ``batches[i]`` on one device and with the trainer's layout on 8 (state replicated, batch
    sharded on a 1-D "data" mesh), all in float64. Each step starts from the given state, so the
    comparison is of one step's arithmetic, not of chained GAN dynamics."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

    from tests.float64_method import to_float64  # pylint: disable=import-outside-toplevel

    out = []
    with jax.enable_x64(True):
        step = make_train_step(config)
        mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
        rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        step1 = jax.jit(step)
        step8 = jax.jit(step, in_shardings=(rep, dat), out_shardings=(rep, rep))
        for state, batch in zip(states, batches):
            state, batch = to_float64(state), to_float64(batch)
            s1, m1 = step1(state, batch)
            s8, m8 = step8(jax.device_put(state, rep), jax.device_put(batch, dat))
            assert s8["step"].sharding.is_fully_replicated
            out.append(
                (jax.device_get(s1), jax.device_get(s8), jax.device_get(m1), jax.device_get(m8))
            )
    return out


def np_box(x, size):
    """(B, H, W, C) -> (B, h, w, C) box means in float64 (h | H, w | W): the reference of DA-KPN's
    area resize where the cells tile the frame exactly."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    b, H, W, C = x.shape
    h, w = size
    return np.asarray(x, np.float64).reshape(b, h, H // h, w, W // w, C).mean(axis=(2, 4))


def reference_tile_positions(key, batch, frame, tile):
    """(batch, 2) tile corners as DA-KPN's step draws them from ``key``: row and column uniform over
    every legal offset, edges included (the tests' reading of the step's draw)."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    ki, kj = jax.random.split(key)
    i = np.asarray(jax.random.randint(ki, (batch,), 0, frame[0] - tile[0] + 1))
    j = np.asarray(jax.random.randint(kj, (batch,), 0, frame[1] - tile[1] + 1))
    return np.stack([i, j], -1)


def crop(x, pos, tile):
    """The ``tile``-sized window of each image at its corner ``pos[b]``."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    return np.stack(
        [np.asarray(x)[b, i : i + tile[0], j : j + tile[1]] for b, (i, j) in enumerate(pos)]
    )


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core this process may run on (its CPU
    affinity, so ``taskset -c 0`` gives one worker), at most 2: each worker holds a jax runtime
    with 8 simulated devices, and the compile-heavy files gain little from more."""
    del config
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


# The longest files first (pytest --durations on the 2-core machines, 2026-12-03): xdist's loadfile
# scheduler hands files out in collection order, and a five-minute file picked up last leaves the
# other worker idle at the end. Only the order changes; every test still runs.
LONGEST_FIRST = (
    "test_gan_baselines.py",
    "test_protocol.py",
    "test_dakpn.py",
    "test_protocol_real.py",
    "test_trainer.py",
    "test_paper_presets.py",
    "test_multiprocess.py",
    "test_inference.py",
    "test_vsait.py",
    "test_cli.py",
    "test_objectives_cyclegan.py",
    "test_readme_commands.py",
)


def pytest_collection_modifyitems(config, items):
    del config
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(
        key=lambda item: rank.get(item.path.name, len(rank))
    )  # stable: file order kept otherwise


def official_tree(root, pair):
    """Miniature official-layout folders of a benchmark pair (tests/test_datasets.py's builders):
    ``pair`` "gta5" / "synthia" (-> Cityscapes) or "faces" (Face Synthetics -> CelebAMask-HQ).
    Returns the data-config fields that point at them (``synthetic_dir``, ``real_dir``)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import test_datasets as trees  # pylint: disable=import-outside-toplevel

    syn, real = {
        "gta5": ("gta5", "cityscapes"),
        "synthia": ("synthia", "cityscapes"),
        "faces": ("face_synthetics", "celebamask_hq"),
    }[pair]
    rng = np.random.default_rng(0)
    out = {}
    for field, name in (("synthetic_dir", syn), ("real_dir", real)):
        folder = os.path.join(str(root), name)
        trees.TREES[name][1](folder, rng)
        out[field] = folder
    return out


def procedural_batch(data, n, real_offset=0):
    """A DA-KPN training batch from the procedural benchmark of ``data``: synthetic-train frames
    0..n-1 with their labels, and real-train frames ``real_offset``..``real_offset + n - 1`` (an
    offset makes the real frames different scenes from the synthetic ones). Images float32 in [0, 1]."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel

    syn = procedural.make_source("synthetic-train", data)
    real = procedural.make_source("real-train", data)
    items = [syn[i] for i in range(n)]
    return {
        "synthetic": np.stack([it["image"] for it in items]).astype(np.float32) / 255.0,
        "label": np.stack([it["label"] for it in items]),
        "real": np.stack([real[i + real_offset]["image"] for i in range(n)]).astype(np.float32)
        / 255.0,
    }
