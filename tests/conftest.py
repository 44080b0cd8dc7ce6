"""Test session setup.

Eight simulated CPU devices for every test process, so the data-parallel tests can compare a 1-device
mesh (devices[:1]) with an 8-device mesh in one process. Must run before jax is imported.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import contextlib  # noqa: E402  (after the XLA_FLAGS set-up above, which must precede jax)


@contextlib.contextmanager
def persistent_compilation_cache(directory, min_compile_time_secs=0.0):
    """jax's persistent compilation cache in ``directory`` for the block, then the previous settings.

    Runs that repeat one compilation (a straight and a resumed run, every segmenter of a protocol)
    share it; the executables are the ones a fresh compilation produces, so results do not change.
    """
    import jax  # pylint: disable=import-outside-toplevel
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
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


def official_tree(root, pair):
    """Miniature official-layout folders of a benchmark pair (tests/test_datasets.py's builders):
    ``pair`` "gta5" / "synthia" (-> Cityscapes) or "faces" (Face Synthetics -> CelebAMask-HQ).
    Returns the data-config fields that point at them (``synthetic_dir``, ``real_dir``)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import test_datasets as trees  # pylint: disable=import-outside-toplevel
    syn, real = {"gta5": ("gta5", "cityscapes"), "synthia": ("synthia", "cityscapes"),
                 "faces": ("face_synthetics", "celebamask_hq")}[pair]
    rng = np.random.default_rng(0)
    out = {}
    for field, name in (("synthetic_dir", syn), ("real_dir", real)):
        folder = os.path.join(str(root), name)
        trees.TREES[name][1](folder, rng)
        out[field] = folder
    return out
