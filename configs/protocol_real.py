"""The protocol (docs/METHOD.md §1 step 8, §9; `dakpn_jax.protocol`) on the paper's real benchmarks.

    python3 experiments/protocol.py --config=configs/protocol_real.py:gta5 --workdir=DIR \\
        --config.data.data_dir=TFDS_DIR \\
        --config.segmentation.overrides.model.kwargs.pretrained=/path/mit-b5 [--dry_run]

``get_config("<benchmark>[-fcn][-tiny]")``, benchmark:

- ``gta5``: GTA5 -> Cityscapes, 19 classes (``cityscapes19``);
- ``synthia16`` / ``synthia13``: SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 or 13 classes;
- ``faces``: Microsoft Face Synthetics -> CelebAMask-HQ, the 18 face parts (``faces18``).

Data: ``--config.data.data_dir`` (datasets prepared by ``python -m dakpn_jax.data.prepare``) or
``--config.data.synthetic_dir`` and ``--config.data.real_dir`` (the extracted official folders).

Rows: source-only; DA-KPN with the project's ``clean`` preset (row ``dakpn``) and the authors'
``paper`` preset (``dakpn_paper``) of configs/gta5_cityscapes.py (synthia_cityscapes.py,
faces.py); CycleGAN, CUT and FastCUT with their published GTA5 <-> Cityscapes settings
(configs/cyclegan.py, cut.py: ``gta5_cityscapes``; on SYNTHIA and faces the same settings on that
data); VSAIT only when ``--config.translators.vsait.overrides.model.vgg_weights=vgg19-dcbb9e9d.pth``
is given (else omitted, and the report says why); the four training-free controls (randomisation,
histogram matching, Reinhard, FDA); the oracle (all real-train labels, no synthetic data).

Downstream: the paper's SegFormer-B5 from local ImageNet MiT-B5 weights
(``--config.segmentation.overrides.model.kwargs.pretrained=PATH``; configs/segmentation_real.py,
the authors' recipe) or, with ``-fcn``, FCN-ResNet50 from local torchvision weights
(``--config.segmentation.model.kwargs.weights=fcn_resnet50.pth``; the backbone is loaded, the
classifier re-initialised for the benchmark's classes). A DA-KPN row's frozen features come from
a segmenter trained on the synthetic labels (``feature_segmenter``, same model and weights), or
from an FCN-ResNet50 file (``--config.translators.dakpn_paper.overrides.segmenter_weights=PATH``,
the authors' export setting; that row then needs no feature segmenter). A missing data folder or
weights file stops the command in one line before any stage (`dakpn_jax.protocol.preflight`).

Limited labels (docs/METHOD.md §6: the authors' code has none): N in {0, 100, 500, all} real labelled
images for the headline rows (source-only and both DA-KPN presets), N = 0 for the others.
0 is the unsupervised setting the paper reports; 100 (about 3 % of Cityscapes train, 0.4 % of
CelebAMask-HQ train) and 500 (about 17 %) are a few-shot and a moderate budget, each 5x apart so
a curve shows the trend; "all" (N = -1: the whole real-train split, 2,975 Cityscapes or 24,183
CelebAMask-HQ images) tells whether translated synthetic data still helps when every real
label is there (compare with the oracle, which has no synthetic data). The N images are the
first N of a permutation of the sorted real-train list drawn with ``data.labelled_seed`` (0), so
the 100 are among the 500 and the same for every row and seed (`sources.labelled_indices`; each
segmenter's ``labelled_subset`` in results.json records rule, seed and indices). Mixing: a quarter
of every batch (2 of 8 images) comes from the N real images, the rest from the (translated)
synthetic set, as on the embedded benchmark (``real_fraction``).

Seeds: 3 (``MIN_SEEDS_FOR_VERDICT`` of the report: fewer give intervals but no verdict). The
translators retrain per seed (docs/METHOD.md §9: seeds vary translator and segmenter training), so each
seed has its own exports; every N of a seed reuses the seed's export. ``--dry_run`` prints the
stages, their estimated device time and the exports' disk size before anything runs.

``-tiny`` (tests only): 32 x 64 frames, tiny models, one step per stage, N in {0, 1, all}.
"""

import ml_collections
from ml_collections import config_dict

BENCHMARKS = {  # name: (data preset, label protocol, DA-KPN config file, segmentation_real.py benchmark)
    "gta5": ("gta5_cityscapes", "cityscapes19", "configs/gta5_cityscapes.py", "gta5"),
    "synthia16": ("synthia_cityscapes", "synthia16", "configs/synthia_cityscapes.py", "synthia"),
    "synthia13": ("synthia_cityscapes", "synthia13", "configs/synthia_cityscapes.py", "synthia"),
    "faces": ("faces", "faces18", "configs/faces.py", "faces"),
}
CONTROLS = {
    "randomize": {"kind": "control", "control": "randomize", "params": {"kernel_size": 9}},
    "histogram": {"kind": "control", "control": "histogram", "params": {}},
    "reinhard": {"kind": "control", "control": "reinhard", "params": {}},
    "fda": {"kind": "control", "control": "fda", "params": {"beta": 0.01}},
}


def _cd(**kw):
    return ml_collections.ConfigDict(kw)


def _data(bench):
    """The shared data config: the clean DA-KPN preset's pixel scales (each stage reads its data
    from here; the paper row overrides what its preset changes)."""
    from dakpn_jax.data import sources  # pylint: disable=import-outside-toplevel

    preset, protocol, dakpn_file, _ = BENCHMARKS[bench]
    d = sources.preset(preset)
    d.label_protocol = protocol
    d.labelled_seed = 0
    clean = _load(dakpn_file, "clean").data
    for k in ("synthetic_size", "real_size", "real_val_size"):
        d[k] = clean.get(k)
    return d


def _load(path, arg):
    from dakpn_jax import config_files  # pylint: disable=import-outside-toplevel

    return config_files.load_config_file(path, arg)


def get_config(arg=None):
    arg = arg or "gta5"
    parts = arg.split("-")
    bench, opts = parts[0], set(parts[1:])
    if bench not in BENCHMARKS or not opts <= {"fcn", "tiny"}:
        raise ValueError(
            f"configs/protocol_real.py: unknown variant {arg!r} (<benchmark>[-fcn][-tiny], "
            f"benchmark one of {', '.join(BENCHMARKS)})"
        )
    _, _, dakpn_file, seg_bench = BENCHMARKS[bench]
    tiny = "tiny" in opts
    c = ml_collections.ConfigDict()
    c.seeds = (0, 1, 2)
    c.data = _data(bench)
    c.dakpn = _cd(variant="default", overrides=_cd())  # unused: the DA-KPN rows are kind "train"
    paper_real = _load(dakpn_file, "paper").data.get("real_size")
    # None = native size; a typed placeholder keeps it overridable from the command line.
    paper_data = {"real_size": config_dict.placeholder(tuple) if paper_real is None else paper_real}
    c.translators = _cd(
        dakpn=_cd(
            kind="train",
            config=dakpn_file,
            arg="clean",
            label="dakpn (clean preset)",
            overrides=_cd(),
        ),
        dakpn_paper=_cd(
            kind="train",
            config=dakpn_file,
            arg="paper",
            label="dakpn (paper preset)",
            overrides=_cd(data=paper_data, segmenter_weights=config_dict.placeholder(str)),
        ),
        cyclegan=_cd(
            kind="train", config="configs/cyclegan.py", arg="gta5_cityscapes", overrides=_cd()
        ),
        cut=_cd(kind="train", config="configs/cut.py", arg="cut-gta5_cityscapes", overrides=_cd()),
        fastcut=_cd(
            kind="train", config="configs/cut.py", arg="fastcut-gta5_cityscapes", overrides=_cd()
        ),
        vsait=_cd(
            kind="train",
            config="configs/vsait.py",
            arg="default",
            overrides=_cd(model=_cd(vgg_weights=config_dict.placeholder(str))),
        ),
        # Official generator checkpoints as rows (no training; the same weights every seed), each
        # omitted with its reason unless --config.translators.<row>.generator_checkpoint=PATH names a
        # latest_net_G_A.pth (CycleGAN) / latest_net_G.pth (CUT, FastCUT) or a .safetensors copy.
        cyclegan_official=_cd(
            kind="checkpoint", arch="cyclegan", generator_checkpoint=config_dict.placeholder(str)
        ),
        cut_official=_cd(
            kind="checkpoint", arch="cut", generator_checkpoint=config_dict.placeholder(str)
        ),
        fastcut_official=_cd(
            kind="checkpoint", arch="cut", generator_checkpoint=config_dict.placeholder(str)
        ),
    )
    for k, v in CONTROLS.items():
        c.translators[k] = ml_collections.ConfigDict(v)
    c.headline = ("source_only", "dakpn", "dakpn_paper")
    c.compare_to = ("source_only", "dakpn")
    c.n_real = (0, 100, 500, -1)  # -1: all of real-train
    c.side_n_real = (0,)
    c.real_fraction = 0.25
    if "fcn" in opts:
        seg = _cd(
            config="configs/segmentation_real.py",
            variant=f"{seg_bench}_paper",
            require_weights=True,
            overrides=_cd(),
            model=_cd(
                name="fcn_resnet50",
                num_classes=19,
                kwargs=_cd(weights=config_dict.placeholder(str), load_classifier=False),
            ),
        )
    else:
        seg = _cd(
            config="configs/segmentation_real.py",
            variant=f"{seg_bench}_paper",
            require_weights=True,
            overrides=_cd(model=_cd(kwargs=_cd(pretrained=config_dict.placeholder(str)))),
        )
    c.segmentation = seg
    # Trained on the synthetic labels with the downstream model and weights (the paper's training script).
    c.feature_segmenter = _cd(same_as_segmentation=True)
    c.stage_overrides = _cd(eval_every_steps=0, log_every_steps=100)
    # Model score: the run's oracle labels each translated set, or a given segmentation run's
    # segmenter (--config.eval.model_score_workdir=DIR, e.g. one trained on all real labels).
    c.eval = _cd(
        model_score_images=500,
        paired_images=0,
        grid_rows=4,
        batch_size=8,
        control_pool=64,
        render_cache=0,
        model_score_workdir=config_dict.placeholder(str),
    )
    c.bootstrap = _cd(num_resamples=2000, level=0.95, seed=0)
    # None: each component uses the run's seed (configs/protocol.py explains the pinning).
    c.fixed_seeds = _cd(
        translator=config_dict.placeholder(int),
        control=config_dict.placeholder(int),
        segmenter=config_dict.placeholder(int),
    )
    if tiny:
        _tiny(c)
    return c


def _tiny(c):
    """Seconds per stage on miniature trees: 32 x 64 frames, tiny models, one step."""
    size = (32, 64)
    c.seeds = (0,)
    c.data.update(synthetic_size=size, real_size=size, real_val_size=size)
    one = dict(num_train_steps=1, checkpoint_every_steps=1)
    dakpn = _cd(
        model=_cd(
            frame_size=size,
            param_size=(4, 8),
            tile_size=(8, 16),
            low_size=(8, 16),
            kernel_size=5,
            disc=_cd(ndf=4, n_layers=1),
        ),
        batch_size=8,
        **one,
    )
    c.translators.dakpn.overrides = ml_collections.ConfigDict(dakpn.to_dict())
    paper = dakpn.to_dict()
    paper["data"] = {"real_size": size}  # the paper preset keeps native sizes; the trees are 6 x 10
    paper["segmenter_input_size"] = size
    # The aligned 8 x 8 grid: tiles of H/8 x W/8 = 4 x 8, too small for the 70 x 70 NLayer D.
    paper["model"] = {
        **paper["model"],
        "tile_size": (4, 8),
        "disc": {"ndf": 4, "n_layers": 1, "arch": "patchgan"},
    }
    c.translators.dakpn_paper.overrides = ml_collections.ConfigDict(paper)
    gan = lambda: _cd(
        num_train_steps=1,
        checkpoint_every_steps=1,
        batch_size=8,
        optim=_cd(constant_steps=1, decay_steps=1),
    )
    c.translators.cyclegan.arg, c.translators.cyclegan.overrides = "tiny", gan()
    c.translators.cut.arg, c.translators.cut.overrides = "cut-tiny", gan()
    c.translators.fastcut.arg, c.translators.fastcut.overrides = "fastcut-tiny", gan()
    c.translators.vsait.arg = "tiny"
    c.translators.randomize.params.kernel_size = 5
    c.translators.fda.params.beta = 0.1  # 0.01 of 32 rows would swap the DC term alone
    c.n_real = (0, 1, -1)
    seg = _cd(variant="tiny", require_weights=False, overrides=_cd(batch_size=8, **one))
    c.segmentation = seg
    c.stage_overrides = _cd(eval_every_steps=0, log_every_steps=1)
    c.eval.update(model_score_images=4, grid_rows=2, batch_size=2, control_pool=2)
    c.bootstrap.num_resamples = 200
