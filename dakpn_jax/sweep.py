r"""Sweeps over config fields, since ml-collections has no open-source launcher.

A config file may define ``get_sweep(arg)`` (``arg`` is the same as for ``get_config``) returning
either

- a dict ``{field: [values]}``: the Cartesian product of the axes (like ``hyper.product``), in the
  given axis order, the last axis varying fastest; or
- a list of override dicts ``[{field: value, ...}, ...]``: explicit points.

Fields may be dotted (``"optim.lr"``). Every point becomes one run in ``ROOT/<name>/`` where
``<name>`` spells the overrides (``lr=0.001,features=8``)::

    python3 -m dakpn_jax.sweep --config=configs/default.py --workdir=runs/sweep --dry_run   # print commands
    python3 -m dakpn_jax.sweep --config=configs/default.py --workdir=runs/sweep             # run them in turn

Runs go one after another in this process (each resumes if its directory already holds a
checkpoint); ``ROOT/sweep.json`` collects their final metrics. ``--dry_run`` prints one
``python -m dakpn_jax.main`` command per point instead, for a cluster scheduler. A config without
``get_sweep``, a missing flag or a bad path ends in one ``dakpn_jax.sweep: error: ...`` line
(exit status 2).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from typing import Any, Mapping, Sequence

import ml_collections


def expand_sweep(
    sweep: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Sweep spec -> list of override dicts (see module docstring)."""
    if isinstance(sweep, Mapping):
        for k, values in sweep.items():
            if (
                isinstance(values, (str, bytes))
                or not isinstance(values, Sequence)
                or not len(values)
            ):
                raise ValueError(
                    f"get_sweep()[{k!r}]: expected a non-empty list of values, got {values!r}"
                )
        keys = list(sweep)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]
    if isinstance(sweep, Sequence) and not isinstance(sweep, (str, bytes)):
        points = []
        for i, point in enumerate(sweep):
            if not isinstance(point, Mapping):
                raise ValueError(f"get_sweep()[{i}]: expected a dict of overrides, got {point!r}")
            points.append(dict(point))
        return points
    raise ValueError(
        f"get_sweep(): expected a dict of axes or a list of override dicts, got {type(sweep).__name__}"
    )


def run_name(overrides: Mapping[str, Any]) -> str:
    """Directory name of a sweep point: ``field=value`` pairs joined by commas (filesystem-safe)."""
    if not overrides:
        return "base"
    parts = [f"{k}={_format(v)}" for k, v in overrides.items()]
    return ",".join(parts).replace("/", "_").replace(" ", "")


def _format(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_format(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the dotted ``overrides`` set; ValueError for a field that does not exist."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise ValueError(f"sweep override {key!r}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"sweep override {key!r}: config has no field {leaf!r} (typo?)")
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], tuple) else value
    return config


def load_config_module(config_path: str):
    """(module, arg) from ``path.py[:arg]``."""
    path, _, arg = config_path.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config={config_path!r}: no such file {path!r}")
    from dakpn_jax import config_files  # pylint: disable=import-outside-toplevel

    return config_files.load_module(path), (arg or None)


def points_for(config_path: str) -> tuple[ml_collections.ConfigDict, list[dict[str, Any]]]:
    """(base config, override points) of a config file that defines ``get_sweep``."""
    module, arg = load_config_module(config_path)
    if not callable(getattr(module, "get_sweep", None)):
        raise ValueError(
            f"--config={config_path}: {os.path.basename(config_path.partition(':')[0])} defines no "
            "get_sweep(arg), so there is nothing to sweep (configs/default.py has one; "
            "dakpn_jax/sweep.py documents the format)"
        )
    return module.get_config(arg), expand_sweep(module.get_sweep(arg))


def commands(config_path: str, root: str, points: Sequence[Mapping[str, Any]]) -> list[str]:
    """One ``python -m dakpn_jax.main`` command per point."""
    out = []
    for p in points:
        args = [
            "python3",
            "-m",
            "dakpn_jax.main",
            f"--config={config_path}",
            f"--workdir={os.path.join(root, run_name(p))}",
        ]
        args += [f"--config.{k}={_format(v)}" for k, v in p.items()]
        out.append(" ".join(shlex.quote(a) for a in args))
    return out


def run_sweep(config_path: str, root: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Runs (or, with ``dry_run``, lists) every point; returns ``{run name: final metrics or command}``."""
    base, points = points_for(config_path)
    names = [run_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"get_sweep() of {config_path!r} has duplicate points: {names}")
    if dry_run:
        return dict(zip(names, commands(config_path, root, points)))
    from dakpn_jax.training import trainer

    results = {}
    for name, p in zip(names, points):
        results[name] = trainer.train_and_evaluate(
            apply_overrides(base, p), os.path.join(root, name)
        )
        with open(os.path.join(root, "sweep.json"), "w") as f:
            json.dump({"config": config_path, "runs": results}, f, indent=2, sort_keys=True)
    return results


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    from dakpn_jax import console

    f = flags.FLAGS
    try:
        out = run_sweep(f.config, f.workdir, dry_run=f.dry_run)
    except ValueError as e:
        console.fail("dakpn_jax.sweep", e)
    if f.dry_run:
        print("\n".join(out.values()))
    else:
        print(json.dumps(out, indent=2, sort_keys=True))


def run():
    from absl import app, flags

    flags.DEFINE_string("config", None, "Config file with get_sweep: `path.py` or `path.py:arg`.")
    flags.DEFINE_string("workdir", None, "Sweep root; run i goes to ROOT/<name>.")
    flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
    from dakpn_jax import console

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=console.flags_parser("dakpn_jax.sweep", config_flag=None))


if __name__ == "__main__":
    run()
