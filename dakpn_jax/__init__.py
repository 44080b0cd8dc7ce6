"""dakpn-jax: label-preserving synthetic-to-real translation (DA-KPN) in JAX/Flax NNX.

Public API (stable names, see docs/ARCHITECTURE.md): added as the modules land.
"""

__version__ = "0.1.0"
