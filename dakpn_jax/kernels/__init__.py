"""Hand-written accelerator kernels (Pallas) for the DA-KPN translation.

:mod:`dakpn_jax.kernels.pallas_translate` is the fused translation kernel behind
``translate(..., impl="pallas")``. Importing this package never imports Pallas; the kernel module
imports it lazily-guarded so that a JAX without (or with a changed) Pallas still imports dakpn_jax.
"""
