r"""The evaluation protocol (docs/METHOD.md §1 step 8, §9) on one config: a thin command over
`dakpn_jax.protocol` (stages, statistics and report live there).

    python3 experiments/protocol.py --config=configs/protocol.py[:variant] --workdir=DIR [--verbose] [--dry_run]

Prints one start / end line per stage (stage k of n, elapsed, ETA) and a progress bar while a stage
trains, then the results table and where the outputs are. Library logs go to DIR/protocol.log
(``--verbose`` shows them on the console too). DIR gets results.{md,json,html}, miou_vs_n.png,
grid_seed<k>.png and one folder per stage (reused by a rerun).

``--dry_run``: check the data folders and weight files, then print every stage with its estimated
time and the exports' disk size (`dakpn_jax.protocol.dryrun`); nothing trains. A missing data
folder or weights file ends either command in one ``protocol: error: ...`` line, before any stage.

Results as data (`dakpn_jax.protocol.records`): ``--results_dir=results/NAME`` also writes each
finished seed's small records there (commit them); ``--seeds=3,4`` runs those seeds only (runs of
other seeds, on other machines, add their records to the same directory);
``--report_only --results_dir=results/NAME --workdir=DIR`` rebuilds every table, the plot and the html
in DIR from the records alone, without training (records of another protocol config are refused
with the fields that differ). ``--rows=cyclegan,cut`` runs only those translator rows (with
source-only and the oracle): a protocol too long for one session is split into runs of some rows
of some seeds, whose records merge into the whole config's table (docs/RESULTS.md gives the
``:decisive`` split).

Several hosts (a TPU slice: the same command on every worker with ``--multihost``; a GPU cluster:
``--coordinator_address=host0:1234 --num_processes=N --process_id=i``): every host runs every
stage (trainers and exports are SPMD / sharded), process 0 decides which stages are reused and
writes every marker, the report and the records (`dakpn_jax.protocol.hosts`). DIR must be on a
filesystem that all hosts share. Process 0 prints the stage lines and logs to DIR/protocol.log,
process k to DIR/protocol.process<k>.log.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # configs/ and dakpn_jax/ from a plain checkout, nothing installed
    sys.path.insert(0, _ROOT)

from dakpn_jax.protocol import *  # noqa: E402, F403  (the old driver's names, for scripts that import it)
from dakpn_jax import console  # noqa: E402
from dakpn_jax.protocol import run_protocol  # noqa: E402


def main(argv):
    from absl import app, flags  # pylint: disable=import-outside-toplevel

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    # Distributed setup must come before anything touches the jax backend.
    if f.multihost or f.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from dakpn_jax.training import trainer  # pylint: disable=import-outside-toplevel

        trainer.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    workdir = os.path.abspath(f.workdir)
    from dakpn_jax.protocol import dryrun, preflight, records  # pylint: disable=import-outside-toplevel

    if f.seeds:
        try:
            seeds = tuple(int(s) for s in f.seeds.split(","))
        except ValueError:
            console.fail(
                "protocol",
                ValueError(f"--seeds={f.seeds!r}: expected comma-separated integers, e.g. 3,4"),
            )
        with f.config.unlocked():
            f.config.seeds = seeds
    rows = tuple(r for r in f.rows.split(",") if r) if f.rows else None
    if f.report_only:
        if not f.results_dir:
            console.fail(
                "protocol",
                ValueError(
                    "--report_only needs --results_dir (the records to build the report from)"
                ),
            )
        from dakpn_jax import workdir_lock  # pylint: disable=import-outside-toplevel

        try:  # ValueError covers WorkdirInUse: a run writing this workdir now
            os.makedirs(workdir, exist_ok=True)
            with workdir_lock.exclusive(workdir, what="protocol report"):
                out = records.rebuild_report(f.results_dir, workdir)
        except ValueError as e:
            console.fail("protocol", e)
        _print_tables(out["markdown"], workdir, None)
        cpu = records.cpu_hours(f.results_dir)  # every record's stages, complete seeds or not
        per_seed = ", ".join(f"seed {s}: {h:.3f} h" for s, h in sorted(cpu["per_seed"].items()))
        by_kind = ", ".join(f"{k} {h:.3f} h" for k, h in sorted(cpu["by_kind"].items()))
        print(
            f"CPU time of the records: total {cpu['total']:.3f} h ({per_seed}; {by_kind})",
            flush=True,
        )
        return
    try:  # before any log file, cache or stage folder is made
        if f.results_dir:
            records.check_compatible(f.results_dir, f.config)
        from dakpn_jax.protocol import stages  # pylint: disable=import-outside-toplevel

        run_config = stages.select_rows(f.config, rows)
        if f.dry_run:
            print(
                "\n".join(dryrun.lines(run_config, workdir if os.path.isdir(workdir) else None)),
                flush=True,
            )
            return
        preflight.check(run_config)
    except ValueError as e:
        console.fail("protocol", e)
    from dakpn_jax import workdir_lock  # pylint: disable=import-outside-toplevel

    try:  # one protocol per workdir, locked before anything (protocol.log included) is written there
        with workdir_lock.exclusive(workdir, what="protocol"):
            _run(f, workdir, rows)
    except workdir_lock.WorkdirInUse as e:
        console.fail("protocol", e)


def _run(f, workdir, rows=None):
    import jax  # pylint: disable=import-outside-toplevel
    from dakpn_jax.protocol import hosts, layout  # pylint: disable=import-outside-toplevel

    writer = hosts.is_writer()
    log_name = layout.LOG if writer else f"protocol.process{jax.process_index()}.log"
    log_path = console.route_library_logs(workdir, verbose=f.verbose, filename=log_name).path
    # Every segmenter (and every DA-KPN ablation) compiles the same step for the same shapes: a
    # persistent compilation cache under the workdir compiles each once (and reruns reuse it).
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from dakpn_jax.training import preemption  # pylint: disable=import-outside-toplevel

    print(f"protocol -> {workdir} (library logs: {log_path})", flush=True)
    try:
        out = run_protocol(
            f.config, workdir, console=writer, results_dir=f.results_dir or None, rows=rows
        )
    except (
        preemption.Preempted
    ) as e:  # the stage in progress was checkpointed; finished ones are kept
        print(f"preempted: {e}; rerun the same command to continue", file=sys.stderr)
        sys.exit(143)
    if writer:
        _print_tables(out["markdown"], workdir, log_path)


def _print_tables(text, workdir, log_path):
    table = text.split("\n## ", 1)[0].rstrip()
    comps = text.split("## Paired differences", 1)
    print(table)
    if len(comps) > 1:
        print("\n## Paired differences" + comps[1].split("\n## ", 1)[0].rstrip())
    if "\n## Missing" in text:
        print("\n## Missing" + text.split("\n## Missing", 1)[1].split("\n## ", 1)[0].rstrip())
    print(
        f"\nFull report: {os.path.join(workdir, 'results.md')} | {os.path.join(workdir, 'results.html')} | "
        f"{os.path.join(workdir, 'results.json')}; plot miou_vs_n.png, grids grid_seed<k>.png"
        + (f"; log {log_path}" if log_path else "")
    )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    flags.DEFINE_string(
        "workdir", None, "Protocol directory: one folder per stage, results.{md,json,html}, plots."
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Check data and weights, print every stage with its estimated time and "
        "the exports' disk size; run nothing.",
    )
    flags.DEFINE_string(
        "results_dir",
        "",
        "Also write each finished seed's records here (results as data, "
        "e.g. results/NAME in the repository); with --report_only, read them.",
    )
    flags.DEFINE_bool(
        "report_only",
        False,
        "Rebuild the report in --workdir from the records in --results_dir; train nothing.",
    )
    flags.DEFINE_string(
        "seeds", "", "Comma-separated training seeds to run instead of the config's (e.g. 3,4)."
    )
    flags.DEFINE_string(
        "rows",
        "",
        "Comma-separated translator rows to run instead of all (source-only and the oracle "
        "always run); the records still belong to the whole config's table.",
    )
    flags.DEFINE_bool(
        "verbose",
        False,
        "Also show the library's INFO logs on the console (always in DIR/protocol.log).",
    )
    flags.DEFINE_bool(
        "multihost",
        False,
        "jax.distributed.initialize() with auto-detection (Cloud TPU VM slices, SLURM, Open MPI).",
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU clusters).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(_ROOT, "configs", "protocol.py"),
        "Protocol config, `path.py[:variant]`.",
        lock_config=True,
    )
    flags.mark_flags_as_required(["workdir"])
    app.run(main, flags_parser=console.flags_parser("protocol"))
