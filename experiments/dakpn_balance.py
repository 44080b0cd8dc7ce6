"""Trains DA-KPN on the embedded benchmark and prints the paired-eval curve (docs/METHOD.md §5).

Every ``--eval_every`` steps it scores the translator on the paired view: PSNR of the translated
synthetic image against the real rendering of the same scene, and the per-class mean-colour error,
next to the untranslated baseline. With ``--check`` it exits non-zero unless the final translator
beats the baseline on both.

    python experiments/dakpn_balance.py                          # configs/default.py, 1500 steps
    python experiments/dakpn_balance.py --config=configs/default.py:fast --steps=400 --check
    python experiments/dakpn_balance.py --set loss.form=lsgan --set optim.lr=3e-4
    python experiments/dakpn_balance.py --eval_images=64 --diagnose   # + gap to the family ceiling
    python experiments/dakpn_balance.py --eval_images=64 --diagnose --ceiling=DIR --start_at_ceiling

``--start_at_ceiling`` (a diagnosis, never a method: the start sees paired data) starts the linear
KPN head at the family ceiling's fit (``--ceiling``), so the run shows whether the adversarial
objective keeps the right translation or moves away from it, and where to.

The loop is the method module's own pieces (make_iterators, next_batch, the jitted step,
evaluate) on one device; the generic trainer adds checkpoints, logging and data parallelism.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dakpn_jax.training import dakpn


def load_config(spec: str):
    """``path.py[:variant]`` -> ``get_config(variant)``."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config", path)
    if module_spec is None:
        raise ValueError(f"--config={spec!r}: cannot load {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_override(config, item: str) -> None:
    """``a.b=value`` (value parsed as a Python literal, else kept as a string)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"--set {item!r}: expected key=value")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    if leaf not in node:
        raise ValueError(f"--set {item!r}: unknown config key {key!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    node[leaf] = value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--steps", type=int, default=None, help="default: config.num_train_steps")
    p.add_argument("--eval_every", type=int, default=None, help="default: config.eval_every_steps")
    p.add_argument("--eval_images", type=int, default=None, help="default: config.eval_images")
    p.add_argument(
        "--set", action="append", default=[], help="config override key=value (repeatable)"
    )
    p.add_argument(
        "--check", action="store_true", help="exit 1 unless the translator beats the baseline"
    )
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="at the end, print the paired-view diagnostics against the family ceiling "
        "(experiments/dakpn_diagnostics.py's report)",
    )
    p.add_argument(
        "--ceiling",
        default="",
        help="with --diagnose: a ceiling run directory, loaded if it "
        "exists, else fitted and saved there (the fit takes minutes on a CPU)",
    )
    p.add_argument(
        "--start_at_ceiling",
        action="store_true",
        help="diagnosis only: start the linear KPN head at the ceiling's per-class fit (--ceiling; "
        "fitted first when absent) instead of the identity",
    )
    args = p.parse_args(argv)
    if args.start_at_ceiling and not args.ceiling:
        p.error("--start_at_ceiling needs --ceiling=DIR")

    config = load_config(args.config)
    for item in args.set:
        apply_override(config, item)
    with (
        config.unlocked()
    ):  # the curve needs PSNR only; --diagnose prints the full diagnostics once, at the end
        config.eval_diagnostics = False
    steps = args.steps or config.num_train_steps
    every = args.eval_every or config.eval_every_steps
    n_eval = args.eval_images or config.eval_images

    state = dakpn.init_state(config, jax.random.key(config.seed))
    if args.start_at_ceiling:
        import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

        fit = family.cached_ceiling(args.ceiling, config, args.eval_images or config.eval_images)
        out = state["params"]["kpn"]["out"]
        if config.model.head != "linear" or out["kernel"].shape[2:] != fit.params["kernel"].shape:
            raise ValueError(
                "--start_at_ceiling needs the linear head of the ceiling's class count"
            )
        out["kernel"] = jnp.asarray(fit.params["kernel"], jnp.float32).reshape(out["kernel"].shape)
        out["bias"] = jnp.asarray(fit.params["bias"], jnp.float32)
    step_fn = jax.jit(dakpn.make_train_step(config), donate_argnums=0)
    iterators = dakpn.make_iterators(config)

    header = f"{'step':>6} {'sec':>6} {'psnr':>7} {'psnr_0':>7} {'col_err':>8} {'col_err_0':>9} {'loss_D':>7} {'loss_G':>7}"
    print(header, flush=True)
    ev = dakpn.evaluate(config, state, max_images=n_eval)
    print(
        f"{0:>6} {0:>6} {ev['psnr']:7.2f} {ev['psnr_untranslated']:7.2f} {ev['class_color_err']:8.4f} "
        f"{ev['class_color_err_untranslated']:9.4f}",
        flush=True,
    )
    start = time.time()
    for i in range(1, steps + 1):
        state, metrics = step_fn(state, dakpn.next_batch(iterators))
        if i % every == 0 or i == steps:
            ev = dakpn.evaluate(config, state, max_images=n_eval)
            print(
                f"{i:>6} {time.time() - start:6.0f} {ev['psnr']:7.2f} {ev['psnr_untranslated']:7.2f} "
                f"{ev['class_color_err']:8.4f} {ev['class_color_err_untranslated']:9.4f} "
                f"{float(metrics['loss_D']):7.3f} {float(metrics['loss_G']):7.3f}",
                flush=True,
            )
    if args.diagnose:
        from dakpn_jax.data.labels import CLASS_NAMES  # pylint: disable=import-outside-toplevel
        from dakpn_jax.evaluation import family  # pylint: disable=import-outside-toplevel

        ceiling = family.cached_ceiling(args.ceiling, config, n_eval)
        print(
            family.format_report(
                dakpn.diagnostics(config, state, max_images=n_eval, ceiling=ceiling), CLASS_NAMES
            ),
            flush=True,
        )
    better = (
        ev["psnr"] > ev["psnr_untranslated"]
        and ev["class_color_err"] < ev["class_color_err_untranslated"]
    )
    print(
        f"final: PSNR {ev['psnr_untranslated']:.2f} -> {ev['psnr']:.2f} dB, per-class colour error "
        f"{ev['class_color_err_untranslated']:.4f} -> {ev['class_color_err']:.4f}: "
        f"{'improved' if better else 'NOT improved'}",
        flush=True,
    )
    return 0 if (better or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
