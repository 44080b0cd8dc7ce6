"""The one registry of methods: what each trainable method offers, in one place.

A :class:`Method` names the module that implements the method contract of docs/ARCHITECTURE.md
(``init_state``, ``make_train_step``, ...) and declares what the rest of the library needs to know
without special cases by name:

- ``translator``: the module defines ``make_translator(config, state)`` (export, ``load_translator``
  and the protocol's rows use it);
- ``takes_rng``: the translate function takes a third argument, a key for fresh noise (DA-KPN);
- ``needs_labels(config)``: the translate function reads the labels (DA-KPN with one-hot features);
- ``available``: ``"module:function"``, ``function(config) -> (ok, why)``; a method that cannot be
  what it claims to be without outside files (VSAIT without ImageNet VGG19 weights) says so here and
  the protocol omits its row with ``why`` instead of naming it in a special case;
- ``cost``: the relative CPU cost of one training image-step, in units of one segmenter image-step
  (the protocol's time estimate; measured stage profile: docs/notes/issue14.md).

Readers: `dakpn_jax.training.get_method` / ``training.METHODS`` (the trainer and the CLI),
`dakpn_jax.inference` (``load_translator``'s route), `dakpn_jax.export`. A new method is one
:func:`register` call (or one entry in :data:`REGISTRY` for a built-in one); nothing else needs to
learn its name.

Modules are named by string and imported on first use, so importing the registry stays light and
the method modules (which import the data layer, models, ...) never import back into it.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Any, Callable


def _never(config) -> bool:
    del config
    return False


def _dakpn_needs_labels(config) -> bool:
    # One-hot label features read the labels; segmenter features predict them from the image.
    return config.get("features", "onehot") == "onehot"


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered method (module docstring for the fields)."""

    name: str
    module: str
    translator: bool = False
    takes_rng: bool = False
    needs_labels: Callable[[Any], bool] = _never
    available: str | None = None
    cost: float = 1.0

    def load(self) -> types.ModuleType:
        """The method module (imported on first use)."""
        return importlib.import_module(self.module)

    def is_available(self, config) -> tuple[bool, str]:
        """``(True, "")``, or ``(False, why)`` when ``config`` cannot run this method as published."""
        if self.available is None:
            return True, ""
        module, _, attr = self.available.partition(":")
        return getattr(importlib.import_module(module), attr)(config)


# Costs: DA-KPN ~0.9 and the GAN baselines ~4.5 segmenter image-steps per image-step (issue 14's
# measured stage profile); the segmenter is the unit.
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dakpn",
            "dakpn_jax.training.dakpn",
            translator=True,
            takes_rng=True,
            needs_labels=_dakpn_needs_labels,
            cost=0.9,
        ),
        Method("segmentation", "dakpn_jax.training.segmentation", cost=1.0),
        Method("cyclegan", "dakpn_jax.training.cyclegan", translator=True, cost=4.5),
        Method("cut", "dakpn_jax.training.cut", translator=True, cost=4.5),
        Method(
            "vsait",
            "dakpn_jax.training.vsait",
            translator=True,
            cost=4.5,
            available="dakpn_jax.training.vsait:vsait_available",
        ),
    )
}


def register(method: Method, *, overwrite: bool = False) -> None:
    """Adds ``method`` to :data:`REGISTRY`; ValueError if its name is taken (unless ``overwrite``)."""
    if not isinstance(method, Method):
        raise ValueError(f"register: expected a registry.Method, got {type(method).__name__}")
    if not method.name or not method.module:
        raise ValueError(f"register: {method!r} needs a name and a module path")
    if method.name in REGISTRY and not overwrite:
        raise ValueError(
            f"register: method {method.name!r} is already registered (pass overwrite=True)"
        )
    REGISTRY[method.name] = method


def get(name: str) -> Method:
    """The registered method ``name``; ValueError listing the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"method {name!r} is not registered; known methods: {sorted(REGISTRY)}")
    return REGISTRY[name]


def translators() -> dict[str, Method]:
    """The registered methods that offer ``make_translator``, in registration order."""
    return {name: m for name, m in REGISTRY.items() if m.translator}


def method_module(name: str) -> types.ModuleType:
    """The method module for ``config.method``: a registered name, or a dotted module path (so tests
    and users can train a module of their own without registering it)."""
    if name in REGISTRY:
        return REGISTRY[name].load()
    if "." in name:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"config.method={name!r}: cannot import method module ({e})") from e
    raise ValueError(
        f"config.method={name!r} is unknown; known methods: {sorted(REGISTRY)} "
        "(or give a dotted module path)"
    )
