r"""Mutation check: do the tests catch typical bugs? (issue #19; not part of CI: slow.)

Each mutation is an exact ``old -> new`` text replacement in one file of the package (or a script),
which must match exactly once in the current tree, else the mutation is reported ``stale`` (the
code moved on: update the mutation). One at a time, in a temporary copy of the worktree, the
mutation is applied, the tests that cover it run (``pytest -x``, a timeout), and the copy is
restored. ``caught``: a test failed; ``survived``: the tests passed with the bug in; ``timeout``;
``error``: pytest could not run (exit code other than 0 / 1). A baseline run of every listed test
on the unmutated copy comes first (``--no-baseline`` skips it): a test that fails already would make
every mutation look caught.

    python experiments/mutation_check.py                 # all mutations, table on stdout
    python experiments/mutation_check.py --only dakpn_g_adv_sign,export_truncate
    python experiments/mutation_check.py --list          # names, files and tests only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OBJ_DAKPN = "tests/test_objectives_dakpn.py"
OBJ_CYCLE = "tests/test_objectives_cyclegan.py"
EXACT = "tests/test_exactness.py"
REF = "tests/test_translator_reference.py"


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    area: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    planted: bool = False  # one of the bugs the issue planted


M = Mutation
MUTATIONS = [
    # ---------------------------------------------------------------- training: DA-KPN
    M(
        "dakpn_g_adv_sign",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "adv = sum(\n        _levels_mean(\n            lambda a: g_loss(form, a), d(with_condition(fakes[v],",
        "adv = -sum(\n        _levels_mean(\n            lambda a: g_loss(form, a), d(with_condition(fakes[v],",
        (OBJ_DAKPN,),
        planted=True,
    ),
    M(
        "dakpn_g_loss_saturating_sign",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "return -jnp.mean(jax.nn.softplus(fake))",
        "return jnp.mean(jax.nn.softplus(fake))",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_d_targets_swapped",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))",
        "return jnp.mean(jax.nn.softplus(real)) + jnp.mean(jax.nn.softplus(-fake))",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_identity_weight_ignored",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "return adv + identity * idt,",
        "return adv + idt,",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_identity_against_real_tile",
        "training",
        "dakpn_jax/training/dakpn.py",
        "const_fakes, d_params, _crop(x, pos, tile), conds\n        )",
        'const_fakes, d_params, reals["tile"], conds\n        )',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_g_against_old_d",
        "training",
        "dakpn_jax/training/dakpn.py",
        "const_fakes, d_params, _crop(x, pos, tile), conds\n        )",
        'const_fakes, params["D"], _crop(x, pos, tile), conds\n        )',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_low_sigma_unscaled",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "[1.0] * 6 + [s] * 6",
        "[1.0] * 9 + [s] * 3",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_low_noise_unscaled",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "[1.0] * 6 + [s] * 6",
        "[1.0] * 6 + [s] * 3 + [1.0] * 3",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_real_low_is_synthetic",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        'reals["low"] = area_resize(r, low_size(config))',
        'reals["low"] = area_resize(x, low_size(config))',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_r1_weight_doubled",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        'loss = loss + 0.5 * r1 * out["r1"]',
        'loss = loss + r1 * out["r1"]',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_fresh_noise_one_field",
        "training",
        "dakpn_jax/training/dakpn.py",
        "n_full = translation.sample_noise(k1, x.shape[0], *frame)",
        "n_full = jnp.broadcast_to(translation.sample_noise(k1, 1, *frame), x.shape)",
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_d_ascends",
        "training",
        "dakpn_jax/training/dakpn.py",
        'gc.apply_updates(tx["D"], params["D"], d_grads,',
        'gc.apply_updates(tx["D"], params["D"], jax.tree.map(jnp.negative, d_grads),',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_g_ascends",
        "training",
        "dakpn_jax/training/dakpn.py",
        'gc.apply_updates(\n            tx["kpn"], params["kpn"], kpn_grads,',
        'gc.apply_updates(\n            tx["kpn"], params["kpn"], jax.tree.map(jnp.negative,kpn_grads),',
        (OBJ_DAKPN,),
    ),
    M(
        "dakpn_grl_fakes_not_reversed",
        "training",
        "dakpn_jax/training/dakpn.py",
        "reversed_fakes = {v: grad_reverse(fakes[v]) for v in views}",
        "reversed_fakes = {v: fakes[v] for v in views}",
        ("tests/test_dakpn.py::test_gradient_reversal_grads_equal_the_minimax_objective",),
    ),
    M(
        "dakpn_grl_real_part_dropped",
        "training",
        "dakpn_jax/training/dakpn_losses.py",
        "real_part = real_part + _levels_mean(",
        "real_part = 0.0 * real_part + 0.0 * _levels_mean(",
        ("tests/test_dakpn.py::test_gradient_reversal_grads_equal_the_minimax_objective",),
    ),
    M(
        "dakpn_onehot_ignore_as_last_class",
        "training",
        "dakpn_jax/training/dakpn_features.py",
        "jax.nn.one_hot(\n        labels.astype(jnp.int32), num_classes,",
        "jax.nn.one_hot(jnp.minimum(\n        labels.astype(jnp.int32), num_classes- 1),num_classes,",
        (EXACT + "::test_make_translator_at_another_frame_size_with_a_nonzero_kpn",),
    ),
    # ---------------------------------------------------------------- training: CycleGAN
    M(
        "cyclegan_d_targets_swapped",
        "training",
        "dakpn_jax/training/gan_common.py",
        "return lsgan_loss(d(real), True), lsgan_loss(d(jax.lax.stop_gradient(fake)), False)",
        "return lsgan_loss(d(real), False), lsgan_loss(d(jax.lax.stop_gradient(fake)), True)",
        (OBJ_CYCLE,),
        planted=True,
    ),
    M(
        "cyclegan_g_gan_target_zero",
        "training",
        "dakpn_jax/training/cyclegan.py",
        "gan = gc.lsgan_loss(D_A(fake_b), True)",
        "gan = gc.lsgan_loss(D_A(fake_b), False)",
        (OBJ_CYCLE,),
    ),
    M(
        "cyclegan_cycle_wrong_generator",
        "training",
        "dakpn_jax/training/cyclegan.py",
        "cycle = gc.l1(G_B(fake_b), a)",
        "cycle = gc.l1(G_A(fake_b), a)",
        (OBJ_CYCLE,),
    ),
    M(
        "cyclegan_identity_pairing_swapped",
        "training",
        "dakpn_jax/training/cyclegan.py",
        "idt = gc.l1(G_A(b), b) + gc.l1(G_B(a), a)",
        "idt = gc.l1(G_A(a), a) + gc.l1(G_B(b), b)",
        (OBJ_CYCLE,),
    ),
    M(
        "cyclegan_identity_weight_unscaled",
        "training",
        "dakpn_jax/training/cyclegan.py",
        "lam_cyc * lam_idt * idt",
        "lam_idt * idt",
        (OBJ_CYCLE,),
    ),
    M(
        "cyclegan_d_a_judges_domain_a",
        "training",
        "dakpn_jax/training/cyclegan.py",
        'gc.discriminator_grads(gd["D"], dp["D_A"], b, fake_b)',
        'gc.discriminator_grads(gd["D"], dp["D_A"], a, fake_b)',
        (OBJ_CYCLE,),
    ),
    M(
        "cyclegan_d_loss_no_half",
        "training",
        "dakpn_jax/training/gan_common.py",
        "return 0.5 * (l_real + l_fake), (l_real, l_fake)",
        "return (l_real + l_fake), (l_real, l_fake)",
        (OBJ_CYCLE,),
    ),
    # ---------------------------------------------------------------- translation
    M(
        "translator_label_shift",
        "translation",
        "dakpn_jax/training/dakpn.py",
        "feats = feature_fn(x, labels, grid_for(config, H, W))",
        "feats = feature_fn(x, jnp.roll(labels, 1, axis=2), grid_for(config, H, W))",
        (EXACT,),
        planted=True,
    ),
    M(
        "translator_noise_not_from_training_size",
        "translation",
        "dakpn_jax/training/dakpn.py",
        "noise = (\n            translation.noise_field(m.noise_seed, H, W, base_size=base)\n            if rng is None",
        "noise = (\n            translation.noise_field(m.noise_seed, H, W)\n            if rng is None",
        (EXACT,),
    ),
    M(
        "translator_grid_not_scaled",
        "translation",
        "dakpn_jax/training/dakpn_features.py",
        "return max(1, round(ph * height / H)), max(1, round(pw * width / W))",
        "return ph, pw",
        (EXACT,),
    ),
    M(
        "area_resize_bilinear_again",
        "translation",
        "dakpn_jax/training/dakpn_features.py",
        'return jnp.einsum(\n        "ip,jq,bpqc->bijc",\n        _area_weights(H, h),\n        _area_weights(W, w),\n        x,',
        'return jax.image.resize(x, (B, h, w, C), "linear", antialias=True) + 0 *jnp.einsum(\n        "ip,jq,bpqc->bijc",\n        _area_weights(H, h),\n        _area_weights(W, w),\n        x,',
        (EXACT,),
    ),
    M(
        "hue_clipped_not_wrapped",
        "translation",
        "dakpn_jax/translation.py",
        "h = jnp.mod(hsv[..., 0:1], 1.0)",
        "h = jnp.clip(hsv[..., 0:1], 0.0, 1.0)",
        ("tests/test_translation.py::test_color_affine_wraps_hue_and_clips",),
    ),
    # ---------------------------------------------------------------- data
    M(
        "crops_never_reach_bottom_right",
        "data",
        "dakpn_jax/data/pipeline.py",
        "top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))",
        "top, left = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))",
        (EXACT + "::test_crops_reach_every_offset_and_flip_half_the_time",),
        planted=True,
    ),
    M(
        "flip_rarely",
        "data",
        "dakpn_jax/data/pipeline.py",
        "flip = self.random_flip and rng.uniform() < 0.5",
        "flip = self.random_flip and rng.uniform() < 0.3",
        (EXACT + "::test_crops_reach_every_offset_and_flip_half_the_time",),
    ),
    M(
        "flip_image_not_label",
        "data",
        "dakpn_jax/data/pipeline.py",
        "window[:, ::-1] if flip else window",
        'window[:, ::-1] if flip and k != "label" else window',
        ("tests/test_pipeline.py::test_augmentation_never_misaligns_image_and_label",),
    ),
    M(
        "images_over_256",
        "data",
        "dakpn_jax/data/pipeline.py",
        "value.astype(np.float32) / np.float32(255.0)",
        "value.astype(np.float32) / np.float32(256.0)",
        ("tests/test_pipeline.py::test_float_images_are_uint8_over_255_without_augmentation",),
    ),
    M(
        "imagenet_mean_reversed",
        "data",
        "dakpn_jax/models/segformer.py",
        "IMAGENET_MEAN = (0.485, 0.456, 0.406)",
        "IMAGENET_MEAN = (0.406, 0.456, 0.485)",
        ("tests/test_segformer.py::test_logits_match_hugging_face",),
        planted=True,
    ),
    # ---------------------------------------------------------------- evaluation
    M(
        "padded_batch_labels_counted",
        "evaluation",
        "dakpn_jax/training/segmentation.py",
        "label = np.full((lb, h, w), IGNORE_INDEX, np.uint8)",
        "label = np.full((lb, h, w), 0, np.uint8)",
        (EXACT + "::test_padded_evaluation_batches_match_a_numpy_confusion_matrix",),
    ),
    M(
        "confusion_transposed",
        "evaluation",
        "dakpn_jax/evaluation/metrics.py",
        "index = jnp.where(valid, label * num_classes + pred, 0)",
        "index = jnp.where(valid, pred * num_classes + label, 0)",
        (EXACT + "::test_padded_evaluation_batches_match_a_numpy_confusion_matrix",),
    ),
    M(
        "miou_counts_empty_class_as_one",
        "evaluation",
        "dakpn_jax/evaluation/metrics.py",
        "per_class = jnp.where(present, tp / jnp.where(present, union, 1.0), jnp.nan)",
        "per_class = jnp.where(present, tp / jnp.where(present, union, 1.0), 1.0); present = present | True",
        ("tests/test_metrics.py",),
    ),
    # ---------------------------------------------------------------- networks
    M(
        "patchgan_lrelu_slope",
        "networks",
        "dakpn_jax/models/patchgan.py",
        "h = jax.nn.leaky_relu(self.convs[0](x), 0.2)\n        for conv, norm in zip(self.convs[1:], self.norms):",
        "h = jax.nn.leaky_relu(self.convs[0](x), 0.1)\n        for conv, norm in zip(self.convs[1:], self.norms):",
        (EXACT + "::test_patchgan_forward_is_the_composition_of_its_layers",),
    ),
    M(
        "patchgan_batchnorm_per_image",
        "networks",
        "dakpn_jax/models/patchgan.py",
        'axes = (0, 1, 2) if self.kind == "batch" else (1, 2)',
        "axes = (1, 2)",
        (EXACT + "::test_patchgan_forward_is_the_composition_of_its_layers",),
    ),
    M(
        "unet_skip_order",
        "networks",
        "dakpn_jax/models/segmenter.py",
        "x = block(jnp.concatenate([x, skip], axis=-1))",
        "x = block(jnp.concatenate([skip, x], axis=-1))",
        (EXACT + "::test_unet_forward_is_the_composition_of_its_layers",),
    ),
    # ---------------------------------------------------------------- export
    M(
        "export_truncates",
        "export",
        "dakpn_jax/export.py",
        "return np.round(np.clip(np.asarray(images, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)",
        "return (np.clip(np.asarray(images, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)",
        (
            EXACT + "::test_to_uint8_rounds_exactly_near_every_half_level",
            "tests/test_export.py::test_exported_uint8_is_exactly_the_rounded_translation",
        ),
        planted=True,
    ),
    M(
        "export_rounds_in_float32",
        "export",
        "dakpn_jax/export.py",
        "np.clip(np.asarray(images, np.float64), 0.0, 1.0) * 255.0",
        "np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0",
        (
            EXACT + "::test_to_uint8_rounds_exactly_near_every_half_level",
            "tests/test_export.py::test_exported_uint8_is_exactly_the_rounded_translation",
        ),
    ),
    # ---------------------------------------------------------------- translator and input (issue #27)
    M(
        "translator_features_shifted_one_pixel",
        "translator",
        "dakpn_jax/training/dakpn_features.py",
        "onehot = jax.nn.one_hot(\n        labels.astype(jnp.int32), num_classes, dtype=jnp.float32\n    )",
        "onehot = jax.nn.one_hot(\n        jnp.roll(labels, 1, axis=2).astype(jnp.int32), num_classes, dtype=jnp.float32\n    )",
        (REF + "::test_translator_matches_independent_computation_from_kpn_params",),
        planted=True,
    ),
    M(
        "translator_features_rows_shifted",
        "translator",
        "dakpn_jax/training/dakpn_features.py",
        "onehot = jax.nn.one_hot(\n        labels.astype(jnp.int32), num_classes, dtype=jnp.float32\n    )",
        "onehot = jax.nn.one_hot(\n        jnp.roll(labels, 1, axis=1).astype(jnp.int32), num_classes, dtype=jnp.float32\n    )",
        (REF + "::test_translator_matches_independent_computation_from_kpn_params",),
    ),
    M(
        "translator_noise_drawn_at_frame_size",
        "translator",
        "dakpn_jax/training/dakpn.py",
        "noise = (\n            translation.noise_field(m.noise_seed, H, W, base_size=base)",
        "noise = (\n            translation.noise_field(m.noise_seed, H, W, base_size=None)",
        (REF + "::test_translator_matches_independent_computation_from_kpn_params",),
    ),
    M(
        "pipeline_crop_never_last_row_col",
        "input",
        "dakpn_jax/data/pipeline.py",
        "top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))",
        "top, left = int(rng.integers(0, max(1, H - h))), int(rng.integers(0, max(1, W - w)))",
        (REF + "::test_crop_offsets_cover_every_legal_offset_edges_included",),
        planted=True,
    ),
    M(
        "pipeline_crop_left_never_last",
        "input",
        "dakpn_jax/data/pipeline.py",
        "int(rng.integers(0, W - w + 1))",
        "int(rng.integers(0, max(1, W - w)))",
        (REF + "::test_crop_offsets_cover_every_legal_offset_edges_included",),
    ),
    M(
        "pipeline_crop_past_the_edge",
        "input",
        "dakpn_jax/data/pipeline.py",
        "int(rng.integers(0, H - h + 1))",
        "int(rng.integers(0, H - h + 2))",
        (REF + "::test_crop_offsets_cover_every_legal_offset_edges_included",),
    ),
    # ---------------------------------------------------------------- CLI
    M(
        "main_preempted_exit_1",
        "cli",
        "dakpn_jax/main.py",
        "sys.exit(143)",
        "sys.exit(1)",
        ("tests/test_cli.py::test_main_preempted_exits_143_and_passes_multihost_flags",),
    ),
    M(
        "main_drops_process_id",
        "cli",
        "dakpn_jax/main.py",
        "FLAGS.num_processes, FLAGS.process_id\n        )",
        "FLAGS.num_processes, None\n        )",
        ("tests/test_cli.py::test_main_preempted_exits_143_and_passes_multihost_flags",),
    ),
    M(
        "protocol_preempted_exit_1",
        "cli",
        "experiments/protocol.py",
        "sys.exit(143)",
        "sys.exit(1)",
        ("tests/test_cli.py::test_protocol_preempted_stage_exits_143",),
    ),
]


IGNORE = shutil.ignore_patterns(
    ".git", "runs", "__pycache__", ".pytest_cache", "*.egg-info", ".venv", "jax_cache"
)


def pytest(copy: str, tests, timeout: float, cache: str | None = None) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONPATH": copy, "JAX_PLATFORMS": "cpu"}
    if cache:  # the unmutated parts (references, initialisers) compile once across mutations
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5"
        )
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t = time.time()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t, ""
    tail = (p.stdout.strip().splitlines() or [""])[-1]
    verdict = {0: "survived", 1: "caught"}.get(p.returncode, f"error (pytest exit {p.returncode})")
    return verdict, time.time() - t, tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated mutation names")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--jobs", type=int, default=1, help="mutations tested at once (one tree copy each)"
    )
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.area:12s} {m.path:40s} {' '.join(m.tests)}")
        return 0
    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate mutation names")
    with tempfile.TemporaryDirectory(prefix="dakpn_mutants_") as tmp:
        cache = os.path.join(tmp, "jax_cache")
        copies = [os.path.join(tmp, f"repo{k}") for k in range(max(1, args.jobs))]
        for copy in copies:
            shutil.copytree(ROOT, copy, ignore=IGNORE)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            verdict, secs, tail = pytest(copies[0], tests, args.timeout * 2, cache)
            print(
                f"baseline (unmutated, {len(tests)} test targets): {'pass' if verdict == 'survived' else verdict}"
                f" in {secs:.0f} s  [{tail}]",
                flush=True,
            )
            if verdict != "survived":
                print("the baseline fails: fix the tests first; verdicts below would mean nothing")
                return 2
        print(
            "| mutation | area | planted | verdict | seconds | last line |\n|---|---|---|---|---|---|",
            flush=True,
        )
        free = queue.Queue()
        for copy in copies:
            free.put(copy)

        def check(m: Mutation):
            copy = free.get()  # one mutation at a time per copy
            try:
                path = os.path.join(copy, m.path)
                with open(path) as f:
                    original = f.read()
                n = original.count(m.old)
                if n != 1:
                    verdict, secs, tail = f"stale (old text found {n} times)", 0.0, ""
                else:
                    with open(path, "w") as f:
                        f.write(original.replace(m.old, m.new))
                    try:
                        verdict, secs, tail = pytest(copy, m.tests, args.timeout, cache)
                    finally:
                        with open(path, "w") as f:
                            f.write(original)
            finally:
                free.put(copy)
            print(
                f"| {m.name} | {m.area} | {'yes' if m.planted else ''} | {verdict} | {secs:.0f} | {tail} |",
                flush=True,
            )
            return m, verdict

        with concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
            rows = list(pool.map(check, chosen))
        caught = sum(v == "caught" for _, v in rows)
        print(
            f"\n{caught} / {len(rows)} caught; survived: "
            f"{[m.name for m, v in rows if v == 'survived'] or 'none'}; "
            f"other: {[(m.name, v) for m, v in rows if v not in ('caught', 'survived')] or 'none'}"
        )
        return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
