"""Expand a config's ``get_sweep`` into runs: ``python experiments/sweep.py --config=... --workdir=ROOT``.

Thin wrapper over :mod:`dakpn_jax.sweep` (see there for the sweep format).
"""

from dakpn_jax import sweep

if __name__ == "__main__":
    sweep.run()
