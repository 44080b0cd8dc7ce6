"""Config files, loaded by path: ``configs/`` is a folder of files, not a package.

A config file is a Python file with ``get_config(arg=None) -> ml_collections.ConfigDict`` (the
flax examples' convention; ``--config=path.py:arg`` on the command line). Config files that build
on another one load it with :func:`sibling` instead of ``from configs import ...``, so no config
needs the repository root on ``sys.path``: they load the same from a source checkout, from the
installed ``dakpn`` script in any working directory, and from a user's copy of the folder.

    from dakpn_jax import config_files
    default = config_files.sibling(__file__, "default")   # configs/default.py, next to this file
    c = default.get_config("fast")

Nothing here touches ``sys.path`` or ``sys.modules``: each load executes the file afresh as a
module of its own (config files are small and side-effect free).
"""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections

# A source checkout's root (the folder holding configs/), for paths given relative to it.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path: str) -> types.ModuleType:
    """Executes the Python file at ``path`` as a fresh module (not registered in ``sys.modules``)."""
    name = "_dakpn_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"config file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(file: str, name: str) -> types.ModuleType:
    """The config file ``name``.py in the folder of ``file`` (a config file's ``__file__``)."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(file)), name + ".py"))


def resolve(path: str) -> str:
    """An existing file for ``path``: absolute, else relative to the working directory, else to the
    repository root (configs/ of a source checkout). ValueError naming every place looked at."""
    candidates = (
        [path] if os.path.isabs(path) else [os.path.abspath(path), os.path.join(_REPO, path)]
    )
    full = next((p for p in candidates if os.path.isfile(p)), None)
    if full is None:
        raise ValueError(f"config file {path!r} not found (looked at {candidates})")
    return full


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the config file at ``path`` (see :func:`resolve`)."""
    return load_module(resolve(path)).get_config(arg)
