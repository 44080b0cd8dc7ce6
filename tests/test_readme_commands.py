"""Every command README.md and the config docstrings print works as written (issue #13).

Commands are discovered, not listed here: the fenced ``bash`` blocks of README.md and the lines of
the configs/*.py (and entry-point) docstrings that start with ``python3 -m dakpn_jax``,
``python -m dakpn_jax``, ``dakpn `` or ``python3 experiments/``. So a command the README gains
later is checked too, and a broken example fails CI. Each runs from the repository root in a short
variant:

- ``dakpn_jax.main`` / ``dakpn``: ``--check_config`` appended: the config file loads, every
  ``--config.*`` override the command names is applied (path-valued and optional fields above
  all) and the trainer's validation passes; nothing is trained or written.
- ``dakpn_jax.sweep``: run as written with ``--dry_run`` (added if absent); its first printed
  command is then checked like a main command.
- anything else (experiments/protocol.py, the main job, dakpn_jax.export, argparse scripts): the
  script runs up to its flag parsing (``absl.app.run`` / ``ArgumentParser.parse_args`` are
  intercepted), so its flags and config file must parse; the main job's full run is exercised by
  tests/test_protocol.py.

The ``dakpn`` console script is also run from another directory with the installed-script
import path (no cwd on ``sys.path``), which is where ``from configs import default`` used to fail:
README's CycleGAN command builds its config there, and the docstring's tiny DA-KPN command
really trains 2 steps.
"""

import ast
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import XLA_OPT_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIXES = (
    "python3 -m dakpn_jax",
    "python -m dakpn_jax",
    "dakpn ",
    "python3 experiments/",
    "python experiments/",
)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": XLA_OPT_FLAGS, "PYTHONPATH": REPO}
TIMEOUT = 240

# Stops a script at its flag parsing: absl.app.run and argparse parse, then exit 0 with a marker.
PARSE_ONLY = r"""
import argparse, os, runpy, sys
from absl import app, flags
target, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
def run(main, argv=None, flags_parser=None, **kw):
    argv = sys.argv if argv is None else argv
    (flags_parser or flags.FLAGS)(argv)
    for name in list(flags.FLAGS):  # config files load lazily: load every one now
        getattr(flags.FLAGS, name)
    print("PARSED-OK"); sys.exit(0)
app.run = run
_parse = argparse.ArgumentParser.parse_args
def parse_args(self, args=None, namespace=None):
    _parse(self, args, namespace); print("PARSED-OK"); sys.exit(0)
argparse.ArgumentParser.parse_args = parse_args
if target.endswith(".py"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
print("the script did not reach its flag parsing"); sys.exit(3)
"""


def _shell_lines(text):
    """Logical lines of shell text: backslash continuations joined, blank lines dropped."""
    return [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]


def _commands_in(line):
    """The dakpn commands of one shell line (split at ``&&`` / ``;`` outside quotes; a gcloud
    ``--command="..."`` opened), each as a shell-quoted string."""
    lex = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lex.whitespace_split, lex.commenters = True, "#"
    groups, group = [], []
    for token in lex:
        if token in ("&&", ";", "||", "|", "&"):
            groups.append(group)
            group = []
        else:
            group.append(token)
    groups.append(group)
    out = []
    for g in groups:
        if g and g[0] == "gcloud":
            for a in g:
                if a.startswith("--command="):
                    out += _commands_in(a.split("=", 1)[1])
        elif g and shlex.join(g).startswith(PREFIXES):
            out.append(shlex.join(g))
    return out


def discover():
    """[(where, command)] from README.md's bash blocks and the configs' / entry points' docstrings."""
    found = []
    readme = open(os.path.join(REPO, "README.md")).read()
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", readme, re.S):
        for line in _shell_lines(block):
            found += [("README.md", c) for c in _commands_in(line)]
    files = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
    files += [os.path.join(REPO, "dakpn_jax", f) for f in ("main.py", "sweep.py")]
    for path in files:
        doc = ast.get_docstring(ast.parse(open(path).read())) or ""
        for line in _shell_lines(doc):
            if line.startswith(PREFIXES):  # prose lines are not shell
                found += [(os.path.relpath(path, REPO), c) for c in _commands_in(line)]
    seen, unique = set(), []
    for where, c in found:  # the same command in two places is checked once
        key = tuple(argv_of(c)[1:] if c.startswith("python") else argv_of(c))
        if key not in seen:
            seen.add(key)
            unique.append((where, c))
    return unique


def argv_of(command):
    """argv of a documented command: comments dropped, ``[:variant]`` templates reduced to the
    bare form, ``python``/``python3`` the test's interpreter."""
    command = re.sub(r"\[[^\]\s]*\]", "", command)
    argv = shlex.split(command, comments=True)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def entry_point(argv):
    """'main' | 'sweep' | 'other' and the argv that runs it with this interpreter."""
    if argv[0] == "dakpn":
        return "main", [sys.executable, "-m", "dakpn_jax.main"] + argv[1:]
    if argv[1:3] == ["-m", "dakpn_jax.main"]:
        return "main", argv
    if argv[1:3] == ["-m", "dakpn_jax.sweep"]:
        return "sweep", argv
    return "other", argv


def _run(argv, cwd=REPO, env=ENV):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _explain(where, command, r):
    return f"{where}: `{command}` failed (exit {r.returncode}):\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"


COMMANDS = discover()
_SWEEPS_CHECKED = set()


def test_discovery_finds_the_documented_commands():
    commands = [c for _, c in COMMANDS]
    assert len(commands) >= 8, COMMANDS
    assert any(c.startswith("dakpn ") for c in commands)
    assert any("dakpn_jax.sweep" in c for c in commands)
    assert any("--config.data.data_dir=" in c for c in commands)  # the paper configs' launch lines


def check_main_in_process(argv, monkeypatch):
    """What ``dakpn_jax.main --check_config`` does, in this process: the CLI's own flag
    definitions on fresh FlagValues, the same config-import path, the same validation."""
    from absl import flags

    from dakpn_jax import main as cli

    args = argv[3:] if argv[1:3] == ["-m", "dakpn_jax.main"] else argv[1:]
    fv = flags.FlagValues()
    cli.define_flags(fv)
    monkeypatch.setattr(
        sys, "argv", ["dakpn"] + args
    )  # config_flags finds the --config.* overrides there
    fv(["dakpn"] + args)
    import jax

    return cli.check_config(
        fv.config, devices=jax.devices()[:1]
    )  # the README's machine: one CPU device


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses(where, command, monkeypatch):
    kind, argv = entry_point(argv_of(command))
    if kind == "main":
        monkeypatch.chdir(REPO)  # "as written from the repository root"
        assert check_main_in_process(argv, monkeypatch).startswith("config OK"), command
    elif kind == "sweep":
        if "--dry_run" not in argv:
            argv = argv + ["--dry_run"]
        if tuple(argv) in _SWEEPS_CHECKED:
            return  # the same dry run as another documented command
        _SWEEPS_CHECKED.add(tuple(argv))
        r = _run(argv)
        assert r.returncode == 0, _explain(where, command, r)
        printed = [ln for ln in r.stdout.splitlines() if "dakpn_jax.main" in ln]
        assert printed, _explain(where, command, r)
        r = _run(entry_point(argv_of(printed[0]))[1] + ["--check_config"])  # the real CLI, once
        assert r.returncode == 0 and "config OK" in r.stdout, _explain(where, printed[0], r)
    else:
        target = (
            argv[1:] if argv[1] != "-m" else argv[2:]
        )  # a script path or a module name, then its flags
        r = _run([sys.executable, "-c", PARSE_ONLY] + target)
        assert r.returncode == 0 and "PARSED-OK" in r.stdout, _explain(where, command, r)


def _console_script_env(tmp_path):
    """The installed ``dakpn`` script's import situation: the package importable, the repository
    root (with configs/ and tests/) not, and no cwd on sys.path (``python -P``)."""
    site = tmp_path / "site"
    site.mkdir()
    os.symlink(os.path.join(REPO, "dakpn_jax"), site / "dakpn_jax")
    return {**ENV, "PYTHONPATH": str(site)}


SCRIPT = "import sys; sys.argv[0] = 'dakpn'; from dakpn_jax.main import run; run()"


def _documented(prefix, config):
    found = [c for _, c in COMMANDS if c.startswith(prefix) and f"--config={config}" in c]
    assert found, f"no documented `{prefix}... --config={config}...` command any more"
    return argv_of(found[0])


@pytest.mark.slow
def test_console_script_works_from_any_directory(tmp_path):
    """The installed-script situation (no cwd and no repository root on sys.path), run from another
    directory with the config given by its absolute path: README's ``dakpn
    --config=configs/cyclegan.py:benchmark`` (whose config imports its sibling configs/default.py)
    builds and validates; the docstring's ``dakpn --config=configs/default.py:tiny`` really trains
    2 steps (the cheapest documented real run: GAN compilations dominate on a CPU)."""
    env = _console_script_env(tmp_path)

    def absolute(argv, workdir):
        out = []
        for a in argv[1:]:
            if a.startswith("--config="):
                a = "--config=" + os.path.join(REPO, a.split("=", 1)[1])
            elif a.startswith("--workdir="):
                a = f"--workdir={workdir}"
            out.append(a)
        return [sys.executable, "-P", "-c", SCRIPT] + out

    cyclegan = absolute(_documented("dakpn ", "configs/cyclegan.py"), tmp_path / "cyclegan")
    r = _run(cyclegan + ["--check_config"], cwd=str(tmp_path), env=env)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr[-3000:]
    tiny = absolute(_documented("dakpn ", "configs/default.py:tiny"), tmp_path / "tiny")
    r = _run(
        tiny + ["--config.num_train_steps=2", "--config.eval_every_steps=0"],
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0 and '"step": 2' in r.stdout, r.stderr[-3000:]
    assert (tmp_path / "tiny" / "log.txt").exists() and r.stderr.count("\n") == 2, (
        r.stderr
    )  # start, end
    assert "orbax" not in r.stderr and " absl] " in (tmp_path / "tiny" / "log.txt").read_text()


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            [
                "-m",
                "dakpn_jax.sweep",
                "--config=configs/segmentation.py",
                "--workdir=runs/x",
                "--dry_run",
            ],
            "defines no get_sweep",
        ),
        (["-m", "dakpn_jax.sweep", "--config=configs/default.py", "--dry_run"], "--workdir"),
        (["-m", "dakpn_jax.main", "--config=configs/nope.py", "--workdir=runs/x"], "no such file"),
        (["-m", "dakpn_jax.main", "--config=configs/default.py"], "--workdir"),
        (
            ["-m", "dakpn_jax.main", "--config=configs/default.py:nope", "--check_config"],
            "unknown variant",
        ),
        (
            [
                "-m",
                "dakpn_jax.main",
                "--config=configs/default.py",
                "--check_config",
                "--config.nope=1",
            ],
            "no field",
        ),
        (
            [
                "-m",
                "dakpn_jax.main",
                "--config=configs/default.py",
                "--check_config",
                "--config.batch_size=0",
            ],
            "batch_size",
        ),
    ],
)
def test_user_errors_end_in_one_line(args, needle):
    r = _run([sys.executable] + args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    assert ": error: " in lines[0] and needle in lines[0], lines


def _plain_none_fields(c, prefix=""):
    import ml_collections

    for k in c.keys():
        raw = c._fields[k]  # a FieldReference for a placeholder, None for a plain None
        if isinstance(raw, ml_collections.ConfigDict):
            yield from _plain_none_fields(raw, prefix + k + ".")
        elif raw is None:
            yield prefix + k


def test_no_config_field_is_a_plain_none():
    """A field that defaults to None must be a typed placeholder, or the command line cannot set it
    ("Type NoneType of field ... is not supported for overriding")."""
    sys.path.insert(0, REPO)
    import importlib.util

    bad = {}
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location("_cfg_" + os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(
            module, "get_config"
        ):  # a shared builder (configs/_dakpn_real.py): its users are checked
            continue
        doc = module.__doc__ or ""
        variants = {None} | set(re.findall(r'``"([\w-]+)"``', doc))
        for v in sorted(variants, key=str):
            try:
                c = module.get_config(v)
            except ValueError:
                continue  # a quoted word of the docstring that is no variant
            fields = list(_plain_none_fields(c))
            if fields:
                bad[f"{os.path.basename(path)}:{v}"] = fields
    assert not bad, bad
