"""The evaluation protocol as a library (docs/METHOD.md §1 step 8, §9): stages, statistics, report.

    from dakpn_jax import protocol
    pconfig = protocol.load_config_file("configs/protocol.py", "tiny")
    out = protocol.run_protocol(pconfig, "runs/p")

Modules: `methods` (translator rows as data, the registry of kinds, stage configs), `layout` (the
run directory: every stage's folder and file), `stages` (one folder per stage, reused when
complete; the driver, which passes the console reporter to each stage), `stats` (paired bootstrap intervals,
verdicts), `report` (results.{json,md,html}, the plot), `console` (stage lines with per-kind ETAs), `preflight` (data folders and weight files, checked before any stage), `dryrun`
(every stage with its estimated time, the exports' disk). experiments/protocol.py is the command
line. The classes of every stage come from the data config's label space
(`dakpn_jax.data.label_space.for_data`), so the same stages run on the real benchmarks
(configs/protocol_real.py).
"""

from dakpn_jax.protocol import console, dryrun, layout, methods, preflight, report, stages, stats
from dakpn_jax.protocol.methods import (
    KINDS,
    Translator,
    build_translators,
    load_config_file,
    override,
    register_kind,
    segmenter_config,
    segmenter_sources,
)
from dakpn_jax.protocol.report import markdown, summarise, write_report
from dakpn_jax.protocol.stages import STAGE_FILE, plan, run_protocol, run_seed, stage
from dakpn_jax.protocol.stats import paired_bootstrap, paired_bootstrap_confusions, verdict

__all__ = [
    "KINDS",
    "STAGE_FILE",
    "Translator",
    "build_translators",
    "console",
    "dryrun",
    "layout",
    "load_config_file",
    "markdown",
    "methods",
    "override",
    "paired_bootstrap",
    "preflight",
    "paired_bootstrap_confusions",
    "plan",
    "register_kind",
    "report",
    "run_protocol",
    "run_seed",
    "segmenter_config",
    "segmenter_sources",
    "stage",
    "stages",
    "stats",
    "summarise",
    "verdict",
    "write_report",
]
