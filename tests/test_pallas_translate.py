"""The fused Pallas translation kernel (impl="pallas") in Pallas interpret mode on the CPU.

Values against the float64 NumPy reference of tests/test_translation.py (written from docs/METHOD.md §1 steps
3-4, no code shared with the library) and against the XLA paths; gradients against autodiff of the
einsum path. Frames are tiny (interpret mode compiles the kernel into an XLA loop: ~5-10 s a shape).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dakpn_jax import translation as T
from dakpn_jax.kernels import pallas_translate as PT
from test_translation import random_params, ref_translate

pytestmark = pytest.mark.skipif(
    not PT.available(), reason="this jax has no jax.experimental.pallas"
)


def _inputs(seed, batch, h, w, param_hw, noise_batch):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, h, w, 3), dtype=np.float32)
    x[0, 0, :4] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0]]  # greys and a pure hue
    params = random_params(rng, (batch,) + param_hw)
    params[0, 0, 0, 6:9] = 0.0  # a delta kernel at (and near) the corner
    noise = rng.normal(size=(noise_batch, h, w, 3)).astype(np.float32)
    return x, params, noise


@pytest.mark.parametrize(
    "k, shape, param_hw, noise_batch, tile",
    [
        (5, (2, 16, 24), (5, 4), 2, (16, 64)),  # one tile wider than the frame, per-sample noise
        (
            5,
            (1, 19, 13),
            (19, 13),
            1,
            (8, 8),
        ),  # 3 x 2 tiles with ragged edges, full-resolution params
        (25, (1, 16, 24), (3, 5), 1, (16, 64)),  # K = 25: the window is wider than the frame
    ],
)
def test_pallas_translate_matches_float64_reference_and_xla_paths(
    k, shape, param_hw, noise_batch, tile
):
    x, params, noise = _inputs(k, *shape, param_hw, noise_batch)
    out = jax.jit(lambda x, p, n: PT.fused_translate_forward(x, p, n, kernel_size=k, tile=tile))(
        x, params, noise
    )
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_translate(x, params, noise, k), atol=1e-5, rtol=0)
    for impl in ("shifted", "einsum"):
        np.testing.assert_allclose(
            out, T.translate(x, params, noise, kernel_size=k, impl=impl), atol=1e-5, rtol=0
        )


def test_translate_impl_pallas_values_and_gradients_match_einsum():
    """translate(impl="pallas") (custom VJP: fused forward, the shifted path's VJP) against autodiff of
    the einsum path, for x, the low-resolution parameters and the noise."""
    k = 5
    x, params, noise = _inputs(1, 2, 16, 24, (5, 4), 1)
    params[..., 6:9] = np.random.default_rng(2).uniform(
        0.3, 3.0, params[..., 6:9].shape
    )  # smooth in sigma
    ct = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    res = {}
    for impl in ("pallas", "einsum"):
        f = lambda x, p, n, impl=impl: T.translate(x, p, n, kernel_size=k, impl=impl)
        out, vjp = jax.vjp(f, x, params, noise)
        res[impl] = (out,) + vjp(ct)
    np.testing.assert_allclose(
        res["pallas"][0], ref_translate(x, params, noise, k), atol=1e-5, rtol=0
    )
    for a, b, name in zip(res["pallas"], res["einsum"], ("value", "x", "params", "noise")):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=name)
    assert np.abs(res["pallas"][2]).max() > 1e-3  # the parameter gradient is not trivially zero


def test_auto_never_picks_pallas_on_cpu_and_pallas_is_translate_only():
    assert "cpu" not in T.PALLAS_AUTO_BACKENDS
    # The suite runs on the CPU (tests/conftest.py); experiments/device_check.sh runs this file on
    # the GPU (JAX_PLATFORMS=cuda), where "auto" is the fused kernel (measured faster there).
    backend = jax.default_backend()
    want = "pallas" if backend in T.PALLAS_AUTO_BACKENDS else "shifted"
    assert T._resolve_impl("auto", fused=True) == want
    assert T._resolve_impl("auto", fused=False) == "shifted"
    assert T._resolve_impl("pallas", fused=True) == "pallas"
    assert PT.BLUR_EPS == T.BLUR_EPS
    x = np.zeros((1, 8, 9, 3), np.float32)
    with pytest.raises(ValueError, match="pallas.*translate"):
        T.local_gaussian_blur(x, x, impl="pallas")
    with pytest.raises(ValueError, match="tile.*power of two"):
        PT.fused_translate_forward(
            x, np.zeros((1, 2, 2, 12), np.float32), x, kernel_size=5, tile=(3, 8)
        )


def test_kernel_lowers_for_triton_without_a_gpu():
    """The kernel must stay within what the Pallas Triton backend lowers (power-of-two tiles, no value
    slicing, no scratch): cross-lower it for CUDA at the full GTA5 frame, K = 25, on the CPU."""
    from jax.experimental.pallas import triton as plgpu  # noqa: F401  (the Triton backend is present)

    x = jax.ShapeDtypeStruct((1, 1052, 1914, 3), jnp.float32)
    p = jax.ShapeDtypeStruct((1, 96, 160, 12), jnp.float32)
    f = jax.jit(
        lambda x, p, n: PT.fused_translate_forward(x, p, n, kernel_size=25, interpret=False)
    )
    try:
        traced = f.trace(x, p, x)
    except AttributeError:  # jax without .trace(): nothing to check on this version
        pytest.skip("jax.jit(...).trace is not available")
    try:
        text = traced.lower(lowering_platforms=("cuda",)).as_text()
    except RuntimeError as e:
        if "No supported GPU devices found" not in str(e):
            raise
        # jax 0.11 cross-lowers Triton only for an abstract GPU device; the compiled kernel is then
        # checked on a GPU (experiments/device_check.sh runs this file there).
        pytest.skip(f"this jax ({jax.__version__}) cannot cross-lower Triton without a GPU: {e}")
    assert "dakpn_fused_translate" in text
