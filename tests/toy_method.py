"""A tiny method module for the trainer tests (the contract of docs/ARCHITECTURE.md, nothing more).

Regression of a fixed colour map ``y = A x + c`` per pixel by a 2-layer per-pixel MLP (NNX) with Adam on
deterministic random images. What makes it useful for testing the loop:

- ``state["consumed"]``: a uint32 hash of every example index the step has seen, in order, so
  comparing two final states compares the batches consumed too;
- metric ``batch_checksum``: the sum of the global batch's example indices;
- ``config.nan_at_step = s``: the step with ``state.step == s`` returns a NaN loss and NaN params
  (for the NaN guard);
- the global batch of step t is the same for any process count: process p of P takes rows
  [p*B/P, (p+1)*B/P) of the global index batch, so 2 processes x 4 devices can be compared with
  1 process x 8 devices.

``get_config(arg)`` makes it a config file too: ``--config=tests/toy_method.py`` (``arg="sweep"``
adds a ``get_sweep``-friendly setup).
"""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

_HASH_MUL = np.uint32(1000003)
_A = np.array([[0.8, 0.1, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 0.7]], np.float32)
_C = np.array([0.05, -0.02, 0.1], np.float32)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "tests.toy_method"
    c.seed = 0
    c.batch_size = 8
    c.num_train_steps = 3
    c.steps_per_call = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.eval_every_steps = 100
    c.keep_checkpoints = 3
    c.nan_at_step = -1
    c.features = 4
    c.lr = 1e-2
    c.data = ml_collections.ConfigDict({"num_examples": 40, "height": 4, "width": 6})
    if arg == "sweep":
        c.num_train_steps = 1
    return c


def get_sweep(arg: str | None = None):
    """Two learning rates x two widths (hyper-style product of axes)."""
    return {"lr": [1e-2, 3e-3], "features": [4, 8]}


class Net(nnx.Module):
    def __init__(self, features: int, *, rngs: nnx.Rngs):
        self.a = nnx.Linear(3, features, rngs=rngs)
        self.b = nnx.Linear(features, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def _graphdef(config):
    return nnx.split(nnx.eval_shape(lambda: Net(config.features, rngs=nnx.Rngs(0))))[0]


def _tx(config):
    return optax.adam(config.lr)


def init_state(config, rng):
    rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    k_net, rng = jax.random.split(jax.random.wrap_key_data(rng))
    params = nnx.to_pure_dict(nnx.split(Net(config.features, rngs=nnx.Rngs(params=k_net)))[1])
    return {
        "params": params,
        "opt": _tx(config).init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(rng),
        "consumed": jnp.zeros((), jnp.uint32),
    }


def _apply(config, params, x):
    return nnx.merge(_graphdef(config), params)(x)


def make_train_step(config):
    tx = _tx(config)
    nan_at = int(config.get("nan_at_step", -1))

    def train_step(state, batch):
        x, idx = batch["image"], batch["index"]
        key, rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        # A little input noise so the state's key matters for the result.
        x_in = x + 0.01 * jax.random.normal(key, x.shape)
        target = jnp.einsum("bhwc,dc->bhwd", x, _A) + _C

        def loss_fn(p):
            return jnp.mean(jnp.square(_apply(config, p, x_in) - target))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        poison = jnp.where(state["step"] == nan_at, jnp.nan, 1.0)
        grads = jax.tree.map(lambda g: g * poison, grads)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # Order-sensitive hash of the consumed example indices: h <- h * M^B + sum_j M^(B-1-j) (i_j + 1).
        b = idx.shape[0]
        powers = jnp.asarray(_powers(b + 1))  # M^b, M^(b-1), ..., M^0
        consumed = (
            state["consumed"] * powers[0] + jnp.sum(powers[1:] * (idx.astype(jnp.uint32) + 1))
        ).astype(jnp.uint32)
        new = {
            "params": params,
            "opt": opt,
            "step": state["step"] + 1,
            "rng": jax.random.key_data(rng),
            "consumed": consumed,
        }
        metrics = {"loss": loss * poison, "batch_checksum": jnp.sum(idx).astype(jnp.float32)}
        return new, metrics

    return train_step


def _powers(b: int) -> np.ndarray:
    """M^(b-1-j) mod 2^32 for j = 0..b-1."""
    out = np.ones((b,), np.uint32)
    for j in range(b - 2, -1, -1):
        out[j] = np.uint32((int(out[j + 1]) * int(_HASH_MUL)) % (1 << 32))
    return out


def example(seed: int, index: int, height: int, width: int) -> np.ndarray:
    return (
        np.random.default_rng((seed, int(index)))
        .uniform(size=(height, width, 3))
        .astype(np.float32)
    )


def make_iterators(config, *, shard_index: int = 0, shard_count: int = 1):
    d = config.data
    if config.batch_size % shard_count:
        raise ValueError(
            f"config.batch_size={config.batch_size} not divisible by {shard_count} processes"
        )
    b = config.batch_size // shard_count

    def load(indices):
        mine = np.asarray(indices)[shard_index * b : (shard_index + 1) * b]
        return {
            "image": np.stack([example(config.seed, i, d.height, d.width) for i in mine]),
            "index": mine.astype(np.int32),
        }

    ds = (
        grain.MapDataset.range(d.num_examples)
        .shuffle(seed=config.seed)
        .repeat(None)
        .batch(config.batch_size)
        .map(load)
    )
    return {"train": iter(ds.to_iter_dataset())}


def next_batch(iterators):
    return dict(next(iterators["train"]))


def summaries(config, state, batch):
    x = jnp.asarray(batch["image"][:1])
    y = jnp.clip(_apply(config, state["params"], x), 0, 1)
    return {"input_output": np.asarray(jnp.concatenate([x[0], y[0]], axis=1))}


def evaluate(config, state):
    d = config.data
    x = jnp.asarray(np.stack([example(config.seed + 1, i, d.height, d.width) for i in range(4)]))
    target = jnp.einsum("bhwc,dc->bhwd", x, _A) + _C
    return {"mse": float(jnp.mean(jnp.square(_apply(config, state["params"], x) - target)))}


def make_translator(config, state):
    params = state["params"]
    return jax.jit(lambda images, labels=None: jnp.clip(_apply(config, params, images), 0, 1))
