"""Every optimiser field the segmentation method reads is written in each of its config files, so a
reader of a config sees every switch (issue 26: no defaults hidden in code). The fields are found
in the method's source (``o.get("field", ...)`` and ``o.field`` in make_schedule / make_optimizer),
so a new field read there fails this test until the configs list it."""
import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

from dakpn_jax.training import segmentation

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("segmentation", v) for v in ("default", "tiny")] + [("segformer", v) for v in ("b5", "tiny")] + \
    [("segmentation_real", f"{b}_{p}") for b in ("gta5", "synthia", "faces") for p in ("paper", "clean")]


def _optim_fields_read() -> set[str]:
    """Attribute and ``.get`` names read off ``o = config.optim`` in the two optimiser functions."""
    names = set()
    for fn in (segmentation.make_schedule, segmentation.make_optimizer):
        for node in ast.walk(ast.parse(inspect.getsource(fn))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "o":
                if node.attr != "get":
                    names.add(node.attr)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "o"):
                names.add(node.args[0].value)
    return names


def test_the_scan_finds_the_fields_it_should():
    read = _optim_fields_read()
    assert {"lr", "warmup_steps", "schedule", "poly_power", "steps_per_epoch", "eps", "weight_decay_on",
            "lr_mult", "grad_clip"} <= read


@pytest.mark.parametrize("name,variant", CONFIGS)
def test_every_optimiser_field_read_is_in_the_config(name, variant):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    missing = sorted(_optim_fields_read() - set(config.optim.keys()))
    assert not missing, f"configs/{name}.py:{variant} does not list optim fields {missing}"
