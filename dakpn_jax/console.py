"""What a run shows on the console: a start line, one live progress bar, an end line.

Library INFO records (absl, orbax, grain, jax and our own ``dakpn_jax.*`` loggers) go to a log file
in the run directory instead of the console; warnings and errors still reach the console. Used by
the trainer for every single run and meant for drivers that run many (experiments/protocol.py)::

    with console.route_library_logs(workdir, verbose=False):   # INFO -> workdir/log.txt
        console.say(f"stage 1/3 dakpn: training in {workdir}")
        bar = console.progress_bar(total=600, initial=0, desc="dakpn")
        for ...:
            bar.update(1); bar.set_postfix_str("loss 0.69")
        bar.close()

Routings nest: an inner one (the trainer's, inside a driver's) adds its own file and removes it
again on exit, so the outer file gets every record and the inner file that run's. Routing the same
file twice reuses one handler (no duplicated records). Everything prints on process 0 only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from typing import Any

LOG_FILE = "log.txt"
_FORMAT = "%(asctime)s %(levelname).1s %(name)s] %(message)s"
_active: dict[str, list] = {}  # absolute log path -> [handler, reference count]


def _is_primary() -> bool:
    try:
        import jax  # pylint: disable=import-outside-toplevel

        return jax.process_index() == 0
    except Exception:  # pylint: disable=broad-except  # before/without a backend: behave as primary
        return True


def _console_handlers(root: logging.Logger) -> list[logging.Handler]:
    """The root logger's handlers that print to a terminal stream (absl's included)."""
    out = []
    for h in root.handlers:
        if isinstance(h, logging.FileHandler):
            continue
        stream = getattr(h, "stream", None)
        if type(h).__name__ == "ABSLHandler" or stream in (
            sys.stderr,
            sys.stdout,
            sys.__stderr__,
            sys.__stdout__,
        ):
            out.append(h)
    return out


class _TqdmStream:
    """A stream for a logging handler that prints above a live tqdm bar instead of through it."""

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            from tqdm import tqdm  # pylint: disable=import-outside-toplevel

            tqdm.write(text, file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()


class _NotSaid(logging.Filter):
    """Keeps `say` lines (printed directly) from reaching a console handler a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "dakpn_jax.console"


_NOT_SAID = _NotSaid()


class _CheckpointNoise(logging.Filter):
    """Keeps orbax's routine warnings (read-only restore managers, ...) off the console unless
    ``verbose``; they are still in the log file. Errors always show."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = record.name.startswith(("absl", "orbax")) or "orbax" in record.pathname
        return not noisy or record.levelno >= logging.ERROR


_CHECKPOINT_NOISE = _CheckpointNoise()


class LogRouting:
    """Undo handle of :func:`route_library_logs` (also a context manager). ``path``: the log file."""

    def __init__(self, path: str, verbose: bool):
        self.path, self.verbose = path, verbose
        root = logging.getLogger()
        self._root_level = root.level
        self._levels: list[tuple[logging.Handler, int]] = []
        self._added_console: logging.Handler | None = None
        entry = _active.get(path)
        if entry is None:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=False)
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter(_FORMAT))
            root.addHandler(handler)
            entry = _active[path] = [handler, 0]
        entry[1] += 1
        if root.getEffectiveLevel() > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)  # INFO records must reach the file handler
        threshold = logging.INFO if verbose else logging.WARNING
        consoles = _console_handlers(root)
        self._filters: list[tuple[logging.Handler, logging.Filter]] = []
        for h in consoles:
            self._levels.append((h, h.level))
            h.setLevel(max(h.level, threshold) if not verbose else h.level)
            # Only filters this routing adds are removed again on close: an inner routing (the
            # trainer's, inside the protocol's) must not strip the outer one's.
            for f in (_NOT_SAID,) + (() if verbose else (_CHECKPOINT_NOISE,)):
                if f not in h.filters:
                    h.addFilter(f)
                    self._filters.append((h, f))
        if not consoles:
            # No console handler (not under absl's app.run): a file handler switches Python's
            # last-resort stderr output off, so warnings need a handler of their own.
            h = logging.StreamHandler(_TqdmStream())
            h.setLevel(threshold)
            h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            h.addFilter(_NOT_SAID)
            if not verbose:
                h.addFilter(_CHECKPOINT_NOISE)
            root.addHandler(h)
            self._added_console = h

    def close(self) -> None:
        root = logging.getLogger()
        for h, level in reversed(self._levels):
            h.setLevel(level)
        for h, f in self._filters:
            h.removeFilter(f)
        self._filters = []
        self._levels = []
        if self._added_console is not None:
            root.removeHandler(self._added_console)
            self._added_console = None
        entry = _active.get(self.path)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                root.removeHandler(entry[0])
                entry[0].close()
                del _active[self.path]
                root.setLevel(self._root_level)

    def __enter__(self) -> "LogRouting":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def route_library_logs(
    workdir: str, verbose: bool = False, *, filename: str = LOG_FILE
) -> LogRouting:
    """Sends INFO (and above) log records to ``workdir/filename`` and keeps the console to warnings.

    Args:
      workdir: run directory (created if missing; for a remote ``gs://`` workdir the file goes to
        ``$TMPDIR/dakpn_logs/<workdir spelled as a file name>/``).
      verbose: also show INFO records on the console (``--verbose`` / ``config.log_to_console``).
      filename: log file name inside ``workdir`` (appended to, so reruns keep their history).
    Returns:
      A `LogRouting` whose ``close()`` (or ``with`` exit) restores the previous handlers and levels.
    """
    workdir = os.fspath(workdir)
    if "://" in workdir:  # a remote workdir (gs://...): logging.FileHandler needs a local file
        workdir = os.path.join(
            tempfile.gettempdir(), "dakpn_logs", re.sub(r"[^A-Za-z0-9_.-]+", "_", workdir)
        )
    os.makedirs(workdir, exist_ok=True)
    return LogRouting(os.path.abspath(os.path.join(workdir, filename)), bool(verbose))


def say(message: str) -> None:
    """One console line (stderr, above any live bar), on process 0 only; also logged to the file."""
    logging.getLogger("dakpn_jax.console").info("%s", message)
    if _is_primary():
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel

        tqdm.write(message, file=sys.stderr)


def progress_bar(
    total: int,
    initial: int = 0,
    desc: str | None = None,
    *,
    enabled: bool = True,
    unit: str = "step",
) -> Any:
    """A live tqdm bar on stderr, redrawn in place at most 10 times a second.

    Shown on process 0 when stderr is a terminal; elsewhere (other processes, stderr redirected
    to a file or a pipe, where every redraw would become a line) it is a disabled bar, so the
    same calls stay valid and cost nothing. ``DAKPN_PROGRESS=1`` forces it on.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    tty = (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()) or os.environ.get(
        "DAKPN_PROGRESS"
    ) == "1"
    return tqdm(
        total=int(total),
        initial=int(initial),
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not (enabled and tty and _is_primary()),
        dynamic_ncols=True,
        leave=True,
        mininterval=0.1,
        smoothing=0.1,
    )


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``, ``3725`` -> ``"1h02m05s"``, ``4.2`` -> ``"4.2s"``."""
    if not seconds == seconds:  # NaN
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------- command lines


def _flag_value(argv, name: str) -> str | None:
    """The value of ``--name=V`` / ``--name V`` in `argv` (the last one wins), else None."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def fail(prog: str, message: str, code: int = 2) -> None:
    """One ``prog: error: message`` line on stderr and exit ``code`` (user errors: no traceback)."""
    message = " ".join(str(message).split())  # one line
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _innermost(e: BaseException) -> BaseException:
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return e


def flags_parser(prog: str, config_flag: str | None = "config"):
    """An ``absl.app.run(flags_parser=...)`` that turns flag and config-file errors into one line.

    Covers: a missing required flag, an unknown flag, a config path that does not exist, a config
    file that fails to load (bad ``:variant``, import error) and a bad ``--config.x`` override.
    """

    def parse(argv):
        from absl import flags  # pylint: disable=import-outside-toplevel

        if config_flag:
            value = _flag_value(argv, config_flag)
            if value and not os.path.isfile(value.split(":", 1)[0]):
                fail(
                    prog,
                    f"--{config_flag}={value}: no such file {value.split(':', 1)[0]!r} (relative paths "
                    f"start at the current directory {os.getcwd()!r})",
                )
        try:
            rest = flags.FLAGS(argv)
            if config_flag and config_flag in flags.FLAGS:
                getattr(
                    flags.FLAGS, config_flag
                )  # config files load lazily: fail here, not in main
        except flags.Error as e:
            text = str(e)
            if "Traceback (most recent call last)" in text:  # a config file raised while loading
                last = [
                    ln.strip()
                    for ln in text.splitlines()
                    if re.match(r"\s*[\w.]+(Error|Exception): ", ln)
                ]
                text = f"cannot load --{config_flag}={_flag_value(argv, config_flag)}: " + (
                    last[-1] if last else text
                )
                fail(prog, text)
            fail(prog, f"{text} (--helpshort lists the flags)")
        except (
            KeyError,
            AttributeError,
        ) as e:  # ConfigDict: an override names a field that does not exist
            fail(
                prog,
                f"--{config_flag}.*: the config {_flag_value(argv, config_flag)} has no field "
                f"{_innermost(e)} (overrides can only set existing fields; a typo?)",
            )
        except Exception as e:  # pylint: disable=broad-except  # a config file's own error
            inner = _innermost(e)
            where = f" --{config_flag}={_flag_value(argv, config_flag)}" if config_flag else ""
            fail(
                prog,
                f"cannot build the config{where} with the given --{config_flag}.* overrides: "
                f"{type(inner).__name__}: {inner}",
            )
        return rest

    return parse
