"""Training: one generic loop (`trainer`) and one module per method.

`METHODS` maps a config's `method` name to the module that implements the method contract of
docs/ARCHITECTURE.md (init_state, make_train_step, make_iterators, next_batch, ...). A dotted module
path is accepted too, so tests and users can plug in their own method without editing this file.
"""
import importlib
import types

METHODS = {
    "dakpn": "dakpn_jax.training.dakpn",
    "segmentation": "dakpn_jax.training.segmentation",
    "cyclegan": "dakpn_jax.training.cyclegan",
    "cut": "dakpn_jax.training.cut",
    "vsait": "dakpn_jax.training.vsait",
}


def get_method(name: str) -> types.ModuleType:
    """The method module for `name` (a key of METHODS or a dotted module path)."""
    if name in METHODS:
        return importlib.import_module(METHODS[name])
    if "." in name:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"config.method={name!r}: cannot import method module ({e})") from e
    raise ValueError(f"config.method={name!r} is unknown; known methods: {sorted(METHODS)} "
                     "(or give a dotted module path)")
