r"""Command-line entry point, flax-examples style.

    python -m dakpn_jax.main --config=configs/default.py --workdir=/tmp/dakpn
    python -m dakpn_jax.main --config=configs/default.py:tiny --workdir=/tmp/t --config.num_train_steps=50
    dakpn --config=... --workdir=...                      # the installed console script

``--config.x=y`` overrides any existing field (a typo is an error: the config is locked). Running again
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
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Run directory: checkpoints, config.json, TensorBoard events.")
config_flags.DEFINE_config_file("config", None, "Config file, `path.py` or `path.py:arg` (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with auto-detection "
                  "(Cloud TPU VM slices, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host GPU clusters).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected command-line arguments: {argv[1:]}")
    # Distributed setup must come before anything touches the jax backend.
    if FLAGS.multihost or FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from dakpn_jax.training import trainer

        trainer.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    import jax

    from dakpn_jax.training import trainer

    logging.info("JAX process %d / %d, local devices %s", jax.process_index(), jax.process_count(),
                 jax.local_devices())
    logging.info("Config:\n%s", FLAGS.config)
    from dakpn_jax.training import preemption

    try:
        metrics = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.Preempted as e:
        logging.warning("%s", e)
        sys.exit(143)  # 128 + SIGTERM: what a scheduler expects of a job it stopped
    if jax.process_index() == 0:
        print(json.dumps({"workdir": FLAGS.workdir, **metrics}, sort_keys=True))


def run():
    """Console-script entry point (``dakpn``)."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
