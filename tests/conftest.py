"""Test session setup.

Eight simulated CPU devices for every test process, so the data-parallel tests can compare a 1-device
mesh (devices[:1]) with an 8-device mesh in one process. Must run before jax is imported.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
