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
CONFIGS = (
    [("segmentation", v) for v in ("default", "tiny")]
    + [("segformer", v) for v in ("b5", "tiny")]
    + [
        ("segmentation_real", f"{b}_{p}")
        for b in ("gta5", "synthia", "faces")
        for p in ("paper", "clean")
    ]
)


def _optim_fields_read() -> set[str]:
    """Attribute and ``.get`` names read off ``o = config.optim`` in the two optimiser functions."""
    names = set()
    for fn in (segmentation.make_schedule, segmentation.make_optimizer):
        for node in ast.walk(ast.parse(inspect.getsource(fn))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "o"
            ):
                if node.attr != "get":
                    names.add(node.attr)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "o"
            ):
                names.add(node.args[0].value)
    return names


def test_the_scan_finds_the_fields_it_should():
    read = _optim_fields_read()
    assert {
        "lr",
        "warmup_steps",
        "schedule",
        "poly_power",
        "steps_per_epoch",
        "eps",
        "weight_decay_on",
        "lr_mult",
        "grad_clip",
    } <= read


@pytest.mark.parametrize("name,variant", CONFIGS)
def test_every_optimiser_field_read_is_in_the_config(name, variant):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    missing = sorted(_optim_fields_read() - set(config.optim.keys()))
    assert not missing, f"configs/{name}.py:{variant} does not list optim fields {missing}"


# ----------------------------------------------------------------------------- DA-KPN

DAKPN_CONFIGS = [("default", v) for v in ("default", "fast", "tiny")] + [
    (b, v) for b in ("gta5_cityscapes", "synthia_cityscapes", "faces") for v in ("clean", "paper")
]
NOT_FIELDS = {
    "get",
    "unlocked",
    "copy_and_resolve_references",
    "to_json",
    "to_dict",
    "update",
    "keys",
}


def _dakpn_fields_read() -> set[str]:
    """Dotted config paths read in DA-KPN's modules: chains off ``config`` (``config.model.tile_grid``)
    and off local names bound to one (``m = config.model``, ``m, l = config.model, config.loss``).
    ``config.data`` is the data layer's (its fields depend on the dataset) and is left out."""
    from dakpn_jax.training import (
        dakpn,
        dakpn_config,
        dakpn_losses,
        dakpn_networks,
        dakpn_segmenter,
    )

    def chain(node, aliases):
        attrs = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not (isinstance(node, ast.Name) and node.id in aliases) or not attrs:
            return None
        return ".".join(filter(None, [aliases[node.id]] + attrs[::-1]))

    fields = set()
    for module in (dakpn, dakpn_config, dakpn_losses, dakpn_networks, dakpn_segmenter):
        for fn in ast.parse(inspect.getsource(module)).body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            aliases = {"config": ""}
            for _ in range(3):  # aliases of aliases (d = m.disc)
                for node in ast.walk(fn):
                    if isinstance(node, ast.Assign) and len(node.targets) == 1:
                        t, v = node.targets[0], node.value
                        pairs = (
                            zip(t.elts, v.elts)
                            if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple)
                            else [(t, v)]
                        )
                        for name, value in pairs:
                            path = chain(value, aliases)
                            if isinstance(name, ast.Name) and path is not None:
                                aliases[name.id] = path
            for node in ast.walk(fn):
                path = chain(node, aliases) if isinstance(node, ast.Attribute) else None
                if path and not path.startswith("data") and not set(path.split(".")) & NOT_FIELDS:
                    fields.add(path)
    return fields


def _has(config, path: str) -> bool:
    for name in path.split("."):
        if name not in config:
            return False
        config = config[name]
    return True


def test_the_dakpn_scan_finds_the_fields_it_should():
    from dakpn_jax.training import dakpn_config

    read = _dakpn_fields_read()
    assert {
        "model.tile_grid",
        "model.low_params",
        "model.disc.arch",
        "loss.real_low",
        "loss.update_rule",
        "optim.kpn_lr_scale",
        "optim.lr_D",
        "segmenter_input_size",
        "eval_ceiling_steps",
        "features",
        "loss.d_inputs",
        "model.kernel_size",
    } <= read
    # Every field a saved config may lack is one the method reads.
    assert set(dakpn_config.SAVED_CONFIG_DEFAULTS) <= read


@pytest.mark.parametrize("name,variant", DAKPN_CONFIGS)
def test_every_dakpn_field_read_is_in_the_config(name, variant):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    missing = sorted(p for p in _dakpn_fields_read() if not _has(config, p))
    assert not missing, f"configs/{name}.py:{variant} does not list DA-KPN fields {missing}"


def test_a_dakpn_run_saved_before_its_fields_existed_still_builds_its_translator(tmp_path):
    """A workdir whose config.json lacks every field of SAVED_CONFIG_DEFAULTS (a run of an older
    version) loads with load_translator and translates as the complete config does."""
    import json

    import jax
    import numpy as np

    from dakpn_jax import inference
    from dakpn_jax.training import checkpoint, dakpn, dakpn_config

    spec = importlib.util.spec_from_file_location("_cfg_default", ROOT / "configs" / "default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    state = dakpn.init_state(config, jax.random.key(0))
    state["params"]["kpn"] = jax.tree.map(
        lambda a: a + 0.05, state["params"]["kpn"]
    )  # not the identity
    saved = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    saved.save(1, state, {})
    saved.close()
    old = json.loads(config.to_json_best_effort())
    for path in dakpn_config.SAVED_CONFIG_DEFAULTS:
        *parents, name = path.split(".")
        node = old
        for p in parents:
            node = node[p]
        del node[name]
    (tmp_path / "config.json").write_text(json.dumps(old))

    translator = inference.load_translator(str(tmp_path))
    assert (
        translator.config.loss.update_rule == "alternating"
        and translator.config.model.tile_grid == "random"
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 64, 3), dtype=np.float32)
    y = rng.integers(0, config.model.num_classes, (2, 32, 64)).astype(np.int32)
    np.testing.assert_array_equal(
        np.asarray(translator(x, y)), np.asarray(dakpn.make_translator(config, state)(x, y))
    )
