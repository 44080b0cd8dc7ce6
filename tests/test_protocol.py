"""The protocol driver (experiments/protocol.py): the tiny variant end to end, stage reuse, and the
report's numbers against independent computations."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ lives at the repo root


def _load_driver():
    spec = importlib.util.spec_from_file_location("protocol_driver", ROOT / "experiments" / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_driver()


def _tiny():
    from configs import protocol as protocol_configs
    c = protocol_configs.get_config("tiny")
    c.n_real = (2,)  # exercises the real-label mix; N = 0 is the same code path without it
    return c


@pytest.mark.slow
def test_tiny_protocol_end_to_end_then_reuse(tmp_path, monkeypatch):
    pconfig = _tiny()
    out = protocol.run_protocol(pconfig, str(tmp_path))
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["n"]): r for r in report["summary"]["rows"]}
    assert set(rows) == {("source_only", 2), ("dakpn", 2), ("oracle", pconfig.data.num_real_train)}
    for r in rows.values():
        assert 0.0 <= r["miou"][0] <= 1.0 and r["miou"][1] == 0.0  # one seed: std 0
    seed = report["per_seed"][0]
    # The exact stage configs are recorded: the DA-KPN-translated segmenter trains on the export
    # plus the N real labels at the configured batch share.
    cfg = seed["segmenters"]["dakpn_n2"]["config"]
    assert cfg["seed"] == 0 and cfg["data"]["num_real_labelled"] == 2
    folder, real = cfg["data"]["train_sources"]
    assert folder["kind"] == "folder"
    assert folder["root"].endswith("export_dakpn/data") and math.isclose(folder["weight"], 0.75)
    assert real == {"kind": "split", "split": "real-train-labelled", "weight": 0.25}
    oracle = seed["segmenters"]["oracle"]["config"]
    assert oracle["data"]["train_sources"] == [{"kind": "split", "split": "real-train-labelled"}]
    assert oracle["data"]["num_real_labelled"] == pconfig.data.num_real_train
    # Exported images: one per synthetic-train item.
    export_dir = Path(folder["root"])
    assert len(list((export_dir / "images").glob("*.png"))) == pconfig.data.num_synthetic_train

    # Untranslated paired PSNR in the table = a float64 NumPy computation on the paired-eval split.
    from dakpn_jax.data import sources
    src = sources.make_source(pconfig.data, "paired-eval")
    want = []
    for i in range(min(len(src), pconfig.eval.paired_images)):
        syn = src[i]["synthetic"].astype(np.float64) / 255
        real = src[i]["real"].astype(np.float64) / 255
        want.append(10 * np.log10(1.0 / np.mean((syn - real) ** 2)))
    np.testing.assert_allclose(rows[("source_only", 2)]["psnr"][0], np.mean(want), rtol=1e-4)
    flip = np.asarray(seed["scores"]["model_score"]["dakpn"]["flip"])
    assert flip.shape == (19, 19)
    np.testing.assert_allclose(flip.sum(1)[flip.sum(1) > 0], 1.0, rtol=1e-9)

    text = (tmp_path / "results.md").read_text()
    assert text == out["markdown"] and "| dakpn | 2 |" in text and "| oracle | all |" in text
    with Image.open(tmp_path / "miou_vs_n.png") as im:
        assert im.size == (480, 320)
    with Image.open(tmp_path / "grid_seed0.png") as im:  # 2 rows of synthetic | dakpn | real | label
        w, h = im.size
        assert (w, h) == (2 + 4 * (pconfig.data.width + 2), 2 + 2 * (pconfig.data.height + 2))

    # Second run: every stage is reused, nothing trains or exports; the same table comes out.
    from dakpn_jax import export
    from dakpn_jax.training import trainer

    def forbidden(*a, **k):
        raise AssertionError("a completed stage ran again")

    monkeypatch.setattr(trainer, "train_and_evaluate", forbidden)
    monkeypatch.setattr(export, "export_translated", forbidden)
    again = protocol.run_protocol(pconfig, str(tmp_path))
    assert again["markdown"] == out["markdown"]


def test_summary_mean_std_and_bad_config():
    pconfig = _tiny()
    per_seed = []
    for s, (a, b) in enumerate([(0.30, 0.40), (0.34, 0.50), (0.35, 0.42)]):
        per_seed.append({"seed": s, "skipped": {},
                         "segmenters": {"dakpn_n2": {"final": {"eval/miou": a}}, "oracle": {"final": {"eval/miou": b}}},
                         "scores": {"model_score": {"dakpn": {"miou": a / 2, "top_flips": []}},
                                    "paired": {"dakpn": {"psnr": 20.0 + s, "ssim": 0.5, "swd": 0.1}}}})
    rows = {r["method"]: r for r in protocol.summarise(pconfig, per_seed)["rows"]}
    np.testing.assert_allclose(rows["dakpn"]["miou"], [np.mean([.30, .34, .35]), np.std([.30, .34, .35], ddof=1)])
    np.testing.assert_allclose(rows["dakpn"]["psnr"], [21.0, 1.0])
    np.testing.assert_allclose(rows["oracle"]["miou"][0], np.mean([.40, .50, .42]))
    assert "model_score" not in rows["oracle"]
    text = protocol.markdown(pconfig, protocol.summarise(pconfig, per_seed), per_seed)
    assert "| dakpn | 2 | 33.0 ± 2.6 | 16.5 ± 1.3 | 21.00 ± 1.00 |" in text
    assert "| dakpn_n2 | 30.0 / 15.0 | 34.0 / 17.0 | 35.0 / 17.5 |" in text  # per-seed values
    assert "| oracle | 40.0 | 50.0 | 42.0 |" in text
    pconfig.seeds = ()
    with pytest.raises(ValueError, match="seeds"):
        protocol.run_protocol(pconfig, "/nonexistent-not-written")
    pconfig.seeds, pconfig.real_fraction = (0,), 1.0
    with pytest.raises(ValueError, match="real_fraction"):
        protocol.segmenter_sources(pconfig, {"kind": "split", "split": "synthetic-train"}, 2)
    with pytest.raises(ValueError, match="nope.py"):
        protocol.load_config_file("configs/nope.py")


@pytest.mark.parametrize("variant", ["default", "seeds3", "baselines", "full", "tiny"])
def test_every_variant_builds_consistent_stage_configs(variant):
    """Every stage config a variant names loads, and an overridden GAN schedule still adds up
    (constant + decay = num_train_steps), so a shortened baseline ends its decay at its last step."""
    from configs import protocol as protocol_configs
    pconfig = protocol_configs.get_config(variant)
    assert len(pconfig.seeds) >= 1
    dk = protocol.dakpn_config(pconfig, 0)
    assert dk.data.height == pconfig.data.height and dk.seed == 0
    for name, spec in pconfig.baselines.items():
        c = protocol.baseline_config(pconfig, spec, 1)
        assert c.seed == 1 and c.data.width == pconfig.data.width, name
        assert c.optim.constant_steps + c.optim.decay_steps == c.num_train_steps, name
    if variant == "baselines":
        assert set(pconfig.baselines) == {"cyclegan", "cut", "fastcut"} and len(pconfig.seeds) == 3
    with pytest.raises(ValueError, match="unknown variant"):
        protocol_configs.get_config("nope")


def test_stage_reuses_a_complete_result_and_reruns_one_that_no_longer_covers_the_config(tmp_path):
    calls = []

    def make(result):
        def fn(directory):
            calls.append(directory)
            return result
        return fn

    d = str(tmp_path / "scores")
    assert protocol.stage(d, make({"model_score": {"a": 1}}), what="scores") == {"model_score": {"a": 1}}
    covers = lambda wanted: (lambda r: wanted <= set(r["model_score"]))
    # Same translators: reused without running.
    assert protocol.stage(d, make(None), what="scores", still_valid=covers({"a"})) == {"model_score": {"a": 1}}
    assert len(calls) == 1
    # A translator was added to the config: the stale result is recomputed and replaced.
    new = {"model_score": {"a": 1, "b": 2}}
    assert protocol.stage(d, make(new), what="scores", still_valid=covers({"a", "b"})) == new
    assert len(calls) == 2
    assert json.loads((tmp_path / "scores" / protocol.STAGE_FILE).read_text())["result"] == new
