"""Any method module, run in float64: the equivalence tests' instrument (1 device against 8, two
processes against one, a scanned step against single steps).

Why: those tests compare two computations that differ only in summation order. In float32 that
order moves results by round-off that depends on the processor (XLA's CPU code tiles reductions
per machine), and Adam's ``g / (sqrt(v) + eps)`` turns round-off on a near-zero gradient into a
weight change of up to ``lr``; a tolerance fitted to one machine's rounding fails on another. In
float64 that round-off is ~1e-16 of each network's scale, far below Adam's eps, so a tolerance of
``FLOAT64_REL`` (tests/conftest.py) holds on any processor, while a missing cross-device reduction
or a per-shard statistic still moves results by tens of per cent.

Use: ``config.method = "tests.float64_method"`` and ``config.float64_of = "<the method>"``, inside
``jax.enable_x64(True)`` (or ``JAX_ENABLE_X64=1`` for a subprocess). ``init_state`` casts every
floating leaf of the wrapped method's state to float64 and the train step casts every floating
array of the batch; everything else (iterators, evaluation, translators) is the wrapped module's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float64(tree):
    """Every floating-point leaf of ``tree`` as float64 (needs x64 enabled); other leaves unchanged."""

    def cast(x):
        dtype = getattr(x, "dtype", None)
        return (
            jnp.asarray(x, jnp.float64)
            if dtype is not None and jnp.issubdtype(dtype, jnp.floating)
            else x
        )

    return jax.tree.map(cast, tree)


_last = {}  # the module wrapped last: next_batch(iterators) gets no config to look it up


def _inner(config):
    from dakpn_jax.training import get_method  # pylint: disable=import-outside-toplevel

    if not jax.config.jax_enable_x64:
        raise ValueError(
            "tests.float64_method needs jax_enable_x64 (jax.enable_x64(True) or JAX_ENABLE_X64=1)"
        )
    _last["module"] = get_method(config.float64_of)
    return _last["module"]


def init_state(config, rng):
    return to_float64(_inner(config).init_state(config, rng))


def make_train_step(config):
    step = _inner(config).make_train_step(config)
    return lambda state, batch: step(state, to_float64(batch))


def make_iterators(config, **kwargs):
    return _inner(config).make_iterators(config, **kwargs)


def next_batch(iterators):
    return _last["module"].next_batch(iterators)


def __getattr__(name):  # make_iterators, next_batch, evaluate, ...: the wrapped module's own
    if name.startswith("__"):
        raise AttributeError(name)

    def delegate(config, *args, **kwargs):
        return getattr(_inner(config), name)(config, *args, **kwargs)

    return delegate
