#!/usr/bin/env python3
"""autoserv: machine control for kernel and system test labs.

    python3 autoserv.py [options] CONTROL_FILE [ARGS...]
    python3 autoserv.py -m host1,host2 job.control

A control file is Python (Python 2 forms of the original are translated) that
drives machines through the objects it is given: ``hosts.SSHHost(name)``,
``host.run(cmd)``, ``send_file``/``get_file``, ``reboot``, ``parallel_simple``...
See README.md for the whole API.  One file, standard library only.

Sections, in this order (``grep -n '^# .*####' autoserv.py`` prints them;
a test holds this list to the banners):
    Constants and module state; Exceptions; Helpers; Local execution;
    Results and status log; Watching the job: progress, stalls, the live
    view; Hosts: the contract, local and remote; Remote programs (they run
    on the target); SSH connections: settings, the job's control dir, its
    masters; SSH transport: options, the master, errors; SSH transport:
    the agent's client; File transfer: placement, local copies,
    shared pieces; File transfer over SSH: pipelines and backends; SSHHost;
    Parallel; Power controllers and consoles; Installables, kernels and the
    boot loader; KVM and guests; Autotest, server side; Host health:
    verify and repair; Autotest client harness (it runs on the target);
    Control files; Shards, merge and Slurm; The HTML report; CLI.
"""

__version__ = "0.1.0"

import atexit
import collections
import fcntl
import io
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import textwrap
import threading
import time
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Union

# The control-file API, one table: each group is a module-like object in
# a control file's namespace and an attribute of this module (autoserv.hosts,
# autoserv.power...); the names beside the groups are there as themselves,
# and so is every exception class (the errors group: every AutoservError
# subclass).  control_namespace() and __all__ (at the end of this file) are
# both built from it (and __all__ adds _LIBRARY_NAMES).
_API = {
    "hosts": ("Host", "SiteHost", "RemoteHost", "SSHHost", "ConmuxSSHHost", "Guest",
              "KVMGuest", "LocalHost", "create_host", "CmdResult"),
    "autotest": ("Autotest",),
    "kvm": ("KVM",),
    "deb_kernel": ("DEBKernel",),
    "rpm_kernel": ("RPMKernel",),
    "power": ("PowerController", "CommandPower", "QMPPower", "IPMIPower", "ConmuxPower",
              "RedfishPower"),
    "errors": (),
}
_API_NAMES = ("run", "get_tmp_dir", "sh_escape", "sh_quote", "subcommand", "parallel",
              "parallel_simple")
# What a Python program importing autoserv uses beyond that (README: "Using
# autoserv from Python"); not in a control file's namespace (it has its job).
_LIBRARY_NAMES = ("Job", "close_all", "set_ssh_defaults", "register_host_class",
                  "register_power", "register_console", "parse_status_log")


# Constants and module state ###################################################

# The public API's type hints (standard typing, valid on Python 3.9).
_Paths = Union[str, Sequence[str]]         # one path, or several
_Stdin = Union[str, bytes, None]
_Tee = Optional[IO[str]]                   # a file object output is copied to live

DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_ALIVE_INTERVAL = 5
DEFAULT_ALIVE_COUNT = 3
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
KILL_GRACE = 2.0            # seconds between TERM and KILL, locally and remotely
POST_RESET_WAIT = 300.0     # how long reboot() waits for a host after its one hard reset
WAIT_PROGRESS_EVERY = 30.0  # s between progress lines of a wait without a timeout
# host.verify()'s thresholds (--min-free PATH=MB, --max-clock-skew S change
# them): small enough for a minimal VM; "autodir" is the autotest dir.
DEFAULT_MIN_FREE_MB = {"/": 50.0, "/tmp": 50.0, "autodir": 50.0}
DEFAULT_MAX_CLOCK_SKEW = 120.0
REPAIR_REBOOT_TIMEOUT = 600.0   # repair()'s soft reboot
EXIT_HOSTS_DROPPED = 4      # --verify/--repair found sick hosts; --verify-first dropped some
READ_SIZE = 1 << 20
_PIPE_READ = 1 << 16         # a pipe's default capacity: the most one read of it gives
HOST_KEY_POLICIES = ("strict", "accept-new", "ephemeral")
TRANSFER_BACKENDS = ("tar", "rsync", "scp")
STATUS_CODES = ("START", "INFO", "GOOD", "WARN", "FAIL", "ERROR", "ABORT",
                "TEST_NA", "NOSTATUS", "ALERT", "RUNNING")
FAILING_CODES = ("FAIL", "ERROR", "ABORT")
# How bad a status is: a group's END and a host's outcome carry the worst of
# their bodies.  Anything not listed (START, INFO, TEST_NA, ...) counts as GOOD.
_SEVERITY = {"GOOD": 0, "WARN": 1, "FAIL": 2, "ERROR": 3, "ABORT": 4}


def worst_status(*codes):
    """The worst of status codes ("END " prefixes and None allowed): one of
    GOOD, WARN, FAIL, ERROR, ABORT."""
    worst = "GOOD"
    for code in codes:
        base = (code or "GOOD")[4:] if (code or "").startswith("END ") else (code or "GOOD")
        if _SEVERITY.get(base, 0) > _SEVERITY[worst]:
            worst = base
    return worst


# The module's mutable state, all of it.  A parallel() task is a fork: it
# starts with its parent's copy and changes only its own.
_JOB = None             # the ServerJob running (None outside a job)
_HOSTS = []             # every host made in this process tree, for cleanup
_LOCAL_TMP = []         # (pid, path) of local temp dirs
_CLEANUPS = []          # (pid, function): close_all() runs this process's, newest first
_REGISTRY = {"host": {}, "power": {}, "console": {}}     # register_host_class() and co.
_HEALTH = {"min_free": dict(DEFAULT_MIN_FREE_MB),       # verify()'s defaults (the CLI's)
           "max_clock_skew": DEFAULT_MAX_CLOCK_SKEW}
# Every SSHHost's defaults (set_ssh_defaults(); the CLI's options).
_SSH_DEFAULTS = {"user": None, "port": None, "identity": None, "ssh_config": None,
                 "ssh_options": (), "host_key_policy": "accept-new",
                 "known_hosts": None, "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
                 "alive_interval": DEFAULT_ALIVE_INTERVAL,
                 "alive_count": DEFAULT_ALIVE_COUNT, "persistent": "auto"}
_CTRL = {"dir": None, "pid": None}      # the job's ssh control dir (_ctrl_dir)
_PARALLEL = {"max": None}               # parallel()'s limit on tasks at once
_NOT_OURS = []          # a task's copies of its parent's agents and masters, forgotten


# Exceptions ###################################################################

# Every class keeps the arguments its constructor took in self.args, so that
# pickling (parallel() sends exceptions between processes) rebuilds it whole.

class AutoservError(Exception):
    """Base of every deliberate autoserv error."""


class AutoservUsageError(AutoservError):
    """Bad command line, bad control file, bad argument: the user's to fix."""


class AutoservArgumentError(AutoservUsageError, TypeError):
    """A keyword argument the call does not take (a misspelling, or an option
    autoserv does not have), named in the message: a TypeError as Python's
    own would be, and a usage error, so a control file shows one line."""


def _refuse_keywords(what, names, hint=""):
    """AutoservArgumentError for keyword arguments `what` does not take."""
    if names:
        listed = ", ".join(repr(n) for n in sorted(names))
        raise AutoservArgumentError(f"{what} got unexpected keyword argument"
                                    f"{'s' if len(names) > 1 else ''} {listed}{hint}")


class AutoservNotImplementedError(AutoservError):
    """A piece of the API that this version does not have yet."""


class AutoservRunError(AutoservError):
    """A command ended with a non-zero status (or was killed)."""

    def __init__(self, description, result=None):
        super().__init__(description, result)
        self.description = description
        self.result = result

    def __str__(self):
        text = self.description
        r = self.result
        if r is not None:
            where = f"{r.hostname}: " if r.hostname else ""
            text = f"{where}{text}\n  command: {r.command}\n  {r.status_text()}"
            for name, stream in (("stderr", r.stderr), ("stdout", r.stdout)):
                tail = _last_lines(stream, 10)
                if tail:
                    text += f"\n  last lines of {name}:\n" + "\n".join(
                        "    " + line for line in tail)
        return _neutralise(text)       # the target's bytes never act on a terminal


CmdError = AutoservRunError


class AutoservTimeoutError(AutoservRunError):
    """A command ran past its timeout; it was killed, remotely as well."""


class AutoservFileTransferError(AutoservError):
    """A file could not be sent or fetched; the message names it and why."""


class AutoservHostError(AutoservError):
    """Something is wrong with a host rather than with a command."""

    def __init__(self, hostname, message, detail=""):
        super().__init__(hostname, message, detail)
        self.hostname = hostname
        self.message = message
        self.detail = detail

    def __str__(self):
        text = f"{self.hostname}: {self.message}" if self.hostname else self.message
        if self.detail:
            text += f" ({self.detail})"
        return _neutralise(text)


class AutoservSSHError(AutoservHostError):
    """The ssh transport failed; the command's own status is unknown."""


class AutoservSSHConnectTimeout(AutoservSSHError):
    """No answer from the host within ConnectTimeout (or no route)."""


AutoservSSHTimeout = AutoservSSHConnectTimeout


class AutoservSSHConnectionRefused(AutoservSSHError):
    """Nothing listens on the ssh port."""


class AutoservSSHUnknownHost(AutoservSSHError):
    """The host name does not resolve.  In a run given an ssh config
    (set_ssh_defaults, --ssh-config) that has no Host line for it, the
    message says so: most often a name left out of that config."""

    def __init__(self, hostname, message, detail=""):
        config = _SSH_DEFAULTS["ssh_config"]
        if config and hostname and "not in the ssh config" not in detail \
                and not _in_ssh_config(config, hostname):
            detail = f"{hostname} is not in the ssh config {config}" + (
                f"; {detail}" if detail else "")
        super().__init__(hostname, message, detail)


class AutoservSSHPermissionDenied(AutoservSSHError):
    """Authentication failed (no usable key; BatchMode never prompts)."""


AutoservSshPermissionDeniedError = AutoservSSHPermissionDenied


class AutoservSSHHostKeyError(AutoservSSHError):
    """The host key is unknown (strict) or changed (strict, accept-new)."""


class AutoservSSHConnectionLost(AutoservSSHError):
    """The connection died after the command started."""


class AutoservRebootError(AutoservHostError):
    """A reboot, shutdown or boot did not happen as asked."""


class AutoservInstallError(AutoservError):
    """An installable could not be fetched or installed."""


class AutoservBootloaderError(AutoservInstallError):
    """boottool could not read or change a host's boot menu (nothing changed)."""


class AutoservKernelBootError(AutoservRebootError):
    """An installed kernel did not come up; the host is back on another one."""


class AutoservVirtError(AutoservError):
    """Hypervisor or guest trouble."""


class AutoservSubcommandError(AutoservError):
    """One or more parallel tasks failed; names every one of them."""

    def __init__(self, failures):
        super().__init__(failures)
        self.failures = failures          # list of (name, text)

    def __str__(self):
        parts = [f"{len(self.failures)} task(s) failed:"]
        for name, text in self.failures:
            parts.append(f"--- {name}:\n{text.rstrip()}")
        return "\n".join(parts)


class _Terminated(BaseException):
    """SIGTERM arrived; unwinds like KeyboardInterrupt."""


class _LocalReboot(SystemExit):
    """LocalHost.reboot() in a job: ends the control file like sys.exit(0);
    the job ends, then runs command as its last act (_reboot_this_machine)."""

    def __init__(self, hostname, command):
        super().__init__(0)
        self.hostname, self.command = hostname, command

    def __reduce__(self):
        return (type(self), (self.hostname, self.command))


# Helpers ######################################################################

def sh_escape(command: str) -> str:
    """Escape a string for use inside double quotes in a POSIX shell."""
    command = command.replace("\\", "\\\\")
    command = command.replace("$", r"\$")
    command = command.replace('"', r"\"")
    command = command.replace("`", r"\`")
    return command


def sh_quote(word: str) -> str:
    """Quote one word for a POSIX shell (shlex.quote)."""
    return shlex.quote(word)


def _in_ssh_config(path, name):
    """True when a Host line of the ssh config at path (not its Includes)
    has a pattern matching name; True too when it cannot be read."""
    import fnmatch
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return True
    for line in lines:
        words = line.replace("=", " ", 1).split()
        if len(words) > 1 and words[0].lower() == "host":
            patterns = [w for w in words[1:] if not w.startswith("!")]
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return True
    return False


def _last_lines(text, count):
    if not text:
        return []
    return text.rstrip("\n").split("\n")[-count:]


def _decode(data):
    return data.decode("utf-8", "replace")


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def _neutralise(text):
    """Make control sequences visible instead of letting them act on a terminal."""
    return _CONTROL_CHARS.sub(lambda m: "^" + chr((ord(m.group()) + 64) % 128)
                              if ord(m.group()) < 128 else "?", text)


def _monotonic_deadline(timeout):
    return None if timeout is None else time.monotonic() + float(timeout)


def _remaining(deadline):
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# autoserv logs on the standard logging tree: every line is a record of the
# logger "autoserv" or a child of it: "autoserv.host.<name>" for a host's
# commands, exits and output, "autoserv.status" for status entries.  Its
# message is text any handler can write (bytes that are not UTF-8 as \xNN);
# the bytes as they came are in record.raw, and record.tag holds the line's
# label.  Importing autoserv adds only a NullHandler: the program decides
# where records go.  The CLI (and a Job) add _DebugFile, the results'
# debug/autoserv.log with the raw bytes, and the CLI adds _Console (-v, -q).
# Nearly everything is DEBUG; what a person waiting should see (a guest
# still booting) is INFO.

_LOGGER = logging.getLogger("autoserv")
_LOGGER.addHandler(logging.NullHandler())


class _LogText:
    """A record's message: its bytes, made text (undecodable bytes as \\xNN)
    only when a handler asks (the debug file writes the bytes as they are)."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    def __str__(self):
        return self.raw.decode("utf-8", "backslashreplace")


def _record_bytes(record):
    """A record as debug-log lines: "date time.ms [pid] tag: line" for each
    line of its raw bytes (its message's, for a record not autoserv's)."""
    raw = getattr(record, "raw", None)
    if raw is None:
        raw = record.getMessage().encode("utf-8", "surrogateescape")
    tag = getattr(record, "tag", None)
    if tag is None and record.name.startswith("autoserv.host."):
        tag = record.name[len("autoserv.host."):]
    elif tag is None and record.name != "autoserv":
        tag = record.name         # another program's record: its logger's name
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
    head = f"{stamp}.{int(record.msecs):03d} [{record.process}]"
    if tag:
        head += f" {tag}" if tag.endswith("|") else f" {tag}:"
    head = head.encode("utf-8", "surrogateescape") + b" "
    return b"".join(head + line + b"\n" for line in raw.split(b"\n"))


class _DebugFile(logging.Handler):
    """A debug log file: every record's raw bytes, timestamped, one write()
    each on an O_APPEND file, so forked children may share it."""

    def __init__(self, path, level=logging.DEBUG):
        super().__init__(level)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)

    def emit(self, record):
        if self.fd is None:
            return
        try:
            os.write(self.fd, _record_bytes(record))
        except (OSError, ValueError):
            pass

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()


class _Console(logging.Handler):
    """The CLI's stderr: with -v every record as its debug-log line, else
    INFO and worse as "autoserv: message"; control bytes made visible.
    sys.stderr is looked up per record (a parallel task's is its pipe)."""

    def __init__(self, verbose=False, quiet=False):
        super().__init__(logging.DEBUG if verbose else
                         logging.WARNING if quiet else logging.INFO)
        self.verbose = verbose
        self.stream = None        # where it writes, when not sys.stderr (-v in a task)

    def emit(self, record):
        try:
            if self.verbose:
                text = _neutralise(_decode(_record_bytes(record))).replace("^J", "\n")
            else:
                text = f"autoserv: {_neutralise(record.getMessage())}\n"
            out = self.stream or sys.stderr
            out.write(text)
            out.flush()
        except (OSError, ValueError):
            pass


class _Log:
    """The debug log's writer, as every call site knows it: LOG.write(message,
    host) makes a record on the logging tree; LOG.open(path)/close() add
    and remove the debug file's handler, LOG.console() the CLI's stderr."""

    def __init__(self):
        self.file = None          # the _DebugFile of open(), else None
        self.stderr = None        # the _Console of console(), else None
        self.loggers = {}         # tag -> logger
        self.muted = 0            # inside quiet(): lines about a host are left out

    def quiet(self):
        """A with-block in which lines about a host are not written (its
        probes: _probe)."""
        import contextlib

        @contextlib.contextmanager
        def muted():
            self.muted += 1
            try:
                yield
            finally:
                self.muted -= 1
        return muted()

    def _set_handler(self, attr, handler):
        old = getattr(self, attr)
        if old is not None:
            _LOGGER.removeHandler(old)
            old.close()
        setattr(self, attr, handler)
        if handler is not None:
            _LOGGER.addHandler(handler)

    def open(self, path):
        """Records go (also) to the file at path, raw bytes kept."""
        self._set_handler("file", _DebugFile(path))

    def close(self):
        self._set_handler("file", None)

    def console(self, verbose=False, quiet=False):
        """The CLI's stderr handler: -v every record, -q only warnings and
        errors, else INFO and worse.  The CLI is the program: it also lets
        records of every level be made, so a control file's own (under
        "autoserv.") reach the debug log."""
        self._set_handler("stderr", _Console(verbose, quiet))
        _LOGGER.setLevel(logging.DEBUG)

    @property
    def echo(self):
        return self.stderr is not None and self.stderr.verbose

    @echo.setter
    def echo(self, on):
        self.console(verbose=on) if on else self._set_handler("stderr", None)

    def logger(self, tag=None):
        """The logger for a line's tag: a host's name, "<host> stdout|"
        (its output), "status"; none: "autoserv"."""
        found = self.loggers.get(tag)
        if found is None:
            if not tag:
                found = _LOGGER
            elif tag == "status":
                found = logging.getLogger("autoserv.status")
            else:
                name = tag[:-1].rsplit(" ", 1)[0] if tag.endswith("|") else tag
                found = logging.getLogger("autoserv.host." + name)
            self.loggers[tag] = found
        return found

    def write(self, message, host=None, level=logging.DEBUG):
        """One record (str or bytes, several lines allowed) from host.  It
        goes through the tree when the program's levels let it (its handlers
        and ours get it), else to our own handlers only: a job's debug log
        holds everything without raising the program's levels."""
        if self.muted and host:
            return
        logger = self.logger(host)
        wanted = logger.isEnabledFor(level)
        ours = [h for h in (self.file, self.stderr) if h is not None and level >= h.level]
        if not wanted and not ours:
            return
        if isinstance(message, str):
            message = message.encode("utf-8", "surrogateescape")
        record = logger.makeRecord(logger.name, level, __file__, 0, _LogText(message), (),
                                   None, extra={"raw": message, "tag": host})
        if wanted:
            logger.handle(record)
        else:
            for handler in ours:
                handler.handle(record)


LOG = _Log()


class _Tee:
    """Writes a live stream to a user's file object, decoding incrementally and
    neutralising escapes when the target is a terminal."""

    def __init__(self, target, prefix=""):
        self.target = target
        self.prefix = prefix
        self.decoder = None         # made by the first data (most tees get none)
        self.at_line_start = True
        self.tty = False

    def feed(self, data, final=False):
        if self.decoder is None:
            if not data:
                return
            import codecs
            self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
            try:
                self.tty = self.target.isatty()
            except (AttributeError, ValueError):
                self.tty = False
        text = self.decoder.decode(data, final)
        if not text:
            return
        if self.tty:
            text = "\n".join(_neutralise(part) for part in text.split("\n"))
        if self.prefix:
            out = []
            for piece in text.splitlines(True):
                if self.at_line_start:
                    out.append(self.prefix)
                out.append(piece)
                self.at_line_start = piece.endswith("\n")
            text = "".join(out)
        try:
            self.target.write(text)
            self.target.flush()
        except (OSError, ValueError):
            pass


def _random_name(length=12):
    import secrets
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _safe_name(value):
    name = str(value).replace("/", "_").replace("\0", "_").strip()
    if name in ("", ".", ".."):
        name = "_" + name
    return name[:200]


def _last_line(text):
    lines = [l for l in str(text).strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else ""


def _decode_errors():
    """What reading a damaged compressed archive can raise."""
    import tarfile
    import zlib
    errors = [EOFError, OSError, ValueError, tarfile.TarError, zlib.error]
    try:
        import lzma
        errors.append(lzma.LZMAError)
    except ImportError:
        pass
    return tuple(errors)


def _why(result, lines=3):
    """The lines of a failed command's output that say why: those naming an
    error or conflict first, else the last ones."""
    text = (result.stderr + "\n" + result.stdout).splitlines()
    text = [line.strip() for line in text if line.strip()]
    telling = [line for line in text if re.search(
        r"(?i)error|conflict|overwrite|depend|no space|denied|not found", line)]
    return " / ".join((telling or text)[:lines] if telling else text[-lines:]) or \
        f"exit status {result.exit_status}"


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _run_id():
    """The id every remote process of this job carries (AUTOSERV_RUN_ID)."""
    return _JOB.run_id if _JOB is not None else "norun"


def _sha256_file(path):
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Local execution ##############################################################

class CmdResult:
    """What a command did.  Inert data: judging it is run()'s job."""

    def __init__(self, command: str = "", stdout: str = "", stderr: str = "",
                 exit_status: Optional[int] = None, duration: float = 0.0, aborted: int = 0,
                 timed_out: bool = False, hostname: Optional[str] = None,
                 truncated: bool = False, output_files: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = None):
        self.command = command
        self.timeout = timeout      # the limit it ran under (None: none)
        self.stdout = stdout
        self.stderr = stderr
        self.exit_status = exit_status
        self.duration = duration
        self.aborted = aborted
        self.timed_out = timed_out
        self.hostname = hostname
        self.truncated = truncated
        self.output_files = output_files or {}

    @property
    def ok(self):
        return self.exit_status == 0 and not self.aborted and not self.timed_out

    def status_text(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration:.1f} s"
        if self.aborted:
            return f"killed by signal {self.aborted} ({_signame(self.aborted)})"
        return f"exit status {self.exit_status}"

    def __repr__(self):
        return (f"CmdResult(command={self.command!r}, exit_status={self.exit_status!r}, "
                f"aborted={self.aborted!r}, duration={self.duration:.3f})")

    def __str__(self):
        def block(name, text):
            return f"{name}:\n{text}" if text else f"{name}: (empty)"
        lines = [f"* Command: {self.command}"]
        if self.hostname:
            lines.append(f"Host: {self.hostname}")
        lines += [f"Exit status: {self.exit_status}",
                  f"Duration: {self.duration:.6f}",
                  f"Aborted: {self.aborted}"]
        if self.timed_out:
            lines.append("Timed out: True")
        if self.truncated:
            lines.append("Truncated: True (whole streams in %s)"
                         % ", ".join(self.output_files.values()))
        lines += ["", block("stdout", self.stdout), block("stderr", self.stderr)]
        return "\n".join(lines)


def _signame(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown"


class _Capture:
    """One output stream: all of it up to a cap in memory; past the cap the
    head and the tail (half the cap each) in memory and the whole stream in a
    file under debug/.  Both are lists of the chunks as read, so keeping them
    copies nothing however long the stream runs."""

    def __init__(self, cap, name, label):
        self.cap = cap
        self.name = name
        self.label = label
        self.head = []               # chunks; past the cap, its first half only
        self.size = 0                # bytes in head (and, before the cap, all)
        self.tail = collections.deque()
        self.tail_size = 0
        self.file = None
        self.path = None
        self.total = 0

    def add(self, data):
        data = bytes(data)
        self.total += len(data)
        if self.file is None:
            self.head.append(data)
            self.size += len(data)
            if self.size > self.cap:
                self._spill()
            return
        self.file.write(data)
        self._to_tail(data)

    def _to_tail(self, data):
        tail = self.tail
        tail.append(data)
        self.tail_size += len(data)
        keep = self.cap // 2
        while self.tail_size - len(tail[0]) >= keep:
            self.tail_size -= len(tail.popleft())

    def _spill(self):
        directory = _output_dir()
        fd, self.path = tempfile.mkstemp(prefix=f"output-{self.name}-", suffix=".log",
                                         dir=directory)
        self.file = os.fdopen(fd, "wb")
        chunks, self.head, self.size = self.head, [], 0
        half = self.cap // 2
        for chunk in chunks:
            self.file.write(chunk)
            room = half - self.size
            if room > 0:
                self.head.append(chunk[:room] if len(chunk) > room else chunk)
                self.size += min(room, len(chunk))
                chunk = chunk[room:]
            if chunk:
                self._to_tail(chunk)
        LOG.write(f"{self.label}: {self.name} passed {self.cap} bytes; "
                  f"the whole stream goes to {self.path}")

    def close(self):
        if self.file is not None:
            self.file.close()

    def value(self):
        """The kept bytes, once: the chunks are let go as they are joined, so
        a result costs the cap once, not twice."""
        parts, self.head = self.head, []
        if self.file is not None:
            skip = max(0, self.tail_size - self.cap // 2)
            kept = self.size + self.tail_size - skip
            parts.append((f"\n[... autoserv: {self.total - kept} bytes left out here; "
                          f"whole stream in {self.path} ...]\n").encode())
            tail, self.tail, self.tail_size = list(self.tail), collections.deque(), 0
            if tail:
                tail[0] = memoryview(tail[0])[skip:]
            parts += tail
        return b"".join(parts)


def _output_dir():
    job = _JOB
    if job is not None and os.path.isdir(job.debugdir):
        return job.debugdir
    return tempfile.gettempdir()


class _MarkerFilter:
    """Takes the remote wrapper's marker lines out of a stderr stream.

    A marker is ``\\x1e<token> s <pgid>\\n`` (started) or ``\\x1e<token> e
    <status>\\n`` (ended); the token is fresh per command.  The first marker
    of each kind wins, and after the end marker everything is plain output:
    a background child printing a forged marker late changes nothing.  Only
    bytes that might begin a marker (a whole or partial prefix at the end of
    a read, at most a marker's length) are held back; each byte is looked at
    a bounded number of times, so a flood of \\x1e costs linear time."""

    BODY = 32              # the longest "s <pgid>" or "e <status>" looked for

    def __init__(self, token):
        self.prefix = b"\x1e" + token.encode() + b" "
        self.pending = b""
        self.pgid = None
        self.status = None

    def feed(self, data):
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if self.status is not None:
            return data
        prefix, size = self.prefix, len(self.prefix)
        out, start, at = [], 0, 0
        while True:
            i = data.find(prefix, at)
            if i < 0:
                break
            j = data.find(b"\n", i + size, i + size + self.BODY)
            if j < 0:
                if len(data) - i < size + self.BODY:
                    out.append(data[start:i])        # may end in the next read
                    self.pending = data[i:]
                    return b"".join(out)
            elif self._marker(data[i + size:j]):
                out.append(data[start:i])
                start = at = j + 1
                if self.status is not None:
                    break
                continue
            at = i + 1
        if self.status is None:
            # A prefix cut short by the end of this read: hold it back.
            k = data.find(b"\x1e", max(start, len(data) - size + 1))
            while k >= 0 and not prefix.startswith(data[k:]):
                k = data.find(b"\x1e", k + 1)
            if k >= 0:
                out.append(data[start:k])
                self.pending = data[k:]
                return b"".join(out)
        out.append(data[start:])
        return b"".join(out)

    def _marker(self, body):
        parts = body.split()
        if len(parts) != 2 or not parts[1].isdigit():
            return False
        if parts[0] == b"s" and self.pgid is None:
            self.pgid = int(parts[1])
        elif parts[0] == b"e":
            self.status = int(parts[1])
        else:
            return False
        return True

    def flush(self):
        data, self.pending = self.pending, b""
        return data


class _Execution:
    """Runs one argv with one selector loop and one monotonic deadline.

    Local commands run in a new session and are killed as a process group.
    Remote ones (``remote=True``) keep ssh's stdin open for the command's whole
    life: closing it is how the remote wrapper learns to kill its process group
    (on timeout, interrupt, or a dropped link)."""

    def __init__(self, argv, label, stdin=None, timeout=None, stdout_tee=None,
                 stderr_tee=None, max_output=DEFAULT_MAX_OUTPUT, remote=False,
                 marker=None, env=None, cwd=None, log_output=True):
        self.argv = argv
        self.label = label
        self.stdin_data = _stdin_bytes(stdin)
        self.timeout = timeout
        self.remote = remote
        self.marker = marker
        self.env = env
        self.cwd = cwd
        self.log_output = log_output
        self.tees = {1: _Tee(stdout_tee) if stdout_tee is not None else None,
                     2: _Tee(stderr_tee) if stderr_tee is not None else None}
        self.captures = {1: _Capture(max_output, "stdout", label),
                         2: _Capture(max_output, "stderr", label)}
        self.logged = {1: 0, 2: 0}
        self.max_output = max_output
        self.timed_out = False
        self.returncode = None
        self.duration = 0.0
        self._buf = None
        self.watch = _stall_watch()
        # A first contact's bound on its login (see _SSHLink.session):
        # by login_by, logged_in() must be true (on_login() is called once
        # it is), or ssh is ended and login_timed_out set.
        self.login_by = None
        self.logged_in = None
        self.login_timed_out = False
        self.on_login = None
        self.keeps_running = False      # it leaves a process behind (a first contact's master)

    def start(self):
        need_stdin = self.remote or self.stdin_data is not None
        self.t0 = time.monotonic()
        extra = {}
        if self.keeps_running and _stop_signals_held():
            extra["preexec_fn"] = _default_stop_signals
        self.proc = _popen(self.argv, stdin=PIPE if need_stdin else DEVNULL,
                           stdout=PIPE, stderr=PIPE, env=self.env, cwd=self.cwd, **extra)
        self.deadline = _monotonic_deadline(self.timeout)

    def wait(self):
        """Drains until both streams end and the process exits (or the
        deadline passes); returns nothing, fills the fields."""
        import selectors
        proc = self.proc
        sel = selectors.DefaultSelector()
        self.sel = sel
        fds = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
        for fd in fds:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        pending = memoryview(self.stdin_data or b"")
        stdin_fd = None
        if proc.stdin is not None:
            stdin_fd = proc.stdin.fileno()
            if pending:
                os.set_blocking(stdin_fd, False)
                sel.register(stdin_fd, selectors.EVENT_WRITE)
            elif not self.remote:
                self._close_stdin()
        open_streams = set(fds)
        try:
            while open_streams:
                wait_for = _remaining(self.deadline)
                if wait_for == 0.0:
                    self.timed_out = True
                    break
                if self.login_by is not None:
                    # Looked at every 20 ms until it logged in: the lock
                    # others wait on goes as soon as its master listens.
                    if self.logged_in():
                        self.login_by = None
                        self.on_login()
                    elif time.monotonic() >= self.login_by:
                        self.login_timed_out = True
                        break
                    else:
                        wait_for = 0.02 if wait_for is None else min(wait_for, 0.02)
                events = sel.select(self.watch.wait(wait_for) if self.watch else wait_for)
                if not events and self.watch:
                    self.watch.check()
                for key, _ in events:
                    fd = key.fd
                    if fd == stdin_fd:
                        try:
                            n = os.write(fd, pending[:READ_SIZE])
                            pending = pending[n:]
                        except (BrokenPipeError, OSError):
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(fd)
                            if not self.remote:
                                self._close_stdin()
                        continue
                    try:
                        data = self._read(fd)
                    except BlockingIOError:
                        continue
                    if data:
                        self._take(fds[fd], data)
                    else:
                        sel.unregister(fd)
                        open_streams.discard(fd)
            if not (self.timed_out or self.login_timed_out):
                try:
                    self.returncode = proc.wait(_remaining(self.deadline))
                except _subprocess().TimeoutExpired:
                    self.timed_out = True
            if self.timed_out or self.login_timed_out:
                self._kill()
        except BaseException:
            self._kill(grace=0.5)
            raise
        finally:
            self._finish()

    def _scratch(self):
        """This execution's one read buffer, made on first use at a pipe's
        capacity (64 KiB: all one read of a pipe gives; a zeroed 1 MiB cost
        every short command its page faults), grown to READ_SIZE once a read
        fills it (a socket can give more)."""
        if self._buf is None:
            self._buf = bytearray(_PIPE_READ)
        return self._buf

    def _read(self, fd):
        """os.read into one reused buffer, copied out at its real size: a
        fresh 1 MiB read shrunk to the 64 KiB a pipe gives leaves the
        allocator fragmented (tens of MB of RSS on a long flood)."""
        buf = self._scratch()
        n = os.readv(fd, [buf])
        data = bytes(memoryview(buf)[:n])
        if n == len(buf) < READ_SIZE:
            self._buf = bytearray(READ_SIZE)
        return data

    def _take(self, stream, data):
        if stream == 2 and self.marker is not None:
            data = self.marker.feed(data)
            if not data:
                return
        self.captures[stream].add(data)
        if self.watch:
            self.watch.heard()
        tee = self.tees[stream]
        if tee is not None:
            tee.feed(data)
        if self.log_output and self.logged[stream] < self.max_output:
            self.logged[stream] += len(data)
            name = "stdout" if stream == 1 else "stderr"
            LOG.write(data.rstrip(b"\n"), f"{self.label} {name}|")

    def _close_stdin(self):
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass

    def _kill(self, grace=None):
        """Ends the command: remote commands by closing ssh's stdin (the wrapper
        then kills its group, TERM then KILL), then the local process group."""
        proc = self.proc
        grace = KILL_GRACE if grace is None else grace
        if self.remote and proc.poll() is None:
            self._close_stdin()
            if self._drain_until_exit(KILL_GRACE + 3.0):
                return
        # Waiting drains the pipes: a child blocked writing to a full one
        # never ends.  The leader gone, whatever it left in its group is killed.
        _terminate(proc, grace, wait=self._drain_until_exit, sweep=True)

    def _drain_until_exit(self, seconds):
        end = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < end:
            for key, _ in self.sel.select(0.05):
                if key.events & 1:
                    try:
                        data = self._read(key.fd)
                    except (BlockingIOError, OSError):
                        continue
                    if data:
                        stream = 1 if key.fd == self.proc.stdout.fileno() else 2
                        self._take(stream, data)
                    else:
                        self.sel.unregister(key.fd)
                else:
                    self.sel.unregister(key.fd)
        return self.proc.poll() is not None

    def _finish(self):
        self.duration = time.monotonic() - self.t0
        self.sel.close()
        if self.marker is not None:
            rest = self.marker.flush()
            if rest:
                self.captures[2].add(rest)
        for tee in self.tees.values():
            if tee is not None:
                tee.feed(b"", final=True)
        self._close_stdin()
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        for c in self.captures.values():
            c.close()
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is None:
                try:
                    self.returncode = self.proc.wait(5)
                except _subprocess().TimeoutExpired:
                    pass

    def result(self, command, hostname=None):
        out, err = self.captures[1], self.captures[2]
        files = {c.name: c.path for c in (out, err) if c.path}
        return CmdResult(command=command, stdout=_decode(out.value()),
                         stderr=_decode(err.value()), duration=self.duration,
                         timed_out=self.timed_out, hostname=hostname,
                         truncated=bool(files), output_files=files)


PIPE = -1
DEVNULL = -3


def _subprocess():
    import subprocess
    return subprocess


def _blake2b():
    """hashlib's blake2b, from its own module where there is one: hashlib
    loads OpenSSL, several ms of a forked task's first contact."""
    try:
        from _blake2 import blake2b
    except ImportError:
        from hashlib import blake2b
    return blake2b


def _popen(argv, **kw):
    """Every child starts in its own session (a terminal's Ctrl-C reaches only
    autoserv, which then ends its children in order, and no child can read
    the terminal) with close_fds."""
    sp = _subprocess()
    kw.setdefault("close_fds", True)
    return sp.Popen(argv, start_new_session=True, **kw)


def _stdin_bytes(stdin):
    if stdin is None:
        return None
    if isinstance(stdin, str):
        return stdin.encode("utf-8", "surrogateescape")
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    if hasattr(stdin, "read"):
        data = stdin.read()
        return data.encode() if isinstance(data, str) else data
    raise AutoservUsageError(f"stdin must be str, bytes or a file object, not {type(stdin).__name__}")


def _default_stop_signals():
    """A preexec_fn for children that must hear SIGTERM and SIGINT (an ssh
    master, the masters' watchdog): an ignored signal stays ignored across
    exec and a blocked one blocked, and OpenSSH keeps an ignored TERM
    ignored.  The job's cleanup runs with both ignored (a master restarted
    there to remove temp dirs) and parallel() blocks them around its forks;
    a master started then sat out its TERM until the KILL after the 2 s
    grace (measured: 2.00 s to stop one started with TERM ignored)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _unlock(held):
    """Closes the lock fd in the one-item list held (releasing its flock),
    once: the list is emptied."""
    while held:
        os.close(held.pop())


def _stop_signals_held():
    """True when this process ignores or blocks SIGTERM or SIGINT (the job's
    cleanup; parallel() around its forks): a child that must hear them then
    needs _default_stop_signals."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return any(signal.getsignal(sig) == signal.SIG_IGN or sig in held
               for sig in _STOP_SIGNALS)


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(proc, grace=KILL_GRACE, group=True, kill_wait=5.0, wait=None, sweep=False):
    """Stops a child started by _popen (a session of its own: its pid is its
    group's id): TERM, up to grace s for it to end, then KILL and up to
    kill_wait s more (None: until it is reaped).  group: TERM goes to the
    whole group, with a CONT so a stopped one hears it; else to the process
    alone (it ends what it started, as ssh does), the KILL to both.  wait(s):
    how the caller waits up to s seconds, for one that must keep reading the
    child's pipes meanwhile; by default proc.wait.  sweep: KILL the group
    once the leader is gone (what it left behind).  Returns True when the
    process ended."""
    if wait is None:
        def wait(seconds):
            try:
                proc.wait(seconds)
            except _subprocess().TimeoutExpired:
                pass
    for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        if proc.poll() is not None:
            break
        if group or sig == signal.SIGKILL:
            _killpg(proc.pid, sig)
        if not group:
            proc.send_signal(sig)
        if group and sig == signal.SIGTERM:
            _killpg(proc.pid, signal.SIGCONT)
        wait(seconds)
    ended = proc.poll() is not None
    if sweep:
        _killpg(proc.pid, signal.SIGKILL)
    return ended


def _login_shell():
    try:
        import pwd
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except (KeyError, ImportError):
        shell = ""
    if not shell or not os.access(shell, os.X_OK) or shell.endswith(("/nologin", "/false")):
        shell = "/bin/sh"
    return shell


def _set_exit_status(result, status, shell=False):
    """Fills in result.exit_status and .aborted as a shell reports them: a
    command killed by signal N is exit status 128+N with aborted=N.  status
    is a returncode as subprocess gives it (-N: killed by signal N; None:
    none, a timeout), or with shell=True a status a shell reported (the
    remote wrapper and agent), where 129..192 can only be read as a signal
    (a shell's own exit 130 looks the same).  Returns result."""
    if status is not None and status < 0:
        result.aborted = -status
        status = 128 - status
    elif shell and status is not None and 128 < status <= 128 + 64:
        result.aborted = status - 128
    result.exit_status = status
    return result


def _judge(result, ignore_status, what="command"):
    if result.timed_out:
        raise AutoservTimeoutError(f"{what} timed out", result)
    if not ignore_status and (result.exit_status != 0 or result.aborted):
        raise AutoservRunError(f"{what} failed: {result.status_text()}", result)
    return result


def run(command: str, timeout: Optional[float] = None, ignore_status: bool = False,
        stdin: _Stdin = None, stdout_tee: _Tee = None, stderr_tee: _Tee = None,
        args: Sequence[str] = (), max_output: int = DEFAULT_MAX_OUTPUT,
        stall_warn: Optional[float] = None, **_ignored: Any) -> "CmdResult":
    """Runs a command on the machine autoserv runs on (the login shell's -c)."""
    return LocalHost().run(command, timeout=timeout, ignore_status=ignore_status,
                           stdin=stdin, stdout_tee=stdout_tee, stderr_tee=stderr_tee,
                           args=args, max_output=max_output, stall_warn=stall_warn)


def _with_args(command, args):
    if isinstance(args, str):
        args = (args,)
    if args:
        command = command + " " + " ".join(shlex.quote(str(a)) for a in args)
    return command


# Results and status log #######################################################

_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _status_line(code, subdir, operation, message, indent=0, when=None):
    when = time.time() if when is None else when
    fields = [code, subdir or "----", operation or "----",
              f"timestamp={int(when)}",
              "localtime=" + time.strftime("%b %d %H:%M:%S", time.localtime(when))]
    message = str(message or "").replace("\t", "  ").replace("\r\n", "\n")
    # Only \n ends a status line; other characters some readers take for a
    # line end (str.splitlines does) are written as text.
    message = _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], message)
    lines = message.split("\n")
    fields.append(lines[0])
    text = "\t" * indent + "\t".join(fields) + "\n"
    for extra in lines[1:]:
        text += "\t" * indent + "  " + extra + "\n"
    return text


def parse_status_log(text: str) -> List[Dict[str, Any]]:
    """Parses an autotest status log into dicts (code, subdir, operation,
    fields, message, indent).  Raises ValueError on a malformed line."""
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        stripped = line.lstrip("\t")
        indent = len(line) - len(stripped)
        if stripped.startswith("  "):
            if not entries:
                raise ValueError(f"line {number}: continuation before any entry")
            entries[-1]["message"] += "\n" + stripped[2:]
            continue
        parts = stripped.split("\t")
        code = parts[0]
        base = code[4:] if code.startswith("END ") else code
        if base not in STATUS_CODES or len(parts) < 5:
            raise ValueError(f"line {number}: not a status line: {line!r}")
        fields = {}
        for part in parts[3:-1]:
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"line {number}: bad field {part!r}")
            fields[key] = value
        entries.append({"code": code, "subdir": parts[1], "operation": parts[2],
                        "fields": fields, "message": parts[-1], "indent": indent})
    return entries


class StatusLog:
    """status.log writer: each entry one write() on an O_APPEND file."""

    def __init__(self, path, echo=None):
        self.path = path
        self.indent = 0
        self.worst = None
        self.echo = echo          # called with each entry's text (the client harness)
        self.open = []            # (subdir, operation) of each START not ended yet

    def record(self, code, subdir=None, operation=None, message="", indent=None):
        """Writes one entry.  START nests what follows one level deeper and
        END closes it; with an explicit indent (parallel tasks, whose entries
        interleave) the nesting is left alone."""
        base = code[4:] if code.startswith("END ") else code
        if base not in STATUS_CODES:
            raise AutoservUsageError(f"unknown status code {code!r}; use one of "
                                     + ", ".join(STATUS_CODES))
        nesting = indent is None
        if code.startswith("END ") and nesting:
            self.indent = max(0, self.indent - 1)
            self.open = self.open[:-1]
        level = self.indent if indent is None else indent
        if base in FAILING_CODES and not code.startswith("END "):
            self._note(base)
        data = _status_line(code, subdir, operation, message, level).encode(
            "utf-8", "surrogateescape")
        self._append(data)
        if code == "START" and nesting:
            self.indent += 1
            self.open.append((subdir, operation))
        LOG.write(data.rstrip(b"\n"), "status")
        if self.echo:
            self.echo(data.decode("utf-8", "surrogateescape"))

    def close_open(self, code, keep=0):
        """Ends every group still open but the `keep` outermost with END code
        (a run cut short: no group is left without its END)."""
        while len(self.open) > keep:
            self.record(f"END {code}", *self.open[-1])

    def _note(self, code):
        """Keeps the worst failing code recorded so far (the job's exit status)."""
        if worst_status(code, self.worst) in FAILING_CODES:
            self.worst = worst_status(code, self.worst)

    def relay(self, text, indent=None):
        """Writes entries that came from elsewhere (a client's status lines,
        a parallel task's group) `indent` levels deep (default: inside the
        current nesting), in one write; returns their worst failing code or
        None.  Raises ValueError, writing nothing, when a line does not parse."""
        level = self.indent if indent is None else indent
        lines = [("\t" * level + line) for line in text.split("\n") if line]
        codes = [entry["code"] for entry in parse_status_log("\n".join(lines))]
        worst = worst_status(*codes)
        if worst in FAILING_CODES:
            self._note(worst)
        self._append("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
        return worst if worst in FAILING_CODES else None

    def _append(self, data):
        """One write() on an O_APPEND file: entries never interleave."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _end_open_groups(entries, code):
    """END lines (code) for the groups a task's entries opened and never
    ended (it was stopped or killed inside one), innermost first."""
    stack = []
    for e in entries:
        if e["code"] == "START":
            stack.append(e)
        elif e["code"].startswith("END ") and stack:
            stack.pop()
    return "".join(_status_line(f"END {code}", e["subdir"], e["operation"], "", e["indent"])
                   for e in reversed(stack))


def _cause(exc):
    """One line naming what went wrong: the exception's class, and for a
    command its command and how it ended (the output is kept apart:
    _output_tail)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    if isinstance(exc, _Terminated):
        return "terminated (SIGTERM)"
    name = type(exc).__name__
    r = getattr(exc, "result", None)
    if isinstance(exc, AutoservRunError) and r is not None:
        how = (f"timed out after {float(r.timeout)} s" if r.timed_out and r.timeout
               else r.status_text() if r.timed_out else f"failed with {r.status_text()}")
        return _neutralise(f"{name}: {_shorten(r.command)!r} {how}")
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{name}: {text}" if text else name


def _shorten(text, size=200):
    text = " ".join(str(text).split("\n"))
    return text if len(text) <= size else text[:size - 3] + "..."


def _output_tail(exc, count=10):
    """The last lines of a failed command's output (stderr, then stdout),
    or ""."""
    r = getattr(exc, "result", None)
    if not isinstance(exc, AutoservRunError) or r is None:
        return ""
    return _neutralise("\n".join(_last_lines(r.stderr, count) + _last_lines(r.stdout, count)))


def _write_atomic(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def _claim_results_dir(path, overwrite, parent=None):
    """Claims a results dir with an atomic mkdir.  With no path, the default
    name (in parent, default here) with a suffix when two runs start in the
    same second, and the `latest` link beside it names it."""
    if path is None:
        parent = os.path.abspath(parent or ".")
        if not os.path.isdir(parent):
            raise AutoservUsageError(f"--results-base {parent}: no such directory; "
                                     "create it or pick another")
        base = os.path.join(parent, "results." + time.strftime("%Y-%m-%d-%H.%M.%S"))
        for n in range(1000):
            candidate = base if n == 0 else f"{base}.{n}"
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                continue
        raise AutoservUsageError(f"could not claim a results dir named {base}*")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise AutoservUsageError(f"results dir {path}: parent directory {parent} "
                                 "does not exist; create it or pick another -r")
    try:
        os.mkdir(path)
        return path
    except FileExistsError:
        pass
    if not os.path.isdir(path):
        raise AutoservUsageError(f"results dir {path} exists and is not a directory")
    if os.listdir(path) and not overwrite:
        raise AutoservUsageError(f"results dir {path} is not empty; pass --overwrite "
                                 "or choose another -r")
    for name in ("status.log", "summary.json", "keyval", "control.srv", "junit.xml"):
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(path, "debug"), ignore_errors=True)
    return path


def _point_latest(resultdir, target=None):
    """Makes `latest` beside resultdir a link to it (or to target); returns
    what it named before ("" if nothing).  A `latest` that is not a link is
    left alone."""
    link = os.path.join(os.path.dirname(resultdir), "latest")
    try:
        old = os.readlink(link)
    except FileNotFoundError:
        old = ""
    except OSError:
        LOG.write(f"{link} is not a symbolic link; left alone")
        return None
    tmp = f"{link}.{os.getpid()}.tmp"
    try:
        if target == "":
            os.unlink(link)
        else:
            os.symlink(target or os.path.basename(resultdir), tmp)
            os.replace(tmp, link)
    except OSError as e:
        _remove_quietly(tmp)
        LOG.write(f"could not point {link} at {resultdir}: {e}")
    return old


def _user_name():
    """Who runs the job: $USER or $LOGNAME, else the password database
    (a service manager sets neither for root)."""
    name = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not name:
        import pwd
        try:
            name = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            name = f"uid {os.getuid()}"
    return name


class ServerJob:
    """The running job: results dir, status log, cleanups.  A control file
    sees it as ``job``; a script may make one (``Job``, the same class) to
    get a results dir: ``with Job("results/run1") as job: ...`` makes
    resultdir (and debug/), is the current job (status entries, parallel
    tasks' subdirs and records land in it) until end(), which the with
    block calls, writes status.log's end, summary.json and keyval.  One
    job at a time in a process."""

    def __init__(self, resultdir: str, control: Optional[str] = None,
                 machines: Sequence[str] = (), args: Sequence[str] = (),
                 user: Optional[str] = None, label: Optional[str] = None, options: Any = None,
                 shard: Optional[Dict[str, Any]] = None):
        global _JOB
        self.resultdir = resultdir
        self.debugdir = os.path.join(resultdir, "debug")
        os.makedirs(self.debugdir, exist_ok=True)
        self.control = control
        self.machines = list(machines)
        self.args = list(args)
        self.user = user or _user_name()
        self.label = label or ""
        self.options = options
        self.shard = shard        # --shard: what _shard_record() gives, else None
        self.run_id = os.urandom(6).hex()
        self.status = StatusLog(os.path.join(resultdir, "status.log"))
        self.started = time.time()
        self.host_outcomes = {}
        self.dropped = {}         # host name -> why it was left out (--verify-first)
        self._spans = {}          # host name -> [first seen, last work ended or None]
        self.hosts = []
        self._pid = os.getpid()
        LOG.open(os.path.join(self.debugdir, "autoserv.log"))
        _JOB = self
        self.write_keyval()
        self.write_summary("RUNNING")

    # the original's API
    def record(self, status_code: str, subdir: Optional[str] = None,
               operation: Optional[str] = None, status: str = "") -> None:
        self.status.record(status_code, subdir, operation, status)

    def write_keyval(self, extra=None):
        values = {"user": self.user, "label": self.label,
                  "hostnames": ",".join(self.machines),
                  "autoserv_version": __version__,
                  "job_started": int(self.started), "run_id": self.run_id}
        if self.shard:
            values.update({"shard": self.shard["shard"], "shard_source": self.shard["source"],
                           "machines_digest": self.shard["machines_digest"],
                           "control_digest": self.shard["control_digest"]})
        if extra:
            values.update(extra)
        path = os.path.join(self.resultdir, "keyval")
        old = ""
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = "".join(line for line in f
                              if line.split("=", 1)[0] not in values)
        _write_atomic(path, old + "".join(f"{k}={v}\n" for k, v in values.items()))

    def note_host(self, host):
        self.hosts.append(host)
        self.host_outcomes.setdefault(host.hostname, {"outcome": "GOOD", "duration": 0.0,
                                                      "error": "", "output": ""})
        self._spans.setdefault(host.hostname, [time.time(), None])

    def host_status(self, name, code, error="", span=None, output=""):
        """A status for a host's work: its outcome becomes the worse of the
        two (the first error text of the worst status stays, and the output
        tail that goes with it), and its work span (wall clock start, end)
        grows to cover `span`; a span that ends marks the host's work done."""
        entry = self.host_outcomes.setdefault(name, {"outcome": "GOOD", "duration": 0.0,
                                                     "error": "", "output": ""})
        code = worst_status(code)
        if _SEVERITY[code] > _SEVERITY.get(entry["outcome"], 0):
            entry["outcome"], entry["error"], entry["output"] = code, error, output
        elif code == entry["outcome"] and error and not entry["error"]:
            entry["error"], entry["output"] = error, output
        if span:
            old = self._spans.get(name)
            self._spans[name] = [min(span[0], old[0]) if old else span[0],
                                 max(span[1], old[1] or 0) if old else span[1]]

    def take_host_records(self):
        """Hands over (and forgets) what this process recorded about hosts:
        a parallel task sends it to the parent, which merges it."""
        data = {name: (entry, self._spans.get(name))
                for name, entry in self.host_outcomes.items()}
        self.host_outcomes, self._spans = {}, {}
        return data

    def merge_host_records(self, data):
        for name, (entry, span) in data.items():
            self.host_status(name, entry["outcome"], entry["error"],
                             span and [span[0], span[1] or time.time()],
                             entry.get("output", ""))

    def name_host(self, name, machine):
        """Files what was recorded for host `name` under `machine` (the
        user@host:port it was given as), as a task on that machine does."""
        if name != machine and name in self.host_outcomes:
            entry, span = self.host_outcomes.pop(name), self._spans.pop(name, None)
            self.host_status(machine, entry["outcome"], entry["error"],
                             span and [span[0], span[1] or time.time()], entry["output"])

    def drop_host(self, name, reason, verb="dropped"):
        """A host left out of the job as sick (--verify-first; --verify and
        --repair: found sick): summary.json's job.dropped, status.log (WARN:
        the exit status says it) and the closing line name it and why."""
        self.dropped[name] = reason
        self.record("WARN", None, "verify", f"{name}: {verb}: {reason}")
        self.host_status(name, "FAIL", f"{verb}: {reason}")

    def hosts_cut_short(self, reason):
        """The job was stopped: every host whose work had not ended (no task
        of its ended before the stop) is ABORT with the reason."""
        for name, span in self._spans.items():
            if span[1] is None:
                self.host_status(name, "ABORT", reason)

    def host_log(self, name, text):
        """Appends text to the host's own debug log, <results>/<host>/debug/
        host.log: the commands run on it and their output."""
        path = os.path.join(self.resultdir, _safe_name(name), "debug")
        try:
            os.makedirs(path, exist_ok=True)
            fd = os.open(os.path.join(path, "host.log"),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except OSError as e:
            LOG.write(f"host log {path}: {e}", name)

    def closing_line(self, outcome):
        """The run in one line: hosts GOOD of all, each other one named with
        its outcome and cause, and where the results are."""
        hosts = self.host_outcomes
        good = [n for n, v in hosts.items() if v["outcome"] == "GOOD"]
        parts = [f"{len(good)} of {len(hosts)} host{'s' if len(hosts) != 1 else ''} GOOD"
                 if hosts else f"job {outcome}"]
        parts += [f"{n} {v['outcome']} {v['error']}".rstrip()
                  for n, v in sorted(hosts.items()) if v["outcome"] != "GOOD"]
        where = os.path.relpath(self.resultdir)
        parts.append("results in " + (where if not where.startswith("..") else self.resultdir))
        return "; ".join(parts)

    def write_summary(self, outcome, error=""):
        now = time.time()
        for name, (start, end) in self._spans.items():
            if name in self.host_outcomes:
                self.host_outcomes[name]["duration"] = round((end or now) - start, 3)
        data = {"job": {"outcome": outcome, "started": self.started,
                        "duration": round(now - self.started, 3), "error": error,
                        "control": self.control, "machines": self.machines,
                        "args": self.args, "user": self.user, "label": self.label,
                        "run_id": self.run_id, "version": __version__},
                "hosts": self.host_outcomes}
        if self.shard:
            data["job"]["shard"] = self.shard
        if self.dropped:
            data["job"]["dropped"] = self.dropped
        _write_atomic(os.path.join(self.resultdir, "summary.json"),
                      json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_junit(self, path, outcome, error=""):
        _write_atomic(path, _junit_xml(self.host_outcomes, outcome, error,
                                       time.time() - self.started))

    def is_job_process(self):
        """True in the process that made the job; False in a parallel task."""
        return os.getpid() == self._pid

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end(exc)

    def end(self, error: Optional[BaseException] = None) -> str:
        """Ends a job a script made (the CLI ends its own): FAIL when error
        (an exception; ABORT for Ctrl-C or SIGTERM) is given or a test
        recorded FAIL, ERROR or ABORT, else GOOD; status.log says why, summary.json and keyval hold the
        outcome, the debug log closes and the job stops being the current
        one.  Hosts stay open (close them, or close_all()).  Returns the
        outcome."""
        global _JOB
        outcome, why = "GOOD", ""
        if error is not None:
            stopped = isinstance(error, (KeyboardInterrupt, _Terminated))
            outcome = "ABORT" if stopped else "FAIL"
            why = f"{type(error).__name__}: {_last_line(error)}"
            self.record(outcome, None, "job", why)
            for name in _hosts_in(error):
                self.host_status(name, "FAIL", _last_line(str(error)))
        elif self.status.worst in FAILING_CODES:
            outcome, why = "FAIL", f"a test recorded {self.status.worst}"
        self.write_summary(outcome, why)
        self.write_keyval({"job_finished": int(time.time()),
                           "exit_status": 0 if outcome == "GOOD" else 1})
        if self.is_job_process():
            LOG.close()
        if _JOB is self:
            _JOB = None
        return outcome

    def add_cleanup(self, func: Callable[[], Any]) -> None:
        """func() runs when the job ends (close_all(): newest first, before
        the hosts close), in the process that added it."""
        _add_cleanup(func)

    def cleanup(self):
        """Ends what the job's process opened: close_all().  Only the process
        that made the job does it."""
        if self.is_job_process():
            close_all()


Job = ServerJob


def _junit_xml(host_outcomes, outcome, error, seconds):
    """JUnit XML: one test case per host (or one for the job when no host
    was recorded), failed unless its outcome is GOOD."""
    from xml.sax.saxutils import escape, quoteattr
    cases = []
    failures = 0
    for name, info in sorted(host_outcomes.items()):
        body = ""
        if info["outcome"] != "GOOD":
            failures += 1
            text = "\n".join(t for t in (info["error"], info.get("output")) if t)
            body = (f"<failure message={quoteattr(info['outcome'])}>"
                    f"{escape(text)}</failure>")
        cases.append(f'  <testcase classname="autoserv" name={quoteattr(name)} '
                     f'time="{info["duration"]}">{body}</testcase>')
    if not cases:
        body = ""
        if outcome != "GOOD":
            failures = 1
            body = f"<failure message={quoteattr(outcome)}>{escape(error)}</failure>"
        cases.append(f'  <testcase classname="autoserv" name="job">{body}</testcase>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuite name="autoserv" tests="{len(cases)}" failures="{failures}" '
            f'time="{seconds:.3f}">\n' + "\n".join(cases) + "\n</testsuite>\n")


# Under sudo, a root shell that passes a stop on: the login user may signal
# sudo (which relays to this shell) but not the root processes under it, so
# on TERM it ends its whole process group itself, and KILLs it 2 s later
# from a child that ignores TERM from its start (set before the fork).  Its
# own stdin kept for the command (a background job would get /dev/null).
_ROOT_SH = ("exec 3<&0; trap \"trap '' TERM HUP INT; (sleep 2; kill -KILL 0) & "
            "trap - TERM HUP INT; kill -TERM 0\" TERM HUP INT; sh -c \"$1\" <&3 3<&- & wait $!")


def _as_root(command):
    """command as root through `sudo -n` (never a password prompt), the
    run id passed on so that the run's clean-up still finds it."""
    return ('sudo -n -- env ${AUTOSERV_RUN_ID:+AUTOSERV_RUN_ID="$AUTOSERV_RUN_ID"} sh -c '
            + shlex.quote(_ROOT_SH) + " sh " + shlex.quote(command))


_SUDO_REFUSED = re.compile(r"^sudo: (a password is required|a terminal is required)"
                           r"|is not in the sudoers file|may not run sudo"
                           r"|\bsudo: (command )?not found")


def _check_sudo(hostname, result):
    """Raises AutoservHostError, with what sudo said, when sudo itself
    refused to run the command (rather than the command failing)."""
    said = next((l.strip() for l in result.stderr.splitlines()[:5]
                 if _SUDO_REFUSED.search(l)), None)
    if result.exit_status in (1, 127) and said:
        raise AutoservHostError(hostname, "sudo -n would not run the command as root",
                                f"{said}; give the login user NOPASSWD sudo "
                                "(sudoers) or log in as root")


def _probe(host, command, timeout=60):
    """A question autoserv asks a host for itself (is this a dir? is qemu
    alive?): host.run(command, ignore_status=True), kept out of the debug
    logs, where its failing answer would read as a failed command."""
    with LOG.quiet():
        return host.run(command, timeout=timeout, ignore_status=True)


def _log_command(hostname, command=None, result=None, cap=64 * 1024):
    """In the host's own debug log: a command as it starts, then its result
    with its output (each stream's last `cap` bytes); nothing outside a
    job, nothing for a probe."""
    if result is None:
        _host_note(hostname, f"run: {command}")
        return
    if _JOB is None or not hostname or LOG.muted:
        return
    lines = []
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if len(text) > cap:
            lines.append(f"{name}| [... {len(text) - cap} characters left out; whole "
                         "stream in debug/autoserv.log ...]")
            text = text[-cap:]
        lines += [f"{name}| {line}" for line in text.splitlines()]
    lines.append(f"{result.status_text()} in {result.duration:.3f} s")
    _JOB.host_log(hostname, "\n".join(lines) + "\n")


def _host_note(hostname, text):
    """A timestamped line in the host's own debug log (in a job; not for
    a probe)."""
    if _JOB is not None and hostname and not LOG.muted:
        _JOB.host_log(hostname, time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")


def _record(*args, **kwargs):
    """A line in the job's status.log (nothing outside a job)."""
    if _JOB is not None:
        _JOB.record(*args, **kwargs)


# Watching the job: progress, stalls, the live view #############################

# What a person at the terminal sees while the job waits.  A long wait (a
# reboot's phases, wait_up/wait_down, a hard reset, a kernel install, a
# transfer, a download) is a _Progress: on a terminal one line redrawn in
# place, off one a plain line every AUTOSERV_PROGRESS_EVERY (default
# WAIT_PROGRESS_EVERY) seconds, inside a parallel task under the live view
# a row of that view.  All of it goes to stderr or the view, never to a
# command's output or its CmdResult; -q silences it.  A run() that prints
# nothing for stall_warn seconds gets a warning line (_StallWatch).

STALL_WARN = 300.0          # s of silence before run() warns (--stall-warn)
LIVE_REDRAW = 0.5           # s between redraws of a live line or the live view
_WATCH = {"quiet": False, "stall_warn": STALL_WARN, "stack": [], "pipe": None,
          "run": None, "live": False}


def _progress_every():
    """Seconds between plain progress lines (AUTOSERV_PROGRESS_EVERY)."""
    try:
        return max(0.05, float(os.environ.get("AUTOSERV_PROGRESS_EVERY", "")))
    except ValueError:
        return WAIT_PROGRESS_EVERY


def _is_terminal(stream):
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def _human_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024.0


def _proc_bytes(pid, kind):
    """Linux's count for process pid, or None: "wchar", the bytes it has
    written (/proc/PID/io); "stdin", how far it has read its stdin file
    (/proc/PID/fdinfo/0)."""
    path, key = ((f"/proc/{pid}/io", b"wchar:") if kind == "wchar" else
                 (f"/proc/{pid}/fdinfo/0", b"pos:"))
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class _Progress:
    """One long wait, as a context manager.  Nested waits on one host show
    as one line ("reboot > coming up"); a wait inside the same wait (a
    subclass's wait_up calling its parent's) adds nothing.  Bytes come from
    add() or from the processes given to watch_pid() (what they wrote)."""

    def __init__(self, what, host, limit=None):
        self.what, self.host, self.limit = what, host or "server", limit
        self.active = False
        self.counted, self.total, self.pids = 0, 0, {}

    def __enter__(self):
        same = [p for p in _WATCH["stack"] if p.host == self.host and p.what == self.what]
        if same or _WATCH["quiet"]:
            return same[-1] if same else self
        self.active = True
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        _WATCH["stack"].append(self)
        self.drawn = False
        self.thread = threading.Thread(target=self._loop, name="autoserv-progress",
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if not self.active:
            return
        self.stop.set()
        self.thread.join(5)
        if self in _WATCH["stack"]:
            _WATCH["stack"].remove(self)
        if self.drawn and _WATCH["pipe"] is None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def add(self, count, total=0):
        self.counted += count
        self.total = total or self.total

    def watch_pid(self, pid, kind="wchar", total=0):
        self.pids[pid, kind] = 0
        self.total = total or self.total

    def done(self):
        for key in self.pids:
            self.pids[key] = _proc_bytes(*key) or self.pids[key]
        return self.counted + sum(self.pids.values())

    def line(self):
        elapsed = time.monotonic() - self.t0
        whats = [p.what for p in _WATCH["stack"] if p.host == self.host and p is not self]
        text = f"{self.host}: {' > '.join(whats + [self.what])} {elapsed:.0f} s"
        if self.limit:
            text += f" / {float(self.limit):.0f} s"
        done = self.done()
        if done:
            text += f", {_human_bytes(done)}"
            if self.total:
                text += f" of {_human_bytes(self.total)}"
            text += f" at {_human_bytes(done / max(elapsed, 0.001))}/s"
        return _neutralise(text)

    def _loop(self):
        pipe = _WATCH["pipe"]
        live = pipe is not None or _is_terminal(sys.stderr)
        every = LIVE_REDRAW if live else _progress_every()
        while not self.stop.wait(every):
            if not _WATCH["stack"] or _WATCH["stack"][-1] is not self:
                continue
            try:
                if pipe is not None:
                    os.write(pipe, (self.line()[:300] + "\n").encode())
                elif live:
                    width = shutil.get_terminal_size().columns
                    sys.stderr.write("\r\x1b[K" + ("autoserv: " + self.line())[:width - 1])
                    sys.stderr.flush()
                    self.drawn = True
                else:
                    sys.stderr.write(f"autoserv: {self.line()}\n")
                    sys.stderr.flush()
            except (OSError, ValueError):
                pass


def _progress_add(count, total=0):
    """Bytes moved by the innermost wait running (a transfer, a download)."""
    if _WATCH["stack"]:
        _WATCH["stack"][-1].add(count, total)


def _progress_pid(pid, kind="wchar", total=0):
    """A process whose count (_proc_bytes) is the innermost wait's progress."""
    if _WATCH["stack"]:
        _WATCH["stack"][-1].watch_pid(pid, kind, total)


def _watched(what, limit="timeout", default=None, host=None):
    """Decorator: the method runs as a _Progress named what, on the host of
    the argument named host (else self), limited by its argument named
    limit (default when not given)."""
    def wrap(func):
        names = func.__code__.co_varnames[:func.__code__.co_argcount]

        def argument(name, args, kwargs, fallback):
            if name in kwargs:
                return kwargs[name]
            index = names.index(name) if name in names else len(args) + 1
            return args[index] if index < len(args) else fallback

        def watched(*args, **kwargs):
            target = argument(host, args, kwargs, None) if host else args[0]
            name = getattr(target, "hostname", None)
            wait = argument(limit, args, kwargs, default) if limit else None
            with _Progress(what, name, wait if isinstance(wait, (int, float)) else None):
                return func(*args, **kwargs)
        import functools
        return functools.wraps(func)(watched)
    return wrap


class _StallWatch:
    """run()'s watchdog: a command silent for threshold seconds gets a line
    in the debug log and on stderr, again at twice the silence, four times...
    Output starts the count again.  It never stops the command."""

    def __init__(self, threshold, host, command):
        self.threshold, self.host = float(threshold), host
        self.command = _neutralise(command if len(command) <= 80 else command[:77] + "...")
        self.heard()

    def heard(self):
        self.last = time.monotonic()
        self.next = self.threshold

    def wait(self, other):
        """The select timeout: other's (None: none), or sooner for a warning."""
        until = max(0.0, self.last + self.next - time.monotonic())
        return until if other is None else min(other, until)

    def check(self):
        silent = time.monotonic() - self.last
        if silent < self.next:
            return
        self.next *= 2
        message = (f"{self.host}: {self.command!r} has printed nothing for {silent:.0f} s; "
                   f"still running (stall warning after {self.threshold:g} s)")
        LOG.write("stall: " + message, self.host)
        if not _WATCH["quiet"]:
            _say(f"stall: {message}")


def _stall_watch():
    """The watchdog for the command run() is running now, or None."""
    current = _WATCH["run"]
    if current is None:
        return None
    threshold, host, command = current
    threshold = _WATCH["stall_warn"] if threshold is None else threshold
    return _StallWatch(threshold, host, command) if threshold and threshold > 0 else None


class _Running:
    """run()'s context: the command and stall threshold its execution's
    watchdog takes (_stall_watch)."""

    def __init__(self, stall_warn, host, command):
        self.entry = (stall_warn, host, command)

    def __enter__(self):
        self.saved, _WATCH["run"] = _WATCH["run"], self.entry

    def __exit__(self, *exc):
        _WATCH["run"] = self.saved


class _RowSink:
    """A task's output under the live view: keeps its last line."""

    def __init__(self, row):
        self.row = row
        self.partial = ""

    def write(self, text):
        lines = (self.partial + text).split("\n")
        self.partial = lines[-1][-500:]
        done = [l for l in lines[:-1] if l.strip()]
        if done or self.partial.strip():
            self.row["last"] = (self.partial if self.partial.strip() else done[-1])[-300:]

    def flush(self):
        pass


class _LiveView:
    """parallel()'s view on a terminal: a row per task (name, state, elapsed,
    current step from its status entries, last line of output or its wait's
    progress), redrawn in place with ANSI cursor moves; the final state stays
    on the screen.  Only for tasks that each have a results subdir (their
    output is in its debug/ files), and not with -v (the debug log's lines
    would scroll it away)."""

    @classmethod
    def wanted(cls, tasks):
        return (not _WATCH["quiet"] and not LOG.echo and bool(tasks)
                and all(t.subdir for t in tasks)
                and _is_terminal(sys.stdout) and _JOB is not None
                and _JOB.is_job_process())

    def __init__(self, tasks):
        self.tasks = tasks
        self.rows = {id(t): {"last": "", "step": "", "stack": [], "offset": None}
                     for t in tasks}
        self.lines = 0
        self.drawn_at = 0.0
        _WATCH["live"] = True

    def sink(self, task):
        return _RowSink(self.rows[id(task)])

    def progress(self, task, data):
        text = _decode(data).rstrip("\n").rsplit("\n", 1)[-1]
        if text:
            self.rows[id(task)]["last"] = text

    def _step(self, task, row):
        """The task's current step: its innermost open status group, else
        its last entry, from what it wrote to its status log so far."""
        path = task.status_path
        if not path:
            return row["step"]
        if row["offset"] is None:
            row["offset"] = task.status_offset
        try:
            with open(path, "rb") as f:
                f.seek(row["offset"])
                data = f.read(1 << 20)
        except OSError:
            return row["step"]
        complete = data[:data.rfind(b"\n") + 1]
        row["offset"] += len(complete)
        for line in _decode(complete).split("\n"):
            fields = line.lstrip("\t").split("\t")
            if len(fields) < 5 or line.lstrip("\t").startswith("  "):
                continue
            code, operation = fields[0], fields[2]
            if code == "START":
                row["stack"].append(operation)
            elif code.startswith("END ") and row["stack"]:
                row["stack"].pop()
            row["step"] = row["stack"][-1] if row["stack"] else f"{code} {operation}"
        return row["step"]

    def _text(self, task, width):
        row = self.rows[id(task)]
        if task.started is None:
            state, elapsed = "waiting", ""
        elif task.duration is not None:
            state = getattr(task, "status", None) or ("FAIL" if task.error else "done")
            elapsed = _report_seconds(task.duration)
        else:
            state, elapsed = "running", _report_seconds(time.monotonic() - task.started)
        name = os.path.basename(task.subdir)[:20]
        text = (f"{name:<20} {state:<7} {elapsed:>9}  {self._step(task, row)[:24]:<24} "
                f"{row['last']}")
        return _neutralise(text)[:max(20, width - 1)]

    def draw(self, force=False):
        now = time.monotonic()
        if not force and now - self.drawn_at < LIVE_REDRAW:
            return
        self.drawn_at = now
        width = shutil.get_terminal_size().columns
        out = [f"\x1b[{self.lines}A"] if self.lines else []
        out += ["\r\x1b[K" + self._text(t, width) + "\n" for t in self.tasks]
        self.lines = len(self.tasks)
        try:
            sys.stdout.write("".join(out))
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def close(self):
        _WATCH["live"] = False
        self.draw(force=True)


# Hosts: the contract, local and remote ########################################

def get_tmp_dir() -> str:
    """A local temp dir (0700), removed when the job ends."""
    path = tempfile.mkdtemp(prefix="autoserv-")
    _LOCAL_TMP.append((os.getpid(), path))
    return path


def _cleanup_local_tmp():
    me = os.getpid()
    for pid, path in list(_LOCAL_TMP):
        if pid == me:
            shutil.rmtree(path, ignore_errors=True)
            _LOCAL_TMP.remove((pid, path))


def _add_cleanup(func):
    """func() runs at close_all() in this process (KVM.uninstall, a job's
    add_cleanup); a parallel task's copy of the list is not its to run."""
    _CLEANUPS.append((os.getpid(), func))


def _close_all_hosts():
    global _ENDING
    _ENDING = []
    try:
        for host in reversed(list(_HOSTS)):
            try:
                host.close()
            except Exception as e:
                LOG.write(f"closing failed: {e}", getattr(host, "hostname", None))
    finally:
        masters, _ENDING = _ENDING, None
        _end_masters(masters)
    _reap_watchdog_starts(wait=5.0)
    _remove_ctrl_dir()


def close_all() -> None:
    """Ends everything this process opened: the cleanups registered with it
    (a KVM's uninstall: its guests, the modules it loaded), then every host
    (its agent, remote temp dirs, ssh master), the ssh control dir and the
    local temp dirs.  The one cleanup path: a job's end, a parallel task's
    end and the interpreter's exit (normal or by an uncaught exception) all
    come here.  Hosts made in another process (a task's copies of its
    parent's) are left to their maker.  Safe to call more than once."""
    me = os.getpid()
    try:
        while True:
            mine = [entry for entry in _CLEANUPS if entry[0] == me]
            if not mine:
                break
            _CLEANUPS.remove(mine[-1])
            try:
                mine[-1][1]()
            except Exception as e:   # keep cleaning up
                LOG.write(f"cleanup {mine[-1][1]!r} failed: {e}")
        _close_all_hosts()
    finally:
        _reap_watchdog_starts(wait=5.0)
        _cleanup_local_tmp()


atexit.register(close_all)


_PASSWORD_HINT = ("autoserv logs in with ssh keys only (BatchMode: never a password "
                  "prompt): make a key with ssh-keygen, install it with ssh-copy-id "
                  "[user@]host, then give it with -i FILE, identity=FILE or IdentityFile "
                  "in ~/.ssh/config")


def _refuse_host_keywords(cls_name, kwargs):
    """AutoservArgumentError (one line) for keywords no host class takes;
    password= says how autoserv logs in instead."""
    if "password" in kwargs:
        raise AutoservArgumentError(f"{cls_name}(password=...): {_PASSWORD_HINT}")
    _refuse_keywords(f"{cls_name}()", set(kwargs))


def _by_name(kind, spec, where):
    """A power controller or console from power=/console=: an object as it
    is, or a name registered with register_power/register_console (the
    built-in ones included): "name" makes cls(), "name:argument" cls(argument),
    {"type": name, **keywords} cls(**keywords)."""
    if spec is None or not isinstance(spec, (str, dict)):
        return spec
    if isinstance(spec, dict):
        keywords = dict(spec)
        name, args = keywords.pop("type", None), ()
    else:
        name, sep, argument = spec.partition(":")
        keywords, args = {}, ((argument,) if sep else ())
    cls = _REGISTRY[kind].get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY[kind])) or "none"
        raise AutoservUsageError(f"{where}: no {kind} type registered as {name!r} "
                                 f"(registered: {known})")
    return cls(*args, **keywords)


class Host:
    """The API every kind of host has, stated once here: every host class
    takes these parameters (a class that cannot do something raises
    AutoservNotImplementedError or AutoservUsageError saying so).  Timeouts
    are seconds; None means no limit.

    Constructor keywords every host takes: power= (a power controller, or a
    registered power type by name: see _by_name), console= (likewise for
    console types) and sudo= (True: every run() as root through sudo -n).
    An unknown keyword is an AutoservArgumentError naming it; password=
    says how to log in with a key instead.

    Collaborators: power (on/off/cycle/reset/status, a PowerController) and
    console (any object; one with hardreset() is a reset path, one with
    close() is closed by the host that made it).  hardreset() has one path,
    through them.  Hooks other objects use, instead of this host's private
    state: expect_kernel_at_next_boot() (a kernel arms its boot check),
    forget_tmp_dir() (a user removed a get_tmp_dir() dir itself),
    is_owned_here() (this process made the host: it may end what the host
    started).  Subclasses override _drop_connection() (a reset killed the
    connection)."""

    hostname = None
    power = None
    console = None

    def __init__(self, power: Any = None, console: Any = None, sudo: bool = False,
                 **kwargs: Any):
        _refuse_host_keywords(type(self).__name__, kwargs)
        self.sudo = bool(sudo)
        where = f"{type(self).__name__}({self.hostname!r})"
        self.power = _by_name("power", power, where)
        self.console = _by_name("console", console, where)
        self._tmp_dirs = []
        self._expect_kernel = None
        self._owner = os.getpid()
        _HOSTS.append(self)
        if _JOB is not None and self.hostname:
            _JOB.note_host(self)

    def __repr__(self):
        return f"<{type(self).__name__} {self.hostname}>"

    def __str__(self):
        return str(self.hostname)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        """``with SSHHost(name) as h:`` closes h however the block ends."""
        self.close()

    def __reduce__(self):
        # Hosts cross process boundaries (parallel) by being rebuilt from
        # their constructor arguments, never with live connections.
        kwargs = dict(self._init_kwargs, **({"sudo": True} if self.sudo else {}))
        return (_rebuild_host, (type(self), self._init_args, kwargs))

    def run(self, command: str, timeout: Optional[float] = None, ignore_status: bool = False,
            stdin: _Stdin = None, stdout_tee: _Tee = None, stderr_tee: _Tee = None,
            args: Sequence[str] = (), connect_timeout: Optional[float] = None,
            max_output: int = DEFAULT_MAX_OUTPUT,
            stall_warn: Optional[float] = None, sudo: Optional[bool] = None) -> "CmdResult":
        """Runs command (a shell string; args are appended as quoted words)
        under the target's login shell, stdin from /dev/null unless given
        (str or bytes); output teed live to stdout_tee/stderr_tee.  timeout
        bounds the whole command (it and what it started are killed);
        connect_timeout bounds reaching the host.  sudo=True (default: the
        host's sudo=) runs it as root through `sudo -n`.  Returns a CmdResult.
        Raises AutoservRunError for a non-zero exit unless ignore_status,
        AutoservTimeoutError on timeout, AutoservSSHError (a subclass) when
        the transport fails, AutoservHostError when sudo wants a password.
        A command silent for stall_warn seconds (None: --stall-warn's,
        default STALL_WARN; 0: never) gets a warning line in the debug log
        and on stderr, again with back-off; never killed.

        The one run body for every kind of host: a subclass supplies the
        transport's primitive, _execute()."""
        command = _with_args(command, args)
        as_root = self.sudo if sudo is None else sudo
        _log_command(self.hostname, command)
        with _Running(stall_warn, self.hostname, command):
            result = self._execute(_as_root(command) if as_root else command,
                                   _stdin_bytes(stdin), timeout, stdout_tee,
                                   stderr_tee, max_output, connect_timeout)
        result.command, result.timeout = command, timeout
        if as_root:
            _check_sudo(self.hostname, result)
        LOG.write(f"{result.status_text()} in {result.duration:.3f}s", self.hostname)
        _log_command(self.hostname, result=result)
        return _judge(result, ignore_status)

    def _execute(self, command, data, timeout, stdout_tee, stderr_tee, max_output,
                 connect_timeout):
        """Runs command (its args appended already) with data (bytes) on its
        stdin; returns its CmdResult, unjudged: exit status, signal, timed_out
        and output set.  Raises only for a transport that failed."""
        raise NotImplementedError

    def send_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                  preserve_symlinks: bool = False, backend: Optional[str] = None,
                  timeout: Optional[float] = None) -> None:
        """Copies source (a path or a list; "dir/" means its contents) from
        here to dest on the host, through a temp name (an interrupted copy
        never replaces the old dest).  delete_dest: remove what source does
        not have; backend: "tar", "rsync" or "scp" (remote hosts); timeout
        bounds the whole transfer.  Returns None.  Raises
        AutoservFileTransferError naming the file and why,
        AutoservTimeoutError on timeout."""
        raise NotImplementedError

    def get_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                 preserve_perm: bool = True, preserve_symlinks: bool = False,
                 backend: Optional[str] = None, timeout: Optional[float] = None) -> None:
        """Copies source on the host to dest here, as send_file() does the
        other way; preserve_perm keeps the modes.  Returns None; raises as
        send_file()."""
        raise NotImplementedError

    def get_tmp_dir(self) -> str:
        """A new 0700 directory on the host, removed when the job ends.
        Returns its path."""
        raise NotImplementedError

    def is_owned_here(self) -> bool:
        """True in the process that made this host; False in a parallel
        task's copy of it (what the host started is its maker's to end)."""
        return self._owner == os.getpid()

    def _add_tmp_dir(self, path):
        """Registers path (a dir on the host, this process's) for close() to
        remove."""
        self._tmp_dirs.append((os.getpid(), path))

    def forget_tmp_dir(self, path: str) -> None:
        """Unregisters a get_tmp_dir() dir that its user removed itself, so
        close() does not remove it again.  Returns None."""
        self._tmp_dirs = [(pid, p) for pid, p in self._tmp_dirs if p != path]

    def _value(self, command):
        return self.run(command, timeout=60).stdout.strip()

    def get_num_cpu(self) -> int:
        """The number of online CPUs (int)."""
        out = self._value("getconf _NPROCESSORS_ONLN 2>/dev/null || "
                          "grep -c ^processor /proc/cpuinfo")
        return int(out)

    def get_boot_id(self, timeout: Optional[float] = 60,
                    connect_timeout: Optional[float] = None) -> str:
        """The kernel's boot id (str): it changes with every boot.  A read,
        so a session that ended with no word from the target (ssh's bare
        status 255: the target's end of it killed before the command ran,
        the master still up) is asked once more, over a new connection."""
        command = "cat /proc/sys/kernel/random/boot_id"
        try:
            return self.run(command, timeout=timeout,
                            connect_timeout=connect_timeout).stdout.strip()
        except AutoservSSHError as e:
            if type(e) is not AutoservSSHError:     # a known cause: the caller's to judge
                raise
            LOG.write(f"boot id: {e}; asking once more over a new connection", self.hostname)
            self._drop_connection()
            return self.run(command, timeout=timeout,
                            connect_timeout=connect_timeout).stdout.strip()

    def get_kernel_ver(self) -> str:
        """uname -r (str)."""
        return self._value("uname -r")

    def get_arch(self) -> str:
        """uname -m (str)."""
        return self._value("uname -m")

    def is_up(self, timeout: Optional[float] = None) -> bool:
        """True when the host answers a command within timeout (None: the
        host's connect timeout), else False.  Never raises for a host that
        is down."""
        raise NotImplementedError

    def wait_up(self, timeout: Optional[float] = None) -> bool:
        """Waits until the host answers; True when it does, False when
        timeout passes first (None waits as long as it takes)."""
        raise NotImplementedError

    def wait_down(self, timeout: Optional[float] = None,
                  old_boot_id: Optional[str] = None) -> bool:
        """Waits until the host stops answering, or its boot id differs
        from old_boot_id; True when it does, False when timeout passes
        first (None waits as long as it takes)."""
        raise NotImplementedError

    def reboot(self, timeout: Optional[float] = 1800, label: Optional[str] = None,
               kernel_args: Optional[str] = None, wait: bool = True, fastsync: bool = False,
               reboot_cmd: Optional[str] = None, down_timeout: Optional[float] = None,
               stable_for: float = 3.0) -> None:
        """Reboots the host and, with wait, checks that it did: down (within
        down_timeout), then up with a new boot id that holds for stable_for
        seconds, all within timeout; one hard reset if it stays down and a
        reset path exists.  label: the boot entry to boot once; kernel_args:
        arguments for that boot; reboot_cmd: the command (default "sync;
        reboot", "reboot" with fastsync).  Returns None.  Raises
        AutoservRebootError when the host did not reboot,
        AutoservKernelBootError when an installed kernel did not come up."""
        raise AutoservNotImplementedError(
            f"{self.hostname}: {type(self).__name__} cannot reboot")

    def _boot_next(self, label=None, kernel_args=None):
        """reboot()'s label and kernel_args: label is booted once;
        kernel_args go to a copy of the entry that boots next (label, else a
        kernel installed to boot next, else the default), booted once.
        Returns the copy's title, to remove once the host is back, or None."""
        if kernel_args:
            expected = self._expect_kernel
            source = label if label is not None else (expected or {}).get("title")
            return self.bootloader.boot_once_with_args(source, kernel_args)
        if label is not None:
            self.bootloader.boot_once(label)
        return None

    def expect_kernel_at_next_boot(self, version: str, title: str) -> None:
        """The hook a kernel arms when it is installed to boot next: the next
        reboot() (with wait) checks that the host came up running release
        version, boot entry title, and fails with AutoservKernelBootError
        when it did not; reboot(kernel_args=...) without a label adds the
        arguments to that entry.  One reboot consumes it.  Returns None."""
        self._expect_kernel = {"version": version, "title": title}

    def can_hardreset(self) -> bool:
        """True when a hard reset path exists (a power controller, or a
        console with a hardreset())."""
        return self.power is not None or callable(getattr(self.console, "hardreset", None))

    def _power(self):
        if self.power is None:
            raise AutoservHostError(self.hostname, "no power controller attached",
                                    "pass power= or set host.power")
        return self.power

    @_watched("hard reset", default=POST_RESET_WAIT)
    def hardreset(self, timeout: Optional[float] = None, wait: bool = True) -> None:
        """A hard reset through the power controller (its reset(), else a
        power cycle), else through the console's hardreset(); with wait,
        until the host is back with a new boot id (within timeout; None: 300
        s).  Returns None.  Raises AutoservHostError without a reset path,
        AutoservRebootError when the host does not come back."""
        if self.power is None and callable(getattr(self.console, "hardreset", None)):
            self._reset_and_wait(self.console.hardreset, type(self.console).__name__, timeout,
                                 wait)
            return
        power = self._power()
        self._reset_and_wait(getattr(power, "reset", None) or power.cycle,
                             type(power).__name__, timeout, wait)

    def _reset_and_wait(self, action, how, timeout=None, wait=True):
        """Runs a reset action; with wait, until the host is back with a new
        boot id (or raises AutoservRebootError).  Without wait the old boot
        id is not read: nothing compares it, and a caller that resets a
        host it found down (reboot()'s one reset) would wait out the probe."""
        old = None
        try:
            old = self.get_boot_id(timeout=5, connect_timeout=5) if wait else None
        except AutoservError:
            pass
        action()
        LOG.write(f"hard reset through {how}", self.hostname)
        _record("INFO", None, "hardreset", f"{self.hostname}: hard reset through {how}")
        self._drop_connection()
        if not wait:
            return
        if old and not self.wait_down(timeout=60, old_boot_id=old):
            raise AutoservRebootError(self.hostname, "did not go down after a hard reset")
        if not self.wait_up(timeout if timeout is not None else 300):
            raise AutoservRebootError(self.hostname, "did not come back after a hard reset")
        if old and self.get_boot_id() == old:
            raise AutoservRebootError(self.hostname, "boot id unchanged after a hard reset")

    def _drop_connection(self):
        """Hook: forgets any connection held open to the host (after a hard
        reset it is dead, and a reused one would hang).  Nothing here;
        SSHHost ends its master."""

    def power_on(self):
        """The power controller's on().  Raises AutoservHostError without
        one, AutoservNotImplementedError when it cannot."""
        return self._power().on()

    def power_off(self):
        """The power controller's off() (raises as power_on()); drops the dead connection."""
        result = self._power().off()
        self._drop_connection()
        return result

    def power_cycle(self):
        """The power controller's cycle() (raises as power_on()); as power_off()."""
        result = self._power().cycle()
        self._drop_connection()
        return result

    def verify(self, min_free: Optional[Dict[str, float]] = None,
               max_clock_skew: Optional[float] = None) -> str:
        """Checks that the host is fit for a job, in this order: it answers
        within its connect timeout; its boot id is readable; free space on
        /, /tmp and the autotest dir (when one is installed) is at least
        min_free's MB (a dict path -> MB, "autodir" for the autotest dir,
        over --min-free's and DEFAULT_MIN_FREE_MB); its clock is within
        max_clock_skew s of this machine's (default --max-clock-skew's,
        DEFAULT_MAX_CLOCK_SKEW); an autotest install is complete (its
        autoserv.py or bin/autotest there, no stale mount on its tmp); then
        the site file's SiteHost.verify(), if it defines one.  status.log:
        GOOD verify with the figures, or FAIL verify with the failing
        check's.  Returns the figures (one line).  Raises AutoservHostError
        naming the first check that failed and its figures (.check is its
        name)."""
        return _record_verify(self, lambda: _verify_checks(
            self, min_free, max_clock_skew, self._site_step("verify")))

    def repair(self, min_free: Optional[Dict[str, float]] = None,
               max_clock_skew: Optional[float] = None,
               reboot_timeout: float = REPAIR_REBOOT_TIMEOUT) -> None:
        """Heals a host that fails verify() (with these thresholds), by
        escalation, each step followed by verify()'s checks and the first
        that heals ending it: drop and re-open the connection; a soft
        reboot (boot id verified, within reboot_timeout); a hard reset
        through the host's reset path (hardreset(): power controller or
        console); the site file's SiteHost.repair(), if it defines one.  A
        healthy host is left alone.  status.log: a repair group, each step
        an INFO line saying why it ran and what it found, END GOOD or FAIL
        (a step that failed inside a repair that healed does not fail the
        job).  Returns None.  Raises AutoservHostError when no step healed
        it, naming the last failing check (and "no reset path" when there
        was none to try)."""
        _repair_ladder(self, (
            ("reconnect", "drop and re-open the connection", self._drop_connection),
            ("reboot", "soft reboot", lambda: self._repair_reboot(reboot_timeout)),
            ("hardreset", "hard reset through the reset path", self._repair_reset),
            ("site", "the site file's SiteHost.repair()", self._site_step("repair"))),
            lambda: _verify_checks(self, min_free, max_clock_skew, self._site_step("verify")))

    def _repair_reboot(self, timeout):
        """repair()'s soft reboot: only a remote host (never the machine
        autoserv runs on), not one that answers as an unprivileged user
        without sudo= (a reboot it would refuse); the reboot's own checks
        (boot id) decide, and record why it failed."""
        if not isinstance(self, RemoteHost):
            raise AutoservNotImplementedError(f"{self.hostname}: not rebooted by a repair "
                                              f"({type(self).__name__})")
        try:
            uid = self.run("id -u", timeout=30).stdout.strip()
        except AutoservError:       # unreachable: reboot() says so in status.log
            uid = "0"
        if uid != "0":
            raise AutoservHostError(self.hostname, "not rebooted", f"logged in as uid {uid}, "
                                    "not root, and no sudo=: the reboot would be refused")
        self.reboot(timeout=timeout, down_timeout=min(120.0, timeout))

    def _repair_reset(self):
        """repair()'s hard reset; without a reset path, why the ladder stops."""
        if not self.can_hardreset():
            return ("no reset path (no power controller, no console with a hardreset()): "
                    "repair stops here")
        self.hardreset(timeout=POST_RESET_WAIT)
        return None

    def _site_step(self, name):
        """The site file's SiteHost.<name> (verify or repair) bound to this
        host, or None: its mixin sits between SiteHost and Host in the MRO."""
        mro = type(self).__mro__
        if SiteHost not in mro:
            return None
        for klass in mro[mro.index(SiteHost) + 1:mro.index(Host)]:
            if name in vars(klass):
                return vars(klass)[name].__get__(self, type(self))
        return None

    def install(self, installable: Any, **kwargs: Any) -> Any:
        """installable.install(self, **kwargs): what it returns."""
        return installable.install(self, **kwargs)

    @property
    def bootloader(self):
        """This host's Bootloader (boottool copied over on first use)."""
        if getattr(self, "_bootloader", None) is None:
            self._bootloader = Bootloader(self)
        return self._bootloader

    def close(self) -> None:
        """Ends what this host holds open (connections, its temp dirs, a
        guest's qemu); the host may not be used after it."""


def _keywords_of(cls):
    """The keywords cls(...) takes by name, along its __init__ chain."""
    import inspect
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for c in cls.__mro__ if "__init__" in vars(c)
            for p in inspect.signature(vars(c)["__init__"]).parameters.values()
            if p.kind in named} - {"self"}


def _rebuild_host(cls, args, kwargs):
    return cls(*args, **kwargs)


class SiteHost(Host):
    """Site-specific methods for every host class.  ``site_autoserv.py`` may
    define a SiteHost mixin; load_site() splices it in here.  A verify() or
    repair() it defines is the last step of Host's (found by _site_step()),
    not a replacement: these two names shadow the mixin's."""

    verify = Host.verify
    repair = Host.repair


def register_host_class(name: str, cls: type) -> None:
    _REGISTRY["host"][name] = cls


def register_power(name: str, cls: type) -> None:
    _REGISTRY["power"][name] = cls


def register_console(name: str, cls: type) -> None:
    _REGISTRY["console"][name] = cls


def _unsafe_site_file(path, st, explicit):
    """Why the site file at path (fstat st) may not run, or None.  Like git's
    safe.directory: the file must belong to the running user or root and be
    writable by nobody else; found by search (not named by AUTOSERV_SITE),
    its directory must too, unless it is sticky (like /tmp)."""
    import stat
    me = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (me, 0):
        return f"owned by uid {st.st_uid}, not by you (uid {me}) or root"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if explicit:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    dst = os.stat(directory)
    if dst.st_uid not in (me, 0):
        return f"its directory {directory} is owned by uid {dst.st_uid}, not by you or root"
    if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
        return (f"its directory {directory} is writable by group or others without the "
                "sticky bit")
    return None


def load_site(search=None):
    """Imports site_autoserv.py (AUTOSERV_SITE, the working directory, or next
    to autoserv.py) once and splices its SiteHost mixin into every host class.
    A site file that someone else could have planted or changed is refused
    (_unsafe_site_file); the checked bytes are the ones run."""
    import types
    if "site_autoserv" in sys.modules:
        return sys.modules["site_autoserv"]
    explicit = bool(os.environ.get("AUTOSERV_SITE"))
    candidates = [os.environ.get("AUTOSERV_SITE")] if explicit \
        else (search or [os.path.join(os.getcwd(), "site_autoserv.py"),
                         os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "site_autoserv.py")])
    for path in candidates:
        if path and os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    why = _unsafe_site_file(path, os.fstat(f.fileno()), explicit)
                    data = f.read() if why is None else b""
            except OSError as e:
                raise AutoservUsageError(f"{path}: site file unreadable: {e.strerror}")
            if why:
                raise AutoservUsageError(f"{path}: site file refused: {why}; fix its owner "
                                         "or mode, or remove it")
            module = types.ModuleType("site_autoserv")
            module.__file__ = path
            sys.modules["site_autoserv"] = module
            try:
                exec(compile(data, path, "exec"), module.__dict__)
            except Exception as e:
                del sys.modules["site_autoserv"]
                raise AutoservUsageError(f"{path}: site file failed to load: {e}")
            mixin = getattr(module, "SiteHost", None)
            if isinstance(mixin, type) and mixin is not SiteHost:
                SiteHost.__bases__ = (mixin, Host) if Host not in mixin.__mro__ \
                    else (mixin,)
            LOG.write(f"site file {path} loaded")
            return module
    if os.environ.get("AUTOSERV_SITE"):
        raise AutoservUsageError(f"AUTOSERV_SITE={os.environ['AUTOSERV_SITE']}: "
                                 "no such file")
    return None


class LocalHost(SiteHost):
    """The machine autoserv runs on.  No wait_down; reboot only with
    allow_local_reboot=True, and autoserv goes down with it (reboot())."""

    def __init__(self, hostname: Optional[str] = None, allow_local_reboot: bool = False,
                 **kwargs: Any):
        self._init_args, self._init_kwargs = (), {"allow_local_reboot": allow_local_reboot}
        self.hostname = hostname or "localhost"
        self.allow_local_reboot = allow_local_reboot
        super().__init__(**kwargs)

    def _execute(self, command, data, timeout, stdout_tee, stderr_tee, max_output,
                 connect_timeout):
        LOG.write(f"run: {command}", self.hostname)
        ex = _Execution([_login_shell(), "-c", command], self.hostname, stdin=data,
                        timeout=timeout, stdout_tee=stdout_tee, stderr_tee=stderr_tee,
                        max_output=max_output)
        ex.start()
        ex.wait()
        return _set_exit_status(ex.result(command, self.hostname), ex.returncode)

    def get_tmp_dir(self) -> str:
        return get_tmp_dir()

    def forget_tmp_dir(self, path: str) -> None:
        # Local temp dirs are the module's (get_tmp_dir()), not the host's.
        _LOCAL_TMP[:] = [(pid, p) for pid, p in _LOCAL_TMP if p != path]

    def is_up(self, timeout: Optional[float] = None) -> bool:
        return True

    def wait_up(self, timeout: Optional[float] = None) -> bool:
        return True

    def wait_down(self, timeout: Optional[float] = None,
                  old_boot_id: Optional[str] = None) -> bool:
        raise AutoservUsageError("LocalHost has no wait_down(): autoserv runs on it")

    def reboot(self, timeout: Optional[float] = 1800, label: Optional[str] = None,
               kernel_args: Optional[str] = None, wait: bool = True, fastsync: bool = False,
               reboot_cmd: Optional[str] = None, down_timeout: Optional[float] = None,
               stable_for: float = 3.0) -> None:
        """Reboots the machine autoserv runs on (only with
        allow_local_reboot=True).  autoserv goes down with it, so nothing
        here waits for it to come back or checks a kernel.  label and
        kernel_args are set up as on any host (a kernel_args copy stays in
        the menu, never the default).  In a job, with wait, the control file
        ends here as with sys.exit(0): status.log gets reboot.start (the
        command, the boot id), the job ends as after its last line (hosts
        closed; summary.json and keyval written and synced to disk), and the
        reboot command is the job's last act; if it fails, the job fails
        (exit status 1).  Otherwise the command runs at once: with wait=False
        reboot() returns, with wait it waits up to timeout for the shutdown
        to end this process (AutoservRebootError if it does not).
        down_timeout and stable_for (the base contract's) have nothing to
        time here."""
        if not self.allow_local_reboot:
            raise AutoservUsageError("refusing to reboot the machine autoserv runs on; "
                                     "use LocalHost(allow_local_reboot=True) if you mean it")
        if wait and _JOB is not None and not _JOB.is_job_process():
            raise AutoservUsageError("LocalHost.reboot() in a parallel task: call it from "
                                     "the control file itself (the job ends with it)")
        self._boot_next(label, kernel_args)
        command = reboot_cmd or ("reboot" if fastsync else "sync; reboot")
        what = (f"{self.hostname}: {command} (boot id {self.get_boot_id()}); autoserv goes "
                "down with this machine")
        if wait and _JOB is not None:
            _record("START", None, "reboot", f"{self.hostname}: reboot")
            _record("INFO", None, "reboot.start", what + ": the job ends here")
            raise _LocalReboot(self.hostname, command)
        _record("INFO", None, "reboot.start", what)
        self.run(command, timeout=60)
        if wait:
            time.sleep(timeout)           # the shutdown ends this process
            raise AutoservRebootError(self.hostname, "did not go down",
                                      f"still running {timeout} s after {command}")

    def send_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                  preserve_symlinks: bool = False, backend: Optional[str] = None,
                  timeout: Optional[float] = None) -> None:
        """A local copy (backend is ignored: there is no transport)."""
        _local_copy(source, dest, delete_dest, True, preserve_symlinks, self.hostname,
                    timeout)

    def get_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                 preserve_perm: bool = True, preserve_symlinks: bool = False,
                 backend: Optional[str] = None, timeout: Optional[float] = None) -> None:
        """A local copy (backend is ignored: there is no transport)."""
        _local_copy(source, dest, delete_dest, preserve_perm, preserve_symlinks,
                    self.hostname, timeout)


class RemoteHost(SiteHost):
    """A host reached over a network, rebooted by a command and followed
    by its boot id: the reboot contract (down, up, a stable new boot id, one
    hard reset when it does not come back, the kernel meant to boot checked)
    for every remote kind; a subclass supplies run, is_up and wait_up."""

    @_watched("going down")
    def wait_down(self, timeout: Optional[float] = None,
                  old_boot_id: Optional[str] = None) -> bool:
        """True once the host stops answering or its boot id changes (a
        reboot that completed between two probes).  The debug log says which."""
        deadline = _monotonic_deadline(timeout)
        while True:
            left = _remaining(deadline)
            step = 5 if left is None else max(1, min(5, left))
            try:
                boot_id = self.get_boot_id(timeout=step, connect_timeout=step)
                if old_boot_id and boot_id and boot_id != old_boot_id:
                    LOG.write(f"down: boot id changed from {old_boot_id} to {boot_id} "
                              "between two probes (it answered both)", self.hostname)
                    return True
            except AutoservError as e:
                # One failed probe may be a blip (a master starting just as the
                # last one ended): down only when a second probe agrees.
                LOG.write(f"probe failed ({type(e).__name__}); probing again", self.hostname)
                self._drop_connection()
                time.sleep(0.2)
                try:
                    boot_id = self.get_boot_id(timeout=step, connect_timeout=step)
                except AutoservError as e2:
                    LOG.write(f"down: no answer ({type(e2).__name__})", self.hostname)
                    return True
                if old_boot_id and boot_id and boot_id != old_boot_id:
                    LOG.write(f"down: boot id changed from {old_boot_id} to {boot_id} "
                              "between two probes (it answered both)", self.hostname)
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(min(self.poll_interval, _remaining(deadline) or self.poll_interval))

    # rebooting
    @_watched("reboot", default=1800)
    def reboot(self, timeout: Optional[float] = 1800, label: Optional[str] = None,
               kernel_args: Optional[str] = None, wait: bool = True, fastsync: bool = False,
               reboot_cmd: Optional[str] = None, down_timeout: Optional[float] = None,
               stable_for: float = 3.0) -> None:
        """Reboots and verifies it: the boot id is read first, the reboot is
        issued detached (its own connection dying is success), then the host
        must go down (unreachable, or a new boot id) and come up with a new
        boot id that stays the same for stable_for seconds.  If it stays down
        past its phase timeout and a reset path exists, one hard reset.
        label boots that entry once.  kernel_args are for the next boot only:
        a copy of the entry that boots next (label, else a kernel installed
        to boot next, else the default) with them added is booted once and
        removed once the host is back, so the menu is as it was and a hard
        reset boots without them.  (A host that is not waited for, or does
        not come back, keeps the copy, never the default, until the next
        reboot with kernel_args replaces it.)
        status.log: reboot.start, reboot.verify GOOD or ABORT (with why);
        a reboot recovered by the hard reset is a WARN (the job's exit status
        does not change) and its END is WARN."""
        expected = self._expect_kernel
        once = self._boot_next(label, kernel_args)
        self._reset_in_reboot = False
        record = _JOB.record if _JOB is not None else (lambda *a, **k: None)
        t0 = time.monotonic()
        deadline = t0 + timeout
        record("START", None, "reboot", f"{self.hostname}: reboot")
        try:
            old = self.get_boot_id(timeout=60)
            command = reboot_cmd or ("reboot" if fastsync else "sync; reboot")
            record("INFO", None, "reboot.start", f"{self.hostname}: {command} (boot id {old})")
            self._issue_reboot(command)
            if not wait:
                record("END GOOD", None, "reboot", f"{self.hostname}: not waiting")
                return
            down_for = down_timeout or min(300.0, max(10.0, timeout / 4))
            self._reboot_wait(old, deadline, down_for, record, stable_for=stable_for)
        except BaseException as e:
            record("ABORT", None, "reboot.verify", f"{self.hostname}: {e}")
            record("END ABORT", None, "reboot")
            raise
        record("GOOD", None, "reboot.verify",
               f"{self.hostname}: rebooted in {time.monotonic() - t0:.1f} s")
        end = "END WARN" if self._reset_in_reboot else "END GOOD"
        if once:
            try:
                self.bootloader.remove_kernel(once)
            except AutoservBootloaderError as e:     # the copy is never the default
                record("WARN", None, "reboot", f"{self.hostname}: {e}")
                end = "END WARN"
        if expected:
            self._expect_kernel = None
            self._verify_kernel(expected, record)
        record(end, None, "reboot")

    def _verify_kernel(self, expected, record):
        """After a reboot that should have started an installed kernel: the
        running release must be the installed one; else FAIL with the reason
        (the host is up, on its default kernel) and AutoservKernelBootError."""
        running = self.run("uname -r", timeout=60).stdout.strip()
        if running == expected["version"]:
            record("GOOD", None, "boot.kernel", f"{self.hostname}: running {running}")
            return
        why = (f"kernel {expected['version']} ({expected['title']}) did not come up"
               + ("; one hard reset brought the host back" if self._reset_in_reboot else "")
               + f"; running {running}")
        record("FAIL", None, "boot.kernel", f"{self.hostname}: {why}")
        record("END FAIL", None, "reboot")
        raise AutoservKernelBootError(self.hostname, why)

    def _issue_reboot(self, command):
        # Detached from the session (no nohup: busybox builds may lack it),
        # a second after it, so the session's exit status leaves first: a
        # `halt -f` at once could stop the target before that went, and the
        # session then ended only with the link, in no way ssh names.
        detached = ("sh -c " + shlex.quote("trap '' HUP; sleep 1; " + command)
                    + " </dev/null >/dev/null 2>&1 &")
        try:
            self.run(detached, timeout=30, connect_timeout=10)
        except (AutoservSSHConnectionLost, AutoservTimeoutError) as e:
            LOG.write(f"the reboot command's connection ended ({e}); that is success",
                      self.hostname)
        except AutoservSSHError as e:
            if type(e) is not AutoservSSHError:       # refused, denied, host key: not sent
                raise
            # ssh ended with 255 and no word (a halt faster than the session's
            # exit status): whether it went down is the boot id's to say.
            LOG.write(f"the reboot command's session ended without a status ({e}); "
                      "waiting for the host to go down", self.hostname)
        self._drop_connection()

    def _reboot_wait(self, old, deadline, down_for, record, reset_done=False, stable_for=3.0):
        went_down = self.wait_down(timeout=min(down_for, max(1, deadline - time.monotonic())),
                                   old_boot_id=old)
        if not went_down:
            raise AutoservRebootError(self.hostname, "did not go down",
                                      f"still up with boot id {old} after {down_for:.0f} s")
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.wait_up(timeout=left):
                if reset_done or not self.can_hardreset():
                    raise AutoservRebootError(self.hostname, "did not return",
                                              "no answer within the reboot timeout"
                                              + ("" if reset_done else "; no reset path"))
                # Not the outcome yet: an ABORT here would outlive a reset
                # that recovers the host (the except in reboot() says ABORT
                # when it does not).
                record("WARN", None, "reboot.verify",
                       f"{self.hostname}: did not return; trying one hard reset")
                self.hardreset(wait=False)
                self._drop_connection()
                reset_done = True
                self._reset_in_reboot = True
                # A machine's POST after a reset can take minutes (servers behind
                # a BMC; a TCG guest under load): bounded, but not stingy.
                deadline = time.monotonic() + max(POST_RESET_WAIT, down_for)
                continue
            new = self._stable_boot_id(old, deadline, stable_for)
            if new is not None:
                if reset_done:
                    record("WARN", None, "reboot.verify",
                           f"{self.hostname}: back after a hard reset")
                return new

    def _stable_boot_id(self, old, deadline, stable_for=3.0):
        """The boot id once it differs from old and stays the same while the
        host stays up for stable_for seconds (a machine that reboots twice
        on its own is not done after the first); None if it went down again."""
        try:
            first = self.get_boot_id(timeout=30, connect_timeout=10)
        except AutoservError:
            return None
        if first == old:
            return None
        LOG.write(f"up with boot id {first}; checking that it stays for {stable_for} s",
                  self.hostname)
        time.sleep(stable_for)
        try:
            again = self.get_boot_id(timeout=30, connect_timeout=10)
        except AutoservError:
            LOG.write(f"up with boot id {first}, then down again within {stable_for} s: "
                      "not stable yet", self.hostname)
            self._drop_connection()
            return None
        if again != first:
            LOG.write(f"up with boot id {first}, then {again} within {stable_for} s: "
                      "not stable yet", self.hostname)
            return None
        LOG.write(f"up with boot id {first}, stable for {stable_for} s", self.hostname)
        return first


def create_host(spec: str, **kwargs: Any) -> "Host":
    """Builds a host from ``[user@]host[:port]``; ``localhost`` with no user or
    port is the LocalHost; a site file may register other classes by name
    (``kind=``)."""
    kind = kwargs.pop("kind", None)
    if kind:
        cls = _REGISTRY["host"].get(kind)
        if cls is None:
            raise AutoservUsageError(f"no host class registered as {kind!r}")
        return cls(spec, **kwargs)
    if spec in ("localhost", "local") and not kwargs:
        return LocalHost()
    return SSHHost(spec, **kwargs)


# Remote programs (they run on the target) #####################################

# What autoserv sends to a target (or a hypervisor host) and runs there:
# the placement program for transfers, the persistent agent, the wrapper
# every command runs under, the QMP client.  Each sits under the comment that
# states its protocol.  Shell programs are written readable here and joined
# to one line at import (_sh_one_line): a login shell gets them as one word.
# Python ones are indented here (so outline tools do not list their
# functions as autoserv's) and dedented at import.

# $1 dest, $2 mode (auto|into|contents), $3 delete, $4 step
# (tar|cat|prep|install|check: check only refuses a symlinked dest),
# $5 staging: the dir for install, the name's random part for prep (chosen by
# the client, so a reply lost to a dead link still leaves it a name to clean
# up); $6 keep perms; for tar, $7 the name of the archive's last member, an
# empty file the client adds as an end marker: tar takes EOF at a member
# boundary for the end of the archive, and a dropped link gives just that;
# for cat, $7 the file's name, $8 its mode (octal), $9 its mtime (UTC, touch
# -t), $10 its size.  A stream that ended early is never placed.  Exits 1
# with a message on failure.  The programs it hands to find -exec are written
# out below it and put in at import, each in place of its '@NAME@'.
_PLACE_SOURCE = r"""
d=$1 mode=$2 del=$3 step=$4 t=$5 keep=$6
# "dest/" means "into dest"; strip the slash (but keep "/" itself).
case $d in */) [ "$mode" = auto ] && mode=into ;; esac
case $d in /) ;; *) d=${d%/} ;; esac
[ -n "$d" ] || d=.
# A symlink at dest that leads to a dir (planted in a shared dir, or old) is
# refused, never written through: the caller named this path, not the link's
# target.  A link that dest replaces as a file is renamed over, as rsync does.
if [ -L "$d" ] && { [ "$mode" != auto ] || [ -d "$d" ]; }; then
  echo "autoserv: refusing to write through the symlink $d -> $(readlink -- "$d")" >&2
  exit 1
fi
[ "$step" = check ] && exit 0
if [ "$mode" = auto ]; then
  if [ -d "$d" ]; then mode=into; else mode=as; fi
fi
# p: where the staging dir goes.  fresh: dest does not exist yet, so the
# staging dir itself becomes dest in one rename.
fresh=
if [ "$mode" = as ]; then
  p=$(dirname -- "$d")
elif [ -e "$d" ] || [ -L "$d" ]; then
  p=$d
else
  p=$(dirname -- "$d")
  mkdir -p -- "$p" || exit 1
  fresh=1
fi
# prep (scp): make the staging dir under the client's chosen name, say where.
if [ "$step" = prep ]; then
  t=$p/.autoserv-$t
  (umask 077; mkdir -- "$t") || exit 1
  printf "%s\n" "$t"
  exit 0
fi
if [ "$step" != install ]; then
  t=$(umask 077; mktemp -d "$p/.autoserv-XXXXXX") || exit 1
fi
trap 'rm -rf -- "$t"' EXIT
trap "exit 1" HUP INT TERM PIPE
# Receive: a tar stream, or one file whose size the client announced.
if [ "$step" = tar ]; then
  if [ "$keep" = 1 ]; then
    tar -xopf - -C "$t" || exit 1
  else
    tar -xof - -C "$t" || exit 1
  fi
  if [ ! -f "$t/$7" ] || [ -L "$t/$7" ]; then
    echo "autoserv: the tar stream ended early (no end marker): nothing placed" >&2
    exit 1
  fi
  rm -f -- "$t/$7" || exit 1
fi
if [ "$step" = cat ]; then
  cat >"$t/$7" || exit 1
  n=$(wc -c <"$t/$7") || exit 1
  if [ "$n" -lt "${10}" ]; then
    echo "autoserv: $7 arrived short ($n of ${10} bytes): the stream ended early" >&2
    exit 1
  fi
  chmod "$8" "$t/$7" && TZ=UTC0 touch -t "$9" "$t/$7" || exit 1
fi
# A new dest: the staging dir, with the mode mkdir would have given it.
if [ -n "$fresh" ]; then
  m=$(umask)
  chmod "$(printf %o $(( 0777 & ~0$m )))" "$t" && mv -- "$t" "$d" && exit 0
  exit 1
fi
cd "$t" || exit 1
# Check before changing anything: without delete, a file where the new tree
# has a dir, or a dir where it has a file, stops the placement whole.
if [ "$del" != 1 ]; then
  for e in * .[!.]* ..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    if [ "$mode" = as ]; then x=$d; else x=$d/$e; fi
    find "./$e" -exec sh -c '@IN_THE_WAY@' sh "$x" "./$e" {} + || exit 1
  done
fi
# delete (contents mode): remove what dest has and the new tree has not.
# The staging dir lives in dest (its parent may not be ours to write, as
# with /tmp or a home dir) and is never one of the names removed.
if [ "$del" = 1 ] && [ "$mode" = contents ]; then
  for e in "$d"/* "$d"/.[!.]* "$d"/..?*; do
    b=${e##*/}
    [ "$b" = "${t##*/}" ] && continue
    if { [ -e "$e" ] || [ -L "$e" ]; } && ! { [ -e "$b" ] || [ -L "$b" ]; }; then
      rm -rf -- "$e" || exit 1
    fi
  done
fi
# Place each staged entry: a dir onto a dir is merged, anything else renamed.
# A symlink in the way is removed first, never followed (mv onto a link to a
# dir would move into that dir).
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  if [ "$mode" = as ]; then x=$d; else x=$d/$e; fi
  if [ "$del" = 1 ] && { [ -e "$x" ] || [ -L "$x" ]; }; then
    rm -rf -- "$x" || exit 1
  fi
  if [ -d "$e" ] && [ ! -L "$e" ] && [ -d "$x" ] && [ ! -L "$x" ]; then
    (
      cd "$e" &&
      find . -mindepth 1 -type d -exec sh -c '@MAKE_DIRS@' "$x" {} + &&
      find . ! -type d -exec sh -c '@MOVE_FILES@' "$x" {} +
    ) || exit 1
  else
    if [ -d "$x" ] && [ ! -L "$x" ]; then
      echo "autoserv: $x is a directory" >&2
      exit 1
    fi
    if [ -L "$x" ]; then rm -f -- "$x" || exit 1; fi
    mv -f -- "$e" "$x" || exit 1
  fi
done
"""


def _sh_one_line(program):
    """A multi-line sh program as one line, so that any login shell (csh
    too: it cannot take a newline inside quotes) passes it on: comment lines
    and indentation go, and lines are joined with "; " unless one ends in a
    word or operator that continues the statement."""
    lines = [l.strip() for l in program.splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    out = lines[0]
    for line in lines[1:]:
        joins = re.search(r"(\b(then|do|else|in)|[{(|&;])$", out)
        out += (" " if joins else "; ") + line
    return out


# The programs _PLACE_SOURCE hands to find -exec, each run on a batch of
# paths at a time.
#
# IN_THE_WAY, before anything changes: $1 the path the staged entry $2 goes
# to, then the entry's own paths; a path of the new tree that meets a file
# where it has a dir, or a dir where it has a file, stops the placement.
_PLACE_IN_THE_WAY = r"""
x=$1 e=$2
shift 2
for a; do
  y=$x${a#"$e"}
  if [ -d "$a" ] && [ ! -L "$a" ]; then
    if [ -e "$y" ] && [ ! -L "$y" ] && [ ! -d "$y" ]; then
      echo "autoserv: $y: a file is in the way" >&2
      exit 1
    fi
  elif [ -d "$y" ] && [ ! -L "$y" ]; then
    echo "autoserv: $y is a directory" >&2
    exit 1
  fi
done
"""
# MAKE_DIRS, merging a staged dir into dest's ($0): each dir of the new tree
# made there, a symlink in its place removed first (never followed).
_PLACE_MAKE_DIRS = r"""
for a; do
  if [ -L "$0/$a" ]; then
    rm -f -- "$0/$a" || exit 1
  fi
  [ -d "$0/$a" ] || mkdir -- "$0/$a" || exit 1
done
"""
# MOVE_FILES, then: every non-dir moved into $0, over a symlink just as above.
_PLACE_MOVE_FILES = r"""
for a; do
  if [ -L "$0/$a" ]; then
    rm -f -- "$0/$a" || exit 1
  fi
  mv -f -- "$a" "$0/$a" || exit 1
done
"""
_PLACE_FIND_PROGRAMS = {"IN_THE_WAY": _PLACE_IN_THE_WAY, "MAKE_DIRS": _PLACE_MAKE_DIRS,
                        "MOVE_FILES": _PLACE_MOVE_FILES}
_PLACE_SH = _sh_one_line(re.sub(r"@(\w+)@", lambda m: _sh_one_line(_PLACE_FIND_PROGRAMS[m[1]]),
                                _PLACE_SOURCE))


# The persistent agent (SSHHost(persistent=True)), run on the target as
# `env AUTOSERV_RUN_ID=ID python3 -c _AGENT_PY GRACE`.  It listens on a
# socket in a fresh 0700 /tmp/autoserv-* dir, prints that socket's path, and
# serves one command per connection.  Frames are kind (1 byte), length
# (32-bit big-endian), body.  Client frames: R (json: c command, r run id,
# i stdin follows, n its length), I (stdin bytes), i (stdin end), K (kill);
# agent frames H (hello, empty, sent on accept before anything is read),
# S (pgid), O/E (stdout/stderr bytes), X (exit status, 128+N for signal N).
# A channel that ends with no H from a master that is still serving cannot
# have reached the agent's reading of the request, so the client may send it
# again; any other early ending may have started the command and is
# reported, never retried.  Every frame is checked on arrival (kind known,
# length within its bound, in order, body well formed); a peer that breaks
# the protocol loses its connection (and its command) and nothing else.
# Stdin goes to an unlinked file as it comes and the command starts only
# once all of the announced bytes are there.  A connection that closes kills
# its command's process group (TERM, CONT, KILL after GRACE); its own stdin
# closing (the ssh session gone) kills every group, removes the dir and
# exits.  A guardian process forked first, in its own session, kills the
# groups still running if the agent dies any other way.  Python 3.6+,
# standard library only.  Indented here so that it reads as the separate
# program it is; dedented at import.
_AGENT_PY = textwrap.dedent(r'''
    import json, os, selectors, signal, socket, struct, subprocess, sys, tempfile, time
    H = struct.Struct(">cI")
    LIMIT = 1 << 20
    # The longest body of each kind a client may send (autoserv's client
    # sends stdin in 1 MiB pieces; a command line longer than 4 MiB could
    # not be run anyway).
    MAX_BODY = {b"R": 4 << 20, b"I": 1 << 20, b"i": 0, b"K": 0}
    GRACE = float(sys.argv[1])


    class Broken(Exception):
        """A client broke the protocol; it loses its connection."""


    def group(pid, sig):
        try:
            os.killpg(pid, sig)
        except OSError:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


    def guardian(fd):
        """Kills the groups still running when the agent is gone, however it
        went (SIGKILL, the OOM killer): it hears +pgid/-pgid, q to just exit."""
        live, buf = set(), b""
        while True:
            try:
                data = os.read(fd, 4096)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                if line == b"q":
                    os._exit(0)
                if line[:1] == b"+":
                    live.add(int(line[1:]))
                elif line[:1] == b"-":
                    live.discard(int(line[1:]))
        for pg in live:
            group(pg, signal.SIGTERM)
            group(pg, signal.SIGCONT)
        if live:
            time.sleep(GRACE)
            for pg in live:
                group(pg, signal.SIGKILL)
        os._exit(0)


    guard_r, guard_w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(guard_w)
        guardian(guard_r)
    os.close(guard_r)


    def tell(text):
        try:
            os.write(guard_w, text)
        except OSError:
            pass


    sel = selectors.DefaultSelector()
    conns = set()
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *a: shutdown())
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


    class Conn:
        def __init__(self, sock):
            self.sock = sock
            self.rbuf = bytearray()
            self.wbuf = bytearray()
            self.req = None
            self.expect = False        # stdin frames may come (R said so, no i yet)
            self.stdin = None          # the staging file's fd
            self.got = 0               # stdin bytes received so far
            self.failed = None         # why staging failed (the command then does not run)
            self.proc = None
            self.pipes = {}
            self.kill_at = None
            self.gone = False
            self.done = False
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, self)
            conns.add(self)
            self.send(b"H")            # before anything is read: see the client

        def send(self, kind, data=b""):
            if self.gone:
                return
            self.wbuf += H.pack(kind, len(data)) + data
            self.flush()

        def flush(self):
            if self.wbuf and not self.gone:
                try:
                    n = self.sock.send(self.wbuf)
                    del self.wbuf[:n]
                except BlockingIOError:
                    pass
                except OSError:
                    self.lost()
                    return
            self.watch()

        def watch(self):
            if self.gone:
                if self.proc is None:
                    self.close()        # the command of a peer that left has ended
                return
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.wbuf else 0)
            sel.modify(self.sock, ev, self)
            room = len(self.wbuf) < LIMIT
            for fd in list(self.pipes):
                key = sel.get_map().get(fd)
                if room and key is None:
                    sel.register(fd, selectors.EVENT_READ, (self, self.pipes[fd]))
                elif not room and key is not None:
                    sel.unregister(fd)
            if self.done and not self.wbuf:
                self.close()

        def readable(self):
            try:
                data = self.sock.recv(LIMIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.lost()
                return
            self.rbuf += data
            at = 0
            try:
                while len(self.rbuf) - at >= H.size and not self.gone:
                    kind, n = H.unpack_from(self.rbuf, at)
                    # Judged on its header, before any of its body is kept.
                    if n > MAX_BODY.get(kind, -1):
                        raise Broken("frame %r of %d bytes" % (kind, n))
                    if len(self.rbuf) - at < H.size + n:
                        break
                    self.frame(kind, bytes(self.rbuf[at + H.size:at + H.size + n]))
                    at += H.size + n
            except Exception:       # anything a peer's bytes can cause (RecursionError too)
                self.lost()
                return
            del self.rbuf[:at]

        def frame(self, kind, body):
            if kind == b"K":
                self.kill()
            elif self.req is None and kind == b"R":
                req = json.loads(body.decode())
                if not (isinstance(req, dict) and isinstance(req.get("c"), str)
                        and isinstance(req.get("r", ""), str)
                        and isinstance(req.get("n", 0), int)):
                    raise Broken("bad request")
                self.req = req
                if not req.get("i"):
                    self.start()
                    return
                # Staged whole, as the per-command wrapper does (a command
                # that never reads its stdin must not stall anything), in an
                # unlinked file as it comes (memory stays bounded).
                self.expect = True
                try:
                    fd, name = tempfile.mkstemp(dir=top)
                    os.unlink(name)
                    self.stdin = fd
                except OSError as e:
                    self.failed = e
            elif self.expect and kind == b"I":
                self.got += len(body)
                if self.got > self.req.get("n", 0):
                    raise Broken("more stdin than announced")
                try:
                    view = memoryview(body)
                    while view and self.stdin is not None:
                        view = view[os.write(self.stdin, view):]
                except OSError as e:
                    self.failed = e
                    os.close(self.stdin)
                    self.stdin = None
            elif self.expect and kind == b"i":
                if self.got != self.req.get("n", 0):
                    raise Broken("less stdin than announced")
                self.expect = False
                self.start()
            else:
                raise Broken("frame %r out of order" % kind)

        def start(self):
            req = self.req
            env = dict(os.environ, AUTOSERV_RUN_ID=req.get("r") or os.environ.get("AUTOSERV_RUN_ID", ""))
            shell = os.environ.get("SHELL") or "/bin/sh"
            stdin, self.stdin = self.stdin, None
            try:
                if self.failed is not None:
                    raise self.failed
                if stdin is None:
                    stdin = subprocess.DEVNULL
                else:
                    os.lseek(stdin, 0, 0)
                proc = subprocess.Popen([shell, "-c", req["c"]], stdin=stdin,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                        start_new_session=True, cwd=os.path.expanduser("~"))
            except (OSError, ValueError) as e:
                self.send(b"E", ("autoserv agent: cannot start the command: %s\n" % e).encode())
                self.send(b"X", b"125")
                self.done = True
                self.watch()
                return
            finally:
                if stdin not in (None, subprocess.DEVNULL):
                    os.close(stdin)
            self.proc = proc
            self.pipes = {proc.stdout.fileno(): b"O", proc.stderr.fileno(): b"E"}
            for fd in self.pipes:
                os.set_blocking(fd, False)
            tell(b"+%d\n" % proc.pid)
            self.send(b"S", str(proc.pid).encode())
            self.watch()

        def output(self, fd, kind):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.send(kind, data)
                return
            sel.unregister(fd)
            del self.pipes[fd]
            self.reap()

        def reap(self):
            if self.proc is None or self.pipes or self.proc.poll() is None:
                return
            rc = self.proc.returncode
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
            if self.kill_at is not None:
                group(self.proc.pid, signal.SIGKILL)
            tell(b"-%d\n" % self.proc.pid)
            self.send(b"X", str(rc if rc >= 0 else 128 - rc).encode())
            self.proc = None
            self.done = True
            self.watch()

        def kill(self):
            if self.proc is not None and self.kill_at is None:
                group(self.proc.pid, signal.SIGTERM)
                group(self.proc.pid, signal.SIGCONT)
                self.kill_at = time.monotonic() + GRACE

        def lost(self):
            if self.gone:
                return
            self.gone = True
            self.wbuf = bytearray()
            self.rbuf = bytearray()
            if self.stdin is not None:
                os.close(self.stdin)
                self.stdin = None
            try:
                sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.kill()
            for fd in list(self.pipes):
                if sel.get_map().get(fd) is None:
                    sel.register(fd, selectors.EVENT_READ, (self, self.pipes[fd]))
            if self.proc is None:
                self.close()

        def close(self):
            conns.discard(self)
            try:
                sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()


    def shutdown():
        for c in list(conns):
            c.kill()
        end = time.monotonic() + GRACE
        while time.monotonic() < end and any(c.proc is not None and c.proc.poll() is None
                                             for c in conns):
            time.sleep(0.05)
        for c in list(conns):
            if c.proc is not None:
                group(c.proc.pid, signal.SIGKILL)
        tell(b"q\n")
        try:
            os.unlink(path)
            os.rmdir(top)
        except OSError:
            pass
        os._exit(0)


    top = tempfile.mkdtemp(prefix="autoserv-", dir="/tmp")
    path = os.path.join(top, "agent")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "listen")
    sel.register(0, selectors.EVENT_READ, "stdin")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    try:                        # autoserv may have left before it read this
        os.write(1, (path + "\n").encode())
    except OSError:
        shutdown()
    while True:
        now = time.monotonic()
        waits = [c.kill_at - now for c in conns if c.kill_at is not None and c.proc is not None]
        for key, ev in sel.select(max(0.0, min(waits)) if waits else None):
            what = key.data
            # An event of a file an earlier one of this batch unregistered
            # (a pipe paused while the client's buffer is full) is stale:
            # skipped, it comes again once the file is watched again.
            # Handled, a pipe's EOF unregistered it twice: a KeyError that
            # killed the agent mid-command.
            now_key = sel.get_map().get(key.fd)
            if now_key is None or now_key.data is not what:
                continue
            if what == "listen":
                try:
                    Conn(listener.accept()[0])
                except OSError:
                    pass
            elif what == "stdin":
                try:
                    if not os.read(0, 4096):
                        shutdown()
                except OSError:
                    shutdown()
            elif what == "wake":
                try:
                    os.read(wake_r, 4096)
                except OSError:
                    pass
                for c in list(conns):
                    c.reap()
            elif isinstance(what, Conn):
                if ev & selectors.EVENT_WRITE:
                    what.flush()
                if ev & selectors.EVENT_READ and not what.gone:
                    what.readable()
            else:
                what[0].output(key.fd, what[1])
        now = time.monotonic()
        for c in list(conns):
            if c.kill_at is not None and c.proc is not None and now >= c.kill_at:
                group(c.proc.pid, signal.SIGKILL)
                c.kill_at = now + 3600
''')


# The agent's program goes over its session's stdin, not its command line:
# dropbear ends the whole connection (the master with it) on an exec request
# longer than its MAX_CMD_LEN, 9000 bytes, and the program is longer.  The
# command line holds a loader that runs it only once every byte of it came
# (a link that drops part-way runs nothing); the rest of stdin stays the
# agent's, whose end tells it that autoserv has gone.
_AGENT_CODE = _AGENT_PY.encode()
_AGENT_BOOT = textwrap.dedent("""\
    import os, sys
    n, b = int(sys.argv.pop(1)), b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            sys.exit(3)
        b += c
    exec(compile(b, "autoserv-agent", "exec"))
    """)


# The remote wrapper: ssh runs `exec sh -c WRAPPER autoserv TOKEN N COMMAND
# RUN_ID` under the login shell; POSIX sh (dash, bash, busybox ash).
#  TOKEN    fresh random hex per command: marks its markers and ends its stdin.
#  N        stdin's length.  When N > 0 autoserv sends N bytes then TOKEN (the
#           trailer); all N + len(TOKEN) bytes, trailer intact, are staged in an
#           unlinked temp file, or nothing runs (status 125): a link cut
#           mid-stdin never runs the command on part of its input.
#  stdin    then stays open for the command's whole life; its EOF (autoserv
#           closes it on timeout, or the link drops) makes a watcher job tell
#           the wrapper (USR1) to kill the command's process group: TERM,
#           CONT, then KILL after 2 s.
#  stderr   markers, taken out by _MarkerFilter: "\036TOKEN s PGID" once the
#           command runs (own session, login shell), "\036TOKEN e STATUS" once
#           it ended, so a remote 'exit 255' is not a transport failure.
# SIGPIPE is ignored once the command runs (the command itself keeps the
# default): a marker written to a dead channel fails quietly instead of
# killing the wrapper before its kill loop.  The kill comes first, the report
# after.  The loop looks at the USR1 flag before it waits, so a USR1 that came
# early (the link already gone) is not lost.
_WRAPPER_SH = r"""
    exec 3<&0 5</dev/null
    t=$1 n=$2 c=$3 AUTOSERV_RUN_ID=$4
    export AUTOSERV_RUN_ID
    k=
    trap 'k=1' USR1
    s=
    command -v setsid >/dev/null 2>&1 && s=setsid
    if [ "$n" -gt 0 ]; then
        # N bytes and the trailer, exactly, then the trailer cut off again.
        m=$((n + ${#t}))
        i=$(umask 077; mktemp /tmp/autoserv-in-XXXXXX) &&
            head -c "$m" <&3 >"$i" &&
            [ $(wc -c <"$i") -eq "$m" ] &&
            [ "$(tail -c ${#t} "$i")" = "$t" ] &&
            dd if=/dev/null of="$i" bs=1 seek="$n" 2>/dev/null &&
            exec 5<"$i"
        r=$?
        rm -f ${i:+"$i"}
        if [ $r != 0 ]; then
            echo 'autoserv: stdin did not arrive whole on the target; nothing ran' >&2
            printf '\036%s e 125\n' "$t" >&2
            exit 125
        fi
    fi
    $s "${SHELL:-/bin/sh}" -c "$c" <&5 3<&- 5<&- &
    p=$!
    exec 5<&-
    trap '' PIPE
    { while read -r _; do :; done; kill -USR1 $$; } <&3 >/dev/null 2>&1 &
    w=$!
    exec 3<&-
    printf '\036%s s %s\n' "$t" "$p" >&2
    r=
    while :; do
        # wait returns early on USR1 (k set): kill the group, then wait again.
        [ -z "$k" ] && { wait "$p"; r=$?; }
        [ -z "$k" ] && break
        k=
        kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null
        kill -CONT -$p 2>/dev/null
        (sleep 2; kill -KILL -$p || kill -KILL $p) >/dev/null 2>&1 &
    done
    kill $w 2>/dev/null
    printf '\036%s e %s\n' "$t" "$r" >&2
    exit "$r"
"""
_WRAPPER = _sh_one_line(_WRAPPER_SH)


# QMP client run on the hypervisor (python3): argv = socket, JSON commands.
# Indented so that its functions are not read as autoserv's; dedented at import.
_QMP_PY = textwrap.dedent(r'''
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(float(sys.argv[2]))
    s.connect(sys.argv[1])
    f = s.makefile("rwb")
    def answer():
        while True:
            line = f.readline()
            if not line:
                raise SystemExit("qmp: connection closed")
            msg = json.loads(line)
            if "return" in msg or "error" in msg:
                return msg
    json.loads(f.readline())
    for n, cmd in enumerate(['{"execute": "qmp_capabilities"}'] + sys.argv[3:]):
        f.write(cmd.encode() + b"\n"); f.flush()
        msg = answer()
        if n:
            print(json.dumps(msg)); sys.stdout.flush()
    ''')


# SSH connections: settings, the job's control dir, its masters ###############

# Settings (set_ssh_defaults); the job's control dir, shared by all its
# processes; who owns the masters (PIDs registered beside their sockets) and
# how they end: with the job, or by the job's watchdog when the job process
# dies without running its cleanup.

def set_ssh_defaults(**kwargs: Any) -> None:
    """Defaults for every SSHHost made after this (the CLI sets them)."""
    for key, value in kwargs.items():
        if key not in _SSH_DEFAULTS:
            raise AutoservUsageError(f"unknown ssh default {key!r}")
        _SSH_DEFAULTS[key] = _persistent_mode(value) if key == "persistent" else value


_RESOLVE_TIMEOUT = 10.0     # ssh -G: it reads config files only


def _persistent_mode(value):
    """persistent=: "auto" (the default: commands go through the host's
    agent once it is up, started in the background by its second command),
    True (the first command starts the agent and waits for it) or False
    (every command its own ssh session)."""
    if value == "auto":
        return value
    if isinstance(value, (bool, int)) or value is None:
        return bool(value)
    raise AutoservUsageError(f"persistent={value!r}: use True, False or 'auto'")


def _ctrl_dir():
    """The job's private 0700 dir with a short path for control sockets,
    their registry and per-job known_hosts files (a socket path has about
    90 usable bytes).  Made once by the job process (or a library script's
    main process), which owns it: parallel() makes it before forking, so
    every task shares it and finds the masters the others started."""
    if _CTRL["dir"] is None or not os.path.isdir(_CTRL["dir"]):
        base = tempfile.gettempdir()
        if len(base) > 40 or not os.access(base, os.W_OK):
            base = "/tmp"
        top = tempfile.mkdtemp(prefix="as-", dir=base)
        _write_atomic(os.path.join(top, "owner"), _owner_stamp())
        _CTRL["dir"], _CTRL["pid"] = top, os.getpid()
        _sweep_stale_ctrl_dirs(base, top)
    return _CTRL["dir"]


# A job SIGKILLed before its first master (which starts its watchdog) leaves
# its control dir behind, as does one whose watchdog could not start.  Each
# dir names its owner (PID, start time, pid namespace) in top/owner, and the
# next job of the same user removes the dirs of owners that are gone and
# left no watchdog at work, ending any master still registered there first.
# Only dirs with an owner file, of this user, whose owner is in this pid
# namespace (a container sharing /tmp cannot see ours), are touched.
def _owner_stamp(pid=None):
    pid = pid or os.getpid()
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = "-"
    return f"{pid} {_proc_start(pid)} {ns}\n"


def _proc_start(pid):
    """pid's start time (/proc/pid/stat field 22), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _sweep_stale_ctrl_dirs(base, keep):
    try:
        names = [n for n in os.listdir(base) if n.startswith("as-")]
    except OSError:
        return
    here = _owner_stamp().split()[2]
    for name in names:
        top = os.path.join(base, name)
        try:
            if top == keep or os.path.islink(top) or os.stat(top).st_uid != os.geteuid():
                continue
            with open(os.path.join(top, "owner")) as f:
                pid, start, ns = f.read().split()
            if ns != here or str(_proc_start(int(pid))) == start:
                continue            # another namespace's, or its owner runs
        except (OSError, ValueError):
            continue
        if _registered_pid(os.path.join(top, "watchdog"), top) is not None:
            continue                # its watchdog is at it
        _end_dir_masters(top)
        shutil.rmtree(top, ignore_errors=True)


def _remove_ctrl_dir():
    """In the process that owns the control dir: ends every master any
    process of the job started (by the PIDs they registered) and the
    watchdog, and removes the dir.  Elsewhere (a task) nothing: the
    masters serve the rest of the job."""
    if _CTRL["dir"] and _CTRL["pid"] == os.getpid():
        top = _CTRL["dir"]
        dog = _registered_pid(os.path.join(top, "watchdog"), top)
        _end_dir_masters(top)
        if dog is not None:     # it ignores TERM (see _WATCHDOG_PY)
            try:
                os.kill(dog, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(top, ignore_errors=True)
        _CTRL["dir"] = None


def _end_dir_masters(top):
    """Closes top's gate (no master starts there any more), then ends every
    master registered there."""
    _close_gate(top)
    _end_registered_masters(top)


# A master is registered the moment it exists, and none starts once the
# job's end has begun.  Starting one (ssh's exec included) and writing its
# PID beside its socket happen under a shared flock on top/gate; whoever
# ends the job's masters (the owner, or its watchdog) first takes that lock
# exclusively and leaves top/closing, so every master is either registered
# before the sweep reads the registry or never started.  (A task stopped in
# its cleanup restarts a master to end its remote commands; registered only
# once its socket showed, one KILLed while it waited for it -- Slurm's
# KillWait, or parallel()'s grace -- left the master unknown to both.)
_GATE_WAIT = 5.0


def _open_gate(top):
    """The gate's lock held shared (a bounded wait), or None when the job's
    end has begun: then no master may start in top."""
    fd = os.open(os.path.join(top, "gate"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if _flock_within(fd, fcntl.LOCK_SH, _GATE_WAIT) and \
            not os.path.exists(os.path.join(top, "closing")):
        return fd
    os.close(fd)
    return None


def _close_gate(top):
    """Marks top closing once no master is being started there (or after
    _GATE_WAIT: a starter that hangs holding the lock cannot stop the end)."""
    try:
        fd = os.open(os.path.join(top, "gate"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        _flock_within(fd, fcntl.LOCK_EX, _GATE_WAIT)
        with open(os.path.join(top, "closing"), "w"):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def _flock_within(fd, kind, limit):
    """flock(fd, kind) within limit seconds; False if it was not had."""
    end = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)


# The job's masters must end with the process that owns them however it ends,
# SIGKILL included, when none of its Python code runs.  Why a watchdog and not
# prctl(PR_SET_PDEATHSIG) on each master: the death signal follows the
# *thread* that forked the master, and a master must outlive the parallel()
# task that started it (the point of job-wide connections), so it would need
# re-parenting to the job process first.  Pipes held by the job are no good
# either: every forked task inherits them.  So the job has one small process
# (its own session: a Ctrl-C does not reach it) that waits for the owner's
# death (a pidfd; without one, kill(pid, 0) every 0.5 s) and then does
# what the owner's cleanup would have: TERM, then KILL, every registered
# master, and removes the control dir.  It starts with the job's first master
# (a job that never uses ssh has none), started by whichever process starts
# that master, and registers itself as top/watchdog.  On a normal end the
# owner does the sweep itself and then KILLs the watchdog; one whose control
# dir is gone leaves on its own.
#
# A batch system ends a job by signalling its whole process tree: Slurm's
# proctrack/linuxproc sends TERM to every descendant of the step, then KILL
# after KillWait.  A master whose task has ended is no descendant any more
# (re-parented), so it escapes both; if the owner is KILLed before its own
# sweep ends, only the watchdog is left to end it.  So the watchdog leaves
# the tree too (it forks, and the middle process exits at once) and ignores
# TERM, INT and HUP; a kill of a whole cgroup (proctrack/cgroup) takes the
# masters with it anyway.
_WATCHDOG_PY = textwrap.dedent(r'''
    import os, select, shutil, signal, sys, time
    top, owner = sys.argv[1], int(sys.argv[2])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    child = os.fork()
    if child:                   # the middle process: register who watches, and go
        try:
            tmp = os.path.join(top, "watchdog.pid.%d" % os.getpid())
            with open(tmp, "w") as f:
                f.write("%d\n" % child)
            os.rename(tmp, os.path.join(top, "watchdog.pid"))
        except OSError:         # the dir is gone: the job ended, and so does the watcher
            os._exit(1)
        os._exit(0)
    # Wait for the owner to die (or its dir to go: it ended normally).
    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):
        fd = None
    while os.path.isdir(top):
        if fd is not None:
            if select.select([fd], [], [], 5.0)[0]:
                break
        else:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            except OSError:
                pass
            time.sleep(0.5)
    if not os.path.isdir(top):
        sys.exit(0)
    # Close the gate (see _close_gate), then end the dir's masters.
    import fcntl
    try:
        gate = os.open(os.path.join(top, "gate"), os.O_WRONLY | os.O_CREAT, 0o600)
        end = time.monotonic() + 5.0
        while True:
            try:
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    break
                time.sleep(0.005)
        open(os.path.join(top, "closing"), "w").close()
        os.close(gate)
    except OSError:
        pass
    left = []
    # Then every ssh process of the dir, by its command line or its title
    # (its registered masters among them, a first contact's master before
    # its first session ended, any session's ssh), twice: a first contact
    # ended by the first pass may have just left its master.
    for sweep in (1, 2):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    cmdline = f.read()
                if cmdline.startswith(("ssh: " + top + "/").encode()) or any(
                        a.startswith(("ControlPath=" + top + "/").encode())
                        for a in cmdline.split(b"\0")):
                    os.kill(int(name), signal.SIGTERM)
                    if int(name) not in left:
                        left.append(int(name))
            except (OSError, ValueError):
                pass
        if sweep == 1:
            time.sleep(0.1)
    def running(pid):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except (OSError, IndexError):
            return False
    end = time.monotonic() + 2.0
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = [p for p in left if running(p)]
        for pid in left:        # again: see _end_processes
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(top, ignore_errors=True)
''')


def _ensure_watchdog(top):
    """Starts the job's watchdog over control dir top (see _WATCHDOG_PY)
    unless a process of the job already did (top/watchdog.started, made
    with O_EXCL, says so); any process of the job may, once it is about to
    start a master.  Nothing waits for it: it registers itself
    (top/watchdog.pid), and the process that started it reaps its starter
    later (_reap_watchdog_starts).  Its owner is the dir's owner, wherever
    it is started."""
    _reap_watchdog_starts()
    try:
        os.close(os.open(os.path.join(top, "watchdog.started"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return
    try:
        proc = _popen([sys.executable or "python3", "-I", "-S", "-c", _WATCHDOG_PY,
                       top, str(_CTRL["pid"])], stdin=DEVNULL, stdout=DEVNULL,
                      stderr=DEVNULL, preexec_fn=_default_stop_signals)
    except OSError as e:
        LOG.write(f"no watchdog for the job's ssh masters: {e}")
        return
    _WATCHDOG_STARTS.append((os.getpid(), proc))


def _reap_watchdog_starts(wait=0.0):
    """Reaps the watchdog starters this process started (each exits as soon
    as its watcher is registered); with wait, waits that long for each."""
    for entry in list(_WATCHDOG_STARTS):
        pid, proc = entry
        if pid != os.getpid():          # the parent's, copied into a task
            _WATCHDOG_STARTS.remove(entry)
            continue
        try:
            rc = proc.wait(wait) if wait else proc.poll()
        except _subprocess().TimeoutExpired:
            continue
        if rc is None:
            continue
        _WATCHDOG_STARTS.remove(entry)
        if rc != 0:
            LOG.write(f"no watchdog for the job's ssh masters: its start ended with status {rc}")


_WATCHDOG_STARTS = []       # (starting pid, Popen) of watchdog starts not yet reaped


def _registered_pid(path, word):
    """The PID registered in path.pid, if that process still runs and its
    command line holds `word` (a master: its ControlPath=...; the watchdog:
    its dir), so that a reused PID is never taken for it; else None."""
    try:
        with open(path + ".pid") as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    if not _pid_running(pid) or word.encode() + b"\0" not in _cmdline(pid):
        return None
    return pid


def _registered_master(path):
    """The PID of the master registered for control path `path`, or None:
    one started on its own (its command line holds ControlPath=path) or
    left by a first contact (titled "ssh: path [mux]")."""
    return (_registered_pid(path, f"ControlPath={path}")
            or _registered_pid(path, f"ssh: {path} [mux]"))


def _dir_ssh_processes(top):
    """PIDs of the running ssh processes of control dir top, registered or
    not: masters started on their own and every session's ssh (their command
    lines hold ControlPath=top/...), first contacts' masters ("ssh: top/...
    [mux]").  A first contact's master is registered only after its first
    session; a task ended in between leaves it to this."""
    marks = (f"ControlPath={top}/".encode(), f"ssh: {top}/".encode())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        cmdline = _cmdline(name)
        if cmdline.startswith(marks[1]) or any(
                arg.startswith(marks[0]) for arg in cmdline.split(b"\0")):
            if _pid_running(int(name)):
                found.append(int(name))
    return found


def _cmdline(pid):
    """pid's command line as /proc has it (b"" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _mux_master_pid(path, timeout=2.0):
    """The PID the master at control path `path` gives for itself (the mux
    protocol's alive check, as `ssh -O check` asks it), or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)

        def message():
            data = b""
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                piece = s.recv(4096)
                if not piece:
                    raise OSError("the master hung up")
                data += piece
                if len(data) > 1 << 16:
                    raise OSError("the master's answer is too long")
            return data[4:]
        if message()[:4] != b"\x00\x00\x00\x01":             # MUX_MSG_HELLO
            return None
        for body in (struct.pack(">II", 1, 4),                   # our hello, version 4
                     struct.pack(">II", 0x10000004, 1)):          # MUX_C_ALIVE_CHECK, id 1
            s.sendall(struct.pack(">I", len(body)) + body)
        kind, _, pid = struct.unpack(">III", message()[:12])
        return pid if kind == 0x80000005 else None               # MUX_S_ALIVE
    except (OSError, struct.error):
        return None
    finally:
        s.close()


def _end_processes(pids, grace=2.0):
    """TERM every pid at once (ssh closes its connection and removes its
    socket, as `-O exit` would), then KILL what is left after grace: one
    grace for all of them, not one each.

    The TERM is sent again every 50 ms, so that one a busy master missed
    is heard as soon as it can be (cheap: a master that hears none is
    KILLed after the grace, which is what a job used to wait 2 s for)."""
    left = list(pids)
    end = time.monotonic() + grace
    next_term = 0.0
    nap = 0.001             # a master ends within a few ms of its TERM: look soon, then less often
    while True:
        if time.monotonic() >= next_term:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            next_term = time.monotonic() + 0.05
        for pid in list(left):
            try:                 # our child (we or a task started it): reap it
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    left.remove(pid)
                    continue
            except ChildProcessError:
                pass
            if not _pid_running(pid):
                left.remove(pid)
        if not left or time.monotonic() >= end:
            break
        time.sleep(nap)
        nap = min(0.01, nap * 2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# While _close_all_hosts() runs: the masters its hosts' connections would
# end on close (_SSHLink._master_entry()), ended there all at once: one
# TERM each and one wait for them all.  One at a time, the masters of 16
# hosts the job's own process had used took 66-115 ms to end; at once,
# 16-22 ms.
_ENDING = None


def _end_masters(masters):
    """Ends masters (_SSHLink._master_entry()'s) together, then removes
    their files."""
    _end_processes([pid for pids, _, _ in masters for pid in pids])
    for _, owned, paths in masters:
        if owned is not None:
            _terminate(owned, 0, group=False, kill_wait=5.0)    # reaped (KILLed if need be)
        for path in paths:
            _remove_quietly(path)


def _pid_running(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class _PidHandle:
    """A process known by its PID only (a master another process of the job
    started): pid, poll() (None while it runs) and wait(timeout), as a
    Popen has them."""

    def __init__(self, pid):
        self.pid = pid

    def __repr__(self):
        return f"<_PidHandle {self.pid}>"

    def poll(self):
        try:                        # our child after all (a task's, re-parented)
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return 0
        except ChildProcessError:
            pass
        return None if _pid_running(self.pid) else 0

    def wait(self, timeout=None):
        end = _monotonic_deadline(timeout)
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise _subprocess().TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.01)
        return 0


def _end_registered_masters(top):
    """Ends every master of control dir top, registered or not, and every
    session's ssh there (_dir_ssh_processes: a registered master is one of
    them), twice: a first contact ended in the first sweep may have left its
    master a moment before; then removes the registry."""
    try:
        entries = [n for n in os.listdir(top) if n.startswith("m-")]
    except OSError:
        return
    # (No connection was ever made here, nor begun: no lock, socket or PID
    # file.  A parallel() of local work makes and removes a dir each call.)
    for sweep in ((1, 2) if entries else ()):
        _end_processes(_dir_ssh_processes(top))
    for name in entries:
        if name.endswith(".pid"):
            _remove_quietly(os.path.join(top, name))


# SSH transport: options, the master, errors ###################################

# ssh's error lines, then the collaborator SSHHost composes for its
# connection: _SSHLink (options, ControlMaster, first contact, error
# classification, a command as its own session).  The agent's client is the
# next section; the programs they start on the target are under "Remote
# programs"; the third collaborator, _SSHTransfer, under "File transfer over
# SSH".

def _peer_pid(sock):
    """The pid of the process at the other end of a connected unix socket."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               struct.calcsize("3i")))[0]


# What a session's ssh says when its master is not there to carry it: with a
# ControlPath, OpenSSH falls back to a direct connection of its own when the
# master cannot be reached, or when it dies during the session request (after
# the command may have gone out).  Sessions of autoserv never fall back: this
# ProxyCommand, used only by such a fallback, writes the line and ends.  Seen
# without any mux_client error, it proves the master was never reached, so
# nothing was sent and the command may go again over a new master.
_NO_MASTER = "autoserv: no ssh master to carry the session"
_MUX_REACHED = re.compile(r"mux_client|master")

_SSH_ERRORS = [
    (re.compile(re.escape(_NO_MASTER)), "AutoservSSHConnectionLost", "the ssh master went away"),
    (re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed"
                r"|No \S+ host key is known|host key for .* has changed"),
     "AutoservSSHHostKeyError", "host key verification failed"),
    (re.compile(r"Could not resolve hostname|Name or service not known"
                r"|Temporary failure in name resolution|No address associated"),
     "AutoservSSHUnknownHost", "host name does not resolve"),
    (re.compile(r"Connection refused"), "AutoservSSHConnectionRefused",
     "connection refused"),
    (re.compile(r"Permission denied|Too many authentication failures"
                r"|Authentication failed"),
     "AutoservSSHPermissionDenied", "authentication failed"),
    (re.compile(r"timed out|No route to host|Network is unreachable"),
     "AutoservSSHConnectTimeout", "connection timed out"),
    (re.compile(r"not responding|Broken pipe|Connection reset|closed by remote host"
                r"|Connection closed|read header failed|client_loop|mux_client"),
     "AutoservSSHConnectionLost", "connection lost"),
]


def _never_reached_master(stderr_text):
    """True when ssh's stderr shows a session that never reached its master
    (the fallback refused, and no word from the mux client)."""
    lines = stderr_text.splitlines()
    return (any(_NO_MASTER in line for line in lines)
            and not any(_MUX_REACHED.search(line) for line in lines if _NO_MASTER not in line))


_BEFORE_LOGIN = re.compile(r"kex_exchange_identification|banner exchange"
                           r"|Connection (closed|reset) by \S+ port \d+")


def _before_login(error, stderr_text, host_key_policy):
    """True when a first contact's ssh failed before it logged in, in a way
    the classic master start retries (a connection closed or reset before
    the handshake ended; an ephemeral host's new key).  Its session never
    began: no word from a mux client, no socket race."""
    if _MUX_REACHED.search(stderr_text) or "disabling multiplexing" in stderr_text:
        return False
    if isinstance(error, AutoservSSHHostKeyError):
        return host_key_policy == "ephemeral"
    return isinstance(error, AutoservSSHConnectionLost) and bool(
        _BEFORE_LOGIN.search(stderr_text))


def _mux_refused_line(path):
    """What ssh says when a first contact finds another master has just
    taken its control path (it then runs its session on its own)."""
    return f"ControlSocket {path} already exists, disabling multiplexing"


def _drop_line(text, line):
    """text without the lines that are exactly line (a CR before the
    newline allowed)."""
    if line not in text:
        return text
    return "".join(l for l in text.splitlines(keepends=True)
                   if l.rstrip("\r\n") != line)


def _ssh_lines(text, started):
    """The lines of a stderr stream that ssh itself wrote: before the command
    started that is all of it; afterwards the lines that match ssh's errors."""
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("@")]
    if started:
        lines = [l for l in lines if any(p.search(l) for p, _, _ in _SSH_ERRORS)]
    return [_neutralise(l) for l in lines[-6:]]


def _readable(pipe):
    """True when a read of pipe would not block (data or EOF waits)."""
    import select
    return bool(select.select([pipe.fileno()], [], [], 0)[0])


def _read_line(pipe, timeout):
    """One line from a pipe within timeout seconds (b"" on EOF or time-out)."""
    import selectors
    fd = pipe.fileno()
    data = b""
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n") and len(data) < 4096:
            left = end - time.monotonic()
            if left <= 0 or not sel.select(left):
                return b""
            chunk = os.read(fd, 4096 - len(data))
            if not chunk:
                return b""
            data += chunk
    return data


def _end_agent_process(proc):
    """Ends an agent's ssh session: its stdin closes, so the agent kills what
    it runs, removes its dir and exits; then the local ssh, if still there."""
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass
    try:
        proc.wait(KILL_GRACE + 3)
    except _subprocess().TimeoutExpired:
        _terminate(proc, 5.0, kill_wait=5.0)


class _SSHLink:
    """One host's ssh transport, as the system ssh makes it (config,
    ProxyJump, aliases behave as in plain ssh): the command line (fixed
    options, the host key policy, the caller's -o values), one ControlMaster
    per connection and job, one command as its own session over it, and
    what ssh's stderr says went wrong (an AutoservSSHError subclass).

    The master is the job's, not the process's: its socket is in the job's
    control dir (_ctrl_dir) under a name made of the connection's identity
    (host, user, port, config, options...), so any process of the job (a
    parallel() task, a later round's task, the job process) that makes a
    host for the same machine finds it warm.  Whoever starts it does so under
    a flock of that name (two tasks never both start one) and registers its
    PID beside the socket (name.pid); the process that owns the control dir
    ends every registered master at its end, or its watchdog does if it dies
    (see _WATCHDOG_PY).  A task's close() leaves the master to the job.

    Its settings (the constructor's keywords, defaults from
    set_ssh_defaults()) are plain attributes; SSHHost shows them as its
    own.  Read-only for others: master (the ssh -M process this process
    started, or None), master_owner (the pid that started it),
    master_seen (the master pid master_alive() last reached), ctrl_path
    (the control socket last used, or None)."""

    _counter = 0              # links made in this process: each one's file names are its own

    def __init__(self, hostname, user=None, port=None, identity=None, ssh_config=None,
                 ssh_options=None, host_key_policy=None, known_hosts=None,
                 connect_timeout=None, alive_interval=None, alive_count=None):
        spec_user, host, spec_port = parse_machine(hostname)
        d = _SSH_DEFAULTS
        self.hostname = host
        self.user = user or spec_user or d["user"]
        self.port = int(port or spec_port or d["port"] or 0) or None
        self.identity = identity or d["identity"]
        self.ssh_config = ssh_config or d["ssh_config"]
        self.ssh_options = list(ssh_options if ssh_options is not None else d["ssh_options"])
        self.host_key_policy = host_key_policy or d["host_key_policy"]
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise AutoservUsageError(f"host key policy {self.host_key_policy!r}: use one of "
                                     + ", ".join(HOST_KEY_POLICIES))
        self.known_hosts = known_hosts or d["known_hosts"]
        self.connect_timeout = connect_timeout or d["connect_timeout"]
        self.alive_interval = alive_interval or d["alive_interval"]
        self.alive_count = alive_count or d["alive_count"]
        self.master_seen = None
        _SSHLink._counter += 1
        self.index = _SSHLink._counter
        self.master = None
        self.master_owner = None
        self.ctrl_path = None
        self._resolved = None

    # ssh command lines
    def options(self, connect_timeout=None):
        # ssh takes the first value it sees for an option.  Fixed first (never
        # a prompt, the host key policy, no forwarding), then the caller's
        # --ssh-option values, then defaults those may override.
        ct = connect_timeout or self.connect_timeout
        opts = ["-o", "BatchMode=yes", "-o", "ForwardAgent=no", "-o", "ForwardX11=no"]
        if self.host_key_policy == "strict":
            opts += ["-o", "StrictHostKeyChecking=yes"]
        else:
            opts += ["-o", "StrictHostKeyChecking=accept-new"]
        known = self.known_hosts_file()
        if known:
            opts += ["-o", f"UserKnownHostsFile={known}"]
        for opt in self.ssh_options:
            opts += ["-o", opt]
        opts += ["-o", f"ConnectTimeout={int(max(1, round(ct)))}",
                 "-o", f"ServerAliveInterval={self.alive_interval}",
                 "-o", f"ServerAliveCountMax={self.alive_count}",
                 "-o", "LogLevel=ERROR"]
        if self.ssh_config:
            opts += ["-F", self.ssh_config]
        if self.identity:
            opts += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.user:
            opts += ["-l", self.user]
        if self.port:
            opts += ["-p", str(self.port)]
        return opts

    def identity_key(self):
        """A short name for this connection's identity: what decides which
        master may carry it (never the connect timeout: it only bounds the
        start)."""
        ident = repr((self.hostname, self.user, self.port, self.identity, self.ssh_config,
                      tuple(self.ssh_options), self.host_key_policy, self.known_hosts,
                      self.alive_interval, self.alive_count))
        return _blake2b()(ident.encode("utf-8", "surrogateescape"),
                          digest_size=8).hexdigest()

    def known_hosts_file(self):
        if self.host_key_policy == "ephemeral":
            # The job's, per connection: every process of the job passes the
            # same options to the master it shares.
            path = os.path.join(_ctrl_dir(), f"kh-{self.identity_key()}")
        else:
            path = self.known_hosts
        if path and not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        return path

    def argv(self, connect_timeout=None, master=True):
        """The ssh command line for this host (without the remote command)."""
        argv = ["ssh"] + self.options(connect_timeout)
        if master and self.ctrl_path:
            argv += ["-o", f"ControlPath={self.ctrl_path}", "-o", "ControlMaster=no",
                     "-o", f"ProxyCommand=echo '{_NO_MASTER}' 1>&2"]
        return argv + [self.hostname]

    def master_alive(self):
        path = self.ctrl_path
        if not path:
            return False
        if self.master is not None and self.master_owner == os.getpid() \
                and self.master.poll() is not None:
            # Ours died; another process of the job may serve the path now.
            self.master = None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            self.master_seen = _peer_pid(s)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def master_serving(self, pid):
        """True when master `pid` (as _master_alive last saw it) still serves
        its control socket: it says its mux hello to a new client.  A master
        tearing down after its link died has left its loop and says nothing,
        so a channel it closed before this answer came ended in order."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(self.ctrl_path)
            if pid is None or _peer_pid(s) != pid:
                return False
            hello = b""
            while len(hello) < 8:
                piece = s.recv(8 - len(hello))
                if not piece:
                    return False
                hello += piece
            return hello[4:8] == b"\x00\x00\x00\x01"      # MUX_MSG_HELLO
        except (OSError, TypeError):
            return False
        finally:
            s.close()

    def ensure_master(self, connect_timeout=None):
        """A live master for this connection: the job's if one serves
        (whoever started it), else one started here under the name's lock."""
        path = os.path.join(_ctrl_dir(), "m-" + self.identity_key())
        if path == self.ctrl_path and self.master_alive():
            return
        self.ctrl_path = path
        if self.master_alive():        # another process of the job started it
            return
        lock = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.master_alive():    # started while we waited for the lock
                return
            self._start_master(path, connect_timeout)
        finally:
            os.close(lock)

    @property
    def master_process(self):
        """The master this process reached last: its ssh Popen when this
        process started it, else a handle on its PID (pid, poll(), wait())."""
        if self.master is not None and self.master_owner == os.getpid() \
                and (self.master_seen in (None, self.master.pid)):
            return self.master
        if self.master_seen is None:
            return None
        # A first contact's master: the socket's peer is the ssh that made
        # it and then left the master to its child; the master says its PID.
        pid = self.ctrl_path and _mux_master_pid(self.ctrl_path)
        return _PidHandle(pid or self.master_seen)

    def _start_master(self, path, connect_timeout, retried=False):
        """Starts the master, again while the connect timeout lasts when the
        target closed or reset the connection before the handshake ended
        (sshd past its MaxStartups, or starting up; a QEMU user-mode port
        whose guest is not listening yet): nothing has run, so another try
        is safe."""
        ct = connect_timeout or self.connect_timeout
        budget = time.monotonic() + ct
        pause = 0.25
        while True:
            try:
                return self._start_master_once(path, connect_timeout, retried)
            except AutoservSSHConnectionLost as e:
                if time.monotonic() + pause >= budget:
                    raise
                LOG.write(f"ssh connection closed before its handshake ended; "
                          f"trying again in {pause:.2f} s: {e.detail}", self.hostname)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _start_master_once(self, path, connect_timeout, retried):
        self.stop_master()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        errlog = path + ".err"
        argv = (["ssh"] + self.options(connect_timeout)
                + ["-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                   "-o", "ControlPersist=no", "-N", self.hostname])
        LOG.write("starting ssh master: " + " ".join(shlex.quote(a) for a in argv),
                  self.hostname)
        top = os.path.dirname(path)
        gate = _open_gate(top)
        if gate is None:
            raise AutoservSSHConnectionLost(self.hostname, "connection lost",
                                            "the job is ending: no new ssh connection")
        try:                # registered with the job before anything can end us
            _ensure_watchdog(top)
            with open(errlog, "wb") as err:
                proc = _popen(argv, stdin=DEVNULL, stdout=DEVNULL, stderr=err,
                              preexec_fn=_default_stop_signals)
            _write_atomic(path + ".pid", f"{proc.pid}\n")
        finally:
            os.close(gate)
        self.master, self.master_owner = proc, os.getpid()
        ct = connect_timeout or self.connect_timeout
        deadline = time.monotonic() + ct + 5
        delay = 0.002
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if os.path.exists(path) and self.master_alive():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.005)   # a stat and a connect: cheap
        alive = proc.poll() is None
        self.stop_master()
        with open(errlog, "rb") as f:
            text = _decode(f.read())
        os.unlink(errlog)
        if not alive:
            error = self.transport_error(text, started=False)
        else:
            error = AutoservSSHConnectTimeout(self.hostname, "connection timed out",
                                              f"no ssh session within {ct + 5:.0f} s")
        if (isinstance(error, AutoservSSHHostKeyError)
                and self.host_key_policy == "ephemeral" and not retried):
            LOG.write(f"host key changed on ephemeral host; accepting the new key. "
                      f"{error.detail}", self.hostname)
            os.unlink(self.known_hosts_file())
            return self._start_master_once(path, connect_timeout, retried=True)
        raise error

    def stop_master(self):
        """Ends the master of this connection, whichever process of the job
        started it (a reset or a reboot killed its link; a dead one is
        restarted): TERM makes ssh close the connection and remove its
        socket as `ssh -O exit` would, without a process for it."""
        _end_masters([self._master_entry()])

    def _master_entry(self, files=()):
        """What _end_masters() ends for this connection's master (forgotten
        here): (its pids, its Popen when this process started it, the PID
        file, then files to remove once it has ended)."""
        proc, self.master = self.master, None
        pids = []
        if proc is not None and self.master_owner == os.getpid() and proc.poll() is None:
            pids.append(proc.pid)
        registered = self.ctrl_path and _registered_master(self.ctrl_path)
        if registered and registered not in pids:
            pids.append(registered)
        if self.ctrl_path and not registered and os.path.exists(self.ctrl_path):
            # A first contact's master, not registered yet: known by its title.
            title = f"ssh: {self.ctrl_path} [mux]".encode()
            pids += [pid for pid in _dir_ssh_processes(os.path.dirname(self.ctrl_path))
                     if _cmdline(pid).split(b"\0")[0] == title and pid not in pids]
        owned = proc if proc is not None and self.master_owner == os.getpid() else None
        paths = [self.ctrl_path + suffix for suffix in (".pid",) + tuple(files)] \
            if self.ctrl_path else []
        return pids, owned, paths

    def transport_error(self, stderr_text, started, rc=None):
        lines = _ssh_lines(stderr_text, started)
        joined = "\n".join(lines)
        for pattern, cls_name, message in _SSH_ERRORS:
            if pattern.search(joined):
                cls = globals()[cls_name]
                break
        else:
            cls, message = AutoservSSHError, "ssh failed"
        if started and cls not in (AutoservSSHHostKeyError,):
            cls, message = AutoservSSHConnectionLost, "connection lost"
        detail = "; ".join(lines)[:600] or f"ssh exited with status {rc}"
        if cls is AutoservSSHHostKeyError:
            detail = self._key_change_detail(stderr_text) or detail
        return cls(self.hostname, message, detail)

    def _key_change_detail(self, text):
        new = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
        offending = re.search(r"Offending \S+ key in (\S+):(\d+)", text)
        if not new:
            return None
        old = "unknown"
        if offending:
            try:
                with open(offending.group(1), encoding="utf-8", errors="replace") as f:
                    line = f.read().splitlines()[int(offending.group(2)) - 1]
                fields = line.split()
                key = " ".join(fields[1:3]) if not fields[0].startswith("ssh-") and \
                    not fields[0].startswith("ecdsa") else " ".join(fields[0:2])
                out = _subprocess().run(["ssh-keygen", "-l", "-f", "-"], input=key.encode(),
                                        capture_output=True, timeout=10)
                old = _decode(out.stdout).split()[1] if out.stdout else "unknown"
            except (OSError, IndexError, ValueError, _subprocess().TimeoutExpired):
                pass
        return (f"host key changed: known {old}, offered {new.group(1)}"
                + (f" (known_hosts {offending.group(1)}:{offending.group(2)})"
                   if offending else ""))

    def resolve(self):
        """(hostname, port, user, proxied) as ssh itself would use them."""
        if self._resolved is None:
            argv = ["ssh", "-G"] + self.options() + [self.hostname]
            try:
                out = _subprocess().run(argv, stdin=DEVNULL, capture_output=True,
                                        timeout=_RESOLVE_TIMEOUT)
            except (OSError, _subprocess().TimeoutExpired) as e:
                # (A config's Match exec that hangs; a machine so loaded that
                # ssh -G took over 10 s in a full test run.)  Probes then go
                # through ssh itself, as for a proxied host.
                LOG.write(f"ssh -G did not answer ({e}); probing through ssh", self.hostname)
                self._resolved = (self.hostname, self.port or 22, self.user, True)
                return self._resolved
            conf = {}
            for line in _decode(out.stdout).splitlines():
                key, _, value = line.partition(" ")
                conf.setdefault(key.lower(), value)
            proxied = conf.get("proxycommand", "none") != "none" or \
                conf.get("proxyjump", "none") != "none"
            self._resolved = (conf.get("hostname", self.hostname),
                              int(conf.get("port", 22)), conf.get("user"), proxied)
        return self._resolved

    def banner(self, timeout):
        host, port, _, proxied = self.resolve()
        if proxied:
            return None
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    # one command as its own session
    def session(self, command, data, timeout, stdout_tee, stderr_tee, max_output,
                connect_timeout, wrap):
        """Runs command (stdin bytes data, or None) as its own ssh session
        over the master; wrap(command, stdin_len, token) gives the remote
        command line (SSHHost._remote_command: the wrapper).  Returns the
        CmdResult, not judged; raises an AutoservSSHError carrying .result
        when the transport failed.  A session whose master went away before
        reaching it (nothing was sent) goes once more, over a new master.

        With no master for the connection yet, the session's own ssh
        becomes it (first contact: one connection and one ssh process, not
        a master and then a client of it; see _first_contact_argv)."""
        for attempt in (1, 2):
            first, first_lock = self.first_contact() if attempt == 1 else (None, None)
            if first is None:
                self.ensure_master(connect_timeout)
            # A fresh token per command: a late marker from an earlier command
            # or from this one's background children does not match.
            token = os.urandom(8).hex()
            remote = wrap(command, len(data or b""), token)
            argv = (self._first_contact_argv(first, connect_timeout) if first
                    else self.argv(connect_timeout)) + [remote]
            LOG.write(f"run: {command}", self.hostname)
            marker = _MarkerFilter(token)
            # The trailer after stdin tells the wrapper all of it came.
            payload = data + token.encode() if data else data
            ex = _Execution(argv, self.hostname, stdin=payload, timeout=timeout,
                            stdout_tee=stdout_tee, stderr_tee=stderr_tee,
                            max_output=max_output, remote=True, marker=marker)
            lock = None
            if first:
                # Logged in (the master listens) within the connect timeout
                # and 5 s, as a master started on its own must be.  Under the
                # connection's lock until then: another process of the job
                # making the same connection waits for this master, as it
                # waits for one started on its own (ensure_master).
                lock = first_lock
                ct = connect_timeout or self.connect_timeout
                ex.login_by = time.monotonic() + ct + 5
                ex.logged_in = lambda: marker.pgid is not None or self.master_alive()
                ex.on_login = lambda: _unlock(lock)
                ex.keeps_running = True
                try:
                    self._start_first_contact(ex)
                except BaseException:
                    _unlock(lock)
                    raise
            else:
                ex.start()
            try:
                ex.wait()
            finally:
                if first:
                    _unlock(lock)
                    self._adopt_master(first)
            result = ex.result(command, self.hostname)
            if first:
                result.stderr = _drop_line(result.stderr, _mux_refused_line(first))
            if marker.status is not None:
                _set_exit_status(result, marker.status, shell=True)
                break
            if ex.timed_out:
                break
            if ex.login_timed_out:
                error = AutoservSSHConnectTimeout(
                    self.hostname, "connection timed out",
                    f"no ssh session within {ct + 5:.0f} s")
                LOG.write(f"transport failure: {error}", self.hostname)
                error.result = result
                raise error
            error = self.transport_error(result.stderr, marker.pgid is not None,
                                         ex.returncode)
            if first and marker.pgid is None and _before_login(error, result.stderr,
                                                               self.host_key_policy):
                # Nothing ran (ssh never logged in): the classic start says
                # why, with its retries (a target still starting, an
                # ephemeral host's new key), and the command goes over it.
                LOG.write(f"first contact failed before login ({error}); "
                          "starting the master on its own", self.hostname)
                continue
            if type(error) is AutoservSSHError and not (
                    self.master_alive() and self.master_serving(self.master_seen)):
                # ssh said nothing, but the master it used is gone with it (or
                # going: its socket still takes a connect while it tears down
                # after its link died, but it says no hello).
                error = AutoservSSHConnectionLost(self.hostname, "connection lost",
                                                  error.detail + "; the ssh master is gone")
            # A master gone before the session reached it: nothing was sent, so
            # one retry over a new master.  Any other ending may have run it.
            if attempt == 1 and _never_reached_master(result.stderr):
                LOG.write("ssh master went away before the session reached it; "
                          "reconnecting once", self.hostname)
                continue
            LOG.write(f"transport failure: {error}", self.hostname)
            error.result = result
            raise error
        return result

    def first_contact(self):
        """(control path, its lock held) when the next session is to start
        the connection's master itself; (None, None) when a master serves
        it already, or another process of the job is starting one (then
        ensure_master waits for it)."""
        path = os.path.join(_ctrl_dir(), "m-" + self.identity_key())
        self.ctrl_path = path
        if self.master_alive():
            return None, None
        lock = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return None, None
        if self.master_alive():         # started while we looked
            _unlock([lock])
            return None, None
        return path, [lock]

    def _first_contact_argv(self, path, connect_timeout):
        """ssh as the connection's master and its first session at once: it
        logs in, listens on path, puts the master in the background
        (ControlPersist: its own session, titled "ssh: PATH [mux]") and runs
        the command over it as a client, as every later session does.  A
        master that another process of the job started meanwhile is used
        instead (ControlMaster=auto); were two started at once, the second
        to bind runs its session over its own connection and says so on
        stderr (taken out again: _mux_refused_line)."""
        return (["ssh"] + self.options(connect_timeout)
                + ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}",
                   "-o", "ControlPersist=yes", self.hostname])

    def _start_first_contact(self, ex):
        """Starts a first-contact ssh under the job's gate, as every master is
        started (the job's end sweeps it by its command line until it is
        registered; see _end_registered_masters), with the watchdog."""
        top = os.path.dirname(self.ctrl_path)
        gate = _open_gate(top)
        if gate is None:
            raise AutoservSSHConnectionLost(self.hostname, "connection lost",
                                            "the job is ending: no new ssh connection")
        try:
            _ensure_watchdog(top)
            LOG.write("first contact starts the ssh master: "
                      + " ".join(shlex.quote(a) for a in ex.argv), self.hostname)
            ex.start()
        finally:
            os.close(gate)

    def _adopt_master(self, path):
        """Registers the master a first-contact session left at path (its
        PID from the master itself: the socket's peer is the session's ssh,
        which made the socket before the master left it)."""
        _reap_watchdog_starts()
        if not self.master_alive():
            return
        pid = _mux_master_pid(path)
        if pid is None:
            return
        try:
            _write_atomic(path + ".pid", f"{pid}\n")
        except OSError as e:          # the job's end removed the dir: it sweeps the master
            LOG.write(f"could not register the ssh master {pid}: {e}", self.hostname)

    def close(self):
        """In the process that owns the job's control dir: ends the master
        and removes its socket files.  In any other (a parallel() task) it
        leaves the master to serve the rest of the job, which ends it."""
        if _CTRL["pid"] != os.getpid():
            if self.master is not None and self.master_owner != os.getpid():
                _NOT_OURS.append(self.master)   # the parent's Popen: not finalized here
            self.master = None
            return
        entry = self._master_entry(files=("", ".lock", ".err"))
        if _ENDING is not None:     # in _close_all_hosts(): ended with every other host's
            _ENDING.append(entry)
        else:
            _end_masters([entry])


# SSH transport: the agent's client ############################################

# The agent's frames, _AgentExecution (one command through the agent: a
# channel of the warm master to the agent's socket) and _SSHAgent (a host's
# agent: started, reached, given up on).  The agent's own program is under
# "Remote programs".

_FRAME = struct.Struct(">cI")     # kind, length: the agent's frames
# The longest body of each kind the agent may send (it sends output in 64 KiB
# pieces), and the longest request and stdin piece it takes (its MAX_BODY).
_AGENT_FRAMES = {b"H": 0, b"S": 20, b"O": 1 << 20, b"E": 1 << 20, b"X": 20}
_AGENT_REQUEST_MAX = 4 << 20
_AGENT_STDIN_PIECE = 1 << 20


def _frame(kind, data=b""):
    return _FRAME.pack(kind, len(data)) + data


class _AgentLost(Exception):
    """The agent's socket could not be reached before the command started."""


class _AgentExecution(_Execution):
    """One command through a host's persistent agent: one channel of the warm
    ControlMaster to the agent's socket.  Same fields as _Execution; closing
    the channel is how the agent learns to kill the command's group."""

    def __init__(self, path, command, run_id, label, **kw):
        super().__init__([], label, remote=True, **kw)
        self.path = path
        self.request = json.dumps({"c": command, "r": run_id,
                                   "i": self.stdin_data is not None,
                                   "n": len(self.stdin_data or b"")}).encode()
        self.hello = False       # the agent's H came: it had accepted the channel
        self.pgid = None
        self.status = None
        self.sock = None
        self.broken = None       # how the agent broke the protocol, if it did

    def start(self):
        self.t0 = time.monotonic()
        self.deadline = _monotonic_deadline(self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise _AgentLost(str(e))
        sock.setblocking(False)
        self.sock = sock
        out = bytearray(_frame(b"R", self.request))
        if self.stdin_data is not None:
            view = memoryview(self.stdin_data)
            for at in range(0, len(view), _AGENT_STDIN_PIECE):
                out += _frame(b"I", view[at:at + _AGENT_STDIN_PIECE])
            out += _frame(b"i")
        self.pending = out

    def wait(self):
        import selectors
        sel = selectors.DefaultSelector()
        self.sel = sel
        self.rbuf = bytearray()
        sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while self.status is None:
                left = _remaining(self.deadline)
                if left == 0.0:
                    self.timed_out = True
                    break
                ready = sel.select(self.watch.wait(left) if self.watch else left)
                if self.watch and not ready:
                    self.watch.check()
                for _, events in ready:
                    if events & selectors.EVENT_WRITE:
                        self._write(sel)
                    if events & selectors.EVENT_READ and not self._read():
                        break
                else:
                    continue
                if self.sock is None:
                    break
            if self.timed_out:
                self._kill()
        except BaseException:
            self._hang_up()
            raise
        finally:
            self._finish()

    def _write(self, sel):
        import selectors
        try:
            n = self.sock.send(self.pending)
            del self.pending[:n]
        except BlockingIOError:
            return
        except OSError:
            self.pending = bytearray()
        if not self.pending:
            sel.modify(self.sock, selectors.EVENT_READ)

    def _read(self):
        """False once the channel has ended."""
        room = self._scratch()
        try:
            n = self.sock.recv_into(room)
        except BlockingIOError:
            return True
        except OSError:
            n = 0
        if not n:
            self._hang_up()
            return False
        buf = self.rbuf
        buf += memoryview(room)[:n]
        if n == len(room) < READ_SIZE:
            self._buf = bytearray(READ_SIZE)
        size, at = _FRAME.size, 0
        while len(buf) - at >= size and self.status is None:
            kind, n = _FRAME.unpack_from(buf, at)
            # Judged on its header: a frame is never buffered past its bound.
            if n > _AGENT_FRAMES.get(kind, -1):
                return self._broke(f"a {kind!r} frame of {n} bytes")
            if len(buf) - at < size + n:
                break
            body = bytes(memoryview(buf)[at + size:at + size + n])
            at += size + n
            if (kind == b"H") == self.hello:
                return self._broke("a hello out of place" if self.hello
                                   else f"a {kind!r} frame before its hello")
            if kind == b"H":
                self.hello = True
            elif kind == b"O":
                self._take(1, body)
            elif kind == b"E":
                self._take(2, body)
            elif not re.fullmatch(rb"[0-9]{1,10}", body):
                return self._broke(f"a {kind!r} frame holding {body[:20]!r}")
            elif kind == b"S":
                self.pgid = int(body)
            else:
                self.status = int(body)
        del buf[:at]
        return True

    def _broke(self, what):
        """The agent sent something it never sends: hang up (which kills the
        command there) and say so; nothing more from it is read."""
        self.broken = what
        self.rbuf = bytearray()
        self._hang_up()
        return False

    def _hang_up(self):
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def _kill(self, grace=None):
        """Asks the agent to kill the group (TERM, CONT, KILL after its grace)
        and waits for it to say so, then hangs up (which kills it too)."""
        if self.sock is None:
            return
        self.pending += _frame(b"K")
        end = time.monotonic() + KILL_GRACE + 3.0
        import selectors
        self.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while self.status is None and self.sock is not None and time.monotonic() < end:
            for _, events in self.sel.select(0.05):
                if events & selectors.EVENT_WRITE:
                    self._write(self.sel)
                if events & selectors.EVENT_READ:
                    self._read()
                if self.sock is None:
                    break
        self._hang_up()

    def _finish(self):
        self.duration = time.monotonic() - self.t0
        self._hang_up()
        self.sel.close()
        for tee in self.tees.values():
            if tee is not None:
                tee.feed(b"", final=True)
        for c in self.captures.values():
            c.close()
        self.returncode = self.status

class _SSHAgent:
    """A host's persistent agent (SSHHost(persistent=True)): one python3
    process per host listening on a socket in a 0700 dir on the target,
    reached through a forward of the link's warm ControlMaster, one channel
    per command (_AgentExecution).  add_tmp_dir(path) registers the agent's
    dir on the target with the host, whose close() removes it.

    state: None (not started in this process), False (no agent can run
    there: said once, every command then runs as its own session) or
    {"proc": the ssh session running it, "local": the forwarded socket,
    "owner": the pid that started it (a forked task's copy never ends it)}."""

    _started = 0              # agents started in this process: each local socket is new

    def __init__(self, link, add_tmp_dir):
        self.link = link
        self.add_tmp_dir = add_tmp_dir
        self.state = None
        self.asked = 0          # commands asked for in "auto" mode before an agent
        self.asked_in = None    # ... in this process (a forked task counts its own)

    def socket(self, connect_timeout=None):
        """The local socket of this host's agent, started on first use; None
        when no agent can run there (said once in the log)."""
        agent = self.state
        if agent is False:
            return None
        if agent is not None and "local" in agent and self.link.master_alive():
            return agent["local"]
        return self.start(connect_timeout)

    def start(self, connect_timeout=None):
        """Starts the agent and waits for it (persistent=True)."""
        self.stop()
        self.link.ensure_master(connect_timeout)
        pending = self._begin(connect_timeout)
        ct = connect_timeout or self.link.connect_timeout
        return self._finish(pending, _read_line(pending["proc"].stdout, ct + 10))

    def ready_socket(self):
        """persistent="auto": the agent's socket once it is up, else None
        (the command runs as its own session).  Nothing here waits: the
        second command of a host in this process starts the agent, and a
        later one finds it ready (one that runs a single command never pays
        for an agent).  A forked task counts its own commands: a host the
        parent used once and a task uses once starts nothing (an agent a
        task starts ends with it)."""
        agent = self.state
        if agent is False:
            return None
        if agent is None:
            if self.asked_in != os.getpid():
                self.asked, self.asked_in = 0, os.getpid()
            self.asked += 1
            if self.asked >= 2 and self.link.master_alive():
                try:
                    self.state = self._begin(None)
                except OSError as e:
                    self._give_up(None, f"it did not start: {e}", "")
            return None
        if "pending" not in agent:
            return agent["local"] if self.link.master_alive() else self.stop()
        if agent["owner"] != os.getpid():
            return None         # a forked task: the parent's start is not ours to finish
        proc = agent["proc"]
        if _readable(proc.stdout):
            return self._finish(agent, _read_line(proc.stdout, self.link.connect_timeout))
        if proc.poll() is not None or time.monotonic() > agent["until"]:
            return self._finish(agent, b"")
        return None

    def _begin(self, connect_timeout):
        """Starts the agent's ssh session over the master; it prints the
        agent's socket path on the target when it listens."""
        run_id = _run_id()
        remote = (f"exec env AUTOSERV_RUN_ID={shlex.quote(run_id)} python3 -c "
                  f"{shlex.quote(_AGENT_BOOT)} {len(_AGENT_CODE)} {KILL_GRACE}")
        errlog = f"{self.link.ctrl_path}.{os.getpid()}.agent"
        with open(errlog, "wb") as err:
            proc = _popen(self.link.argv(connect_timeout) + [remote], stdin=PIPE,
                          stdout=PIPE, stderr=err)
        try:                    # the pipe holds it (64 KiB): this never blocks
            proc.stdin.write(_AGENT_CODE)
            proc.stdin.flush()
        except OSError:         # ssh is gone: its empty answer says so
            pass
        ct = connect_timeout or self.link.connect_timeout
        return {"proc": proc, "pending": True, "owner": os.getpid(), "errlog": errlog,
                "until": time.monotonic() + ct + 10}

    def _finish(self, pending, line):
        """The agent's socket, forwarded by the master, from the line the
        agent printed; None (said once) when no agent can run there."""
        proc = pending["proc"]
        why = None
        if not re.fullmatch(rb"/tmp/autoserv-[A-Za-z0-9_]{6,12}/agent\n", line):
            why = "it did not start"
        else:
            remote_path = os.fsdecode(line.strip())
            _SSHAgent._started += 1
            local = os.path.join(_ctrl_dir(),
                                 f"{os.getpid()}-{self.link.index}-a{_SSHAgent._started}")
            out = _subprocess().run(
                ["ssh", "-o", f"ControlPath={self.link.ctrl_path}", "-O", "forward",
                 "-L", f"{local}:{remote_path}", self.link.hostname], stdin=DEVNULL,
                capture_output=True, timeout=10, start_new_session=True)
            if out.returncode != 0:
                why = "the ssh master would not forward to it: " + _decode(out.stderr).strip()
        if why is not None:
            _end_agent_process(proc)
            with open(pending["errlog"], "rb") as f:
                text = _decode(f.read()).strip()
            return self._give_up(pending["errlog"], why, text)
        self.state = {"proc": proc, "local": local, "owner": os.getpid()}
        self.add_tmp_dir(os.path.dirname(remote_path))
        LOG.write(f"persistent agent at {remote_path}", self.link.hostname)
        return local

    def _give_up(self, errlog, why, text):
        if errlog:
            _remove_quietly(errlog)
        LOG.write(f"no persistent agent ({why}; {_last_lines(text, 3) or 'no message'}); "
                  "every command runs as its own ssh session", self.link.hostname)
        self.state = False
        return None

    def stop(self):
        """Ends the agent this process started and forgets it.  One another
        process started (a task's copy of its parent's) is only forgotten:
        it serves the rest of the job, and its Popen is kept from the
        collector here (a Popen's finalizer would poll a process that is
        not this one's child and warn: ~0.1 ms a host in every task's end)."""
        agent, self.state = self.state, None
        if agent and agent["owner"] != os.getpid():
            _NOT_OURS.append(agent)
            return
        if not agent:
            return
        _end_agent_process(agent["proc"])
        for path in (agent.get("local"), f"{self.link.ctrl_path}.{os.getpid()}.agent"):
            if path:
                _remove_quietly(path)

    def run(self, command, data, timeout, stdout_tee, stderr_tee, max_output,
            connect_timeout, wait=True):
        """A CmdResult through the agent, or None to run it as its own ssh
        session instead (no agent can run there; with wait=False, none is
        up yet: see ready_socket)."""
        run_id = _run_id()
        for attempt in (1, 2):
            path = self.socket(connect_timeout) if wait else self.ready_socket()
            if path is None:
                return None
            master = self.link.master_seen
            LOG.write(f"run: {command}", self.link.hostname)
            ex = _AgentExecution(path, command, run_id, self.link.hostname, stdin=data,
                                 timeout=timeout, stdout_tee=stdout_tee,
                                 stderr_tee=stderr_tee, max_output=max_output)
            if len(ex.request) > _AGENT_REQUEST_MAX:
                return None         # past what the agent takes: its own session says why
            try:
                ex.start()
            except _AgentLost as e:
                LOG.write(f"agent socket unreachable ({e}); restarting it", self.link.hostname)
                self.stop()
                continue
            ex.wait()
            result = ex.result(command, self.link.hostname)
            if ex.broken:
                error = AutoservSSHConnectionLost(
                    self.link.hostname, "connection lost",
                    f"the persistent agent broke its protocol ({_neutralise(ex.broken)}); "
                    "hung up on it")
                LOG.write(f"transport failure: {error}", self.link.hostname)
                error.result = result
                raise error
            if ex.status is not None:
                return _set_exit_status(result, ex.status, shell=True)
            if ex.timed_out:
                return result
            if not ex.hello and attempt == 1 and self.link.master_serving(master):
                # The same master, still serving, closed the channel with no
                # hello: the agent never accepted it (it is gone), so it never
                # read the request.  Start it again and send the command once more.
                LOG.write("the agent did not answer its channel; restarting it",
                          self.link.hostname)
                self.stop()
                continue
            alive = self.link.master_alive()
            error = AutoservSSHConnectionLost(
                self.link.hostname, "connection lost",
                "the persistent session ended "
                + ("mid-command" if ex.pgid is not None
                   else "before the agent said the command started (it may have)")
                + ("" if alive else " (the ssh master is gone)"))
            LOG.write(f"transport failure: {error}", self.link.hostname)
            error.result = result
            raise error
        return None


# File transfer: placement, local copies, shared pieces ########################

# Every backend stages into a temp dir beside the destination and renames
# into place, so an interrupted file never replaces the old one; a
# destination dir that does not exist yet is the staging dir renamed, in one
# step, with the mode mkdir would have given it.  Placement
# follows rsync: a file onto a missing path becomes that path; a directory
# (no trailing slash) goes inside dest; "dir/" means its contents; several
# sources, a trailing slash on dest or an existing dest dir mean "into".

def _sources(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        source = [source]
    out = [os.fsdecode(s) for s in source]
    if not out:
        raise AutoservUsageError("no source files given")
    return out


def _mode_for(sources, contents_flags, dir_flags):
    """auto: a single file, placed as dest or inside an existing dest dir;
    into: dest is a directory (made if missing); contents: "dir/" -> dest."""
    if len(sources) == 1 and contents_flags[0]:
        return "contents"
    if len(sources) > 1 or dir_flags[0]:
        return "into"
    return "auto"


def _transfer_error(host, what, paths, text, rc):
    low = text.lower()
    reasons = [("no space left", "no space left on the device"),
               ("disk quota", "disk quota exceeded"),
               ("permission denied", "permission denied"),
               ("read-only file system", "read-only file system"),
               ("no such file", "no such file or directory"),
               ("not a directory", "not a directory"),
               ("is a directory", "a directory is in the way")]
    reason = next((r for key, r in reasons if key in low), f"exit status {rc}")
    detail = "; ".join(l.strip() for l in text.strip().splitlines()[-4:])
    names = ", ".join(repr(p) for p in paths)
    return AutoservFileTransferError(
        f"{host}: {what} {names} failed: {reason}" + (f" ({detail})" if detail else ""))


def _err_tail(f, limit=1 << 16):
    """The last `limit` bytes of a transfer's stderr file, decoded: a target
    may write any amount there."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    return _decode(f.read(limit))


def _check_local_sources(sources, host):
    for s in sources:
        if not os.path.lexists(s.rstrip("/") or "/"):
            raise AutoservFileTransferError(
                f"{host}: send_file: local source {s!r} does not exist")


_KINDS = {0o010000: "a FIFO", 0o020000: "a character device", 0o060000: "a block device",
          0o140000: "a socket"}


def _fix_tree(root, preserve_symlinks, what):
    """Refuses what a target must not be able to do to us: anything but
    regular files, dirs and symlinks; symlinks when they were not asked for,
    and symlinks that point out of the fetched tree.  Strips setuid/setgid
    and makes everything the controller user's own."""
    import stat
    root_real = os.path.realpath(root)
    uid, gid = os.geteuid(), os.getegid()
    def unreadable(error):      # a dir it cannot list is never passed over unseen
        raise AutoservFileTransferError(f"{what}: cannot check {error.filename!r}: "
                                        f"{error.strerror}")
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                    or stat.S_ISLNK(st.st_mode)):
                kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file, dir or symlink")
                raise AutoservFileTransferError(
                    f"{what}: refusing {os.path.relpath(path, root)!r}: it is {kind}")
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
            if not os.path.islink(path):
                if st.st_mode & 0o6000:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o6000)
                continue
            target = os.path.realpath(path)
            inside = target == root_real or target.startswith(root_real + os.sep)
            if not preserve_symlinks or not inside:
                raise AutoservFileTransferError(
                    f"{what}: refusing symlink {os.path.relpath(path, root)!r} -> "
                    f"{os.readlink(path)!r}: it points out of the fetched tree")


# What the job writes in its results dir and in each host's or task's dir
# there: a transfer may add files beside the ones there, never replace them.
_JOB_NAMES = ("status.log", "summary.json", "keyval", "control.srv", "junit.xml",
              "debug", "console.log")


def _job_dirs():
    """The dirs whose _JOB_NAMES are the job's own: the results dir, the
    running task's dir and each host's dir in it."""
    if _JOB is None:
        return set()
    root = _JOB.resultdir
    dirs = {root, os.path.dirname(_JOB.status.path)}
    dirs |= {os.path.join(root, _safe_name(h.hostname)) for h in _JOB.hosts if h.hostname}
    return {os.path.realpath(d) for d in dirs}


def _refuse_job_names(dest_dir, names):
    """A transfer that would replace, merge into or delete one of the job's
    own files (those of _JOB_NAMES that are there)."""
    if os.path.realpath(dest_dir) in _job_dirs():
        for name in sorted(set(names) & set(_JOB_NAMES)):
            if not os.path.lexists(os.path.join(dest_dir, name)):
                continue
            raise AutoservFileTransferError(
                f"refusing to replace the job's own {os.path.join(dest_dir, name)}: "
                "fetch into a subdir of the results dir")


def _place_local(staging, dest, mode, delete):
    """Moves staged entries into place, the same way _PLACE_SH does remotely."""
    if dest.endswith("/") and mode == "auto":
        mode = "into"
    dest = dest.rstrip("/") or "/"
    if mode == "auto":
        mode = "into" if os.path.isdir(dest) else "as"
    entries = os.listdir(staging)
    if mode == "as":
        _refuse_job_names(os.path.dirname(os.path.abspath(dest)), [os.path.basename(dest)])
    else:
        _refuse_job_names(dest, entries + (os.listdir(dest) if delete and mode == "contents"
                                           and os.path.isdir(dest) else []))
        os.makedirs(dest, exist_ok=True)
    if not delete:
        for name in entries:
            _check_in_the_way(os.path.join(staging, name),
                              dest if mode == "as" else os.path.join(dest, name))
    if delete and mode == "contents":
        # The staging dir may live in dest (see _staging_parent): never removed here.
        ours = os.path.basename(staging)
        for name in os.listdir(dest):
            if name not in entries and name != ours:
                _remove_any(os.path.join(dest, name))
    for name in entries:
        src = os.path.join(staging, name)
        target = dest if mode == "as" else os.path.join(dest, name)
        if delete:
            _remove_any(target)
        if _real_dir(src) and _real_dir(target):
            _merge_dirs(src, target)
        else:
            if _real_dir(target):
                raise AutoservFileTransferError(f"{target}: a directory is in the way")
            if os.path.islink(target):      # replaced, never followed
                os.unlink(target)
            os.replace(src, target)


def _check_in_the_way(src, target):
    """Before anything moves: a file where src has a dir, or a dir where it
    has a file, stops the whole placement (links in the way are replaced)."""
    if not _real_dir(src):
        if _real_dir(target):
            raise AutoservFileTransferError(f"{target}: a directory is in the way")
        return
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = target if rel == "." else os.path.join(target, rel)
        if _real_dir(dirpath) and os.path.lexists(out) and not os.path.islink(out) \
                and not os.path.isdir(out):
            raise AutoservFileTransferError(f"{out}: a file is in the way")
        for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            if _real_dir(os.path.join(out, name)):
                raise AutoservFileTransferError(
                    f"{os.path.join(out, name)}: a directory is in the way")


def _real_dir(path):
    return os.path.isdir(path) and not os.path.islink(path)


def _remove_any(path):
    if _real_dir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _merge_dirs(src, dest):
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = os.path.normpath(os.path.join(dest, rel))
        for name in list(dirnames):
            s, t = os.path.join(dirpath, name), os.path.join(out, name)
            if os.path.islink(t):           # replaced, never followed
                os.unlink(t)
            if os.path.islink(s) or not _real_dir(t):
                if os.path.lexists(t) and not os.path.islink(s):
                    raise AutoservFileTransferError(f"{t}: a file is in the way")
                os.replace(s, t)
                dirnames.remove(name)
        for name in filenames:
            t = os.path.join(out, name)
            if _real_dir(t):
                raise AutoservFileTransferError(f"{t}: a directory is in the way")
            os.replace(os.path.join(dirpath, name), t)


def _refuse_dir_link(dest, mode, label):
    """The local side of _PLACE_SH's rule: a symlink at dest that leads to a
    dir is refused, never written through."""
    base = dest.rstrip("/") or "/"
    if os.path.islink(base) and (mode != "auto" or dest.endswith("/")
                                 or os.path.isdir(base)):
        raise AutoservFileTransferError(
            f"{label}: refusing to write through the symlink {base} -> {os.readlink(base)}")


def _drop_new_dir(path, existed):
    """After a failed placement: the dest dir _staging_parent made, if empty."""
    if not existed:
        try:
            os.rmdir(path.rstrip("/") or "/")
        except OSError:
            pass


def _staging_parent(dest, mode):
    base = dest.rstrip("/") or "/"
    if mode in ("into", "contents") or dest.endswith("/") or os.path.isdir(base):
        os.makedirs(base, exist_ok=True)
        return base
    parent = os.path.dirname(os.path.abspath(base))
    if not os.path.isdir(parent):
        raise AutoservFileTransferError(f"{dest}: its directory {parent} does not exist")
    return parent


def _copy_until(deadline, timeout, label, preserve_perm):
    """A shutil copy function that stops at deadline (AutoservTimeoutError):
    the data in 1 MiB pieces, then the metadata when preserve_perm."""
    import stat

    def copy(src, dst):
        if deadline is None:
            return (shutil.copy2 if preserve_perm else shutil.copyfile)(src, dst)
        if stat.S_ISFIFO(os.stat(src).st_mode):
            raise shutil.SpecialFileError(f"`{src}` is a named pipe")
        with open(src, "rb") as f, open(dst, "wb") as out:
            while True:
                if _remaining(deadline) <= 0:
                    raise AutoservTimeoutError(f"{label}: transfer timed out after "
                                               f"{timeout} s")
                block = f.read(1 << 20)
                if not block:
                    break
                out.write(block)
        if preserve_perm:
            shutil.copystat(src, dst)
        return dst
    return copy


def _local_copy(source, dest, delete_dest, preserve_perm, preserve_symlinks, label,
                timeout=None):
    sources = _sources(source)
    deadline = _monotonic_deadline(timeout)
    contents = [s.endswith("/") and len(s) > 1 for s in sources]
    for s in sources:
        if not os.path.lexists(s.rstrip("/") or "/"):
            raise AutoservFileTransferError(f"{label}: source {s!r} does not exist")
    mode = _mode_for(sources, contents, [os.path.isdir(s) for s in sources])
    _refuse_dir_link(dest, mode, label)
    existed = os.path.lexists(dest.rstrip("/") or "/")
    staging = tempfile.mkdtemp(prefix=".autoserv-", dir=_staging_parent(dest, mode))
    placed = False
    try:
        copy = _copy_until(deadline, timeout, label, preserve_perm)
        for src, is_contents in zip(sources, contents):
            path = src.rstrip("/") or "/"
            items = [(os.path.join(path, n), os.path.join(staging, n))
                     for n in os.listdir(path)] if is_contents else \
                [(path, os.path.join(staging, os.path.basename(path)))]
            for s, t in items:
                if os.path.isdir(s) and not (preserve_symlinks and os.path.islink(s)):
                    shutil.copytree(s, t, symlinks=preserve_symlinks, copy_function=copy)
                elif os.path.islink(s) and preserve_symlinks:
                    os.symlink(os.readlink(s), t)
                else:
                    copy(s, t)
        _place_local(staging, dest, mode, delete_dest)
        placed = True
    except OSError as e:
        raise AutoservFileTransferError(f"{label}: copying {sources} to {dest!r} failed: {e}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not placed:
            _drop_new_dir(dest, existed)


def _staging_candidates(dest, name):
    """The two dirs _PLACE_SH's prep step may make for dest: beside it (dest
    becomes that path) or inside it (dest is a dir)."""
    d = dest if dest == "/" else (dest.rstrip("/") or ".")
    base = ".autoserv-" + name
    return [posixpath.join(d, base), posixpath.join(posixpath.dirname(d) or ".", base)]


def _raw_place_command(dest, mode, delete, step, staging=""):
    return "sh -c " + " ".join(shlex.quote(w) for w in (
        _PLACE_SH, "autoserv", dest, mode, "1" if delete else "0", step, staging, "1"))


def _local_arg(path):
    """A local path as scp/rsync must get it: never read as an option (a
    leading "-") or as host:path (a ":" before any "/")."""
    return path if path.startswith("/") else "./" + path


def _expand_contents(sources, contents):
    items = []
    for s, c in zip(sources, contents):
        if c:
            path = s.rstrip("/")
            items += [os.path.join(path, n) for n in sorted(os.listdir(path))]
        else:
            items.append(s.rstrip("/") or "/")
    return items


# File transfer over SSH: pipelines and backends ###############################

def _pipeline(first, second, timeout, label, tar_end=None):
    """first | second with stderr of each in a temp file; one deadline; both
    process groups killed on timeout or interrupt.  Returns (rc1, rc2, err1, err2).
    With tar_end (a list), the bytes pass through here and tar_end gets
    whether the stream ended with a tar end-of-archive."""
    errs = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    try:
        deadline = _monotonic_deadline(timeout)
        p1 = _popen(first, stdin=DEVNULL, stdout=PIPE, stderr=errs[0])
        _progress_pid(p1.pid)
        try:
            p2 = _popen(second, stdin=p1.stdout if tar_end is None else PIPE,
                        stdout=DEVNULL, stderr=errs[1])
        except BaseException:
            _killpg(p1.pid, signal.SIGKILL)
            p1.wait()
            p1.stdout.close()
            raise
        if tar_end is not None:
            try:
                tar_end.append(_relay_tar(p1.stdout, p2.stdin, deadline, label))
            except BaseException:
                for p in (p1, p2):
                    _killpg(p.pid, signal.SIGKILL)
                    p.wait()
                p1.stdout.close()
                raise
        p1.stdout.close()
        _wait_all([p1, p2], timeout, label, deadline)
        return p1.returncode, p2.returncode, _err_tail(errs[0]), _err_tail(errs[1])
    finally:
        for f in errs:
            f.close()


class _TarScan:
    """Follows the headers of a tar stream on its way to the local tar, so
    that what a target sends is judged before anything is made: devices,
    FIFOs and other odd members are refused by name, setuid/setgid bits are
    cleared in the header (checksum redone), and a damaged header, which
    tar would skip over to resynchronise, is refused too."""

    KEEP = {b"0": "", b"\0": "", b"7": "", b"1": "", b"2": "", b"5": ""}
    META = (b"L", b"K", b"x", b"g")     # long names, pax records: their data is read
    KINDS = {b"3": "a character device", b"4": "a block device", b"6": "a FIFO"}

    def __init__(self, what):
        self.what = what
        self.header = b""
        self.skip = 0                   # data bytes (with padding) still to pass
        self.meta = None                # (type, bytes so far, size) while reading one
        self.name = None                # from an L record or a pax path
        self.size = None                # from a pax size

    def feed(self, data):
        """The bytes to pass on (headers are held until whole)."""
        out = bytearray()
        while data:
            if self.skip:
                n = min(self.skip, len(data))
                if self.meta is not None:
                    kind, got, size = self.meta
                    self.meta = (kind, got + data[:n], size)
                out += data[:n]
                data, self.skip = data[n:], self.skip - n
                if not self.skip and self.meta is not None:
                    try:
                        self._read_meta(*self.meta)
                    except (ValueError, IndexError):
                        self._refuse("a damaged pax header")
                    self.meta = None
                continue
            need = 512 - len(self.header)
            self.header, data = self.header + data[:need], data[need:]
            if len(self.header) == 512:
                out += self._judge(bytearray(self.header))
                self.header = b""
        return bytes(out)

    @staticmethod
    def _number(field):
        """A numeric header field as GNU tar reads it; anything else (signs,
        underscores, inner spaces, a negative base-256) is ValueError, never a
        number tar would read differently."""
        if field[0] == 0x80:                                  # base-256, positive
            return int.from_bytes(field[1:], "big")
        if field[0] & 0x80:
            raise ValueError("negative base-256 number")
        text = field.split(b"\0", 1)[0].strip(b" ")
        if not re.fullmatch(rb"[0-7]*", text):
            raise ValueError(f"not octal: {text!r}")
        return int(text, 8) if text else 0

    def _refuse(self, why):
        raise AutoservFileTransferError(f"{self.what}: refusing {why}")

    def _judge(self, h):
        if not any(h):
            return h                                           # end-of-archive blocks
        try:
            stored, size, mode = (self._number(h[148:156]), self._number(h[124:136]),
                                  self._number(h[100:108]))
        except ValueError:
            self._refuse("a damaged tar header")
        if stored != sum(h[:148]) + 8 * 32 + sum(h[156:]):
            self._refuse("a damaged tar header (bad checksum)")
        kind = bytes(h[156:157])
        if self.size is not None:
            size = self.size
        name = self.name
        if name is None:
            prefix = bytes(h[345:500]).split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
            base = bytes(h[:100]).split(b"\0", 1)[0]
            name = os.fsdecode(prefix + b"/" + base if prefix else base)
        if kind in self.META:
            if size > 1 << 20:
                self._refuse(f"a {size}-byte tar header record")
            self.meta = (kind, b"", size)
        elif kind in self.KEEP:
            if size and kind in (b"1", b"2", b"5"):
                self._refuse(f"{name!r}: a link or dir header that claims data")
            self.name = self.size = None
            if mode & 0o6000:                                  # setuid/setgid: cleared
                h[100:108] = b"%07o\0" % (mode & ~0o6000 & 0o7777)
                h[148:156] = b"%06o\0 " % (sum(h[:148]) + 8 * 32 + sum(h[156:]))
        else:
            self._refuse(f"{name!r}: it is " + self.KINDS.get(
                kind, f"a tar member of type {kind!r}, not a file, dir or symlink"))
        self.skip = (size + 511) // 512 * 512 if kind not in (b"1", b"2", b"5") else 0
        return h

    def _read_meta(self, kind, data, size):
        data = data[:size]
        if kind == b"L":
            self.name = os.fsdecode(data.split(b"\0", 1)[0])
        elif kind in (b"x", b"g"):                 # "len key=value\n" records
            while data:
                head = data.split(b" ", 1)[0]
                if not re.fullmatch(rb"[0-9]{1,7}", head):
                    raise ValueError("bad pax record length")
                length = int(head)
                key, _, value = data[:length].split(b" ", 1)[1].partition(b"=")
                if kind == b"g" and key in (b"size", b"path", b"linkpath", b"uid",
                                            b"gid", b"mode"):
                    # A global record would change how every later header
                    # reads; tar obeys it, so the scan would be judging
                    # other members than tar makes.
                    self._refuse(f"a global pax header that sets {key.decode()!r}")
                if kind == b"x" and key == b"path":
                    self.name = os.fsdecode(value[:-1])
                elif kind == b"x" and key == b"size":
                    if not re.fullmatch(rb"[0-9]+\n", value):
                        raise ValueError("bad pax size")
                    self.size = int(value)
                data = data[length:]


def _relay_tar(src, dest, deadline, what="get_file"):
    """Copies a tar stream from src to dest (closed at the end) in bounded
    blocks until EOF or the deadline, through _TarScan; True when it ended
    with tar's end-of-archive (two zero blocks): EOF at a member boundary,
    from a dropped link or a sender that stopped early, looks whole to tar."""
    import selectors
    zeros = bytes(1024)
    tail, total = b"", 0
    scan = _TarScan(what)
    with selectors.DefaultSelector() as sel:
        sel.register(src, selectors.EVENT_READ)
        try:
            while True:
                wait = _remaining(deadline)
                if wait == 0 or not sel.select(wait):
                    return False            # timed out: _wait_all says so
                data = os.read(src.fileno(), 1 << 16)
                if not data:
                    break
                total += len(data)
                tail = (tail + data)[-1024:]
                dest.write(scan.feed(data))
        except BrokenPipeError:             # the reader failed: its error tells
            return False
        finally:
            try:
                dest.close()
            except BrokenPipeError:
                pass
    return total % 512 == 0 and total >= 1024 and tail == zeros


def _wait_all(procs, timeout, label, deadline=None):
    """Waits for every process under one deadline (timeout's, unless given);
    on timeout their groups get TERM then KILL and AutoservTimeoutError; on
    interrupt, KILL."""
    sp = _subprocess()
    if deadline is None:
        deadline = _monotonic_deadline(timeout)
    try:
        for p in procs:
            p.wait(_remaining(deadline))
    except sp.TimeoutExpired:
        for p in procs:
            _terminate(p, KILL_GRACE, kill_wait=None)
        raise AutoservTimeoutError(f"{label}: transfer timed out after {timeout} s")
    except BaseException:
        for p in procs:
            _killpg(p.pid, signal.SIGKILL)
            p.wait()
        raise


def _stream_file(path, argv, timeout, label):
    """argv with path as its stdin, its stderr in a temp file, one deadline,
    its group killed on timeout or interrupt.  Returns (rc, stderr text)."""
    with open(path, "rb") as src, tempfile.TemporaryFile() as err:
        proc = _popen(argv, stdin=src, stdout=DEVNULL, stderr=err)
        _progress_pid(proc.pid, "stdin", os.fstat(src.fileno()).st_size)
        _wait_all([proc], timeout, label)
        return proc.returncode, _err_tail(err)


def _tar_member_args(sources, contents_flags):
    """GNU tar arguments (-C dir ./name ...) that put each source at the top
    of the archive (or, for "dir/", its contents)."""
    args = []
    for src, contents in zip(sources, contents_flags):
        path = os.path.abspath(src.rstrip("/") or "/")
        if contents:
            args += ["-C", path, "."]
        else:
            args += ["-C", os.path.dirname(path) or "/", "./" + os.path.basename(path)]
    return args


class _SSHTransfer:
    """send_file/get_file for an SSHHost, as a collaborator it holds (as
    fabric's Connection hands transfers to a Transfer): the part every
    backend shares (sources, placement mode, the local staging dir of
    get_file, the log lines), the choice of backend (_TRANSFER_BACKENDS) and
    what the backends ask of it.  Commands on the target go through
    host.run(); add_tmp_dir(path) and forget_tmp_dirs(name) register and
    unregister staging dirs with the host, whose close() removes what is
    left."""

    def __init__(self, host, link, add_tmp_dir, forget_tmp_dirs):
        self.host = host
        self.link = link
        self.add_tmp_dir = add_tmp_dir
        self.forget_tmp_dirs = forget_tmp_dirs
        self.tools = None         # the tools the target has, asked once

    @property
    def hostname(self):
        return self.link.hostname

    def _remote_tools(self):
        if self.tools is None:
            out = self.host.run("for t in tar rsync; do command -v $t >/dev/null 2>&1 && "
                                "echo $t; done; true", timeout=60).stdout.split()
            self.tools = set(out)
        return self.tools

    def _pick_backend(self, backend, delete_dest):
        if backend is not None:
            if backend not in TRANSFER_BACKENDS:
                raise AutoservUsageError(f"transfer backend {backend!r}: use one of "
                                         + ", ".join(TRANSFER_BACKENDS))
            if self.host.sudo and backend != "tar":
                raise AutoservUsageError(f"{self.hostname}: transfer backend {backend!r} "
                                         "cannot place files as root; with sudo=True "
                                         "transfers go through tar")
            return backend
        if self.host.sudo:        # tar is the backend that runs under sudo -n
            return "tar"
        tools = self._remote_tools()
        if delete_dest and "rsync" in tools and shutil.which("rsync"):
            return "rsync"
        if "tar" in tools and shutil.which("tar"):
            return "tar"
        if "rsync" in tools and shutil.which("rsync"):
            return "rsync"
        return "scp"

    def _backend(self, name):
        backend = _TRANSFER_BACKENDS[name](self)
        if not isinstance(backend, _TransferBackend):     # the seam: a table entry gone wrong
            raise TypeError(f"transfer backend {name!r} is not a _TransferBackend")
        return backend

    @_watched("send_file")
    def send_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                  preserve_symlinks: bool = False, backend: Optional[str] = None,
                  timeout: Optional[float] = None) -> None:
        sources = _sources(source)
        dest = os.fsdecode(dest)
        _check_local_sources(sources, self.hostname)
        contents = [s.endswith("/") and len(s) > 1 for s in sources]
        mode = _mode_for(sources, contents, [os.path.isdir(s) for s in sources])
        backend = self._pick_backend(backend, delete_dest)
        LOG.write(f"send_file ({backend}): {sources} -> {dest}", self.hostname)
        _host_note(self.host.hostname, f"send_file ({backend}): {sources} -> {dest}")
        t0 = time.monotonic()
        self._backend(backend).send(sources, contents, dest, mode, delete_dest,
                                    preserve_symlinks, timeout)
        LOG.write(f"send_file done in {time.monotonic() - t0:.3f}s", self.hostname)

    @_watched("get_file")
    def get_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                 preserve_perm: bool = True, preserve_symlinks: bool = False,
                 backend: Optional[str] = None, timeout: Optional[float] = None) -> None:
        sources = _sources(source)
        dest = os.fsdecode(dest)
        contents = [s.endswith("/") and len(s) > 1 for s in sources]
        dirs = [False] * len(sources)
        if len(sources) == 1 and not contents[0]:
            dirs = [_probe(self.host, "test -d " + shlex.quote(sources[0])).exit_status == 0]
        mode = _mode_for(sources, contents, dirs)
        backend = self._pick_backend(backend, delete_dest)
        LOG.write(f"get_file ({backend}): {sources} -> {dest}", self.hostname)
        _host_note(self.host.hostname, f"get_file ({backend}): {sources} -> {dest}")
        t0 = time.monotonic()
        _refuse_dir_link(dest, mode, f"{self.hostname}: get_file")
        existed = os.path.lexists(dest.rstrip("/") or "/")
        staging = os.path.abspath(tempfile.mkdtemp(prefix=".autoserv-",
                                                   dir=_staging_parent(dest, mode)))
        placed = False
        try:
            self._backend(backend).fetch(sources, contents, staging, dest, preserve_perm,
                                         preserve_symlinks, timeout)
            _fix_tree(staging, preserve_symlinks, f"{self.hostname}: get_file")
            _place_local(staging, dest, mode, delete_dest)
            placed = True
        except OSError as e:
            raise AutoservFileTransferError(
                f"{self.hostname}: get_file {sources} to {dest!r}: placing failed: {e}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not placed:
                _drop_new_dir(dest, existed)
        LOG.write(f"get_file done in {time.monotonic() - t0:.3f}s", self.hostname)

    # for the backends
    def ssh_argv(self):
        """ssh's command line over the master, which is started first."""
        self.link.ensure_master()
        return self.link.argv()

    def fail(self, what, paths, text, rc, dest=None):
        """Raises what a failed transfer step means: ssh's 255 a transport
        error, anything else an AutoservFileTransferError (with df's word on
        the destination when dest is given and the text does not say)."""
        if rc == 255:
            raise self.link.transport_error(text, started=True, rc=rc)
        if dest is not None and "no space" not in text.lower():
            text += self._space_note(dest, paths)
        raise _transfer_error(self.hostname, what, paths, text, rc)

    def _space_note(self, dest, paths):
        """tar says only "Wrote only N of M bytes" and SFTP only "failure" on a
        full disk: ask the target's df about the destination's filesystem."""
        need = 0
        for p in paths:
            for dirpath, _, files in os.walk(p) if os.path.isdir(p) else [("", [], [p])]:
                for name in files:
                    try:
                        need += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
        probe = ('d=$1; while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done; '
                 'df -Pk -- "$d" | tail -n 1')
        try:
            out = self.host.run("sh -c " + shlex.quote(probe) + " autoserv " + shlex.quote(dest),
                                timeout=30).stdout.split()
            free = int(out[3]) * 1024
        except (AutoservError, IndexError, ValueError):
            return ""
        if free < need or free < 65536:
            return f"\nno space left on the device: {free} bytes free, {need} needed"
        return ""

    def run_local(self, argv, what, paths, timeout, dest=None):
        """Runs a local transfer program (rsync, scp) to its end; its stdout.
        Raises as fail() does; a closed connection is a transport error."""
        LOG.write(" ".join(shlex.quote(a) for a in argv), self.hostname)
        ex = _Execution(argv, self.hostname, timeout=timeout, log_output=True)
        ex.start()
        _progress_pid(ex.proc.pid)
        ex.wait()
        if ex.timed_out:
            raise AutoservTimeoutError(f"{what} timed out",
                                       ex.result(" ".join(argv), self.hostname))
        if ex.returncode != 0:
            text = _decode(ex.captures[2].value())
            if ex.returncode == 255 or "connection unexpectedly closed" in text \
                    or "Connection closed" in text:
                raise self.link.transport_error(text, started=True, rc=ex.returncode)
            if dest is not None and "no space" not in text.lower():
                text += self._space_note(dest, paths)
            raise _transfer_error(self.hostname, what, paths, text, ex.returncode)
        return _decode(ex.captures[1].value())


class _TransferBackend:
    """One way to move files to and from an SSHHost, made per transfer for
    its _SSHTransfer (self.t).  send() places sources (local) at dest on the
    target; fetch() copies sources (on the target) into staging, a local
    dir that get_file then places at dest.  contents[i]: sources[i] ended
    in "/" (its contents, not itself); mode: as _mode_for() says.  Both
    raise AutoservFileTransferError or a transport error."""

    def __init__(self, transfer):
        self.t = transfer

    def send(self, sources, contents, dest, mode, delete_dest, preserve_symlinks, timeout):
        raise NotImplementedError

    def fetch(self, sources, contents, staging, dest, preserve_perm, preserve_symlinks,
              timeout):
        raise NotImplementedError

    def remote_spec(self, path):
        """host:path as scp and rsync take it ([v6addr]:path)."""
        host = self.t.hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{path}"


class _TarTransfer(_TransferBackend):
    """tar through a raw ssh session (one regular file: the file itself,
    as `ssh host 'cat > f'`); on the target, _PLACE_SH places the stream."""

    def _raw_ssh(self, script, *args):
        """ssh argv running an sh script directly (no wrapper): for streams
        whose size is not known up front.  The script never exits 255."""
        root = "sudo -n -- " if self.t.host.sudo else ""
        return self.t.ssh_argv() + [root + "sh -c " + " ".join(shlex.quote(w) for w in
                                                              (script, "autoserv") + args)]

    def send(self, sources, contents, dest, mode, delete_dest, preserve_symlinks, timeout):
        hostname = self.t.hostname
        if len(sources) == 1 and not contents[0] and os.path.isfile(sources[0]) \
                and not (preserve_symlinks and os.path.islink(sources[0])):
            # One regular file: the file itself is ssh's stdin, as in
            # `ssh host 'cat > f'`, staged and renamed like the rest.
            st = os.stat(sources[0])
            stamp = time.strftime("%Y%m%d%H%M.%S", time.gmtime(st.st_mtime))
            remote = self._raw_ssh(_PLACE_SH, dest, mode, "1" if delete_dest else "0", "cat",
                                   "", "1", os.path.basename(sources[0].rstrip("/")),
                                   "%o" % (st.st_mode & 0o7777), stamp, str(st.st_size))
            rc, err = _stream_file(sources[0], remote, timeout, hostname)
            if rc != 0:
                self.t.fail("send_file", sources, err, rc, dest)
            return
        # The last member is an empty file the target checks for: only a
        # stream that reached it is placed.
        marker = tempfile.mkdtemp(prefix="autoserv-")
        name = ".autoserv-end-" + _random_name()
        open(os.path.join(marker, name), "wb").close()
        tar = ["tar", "-c", "-f", "-"] + ([] if preserve_symlinks else ["-h"]) \
            + _tar_member_args(sources, contents) + ["-C", marker, "./" + name]
        remote = self._raw_ssh(_PLACE_SH, dest, mode, "1" if delete_dest else "0",
                               "tar", "", "1", name)
        try:
            rc1, rc2, e1, e2 = _pipeline(tar, remote, timeout, hostname)
        finally:
            shutil.rmtree(marker, ignore_errors=True)
        if rc2 != 0:
            self.t.fail("send_file", sources, e2 + e1, rc2, dest)
        if rc1 != 0:
            raise _transfer_error("localhost", "send_file: reading", sources, e1, rc1)

    def fetch(self, sources, contents, staging, dest, preserve_perm, preserve_symlinks,
              timeout):
        parts = []
        for src, is_contents in zip(sources, contents):
            path = src.rstrip("/") or "/"
            where, name = (path, ".") if is_contents else \
                (os.path.dirname(path) or "/", "./" + os.path.basename(path))
            parts.append(f"cd {shlex.quote(where)} && tar -c{'' if preserve_symlinks else 'h'}f - "
                         f"-- {shlex.quote(name)} || exit 1")
        remote = self._raw_ssh("; ".join(parts))
        local = ["tar", "-x", "-i", "-f", "-", "-C", staging, "--no-same-owner"]
        local.append("-p" if preserve_perm else "--no-same-permissions")
        ended = []
        rc1, rc2, e1, e2 = _pipeline(remote, local, timeout, self.t.hostname, ended)
        if rc1 != 0:
            self.t.fail("get_file", sources, e1, rc1)
        if rc2 != 0:
            raise _transfer_error("localhost", "get_file: writing", [dest], e2, rc2)
        if not ended[0]:
            raise AutoservFileTransferError(
                f"{self.t.hostname}: get_file {sources}: the tar stream ended early "
                "(no end-of-archive): nothing placed")


class _CopyProgramTransfer(_TransferBackend):
    """A backend that is a local program copying host:path specs (rsync,
    scp): fetch() is the same for both but for the program's argv."""

    def fetch_argv(self, preserve_perm, preserve_symlinks):
        raise NotImplementedError

    def fetch(self, sources, contents, staging, dest, preserve_perm, preserve_symlinks,
              timeout):
        items = [self.remote_spec(s.rstrip("/") + "/." if c else s.rstrip("/") or "/")
                 for s, c in zip(sources, contents)]
        argv = self.fetch_argv(preserve_perm, preserve_symlinks)
        out = self.t.run_local(argv + items + [staging + "/"], "get_file", sources, timeout)
        skipped = [l[len("skipping non-regular file "):] for l in out.splitlines()
                   if l.startswith("skipping non-regular file ")]
        if skipped:
            raise AutoservFileTransferError(
                f"{self.t.hostname}: get_file: refusing {', '.join(skipped)}: "
                "not a regular file, dir or symlink")


class _RsyncTransfer(_CopyProgramTransfer):
    """rsync over the master (-e: ssh's command line)."""

    def _ssh_command(self):
        return " ".join(shlex.quote(a) for a in self.t.ssh_argv()[:-1])

    def send(self, sources, contents, dest, mode, delete_dest, preserve_symlinks, timeout):
        # rsync would follow a symlinked dest dir: the same check first.
        try:
            self.t.host.run(_raw_place_command(dest, mode, delete_dest, "check"), timeout=60)
        except AutoservRunError as e:
            self.t.fail("send_file", sources, e.result.stderr if e.result else str(e), 1)
        argv = ["rsync", "-rltD", "-p", "--protect-args", "-e", self._ssh_command()]
        argv += ["-l"] if preserve_symlinks else ["-L"]
        if delete_dest:
            argv.append("--delete")
        rsync_dest = dest if not (mode == "into" and not dest.endswith("/")) else dest + "/"
        self.t.run_local(argv + [_local_arg(s) for s in sources]
                         + [self.remote_spec(rsync_dest)], "send_file", sources, timeout, dest)

    def fetch_argv(self, preserve_perm, preserve_symlinks):
        # No -D: rsync makes no device or FIFO here; it names each one it
        # skips, and fetch() refuses those.
        argv = ["rsync", "-rlt", "--info=skip1", "--chmod=ug-s",
                "--protect-args", "-e", self._ssh_command()]
        argv += ["-l"] if preserve_symlinks else ["-L"]
        if preserve_perm:
            argv.append("-p")
        return argv


class _ScpTransfer(_CopyProgramTransfer):
    """scp, into a staging dir on the target that _PLACE_SH makes (prep)
    and places (install)."""

    def _options(self):
        """ssh's options as scp takes them: scp's -l is a bandwidth limit and
        its -p keeps times, so the user and port go as -o User= and -P.
        (The master is not started for it: a ControlPath only if one is up.)"""
        opts, out = self.t.link.argv()[1:-1], []
        for flag, value in zip(opts[::2], opts[1::2]):
            if flag == "-l":
                out += ["-o", f"User={value}"]
            elif flag == "-p":
                out += ["-P", value]
            else:
                out += [flag, value]
        return out

    def _remove_staging(self, staging):
        """Removes an scp staging dir (or the places it may be); when the link
        is down (the very error being reported), it is left for close() and
        never masks that error."""
        paths = [staging] if isinstance(staging, str) else list(staging)
        try:
            self.t.host.run("rm -rf -- " + " ".join(shlex.quote(p) for p in paths),
                            ignore_status=True, timeout=30, connect_timeout=5)
        except AutoservError as e:
            LOG.write(f"staging {paths} not removed yet ({e}); retried at close",
                      self.t.hostname)
            return
        self.t.forget_tmp_dirs(os.path.basename(paths[0]))

    def send(self, sources, contents, dest, mode, delete_dest, preserve_symlinks, timeout):
        run = self.t.host.run
        name = _random_name()
        # Where prep may make it, registered before asking, so a reply
        # lost with the link still leaves close() something to remove.
        staging = _staging_candidates(dest, name)
        for candidate in staging:
            self.t.add_tmp_dir(candidate)
        try:
            staging = run(_raw_place_command(dest, mode, delete_dest, "prep", name),
                          timeout=60).stdout.strip()
            items = [_local_arg(i) for i in _expand_contents(sources, contents)]
            argv = ["scp", "-r", "-p", "-q"] + self._options()
            self.t.run_local(argv + items + [self.remote_spec(staging + "/")],
                             "send_file", sources, timeout, dest)
            run(_raw_place_command(dest, mode, delete_dest, "install", staging), timeout=300)
        except AutoservRunError as e:
            self.t.fail("send_file", sources, e.result.stderr if e.result else str(e), 1, dest)
        finally:
            self._remove_staging(staging)

    def fetch_argv(self, preserve_perm, preserve_symlinks):
        return ["scp", "-r", "-q"] + (["-p"] if preserve_perm else []) + self._options()


# The backends by name (TRANSFER_BACKENDS, the names users pass as backend=).
_TRANSFER_BACKENDS = {"tar": _TarTransfer, "rsync": _RsyncTransfer, "scp": _ScpTransfer}


# SSHHost ######################################################################

def parse_machine(spec):
    """``[user@]host[:port]`` -> (user, host, port); raises on nonsense."""
    text = str(spec).strip()
    user = port = None
    if "@" in text:
        user, _, text = text.rpartition("@")
    if text.startswith("["):                       # [v6addr]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    if not host or host.startswith("-") or any(c.isspace() for c in host) \
            or (user is not None and (not user or user.startswith("-"))):
        raise AutoservUsageError(f"machine {spec!r} is not [user@]host[:port]")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise AutoservUsageError(f"machine {spec!r}: port {port!r} is not 1-65535")
        port = int(port)
    return user, host, port


class _Via:
    """A class attribute that reads and writes an attribute of one of the
    instance's collaborators: SSHHost's hostname, user, port... live in its
    _SSHLink, and host.user = "root" must still reach the ssh command line.
    Before the collaborator exists (a subclass's __init__ before SSHHost's)
    the value is `before`, or an AttributeError as for any unset attribute."""

    _UNSET = object()

    def __init__(self, part, name=None, before=_UNSET):
        self.part, self.name, self.before = part, name, before

    def __set_name__(self, owner, name):
        self.name = self.name or name       # the collaborator's name for it, if given

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        part = obj.__dict__.get(self.part)
        if part is None:
            if self.before is _Via._UNSET:
                raise AttributeError(self.name)
            return self.before
        return getattr(part, self.name)

    def __set__(self, obj, value):
        setattr(getattr(obj, self.part), self.name, value)


class SSHHost(RemoteHost):
    """A machine reached with the system ssh (config, ProxyJump, aliases
    behave as in plain ssh), one ControlMaster per host and job.

    A thin host over three collaborators: its _SSHLink (ssh options, the
    master, error classification; the connection settings below are the
    link's), its _SSHAgent (persistent=True) and its _SSHTransfer
    (send_file/get_file and their backends)."""

    poll_interval = 0.5       # s between wait_down()'s probes

    # The connection settings, kept by the link (set_ssh_defaults() fills in
    # what the constructor was not given); writing one changes the next ssh.
    hostname = _Via("_link", before=None)
    user = _Via("_link")
    port = _Via("_link")
    identity = _Via("_link")
    ssh_config = _Via("_link")
    ssh_options = _Via("_link")
    host_key_policy = _Via("_link")
    known_hosts = _Via("_link")
    connect_timeout = _Via("_link")
    alive_interval = _Via("_link")
    alive_count = _Via("_link")
    # Collaborators' state that tests and debugging sessions look at.
    _master = _Via("_link", "master_process")
    _ctrl_path = _Via("_link", "ctrl_path")
    _agent = _Via("_agent_client", "state")

    def __init__(self, hostname: str, user: Optional[str] = None,
                 port: Union[int, str, None] = None, *, identity: Optional[str] = None,
                 ssh_config: Optional[str] = None, ssh_options: Optional[Sequence[str]] = None,
                 host_key_policy: Optional[str] = None, known_hosts: Optional[str] = None,
                 connect_timeout: Optional[float] = None,
                 alive_interval: Optional[float] = None, alive_count: Optional[int] = None,
                 persistent: Optional[bool] = None, **kwargs: Any):
        self._init_args = (hostname,)
        self._init_kwargs = dict(user=user, port=port, identity=identity,
                                 ssh_config=ssh_config, ssh_options=ssh_options,
                                 host_key_policy=host_key_policy,
                                 known_hosts=known_hosts, connect_timeout=connect_timeout,
                                 alive_interval=alive_interval, alive_count=alive_count,
                                 persistent=persistent)
        self._link = _SSHLink(hostname, user, port, identity, ssh_config, ssh_options,
                              host_key_policy, known_hosts, connect_timeout,
                              alive_interval, alive_count)
        d = _SSH_DEFAULTS
        self.persistent = _persistent_mode(d["persistent"] if persistent is None else persistent)
        self._agent_client = _SSHAgent(self._link, self._add_tmp_dir)
        self._transfer = _SSHTransfer(self, self._link, self._add_tmp_dir,
                                      self._forget_tmp_dirs)
        super().__init__(**kwargs)     # power=, console=; any other keyword is refused

    # Hooks for the agent and the transfer: dirs they make on the target are
    # this host's (Host._add_tmp_dir), removed by close() in the process that
    # made them.
    def _forget_tmp_dirs(self, name):
        """Unregisters this process's dirs called name (removed already)."""
        self._tmp_dirs = [(pid, p) for pid, p in self._tmp_dirs
                          if not (pid == os.getpid() and os.path.basename(p) == name)]

    # ssh command lines and the master, delegated to the link
    def ssh_argv(self, connect_timeout=None, master=True):
        """The ssh command line for this host (without the remote command)."""
        return self._link.argv(connect_timeout, master)

    def resolve(self):
        """(hostname, port, user, proxied) as ssh itself would use them."""
        return self._link.resolve()

    def _known_hosts_file(self):
        return self._link.known_hosts_file()

    def _drop_connection(self):
        """Ends this process's master (a reset or a reboot killed its link)."""
        self._link.stop_master()

    def _remote_command(self, command, stdin_len, token):
        run_id = _run_id()
        return "exec sh -c " + " ".join(shlex.quote(w) for w in (
            _WRAPPER, "autoserv", token, str(stdin_len), command, run_id))

    # running commands
    def _execute(self, command, data, timeout, stdout_tee, stderr_tee, max_output,
                 connect_timeout):
        result = None
        if self.persistent:     # True: wait for the agent; "auto": only once it is up
            result = self._agent_client.run(command, data, timeout, stdout_tee, stderr_tee,
                                            max_output, connect_timeout,
                                            wait=self.persistent is True)
        if result is None:
            # Its own session; _remote_command is looked up here, on the host,
            # so a subclass (or a test's patch) that wraps it is the one used.
            result = self._link.session(command, data, timeout, stdout_tee, stderr_tee,
                                        max_output, connect_timeout, self._remote_command)
        return result

    def send_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                  preserve_symlinks: bool = False, backend: Optional[str] = None,
                  timeout: Optional[float] = None) -> None:
        return self._transfer.send_file(source, dest, delete_dest, preserve_symlinks,
                                        backend, timeout)

    def get_file(self, source: _Paths, dest: str, delete_dest: bool = False,
                 preserve_perm: bool = True, preserve_symlinks: bool = False,
                 backend: Optional[str] = None, timeout: Optional[float] = None) -> None:
        return self._transfer.get_file(source, dest, delete_dest, preserve_perm,
                                       preserve_symlinks, backend, timeout)

    def is_up(self, timeout: Optional[float] = None) -> bool:
        t = timeout or self.connect_timeout
        try:
            self.run("true", timeout=t + 1, connect_timeout=t)
            return True
        except AutoservError:
            return False

    @_watched("coming up")
    def wait_up(self, timeout: Optional[float] = None) -> bool:
        """True once the host answers ssh (within timeout; None waits on)."""
        deadline = _monotonic_deadline(timeout)
        while True:
            left = _remaining(deadline)
            banner = self._link.banner(min(1.0, left) if left is not None else 1.0)
            if banner is not False:
                step = self.connect_timeout if left is None else max(1, min(left, self.connect_timeout))
                if self.is_up(step):
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05 if banner is False else 0.5)

    def get_tmp_dir(self) -> str:
        """A new 0700 dir on the host, removed when the job ends."""
        path = self.run("umask 077; mktemp -d /tmp/autoserv-XXXXXX", timeout=60).stdout.strip()
        if not re.fullmatch(r"/tmp/autoserv-[A-Za-z0-9]{6}", path):
            raise AutoservHostError(self.hostname, "mktemp gave an unexpected path", path)
        self._add_tmp_dir(path)
        return path

    def _remove_tmp_dirs(self):
        """Removes the dirs this process made: get_tmp_dir()'s and transfer
        staging dirs (.autoserv-XXXXXX) it could not remove at the time."""
        mine = [p for pid, p in self._tmp_dirs if pid == os.getpid()
                and (re.fullmatch(r"/tmp/autoserv-[A-Za-z0-9_]{6,8}", p)
                     or re.fullmatch(r"\.autoserv-[A-Za-z0-9]{6,16}", os.path.basename(p)))]
        self._tmp_dirs = [(pid, p) for pid, p in self._tmp_dirs if p not in mine]
        if mine:
            self.run("rm -rf -- " + " ".join(shlex.quote(p) for p in mine),
                     timeout=60, ignore_status=True, connect_timeout=5)


    def close(self) -> None:
        """Ends its agent, removes this host's remote temp dirs (each its own
        ssh session: no new agent) and ends its ssh master (in the process
        that owns the job's connections; whatever went wrong before)."""
        persistent, self.persistent = self.persistent, False
        try:
            self._agent_client.stop()
            self._remove_tmp_dirs()
        except AutoservError as e:
            LOG.write(f"could not remove temp dirs: {e}", self.hostname)
        finally:
            self.persistent = persistent
            self._link.close()


# Parallel #####################################################################

# Each task runs in its own forked process (explicit fork: control-file
# functions and closures cannot be pickled, so spawn/forkserver and Pool are
# out).  The parent starts no threads; it drains every child's result pipe and
# output pipes in one selector loop, so results of any size come back without
# the wait-then-read deadlock.  The fork is os.fork itself (_Child knows the
# task by PID): multiprocessing's Process added pipes, finalizers and a
# bootstrap of its own, and after a fork every page the parent or a child
# writes is a copy.  With that, a task's end that no longer finalizes its
# copies of the parent's ssh sessions (_SSHAgent.stop) and one signal
# block per batch of starts, 16 tasks that do nothing cost about 35% less
# CPU (parent 19 -> 13 ms, tasks 48 -> 30 ms a round, getrusage).

class subcommand:
    """One task: func(*args), optionally in its own results subdir.

    Its status entries go to a status log of its own (the subdir's
    status.log, or a file in the job's debug/ removed once read); when the
    task ends, the parent writes the task's group whole into the job's
    status.log: START, the task's entries one level deeper, END with the
    worst status of them all."""

    def __init__(self, func: Callable[..., Any], args: Sequence[Any] = (),
                 subdir: Optional[str] = None):
        self.func = func
        self.args = list(args)
        self.subdir = subdir
        self.label = _task_label(func)
        hosts = self.host_names() or ([os.path.basename(str(subdir))] if subdir else [])
        self.title = self.label + (f" on {', '.join(hosts)}" if hosts else "")
        self.name = subdir or self.title
        self.pid = None
        self.result = None
        self.error = None            # (exception or None, traceback text)
        self.stopped = False         # ended by parallel() (timeout or signal)
        self.stop_reason = ""        # why parallel() ended it, for its hosts' error
        self.started = self.duration = None
        self.wall_started = None
        self.status_path = None      # where the child writes its status entries
        self.status_offset = 0
        self.host_records = {}       # what the child recorded about hosts
        self.view = None             # parallel()'s _LiveView, when it has one

    def host_names(self):
        """The hosts this task works on: hosts among its arguments."""
        names = []
        for arg in self.args:
            for one in (arg if isinstance(arg, (list, tuple)) else [arg]):
                name = getattr(one, "hostname", None)
                if isinstance(name, str) and name and name not in names:
                    names.append(name)
        return names

    def __repr__(self):
        return f"<subcommand {self.name} pid={self.pid}>"

    def _forked(self, others, result_w, out_w, err_w, watch_w=None):
        for fd in others:           # the parent's ends and files: not the task's
            os.close(fd)
        try:            # a task reads no terminal, nor the job's stdin
            null = os.open(os.devnull, os.O_RDONLY)
            if null != 0:
                os.dup2(null, 0)
                os.close(null)
            if sys.stdin is not None:
                sys.stdin = open(0, closefd=False)
        except OSError:         # no /dev/null here: the task runs all the same
            pass
        _WATCH.update(pipe=watch_w, stack=[], live=False)
        self._child(result_w, out_w, err_w)

    def _child(self, result_w, out_w, err_w):
        import pickle
        import traceback
        code = 0
        try:
            signal.signal(signal.SIGTERM, _raise_terminated)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)   # blocked by fork_start
            if out_w is not None:
                if LOG.echo:      # -v lines name their host already: not prefixed again
                    LOG.stderr.stream = os.fdopen(os.dup(2), "w", closefd=True)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
            if self.subdir:
                os.chdir(self.subdir)
            if _JOB is not None:
                _JOB.status = StatusLog(self.status_path)
                _JOB.take_host_records()
            try:
                payload = ("ok", self.func(*self.args))
            except BaseException as e:
                code = 1
                text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                payload = ("err", e, text)
                if isinstance(e, (KeyboardInterrupt, _Terminated)):
                    code = 130 if isinstance(e, KeyboardInterrupt) else 143
            hosts = _JOB.take_host_records() if _JOB is not None else {}
            try:
                data = pickle.dumps((payload, hosts), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                if payload[0] == "ok":
                    text = f"the task's result cannot be pickled: {e}"
                else:
                    text = payload[2]
                data = pickle.dumps((("err", None, text), hosts))
                code = 1
            close_all()
            view = memoryview(data)
            while view:
                view = view[os.write(result_w, view[:READ_SIZE]):]
        except BaseException:
            code = code or 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def fork_start(self, prefix_output=True):
        # What the child needs, imported here once, not in every child.
        import pickle  # noqa: F401
        import traceback
        if self.subdir:
            self.subdir = os.path.abspath(self.subdir)
            os.makedirs(os.path.join(self.subdir, "debug"), exist_ok=True)
            self.status_path = os.path.join(self.subdir, "status.log")
        elif _JOB is not None:
            self.status_path = os.path.join(
                _JOB.debugdir, f"task.{os.getpid()}.{id(self):x}.{_random_name(6)}.status")
        if self.status_path:
            try:
                self.status_offset = os.path.getsize(self.status_path)
            except OSError:
                self.status_offset = 0
        self.chunks = []
        self.files = {}
        self.tees = {}
        made = []           # every fd made here, closed again if the fork never happens
        try:
            # The subdir's debug/stdout and debug/stderr open before the
            # fork: one that cannot be opened stops the start, not a task
            # already running outside parallel()'s reach.
            for stream, target in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                if self.subdir and prefix_output:
                    f = self.files[stream] = open(
                        os.path.join(self.subdir, "debug", stream), "ab")
                    made.append(f.fileno())
                if prefix_output:
                    self.tees[stream] = (_Tee(self.view.sink(self)) if self.view else
                                         _Tee(target, prefix=f"{self.name} : "))
            pipes = []
            for wanted in (True, prefix_output, prefix_output, bool(self.view)):
                pipes.append(os.pipe() if wanted else (None, None))
                made.extend(fd for fd in pipes[-1] if fd is not None)
            (result_r, result_w), out, err, watch = pipes
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            self.wall_started = time.time()
            self.started = time.monotonic()
            pid = os.fork()
        except BaseException:
            for f in self.files.values():
                f.close()
            self.files = {}
            for fd in made:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        if pid == 0:
            try:
                # The child keeps only its write ends.
                self._forked([fd for fd in made if fd not in (result_w, out[1], err[1],
                                                               watch[1])],
                             result_w, out[1], err[1], watch[1])
            except BaseException:     # before _child could take it: said, at least
                try:
                    os.write(2, traceback.format_exc().encode("utf-8", "replace"))
                except BaseException:
                    pass
            finally:
                os._exit(1)
        self.process = _Child(pid)
        self.pid = pid
        for w in (result_w, out[1], err[1], watch[1]):
            if w is not None:
                os.close(w)
        self.fds = {result_r: "result"}
        if self.view:
            self.fds[watch[0]] = "progress"
        if prefix_output:
            self.fds[out[0]] = "stdout"
            self.fds[err[0]] = "stderr"
        return pid

    def collect(self, fd, data):
        """parallel()'s side: data the child wrote on its pipe fd."""
        kind = self.fds[fd]
        if kind == "result":
            self.chunks.append(data)
            return
        if kind == "progress":
            self.view.progress(self, data)
            return
        f = self.files.get(kind)
        if f is not None:
            f.write(data)
            f.flush()
        self.tees[kind].feed(data)

    def take_status(self):
        """The status entries the task wrote (a non-subdir task's file is
        removed once read)."""
        if not self.status_path:
            return ""
        try:
            with open(self.status_path, "rb") as f:
                f.seek(self.status_offset)
                text = f.read().decode("utf-8", "surrogateescape")
        except OSError:
            return ""
        if not self.subdir:
            _remove_quietly(self.status_path)
        return text

    def finish(self):
        """parallel()'s side, once the child's pipes are closed: reaps it and
        takes its result, or the error it died with."""
        import pickle
        self.process.join(5)
        code = self.process.exitcode
        self.duration = time.monotonic() - self.started
        for f in self.files.values():
            f.close()
        for tee in self.tees.values():
            tee.feed(b"", final=True)
        data = b"".join(self.chunks)
        self.chunks = []
        if not data:
            sig = -code if code is not None and code < 0 else 0
            self.error = (None, f"task {self.name} died without a result"
                          + (" (its exit status went to another waitpid)"
                             if self.process.unknown else
                             f" (signal {sig}, {_signame(sig)})" if sig else
                             f" (exit status {code})"))
            return
        try:
            payload, self.host_records = pickle.loads(data)
        except Exception as e:
            self.error = (None, f"task {self.name}: its result could not be read back: {e}")
            return
        if payload[0] == "ok":
            self.result = payload[1]
        else:
            self.error = (payload[1], payload[2])


class _Child:
    """A task's forked process, known by its PID: its exit code (-N for a
    signal) once it has ended and been reaped."""

    def __init__(self, pid):
        self.pid = pid
        self.code = None
        self.unknown = False    # reaped by another waitpid: its status is not ours

    def _reap(self, flags):
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                self.code, self.unknown = 255, True
                return
            if pid:
                self.code = os.waitstatus_to_exitcode(status)

    @property
    def exitcode(self):
        self._reap(os.WNOHANG)
        return self.code

    def join(self, timeout=None):
        """Waits for its end (at most timeout seconds)."""
        if timeout is None:
            self._reap(0)
            return
        end, pause = time.monotonic() + timeout, 0.001
        while self.exitcode is None and time.monotonic() < end:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _raise_terminated(signum, frame):
    raise _Terminated()


def _tasks_outcome(tasks):
    return [t.error[0] if t.error and t.error[0] is not None
            else AutoservSubcommandError([(t.name, t.error[1])]) if t.error
            else t.result for t in tasks]


def parallel(tasklist: Sequence[subcommand], timeout: Optional[float] = None,
             return_results: bool = False, max_parallel: Optional[int] = None,
             prefix_output: Optional[bool] = None) -> Optional[List[Any]]:
    """Runs every subcommand at once (at most max_parallel, -j, at a time), each
    to its end or the timeout; then raises AutoservSubcommandError naming every
    failed task, or with return_results gives a list of results/exceptions.

    In the job's status.log the call is one group (START/END parallel) holding
    one group per task, each written whole when its task ends; a FAIL, ERROR
    or ABORT inside a task counts for the job as it would outside one."""
    import selectors
    tasks = list(tasklist)
    if not tasks:
        return [] if return_results else None
    if max_parallel is None:
        max_parallel = _PARALLEL["max"]
    if prefix_output is None:
        prefix_output = any(t.subdir for t in tasks)
    deadline = _monotonic_deadline(timeout)
    # The job's control dir exists before any fork, so that every task (and
    # every later round) shares it: a master one task starts serves them all.
    # One made here that no task used (local work only) goes at the end.
    made = _CTRL["dir"] is None or not os.path.isdir(_CTRL["dir"])
    _ctrl_dir()
    _preload_for_tasks()
    _trim_heap()
    import gc
    sel = selectors.DefaultSelector()
    waiting = list(tasks)
    running = {}
    timed_out = False
    log = _JOB.status if _JOB is not None else None
    view = _LiveView(tasks) if prefix_output and _LiveView.wanted(tasks) else None
    for task in tasks:
        task.view = view
    if log:
        log.record("START", None, "parallel",
                   f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}")
    # What the parent holds now goes to the collector's permanent generation
    # until the tasks are done: a task's collections then walk only its own
    # objects, not every object of the parent, whose pages each walk copied
    # (copy-on-write) into the task: a cold 16-host round used about 7% less
    # CPU and wall time (five paired runs).  Given back to the collector at
    # the end.
    gc.freeze()

    def room():
        return waiting and (not max_parallel or len(running) < max_parallel)
    try:
        while waiting or running:
            # A Ctrl-C or SIGTERM waits until the tasks started are in
            # running: a child can start its work (and be seen to) before
            # fork_start returns, and one not in running would outlive the
            # stop.  The child unblocks them itself (_child).
            if room():
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
                try:
                    while room():
                        task = waiting.pop(0)
                        task.fork_start(prefix_output)
                        running[task.pid] = task
                        for fd in task.fds:
                            sel.register(fd, selectors.EVENT_READ, task)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            left = _remaining(deadline)
            if left == 0.0:
                timed_out = True
                break
            _pump(sel, 0.2 if left is None else min(0.2, left))
            if view:
                view.draw()
            for pid, task in list(running.items()):
                if task.fds:
                    continue
                task.finish()
                del running[pid]
                _task_ended(task)
        if timed_out:
            _stop_tasks(running, sel, reason=f"timed out after {timeout} s")
            for task in waiting:
                task.stopped = True
                task.error = (None, f"task {task.name} never started: parallel() timed out")
                _task_ended(task)
    except BaseException as e:
        _stop_tasks(running, sel, _cause(e) if isinstance(e, (KeyboardInterrupt, _Terminated))
                    else None)
        raise
    finally:
        gc.unfreeze()
        sel.close()
        if view:
            view.close()
        if made and _CTRL["dir"] and set(os.listdir(_CTRL["dir"])) <= {"owner"}:
            _remove_ctrl_dir()
        if log:
            log.record("END " + worst_status(*(t.status for t in tasks
                                                if getattr(t, "status", None))),
                       None, "parallel")
    if return_results:
        return _tasks_outcome(tasks)
    failures = [(t.name, t.error[1]) for t in tasks if t.error]
    if failures:
        raise AutoservSubcommandError(failures)
    return None


def _preload_for_tasks():
    """Imports, in the parent before it forks, what a task's first remote
    command imports (autoserv imports them lazily, for a fast start of a
    program that never runs a command): subprocess (with locale) and BLAKE2.  In a
    task each import is its own, every time: a cold 16-host round's tasks
    each spent about 4 ms importing them (python3 -X importtime)."""
    _subprocess()
    _blake2b()


def _trim_heap():
    """Once per process, before its first fork: the heap's free pages go
    back to the kernel (glibc's malloc_trim; elsewhere nothing).  A process
    that imported autoserv.py from source (no .pyc: PYTHONDONTWRITEBYTECODE,
    a read-only checkout) keeps the compiler's high-water mark, free but
    mapped (about 20 MB here), and every fork copied its page tables (a
    parallel_simple of 16 tasks that do nothing: 28.5 ms, 23.2 ms trimmed)."""
    if _TRIMMED:
        return
    _TRIMMED.append(os.getpid())
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, ImportError):
        pass


_TRIMMED = []


def _task_label(func):
    """What a task runs, for its status group: Autotest.run, install, ..."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not name:
        return "task"
    name = name.replace(".<locals>", "")
    return "task" if name.endswith("<lambda>") else name


def _task_ended(task):
    """Writes the task's status group whole (START, its own entries one level
    deeper, END with the worst of them) and gives its hosts their outcome."""
    body = task.take_status()
    try:
        entries = parse_status_log(body)
    except ValueError as e:
        LOG.write(f"task {task.name}: its status log does not parse ({e}); "
                  "replaced by a WARN")
        body = _status_line("WARN", None, task.label, f"unparsable status entries: {e}")
        entries = parse_status_log(body)
    codes = [e["code"] for e in entries]
    error = output = added = ""
    if task.error:
        exc = task.error[0]
        stop = isinstance(exc, (KeyboardInterrupt, _Terminated))
        error = task.stop_reason or (_cause(exc) if exc is not None
                                     else _last_line(task.error[1]))
        output = _output_tail(exc)
        code = "ABORT" if task.stopped or stop else "FAIL"
        added = _end_open_groups(entries, code) + _status_line(code, None, task.label,
                                                               error)
        codes.append(code)
        if task.subdir:
            _task_file(task, "traceback", task.error[1])
    if task.subdir:       # the subdir's own status.log ends as the job's copy does
        _task_file(task, "../status.log", added, append=True)
    body += added
    worst = task.status = worst_status(*codes)
    if not error and worst != "GOOD":
        error = next((f"{e['operation']}: {_last_line(e['message'])}"
                      for e in entries if worst_status(e["code"]) == worst
                      and not e["code"].startswith("END ")), "")
    if _JOB is None:
        return
    sub = task.subdir and os.path.basename(task.subdir)
    text = (_status_line("START", sub, task.label, task.title, when=task.wall_started)
            + "".join("\t" + line + "\n" for line in body.split("\n") if line)
            + _status_line(f"END {worst}", sub, task.label, task.title))
    _JOB.status.relay(text)
    records = dict(task.host_records)
    if sub and sub not in records:   # a task on user@host:port: its host is the machine
        try:
            name = parse_machine(sub)[1]
        except AutoservUsageError:
            name = None
        if name in records:
            records[sub] = records.pop(name)
    _JOB.merge_host_records(records)
    span = [task.wall_started or time.time(), time.time()]
    for name in ([sub] if sub else []) + task.host_names():
        _JOB.host_status(name, worst, error, span, output)


def _task_file(task, name, text, append=False):
    """Writes text to a file in the task's subdir's debug/ (a name with ../
    reaches the subdir itself)."""
    try:
        with open(os.path.join(task.subdir, "debug", name), "a" if append else "w",
                  encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except OSError as e:
        LOG.write(f"task {task.name}: could not write its {name}: {e}")


def _pump(sel, wait):
    """One round of the parallel selector: hand what the children wrote to
    their tasks; close the pipes they have closed."""
    for key, _ in sel.select(wait):
        try:
            data = os.read(key.fd, READ_SIZE)
        except OSError:
            data = b""
        if data:
            key.data.collect(key.fd, data)
        else:
            sel.unregister(key.fd)
            os.close(key.fd)
            del key.data.fds[key.fd]


def _stop_tasks(running, sel, reason=None, grace=8.0):
    """TERM every running child (each then ends its ssh and remote commands),
    KILL what is left after the grace, reap them all: no zombies."""
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while running and time.monotonic() < end:
        _pump(sel, 0.1)
        for pid, task in list(running.items()):
            if task.process.exitcode is not None:
                _drain_task(task, sel)
                task.finish()
                task.stop_reason = reason or ""
                if reason:
                    task.error = (None, f"task {task.name} {reason}" + (
                        f"\n{task.error[1]}" if task.error else ""))
                running.pop(pid)
                _stopped(task)
    for pid, task in list(running.items()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        task.process.join()
        _drain_task(task, sel)
        task.finish()
        task.stop_reason = f"{reason or 'stopped'} (killed)"
        task.error = (None, f"task {task.name} {reason or 'was stopped'} (killed)")
        running.pop(pid)
        _stopped(task)


def _stopped(task):
    task.stopped = task.error is not None     # one that ended well as it was stopped is GOOD
    try:
        _task_ended(task)
    except Exception as e:     # the stop goes on whatever the log says
        LOG.write(f"task {task.name}: could not record its end: {e}")


def _drain_task(task, sel):
    for fd in list(task.fds):
        try:
            sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            while True:
                data = os.read(fd, READ_SIZE)
                if not data:
                    break
                task.collect(fd, data)
        except OSError:
            pass
        os.close(fd)
        del task.fds[fd]


def _results_here():
    """Where parallel_simple(log=True) puts its tasks' subdirs: the working
    directory when it is inside the job's results dir (a control file runs
    there, a task in its own subdir), else the results dir of the job a
    script made ("." for the working directory: a task's name stays its
    subdir's); None outside a job (no subdirs: a script's working directory
    is not a results dir)."""
    if _JOB is None:
        return None
    here, top = os.getcwd(), os.path.realpath(_JOB.resultdir)
    inside = os.path.realpath(here) == top or \
        os.path.realpath(here).startswith(top + os.sep)
    return "." if inside else _JOB.resultdir


def parallel_simple(function: Callable[[Any], Any], arglist: Sequence[Any], log: bool = True,
                    timeout: Optional[float] = None,
                    return_results: bool = False) -> Optional[List[Any]]:
    """function(arg) for every arg at once; with log, each named after the
    argument (a host: its host name) in its output's prefix and, in a job,
    its results subdir."""
    arglist = list(arglist)
    if not arglist:
        return [] if return_results else None
    tasks = []
    seen = set()
    where = _results_here() if log else None
    for arg in arglist:
        name = subdir = None
        if log:
            name = _safe_name(getattr(arg, "hostname", None) or arg)
            base, n = name, 1
            while name in seen:
                n += 1
                name = f"{base}.{n}"
            seen.add(name)
        if where:
            subdir = name if where == "." else os.path.join(where, name)
        tasks.append(subcommand(function, [arg], subdir))
        if name and not subdir:
            tasks[-1].name = name        # no results dir: its output is still named so
    return parallel(tasks, timeout=timeout, return_results=return_results,
                    prefix_output=True)


# Power controllers and consoles ###############################################

class PowerController:
    """The power interface every controller has (module ``power``; a host
    uses one through power=, host.power_on/off/cycle() and hardreset()).
    A controller that cannot do one of these says so with
    AutoservNotImplementedError naming itself, what it cannot do and why
    (its `lacks` text); it never lacks the method."""

    lacks = "this controller has no such operation"

    def _cannot(self, what, why=None):
        raise AutoservNotImplementedError(f"{type(self).__name__} cannot {what}: "
                                          f"{why or self.lacks}")

    def on(self) -> Any:
        """Powers the machine on.  Raises AutoservHostError when the
        controller fails, AutoservNotImplementedError when it cannot."""
        self._cannot("power on")

    def off(self) -> Any:
        """Powers the machine off (hard: no shutdown).  Raises as on()."""
        self._cannot("power off")

    def cycle(self) -> Any:
        """Off, then on again.  Raises as on()."""
        self._cannot("power cycle")

    def reset(self) -> Any:
        """A hard reset (what host.hardreset() uses); a power cycle unless
        the controller has a reset of its own.  Raises as on()."""
        return self.cycle()

    def status(self) -> str:
        """The power state, "on" or "off".  Raises as on()."""
        self._cannot("report power status")


class CommandPower(PowerController):
    """A power controller made of local shell commands (on=, off=, cycle=,
    status=: "on" when the status command exits 0, else "off")."""

    _WHAT = {"on": "power on", "off": "power off", "cycle": "power cycle",
             "status": "report power status"}

    def __init__(self, on=None, off=None, cycle=None, timeout=120, status=None):
        self.commands = {"on": on, "off": off, "cycle": cycle, "status": status}
        self.timeout = timeout

    def _do(self, what, ignore_status=False):
        command = self.commands[what]
        if command is None:
            if what == "cycle" and self.commands["on"] and self.commands["off"]:
                self._do("off")
                return self._do("on")
            self._cannot(self._WHAT[what], f"no {what}= command was given")
        return LocalHost().run(command, timeout=self.timeout, ignore_status=ignore_status)

    def on(self):
        return self._do("on")

    def off(self):
        return self._do("off")

    def cycle(self):
        return self._do("cycle")

    def status(self):
        return "off" if self._do("status", ignore_status=True).exit_status else "on"


def _conmux_client(client, target, stdout):
    env = dict(os.environ)
    env.setdefault("LOGNAME", env.get("USER") or "autoserv")   # conmux wants a user
    return _popen([client, target], stdin=PIPE, stdout=stdout,
                  stderr=_subprocess().STDOUT, env=env)


def _end_client(proc):
    """Ends a conmux client: it exits when its stdin closes; KILL after 5 s."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(5)
    except _subprocess().TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _conmux_command(client, target, command, label, confirm=None, timeout=30):
    """Sends ~$command through a conmux client and waits for conmux's
    confirmation line (for hardreset: "... hard reset")."""
    import selectors
    confirm = confirm or command.replace("hard", "hard ").encode()
    proc = _conmux_client(client, target, PIPE)
    seen = b""
    try:
        proc.stdin.write(b"~$" + command.encode() + b"\n")
        proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            end = time.monotonic() + timeout
            while confirm not in seen and time.monotonic() < end:
                if sel.select(0.2):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    seen += chunk
    finally:
        _end_client(proc)
        proc.stdout.close()
    if confirm not in seen:
        raise AutoservHostError(label, f"conmux {command} was not confirmed",
                                _decode(seen[-300:]).strip() or f"no answer from {target}")
    LOG.write(f"conmux {command} on {target}", label)


def _conmux_program(attach, who):
    """The conmux client to run: attach, else conmux-console (Debian), else
    console (upstream); AutoservUsageError naming who when there is none."""
    client = attach or shutil.which("conmux-console") or shutil.which("console")
    if not client or not (os.path.isfile(client) or shutil.which(client)):
        raise AutoservUsageError(f"{who}: no conmux client (conmux-console or console): "
                                 "install conmux")
    return client


class ConmuxConsole:
    """A machine's console behind conmux, captured: with logfilename, a
    client stays attached (stdin kept open: it exits on EOF) until close(),
    appending everything the machine prints to that file, reboots and
    panics included.  target: "host:port" or "server/name"; attach: the
    client program."""

    def __init__(self, target, attach=None, logfilename=None, label=None):
        self.target = target
        self.client = _conmux_program(attach, f"ConmuxConsole({target!r})")
        self.logfilename = logfilename
        self.label = label or target
        self._proc = None
        self._owner = None
        if logfilename:
            with open(logfilename, "ab") as log:
                self._proc = _conmux_client(self.client, target, log)
            self._owner = os.getpid()
            LOG.write(f"console {target} captured in {logfilename}", self.label)

    def __repr__(self):
        return f"<ConmuxConsole {self.target}>"

    def close(self):
        """Ends the capture (only in the process that started it)."""
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            _end_client(proc)


class ConmuxSSHHost(SSHHost):
    """An SSH host whose console is behind conmux: its power controller
    (unless power= is given) is a ConmuxPower, so hardreset() issues conmux's
    hardreset command, and its console (unless console= is given) is a
    ConmuxConsole capturing the whole job into <results>/<host>/console.log
    (or logfilename), reboots and panics included.

    server: where the console is, "host:port" (a numeric listener) or a
    conmux registry host (the console is then server/hostname); attach: the
    client program (default conmux-console, upstream's console)."""

    def __init__(self, hostname, logfilename=None, server=None, attach=None, **kwargs):
        client = _conmux_program(attach, f"ConmuxSSHHost({hostname!r})")
        super().__init__(hostname, **kwargs)
        self._init_kwargs.update(logfilename=logfilename, server=server, attach=attach)
        self.console_client = client
        if server and (":" in server or "/" in server):
            self.console_target = server
        else:
            self.console_target = f"{server or 'localhost'}/{self.hostname}"
        if self.power is None:
            self.power = ConmuxPower(self.console_target, attach=client, label=self.hostname)
        self._own_console = None
        if self.console is None:
            if logfilename is None and _JOB is not None:
                folder = os.path.join(_JOB.resultdir, _safe_name(self.hostname))
                os.makedirs(folder, exist_ok=True)
                logfilename = os.path.join(folder, "console.log")
            self.console = self._own_console = ConmuxConsole(
                self.console_target, attach=client, logfilename=logfilename,
                label=self.hostname)
        self.console_log = logfilename

    def close(self) -> None:
        super().close()
        if self._own_console is not None:       # a console= given is its owner's
            self._own_console.close()


class ConmuxPower(PowerController):
    """Power through a conmux console's hardreset command (cycle and reset).
    conmux has no power on, off or status: those raise
    AutoservNotImplementedError.  label: the name its errors and log lines
    carry (default: target)."""

    lacks = "conmux offers only hardreset (use cycle or reset)"

    def __init__(self, target, attach=None, label=None):
        self.target = target
        self.client = _conmux_program(attach, "ConmuxPower")
        self.label = label or target

    def __repr__(self):
        return f"<ConmuxPower {self.target}>"

    def cycle(self):
        _conmux_command(self.client, self.target, "hardreset", self.label)

    reset = cycle


class QMPPower(PowerController):
    """A QEMU guest's power through its QMP socket on host: off = stop
    (frozen), on and cycle = system_reset and cont (a fresh boot, running),
    reset = system_reset alone (QEMU's reset of its own, what hardreset()
    uses: like a reset button, it does not start a guest that is off)."""

    def __init__(self, socket_path, host=None):
        self.socket_path = socket_path
        self.host = host or LocalHost()

    def __repr__(self):
        return f"<QMPPower {self.host.hostname}:{self.socket_path}>"

    def _qmp(self, *commands):
        return qmp(self.host, self.socket_path, *[{"execute": c} for c in commands])

    def on(self):
        self._qmp("system_reset", "cont")

    def off(self):
        self._qmp("stop")

    def cycle(self):
        self._qmp("system_reset", "cont")

    def reset(self):
        self._qmp("system_reset")

    def status(self):
        return "on" if self._qmp("query-status")[0].get("running") else "off"


class IPMIPower(PowerController):
    """A BMC through ipmitool (lanplus).  The password travels in the
    environment (-E) or a file (-f), never on a command line, and is never
    logged.  cipher suite 3 by default: without -C every call takes 10 s."""

    def __init__(self, bmc, user="admin", password=None, password_file=None, port=623,
                 interface="lanplus", cipher=3, timeout=30):
        self.bmc, self.user, self.port = bmc, user, int(port)
        self.interface, self.cipher, self.timeout = interface, cipher, timeout
        self._password = password
        self.password_file = password_file
        if password is None and password_file is None and "IPMI_PASSWORD" not in os.environ:
            raise AutoservUsageError("IPMIPower: give password=, password_file= or set "
                                     "IPMI_PASSWORD in the environment")

    def __repr__(self):
        return f"<IPMIPower {self.user}@{self.bmc}:{self.port}>"

    def _argv(self, *words):
        argv = ["ipmitool", "-I", self.interface, "-H", self.bmc, "-p", str(self.port),
                "-U", self.user]
        if self.cipher is not None:
            argv += ["-C", str(self.cipher)]
        argv += ["-f", self.password_file] if self.password_file else ["-E"]
        return argv + list(words)

    def _ipmitool(self, *words):
        if shutil.which("ipmitool") is None:
            raise AutoservHostError(self.bmc, "ipmitool is not installed",
                                    "install the ipmitool package")
        env = dict(os.environ)
        if self._password is not None:
            env["IPMI_PASSWORD"] = self._password
        LOG.write("ipmitool " + " ".join(words), f"bmc {self.bmc}")
        ex = _Execution(self._argv(*words), f"bmc {self.bmc}", timeout=self.timeout, env=env)
        ex.start()
        ex.wait()
        result = ex.result(" ".join(["ipmitool"] + list(words)), self.bmc)
        if ex.timed_out or ex.returncode != 0:
            text = _last_line(result.stderr) or result.status_text()
            if "establish" in text or "password" in text.lower() or "auth" in text.lower():
                text += " (wrong user or password, or not a BMC there)"
            raise AutoservHostError(self.bmc, f"IPMI chassis {' '.join(words[2:])} failed", text)
        return result.stdout.strip()

    def on(self):
        return self._ipmitool("chassis", "power", "on")

    def off(self):
        return self._ipmitool("chassis", "power", "off")

    def cycle(self):
        return self._ipmitool("chassis", "power", "cycle")

    def reset(self):
        return self._ipmitool("chassis", "power", "reset")

    def status(self):
        return "on" if self._ipmitool("chassis", "power", "status").endswith("on") else "off"


class RedfishPower(PowerController):
    """A BMC through Redfish (urllib + JSON): ComputerSystem.Reset actions.
    HTTPS is verified against ca_file (or the system store) unless
    verify=False; the password (argument or password_file) goes only into the
    Authorization header and is never logged."""

    RESET = {"on": "On", "off": "ForceOff", "cycle": "PowerCycle", "reset": "ForceRestart"}

    def __init__(self, url, user=None, password=None, password_file=None, system=None,
                 verify=True, ca_file=None, timeout=30):
        self.url = url.rstrip("/")
        self.user = user
        if password is None and password_file:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().strip()
        self._password = password
        self.system = system
        self.verify, self.ca_file, self.timeout = verify, ca_file, timeout

    def __repr__(self):
        return f"<RedfishPower {_redact_url(self.url)}>"

    def _request(self, path, body=None):
        """One call to the BMC.  Credentials go to the BMC's own origin only:
        an absolute path (an @odata.id) or a redirect to any other scheme,
        host or port is an error naming that URL."""
        import base64
        import ssl
        import urllib.error
        url = path if re.match(r"(?i)^[a-z][a-z0-9+.-]*:", path) else self.url + path
        shown = _redact_url(url)
        method = "POST" if body is not None else "GET"
        if _origin(url) != _origin(self.url):
            raise AutoservHostError(_redact_url(self.url), f"Redfish {method} {shown} refused",
                                    "not the BMC's origin (scheme, host and port): "
                                    "credentials go nowhere else")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.user is not None:
            token = base64.b64encode(f"{self.user}:{self._password or ''}".encode()).decode()
            headers["Authorization"] = "Basic " + token
        context = None
        if url.lower().startswith("https:"):
            context = ssl.create_default_context(cafile=self.ca_file)
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        LOG.write(f"redfish {method} {shown}")
        try:
            with _urlopen(url, data=data, method=method, headers=headers,
                          timeout=self.timeout, context=context, same_origin=True) as resp:
                text = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            e.close()               # the error's response holds the connection
            reason = "authentication failed" if e.code in (401, 403) else e.reason
            raise AutoservHostError(_redact_url(self.url), f"Redfish {method} {shown} failed",
                                    f"HTTP {e.code}: {reason}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise AutoservHostError(_redact_url(self.url), f"Redfish {shown} unreachable",
                                    _redact_url(getattr(e, "reason", e)))
        return json.loads(text) if text.strip() else {}

    def _system(self):
        if self.system is None:
            members = self._request("/redfish/v1/Systems").get("Members", [])
            if not members:
                raise AutoservHostError(self.url, "Redfish lists no systems")
            self.system = members[0]["@odata.id"]
        return self.system

    def _reset(self, kind):
        self._request(f"{self._system()}/Actions/ComputerSystem.Reset",
                      {"ResetType": self.RESET[kind]})

    def on(self):
        self._reset("on")

    def off(self):
        self._reset("off")

    def cycle(self):
        self._reset("cycle")

    def reset(self):
        self._reset("reset")

    def status(self):
        return "on" if self._request(self._system()).get("PowerState") == "On" else "off"


register_power("command", CommandPower)
register_power("qmp", QMPPower)
register_power("ipmi", IPMIPower)
register_power("conmux", ConmuxPower)
register_power("redfish", RedfishPower)


# Installables, kernels and the boot loader ####################################

def _looks_like_path(text):
    return ("\n" not in text and not any(q in text for q in "'\"")
            and text.startswith(("/", "./", "../", "~")))


# The userinfo of scheme://userinfo@host: up to the last @ before the host
# (a password may hold a raw / or @; better to hide too much than too little).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(\S*?)@(?=[^\s@/]*(?:[/?#\s]|$))")


def _redact_url(text):
    """text with the password of every URL in it (scheme://user:pass@host)
    replaced by ***, for logs and error messages."""
    return _USERINFO.sub(lambda m: m.group(1) + m.group(2).split(":", 1)[0]
                         + (":***@" if ":" in m.group(2) else "@"), str(text))


def _origin(url):
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), \
        port or {"http": 80, "https": 443, "ftp": 21}.get(scheme)


def _urlopen(url, data=None, method=None, headers=(), timeout=60, context=None,
             same_origin=False):
    """urlopen that takes credentials out of the URL (user:pass@ becomes an
    Authorization header) and never carries credentials to another origin
    (scheme, host, port): a redirect elsewhere while credentials are sent,
    or any with same_origin, is a URLError naming the redacted target."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers)
    if parts.username is not None and parts.scheme.lower() in ("http", "https"):
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
        netloc = parts.netloc.rsplit("@", 1)[1]
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    guarded = same_origin or "Authorization" in headers

    class Redirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, hdrs, newurl):
            if guarded and _origin(newurl) != _origin(req.full_url):
                fp.close()          # the redirect's own response, not followed
                raise urllib.error.URLError(
                    f"redirect to another origin refused ({_redact_url(req.full_url)} -> "
                    f"{_redact_url(newurl)}): credentials go only to the origin given")
            return super().redirect_request(req, fp, code, msg, hdrs, newurl)

    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(Redirect, urllib.request.HTTPSHandler(
        context=context))
    return opener.open(req, timeout=timeout)


class InstallableObject:
    """Something fetched once on the server and installable on many hosts.
    get(location): a local file or directory (also as a file:// URL), an
    http/https/ftp URL, a file object, or else the string is the content
    itself.  Credentials in a URL are never logged nor shown in errors."""

    def __init__(self):
        self.source_material = None

    def get(self, location):
        if location is None:
            raise AutoservUsageError(f"{type(self).__name__}.get(): no location given")
        if hasattr(location, "read"):
            data = location.read()
            self.source_material = self._keep(data.encode() if isinstance(data, str) else data)
            return self.source_material
        location = os.fspath(location)
        if re.match(r"(?i)^file://", location):
            import urllib.parse
            import urllib.request
            parts = urllib.parse.urlsplit(location)
            if parts.netloc not in ("", "localhost"):
                raise AutoservInstallError(f"{type(self).__name__}.get({location!r}): a "
                                           "file:// URL names a file on this machine")
            location = urllib.request.url2pathname(parts.path)
            if not os.path.exists(location):
                raise AutoservInstallError(f"{type(self).__name__}.get({location!r}): no "
                                           "such file or directory")
        if re.match(r"(?i)^(https?|ftp)://", location):
            self.source_material = self._download(location)
        elif os.path.exists(os.path.expanduser(location)):
            self.source_material = os.path.abspath(os.path.expanduser(location))
        elif _looks_like_path(location):
            raise AutoservInstallError(f"{type(self).__name__}.get({location!r}): no such "
                                       "file or directory (a path that does not exist is "
                                       "not taken as content)")
        else:
            self.source_material = self._keep(location.encode("utf-8", "surrogateescape"))
        LOG.write(f"{type(self).__name__}: got {_redact_url(repr(location))} -> "
                  f"{self.source_material}")
        return self.source_material

    @staticmethod
    def _keep(data, name="content"):
        path = os.path.join(get_tmp_dir(), name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    @_watched("downloading", limit=None)
    def _download(self, url):
        import urllib.error
        shown = _redact_url(url)
        name = os.path.basename(shown.split("?", 1)[0].rstrip("/")) or "download"
        path = os.path.join(get_tmp_dir(), name)
        LOG.write(f"fetching {shown}")
        try:
            with _urlopen(url, timeout=60) as response, open(path, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done, last = 0, time.monotonic()
                # read1: what has come so far (read() would wait for the whole MiB)
                read = getattr(response, "read1", response.read)
                while True:
                    block = read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    _progress_add(len(block), total)
                    if time.monotonic() - last > 2:
                        last = time.monotonic()
                        LOG.write(f"fetching {shown}: {done}" + (f"/{total}" if total else "")
                                  + " bytes")
        except urllib.error.HTTPError as e:
            e.close()
            _remove_quietly(path)
            raise AutoservInstallError(f"fetching {shown} failed: HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            _remove_quietly(path)
            raise AutoservInstallError(f"fetching {shown} failed: "
                                       f"{_redact_url(getattr(e, 'reason', e))}")
        return path

    def install(self, host, **kwargs):
        raise NotImplementedError


def _ar_members(path):
    """(name, offset, size) of each member of an ar archive (a .deb)."""
    members = []
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AutoservInstallError(f"{path}: not a .deb (no ar header)")
        while True:
            header = f.read(60)
            if not header:
                break
            if len(header) < 60 or header[58:60] != b"`\n":
                raise AutoservInstallError(f"{path}: truncated or corrupt .deb")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            if not re.fullmatch(r"[A-Za-z0-9_.+~-]*", name):
                raise AutoservInstallError(f"{path}: refused: member name {name!r} is not "
                                           "a plain file name")
            try:
                size = int(header[48:58])
            except ValueError:
                raise AutoservInstallError(f"{path}: truncated or corrupt .deb")
            members.append((name, f.tell(), size))
            f.seek(size + (size & 1), 1)
    return members


class _PathGuard:
    """Refuses archive members that would land outside the extraction dir:
    absolute names, '..' components, or a path through a symlink the
    archive made earlier."""

    def __init__(self, path):
        self.path = path
        self.links = set()

    def check(self, name, is_link=False):
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise AutoservInstallError(f"{self.path}: refused: the package writes "
                                       f"{name!r}, outside the directory it unpacks into")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.links:
                raise AutoservInstallError(f"{self.path}: refused: the package writes "
                                           f"{name!r} through its own symlink "
                                           f"{'/'.join(parts[:i])!r}")
        if is_link:
            self.links.add("/".join(parts))


def _remote_sha256(path):
    """Shell that prints a file's sha256 on a target: sha256sum, else python3."""
    q = shlex.quote(path)
    return (f"if command -v sha256sum >/dev/null; then sha256sum {q}; else python3 -c "
            f"'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],\"rb\").read())"
            f".hexdigest())' {q}; fi")


class _Slice(io.RawIOBase):
    """A read-only window on part of a file."""

    def __init__(self, f, offset, size):
        self.f, self.left = f, size
        f.seek(offset)

    def readable(self):
        return True

    def readinto(self, buf):
        n = self.f.readinto(memoryview(buf)[:min(len(buf), self.left)])
        self.left -= n
        return n


def _open_tar_member(path, name):
    import tarfile
    f = open(path, "rb")
    for member, offset, size in _ar_members(path):
        if member == name:
            stream = io.BufferedReader(_Slice(f, offset, size), 1 << 20)
            comp = name.rsplit(".", 1)[-1]
            if comp == "zst":
                try:
                    # Standard library from Python 3.14 on; probed, since
                    # older versions do not list it among their modules.
                    import importlib
                    zstd = importlib.import_module("compression.zstd")
                except ImportError:
                    f.close()
                    return None
                stream = zstd.ZstdFile(stream)
                return tarfile.open(fileobj=stream, mode="r|"), f
            # The compression modules check their streams' CRCs (tarfile's
            # own gz reader does not), so a flipped byte is found.
            if comp == "gz":
                import gzip
                stream = gzip.GzipFile(fileobj=stream, mode="rb")
            elif comp == "xz":
                import lzma
                stream = lzma.LZMAFile(stream)
            elif comp == "bz2":
                import bz2
                stream = bz2.BZ2File(stream)
            elif comp != "tar":
                f.close()
                raise AutoservInstallError(f"{path}: unknown compression of {name}")
            return tarfile.open(fileobj=stream, mode="r|"), f
    f.close()
    return None


class DEBKernel(InstallableObject):
    """A kernel packaged as .deb.  Names are read from the package itself in
    pure Python (ar + tar), so the server needs no dpkg."""

    def __init__(self):
        super().__init__()
        self._info = None

    def _package(self):
        if not self.source_material:
            raise AutoservUsageError("DEBKernel: call get(package) first")
        return self.source_material

    def _scan(self):
        if self._info is not None:
            return self._info
        path = self._package()
        members = [m[0] for m in _ar_members(path)]
        data = next((m for m in members if m.startswith("data.tar")), None)
        control = next((m for m in members if m.startswith("control.tar")), None)
        if not data or not control:
            raise AutoservInstallError(f"{path}: not a .deb (no control/data members)")
        info = {"package": None, "version": None, "release": None}
        opened = _open_tar_member(path, control)
        if opened is None:
            info.update(self._dpkg_fields(path))
        else:
            tar, f = opened
            with f, tar:
                for member in tar:
                    if member.name.lstrip("./") == "control":
                        text = tar.extractfile(member).read().decode("utf-8", "replace")
                        fields = dict(re.findall(r"^(\S+):\s*(.*)$", text, re.M))
                        info["package"] = fields.get("Package")
                        info["version"] = fields.get("Version")
                        break
        opened = _open_tar_member(path, data)
        if opened is None:        # zstd before Python 3.14: ask dpkg-deb
            listing = _subprocess().run(["dpkg-deb", "-c", path], capture_output=True,
                                        text=True).stdout
            m = re.search(r"\./boot/(?:vmlinuz|vmlinux|bzImage)-(\S+)", listing)
            info["release"] = m.group(1) if m else None
        else:
            tar, f = opened
            try:
                with f, tar:
                    for member in tar:
                        name = member.name.lstrip(".")
                        m = re.fullmatch(r"/boot/(?:vmlinuz|vmlinux|bzImage)-(.+)", name)
                        if m:
                            info["release"] = m.group(1)
                            break
            except _decode_errors() as e:
                raise AutoservInstallError(f"{path}: corrupt package data ({e})")
        if not info["release"]:
            raise AutoservInstallError(f"{path}: the package holds no /boot/vmlinuz-*: "
                                       "not a kernel package")
        self._info = info
        return info

    @staticmethod
    def _dpkg_fields(path):
        out = _subprocess().run(["dpkg-deb", "-f", path, "Package", "Version"],
                                capture_output=True, text=True)
        fields = dict(re.findall(r"^(\S+):\s*(.*)$", out.stdout, re.M))
        return {"package": fields.get("Package"), "version": fields.get("Version")}

    def get(self, location):
        self._info = None
        return super().get(location)

    def get_version(self):
        """The kernel release uname -r will print once it boots."""
        return self._scan()["release"]

    def get_package_version(self):
        return self._scan()["version"]

    def get_package_name(self):
        return self._scan()["package"]

    def get_image_name(self):
        return f"/boot/vmlinuz-{self.get_version()}"

    def get_initrd_name(self):
        return f"/boot/initrd.img-{self.get_version()}"

    def extract(self, host):
        """Unpacks the package's files into a temp dir on host; returns it.
        Only the data member travels (the host needs tar, not dpkg)."""
        path = self._package()
        self.get_version()
        data = next(m for m in _ar_members(path) if m[0].startswith("data.tar"))
        opened = _open_tar_member(path, data[0])
        if opened is not None:        # zstd before Python 3.14: tar's own checks
            tar, f = opened
            guard = _PathGuard(path)
            try:
                with f, tar:
                    for member in tar:
                        guard.check(member.name, member.issym())
                        if member.islnk():
                            guard.check(member.linkname)
            except _decode_errors() as e:
                raise AutoservInstallError(f"{path}: corrupt package data ({e})")
        local = os.path.join(get_tmp_dir(), data[0])
        with open(path, "rb") as src, open(local, "wb") as out:
            src.seek(data[1])
            left = data[2]
            while left:
                block = src.read(min(left, 1 << 20))
                if not block:
                    raise AutoservInstallError(f"{path}: truncated package")
                out.write(block)
                left -= len(block)
        remote = host.get_tmp_dir()
        q = shlex.quote(f"{remote}/data.tar")
        root = shlex.quote(f"{remote}/root")
        host.send_file(local, f"{remote}/data.tar")
        host.run(f"mkdir {root} && tar -xf {q} -C {root} && rm -f {q}", timeout=600)
        return f"{remote}/root"

    def verify(self):
        """Reads both tar members to their end: a truncated or corrupt
        package fails here, before anything is sent."""
        path = self._package()
        self.get_version()
        for name, _, _ in _ar_members(path):
            if not name.startswith(("control.tar", "data.tar")):
                continue
            opened = _open_tar_member(path, name)
            if opened is None:
                out = _subprocess().run(["dpkg-deb", "--fsys-tarfile", path],
                                        stdout=_subprocess().DEVNULL,
                                        stderr=_subprocess().PIPE)
                if out.returncode:
                    raise AutoservInstallError(f"{path}: corrupt package "
                                               f"({out.stderr.decode(errors='replace').strip()})")
                continue
            tar, f = opened
            try:
                with f, tar:
                    for member in tar:
                        if member.isfile():
                            data = tar.extractfile(member)
                            while data.read(1 << 20):
                                pass
                    while tar.fileobj.read(1 << 20):      # to the end: the CRC check
                        pass
            except _decode_errors() as e:
                raise AutoservInstallError(f"{path}: truncated or corrupt package ({name}: {e})")

    def _send_checked(self, host, suffix):
        """Sends the package to a temp dir on host under a fixed name (so
        spaces or a leading '-' in the local name cannot reach a command
        line) and checks its sha256 there; returns the remote path."""
        path = self._package()
        remote = f"{host.get_tmp_dir()}/package{suffix}"
        host.send_file(path, remote)
        digest = _sha256_file(path)
        check = host.run(_remote_sha256(remote), timeout=300, ignore_status=True)
        if digest not in check.stdout:
            raise AutoservInstallError(f"{host.hostname}: the package arrived damaged "
                                       f"(sha256 differs); nothing was installed")
        return remote

    def _initrd(self, host, version, name):
        """The initrd the package's scripts made, or one made now with the
        distro's tool (update-initramfs, mkinitramfs, dracut); None with a
        WARN when none can (kernels with their root drivers built in boot
        without one)."""
        names = list(dict.fromkeys([name, f"/boot/initrd.img-{version}",
                                    f"/boot/initramfs-{version}.img"]))
        probe = " || ".join(f"{{ test -s {shlex.quote(n)} && echo {shlex.quote(n)}; }}"
                            for n in names)

        def existing():
            return host.run(probe, ignore_status=True).stdout.strip() or None
        found = existing()
        if found:
            return found
        q = shlex.quote(version)
        reasons = []
        for tool in (f"update-initramfs -c -k {q}", f"mkinitramfs -o {shlex.quote(name)} {q}",
                     f"dracut -f {shlex.quote(name)} {q}"):
            if host.run(f"command -v {tool.split()[0]}", ignore_status=True).exit_status:
                continue
            out = host.run(tool, timeout=1800, ignore_status=True)
            found = existing()
            if found:
                return found
            reasons.append(f"{tool.split()[0]}: {_why(out, 1)}")
        _record("WARN", None, "kernel.install", f"{host.hostname}: no initrd for {version} ("
                + ("; ".join(reasons) or "no initramfs tool on the host") + ")")
        return None

    def _boot_entry(self, kwargs):
        """install()'s keyword arguments, checked before anything is sent:
        Bootloader.add_kernel()'s (title=, or label= as the original called
        it; root=, args=, initrd=, default=, boot_once=, position=).  Any
        other is an AutoservArgumentError naming it."""
        import inspect
        known = set(inspect.signature(Bootloader.add_kernel).parameters) - {"self", "path"}
        _refuse_keywords(f"{type(self).__name__}.install()", set(kwargs) - known - {"label"},
                         f" (it takes {', '.join(sorted(known))} for the boot entry)")
        entry = dict(kwargs)
        label = entry.pop("label", None)
        entry["title"] = entry.get("title") or label or "autoserv"
        return entry

    def _add_to_bootloader(self, host, title, default=True, boot_once=False, **entry):
        version = self.get_version()
        image = self.get_image_name()
        if host.run(f"test -f {shlex.quote(image)}", ignore_status=True).exit_status:
            raise AutoservInstallError(f"{host.hostname}: the package installed no {image}")
        if "initrd" not in entry:         # the caller's own initrd (or None: none)
            entry["initrd"] = self._initrd(host, version, self.get_initrd_name())
        host.bootloader.add_kernel(image, title=title, default=default and not boot_once,
                                   boot_once=boot_once, **entry)
        if default or boot_once:       # only a kernel meant to boot next is checked
            host.expect_kernel_at_next_boot(version, title)
        _record("GOOD", None, "kernel.install",
               f"{host.hostname}: {version} as {title!r}"
               + (" (boot once)" if boot_once else " (default)" if default else ""))

    @_watched("installing the kernel", limit=None, host="host")
    def install(self, host, **bootloader_args):
        """Installs the package on host (dpkg -i), makes sure an initrd
        exists when a tool can make one, and adds a boot entry: the default
        (default=True), or booted once (boot_once=True, the old default stays);
        title=, args=, root=, initrd=, position= go to the bootloader's
        add_kernel() (an unknown keyword is refused by name before anything
        is sent).  The next host.reboot() checks that uname -r prints
        get_version()."""
        entry = self._boot_entry(bootloader_args)
        self.verify()
        remote = self._send_checked(host, ".deb")
        out = host.run(f"DEBIAN_FRONTEND=noninteractive dpkg -i {remote}", timeout=3600,
                       ignore_status=True)
        if out.exit_status:
            raise AutoservInstallError(f"{host.hostname}: dpkg -i {self.get_package_name()} "
                                       f"failed: {_why(out)}")
        self._add_to_bootloader(host, **entry)


# RPM header tags read here (rpm's lib/rpmtag.h numbers).
_RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1022: "arch", 1027: "oldfilenames",
             1116: "dirindexes", 1117: "basenames", 1118: "dirnames", 1124: "payloadformat",
             1125: "payloadcompressor", 5092: "payloaddigest", 5093: "payloaddigestalgo"}
_RPM_SIG_SIZE, _RPM_SIG_MD5, _RPM_SIG_LONGSIZE = 1000, 1004, 270


def _rpm_header(f, path, pad):
    """One header structure at the file's position: {tag: value}."""
    import struct
    intro = f.read(16)
    if len(intro) < 16 or intro[:4] != b"\x8e\xad\xe8\x01":
        raise AutoservInstallError(f"{path}: not an RPM or truncated (bad header magic)")
    count, size = struct.unpack(">II", intro[8:16])
    if count > 100000 or size > 256 << 20:
        raise AutoservInstallError(f"{path}: corrupt RPM header")
    index = f.read(16 * count)
    store = f.read(size)
    if len(index) < 16 * count or len(store) < size:
        raise AutoservInstallError(f"{path}: truncated RPM header")
    if pad:
        f.read((8 - (16 + 16 * count + size) % 8) % 8)
    values = {}
    for i in range(count):
        tag, kind, offset, n = struct.unpack(">IIII", index[16 * i:16 * i + 16])
        if offset > size:
            raise AutoservInstallError(f"{path}: corrupt RPM header (entry past its end)")
        if kind in (6, 8, 9):                            # strings
            items, at = [], offset
            for _ in range(n if kind != 6 else 1):
                end = store.find(b"\0", at)
                if end < 0:
                    raise AutoservInstallError(f"{path}: corrupt RPM header (string)")
                items.append(store[at:end].decode("utf-8", "replace"))
                at = end + 1
            values[tag] = items[0] if kind == 6 else items
        elif kind == 4:
            values[tag] = list(struct.unpack(f">{n}I", store[offset:offset + 4 * n]))
        elif kind == 5:
            values[tag] = list(struct.unpack(f">{n}Q", store[offset:offset + 8 * n]))
        elif kind == 7:
            values[tag] = store[offset:offset + n]
    return values, 16 + 16 * count + size


class RPMKernel(DEBKernel):
    """A kernel packaged as .rpm.  Name, version, release and the file list
    come from the RPM header in pure Python (the server needs no rpm)."""

    def _scan(self):
        if self._info is not None:
            return self._info
        path = self._package()
        with open(path, "rb") as f:
            lead = f.read(96)
            if len(lead) < 96 or lead[:4] != b"\xed\xab\xee\xdb":
                raise AutoservInstallError(f"{path}: not an RPM (no lead)")
            sig, _ = _rpm_header(f, path, pad=True)
            start = f.tell()
            header, _ = _rpm_header(f, path, pad=False)
            payload_at = f.tell()
        tags = {name: header.get(tag) for tag, name in _RPM_TAGS.items()}
        if tags["basenames"]:
            dirs = tags["dirnames"] or []
            files = [dirs[i] + b for i, b in zip(tags["dirindexes"] or [], tags["basenames"])]
        else:
            files = tags["oldfilenames"] or []
        release = None
        for name in files:
            m = re.fullmatch(r"/boot/(?:vmlinuz|vmlinux|bzImage)-(.+)", name)
            m = m or re.fullmatch(r"/lib/modules/([^/]+)/vmlinuz", name)
            if m:
                release = m.group(1)
                break
        if not release:
            raise AutoservInstallError(f"{path}: the package holds no /boot/vmlinuz-*: "
                                       "not a kernel package")
        self._info = {"package": tags["name"], "version": tags["version"],
                      "rpm_release": tags["release"], "arch": tags["arch"],
                      "release": release, "files": files, "sig": sig, "header_at": start,
                      "payload_at": payload_at, "compressor": tags["payloadcompressor"],
                      "payloaddigest": tags["payloaddigest"],
                      "digestalgo": tags["payloaddigestalgo"]}
        return self._info

    def get_package_version(self):
        info = self._scan()
        return f"{info['version']}-{info['rpm_release']}"


    def get_initrd_name(self):
        info = self._scan()
        for name in info["files"]:
            if re.fullmatch(r"/boot/init(?:rd|ramfs)[^/]*" + re.escape(info["release"]) + r".*",
                            name):
                return name
        return f"/boot/initramfs-{info['release']}.img"

    def get_files(self):
        return list(self._scan()["files"])

    def verify(self):
        """Checks size and digests from the RPM's own headers: a truncated or
        corrupt package fails here, before anything is sent."""
        import hashlib
        info = self._scan()
        path = self._package()
        sig = info["sig"]
        size = (sig.get(_RPM_SIG_LONGSIZE) or sig.get(_RPM_SIG_SIZE) or [None])[0]
        actual = os.path.getsize(path) - info["header_at"]
        if size is not None and actual != size:
            raise AutoservInstallError(f"{path}: truncated or padded RPM ({actual} bytes of "
                                       f"header and payload, the signature says {size})")
        checks = []
        if isinstance(sig.get(_RPM_SIG_MD5), bytes):
            checks.append((hashlib.md5(), info["header_at"], sig[_RPM_SIG_MD5].hex()))
        if info["payloaddigest"] and (info["digestalgo"] or [8])[0] == 8:
            checks.append((hashlib.sha256(), info["payload_at"], info["payloaddigest"][0]))
        with open(path, "rb") as f:
            for digest, offset, want in checks:
                f.seek(offset)
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                if digest.hexdigest() != want.lower():
                    raise AutoservInstallError(f"{path}: corrupt RPM ({digest.name} differs "
                                               "from the package's own)")

    def _check_payload(self):
        """Walks the payload's cpio (newc) headers: a member outside the
        extraction dir is refused here, before anything is sent.  A payload
        Python cannot decompress (zstd before 3.14) is left to cpio's own
        --no-absolute-filenames."""
        import bz2
        import gzip
        info, path = self._scan(), self._package()
        openers = {"gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "bzip2": bz2.BZ2File}
        try:
            import lzma
            openers.update(xz=lzma.LZMAFile, lzma=lzma.LZMAFile)
        except ImportError:
            pass
        opener = openers.get(info["compressor"] or "gzip")
        if opener is None:
            return
        guard = _PathGuard(path)
        with open(path, "rb") as raw:
            raw.seek(info["payload_at"])
            try:
                with opener(raw) as f:
                    while True:
                        header = f.read(110)
                        if header[:6] not in (b"070701", b"070702") or len(header) < 110:
                            if header[:6] == b"07070X":   # names come from the header
                                return
                            raise AutoservInstallError(f"{path}: corrupt RPM payload "
                                                       "(bad cpio header)")
                        mode, size, namesize = (int(header[6 + 8 * i:14 + 8 * i], 16)
                                                for i in (1, 6, 11))
                        name = f.read(namesize)[:namesize - 1].decode("utf-8", "replace")
                        f.read(-(110 + namesize) % 4)
                        if name == "TRAILER!!!":
                            return
                        guard.check(name, mode & 0o170000 == 0o120000)
                        f.seek(size + -size % 4, 1)
            except _decode_errors() as e:
                raise AutoservInstallError(f"{path}: corrupt RPM payload ({e})")

    def extract(self, host):
        """Unpacks the package's files into a temp dir on host (rpm2cpio and
        cpio there); returns it.  Members outside that dir are refused."""
        self._check_payload()
        remote = self._send_checked(host, ".rpm")
        q, root = shlex.quote(remote), shlex.quote(f"{remote}.root")
        host.run(f"mkdir {root} && cd {root} && rpm2cpio {q} | "
                 f"cpio -idm --quiet --no-absolute-filenames && rm -f {q}", timeout=600)
        return f"{remote}.root"

    @_watched("installing the kernel", limit=None, host="host")
    def install(self, host, **bootloader_args):
        """Installs the package with rpm, makes sure an initrd exists (the
        package's scripts, else dracut or the Debian tools), adds a boot entry
        as DEBKernel.install does."""
        entry = self._boot_entry(bootloader_args)
        self.verify()
        remote = self._send_checked(host, ".rpm")
        out = host.run(f"rpm -i --replacepkgs {remote}", timeout=3600, ignore_status=True)
        if out.exit_status:
            raise AutoservInstallError(f"{host.hostname}: rpm -i {self.get_package_name()} "
                                       f"failed: {_why(out)}")
        self._add_to_bootloader(host, **entry)


def _boottool_source():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boottool")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AutoservBootloaderError(f"boottool is not beside autoserv.py ({path}: "
                                      f"{e.strerror}): copy it there with autoserv.py")
    try:
        compile(data, path, "exec")
    except (SyntaxError, ValueError) as e:
        raise AutoservBootloaderError(f"{path} is corrupt ({e}): replace it with the copy "
                                      "that came with autoserv.py")
    return path, data


class Bootloader:
    """host.bootloader: the host's boot menu through boottool, which is
    copied to a temp dir on the host on first use and checked against its
    sha256 there before every run.  Entries are named by index or title."""

    def __init__(self, host):
        self.host = host
        self._remote = None
        self._digest = None
        self._pid = None

    def _install(self):
        if self._remote and self._pid == os.getpid():  # a forked task copies anew
            return
        import hashlib
        local, data = _boottool_source()
        if self.host.run("command -v python3", ignore_status=True,
                         timeout=60).exit_status:
            raise AutoservBootloaderError(f"{self.host.hostname}: no python3 on the host; "
                                          "boottool needs it (install python3 or "
                                          "python3-minimal there)")
        remote = f"{self.host.get_tmp_dir()}/boottool"
        self.host.send_file(local, remote)
        self._remote, self._digest, self._pid = remote, hashlib.sha256(data).hexdigest(), os.getpid()

    def run(self, *args):
        """boottool's stdout for these arguments; AutoservBootloaderError
        with boottool's own reason when it fails."""
        self._install()
        out = self._run_checked(args)
        if out.exit_status == 4:          # the copy is gone (a reboot emptied /tmp)
            self._remote = None
            self._install()
            out = self._run_checked(args)
        if out.exit_status:
            reason = (out.stderr.strip().splitlines() or [f"exit status {out.exit_status}"])[-1]
            raise AutoservBootloaderError(
                f"{self.host.hostname}: boottool {' '.join(args)}: "
                f"{reason.replace('boottool: ', '', 1)}")
        return out.stdout

    def _run_checked(self, args):
        q = shlex.quote(self._remote)
        check = (f"test -f {q} || exit 4; sum=$({_remote_sha256(self._remote)}); "
                 f"case $sum in {self._digest}*) ;; *) echo 'boottool: the copy on this host "
                 f"is corrupt (sha256 differs); nothing was changed' >&2; exit 3;; esac; ")
        command = check + "exec python3 " + q + "".join(" " + shlex.quote(a) for a in args)
        return self.host.run(command, ignore_status=True, timeout=300)

    @staticmethod
    def _parse_info(text):
        entries = []
        for line in text.splitlines():
            key, sep, value = line.partition("\t: ")
            if not sep:
                continue
            if key == "index":
                entries.append({"index": int(value)})
            elif entries:
                entries[-1][key] = value
        return entries

    def get_type(self):
        return self.run("--bootloader-probe").strip()

    def get_architecture(self):
        return self.run("--arch-probe").strip()

    def get_entries(self):
        return self._parse_info(self.run("--info=all"))

    def get_info(self, index="all"):
        """The entries (index='all') or one entry as dicts: index, title,
        kernel, args, root, initrd."""
        entries = self._parse_info(self.run(f"--info={index}"))
        return entries if str(index) == "all" else entries[0]

    def get_titles(self):
        return [e.get("title") for e in self.get_entries()]

    def get_default(self):
        return int(self.run("--default").strip())

    def get_default_title(self):
        return self.get_info(self.get_default()).get("title")

    def set_default(self, index):
        self.run(f"--set-default={index}")

    def add_kernel(self, path, title="autoserv", root=None, args=None, initrd=None,
                   default=True, boot_once=False, position="end"):
        """Adds an entry (an entry with the same title is replaced); it copies
        the default entry's command line and root unless given."""
        argv = [f"--add-kernel={path}", f"--title={title}", "--force",
                f"--position={position}"]
        if root:
            argv.append(f"--root={root}")
        if args is not None:
            argv.append(f"--args={args}")
        if initrd:
            argv.append(f"--initrd={initrd}")
        if default:
            argv.append("--make-default")
        if boot_once:
            argv.append("--boot-once")
        self.run(*argv)

    def remove_kernel(self, kernel):
        self.run(f"--remove-kernel={kernel}")

    def add_args(self, kernel, args):
        self.run(f"--update-kernel={kernel}", f"--args={args}")

    def remove_args(self, kernel, args):
        self.run(f"--update-kernel={kernel}", f"--remove-args={args}")

    def boot_once(self, title):
        self.run("--boot-once", f"--title={title}")

    def boot_once_with_args(self, entry, args, title="autoserv kernel_args"):
        """Boots entry (an index or a title; None: the default) once with
        args added to its command line: a copy titled title, never the
        default, replacing an older copy.  Returns title, for
        remove_kernel() once the host is back."""
        info = self.get_info(self.get_default() if entry is None else entry)

        def on_system(path):      # a separate /boot: the menu's paths leave it out
            return path if not path or path.startswith("/boot/") else "/boot" + path
        self.add_kernel(on_system(info["kernel"]), title=title, root=info.get("root") or None,
                        args=" ".join(filter(None, (info.get("args"), args))),
                        initrd=on_system(info.get("initrd")) or None, default=False,
                        boot_once=True)
        return title


# KVM and guests ###############################################################

def qmp(host, socket_path, *commands, timeout=30):
    """Sends QMP commands (dicts) to a QEMU monitor socket on host (through
    host.run, so a remote hypervisor works the same); returns the replies."""
    argv = " ".join(shlex.quote(a) for a in ["python3", "-c", _QMP_PY, socket_path,
                                             str(timeout)] + [json.dumps(c) for c in commands])
    out = host.run(argv, timeout=timeout + 15, ignore_status=True)
    if out.exit_status != 0:
        raise AutoservVirtError(f"{host.hostname}: QMP {socket_path}: "
                                f"{_last_line(out.stderr) or out.status_text()}")
    replies = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    for reply in replies:
        if "error" in reply:
            raise AutoservVirtError(f"QMP: {reply['error'].get('desc', reply['error'])}")
    return [r.get("return") for r in replies]


def _qemu_value(text):
    """text as the value of a qemu -option key=value list: commas doubled, as
    qemu reads a literal comma there."""
    return str(text).replace(",", ",,")


class KVM(InstallableObject):
    """A QEMU/KVM hypervisor bound to one host.  get(source) is optional (a
    QEMU source tarball or tree); install(addresses) picks the binary, the
    accelerator and, where the CPU can, the kvm modules."""

    def __init__(self, host: "Host"):
        super().__init__()
        self.host = host
        self.tree = None
        self.binary = None
        self.accel = None
        self.addresses = []
        self.in_use = {}
        self.modules_loaded = []
        self.installed = False
        _add_cleanup(self.uninstall)

    def install(self, addresses: Sequence[Dict[str, Any]], build: bool = True,
                insert_modules: bool = True) -> None:
        """addresses: [{"mac": .., "ip": ..}] (bridged/tap) or with "port"
        (user-mode networking, the guest's ssh forwarded to ip:port)."""
        checked = [self._checked_address(a) for a in addresses]
        if not checked:
            raise AutoservUsageError("KVM.install(): no addresses")
        self.addresses = checked
        h = self.host
        if self.source_material:
            self.binary = self._build(build)
        else:
            found = h.run("command -v qemu-system-x86_64", ignore_status=True, timeout=60)
            if found.exit_status != 0:
                raise AutoservVirtError(f"{h.hostname}: no qemu-system-x86_64 on the hypervisor "
                                        "(install qemu-system-x86, or give KVM.get() a source)")
            self.binary = found.stdout.strip()
        flags = h.run("grep -m1 -o -w -E 'vmx|svm' /proc/cpuinfo", ignore_status=True,
                      timeout=60).stdout.split()
        vendor = {"vmx": "kvm_intel", "svm": "kvm_amd"}.get(flags[0]) if flags else None
        if vendor and insert_modules:
            self._load_modules(vendor)
        usable = vendor and h.run("test -w /dev/kvm", ignore_status=True,
                                  timeout=60).exit_status == 0
        if usable:
            self.accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            self.accel = ["-accel", "tcg,thread=multi", "-cpu", "max"]
            why = "the CPU has no vmx/svm flag" if not vendor else "/dev/kvm is not usable"
            message = f"{h.hostname}: {why}; guests run under TCG (software emulation, slow)"
            LOG.write(message)
            if _JOB is not None:
                _JOB.record("WARN", None, "kvm.install", message)
        self.installed = True
        LOG.write(f"KVM on {h.hostname}: {self.binary} {' '.join(self.accel)}, "
                  f"{len(self.addresses)} address(es)")

    @staticmethod
    def _checked_address(a):
        """A copy of one address entry, every field checked before it can
        reach a shell or a qemu option: mac, ip (ipaddress), port
        (1-65535), tap and bridge (interface names: [A-Za-z0-9_.-], 1-15)."""
        import ipaddress
        if not isinstance(a, dict) or "mac" not in a or "ip" not in a:
            raise AutoservUsageError(f"KVM address {a!r}: needs 'mac' and 'ip' keys")
        if not isinstance(a["mac"], str) or \
                not re.fullmatch(r"(?i)[0-9a-f]{2}(:[0-9a-f]{2}){5}", a["mac"]):
            raise AutoservUsageError(f"KVM address {a!r}: bad mac")
        try:
            ip = ipaddress.ip_address(a["ip"])
        except ValueError:
            raise AutoservUsageError(f"KVM address {a!r}: ip {a['ip']!r} is not an IPv4 or "
                                     "IPv6 address")
        checked = dict(a, ip=str(ip))
        if "port" in a:
            port = a["port"]
            if isinstance(port, bool) or not isinstance(port, (int, str)) or \
                    not str(port).isdigit() or not 0 < int(port) < 65536:
                raise AutoservUsageError(f"KVM address {a!r}: port {port!r} is not 1-65535")
            checked["port"] = int(port)
        for key in ("tap", "bridge"):
            if a.get(key) is not None and (not isinstance(a[key], str) or
                                           not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", a[key])):
                raise AutoservUsageError(f"KVM address {a!r}: {key} {a[key]!r} is not an "
                                         "interface name (letters, digits, _ . -; at most 15)")
        return checked

    def _build(self, build):
        h = self.host
        src = self.source_material
        tmp = h.get_tmp_dir()
        if os.path.isdir(src):
            h.send_file(src.rstrip("/") + "/", tmp + "/src")
        else:
            h.send_file(src, tmp + "/source.tar")
            h.run(f"mkdir {tmp}/src && tar -xf {tmp}/source.tar -C {tmp}/src", timeout=600)
        top = h.run(f"cd {tmp}/src && set -- *; if [ $# = 1 ] && [ -d \"$1\" ]; "
                    f"then echo \"$PWD/$1\"; else echo \"$PWD\"; fi", timeout=60).stdout.strip()
        self.tree = top
        if build:
            h.run(f"cd {shlex.quote(top)} && ./configure && make", timeout=3 * 3600)
        for rel in ("qemu-system-x86_64", "build/qemu-system-x86_64",
                    "x86_64-softmmu/qemu-system-x86_64"):
            path = f"{top}/{rel}"
            if h.run(f"test -x {shlex.quote(path)}", ignore_status=True,
                     timeout=60).exit_status == 0:
                return path
        raise AutoservVirtError(f"{h.hostname}: the KVM source tree has no qemu-system-x86_64 "
                                "at its top, in build/ or in x86_64-softmmu/"
                                + ("" if build else " (build=False: was it built?)"))

    def _load_modules(self, vendor):
        h = self.host
        can = h.run("test -w /proc/sys/kernel/modules_disabled && "
                    "[ \"$(cat /proc/sys/kernel/modules_disabled)\" = 0 ]",
                    ignore_status=True, timeout=60).exit_status == 0
        if not can:
            LOG.write(f"{h.hostname}: cannot load kernel modules; leaving kvm as it is")
            return
        h.run(f"modprobe -r {vendor} kvm", ignore_status=True, timeout=120)
        tree = self.tree
        built = tree and h.run(f"cd {shlex.quote(tree)} && find . -name 'kvm*.ko'",
                               ignore_status=True, timeout=60).stdout.split()
        if built:
            core = [m for m in built if m.endswith("/kvm.ko")]
            vendor_ko = [m for m in built if vendor.replace("_", "-") in m or vendor in m]
            h.run(f"cd {shlex.quote(tree)} && insmod {shlex.quote(core[0])} && "
                  f"insmod {shlex.quote(vendor_ko[0])}", timeout=120)
        else:
            h.run(f"modprobe kvm && modprobe {vendor}", timeout=120)
        self.modules_loaded = [vendor, "kvm"]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        """``with KVM(host) as kvm:`` uninstalls (its guests end) however
        the block ends."""
        self.uninstall()

    def uninstall(self) -> None:
        """Destroys every guest; unloads the modules if autoserv loaded them."""
        for guest in list(self.in_use.values()):
            guest.close()
        if self.modules_loaded and self.host.is_owned_here():
            self.host.run("modprobe -r " + " ".join(self.modules_loaded), ignore_status=True,
                          timeout=120)
            self.modules_loaded = []

    def reserve(self, guest):
        """The first free address, taken for guest: (index, address).
        Raises AutoservVirtError before install() or when none is free."""
        if not self.installed:
            raise AutoservVirtError("KVM.install(addresses) must come before a KVMGuest")
        for i, address in enumerate(self.addresses):
            if i not in self.in_use:
                self.in_use[i] = guest
                return i, address
        raise AutoservVirtError(f"{self.host.hostname}: no free address for another guest "
                                f"({len(self.addresses)} given to KVM.install, all in use)")

    def release(self, guest):
        """Gives back the address guest took (KVMGuest.close())."""
        for i, g in list(self.in_use.items()):
            if g is guest:
                del self.in_use[i]

    def qmp(self, socket_path, *commands, timeout=30):
        """Sends QMP commands (dicts) through the hypervisor; returns the replies."""
        return qmp(self.host, socket_path, *commands, timeout=timeout)


class Guest(SSHHost):
    """A virtual machine reached over ssh; its power controller is the
    hypervisor's (hardreset() asks the hypervisor).  name= (default: its
    address) is what logs, summary.json and results subdirs call it: its
    hostname, while ssh goes on reaching the address."""

    def __init__(self, hostname, *args, name=None, **kwargs):
        self.name = name
        super().__init__(hostname, *args, **kwargs)
        if name:
            self._init_kwargs["name"] = name

    @property
    def hostname(self):
        link = self.__dict__.get("_link")
        return self.name or (link.hostname if link else None)

    @hostname.setter
    def hostname(self, value):
        self._link.hostname = value


class KVMGuest(Guest):
    """A QEMU/KVM guest on a KVM hypervisor, driven like any SSH host.

    Takes the first free address, starts qemu detached on the hypervisor (a
    0700 run dir holding the pidfile, the QMP socket and the serial log), then
    is an SSHHost for that address, host-key policy ephemeral by default.
    Its power controller (unless power= is given) is a QMPPower on that
    socket: hardreset() is QMP system_reset, power_off() freezes it.
    boot_timeout: how long a boot may take before wait_up() without a
    timeout starts saying it is still waiting (it never gives up on a qemu
    that runs).  Destroyed on close() and at job end."""

    def __init__(self, kvm: KVM, qemu_options: str = "", user: str = "root",
                 host_key_policy: str = "ephemeral", boot_timeout: float = 300,
                 name: Optional[str] = None, **ssh_kwargs: Any):
        # Keywords are checked before qemu starts (SSHHost's own check
        # comes after it).
        own = set(_keywords_of(SSHHost)) - {"hostname", "port"}
        _refuse_host_keywords("KVMGuest", {k: v for k, v in ssh_kwargs.items() if k not in own})
        self.kvm = kvm
        self.boot_timeout = boot_timeout
        self.qemu_options = qemu_options
        self.index, self.address = kvm.reserve(self)
        self.qemu_pid = None
        self.run_dir = None
        try:
            self._start_qemu()
        except BaseException:
            self._remove_run_dir()      # qemu never ran: its run dir and tap go too
            kvm.release(self)
            raise
        addr = self.address
        ssh_kwargs["power"] = ssh_kwargs.get("power") or self._qmp_power
        super().__init__(addr["ip"], user=user, port=addr.get("port"),
                         host_key_policy=host_key_policy, name=name, **ssh_kwargs)
        self._init_args = (addr["ip"],)
        self._init_kwargs = dict(user=user, port=addr.get("port"),
                                 host_key_policy=host_key_policy,
                                 **({"name": name} if name else {}))

    def __reduce__(self):
        # In another process a guest is a plain ssh host for the same
        # address, with the same name.
        return (_rebuild_host, (Guest,) + super().__reduce__()[1][1:])

    def _start_qemu(self):
        kvm, h, a = self.kvm, self.kvm.host, self.address
        self.run_dir = rd = h.get_tmp_dir()
        v = _qemu_value
        if "port" in a:
            ip = f"[{a['ip']}]" if ":" in a["ip"] else a["ip"]
            forward = f"tcp:{ip}:{int(a['port'])}-:22"
            net = f"user,id=n0,hostfwd={v(forward)}"
        else:
            tap = a.get("tap") or f"ast{os.getpid() % 100000}x{self.index}"
            bridge = a.get("bridge") or "br0"
            q = shlex.quote(tap)
            h.run(f"ip tuntap add dev {q} mode tap && ip link set {q} master "
                  f"{shlex.quote(bridge)} && ip link set {q} up", timeout=60)
            self._tap = tap
            net = f"tap,id=n0,ifname={v(tap)},script=no,downscript=no"
        fixed = [kvm.binary, *kvm.accel, "-nodefaults", "-no-user-config", "-display", "none",
                 "-netdev", net, "-device", f"virtio-net-pci,netdev=n0,mac={v(a['mac'])}",
                 "-device", "virtio-rng-pci",
                 "-chardev", f"socket,id=ser0,path={v(rd + '/serial.sock')},server=on,"
                             f"wait=off,logfile={v(rd + '/serial.log')},logappend=on",
                 "-serial", "chardev:ser0",
                 "-qmp", f"unix:{v(rd + '/qmp.sock')},server=on,wait=off",
                 "-pidfile", f"{rd}/qemu.pid", "-daemonize"]
        # qemu_options is a shell string (the seed builds it with sh_escape
        # inside double quotes): the hypervisor's shell splits it.
        command = (f"cd {rd} && " + " ".join(shlex.quote(w) for w in fixed) + " "
                   + self.qemu_options + f" && cat {rd}/qemu.pid")
        LOG.write(f"starting guest: {command}", h.hostname)
        result = h.run(command, timeout=120, ignore_status=True)
        if result.exit_status != 0:
            raise AutoservVirtError(f"{h.hostname}: qemu did not start: "
                                    + (result.stderr.strip() or result.status_text()))
        self.qemu_pid = int(result.stdout.split()[-1])
        self.serial_log = f"{rd}/serial.log"
        self._qmp_power = QMPPower(f"{rd}/qmp.sock", h)

    @property
    def qmp_socket(self):
        """The QMP socket's path on the hypervisor (its QMPPower's: setting
        it moves both)."""
        return self._qmp_power.socket_path

    @qmp_socket.setter
    def qmp_socket(self, path):
        self._qmp_power.socket_path = path

    def qemu_alive(self):
        """True while qemu runs (a zombie is dead: PID 1 may reap it late)."""
        if self.qemu_pid is None:
            return False
        try:
            out = _probe(self.kvm.host, f"cat /proc/{self.qemu_pid}/stat 2>/dev/null",
                         timeout=30).stdout
        except AutoservTimeoutError as e:
            # A probe, not the wait: a hypervisor too busy to answer in 30 s
            # has not shown qemu dead; the caller's own bound decides.
            LOG.write(f"qemu liveness probe: {e}; asking again later", self.hostname)
            return True
        state = out.rsplit(")", 1)[-1].split()[:1]
        return bool(state) and state[0] not in ("Z", "X")

    def serial_tail(self, lines=20):
        return self.kvm.host.run(f"tail -n {lines} {self.serial_log} 2>/dev/null",
                                 timeout=30, ignore_status=True).stdout

    def _dead_error(self):
        return AutoservVirtError(f"guest {self.hostname}:{self.port}: qemu (pid {self.qemu_pid})"
                                 " has exited; serial log ends:\n" + self.serial_tail())

    @_watched("coming up")
    def wait_up(self, timeout: Optional[float] = None) -> bool:
        """True once the guest answers ssh; False when timeout passes first.
        timeout=None waits as long as it takes (the seed's g.wait_up()),
        saying so on stderr once the guest is later than boot_timeout and
        every WAIT_PROGRESS_EVERY seconds after.  A qemu that exited fails
        at once (AutoservVirtError with the serial log's tail)."""
        t0 = time.monotonic()
        deadline = _monotonic_deadline(timeout)
        report = t0 + self.boot_timeout
        while True:
            if not self.qemu_alive():
                raise self._dead_error()
            left = _remaining(deadline)
            if super().wait_up(timeout=2.0 if left is None else min(2.0, left)):
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if deadline is None and now >= report:
                report = now + WAIT_PROGRESS_EVERY
                tail = _last_line(self.serial_tail(5)) or "empty"
                message = (f"guest {self.hostname}:{self.port}: no ssh answer after "
                           f"{now - t0:.0f} s; waiting on (serial log: {tail})")
                LOG.write(message, self.hostname, logging.INFO)

    def monitor(self, command):
        """A human monitor command through QMP (e.g. "info status", "commit")."""
        return self.kvm.qmp(self.qmp_socket, {"execute": "human-monitor-command",
                                              "arguments": {"command-line": command}})[-1]

    def close(self) -> None:
        """Stops qemu (QMP quit, then the PID), removes its run dir."""
        super().close()
        if self.qemu_pid is None or not self.is_owned_here():
            return
        h = self.kvm.host
        if self.qemu_alive():
            try:
                self.kvm.qmp(self.qmp_socket, {"execute": "quit"}, timeout=10)
            except AutoservError as e:
                LOG.write(f"QMP quit failed: {e}", self.hostname)
            end = time.monotonic() + 10
            while self.qemu_alive() and time.monotonic() < end:
                time.sleep(0.1)
            if self.qemu_alive():
                h.run(f"kill -9 {self.qemu_pid}", ignore_status=True, timeout=30)
        self._remove_run_dir()
        self.qemu_pid = None
        self.kvm.release(self)

    def _remove_run_dir(self):
        h = self.kvm.host
        if getattr(self, "_tap", None):
            h.run(f"ip link del {shlex.quote(self._tap)}", ignore_status=True, timeout=30)
            self._tap = None
        if self.run_dir:
            h.run(f"rm -rf -- {shlex.quote(self.run_dir)}", ignore_status=True, timeout=30)
            h.forget_tmp_dir(self.run_dir)
            self.run_dir = None


# Autotest, server side ########################################################

class _StatusRelay:
    """A stdout tee for the client harness: status lines go into the server's
    status.log as they come, the rest into the debug log."""

    def __init__(self, hostname):
        self.hostname = hostname
        self.buffer = ""
        self.worst = None
        self.reason = ""          # the first entry with the worst status: what failed
        self.reboot = False

    def write(self, text):
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self._line(line)

    def flush(self):
        pass

    def _line(self, line):
        if line.startswith(_CLIENT_STATUS):
            entry = line[len(_CLIENT_STATUS):]
            if _JOB is not None:
                try:
                    worst = _JOB.status.relay(entry)
                except ValueError:
                    LOG.write(f"client: {line}", self.hostname)
                    return
                if worst and worst_status(worst, self.worst) != worst_status(self.worst):
                    self.worst = worst
                    first = parse_status_log(entry.lstrip("\t"))[0]
                    self.reason = f"{first['operation']}: {_last_line(first['message'])}"
        else:
            LOG.write(f"client: {line}", self.hostname)


def _remote_autodir(host):
    """autodir= from /etc/autotest.conf on the host, else /usr/local/autotest."""
    out = host.run("cat /etc/autotest.conf 2>/dev/null", ignore_status=True, timeout=60)
    m = re.search(r"^\s*autodir\s*=\s*(\S+)", out.stdout, re.M)
    return m.group(1) if m else _AUTODIR


class Autotest(InstallableObject):
    """The autotest client on a host: get(client tree or nothing),
    install(host, autodir=None), run(control_file, results_dir, host)."""

    def __init__(self, host: Optional["Host"] = None):
        super().__init__()
        self.host = host
        self.installed = {}

    def get(self, location=None):
        """A client tree in Autotest layout (a dir with tests/<name>/<name>.py,
        or the tests dir itself), or nothing: the built-in tests only."""
        if location is None:
            self.source_material = None
            return None
        path = super().get(location)
        if not os.path.isdir(path):
            raise AutoservInstallError(f"Autotest.get({location!r}): not a directory; give "
                                       "a client tree (with tests/<name>/<name>.py)")
        return path

    def _tests_dir(self):
        if not self.source_material:
            return None
        tests = os.path.join(self.source_material, "tests")
        return tests if os.path.isdir(tests) else self.source_material

    def install(self, host=None, autodir=None):
        host = host or self.host
        if host is None:
            raise AutoservUsageError("Autotest.install(): which host?")
        autodir = autodir or _remote_autodir(host)
        if host.run("command -v python3", ignore_status=True, timeout=60).exit_status:
            raise AutoservInstallError(f"{host.hostname}: no python3 on the host; the "
                                       "autotest client harness needs it")
        q = shlex.quote(autodir)
        host.run(f"mkdir -p {q}/tests {q}/results {q}/tmp", timeout=60)
        host.send_file(os.path.abspath(__file__), f"{autodir}/autoserv.py")
        tests = self._tests_dir()
        if tests:
            host.send_file(tests.rstrip("/") + "/", f"{autodir}/tests/")
        self.installed[host.hostname] = autodir
        _record("GOOD", None, "autotest.install", f"{host.hostname}: {autodir}")
        return autodir

    def _control_text(self, control_file):
        if hasattr(control_file, "read"):
            data = control_file.read()
            return data.decode() if isinstance(data, bytes) else data
        if os.path.isfile(os.path.expanduser(str(control_file))):
            with open(os.path.expanduser(str(control_file)), encoding="utf-8") as f:
                return f.read()
        if _looks_like_path(str(control_file)):
            raise AutoservInstallError(f"Autotest.run(): control file {control_file!r} "
                                       "does not exist")
        return str(control_file)

    def run(self, control_file: str, results_dir: str = ".", host: Optional["Host"] = None,
            timeout: Optional[float] = None, tag: Optional[str] = None,
            reboot_timeout: float = 1800) -> None:
        """Runs a client control file on the host: its status lines stream
        into the server's status.log, a reboot it asks for is done here (then
        the client resumes with --continue), and its results/default/ is
        copied into results_dir (relative to the job's results dir, or to a
        parallel task's subdir)."""
        host = host or self.host
        if host is None:
            raise AutoservUsageError("Autotest.run(): which host?")
        autodir = self.installed.get(host.hostname) or self.install(host)
        text = self._control_text(control_file)
        q = shlex.quote(autodir)
        host.run(f"rm -rf {q}/results/default && mkdir -p {q}/results/default", timeout=120)
        local = os.path.join(get_tmp_dir(), "control")
        with open(local, "w", encoding="utf-8") as f:
            f.write(text)
        host.send_file(local, f"{autodir}/control")
        # Relative to the current dir: the job's results dir, or a parallel
        # task's own subdir in it.  Never merged into the results dir itself
        # (the client's keyval and debug/ would meet the job's): there, into
        # the host's dir, as -c lays it out.
        results_dir = os.path.abspath(results_dir)
        if _JOB is not None and os.path.realpath(results_dir) == \
                os.path.realpath(_JOB.resultdir):
            results_dir = os.path.join(results_dir, _safe_name(host.hostname))
        name = tag or "autotest.run"
        _record("START", None, name, f"{host.hostname}: client control file")
        relay = _StatusRelay(host.hostname)
        deadline = None if timeout is None else time.monotonic() + timeout
        cont, outcome, reason = False, "GOOD", ""
        started = time.time()
        try:
            while True:
                left = None if deadline is None else max(1.0, deadline - time.monotonic())
                out = host.run(f"cd {q} && exec python3 autoserv.py --client-harness"
                               + (" --continue" if cont else "") + " control",
                               timeout=left, ignore_status=True, stdout_tee=relay)
                if out.exit_status == _CLIENT_REBOOT:
                    host.reboot(timeout=reboot_timeout)
                    cont = True
                    continue
                if out.exit_status != 0:
                    outcome = "FAIL"
                    raise AutoservRunError("the client control file failed", out)
                break
            outcome, reason = relay.worst or "GOOD", relay.reason
        except BaseException as e:
            outcome = "ABORT" if outcome == "GOOD" else outcome
            reason = f"{type(e).__name__}: {_last_line(str(e))}"
            raise
        finally:
            try:
                os.makedirs(results_dir, exist_ok=True)
                host.get_file(f"{autodir}/results/default/", results_dir.rstrip("/") + "/")
                _remove_quietly(os.path.join(results_dir, ".client_state"))
            except AutoservError as e:
                LOG.write(f"could not fetch the client's results: {e}", host.hostname)
            _record(f"END {outcome}", None, name, f"{host.hostname}")
            if _JOB is not None:
                _JOB.host_status(host.hostname, outcome, reason, [started, time.time()])
        return outcome == "GOOD"


# Host health: verify and repair ###############################################

# host.verify() and host.repair() (Host holds the API; the work is here),
# and what the CLI's --verify, --repair and --verify-first do with them.

def _sick(host, check, figures):
    """verify()'s error: AutoservHostError naming the check (.check) and its
    figures."""
    error = AutoservHostError(host.hostname, f"verify failed: {check}", figures)
    error.check = check
    return error


def _mb(size):
    return f"{size / 2**20:.0f} MB"


def _installed_autodir(host):
    """The host's autotest dir (autoserv's default, or autodir= in its
    /etc/autotest.conf) when it exists there, else None."""
    autodir = _remote_autodir(host)
    found = host.run(f"test -d {shlex.quote(autodir)}", ignore_status=True, timeout=30)
    return autodir if found.exit_status == 0 else None


def _free_space(host, limits, autodir):
    """verify()'s free-space check: one figure per path, or _sick()."""
    paths = [(path, mb) for path, mb in limits.items() if path != "autodir"]
    if autodir and "autodir" in limits:
        paths.append((autodir, limits["autodir"]))
    figures = []
    for path, need in paths:
        out = host.run(f"stat -f -c '%a %S' {shlex.quote(path)}", timeout=30,
                       ignore_status=True)
        words = out.stdout.split()
        if out.exit_status or len(words) != 2 or not all(w.isdigit() for w in words):
            raise _sick(host, "free space", f"{path}: cannot read its free space: {_why(out)}")
        have = int(words[0]) * int(words[1])
        if have < need * 2**20:
            raise _sick(host, "free space", f"{path}: {_mb(have)} free, needs "
                        f"{_mb(need * 2**20)}")
        figures.append(f"{path} {_mb(have)} free")
    return ", ".join(figures)


def _clock_skew(host, bound):
    """verify()'s clock check: the host's clock against this machine's,
    allowing for the round trip and date's whole seconds."""
    before = time.time()
    out = host.run("date +%s", timeout=30)
    after = time.time()
    if not out.stdout.strip().isdigit():
        raise _sick(host, "clock", f"date +%s said {out.stdout.strip()!r}")
    skew = int(out.stdout) - (before + after) / 2
    if abs(skew) > bound + (after - before) / 2 + 1:
        raise _sick(host, "clock", f"{round(skew):+d} s from this machine's clock "
                    f"(bound {bound:g} s)")
    return f"clock {round(skew):+d} s"


def _autotest_install(host, autodir):
    """verify()'s check of an autotest install: its harness there, no
    stale (or hung) mount on its tmp."""
    q = shlex.quote(autodir)
    script = (f"test -f {q}/autoserv.py || test -x {q}/bin/autotest || echo incomplete; "
              f"t={q}/tmp; if grep -qs \" $t \" /proc/mounts; then "
              "stat -f \"$t\" >/dev/null 2>&1 || echo stale; fi")
    try:
        out = host.run(script, timeout=30, ignore_status=True)
    except AutoservTimeoutError:
        raise _sick(host, "autotest install", f"{autodir}/tmp: a hung mount (stat -f did "
                    "not answer in 30 s)")
    if "incomplete" in out.stdout.split():
        raise _sick(host, "autotest install", f"{autodir}: incomplete (neither autoserv.py "
                    "nor bin/autotest there)")
    if "stale" in out.stdout.split():
        raise _sick(host, "autotest install", f"{autodir}/tmp: a stale mount (stat -f fails)")
    return f"autotest in {autodir}"


def _verify_checks(host, min_free=None, max_clock_skew=None, site=None):
    """verify()'s checks in order, recording nothing: their figures (a
    list of str), or AutoservHostError (_sick) for the first that fails."""
    limits = dict(_HEALTH["min_free"], **(min_free or {}))
    bound = _HEALTH["max_clock_skew"] if max_clock_skew is None else max_clock_skew
    wait = float(getattr(host, "connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT)
    t0 = time.monotonic()
    try:
        host.run("true", timeout=wait + 30, connect_timeout=wait)
    except AutoservError as e:
        took = time.monotonic() - t0
        raise _sick(host, "reachable", f"{_cause(e)} (after {took:.1f} s; connect timeout "
                    f"{wait:g} s)")
    figures = [f"reachable in {time.monotonic() - t0:.1f} s"]
    try:
        boot_id = host.get_boot_id(timeout=30, connect_timeout=wait)
    except AutoservError as e:
        raise _sick(host, "boot id", f"unreadable: {_cause(e)}")
    if not boot_id:
        raise _sick(host, "boot id", "unreadable: /proc/sys/kernel/random/boot_id is empty")
    figures.append(f"boot id {boot_id}")
    autodir = None
    steps = (("free space", lambda: _free_space(host, limits, autodir)),
             ("clock", lambda: _clock_skew(host, bound)),
             ("autotest install", lambda: autodir and _autotest_install(host, autodir)),
             ("site verify", lambda: site and (site(), "site verify passed")[1]))
    try:
        autodir = _installed_autodir(host)
    except AutoservError as e:
        raise _sick(host, "autotest install", f"cannot look for it: {_cause(e)}")
    for check, step in steps:
        try:
            figures.append(step())
        except AutoservHostError as e:
            if getattr(e, "check", None):
                raise
            raise _sick(host, check, _cause(e))
        except Exception as e:   # a site verify may raise anything
            raise _sick(host, check, _cause(e))
    return [f for f in figures if f]


def _record_verify(host, checks):
    """Runs checks() (verify's): GOOD verify with their figures in
    status.log, or FAIL verify with the failing check's (and the error
    raised again).  Returns the figures, one line."""
    try:
        figures = "; ".join(checks())
    except AutoservHostError as e:
        _record("FAIL", None, "verify", f"{host.hostname}: {getattr(e, 'check', '')}: "
                f"{e.detail or e.message}")
        raise
    _record("GOOD", None, "verify", f"{host.hostname}: {figures}")
    return figures


def _repair_ladder(host, steps, check):
    """repair()'s escalation: steps are (key, what, action or None), check
    is verify()'s checks.  Each action (None: skipped) is followed by
    check(); the first that passes ends it.  An action that returns a
    text stops the ladder there, saying why."""
    name = host.hostname
    try:
        check()
        LOG.write("repair: healthy, nothing to do", name)
        return
    except AutoservHostError as e:
        why = e
    worst = _JOB.status.worst if _JOB is not None else None
    _record("START", None, "repair", f"{name}: {why.check}: {why.detail}")
    stop = None
    for key, what, action in steps:
        if action is None:
            continue
        reason = f"{name}: {what}, because {why.check} failed ({why.detail})"
        try:
            said = action()
            stop = said if key == "hardreset" else None
            done = "done"
        except Exception as e:
            done = f"it failed ({_cause(e)})"
        if stop:
            _record("INFO", None, f"repair.{key}", f"{reason}: {stop}")
            break
        try:
            figures = check()
        except AutoservHostError as e:
            _record("INFO", None, f"repair.{key}", f"{reason}: {done}; still sick: "
                    f"{e.check}: {e.detail}")
            why = e
            continue
        _record("INFO", None, f"repair.{key}", f"{reason}: {done}; healthy: "
                + "; ".join(figures))
        _record("END GOOD", None, "repair", f"{name}: healed by {what}")
        if _JOB is not None:
            # What failed on the way (a reboot that did not come back) is
            # in the log; the repair healed the host, so it fails nothing.
            _JOB.status.worst = worst
        return
    because = f"{why.check}: {why.detail}"
    _record("FAIL", None, "repair", f"{name}: not healed"
            + ("; no reset path" if stop else "") + f"; {because}")
    _record("END FAIL", None, "repair")
    raise AutoservHostError(name, "repair failed" + ("; no reset path" if stop else ""),
                            because)


# The CLI's health modes: --verify and --repair check (and repair) every
# machine and exit; --verify-first does it before a control file runs.

def _health_phase(job, machines, repair, verb, quiet=False):
    """Verifies every machine at once (repair, when asked, first); the
    sick ones are the job's dropped hosts (job.drop_host, with verb) and
    status.log says why.  Returns the healthy machines, in order.  verb
    "sick" (--verify, --repair): a line per machine on stdout; "dropped"
    (--verify-first): a line on stderr per dropped machine."""
    def check(name):
        host = create_host(name)
        try:
            if repair:
                host.repair()
            return host.hostname, "GOOD", host.verify()
        except AutoservHostError as e:
            return host.hostname, "SICK", (f"{e.message} ({e.detail})" if e.detail
                                           else e.message)
        except AutoservError as e:
            return host.hostname, "SICK", _cause(e)

    check.__qualname__ = "health.repair" if repair else "health"
    worst = job.status.worst
    results = parallel_simple(check, machines, log=False, return_results=True)
    outcomes = [r if isinstance(r, tuple) else (parse_machine(m)[1], "SICK", _cause(r))
                for m, r in zip(machines, results)]
    # The sick hosts' FAIL verify lines stay in the log; what they mean for
    # the job is the exit status of dropped hosts, not a failed test.
    job.status.worst = worst
    healthy = []
    for machine, (name, health, text) in zip(machines, outcomes):
        job.name_host(name, machine)
        if health == "GOOD":
            healthy.append(machine)
        else:
            job.drop_host(machine, text, verb)
            if verb == "dropped":
                _say(f"dropped {machine}: {text}", quiet)
    if verb == "sick":
        rows = [("HOST", "HEALTH", "")] + [(m, h, t) for m, (_, h, t) in zip(machines,
                                                                            outcomes)]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for row in rows:
            print(_neutralise(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  "
                              f"{row[2]}".rstrip()), flush=True)
    return healthy


# Autotest client harness (it runs on the target) ##############################

# The real Autotest client is Python 2 only, so autoserv carries a client
# harness of its own: `python3 autoserv.py --client-harness CONTROL` on the
# target runs a client control file with `job`, tests in Autotest layout
# (tests/<name>/<name>.py) and built-in tests, writes results/default/ there,
# and prints each status line with AUTOTEST_STATUS: so the server can stream
# it into its own status.log.  A reboot the client asks for is done by the
# server, which resumes the client with --continue.

_CLIENT_STATUS = "AUTOTEST_STATUS:"
_CLIENT_REBOOT = 42              # the harness's exit status: reboot me, then --continue
_AUTODIR = "/usr/local/autotest"


class TestError(AutoservError):
    """A test could not run as it should (recorded ERROR)."""


class TestFail(AutoservError):
    """A test ran and failed (recorded FAIL)."""


class TestNAError(AutoservError):
    """A test does not apply here (recorded TEST_NA)."""


def _call_with_known_args(function, *args, **dargs):
    """Calls function with the keyword arguments its signature accepts
    (run_test's dargs go to initialize, setup and run_once alike)."""
    import inspect
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return function(*args, **dargs)
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return function(*args, **dargs)
    names = {p.name for p in params}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not takes_varargs:
        args = args[:len(positional)]
    return function(*args, **{k: v for k, v in dargs.items() if k in names})


class test:
    """Base class of client tests (Autotest's client.bin.test.test).
    A test overrides run_once; initialize, setup, postprocess and cleanup are
    optional.  run_test's arguments reach each of them by name."""
    version = 1

    def __init__(self, job, bindir, outputdir):
        self.job = job
        self.bindir = bindir
        self.srcdir = os.path.join(bindir, "src") if bindir else None
        self.outputdir = outputdir
        self.resultsdir = os.path.join(outputdir, "results")
        self.debugdir = os.path.join(outputdir, "debug")
        self.profdir = os.path.join(outputdir, "profiling")
        self.tmpdir = os.path.join(outputdir, "tmp")
        self.tagged_testname = os.path.basename(outputdir)
        for d in (self.resultsdir, self.debugdir, self.tmpdir):
            os.makedirs(d, exist_ok=True)

    def initialize(self):
        pass

    def setup(self):
        pass

    def run_once(self):
        raise TestError(f"{type(self).__name__} has no run_once()")

    def postprocess(self):
        pass

    def postprocess_iteration(self):
        pass

    def cleanup(self):
        pass

    def _keyval(self, path, dictionary, tag=None):
        with open(path, "a", encoding="utf-8") as f:
            for key in sorted(dictionary):
                if not re.fullmatch(r"[-.\w]+", str(key)):
                    raise TestError(f"keyval key {key!r}: letters, digits, '-', '.', '_' only")
                f.write(f"{key}{{{tag}}}={dictionary[key]}\n" if tag else
                        f"{key}={dictionary[key]}\n")
            f.write("\n")

    def write_perf_keyval(self, perf_dict):
        """Performance figures, in results/keyval as name{perf}=value."""
        self._keyval(os.path.join(self.resultsdir, "keyval"), perf_dict, "perf")

    def write_attr_keyval(self, attr_dict):
        self._keyval(os.path.join(self.resultsdir, "keyval"), attr_dict, "attr")

    def write_test_keyval(self, attr_dict):
        self._keyval(os.path.join(self.outputdir, "keyval"), attr_dict)

    def execute(self, iterations=None, *args, **dargs):
        """initialize, setup, run_once `iterations` times (1), postprocess."""
        iterations = 1 if iterations is None else int(iterations)
        _call_with_known_args(self.initialize, *args, **dargs)
        _call_with_known_args(self.setup, *args, **dargs)
        profilers = self.job.profilers
        profilers.start(self)
        try:
            for _ in range(iterations):
                _call_with_known_args(self.run_once, *args, **dargs)
                self.postprocess_iteration()
        finally:
            profilers.stop(self)
        self.postprocess()


class _sleeptest(test):
    """Sleeps; the smallest real test."""

    def run_once(self, seconds=1):
        time.sleep(float(seconds))
        self.write_perf_keyval({"slept_seconds": float(seconds)})


class _linus_stress(test):
    """CPU, memory and I/O stress for a bounded time, with one worker
    process per CPU: hashing, touching a memory buffer, writing, syncing
    and reading back a file.  Figures as perf keyvals, each from its own
    measurement: work done in a phase over the time spent in that phase,
    summed over the workers (they run at once)."""

    def run_once(self, seconds=5, memory_mb=32, file_mb=16):
        import hashlib
        seconds, memory_mb, file_mb = float(seconds), int(memory_mb), int(file_mb)
        workers = max(1, os.cpu_count() or 1)
        pipes, pids = [], []
        for n in range(workers):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                                   # the worker
                os.close(r)
                # [units, seconds] per phase: sha256 blocks, MiB touched, MiB moved
                counts = [[0, 0.0], [0, 0.0], [0, 0.0]]
                clock = time.monotonic
                try:
                    end = clock() + seconds
                    memory = bytearray(memory_mb << 20)
                    block = os.urandom(1 << 16)
                    path = os.path.join(self.tmpdir, f"stress.{n}")
                    while clock() < end:
                        t0 = clock()
                        for _ in range(64):
                            block = hashlib.sha256(block).digest() * 2048
                        t1 = clock()
                        for off in range(0, len(memory), 4096):
                            memory[off] = (memory[off] + 1) & 0xFF
                        t2 = clock()
                        with open(path, "wb") as f:
                            for _ in range(file_mb * 16):
                                f.write(block)
                            f.flush()
                            os.fsync(f.fileno())
                        with open(path, "rb") as f:
                            read = 0
                            while True:
                                chunk = f.read(1 << 20)
                                if not chunk:
                                    break
                                read += len(chunk)
                        t3 = clock()
                        for phase, units, spent in ((0, 64, t1 - t0),
                                                    (1, len(memory) >> 20, t2 - t1),
                                                    (2, file_mb + (read >> 20), t3 - t2)):
                            counts[phase][0] += units
                            counts[phase][1] += spent
                    os.unlink(path)
                finally:
                    os.write(w, json.dumps(counts).encode())
                    os._exit(0)
            os.close(w)
            pipes.append(r)
            pids.append(pid)
        rates = [0.0, 0.0, 0.0]
        try:
            for r in pipes:
                data = b""
                while True:
                    chunk = os.read(r, 4096)
                    if not chunk:
                        break
                    data += chunk
                for i, (units, spent) in enumerate(json.loads(data or b"[[0,0],[0,0],[0,0]]")):
                    rates[i] += units / spent if spent > 0 else 0.0
        finally:
            for r in pipes:
                os.close(r)
            for pid in pids:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        self.write_perf_keyval({"workers": workers, "seconds": seconds,
                                "sha256_blocks_per_s": round(rates[0], 1),
                                "memory_mb_touched_per_s": round(rates[1], 1),
                                "io_mb_per_s": round(rates[2], 1)})


class _netperf2(test):
    """TCP throughput between two hosts over Python sockets (netperf's
    roles): run_test("netperf2", server_ip, client_ip, "server"|"client").
    The sides wait for each other (bounded): the client retries connecting,
    the server waits for the client."""
    PORT = 12865

    def run_once(self, server_ip, client_ip, role, test_time=10, port=PORT, wait=120):
        test_time, wait, port = float(test_time), float(wait), int(port)
        if role == "server":
            self._server(client_ip, port, wait)
        elif role == "client":
            self._client(server_ip, port, test_time, wait)
        else:
            raise TestError(f"netperf2: role {role!r}: server or client")

    def _server(self, client_ip, port, wait):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(1)
        listener.settimeout(wait)
        try:
            conn, peer = listener.accept()
        except socket.timeout:
            raise TestFail(f"netperf2 server: no client within {wait:.0f} s")
        finally:
            listener.close()
        with conn:
            conn.settimeout(wait)
            received, t0 = 0, time.monotonic()
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                received += len(data)
            elapsed = max(time.monotonic() - t0, 1e-6)
            conn.sendall(json.dumps({"bytes": received, "seconds": elapsed}).encode())
        self.write_perf_keyval({"received_bytes": received, "client": peer[0],
                                "throughput_mbit_s": round(received * 8 / elapsed / 1e6, 2)})

    def _client(self, server_ip, port, test_time, wait):
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = socket.create_connection((server_ip, port), timeout=5)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise TestFail(f"netperf2 client: no server at {server_ip}:{port} "
                                   f"within {wait:.0f} s ({e})")
                time.sleep(0.2)
        block = b"\0" * (1 << 16)
        sent = 0
        with conn:
            conn.settimeout(wait)
            t0 = time.monotonic()
            while time.monotonic() - t0 < test_time:
                conn.sendall(block)
                sent += len(block)
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                answer += data
        report = json.loads(answer or b"{}")
        if report.get("bytes") != sent:
            raise TestFail(f"netperf2: sent {sent} bytes, the server got {report.get('bytes')}")
        self.write_perf_keyval({"sent_bytes": sent, "server": server_ip,
                                "throughput_mbit_s": round(sent * 8 / report["seconds"] / 1e6,
                                                           2)})


_BUILTIN_TESTS = {"sleeptest": _sleeptest, "linus_stress": _linus_stress,
                  "netperf2": _netperf2}


class _Forked:
    """A forked child (a pid, not a Popen) as _terminate() handles one."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise _subprocess().TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def _end_child(pid, grace=10.0):
    """Ends a forked child of ours: TERM, then KILL after grace s; reaped."""
    _terminate(_Forked(pid), grace, group=False, kill_wait=None)


class _Profilers:
    """job.profilers: add(name, ...) / delete(name); the added ones run
    around every test's iterations and leave their output in
    <test>/profiling/.  Built in: 'sampler' (/proc/stat and /proc/meminfo
    every interval s) and 'perf' (perf record -a, then perf report)."""
    KNOWN = {"sampler": ("interval",), "perf": ("events",)}     # name: its arguments
    # oprofile's event names (the seed's) and the perf events that count the same
    OPROFILE_EVENTS = {"CPU_CLK_UNHALTED": "cycles", "INST_RETIRED": "instructions",
                       "INST_RETIRED_ANY_P": "instructions", "LLC_MISSES": "cache-misses",
                       "LLC_REFS": "cache-references", "BR_INST_RETIRED": "branches",
                       "BR_MISS_PRED_RETIRED": "branch-misses",
                       "BRANCH_MISSES_RETIRED": "branch-misses"}

    def __init__(self, job):
        self.job = job
        self.active = {}
        self._running = []

    def _warn(self, text):
        self.job.record("WARN", None, "profiler.add", text)

    def add(self, name, *args, **dargs):
        """Adds a profiler; whatever it cannot honour (the profiler, an
        argument, an event) is a WARN naming it, never silently dropped."""
        if name not in self.KNOWN:
            self._warn(f"profiler {name!r} is not available here (built in: "
                       f"{', '.join(self.KNOWN)}; 'perf' takes oprofile's event names); "
                       "going on without it")
            return
        if name == "perf" and not shutil.which("perf"):
            self._warn("profiler 'perf': no perf program on this host; going on without it")
            return
        unknown = [repr(a) for a in args] + [k for k in dargs if k not in self.KNOWN[name]]
        if unknown:
            self._warn(f"profiler {name!r} ignores {', '.join(unknown)} (it takes "
                       f"{', '.join(self.KNOWN[name])})")
        dargs = {k: v for k, v in dargs.items() if k in self.KNOWN[name]}
        if name == "perf":
            dargs["events"] = self._perf_events(dargs.get("events") or [])
        self.active[name] = ((), dargs)

    def _perf_events(self, events):
        """perf -e arguments for oprofile-style 'NAME[:count[:...]]' events
        (count is the sample period) or perf's own event names."""
        if isinstance(events, str):
            events = [events]
        chosen = []
        for event in events:
            name, _, rest = str(event).partition(":")
            period = rest.split(":")[0]
            perf = self.OPROFILE_EVENTS.get(name.upper()) or (
                name if re.fullmatch(r"[a-z][a-z0-9-]*(:[a-z]+)?", name) else None)
            if perf is None:
                self._warn(f"profiler 'perf': event {event!r} has no perf equivalent here; "
                           "not recorded")
                continue
            if period and not period.isdigit():
                self._warn(f"profiler 'perf': event {event!r}: count {period!r} is not a "
                           "number; using perf's default period")
                period = ""
            chosen.append(f"{perf}/period={period}/" if period else perf)
        return chosen

    def delete(self, name):
        self.active.pop(name, None)

    def start(self, t):
        if not self.active:
            return
        os.makedirs(t.profdir, exist_ok=True)
        for name, (args, dargs) in self.active.items():
            if name == "sampler":
                # A process, not a thread: a test that forks (linus_stress
                # does) must not fork with a thread alive (3.12+ warns).
                interval = float(dargs.get("interval", 1.0))
                path = os.path.join(t.profdir, "sampler.csv")
                parent = os.getpid()
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        self._sample(path, interval, parent)
                        code = 0
                    finally:
                        os._exit(code)
                self._running.append(("sampler", pid))
            elif name == "perf":
                out = os.path.join(t.profdir, "perf.data")
                events = [a for e in dargs.get("events", []) for a in ("-e", e)]
                proc = _subprocess().Popen(["perf", "record", "-a", "-q", *events, "-o", out],
                                           stdout=_subprocess().DEVNULL,
                                           stderr=open(os.path.join(t.profdir, "perf.log"),
                                                       "wb"))
                self._running.append(("perf", proc, out))

    @staticmethod
    def _sample(path, interval, parent):
        """The sampler process: a row every interval s until SIGTERM, or
        until its parent is gone (killed: nothing would stop it then)."""
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with open(path, "w") as f:
            f.write("time,user,nice,system,idle,iowait,mem_total_kb,mem_available_kb\n")
            while True:
                with open("/proc/stat") as stat, open("/proc/meminfo") as meminfo:
                    cpu = stat.readline().split()[1:6]
                    mem = dict(re.findall(r"^(\w+):\s+(\d+)", meminfo.read(), re.M))
                f.write(",".join([f"{time.time():.2f}"] + cpu + [mem.get("MemTotal", ""),
                                                                  mem.get("MemAvailable", "")])
                        + "\n")
                f.flush()
                end = time.monotonic() + interval
                while not stop and time.monotonic() < end and os.getppid() == parent:
                    time.sleep(min(0.05, interval))
                if stop or os.getppid() != parent:
                    break

    def stop(self, t):
        for entry in self._running:
            if entry[0] == "sampler":
                _end_child(entry[1])
            elif entry[0] == "perf":
                proc, out = entry[1], entry[2]
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except _subprocess().TimeoutExpired:
                    proc.kill()
                    proc.wait()
                with open(os.path.join(t.profdir, "perf.report"), "wb") as f:
                    _subprocess().run(["perf", "report", "--stdio", "-i", out], stdout=f,
                                      stderr=_subprocess().STDOUT, timeout=300)
        self._running = []


class _ClientJob:
    """`job` in a client control file."""

    def __init__(self, autodir, cont):
        self.autodir = autodir
        self.resultdir = os.path.join(autodir, "results", "default")
        self.bindir = autodir
        self.testdir = os.path.join(autodir, "tests")
        self.tmpdir = os.path.join(autodir, "tmp")
        os.makedirs(self.resultdir, exist_ok=True)
        os.makedirs(self.tmpdir, exist_ok=True)
        self.state_path = os.path.join(self.resultdir, ".client_state")
        self.state = {"done": 0, "steps": [], "step_init_done": False}
        if cont and os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.state = json.load(f)
        elif not cont:
            _remove_quietly(self.state_path)
        self.status = StatusLog(os.path.join(self.resultdir, "status"), echo=self._echo)
        self.profilers = _Profilers(self)
        self._counter = 0
        self._in_step = False
        self._test_status = None

    @staticmethod
    def _echo(text):
        for line in text.splitlines():
            sys.stdout.write(_CLIENT_STATUS + line + "\n")
        sys.stdout.flush()

    def _save(self):
        _write_atomic(self.state_path, json.dumps(self.state))

    def record(self, status_code, subdir=None, operation=None, status=""):
        self.status.record(status_code, subdir, operation, status)
        if self._test_status:
            self._test_status.record(status_code, subdir, operation, status)

    def _replayed(self):
        """True for an action the client did before the reboot it asked for:
        the control file runs again from the top after --continue and skips
        them (steps, with next_step, are not counted)."""
        if self._in_step:
            return False
        self._counter += 1
        return self._counter <= self.state["done"]

    def _did(self):
        if not self._in_step:
            self.state["done"] = self._counter
            self._save()

    def _find_test(self, name):
        path = os.path.join(self.testdir, name, f"{name}.py")
        if os.path.isfile(path):
            import importlib.util
            spec = importlib.util.spec_from_file_location(f"autotest_test_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, os.path.dirname(path))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(os.path.dirname(path))
            cls = getattr(module, name, None)
            if cls is None:
                raise TestError(f"{path} defines no class {name}")
            return cls, os.path.dirname(path)
        if name in _BUILTIN_TESTS:
            return _BUILTIN_TESTS[name], None
        return None, None

    def run_test(self, name, *args, **dargs):
        """Runs a test; records START, GOOD/FAIL/ERROR/TEST_NA and END;
        returns True when it passed.  An unknown test is a FAIL, not a crash."""
        if self._replayed():
            return True
        tag = dargs.pop("tag", None)
        subdir = name + (f".{tag}" if tag else "")
        outputdir = os.path.join(self.resultdir, subdir)
        os.makedirs(outputdir, exist_ok=True)
        self.record("START", subdir, name)
        self._test_status = StatusLog(os.path.join(outputdir, "status"))
        code, reason = "GOOD", "completed successfully"
        os.makedirs(os.path.join(outputdir, "debug"), exist_ok=True)
        out_log = open(os.path.join(outputdir, "debug", "harness.log"), "a")
        instance = None
        try:
            cls, bindir = self._find_test(name)
            if cls is None:
                raise TestFail(f"no such test {name!r}: not in {self.testdir} and not "
                               f"built in ({', '.join(sorted(_BUILTIN_TESTS))})")
            instance = cls(self, bindir, outputdir)
            with open(os.path.join(outputdir, "keyval"), "w") as f:
                f.write(f"version={getattr(cls, 'version', 1)}\n")
            iterations = dargs.pop("iterations", None)
            try:
                instance.execute(iterations, *args, **dargs)
            finally:
                _call_with_known_args(instance.cleanup)
        except TestNAError as e:
            code, reason = "TEST_NA", str(e)
        except (TestFail, AssertionError) as e:
            code, reason = "FAIL", str(e) or type(e).__name__
        except Exception as e:
            import traceback
            code, reason = "ERROR", f"{type(e).__name__}: {e}"
            out_log.write(traceback.format_exc())
        finally:
            out_log.close()
            if instance is not None:
                shutil.rmtree(instance.tmpdir, ignore_errors=True)
        self.record(code, subdir, name, reason)
        self.record(f"END {code}", subdir, name)
        self._test_status = None
        self._did()
        return code == "GOOD"

    def run_group(self, function, *args, **dargs):
        if self._replayed():
            return None
        tag = dargs.pop("tag", None)
        name = tag or getattr(function, "__name__", "group")
        self.record("START", None, name)
        try:
            result = function(*args, **dargs)
        except Exception as e:
            self.record("FAIL", None, name, f"{type(e).__name__}: {e}")
            self.record("END FAIL", None, name)
            self._did()
            return None
        self.record("END GOOD", None, name)
        self._did()
        return result

    def run_steps(self, namespace, cont):
        """After the control file's top level: step_init (once per job),
        then each step next_step() queued, in order, each removed from the
        saved state before it runs (a reboot in one goes on with the next)."""
        if not cont and "step_init" in namespace and not self.state["step_init_done"]:
            self.state["step_init_done"] = True
            self._save()
            self._in_step = True
            namespace["step_init"]()
        self._in_step = True
        while self.state["steps"]:
            name, args = self.state["steps"].pop(0)
            self._save()
            if name not in namespace:
                self.record("ERROR", None, name, f"step {name!r} is not defined in the "
                                                 "control file")
                continue
            namespace[name](*args)

    def next_step(self, function, *args):
        name = function if isinstance(function, str) else function.__name__
        self.state["steps"].append([name, list(args)])
        self._save()

    def reboot(self, tag=None):
        """Asks the server to reboot this machine; the client goes on after
        it with --continue, from the next action."""
        if self._replayed():
            return
        self.record("INFO", None, "reboot", "client asked for a reboot")
        if not self._in_step:
            self.state["done"] = self._counter
        self._save()
        sys.stdout.flush()
        raise _ClientReboot()


class _ClientReboot(BaseException):
    pass


def _install_autotest_modules():
    """`from autotest_lib.client.bin import test`, `import test` and the
    error classes resolve to the harness's."""
    import types
    common_error = types.ModuleType("autotest_lib.client.common_lib.error")
    for cls in (TestError, TestFail, TestNAError):
        setattr(common_error, cls.__name__, cls)
    common_error.AutotestError = AutoservError
    common_error.CmdError = AutoservRunError
    test_mod = types.ModuleType("autotest_lib.client.bin.test")
    test_mod.test = test
    utils_mod = types.ModuleType("autotest_lib.client.bin.utils")
    utils_mod.system = lambda cmd, ignore_status=False, timeout=None: run(
        cmd, ignore_status=ignore_status, timeout=timeout).exit_status
    utils_mod.system_output = lambda cmd, ignore_status=False, timeout=None: run(
        cmd, ignore_status=ignore_status, timeout=timeout).stdout.rstrip("\n")
    utils_mod.run = run
    names = {"autotest_lib": None, "autotest_lib.client": None,
             "autotest_lib.client.bin": None, "autotest_lib.client.common_lib": None}
    for name in names:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["autotest_lib.client.bin.test"] = test_mod
    sys.modules["autotest_lib.client.bin.utils"] = utils_mod
    sys.modules["autotest_lib.client.common_lib.error"] = common_error
    sys.modules["autotest_lib.client.bin"].test = test_mod
    sys.modules["autotest_lib.client.bin"].utils = utils_mod
    sys.modules["autotest_lib.client.common_lib"].error = common_error
    sys.modules.setdefault("test", test_mod)
    sys.modules.setdefault("error", common_error)


def _client_main(control_path, cont):
    """--client-harness: runs a client control file here.  Exit status 0
    done, _CLIENT_REBOOT when the client asked for a reboot, 1 when the
    control file itself raised."""
    autodir = os.path.dirname(os.path.abspath(__file__))
    source = _read_control(control_path)
    code = _compile_or_usage(source, control_path)
    _install_autotest_modules()
    job = _ClientJob(autodir, cont)
    namespace = {"job": job, "__name__": "__main__", "__file__": control_path,
                 "os": os, "sys": sys, "time": time, "re": re}
    namespace.update(_exceptions())
    namespace.update({"TestError": TestError, "TestFail": TestFail, "TestNAError": TestNAError})
    try:
        exec(code, namespace)
        job.run_steps(namespace, cont)
    except _ClientReboot:
        return _CLIENT_REBOOT
    except Exception as e:
        import traceback
        job.record("ABORT", None, "client", f"{type(e).__name__}: {e}")
        sys.stderr.write(traceback.format_exc())
        return 1
    _remove_quietly(job.state_path)
    return 0


# Control files ################################################################

def translate_legacy(src):
    """Python 2 control-file forms -> Python 3, keeping every line where it
    was: print and exec statements, ``print >>f``, ``except E, e``, ``raise E,
    msg``, ``0644``, ``10L``, ``<>``.  (``raise "msg"`` is done on the AST.)"""
    return _LegacyTranslator(src).text()


class _LegacyTranslator:
    """translate_legacy's parts.  Literals are rewritten in the text's code
    spans first; then each statement form has its method, which only adds
    edits (offsets in the text, applied last to first, so that lines stay
    where they were).  Where a statement, a call or an argument ends comes
    from one bracket-depth scanner, _scan."""

    _SPAN = re.compile(r"#|(?<![\w])[rRbBuUfF]{0,2}('''|\"\"\"|'|\")")
    _OCTAL = re.compile(r"(?<![\w.])(?<![eE][+-])0+([0-7]+)(?![\w.])")
    _LONG = re.compile(r"(?<![\w.])(0[xX][0-9a-fA-F]+|\d+)[lL](?!\w)")

    def __init__(self, src):
        import tokenize
        self.T = tokenize           # imported only when a control file comes
        self.src = self._literals(src)
        self.edits = []             # (start, end, text)
        try:
            toks = list(tokenize.generate_tokens(io.StringIO(self.src).readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            toks = []               # compile() will say what is wrong
        self.sig = [t for t in toks if t.type not in (tokenize.NL, tokenize.COMMENT)]
        self.offsets = [0]
        for line in self.src.splitlines(True):
            self.offsets.append(self.offsets[-1] + len(line))

    def text(self):
        forms = {"print": self._print, "exec": self._exec, "except": self._except,
                 "raise": self._raise}
        for i, tok in enumerate(self.sig):
            if tok.type == self.T.NAME and tok.string in forms and self._starts_statement(i):
                forms[tok.string](i, self._statement_end(i))
        src = self.src
        for start, stop, text in sorted(self.edits, reverse=True):
            src = src[:start] + text + src[stop:]
        return src

    # Literals: 0644, 10L and <>, in code (not in strings or comments).

    @classmethod
    def _literals(cls, src):
        out = []
        last = 0
        for start, end in cls._code_spans(src):
            out.append(src[last:start])
            code = src[start:end]
            code = cls._OCTAL.sub(lambda m: "0o" + m.group(1), code)
            code = cls._LONG.sub(lambda m: m.group(1), code)
            out.append(code.replace("<>", "!="))
            last = end
        out.append(src[last:])
        return "".join(out)

    @classmethod
    def _code_spans(cls, src):
        """(start, end) of the parts of src that are code (not strings, comments)."""
        spans = []
        pos = 0
        while True:
            m = cls._SPAN.search(src, pos)
            if not m:
                spans.append((pos, len(src)))
                return spans
            spans.append((pos, m.start()))
            if m.group() == "#":
                end = src.find("\n", m.start())
                pos = len(src) if end < 0 else end
                continue
            quote = m.group(1)
            i = m.end()
            while i < len(src):
                ch = src[i]
                if ch == "\\":
                    i += 2
                    continue
                if src.startswith(quote, i):
                    i += len(quote)
                    break
                if ch == "\n" and len(quote) == 1:
                    break
                i += 1
            pos = i

    # Tokens: the scanner and what it answers.

    def _op(self, k):
        """The operator at token k, "" for any other token."""
        t = self.sig[k]
        return t.string if t.type == self.T.OP else ""

    def _off(self, pos):
        """A token's (row, col) as an offset in the text."""
        return self.offsets[pos[0] - 1] + pos[1]

    def _edit(self, start, end, text):
        """Replaces the text between two token positions."""
        self.edits.append((self._off(start), self._off(end), text))

    def _scan(self, i, stop=None):
        """(k, depth) for each token from i (to stop), depth being the bracket
        depth the token sits at, counted from i; a bracket sits outside the
        pair it opens or closes."""
        depth = 0
        for k in range(i, len(self.sig) if stop is None else stop):
            op = self._op(k)
            if op in (")", "]", "}"):
                depth -= 1
            yield k, depth
            if op in ("(", "[", "{"):
                depth += 1

    def _statement_end(self, i):
        """The NEWLINE, ";" or ENDMARKER that ends the statement at i."""
        ends = (self.T.NEWLINE, self.T.ENDMARKER)
        for k, depth in self._scan(i):
            if depth == 0 and (self.sig[k].type in ends or self._op(k) == ";"):
                return k
        return len(self.sig)

    def _closing(self, i):
        """The bracket that closes the one at i."""
        for k, depth in self._scan(i):
            if depth == 0 and self._op(k) in (")", "]", "}"):
                return k
        return len(self.sig) - 1

    def _top_commas(self, i, stop):
        """The commas between i and stop outside any brackets."""
        return [k for k, depth in self._scan(i, stop) if depth == 0 and self._op(k) == ","]

    def _starts_statement(self, i):
        if i == 0:
            return True
        prev = self.sig[i - 1]
        return prev.type in (self.T.NEWLINE, self.T.INDENT, self.T.DEDENT) \
            or self._op(i - 1) in (";", ":")

    # The statement forms: token i is the keyword, end the statement's end.

    def _is_statement(self, i, end):
        """Whether print or exec at i is the Python 2 statement (not a name
        assigned, looked up or passed, nor a call already); a bare one is
        made a call here."""
        if i + 1 == len(self.sig) or self._op(i + 1) in ("=", ".", ",", ")", "+="):
            return False
        if self._op(i + 1) == "(" and self._closing(i + 1) == end - 1:
            return False
        if end == i + 1:
            self._edit(self.sig[i].end, self.sig[i].end, "()")
            return False
        return True

    def _print(self, i, end):
        """print a, b[,] and print >>f, a[,] -> print(a, b[, end=" "][, file=f])."""
        if not self._is_statement(i, end):
            return
        sig = self.sig
        tail = ""
        first = i + 1
        if self._op(i + 1) == ">>":
            commas = self._top_commas(i + 2, end)
            dest_end = commas[0] if commas else end
            dest = self.src[self._off(sig[i + 2].start):self._off(sig[dest_end - 1].end)]
            tail = f"file={dest}"
            first = dest_end + 1 if commas else end
        if self._op(end - 1) == "," and end - 1 >= first:
            # A trailing comma: a space, no newline.
            tail = ", ".join(x for x in ('end=" "', tail) if x)
            self._edit(sig[end - 1].start, sig[end - 1].end, "")
            last_arg = sig[end - 2] if end - 2 >= first else None
        else:
            last_arg = sig[end - 1] if end - 1 >= first else None
        if first < end and last_arg is not None:
            self._edit(sig[i].start, sig[first].start, "print(")
            self._edit(last_arg.end, last_arg.end, (", " + tail if tail else "") + ")")
        else:
            self._edit(sig[i].start, sig[end - 1].end, f"print({tail})")

    def _exec(self, i, end):
        """exec code [in g[, l]] -> exec(code[, g[, l]])."""
        if not self._is_statement(i, end):
            return
        sig = self.sig
        ins = [k for k in range(i + 1, end) if sig[k].type == self.T.NAME
               and sig[k].string == "in"]
        self._edit(sig[i].start, sig[i + 1].start, "exec(")
        if ins:
            self._edit(sig[ins[0]].start, sig[ins[0]].end, ",")
        self._edit(sig[end - 1].end, sig[end - 1].end, ")")

    def _except(self, i, end):
        """except E, e: -> except E as e:"""
        colon = next((k for k in range(i + 1, end) if self._op(k) == ":"), None)
        if colon is None:
            return
        commas = self._top_commas(i + 1, colon)
        if len(commas) == 1 and colon - commas[0] == 2 \
                and self.sig[colon - 1].type == self.T.NAME:
            self._edit(self.sig[commas[0]].start, self.sig[commas[0]].end, " as")

    def _raise(self, i, end):
        """raise E, msg -> raise E(msg)."""
        commas = self._top_commas(i + 1, end)
        if len(commas) == 1:
            self._edit(self.sig[commas[0]].start, self.sig[commas[0]].end, "(")
            self._edit(self.sig[end - 1].end, self.sig[end - 1].end, ")")


def _legacy_exception(value):
    """``raise "message"`` (Python 2) raises AutoservError("message")."""
    if isinstance(value, BaseException) or (isinstance(value, type)
                                            and issubclass(value, BaseException)):
        return value
    return AutoservError(str(value))


def compile_control(src, filename):
    """Translates legacy forms and compiles; SyntaxError keeps the original
    file's line numbers."""
    import ast
    text = translate_legacy(src)
    tree = ast.parse(text, filename)

    class _Raises(ast.NodeTransformer):
        def visit_Raise(self, node):
            self.generic_visit(node)
            if node.exc is not None and not (isinstance(node.exc, ast.Call)
                                             and isinstance(node.exc.func, ast.Name)
                                             and node.exc.func.id.endswith(("Error", "Exception"))):
                call = ast.Call(func=ast.Name(id="_autoserv_legacy_exception", ctx=ast.Load()),
                                args=[node.exc], keywords=[])
                node.exc = ast.copy_location(call, node.exc)
            return node

    tree = ast.fix_missing_locations(_Raises().visit(tree))
    return compile(tree, filename, "exec", dont_inherit=True)


def _check_names(src, filename):
    """--check's look at names: (line, text) for each name the control file
    uses that nothing defines, and each attribute that a group (hosts.X) or
    a host it makes (h = hosts.SSHHost(...); h.rn) does not have, with the
    closest known name; and whether the file makes names as it runs (exec,
    globals()), when these may be names it makes."""
    import ast
    import builtins
    tree = ast.parse(translate_legacy(src), filename)
    groups = _groups()
    defined, stores, made = set(), collections.Counter(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] += 1
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            defined.update(node.names)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call):
            func = node.value.func
            cls = (getattr(groups["hosts"], func.attr, None) if isinstance(func, ast.Attribute)
                   and isinstance(func.value, ast.Name) and func.value.id == "hosts"
                   else Host if isinstance(func, ast.Name) and func.id == "create_host"
                   else None)
            if isinstance(cls, type) and issubclass(cls, Host):
                made[node.targets[0].id] = cls
    defined |= set(stores)
    known = defined | set(control_namespace()) | set(dir(builtins))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                and node.id not in known:
            problems.append((node.lineno, f"name {node.id!r} is not defined"
                             + _closest(node.id, known)))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = node.value.id
            if owner in groups and owner not in defined:
                members = dir(groups[owner])
            elif owner in made and stores[owner] == 1:
                members = dir(made[owner])
            else:
                continue
            if node.attr not in members and isinstance(node.ctx, ast.Load):
                problems.append((node.lineno, f"{owner}.{node.attr}: no such attribute"
                                 + _closest(node.attr, members)))
    dynamic = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                  and n.func.id in ("exec", "eval", "globals", "vars") for n in ast.walk(tree))
    return sorted(set(problems)), dynamic


def _closest(name, candidates, form="; did you mean {!r}?", hidden="__"):
    """form filled with the candidate closest to name (none starting with
    hidden), or "" when none is close."""
    import difflib
    close = difflib.get_close_matches(name, [c for c in candidates
                                             if not c.startswith(hidden)], 1, 0.7)
    return form.format(close[0]) if close else ""


def _did_you_mean(exc):
    """Python's own hint for a NameError or AttributeError ("Did you mean:
    'x'?"), which str() of the exception leaves out; "" for any other."""
    import builtins
    name = getattr(exc, "name", None)
    if not isinstance(name, str) or "Did you mean" in str(exc):
        return ""
    if isinstance(exc, NameError):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return ""
        candidates = set(tb.tb_frame.f_locals) | set(tb.tb_frame.f_globals) | set(dir(builtins))
    elif isinstance(exc, AttributeError) and getattr(exc, "obj", None) is not None:
        candidates = set(dir(exc.obj))
    else:
        return ""
    return _closest(name, candidates, ". Did you mean: {!r}?", "_")


def _group(name, **members):
    import types
    module = types.ModuleType(name)
    module.__dict__.update(members)
    return module


def _exceptions():
    return {n: v for n, v in globals().items() if isinstance(v, type)
            and issubclass(v, AutoservError)}


def _groups():
    """The control-file groups of _API, built once (autoserv.hosts is the
    hosts a control file sees)."""
    g = globals()
    return {name: _group(name, **({n: g[n] for n in names} if names else _exceptions()))
            for name, names in _API.items()}


def control_namespace(job=None, machines=(), args=(), filename="<control>"):
    import builtins
    ns = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins,
          "os": os, "sys": sys, "time": time, "job": job,
          "machines": list(machines), "args": list(args),
          "_autoserv_legacy_exception": _legacy_exception}
    g = globals()
    ns.update((name, g[name]) for name in _API_NAMES + tuple(_API))
    ns.update(_exceptions())
    return ns


# Shards, merge and Slurm ######################################################

# A job too big for one box is split across a job engine's array tasks: each
# task runs this same file on its share of the machine groups (a machines-file
# line is a group a control file uses together, so a line is never split),
# and `merge` puts the shards' results dirs back together as one.

# Where `--shard env` finds a task's index and the number of tasks, in the
# order tried: (index variable, count variable, what the first index is).
# Kubernetes puts only the index in an Indexed Job's pods (the completion
# count is in the Job spec, not the env), so there the count is given as
# `--shard env/N`.
_SHARD_ENV = (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
              ("CI_NODE_INDEX", "CI_NODE_TOTAL", 1),        # GitLab parallel: from 1
              ("JOB_COMPLETION_INDEX", None, 0))           # Kubernetes Indexed Job
SLURM_POLL = 1.0            # s between squeue polls while a --slurm job runs
SLURM_CANCEL_WAIT = 60.0    # s a cancelled array gets to end before the merge


def _shard_int(text, what):
    try:
        value = int(str(text).strip())
    except ValueError:
        raise AutoservUsageError(f"--shard: {what} is {text!r}, not a whole number")
    return value


def parse_shard(spec, environ=None):
    """(index, count, source) for ``--shard I/N``, ``env`` or ``env/N``:
    the index counts from 0, source says where the numbers came from.
    Raises AutoservUsageError with one line saying what is wrong."""
    env = os.environ if environ is None else environ
    head, slash, tail = str(spec).partition("/")
    given = _shard_int(tail, "N") if slash else None
    if head != "env":
        if given is None:
            raise AutoservUsageError(f"--shard {spec}: give I/N (e.g. 0/4), env or env/N")
        index, count, source = _shard_int(head, "I"), given, f"--shard {spec}"
    else:
        for index_var, count_var, first in _SHARD_ENV:
            if env.get(index_var, "") == "":
                continue
            index = _shard_int(env[index_var], index_var)
            if isinstance(first, str):      # Slurm: --array=M-K starts at M
                index -= _shard_int(env.get(first) or 0, first)
            elif first:
                index -= first
            used = [index_var]
            count = given
            if count_var and env.get(count_var, "") != "":
                from_env = _shard_int(env[count_var], count_var)
                if given is not None and given != from_env:
                    raise AutoservUsageError(f"--shard {spec}: {count_var} says "
                                             f"{from_env} shards, not {given}")
                count = from_env
                used.append(count_var)
            if count is None:
                raise AutoservUsageError(
                    f"--shard env: {index_var} is set but no count of shards is; "
                    "give it as --shard env/N")
            source = ", ".join(f"{v}={env[v]}" for v in used)
            if given is not None and len(used) == 1:
                source += f", N={given} from --shard {spec}"
            break
        else:
            raise AutoservUsageError(
                "--shard env: none of " + ", ".join(v for v, _, _ in _SHARD_ENV)
                + " is set (not inside an array task?); use --shard I/N")
    if count < 1:
        raise AutoservUsageError(f"--shard {spec}: the number of shards must be 1 or more")
    if not 0 <= index < count:
        raise AutoservUsageError(f"--shard {spec}: shard index {index} is outside "
                                 f"0..{count - 1} ({source})")
    return index, count, source


def shard_groups(groups, index, count):
    """The groups shard index/count takes: those whose position mod count is
    index (stable: a line's shard depends only on its place in the file)."""
    return [list(group) for n, group in enumerate(groups) if n % count == index]


def _digest(text):
    import hashlib
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _shard_record(groups, index, count, source, control_text):
    """What a shard records about itself (summary.json's job.shard, keyval):
    enough for merge to check shards belong together and to name the hosts
    of a shard that never reported."""
    return {"shard": f"{index}/{count}", "index": index, "count": count,
            "source": source, "groups": [list(g) for g in groups],
            "machines_digest": _digest("\n".join(" ".join(g) for g in groups)),
            "control_digest": _digest(control_text)}


def _read_keyval(path):
    values = {}
    try:
        with open(os.path.join(path, "keyval"), encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    values[key] = value
    except OSError:
        pass
    return values


def _load_shard(path):
    """A shard's results dir, read: its summary, shard record and exit status
    (None when it never wrote one: killed before its end)."""
    path = os.path.abspath(path)
    try:
        with open(os.path.join(path, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise AutoservUsageError(f"merge: {path}: no summary.json (not a results dir, "
                                 "or its shard never started)")
    except (OSError, ValueError) as e:
        raise AutoservUsageError(f"merge: {path}: summary.json unreadable: {e}")
    shard = (summary.get("job") or {}).get("shard")
    if not isinstance(shard, dict):
        raise AutoservUsageError(f"merge: {path}: not a shard (it ran without --shard)")
    status = _read_keyval(path).get("exit_status")
    return {"dir": path, "summary": summary, "shard": shard,
            "exit_status": int(status) if status and status.lstrip("-").isdigit() else None}


def _check_shards(shards, expect=None):
    """Refuses (AutoservUsageError naming why) shards that do not belong to
    one job: different control files, machine lists or splits, or two
    results for the same shard."""
    first = expect or shards[0]["shard"]
    where = "the job submitted" if expect else shards[0]["dir"]
    for s in shards:
        for key, what in (("control_digest", "ran different control files"),
                          ("machines_digest", "had different machine lists"),
                          ("count", "were split into different numbers of shards")):
            if s["shard"].get(key) != first.get(key):
                raise AutoservUsageError(
                    f"merge: refusing: {where} and {s['dir']} {what} "
                    f"({key} {first.get(key)} vs {s['shard'].get(key)})")
    seen = {}
    for s in shards:
        other = seen.setdefault(s["shard"]["index"], s)
        if other is not s:
            raise AutoservUsageError(f"merge: refusing: {other['dir']} and {s['dir']} are "
                                     f"both shard {s['shard']['shard']} (overlapping shards)")


def _link_host_dirs(out, shard):
    """Links each per-host (per-task) dir of a shard into the merged dir and
    its debug dir as debug/shard.I: linked, so nothing is copied twice and
    the shard's own dir stays whole."""
    index = shard["shard"]["index"]
    made = []
    for name in sorted(os.listdir(shard["dir"])):
        src = os.path.join(shard["dir"], name)
        if os.path.islink(src) or not os.path.isdir(src):
            continue
        dest = (os.path.join(out, "debug", f"shard.{index}") if name == "debug"
                else os.path.join(out, name))
        if os.path.lexists(dest):       # the same name from two shards: keep both
            dest = f"{dest}.shard{index}"
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(os.path.relpath(src, os.path.dirname(dest)), dest)
        made.append(dest)
    return made


def merge_shards(out, dirs, expect=None, notes=None, quiet=False, loaded=None):
    """Merges shard results dirs into the results dir `out` (made already):
    status.log (each shard's lines under a `shard.I` group), summary.json,
    junit.xml, keyval, per-host dirs linked.  `expect` (a shard record) is
    the job as submitted, `notes` {index: text} what the engine said of a
    shard.  Returns the exit status: 1 when a shard is missing or did not
    finish, or one exited 1; else 3 when one recorded a failed test; else 4
    when one dropped sick hosts (--verify-first) or found them (--verify,
    --repair); else 0.  loaded: the dirs' shard records, read already."""
    shards = loaded if loaded is not None else [_load_shard(d) for d in dirs]
    if not shards and not expect:
        raise AutoservUsageError("merge: no shard results dirs given")
    _check_shards(shards, expect)
    info = expect or shards[0]["shard"]
    count, groups = info["count"], info["groups"]
    present = {s["shard"]["index"]: s for s in shards}
    notes = notes or {}
    log = StatusLog(os.path.join(out, "status.log"))
    hosts, missing, codes = {}, [], []
    for index in range(count):
        spec = f"{index}/{count}"
        share = [h for g in shard_groups(groups, index, count) for h in g]
        s = present.get(index)
        log.record("START", None, f"shard.{index}",
                   f"shard {spec}: " + (s["dir"] if s else "no results"))
        worst = "GOOD"
        if s:
            try:
                with open(os.path.join(s["dir"], "status.log"), encoding="utf-8",
                          errors="surrogateescape") as f:
                    worst = log.relay(f.read()) or "GOOD"
            except (OSError, ValueError) as e:
                log.record("WARN", None, f"shard.{index}", f"its status.log: {e}")
            for name, entry in s["summary"].get("hosts", {}).items():
                old = hosts.get(name)
                if old is None or _SEVERITY.get(entry["outcome"], 0) > _SEVERITY.get(
                        old["outcome"], 0):
                    hosts[name] = entry
        done = s is not None and s["exit_status"] not in (None, 130, 143)
        if done:
            codes.append(s["exit_status"])
        else:
            why = ("no results dir (is the results dir on a filesystem the nodes share, "
                   "writable by the job's user?)" if s is None else "did not finish" if
                   s["exit_status"] is None else f"interrupted (exit status {s['exit_status']})")
            if notes.get(index):
                why += f"; {notes[index]}"
            not_run = [h for h in share if h not in hosts]
            for h in not_run:
                hosts[h] = {"outcome": "ABORT", "duration": 0.0,
                            "error": f"not run: shard {spec} {why}"}
            missing.append({"shard": spec, "hosts": share, "not_run": not_run, "why": why})
            log.record("ABORT", None, f"shard.{index}", f"shard {spec} missing: {why}; "
                       f"its hosts: {', '.join(share) or '(none)'}")
            worst = "ABORT"
        log.record(f"END {worst_status(worst)}", None, f"shard.{index}")
        if s:
            _link_host_dirs(out, s)
    status = (1 if missing or any(c not in (0, 3, EXIT_HOSTS_DROPPED) for c in codes)
              else 3 if 3 in codes else EXIT_HOSTS_DROPPED if EXIT_HOSTS_DROPPED in codes
              else 0)
    dropped = {name: why for s in shards
               for name, why in s["summary"]["job"].get("dropped", {}).items()}
    errors = [f"shard {m['shard']} missing ({m['why']}): its hosts "
              f"{', '.join(m['hosts']) or '(none)'}" for m in missing]
    errors += [f"{name}: {e['outcome']}: {_last_line(e['error'])}"
               for name, e in sorted(hosts.items())
               if e["outcome"] != "GOOD" and not e["error"].startswith("not run:")]
    outcome = {0: "GOOD", EXIT_HOSTS_DROPPED: "WARN"}.get(status, "FAIL")
    jobs = [s["summary"]["job"] for s in shards]
    started = min((j.get("started", time.time()) for j in jobs), default=time.time())
    ended = max((j.get("started", 0) + j.get("duration", 0) for j in jobs), default=started)
    machines = [h for g in groups for h in g]
    job = {"outcome": outcome, "exit_status": status, "error": "\n".join(errors),
           "started": started, "duration": round(max(ended, started) - started, 3),
           "control": jobs[0].get("control") if jobs else None, "machines": machines,
           "user": jobs[0].get("user") if jobs else _user_name(),
           "label": jobs[0].get("label", "") if jobs else "", "version": __version__,
           "control_digest": info["control_digest"],
           "machines_digest": info["machines_digest"],
           "shards": {"count": count, "merged": sorted(s["shard"]["shard"] for s in shards),
                      "missing": missing, "dirs": [s["dir"] for s in shards]}}
    if dropped:
        job["dropped"] = dropped
    _write_atomic(os.path.join(out, "summary.json"),
                  json.dumps({"job": job, "hosts": hosts}, indent=2, sort_keys=True) + "\n")
    _write_atomic(os.path.join(out, "junit.xml"),
                  _junit_xml(hosts, outcome, job["error"], job["duration"]))
    keyval = {"user": job["user"], "label": job["label"], "hostnames": ",".join(machines),
              "autoserv_version": __version__, "job_started": int(started),
              "shards": count, "shards_merged": ",".join(str(i) for i in sorted(present)),
              "shards_missing": ",".join(m["shard"].split("/")[0] for m in missing),
              "machines_digest": info["machines_digest"],
              "control_digest": info["control_digest"],
              "job_finished": int(time.time()), "exit_status": status}
    _write_atomic(os.path.join(out, "keyval"),
                  "".join(f"{k}={v}\n" for k, v in keyval.items()))
    _report_quietly(out)
    for line in errors:
        _say(line, quiet and status == 0)
    _say(f"merged {len(shards)} of {count} shards into {out}: {outcome}, "
         f"exit status {status}", quiet)
    return status


def _merge_main(argv):
    """`autoserv.py merge -r OUT RESULTS_DIR...`."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise AutoservUsageError(f"merge: {message} (see merge --help)")

    p = Parser(prog="autoserv merge", description="Merge the results dirs of a "
               "job's shards (--shard) into one results dir.")
    p.add_argument("-r", "--results", required=True, metavar="OUT")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("dirs", nargs="+", metavar="RESULTS_DIR")
    try:
        opts = p.parse_args(argv)
        # Refused (not shards, or not of one job) before OUT is claimed.
        shards = [_load_shard(d) for d in opts.dirs]
        _check_shards(shards)
        out = _claim_results_dir(opts.results, False)
        return merge_shards(out, opts.dirs, quiet=opts.quiet, loaded=shards)
    except AutoservUsageError as e:
        _say(f"error: {e}")
        return 2


def _argv_for_shards(argv, opts):
    """The command line each array task runs: this one without the options
    that make it the submitter (--slurm..., -r, --overwrite, --junit)."""
    cut = len(argv) - len(opts.args) - (opts.control is not None)   # where CONTROL_FILE is
    head, tail = argv[:cut], argv[cut:]
    kept, skip = [], False
    for word in head:
        if skip:
            skip = False
        elif word in ("--slurm", "--slurm-option", "--slurm-timeout", "-r", "--results",
                      "--junit"):     # the merge writes the one junit file
            skip = True
        elif word == "--overwrite" or word.startswith(
                ("--slurm=", "--slurm-option=", "--slurm-timeout=", "--results=",
                 "--junit=")) or (word.startswith("-r") and not word.startswith("--")):
            continue
        else:
            kept.append(word)
    return kept + tail


def _slurm(*argv, timeout=30):
    """A Slurm client command, bounded; its CmdResult."""
    return run(shlex.join(argv), timeout=timeout, ignore_status=True)


def _slurm_tasks(job_id):
    """{array index: (state, exit code)} from `scontrol show job`, which
    still knows a task for MinJobAge after it ended."""
    result = _slurm("scontrol", "-o", "show", "job", job_id)
    tasks = {}
    for line in result.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("ArrayTaskId", "").isdigit():
            tasks[int(fields["ArrayTaskId"])] = (fields.get("JobState", "?"),
                                                 fields.get("ExitCode", "?"))
    return tasks


def _slurm_run(opts, argv, resultdir, groups, control_text):
    """--slurm N: submits an sbatch array of N shards, shows their states
    while waiting, merges when all have ended; returns the merged status."""
    count = opts.slurm
    shards = os.path.join(resultdir, "shards")
    if opts.overwrite:          # an earlier run's shards would be merged as ours
        shutil.rmtree(shards, ignore_errors=True)
    os.mkdir(shards)
    os.makedirs(os.path.join(resultdir, "debug"), exist_ok=True)
    LOG.open(os.path.join(resultdir, "debug", "autoserv.log"))
    python = shlex.quote(sys.executable)
    me = shlex.quote(os.path.abspath(__file__))
    args = " ".join(shlex.quote(a) for a in _argv_for_shards(argv, opts))
    q = shlex.quote
    script = os.path.join(shards, "autoserv.sbatch")
    _write_atomic(script, textwrap.dedent(f"""\
        #!/bin/sh
        #SBATCH --job-name=autoserv
        #SBATCH --array=0-{count - 1}
        #SBATCH --output={shards}/slurm-%a.out
        #SBATCH --chdir={os.getcwd()}
        # Written by autoserv --slurm {count}: one array task per shard.
        # The results dir must be on a filesystem every node shares.
        dir={q(shards)}/$SLURM_ARRAY_TASK_ID
        if ! mkdir "$dir"; then
            echo "autoserv shard $SLURM_ARRAY_TASK_ID on $(hostname): cannot write $dir:" \\
                 "the results dir must be on a filesystem the nodes share," \\
                 "writable by the job's user" >&2
            exit 2
        fi
        exec {python} {me} --shard env -r "$dir" --overwrite {args}
        """))
    submit = _slurm("sbatch", "--parsable", *opts.slurm_option, script, timeout=60)
    job_id = submit.stdout.strip().split(";")[0]
    if submit.exit_status != 0 or not job_id.isdigit():
        _say(f"error: sbatch failed (exit status {submit.exit_status}): "
             f"{_last_line(submit.stderr or submit.stdout)}")
        return 2
    LOG.write(f"--slurm: submitted {script} as job {job_id}")
    _say(f"slurm job {job_id}: {count} shards, results in {shards}", opts.quiet)
    status, seen, failing = None, {}, None
    deadline = time.monotonic() + opts.slurm_timeout
    try:
        while True:
            r = _slurm("squeue", "-h", "-r", "-j", job_id, "-o", "%K %T")
            if r.exit_status == 0:
                failing = None
                states = dict(line.split(None, 1) for line in r.stdout.splitlines()
                              if len(line.split(None, 1)) == 2)
                for index, state in sorted(states.items()):
                    if seen.get(index) != state:
                        seen[index] = state
                        _say(f"slurm job {job_id}: shard {index}/{count} {state}", opts.quiet)
                if not states:
                    break
            elif "Invalid job id" in r.stderr:      # ended and already purged
                break
            else:   # the controller may restart; a minute of errors is the end
                failing = failing or time.monotonic()
                if time.monotonic() - failing > 60:
                    _say(f"error: squeue keeps failing: {_last_line(r.stderr)}; "
                         "cancelling the job")
                    _slurm("scancel", job_id)
                    break
            if time.monotonic() > deadline:
                _say(f"error: --slurm-timeout {opts.slurm_timeout:g} s passed; "
                     f"cancelling job {job_id}")
                _slurm("scancel", job_id)
                _slurm_wait_gone(job_id)
                break
            time.sleep(SLURM_POLL)
    except (KeyboardInterrupt, _Terminated) as e:
        status = 130 if isinstance(e, KeyboardInterrupt) else 143
        # A second signal must not cut the cancel and the merge short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _say(f"interrupted: cancelling slurm job {job_id}, then merging what finished")
        _slurm("scancel", job_id)
        _slurm_wait_gone(job_id)
    tasks = _slurm_tasks(job_id)
    notes = {}
    for index in range(count):
        state, code = tasks.get(index, ("no record left", "?"))
        notes[index] = f"slurm: {state}, exit code {code}, see {shards}/slurm-{index}.out"
        LOG.write(f"--slurm: shard {index}/{count}: {state} {code}")
    dirs = [os.path.join(shards, str(i)) for i in range(count)
            if os.path.exists(os.path.join(shards, str(i), "summary.json"))]
    expect = _shard_record(groups, 0, count, "--slurm", control_text)
    merged = merge_shards(resultdir, dirs, expect=expect, notes=notes, quiet=opts.quiet)
    if opts.junit:
        shutil.copyfile(os.path.join(resultdir, "junit.xml"), os.path.abspath(opts.junit))
    LOG.write(f"--slurm: merged, exit status {status or merged}")
    LOG.close()
    return status or merged


def _slurm_wait_gone(job_id):
    """Waits (at most SLURM_CANCEL_WAIT) for a cancelled job to leave squeue."""
    end = time.monotonic() + SLURM_CANCEL_WAIT
    while time.monotonic() < end:
        r = _slurm("squeue", "-h", "-j", job_id, "-o", "%T")
        if r.exit_status != 0 or not r.stdout.strip():
            return
        time.sleep(SLURM_POLL)


# The HTML report ##############################################################

# index.html in a results dir: one self-contained page (inline CSS and SVG; a
# Content-Security-Policy that allows no script, no fetch) made only from the
# files there (summary.json, status.log, keyval, the host dirs), so it serves
# a finished job, a merged one and one that died alike.  Everything shown is
# escaped: host output is hostile input.

_REPORT_COLOURS = {"GOOD": "#2e7d32", "WARN": "#f9a825", "FAIL": "#c62828",
                   "ERROR": "#8e24aa", "ABORT": "#455a64", "RUNNING": "#1565c0"}
_REPORT_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1c2126;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:1.35em;margin:.4em 0}h2{font-size:1.1em;margin:1.4em 0 .5em}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;
 font-size:.85em}
.wrap{overflow-x:auto;background:#fff;border:1px solid #d8dde3;border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e6e9ed;vertical-align:top}
th{background:#eef1f4;font-weight:600}
dl.args{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.args dt{color:#57606a}dl.args dd{margin:0;overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.3em 0;font-size:.85em;
 background:#f3f4f6;padding:6px;border-radius:4px}
details summary{cursor:pointer;overflow-wrap:anywhere}
.links a{margin-right:10px;white-space:nowrap}
svg text{font:12px system-ui,sans-serif}svg.timeline{min-width:760px}
.err{overflow-wrap:anywhere;max-width:46em}
@media (max-width:640px){body{font-size:14px}main{padding:8px}
 th,td{padding:4px 6px}}
"""


def _report_text(value):
    """Text for the page: control characters made visible, then escaped."""
    import html
    return html.escape(_neutralise(str(value)), quote=True)


def _report_href(path):
    """A link to a file inside the results dir (relative, %-quoted, escaped)."""
    import html
    from urllib.parse import quote
    return html.escape("./" + quote(path.replace(os.sep, "/")), quote=True)


def _report_badge(code):
    colour = _REPORT_COLOURS.get(code, "#757575")
    return f'<span class="badge" style="background:{colour}">{_report_text(code)}</span>'


def _report_seconds(seconds):
    seconds = max(0.0, float(seconds or 0))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _report_read(path, limit=4 << 20):
    try:
        with open(path, "rb") as f:
            return _decode(f.read(limit))
    except OSError:
        return ""


def _status_groups(entries, hosts):
    """The status log's groups as dicts (operation, host, depth under the
    host's outermost group, start, end, code, message), and its failing
    entries (host, operation, code, message).  A group's host is its subdir
    when that is a host, else its enclosing group's, else the host its START
    message begins with ("HOST: reboot")."""

    def named(text):
        head = text.split(": ", 1)[0] if ": " in text else None
        return head if head in hosts else None

    groups, problems, stack = [], [], []
    last = 0
    for e in entries:
        when = int(e["fields"].get("timestamp", "0") or 0) or last
        last = when
        code = e["code"]
        parent = stack[-1] if stack else None
        if code == "START":
            host = (e["subdir"] if e["subdir"] in hosts else parent and parent["host"]
                    or named(e["message"]))
            depth = (parent["depth"] + 1 if parent and parent["host"] == host
                     and host is not None else 0)
            stack.append({"operation": e["operation"], "host": host, "depth": depth,
                          "start": when, "end": None, "code": "RUNNING",
                          "message": e["message"]})
        elif code.startswith("END "):
            if stack:
                group = stack.pop()
                group["end"], group["code"] = when, code[4:]
                groups.append(group)
        elif code in FAILING_CODES or code == "WARN":
            host = parent and parent["host"] or named(e["message"])
            problems.append({"host": host, "operation": e["operation"], "code": code,
                             "message": e["message"]})
    for group in stack:         # never ended: the job died or still runs
        group["end"] = last
        groups.append(group)
    return groups, problems


def _report_timeline(groups, lanes):
    """The SVG timeline: a lane per host, a bar per status group."""
    label_w, width, lane_h = 170, 1100, 34
    mine = [g for g in groups if g["host"] in lanes]
    if not mine:
        return "<p>No status groups were recorded for a host.</p>"
    t0 = min(g["start"] for g in mine)
    span = max(1, max(g["end"] for g in mine) - t0)
    scale = (width - label_w - 10) / span
    height = lane_h * len(lanes) + 24
    out = [f'<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" '
           f'role="img" aria-label="timeline" xmlns="http://www.w3.org/2000/svg">']
    for n in range(6):
        x = label_w + (width - label_w - 10) * n / 5
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" '
                   'stroke="#dfe3e8"/>')
        anchor = ("start", "middle", "middle", "middle", "middle", "end")[n]
        out.append(f'<text x="{x:.1f}" y="{height - 5}" text-anchor="{anchor}" '
                   f'fill="#57606a">+{_report_text(_report_seconds(span * n / 5))}</text>')
    for row, lane in enumerate(lanes):
        y = row * lane_h
        out.append(f'<g class="lane" data-host="{_report_text(lane)}">')
        out.append(f'<text x="4" y="{y + 21}" fill="#1c2126">'
                   f'{_report_text(lane[:24])}</text>')
        for g in sorted((g for g in mine if g["host"] == lane),
                        key=lambda g: (g["depth"], g["start"])):
            inset = min(g["depth"], 3) * 4
            x = label_w + (g["start"] - t0) * scale
            w = max(3.0, (g["end"] - g["start"]) * scale)
            colour = _REPORT_COLOURS.get(g["code"], "#757575")
            took = _report_seconds(g["end"] - g["start"])
            tip = f"{g['operation']}: {g['code']}, {took}" + (
                f" ({_last_line(g['message'])})" if g["message"] else "")
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y + 4 + inset}" width="{w:.1f}" '
                       f'height="{lane_h - 8 - 2 * inset}" rx="3" fill="{colour}" '
                       f'fill-opacity="{0.35 + 0.2 * min(g["depth"], 3):.2f}" '
                       f'stroke="{colour}"><title>{_report_text(tip)}</title></rect>')
            label = f"{g['operation']} {took}"
            if g["depth"] > 0 and w > 7 * len(label):
                out.append(f'<text x="{x + 4:.1f}" y="{y + 21}" fill="#fff">'
                           f'{_report_text(label)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _report_files(resultdir, sub, limit=40):
    """Links to the files under resultdir/sub (following a merge's links)."""
    found = []
    base = os.path.join(resultdir, sub)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), resultdir)
            if not rel.endswith(".tmp") and len(found) < limit:
                found.append(rel)
    return " ".join(f'<a href="{_report_href(rel)}">'
                    f'{_report_text(os.path.relpath(rel, sub))}</a>' for rel in found)


def _report_folded(text):
    """Error text: its last line shown, the whole of it folded."""
    text = str(text or "")
    if "\n" not in text.strip():
        return _report_text(text)
    return (f"<details><summary>{_report_text(_last_line(text))}</summary>"
            f"<pre>{_report_text(text)}</pre></details>")


def report_html(resultdir):
    """The report page for a results dir, as text (see write_report)."""
    try:
        summary = json.loads(_report_read(os.path.join(resultdir, "summary.json")) or "{}")
    except ValueError:
        summary = {}
    job = summary.get("job") or {}
    hosts = summary.get("hosts") or {}
    keyval = dict(line.split("=", 1) for line in
                  _report_read(os.path.join(resultdir, "keyval")).splitlines() if "=" in line)
    text = _report_read(os.path.join(resultdir, "status.log"), 64 << 20)
    try:
        entries = parse_status_log(text[:text.rfind("\n") + 1])
    except ValueError as e:
        entries = []
        job.setdefault("error", f"status.log does not parse: {e}")
    lanes = sorted(hosts)
    groups, problems = _status_groups(entries, set(lanes))
    outcome = job.get("outcome") or ("RUNNING" if "exit_status" not in keyval else "FAIL")
    started = job.get("started") or float(keyval.get("job_started") or 0)
    title = f"autoserv: {outcome}: {os.path.basename(os.path.normpath(resultdir))}"
    facts = [("outcome", _report_badge(outcome)),
             ("started", _report_text(time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                                    time.localtime(started)))
              if started else ""),
             ("duration", _report_text(_report_seconds(job.get("duration", 0)))),
             ("exit status", _report_text(keyval.get("exit_status", job.get("exit_status", "")))),
             ("control file", _report_text(job.get("control") or "")),
             ("arguments", _report_text(" ".join(shlex.quote(str(a))
                                                 for a in job.get("args") or []))),
             ("machines", _report_text(", ".join(job.get("machines") or []))),
             ("user", _report_text(job.get("user") or keyval.get("user", ""))),
             ("label", _report_text(job.get("label") or keyval.get("label", ""))),
             ("run id", _report_text(job.get("run_id") or keyval.get("run_id", "")))]
    if job.get("shard"):
        facts.append(("shard", _report_text(job["shard"].get("shard", ""))))
    if job.get("shards"):
        facts.append(("shards", _report_text(
            f"{len(job['shards'].get('merged', []))} of {job['shards'].get('count')} merged")))
    if job.get("error"):
        facts.append(("error", _report_folded(job["error"])))
    rows = []
    for name in lanes:
        info = hosts[name]
        rows.append(f'<tr class="host" data-host="{_report_text(name)}">'
                    f"<td>{_report_text(name)}</td>"
                    f"<td>{_report_badge(info.get('outcome', ''))}</td>"
                    f"<td>{_report_text(_report_seconds(info.get('duration', 0)))}</td>"
                    f'<td class="err">{_report_folded(info.get("error", ""))}</td>'
                    f'<td class="links">{_report_files(resultdir, name)}</td></tr>')
    job_links = [p for p in ("status.log", "summary.json", "keyval", "control.srv",
                             "junit.xml", "console.log")
                 if os.path.isfile(os.path.join(resultdir, p))]
    debug = _report_files(resultdir, "debug")
    failing = [p for p in problems if p["code"] != "WARN"] + [
        p for p in problems if p["code"] == "WARN"]
    problem_rows = "".join(
        f"<tr><td>{_report_badge(p['code'])}</td><td>{_report_text(p['host'] or '')}</td>"
        f"<td>{_report_text(p['operation'])}</td>"
        f'<td class="err">{_report_folded(p["message"])}</td></tr>' for p in failing[:200])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_report_text(title)}</title><style>{_REPORT_CSS}</style></head><body><main>",
        f"<h1>autoserv job {_report_badge(outcome)} "
        f"<small>{_report_text(os.path.basename(os.path.normpath(resultdir)))}</small></h1>",
        '<div class="wrap" style="padding:10px"><dl class="args">',
        "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts if v), "</dl></div>",
        "<h2>Hosts</h2>",
        '<div class="wrap"><table class="hosts"><thead><tr><th>host</th><th>outcome</th>'
        "<th>duration</th><th>error</th><th>logs</th></tr></thead><tbody>",
        "".join(rows) or '<tr><td colspan="5">no hosts recorded</td></tr>',
        "</tbody></table></div>",
        "<h2>Timeline</h2>", '<div class="wrap" style="padding:6px">',
        _report_timeline(groups, lanes), "</div>",
        '<p class="legend">' + " ".join(_report_badge(c) for c in _REPORT_COLOURS) + "</p>"]
    dropped = job.get("dropped") or {}
    if dropped:
        parts += ["<h2>Sick hosts, left out</h2>",
                  '<div class="wrap"><table class="dropped"><thead><tr><th>host</th>'
                  "<th>why</th></tr></thead><tbody>", "".join(
                      f'<tr class="dropped" data-host="{_report_text(name)}"><td>'
                      f'{_report_text(name)}</td><td class="err">{_report_folded(why)}</td>'
                      "</tr>" for name, why in sorted(dropped.items())),
                  "</tbody></table></div>"]
    if problem_rows:
        parts += ["<h2>Failures and warnings</h2>",
                  '<div class="wrap"><table class="problems"><thead><tr><th>status</th>'
                  "<th>host</th><th>operation</th><th>message</th></tr></thead><tbody>",
                  problem_rows, "</tbody></table></div>"]
    parts += ["<h2>Job files</h2>", '<p class="links">',
              " ".join(f'<a href="{_report_href(p)}">{_report_text(p)}</a>' for p in job_links),
              "</p>", f'<p class="links">debug: {debug}</p>' if debug else "",
              f"<p><small>autoserv {_report_text(__version__)}, report written "
              f"{_report_text(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</small></p>",
              "</main></body></html>", ""]
    return "\n".join(parts)


def write_report(resultdir):
    """Writes resultdir/index.html (see report_html); returns its path.
    Raises AutoservUsageError when resultdir is not a results dir."""
    if not any(os.path.isfile(os.path.join(resultdir, n)) for n in ("summary.json",
                                                                    "status.log")):
        raise AutoservUsageError(f"report: {resultdir}: not a results dir (no summary.json "
                                 "or status.log); give the dir a job wrote (-r)")
    path = os.path.join(resultdir, "index.html")
    _write_atomic(path, report_html(resultdir))
    return path


def _report_quietly(resultdir):
    """write_report at a job's end: a report that cannot be written is a
    line in the debug log, never a change to the job's outcome."""
    try:
        write_report(resultdir)
    except Exception as e:
        LOG.write(f"report: could not write {resultdir}/index.html: {e}")


def _report_main(argv):
    """`autoserv.py report RESULTS_DIR...`: (re)writes each one's index.html."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: autoserv report RESULTS_DIR...\n\nWrites RESULTS_DIR/index.html, "
              "the job's report page, from the files in it.")
        return 0 if argv else 2
    try:
        for resultdir in argv:
            _say(f"wrote {write_report(os.path.abspath(resultdir))}")
    except AutoservUsageError as e:
        _say(f"error: {e}")
        return 2
    return 0


# CLI ##########################################################################

def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise AutoservUsageError(f"{message} (see --help)")

    p = Parser(prog="autoserv", description="Machine control for kernel and system "
               "test labs: runs CONTROL_FILE (Python) against the machines.",
               epilog="Exit status: 0 ok, 1 an exception escaped the control file, "
               "2 usage or syntax error, 3 a test recorded FAIL/ERROR/ABORT, "
               "4 sick hosts (--verify, --repair) or hosts dropped (--verify-first), "
               "130/143 interrupted.")
    a = p.add_argument
    a("control", nargs="?", metavar="CONTROL_FILE")
    a("args", nargs=argparse.REMAINDER, metavar="ARGS")
    a("-m", "--machines", action="append", default=[], metavar="LIST",
      help="machines, comma or space separated, each [user@]host[:port]")
    a("-M", "--machines-file", metavar="F", help="machines, one a line")
    a("-r", "--results", metavar="DIR", help="results dir (default results.<date>)")
    a("--results-base", metavar="DIR", help="where the default results.<date> dirs go "
      "(default: here); a 'latest' link beside them names the newest")
    a("--overwrite", action="store_true", help="reuse a non-empty results dir")
    a("-a", "--args", dest="extra_args", action="append", default=[], metavar="STR",
      help="split like a shell and appended to args")
    a("-e", "--execute", metavar="CMD", help="ad-hoc: run CMD on every machine at once "
      "and print a table of the outcomes (no CONTROL_FILE)")
    a("-c", "--client", action="store_true",
      help="CONTROL_FILE is a client-side (autotest) control file")
    a("-b", "--reboot", action="store_true", help="reboot every machine after the job")
    a("-u", "--user", help="recorded in keyval")
    a("-l", "--label", help="recorded in keyval")
    a("--ssh-user", help="default ssh user")
    a("--ssh-port", type=int, help="default ssh port")
    a("--ssh-option", action="append", default=[], metavar="OPT",
      help="extra ssh -o option (repeatable)")
    a("--ssh-config", metavar="F", help="ssh config file (ssh -F)")
    a("-i", "--identity", metavar="F", help="ssh identity file")
    a("--host-key-policy", choices=HOST_KEY_POLICIES,
      help="default accept-new")
    a("--known-hosts", metavar="F", help="known_hosts file for accept-new/strict")
    a("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, metavar="S")
    a("--persistent", action="store_const", const=True, default="auto",
      help="each host's first command starts its persistent agent (needs python3 "
           "there) and waits for it; by default none waits: a host's second command "
           "starts it in the background, later ones use it once it is up")
    a("--persistent-auto", dest="persistent", action="store_const", const="auto",
      help="the default: see --persistent")
    a("--no-persistent", dest="persistent", action="store_const", const=False,
      help="no persistent agent: every command is its own ssh session")
    a("-j", "--max-parallel", type=int, metavar="N",
      help="cap on concurrent subcommands in parallel*()")
    a("--junit", metavar="F", help="also write a JUnit XML summary")
    a("--check", action="store_true", help="compile the control file and exit")
    a("--verify", action="store_true", help="verify every machine at once and exit "
      "(no CONTROL_FILE): 0 all healthy, 4 some sick, each named with its failing check")
    a("--repair", action="store_true", help="repair (by escalation) then verify every "
      "machine and exit; with --verify-first: repair the sick ones once before the job")
    a("--verify-first", action="store_true", help="verify every machine before the "
      "control file runs; sick ones (not healed by --repair) are dropped from machines")
    a("--min-free", action="append", default=[], metavar="PATH=MB",
      help="verify: free space PATH needs (repeatable; PATH 'autodir' is the autotest "
      "dir; defaults: " + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_MIN_FREE_MB.items())
      + "; MB 0 drops the check)")
    a("--max-clock-skew", type=float, default=DEFAULT_MAX_CLOCK_SKEW, metavar="S",
      help="verify: how far a host's clock may be from this machine's (default %(default)g)")
    a("--autodir", metavar="DIR", help="-c: the client's install dir on each machine "
      "({host} becomes the machine's name; default: autodir= in /etc/autotest.conf there, "
      "else /usr/local/autotest)")
    a("--client-harness", action="store_true", help=argparse.SUPPRESS)
    a("--continue", dest="cont", action="store_true", help=argparse.SUPPRESS)
    a("--shard", metavar="I/N", help="run only machines-file lines whose index mod N "
      "is I; 'env' or 'env/N' takes them from an array job's environment")
    a("--slurm", type=int, metavar="N", help="run the job as a Slurm array of N shards "
      "and merge their results (RESULTS must be on a filesystem the nodes share)")
    a("--slurm-option", action="append", default=[], metavar="OPT",
      help="passed to sbatch (repeatable), e.g. --slurm-option=--partition=lab")
    a("--slurm-timeout", type=float, default=7 * 86400.0, metavar="S",
      help="--slurm: cancel the array if it has not ended after S seconds (default 7 days)")
    a("-v", "--verbose", action="store_true", help="echo the debug log")
    a("-q", "--quiet", action="store_true", help="say nothing but errors (no progress "
      "lines, no live view)")
    a("--stall-warn", type=float, default=STALL_WARN, metavar="S",
      help="warn when a command has printed nothing for S seconds (again with back-off; "
      "0: never; default %(default)g)")
    a("--version", action="version", version=f"autoserv {__version__}")
    return p


def _split_machines(values, source):
    machines = []
    for value in values:
        for name in re.split(r"\s*,\s*|\s+", value.strip()):
            if not name:
                if value.strip():
                    raise AutoservUsageError(f"{source}: empty machine name in {value!r}")
                raise AutoservUsageError(f"{source}: no machine names given")
            parse_machine(name)
            if name not in machines:
                machines.append(name)
    return machines


def _read_machines_file(path):
    """The file's groups: each line one group (several hosts, space or comma
    separated, that a control file uses together)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [l.split("#", 1)[0].strip() for l in f]
    except OSError as e:
        raise AutoservUsageError(f"machines file {path}: {e.strerror}")
    return [_split_machines([l], f"machines file {path}, line {n}")
            for n, l in enumerate(lines, 1) if l]


def _machine_groups(opts):
    """-m's machines (each its own group) then -M's lines, a machine kept
    once: a repeated single machine is dropped, but a group that repeats
    one is an error, since a shard would take a group apart."""
    groups, seen = [], {}
    candidates = [([m], "-m") for m in (_split_machines(opts.machines, "-m")
                                        if opts.machines else [])]
    if opts.machines_file:
        path = os.path.abspath(opts.machines_file)
        candidates += [(g, f"machines file {path}") for g in _read_machines_file(path)]
    for group, where in candidates:
        again = [m for m in group if m in seen]
        if again and len(group) > 1:
            raise AutoservUsageError(f"{where}: group {' '.join(group)}: {again[0]} is "
                                     f"already in {seen[again[0]]}; a machine belongs "
                                     "to one group")
        if not again:
            groups.append(group)
            seen.update((m, where) for m in group)
    return groups


def _read_control(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise AutoservUsageError(f"control file {path}: no such file")
    except IsADirectoryError:
        raise AutoservUsageError(f"control file {path}: is a directory")
    except OSError as e:
        raise AutoservUsageError(f"control file {path}: cannot read it ({e.strerror})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _compile_or_usage(src, path):
    try:
        return compile_control(src, path)
    except SyntaxError as e:
        raise AutoservUsageError(f"{path}:{e.lineno}: syntax error: {e.msg}")
    except ValueError as e:       # e.g. null bytes
        raise AutoservUsageError(f"{path}: cannot compile: {e}")


def _where(exc, control_path):
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if f.filename == control_path]
    return mine, (f"{control_path}:{mine[-1].lineno}: " if mine else "")


def _reason(exc, control_path):
    """One line for status.log: where, the exception's class, what."""
    _, where = _where(exc, control_path)
    text = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{where}{type(exc).__name__}: {text}{_did_you_mean(exc)}".rstrip(": ")


def _report(exc, control_path):
    """Text for an exception that escaped the control file: where in the
    control file first, then what."""
    import traceback
    mine, where = _where(exc, control_path)
    name = type(exc).__name__
    if isinstance(exc, AutoservError):
        return f"{where}{name}: {exc}"
    lines = ["Traceback (control file frames):"]
    lines += traceback.format_list(mine)
    lines.append(f"{where}{name}: {exc}{_did_you_mean(exc)}")
    return "".join(l if l.endswith("\n") else l + "\n" for l in lines).rstrip("\n")


# Settings given once: the command line wins over the environment, which
# wins over ./autoserv.conf, which wins over ~/.config/autoserv/autoserv.conf.
# Each is (option's dest, environment variable, autoserv.conf key in [ssh],
# a path?).
_SETTINGS = (("ssh_config", "AUTOSERV_SSH_CONFIG", "config", True),
             ("identity", "AUTOSERV_SSH_IDENTITY", "identity", True),
             ("ssh_user", "AUTOSERV_SSH_USER", "user", False),
             ("known_hosts", "AUTOSERV_SSH_KNOWN_HOSTS", "known_hosts", True),
             ("host_key_policy", "AUTOSERV_SSH_HOST_KEY_POLICY", "host_key_policy", False))


def _conf_files():
    return [os.path.abspath("autoserv.conf"),
            os.path.join(os.path.expanduser("~"), ".config", "autoserv", "autoserv.conf")]


def _read_conf(path):
    """autoserv.conf's [ssh] settings as {key: value}, paths made absolute
    (relative to the file's dir); {} when there is no such file."""
    import configparser
    import difflib
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        why = " ".join(str(e).split())
        raise AutoservUsageError(f"{path}: cannot read it ({why})")
    known = {key: is_path for _, _, key, is_path in _SETTINGS}
    for section in parser.sections():
        if section != "ssh":
            raise AutoservUsageError(f"{path}: unknown section [{section}]; the one "
                                     "section is [ssh]")
    values = {}
    for key, value in (parser.items("ssh") if parser.has_section("ssh") else []):
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            raise AutoservUsageError(f"{path}: [ssh] {key}: unknown setting" + (
                f"; did you mean {close[0]}?" if close else "; known: " + ", ".join(known)))
        if known[key] and value:
            value = os.path.join(os.path.dirname(path), os.path.expanduser(value))
        values[key] = value
    return values


def _apply_settings(opts):
    """Fills in the options the command line left unset from the
    environment and autoserv.conf; says where each came from in the log."""
    confs = [(path, _read_conf(path)) for path in _conf_files()]
    for dest, var, key, is_path in _SETTINGS:
        if getattr(opts, dest) is not None:
            continue
        value = os.environ.get(var) or None
        where = var
        if value and is_path:
            value = os.path.abspath(os.path.expanduser(value))
        for path, conf in confs:
            if value is None and conf.get(key):
                value, where = conf[key], path
        if value is not None:
            if dest == "host_key_policy" and value not in HOST_KEY_POLICIES:
                raise AutoservUsageError(f"{where}: host key policy {value!r}: use one of "
                                         + ", ".join(HOST_KEY_POLICIES))
            setattr(opts, dest, value)
            opts.settings_from.append(f"{dest} from {where}")
    if opts.host_key_policy is None:
        opts.host_key_policy = "accept-new"


def _say(message, quiet=False):
    if not quiet:
        print(f"autoserv: {_neutralise(message)}", file=sys.stderr, flush=True)


def main(argv=None):
    """The command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 143
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv):
    if argv[:1] == ["merge"]:       # a control file named merge: ./merge
        return _merge_main(argv[1:])
    if argv[:1] == ["report"]:      # likewise: ./report
        return _report_main(argv[1:])
    try:
        opts = _parser().parse_args(argv)
        health = _health_options(opts)
        if health:
            control_path = f"<{health}>"
            source = _HEALTH_CONTROL.format(mode=health)
        elif opts.execute is not None:
            if opts.control is not None or opts.client:
                raise AutoservUsageError("-e runs one command on the machines: give it "
                                         "no CONTROL_FILE and no -c")
            if not opts.machines and not opts.machines_file:
                raise AutoservUsageError("-e: give the machines to run it on (-m or -M)")
            control_path = "<-e>"
            source = _ADHOC.format(command=opts.execute)
        else:
            if opts.control is None:
                raise AutoservUsageError("no CONTROL_FILE given (see --help)")
            control_path = os.path.abspath(opts.control)
            if opts.client_harness:
                return _client_main(control_path, opts.cont)
            source = _read_control(control_path)
        code = _compile_or_usage(source, control_path)
        groups = _machine_groups(opts)
        shard = None
        if opts.shard is not None:
            if opts.slurm is not None:
                raise AutoservUsageError("--shard and --slurm: --slurm makes the shards "
                                         "itself; give one of them")
            index, count, how = parse_shard(opts.shard)
            shard = _shard_record(groups, index, count, how, source)
            groups = shard_groups(groups, index, count)
        machines = [m for g in groups for m in g]
        if opts.slurm is not None:
            if opts.slurm < 1:
                raise AutoservUsageError("--slurm N: N must be 1 or more")
            if not machines:
                raise AutoservUsageError("--slurm: give the machines to share out (-m or -M)")
            missing = [t for t in ("sbatch", "squeue", "scontrol", "scancel")
                       if not shutil.which(t)]
            if missing:
                raise AutoservUsageError(f"--slurm: {', '.join(missing)} not found "
                                         "(install slurm-client)")
        args = list(opts.args)
        for extra in opts.extra_args:
            try:
                args += shlex.split(extra)
            except ValueError as e:
                raise AutoservUsageError(f"-a {extra!r}: {e}")
        if opts.max_parallel is not None and opts.max_parallel < 1:
            raise AutoservUsageError("-j/--max-parallel must be 1 or more")
        if opts.stall_warn < 0:
            raise AutoservUsageError("--stall-warn S: S must be 0 (never) or more seconds")
        opts.settings_from = []
        _apply_settings(opts)
        for flag, dest in (("--ssh-config", "ssh_config"), ("-i", "identity")):
            value = getattr(opts, dest)
            if value and not os.path.isfile(value):
                where = next((w.split(" from ", 1)[1] for w in opts.settings_from
                              if w.startswith(dest + " from ")), None)
                raise AutoservUsageError(f"{flag} {value}: no such file"
                                         + (f" (set in {where})" if where else ""))
        if opts.check:
            problems, dynamic = _check_names(source, control_path)
            for line, text in problems:
                _say(f"{control_path}:{line}: {'warning: ' if dynamic else ''}{text}")
            if problems and not dynamic:
                return 2
            if not opts.quiet:
                print(f"{opts.control or control_path}: ok")
            return 0
        absolute = lambda p: os.path.abspath(p) if p else None  # noqa: E731
        set_ssh_defaults(user=opts.ssh_user, port=opts.ssh_port,
                         ssh_options=tuple(opts.ssh_option),
                         ssh_config=absolute(opts.ssh_config),
                         identity=absolute(opts.identity),
                         host_key_policy=opts.host_key_policy,
                         known_hosts=absolute(opts.known_hosts),
                         connect_timeout=opts.connect_timeout,
                         persistent=opts.persistent)
        junit = absolute(opts.junit)
        extra = {"_adhoc_table": _adhoc_table} if opts.execute is not None else None
        if opts.client:
            if not machines:
                raise AutoservUsageError("-c/--client: give the machines to run the client "
                                         "control file on (-m or -M)")
            extra = {"_client_text": source, "_client_autodir": opts.autodir}
            code = compile(_CLIENT_ON_MACHINES, "<-c: the client control file on every "
                           "machine>", "exec")
        if opts.results and opts.results_base:
            raise AutoservUsageError("-r and --results-base: -r names the dir itself; "
                                     "give one of them")
        # A run that was a usage mistake after all removes a dir it made.
        opts.fresh_results = not (opts.results and os.path.lexists(opts.results))
        resultdir = _claim_results_dir(opts.results, opts.overwrite, opts.results_base)
        opts.latest_before = None if opts.results else _point_latest(resultdir)
    except AutoservUsageError as e:
        _say(f"error: {e}")
        return 2
    _PARALLEL["max"] = opts.max_parallel
    _WATCH.update(quiet=opts.quiet, stall_warn=opts.stall_warn)
    LOG.console(verbose=opts.verbose, quiet=opts.quiet)
    _HEALTH["min_free"] = opts.min_free
    _HEALTH["max_clock_skew"] = opts.max_clock_skew
    if opts.slurm is not None:
        return _slurm_run(opts, argv, resultdir, groups, source)
    return _run_job(opts, control_path, source, code, machines, args, resultdir, junit,
                    extra, shard)


# --verify and --repair: the control file is this note (written to
# control.srv); the work is _health_phase's, before it runs.
_HEALTH_CONTROL = "# autoserv {mode}: every machine checked at once; nothing else runs\n"


def _health_options(opts):
    """Checks --verify, --repair, --verify-first, --min-free and
    --max-clock-skew (opts.min_free becomes verify()'s dict); returns the
    mode that replaces a control file ("--verify", "--repair") or None."""
    limits = dict(DEFAULT_MIN_FREE_MB)
    for text in opts.min_free:
        path, _, mb = text.partition("=")
        try:
            value = float(mb)
        except ValueError:
            value = -1.0
        if not (path == "autodir" or path.startswith("/")) or value < 0:
            raise AutoservUsageError(f"--min-free {text!r}: give PATH=MB, PATH absolute or "
                                     "'autodir', MB a number (0 drops the check)")
        limits[path] = value
    opts.min_free = {path: mb for path, mb in limits.items() if mb > 0}
    if opts.max_clock_skew < 0:
        raise AutoservUsageError("--max-clock-skew S: S must be 0 or more seconds")
    mode = "--verify" if opts.verify else "--repair" if opts.repair and not \
        opts.verify_first else None
    if opts.verify and (opts.repair or opts.verify_first):
        raise AutoservUsageError("--verify checks the machines and exits; --repair repairs "
                                 "then verifies them, --verify-first checks them before a "
                                 "job: give one")
    if mode and (opts.control is not None or opts.execute is not None or opts.client):
        raise AutoservUsageError(f"{mode} checks the machines and exits: give it no "
                                 "CONTROL_FILE, -e or -c (--verify-first runs a job "
                                 "after checking them)")
    if mode and not opts.machines and not opts.machines_file:
        raise AutoservUsageError(f"{mode}: give the machines to check (-m or -M)")
    return mode


# -e: the control file of an ad-hoc command, written to control.srv as it
# is; the table comes from _adhoc_table (in its namespace).
_ADHOC = textwrap.dedent("""\
    # autoserv -e: one command on every machine at once
    command = {command!r}
    def run_command(machine):
        return hosts.create_host(machine).run(command)
    _adhoc_table(machines, parallel_simple(run_command, machines, return_results=True))
    """)


def _adhoc_table(machines, results):
    """-e's table on stdout: each machine's exit status (or the error that
    kept the command from running), time and first line of output."""
    rows = [("HOST", "STATUS", "TIME", "OUTPUT")]
    for name, outcome in zip(machines, results):
        r = outcome if isinstance(outcome, CmdResult) else getattr(outcome, "result", None)
        if isinstance(r, CmdResult):
            status = "timeout" if r.timed_out else str(r.exit_status)
            text = next((l for l in (r.stdout + "\n" + r.stderr).splitlines() if l.strip()),
                        "")
            rows.append((name, status, f"{r.duration:.2f}s", text))
        else:
            why = str(outcome).splitlines()[0] if str(outcome).strip() else ""
            rows.append((name, type(outcome).__name__, "-", why))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3]
        print(_neutralise(line.rstrip()), flush=True)


# -c: the server-side control that runs a client control file on every
# machine at once, each with its own results subdir.  Indented so that its
# function is not read as autoserv's; dedented at import.
_CLIENT_ON_MACHINES = textwrap.dedent("""
    def _client_on(machine):
        host = hosts.create_host(machine)
        at = autotest.Autotest()
        autodir = _client_autodir.replace("{host}", host.hostname) if _client_autodir else None
        at.install(host, autodir=autodir)
        at.run(_client_text, ".", host)
    parallel_simple(_client_on, machines)
    """)


def _run_job(opts, control_path, source, code, machines, args, resultdir, junit, extra=None,
             shard=None):
    import traceback
    job = ServerJob(resultdir, control=control_path, machines=machines, args=args,
                    user=opts.user, label=opts.label, options=opts, shard=shard)
    if shard:
        LOG.write(f"shard {shard['shard']} ({shard['source']}): machines {machines}")
    # The control file may hold secrets: only its owner reads the copy.
    fd = os.open(os.path.join(resultdir, "control.srv"),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(source)
    LOG.write(f"autoserv {__version__} (python {sys.version.split()[0]}): "
              f"{control_path} machines={machines} args={args}")
    if getattr(opts, "settings_from", None):
        LOG.write("settings: " + ", ".join(opts.settings_from))
    if not opts.quiet:
        _say(f"results in {resultdir}")
    cwd = os.getcwd()
    status, outcome, error, reason = 0, "GOOD", "", ""
    local_reboot = None
    job.record("START", None, "autoserv", f"control file {os.path.basename(control_path)}")
    try:
        try:
            os.chdir(resultdir)
            load_site([os.path.join(cwd, "site_autoserv.py"),
                       os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "site_autoserv.py")])
            checked = machines
            if opts.verify or opts.repair or opts.verify_first:
                checked = _health_phase(job, machines, opts.repair,
                                        "dropped" if opts.verify_first else "sick",
                                        opts.quiet)
            namespace = control_namespace(job, checked, args, control_path)
            namespace.update(extra or {})
            if checked or not machines or not opts.verify_first:
                exec(code, namespace)
            else:
                job.record("INFO", None, "autoserv", "every machine was dropped: the "
                           "control file did not run")
            if opts.reboot and checked:
                job.record("INFO", None, "autoserv", "-b: rebooting every machine")
                parallel_simple(lambda name: create_host(name).reboot(), checked, log=False)
        except _LocalReboot as e:
            local_reboot = e
        except SystemExit as e:
            if e.code not in (None, 0):
                status, outcome, error = 1, "FAIL", f"control file exited with {e.code}"
        except KeyboardInterrupt:
            status, outcome, error = 130, "ABORT", "interrupted (SIGINT)"
        except _Terminated:
            status, outcome, error = 143, "ABORT", "terminated (SIGTERM)"
        except BaseException as e:
            status, outcome = 1, "FAIL"
            error = _report(e, control_path)
            reason = _reason(e, control_path)
            if _usage_mistake(e, control_path, code, job, machines):
                status = 2
            LOG.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
            for host_name in _hosts_in(e):
                job.host_status(host_name, "FAIL", _cause(e), output=_output_tail(e))
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            job.cleanup()
    finally:
        os.chdir(cwd)
    if status == 0 and job.status.worst in FAILING_CODES:
        status, outcome = 3, "FAIL"
        error = f"a test recorded {job.status.worst}"
    if status == 0 and job.dropped:
        status, outcome = EXIT_HOSTS_DROPPED, "WARN"
    if local_reboot is not None:
        why = _reboot_this_machine(job, local_reboot, status, outcome, error)
        if why:
            status, outcome, error = 1, "FAIL", why
    if status == 2:
        return _drop_results(opts, job, error)
    if status in (130, 143):
        job.hosts_cut_short(error)
    job.status.close_open(outcome, keep=1)
    if error:
        job.record("ABORT" if status in (130, 143) else "FAIL", None, "autoserv",
                   reason or _last_line(error))
    job.record(f"END {outcome}", None, "autoserv")
    job.write_summary(outcome, error)
    if junit:
        job.write_junit(junit, outcome, error)
    job.write_keyval({"job_finished": int(time.time()), "exit_status": status})
    _report_quietly(resultdir)
    LOG.write(f"job ended: {outcome}, exit status {status}")
    LOG.close()
    if error:
        _say(f"error: {error}" if status == 1 else error)
    _say(job.closing_line(outcome), opts.quiet and status == 0)
    return status


def _usage_mistake(exc, control_path, code, job, machines):
    """True for a control file that failed before touching any host on a
    mistake in how it was called or written: a name it never defined, at
    its top level, or any failure of one that uses `machines` when none
    were given."""
    if job.host_outcomes or job.status.worst:
        return False
    mine, _ = _where(exc, control_path)
    if isinstance(exc, NameError) and mine and exc.__traceback__ is not None:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if tb.tb_frame.f_code.co_filename == control_path and \
                tb.tb_frame.f_code.co_name == "<module>":
            return True
    return not machines and "machines" in _names_used(code)


def _names_used(code):
    """Every name a code object (and the code nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_used(const)
    return names


def _drop_results(opts, job, error):
    """A usage mistake found by running: says so, exit status 2, and leaves
    no results dir (one this run made) and `latest` as it was."""
    job.write_summary("FAIL", error)
    LOG.close()
    if opts.fresh_results:
        shutil.rmtree(job.resultdir, ignore_errors=True)
        if opts.latest_before is not None:
            _point_latest(job.resultdir, opts.latest_before)
    hint = "" if opts.machines or opts.machines_file else " (no machines given: -m or -M?)"
    _say(f"error: {error}{hint}")
    return 2


def _reboot_this_machine(job, pending, status, outcome, error):
    """The job's last act after LocalHost.reboot(): with its outcome on disk
    (summary.json, keyval, synced), runs the reboot command.  Returns why it
    failed, or "".  What is written after it may be lost to the shutdown."""
    job.write_summary(outcome, error)
    job.write_keyval({"job_finished": int(time.time()), "exit_status": status})
    os.sync()
    result = LocalHost(pending.hostname).run(pending.command, timeout=60, ignore_status=True)
    if result.exit_status == 0:
        job.record("END GOOD", None, "reboot", f"{pending.hostname}: rebooting")
        return ""
    why = f"{pending.hostname}: {pending.command}: {_why(result)}"
    job.record("ABORT", None, "reboot.verify", why)
    job.record("END ABORT", None, "reboot")
    return f"AutoservRebootError: {why}"


def _hosts_in(exc):
    names = []
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        for attr in ("hostname",):
            value = getattr(e, attr, None)
            if isinstance(value, str) and value:
                names.append(value)
        result = getattr(e, "result", None)
        if result is not None and getattr(result, "hostname", None):
            names.append(result.hostname)
        stack += [e.__cause__, e.__context__]
    return list(dict.fromkeys(names))


globals().update(_groups())
# The library's public names are the control-file API (_API, at the top):
# the groups, the names in them and beside them, every exception class; and
# the library's own (_LIBRARY_NAMES).
__all__ = sorted({*_API, *_API_NAMES, *_exceptions(), *_LIBRARY_NAMES,
                  *(n for names in _API.values() for n in names)})


if __name__ == "__main__":
    # One copy: a control file's `import autoserv` gets this running module.
    sys.modules.setdefault("autoserv", sys.modules[__name__])
    sys.exit(main())
