"""The one dispatch every method uses to get a data source: `make_source(data_config, split)`.

Logical splits (docs/ARCHITECTURE.md): ``synthetic-train``, ``real-train``, ``real-train-labelled``,
``real-val`` and, for the procedural benchmark only, ``paired-eval``.

``data_config.get("name", "procedural") == "procedural"`` delegates to
`dakpn_jax.data.procedural.make_source(split, data_config)`. Real datasets are added below (issue #7).
"""
from __future__ import annotations

SPLITS = ("synthetic-train", "real-train", "real-train-labelled", "real-val", "paired-eval")


def _get(config, name, default=None):
    """`config.get(name, default)` for ConfigDicts and dicts, `getattr` for dataclasses."""
    if hasattr(config, "get"):
        return config.get(name, default)
    return getattr(config, name, default)


def make_source(data_config, split: str):
    """A grain random-access source for the logical `split` of the dataset `data_config` names."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
    name = _get(data_config, "name", "procedural")
    if name == "procedural":
        from dakpn_jax.data import procedural  # pylint: disable=import-outside-toplevel
        return procedural.make_source(split, data_config)
    raise ValueError(f"data_config.name={name!r} is unknown; expected 'procedural'")
