"""Training: one generic loop (`trainer`) and one module per method.

Which module implements a config's ``method`` (the method contract of docs/ARCHITECTURE.md:
init_state, make_train_step, make_iterators, next_batch, ...) is registered once, in
`dakpn_jax.registry`. `METHODS` is that registry's name -> module path view, read fresh on every
access so a method registered later shows up. A dotted module path is accepted too, so tests and
users can plug in their own method without registering it.
"""

import types

from dakpn_jax import registry


def get_method(name: str) -> types.ModuleType:
    """The method module for `name` (a registered method or a dotted module path)."""
    return registry.method_module(name)


def __getattr__(name):
    # A view rather than a copy: `registry.register` after this package was imported still counts.
    if name == "METHODS":
        return {n: m.module for n, m in registry.REGISTRY.items()}
    raise AttributeError(f"module 'dakpn_jax.training' has no attribute {name!r}")
