"""The one registry of methods (dakpn_jax.registry) and everything that reads it (issue 26).

A method registered once must be found by the trainer (`training.get_method`, `training.METHODS`)
and, when it is a translator, served by `load_translator`'s route (`inference.TRANSLATORS`) with the
rng and label needs it declares. Forgetting a reader used to pass the protocol and break
`load_translator`; these checks fail instead.
"""

import ml_collections
import pytest

from dakpn_jax import inference, registry, training
from tests import toy_method

CONTRACT = ("init_state", "make_train_step", "make_iterators", "next_batch")


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_every_registered_module_implements_the_contract(name):
    m = registry.get(name)
    module = m.load()
    assert training.get_method(name) is module
    assert training.METHODS[name] == m.module
    for attr in CONTRACT:
        assert callable(getattr(module, attr, None)), f"{m.module} lacks {attr}"
    # The translator flag is what the module offers: a make_translator exactly when declared.
    assert callable(getattr(module, "make_translator", None)) == m.translator


@pytest.mark.parametrize("name", list(registry.translators()))
def test_every_translator_method_is_served_by_load_translators_route(name, monkeypatch):
    m = registry.get(name)
    spec = inference.TRANSLATORS[name]
    assert (
        spec.needs_checkpoint
        and spec.accepts_rng == m.takes_rng
        and spec.needs_labels is m.needs_labels
    )
    calls = []
    monkeypatch.setattr(
        m.load(), "make_translator", lambda config, state: calls.append((config, state)) or "fn"
    )
    assert spec.build("cfg", "state", "/nowhere") == "fn" and calls == [("cfg", "state")]


def test_methods_that_are_not_translators_are_not_routes():
    assert "segmentation" in registry.REGISTRY and "segmentation" not in inference.TRANSLATORS
    # Beside the trained methods: the training-free controls and the family ceiling (an oracle fitted
    # on paired views), which have no train step and so are no registry methods.
    assert set(inference.TRANSLATORS) == {*registry.translators(), "control", "ceiling"}


def test_a_method_registered_later_reaches_every_reader(monkeypatch):
    monkeypatch.setitem(
        registry.REGISTRY, "toy", registry.Method("toy", "tests.toy_method", translator=True)
    )
    assert training.get_method("toy") is toy_method
    assert training.METHODS["toy"] == "tests.toy_method"
    assert "toy" in inference.TRANSLATORS
    config = toy_method.get_config()
    state = toy_method.init_state(config, __import__("jax").random.key(0))
    fn = inference.TRANSLATORS["toy"].build(config, state, None)
    assert callable(fn)


def test_register_refuses_a_taken_name_and_a_non_method():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Method("dakpn", "dakpn_jax.training.dakpn"))
    with pytest.raises(ValueError, match="registry.Method"):
        registry.register({"name": "x"})
    with pytest.raises(ValueError, match="not registered"):
        registry.get("no_such_method")
    with pytest.raises(ValueError, match="unknown"):
        training.get_method("no_such_method")


def test_availability_is_declared_not_special_cased():
    from configs import vsait as vsait_configs
    from dakpn_jax.training import vsait

    c = vsait_configs.get_config("benchmark")
    assert registry.get("vsait").is_available(c) == vsait.vsait_available(c)
    assert registry.get("vsait").is_available(c)[0] is False  # no VGG19 weights configured here
    for name in ("dakpn", "cyclegan", "cut", "segmentation"):
        assert registry.get(name).is_available(ml_collections.ConfigDict()) == (True, "")


def test_dakpn_label_and_rng_needs():
    m = registry.get("dakpn")
    assert m.takes_rng
    assert m.needs_labels(ml_collections.ConfigDict({"features": "onehot"}))
    assert m.needs_labels(ml_collections.ConfigDict())  # one-hot is the default
    assert not m.needs_labels(ml_collections.ConfigDict({"features": "segmenter"}))
