"""`easyalign <command> [flags]` — one entry point for every phase and tool.

Phase commands take an ml_collections config file with an optional preset and field overrides,
plus the multi-host flags every phase accepts:

    easyalign sft --config=configs/sft.py:tiny --config.train.steps=200
    easyalign dpo --config=configs/dpo.py --coordinator=10.0.0.1:1234 --num_processes=2 --process_id=0

Tool commands (`convert`, `sample`) take plain flags. Each command's module is imported only
when it runs, so `easyalign --help` is instant; `easyalign <command> --help` lists the
command's flags and config keys with their one-line comments (from the config files).

The error boundary: every failure a user can cause — a config key or value, a missing or broken
file, a locked or mismatched run directory, a full disk, a device out of memory, a diverged run
— ends as one line on stderr, `easyalign <command>: <what is wrong, naming the key, file or
path>`, and exit status 1. `--debug` (or `EASYALIGN_DEBUG=1`) shows the traceback instead.
Ctrl-C and SIGTERM (`kill`, `timeout`, SLURM preemption) stop a run alike: one line saying what
became of its workdir, exit status 128 + the signal.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags


from easyalign.config_check import suggest_key
from easyalign.config_keys import ConfigError, did_you_mean, flat_keys
from easyalign.stages import STAGES, resolve, stage_function

TOOLS = {
    "convert": ("easyalign.tools", "convert", "HF ⇄ easyalign checkpoint"),
    "sample": ("easyalign.tools", "sample", "print completions of a checkpoint"),
}


def _config_flags(argv: list[str]) -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "index of this process", flag_values=fv)
    config_flags.DEFINE_config_file("config", None, "config file[:preset]", flag_values=fv,
                                    sys_argv=argv)
    return fv


def _last_line(text: str) -> str:
    """The message of an error whose text ends in a traceback (ml_collections wraps them)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _unknown_key(args: list[str]) -> ConfigError:
    """The first `--config.KEY=` override naming no field, with a "did you mean"."""
    files = [a for a in args if a.startswith("--config=")]
    try:
        base = _config_flags(["easyalign", *files])
        base(["easyalign", *files])
        known = flat_keys(base.config)
    except Exception:  # the file itself is broken: reported by the caller's message
        known = []
    for arg in args:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            if key not in known and not any(k.startswith(key + ".") for k in known):
                hint = suggest_key(key, known)
                return ConfigError(f"unknown config key {key!r} ({arg})" +
                                   (f": {hint}" if hint else ""))
    return ConfigError(f"unknown config key in {[a for a in args if a.startswith('--config.')]}")


def _config_dir(args: list[str]) -> str:
    """The directory of the `--config=FILE[:preset]` file ("" when none is given)."""
    value = next((a[len("--config="):] for a in args if a.startswith("--config=")), "")
    path = value.rsplit(":", 1)[0] if ":" in Path(value).name else value
    return os.path.dirname(os.path.abspath(path)) if path else ""


def _importable_beside(args: list[str]) -> None:
    """Let a config file import the modules beside it (`my_rewards.py` next to `my_grpo.py`),
    as `python my_grpo.py` would: its directory goes on `sys.path`."""
    directory = _config_dir(args)
    if directory and directory not in sys.path:
        sys.path.insert(0, directory)


def _config_file_first(args: list[str]) -> list[str]:
    """`--config=FILE` (or `--config FILE`) moved before the overrides, wherever it was typed:
    absl applies `--config.KEY=VALUE` only after the file, and otherwise stops."""
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return [arg, *args[:i], *args[i + 1:]]
        if arg == "--config" and i + 1 < len(args):
            return [arg, args[i + 1], *args[:i], *args[i + 2:]]
    return args


def load_config(args: list[str]):
    """Parse `--config=FILE[:preset]`, `--config.a.b=v` overrides and the multi-host flags."""
    args = _config_file_first(list(args))
    argv = ["easyalign"] + args
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        # absl would name the first override an unknown flag: the file is what is missing —
        # or was given under a misspelt flag (`--confg=...`), which is then named.
        for arg in args:
            flag = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
            if flag and not flag.startswith("config.") and did_you_mean(flag, ["config"]):
                raise ConfigError(f"unknown flag --{flag} ({arg}): did you mean --config?")
        raise ConfigError("missing --config=FILE[:preset] (e.g. --config=configs/sft.py:tiny)"
                          + (" for the --config.KEY=VALUE overrides"
                             if any(a.startswith("--config.") for a in args) else ""))
    _importable_beside(args)
    try:
        fv = _config_flags(argv)
        rest = fv(argv)
        config = fv.config
        if config is not None:
            config.get("phase")  # a file that failed to load raises only when first used
    except (AttributeError, KeyError):  # ml_collections: an override names no field
        raise _unknown_key(args) from None
    except SyntaxError as e:  # the config file's own Python (or a module it imports)
        where = next((a for a in args if a.startswith("--config=")), "--config")
        raise ConfigError(f"{where}: {e.msg} ({e.filename}, line {e.lineno})") from None
    except ImportError as e:  # the config file's own imports (a module of one's own)
        where = next((a for a in args if a.startswith("--config=")), "--config")
        raise ConfigError(f"{where}: {e} (the file's directory, {_config_dir(args)}, and the "
                          "PYTHONPATH are searched)") from None
    except flags.Error as e:
        message = str(e)
        if "Error whilst parsing config file" in message or "Traceback" in message:
            where = next((a for a in args if a.startswith("--config=")), "--config")
            last = _last_line(message)
            if "No such file or directory" in message:
                last = "no such config file"
            message = f"{where}: {re.sub(r'^[A-Za-z]+Error: ', '', last)}"
        raise ConfigError(" ".join(message.split())) from None
    except (OSError, ValueError) as e:
        if "No such file or directory" in str(e):
            where = next((a for a in args if a.startswith("--config=")), "--config")
            raise ConfigError(f"{where}: no such config file") from None
        raise ConfigError(" ".join(str(e).split())) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument(s) {rest[1:]}: every input is a flag, e.g. "
                          "--config.train.steps=10")
    if config is None:  # `--config` given without a value
        raise ConfigError("missing --config=FILE[:preset] (e.g. --config=configs/sft.py:tiny)")
    if fv.coordinator is not None:
        config.distributed.coordinator = fv.coordinator
    if fv.num_processes is not None:
        config.distributed.num_processes = fv.num_processes
    if fv.process_id is not None:
        config.distributed.process_id = fv.process_id
    return config


def usage() -> str:
    lines = ["usage: easyalign <command> [flags]   (easyalign <command> --help: its flags and "
             "config keys)", "", "phases (take --config=FILE[:preset]):"]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in STAGES.items()]
    lines += ["", "tools:"] + [f"  {name:<13} {help_}" for name, (_, _, help_) in TOOLS.items()]
    lines += ["", "every command: --debug (or EASYALIGN_DEBUG=1) shows the traceback of an error"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- help
_ASSIGN = re.compile(r"^\s*([A-Za-z_]\w*(?:\.\w+)*)\s*=\s*(?:(\w+)\s*=\s*)?(.*?)\s*(?:#\s?(.*))?$")


def config_comments(*files: Path) -> dict[str, str]:
    """`{dotted key: its one-line comment}` read from config files (`c.train = t =
    ConfigDict()` aliases followed; continuation comment lines appended)."""
    comments: dict[str, str] = {}
    for file in files:
        if not file.is_file():
            continue
        aliases, last = {"c": ""}, None
        for line in file.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("if preset") or stripped.startswith("elif preset"):
                break  # a preset's comments explain the preset, not the key
            if last and re.match(r"^\s*#\s{10,}\S", line):
                comments[last] += " " + stripped.lstrip("# ").strip()
                continue
            match = _ASSIGN.match(line)
            if not match:
                last = None
                continue
            target, alias, _, comment = match.groups()
            head, *rest = target.split(".")
            if head not in aliases:
                last = None
                continue
            key = ".".join(([aliases[head]] if aliases[head] else []) + rest)
            if alias:
                aliases[alias] = key
            if comment and key:
                comments[key] = comment.strip()
                last = key
            else:
                last = None
    return comments


def command_help(command: str, args: list[str]) -> str:
    """`easyalign <command> --help`: the command's flags, and for a phase its config keys with
    their current values and one-line comments."""
    if command in TOOLS:
        from easyalign import tools

        return tools.usage(command)
    repo = Path(__file__).resolve().parents[1]
    phase = command.replace("-", "_")
    example = f"configs/{'ablations' if phase == 'ablate' else phase}.py"
    # The keys shown are those of the given config file, else of the phase's own (an example:
    # a run always names its file, there is no default).
    given = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), example)
    lines = [f"usage: easyalign {command} --config=FILE[:preset] [--config.KEY=VALUE ...]",
             f"  {STAGES[command][2]}", "", "flags:",
             f"  --config=FILE[:preset]   the config file (required), e.g. {example}:tiny",
             "  --config.KEY=VALUE       override any key below (unknown keys are errors)",
             "  --coordinator=HOST:PORT  --num_processes=N  --process_id=I   multi-host",
             "  --debug                  show the traceback of an error", ""]
    try:
        config = load_config([f"--config={given}"])
    except ConfigError as e:
        return "\n".join(lines + [f"(config keys unavailable: {e})"])
    file = repo / given.split(":", 1)[0]
    comments = config_comments(repo / "configs" / "base.py", file)
    named = any(a.startswith("--config=") for a in args)
    lines.append(f"config keys ({given if named else 'as in ' + given}):")
    for key in flat_keys(config):
        node = config
        for part in key.split("."):
            node = node[part]
        value = repr(node)
        lines.append(f"  {key} = {value if len(value) < 40 else value[:37] + '...'}" +
                     (f"    # {comments[key]}" if key in comments else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the boundary
def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# A full disk, as an OSError (ENOSPC, or EDQUOT: a quota) or as the text of one wrapped by a
# library — tensorstore (Orbax's writer) reports it as RESOURCE_EXHAUSTED, the status XLA gives
# a device out of memory, so this is asked first.
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|"
                        r"os_error_code='?(?:28|122)\b", re.IGNORECASE)
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_WRITE_BYTES = re.compile(r"(?:Failed to write|writing)\s+([\d,]+)\s+bytes", re.IGNORECASE)
_OOM = re.compile(r"RESOURCE_EXHAUSTED|out of memory", re.IGNORECASE)
_OOM_BYTES = re.compile(r"(?:allocat\w*|requested)\s+(?:of\s+)?([\d,]+)\s*(?:bytes|B\b)",
                        re.IGNORECASE)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full(error: BaseException, command: str = "", workdir: str | None = None) -> str | None:
    """The one line for a full disk or an exceeded quota anywhere in `error`'s chain: the path
    being written (the OSError's, else the last absolute path quoted in the message — a
    checkpoint's temporary name given as the checkpoint —, else `workdir`), how much when the
    message says, and what to do; None for any other error."""
    chain = list(_causes(error))
    hit = next((e for e in chain if isinstance(e, OSError) and e.errno in (
        errno.ENOSPC, errno.EDQUOT) or _DISK_FULL.search(str(e))), None)
    if hit is None:
        return None
    text = " ".join(str(e) for e in chain)
    quota = (isinstance(hit, OSError) and hit.errno == errno.EDQUOT) or bool(
        re.search(r"quota exceeded|os_error_code='?122\b", text, re.IGNORECASE))
    where = next((str(e.filename) for e in chain if isinstance(e, OSError) and e.filename), "")
    if not where:
        paths = _QUOTED_PATH.findall(str(hit))
        where = paths[-1] if paths else (str(workdir) if workdir else "")
    where = re.sub(r"\.orbax-checkpoint-tmp.*$", "", where)  # the step being saved
    size = _WRITE_BYTES.search(text)
    what = f" writing {_size(int(size.group(1).replace(',', '')))}" if size else (
        " writing" if where else "")
    fix = ("free space there, or write elsewhere" if command in TOOLS else
           "free space there, or point --config.workdir at a larger disk (a lower "
           "train.keep_checkpoints keeps fewer checkpoints)")
    return (f"disk full ({'disk quota exceeded' if quota else 'no space left on device'})"
            f"{what}{f' to {where}' if where else ''}: {fix}")


def out_of_memory(error: BaseException, command: str = "") -> str | None:
    """The one line for a device running out of memory (XLA's RESOURCE_EXHAUSTED, whatever
    the exception class of the jax version): what was asked for and which keys lower the
    peak; None for any other error (a full disk too, which tensorstore also reports as
    RESOURCE_EXHAUSTED: `disk_full`). A user's config causes this, not a bug: no traceback."""
    if disk_full(error) is not None:
        return None
    chain = list(_causes(error))
    text = next((str(e) for e in chain if _OOM.search(str(e))), None)
    host = text is None and any(isinstance(e, MemoryError) for e in chain)
    if text is None and not host:
        return None
    size = _OOM_BYTES.search(text or "")
    tried = (f" allocating {int(size.group(1).replace(',', '')) / 2**30:.2f} GiB"
             if size else "")
    phase = command.replace("-", "_")
    try:
        from easyalign.doctor_models import INFERENCE, TRAINING  # the phases the doctor plans
    except ImportError:  # the boundary must not fail in its turn
        INFERENCE = TRAINING = ()
    phase = phase if phase in TRAINING or phase in INFERENCE else "PHASE"
    return (f"out of {'host' if host else 'device'} memory{tried}: lower train.batch_size "
            "(raise train.grad_accum to keep the batch) or data.max_length, or set "
            "model.remat=full; plan the fit with easyalign doctor "
            f"--config=configs/doctor.py:{phase}[:preset]")


def describe(error: BaseException, command: str = "", workdir: str | None = None,
             undone: tuple[str, ...] | list[str] = ()) -> str:
    """One line for an error a user caused: its message, the OS error and the path, or what
    to change when the disk is full or the device ran out of memory (`command` names the phase
    in that hint; `workdir` is the path of a full disk whose message names none, and `undone`
    what the undo of the failed run did to its workdir, `rundir.undone`)."""
    from easyalign.train.loop import NonFiniteLossError

    full = disk_full(error, command, workdir)
    if full is not None:
        return full + "".join(f"; {note}" for note in undone)
    oom = out_of_memory(error, command)
    if oom is not None:
        return oom
    chain = list(_causes(error))
    for e in chain:
        if isinstance(e, (PermissionError, IsADirectoryError, NotADirectoryError)) or (
                isinstance(e, OSError) and e.errno == errno.EROFS):
            return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
    from easyalign import distributed

    if isinstance(error, distributed.DistributedError):
        return str(error)
    if distributed.is_initialized() and any(mark in str(e) for e in chain for mark in (
            "Gloo", "Connection reset by peer", "DEADLINE_EXCEEDED", "coordination service",
            "another task", "heartbeat")):
        return ("another process of this run stopped or cannot be reached "
                f"({_last_line(' '.join(str(error).split()))[:200]}): start every process "
                "again with the same command; each resumes from the last complete checkpoint")
    if isinstance(error, (ValueError, FileNotFoundError, NonFiniteLossError, KeyError)):
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        return " ".join(text.split())
    connection = next((e for e in chain if type(e).__name__ in (
        "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError",
        "DatasetNotFoundError", "MaxRetryError", "ConnectTimeout")), None)
    if connection is not None:
        return f"cannot reach the Hugging Face hub: {_last_line(str(connection))[:300]}"
    first = " ".join(str(error).split())[:400]
    return f"{type(error).__name__}: {first} (an internal error: --debug shows the traceback)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return
    command, args = argv[1], argv[2:]
    if command not in STAGES and command not in TOOLS:
        hint = did_you_mean(command, [*STAGES, *TOOLS])
        sys.exit(f"easyalign: unknown command {command!r}" + (f"; {hint}" if hint else "")
                 + " (easyalign --help lists them)")
    debug = "--debug" in args or bool(os.environ.get("EASYALIGN_DEBUG"))
    args = [a for a in args if a != "--debug"]
    if any(a in ("--help", "-h", "--helpfull") for a in args):
        print(command_help(command, args))
        return
    if not debug:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)  # Orbax's error logs too: one line
        import logging

        for name in ("huggingface_hub", "datasets", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.ERROR)  # retries of an offline hub
        # transformers' warnings (e.g. "Token indices sequence length is longer than ...": the
        # data pipeline cuts to data.max_length itself and reports what it cut).
        logging.getLogger("transformers").setLevel(logging.ERROR)
    _deliver_ctrl_c_reliably()
    from easyalign.train import rundir

    rundir.undone.clear()  # an in-process caller's earlier command is not this one's
    workdir = None  # where a phase writes: named by a full disk's line when its error names none
    try:
        if command in STAGES:
            config = load_config(args)
            workdir = config.get("workdir") or None
            from easyalign.config_check import check_command

            check_command(config, command)
            stage_function(command)(config)
        else:
            resolve(TOOLS, command)(args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 — the one error boundary
        if debug:
            raise
        if isinstance(e, KeyboardInterrupt) or _ctrl_c:
            _exit_interrupted(command)
        _silence_stderr_loggers()
        line = f"easyalign {command}: {describe(e, command, workdir, rundir.undone)}"
        from easyalign import distributed

        if distributed.is_initialized():
            # Not through interpreter shutdown: the JAX runtime's teardown with a process gone
            # (or a join still pending) aborts with a C++ stack trace and exit status 134.
            rundir.release()
            print(line, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        sys.exit(line)
    finally:
        rundir.release()


_ctrl_c = []  # the numbers of the stop signals that arrived (`_deliver_ctrl_c_reliably`)
# Ctrl-C, and what `kill`, `timeout` and a SLURM preemption send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deliver_ctrl_c_reliably() -> None:
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is, and so does SIGTERM — what
    `kill`, `timeout` and a SLURM preemption send: a run stopped either way is undone or kept
    alike (`rundir.undo_on_failure`) and says so in one line. Two ways that goes wrong,
    both seen on a 2-core machine during the first compilation: Python drops one raised inside a
    garbage-collector callback (jax registers one; "Exception ignored in _xla_gc_callback") and
    the run trains on; and one raised inside a library's `with lock:` surfaces as another error
    ("release unlocked lock"). So: a dropped interrupt (it goes to `sys.unraisablehook`) is
    delivered again at the main thread's next Python step, and `main` reports any error that
    follows a Ctrl-C as the interruption it is."""
    import _thread
    import threading

    if getattr(sys.unraisablehook, "delivers_ctrl_c", False) or (
            threading.current_thread() is not threading.main_thread()):
        return  # installed already (an in-process caller of `main`), or no signals here
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # From another thread, once this hook has returned (raised here, it is dropped again).
            threading.Timer(0.05, _thread.interrupt_main).start()
            return
        previous(unraisable)

    def on_stop(signum, frame):
        _ctrl_c.append(signum)
        signal.default_int_handler(signum, frame)

    hook.delivers_ctrl_c = True
    sys.unraisablehook = hook
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop)


# What a rerun keeps, for the commands without training checkpoints.
RESUMES_FROM = {"eval": "the variants finished before (the interrupted one starts over)",
                "pipeline": "the stage that was running (complete stages are skipped; a "
                            "training stage from its last complete checkpoint)",
                "teacher-data": "the start (an unfinished run keeps nothing)",
                "generate": "the start (an unfinished run keeps nothing)",
                "latency": "the start (an unfinished run keeps nothing)"}


def _exit_interrupted(command: str) -> None:
    """One line — which signal, what the undo did to each workdir (`rundir.undone`), where a
    rerun resumes — the locks released, exit status 128 + the signal (130 for Ctrl-C, 143 for
    SIGTERM), not through interpreter shutdown: with XLA's compiler threads mid-work that
    segfaulted (exit -11 after the traceback). Checkpoints need no flush: a save cut short is
    a temporary directory that a restore never reads."""
    from easyalign.train import rundir

    rundir.release()
    signum = _ctrl_c[0] if _ctrl_c else signal.SIGINT
    by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    resumes = RESUMES_FROM.get(command, "the last complete checkpoint (a run interrupted "
                                        "before its first one was undone)")
    line = f"easyalign {command}: interrupted ({by})" + "".join(
        f"; {note}" for note in rundir.undone)
    if command in RESUMES_FROM or not rundir.undone:  # else the notes say where it resumes
        line += f"; the same command resumes from {resumes}"
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


def _silence_stderr_loggers() -> None:
    """After the one line, nothing more: background threads (Orbax) must not log again."""
    import logging

    logging.getLogger().setLevel(logging.CRITICAL)
    logging.getLogger("absl").setLevel(logging.CRITICAL)
