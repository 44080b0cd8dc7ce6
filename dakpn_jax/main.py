r"""Command-line entry point, flax-examples style.

    python -m dakpn_jax.main --config=configs/default.py --workdir=/tmp/dakpn
    python -m dakpn_jax.main --config=configs/default.py:tiny --workdir=/tmp/t --config.num_train_steps=50
    dakpn --config=configs/default.py:tiny --workdir=runs/tiny   # the installed console script, from any directory

``--config.x=y`` overrides any existing field (a typo is an error: the config is locked); fields
that default to None are typed placeholders, so ``--config.data.data_dir=DIR`` works. Running again
with the same ``--workdir`` resumes from its latest checkpoint. On SIGTERM (a preemption notice) the run
checkpoints the step in progress and exits with status 143; rerunning resumes from there.

Multi-host:
  Cloud TPU VM slice: run the same command on every worker (``gcloud compute tpus tpu-vm ssh NAME
  --worker=all --command="..."``) with ``--multihost``; ``jax.distributed.initialize()`` finds the
  other workers by itself (also under SLURM / Open MPI).
  GPU cluster without such a launcher: on each host pass ``--coordinator_address=host0:1234
  --num_processes=N --process_id=i`` (``JAX_COORDINATOR_ADDRESS`` in the environment also switches
  distributed initialisation on).
  Single machine, one or several GPUs: no flag; every local device joins the "data" mesh.

Console: a start line, one progress bar and an end line; library INFO records go to
``WORKDIR/log.txt`` (``--verbose`` shows them too). ``--check_config`` builds the config with every
override, validates it and exits without touching the workdir or the data. User errors (a missing
flag, a bad config path or override, an unusable workdir) end in one ``dakpn: error: ...`` line
with exit status 2 (1 for a run that fails, e.g. on NaN); ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dakpn_jax import console, registry

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines this CLI's flags on ``flag_values`` (the global FLAGS at import; a fresh
    ``flags.FlagValues()`` lets a test parse a command line in-process exactly as the CLI does)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "workdir",
        None,
        "Run directory: checkpoints, config.json, TensorBoard events, log.txt.",
        **fv,
    )
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file, `path.py` or `path.py:arg` (get_config(arg)).",
        lock_config=True,
        **fv,
    )
    flags.DEFINE_bool(
        "multihost",
        False,
        "Call jax.distributed.initialize() with auto-detection "
        "(Cloud TPU VM slices, SLURM, Open MPI).",
        **fv,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-host GPU clusters).", **fv
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (with --coordinator_address).", **fv
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index (with --coordinator_address).", **fv
    )
    flags.DEFINE_bool(
        "verbose",
        False,
        "Also print library INFO logs (absl, orbax, grain) on the console; "
        "they always go to WORKDIR/log.txt. Shows tracebacks of errors.",
        **fv,
    )
    flags.DEFINE_bool(
        "check_config",
        False,
        "Build and validate the config (with every --config.* override), "
        "print a summary and exit; nothing is trained or written.",
        **fv,
    )


define_flags(FLAGS)


def check_config(config, devices=None) -> str:
    """Validates ``config`` as the trainer would (method module, generic fields, batch vs the
    ``devices``, default all) and returns a one-line summary; ValueError naming the field otherwise.
    A registered method that cannot run as published with this config (`dakpn_jax.registry`'s
    ``available``, e.g. VSAIT without VGG19 weights) still trains, so the summary says why instead."""
    from dakpn_jax.training import trainer

    method = trainer.validate_config(config, trainer.make_mesh(devices))
    data = config.get("data") or {}
    where = {
        k: data.get(k)
        for k in ("name", "data_dir", "synthetic_dir", "real_dir")
        if data.get(k) is not None
    }
    summary = (
        f"config OK: method {config.method} ({method.__name__}), {config.num_train_steps} steps, batch "
        f"{config.batch_size}, data {where or '(defaults)'}"
    )
    if config.method in registry.REGISTRY:
        ok, why = registry.get(config.method).is_available(config)
        if not ok:
            summary += f"; not as published: {why}"
    return summary


def main(argv):
    if len(argv) > 1:
        console.fail(
            "dakpn", f"unexpected command-line arguments {argv[1:]} (flags are --name=value)"
        )
    if FLAGS.check_config:
        if not FLAGS.verbose:
            logging.set_verbosity(logging.WARNING)  # jax's backend-probing INFO lines
        try:
            print(check_config(FLAGS.config))
        except ValueError as e:
            console.fail("dakpn", e)
        return
    try:
        _train(argv)
    except (ValueError, FloatingPointError) as e:
        if FLAGS.verbose:
            raise
        console.fail(
            "dakpn",
            f"{e} (--verbose shows the traceback)",
            code=2 if isinstance(e, ValueError) else 1,
        )


def _train(argv):
    del argv
    # Distributed setup must come before anything touches the jax backend.
    if FLAGS.multihost or FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from dakpn_jax.training import trainer

        trainer.initialize_distributed(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    import jax

    from dakpn_jax.training import preemption, trainer

    from dakpn_jax import workdir_lock

    # Locked before the log routing opens WORKDIR/log.txt, so a second launch writes nothing there.
    with (
        workdir_lock.exclusive(FLAGS.workdir, what="dakpn"),
        console.route_library_logs(
            FLAGS.workdir, verbose=FLAGS.verbose or bool(FLAGS.config.get("log_to_console"))
        ),
    ):
        logging.info(
            "JAX process %d / %d, local devices %s",
            jax.process_index(),
            jax.process_count(),
            jax.local_devices(),
        )
        logging.info("Config:\n%s", FLAGS.config)
        try:
            metrics = trainer.train_and_evaluate(
                FLAGS.config, FLAGS.workdir, verbose=FLAGS.verbose or None
            )
        except preemption.Preempted as e:
            logging.warning("%s", e)
            sys.exit(143)  # 128 + SIGTERM: what a scheduler expects of a job it stopped
    if jax.process_index() == 0:
        print(json.dumps({"workdir": FLAGS.workdir, **metrics}, sort_keys=True))


def run():
    """Console-script entry point (``dakpn``); works from any directory (config files load their
    siblings by path: `dakpn_jax.config_files`)."""
    flags.mark_flags_as_required(["config"])
    if "--check_config" not in sys.argv and not any(
        a.startswith("--check_config=") for a in sys.argv
    ):
        flags.mark_flags_as_required(["workdir"])
    app.run(main, flags_parser=console.flags_parser("dakpn"))


if __name__ == "__main__":
    run()
