"""A trained translator as a plain JAX function, for use inside your own pipeline.

    translate = dakpn_jax.load_translator("runs/dakpn")          # read-only restore
    y = translate(images, labels)                                 # fixed noise field (= the export)
    y = translate(images, labels, rng=jax.random.key(0))          # fresh noise per sample (DA-KPN)

Shapes (batch first, NHWC, RGB, any frame size):

    images  float32 (B, H, W, 3) in [0, 1]
    labels  int (B, H, W) train ids, 255 = ignore; DA-KPN with one-hot label features needs them,
            the GAN baselines (CycleGAN, CUT) and DA-KPN with segmenter features ignore them
            (``None`` is accepted there)
    rng     None, a typed key (``jax.random.key``) or raw key data uint32 (2,); used by
            translators with a noise input (DA-KPN: one fresh N(0, 1) field per sample at the frame
            size); ignored by the deterministic GAN generators
    ->      float32 (B, H, W, 3), the translated frames (not clipped; the export clips and rounds to
            uint8: ``round(255 * clip(y, 0, 1))``)

``translate`` is pure and jit-able: call it inside your own ``jax.jit``-ed step (the weights are
host constants closed over by the function, so it runs on whatever devices the surrounding
computation uses, e.g. under your own mesh with ``images`` sharded over a ``'data'`` axis), or call
it eagerly (every call is then jitted per input shape).

On CPU with jaxlib 0.10, an *untrained* DA-KPN translator (step 0: the KPN's output layer is all
zeros) inside your own ``jax.jit`` can be miscompiled by XLA:CPU, which reads an all-zero constant
kernel as uninitialised memory (docs/notes/xla_cpu_constants.md). Eager calls are safe (the library
passes the weights as arguments); inside your own jit on CPU, set
``JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=True`` (constants become arguments) or translate a trained run.

The run is read from ``workdir/config.json`` and the orbax checkpoint ``workdir/checkpoints/<step>``
(``step=None``: the latest, through :func:`dakpn_jax.training.trainer.restore_state`) with a
read-only checkpoint manager; nothing in ``workdir`` is created or changed.

Which translator a run gives is looked up in :data:`TRANSLATORS`, ``config.method`` ->
:class:`TranslatorSpec`. Every translator method of `dakpn_jax.registry` (DA-KPN, CycleGAN, CUT,
VSAIT, and any method registered there later) is served through its module's ``make_translator``,
with the rng and label needs the registry declares: a trained method is registered there, not here.
A kind that is not a training method (e.g. a training-free control from ``dakpn_jax.controls``) is
one registration here::

    from dakpn_jax import inference
    inference.register_translator(
        "histogram_matching",
        lambda config, state, workdir: controls.make_histogram_matching(config),
        needs_checkpoint=False)        # a control may have only config.json, no checkpoint

or a one-off ``load_translator(workdir, registry={**inference.TRANSLATORS, "mine": spec})``.
A builder gets ``(config, state, workdir)`` (``state`` is None without a checkpoint) and returns
``fn(images, labels)`` (``fn(images, labels, rng)`` with ``accepts_rng=True``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

# Imported as `methods`: `load_translator` has a parameter named `registry` (its own lookup table).
from dakpn_jax import registry as methods

PyTree = Any
Builder = Callable[[Any, PyTree, str], Callable]


@dataclasses.dataclass(frozen=True)
class TranslatorSpec:
    """How to build the translate function of one ``config.method``.

    Attributes:
      build: ``build(config, state, workdir) -> fn(images, labels[, rng]) -> images``; ``state`` is
        the restored method state on the host (numpy leaves, optimiser state dropped), or None when
        ``needs_checkpoint`` is False.
      needs_checkpoint: the run must hold an orbax checkpoint (trained translators); False for
        training-free controls whose workdir may hold only config.json.
      accepts_rng: ``fn`` takes a third argument, a typed key (or None) for fresh noise.
      needs_labels: ``needs_labels(config)``: True when ``fn`` reads the labels (then ``labels=None``
        is refused); otherwise None labels are passed as zeros.
    """

    build: Builder
    needs_checkpoint: bool = True
    accepts_rng: bool = False
    needs_labels: Callable[[Any], bool] = lambda config: False


def _method_builder(name: str) -> Builder:
    def build(config, state, workdir):
        del workdir
        return methods.get(name).load().make_translator(config, state)

    return build


def _method_spec(method: methods.Method) -> TranslatorSpec:
    return TranslatorSpec(
        _method_builder(method.name), accepts_rng=method.takes_rng, needs_labels=method.needs_labels
    )


def _build_control(config, state, workdir):
    """A training-free control (``dakpn_jax.controls``) from a run written by :func:`save_control_run`."""
    del state, workdir
    from dakpn_jax import controls  # pylint: disable=import-outside-toplevel

    c = config.control
    reference = None if c.name == "randomize" else controls.reference_pool(config.data, int(c.pool))
    return controls.make_control(
        c.name, reference=reference, seed=int(config.seed), **dict(c.params)
    )


def _build_ceiling(config, state, workdir):
    """The family ceiling, an ORACLE fitted on paired views (``dakpn_jax.evaluation.family``), from a
    run written by ``family.save_ceiling_run``: for comparison only, never a method."""
    del state
    from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

    return family.make_ceiling_translator(
        family.load_ceiling(workdir, config), noise=config.ceiling.noise
    )


class _Translators(collections.abc.MutableMapping):
    """``config.method`` -> :class:`TranslatorSpec`: the translator methods of `dakpn_jax.registry`,
    read on every lookup (so a method registered there later is served), plus the kinds registered
    here (which win on a name clash, as ``register_translator(..., overwrite=True)`` intends)."""

    def __init__(self, extra: dict[str, TranslatorSpec]):
        self._extra = extra

    def _all(self) -> dict[str, TranslatorSpec]:
        return {**{n: _method_spec(m) for n, m in methods.translators().items()}, **self._extra}

    def __getitem__(self, method):
        return self._all()[method]

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())

    def __setitem__(self, method, spec):
        self._extra[method] = spec

    def __delitem__(self, method):
        del self._extra[method]


TRANSLATORS: Mapping[str, TranslatorSpec] = _Translators(
    {
        "control": TranslatorSpec(
            _build_control,
            needs_checkpoint=False,
            needs_labels=lambda config: config.control.name == "randomize",
        ),
        "ceiling": TranslatorSpec(
            _build_ceiling,
            needs_checkpoint=False,
            accepts_rng=True,
            needs_labels=lambda config: True,
        ),
    }
)


def save_control_run(
    workdir: str, name: str, data_config, *, seed: int = 0, pool: int = 64, **params
) -> str:
    """Writes ``workdir/config.json`` describing a training-free control, so that
    ``load_translator(workdir)`` (and everything built on it) serves it like a trained translator.

    Args:
      name: one of ``dakpn_jax.controls.CONTROLS`` (randomize, histogram, reinhard, fda).
      data_config: the ``config.data`` whose real-train split gives the reference pool.
      seed: the control's seed (which reference image / which theta each frame gets).
      pool: how many real-train frames form the reference pool.
      params: keyword options of ``controls.make_control`` (``beta`` for FDA, ``ranges`` ...).
    Returns:
      The workdir (absolute).
    """
    import ml_collections  # pylint: disable=import-outside-toplevel
    from dakpn_jax import controls  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    if name not in controls.CONTROLS:
        raise ValueError(f"save_control_run: name={name!r}; expected one of {controls.CONTROLS}")
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    config = ml_collections.ConfigDict(
        {
            "method": "control",
            "seed": int(seed),
            "data": data_config,
            "control": {"name": name, "pool": int(pool), "params": dict(params)},
        }
    )
    trainer.save_config(config, workdir)
    return workdir


def register_translator(
    method: str,
    build: Builder,
    *,
    needs_checkpoint: bool = True,
    accepts_rng: bool = False,
    needs_labels: Callable[[Any], bool] | None = None,
    overwrite: bool = False,
) -> None:
    """Adds ``method`` to :data:`TRANSLATORS` (module docstring); ValueError if it is there already
    (unless ``overwrite``)."""
    if not isinstance(method, str) or not method:
        raise ValueError(f"register_translator: method must be a non-empty str, got {method!r}")
    if method in TRANSLATORS and not overwrite:
        raise ValueError(
            f"register_translator: {method!r} is already registered (pass overwrite=True)"
        )
    TRANSLATORS[method] = TranslatorSpec(
        build,
        needs_checkpoint=needs_checkpoint,
        accepts_rng=accepts_rng,
        needs_labels=needs_labels or (lambda config: False),
    )


# ----------------------------------------------------------------------------- restore


def available_steps(workdir: str) -> list[int]:
    """The checkpoint steps under ``workdir/checkpoints`` (sorted; empty when there are none)."""
    from dakpn_jax.training import checkpoint as ckpt  # pylint: disable=import-outside-toplevel

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return []
    checkpointer = ckpt.Checkpointer(workdir, read_only=True, max_to_keep=None)
    try:
        return sorted(int(s) for s in checkpointer.all_steps())
    finally:
        checkpointer.close()


def _restore_step(workdir: str, config, step: int) -> PyTree:
    """The state of checkpoint ``step`` on this process's first device (read-only manager)."""
    from dakpn_jax.training import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    mesh = trainer.make_mesh(jax.local_devices()[:1])
    abstract = trainer.abstract_state(methods.method_module(config.method), config, mesh)
    checkpointer = ckpt.Checkpointer(workdir, read_only=True, max_to_keep=None)
    try:
        checkpointer.check_compatible(step, abstract)
        state, _ = checkpointer.restore(step, abstract, with_iterators=False)
    finally:
        checkpointer.close()
    return state


def _to_host(state: PyTree) -> PyTree:
    """numpy copy of the state without the optimiser state (a translator never reads it)."""
    if isinstance(state, Mapping):
        state = {k: v for k, v in state.items() if k != "opt"}
    return jax.device_get(state)


# ----------------------------------------------------------------------------- the translator


def _as_key(rng):
    if rng is None:
        return None
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    if rng.dtype != jnp.uint32 or rng.shape != (2,):
        raise ValueError(
            f"translate: rng must be a typed key or raw key data uint32 (2,), got "
            f"{rng.dtype} {rng.shape}"
        )
    return jax.random.wrap_key_data(rng)


@dataclasses.dataclass(frozen=True, eq=False)
class Translator:
    """``translator(images, labels=None, *, rng=None) -> images`` (module docstring for shapes).

    Attributes: ``workdir`` (absolute), ``method``, ``config`` (the run's ConfigDict), ``step`` (the
    checkpoint step, None for checkpoint-free controls), ``state`` (host numpy state or None),
    ``accepts_rng``, ``needs_labels``.
    """

    workdir: str
    method: str
    config: Any
    step: int | None
    state: PyTree
    accepts_rng: bool
    needs_labels: bool
    fn: Callable

    def __call__(self, images, labels=None, *, rng=None):
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"translate: images must be float (B, H, W, 3) in [0, 1], got shape {images.shape}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"translate: images must be float in [0, 1] (divide uint8 by 255), got {images.dtype}"
            )
        images = images.astype(jnp.float32)
        if labels is None:
            if self.needs_labels:
                raise ValueError(
                    f"translate: the {self.method!r} translator of {self.workdir} reads the labels "
                    f"(one-hot label features); pass labels (B, H, W) = {images.shape[:3]}"
                )
            labels = jnp.zeros(images.shape[:3], jnp.int32)
        else:
            labels = jnp.asarray(labels)
            if labels.shape != images.shape[:3]:
                raise ValueError(
                    f"translate: labels must be (B, H, W) = {images.shape[:3]}, got {labels.shape}"
                )
            if not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(f"translate: labels must be integer train ids, got {labels.dtype}")
            labels = labels.astype(jnp.int32)
        key = _as_key(rng)
        if self.accepts_rng:
            return self.fn(images, labels, key)
        return self.fn(images, labels)  # deterministic translator: rng has nothing to drive

    def __repr__(self) -> str:
        return f"Translator(method={self.method!r}, step={self.step}, workdir={self.workdir!r})"


def load_translator(
    workdir: str, *, step: int | None = None, registry: Mapping[str, TranslatorSpec] | None = None
) -> Translator:
    """The translator of the training run in ``workdir``, restored read-only (module docstring).

    Args:
      workdir: a translator run directory (``config.json`` + ``checkpoints/<step>``).
      step: the checkpoint step; None: the latest.
      registry: ``config.method`` -> :class:`TranslatorSpec` (default :data:`TRANSLATORS`).
    Returns:
      A :class:`Translator`: ``translate(images (B,H,W,3) f32, labels (B,H,W) int | None, *, rng=None)
      -> (B,H,W,3) f32``, pure and jit-able.
    Raises:
      ValueError naming the path: no such directory, no config.json, a run of a method that is not
      a translator (e.g. a segmentation run), no checkpoint, a step that does not exist (the
      message lists the available ones), a checkpoint of a different model than the config.
    """
    from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise ValueError(f"load_translator: workdir must be a path, got {workdir!r}")
    workdir = os.path.abspath(os.fspath(workdir))
    if not os.path.isdir(workdir):
        raise ValueError(
            f"load_translator: workdir {workdir!r} does not exist or is not a directory"
        )
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise ValueError(
            f"load_translator: {workdir!r} has no config.json: not a training run directory "
            f"(contents: {sorted(os.listdir(workdir))[:8]})"
        )
    config = trainer.load_config(workdir)
    method = config.get("method")
    registry = TRANSLATORS if registry is None else registry
    if method not in registry:
        raise ValueError(
            f"load_translator: {workdir!r} holds a {method!r} run, which is not a translator; "
            f"translators: {sorted(registry)}"
        )
    spec = registry[method]
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"load_translator: step must be a non-negative int or None, got {step!r}")
    state, restored = None, None
    if spec.needs_checkpoint or step is not None:
        steps = available_steps(workdir)
        if not steps:
            raise ValueError(
                f"load_translator: {workdir!r} holds no checkpoint under "
                f"{os.path.join(workdir, 'checkpoints')} (the run saved none yet?)"
            )
        if step is not None and step not in steps:
            raise ValueError(
                f"load_translator: {workdir!r} has no checkpoint at step {step}; "
                f"available steps: {steps}"
            )
        if step is None:
            _, state = trainer.restore_state(workdir, config, devices=jax.local_devices()[:1])
        else:
            state = _restore_step(workdir, config, step)
        state = _to_host(state)
        restored = int(state["step"]) if isinstance(state, Mapping) and "step" in state else step
    fn = spec.build(config, state, workdir)
    return Translator(
        workdir=workdir,
        method=method,
        config=config,
        step=restored,
        state=state,
        accepts_rng=spec.accepts_rng,
        needs_labels=bool(spec.needs_labels(config)),
        fn=fn,
    )
