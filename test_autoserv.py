#!/usr/bin/env python3
"""autoserv's tests: real processes, a real sshd on 127.0.0.1, real network
namespaces.  Run:  python3 test_autoserv.py   (or: python3 -m pytest test_autoserv.py)

Sections (the tiers, in this order; grep -n '^# .*####' prints them): Harness:
RELIABILITY.md's invariants, a private sshd, helpers; Units (no target); Local
processes; CLI; SSH on loopback; Faults: relays and network namespaces; Hostile
targets and inputs; Parallel and fan-out; Boot loader and installables (no
guest); Guest images (QEMU); QEMU guests: KVM, reboots, power, consoles;
Autotest; Kernels on guests and the seed's examples; Closing lines and lanes.
A tier whose tool is missing is skipped with the reason, and fails under
CI=true.
"""

import builtins
import contextlib
import ctypes
import difflib
import glob
import html
import inspect
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import autoserv  # noqa: E402

AUTOSERV = os.path.join(HERE, "autoserv.py")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def _subreaper(libc=None):
    """Orphans of the processes we start get reparented to us, so we reap
    them and can see any that are left (PID 1 here reaps lazily).  The
    invariant checks rest on it: without it the run stops here, loudly."""
    try:
        if libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
        prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER failed")
        flag = ctypes.c_int(0)
        if prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0) != 0 \
                or flag.value != 1:
            raise OSError(ctypes.get_errno(), "PR_GET_CHILD_SUBREAPER does not read 1")
    except (OSError, AttributeError) as e:
        raise RuntimeError(
            f"cannot make the test process a child subreaper (prctl: {e}); the checks "
            "that no process outlives a test depend on it, so the suite does not run") from e


_subreaper()


def unavailable(reason):
    """Something a test needs is missing (a tool, a package, root): the test
    is skipped with the reason, and fails with it under CI=true."""
    if IN_CI:
        raise AssertionError(reason + " (CI=true: a skip is a failure; .ci/run sets it up)")
    raise unittest.SkipTest(reason)


def need(*tools):
    """Skip (fail in CI) when a system tool (a command, or an absolute path)
    is missing."""
    missing = [t for t in tools
               if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))]
    if missing:
        unavailable("missing tool(s): " + ", ".join(missing))


def need_root():
    if os.geteuid() != 0:
        unavailable("needs root (namespaces, mounts)")


def free_port():
    """A loopback port nothing listens on, below the kernel's ephemeral range,
    so no outgoing connection can take it before its user binds it (a port
    from bind(0) could be).  Users that can, bind it and retry on a clash."""
    return guest_ports(1)


def refused_port(add_cleanup):
    """A loopback port that refuses connections until add_cleanup's test or
    class ends (self.addCleanup, cls.addClassCleanup): bound and
    never listening, so no server the test starts later can take it (two
    free_port() picks can meet: a refused case then met an sshd)."""
    for _ in range(50):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", free_port()))
        except OSError:
            s.close()
            continue
        add_cleanup(s.close)
        return s.getsockname()[1]
    raise AssertionError("no free port to hold")


class StampedTee:
    """A tee that notes when each of its writes and flushes came, so that
    a test can tell output shown as it came from output shown at the end."""

    def __init__(self):
        self.text, self.writes, self.flushes = "", [], []

    def write(self, text):
        self.writes.append(time.monotonic())
        self.text += text
        return len(text)

    def flush(self):
        self.flushes.append(time.monotonic())

    def shown_before(self, when):
        """True when the first output was written and flushed by when."""
        return bool(self.writes) and self.writes[0] <= when and any(
            self.writes[0] <= f <= when for f in self.flushes)


def read_file(*args, **kwargs):
    """A file's whole content (open()'s arguments), the file closed at
    once: a bare open(...).read() leaves it to the collector, and
    unittest's warnings name every such file."""
    with open(*args, **kwargs) as f:
        return f.read()


def write_file(path, data, mode="w"):
    """Writes data to path (mode "w", "wb", "a" or "ab") and closes it."""
    with open(path, mode) as f:
        f.write(data)


def wait_for(predicate, timeout, interval=0.05, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")


def on_a_free_port(start, ready, what, tries=3):
    """A server on a free port: start(port) starts its process, ready(port)
    says it serves.  A process that exits before it is ready (its port was
    taken between free_port's check and its bind) is started again on
    another port.  Returns (process, port)."""
    for _ in range(tries):
        port = free_port()
        proc = start(port)
        wait_for(lambda: proc.poll() is not None or (owns_port(proc.pid, port) and ready(port)),
                 30, interval=0.1, what=what)
        if proc.poll() is None:
            return proc, port
        proc.wait()
    raise AssertionError(f"{what}: exited at start on {tries} ports")


def owns_port(pid, port):
    """True when process pid holds a socket bound to 127.0.0.1:port (TCP
    listening, or UDP): its server, not another that took the port."""
    inodes = set()
    for name, state in (("tcp", "0A"), ("udp", None)):
        with open(f"/proc/net/{name}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(":%04X" % port) and (state is None or fields[3] == state):
                    inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            pass
    return False


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_listening(port, timeout, what):
    """Waits until something accepts TCP connections on 127.0.0.1:port."""
    wait_for(lambda: accepts(port), timeout, what=what)


def processes_with(text):
    """PIDs whose command line or environment holds text (ours excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if text.encode() in f.read().replace(b"\0", b" "):
                        found.append(int(pid))
                        break
            except OSError:
                pass
    return found


def descendants(root):
    """PIDs of every process below root in the process tree, as it is now."""
    parent = {}
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [root]
    while todo:
        kids = [pid for pid, ppid in parent.items() if ppid == todo[-1]]
        todo.pop()
        found += kids
        todo += kids
    return found


def own_watchdog():
    """The PID of this process's own ssh watchdog (its masters' keeper: a
    child of ours, as the subreaper, once it left its starter), or None."""
    top = autoserv._CTRL["dir"]
    return top and autoserv._registered_pid(os.path.join(top, "watchdog"), top)


def our_children():
    """Live (non-zombie) child processes of this test process, but its own
    ssh watchdog (kept for the connections its in-process hosts hold)."""
    kids = []
    dog = own_watchdog()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and int(pid) != dog:
            kids.append((int(pid), fields[0], stat.split("(", 1)[1].rsplit(")", 1)[0]))
    return kids


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# Harness: RELIABILITY.md's invariants, a private sshd, helpers ################

SCENARIOS = {}         # scenario number -> the tests that cover it


def _run_id_processes():
    """PIDs of processes whose environment carries an AUTOSERV_RUN_ID."""
    return set(processes_with("AUTOSERV_RUN_ID="))


def _autoserv_paths():
    """autoserv's temp dirs on this machine (local and, for loopback and
    namespace hosts, remote alike) and its control dirs."""
    tmp = tempfile.gettempdir()
    found = {os.path.join("/tmp", n) for n in _remote_autoserv_dirs()}
    found |= {os.path.join(tmp, n) for n in _ctrl_dirs()}
    return found


class Invariants:
    """P, R and L of RELIABILITY.md, and S when given a status.log, checked
    against a snapshot taken before the scenario: nothing the scenario
    started may be left.  (T is each test's own bound on its operations.)"""

    def __init__(self):
        self.hosts = list(autoserv._HOSTS)        # a class's shared guests stay
        self.children = {pid for pid, _, _ in our_children()}
        self.tagged = _run_id_processes()
        self.paths = _autoserv_paths()

    def new_children(self):
        # The ssh master or agent of a host the class shares (a guest that
        # rebooted gets a new master) is that fixture's, not the test's.
        shared = set()
        for h in self.hosts:
            master = getattr(h, "_master", None)
            agent = getattr(h, "_agent", None)
            shared |= {p.pid for p in (master, agent and agent["proc"]) if p}
        # So is the watchdog of the connections that remain (one per job).
        shared.add(own_watchdog())
        return [(pid, state, name) for pid, state, name in our_children()
                if pid not in self.children and pid not in shared]

    def check(self, test):
        """P, R, L: run as the test's last cleanup, after its own."""
        for host in reversed([h for h in autoserv._HOSTS if h not in self.hosts]):
            try:
                host.close()      # what the job's end does for the hosts it made
            except Exception as e:
                test.fail(f"closing {host!r} failed: {e}")
        # The job's control dir goes when no shared host holds it, or when
        # this test made it (an earlier class's end removed the one before:
        # anything in it was started here).
        if not self.hosts or autoserv._CTRL["dir"] not in self.paths:
            autoserv._remove_ctrl_dir()
        # P: no process the scenario started, no zombie (reaped by us, the
        # subreaper, once it is gone; a live one fails).
        def no_children():
            reap()
            return not self.new_children()
        try:
            wait_for(no_children, 10, what="no child process left")
        except AssertionError:
            test.fail(f"P: processes left: {self.new_children()}")
        # R: no process carrying a run id after 10 s.
        try:
            wait_for(lambda: not (_run_id_processes() - self.tagged), 10,
                     what="no remote process of the run left")
        except AssertionError:
            left = _run_id_processes() - self.tagged
            test.fail("R: run-tagged processes left: " + ", ".join(
                f"{pid} {_cmdline(pid)}" for pid in sorted(left)))
        # L: no temp dir, control dir or socket of autoserv's left.
        left = _autoserv_paths() - self.paths
        test.assertFalse(left, f"L: autoserv paths left: {sorted(left)}")

    @staticmethod
    def check_status(test, status_log, error_class=None, found=False):
        """S: status.log parses line by line, and names the error class: the
        one the test expects, and for a job that failed on an exception,
        the exception's class in its ending line."""
        with open(status_log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        entries = autoserv.parse_status_log(text)      # raises on a torn line
        if not found:
            test.assertTrue(entries, f"S: {status_log} is empty")
        if error_class:
            test.assertIn(error_class, text, f"S: {status_log} does not name it")
        for e in entries:
            if e["operation"] == "autoserv" and e["code"] in ("FAIL", "ERROR", "ABORT") \
                    and not re.match(r"interrupted|terminated|control file exited|a test "
                                     r"recorded", e["message"]):
                named = [n for n in re.findall(r"\b([A-Z]\w*): ", e["message"])
                         if isinstance(getattr(autoserv, n, getattr(builtins, n, None)), type)
                         and issubclass(getattr(autoserv, n, getattr(builtins, n, None)),
                                        BaseException)]
                test.assertTrue(named, f"S: {status_log}: the job's failure names no "
                                       f"exception class: {e['message']!r}")

    @staticmethod
    def status_logs(test):
        """Every status.log under the test's temp dir (S after a scenario)."""
        base = getattr(test, "tmp", None)
        found = set()
        if isinstance(base, str) and os.path.isdir(base):
            for top, _, names in os.walk(base):
                if "status.log" in names:
                    found.add(os.path.join(top, "status.log"))
        return sorted(found)


_GUEST_CHECK = r"""exec env -u AUTOSERV_RUN_ID sh -c '
for d in /proc/[0-9]*; do
    grep -q as-guest-invariants-check $d/cmdline 2>/dev/null && continue
    tr "\0" "\n" <$d/environ 2>/dev/null | grep -q "^AUTOSERV_RUN_ID=" || continue
    echo "proc ${d#/proc/} $(tr "\0" " " <$d/cmdline)"
done
ls -d /tmp/autoserv-* 2>/dev/null | sed "s/^/dir /"
: as-guest-invariants-check'"""


def check_guest(test, host):
    """R and L inside a guest after a test: no process of a run (its run id
    in the environment) after 10 s, and no /tmp/autoserv-* dir but those the
    still-open host object owns (a class's shared guest)."""
    found = []

    def clean():
        try:
            out = host.run(_GUEST_CHECK, timeout=60).stdout.splitlines()
        except autoserv.AutoservSSHError as e:    # a master that outlived a reset; booting
            found[:] = [str(e)]
            return False
        owned = {p for _, p in getattr(host, "_tmp_dirs", [])}
        found[:] = [line for line in out if line.startswith("proc ")
                    or (line.startswith("dir ") and line[4:] not in owned)]
        return not found
    # The host's own agent (the agent is on by default) is the open host's,
    # and the check must not start one: it looks with the agent ended and off.
    agent = getattr(host, "_agent_client", None)
    if agent is not None:
        agent.stop()
    saved, host.persistent = host.persistent, False
    try:
        wait_for(clean, 30, interval=1, what="the guest clean")
    except AssertionError:
        test.fail(f"R/L inside the guest {host.hostname}: {found}")
    finally:
        host.persistent = saved


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def scenario(*numbers):
    """Marks a test as covering RELIABILITY.md scenarios `numbers` and checks
    the invariants after it.  A test may set self.status_log (and
    self.error_class) for S."""
    def wrap(fn):
        import functools

        @functools.wraps(fn)
        def test(self, *a, **k):
            self.addCleanup(Invariants().check, self)    # first in, so it runs last
            self.status_log = self.error_class = None
            fn(self, *a, **k)
            if self.status_log is not None:
                Invariants.check_status(self, self.status_log, self.error_class)
            for log in Invariants.status_logs(self):
                if log != self.status_log:
                    Invariants.check_status(self, log, found=True)
        test.scenarios = numbers
        for n in numbers:
            SCENARIOS.setdefault(n, []).append(fn.__qualname__)
        return test
    return wrap


def other_pythons():
    """This interpreter and every other CPython 3.9+ on this machine (on PATH
    as python3.N, pyenv's versions, /usr/bin), one per version."""
    import glob
    found = {sys.version_info[:2]: sys.executable}
    names = [shutil.which(f"python3.{n}") for n in range(9, 20)]
    names += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    names += sorted(glob.glob("/usr/bin/python3.*[0-9]"))
    for path in filter(None, names):
        try:
            out = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20)
            version = tuple(int(v) for v in out.stdout.split())
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        if len(version) == 2 and version >= (3, 9):
            found.setdefault(version, path)
    return [found[v] for v in sorted(found)]


def run_cli(*args, cwd=None, timeout=120, env=None, input=None):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, AUTOSERV, *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL if input is None else None,
                         input=input)
    note_slow_job(args, time.monotonic() - t0, cwd)
    return out


# A job a test runs that takes this long (s) has its quiet stretches shown in
# the test's output, passed or not: a run here that took 328 s where others
# take 41-88 s passed and left nothing to say where the time went.
SLOW_JOB = 150


def note_slow_job(args, seconds, cwd=None):
    """Writes to stderr, for a job (autoserv's arguments args) that took
    over SLOW_JOB seconds, each pause of 20 s or more in its debug log (the
    line before it and the line after) and its status.log."""
    if seconds < SLOW_JOB or "-r" not in args[:-1]:
        return
    results = os.path.join(cwd or "", args[args.index("-r") + 1])
    try:
        lines = read_file(os.path.join(results, "debug", "autoserv.log"),
                          errors="replace").splitlines()
    except OSError as e:
        sys.stderr.write(f"\nslow job ({seconds:.0f} s): no debug log ({e})\n")
        return
    gaps, last = [], None
    for i, line in enumerate(lines):
        try:
            when = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue                    # a continuation line
        if last is not None and when - last[0] >= 20:
            gaps.append(f"  {when - last[0]:.0f} s between\n    {last[1][:300]}\n"
                        f"    {line[:300]}")
        last = (when, line)
    try:
        status = read_file(os.path.join(results, "status.log"), errors="replace").splitlines()
    except OSError:
        status = []
    sys.stderr.write(f"\nslow job ({seconds:.0f} s, {results}): pauses of 20 s or more "
                     "in its debug log:\n" + ("\n".join(gaps[:20]) or "  none") + "\n"
                     "its status.log:\n" + "\n".join("  " + line[:200] for line in status[:60])
                     + "\n")


def run_in_pty(*args, timeout=120, env=None, cwd=None, columns=140, term="xterm",
               interrupt_when=None):
    """autoserv with stdin, stdout and stderr on a new pseudo-terminal:
    (exit status, everything it wrote there, as text).  interrupt_when(text
    so far): once it says True, SIGINT to autoserv's process group, as a
    terminal's Ctrl-C."""
    import fcntl
    import select
    import struct
    import termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = dict(env or os.environ, TERM=term)
    env.pop("COLUMNS", None)
    p = subprocess.Popen([sys.executable, AUTOSERV, *args], stdin=slave, stdout=slave,
                         stderr=slave, env=env, cwd=cwd, start_new_session=True)
    os.close(slave)
    data, end = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:         # EIO: every writer has closed it
                    break
                if not chunk:
                    break
                data += chunk
            elif p.poll() is not None:
                break
            if interrupt_when and interrupt_when(data.decode("utf-8", "replace")):
                interrupt_when = None
                os.killpg(p.pid, signal.SIGINT)
        else:
            p.kill()
            raise AssertionError(f"autoserv on a pty still running after {timeout} s")
        return p.wait(10), data.decode("utf-8", "replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def live_view_frames(text):
    """The live view's frames: the rows drawn between two cursor-up moves."""
    frames = []
    for part in re.split(r"\x1b\[\d+A", text):
        rows = [r for r in part.split("\r\x1b[K")[1:]]
        if rows:
            frames.append([r.rstrip("\r\n") for r in rows])
    return frames


class CmdlineSampler:
    """What `ps` could have shown while a block ran: every process's command
    line sampled every few ms by a thread; `with` starts and stops it.
    seen(word) lists the sampled command lines holding word."""

    def __init__(self):
        self.lines, self._stop = set(), threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            self.lines.add(f.read().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            self._stop.wait(0.003)

    def seen(self, word):
        return [line for line in self.lines if word in line]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class Sshd:
    """A private sshd on 127.0.0.1: own host key, own authorized key, own
    config, clean remote HOME; stopped by PID."""

    def __init__(self, host_key=None, port=None, extra="", authorized_key=None,
                 private_autodir=False, netns=None):
        need("sshd", "ssh", "ssh-keygen")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="as-sshd-")
        self.home = os.path.join(self.dir, "home")
        os.mkdir(self.home)
        self.host_key = host_key or self.keygen("host_key")
        self.client_key = self.keygen("client_key")
        shutil.copy(authorized_key or self.client_key + ".pub",
                    os.path.join(self.dir, "authorized_keys"))
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.conf = os.path.join(self.dir, "sshd_config")
        self.netns = netns
        for attempt in range(5):          # a port taken since it was picked: another
            self.port = port or free_port()
            try:
                self._start(extra, private_autodir, netns)
                break
            except AssertionError as e:
                if port or "Address already in use" not in str(e) or attempt == 4:
                    raise
        self.ssh_config = os.path.join(self.dir, "ssh_config")
        self.write_ssh_config()

    def _start(self, extra, private_autodir, netns):
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                ListenAddress 127.0.0.1
                Port {self.port}
                HostKey {self.host_key}
                PidFile {self.dir}/sshd.pid
                AuthorizedKeysFile {self.dir}/authorized_keys
                UsePAM no
                StrictModes no
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                MaxStartups 200
                MaxSessions 200
                SetEnv HOME={self.home}
                Subsystem sftp /usr/lib/openssh/sftp-server
                """) + extra)
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", self.conf]
        if private_autodir:
            # The autotest client's default /usr/local/autotest, private to
            # this sshd's sessions: a mount namespace in which /usr/local is a
            # tmpfs with the real subdirs bound back, plus an empty autotest/.
            need("unshare")
            need_root()
            stash = os.path.join(self.dir, "usr-local")
            script = (f"set -e; mount --make-rprivate /; mkdir {stash}; "
                      f"mount --bind /usr/local {stash}; "
                      "mount -t tmpfs -o mode=0755 autodir /usr/local; "
                      f"for d in {stash}/*; do n=${{d##*/}}; "
                      "if [ -L \"$d\" ]; then cp -P \"$d\" /usr/local/; else mkdir /usr/local/$n; "
                      "mount --bind \"$d\" /usr/local/$n; fi; done; "
                      "mkdir /usr/local/autotest; exec \"$@\"")
            argv = ["unshare", "-m", "sh", "-c", script, "sh"] + argv
        if netns:                     # listening on the namespace's own loopback
            argv = ["ip", "netns", "exec", netns] + argv
        with open(os.path.join(self.dir, "sshd.log"), "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self._listening, 10, what=f"sshd on port {self.port}")

    def keygen(self, name):
        path = os.path.join(self.dir, name)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                       check=True, stdin=subprocess.DEVNULL)
        return path

    def _listening(self):
        if self.proc.poll() is not None:
            with open(os.path.join(self.dir, "sshd.log")) as f:
                raise AssertionError("sshd died: " + f.read())
        if self.netns:
            probe = ("import socket; s = socket.create_connection(('127.0.0.1', %d), 1); "
                     "assert s.recv(4).startswith(b'SSH-')" % self.port)
            return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c",
                                   probe], capture_output=True).returncode == 0
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def write_ssh_config(self, aliases=("testhost", "192.168.1.1", "192.168.1.2")):
        """An ssh config in which the seed's addresses and an alias all lead
        here (control files that name other addresses are redirected)."""
        blocks = []
        for alias in aliases:
            blocks.append(textwrap.dedent(f"""\
                Host {alias}
                    HostName 127.0.0.1
                    Port {self.port}
                    User root
                    IdentityFile {self.client_key}
                    IdentitiesOnly yes
                    UserKnownHostsFile {self.known_hosts}
                    KexAlgorithms curve25519-sha256
                """))
        with open(self.ssh_config, "w") as f:
            f.write("\n".join(blocks))

    def host(self, name="testhost", **kw):
        kw.setdefault("ssh_config", self.ssh_config)
        kw.setdefault("alive_interval", 1)
        kw.setdefault("alive_count", 3)
        kw.setdefault("connect_timeout", 5)
        return autoserv.SSHHost(name, **kw)

    def cli_opts(self):
        return ["--ssh-config", self.ssh_config]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class SshdTestCase(unittest.TestCase):
    """Shares one sshd per class."""

    @classmethod
    def setUpClass(cls):
        cls.sshd = Sshd()

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        cls.sshd.stop()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-test-")

    def tearDown(self):
        autoserv._close_all_hosts()
        del autoserv._HOSTS[:]
        shutil.rmtree(self.tmp, ignore_errors=True)
        reap()


def comm_pids(name, env_text=None):
    """PIDs of processes whose comm is name (and whose environment holds
    env_text, when given)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            if env_text:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if env_text.encode() not in f.read():
                        continue
        except OSError:
            continue
        found.append(int(pid))
    return found


def master_running(pid):
    """True while pid runs (not a zombie) as an ssh ControlMaster."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        # Started on its own; a first contact's ssh (before it logged in);
        # the master it left (ssh retitles that one).
        return (b"ControlMaster=yes" in cmdline or b"ControlMaster=auto" in cmdline
                or (cmdline.startswith(b"ssh: ") and b" [mux]\0" in cmdline))
    except OSError:
        return False


def ssh_shim(test):
    """Logging `ssh` and `scp` first in PATH for the test: every ssh that
    autoserv or rsync starts, and every scp (whose own ssh is /usr/bin/ssh,
    past PATH, and gets scp's -o options), is recorded (its argv,
    NUL-separated, a file a call) and then run.  Returns the log dir."""
    shim = os.path.join(test.tmp, "shim")
    log = os.path.join(test.tmp, "ssh-calls")
    os.mkdir(shim)
    os.mkdir(log)
    for tool in ("ssh", "scp"):
        with open(os.path.join(shim, tool), "w") as f:
            f.write(f"#!/bin/sh\n{{ printf '%s\\0' {tool} \"$@\"; }} "
                    f">\"$(mktemp {log}/call.XXXXXX)\"\n"
                    f"exec {shutil.which(tool)} \"$@\"\n")
        os.chmod(os.path.join(shim, tool), 0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = shim + os.pathsep + old
    test.addCleanup(os.environ.__setitem__, "PATH", old)
    return log


def ssh_calls(log):
    """The argv of each ssh or scp call ssh_shim recorded, oldest first."""
    paths = sorted((os.path.join(log, n) for n in os.listdir(log)), key=os.path.getmtime)
    return [read_file(p).split("\0")[:-1] for p in paths]


def remote_sleeps(text):
    """PIDs of sleeps whose command line holds text: the command itself
    running on the target, not a local ssh that carries it in its arguments."""
    return [pid for pid in comm_pids("sleep") if pid in processes_with(text)]


def once_running(text, action, timeout=20):
    """A started thread that calls action() once remote_sleeps(text) finds
    one (at the latest after timeout s, so that a command waiting for it ends
    anyway).  After join(): .at is when action ran, .error why it ran late."""

    def wait_then_act():
        try:
            wait_for(lambda: remote_sleeps(text), timeout, what=f"{text!r} running")
        except AssertionError as e:
            thread.error = e
        thread.at = time.monotonic()
        action()
    thread = threading.Thread(target=wait_then_act)
    thread.error = None
    thread.start()
    return thread


def max_rss_of(code, timeout=300):
    """Runs python code in a child; returns (its stdout, its peak RSS in MB).
    VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child of a
    big test process would report its parent's peak."""
    prog = ("import sys; sys.path.insert(0, %r)\n" % HERE) + code + \
        "\nprint('RSS', [l.split()[1] for l in open('/proc/self/status')" \
        " if l.startswith('VmHWM:')][0])\n"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(out.stderr[-3000:])
    rss = int(re.search(r"RSS (\d+)", out.stdout).group(1)) / 1024
    return out.stdout, rss


def assert_flat_memory(test, code, var, value, small=32, big=256):
    """Runs code with var set for a small and a big size: peak RSS stays under
    100 MB and grows by less than 15 MB between them."""
    sizes = {}
    for mb in (small, big):
        os.environ[var] = value(mb)
        try:
            sizes[mb] = max_rss_of(code, timeout=600)[1]
        finally:
            del os.environ[var]
    test.assertLess(sizes[big], 100, sizes)
    test.assertLess(sizes[big] - sizes[small], 15, sizes)


AWKWARD = ["", "sp ace", "q'uote", 'd"q', "$(touch P)", "`touch B`", "back\\slash",
           "new\nline", "star*", "~root", "-n", "tab\there", "\\$HOME", "a;b|c&d"]


# Units (no target) ############################################################

class TestQuoting(unittest.TestCase):
    def test_sh_escape_keeps_the_originals_meaning_inside_double_quotes(self):
        for word in AWKWARD + ["plain", "x\\y$z`w\"v"]:
            with self.subTest(word=word):
                out = subprocess.run(["sh", "-c", 'printf %s "' + autoserv.sh_escape(word) + '"'],
                                     capture_output=True, text=True).stdout
                self.assertEqual(out, word)

    def test_sh_quote_is_shlex_quote(self):
        self.assertEqual(autoserv.sh_quote("a b"), "'a b'")

    def test_args_are_appended_as_quoted_words(self):
        self.assertEqual(autoserv._with_args("echo", ["a b", "$x"]), "echo 'a b' '$x'")

    def test_parse_machine_forms(self):
        P = autoserv.parse_machine
        self.assertEqual(P("host"), (None, "host", None))
        self.assertEqual(P("me@host:2222"), ("me", "host", 2222))
        self.assertEqual(P("[::1]:22"), (None, "::1", 22))
        for bad in ["", "-oProxyCommand=x", "h:0", "h:99999", "h:abc", "@h", "a b"]:
            with self.subTest(bad=bad), self.assertRaises(autoserv.AutoservUsageError):
                P(bad)

    def test_marker_filter_removes_markers_split_across_reads(self):
        f = autoserv._MarkerFilter("abc")
        stream = b"err1\n\x1eabc s 42\npartial\x1eabc e 7\n\x1enot-a-marker\n"
        out = b"".join(f.feed(stream[i:i + 1]) for i in range(len(stream))) + f.flush()
        self.assertEqual(out, b"err1\npartial\x1enot-a-marker\n")
        self.assertEqual((f.pgid, f.status), (42, 7))

    def test_neutralise_makes_escapes_visible(self):
        self.assertEqual(autoserv._neutralise("a\x1b[31mb\x07"), "a^[[31mb^G")


class TestLegacySyntax(unittest.TestCase):
    CASES = [
        ('print "a", b\n', 'print("a", b)\n'),
        ("print\n", "print()\n"),
        ('print >>sys.stderr, "x", y,\n', 'print("x", y, end=" ", file=sys.stderr)\n'),
        ("x = 0644\n", "x = 0o644\n"),
        ('s = "0644"\n', 's = "0644"\n'),
        ("try:\n  pass\nexcept (A, B), e:\n  pass\n", "try:\n  pass\nexcept (A, B) as e:\n  pass\n"),
        ('exec "x=1" in d\n', 'exec("x=1" , d)\n'),
        ('print("already")\n', 'print("already")\n'),
        ("if a <> b: print a\n", "if a != b: print(a)\n"),
        ("n = 10L\n", "n = 10\n"),
    ]

    def test_translation_table(self):
        for before, after in self.CASES:
            with self.subTest(before=before):
                self.assertEqual(autoserv.translate_legacy(before), after)

    def test_line_numbers_stay_those_of_the_original(self):
        src = 'print "one"\nx = 1\n\nraise "three"\n'
        ns = autoserv.control_namespace()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(autoserv.compile_control(src, "ctl"), ns)
        except autoserv.AutoservError as e:
            tb, exc = e.__traceback__, e
        else:
            self.fail("raise 'three' did not raise")
        while tb.tb_next:
            tb = tb.tb_next
        self.assertEqual(tb.tb_lineno, 4)
        self.assertEqual(str(exc), "three")

    def test_print_to_file_and_bare_print_really_print(self):
        src = 'import sys\nprint >>sys.stdout, "to", "file"\nprint\nprint "x" % ()\n'
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(autoserv.compile_control(src, "ctl"), autoserv.control_namespace())
        self.assertEqual(out.getvalue(), "to file\n\nx\n")

    def test_shipped_seed_examples_compile_and_differ_from_the_seed_only_by_section_13(self):
        # What SPEC 13 lets change in a line: disk and root device names, and
        # oprofile (opcontrol, opreport, its profiler name and event) for perf.
        removable = re.compile(r"-hda |/dev/hda|opcontrol|opreport|oprofile|vmlinux|"
                               r"CPU_CLK_UNHALTED")
        addable = re.compile(r"nvme|perf")
        if not os.path.isdir(SEED_ORIGINALS):      # a clone away from the project's shared/
            self.skipTest(f"the seed's original examples are not at {SEED_ORIGINALS}")
        shipped = sorted(n for n in os.listdir(SEED_DIR) if n.endswith(".control"))
        self.assertEqual(shipped, sorted(n for n in os.listdir(SEED_ORIGINALS)
                                         if n.endswith(".control")))
        for name in shipped:
            with self.subTest(name=name):
                seed = read_file(os.path.join(SEED_ORIGINALS, name)).splitlines()
                ours = read_file(os.path.join(SEED_DIR, name)).splitlines()
                autoserv.compile_control("\n".join(ours), name)      # Python 2 lines stay
                for line in difflib.ndiff(seed, ours):
                    if line.startswith("- "):
                        self.assertRegex(line, removable)
                    elif line.startswith("+ "):
                        self.assertRegex(line, addable)


class TestStatusLog(unittest.TestCase):
    def test_lines_have_the_autotest_layout_and_parse_back(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        log = autoserv.StatusLog(os.path.join(d, "status.log"))
        log.record("START", None, "job")
        log.record("GOOD", "sub", "op", "tab\there\nsecond line")
        log.record("END GOOD", None, "job")
        text = read_file(os.path.join(d, "status.log"))
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("START\t----\tjob\ttimestamp="))
        self.assertTrue(lines[1].startswith("\tGOOD\tsub\top\ttimestamp="))
        self.assertIn("tab  here", lines[1])
        self.assertEqual(lines[2], "\t  second line")
        self.assertTrue(lines[3].startswith("END GOOD\t----\tjob"))
        entries = autoserv.parse_status_log(text)
        self.assertEqual([e["code"] for e in entries], ["START", "GOOD", "END GOOD"])
        self.assertEqual(entries[1]["message"], "tab  here\nsecond line")
        self.assertRegex(entries[1]["fields"]["localtime"], r"^\w{3} \d\d \d\d:\d\d:\d\d$")

    def test_unknown_code_is_refused(self):
        log = autoserv.StatusLog(os.devnull)
        with self.assertRaises(autoserv.AutoservUsageError):
            log.record("PASSED")


class TestLanes(unittest.TestCase):
    """The suite's own lanes: a light lane (the third) never takes a class
    that boots guests, so two guests at the most share the two cores."""

    def test_a_light_lane_passes_over_the_classes_that_boot_guests(self):
        queue = tempfile.mkdtemp(prefix="as-lanes-")
        self.addCleanup(shutil.rmtree, queue)
        for n, name in enumerate(["TestKernelBoot", "TestPower", "TestQuoting", "TestKVM"]):
            open(os.path.join(queue, f"{n:03d}-{name}"), "w").close()
        fd = os.open(queue, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        self.assertEqual([_claim(fd, light=True), _claim(fd, light=True)], ["TestQuoting", None])
        self.assertEqual([_claim(fd), _claim(fd), _claim(fd), _claim(fd)],
                         ["TestKernelBoot", "TestPower", "TestKVM", None])
        guests = {"TestKVM", "TestReboot", "TestPower", "TestConmux", "TestAutotestGuest",
                  "TestKernelInstall", "TestKernelBoot", "TestKernelBootEdits"}
        self.assertEqual([n for n in guests if not _starts_guests(n)], [])
        # TestPublicAPI builds a KVMGuest that is refused before qemu starts.
        self.assertEqual([n for n in ("TestPublicAPI", "TestFanOut", "TestSSHRun", "TestCLI")
                          if _starts_guests(n)], [])


class TestScenarioMap(unittest.TestCase):
    def test_every_reliability_scenario_has_tests_that_check_the_invariants(self):
        path = os.path.join(HERE, "..", "shared", "RELIABILITY.md")
        numbers = set(range(1, 32))
        if os.path.exists(path):
            with open(path) as f:
                numbers = {int(n) for n in re.findall(r"^(\d+)\. ", f.read(), re.M)}
        self.assertEqual(len(numbers), 31)
        self.assertEqual(set(SCENARIOS), numbers, "scenarios without a test, or unknown ones")
        for number, tests in SCENARIOS.items():
            for name in tests:
                cls, meth = name.split(".")
                fn = getattr(globals()[cls], meth)
                self.assertIn(number, fn.scenarios, name)     # decorated, so checked


    def test_the_suite_is_a_child_subreaper_or_does_not_run(self):
        flag = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
        self.assertEqual(flag.value, 1)
        for name, libc in (("no prctl", types.SimpleNamespace()),
                           ("prctl fails", types.SimpleNamespace(prctl=lambda *a: -1)),
                           ("the flag stays 0", types.SimpleNamespace(prctl=lambda *a: 0))):
            with self.subTest(name), self.assertRaisesRegex(RuntimeError, "child subreaper"):
                _subreaper(libc)


class TestExceptions(unittest.TestCase):
    def test_every_exception_survives_pickling(self):
        result = autoserv.CmdResult("cmd", "out", "err", 3, 1.5, hostname="h")
        made = []
        for name, cls in autoserv._exceptions().items():
            if issubclass(cls, autoserv.AutoservRunError):
                made.append(cls("it failed", result))
            elif issubclass(cls, autoserv.AutoservHostError):
                made.append(cls("h", "broke", "detail"))
            elif cls is autoserv.AutoservSubcommandError:
                made.append(cls([("t1", "Traceback...\nValueError: x")]))
            else:
                made.append(cls("message"))
        for exc in made:
            with self.subTest(cls=type(exc).__name__):
                back = pickle.loads(pickle.dumps(exc))
                self.assertIs(type(back), type(exc))
                self.assertEqual(str(back), str(exc))

    def test_run_error_shows_host_command_status_and_stderr_tail(self):
        r = autoserv.CmdResult("make", "", "line1\nfatal: broken\n", 2, 0.1, hostname="h1")
        text = str(autoserv.AutoservRunError("command failed", r))
        for part in ("h1", "make", "exit status 2", "fatal: broken"):
            self.assertIn(part, text)

    def test_aliases(self):
        self.assertIs(autoserv.CmdError, autoserv.AutoservRunError)
        self.assertIs(autoserv.AutoservSSHTimeout, autoserv.AutoservSSHConnectTimeout)
        self.assertIs(autoserv.AutoservSshPermissionDeniedError,
                      autoserv.AutoservSSHPermissionDenied)
        self.assertTrue(issubclass(autoserv.AutoservTimeoutError, autoserv.AutoservRunError))
        self.assertTrue(issubclass(autoserv.AutoservSSHConnectionLost, autoserv.AutoservHostError))


def _imports(path):
    import ast
    names = set()
    for node in ast.walk(ast.parse(read_file(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


class TestStdlibOnly(unittest.TestCase):
    def test_autoserv_and_boottool_import_nothing_outside_the_standard_library(self):
        stdlib = getattr(sys, "stdlib_module_names", None)
        if stdlib is None:
            self.skipTest("needs Python 3.10+ to list the standard library")
        for path in (AUTOSERV, os.path.join(HERE, "boottool")):
            with self.subTest(path=path):
                self.assertEqual(sorted(n for n in _imports(path) if n not in stdlib), [])

    def test_boottool_needs_only_what_python3_minimal_carries(self):
        # Debian's python3-minimal has no shutil, shlex or json (checked for
        # real in TestBoottool.test_runs_under_debians_python3_minimal).
        self.assertEqual(_imports(os.path.join(HERE, "boottool")) & {"shutil", "shlex", "json",
                                                                     "tempfile", "subprocess"},
                         set())


class TestPublicAPI(unittest.TestCase):
    """The API's shape, checked without hardware: power controllers, host
    constructors and signatures, the control-file groups.  Nothing here is
    powered, rebooted or installed."""

    POWER_METHODS = ("on", "off", "cycle", "reset", "status")

    @staticmethod
    def power_classes():
        """Every power controller class autoserv defines: named *Power, or
        a PowerController, or registered by name."""
        found = {v for n, v in vars(autoserv).items() if isinstance(v, type)
                 and (n.endswith("Power") or issubclass(v, autoserv.PowerController))}
        found |= set(autoserv._REGISTRY["power"].values())
        found.discard(autoserv.PowerController)
        return sorted(found, key=lambda c: c.__name__)

    def test_the_module_reads_like_its_map(self):
        # Issue 16's shape: the docstring's section list is the banners, in
        # order; no section over 900 lines; SSHHost thin; one hard-reset
        # path (Host.hardreset through self.power); no object reaching into
        # another's underscore attributes (its own class's counters aside).
        import ast
        with open(autoserv.__file__, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines()
        banners = [(i, m.group(1)) for i, line in enumerate(lines)
                   for m in [re.match(r"# (.+?) #{5,}$", line)] if m]
        listed = autoserv.__doc__.split("prints them;", 1)[1].split("):", 1)[1]
        listed = [" ".join(t.split()) for t in listed.strip().rstrip(".").split(";")]
        self.assertEqual(listed, [t for _, t in banners])
        ends = [i for i, _ in banners[1:]] + [len(lines)]
        sizes = {t: end - i for (i, t), end in zip(banners, ends)}
        self.assertLessEqual(max(sizes.values()), 900, sizes)
        tree = ast.parse(text)
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        ssh_host = classes["SSHHost"]
        self.assertLess(ssh_host.end_lineno - ssh_host.lineno + 1, 300)
        overriding = sorted(name for name, node in classes.items() if name != "Host"
                            and any(isinstance(f, ast.FunctionDef) and f.name == "hardreset"
                                    for f in node.body))
        self.assertEqual(overriding, [])
        own = {"self", "cls", "super"} | {n for n in classes}
        reach = sorted({f"{ast.unparse(node.value)}.{node.attr}" for node in ast.walk(tree)
                        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__")
                        and node.attr not in ("_replace", "_asdict", "_fields", "_exit")
                        and not (isinstance(node.value, ast.Name) and node.value.id in own)
                        and isinstance(node.value, (ast.Name, ast.Attribute))
                        and not ast.unparse(node.value).startswith(("self.", "os.", "sys."))})
        self.assertEqual(reach, [])

    def test_every_power_controller_has_on_off_cycle_reset_and_status(self):
        classes = self.power_classes()
        self.assertLessEqual({"CommandPower", "ConmuxPower", "IPMIPower", "QMPPower",
                              "RedfishPower"}, {c.__name__ for c in classes})
        for cls in classes:
            for name in self.POWER_METHODS:
                with self.subTest(cls=cls.__name__, method=name):
                    self.assertTrue(issubclass(cls, autoserv.PowerController))
                    method = getattr(cls, name, None)
                    self.assertTrue(callable(method), f"{cls.__name__}.{name} is missing")
                    self.assertEqual(list(inspect.signature(method).parameters), ["self"])

    def test_what_a_controller_cannot_do_is_a_not_implemented_error_naming_it(self):
        # /bin/false as the conmux client: nothing may run it for these.
        conmux = autoserv.ConmuxPower("127.0.0.1:1", attach="/bin/false")
        command = autoserv.CommandPower(on="true")
        for controller, name, what in ((conmux, "on", "power on"), (conmux, "off", "power off"),
                                       (conmux, "status", "power status"),
                                       (command, "off", "power off"),
                                       (command, "cycle", "power cycle"),
                                       (command, "reset", "power cycle"),
                                       (command, "status", "power status")):
            with self.subTest(cls=type(controller).__name__, method=name):
                with self.assertRaises(autoserv.AutoservNotImplementedError) as cm:
                    getattr(controller, name)()
                self.assertIn(type(controller).__name__, str(cm.exception))
                self.assertIn(what, str(cm.exception))
        self.assertEqual(command.on().exit_status, 0)
        self.assertEqual(autoserv.CommandPower(status="exit 1").status(), "off")
        self.assertEqual(autoserv.CommandPower(status="true").status(), "on")

    def test_every_control_file_name_is_autoserv_group_name_and_listed_in_all(self):
        ns = autoserv.control_namespace()
        plain = {"os", "sys", "time", "job", "machines", "args"}
        groups = {n: v for n, v in ns.items()
                  if isinstance(v, types.ModuleType) and n not in plain and n[0] != "_"}
        self.assertLessEqual({"hosts", "kvm", "deb_kernel", "rpm_kernel", "autotest", "power",
                              "errors"}, set(groups))
        listed = set()
        for group_name, group in groups.items():
            members = {n: v for n, v in vars(group).items() if not n.startswith("__")}
            self.assertTrue(members, group_name)
            listed |= {group_name, *members}
            for name, value in members.items():
                with self.subTest(name=f"{group_name}.{name}"):
                    self.assertIs(getattr(getattr(autoserv, group_name), name), value)
                    self.assertIs(getattr(autoserv, name), value)
        for name, value in ns.items():
            if not name.startswith("_") and name not in plain:
                with self.subTest(name=name):
                    self.assertIs(getattr(autoserv, name), value)
                    listed.add(name)
        self.assertEqual(sorted(set(autoserv.__all__) - set(autoserv._LIBRARY_NAMES)),
                         sorted(listed))
        self.assertEqual(set(vars(autoserv.errors)) - {"__name__", "__doc__", "__package__",
                                                       "__loader__", "__spec__"},
                         {n for n, v in ns.items() if isinstance(v, type)
                          and issubclass(v, autoserv.AutoservError)})
        self.assertIs(autoserv.power.ConmuxPower, autoserv.ConmuxPower)

    # What a script uses most: every parameter and the return annotated.
    FULLY_HINTED = ("run", "get_tmp_dir", "sh_escape", "sh_quote", "parallel", "parallel_simple",
                    "close_all", "create_host", "set_ssh_defaults", "parse_status_log",
                    "register_host_class", "register_power", "register_console",
                    "Host.run", "Host.send_file", "Host.get_file", "Host.get_tmp_dir",
                    "Host.is_up", "Host.wait_up", "Host.wait_down", "Host.reboot",
                    "Host.hardreset", "Host.get_boot_id", "Host.get_kernel_ver", "Host.get_arch",
                    "Host.get_num_cpu", "Host.close", "SSHHost.__init__", "SSHHost.send_file",
                    "SSHHost.get_file", "LocalHost.__init__", "KVM.__init__", "KVM.install",
                    "KVM.uninstall", "KVMGuest.__init__", "Job.__init__", "Job.end",
                    "Job.record", "subcommand.__init__", "CmdResult.__init__",
                    "CmdResult.status_text", "PowerController.status")

    @staticmethod
    def public_callables():
        """(name, callable) for every public function, class, constructor
        and public method autoserv exports."""
        found = []
        for name in autoserv.__all__:
            obj = getattr(autoserv, name)
            if isinstance(obj, types.ModuleType):
                continue
            found.append((name, obj))
            if isinstance(obj, type) and obj.__module__ == autoserv.__name__:
                seen = set()
                for cls in obj.__mro__:        # the one an instance gets: the first
                    for attr, value in vars(cls).items():
                        if attr.startswith("_") and attr != "__init__" or attr in seen:
                            continue
                        seen.add(attr)
                        value = value.fget if isinstance(value, property) else value
                        if callable(value) and getattr(value, "__module__", None) == \
                                autoserv.__name__:
                            found.append((f"{name}.{attr}", value))
        return found

    def test_type_hints_resolve_on_every_public_callable_and_the_main_ones_are_complete(self):
        import ast
        import typing
        callables = dict(self.public_callables())
        self.assertGreater(len(callables), 150)
        for name, obj in callables.items():
            with self.subTest(name=name):
                typing.get_type_hints(obj)
        for name in self.FULLY_HINTED:
            with self.subTest(fully=name):
                fn = callables[name]
                hints = typing.get_type_hints(fn)
                params = [p for p in inspect.signature(fn).parameters if p != "self"]
                self.assertEqual([p for p in params if p not in hints], [], name)
                if not name.endswith("__init__"):
                    self.assertIn("return", hints, name)
        self.assertIs(typing.get_type_hints(autoserv.Host.run)["return"], autoserv.CmdResult)
        # Valid on Python 3.9: no "X | Y" in an annotation, no postponed
        # evaluation (a control file compiled here would inherit it).
        for path in (autoserv.__file__, os.path.join(HERE, "examples", "library_fanout.py")):
            tree = ast.parse(read_file(path, encoding="utf-8"))
            annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, ast.arg)
                           and n.annotation] + [n.returns for n in ast.walk(tree)
                                                if isinstance(n, ast.FunctionDef) and n.returns]

            def nodes(a):          # a string annotation ("Host") is parsed too
                for b in ast.walk(a):
                    yield b
                    if isinstance(b, ast.Constant) and isinstance(b.value, str):
                        yield from nodes(ast.parse(b.value, mode="eval"))
            bad = [ast.unparse(a) for a in annotations
                   if any(isinstance(b, ast.BinOp) for b in nodes(a))]
            self.assertEqual(bad, [], path)
            self.assertFalse([n for n in tree.body if isinstance(n, ast.ImportFrom)
                              and n.module == "__future__"], path)
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "library_fanout", os.path.join(HERE, "examples", "library_fanout.py"))
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        for fn in (example.fan_out, example.main):
            self.assertIn("return", typing.get_type_hints(fn))

    def test_all_is_what_readme_documents(self):
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        self.assertEqual([n for n in autoserv.__all__
                          if not re.search(rf"`(autoserv\.)?{n}\b", readme)], [])
        section = readme.split("## Using autoserv from Python", 1)[1].split("\n## ", 1)[0]
        table = section.split("| name beyond a control file's |", 1)[1].split("\n\n", 1)[0]
        listed = [name for row in table.splitlines()[2:]
                  for name in re.findall(r"`(\w+)`", row.split("|")[1])]
        self.assertEqual(sorted(listed), sorted(autoserv._LIBRARY_NAMES))
        self.assertEqual(autoserv.__all__, sorted(set(autoserv.__all__)))

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-api-")
        self.addCleanup(shutil.rmtree, self.tmp)

    @staticmethod
    def lab_site_host():
        class LabSiteHost(autoserv.SiteHost):
            """A site's own host class, as a site file would define one."""

            def __init__(self, hostname, **kwargs):
                self._init_args, self._init_kwargs = (hostname,), {}
                self.hostname = hostname
                super().__init__(**kwargs)
        return LabSiteHost

    def makers(self):
        """(class name, a function making that host from keywords); none of
        them contacts anything."""
        kvm = autoserv.KVM(autoserv.LocalHost())      # never installed: no address
        lab = self.lab_site_host()
        return (("LocalHost", lambda **kw: autoserv.LocalHost(**kw)),
                ("SSHHost", lambda **kw: autoserv.SSHHost("lab1", **kw)),
                ("ConmuxSSHHost", lambda **kw: autoserv.ConmuxSSHHost(
                    "lab1", attach="/bin/false", **kw)),
                ("KVMGuest", lambda **kw: autoserv.KVMGuest(kvm, "-m 256", **kw)),
                ("LabSiteHost", lambda **kw: lab("lab1", **kw)),
                ("create_host", lambda **kw: autoserv.create_host("lab1", **kw)))

    def test_host_constructors_refuse_unknown_keywords_by_name_and_password_says_use_a_key(self):
        for name, make in self.makers():
            with self.subTest(cls=name):
                with self.assertRaises(TypeError) as cm:
                    make(pasword="x", identity_file="y")
                self.assertIsInstance(cm.exception, autoserv.AutoservUsageError)
                self.assertIn("'identity_file', 'pasword'", str(cm.exception))
                with self.assertRaises(TypeError) as cm:
                    make(password="s3cret-4431")
                text = str(cm.exception)
                self.assertEqual(len(text.splitlines()), 1, text)
                for part in ("password=", "keys", "BatchMode", "ssh-keygen", "ssh-copy-id",
                             "-i FILE", "identity="):
                    self.assertIn(part, text)
                self.assertNotIn("s3cret-4431", text)
        self.assertEqual([h for h in autoserv._HOSTS if h.hostname == "lab1"], [])
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write("h = hosts.SSHHost('lab1', password='s3cret-4431')\n")
        out = run_cli("-r", os.path.join(self.tmp, "res"), ctl)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertEqual(out.stderr.splitlines()[1:-1], [
            f"autoserv: error: {ctl}:1: AutoservArgumentError: SSHHost(password=...): "
            + autoserv._PASSWORD_HINT])

    def test_registered_power_and_console_names_work_wherever_objects_do(self):
        calls = []

        class StandInPowerForTests(autoserv.PowerController):
            """A stand-in for a site's PDU: it records what it is asked."""

            def __init__(self, outlet=None):
                self.outlet = outlet

            def on(self):
                calls.append(("on", self.outlet))

        class StandInConsoleForTests:
            """A stand-in for a site's console server."""

            def __init__(self, line=None):
                self.line = line

            def hardreset(self):
                calls.append(("console hardreset", self.line))

        for kind, name, cls in (("power", "stand-in-pdu", StandInPowerForTests),
                                ("console", "stand-in-console", StandInConsoleForTests)):
            getattr(autoserv, f"register_{kind}")(name, cls)
            self.addCleanup(autoserv._REGISTRY[kind].pop, name)
        for maker_name, make in self.makers():
            with self.subTest(cls=maker_name):
                if maker_name == "KVMGuest":        # its keywords reach SSHHost (no guest here)
                    continue
                h = make(power="stand-in-pdu:outlet 7", console="stand-in-console:ttyS1")
                self.addCleanup(h.close)
                self.assertIsInstance(h.power, StandInPowerForTests)
                self.assertEqual((h.power.outlet, h.console.line), ("outlet 7", "ttyS1"))
                h.power_on()
                self.assertEqual(calls.pop(), ("on", "outlet 7"))
                with self.assertRaises(autoserv.AutoservNotImplementedError):
                    h.power_off()
        h = autoserv.SSHHost("lab1", power={"type": "stand-in-pdu", "outlet": "8"},
                             console="stand-in-console")
        self.addCleanup(h.close)
        self.assertEqual((h.power.outlet, h.console.line), ("8", None))
        # A console with hardreset() is a reset path of its own (a stand-in:
        # nothing is reset).
        local = autoserv.LocalHost(console="stand-in-console:ttyS2")
        self.assertEqual([local.can_hardreset(), autoserv.LocalHost().can_hardreset()],
                         [True, False])
        local.hardreset(wait=False)
        self.assertEqual(calls.pop(), ("console hardreset", "ttyS2"))
        with self.assertRaises(autoserv.AutoservUsageError) as cm:
            autoserv.SSHHost("lab1", power="no-such-pdu")
        self.assertIn("'no-such-pdu'", str(cm.exception))
        self.assertIn("stand-in-pdu", str(cm.exception))
        # From a site file, in a control file.
        site = os.path.join(self.tmp, "site_autoserv.py")
        with open(site, "w") as f:
            f.write("import autoserv\n"
                    "class StandInPowerForTests(autoserv.PowerController):\n"
                    "    def __init__(self, outlet):\n"
                    "        self.outlet = outlet\n"
                    "    def cycle(self):\n"
                    "        print('stand-in cycled', self.outlet)\n"
                    "autoserv.register_power('stand-in-pdu', StandInPowerForTests)\n")
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write("h = hosts.create_host('lab1', power='stand-in-pdu:outlet 9')\n"
                    "h.power_cycle()\n")
        out = run_cli("-r", os.path.join(self.tmp, "res"), ctl,
                      env=dict(os.environ, AUTOSERV_SITE=site))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("stand-in cycled outlet 9", out.stdout)

    def host_classes(self):
        found, todo = set(), [autoserv.Host]
        while todo:
            cls = todo.pop()
            for sub in cls.__subclasses__():
                if sub.__module__ == "autoserv" and sub not in found:
                    found.add(sub)
                    todo.append(sub)
        return sorted(found | set(autoserv._REGISTRY["host"].values()) | {self.lab_site_host()},
                      key=lambda c: c.__name__)

    def test_every_host_class_takes_the_base_hosts_parameters_and_the_base_documents_them(self):
        classes = self.host_classes()
        self.assertLessEqual({"LocalHost", "SSHHost", "ConmuxSSHHost", "KVMGuest", "Guest",
                              "LabSiteHost"}, {c.__name__ for c in classes})
        methods = [(n, m) for n, m in inspect.getmembers(autoserv.Host, inspect.isfunction)
                   if not n.startswith("_")]
        for name, method in methods:
            with self.subTest(method=name):
                self.assertTrue(method.__doc__, f"Host.{name} has no docstring")
            for cls in classes:
                with self.subTest(cls=cls.__name__, method=name):
                    self.assertEqual(inspect.signature(getattr(cls, name)),
                                     inspect.signature(method))
        for name in ("send_file", "get_file", "is_up"):
            self.assertIn("timeout", inspect.signature(getattr(autoserv.Host, name)).parameters)
        for name in ("down_timeout", "stable_for"):
            self.assertIn(name, inspect.signature(autoserv.Host.reboot).parameters)


# Local processes ##############################################################

class TestLocalRun(unittest.TestCase):
    def setUp(self):
        self.host = autoserv.LocalHost()

    def test_local_transfers_honour_their_timeout_and_keep_the_old_file(self):
        tmp = tempfile.mkdtemp(prefix="as-ltx-")
        self.addCleanup(shutil.rmtree, tmp)
        src, dest = os.path.join(tmp, "big"), os.path.join(tmp, "dest")
        with open(src, "wb") as f:                 # 64 MiB, sparse: no disk or memory spent
            f.truncate(64 << 20)
        for method in (self.host.send_file, self.host.get_file):
            with self.subTest(method=method.__name__):
                with open(dest, "w") as f:
                    f.write("the old file")
                t0 = time.monotonic()
                with self.assertRaises(autoserv.AutoservTimeoutError) as cm:
                    method(src, dest, timeout=0.001)
                self.assertLess(time.monotonic() - t0, 5)
                self.assertIn("timed out after 0.001 s", str(cm.exception))
                self.assertEqual(read_file(dest), "the old file")
                self.assertEqual(sorted(os.listdir(tmp)), ["big", "dest"])   # no staging left
                method(src, dest, timeout=60)
                self.assertEqual(os.path.getsize(dest), 64 << 20)
        self.assertTrue(self.host.is_up(timeout=1))

    def test_the_sampler_profiler_is_a_process_ended_with_its_test_or_its_parent(self):
        # A client test that forks (linus_stress does) must not fork with a
        # thread alive (3.12+ warns): the sampler is a child process, ended
        # and reaped by stop(), and gone by itself if the harness is killed.
        tmp = tempfile.mkdtemp(prefix="as-prof-")
        self.addCleanup(shutil.rmtree, tmp)
        job = types.SimpleNamespace(record=lambda *a: None)
        prof = autoserv._Profilers(job)
        prof.add("sampler", interval=0.05)
        t = types.SimpleNamespace(profdir=os.path.join(tmp, "prof"))
        threads = threading.active_count()
        prof.start(t)
        pid = prof._running[0][1]
        try:
            self.assertEqual(threading.active_count(), threads)
            csv = os.path.join(t.profdir, "sampler.csv")
            wait_for(lambda: os.path.exists(csv) and len(read_file(csv).splitlines()) > 2, 10,
                     what="sampler rows")
        finally:
            prof.stop(t)
        with self.assertRaises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)                     # ended and reaped
        # The harness killed outright: its sampler ends by itself.
        code = textwrap.dedent(f"""\
            import os, sys, time, types
            sys.path.insert(0, {HERE!r})
            import autoserv
            prof = autoserv._Profilers(types.SimpleNamespace(record=lambda *a: None))
            prof.add("sampler", interval=0.05)
            prof.start(types.SimpleNamespace(profdir={os.path.join(tmp, "p2")!r}))
            print(prof._running[0][1], flush=True)
            time.sleep(600)
            """)
        harness = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        sampler = int(harness.stdout.readline())
        harness.kill()
        harness.wait()
        harness.stdout.close()

        def gone():
            try:
                with open(f"/proc/{sampler}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True
        try:
            wait_for(gone, 10, what="the orphaned sampler ending")
        finally:
            if not gone():
                os.kill(sampler, signal.SIGKILL)     # ours (by PID): not left running
            reap()

    def test_result_fields_and_autotest_layout(self):
        r = self.host.run("echo out; echo err >&2")
        self.assertEqual((r.stdout, r.stderr, r.exit_status, r.aborted), ("out\n", "err\n", 0, 0))
        text = str(r)
        for part in ("* Command: echo out", "Exit status: 0", "Duration:", "Aborted: 0"):
            self.assertIn(part, text)
        self.assertFalse(hasattr(type(r), "__bool__"))

    def test_nonzero_exit_raises_with_result_unless_ignored(self):
        with self.assertRaises(autoserv.AutoservRunError) as cm:
            self.host.run("echo oops >&2; exit 4")
        self.assertEqual(cm.exception.result.exit_status, 4)
        self.assertEqual(self.host.run("exit 4", ignore_status=True).exit_status, 4)

    def test_signal_death_is_reported_as_aborted(self):
        r = self.host.run("kill -9 $$", ignore_status=True)
        self.assertEqual(r.aborted, 9)

    def test_timeout_kills_the_whole_local_process_group(self):
        tag = "4242.5"
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservTimeoutError) as cm:
            self.host.run(f"sh -c 'sleep {tag} & sleep {tag}'; echo never", timeout=2)
        self.assertLess(time.monotonic() - t0, 12)
        self.assertTrue(cm.exception.result.timed_out)
        wait_for(lambda: not processes_with(f"sleep {tag}"), 5, what="sleeps gone")

    @scenario(13)
    def test_timeout_kills_commands_that_ignore_term_or_are_stopped(self):
        for cmd in ("trap '' TERM; sleep 4243.1", "kill -STOP $$; sleep 4243.2"):
            with self.subTest(cmd=cmd):
                t0 = time.monotonic()
                with self.assertRaises(autoserv.AutoservTimeoutError):
                    self.host.run(cmd, timeout=1)
                self.assertLess(time.monotonic() - t0, 11)
        wait_for(lambda: not processes_with("sleep 4243."), 5, what="commands gone")

    def test_timeout_keeps_the_partial_output(self):
        with self.assertRaises(autoserv.AutoservTimeoutError) as cm:
            self.host.run("echo started; sleep 30", timeout=1)
        self.assertEqual(cm.exception.result.stdout, "started\n")

    def test_stdin_is_dev_null_unless_given(self):
        # (The test's own stdin holds bytes meanwhile: inherited, cat would
        # print them.)
        r, w = os.pipe()
        os.write(w, b"the test's own stdin\n")
        os.close(w)
        saved = os.dup(0)
        os.dup2(r, 0)
        os.close(r)
        try:
            self.assertEqual(self.host.run("cat", timeout=30).stdout, "")
        finally:
            os.dup2(saved, 0)
            os.close(saved)
        self.assertEqual(self.host.run("cat", stdin=b"\x00\xffdata").stdout, "\x00\ufffddata")

    def test_undecodable_bytes_never_raise_and_tees_see_live_text(self):
        # A character split between two reads (the sleep between its bytes)
        # is one character in the tee; what came before is shown at once.
        tee = StampedTee()
        r = self.host.run(r"printf 'a\377\376\000b\342\202'; sleep 1; printf '\254z'",
                          stdout_tee=tee)
        self.assertEqual(r.stdout, "a\ufffd\ufffd\x00b\u20acz")
        self.assertEqual(tee.text, r.stdout)
        self.assertTrue(tee.shown_before(time.monotonic() - 0.8),
                        (tee.writes, tee.flushes, time.monotonic()))

    @scenario(15)
    def test_escapes_are_neutralised_on_a_terminal_tee(self):
        class Tty(io.StringIO):
            def isatty(self):
                return True
        tee = Tty()
        r = self.host.run(r"printf 'red\033[31mtext\n'", stdout_tee=tee)
        self.assertEqual(r.stdout, "red\x1b[31mtext\n")
        self.assertEqual(tee.getvalue(), "red^[[31mtext\n")

    def test_huge_output_keeps_head_and_tail_and_the_whole_stream_on_disk(self):
        r = self.host.run("head -c 3000000 /dev/zero | tr '\\0' a; echo END",
                          max_output=1000000)
        self.assertTrue(r.truncated)
        self.assertTrue(r.stdout.startswith("a" * 1000))
        self.assertTrue(r.stdout.endswith("aEND\n"))
        self.assertLess(len(r.stdout), 1100000)                 # the middle left out
        self.assertIn("bytes left out here", r.stdout)
        path = r.output_files["stdout"]
        self.addCleanup(os.unlink, path)
        self.assertEqual(os.path.getsize(path), 3000004)

    @scenario(14)
    def test_flood_on_both_streams_has_flat_memory_and_no_deadlock(self):
        code = textwrap.dedent("""\
            import autoserv, os
            n = int(os.environ['N'])
            one = f"{{ echo HEAD; head -c {n} /dev/zero; echo TAIL; }}"
            r = autoserv.LocalHost().run(f"{one} & {one} >&2; wait", max_output=4 << 20)
            assert r.truncated and len(r.stdout) < (8 << 20), len(r.stdout)
            for text in (r.stdout, r.stderr):       # head and tail both kept
                assert text.startswith("HEAD\\n") and text.endswith("\\0TAIL\\n"), \
                    (text[:20], text[-20:])
            for p in r.output_files.values():
                assert os.path.getsize(p) == n + 10, p
                os.unlink(p)
            """)
        assert_flat_memory(self, code, "N", lambda mb: str(mb << 20))

    @scenario(18)
    def test_more_than_1024_open_fds_do_not_break_the_loop(self):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 1200:
            self.skipTest("fd limit too low")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        try:
            self.assertEqual(self.host.run("echo ok").stdout, "ok\n")
        finally:
            for fd in fds:
                os.close(fd)

    def test_local_copy_follows_rsync_placement(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        src = os.path.join(d, "src")
        os.makedirs(os.path.join(src, "sub"))
        write_file(os.path.join(src, "sub", "f"), "x")
        write_file(os.path.join(src, ".hidden"), "h")
        self.host.send_file(src, os.path.join(d, "a"))          # dir goes inside
        self.assertTrue(os.path.isfile(os.path.join(d, "a", "src", "sub", "f")))
        self.host.send_file(src + "/", os.path.join(d, "b"))    # contents
        self.assertTrue(os.path.isfile(os.path.join(d, "b", ".hidden")))
        self.host.send_file(os.path.join(src, ".hidden"), os.path.join(d, "c"))
        self.assertEqual(read_file(os.path.join(d, "c")), "h")


# CLI ##########################################################################

class TestCLI(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-cli-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def control(self, text, name="job.control"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def results(self, name="res"):
        return os.path.join(self.tmp, name)

    def test_health_flags_misused_are_one_line_and_exit_2(self):
        ctl = self.control("pass\n")
        cases = [(("--verify", "-m", "localhost", ctl), "--verify checks the machines and exits"),
                 (("--repair", "-m", "localhost", ctl), "--repair checks the machines and exits"),
                 (("--verify", "--repair", "-m", "localhost"), "give one"),
                 (("--verify",), "--verify: give the machines to check"),
                 (("--verify", "-m", "localhost", "--min-free", "tmp=5"), "--min-free 'tmp=5'"),
                 (("--verify", "-m", "localhost", "--min-free", "/tmp=lots"), "PATH=MB"),
                 (("--verify", "-m", "localhost", "--max-clock-skew", "-1"), "--max-clock-skew")]
        for argv, said in cases:
            with self.subTest(argv=argv):
                out = run_cli(*argv, "-r", self.results(), cwd=self.tmp)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertIn(said, out.stderr)
                self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
                self.assertFalse(os.path.exists(self.results()))

    def test_a_site_verify_is_the_last_check_and_its_failure_names_the_host_sick(self):
        # localhost: verify only reads (no repair here: it is this machine).
        site = os.path.join(self.tmp, "site_autoserv.py")
        for verdict, code, row in (("pass", 0, r"localhost +GOOD +reachable in .*; clock "
                                                r"[-+]\d+ s; site verify passed"),
                                   ("raise RuntimeError('licence server down')", 4,
                                    r"localhost +SICK +verify failed: site verify "
                                    r"\(RuntimeError: licence server down\)")):
            with self.subTest(verdict=verdict):
                with open(site, "w") as f:
                    f.write("class SiteHost:\n    def verify(self):\n"
                            f"        {verdict}\n")
                os.chmod(site, 0o644)
                res = self.results(f"res{code}")
                out = run_cli("--verify", "-m", "localhost", "-r", res, cwd=self.tmp,
                              env=dict(os.environ, AUTOSERV_SITE=site))
                self.assertEqual(out.returncode, code, out.stderr)
                self.assertRegex(out.stdout, row)
                entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
                verdicts = [(e["code"], e["message"]) for e in entries
                            if e["operation"] == "verify"]
                self.assertEqual(verdicts[0][0], "GOOD" if code == 0 else "FAIL")
                self.assertEqual(json.loads(read_file(os.path.join(res, "summary.json")))["job"]
                                 .get("dropped", {}), {} if code == 0 else {
                                     "localhost": "verify failed: site verify (RuntimeError: "
                                                  "licence server down)"})

    def test_a_free_space_threshold_over_what_a_path_has_is_a_sick_host_naming_it(self):
        out = run_cli("--verify", "-m", "localhost", "--min-free", "/=100000000",
                      "-r", self.results(), cwd=self.tmp)
        self.assertEqual(out.returncode, 4, out.stderr)
        self.assertRegex(out.stdout, r"localhost +SICK +verify failed: free space "
                                     r"\(/: \d+ MB free, needs 100000000 MB\)")
        self.assertIn("0 of 1 host GOOD; localhost FAIL sick: verify failed: free space",
                      out.stderr)
        page = read_file(os.path.join(self.results(), "index.html"))
        self.assertIn('<tr class="dropped" data-host="localhost">', page)

    def test_results_base_holds_the_runs_and_latest_names_the_newest(self):
        base = os.path.join(self.tmp, "base")
        os.mkdir(base)
        ctl = self.control("pass\n")
        made = []
        for _ in range(2):
            out = run_cli("--results-base", base, ctl, cwd=self.tmp)
            self.assertEqual(out.returncode, 0, out.stderr)
            made.append(out.stderr.splitlines()[0].split("results in ", 1)[1])
            self.assertEqual(os.path.dirname(made[-1]), base)
            self.assertEqual(os.readlink(os.path.join(base, "latest")),
                             os.path.basename(made[-1]))
            self.assertTrue(out.stderr.strip().splitlines()[-1].endswith(
                f"results in {os.path.relpath(made[-1], self.tmp)}"), out.stderr)
        self.assertNotEqual(made[0], made[1])
        out = run_cli("--results-base", base, "-r", self.results(), ctl, cwd=self.tmp)
        self.assertEqual(out.returncode, 2)
        self.assertIn("-r and --results-base", out.stderr)
        # Usage mistakes found by running: exit 2, no results dir, latest as it was.
        mistakes = {"needs -m": ("h = hosts.SSHHost(machines[0])\n", "no machines given"),
                    "name at line 1": ("pritn('hello')\n", "NameError")}
        for name, (text, said) in mistakes.items():
            with self.subTest(mistake=name):
                out = run_cli("--results-base", base, self.control(text, "bad.control"),
                              cwd=self.tmp)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertIn(said, out.stderr)
                self.assertEqual(sorted(os.listdir(base)),
                                 sorted([os.path.basename(m) for m in made] + ["latest"]))
                self.assertEqual(os.readlink(os.path.join(base, "latest")),
                                 os.path.basename(made[-1]))

    def test_local_example_runs_with_no_set_up(self):
        out = run_cli(os.path.join(HERE, "examples", "local-uname.control"), cwd=self.tmp)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux", out.stdout)
        res = [d for d in os.listdir(self.tmp) if d.startswith("results.")]
        self.assertEqual(len(res), 1)
        rd = os.path.join(self.tmp, res[0])
        for name in ("control.srv", "keyval", "status.log", "summary.json",
                     "debug/autoserv.log", "greeting.txt"):
            self.assertTrue(os.path.exists(os.path.join(rd, name)), name)
        summary = json.loads(read_file(os.path.join(rd, "summary.json")))
        self.assertEqual(summary["job"]["outcome"], "GOOD")
        log = read_file(os.path.join(rd, "debug", "autoserv.log"), "rb")
        self.assertIn(b"run: uname -a", log)
        self.assertRegex(log, rb"exit status 0 in \d+\.\d+s")

    def test_the_debug_log_and_v_and_q_are_handlers_on_the_autoserv_logger_tree(self):
        ctl = self.control("""\
            import logging
            mine = logging.getLogger("autoserv.mycheck")
            mine.debug("a detail")
            mine.info("a progress line")
            mine.warning("a warning")
            hosts.LocalHost().run("echo out")
            """)
        said = {}
        for flag in ("", "-v", "-q"):
            out = run_cli(*([flag] if flag else []), "-r", self.results(f"r{flag}"), ctl)
            self.assertEqual(out.returncode, 0, out.stderr)
            said[flag] = [line for line in out.stderr.splitlines() if "results in" not in line]
            log = read_file(os.path.join(self.results(f"r{flag}"), "debug", "autoserv.log"))
            for text in ("a detail", "a progress line", "a warning", "localhost: run: echo out"):
                self.assertIn(text, log)
        self.assertEqual(said[""], ["autoserv: a progress line", "autoserv: a warning"])
        self.assertEqual(said["-q"], ["autoserv: a warning"])
        self.assertTrue(any(line.endswith("localhost stdout| out") for line in said["-v"]),
                        said["-v"])
        self.assertTrue(any(line.endswith("autoserv.mycheck: a detail") for line in said["-v"]),
                        said["-v"])

    def test_exit_codes(self):
        cases = {
            0: "x = 1\n",
            1: "hosts.LocalHost().run('exit 3')\n",
            3: "job.record('FAIL', None, 'mytest', 'it broke')\n",
        }
        for code, text in cases.items():
            with self.subTest(code=code):
                out = run_cli("-r", self.results(f"r{code}"), self.control(text, f"c{code}"))
                self.assertEqual(out.returncode, code, out.stderr)
        out = run_cli("--no-such-option", self.control("x=1\n"))
        self.assertEqual(out.returncode, 2)

    def test_signals_give_130_and_143_with_abort_recorded(self):
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with self.subTest(sig=sig):
                res = self.results(f"sig{code}")
                ctl = self.control("run('sleep 4244.%d')\n" % code, f"s{code}")
                p = subprocess.Popen([sys.executable, AUTOSERV, "-r", res, ctl],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                wait_for(lambda: processes_with("sleep 4244.%d" % code), 20, what="sleep started")
                p.send_signal(sig)
                p.communicate(timeout=20)
                self.assertEqual(p.returncode, code)
                entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
                self.assertIn("ABORT", [e["code"] for e in entries])
                wait_for(lambda: not processes_with("sleep 4244.%d" % code), 5, what="sleep gone")

    def test_bad_input_gives_one_line_and_no_traceback(self):
        empty_parent = os.path.join(self.tmp, "no", "such", "dir")
        good = self.control("x = 1\n")
        full = self.results("full")
        os.mkdir(full)
        write_file(os.path.join(full, "keep"), "precious")
        cases = [
            (["--bogus", good], "bogus"),
            ([os.path.join(self.tmp, "missing.control")], "no such file"),
            ([self.control("x = (\n\ny = 2\n", "syn.control")], "syn.control:"),
            (["-m", "a,,b", good], "empty machine name"),
            (["--machines=-oProxyCommand=evil", good], "is not [user@]host[:port]"),
            (["-r", empty_parent, good], "does not exist"),
            (["-r", full, good], "not empty"),
            ([], "no CONTROL_FILE"),
        ]
        for args, text in cases:
            with self.subTest(args=args):
                out = run_cli(*args, cwd=self.tmp)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertIn(text, out.stderr)
                self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
                self.assertNotIn("Traceback", out.stderr)
        self.assertEqual(os.listdir(full), ["keep"])
        self.assertFalse([d for d in os.listdir(self.tmp) if d.startswith("results.")])

    def test_check_names_undefined_names_with_the_closest_known_one(self):
        path = self.control("""\
            h = hosts.SSHHost("lab1")
            h.rn("uname -r")
            paralel_simple(lambda m: None, machines)
            hosts.SSHHst("lab2")
            for m in machines:
                print(m, job.resultdir)
            """, "typos.control")
        out = run_cli("--check", path)
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertEqual(out.stderr.splitlines(), [
            f"autoserv: {path}:2: h.rn: no such attribute; did you mean 'run'?",
            f"autoserv: {path}:3: name 'paralel_simple' is not defined; "
            "did you mean 'parallel_simple'?",
            f"autoserv: {path}:4: hosts.SSHHst: no such attribute; did you mean 'SSHHost'?"])
        # every example passes; names made at run time (exec) are only warnings
        for example in glob.glob(os.path.join(HERE, "examples", "*.control")):
            self.assertEqual(run_cli("--check", example).returncode, 0, example)
        dynamic = self.control("exec('made = 1')\nprint(made)\n", "dynamic.control")
        out = run_cli("--check", dynamic)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("warning: name 'made' is not defined", out.stderr)

    def test_name_and_attribute_errors_keep_the_did_you_mean_hint(self):
        cases = {"def f():\n    paralel_simple(print, [1])\nf()\n":
                 "NameError: name 'paralel_simple' is not defined. Did you mean: "
                 "'parallel_simple'?",
                 "h = hosts.LocalHost()\nh.rn('true')\n":
                 "AttributeError: 'LocalHost' object has no attribute 'rn'. Did you mean: 'run'?"}
        for text, said in cases.items():
            with self.subTest(said=said):
                out = run_cli("-r", self.results(said[:4]), self.control(text, "typo.control"))
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertIn(said, out.stderr)

    def test_syntax_error_names_file_and_original_line(self):
        path = self.control('print "legacy is fine"\nx = 1\ny = = 2\n', "bad.control")
        out = run_cli("--check", path)
        self.assertEqual(out.returncode, 2)
        self.assertIn("bad.control:3: syntax error", out.stderr)

    def test_missing_local_file_to_send_is_one_line_exit_1(self):
        ctl = self.control("hosts.LocalHost().send_file('/no/such/file', '/tmp/x')\n")
        out = run_cli("-r", self.results(), ctl)
        self.assertEqual(out.returncode, 1)
        self.assertIn("job.control:1:", out.stderr)
        self.assertIn("/no/such/file", out.stderr)
        self.assertNotIn("Traceback", out.stderr)

    def test_python_errors_show_control_file_frames_first(self):
        ctl = self.control("def f():\n    return 1 / 0\nf()\n")
        out = run_cli("-r", self.results(), ctl)
        self.assertEqual(out.returncode, 1)
        self.assertRegex(out.stderr, r"job.control\", line 3.*\n.*\n.*job.control\", line 2")
        self.assertIn("ZeroDivisionError", out.stderr)
        self.assertNotIn("autoserv.py", out.stderr)

    @scenario(31)
    def test_overwrite_and_two_runs_in_the_same_second(self):
        ctl = self.control("x = 1\n")
        full = self.results("full")
        os.mkdir(full)
        write_file(os.path.join(full, "status.log"), "old\n")
        refused = run_cli("-r", full, ctl)
        self.assertEqual(refused.returncode, 2, refused.stderr)
        self.assertIn("not empty", refused.stderr)
        self.assertEqual(read_file(os.path.join(full, "status.log")), "old\n")
        self.assertEqual(run_cli("--overwrite", "-r", full, ctl).returncode, 0)
        self.assertNotIn("old", read_file(os.path.join(full, "status.log")))
        procs = [subprocess.Popen([sys.executable, AUTOSERV, ctl], cwd=self.tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(3)]
        for p in procs:
            self.assertEqual(p.wait(60), 0)
        self.assertEqual(len([d for d in os.listdir(self.tmp) if d.startswith("results.")]), 3)

    def test_namespace_args_machines_and_import_gives_the_running_module(self):
        ctl = self.control("""\
            import autoserv, sys
            assert autoserv is sys.modules['autoserv']
            assert autoserv.SSHHost is hosts.SSHHost
            assert autoserv.CmdResult is hosts.CmdResult
            print("ARGS", args, "MACHINES", machines)
            for name in ('os', 'sys', 'time', 'autotest', 'kvm', 'deb_kernel', 'rpm_kernel',
                         'power', 'errors', 'parallel', 'parallel_simple', 'subcommand',
                         'run', 'get_tmp_dir', 'sh_escape', 'sh_quote', 'job',
                         'AutoservRunError', 'AutoservSSHConnectionLost'):
                assert name in dir(), name
            print("CWD", os.getcwd())
            """)
        res = self.results()
        out = run_cli("-r", res, "-m", "a, b,a", "-a", "x 'y z'", ctl, "tail")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("ARGS ['tail', 'x', 'y z'] MACHINES ['a', 'b']", out.stdout)
        self.assertIn(f"CWD {res}", out.stdout)

    def test_keyval_junit_and_version(self):
        ctl = self.control("x = 1\n")
        res = self.results()
        junit = os.path.join(self.tmp, "j.xml")
        out = run_cli("-r", res, "-u", "alice", "-l", "nightly", "--junit", junit, ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        keyval = read_file(os.path.join(res, "keyval"))
        self.assertIn("user=alice\n", keyval)
        self.assertIn("label=nightly\n", keyval)
        import xml.etree.ElementTree as ET
        self.assertEqual(ET.parse(junit).getroot().get("failures"), "0")
        self.assertEqual(run_cli("--version").stdout.strip(), f"autoserv {autoserv.__version__}")

    @scenario(31)
    def test_sigkill_mid_run_leaves_parseable_status_and_whole_summary(self):
        ctl = self.control("""\
            i = 0
            while True:
                i += 1
                job.record('INFO', None, 'loop', 'line %d\\nwith a continuation' % i)
                job.write_summary('RUNNING')
            """)
        res = self.results()
        p = subprocess.Popen([sys.executable, AUTOSERV, "-r", res, ctl],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(os.path.join(res, "status.log"))
                 and os.path.getsize(os.path.join(res, "status.log")) > 20000, 30,
                 what="status lines")
        p.kill()
        p.wait()
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertGreater(len(entries), 50)
        json.loads(read_file(os.path.join(res, "summary.json")))
        self.status_log = os.path.join(res, "status.log")

    @scenario(31)
    def test_a_kill_between_any_two_writes_leaves_whole_entries_and_summary(self):
        # The SIGKILL test above lands wherever the scheduler puts it; this one
        # kills the run just before its Nth write, for every N in a loop
        # iteration, so an entry written in two pieces or a summary rewritten in
        # place is found every time, not by luck.
        ctl = self.control("""\
            import builtins, os, signal
            kill_at, calls = int(os.environ["KILL_AT"]), [0]
            def die_here():
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            real_write, real_open = os.write, builtins.open
            def write(fd, data):
                die_here()
                return real_write(fd, data)
            class Dying:
                def __init__(self, f):
                    self.f = f
                def write(self, data):
                    die_here()
                    return self.f.write(data)
                def __getattr__(self, name):
                    return getattr(self.f, name)
                def __enter__(self):
                    return self
                def __exit__(self, *exc):
                    return self.f.__exit__(*exc)
            def dying_open(file, mode="r", *a, **k):
                f = real_open(file, mode, *a, **k)
                return Dying(f) if "w" in mode or "a" in mode else f
            job.record('INFO', None, 'loop', 'before the first kill point')
            os.write, builtins.open = write, dying_open
            i = 0
            while True:
                i += 1
                job.record('INFO', None, 'loop', 'line %d\\nwith a continuation' % i)
                job.write_summary('RUNNING')
            """)
        for n in range(1, 13):
            with self.subTest(kill_at=n):
                res = self.results(f"res{n}")
                out = subprocess.run([sys.executable, AUTOSERV, "-r", res, ctl],
                                     env=dict(os.environ, KILL_AT=str(n)), capture_output=True,
                                     text=True, timeout=60)
                self.assertEqual(out.returncode, -signal.SIGKILL, out.stderr)
                with open(os.path.join(res, "status.log")) as f:
                    text = f.read()
                entries = autoserv.parse_status_log(text)
                # Parseable is not enough: a line cut after its fourth tab parses.
                self.assertTrue(text.endswith("\n"), "a torn last entry: " + text[-200:])
                self.assertTrue(all({"timestamp", "localtime"} <= set(e["fields"])
                                    for e in entries), text[-200:])
                self.assertIn("before the first kill point", [e["message"] for e in entries])
                with open(os.path.join(res, "summary.json")) as f:
                    self.assertEqual(json.load(f)["job"]["outcome"], "RUNNING")

    @scenario(17)
    def test_background_run_from_an_interactive_shell_is_never_stopped(self):
        import pty
        # cat /dev/tty: a child that reaches for the terminal itself finds
        # none (it has its own session) instead of being stopped by SIGTTIN.
        ctl = self.control("run('cat'); run('cat /dev/tty', ignore_status=True); "
                           "print('DONE-OK')\n")
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp("bash", ["bash", "--norc", "-i"])
        try:
            cmd = (f"{sys.executable} {AUTOSERV} -r {self.results()} {ctl} "
                   f"> {self.tmp}/out 2>&1 & wait $!; echo E''XIT=$?\n")
            os.write(fd, cmd.encode())
            buf = b""
            end = time.monotonic() + 60
            while b"EXIT=" not in buf and time.monotonic() < end:
                import select
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        buf += os.read(fd, 4096)
                    except OSError:
                        break
            self.assertIn(b"EXIT=0", buf)
            self.assertIn("DONE-OK", read_file(f"{self.tmp}/out"))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)


# SSH on loopback ##############################################################

class TestSSHRun(SshdTestCase):
    """The per-command path (persistent=False: every command its own ssh
    session); TestSSHRunPersistent runs its behaviour tests through the agent."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        saved = dict(autoserv._SSH_DEFAULTS)
        cls.addClassCleanup(autoserv._SSH_DEFAULTS.update, saved)
        autoserv.set_ssh_defaults(persistent=False)

    def test_run_reports_output_status_duration_and_host(self):
        h = self.sshd.host()
        r = h.run("echo out; echo err >&2; exit 3", ignore_status=True)
        self.assertEqual((r.stdout, r.stderr, r.exit_status, r.aborted, r.hostname),
                         ("out\n", "err\n", 3, 0, "testhost"))
        self.assertGreater(r.duration, 0)
        self.assertTrue(0.3 <= h.run("sleep 0.3").duration < 10)     # seconds
        with self.assertRaises(autoserv.AutoservRunError) as cm:
            h.run("echo boom >&2; exit 2")
        self.assertIn("boom", str(cm.exception))
        self.assertIn("testhost", str(cm.exception))

    def test_the_first_command_is_one_ssh_that_becomes_the_connections_master(self):
        # First contact: the first session's own ssh logs in, leaves the
        # master in the background and runs the command over it; later
        # sessions are clients of that master.  One ssh process and one
        # login for the first command, not a master and then a client.
        log = ssh_shim(self)
        h = self.sshd.host()
        self.assertEqual(h.run("echo one").stdout, "one\n")
        calls = ssh_calls(log)
        self.assertEqual(len(calls), 1, calls)
        self.assertIn("ControlPersist=yes", calls[0])
        master = h._master.pid
        self.assertEqual(autoserv._cmdline(master).split(b"\0")[0],
                         f"ssh: {h._ctrl_path} [mux]".encode())
        with open(h._ctrl_path + ".pid") as f:
            self.assertEqual(int(f.read()), master)       # registered with the job
        self.assertEqual(h.run("echo two").stdout, "two\n")
        self.assertEqual(h._master.pid, master)
        later = ssh_calls(log)[1:]
        self.assertEqual(len(later), 1)
        self.assertIn("ControlMaster=no", later[0])
        h.close()
        wait_for(lambda: not autoserv._pid_running(master), 10, what="the master ended at close")

    def test_a_login_that_hangs_at_first_contact_is_a_connect_timeout_within_its_bound(self):
        # Past the banner and the key exchange (ssh's ConnectTimeout covers
        # those), a login can hang: here the target's key lookup does not
        # answer for 9 s.  The first contact is bounded as a master's start is: the
        # connect timeout and 5 s.
        other = os.path.join(self.tmp, "other_key")       # our key is not in the file:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other],
                       check=True, stdin=subprocess.DEVNULL)   # sshd asks the command
        hung = Sshd(authorized_key=other + ".pub",
                    extra="AuthorizedKeysCommand /usr/bin/sleep 9\n"
                          "AuthorizedKeysCommandUser nobody\n")
        self.addCleanup(hung.stop)
        self.addCleanup(wait_for, lambda: not processes_with("/usr/bin/sleep 9"), 20,
                        what="the target's hung key lookup ended")
        # (ssh's keepalives would end it too, silently, after 3 x 30 s.)
        h = hung.host(connect_timeout=1, alive_interval=30)
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservSSHConnectTimeout) as cm:
            h.run("echo never", timeout=60)
        took = time.monotonic() - t0
        self.assertIn("no ssh session within 6 s", str(cm.exception))
        self.assertLess(took, 12)
        self.assertFalse([p for p in processes_with(f"ControlPath={h._ctrl_path}")
                          if autoserv._pid_running(p)], "an ssh of the hung login is left")

    def test_a_task_killed_during_its_first_contact_leaves_no_master(self):
        # SIGKILLed before its first session ended, a task never registers
        # the master its first contact left in the background; the job's end
        # finds it by its title.
        script = os.path.join(self.tmp, "job.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(f"""\
                import sys
                sys.path.insert(0, {HERE!r})
                import autoserv
                h = autoserv.SSHHost("testhost", ssh_config={self.sshd.ssh_config!r})
                print(autoserv._ctrl_dir(), flush=True)
                print(autoserv.parallel_simple(lambda h: h.run("sleep 4250.1"), [h],
                                               log=False, return_results=True), flush=True)
                """))
        p = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
        self.addCleanup(p.wait, 30)
        self.addCleanup(lambda: p.poll() is None and p.terminate())
        self.addCleanup(p.stdout.close)
        top = p.stdout.readline().strip()
        wait_for(lambda: remote_sleeps("sleep 4250.1"), 20, what="the task's command running")
        title = f"ssh: {top}/".encode()
        masters = [pid for pid in processes_with(f"ssh: {top}/")
                   if autoserv._cmdline(pid).startswith(title)]
        self.assertEqual(len(masters), 1, masters)
        self.assertFalse(glob.glob(os.path.join(top, "m-*.pid")), "registered before its session ended")
        tasks = [pid for pid in descendants(p.pid)
                 if autoserv._cmdline(pid) == autoserv._cmdline(p.pid)]
        self.assertEqual(len(tasks), 1)
        os.kill(tasks[0], signal.SIGKILL)
        out = p.stdout.read()
        self.assertEqual(p.wait(30), 0)
        self.assertIn("died without a result", out)
        wait_for(lambda: not autoserv._pid_running(masters[0]), 10,
                 what="the unregistered master ended with the job")
        wait_for(lambda: not remote_sleeps("sleep 4250.1"), 10, what="the remote command ended")
        self.assertFalse(os.path.exists(top))

    def test_an_ssh_config_that_ssh_g_cannot_read_in_time_probes_through_ssh(self):
        # reboot()'s wait asks ssh -G where the host is, for a TCP banner
        # probe; ssh -G once took over 10 s on a loaded machine and its
        # TimeoutExpired ended a job.  (Here a Match exec that hangs.)
        cfg = os.path.join(self.tmp, "slow_g_config")
        with open(cfg, "w") as f:
            f.write('Match exec "sleep 3"\n    User nobody\n')
        saved = autoserv._RESOLVE_TIMEOUT
        autoserv._RESOLVE_TIMEOUT = 1.0
        try:
            h = autoserv.SSHHost("slowg", ssh_config=cfg)
            t0 = time.monotonic()
            self.assertEqual(h._link.resolve(), ("slowg", 22, None, True))
            self.assertLess(time.monotonic() - t0, 10)
            self.assertIsNone(h._link.banner(1.0))      # no TCP probe: ssh probes instead
        finally:
            autoserv._RESOLVE_TIMEOUT = saved

    @scenario(16)
    def test_exit_status_signal_and_transport_failure_are_distinct(self):
        h = self.sshd.host()
        for code in (0, 1, 254, 255):
            with self.subTest(code=code):
                r = h.run(f"exit {code}", ignore_status=True)
                self.assertEqual((r.exit_status, r.aborted), (code, 0))
        r = h.run("kill -9 $$", ignore_status=True)
        self.assertEqual(r.aborted, 9)
        dead = autoserv.SSHHost("127.0.0.1", port=refused_port(self.addCleanup), connect_timeout=3)
        with self.assertRaises(autoserv.AutoservSSHConnectionRefused):
            dead.run("true")

    @scenario(1)
    def test_arguments_arrive_byte_exact_and_nothing_runs(self):
        h = self.sshd.host()
        out = os.path.join(self.tmp, "args")
        words = AWKWARD + ["*", "-n", "x" * 100000, "\udcff\udcfe", "\\", "'"]
        h.run(f"cd {self.tmp} && printf '%s\\0' >{out}", args=words)
        got = read_file(out, "rb").split(b"\0")[:-1]
        self.assertEqual(got, [os.fsencode(w) for w in words])
        for name in ("P", "B"):
            self.assertFalse(os.path.exists(os.path.join(self.tmp, name)))
            self.assertFalse(os.path.exists(os.path.join(self.sshd.home, name)))

    def test_command_runs_in_the_login_shell_like_plain_ssh(self):
        h = self.sshd.host()
        # &> is bash's "both streams"; under dash it would background the echo.
        f = os.path.join(self.tmp, "both")
        h.run(f"(echo o; echo e >&2) &> {f}")
        self.assertEqual(sorted(read_file(f).split()), ["e", "o"])

    def test_stdin_is_dev_null_unless_given_and_tees_are_live(self):
        h = self.sshd.host()
        self.assertEqual(h.run("cat").stdout, "")
        data = bytes(range(256)) * 1000
        r = h.run("od -An -tx1 | tr -d ' \\n' | head -c 64; echo", stdin=data)
        self.assertEqual(r.stdout.strip(), data[:32].hex())
        # Live: the first line is written (and flushed) while the command
        # still runs, a second before it ends.
        tee = StampedTee()
        h.run("echo live; sleep 1; echo end", stdout_tee=tee)
        self.assertEqual(tee.text, "live\nend\n")
        self.assertTrue(tee.shown_before(time.monotonic() - 0.8),
                        (tee.writes, tee.flushes, time.monotonic()))

    def test_markers_never_reach_the_result(self):
        h = self.sshd.host()
        r = h.run("printf 'no newline at end' >&2")
        self.assertEqual(r.stderr, "no newline at end")
        self.assertNotIn("\x1e", r.stderr)

    @scenario(12, 30)
    def test_timeout_kills_everything_the_command_started_on_the_target(self):
        h = self.sshd.host()
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservTimeoutError) as cm:
            h.run("sh -c 'sleep 1000 & sleep 1000'", timeout=5)
        self.assertLess(time.monotonic() - t0, 15)
        self.assertTrue(cm.exception.result.timed_out)
        wait_for(lambda: not [p for p in comm_pids("sleep") if p in
                              processes_with("sleep 1000")], 10, what="remote sleeps gone")

    @scenario(13)
    def test_timeout_kills_commands_that_ignore_term_or_are_stopped(self):
        h = self.sshd.host()
        for cmd in ("trap '' TERM; sleep 4245.1; sleep 4245.1",
                    "kill -STOP $$; sleep 4245.2"):
            with self.subTest(cmd=cmd):
                t0 = time.monotonic()
                with self.assertRaises(autoserv.AutoservTimeoutError):
                    h.run(cmd, timeout=2)
                self.assertLess(time.monotonic() - t0, 12)
        wait_for(lambda: not [p for p in comm_pids("sleep") + comm_pids("bash")
                              if p in processes_with("4245.")], 10, what="remote commands gone")

    @scenario(15)
    def test_undecodable_bytes_and_split_characters(self):
        h = self.sshd.host()
        tee = io.StringIO()
        r = h.run(r"printf '\377\376\000\342\202'; sleep 0.2; printf '\254\033[2J'",
                  stdout_tee=tee)
        self.assertEqual(r.stdout, "\ufffd\ufffd\x00\u20ac\x1b[2J")
        # The live tee got the character split across the two reads whole too.
        self.assertEqual(tee.getvalue(), r.stdout)

    @scenario(14)
    def test_flood_on_both_streams_over_ssh_has_flat_memory(self):
        code = textwrap.dedent(f"""\
            import autoserv, os
            n = int(os.environ['N'])
            h = autoserv.SSHHost('testhost', ssh_config={self.sshd.ssh_config!r})
            one = f"{{{{ echo HEAD; head -c {{n}} /dev/zero; echo TAIL; }}}}"
            r = h.run(f"{{one}} & {{one}} >&2; wait", max_output=4 << 20)
            assert r.truncated, repr(r)
            for text in (r.stdout, r.stderr):       # head and tail both kept
                assert text.startswith("HEAD\\n") and text.endswith("\\0TAIL\\n"), \
                    (text[:20], text[-20:])
            for p in r.output_files.values():
                assert os.path.getsize(p) == n + 10, (p, os.path.getsize(p))
                os.unlink(p)
            autoserv._close_all_hosts()
            """)
        assert_flat_memory(self, code, "N", lambda mb: str(mb << 20))

    # persistent="auto" (issue 17): a host's second command starts the agent
    # in the background; later ones use it once it is up.
    PARENT = "tr '\\0' ' ' </proc/$PPID/cmdline"

    def test_auto_mode_sends_warm_commands_through_the_agent_and_none_waits_for_it(self):
        h = self.sshd.host(persistent="auto")
        first = h.run(self.PARENT).stdout
        self.assertIsNone(h._agent, "the first command started an agent")
        second = h.run(self.PARENT).stdout
        self.assertTrue(h._agent and "local" not in h._agent, h._agent)   # starting
        for parent in (first, second):    # neither waited for it: their own sessions
            self.assertFalse(parent.startswith("python3 -c "), parent)
        wait_for(lambda: h.run(self.PARENT).stdout.startswith("python3 -c "), 20,
                 what="a command through the agent")
        self.assertEqual(h.run("echo warm; exit 3", ignore_status=True).exit_status, 3)
        agent = h._agent["proc"].pid
        h.close()
        self.assertFalse(master_running(agent) or os.path.exists(f"/proc/{agent}/stat")
                         and read_file(f"/proc/{agent}/stat").split()[2] != "Z")

    def test_auto_mode_in_a_task_counts_the_tasks_own_commands(self):
        # A host the parent ran one command on, then one command in each of
        # a round of tasks: no task starts an agent (it would end with the
        # task unused); a task that runs a second command starts one.
        h = self.sshd.host(persistent="auto")
        h.run("true")

        def task(n):
            first = h.run(self.PARENT).stdout
            started = h._agent is not None
            if n == 2:
                h.run("true")
                started = h._agent is not None
            return first, started
        results = autoserv.parallel_simple(task, [1, 2], return_results=True)
        self.assertEqual([r[1] for r in results], [False, True], results)
        self.assertFalse(any(r[0].startswith("python3 -c ") for r in results), results)
        self.assertIsNone(h._agent)
        h.close()

    def test_a_boot_id_read_whose_session_is_killed_unanswered_is_asked_once_more(self):
        # The target kills the session before anything runs (as a freshly
        # booted guest now and then did): ssh says only "status 255", the
        # master still serves.  A user's command is never run twice (it may
        # have started); the boot id, a read, is asked again.
        flag = os.path.join(self.tmp, "kill-next")
        sshd = Sshd(extra=f'ForceCommand if [ -e {flag} ]; then rm -f {flag}; kill -9 $$; fi; '
                          'eval "$SSH_ORIGINAL_COMMAND"\n')
        self.addCleanup(sshd.stop)
        h = sshd.host(persistent=False)
        self.addCleanup(h.close)
        first = h.get_boot_id()
        open(flag, "w").close()
        with self.assertRaises(autoserv.AutoservSSHError) as cm:
            h.run("echo once >> " + autoserv.sh_escape(os.path.join(self.tmp, "ran")))
        self.assertIs(type(cm.exception), autoserv.AutoservSSHError)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ran")))
        open(flag, "w").close()
        self.assertEqual(h.get_boot_id(), first)
        self.assertFalse(os.path.exists(flag))      # the killed session was the first ask

    def test_a_tasks_first_command_on_a_cold_host_imports_no_module(self):
        # What a task's first remote command needs is imported once, in the
        # parent before it forks, not again in every task (in a process
        # that imported autoserv alone, as a job's does).
        code = textwrap.dedent(f"""\
            import sys
            sys.path.insert(0, {HERE!r})
            import autoserv
            hosts = [autoserv.SSHHost("testhost", ssh_config={self.sshd.ssh_config!r})
                     for _ in range(2)]
            def task(h):
                before = set(sys.modules)
                out = h.run("echo ran").stdout
                return out, sorted(set(sys.modules) - before)
            print(autoserv.parallel_simple(task, hosts, log=False, return_results=True))
            """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "[('ran\\n', []), ('ran\\n', [])]")

    def test_tasks_use_the_parents_agent_and_end_without_touching_it_or_warning(self):
        # Under -W error (warnings as errors, as a strict lab runs), the
        # parent's agent serves a round of tasks; each task's end forgets its
        # copy of the agent quietly (no finalizer of the parent's ssh session
        # in the task: once, "ResourceWarning: subprocess N is still running"
        # in every task's output) and the agent serves the parent after.
        ctl = os.path.join(self.tmp, "task-agents.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                import time
                h = hosts.create_host('testhost')
                end = time.monotonic() + 30
                while not h.run({self.PARENT!r}).stdout.startswith('python3 -c '):
                    assert time.monotonic() < end, 'no agent in 30 s'
                agent = h._agent['proc'].pid
                def task(n):
                    return h.run({self.PARENT!r}).stdout[:10], h._agent['proc'].pid
                got = parallel_simple(task, [1, 2, 3], return_results=True)
                after = h.run({self.PARENT!r}).stdout[:10], h._agent['proc'].pid
                print('ROUND', got == [('python3 -c', agent)] * 3, after == ('python3 -c', agent))
                """))
        res = os.path.join(self.tmp, "res-task-agents")
        out = subprocess.run([sys.executable, "-W", "error", AUTOSERV, *self.sshd.cli_opts(),
                              "-r", res, ctl], capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("ROUND True True", out.stdout)
        texts = [out.stdout, out.stderr]
        for n in ("1", "2", "3"):
            with open(os.path.join(res, n, "debug", "stderr")) as f:
                texts.append(f.read())
        for text in texts:
            self.assertNotIn("Warning", text)
            self.assertNotIn("Exception ignored", text)

    def test_the_agent_is_on_by_default_and_off_with_persistent_false_or_no_persistent(self):
        h = self.sshd.host(persistent=False)
        for _ in range(8):
            self.assertFalse(h.run(self.PARENT).stdout.startswith("python3 -c "))
        self.assertIsNone(h._agent)
        ctl = os.path.join(self.tmp, "agents.control")
        with open(ctl, "w") as f:
            f.write("import time\n"
                    "h = hosts.create_host('testhost')\n"
                    f"print([(h.run({self.PARENT!r}).stdout[:10], time.sleep(0.1))[0] "
                    "for _ in range(20)])\n")
        for opts, agent in (([], True), (["--persistent-auto"], True),
                            (["--persistent-auto", "--no-persistent"], False)):
            with self.subTest(opts=opts):
                out = subprocess.run([sys.executable, AUTOSERV, *self.sshd.cli_opts(), *opts,
                                      "-r", os.path.join(self.tmp, "res-" + (opts[-1] if opts else "default")), ctl],
                                     capture_output=True, text=True, timeout=120)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual("python3 -c" in out.stdout, agent, out.stdout)
                self.assertEqual(out.stdout.count("'"), 40, out.stdout)

    def test_without_python3_there_every_command_is_its_own_session_said_once(self):
        bindir = os.path.join(self.tmp, "no-python3")
        os.mkdir(bindir)
        fake = os.path.join(bindir, "python3")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'sh: 1: python3: not found' >&2\nexit 127\n")
        os.chmod(fake, 0o755)
        sshd = Sshd(extra=f'ForceCommand PATH={bindir}:$PATH; export PATH; '
                          'eval "$SSH_ORIGINAL_COMMAND"\n')
        self.addCleanup(sshd.stop)
        log = os.path.join(self.tmp, "no-python3.log")
        autoserv.LOG.open(log)
        self.addCleanup(autoserv.LOG.close)
        h = sshd.host(persistent="auto")
        self.addCleanup(h.close)
        for i in range(4):
            self.assertEqual(h.run(f"echo {i}").stdout, f"{i}\n")
        wait_for(lambda: h.run("true") and h._agent is False, 20, what="the agent given up")
        for i in range(4):
            self.assertEqual(h.run(f"echo {i}").stdout, f"{i}\n")
        with open(log, errors="replace") as f:
            text = f.read()
        self.assertEqual(text.count("no persistent agent"), 1, text[-2000:])
        self.assertIn("python3: not found", text)

    @scenario(10)
    def test_twenty_concurrent_commands_share_one_master_then_it_is_killed(self):
        # Cold: twenty tasks race to start its master.  A generous connect
        # timeout: twenty handshakes at once beside booting guests on two
        # cores took longer than the default five seconds once.
        h = self.sshd.host(connect_timeout=30)
        sshd_log = os.path.join(self.sshd.dir, "sshd.log")
        logins = read_file(sshd_log, errors="replace").count("Accepted publickey")
        results = autoserv.parallel(
            [autoserv.subcommand(h.run, [f"echo {i}; sleep 0.2"]) for i in range(20)],
            return_results=True)
        self.assertEqual([r.stdout for r in results], [f"{i}\n" for i in range(20)])
        self.assertFalse([r.stderr for r in results if r.stderr])
        self.assertEqual(read_file(sshd_log, errors="replace").count("Accepted publickey")
                         - logins, 1, "the twenty did not share one login")
        h.run("true")                 # now the parent's master serves the tasks
        master = h._master
        self.assertIsNotNone(master)

        def killer():
            # The three remote sleeps themselves (not just their ssh clients):
            # each session is on the master when it dies.
            wait_for(lambda: len(set(comm_pids("sleep"))
                                 & set(processes_with("sleep 4246.3"))) >= 3, 30,
                     what="three remote sleeps running")
            os.kill(master.pid, signal.SIGKILL)
        tasks = [autoserv.subcommand(h.run, ["sleep 4246.3"]) for _ in range(3)]
        tasks.append(autoserv.subcommand(killer, []))
        # Bounded: were the kill to miss, the sleeps would otherwise run on.
        results = autoserv.parallel(tasks, return_results=True, timeout=90)
        for r in results[:3]:
            self.assertIsInstance(r, autoserv.AutoservSSHConnectionLost, r)
        master.wait()
        self.assertEqual(h.run("echo again").stdout, "again\n")
        wait_for(lambda: not processes_with("sleep 4246.3"), 10, what="remote sleeps gone")

    @scenario(11)
    def test_long_host_name_under_a_deep_tmpdir(self):
        name = "h" * 60
        self.sshd.write_ssh_config(("testhost", name))
        code = textwrap.dedent(f"""\
            import autoserv
            h = autoserv.SSHHost({name!r}, ssh_config={self.sshd.ssh_config!r})
            print(h.run('echo ok').stdout.strip(), h._ctrl_path)
            autoserv._close_all_hosts()
            """)
        # Very deep, and one just long enough that a socket path under it no
        # longer fits once ssh adds its own temporary suffix (sun_path: 108).
        for deep in (os.path.join(self.tmp, *(["d" * 30] * 4)),
                     os.path.join(self.tmp, "m" * (80 - len(self.tmp) - 1))):
            with self.subTest(tmpdir_length=len(deep)):
                os.makedirs(deep)
                env = dict(os.environ, TMPDIR=deep)
                out = subprocess.run([sys.executable, "-c",
                                      f"import sys; sys.path.insert(0, {HERE!r})\n" + code],
                                     capture_output=True, text=True, env=env, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertTrue(out.stdout.startswith("ok "), out.stdout)
                self.assertLess(len(out.stdout.split()[1]), 60)

    @scenario(18)
    def test_many_open_fds_and_fifty_concurrent_commands(self):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        try:
            h = self.sshd.host()
            self.assertEqual(h.run("echo ok").stdout, "ok\n")
            results = autoserv.parallel(
                [autoserv.subcommand(h.run, [f"echo {i}"]) for i in range(50)],
                return_results=True)
            self.assertEqual(sorted(int(r.stdout) for r in results), list(range(50)))
            # The other loops: a tar get_file's relay, and the persistent agent's start.
            src = os.path.join(self.tmp, "f")
            with open(src, "w") as f:
                f.write("x")
            h.get_file(src, os.path.join(self.tmp, "got"), backend="tar")
            with open(os.path.join(self.tmp, "got")) as f:
                self.assertEqual(f.read(), "x")
            agent = self.sshd.host(persistent=True)
            self.assertEqual(agent.run("echo agent").stdout, "agent\n")
            self.assertTrue(agent._agent, "the persistent agent did not start")
        finally:
            for fd in fds:
                os.close(fd)

    def test_alias_with_its_own_hostname_port_and_user(self):
        h = self.sshd.host("testhost")
        argv = h.ssh_argv()
        self.assertNotIn("-l", argv)
        self.assertNotIn("-p", argv)
        self.assertEqual(h.run("whoami").stdout.strip(), "root")
        explicit = self.sshd.host(f"root@127.0.0.1:{self.sshd.port}",
                                  known_hosts=self.sshd.known_hosts,
                                  identity=self.sshd.client_key, ssh_config=os.devnull)
        argv = explicit.ssh_argv()
        self.assertEqual(argv[argv.index("-l") + 1], "root")
        self.assertEqual(argv[argv.index("-p") + 1], str(self.sshd.port))
        self.assertEqual(explicit.run("echo x").stdout, "x\n")
        self.assertEqual(h.resolve()[:2], ("127.0.0.1", self.sshd.port))

    def test_the_reboot_command_starts_after_its_session_has_ended(self):
        # Never a reboot here (this machine's sshd): the private step that
        # issues one, given a command that notes when it ran.  A `halt -f`
        # that ran at once could stop a target before the session's exit
        # status left it (a full run's reboot test failed so).
        h = self.sshd.host()
        self.addCleanup(h.close)
        stamp = os.path.join(self.sshd.home, "ran_at")
        h._issue_reboot(f"date +%s.%N > {stamp}")
        returned = time.time()
        wait_for(lambda: os.path.exists(stamp) and os.path.getsize(stamp), 10,
                 what="the command's stamp")
        self.assertGreater(float(read_file(stamp)), returned)

    def test_host_state_queries(self):
        h = self.sshd.host()
        self.assertTrue(h.is_up())
        self.assertTrue(h.wait_up(timeout=10))
        self.assertFalse(h.wait_down(timeout=1))
        self.assertRegex(h.get_boot_id(), r"^[0-9a-f-]{36}$")
        self.assertEqual(h.get_kernel_ver(), os.uname().release)
        self.assertEqual(h.get_arch(), os.uname().machine)
        self.assertEqual(h.get_num_cpu(), os.cpu_count())
        dead = autoserv.SSHHost("127.0.0.1", port=refused_port(self.addCleanup), connect_timeout=2)
        t0 = time.monotonic()
        self.assertFalse(dead.is_up())
        self.assertFalse(dead.wait_up(timeout=1))
        self.assertLess(time.monotonic() - t0, 8)

    @scenario(7, 8)
    def test_errors_refused_auth_and_changed_key_each_within_five_seconds(self):
        refused = autoserv.SSHHost("127.0.0.1", port=refused_port(self.addCleanup), connect_timeout=5)
        wrong_key = self.sshd.keygen("wrong_key")
        auth = self.sshd.host(f"127.0.0.1:{self.sshd.port}", identity=wrong_key,
                              ssh_config=os.devnull, known_hosts=self.sshd.known_hosts)
        other = Sshd()
        self.addCleanup(other.stop)
        # (known_hosts is read only after the first contact below: run alone,
        # this test finds no file there before it.)
        changed_kh = os.path.join(self.tmp, "kh_changed")
        changed = autoserv.SSHHost(f"127.0.0.1:{other.port}", identity=other.client_key,
                                   known_hosts=changed_kh, ssh_config=os.devnull)
        self.sshd.host().run("true")      # records our key in known_hosts
        with open(self.sshd.known_hosts) as f:
            known = f.read()
        with open(changed_kh, "w") as f:
            for line in known.splitlines():
                f.write(f"[127.0.0.1]:{other.port} " + " ".join(line.split()[1:]) + "\n")
        cases = [(refused, autoserv.AutoservSSHConnectionRefused),
                 (auth, autoserv.AutoservSSHPermissionDenied),
                 (changed, autoserv.AutoservSSHHostKeyError)]
        for host, cls in cases:
            with self.subTest(cls=cls.__name__):
                t0 = time.monotonic()
                with self.assertRaises(cls) as cm:
                    host.run("true")
                self.assertLess(time.monotonic() - t0, 5)
        text = str(cm.exception)
        self.assertRegex(text, r"known SHA256:\S+, offered SHA256:\S+")
        # No prompt: an authorised key that needs a passphrase, with an askpass
        # program forced on (as a desktop session may have it), is never asked
        # about; the run fails as "authentication failed" at once.
        locked = os.path.join(self.tmp, "locked_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", locked],
                       check=True, stdin=subprocess.DEVNULL)
        locked_sshd = Sshd(authorized_key=locked + ".pub")
        self.addCleanup(locked_sshd.stop)
        asked = os.path.join(self.tmp, "asked")
        askpass = os.path.join(self.tmp, "askpass")
        with open(askpass, "w") as f:
            f.write(f"#!/bin/sh\necho \"$*\" >>{asked}\necho wrong\n")
        os.chmod(askpass, 0o755)
        from unittest import mock
        prompting = autoserv.SSHHost(f"127.0.0.1:{locked_sshd.port}", identity=locked,
                                     ssh_config=os.devnull, connect_timeout=5,
                                     known_hosts=os.path.join(self.tmp, "kh_locked"))
        with mock.patch.dict(os.environ, {"SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force",
                                          "DISPLAY": ":0"}):
            t0 = time.monotonic()
            with self.assertRaises(autoserv.AutoservSSHPermissionDenied):
                prompting.run("true")
            self.assertLess(time.monotonic() - t0, 5)
        self.assertFalse(os.path.exists(asked), "ssh prompted (askpass ran): "
                         + (read_file(asked) if os.path.exists(asked) else ""))
        fingerprints = re.findall(r"SHA256:[\w+/=]+", text)
        self.assertNotEqual(fingerprints[0], fingerprints[1])

    @scenario(8)
    def test_first_contact_records_the_key_and_ephemeral_accepts_a_change(self):
        kh = os.path.join(self.tmp, "kh")
        h = self.sshd.host(f"127.0.0.1:{self.sshd.port}", identity=self.sshd.client_key,
                           ssh_config=os.devnull, known_hosts=kh)
        h.run("true")
        self.assertEqual(os.stat(kh).st_mode & 0o777, 0o600)
        self.assertIn("ssh-ed25519", read_file(kh))
        strict = self.sshd.host(f"127.0.0.1:{self.sshd.port}", identity=self.sshd.client_key,
                                ssh_config=os.devnull, known_hosts=os.path.join(self.tmp, "empty"),
                                host_key_policy="strict")
        with self.assertRaises(autoserv.AutoservSSHHostKeyError):
            strict.run("true")
        eph = self.sshd.host(f"127.0.0.1:{self.sshd.port}", identity=self.sshd.client_key,
                             ssh_config=os.devnull, host_key_policy="ephemeral")
        eph.run("true")
        # The VM "regenerates" its key: file a different key for it.
        with open(eph._known_hosts_file(), "w") as f:
            f.write(f"[127.0.0.1]:{self.sshd.port} " +
                    read_file(self.sshd.keygen("fake") + ".pub").split(" ", 1)[0] + " " +
                    read_file(self.sshd.dir + "/fake.pub").split()[1] + "\n")
        eph._drop_connection()
        log = os.path.join(self.tmp, "debug.log")
        autoserv.LOG.open(log)
        self.addCleanup(autoserv.LOG.close)
        self.assertEqual(eph.run("echo accepted").stdout, "accepted\n")
        with open(log) as f:
            self.assertIn("host key changed on ephemeral host; accepting the new key", f.read())
        self.assertIn("ssh-ed25519", read_file(kh))
        self.assertFalse(any("StrictHostKeyChecking=no" in a for a in eph.ssh_argv()))
        # The same change seen by a host that is not ephemeral, in the same
        # process after the ephemeral one accepted it: still refused.
        with open(kh, "w") as f:
            f.write(f"[127.0.0.1]:{self.sshd.port} "
                    + read_file(self.sshd.dir + "/fake.pub").split(" ", 2)[0] + " "
                    + read_file(self.sshd.dir + "/fake.pub").split()[1] + "\n")
        h._drop_connection()
        with self.assertRaises(autoserv.AutoservSSHHostKeyError):
            h.run("true")

    @scenario(30)
    def test_remote_temp_dirs_are_private_and_removed_at_close(self):
        h = self.sshd.host()
        d = h.get_tmp_dir()
        self.assertRegex(d, r"^/tmp/autoserv-\w{6}$")
        self.assertEqual(os.stat(d).st_mode & 0o777, 0o700)
        h.close()
        self.assertFalse(os.path.exists(d))


def _remote_autoserv_dirs():
    return {n for n in os.listdir("/tmp") if n.startswith("autoserv-")}


def _ctrl_dirs(tmp=None):
    """The ssh control dirs (as-XXXXXXXX) in tmp, by default the temp dir."""
    return {n for n in os.listdir(tmp or tempfile.gettempdir()) if n.startswith("as-")
            and len(n) == 11}


def _autoserv_tmp(tmp):
    """What autoserv makes in a /tmp: remote-style autoserv-* dirs and the
    jobs' ssh control dirs."""
    return sorted({n for n in os.listdir(tmp) if n.startswith("autoserv-")} | _ctrl_dirs(tmp))


class TestSSHJobs(SshdTestCase):
    """Whole runs of the CLI against the sshd."""

    def control(self, text, name="job.control"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def cli(self, *args, **kw):
        return run_cli(*self.sshd.cli_opts(), *args, **kw)

    def test_a_script_that_dies_of_an_exception_leaves_nothing_running(self):
        # Library use, no job: the interpreter's exit ends the master and
        # removes the remote and local temp dirs, as a job's end does.
        code = textwrap.dedent(f"""\
            import sys
            sys.path.insert(0, {HERE!r})
            import autoserv
            h = autoserv.SSHHost("testhost", ssh_config={self.sshd.ssh_config!r})
            remote = h.get_tmp_dir()
            local = autoserv.get_tmp_dir()
            print(remote, local, h._master.pid, flush=True)
            raise RuntimeError("the script's own bug")
            """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("the script's own bug", out.stderr)
        remote, local, master = out.stdout.split()
        self.assertFalse(os.path.exists(remote))        # loopback: the same /tmp
        self.assertFalse(os.path.exists(local))
        # (A first contact's master is no child of the script: as our
        # orphan, it stays a zombie until we reap it.)
        wait_for(lambda: not master_running(master), 10, what="master gone")

    # Job-wide connections (issue 17): a master outlives the task that
    # started it, serves every process of the job, and ends with the job.
    def logins(self):
        """How many connections the sshd has authenticated so far."""
        with open(os.path.join(self.sshd.dir, "sshd.log"), errors="replace") as f:
            return f.read().count("Accepted publickey")

    def test_a_second_round_of_tasks_making_their_own_hosts_finds_the_masters_warm(self):
        sshd = self.sshd

        def task(i):            # a host made inside the task, as seed 09 does
            h = sshd.host()
            h.run("true")
            return h._master.pid
        before = self.logins()
        first = autoserv.parallel_simple(task, [1, 2, 3, 4], log=False, return_results=True)
        second = autoserv.parallel_simple(task, [1, 2, 3, 4], log=False,
                                          return_results=True)
        self.assertEqual(len(set(first + second)), 1, (first, second))
        master = first[0]
        self.assertTrue(master_running(master), "the master ended with its task")
        h = sshd.host()         # the parent finds it warm too
        self.assertEqual(h.run("echo warm").stdout, "warm\n")
        self.assertEqual(h._master.pid, master)
        self.assertEqual(self.logins() - before, 1, "one key exchange for the whole job")
        autoserv._close_all_hosts()
        wait_for(lambda: not master_running(master), 10, what="the master ended with the job")

    def test_a_host_whose_close_fails_midway_still_ends_its_master(self):
        # Anything that went wrong before the master's turn (here the temp
        # dirs' removal: an OSError, as a fork under memory pressure gives)
        # left the master running with nothing left to end it.
        from unittest import mock
        h = self.sshd.host()
        h.run("true")
        master = h._master.pid
        with mock.patch.object(autoserv.SSHHost, "_remove_tmp_dirs",
                               side_effect=OSError(12, "Cannot allocate memory")):
            with self.assertRaises(OSError):
                h.close()
        wait_for(lambda: not master_running(master), 10, what="the master ended")

    def test_the_jobs_end_waits_one_grace_for_all_hung_masters_not_one_each(self):
        # Four hosts the job's own process used, each master stopped (a
        # master that does not answer its TERM): ended one host at a time,
        # each one's 2 s grace came after the last's (8 s and more); ended
        # together, one grace for them all, then KILL.
        sshds = [Sshd() for _ in range(4)]
        for sshd in sshds:
            self.addCleanup(sshd.stop)
        hosts = [sshd.host() for sshd in sshds]
        for h in hosts:
            h.run("true")
        masters = [h._master.pid for h in hosts]
        for pid in masters:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        autoserv._close_all_hosts()
        took = time.monotonic() - t0
        wait_for(lambda: not any(master_running(pid) for pid in masters), 10,
                 what="the KILLed masters gone")
        self.assertLess(took, 6.0, "each hung master was waited for in turn")

    def test_a_master_started_while_term_is_ignored_still_ends_on_term(self):
        # The job's cleanup runs with SIGTERM and SIGINT ignored, and an
        # ignored signal stays so across exec: a master (re)started there sat
        # out its TERM and was KILLed after 2 s, leaving its socket behind.
        # Ended by TERM, ssh removes its socket itself.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            h = self.sshd.host()
            h.run("true")
        finally:
            signal.signal(signal.SIGTERM, previous)
        path, master = h._ctrl_path, h._master.pid
        h._drop_connection()
        self.assertFalse(master_running(master))
        self.assertFalse(os.path.exists(path), "the master was KILLed, not ended by its TERM")

    def start_job(self, ctl, results, ready, *args):
        """Starts a CLI job on the sshd; returns its Popen once the job wrote
        the file ready (or ended: the caller's read then fails)."""
        p = subprocess.Popen([sys.executable, AUTOSERV, *self.sshd.cli_opts(),
                              "-r", os.path.join(self.tmp, results), *args, ctl],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            wait_for(lambda: os.path.exists(ready) or p.poll() is not None, 60,
                     what="the job's masters started")
        except BaseException:
            p.kill()
            p.communicate()
            raise
        return p

    JOB_ENDS = {"success": "", "failure": "raise RuntimeError('the control file fails')\n",
                "SIGINT": "import time; time.sleep(600)\n",
                "SIGTERM": "import time; time.sleep(600)\n",
                "SIGKILL": "import time; time.sleep(600)\n"}

    def test_no_master_outlives_the_job_however_it_ends(self):
        # Masters started by tasks (two hosts: two masters) and by the job
        # process; the job then ends each way.  SIGKILL runs none of the job's
        # code: its watchdog ends them.
        for end, tail in self.JOB_ENDS.items():
            with self.subTest(end=end):
                pids = os.path.join(self.tmp, f"pids-{end}")
                ctl = self.control(textwrap.dedent(f"""\
                    import os

                    def task(m):
                        h = hosts.create_host(m)
                        h.run("true")
                        return h._master.pid
                    found = parallel_simple(task, machines, return_results=True)
                    h = hosts.create_host("testhost")
                    h.run("true")
                    found.append(h._master.pid)
                    found.append(os.path.dirname(h._ctrl_path))
                    open({pids + ".tmp"!r}, "w").write(" ".join(map(str, found)))
                    os.rename({pids + ".tmp"!r}, {pids!r})
                    """) + tail, name=f"{end}.control")
                p = self.start_job(ctl, f"res-{end}", pids, "-m", "testhost,192.168.1.1")
                try:
                    with open(pids) as f:
                        *masters, ctrl = f.read().split()
                    masters = [int(x) for x in masters]
                    self.assertEqual(len(set(masters)), 2, masters)   # one per machine
                    if end.startswith("SIG"):       # (the job sleeps: its masters serve)
                        self.assertEqual([m for m in masters if not master_running(m)], [])
                        p.send_signal(getattr(signal, end))
                    out, err = p.communicate(timeout=60)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                expected = {"success": 0, "failure": 1, "SIGINT": 130, "SIGTERM": 143,
                            "SIGKILL": -9}[end]
                self.assertEqual(p.returncode, expected, err.decode(errors="replace")[-2000:])
                wait_for(lambda: not [m for m in masters if master_running(m)], 10,
                         what=f"no master left after the job's {end}")
                wait_for(lambda: not os.path.exists(ctrl), 10, what="the control dir removed")

    def test_a_batch_system_ending_the_jobs_process_tree_leaves_no_master(self):
        # As Slurm's proctrack/linuxproc ends a job (scancel, or its time
        # limit): TERM to every process descended from the job, then KILL,
        # here with no time between them (a cleanup slower than KillWait:
        # the job process is stopped while the tree is signalled).
        # The task's master is no descendant once its task ended, so both
        # signals miss it; the job process that owned it dies before its
        # sweep, and so did a watchdog that was still the job's child.
        pids = os.path.join(self.tmp, "pids-tree")
        ctl = self.control(textwrap.dedent(f"""\
            import os, time
            h = hosts.create_host("testhost")      # the job's first master
            h.run("true")

            def task(m):
                t = hosts.create_host(m)
                t.run("true")
                return t._master.pid
            found = parallel_simple(task, ["192.168.1.1"], return_results=True)
            found.append(os.path.dirname(h._ctrl_path))
            open({pids + ".tmp"!r}, "w").write(" ".join(map(str, found)))
            os.rename({pids + ".tmp"!r}, {pids!r})
            time.sleep(600)
            """), name="tree.control")
        p = self.start_job(ctl, "res-tree", pids)
        try:
            with open(pids) as f:
                master, ctrl = f.read().split()
            master = int(master)
            self.assertTrue(master_running(master))
            self.assertNotIn(master, descendants(p.pid), "the task's master is still in the tree")
            os.kill(p.pid, signal.SIGSTOP)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in [p.pid] + descendants(p.pid):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        wait_for(lambda: not master_running(master), 15, what="the escaped master ended")
        wait_for(lambda: not os.path.exists(ctrl), 10, what="the control dir removed")

    def test_a_task_killed_while_its_master_starts_leaves_no_master(self):
        # A task's master whose handshake has not ended (its ProxyCommand
        # never connects) when the task dies of SIGKILL (Slurm's KillWait,
        # parallel()'s grace): the master is re-parented, no process of the
        # job knows it but through the job's registry.  The job then ends
        # on its own (its sweep ends it) or is SIGKILLed too (its watchdog).
        cfg = os.path.join(self.tmp, "slow_config")
        with open(cfg, "w") as f:
            # (ssh ends its ProxyCommand by closing its stdin, as nc's or
            # ssh -W's would end; this one never answers.)
            f.write("Host slowhost\n    ProxyCommand sh -c 'cat >/dev/null; : proxy607'\n")
        for end in ("job ends", "job killed"):
            with self.subTest(end=end):
                ctl = self.control(textwrap.dedent(f"""\
                    def task(m):
                        hosts.SSHHost(m, ssh_config={cfg!r}, connect_timeout=300).run("true")
                    parallel_simple(task, ["slowhost"])
                    """), name="slow.control")
                p = subprocess.Popen([sys.executable, AUTOSERV, "-r",
                                      os.path.join(self.tmp, f"res-{end[4:]}"), ctl],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
                try:
                    found = []
                    wait_for(lambda: found.extend(m for m in processes_with("slowhost")
                                                  if master_running(m)) or found, 60,
                             what="the task's master starting")
                    master = found[0]
                    with open(f"/proc/{master}/stat") as f:
                        task = int(f.read().rsplit(")", 1)[1].split()[1])
                    self.assertIn(task, descendants(p.pid))
                    os.kill(task, signal.SIGKILL)
                    if end == "job killed":
                        os.kill(p.pid, signal.SIGKILL)
                    out, err = p.communicate(timeout=60)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.communicate()
                self.assertEqual(p.returncode, 1 if end == "job ends" else -9,
                                 err.decode(errors="replace")[-2000:])
                wait_for(lambda: not master_running(master), 15,
                         what=f"the starting master ended ({end})")
                wait_for(lambda: not processes_with("proxy607"), 10,
                         what="its ProxyCommand ended")

    def test_a_library_script_leaves_no_master_however_it_dies(self):
        # No job: the script's own process owns the masters, its tasks'
        # included; an uncaught exception runs its exit, a SIGKILL does not
        # (the watchdog ends them).
        for end, tail in (("exception", "raise RuntimeError('the script fails')\n"),
                          ("SIGKILL", "import time; time.sleep(600)\n")):
            with self.subTest(end=end):
                code = textwrap.dedent(f"""\
                    import sys
                    sys.path.insert(0, {HERE!r})
                    import autoserv

                    def task(i):
                        h = autoserv.SSHHost("testhost", ssh_config={self.sshd.ssh_config!r})
                        h.run("true")
                        return h._master.pid
                    print(*autoserv.parallel_simple(task, [1, 2], log=False,
                                                    return_results=True), flush=True)
                    """) + tail
                p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                try:
                    line = p.stdout.readline()
                    masters = [int(x) for x in line.split()]
                    self.assertEqual(len(set(masters)), 1, (line, p.stderr.read() if
                                                            not line else ""))
                    if end == "SIGKILL":
                        self.assertTrue(master_running(masters[0]), masters)
                        p.kill()
                    out, err = p.communicate(timeout=60)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                if end == "exception":
                    self.assertIn(b"the script fails", err)
                wait_for(lambda: not master_running(masters[0]), 10,
                         what=f"no master left after the script's {end}")

    def test_seed_lines_in_python2_syntax_run_unmodified(self):
        ctl = self.control("""\
            remote_host= hosts.SSHHost("192.168.1.1")
            print remote_host.run("uname -a").stdout
            if not machines:
                raise "Specify the machines to run on via the -m flag"
            hosts = [hosts.SSHHost(h) for h in machines]
            for host in hosts:
                print host.run("uname -r").stdout,
            print >>sys.stderr, "to stderr"
            print "Done."
            """)
        res = os.path.join(self.tmp, "res")
        out = self.cli("-r", res, "-m", "192.168.1.1,testhost", ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux", out.stdout)
        self.assertIn("Done.", out.stdout)
        self.assertIn("to stderr", out.stderr)
        out = self.cli("-r", os.path.join(self.tmp, "res2"), ctl)
        self.assertEqual(out.returncode, 1)
        self.assertIn("Specify the machines to run on via the -m flag", out.stderr)
        self.assertIn("job.control:4:", out.stderr)
        log = read_file(os.path.join(res, "debug", "autoserv.log"), "rb")
        self.assertIn(b"192.168.1.1: run: uname -a", log)
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(summary["hosts"]["192.168.1.1"]["outcome"], "GOOD")

    def test_examples_run_against_an_ssh_host(self):
        cases = [("uname.control", ["-m", "testhost"], "testhost: Linux"),
                 ("transfer.control", ["-m", "testhost"], "testhost: round trip intact"),
                 ("parallel-uname.control", ["-m", "testhost,192.168.1.1"], "192.168.1.1  ok")]
        for name, args, text in cases:
            with self.subTest(example=name):
                out = self.cli("-r", os.path.join(self.tmp, name), *args,
                               os.path.join(HERE, "examples", name))
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn(text, out.stdout)

    def test_site_file_mixin_reaches_every_host_class_and_registers_names(self):
        site = os.path.join(self.tmp, "site_autoserv.py")
        with open(site, "w") as f:
            f.write(textwrap.dedent("""\
                import autoserv

                class SiteHost:
                    def flash_bios(self):
                        return "flashed " + self.run("echo " + self.hostname).stdout.strip()

                class LabHost(autoserv.SSHHost):
                    lab = True

                autoserv.register_host_class("lab", LabHost)
                """))
        ctl = self.control("""\
            print(hosts.SSHHost("testhost").flash_bios())
            print(hosts.LocalHost().flash_bios())
            h = hosts.create_host("testhost", kind="lab")
            print(type(h).__name__, h.lab, isinstance(h, hosts.SiteHost))
            """)
        env = dict(os.environ, AUTOSERV_SITE=site)
        out = self.cli("-r", os.path.join(self.tmp, "res"), ctl, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("flashed testhost\nflashed localhost\nLabHost True True", out.stdout)
        env["AUTOSERV_SITE"] = os.path.join(self.tmp, "missing.py")
        out = self.cli("-r", os.path.join(self.tmp, "res2"), ctl, env=env)
        self.assertEqual(out.returncode, 1)
        self.assertIn("AUTOSERV_SITE", out.stderr)

    def test_wait_up_notices_a_host_soon_after_sshd_starts(self):
        port = free_port()
        h = autoserv.SSHHost("127.0.0.1", port=port, identity=self.sshd.client_key,
                             known_hosts=os.path.join(self.tmp, "kh"), connect_timeout=5)
        self.assertFalse(h.wait_up(timeout=1))
        started = {}

        def start():
            time.sleep(2)
            started["sshd"] = Sshd(port=port, authorized_key=self.sshd.client_key + ".pub")
            started["at"] = time.monotonic()
        thread = threading.Thread(target=start)
        thread.start()
        try:
            up = h.wait_up(timeout=30)
            noticed = time.monotonic()
        finally:
            thread.join()
            self.addCleanup(started["sshd"].stop)
        self.assertTrue(up)
        self.assertLess(noticed - started["at"], 5)
        self.assertEqual(h.run("echo up").stdout, "up\n")

    @scenario(15)
    def test_raw_bytes_are_kept_in_the_debug_log(self):
        ctl = self.control(r"""
            hosts.SSHHost('testhost').run(r"printf 'raw\377\033[31m\n'")
            """)
        res = os.path.join(self.tmp, "res")
        out = self.cli("-r", res, ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(b"stdout| raw\xff\x1b[31m",
                      read_file(os.path.join(res, "debug", "autoserv.log"), "rb"))
        # -v echoes the same log to the console: escapes made visible there.
        out = self.cli("-v", "-r", os.path.join(self.tmp, "res-v"), ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("stdout| raw", out.stderr)
        self.assertNotIn("\x1b", out.stderr)

    def test_unreachable_host_is_one_line_exit_1_and_named_in_summary(self):
        port = free_port()
        ctl = self.control(f"hosts.SSHHost('127.0.0.1:{port}').run('true')\n")
        res = os.path.join(self.tmp, "res")
        out = self.cli("-r", res, ctl)
        self.assertEqual(out.returncode, 1)
        self.assertIn("AutoservSSHConnectionRefused", out.stderr)
        # the results line, the error, the closing line
        self.assertEqual(len(out.stderr.strip().splitlines()), 3, out.stderr)
        self.assertIn("0 of 1 host GOOD; 127.0.0.1 FAIL AutoservSSHConnectionRefused: 127.0.0.1: "
                      "connection refused", out.stderr.strip().splitlines()[-1])
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(summary["hosts"]["127.0.0.1"]["outcome"], "FAIL")
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertIn("AutoservSSHConnectionRefused", entries[-2]["message"])

    def lab_config(self):
        """The sshd's config with lab1, lab2 and lab3 as more names for it."""
        path = os.path.join(self.tmp, "lab_ssh_config")
        with open(self.sshd.ssh_config) as f:
            text = f.read().replace("Host testhost\n", "Host testhost lab1 lab2 lab3\n", 1)
        with open(path, "w") as f:
            f.write(text)
        return path

    def assert_groups_closed(self, status_log):
        """Every START in the log has its END at the same depth."""
        open_groups = []
        for e in autoserv.parse_status_log(read_file(status_log)):
            if e["code"] == "START":
                open_groups.append(e)
            elif e["code"].startswith("END "):
                self.assertTrue(open_groups, f"{status_log}: END without START: {e}")
                self.assertEqual(open_groups.pop()["indent"], e["indent"], e)
        self.assertEqual(open_groups, [], f"{status_log}: groups left open")

    def test_an_interrupted_job_aborts_each_unfinished_host_and_closes_every_group(self):
        import xml.etree.ElementTree as ET
        config = self.lab_config()
        shapes = {
            # parallel tasks: lab1 ends before the signal, lab2 and lab3 are inside a group
            "parallel": (signal.SIGINT, 130, "interrupted (SIGINT)", """\
                def work(n):
                    h = hosts.SSHHost(n)
                    if n == "lab1":
                        h.run("echo done")
                        return
                    job.record("START", None, "kernel-check")
                    h.run("sleep 4251.%d" % {"lab2": 1, "lab3": 2}[n])
                parallel_simple(work, machines)
                """, ["sleep 4251.1", "sleep 4251.2"]),
            # one host after the other in the control file itself
            "serial": (signal.SIGTERM, 143, "terminated (SIGTERM)", """\
                hs = [hosts.SSHHost(n) for n in machines]
                job.record("START", None, "kernel-check")
                for h in hs:
                    h.run("sleep 4251.3")
                """, ["sleep 4251.3"]),
        }
        for shape, (sig, code, reason, text, sleeps) in shapes.items():
            with self.subTest(shape=shape):
                res = os.path.join(self.tmp, "res-" + shape)
                junit = os.path.join(self.tmp, shape + ".xml")
                ctl = self.control(text, shape + ".control")
                p = subprocess.Popen([sys.executable, AUTOSERV, "--ssh-config", config,
                                      "-r", res, "--junit", junit, "-m", "lab1,lab2,lab3",
                                      ctl], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                try:
                    log = os.path.join(res, "status.log")
                    wait_for(lambda: all(remote_sleeps(s) for s in sleeps) and (
                        shape != "parallel" or "END GOOD\tlab1" in read_file(log)), 30,
                        what="the remote sleeps, lab1's task ended")
                    p.send_signal(sig)
                    _, err = p.communicate(timeout=60)
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.communicate()
                self.assertEqual(p.returncode, code, err)
                hosts = json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]
                aborted = ["lab2", "lab3"] if shape == "parallel" else ["lab1", "lab2", "lab3"]
                for name in aborted:
                    self.assertEqual(hosts[name]["outcome"], "ABORT", hosts)
                    self.assertEqual(hosts[name]["error"], reason)
                    self.assertGreater(hosts[name]["duration"], 0.0)
                if shape == "parallel":
                    self.assertEqual(hosts["lab1"]["outcome"], "GOOD")
                self.assert_groups_closed(os.path.join(res, "status.log"))
                entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
                self.assertIn("END ABORT", [e["code"] for e in entries
                                            if e["operation"] == "kernel-check"])
                if shape == "parallel":     # each host's own status.log too
                    for name in ("lab1", "lab2", "lab3"):
                        self.assert_groups_closed(os.path.join(res, name, "status.log"))
                    own = read_file(os.path.join(res, "lab2", "status.log"))
                    self.assertIn("END ABORT\t----\tkernel-check", own)
                cases = {c.get("name"): c for c in ET.parse(junit).getroot()}
                for name in aborted:
                    failure = cases[name].find("failure")
                    self.assertEqual(failure.get("message"), "ABORT")
                    self.assertIn(reason, failure.text)
                last = err.strip().splitlines()[-1]
                good = 1 if shape == "parallel" else 0
                self.assertTrue(last.startswith(f"autoserv: {good} of 3 hosts GOOD; "), last)
                self.assertIn(f"lab2 ABORT {reason}", last)
                self.assertTrue(last.endswith(f"results in {res}"), last)

    def test_a_failed_hosts_error_names_its_cause_and_its_subdir_tells_its_story(self):
        ctl = self.control("""\
            def work(n):
                h = hosts.SSHHost(n)
                h.run("echo hello from " + n)
                h.get_file("/etc/hostname", os.path.join(job.resultdir, n + ".hostname"))
                if n == "lab2":
                    h.run("echo partial; sleep 10", timeout=1)
                if n == "lab3":
                    h.run("echo out; echo err >&2; false")
            parallel_simple(work, machines, return_results=True)
            """)
        res = os.path.join(self.tmp, "res")
        out = run_cli("--ssh-config", self.lab_config(), "-r", res, "-m", "lab1,lab2,lab3", ctl)
        self.assertEqual(out.returncode, 3, out.stderr)
        hosts = json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]
        self.assertEqual(hosts["lab2"]["error"],
                         "AutoservTimeoutError: 'echo partial; sleep 10' timed out after 1.0 s")
        self.assertIn("partial", hosts["lab2"]["output"])
        self.assertEqual(hosts["lab3"]["error"], "AutoservRunError: 'echo out; echo err >&2; "
                                                 "false' failed with exit status 1")
        self.assertEqual(hosts["lab3"]["output"], "err\nout")
        self.assertEqual((hosts["lab1"]["outcome"], hosts["lab1"]["error"]), ("GOOD", ""))
        for name in ("lab1", "lab2", "lab3"):
            own = os.path.join(res, name)
            autoserv.parse_status_log(read_file(os.path.join(own, "status.log")))
            log = read_file(os.path.join(own, "debug", "host.log"))
            self.assertIn(f"run: echo hello from {name}\nstdout| hello from {name}\n"
                          "exit status 0 in", log)
            for other in {"lab1", "lab2", "lab3"} - {name}:
                self.assertNotIn(f"hello from {other}", log)
            self.assertIn("get_file (tar): ['/etc/hostname'] -> ", log)
            # autoserv's own probe (is the source a dir?) is no failed command
            self.assertNotIn("test -d", log)
        self.assertNotIn("test -d", read_file(os.path.join(res, "debug", "autoserv.log")))
        self.assertIn("run: echo partial; sleep 10\nstdout| partial",
                      read_file(os.path.join(res, "lab2", "debug", "host.log")))
        self.assertIn("timed out after 1.0 s", read_file(os.path.join(res, "lab2", "status.log")))
        for name, cls in (("lab2", "AutoservTimeoutError"), ("lab3", "AutoservRunError")):
            tb = read_file(os.path.join(res, name, "debug", "traceback"))
            self.assertIn("Traceback (most recent call last)", tb)
            self.assertIn(cls, tb)
        self.assertFalse(os.path.exists(os.path.join(res, "lab1", "debug", "traceback")))
        last = out.stderr.strip().splitlines()[-1]
        self.assertEqual(last, f"autoserv: 1 of 3 hosts GOOD; lab2 FAIL "
                               f"{hosts['lab2']['error']}; lab3 FAIL {hosts['lab3']['error']}; "
                               f"results in {res}")

    def test_ssh_settings_given_once_in_autoserv_conf_or_the_environment_the_command_line_wins(self):
        ctl = self.control("print(hosts.SSHHost('testhost').run('echo reached').stdout)\n")
        home = os.path.join(self.tmp, "home")
        conf_dir = os.path.join(home, ".config", "autoserv")
        os.makedirs(conf_dir)
        work = os.path.join(self.tmp, "work")
        os.mkdir(work)
        shutil.copy(self.sshd.ssh_config, os.path.join(conf_dir, "lab_ssh"))
        missing = os.path.join(self.tmp, "missing_config")
        env = dict(os.environ, HOME=home)
        env.pop("AUTOSERV_SSH_CONFIG", None)

        def run(*args, **extra):
            return run_cli(*args, ctl, cwd=work, env=dict(env, **extra))
        # ~/.config/autoserv/autoserv.conf, its path relative to the file
        with open(os.path.join(conf_dir, "autoserv.conf"), "w") as f:
            f.write("[ssh]\nconfig = lab_ssh\n")
        out = run("-r", os.path.join(self.tmp, "r1"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("reached", out.stdout)
        # ./autoserv.conf comes before it
        with open(os.path.join(work, "autoserv.conf"), "w") as f:
            f.write(f"[ssh]\nconfig = {missing}\n")
        out = run("-r", os.path.join(self.tmp, "r2"))
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn(f"{missing}: no such file (set in {work}/autoserv.conf)", out.stderr)
        # the environment before both, the command line before all
        out = run("-r", os.path.join(self.tmp, "r3"), AUTOSERV_SSH_CONFIG=self.sshd.ssh_config)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = run("-r", os.path.join(self.tmp, "r4"), "--ssh-config", self.sshd.ssh_config,
                  AUTOSERV_SSH_CONFIG=missing)
        self.assertEqual(out.returncode, 0, out.stderr)
        # a misspelt setting is a usage error naming the right one
        with open(os.path.join(work, "autoserv.conf"), "w") as f:
            f.write("[ssh]\nidentiy = key\n")
        out = run("-r", os.path.join(self.tmp, "r5"))
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("[ssh] identiy: unknown setting; did you mean identity?", out.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "r5")))
        # a host the given config does not name says so
        os.unlink(os.path.join(work, "autoserv.conf"))
        # (In a network namespace of its own: the name's lookup reaches no
        # resolver off this machine.)
        bad = self.control("hosts.SSHHost('lab9.invalid').run('true')\n", "unknown.control")
        need("unshare")
        offline = ["unshare", "--net"] + (["--map-root-user"] if os.geteuid() else [])
        out = subprocess.run(offline + [sys.executable, AUTOSERV, "-r",
                                        os.path.join(self.tmp, "r6"), bad],
                             cwd=work, env=env, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("AutoservSSHUnknownHost", out.stderr)
        self.assertIn(f"lab9.invalid is not in the ssh config {conf_dir}/lab_ssh", out.stderr)

    def test_a_guests_name_is_what_logs_summary_and_subdirs_call_it(self):
        # A Guest is an SSHHost: the loopback sshd stands in for one here.
        ctl = self.control("""\
            g = hosts.Guest("testhost", name="g1")
            parallel_simple(lambda h: h.run("echo hi from " + h.hostname), [g])
            g.run("true")
            """)
        res = os.path.join(self.tmp, "res")
        out = self.cli("-r", res, ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(list(json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]),
                         ["g1"])
        self.assertIn("stdout| hi from g1", read_file(os.path.join(res, "g1", "debug",
                                                               "host.log")))
        self.assertTrue(os.path.exists(os.path.join(res, "g1", "status.log")))
        # (the ssh link's own lines name the address it reaches)
        self.assertIn("] g1: exit status 0", read_file(os.path.join(res, "debug",
                                                               "autoserv.log")))

    def test_verbose_output_names_a_tasks_host_once_per_line(self):
        ctl = self.control("parallel_simple(lambda n: hosts.SSHHost(n).run('echo hi'), machines)\n")
        out = run_cli("--ssh-config", self.lab_config(), "-v", "-r", os.path.join(self.tmp, "r"),
                      "-m", "lab1,lab2", ctl)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("lab1: run: echo hi", out.stderr)
        self.assertFalse(re.findall(r"(?m)^(lab\d) : .*\] \1[:| ]", out.stderr), out.stderr)

    @scenario(30)
    def test_no_remote_temp_dir_or_socket_outlives_any_ending(self):
        before = _remote_autoserv_dirs()
        sockets_before = _ctrl_dirs()
        master = os.path.join(self.tmp, "master.pid")
        endings = {
            "success": ("pass\n", 0),
            "failure": ("raise ValueError('x')\n", 1),
            "timeout": ("h.run('sleep 30', timeout=1)\n", 1),
            "sigint": ("h.run('sleep 4247.1')\n", 130),
            # The link dies mid-command (its master killed): the cleanup
            # reconnects to remove the temp dirs.
            "lost-connection": (f"open({master!r}, 'w').write(str(h._master.pid))\n"
                                "h.run('sleep 4247.2')\n", 1),
        }
        for name, (tail, code) in endings.items():
            with self.subTest(ending=name):
                ctl = self.control(
                    "h = hosts.SSHHost('testhost')\n"
                    "d = h.get_tmp_dir(); h.get_tmp_dir()\n"
                    "import stat; assert stat.S_IMODE(os.stat(d).st_mode) == 0o700\n"
                    + tail, f"{name}.control")
                args = [sys.executable, AUTOSERV, *self.sshd.cli_opts(), "-r",
                        os.path.join(self.tmp, "r-" + name), ctl]
                p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if name == "sigint":
                    wait_for(lambda: remote_sleeps("sleep 4247.1"), 20, what="sleep")
                    p.send_signal(signal.SIGINT)
                if name == "lost-connection":
                    wait_for(lambda: remote_sleeps("sleep 4247.2"), 20, what="sleep")
                    with open(master) as f:
                        os.kill(int(f.read()), signal.SIGKILL)
                p.communicate(timeout=60)
                self.assertEqual(p.returncode, code)
                Invariants.check_status(self, os.path.join(self.tmp, "r-" + name, "status.log"),
                                        {"failure": "ValueError",
                                         "timeout": "AutoservTimeoutError",
                                         "lost-connection": "AutoservSSHConnectionLost"}.get(name))
                # On failure, what the job's debug log says of its cleanup.
                said = "".join(
                    line for path in glob.glob(os.path.join(self.tmp, "r-" + name, "debug", "*"))
                    for line in read_file(path, errors="replace").splitlines(keepends=True)
                    if re.search(r"temp dir|rm -rf|master|connection", line))
                self.assertEqual(_remote_autoserv_dirs() - before, set(), said[-3000:])
                self.assertEqual(_ctrl_dirs() - sockets_before, set())
        wait_for(lambda: not processes_with("sleep 4247."), 10, what="remote sleeps gone")


class TestTransfer(SshdTestCase):
    BACKENDS = ("tar", "rsync", "scp")

    def make_tree(self, root, names):
        os.makedirs(root)
        for i, name in enumerate(names):
            with open(os.path.join(os.fsencode(root), name), "wb") as f:
                f.write(b"content %d " % i + name)
        os.makedirs(os.path.join(root, "sub", "deeper"))
        with open(os.path.join(root, "sub", "deeper", "f"), "w") as f:
            f.write("deep")
        os.symlink("sub/deeper/f", os.path.join(root, "link"))

    def snapshot(self, root):
        out = {}
        broot = os.fsencode(root)
        for dirpath, dirs, files in os.walk(broot):
            for name in files:
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, broot)
                out[rel] = ("L:" + os.fsdecode(os.readlink(p))) if os.path.islink(p) \
                    else read_file(p, "rb")
        return out

    NAMES = [n.encode() for n in AWKWARD if n and "\n" not in n] + [
        b"new\nline", b"-rf", b"--help", b"\xff\xfe-latin", b"n" * 255, b".dot"]

    @scenario(2)
    def test_awkward_names_are_byte_exact_on_every_backend(self):
        src = os.path.join(self.tmp, "src")
        self.make_tree(src, self.NAMES)
        want = self.snapshot(src)
        h = self.sshd.host()
        # Where a name run as a command ($(touch P), `touch B`) would leave
        # its file: the remote shell's dir (the login's home, whatever HOME
        # says), the sshd's HOME, here.
        import pwd
        traps = [os.path.join(d, n) for d in (pwd.getpwuid(os.getuid()).pw_dir,
                                              self.sshd.home, os.getcwd()) for n in "PB"]
        for trap in traps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(trap)
        for backend in self.BACKENDS:
            with self.subTest(backend=backend):
                need(backend)
                sent = os.path.join(self.tmp, "sent-" + backend)
                h.send_file(src + "/", sent, backend=backend)
                self.assertEqual(self.snapshot(sent), {k: v for k, v in want.items()
                                                       if k != b"link"} | {
                    b"link": b"deep"})
                back = os.path.join(self.tmp, "back-" + backend)
                h.get_file(sent, back, backend=backend)
                self.assertEqual(self.snapshot(os.path.join(back, "sent-" + backend)),
                                 self.snapshot(sent))
                for name in self.NAMES[:6]:
                    one = os.path.join(os.fsencode(self.tmp), b"one-" + backend.encode())
                    os.makedirs(one, exist_ok=True)
                    h.send_file(os.path.join(os.fsencode(src), name),
                                os.path.join(one, b"copy-" + name[:200]), backend=backend)
                    self.assertEqual(read_file(os.path.join(one, b"copy-" + name[:200]), "rb"),
                                     want[name])
                # Relative names, as a control file gives them: "-rf" and
                # "--help" must reach every backend as names, never as options.
                cwd = os.getcwd()
                os.chdir(src)
                try:
                    rel = os.path.join(os.fsencode(self.tmp), b"rel-" + backend.encode())
                    os.makedirs(rel, exist_ok=True)
                    for name in (b"-rf", b"--help", b"\xff\xfe-latin"):
                        h.send_file(name, os.path.join(rel, name), backend=backend)
                        self.assertEqual(read_file(os.path.join(rel, name), "rb"), want[name])
                finally:
                    os.chdir(cwd)
        self.assertEqual([t for t in traps if os.path.exists(t)], [])

    def test_placement_follows_rsync_on_every_backend(self):
        src = os.path.join(self.tmp, "tree")
        os.makedirs(os.path.join(src, "a"))
        write_file(os.path.join(src, "a", "x"), "x")
        write_file(os.path.join(src, "f"), "f")
        h = self.sshd.host()
        for backend in self.BACKENDS:
            with self.subTest(backend=backend):
                need(backend)
                base = os.path.join(self.tmp, "p-" + backend)
                os.mkdir(base)
                h.send_file(src, os.path.join(base, "new"), backend=backend)
                self.assertTrue(os.path.isfile(os.path.join(base, "new", "tree", "a", "x")))
                h.send_file(src + "/", os.path.join(base, "contents"), backend=backend)
                self.assertTrue(os.path.isfile(os.path.join(base, "contents", "a", "x")))
                h.send_file(os.path.join(src, "f"), os.path.join(base, "renamed"), backend=backend)
                self.assertEqual(read_file(os.path.join(base, "renamed")), "f")
                h.send_file([os.path.join(src, "f"), os.path.join(src, "a")],
                            os.path.join(base, "many"), backend=backend)
                self.assertTrue(os.path.isfile(os.path.join(base, "many", "f")))
                self.assertTrue(os.path.isfile(os.path.join(base, "many", "a", "x")))
                write_file(os.path.join(base, "contents", "extra"), "old")
                h.send_file(src + "/", os.path.join(base, "contents"), delete_dest=True,
                            backend=backend)
                self.assertFalse(os.path.exists(os.path.join(base, "contents", "extra")))
                got = os.path.join(base, "got")
                h.get_file(os.path.join(src, "f"), got, backend=backend)
                self.assertEqual(read_file(got), "f")
                h.get_file(src + "/", os.path.join(base, "gotdir"), backend=backend)
                self.assertTrue(os.path.isfile(os.path.join(base, "gotdir", "a", "x")))
                self.assertFalse([n for n in os.listdir(base) if n.startswith(".autoserv-")])

    def test_symlinks_kept_when_asked_and_escaping_links_refused(self):
        src = os.path.join(self.tmp, "s")
        os.makedirs(src)
        write_file(os.path.join(src, "target"), "t")
        os.symlink("target", os.path.join(src, "inside"))
        h = self.sshd.host()
        h.get_file(src, os.path.join(self.tmp, "kept"), preserve_symlinks=True)
        self.assertEqual(os.readlink(os.path.join(self.tmp, "kept", "s", "inside")), "target")
        os.symlink("/etc/passwd", os.path.join(src, "outside"))
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            h.get_file(src, os.path.join(self.tmp, "evil"), preserve_symlinks=True)
        self.assertIn("outside", str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "evil", "s")))

    def test_permissions_follow_preserve_perm(self):
        f = os.path.join(self.tmp, "script")
        write_file(f, "#!/bin/sh\n")
        os.chmod(f, 0o751)
        h = self.sshd.host()
        h.get_file(f, os.path.join(self.tmp, "kept"))
        self.assertEqual(os.stat(os.path.join(self.tmp, "kept")).st_mode & 0o777, 0o751)
        h.send_file(f, os.path.join(self.tmp, "sent"))
        self.assertEqual(os.stat(os.path.join(self.tmp, "sent")).st_mode & 0o777, 0o751)
        # Not kept (get_file's preserve_perm=False): the source's mode under
        # this side's umask, on every backend; 0o775 has bits umask 022 clears.
        os.chmod(f, 0o775)
        old = os.umask(0o022)
        try:
            for backend in ("tar", "rsync", "scp"):
                with self.subTest(backend=backend):
                    need(backend)
                    got = os.path.join(self.tmp, "plain-" + backend)
                    h.get_file(f, got, backend=backend, preserve_perm=False)
                    self.assertEqual(os.stat(got).st_mode & 0o777, 0o755)
                    h.get_file(f, got + "-kept", backend=backend)
                    self.assertEqual(os.stat(got + "-kept").st_mode & 0o777, 0o775)
        finally:
            os.umask(old)

    @scenario(3)
    def test_big_file_and_many_small_files_keep_memory_flat(self):
        code = textwrap.dedent(f"""\
            import autoserv, os, hashlib
            size = int(os.environ['MB']) << 20
            d = {self.tmp!r}
            src = os.path.join(d, 'big-%d' % size)
            with open(src, 'wb') as f:
                for _ in range(size >> 20):
                    f.write(os.urandom(1 << 20))
            h = autoserv.SSHHost('testhost', ssh_config={self.sshd.ssh_config!r})
            dest = src + '.sent'
            h.send_file(src, dest)
            back = src + '.back'
            h.get_file(dest, back)
            def digest(p):
                h = hashlib.sha256()
                with open(p, 'rb') as f:
                    for block in iter(lambda: f.read(1 << 20), b''):
                        h.update(block)
                return h.hexdigest()
            assert digest(src) == digest(dest) == digest(back)
            for p in (src, dest, back):
                os.unlink(p)
            if os.environ.get('TREE'):
                tree = os.path.join(d, 'tree')
                os.makedirs(tree)
                for i in range(10000):
                    with open(os.path.join(tree, 'f%05d' % i), 'wb') as f:
                        f.write(b'%d' % i * 50)
                h.send_file(tree + '/', tree + '.sent')
                h.get_file(tree + '.sent/', tree + '.back')
                names = sorted(os.listdir(tree + '.back'))
                assert len(names) == 10000, len(names)
                assert open(os.path.join(tree + '.back', 'f09999'), 'rb').read() == b'9999' * 50
            autoserv._close_all_hosts()
            """)
        rss = {}
        for mb, tree in ((16, ""), (256, "1")):
            os.environ["MB"], os.environ["TREE"] = str(mb), tree
            try:
                rss[mb] = max_rss_of(code, timeout=600)[1]
            finally:
                del os.environ["MB"], os.environ["TREE"]
        self.assertLess(rss[256], 100, rss)
        self.assertLess(rss[256] - rss[16], 15, rss)

    @scenario(5)
    def test_disk_full_names_the_file_and_keeps_the_old_one(self):
        need_root()
        mnt = os.path.join(self.tmp, "small")
        os.mkdir(mnt)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt]).returncode:
            self.skipTest("cannot mount a tmpfs here")
        # Unmounted here, not in a cleanup: tearDown's rmtree of self.tmp runs
        # before cleanups and would leave the mount point (and the dir) behind.
        try:
            write_file(os.path.join(mnt, "data.bin"), "old contents")
            big = os.path.join(self.tmp, "data.bin")
            with open(big, "wb") as f:
                f.write(os.urandom(3 << 20))
            h = self.sshd.host()
            for backend in self.BACKENDS:
                with self.subTest(backend=backend):
                    need(backend)
                    with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                        h.send_file(big, os.path.join(mnt, "data.bin"), backend=backend)
                    self.assertIn("data.bin", str(cm.exception))
                    self.assertIn("no space", str(cm.exception).lower())
                    self.assertEqual(read_file(os.path.join(mnt, "data.bin")), "old contents")
                    self.assertEqual(sorted(os.listdir(mnt)), ["data.bin"])
        finally:
            subprocess.run(["umount", "-l", mnt])

    def test_missing_remote_source_is_a_clear_error(self):
        h = self.sshd.host()
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            h.get_file("/no/such/file", os.path.join(self.tmp, "x"))
        self.assertIn("/no/such/file", str(cm.exception))
        self.assertRegex(str(cm.exception), "(?i)no such file|can't cd|does not exist")  # why
        with self.assertRaises(autoserv.AutoservFileTransferError):
            h.send_file(os.path.join(self.tmp, "nope"), "/tmp/x")


class TestSSHRunPersistent(TestSSHRun):
    """The per-command path's behaviour tests again, with every command going
    through the host's persistent agent (SSHHost(persistent=True)): timeouts
    and the remote group kill, exit status and signals, stdin, live tees,
    bytes, concurrency, a killed master, transport errors, a stalled link."""

    SHARED = ("test_run_reports_output_status_duration_and_host",
              "test_exit_status_signal_and_transport_failure_are_distinct",
              "test_arguments_arrive_byte_exact_and_nothing_runs",
              "test_command_runs_in_the_login_shell_like_plain_ssh",
              "test_stdin_is_dev_null_unless_given_and_tees_are_live",
              "test_timeout_kills_everything_the_command_started_on_the_target",
              "test_timeout_kills_commands_that_ignore_term_or_are_stopped",
              "test_undecodable_bytes_and_split_characters",
              "test_twenty_concurrent_commands_share_one_master_then_it_is_killed",
              "test_many_open_fds_and_fifty_concurrent_commands",
              "test_host_state_queries",
              "test_errors_refused_auth_and_changed_key_each_within_five_seconds",
              "test_remote_temp_dirs_are_private_and_removed_at_close")

    # Tests that run autoserv only in a child python (they check h._agent there).
    IN_A_CHILD = ("test_flood_through_the_agent_has_flat_memory",)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        autoserv.set_ssh_defaults(persistent=True)

    def setUp(self):
        """Every command a test runs on a persistent host is noted as it is
        sent: "agent" through the agent's socket, "session" as its own ssh
        session (the wrapper of the per-command path).  A note is one O_APPEND
        write of a line to a file, so forked tasks' notes count too.  tearDown
        checks them: an agent that silently never starts (autoserv falls back
        to a session per command) fails every test here."""
        super().setUp()
        notes = self.agent_notes = os.path.join(self.tmp, "agent-notes")

        def note(kind, host, command):
            fd = os.open(notes, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, json.dumps([kind, host, command[:200]]).encode() + b"\n")
            finally:
                os.close(fd)
        session, agent = autoserv.SSHHost._remote_command, autoserv._AgentExecution.start

        def noted_session(host, command, *a, **k):
            if host.persistent:         # close() runs its rm -rf with persistent off
                note("session", host.hostname, command)
            return session(host, command, *a, **k)

        def noted_agent(ex):
            note("agent", ex.label, json.loads(ex.request)["c"])
            return agent(ex)
        from unittest import mock
        for cls, name, fn in ((autoserv.SSHHost, "_remote_command", noted_session),
                              (autoserv._AgentExecution, "start", noted_agent)):
            patch = mock.patch.object(cls, name, fn)    # AttributeError if renamed
            patch.start()
            self.addCleanup(patch.stop)

    def tearDown(self):
        try:
            notes = []
            if os.path.exists(self.agent_notes):
                with open(self.agent_notes) as f:
                    notes = [json.loads(line) for line in f]
            sessions = [n for n in notes if n[0] == "session"]
            if sessions:
                self.fail(f"{len(sessions)} command(s) of a persistent host ran as their own "
                          f"ssh session, not through its agent: {sessions[:3]}")
            if self._testMethodName not in self.IN_A_CHILD:
                self.assertTrue([n for n in notes if n[0] == "agent"],
                                "no command went through an agent")
        finally:
            super().tearDown()

    def test_commands_run_as_children_of_the_agent(self):
        h = self.sshd.host()
        parent = h.run("tr '\\0' ' ' </proc/$PPID/cmdline").stdout
        self.assertTrue(parent.startswith("python3 -c "), parent)
        env = h.run("tr '\\0' '\\n' </proc/$PPID/environ").stdout.splitlines()
        self.assertIn("AUTOSERV_RUN_ID=norun", env)     # tagged, so leftovers show
        per_command = self.sshd.host(persistent=False)
        self.assertNotIn("python3", per_command.run("cat /proc/$PPID/cmdline").stdout)

    def test_agent_killed_mid_command_is_connection_lost_and_the_next_restarts_it(self):
        h = self.sshd.host()
        first = int(h.run("echo $PPID").stdout)
        kill = once_running("sleep 4249.1", lambda: os.kill(first, signal.SIGKILL))
        try:
            with self.assertRaises(autoserv.AutoservSSHConnectionLost):
                h.run("sleep 4249.1", timeout=30)
        finally:
            kill.join()
        self.assertIsNone(kill.error)
        second = int(h.run("echo $PPID").stdout)
        self.assertNotEqual(first, second)
        wait_for(lambda: not processes_with("sleep 4249.1"), 10, what="orphaned command gone")

    def test_link_stall_mid_command_is_connection_lost_and_the_job_dies_later(self):
        self.relay_host = types.MethodType(TestFaults.relay_host, self)
        TestFaults.test_link_stall_mid_command_is_connection_lost_and_the_job_dies_later(self)

    def test_flood_through_the_agent_has_flat_memory(self):
        code = textwrap.dedent(f"""\
            import autoserv, os
            n = int(os.environ['N'])
            h = autoserv.SSHHost('testhost', ssh_config={self.sshd.ssh_config!r},
                                 persistent=True)
            r = h.run(f"head -c {{n}} /dev/zero & head -c {{n}} /dev/zero >&2; wait",
                      max_output=4 << 20)
            assert r.truncated, r
            assert h._agent, "the agent did not run it"
            for p in r.output_files.values():
                assert os.path.getsize(p) == n, (p, os.path.getsize(p))
                os.unlink(p)
            autoserv._close_all_hosts()
            """)
        assert_flat_memory(self, code, "N", lambda mb: str(mb << 20))


for _name in dir(TestSSHRun):
    if _name.startswith("test_") and _name not in TestSSHRunPersistent.SHARED \
            and _name not in vars(TestSSHRunPersistent):
        setattr(TestSSHRunPersistent, _name, None)


# Faults: relays and network namespaces ########################################

def sh(*argv, check=True):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and out.returncode:
        raise AssertionError(f"{argv}: {out.stderr.strip()}")
    return out


class Netns:
    """A network namespace this test made; optionally a veth pair to it from
    the host with a private /30.  Deleted by close()."""
    count = 0

    def __init__(self, veth=False):
        need_root()
        need("ip")
        Netns.count += 1
        self.name = f"as-t{os.getpid() % 10000}-{Netns.count}"
        self.veth = None
        sh("ip", "netns", "add", self.name)
        self.exec("ip", "link", "set", "lo", "up")
        if veth:
            n = (os.getpid() + Netns.count) % 60
            self.host_ip, self.ns_ip = f"10.231.{200 + n // 60}.{n * 4 + 1}", \
                f"10.231.{200 + n // 60}.{n * 4 + 2}"
            self.veth = f"as{os.getpid() % 10000}v{Netns.count}"
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "p")
            sh("ip", "link", "set", self.veth + "p", "netns", self.name)
            sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth)
            sh("ip", "link", "set", self.veth, "up")
            self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.veth + "p")
            self.exec("ip", "link", "set", self.veth + "p", "up")

    def exec(self, *argv, check=True):
        return sh("ip", "netns", "exec", self.name, *argv, check=check)

    def close(self):
        if self.veth:
            sh("ip", "link", "del", self.veth, check=False)
        sh("ip", "netns", "del", self.name, check=False)


class Relay:
    """socat between ssh and the sshd: SIGSTOP it to stall the link."""

    def __init__(self, target_port):
        need("socat")
        self.proc, self.port = on_a_free_port(lambda port: subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
             f"TCP:127.0.0.1:{target_port}"], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            accepts, "relay listening")

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def cont(self):
        os.killpg(self.proc.pid, signal.SIGCONT)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class HoldRelay:
    """A relay to a target port whose replies can be held back, then lost:
    hold() delays what the target sends on the connections open then (3 s
    per piece), drop() discards what they held and everything they get
    after; connections made later relay untouched.  A child process, ended
    by PID in close()."""

    def __init__(self, target_port):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_RELAY, str(target_port)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self.port = int(self.proc.stdout.readline())

    def hold(self):
        os.kill(self.proc.pid, signal.SIGUSR2)

    def drop(self):
        os.kill(self.proc.pid, signal.SIGUSR1)

    def dropped(self):
        """Bytes dropped so far (the relay's answer to SIGHUP)."""
        os.kill(self.proc.pid, signal.SIGHUP)
        return int(self.proc.stdout.readline())

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


_HOLD_RELAY = r"""
import os, selectors, signal, socket, sys, time
target = int(sys.argv[1])
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
print(lsock.getsockname()[1], flush=True)
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
events = []
for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
    signal.signal(sig, lambda n, f: events.append(n))
sel = selectors.DefaultSelector()
sel.register(lsock, selectors.EVENT_READ, "listen")
sel.register(wake_r, selectors.EVENT_READ, "wake")
conns = []          # [client, server, mode, queue of (due, bytes)]
dropped = 0
while True:
    now = time.monotonic()
    dues = [q[0][0] for c in conns for q in [c[3]] if q]
    for key, _ in sel.select(max(0, min(dues) - now) if dues else None):
        if key.data == "listen":
            client, _ = lsock.accept()
            server = socket.create_connection(("127.0.0.1", target))
            conn = [client, server, "normal", []]
            conns.append(conn)
            sel.register(client, selectors.EVENT_READ, (conn, "up"))
            sel.register(server, selectors.EVENT_READ, (conn, "down"))
        elif key.data == "wake":
            os.read(wake_r, 64)
            for n in events:
                for conn in conns:
                    if n == signal.SIGUSR2 and conn[2] == "normal":
                        conn[2] = "held"
                    elif n == signal.SIGUSR1 and conn[2] == "held":
                        conn[2] = "dropping"
                        dropped += sum(len(d) for _, d in conn[3])
                        conn[3] = []
                if n == signal.SIGHUP:
                    print(dropped, flush=True)
            events.clear()
        else:
            conn, way = key.data
            src = key.fileobj
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in conn[:2]:
                    try:
                        sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
                    s.close()
                conns.remove(conn)
                continue
            if way == "up":
                conn[1].sendall(data)
            elif conn[2] == "normal":
                conn[0].sendall(data)
            elif conn[2] == "held":
                conn[3].append((time.monotonic() + 3.0, data))
            else:
                dropped += len(data)
    now = time.monotonic()
    for conn in conns:
        while conn[3] and conn[3][0][0] <= now:
            conn[0].sendall(conn[3].pop(0)[1])
"""


_CUT_RELAY = r'''
import selectors, socket, sys
target, limit, direction, nth = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
print(lsock.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
sel.register(lsock, selectors.EVENT_READ)
pairs = {}          # socket -> (peer, direction of bytes read from it, counter)
count = 0
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is lsock:
            client, _ = lsock.accept()
            count += 1
            server = socket.create_connection(("127.0.0.1", target))
            counter = [0, 0] if count == nth else None    # up, down
            pairs[client] = (server, 0, counter)
            pairs[server] = (client, 1, counter)
            sel.register(client, selectors.EVENT_READ)
            sel.register(server, selectors.EVENT_READ)
            continue
        if s not in pairs:      # closed by a cut earlier in this batch of events
            continue
        peer, way, counter = pairs[s]
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        cut = False
        if data and counter is not None and way == (0 if direction == "up" else 1):
            room = limit - counter[way]
            if len(data) >= room:
                data, cut = data[:room], True
            counter[way] += len(data)
        if data:
            peer.sendall(data)
        if cut or not data:
            for one in (s, peer):
                sel.unregister(one)
                pairs.pop(one, None)
                one.close()
            if cut:
                print("cut", flush=True)
'''


class CutRelay:
    """A relay that cuts the link at an exact byte: once `limit` bytes of the
    `nth` connection have passed in `direction` ("up": client to target,
    "down": target to client), both sides are closed at that byte.
    Deterministic (a byte count, not a timer); other connections relay
    untouched.  Runs as a child process, ended by PID in close()."""

    def __init__(self, target_port, limit, direction="down", nth=1):
        assert direction in ("up", "down")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CUT_RELAY, str(target_port), str(limit), direction,
             str(nth)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.port = int(self.proc.stdout.readline())

    def was_cut(self, timeout=5):
        """True once the relay has cut its link (reads its report line)."""
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return bool(ready) and self.proc.stdout.readline().strip() == b"cut"

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


class TestFaults(SshdTestCase):
    def test_a_server_whose_port_was_taken_is_started_again_on_another(self):
        # The port free_port chose is taken (and answers) before the relay
        # binds it: the relay exits, and is started again on another port.
        from unittest import mock
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(4)
        first = [taken.getsockname()[1]]
        real = free_port
        with mock.patch.object(sys.modules[__name__], "free_port",
                               lambda: first.pop() if first else real()):
            relay = Relay(self.sshd.port)
        self.addCleanup(relay.close)
        self.assertNotEqual(relay.port, taken.getsockname()[1])
        self.assertTrue(owns_port(relay.proc.pid, relay.port))
        h = autoserv.SSHHost("127.0.0.1", port=relay.port, identity=self.sshd.client_key,
                             host_key_policy="ephemeral")
        self.addCleanup(h.close)
        self.assertEqual(h.run("echo through").stdout, "through\n")

    def relay_host(self, relay=None, **kw):
        relay = relay or Relay(self.sshd.port)
        self.addCleanup(relay.close)
        self.sshd.write_ssh_config(("testhost",))
        with open(self.sshd.ssh_config, "a") as f:
            f.write(textwrap.dedent(f"""\
                Host relayhost
                    HostName 127.0.0.1
                    Port {relay.port}
                    User root
                    IdentityFile {self.sshd.client_key}
                    UserKnownHostsFile {self.sshd.known_hosts}
                """))
        return relay, self.sshd.host("relayhost", alive_interval=1, alive_count=3, **kw)

    def test_a_connection_closed_before_the_handshake_is_tried_again_within_the_connect_timeout(self):
        # sshd past its MaxStartups, or a QEMU user-mode port whose guest is
        # not listening yet: the first connection closes before (or in) the
        # banner.  Nothing ran, so the master tries again; a target that
        # always does so fails as connection lost, within the connect timeout.
        for limit in (0, 5):                    # no banner, half a banner
            with self.subTest(bytes_of_banner=limit):
                relay, h = self.relay_host(CutRelay(self.sshd.port, limit, "down"),
                                           connect_timeout=10)
                self.assertEqual(h.run("echo through").stdout, "through\n")
                self.assertTrue(relay.was_cut())
                h.close()
        closer = socket.socket()
        closer.bind(("127.0.0.1", 0))
        closer.listen(64)
        self.addCleanup(closer.close)
        accepted = []

        def close_every_connection():
            while True:
                try:
                    conn, _ = closer.accept()
                except OSError:
                    return
                accepted.append(1)
                conn.close()
        threading.Thread(target=close_every_connection, daemon=True).start()
        h = autoserv.SSHHost("127.0.0.1", port=closer.getsockname()[1],
                             identity=self.sshd.client_key, connect_timeout=3)
        self.addCleanup(h.close)
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservSSHConnectionLost) as cm:
            h.run("true")
        self.assertLess(time.monotonic() - t0, 3 + 5 + 5)
        self.assertGreater(len(accepted), 1)
        self.assertRegex(str(cm.exception), "closed|reset")

    @scenario(4)
    def test_transfer_cut_halfway_keeps_the_old_file_and_a_retry_succeeds(self):
        relay, h = self.relay_host()
        big = os.path.join(self.tmp, "big.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(48 << 20))
        dest = os.path.join(self.tmp, "dest")
        os.mkdir(dest)
        with open(os.path.join(dest, "big.bin"), "w") as f:
            f.write("the old file")
        h.run("true")
        # Throttle nothing: stop the relay as soon as the staging file appears.
        def stall():
            wait_for(lambda: any(n.startswith(".autoserv-") for n in os.listdir(dest)), 30,
                     interval=0.005, what="transfer started")
            relay.stop()
        for backend in ("tar", "scp"):
            with self.subTest(backend=backend):
                thread = threading.Thread(target=stall)
                thread.start()
                t0 = time.monotonic()
                try:
                    with self.assertRaises(autoserv.AutoservSSHError) as cm:
                        h.send_file(big, os.path.join(dest, "big.bin"), backend=backend)
                finally:
                    thread.join()
                    took = time.monotonic() - t0
                    relay.cont()
                self.assertIsInstance(cm.exception, autoserv.AutoservSSHConnectionLost)
                self.assertLess(took, 1 * (3 + 1) + 5 + 5)
                with open(os.path.join(dest, "big.bin"), "rb") as f:
                    self.assertEqual(f.read(64), b"the old file")
                if backend == "scp":
                    h.close()     # scp's staging dir is removed once the link is back
                wait_for(lambda: not [n for n in os.listdir(dest) if n.startswith(".autoserv-")],
                         15, what="staging removed on the target")
                # The target side ends only once the link is back: what it did
                # then (place a short file, or remove its staging) is judged now.
                with open(os.path.join(dest, "big.bin"), "rb") as f:
                    self.assertEqual(f.read(64), b"the old file",
                                     "a partial upload replaced the old file once the link was back")
        h.send_file(big, os.path.join(dest, "big.bin"))
        with open(big, "rb") as a, open(os.path.join(dest, "big.bin"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    @scenario(7)
    def test_unknown_host_name_in_a_namespace_with_no_routes(self):
        ns = Netns()
        self.addCleanup(ns.close)
        ctl = os.path.join(self.tmp, "unknown.control")
        with open(ctl, "w") as f:
            f.write("hosts.SSHHost('no-such-host.invalid').run('true')\n")
        t0 = time.monotonic()
        out = ns.exec(sys.executable, AUTOSERV, "-r", os.path.join(self.tmp, "r"), ctl,
                      check=False)
        self.assertLess(time.monotonic() - t0, 5 + 2)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("AutoservSSHUnknownHost", out.stderr)

    @scenario(6)
    def test_blackholed_host_is_a_connect_timeout_within_its_bound(self):
        ns = Netns(veth=True)
        self.addCleanup(ns.close)
        need("iptables")
        ns.exec("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
        h = autoserv.SSHHost(ns.ns_ip, connect_timeout=3, ssh_options=["UserKnownHostsFile=/dev/null"])
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservSSHConnectTimeout):
            h.run("true")
        self.assertLess(time.monotonic() - t0, 3 + 5)

    @scenario(9)
    def test_link_stall_mid_command_is_connection_lost_and_the_job_dies_later(self):
        relay, h = self.relay_host()
        tmp_dir = h.get_tmp_dir()
        stall = once_running("sleep 4248.1", relay.stop)      # mid-command
        try:
            with self.assertRaises(autoserv.AutoservSSHConnectionLost) as cm:
                h.run("sleep 4248.1; echo finished")
            lost = time.monotonic()
        finally:
            stall.join()
        self.assertIsNone(stall.error)
        self.assertLess(lost - stall.at, 1 * (3 + 1) + 5)
        self.assertIn("relayhost", str(cm.exception))
        self.assertTrue(remote_sleeps("sleep 4248.1"))     # still there while stalled
        relay.cont()
        wait_for(lambda: not remote_sleeps("sleep 4248.1"), 10,
                 what="remote job gone once the link is back")
        self.assertEqual(h.run("echo back").stdout, "back\n")
        h.close()
        self.assertFalse(os.path.exists(tmp_dir))

class TestSecurity(SshdTestCase):
    """RELIABILITY.md's security checklist, on the real sshd."""

    def test_every_ssh_gets_batchmode_timeouts_keepalives_and_no_forwarding(self):
        log = ssh_shim(self)
        h = self.sshd.host(identity=self.sshd.client_key)
        p = self.sshd.host(identity=self.sshd.client_key, persistent=True)
        src = os.path.join(self.tmp, "f")
        with open(src, "w") as f:
            f.write("x")
        d = h.get_tmp_dir()
        need("rsync", "scp")
        for backend in ("tar", "rsync", "scp"):
            h.send_file(src, f"{d}/{backend}", backend=backend)
            h.get_file(f"{d}/{backend}", os.path.join(self.tmp, backend), backend=backend)
        self.assertEqual(p.run("echo agent").stdout, "agent\n")
        self.assertTrue(p._agent)
        h.close()
        p.close()
        calls = [read_file(os.path.join(log, n)).split("\0")[:-1] for n in os.listdir(log)]
        sessions = [argv for argv in calls if "-O" not in argv]    # -O: to the local master
        joined = [" ".join(argv) for argv in sessions]
        self.assertTrue([j for j in joined if j.startswith("ssh ") and (
            " -N " in j or "ControlPersist=yes" in j)])                               # masters
        self.assertTrue([j for j in joined if j.startswith("scp ")])
        self.assertTrue([j for j in joined if "rsync --server" in j], joined)
        self.assertTrue([j for j in joined if "python3 -c" in j])                    # agent
        for argv in sessions:
            # As ssh reads them: "-o K=V" or "-oK=V" (or "K V"), in order, the
            # first value of a key the one that counts.
            keys = {}
            for i, word in enumerate(argv):
                if word == "-o" and i + 1 < len(argv):
                    opt = argv[i + 1]
                elif word.startswith("-o") and len(word) > 2:
                    opt = word[2:]
                else:
                    continue
                key, _, value = re.sub(r"\s*=\s*|\s+", "=", opt.strip(), count=1).partition("=")
                keys.setdefault(key.lower(), value.lower())
            with self.subTest(argv=" ".join(argv)[:160]):
                self.assertEqual(keys.get("batchmode"), "yes")
                self.assertIn("connecttimeout", keys)
                self.assertIn("serveraliveinterval", keys)
                self.assertIn("serveralivecountmax", keys)
                self.assertEqual(keys.get("forwardagent"), "no")
                self.assertEqual(keys.get("forwardx11"), "no")
                self.assertEqual(keys.get("identitiesonly"), "yes")
                self.assertNotEqual(keys.get("stricthostkeychecking"), "no")

    def test_control_sockets_agent_and_temp_dirs_are_private(self):
        h = self.sshd.host(persistent=True)
        h.run("true")
        for path in (os.path.dirname(h._ctrl_path), os.path.dirname(h._agent["local"]),
                     *[p for _, p in h._tmp_dirs], h.get_tmp_dir()):
            with self.subTest(path=path):
                self.assertEqual(os.stat(path).st_mode & 0o777, 0o700)
        self.assertEqual(len(h._tmp_dirs), 2)       # the agent's socket dir and get_tmp_dir's

    def test_cleanup_removes_only_what_autoserv_made(self):
        h = self.sshd.host()
        mine = h.get_tmp_dir()
        foreign = tempfile.mkdtemp(prefix="not-autoservs-")
        self.addCleanup(shutil.rmtree, foreign, True)
        lookalike = os.path.join(foreign, "autoserv-abcdef")
        os.mkdir(lookalike)
        # Another process's (a task's): a real dir, its maker's to remove.
        theirs = tempfile.mkdtemp(prefix="autoserv-", dir="/tmp")
        self.addCleanup(shutil.rmtree, theirs, True)
        # Paths that reached the list by mistake are never removed.
        h._tmp_dirs += [(os.getpid(), foreign), (os.getpid(), "/"), (os.getpid(), lookalike),
                        (os.getpid() + 1, theirs)]
        h.close()
        self.assertFalse(os.path.exists(mine))
        self.assertTrue(os.path.isdir(lookalike))
        self.assertTrue(os.path.isdir(theirs))

    def test_the_agent_is_sent_inline_and_leaves_nothing_on_the_target(self):
        before = _remote_autoserv_dirs()
        h = self.sshd.host(persistent=True)
        self.assertEqual(h.run("echo $PPID").exit_status, 0)
        agent_dir = [p for _, p in h._tmp_dirs][0]
        self.assertEqual(sorted(os.listdir(agent_dir)), ["agent"])    # its socket, no script
        self.assertTrue(stat_is_socket(os.path.join(agent_dir, "agent")))
        h.close()
        self.assertEqual(_remote_autoserv_dirs(), before)


def stat_is_socket(path):
    import stat
    return stat.S_ISSOCK(os.stat(path).st_mode)


# Hostile targets and inputs ###################################################

class TestHostileTransfer(SshdTestCase):
    """Issue 13: a target may send anything, the link may drop at any byte,
    local names may be anything, a shared dir may hold planted files."""

    BACKENDS = TestTransfer.BACKENDS

    def tree(self, root, files):
        """A tree of {relative path: text}."""
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return root

    @staticmethod
    def text(path):
        with open(path) as f:
            return f.read()

    def contents(self, root):
        """{relative path: text, or "L:" and its target for a symlink} for
        everything under root but real dirs."""
        out = {}
        for dirpath, dirs, files in os.walk(root):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, root)
                if os.path.islink(p):
                    out[rel] = "L:" + os.readlink(p)
                else:
                    with open(p) as f:
                        out[rel] = f.read()
        return out

    def every_backend(self):
        """(label, host, backend): LocalHost, then the ssh host with each backend
        this machine has (a missing one is a skipped subtest; fails in CI)."""
        h = self.sshd.host()
        cases = [("local", autoserv.LocalHost(), None)]
        for backend in self.BACKENDS:
            with self.subTest(backend=backend):
                need(backend)
                cases.append((backend, h, backend))
        return cases

    def test_placement_program_parses_under_dash_bash_and_busybox_ash(self):
        need("dash", "bash", "busybox")
        self.assertNotIn("\n", autoserv._PLACE_SH)
        self.assertGreater(autoserv._PLACE_SOURCE.count("\n"), 40)
        programs = (autoserv._PLACE_SH, autoserv._PLACE_SOURCE,
                    *autoserv._PLACE_FIND_PROGRAMS.values())
        for program in programs:
            for shell in (["dash"], ["bash"], ["busybox", "ash"]):
                with self.subTest(shell=shell, lines=program.count("\n")):
                    out = subprocess.run(shell + ["-n"], input=program, text=True,
                                         capture_output=True, timeout=30)
                    self.assertEqual((out.returncode, out.stderr), (0, ""))
        # -n checks the syntax only: a broken program must fail it.
        out = subprocess.run(["dash", "-n"], input=autoserv._PLACE_SH.replace("; fi", "", 1),
                             text=True, capture_output=True, timeout=30)
        self.assertNotEqual(out.returncode, 0)

    def test_delete_dest_into_an_existing_dir_replaces_it_whole_both_ways(self):
        src = self.tree(os.path.join(self.tmp, "src"), {"a": "new a", "sub/b": "new b",
                                                         ".hid": "new hidden"})
        want = self.contents(src)
        cases = self.every_backend()
        for label, host, backend in cases:
            for way in ("send", "get"):
                with self.subTest(host=label, way=way):
                    dest = self.tree(os.path.join(self.tmp, f"d-{label}-{way}"),
                                     {"a": "the old a", "stale": "old", "olddir/x": "old x"})
                    move = host.send_file if way == "send" else host.get_file
                    move(src + "/", dest + "/", delete_dest=True, backend=backend)
                    self.assertEqual(self.contents(dest), want)
                    self.assertFalse([n for n in os.listdir(self.tmp)
                                      if n.startswith(".autoserv-")])


    def test_a_placement_that_meets_a_file_dir_clash_changes_nothing(self):
        src = self.tree(os.path.join(self.tmp, "src"), {"a": "new a", "m/x": "new x",
                                                         "m/y/z": "new z", "w": "new w"})
        cases = self.every_backend()
        clashes = {"top": {"a/inner": "old dir a"},        # a dir where a file comes
                   "deep": {"m/y": "old file y"},          # a file where a dir comes
                   "deeper": {"m/x/inner": "old dir x"}}   # a dir where a file comes
        for label, host, backend in cases:
            # rsync sending writes into dest itself, file by file, as rsync does.
            for way in ("get",) if backend == "rsync" else ("send", "get"):
                for clash, old in clashes.items():
                    with self.subTest(host=label, way=way, clash=clash):
                        dest = self.tree(os.path.join(self.tmp, f"{label}-{way}-{clash}"),
                                         dict(old, keep="old keep"))
                        before = self.contents(dest)
                        move = host.send_file if way == "send" else host.get_file
                        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                            move(src + "/", dest, backend=backend)
                        self.assertRegex(str(cm.exception), "in the way|is a directory")
                        self.assertEqual(self.contents(dest), before)

    def test_a_symlinked_destination_is_refused_or_replaced_never_written_through(self):
        src = self.tree(os.path.join(self.tmp, "src"), {"f": "new f", "sub/g": "new g",
                                                         "sub2/h": "new h"})
        cases = self.every_backend()
        for label, host, backend in cases:
            for way in ("send", "get"):
                move = host.send_file if way == "send" else host.get_file
                base = os.path.join(self.tmp, f"{label}-{way}")
                elsewhere = self.tree(os.path.join(base, "elsewhere"), {"keep": "mine"})
                os.symlink(elsewhere, os.path.join(base, "d"))
                d = os.path.join(base, "d")
                for dest, kw in ((d, {}), (d + "/", {}), (d, {"delete_dest": True})):
                    with self.subTest(host=label, way=way, dest=dest, **kw):
                        source = src + "/" if kw else src
                        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                            move(source, dest, backend=backend, **kw)
                        self.assertIn("symlink", str(cm.exception))
                        self.assertIn(d, str(cm.exception))
                        self.assertEqual(self.contents(elsewhere), {"keep": "mine"})
                        self.assertEqual(os.readlink(d), elsewhere)
                with self.subTest(host=label, way=way, what="links inside dest"):
                    # Links in the way inside a real dest are replaced: the
                    # new tree lands in dest, the links' targets keep theirs.
                    real = self.tree(os.path.join(base, "real"), {"old": "old"})
                    os.symlink(elsewhere, os.path.join(real, "sub"))
                    os.symlink(os.path.join(elsewhere, "keep"), os.path.join(real, "f"))
                    os.mkdir(os.path.join(real, "sub2"))
                    os.symlink(elsewhere, os.path.join(real, "sub2", "h"))
                    move(src + "/", real, backend=backend)
                    self.assertEqual(self.contents(real), {"old": "old", "f": "new f",
                                                           "sub/g": "new g", "sub2/h": "new h"})
                    self.assertEqual(self.contents(elsewhere), {"keep": "mine"})

    def planted_tar(self, cut):
        """A dir holding a `tar` that, when it creates, stops its archive
        after `cut` bytes (a member boundary) and exits 0."""
        bindir = os.path.join(self.tmp, f"bin-{cut}")
        os.makedirs(bindir, exist_ok=True)
        with open(os.path.join(bindir, "tar"), "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/bin/sh
                case "$1" in
                -c*) {shutil.which("tar")} "$@" | head -c {cut}; exit 0 ;;
                esac
                exec {shutil.which("tar")} "$@"
                """))
        os.chmod(os.path.join(bindir, "tar"), 0o755)
        return bindir

    def two_files(self, name, text):
        """dir `name` with a and b: its archive's first member boundary after
        one file is at byte 1536 (dir header, file header, one data block)."""
        return self.tree(os.path.join(self.tmp, name), {"s/a": text + " a", "s/b": text + " b"})

    def test_a_tar_stream_that_stops_at_a_member_boundary_is_never_placed(self):
        new = os.path.join(self.two_files("new", "new"), "s")
        old = {"s/a": "old a", "s/b": "old b"}
        # send: the controller's own tar stops early (as when the link drops).
        dest = self.two_files("dest-send", "old")
        h = self.sshd.host()
        path = os.environ["PATH"]
        self.addCleanup(os.environ.__setitem__, "PATH", path)
        os.environ["PATH"] = self.planted_tar(1536) + os.pathsep + path
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            h.send_file(new, dest, backend="tar")
        self.assertIn("ended early", str(cm.exception))
        os.environ["PATH"] = path
        self.assertEqual(self.contents(dest), old)
        h.send_file(new, dest, backend="tar")
        self.assertEqual(self.contents(dest), {"s/a": "new a", "s/b": "new b"})
        # get: the target's tar stops early and says all is well.
        bindir = self.planted_tar(1536)
        sshd = Sshd(extra=f'ForceCommand PATH={bindir}:$PATH; export PATH; '
                          'eval "$SSH_ORIGINAL_COMMAND"\n')
        self.addCleanup(sshd.stop)
        hostile = sshd.host()
        dest = self.two_files("dest-get", "old")
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            hostile.get_file(new, dest, backend="tar")
        self.assertIn("ended early", str(cm.exception))
        self.assertEqual(self.contents(dest), old)
        self.assertFalse([n for n in os.listdir(dest) if n.startswith(".autoserv-")])
        h.get_file(new, dest, backend="tar")
        self.assertEqual(self.contents(dest), {"s/a": "new a", "s/b": "new b"})

    def cut_host(self, limit, direction):
        """A host whose master connection goes through a CutRelay."""
        relay = CutRelay(self.sshd.port, limit, direction)
        self.addCleanup(relay.close)
        alias = f"cut{limit}{direction}"
        with open(self.sshd.ssh_config, "a") as f:
            f.write(textwrap.dedent(f"""
                Host {alias}
                    HostName 127.0.0.1
                    Port {relay.port}
                    User root
                    IdentityFile {self.sshd.client_key}
                    UserKnownHostsFile {self.sshd.known_hosts}
                """))
        return relay, self.sshd.host(alias)

    def test_a_tree_transfer_cut_at_any_byte_places_all_or_nothing_and_a_retry_works(self):
        files = {f"s/f{i}": os.urandom(3000 + 7919 * i).hex() for i in range(6)}
        new = os.path.join(self.tree(os.path.join(self.tmp, "new"), files), "s")
        old = {name: "old" for name in files}
        good = self.sshd.host()
        for direction in ("up", "down"):
            for limit in (12000, 30000, 60000, 90000, 140000, 200000):
                with self.subTest(direction=direction, limit=limit):
                    dest = self.tree(os.path.join(self.tmp, f"d-{direction}-{limit}"), old)
                    relay, h = self.cut_host(limit, direction)
                    h.run("true")
                    move = h.send_file if direction == "up" else h.get_file
                    with self.assertRaises(autoserv.AutoservSSHConnectionLost):
                        move(new, dest, backend="tar")
                    self.assertTrue(relay.was_cut())
                    wait_for(lambda: not [n for n in os.listdir(dest)
                                          if n.startswith(".autoserv-")], 15,
                             what="staging removed")
                    self.assertEqual(self.contents(dest), old)
                    (good.send_file if direction == "up" else good.get_file)(
                        new, dest, backend="tar")
                    self.assertEqual(self.contents(dest), files)

    def test_fetched_trees_hold_only_files_dirs_and_symlinks_without_setuid(self):
        need_root()
        src = self.tree(os.path.join(self.tmp, "src"), {"suid": "s", "sgid": "g", "d/f": "f"})
        os.chmod(os.path.join(src, "suid"), 0o4755)
        os.chmod(os.path.join(src, "sgid"), 0o2755)
        os.chown(os.path.join(src, "d", "f"), 12345, 12345)
        h = self.sshd.host()
        for backend in self.BACKENDS:
            with self.subTest(backend=backend, what="setuid"):
                need(backend)
                got = os.path.join(self.tmp, "got-" + backend)
                h.get_file(src + "/", got, backend=backend)
                self.assertEqual(self.contents(got), {"suid": "s", "sgid": "g", "d/f": "f"})
                for name in ("suid", "sgid", "d/f"):
                    st = os.lstat(os.path.join(got, name))
                    self.assertEqual(st.st_mode & 0o6000, 0, name)
                    self.assertEqual((st.st_uid, st.st_gid), (os.geteuid(), os.getegid()))
        for kind, make in (("FIFO", lambda p: os.mkfifo(p)),
                           ("character device", lambda p: os.mknod(p, 0o20666, os.makedev(1, 3)))):
            odd = self.tree(os.path.join(self.tmp, "odd-" + kind[0]), {"f": "f"})
            make(os.path.join(odd, "odd-node"))
            for backend in ("tar", "rsync"):
                with self.subTest(backend=backend, what=kind):
                    need(backend)
                    got = os.path.join(self.tmp, f"got-{kind[0]}-{backend}")
                    with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                        h.get_file(odd + "/", got, backend=backend, timeout=60)
                    self.assertIn("odd-node", str(cm.exception))
                    if backend == "tar":    # refused in the stream (its name there), before tar
                        self.assertIn("'./odd-node': it is a", str(cm.exception))
                    self.assertFalse(os.path.exists(got))
                    self.assertFalse([n for n in os.listdir(self.tmp)
                                      if n.startswith(".autoserv-")])

    def test_a_fetched_tar_stream_is_judged_before_anything_is_made(self):
        import tarfile

        def archive(*members, fmt=tarfile.GNU_FORMAT):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
                for name, kind, mode, data in members:
                    info = tarfile.TarInfo(name)
                    info.type, info.mode, info.size = kind, mode, len(data)
                    t.addfile(info, io.BytesIO(data))
            return buf.getvalue()

        def through(stream, chunk):
            scan = autoserv._TarScan("target")
            return b"".join(scan.feed(stream[i:i + chunk])
                            for i in range(0, len(stream), chunk))

        long_name = "d/" + "n" * 300
        plain = archive(("d", tarfile.DIRTYPE, 0o755, b""), (long_name, tarfile.REGTYPE,
                        0o644, b"x" * 1000), ("d/l", tarfile.SYMTYPE, 0o777, b""))
        for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            stream = archive(("d", tarfile.DIRTYPE, 0o755, b""),
                             (long_name, tarfile.REGTYPE, 0o644, b"x" * 1000), fmt=fmt)
            for chunk in (1, 511, 512, 4096, 1 << 20):
                with self.subTest(fmt=fmt, chunk=chunk):
                    self.assertEqual(through(stream, chunk), stream)
        self.assertEqual(through(plain, 700), plain)
        suid = through(archive(("s", tarfile.REGTYPE, 0o6755, b"#!")), 100)
        with tarfile.open(fileobj=io.BytesIO(suid)) as t:       # checksum redone
            self.assertEqual(t.getmember("s").mode, 0o755)
        for kind, what in ((tarfile.FIFOTYPE, "a FIFO"), (tarfile.CHRTYPE, "character"),
                           (tarfile.BLKTYPE, "block")):
            for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
                with self.subTest(kind=kind, fmt=fmt):
                    bad = archive(("ok", tarfile.REGTYPE, 0o644, b"fine"),
                                  ("x/" + "q" * 200 + "-odd", kind, 0o644, b""), fmt=fmt)
                    with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                        through(bad, 333)
                    self.assertIn("q-odd", str(cm.exception))
                    self.assertIn(what, str(cm.exception))
        damaged = bytearray(plain)
        damaged[0] ^= 1
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            through(bytes(damaged), 512)
        self.assertIn("damaged", str(cm.exception))

    def test_a_transfer_never_replaces_the_jobs_own_files(self):
        res = os.path.join(self.tmp, "res")
        job = autoserv.ServerJob(res)
        self.addCleanup(autoserv.LOG.close)
        self.addCleanup(setattr, autoserv, "_JOB", None)
        h = self.sshd.host()
        job.record("GOOD", None, "mine", "the job's own line")
        own = {n: self.text(os.path.join(res, n)) for n in ("status.log", "keyval")}
        remote = self.tree(os.path.join(self.tmp, "client"),
                           {"status.log": "evil", "keyval": "evil=1", "debug/x": "evil",
                            "fine": "a result"})
        for backend in self.BACKENDS:
            for dest, kw in ((res, {}), (res + "/", {"delete_dest": True}),
                             (os.path.join(res, "keyval"), {})):
                with self.subTest(backend=backend, dest=dest, **kw):
                    need(backend)
                    source = os.path.join(remote, "keyval") if dest.endswith("keyval") \
                        else remote + "/"
                    with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                        h.get_file(source, dest, backend=backend, **kw)
                    self.assertIn(os.path.join(res, ""), str(cm.exception))
                    self.assertEqual({n: self.text(os.path.join(res, n))
                                      for n in own}, own)
                    self.assertFalse(os.path.exists(os.path.join(res, "debug", "x")))
                    self.assertFalse(os.path.exists(os.path.join(res, "fine")))
        h.get_file(remote + "/", os.path.join(res, "fetched"))       # a subdir is fine
        self.assertEqual(self.text(os.path.join(res, "fetched", "status.log")), "evil")
        # Autotest.run into the results dir: the client's results go to the
        # host's dir (as -c lays them out), the job's files stay the job's.
        at = autoserv.Autotest(h)
        at.install(h, autodir=os.path.join(self.tmp, "autodir"))
        self.assertTrue(at.run("job.run_test('sleeptest', seconds=0)", results_dir=res))
        self.assertEqual(self.text(os.path.join(res, "keyval")), own["keyval"])
        log = self.text(os.path.join(res, "status.log"))
        self.assertTrue(log.startswith(own["status.log"]), log)
        self.assertEqual(os.listdir(os.path.join(res, "debug")), ["autoserv.log"])
        self.assertTrue(os.path.isdir(os.path.join(res, "testhost", "sleeptest")),
                        str(os.listdir(res)))
        # A task's dir (cwd of a parallel task, with the task's status.log):
        # the client's tree merges in beside it, as -c has it.
        task = os.path.join(res, "task")
        os.mkdir(task)
        job.status = autoserv.StatusLog(os.path.join(task, "status.log"))
        job.record("GOOD", None, "task", "the task's own line")
        task_log = self.text(os.path.join(task, "status.log"))
        self.assertTrue(at.run("job.run_test('sleeptest', seconds=0)", results_dir=task))
        self.assertTrue(os.path.isdir(os.path.join(task, "sleeptest")))
        self.assertTrue(self.text(os.path.join(task, "status.log")).startswith(task_log))
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            h.get_file(os.path.join(remote, "status.log"), task + "/")
        self.assertIn(os.path.join(task, "status.log"), str(cm.exception))

    def test_local_names_that_look_like_options_are_only_names(self):
        work = os.path.join(self.tmp, "work")
        os.mkdir(work)
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(work)
        names = ["-e touch PWNED", "--rsh=touch PWNED", "-oProxyCommand=touch PWNED",
                 "host:PWNED"]
        for i, name in enumerate(names):
            with open(name, "w") as f:
                f.write(f"data {i}")
        os.mkdir("-dir")
        with open(os.path.join("-dir", "f"), "w") as f:
            f.write("in dir")
        h = self.sshd.host()
        remote = os.path.join(self.tmp, "remote")
        os.mkdir(remote)
        for backend in self.BACKENDS:
            with self.subTest(backend=backend):
                need(backend)
                out = os.path.join(remote, backend)
                h.send_file(names, out, backend=backend)
                h.send_file("-dir/", os.path.join(out, "contents"), backend=backend)
                self.assertEqual(self.contents(out),
                                 {n: f"data {i}" for i, n in enumerate(names)}
                                 | {"contents/f": "in dir"})
                for i, name in enumerate(names):
                    h.get_file(os.path.join(out, name), f"{name}.{backend}", backend=backend)
                    self.assertEqual(self.text(f"{name}.{backend}"), f"data {i}")
                h.get_file(os.path.join(out, "contents", "f"), f"-got-{backend}/",
                           backend=backend)
                self.assertEqual(self.text(f"-got-{backend}/f"), "in dir")
        pwned = [p for d in (work, self.sshd.home, remote)
                 for p in os.listdir(d) if p.startswith("PWNED")]
        self.assertEqual(pwned, [])
        self.assertFalse(os.path.exists(os.path.join(work, "host")))

    def test_scp_takes_an_explicit_user_and_port_both_ways(self):
        h = autoserv.SSHHost("127.0.0.1", user="root", port=self.sshd.port,
                             identity=self.sshd.client_key, known_hosts=self.sshd.known_hosts,
                             connect_timeout=5)
        src = self.tree(os.path.join(self.tmp, "src"), {"f": "one", "d/g": "two"})
        h.send_file(src + "/", os.path.join(self.tmp, "sent"), backend="scp")
        self.assertEqual(self.contents(os.path.join(self.tmp, "sent")), {"f": "one", "d/g": "two"})
        h.get_file(os.path.join(self.tmp, "sent", "d"), os.path.join(self.tmp, "back"),
                   backend="scp")
        self.assertEqual(self.contents(os.path.join(self.tmp, "back")), {"d/g": "two"})

    def test_a_flood_on_a_transfers_stderr_is_kept_as_its_tail(self):
        flood = ["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x >&2; echo LAST >&2; exit 3"]
        rc1, rc2, e1, e2 = autoserv._pipeline(flood, flood, 60, "flood")
        self.assertEqual((rc1, rc2), (3, 3))
        for text in (e1, e2):
            self.assertLessEqual(len(text), 1 << 16)
            self.assertTrue(text.endswith("LAST\n"))
        f = os.path.join(self.tmp, "in")
        open(f, "w").close()
        rc, err = autoserv._stream_file(f, flood, 60, "flood")
        self.assertEqual(rc, 3)
        self.assertLessEqual(len(err), 1 << 16)
        self.assertTrue(err.endswith("LAST\n"))

    def test_the_tar_scan_reads_numbers_and_pax_records_as_tar_does(self):
        # A stream the scan would read one way and GNU tar another: a global
        # pax size, or a size field Python's int() takes but tar does not.
        import tarfile

        def member(name, data=b"", kind=tarfile.REGTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data)
            return info, io.BytesIO(data) if data else None

        def stream(pax_headers=None):
            buf = io.BytesIO()
            fmt = tarfile.PAX_FORMAT if pax_headers else tarfile.GNU_FORMAT
            with tarfile.open(fileobj=buf, mode="w", format=fmt,
                              pax_headers=pax_headers or {}) as t:
                t.addfile(*member("a", b"x" * 512))
                t.addfile(*member("fifo", kind=tarfile.FIFOTYPE))
            return buf.getvalue()

        def judge(data):
            scan = autoserv._TarScan("get_file")
            return scan.feed(data)

        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            judge(stream({"size": "0"}))
        self.assertIn("global pax header", str(cm.exception))
        plain = bytearray(stream())
        with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
            judge(bytes(plain))
        self.assertIn("FIFO", str(cm.exception))
        for size in (b"+0001000\0\0\0\0", b"0_1000\0\0\0\0\0\0", b"00 1000\0\0\0\0\0"):
            with self.subTest(size=size):
                h = bytearray(plain[:512])
                h[124:136] = size
                h[148:156] = b"%06o\0 " % (sum(h[:148]) + 8 * 32 + sum(h[156:]))
                with self.assertRaises(autoserv.AutoservFileTransferError) as cm:
                    judge(bytes(h) + bytes(plain[512:]))
                self.assertIn("damaged tar header", str(cm.exception))


class TestHostileRun(SshdTestCase):
    """RELIABILITY.md's H2, H11 and H12 on the command path: the link cut at
    a chosen byte, a same-uid peer on the agent's socket sending garbage,
    forged markers, floods and escapes from the target."""

    relay_host = TestFaults.relay_host
    SHELLS = (["dash"], ["bash"], ["busybox", "ash"])     # the wrapper's shells

    def wrapper(self, shell, token, n, command, stdin, stderr=subprocess.PIPE, eof=True):
        """The remote wrapper run here under `shell` (argv list) as sshd would
        run it, fed stdin, then EOF at once (as on a cut) or only once it has
        ended (eof=False); (status, stderr bytes)."""
        proc = subprocess.Popen(shell + ["-c", autoserv._WRAPPER, "autoserv", token, str(n),
                                         command, "hostile-test"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        try:
            if eof:
                err = proc.communicate(stdin, timeout=15)[1]
            else:           # its stderr is small: it fits the pipe
                proc.stdin.write(stdin)
                proc.stdin.flush()
                proc.wait(15)
                err = proc.stderr.read()
                proc.stdin.close()
                proc.stderr.close()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode, err

    def test_wrapper_runs_nothing_on_short_or_unterminated_stdin(self):
        token = "0123456789abcdef"
        for shell in self.SHELLS:
            for name, stdin, runs in (("short", b"12345", False),
                                      ("no trailer", b"1234567890", False),
                                      ("wrong trailer", b"1234567890" + b"x" * 16, False),
                                      ("whole", b"1234567890" + token.encode(), True)):
                with self.subTest(shell=shell[-1], case=name):
                    need(shell[0])
                    got = os.path.join(self.tmp, "got")
                    status, err = self.wrapper(shell, token, 10, f"cat >{got}", stdin,
                                               eof=not runs)
                    if runs:
                        self.assertEqual(status, 0, err)
                        self.assertEqual(read_file(got, "rb"), b"1234567890")
                        self.assertIn(f"\x1e{token} e 0\n".encode(), err)
                        os.unlink(got)
                    else:
                        self.assertEqual(status, 125, err)
                        self.assertFalse(os.path.exists(got), "the command ran")
                        self.assertIn(f"\x1e{token} e 125\n".encode(), err)
                        self.assertIn(b"nothing ran", err)

    def test_wrapper_kills_its_command_when_the_channel_is_already_dead(self):
        # ssh's stdin at EOF and stderr with no reader: the link is gone just
        # as the command starts.  The wrapper's marker writes fail; its kill
        # must not depend on them.
        for shell in self.SHELLS:
            with self.subTest(shell=shell[-1]):
                need(shell[0])
                tag = "4252.%06d" % int.from_bytes(os.urandom(3), "big")     # ours alone
                r, w = os.pipe()
                os.close(r)
                try:
                    self.wrapper(shell, "0123456789abcdef", 0, f"sleep {tag}", b"", stderr=w)
                finally:
                    os.close(w)
                left = [p for p in comm_pids("sleep") if p in processes_with(tag)]
                for pid in left:
                    os.kill(pid, signal.SIGKILL)
                self.assertFalse(left, "the command outlived its wrapper")
                reap()

    @scenario(30)
    def test_link_cut_mid_stdin_runs_nothing_and_is_connection_lost(self):
        # H2: 8 MB of stdin, the link cut 2 MB into the upload; per command
        # and through the persistent agent.
        for persistent in (False, True):
            with self.subTest(persistent=persistent):
                relay, h = self.relay_host(CutRelay(self.sshd.port, 2 << 20, "up"),
                                           persistent=persistent)
                got, ran = os.path.join(self.tmp, "got"), os.path.join(self.tmp, "ran")
                t0 = time.monotonic()
                with self.assertRaises(autoserv.AutoservSSHConnectionLost):
                    h.run(f"cat >{got} && touch {ran}", stdin=os.urandom(8 << 20), timeout=60)
                self.assertLess(time.monotonic() - t0, 20)
                self.assertTrue(relay.was_cut())
                with self.assertRaises(AssertionError):     # give it 3 s to misbehave
                    wait_for(lambda: os.path.exists(got) or os.path.exists(ran), 3)
                self.assertEqual(h.run("echo back").stdout, "back\n")
                h.close()

    @scenario(30)
    def test_link_cut_mid_command_kills_the_remote_group(self):
        # The link cut (target to us) while the command runs and prints; a
        # child that ignores TERM is killed too, nothing tagged stays.
        for persistent in (False, True):
            with self.subTest(persistent=persistent):
                relay, h = self.relay_host(CutRelay(self.sshd.port, 256 << 10, "down"),
                                           persistent=persistent)
                h.run("true")
                tag = "4253.%06d" % int.from_bytes(os.urandom(3), "big")
                t0 = time.monotonic()
                with self.assertRaises(autoserv.AutoservSSHConnectionLost):
                    h.run(f"sh -c 'trap \"\" TERM; exec sleep {tag}' & "
                          "while :; do head -c 4096 /dev/zero; sleep 0.02; done", timeout=60)
                self.assertLess(time.monotonic() - t0, 20)
                self.assertTrue(relay.was_cut())
                wait_for(lambda: not [p for p in comm_pids("sleep") if p in processes_with(tag)],
                         10, what="the remote group killed")
                h.close()

    def test_a_bad_peer_on_the_agents_socket_loses_only_its_own_connection(self):
        # H11: garbage, an unknown kind, a huge length, bad requests, frames
        # out of order; meanwhile a command on the same agent goes on.
        h = self.sshd.host(persistent=True)
        agent = int(h.run("echo $PPID").stdout)
        path = os.path.join([p for _, p in h._tmp_dirs][0], "agent")
        import struct

        def frame(kind, body=b""):
            return struct.pack(">cI", kind, len(body)) + body
        ran = os.path.join(self.tmp, "ran")
        results = []
        slow = "8.%06d" % int.from_bytes(os.urandom(3), "big")
        other = threading.Thread(target=lambda: results.append(
            h.run(f"sleep {slow}; echo survived", timeout=60)))
        other.start()
        try:
            # The bad peers come while the other command runs on the agent.
            wait_for(lambda: processes_with(f"sleep {slow}"), 10, what="the other command running")
            for name, data in (
                    ("garbage", b"\x00\xff" * 50),
                    ("unknown kind", frame(b"Z", b"abc")),
                    ("huge length", b"I\xff\xff\xff\xff" + b"x" * 4096),
                    ("request not json", frame(b"R", b"{not json")),
                    ("request of the wrong shape", frame(b"R", b'{"c": 5}')),
                    ("stdin before a request", frame(b"I", b"data")),
                    ("more stdin than announced", frame(b"R", b'{"c": "true", "i": 1, "n": 1}')
                     + frame(b"I", b"two")),
                    ("less stdin than announced", frame(b"R", json.dumps(
                        {"c": f"touch {ran}", "i": 1, "n": 5}).encode())
                     + frame(b"I", b"abc") + frame(b"i"))):
                with self.subTest(peer=name), socket.socket(socket.AF_UNIX) as peer:
                    peer.settimeout(5)
                    peer.connect(path)
                    self.assertEqual(peer.recv(5), frame(b"H"), "no hello first")
                    peer.sendall(data)
                    self.assertEqual(peer.recv(64), b"", "the agent kept a bad peer")
            self.assertTrue(processes_with(f"sleep {slow}"), "the other command died with them")
        finally:
            other.join(60)
        self.assertEqual([r.stdout for r in results], ["survived\n"])
        self.assertEqual(int(h.run("echo $PPID").stdout), agent, "the agent was restarted")
        self.assertFalse(os.path.exists(ran), "a command ran on part of its stdin")
        # A peer that starts a command and hangs up: the command's group is
        # killed and the agent keeps no fd for it.
        fds = len(os.listdir(f"/proc/{agent}/fd"))
        tags = ["4254.%06d" % int.from_bytes(os.urandom(3), "big") for _ in range(3)]
        for tag in tags:        # one each: a peer hangs up once its own command runs
            with socket.socket(socket.AF_UNIX) as peer:
                peer.connect(path)
                peer.sendall(frame(b"R", json.dumps({"c": f"sleep {tag}"}).encode()))
                wait_for(lambda: processes_with(tag), 10, what="the peer's command started")
        wait_for(lambda: not any(processes_with(tag) for tag in tags), 10,
                 what="the peers' commands killed")
        wait_for(lambda: len(os.listdir(f"/proc/{agent}/fd")) <= fds, 5,
                 what=f"the agent back to {fds} fds")

    def test_a_slow_reader_and_a_stream_closing_mid_flood_do_not_kill_the_agent(self):
        # The agent stops reading a command's pipes while its client is slow
        # (1 MiB unsent); a pipe's EOF seen in the same select batch as the
        # pause was handled after it and unregistered the pipe a second time:
        # the agent died of a KeyError and the client saw "the persistent
        # session ended mid-command" (the flood test, once, under load).  A
        # peer that reads in small slow pieces while the command closes its
        # stderr in the middle of a stdout flood gets its whole output and
        # its exit status, from the same agent.
        h = self.sshd.host(persistent=True)
        agent = int(h.run("echo $PPID").stdout)
        path = os.path.join([p for _, p in h._tmp_dirs][0], "agent")
        import struct
        size = struct.calcsize(">cI")
        command = ("head -c 3000000 /dev/zero; echo x >&2; exec 2>&-; "
                   "head -c 3000000 /dev/zero")
        for attempt in range(12):       # the race is lost in about one try of four
            got = {b"O": 0, b"E": 0}
            status = None
            with socket.socket(socket.AF_UNIX) as peer:
                peer.settimeout(20)
                peer.connect(path)
                body = json.dumps({"c": command}).encode()
                peer.sendall(struct.pack(">cI", b"R", len(body)) + body)
                buf = b""
                while status is None:
                    piece = peer.recv(16384)
                    if not piece:
                        break
                    buf += piece
                    while len(buf) >= size:
                        kind, n = struct.unpack_from(">cI", buf)
                        if len(buf) < size + n:
                            break
                        if kind in got:
                            got[kind] += n
                        elif kind == b"X":
                            status = int(buf[size:size + n])
                        buf = buf[size + n:]
                    time.sleep(0.001)
            with self.subTest(attempt=attempt):
                self.assertEqual((status, got), (0, {b"O": 6000000, b"E": 2}))
        self.assertEqual(int(h.run("echo $PPID").stdout), agent, "the agent died")

    def stand_in_agent(self, serve_conn):
        """A stand-in agent on a local socket: `serve_conn(conn)` serves the
        one connection it accepts.  Returns the path and the serving thread."""
        path = tempfile.mktemp(prefix="agent-", dir=self.tmp)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)

        def serve():
            with listener, listener.accept()[0] as conn:
                conn.settimeout(20)
                serve_conn(conn)
        thread = threading.Thread(target=serve)
        thread.start()
        self.addCleanup(thread.join, 30)
        return path, thread

    def serve_agent(self, reply):
        """A stand-in agent that says its hello, reads the request and
        answers `reply`, then streams zeros after it until the client hangs
        up (or 64 MiB); returns the socket path and a dict the serving thread
        fills with how many bytes went out."""
        sent = {}

        def serve(conn):
                conn.sendall(b"H\0\0\0\0")
                conn.recv(65536)
                total = 0
                try:
                    conn.sendall(reply)
                    total = len(reply)
                    chunk = bytes(1 << 16)
                    while total < 64 << 20:
                        conn.sendall(chunk)
                        total += len(chunk)
                except OSError:
                    pass
                sent["bytes"] = total
        path, thread = self.stand_in_agent(serve)
        return path, sent, thread

    def test_the_client_judges_agent_frames_on_their_header_and_hangs_up(self):
        import struct
        for name, reply in (("huge output frame", b"O" + struct.pack(">I", 0xFFFFFFF0)),
                            ("unknown kind", b"Q" + struct.pack(">I", 4) + b"abcd"),
                            ("status not a number", b"X" + struct.pack(">I", 4) + b"boom")):
            with self.subTest(reply=name):
                path, sent, thread = self.serve_agent(reply)
                ex = autoserv._AgentExecution(path, "true", "norun", "stand-in", timeout=30)
                t0 = time.monotonic()
                ex.start()
                ex.wait()
                thread.join(30)
                self.assertLess(sent["bytes"], 8 << 20, "the client read on past a bad frame")
                self.assertLess(time.monotonic() - t0, 10)
                self.assertIsNone(ex.status)
                self.assertFalse(ex.timed_out)
                self.assertTrue(getattr(ex, "broken", None), "not said")

    def test_a_broken_agent_is_connection_lost_naming_why(self):
        import struct
        h = self.sshd.host(persistent=True)
        h.run("true")
        path, sent, thread = self.serve_agent(b"X" + struct.pack(">I", 5) + b"\x1b[2J!")
        real, h._agent["local"] = h._agent["local"], path
        try:
            with self.assertRaises(autoserv.AutoservSSHConnectionLost) as cm:
                h.run("true")
        finally:
            h._agent["local"] = real
        self.assertIn("protocol", str(cm.exception))
        self.assertNotIn("\x1b", str(cm.exception))

    def test_a_command_the_agent_may_have_started_is_never_sent_again(self):
        # A channel that ends before the agent's S frame is sent again only
        # when the agent cannot have read it: no hello came and the same
        # master still serves.  Each stand-in plays one ending.
        def hello_then_read(conn):           # the agent took it, then the link died
            conn.sendall(b"H\0\0\0\0")
            conn.recv(65536)

        def master_dies_with_the_reply(conn):  # its hello lost in a dying master
            conn.recv(65536)
            os.kill(h._master.pid, signal.SIGKILL)
            h._master.wait(10)

        def agent_gone(conn):                # the master's channel open failed
            pass
        for name, serve, started in (("hello, then the channel ends", hello_then_read, False),
                                     ("the master dies", master_dies_with_the_reply, False),
                                     ("no agent behind the master", agent_gone, True)):
            with self.subTest(ending=name):
                h = self.sshd.host(persistent=True)
                h.run("true")
                mark = os.path.join(self.tmp, f"ran-{len(os.listdir(self.tmp))}")
                path, thread = self.stand_in_agent(serve)
                h._agent["local"] = path
                if started:
                    h.run(f"echo once >> {mark}")
                    with open(mark) as f:
                        self.assertEqual(f.read(), "once\n")
                else:
                    with self.assertRaises(autoserv.AutoservSSHConnectionLost) as cm:
                        h.run(f"echo once >> {mark}")
                    self.assertIn("may have", str(cm.exception))
                    self.assertFalse(os.path.exists(mark), "sent a second time")
                thread.join(30)
                h.close()


    def test_a_flood_of_record_separators_costs_linear_time_and_stays_byte_exact(self):
        # H12: \x1e alone, partial prefixes and whole prefixes with no end.
        token = "0123456789abcdef"
        for name, unit in (("\\x1e", b"\x1e"), ("partial prefix", b"\x1e012345"),
                           ("prefix, no newline", f"\x1e{token} ".encode())):
            with self.subTest(flood=name):
                flood = unit * ((4 << 20) // len(unit))
                f = autoserv._MarkerFilter(token)
                t0 = time.monotonic()
                out = [f.feed(flood[i:i + 65536]) for i in range(0, len(flood), 65536)]
                out.append(f.feed(f"\x1e{token} e 3\n".encode()) + f.flush())
                self.assertLess(time.monotonic() - t0, 2)       # linear: about 0.1 s
                self.assertEqual(b"".join(out), flood)
                self.assertEqual(f.status, 3)
        h = self.sshd.host()
        t0 = time.monotonic()
        r = h.run("head -c 4000000 /dev/zero | tr '\\0' '\\036' >&2; printf '\\036x\\036' >&2",
                  timeout=60)
        self.assertLess(time.monotonic() - t0, 20)
        self.assertEqual(r.stderr, "\x1e" * 4000000 + "\x1ex\x1e")

    def test_a_late_forged_marker_from_a_background_child_changes_nothing(self):
        # The child reads the command's token where any process of the same
        # user can (the wrapper's command line) and prints an end marker
        # with another status after the command has ended.
        h = self.sshd.host()
        r = h.run("t=$(tr '\\0' '\\n' </proc/$PPID/cmdline | sed -n 5p); "
                  "(sleep 1; printf '\\036%s e 7\\n' \"$t\" >&2) & exit 3", ignore_status=True)
        self.assertEqual(r.exit_status, 3)
        self.assertRegex(r.stderr, "^\x1e[0-9a-f]{16} e 7\n$")

    def test_a_marker_of_an_earlier_command_is_plain_output(self):
        h = self.sshd.host()
        old = h.run("tr '\\0' '\\n' </proc/$PPID/cmdline | sed -n 5p").stdout.strip()
        self.assertRegex(old, "^[0-9a-f]{16}$")
        r = h.run(f"printf '\\036{old} e 9\\n\\036{old} s 1\\n' >&2; exit 4", ignore_status=True)
        self.assertEqual(r.exit_status, 4)
        self.assertEqual(r.stderr, f"\x1e{old} e 9\n\x1e{old} s 1\n")

    def test_escapes_from_the_target_are_neutralised_in_error_messages(self):
        h = self.sshd.host()
        loud = "printf 'boom\\033[2J\\033]0;title\\007\\233\\n' >&2; exit 1"
        with self.assertRaises(autoserv.AutoservRunError) as cm:
            h.run(loud)
        text = str(cm.exception)
        self.assertIn("boom^[[2J^[]0;title^G", text)
        self.assertFalse(re.search("[\x1b\x07\x9b]", text), text)
        # The CLI's own lines: an autoserv error, and any other exception
        # whose text came from the target.
        for body in (f"hosts.SSHHost('testhost').run({loud!r})\n",
                     "raise ValueError(hosts.SSHHost('testhost').run("
                     "\"printf 'x\\\\033[2J\\\\007'\").stdout)\n"):
            with self.subTest(control=body):
                ctl = os.path.join(self.tmp, "loud.control")
                with open(ctl, "w") as f:
                    f.write(body)
                out = run_cli(*self.sshd.cli_opts(), "-r", os.path.join(self.tmp, "res"),
                              "--overwrite", ctl)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertIn("^[[2J", out.stderr)
                self.assertFalse(re.search("[\x1b\x07\x9b]", out.stderr), out.stderr)


    def test_embedded_programs_parse_without_being_run(self):
        # The wrapper, as run (one line) and as written, under each shell.
        for shell in self.SHELLS:
            for form in ("_WRAPPER", "_WRAPPER_SH"):
                with self.subTest(shell=shell[-1], form=form):
                    need(shell[0])
                    out = subprocess.run(shell + ["-n", "-c", getattr(autoserv, form)],
                                         capture_output=True, text=True, timeout=10)
                    self.assertEqual((out.returncode, out.stderr), (0, ""))
        self.assertNotIn("\n", autoserv._WRAPPER)
        # The Python programs sent to targets, for the oldest python3 they
        # may meet there.
        import ast
        import shlex
        sha_words = shlex.split(autoserv._remote_sha256("/x"))
        programs = {"_AGENT_PY": autoserv._AGENT_PY, "_QMP_PY": autoserv._QMP_PY,
                    "_remote_sha256": sha_words[sha_words.index("-c") + 1]}
        for name, src in programs.items():
            with self.subTest(program=name):
                ast.parse(src, feature_version=(3, 6))
        # The programs' own functions are not listed as autoserv's.
        source = read_file(AUTOSERV)
        for program, known in ((autoserv._AGENT_PY, "guardian"), (autoserv._QMP_PY, "answer"),
                               (autoserv._CLIENT_ON_MACHINES, "_client_on")):
            tree = ast.parse(program)
            names = [n.name for n in tree.body
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            self.assertIn(known, names)
            for name in names:
                self.assertIsNone(re.search(rf"^(def|class) {name}\b", source, re.M), name)


class TestHostileInputs(unittest.TestCase):
    """Hostile or careless input (a BMC, a site file, packages, URLs, control
    files) stays inside the bounds the README's Security section states."""

    PASSWORD = "s3cret-bmc-9431"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-hostile-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def _recorder(self, seen, routes):
        """A request handler that records (path, Authorization) of every
        request in seen and answers from routes: path -> (code, headers, body)."""
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self):
                seen.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                code, headers, body = routes.get(self.path, (404, {}, {}))
                data = json.dumps(body).encode()
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            do_GET = do_POST = answer
        return Handler

    def test_redfish_never_sends_credentials_to_another_origin(self):
        elsewhere_seen, bmc_seen = [], []
        elsewhere = {"/redfish/v1/Systems": (200, {}, {"Members": []}),
                     "/redfish/v1/Systems/x": (200, {}, {"PowerState": "On"})}
        other_http, _ = serve_on_loopback(self, self._recorder(elsewhere_seen, elsewhere),
                                          self.tmp)
        other_https, cert = serve_on_loopback(
            self, self._recorder(elsewhere_seen, elsewhere), self.tmp, tls=True)
        routes = {}
        bmc, _ = serve_on_loopback(self, self._recorder(bmc_seen, routes), self.tmp,
                                   tls=True)
        cases = (("redirect to http, another port", other_http, "redirect"),
                 ("redirect to https, another port", other_https, "redirect"),
                 # Only the scheme differs: the same host and port, in clear.
                 ("redirect to http, the BMC's own port", bmc.replace("https:", "http:", 1),
                  "redirect"),
                 ("absolute @odata.id elsewhere", other_https, "odata"))
        for what, target, kind in cases:
            with self.subTest(what):
                elsewhere_seen.clear()
                if kind == "redirect":
                    routes["/redfish/v1/Systems"] = (
                        302, {"Location": target + "/redfish/v1/Systems"}, {})
                    bad = target + "/redfish/v1/Systems"
                else:
                    bad = target + "/redfish/v1/Systems/x"
                    routes["/redfish/v1/Systems"] = (200, {}, {"Members": [
                        {"@odata.id": bad}]})
                power = autoserv.RedfishPower(bmc, user="admin", password=self.PASSWORD,
                                              ca_file=cert)
                with self.assertRaises(autoserv.AutoservHostError) as cm:
                    power.status()
                self.assertIn(bad, str(cm.exception))
                if kind == "redirect":      # refused for where it leads, not failed there
                    self.assertIn("another origin", str(cm.exception))
                self.assertNotIn(self.PASSWORD, str(cm.exception))
                self.assertEqual(elsewhere_seen, [])
        # The BMC itself got the credentials: the refusal is about the origin.
        self.assertTrue(bmc_seen and all(a and a.startswith("Basic ") for _, a in bmc_seen))
        # A redirect within the BMC's origin is followed.
        routes["/redfish/v1/Systems"] = (301, {"Location": bmc + "/redfish/v1/Members"}, {})
        routes["/redfish/v1/Members"] = (200, {}, {"Members": [
            {"@odata.id": "/redfish/v1/Systems/x"}]})
        routes["/redfish/v1/Systems/x"] = (200, {}, {"PowerState": "On"})
        power = autoserv.RedfishPower(bmc, user="admin", password=self.PASSWORD,
                                      ca_file=cert)
        self.assertEqual(power.status(), "on")


    def _site_run(self, cwd, env=None):
        """The CLI run in cwd with a control file needing no machines: (result,
        whether the site file ran)."""
        ctl = os.path.join(self.tmp, "ctl")
        with open(ctl, "w") as f:
            f.write("print('control ran')\n")
        marker = os.path.join(self.tmp, "site-ran")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
        out = run_cli("-r", tempfile.mkdtemp(dir=self.tmp), ctl, cwd=cwd,
                      env=dict(os.environ, **(env or {})), timeout=60)
        return out, os.path.exists(marker)

    def _plant_site(self, directory, mode=0o644, dir_mode=0o700, uid=None):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, dir_mode)
        site = os.path.join(directory, "site_autoserv.py")
        with open(site, "w") as f:
            f.write(f"open({os.path.join(self.tmp, 'site-ran')!r}, 'w').close()\n")
        os.chmod(site, mode)
        if uid is not None:
            os.chown(site, uid, -1)
        return site

    def test_a_site_file_others_could_write_or_own_is_refused(self):
        cases = (("mode 666", dict(mode=0o666), "writable by group or others"),
                 ("mode 620", dict(mode=0o620), "writable by group or others"),
                 ("owned by uid 65534", dict(uid=65534), "owned by uid 65534"),
                 ("world-writable directory", dict(dir_mode=0o777), "its directory"))
        for n, (what, how, text) in enumerate(cases):
            with self.subTest(what):
                cwd = os.path.join(self.tmp, f"cwd{n}")
                site = self._plant_site(cwd, **how)
                out, ran = self._site_run(cwd)
                self.assertFalse(ran, "the planted site file ran")
                self.assertNotEqual(out.returncode, 0)
                self.assertIn(f"{site}: site file refused: {text}", out.stderr)
                self.assertNotIn("Traceback", out.stderr + out.stdout)
                self.assertNotIn("control ran", out.stdout)
        # Sticky world-writable (like /tmp), and the user's own: both run.
        for n, dir_mode in enumerate((0o1777, 0o755)):
            with self.subTest(dir_mode=oct(dir_mode)):
                cwd = os.path.join(self.tmp, f"ok{n}")
                self._plant_site(cwd, dir_mode=dir_mode)
                out, ran = self._site_run(cwd)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertTrue(ran)
                self.assertIn("control ran", out.stdout)

    def test_autoserv_site_skips_the_directory_check_but_not_the_file_check(self):
        cwd = os.path.join(self.tmp, "cwd")
        os.makedirs(cwd)
        site = self._plant_site(os.path.join(self.tmp, "shared"), dir_mode=0o777)
        out, ran = self._site_run(cwd, env={"AUTOSERV_SITE": site})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(ran)
        os.chmod(site, 0o666)
        out, ran = self._site_run(cwd, env={"AUTOSERV_SITE": site})
        self.assertFalse(ran)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(f"{site}: site file refused: writable by group or others",
                      out.stderr)
        self.assertNotIn("Traceback", out.stderr)


    # Crafted packages: written byte by byte here, so that what they hold is
    # exactly what the test says (no dpkg-deb or rpmbuild cleaning it up).
    @staticmethod
    def _tar(members):
        """An uncompressed tar: members are (name, data) or (name, None, target)
        for a symlink."""
        import tarfile
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data, *link in members:
                info = tarfile.TarInfo(name)
                if link:
                    info.type, info.linkname = tarfile.SYMTYPE, link[0]
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _deb(self, name, data_member="data.tar", data=None):
        """A .deb written as an ar archive by hand: a kernel package's shape
        with a chosen data member name and data tar."""
        control = self._tar([("./control", b"Package: hostile\nVersion: 1\n")])
        data = data or self._tar([("./boot/vmlinuz-1.0-hostile", b"\x7fELF")])
        out = io.BytesIO()
        out.write(b"!<arch>\n")
        for member, blob in (("debian-binary", b"2.0\n"), ("control.tar", control),
                             (data_member, data)):
            out.write(member.encode().ljust(16) + b"0".ljust(12) + b"0".ljust(6)
                      + b"0".ljust(6) + b"100644".ljust(8) + str(len(blob)).encode().ljust(10)
                      + b"`\n" + blob + b"\n" * (len(blob) & 1))
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(out.getvalue())
        return path

    @staticmethod
    def _rpm_header_blob(region, entries):
        """An RPM header structure: its region tag (62 signature, 63 main)
        first, as rpm requires, then entries (tag, type, value)."""
        import struct
        index, store = b"", b""
        for tag, kind, value in entries:
            if kind == 6:
                blob, count = value.encode() + b"\0", 1
            else:                                   # 8: string array
                blob, count = b"".join(v.encode() + b"\0" for v in value), len(value)
            index += struct.pack(">IIII", tag, kind, len(store), count)
            store += blob
        count = len(entries) + 1
        index = struct.pack(">IIII", region, 7, len(store), 16) + index
        store += struct.pack(">IIiI", region, 7, -16 * count, 16)
        return (b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">II", count, len(store))
                + index + store)

    def _rpm(self, name, members):
        """An .rpm (lead, empty signature, header, gzip'd newc payload) whose
        payload holds members: (name, data) or (name, None, target) symlinks."""
        import gzip
        payload = b""
        for n, (member, data, *link) in enumerate(members + [("TRAILER!!!", b"")]):
            data = link[0].encode() if link else data
            mode = 0o120777 if link else 0o100644
            fields = (n + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                      len(member.encode()) + 1, 0)
            payload += b"070701" + b"".join(b"%08X" % v for v in fields)
            payload += member.encode() + b"\0"
            payload += b"\0" * (-len(payload) % 4) + data
            payload += b"\0" * (-len(payload) % 4)
        lead = (b"\xed\xab\xee\xdb\x03\x00" + b"\0" * 72 + b"\x00\x05"  # header-style signature
                + b"\0" * 16)
        header = self._rpm_header_blob(63, [
            (1000, 6, "hostile"), (1001, 6, "1.0"), (1002, 6, "1"), (1022, 6, "x86_64"),
            (1027, 8, ["/boot/vmlinuz-1.0-hostile"]), (1124, 6, "cpio"),
            (1125, 6, "gzip")])
        sig = self._rpm_header_blob(62, [])
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(lead + sig + b"\0" * (-len(sig) % 8) + header + gzip.compress(payload))
        return path

    def _extract(self, cls, package):
        """cls().get(package).extract(a LocalHost that prints every command
        it runs) in a child whose working directory is a fresh dir: (stdout,
        that dir)."""
        cwd = tempfile.mkdtemp(dir=self.tmp, prefix="cwd-")
        code = textwrap.dedent("""\
            import sys
            sys.path.insert(0, sys.argv[1])
            import autoserv

            class Shown(autoserv.LocalHost):
                def run(self, command, *args, **kwargs):
                    print("RAN", command, flush=True)
                    return super().run(command, *args, **kwargs)
            k = getattr(autoserv, sys.argv[2])()
            k.get(sys.argv[3])
            try:
                print("EXTRACTED", k.extract(Shown()))
            except autoserv.AutoservError as e:
                print("ERROR", e)
            """)
        out = subprocess.run([sys.executable, "-c", code, HERE, cls, package], cwd=cwd,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout, cwd

    def test_a_deb_member_name_never_reaches_a_shell(self):
        deb = self._deb("name.deb", data_member="data.tar;>q;.tar")
        out, cwd = self._extract("DEBKernel", deb)
        self.assertEqual(os.listdir(cwd), [], out)
        self.assertNotIn("RAN", out)
        self.assertIn(f"ERROR {deb}: refused: member name 'data.tar;>q;.tar' is not a "
                      "plain file name", out)

    def test_package_members_outside_the_extraction_dir_are_refused(self):
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(outside)
        up = "../" * 30 + outside.lstrip("/")
        kernel = ("./boot/vmlinuz-1.0-hostile", b"\x7fELF")
        cases = (("absolute", [(outside + "/abs", b"x")], outside + "/abs"),
                 ("dot-dot", [(up + "/dotdot", b"x")], up + "/dotdot"),
                 ("through a symlink", [("./lnk", None, outside), ("./lnk/via-link", b"x")],
                  "./lnk/via-link"))
        for what, members, name in cases:
            for kind in ("RPMKernel", "DEBKernel"):
                with self.subTest(what, kind=kind):
                    shutil.rmtree(outside)
                    os.makedirs(outside)
                    if kind == "RPMKernel":
                        package = self._rpm(f"{what}.rpm", [kernel] + members)
                    else:
                        package = self._deb(f"{what}.deb", data=self._tar([kernel] + members))
                    out, _ = self._extract(kind, package)
                    self.assertEqual(os.listdir(outside), [], out)
                    self.assertNotIn("RAN", out)
                    self.assertIn(f"ERROR {package}: refused: the package writes {name!r}",
                                  out)
        # The same packages without the hostile members unpack (with the
        # target's tools: here, this machine's).
        for kind, package, tools in (("RPMKernel", self._rpm("good.rpm", [kernel]),
                                      ("rpm2cpio", "cpio")),
                                     ("DEBKernel", self._deb("good.deb",
                                                             data=self._tar([kernel])),
                                      ("tar",))):
            with self.subTest("well-formed", kind=kind):
                need(*tools)
                out, _ = self._extract(kind, package)
                self.assertIn("EXTRACTED", out)


    def test_an_unknown_install_keyword_is_refused_by_name_before_anything_is_sent(self):
        # Nothing listens on the host's port: anything sent before the
        # refusal would fail as a connection error instead.
        host = autoserv.SSHHost("127.0.0.1", port=refused_port(self.addCleanup), connect_timeout=2)
        self.addCleanup(host.close)
        member = ("./boot/vmlinuz-1.0-hostile", b"\x7fELF")
        for cls, package in ((autoserv.DEBKernel, self._deb("k.deb")),
                             (autoserv.RPMKernel, self._rpm("k.rpm", [member]))):
            with self.subTest(cls=cls.__name__):
                kernel = cls()
                kernel.get(package)
                with self.assertRaises(TypeError) as cm:
                    kernel.install(host, title="t", positon="start")
                self.assertIsInstance(cm.exception, autoserv.AutoservUsageError)
                text = str(cm.exception)
                self.assertIn(f"{cls.__name__}.install()", text)
                self.assertIn("'positon'", text)
                self.assertIn("position", text.split("'positon'", 1)[1])   # what it does take
                self.assertEqual(len(text.splitlines()), 1)
        self.assertEqual(host._tmp_dirs, [])

    def test_kvm_addresses_are_checked_before_any_command_runs(self):
        kvm = autoserv.KVM(autoserv.LocalHost())
        good = {"mac": "52:54:00:12:34:56", "ip": "192.168.122.10"}
        bad = (({"tap": "t0;reboot"}, "tap 't0;reboot' is not an interface name"),
               ({"tap": "a" * 16}, "is not an interface name"),
               ({"tap": "t0,script=/x"}, "is not an interface name"),
               ({"bridge": "br0 eth0"}, "bridge 'br0 eth0' is not an interface name"),
               ({"ip": "10.0.0.1; id"}, "is not an IPv4 or IPv6 address"),
               ({"ip": "10.0.0.300"}, "is not an IPv4 or IPv6 address"),
               ({"port": "22,hostfwd=tcp::1-:22"}, "is not 1-65535"),
               ({"port": 70000}, "is not 1-65535"),
               ({"mac": "52:54:00:12:34:56,x"}, "bad mac"))
        for change, text in bad:
            with self.subTest(change=change), \
                    self.assertRaises(autoserv.AutoservUsageError) as cm:
                kvm.install([good, dict(good, **change)], insert_modules=False)
            self.assertIn(text, str(cm.exception))
        self.assertFalse(kvm.installed)
        self.assertEqual(kvm.binary, None)
        self.assertEqual(autoserv.KVM._checked_address(dict(good, ip="::1", port="2222",
                                                            tap="ast1.x-2_y")),
                         dict(good, ip="::1", port=2222, tap="ast1.x-2_y"))
        self.assertEqual(autoserv._qemu_value("/run/a,b/serial.sock"), "/run/a,,b/serial.sock")

    def test_legacy_octal_fixer_leaves_float_exponents_alone(self):
        self.assertEqual(autoserv.translate_legacy("x = 1e-07\ny = 0755\nz = 2E+05\n"),
                         "x = 1e-07\ny = 0o755\nz = 2E+05\n")

    def test_get_of_a_file_url_is_that_files_content(self):
        path = os.path.join(self.tmp, "kernel config")
        with open(path, "w") as f:
            f.write("CONFIG_X=y\n")
        obj = autoserv.InstallableObject()
        import urllib.request
        got = obj.get("file://" + urllib.request.pathname2url(path))
        with open(got) as f:
            self.assertEqual(f.read(), "CONFIG_X=y\n")
        with self.assertRaises(autoserv.AutoservInstallError) as cm:
            obj.get("file://" + self.tmp + "/missing")
        self.assertIn("no such file", str(cm.exception))

    def test_credentials_in_a_url_are_used_but_never_shown(self):
        seen, elsewhere_seen = [], []
        routes = {"/k.deb": (200, {}, {"kernel": 1})}
        base, _ = serve_on_loopback(self, self._recorder(seen, routes), self.tmp)
        other, _ = serve_on_loopback(self, self._recorder(elsewhere_seen, routes), self.tmp)
        routes["/moved.deb"] = (302, {"Location": other + "/k.deb"}, {})
        log = os.path.join(self.tmp, "debug.log")
        autoserv.LOG.open(log)
        self.addCleanup(autoserv.LOG.close)
        secret = "pw-7781"
        with_creds = base.replace("http://", f"http://alice:{secret}@")
        for odd in (f"http://alice:{secret}/x@h/k.deb", f"http://alice:{secret}@x@h/k.deb"):
            self.assertNotIn(secret, autoserv._redact_url(f"fetching {odd} now"))
        obj = autoserv.InstallableObject()
        with open(obj.get(with_creds + "/k.deb")) as f:
            self.assertEqual(json.load(f), {"kernel": 1})
        import base64
        self.assertEqual(seen[-1][1], "Basic " + base64.b64encode(
            f"alice:{secret}".encode()).decode())
        for path, text in (("/missing.deb", "HTTP 404"), ("/moved.deb", "another origin")):
            with self.subTest(path), self.assertRaises(autoserv.AutoservInstallError) as cm:
                obj.get(with_creds + path)
            self.assertIn(text, str(cm.exception))
            self.assertIn("alice:***@", str(cm.exception))
            self.assertNotIn(secret, str(cm.exception))
        self.assertEqual(elsewhere_seen, [])
        with open(log) as f:
            logged = f.read()
        self.assertIn("alice:***@127.0.0.1", logged)
        self.assertNotIn(secret, logged)

    def test_control_srv_is_readable_by_its_owner_only(self):
        ctl = os.path.join(self.tmp, "ctl")
        with open(ctl, "w") as f:
            f.write("password = 'hunter2'\nprint('ran')\n")
        results = os.path.join(self.tmp, "results")
        out = run_cli("-r", results, ctl, cwd=self.tmp, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("ran", out.stdout)
        srv = os.path.join(results, "control.srv")
        self.assertEqual(os.stat(srv).st_mode & 0o777, 0o600)
        with open(srv) as f:
            self.assertIn("hunter2", f.read())


# Parallel and fan-out #########################################################

def _refuse_to_load():
    raise RuntimeError("this object refuses to load")


class _NeverLoads:
    """Pickles fine; loading it (in the job's process) raises."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _result_of_kind(kind):
    return {"lock": threading.Lock, "never loads": _NeverLoads}.get(kind, lambda: kind)()


def _unpicklable_failure(i):

    class Bad(Exception):
        def __init__(self):
            super().__init__("with a lock")
            self.lock = threading.Lock()
    if i == 17:
        raise Bad()
    return i * 2


class TestParallel(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-par-")
        self.addCleanup(shutil.rmtree, self.tmp)

    @scenario(19)
    def test_one_of_fifty_raising_an_unpicklable_exception_does_not_hang(self):
        t0 = time.monotonic()
        results = autoserv.parallel_simple(_unpicklable_failure, range(50), log=False,
                                           return_results=True)
        self.assertLess(time.monotonic() - t0, 60)
        self.assertIsInstance(results[17], autoserv.AutoservSubcommandError)
        self.assertIn("Bad: with a lock", str(results[17]))
        self.assertEqual([r for i, r in enumerate(results) if i != 17],
                         [i * 2 for i in range(50) if i != 17])
        with self.assertRaises(autoserv.AutoservSubcommandError) as cm:
            autoserv.parallel_simple(_unpicklable_failure, range(16, 19), log=False)
        self.assertIn("Bad: with a lock", str(cm.exception))
        self.assertIn("Traceback", str(cm.exception))

    def test_a_result_that_cannot_be_pickled_or_read_back_fails_its_task_alone(self):
        kinds = ["lock", "never loads", "fine"]
        results = autoserv.parallel_simple(_result_of_kind, kinds, log=False,
                                           return_results=True, timeout=60)
        self.assertEqual(results[2], "fine")
        self.assertIsInstance(results[0], autoserv.AutoservSubcommandError)
        self.assertIn("the task's result cannot be pickled", str(results[0]))
        self.assertIsInstance(results[1], autoserv.AutoservSubcommandError)
        self.assertIn("its result could not be read back: this object refuses to load",
                      str(results[1]))
        with self.assertRaises(autoserv.AutoservSubcommandError) as cm:
            autoserv.parallel_simple(_result_of_kind, kinds, log=False, timeout=60)
        self.assertIn("2 task(s) failed", str(cm.exception))

    def test_a_parallel_of_local_work_leaves_no_control_dir_behind(self):
        # parallel() makes the job's ssh control dir before it forks (tasks
        # share the masters they start); one no task used goes at its end.
        # (The script's TMPDIR, where the dir is made, is checked.)
        tmp = tempfile.mkdtemp(prefix="as-par-")
        self.addCleanup(shutil.rmtree, tmp)
        code = textwrap.dedent(f"""\
            import os, sys
            sys.path.insert(0, {HERE!r})
            import autoserv
            made = autoserv.parallel_simple(lambda n: autoserv._CTRL["dir"], [1], log=False,
                                            return_results=True)[0]
            print(made, autoserv._CTRL["dir"], flush=True)
            os._exit(0)             # no exit hook: only what parallel() did counts
            """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, TMPDIR=tmp))
        self.assertEqual(out.returncode, 0, out.stderr)
        made, after = out.stdout.split()
        self.assertEqual(os.path.dirname(made), tmp)
        self.assertEqual(after, "None")
        self.assertEqual(os.listdir(tmp), [])

    def test_a_control_dir_a_killed_job_left_goes_with_the_next_job(self):
        # SIGKILLed in a parallel() of local work: no master, so no watchdog,
        # and its control dir stays; the next job of this user removes it
        # (its owner is gone), and leaves a live job's alone.
        hold = textwrap.dedent(f"""\
            import sys, time
            sys.path.insert(0, {HERE!r})
            import autoserv

            def task(n):
                print(autoserv._CTRL["dir"], flush=True)
                time.sleep(600)
            autoserv.parallel_simple(task, [1], log=False)
            """)
        killed = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE,
                                  text=True, start_new_session=True)
        live = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        stale = alive = None
        try:
            # (a task's lines come prefixed with its name)
            stale, alive = (p.stdout.readline().split()[-1] for p in (killed, live))
            self.assertTrue(os.path.isdir(stale) and os.path.isdir(alive), (stale, alive))
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait(10)
            self.assertTrue(os.path.isdir(stale))
            nxt = textwrap.dedent(f"""\
                import sys
                sys.path.insert(0, {HERE!r})
                import autoserv
                autoserv.parallel_simple(lambda n: n, [1], log=False)
                """)
            out = subprocess.run([sys.executable, "-c", nxt], capture_output=True, text=True,
                                 timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertFalse(os.path.exists(stale), "the dead job's control dir is still there")
            self.assertTrue(os.path.isdir(alive), "a live job's control dir was removed")
        finally:
            for p in (killed, live):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
                p.stdout.close()
            if alive and os.path.isdir(alive):
                shutil.rmtree(alive, ignore_errors=True)

    def test_a_task_whose_output_file_cannot_be_opened_never_starts_nor_outlives_the_job(self):
        # Task b's debug/stdout is a directory (a results dir reused by hand):
        # the job stops with that error, and b never runs; it once ran on
        # forked, outside the job's reach, after the job had exited.
        ran = os.path.join(self.tmp, "ran")
        os.mkdir(ran)
        ctl = os.path.join(self.tmp, "c.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                import os, time
                os.makedirs("b/debug/stdout")
                def task(n):
                    time.sleep(1.5)
                    open(os.path.join({ran!r}, n), "w").close()
                parallel_simple(task, ["a", "b", "c"])
                """))
        out = run_cli("-r", os.path.join(self.tmp, "res"), ctl, timeout=60)
        self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
        self.assertIn("IsADirectoryError", out.stderr)
        self.assertIn("res/b/debug/stdout", out.stderr)
        time.sleep(3)           # b would have written its file by now
        self.assertEqual(os.listdir(ran), [])

    def test_a_task_reads_no_stdin_and_one_killed_by_a_signal_is_named_so(self):
        # The job's stdin stays open (a terminal, a pipe nobody closes): a
        # task that reads it gets end of file at once, never the job's input
        # (nor what the job's own sys.stdin had read ahead of it).
        code = textwrap.dedent(f"""\
            import os, signal, sys
            sys.path.insert(0, {HERE!r})
            import autoserv
            assert sys.stdin.readline() == "first\\n"
            def task(n):
                if n == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return sys.stdin.read(), os.read(0, 10)
            print(autoserv.parallel_simple(task, [1, 2], log=False, return_results=True))
            """)
        held, w = os.pipe()
        os.write(w, b"first\nsecond\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=held,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(held)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            os.close(w)
            proc.kill()
            proc.communicate()
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("[('', b''), AutoservSubcommandError(", out)
        self.assertIn("died without a result (signal 9, SIGKILL)", out)

    @scenario(20)
    def test_a_ten_megabyte_result_comes_back_intact(self):
        # (A bound: a result pipe that deadlocked would stop the task at 120 s
        # and fail the test, not hang it.)
        blob = os.urandom(10 << 20)
        results = autoserv.parallel([autoserv.subcommand(lambda: blob, [])], timeout=120,
                                    return_results=True)
        self.assertEqual(results[0], blob)

    def test_every_failed_task_is_named(self):
        def f(x):
            if x in ("b", "c"):
                raise ValueError(f"bad {x}")
            return x
        with self.assertRaises(autoserv.AutoservSubcommandError) as cm:
            autoserv.parallel([autoserv.subcommand(f, [x], subdir=None) for x in "abcd"])
        text = str(cm.exception)
        self.assertIn("2 task(s) failed", text)
        self.assertIn("ValueError: bad b", text)
        self.assertIn("ValueError: bad c", text)
        self.assertEqual(len(cm.exception.failures), 2)

    def test_timeout_stops_slow_tasks_and_says_so(self):
        t0 = time.monotonic()
        results = autoserv.parallel(
            [autoserv.subcommand(time.sleep, [s]) for s in (0, 600)], timeout=2,
            return_results=True)
        self.assertLess(time.monotonic() - t0, 15)
        self.assertIsNone(results[0])
        self.assertIn("timed out", str(results[1]))
        reap()
        self.assertFalse(our_children())

    def test_max_parallel_caps_concurrency(self):
        marks = os.path.join(self.tmp, "marks")

        def task(i):
            with open(marks, "a") as f:
                f.write(f"+{time.monotonic()}\n")
            time.sleep(0.3)
            with open(marks, "a") as f:
                f.write(f"-{time.monotonic()}\n")
        autoserv.parallel([autoserv.subcommand(task, [i]) for i in range(6)], max_parallel=2)
        events = sorted((float(l[1:]), l[0]) for l in read_file(marks).split())
        level = peak = 0
        for _, kind in events:
            level += 1 if kind == "+" else -1
            peak = max(peak, level)
        self.assertEqual(peak, 2)

    @scenario(22)
    def test_control_file_functions_and_closures_under_any_start_method(self):
        # Under every CPython 3.9+ this machine has, with warnings as errors
        # (3.12+ warns when a process with a thread alive forks); under each,
        # a fork hook also records any fork autoserv makes with a thread alive.
        for python in other_pythons():
            with self.subTest(python=python):
                self.closures_under(python)

    def closures_under(self, python):
        res = os.path.join(self.tmp, "res-" + os.path.basename(os.path.dirname(
            os.path.dirname(python))) + os.path.basename(python))
        threads = os.path.join(self.tmp, "forks-with-threads")
        ctl = os.path.join(self.tmp, "p.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                import multiprocessing, os, threading
                def thread_check():
                    if threading.active_count() > 1:
                        with open({threads!r}, "a") as f:
                            f.write("%d threads\\n" % threading.active_count())
                os.register_at_fork(before=thread_check)
                multiprocessing.set_start_method("spawn", force=True)
                factor = 3
                def make(n):
                    def inner(x):
                        return x * n * factor
                    return inner
                print "RESULTS", parallel_simple(make(2), [1, 2, 3], log=False, return_results=True)
                def f(x):
                    print "hello from", x
                    return x
                parallel_simple(f, ["alpha", "beta"])
                """))
        out = subprocess.run([python, "-W", "error", AUTOSERV, "-r", res, ctl],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("RESULTS [6, 12, 18]", out.stdout)
        self.assertIn("alpha : hello from alpha", out.stdout)
        self.assertFalse(os.path.exists(threads), "autoserv forked with a thread alive")
        self.assertEqual(read_file(os.path.join(res, "beta", "debug", "stdout")),
                         "hello from beta\n")
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertIn(("END GOOD", "alpha"), [(e["code"], e["subdir"]) for e in entries])
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(summary["hosts"]["alpha"]["outcome"], "GOOD")


class TestJobOutcome(unittest.TestCase):
    """A job's outcome is true through parallel(): what a task records counts
    as it would outside one, and each task's entries nest in its own group."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-out-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.res = os.path.join(self.tmp, "res")

    def job(self, text, env=None):
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(text))
        return run_cli("-r", self.res, ctl, timeout=120, env=env)

    def entries(self):
        return autoserv.parse_status_log(read_file(os.path.join(self.res, "status.log")))

    def summary(self):
        return json.loads(read_file(os.path.join(self.res, "summary.json")))

    def group(self, operation, subdir="----"):
        """The (START, body, END) entries of the one group named so."""
        entries = self.entries()
        start = next(i for i, e in enumerate(entries) if e["code"] == "START"
                     and e["operation"] == operation and e["subdir"] == subdir)
        end = next(i for i, e in enumerate(entries) if i > start and
                   e["code"].startswith("END ") and e["indent"] == entries[start]["indent"])
        return entries[start], entries[start + 1:end], entries[end]

    def test_a_task_that_records_fail_and_returns_fails_the_job_with_exit_3(self):
        out = self.job("""\
            def check(x):
                job.record("FAIL", None, "netperf", "throughput 0 on %s" % x)
            def fine(x):
                job.record("GOOD", None, "netperf", "ok")
            parallel([subcommand(check, ["a"]), subcommand(fine, ["b"])])
            print("control file went on")
            """)
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertIn("control file went on", out.stdout)
        start, body, end = self.group("check")
        self.assertEqual(end["code"], "END FAIL")
        self.assertEqual([(e["code"], e["message"]) for e in body],
                         [("FAIL", "throughput 0 on a")])
        self.assertEqual(self.group("fine")[2]["code"], "END GOOD")
        self.assertEqual(self.group("parallel")[2]["code"], "END FAIL")
        self.assertEqual(self.entries()[-1]["code"], "END FAIL")
        self.assertEqual(self.summary()["job"]["outcome"], "FAIL")

    def test_a_task_that_raises_fails_the_job_and_its_group(self):
        out = self.job("""\
            def boom():
                raise ValueError("kernel check failed")
            parallel([subcommand(boom, [])])
            """)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("kernel check failed", out.stderr)
        start, body, end = self.group("boom")
        self.assertEqual(end["code"], "END FAIL")
        self.assertIn("ValueError: kernel check failed", body[-1]["message"])
        self.assertEqual(self.group("parallel")[2]["code"], "END FAIL")
        self.assertEqual(self.summary()["job"]["outcome"], "FAIL")

    def test_a_task_that_recovers_with_warn_leaves_the_job_good(self):
        out = self.job("""\
            def flaky(host):
                job.record("WARN", None, "reboot", "needed a hard reset")
            parallel_simple(flaky, ["lab1", "lab2"])
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.group("flaky", "lab1")[2]["code"], "END WARN")
        self.assertEqual(self.group("parallel")[2]["code"], "END WARN")
        summary = self.summary()
        self.assertEqual(summary["job"]["outcome"], "GOOD")
        self.assertEqual(summary["hosts"]["lab1"]["outcome"], "WARN")
        self.assertIn("needed a hard reset", summary["hosts"]["lab1"]["error"])

    def test_return_results_still_counts_what_tasks_recorded(self):
        out = self.job("""\
            def check(x):
                if x == "bad":
                    job.record("ERROR", None, "mytest", "crashed")
                return x
            print("RESULTS", parallel_simple(check, ["good", "bad"], return_results=True))
            """)
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertIn("RESULTS ['good', 'bad']", out.stdout)
        hosts = self.summary()["hosts"]
        self.assertEqual((hosts["bad"]["outcome"], hosts["good"]["outcome"]), ("ERROR", "GOOD"))
        self.assertIn("crashed", hosts["bad"]["error"])

    def test_task_groups_nest_and_never_interleave(self):
        out = self.job("""\
            import time
            def chatty(name):
                for i in range(20):
                    job.record("INFO", None, "step", "%s %d" % (name, i))
                    time.sleep(0.01)
                def inner(x):
                    job.record("GOOD", None, "inner", x)
                parallel([subcommand(inner, [name + "-in"])])
            parallel_simple(chatty, ["alpha", "beta", "gamma"])
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        entries = self.entries()
        for name in ("alpha", "beta", "gamma"):
            start, body, end = self.group("chatty", name)
            self.assertEqual(start["message"], f"chatty on {name}")
            steps = [e["message"] for e in body if e["operation"] == "step"]
            self.assertEqual(steps, [f"{name} {i}" for i in range(20)])   # contiguous, whole
            self.assertTrue(all(e["indent"] == start["indent"] + 1 for e in body
                                if e["operation"] == "step"))
            inner = [e for e in body if e["operation"] == "inner"]
            self.assertEqual([e["message"] for e in inner], [f"{name}-in"])
            # chatty -> parallel -> inner task -> its GOOD: three levels deeper
            self.assertEqual(inner[0]["indent"], start["indent"] + 3)
        # Every END is one level shallower than the body it closes.
        depth = 0
        for e in entries:
            if e["code"].startswith("END "):
                depth -= 1
            self.assertEqual(e["indent"], depth, e)
            if e["code"] == "START":
                depth += 1
        self.assertEqual(depth, 0)
        self.assertFalse([n for n in os.listdir(os.path.join(self.res, "debug"))
                          if n.endswith(".status")])

    def test_line_breaks_in_a_tasks_messages_keep_the_log_whole(self):
        out = self.job("""\
            def odd(x):
                job.record("FAIL", None, "check", "carriage\\rreturn\\x85next\\u2028line")
                raise ValueError("bad\\rvalue")
            parallel([subcommand(odd, ["a"])], return_results=True)
            """)
        self.assertEqual(out.returncode, 3, out.stderr)
        start, body, end = self.group("odd")
        self.assertEqual(end["code"], "END FAIL")
        self.assertEqual([e["message"] for e in body][0],
                         r"carriage\rreturn\x85next\u2028line")
        # Not one line break of any reader (str.splitlines too) is left raw.
        raw = read_file(os.path.join(self.res, "status.log"), encoding="utf-8", newline="")
        self.assertEqual(len(raw.splitlines()), raw.count("\n"))
        self.assertEqual(self.summary()["job"]["outcome"], "FAIL")

    def test_a_hard_reset_is_recorded_in_the_status_log(self):
        # The power command is a local `true`: nothing is reset.
        out = self.job("""\
            h = hosts.LocalHost(power=power.CommandPower(cycle="true"))
            h.hardreset(wait=False)
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        resets = [e for e in self.entries() if e["operation"] == "hardreset"]
        self.assertEqual([e["code"] for e in resets], ["INFO"], self.entries())
        self.assertIn("localhost: hard reset through CommandPower", resets[0]["message"])

    def test_host_durations_are_the_wall_time_of_their_work(self):
        out = self.job("""\
            import time
            def work(host):
                time.sleep(0.6 if host == "slow" else 0.1)
            parallel_simple(work, ["slow", "fast"])
            hosts.LocalHost().run("sleep 0.4")
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        hosts = self.summary()["hosts"]
        self.assertGreaterEqual(hosts["localhost"]["duration"], 0.4)
        self.assertGreaterEqual(hosts["slow"]["duration"], 0.6)
        self.assertGreaterEqual(hosts["fast"]["duration"], 0.1)
        self.assertLess(hosts["fast"]["duration"], hosts["slow"]["duration"])

    def test_user_comes_from_the_password_database_without_user_or_logname(self):
        import pwd
        env = {k: v for k, v in os.environ.items() if k not in ("USER", "LOGNAME")}
        out = self.job("pass\n", env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.summary()["job"]["user"], pwd.getpwuid(os.getuid()).pw_name)

    def test_interrupted_tasks_close_their_groups_with_abort(self):
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent("""\
                import time
                def slow(host):
                    job.record("INFO", None, "step", "started")
                    print("READY")
                    time.sleep(60)
                parallel_simple(slow, ["lab1", "lab2"])
                """))
        proc = subprocess.Popen([sys.executable, AUTOSERV, "-r", self.res, ctl],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def started(host):      # the entry written, not just its file made
                path = os.path.join(self.res, host, "status.log")
                return os.path.exists(path) and "\tstarted" in read_file(path)
            wait_for(lambda: started("lab1") and started("lab2"), 30, what="both tasks started")
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.assertEqual(proc.returncode, 130)
        for host in ("lab1", "lab2"):
            start, body, end = self.group("slow", host)
            self.assertEqual(end["code"], "END ABORT")
            self.assertIn(("INFO", "started"), [(e["code"], e["message"]) for e in body])
        self.assertEqual(self.group("parallel")[2]["code"], "END ABORT")


class NamespaceHosts:
    """count hosts, each a network namespace on a private bridge with its own
    hostname (UTS namespace) and its own sshd, logging in as an unprivileged
    user.  Only these addresses are ever contacted.  USER may sudo to root
    without a password, PASSWORD_USER only with a password it does not have
    (a sudoers file of this fixture's, removed by close())."""
    USER = "astest"
    PASSWORD_USER = "astest2"

    def __init__(self, count):
        need_root()
        need("ip", "sshd", "unshare", "useradd")
        for user in (self.USER, self.PASSWORD_USER):
            if subprocess.run(["id", user], capture_output=True).returncode:
                sh("useradd", "-m", "-s", "/bin/sh", user)
                sh("usermod", "-p", "*", user)
        self.sudoers = None
        if os.path.isdir("/etc/sudoers.d"):
            # A name of its own: the test lanes run in pid namespaces of
            # their own, so a PID in the name is no more unique than one
            # fixture per lane, and one lane's close() removed another's
            # file (sudo ignores names holding a dot; mkstemp's have none).
            fd, self.sudoers = tempfile.mkstemp(prefix="autoserv-test-", dir="/etc/sudoers.d")
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.USER} ALL=(root) NOPASSWD: ALL\n"
                        f"{self.PASSWORD_USER} ALL=(root) ALL\n")
            os.chmod(self.sudoers, 0o440)
        self.dir = tempfile.mkdtemp(prefix="as-ns-")
        os.chmod(self.dir, 0o755)
        keys = Sshd.__new__(Sshd)
        keys.dir = self.dir
        self.host_key = keys.keygen("host_key")
        self.client_key = keys.keygen("client_key")
        auth = os.path.join(self.dir, "authorized_keys")
        shutil.copy(self.client_key + ".pub", auth)
        os.chmod(auth, 0o644)
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        tag = os.getpid() % 10000
        self.bridge = f"asbr{tag}"
        self.net = f"10.232.{os.getpid() % 250}"
        self.names, self.ns, self.procs, self.addrs = [], [], [], []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        try:
            for i in range(count):
                self._add(i, tag)
            for i, addr in enumerate(self.addrs):
                wait_for(lambda: self._listening(i, addr), 15, what=f"sshd in {self.ns[i]}")
        except BaseException:
            self.close()
            raise
        self.ssh_config = os.path.join(self.dir, "ssh_config")
        with open(self.ssh_config, "w") as f:
            for name, addr in zip(self.names, self.addrs):
                f.write(textwrap.dedent(f"""\
                    Host {name}
                        HostName {addr}
                        User {self.USER}
                        IdentityFile {self.client_key}
                        IdentitiesOnly yes
                        UserKnownHostsFile {self.known_hosts}
                        KexAlgorithms curve25519-sha256
                    """))

    def _add(self, i, tag):
        name = f"nshost{i + 1:02d}"
        ns = f"as{tag}n{i}"
        addr = f"{self.net}.{11 + i}"
        veth = f"as{tag}v{i}"
        sh("ip", "netns", "add", ns)
        self.ns.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge)
        sh("ip", "link", "set", veth, "up")
        for cmd in (["ip", "addr", "add", f"{addr}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", ns, *cmd)
        conf = os.path.join(self.dir, f"sshd_{i}")
        with open(conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                ListenAddress {addr}:22
                HostKey {self.host_key}
                PidFile {self.dir}/sshd_{i}.pid
                AuthorizedKeysFile {self.dir}/authorized_keys
                UsePAM no
                StrictModes no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                MaxStartups 100
                MaxSessions 100
                Subsystem sftp /usr/lib/openssh/sftp-server
                """))
        with open(conf + ".log", "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                 f"hostname {name} && exec /usr/sbin/sshd -D -e -f {conf}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        self.names.append(name)
        self.addrs.append(addr)

    def _listening(self, i, addr):
        if self.procs[i].poll() is not None:
            raise AssertionError("namespace sshd died: " + read_file(
                os.path.join(self.dir, f"sshd_{i}.log")))
        try:
            with socket.create_connection((addr, 22), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def link(self, i, state):
        sh("ip", "netns", "exec", self.ns[i], "ip", "link", "set", "eth0", state)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.sudoers:
            _remove_file(self.sudoers)


def _remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class TestFanOut(unittest.TestCase):
    """parallel_simple across sixteen network-namespace hosts."""

    @classmethod
    def setUpClass(cls):
        cls.hosts = NamespaceHosts(16)

    @classmethod
    def tearDownClass(cls):
        cls.hosts.close()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-fan-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def cli(self, text, *args, name="fan.control", timeout=120):
        ctl = os.path.join(self.tmp, name)
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(text))
        return run_cli("--ssh-config", self.hosts.ssh_config, *args, ctl, timeout=timeout)

    def test_uname_on_sixteen_hosts_gives_sixteen_result_dirs(self):
        res = os.path.join(self.tmp, "res")
        junit = os.path.join(self.tmp, "junit.xml")
        out = self.cli("""\
            def uname(name):
                h = hosts.SSHHost(name)
                print h.run("uname -n; uname -r").stdout
            parallel_simple(uname, machines)
            """, "-r", res, "--junit", junit, "-m", ",".join(self.hosts.names))
        self.assertEqual(out.returncode, 0, out.stderr)
        for name in self.hosts.names:
            self.assertIn(f"{name} : {name}\n", out.stdout)
            self.assertIn(os.uname().release, read_file(os.path.join(res, name, "debug", "stdout")))
            autoserv.parse_status_log(read_file(os.path.join(res, name, "status.log"))
                                      if os.path.exists(os.path.join(res, name, "status.log")) else "")
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(sorted(summary["hosts"]), sorted(self.hosts.names))
        self.assertTrue(all(v["outcome"] == "GOOD" for v in summary["hosts"].values()))
        import xml.etree.ElementTree as ET
        self.assertEqual(len(ET.parse(junit).getroot()), 16)

    def test_ad_hoc_command_runs_on_every_host_and_prints_a_table(self):
        names = self.hosts.names[:4]
        command = "test $(hostname) != nshost02 || { echo broken >&2; exit 4; }; hostname"
        res = os.path.join(self.tmp, "res")
        out = run_cli("--ssh-config", self.hosts.ssh_config, "-r", res, "-j", "2",
                      "-m", ",".join(names), "-e", command)
        self.assertEqual(out.returncode, 3, out.stderr)
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()}
        self.assertEqual(rows.pop("HOST"), ["HOST", "STATUS", "TIME", "OUTPUT"])
        self.assertEqual(sorted(rows), sorted(names))
        for name, row in rows.items():
            status, output = ("4", "broken") if name == "nshost02" else ("0", name)
            self.assertEqual((row[1], row[3]), (status, output), row)
            self.assertRegex(row[2], r"^\d+\.\d\ds$")
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual({n: v["outcome"] for n, v in summary["hosts"].items()},
                         {n: "FAIL" if n == "nshost02" else "GOOD" for n in names})
        self.assertIn(command, read_file(os.path.join(res, "control.srv")))
        self.assertIn("nshost02 FAIL AutoservRunError:", out.stderr.strip().splitlines()[-1])
        # --shard takes its share of the machines file, as any job does
        mf = os.path.join(self.tmp, "machines")
        with open(mf, "w") as f:
            f.write("\n".join(names) + "\n")
        out = run_cli("--ssh-config", self.hosts.ssh_config, "-r", os.path.join(self.tmp, "s"),
                      "-M", mf, "--shard", "1/2", "-e", "hostname")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([line.split()[:2] for line in out.stdout.splitlines()[1:]],
                         [[names[1], "0"], [names[3], "0"]])
        out = run_cli("-m", names[0], "-e", "true", os.path.join(self.tmp, "x.control"))
        self.assertEqual(out.returncode, 2)
        self.assertIn("-e runs one command on the machines", out.stderr)

    def test_sudo_runs_as_root_and_a_password_prompt_is_one_clear_error(self):
        need("sudo")
        self.addCleanup(Invariants().check, self)
        config = self.hosts.ssh_config
        plain = autoserv.SSHHost("nshost01", ssh_config=config)
        self.assertNotEqual(plain.run("id -u").stdout, "0\n")
        self.assertEqual(plain.run("id -u", sudo=True).stdout, "0\n")
        root = autoserv.SSHHost("nshost02", ssh_config=config, sudo=True)
        self.assertEqual(root.run("id -u; cat; echo", args=["x y"], stdin="in\n").stdout,
                         "0\nin\nx y\n")
        self.assertEqual(root.run("exit 7", ignore_status=True).exit_status, 7)
        self.assertNotEqual(root.run("id -u", sudo=False).stdout, "0\n")
        # a host in a parallel task, and one a task hands back, stays a sudo host
        self.assertEqual(autoserv.parallel_simple(lambda h: h.run("id -u").stdout, [root],
                                                  log=False, return_results=True), ["0\n"])
        back = autoserv.parallel_simple(lambda h: h, [root], log=False, return_results=True)[0]
        self.assertEqual(back.run("id -u").stdout, "0\n")
        # a timeout ends the command run as root, too
        with self.assertRaises(autoserv.AutoservTimeoutError) as cm:
            root.run("sleep 4252.1", timeout=1)
        self.assertEqual(cm.exception.result.command, "sleep 4252.1")
        wait_for(lambda: not remote_sleeps("4252.1"), 10, what="the root sleep gone")
        with self.assertRaises(autoserv.AutoservTimeoutError):      # one deaf to TERM
            root.run("trap '' TERM; sleep 4252.2", timeout=1)
        wait_for(lambda: not remote_sleeps("4252.2"), 10, what="the root sleep gone")
        # transfers place and fetch as root: a dir only root may enter
        private = tempfile.mkdtemp(prefix="as-root-only-")
        self.addCleanup(shutil.rmtree, private, True)
        os.chmod(private, 0o700)
        with self.assertRaises(autoserv.AutoservFileTransferError):
            plain.send_file(__file__, os.path.join(private, "plain"))
        root.send_file(__file__, os.path.join(private, "copy"))
        self.assertEqual(os.stat(os.path.join(private, "copy")).st_uid, 0)
        back = os.path.join(self.tmp, "back")
        root.get_file(os.path.join(private, "copy"), back)
        with open(back, "rb") as a, open(__file__, "rb") as b:
            self.assertEqual(a.read(), b.read())
        with self.assertRaises(autoserv.AutoservUsageError):
            root.send_file(__file__, os.path.join(private, "x"), backend="scp")
        # a sudo that wants a password: one error, at once
        asks = autoserv.SSHHost("nshost03", user=NamespaceHosts.PASSWORD_USER,
                                ssh_config=config)
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            asks.run("id -u", sudo=True, ignore_status=True)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertIn("nshost03: sudo -n would not run the command as root "
                      "(sudo: a password is required;", str(cm.exception))

    def watch_control(self, text):
        ctl = os.path.join(self.tmp, "watch.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(text))
        return ctl

    def test_on_a_terminal_the_live_view_redraws_a_row_per_host_to_its_final_state(self):
        names = self.hosts.names[:4]
        ctl = self.watch_control("""\
            def work(name):
                h = hosts.SSHHost(name)
                job.record("START", None, "warmup")
                h.run("sleep 1.2")
                job.record("END GOOD", None, "warmup")
                job.record("START", None, "soak")
                h.run("sleep 1.2; echo soaked on $(uname -n)", stdout_tee=sys.stdout)
                if name.endswith("2"):
                    job.record("FAIL", None, "soak", "it broke")
                job.record("END GOOD", None, "soak")
            import sys
            parallel_simple(work, machines)
            """)
        res = os.path.join(self.tmp, "res")
        status, text = run_in_pty("--ssh-config", self.hosts.ssh_config, "-r", res,
                                  "-m", ",".join(names), ctl)
        self.assertEqual(status, 3, text)
        frames = live_view_frames(text)
        self.assertGreater(len(frames), 3, text)
        self.assertTrue(all(len(f) == len(names) for f in frames), frames)
        # In place: each redraw first moves up over exactly the rows drawn.
        self.assertEqual(set(re.findall(r"\x1b\[(\d+)A", text)), {str(len(names))}, text)
        for row, name in enumerate(names):
            mine = [f[row] for f in frames]
            self.assertTrue(all(r.startswith(name + " ") for r in mine), mine)
            self.assertTrue(any(" running " in r and "warmup" in r for r in mine), mine)
            self.assertTrue(any(" running " in r and "soak" in r for r in mine), mine)
            final = "FAIL" if name.endswith("2") else "GOOD"
            self.assertIn(f" {final} ", frames[-1][row])
            self.assertIn(f"soaked on {name}", frames[-1][row])
        # The output went to the hosts' files, not as prefixed lines.
        self.assertNotIn(f"{names[0]} : soaked", text)
        self.assertIn(f"soaked on {names[0]}",
                      read_file(os.path.join(res, names[0], "debug", "stdout")))

    def test_ctrl_c_under_the_live_view_stops_every_task_and_leaves_the_final_rows(self):
        names = self.hosts.names[:3]
        ctl = self.watch_control("""\
            def work(name):
                hosts.SSHHost(name).run("sleep 41.25")
            parallel_simple(work, machines)
            """)
        t0 = time.monotonic()
        status, text = run_in_pty(
            "--ssh-config", self.hosts.ssh_config, "-r", os.path.join(self.tmp, "res"),
            "-m", ",".join(names), ctl, timeout=60,
            interrupt_when=lambda text: len([p for p in comm_pids("sleep")
                                             if p in processes_with("41.25")]) >= 3)
        self.assertEqual(status, 130, text)
        self.assertLess(time.monotonic() - t0, 35)
        last = live_view_frames(text)[-1]
        self.assertEqual([row.split()[:2] for row in last], [[n, "ABORT"] for n in names])
        wait_for(lambda: not processes_with("41.25"), 15, what="the remote sleeps ending")

    def test_off_a_terminal_parallel_output_stays_prefixed_lines(self):
        names = self.hosts.names[:2]
        ctl = self.watch_control("""\
            def work(name):
                print(hosts.SSHHost(name).run("uname -n").stdout.strip())
            parallel_simple(work, machines)
            """)
        out = run_cli("--ssh-config", self.hosts.ssh_config, "-r",
                      os.path.join(self.tmp, "res"), "-m", ",".join(names), ctl,
                      env=dict(os.environ, TERM="xterm"))
        self.assertEqual(out.returncode, 0, out.stderr)
        for name in names:
            self.assertIn(f"{name} : {name}\n", out.stdout)
        self.assertNotIn("\x1b[", out.stdout + out.stderr)
        # TERM=dumb on a terminal: the same prefixed lines, no redraw.
        status, text = run_in_pty("--ssh-config", self.hosts.ssh_config, "-r",
                                  os.path.join(self.tmp, "res2"), "-m", ",".join(names), ctl,
                                  term="dumb")
        self.assertEqual(status, 0, text)
        self.assertNotIn("\x1b[", text)
        for name in names:
            self.assertIn(f"{name} : {name}", text)

    def test_off_a_terminal_a_wait_prints_a_plain_progress_line_each_interval(self):
        name = self.hosts.names[0]
        ctl = self.watch_control("""\
            h = hosts.SSHHost(machines[0])
            print("went down:", h.wait_down(timeout=4.5))
            """)
        env = dict(os.environ, AUTOSERV_PROGRESS_EVERY="1")
        out = run_cli("--ssh-config", self.hosts.ssh_config, "-r",
                      os.path.join(self.tmp, "res"), "-m", name, ctl, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "went down: False\n")
        lines = [l for l in out.stderr.splitlines() if "going down" in l]
        self.assertTrue(3 <= len(lines) <= 5, out.stderr)
        seconds = [int(re.fullmatch(rf"autoserv: {name}: going down (\d+) s / 4 s", l).group(1))
                   for l in lines]
        self.assertEqual(seconds, sorted(seconds))
        self.assertEqual(len(set(seconds)), len(seconds))
        self.assertNotIn("\r", out.stderr)
        # -q: none of it.
        quiet = run_cli("-q", "--ssh-config", self.hosts.ssh_config, "-r",
                        os.path.join(self.tmp, "res2"), "-m", name, ctl, env=env)
        self.assertEqual(quiet.returncode, 0, quiet.stderr)
        self.assertNotIn("going down", quiet.stderr)

    def test_on_a_terminal_a_wait_is_one_line_redrawn_then_cleared(self):
        name = self.hosts.names[0]
        ctl = self.watch_control("""\
            h = hosts.SSHHost(machines[0])
            print("went down:", h.wait_down(timeout=2.5))
            """)
        status, text = run_in_pty("--ssh-config", self.hosts.ssh_config, "-r",
                                  os.path.join(self.tmp, "res"), "-m", name, ctl)
        self.assertEqual(status, 0, text)
        draws = re.findall(rf"\r\x1b\[Kautoserv: {name}: going down (\d+) s / 2 s", text)
        self.assertGreaterEqual(len(draws), 3, repr(text))
        # Cleared at the end: the next output starts on a blank line.
        self.assertIn("\r\x1b[Kwent down: False", text)

    def test_on_a_terminal_a_big_send_file_shows_its_bytes_and_rate(self):
        name = self.hosts.names[0]
        big = os.path.join(self.tmp, "big")
        with open(big, "wb") as f:          # sparse here; 2 GiB on the wire
            f.truncate(2 << 30)
        os.chmod(self.tmp, 0o755)
        ctl = self.watch_control(f"""\
            h = hosts.SSHHost(machines[0])
            d = h.get_tmp_dir()
            h.send_file({big!r}, d + "/big")
            print("size", h.run("stat -c %s " + d + "/big").stdout.strip())
            """)
        status, text = run_in_pty("--ssh-config", self.hosts.ssh_config, "-r",
                                  os.path.join(self.tmp, "res"), "-m", name, ctl, timeout=300)
        self.assertEqual(status, 0, text)
        self.assertIn(f"size {2 << 30}", text)
        rates = re.findall(rf"\r\x1b\[Kautoserv: {name}: send_file \d+ s, ([\d.]+) (MiB|GiB) "
                           r"of 2\.0 GiB at ([\d.]+) [MG]iB/s", text)
        self.assertTrue(rates, repr(text[-2000:]))
        sizes = [float(n) * (1024 if unit == "GiB" else 1) for n, unit, _ in rates]
        self.assertEqual(sizes, sorted(sizes))
        self.assertLessEqual(sizes[-1], 2048 * 1.01)
        self.assertTrue(all(float(rate) > 0 for _, _, rate in rates))

    def test_a_silent_command_gets_exactly_the_expected_stall_warnings(self):
        name = self.hosts.names[0]
        ctl = self.watch_control("""\
            h = hosts.SSHHost(machines[0])
            r = h.run("sleep 5.5")
            print(repr(r.stdout), repr(r.stderr))
            h.run("sleep 3", stall_warn=0)
            h.run("for i in 1 2 3 4 5; do echo $i; sleep 1; done")
            """)
        for how in ([], ["--persistent"]):     # its own ssh session; the agent
            with self.subTest(how=how):
                res = os.path.join(self.tmp, "res" + "".join(how))
                out = run_cli("--stall-warn", "2", *how, "--ssh-config", self.hosts.ssh_config,
                              "-r", res, "-m", name, ctl)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout, "'' ''\n")
                warnings = [l for l in out.stderr.splitlines() if "stall" in l]
                self.assertEqual(warnings, [
                    f"autoserv: stall: {name}: 'sleep 5.5' has printed nothing for {n} s; "
                    "still running (stall warning after 2 s)" for n in (2, 4)], out.stderr)
                log = read_file(os.path.join(res, "debug", "autoserv.log"))
                self.assertEqual(log.count("stall: "), 2, log)

    def test_one_host_partitioned_mid_run_the_others_complete(self):
        res = os.path.join(self.tmp, "res")
        victim = 5
        ctl = os.path.join(self.tmp, "part.control")
        victim_name = self.hosts.names[victim]
        # The victim's command goes on long after its link is cut (a tail
        # of its own), so that its end once the link is back is autoserv's
        # doing, not the command's.
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                def work(name):
                    tail = "; sleep 424.95" if name == {victim_name!r} else ""
                    hosts.SSHHost(name).run("sleep 4.2495; uname -r" + tail)
                parallel_simple(work, machines)
                """))

        def tails():
            return [x for x in comm_pids("sleep") if x in processes_with("424.95")]
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, AUTOSERV, "--ssh-config", self.hosts.ssh_config,
                              "--ssh-option", "ServerAliveInterval=1",
                              "--ssh-option", "ServerAliveCountMax=3",
                              "-r", res, "-m", ",".join(self.hosts.names), ctl],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len([x for x in comm_pids("sleep")
                                  if x in processes_with("4.2495")]) >= 16, 30,
                     what="sixteen remote sleeps")
            self.hosts.link(victim, "down")
            _, err = p.communicate(timeout=60)
            wait_for(tails, 10, what="the victim's command going on behind the cut")
        finally:
            self.hosts.link(victim, "up")
        took = time.monotonic() - t0
        self.assertEqual(p.returncode, 1, err)
        self.assertIn(f"{victim_name}", err)
        self.assertIn("AutoservSSHConnectionLost", err)
        self.assertLess(took, 4.25 + 1 * (3 + 1) + 10 + 5)
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        outcomes = {k: v["outcome"] for k, v in summary["hosts"].items()}
        self.assertEqual(outcomes.pop(victim_name), "FAIL")
        self.assertEqual(set(outcomes.values()), {"GOOD"})
        self.assertEqual(len(outcomes), 15)
        wait_for(lambda: not tails(), 30, what="partitioned host's job gone once the link is back")

    def test_seed_parallel_shapes_subcommand_and_exec_global(self):
        res = os.path.join(self.tmp, "res")
        out = self.cli("""\
            class Package:
                def install(self, host):
                    host.run("touch /tmp/never-installed")
            def check_kernel(host, version, package):
                if host.run("uname -r").stdout.strip() != version:
                    package.install(host)
                    host.reboot()
                return host.hostname

            class FakeKVM:
                def __init__(self, host):
                    self.host = host
                def get(self, source):
                    self.source = source
                def install(self, addresses):
                    self.addresses = addresses

            def install_kvm(kvm_on_host_var_name, host, source, addresses):
                exec ("global %(var_name)s\\n"
                      "%(var_name)s= FakeKVM(host)\\n"
                      "%(var_name)s.get(source)\\n"
                      "%(var_name)s.install(addresses)\\n" % {"var_name": kvm_on_host_var_name})

            remote_host1= hosts.SSHHost("nshost01")
            remote_host2= hosts.SSHHost("nshost02")
            kernel = Package()
            host1_command= subcommand(check_kernel, [remote_host1, os.uname()[2], kernel])
            host2_command= subcommand(check_kernel, [remote_host2, os.uname()[2], kernel])
            parallel([host1_command, host2_command])
            install_kvm("kvm_on_remote_host1", remote_host1, "/var/local/src/kvm-33.tar.gz",
                        [{"mac": "02:00:00:00:00:01", "ip" : "10.0.0.1"}])
            print "KVM", kvm_on_remote_host1.host.hostname, kvm_on_remote_host1.source
            """, "-r", res)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("KVM nshost01 /var/local/src/kvm-33.tar.gz", out.stdout)
        self.assertFalse(os.path.exists("/tmp/never-installed"))

    @scenario(21, 30)
    def test_sigint_or_sigterm_stops_every_task_ssh_and_remote_job(self):
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with self.subTest(sig=sig.name):
                tag = f"4250.{code}"
                res = os.path.join(self.tmp, f"res{code}")
                ctl = os.path.join(self.tmp, "stop.control")
                with open(ctl, "w") as f:
                    f.write(f"parallel_simple(lambda n: hosts.SSHHost(n).run('sleep {tag}'),"
                            " machines)\n")
                p = subprocess.Popen([sys.executable, AUTOSERV, "--ssh-config",
                                      self.hosts.ssh_config, "-r", res,
                                      "-m", ",".join(self.hosts.names[:4]), ctl],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                wait_for(lambda: len([x for x in comm_pids("sleep")
                                      if x in processes_with(tag)]) == 4, 30, what="remote sleeps")
                t0 = time.monotonic()
                p.send_signal(sig)
                p.communicate(timeout=30)
                self.assertEqual(p.returncode, code)
                self.assertLess(time.monotonic() - t0, 10)
                wait_for(lambda: not [x for x in comm_pids("sleep") if x in processes_with(tag)],
                         10, what="remote jobs gone")
                self.assertFalse([x for x in processes_with(res) if x != p.pid])
                fixtures = {proc.pid for proc in self.hosts.procs}

                def clean():
                    reap()     # orphans of the remote side are reparented to us
                    return not [k for k in our_children() if k[0] not in fixtures]
                wait_for(clean, 10, what="no process of the run left")
                entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
                self.assertIn("ABORT", [e["code"] for e in entries])
                # The job itself, not only its tasks, ends as aborted.
                job = [e["code"] for e in entries if e["operation"] == "autoserv"]
                self.assertEqual(job[-2:], ["ABORT", "END ABORT"], job)
                Invariants.check_status(self, os.path.join(res, "status.log"))


class TestLibrary(unittest.TestCase):
    """autoserv imported by a plain Python program, no job and no CLI, against
    namespace hosts: the example script, what a script leaves when it dies,
    the logging tree."""

    @classmethod
    def setUpClass(cls):
        cls.hosts = NamespaceHosts(3)
        # A host whose address answers but whose port refuses: unreachable.
        with open(cls.hosts.ssh_config, "a") as f:
            f.write(f"Host deadhost\n    HostName {cls.hosts.addrs[0]}\n    Port 1\n")

    @classmethod
    def tearDownClass(cls):
        cls.hosts.close()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-lib-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.before = _autoserv_paths()
        self.tmp_before = {n for n in os.listdir(tempfile.gettempdir())
                           if n.startswith("autoserv-")}
        self.fixtures = {proc.pid for proc in self.hosts.procs}

    def write_script(self, text):
        """text as a program importing autoserv (as a vendored copy is)."""
        path = os.path.join(self.tmp, "script.py")
        with open(path, "w") as f:
            f.write(f"import signal, sys\nsys.path.insert(0, {HERE!r})\nimport autoserv\n"
                    f"autoserv.set_ssh_defaults(ssh_config={self.hosts.ssh_config!r})\n"
                    + textwrap.dedent(text))
        return path

    def script(self, text, *args, timeout=120):
        """Runs text as a program importing autoserv."""
        return subprocess.run([sys.executable, self.write_script(text), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.tmp)

    def sleeping_script(self, text, tag):
        """Starts text, a script ending in a remote sleep that has tag in its
        command line; returns its Popen once the sleep runs on the host."""
        p = subprocess.Popen([sys.executable, self.write_script(text)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.tmp)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        wait_for(lambda: [x for x in comm_pids("sleep") if x in processes_with(tag)],
                 30, what="the remote sleep")
        return p

    def assert_nothing_left(self):
        """From outside the script: no process of it (reparented to us, the
        subreaper), no remote process of its commands, no temp dir, control
        dir or socket of autoserv's."""
        def left():
            reap()
            return [k for k in our_children() if k[0] not in self.fixtures
                    and k[0] != own_watchdog()]
        try:
            wait_for(lambda: not left(), 10, what="no process of the script left")
        except AssertionError:
            raise AssertionError(f"processes of the script left: {left()}") from None
        wait_for(lambda: not processes_with("AUTOSERV_RUN_ID="), 10,
                 what="no remote process of the script left")
        self.assertEqual(_autoserv_paths() - self.before, set())
        self.assertEqual({n for n in os.listdir(tempfile.gettempdir())
                          if n.startswith("autoserv-")} - self.tmp_before, set())

    def test_the_fanout_example_prints_every_hosts_answer_and_writes_a_results_dir(self):
        example = os.path.join(HERE, "examples", "library_fanout.py")
        res = os.path.join(self.tmp, "res")
        out = subprocess.run([sys.executable, example, "--ssh-config", self.hosts.ssh_config,
                              "--results", res, *self.hosts.names], capture_output=True,
                             text=True, timeout=120, cwd=self.tmp)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stderr, "")
        release = os.uname().release
        self.assertEqual(out.stdout.splitlines(), [f"{n:20} {n} {release}"
                                                   for n in self.hosts.names])
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(summary["job"]["outcome"], "GOOD")
        self.assertEqual({n: v["outcome"] for n, v in summary["hosts"].items()},
                         {n: "GOOD" for n in self.hosts.names})
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertEqual([e["code"] for e in entries if e["operation"] == "parallel"],
                         ["START", "END GOOD"])
        for name in self.hosts.names:
            self.assertTrue(os.path.isdir(os.path.join(res, name)), name)
        self.assertIn(b"run: uname -n -r", read_file(os.path.join(res, "debug", "autoserv.log"),
                                                 "rb"))
        # A host that cannot be reached is told apart by its class; exit 1.
        out = subprocess.run([sys.executable, example, "--ssh-config", self.hosts.ssh_config,
                              "--command", "exit 3", self.hosts.names[0], "deadhost"],
                             capture_output=True, text=True, timeout=120, cwd=self.tmp)
        self.assertEqual(out.returncode, 1, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[0], f"{self.hosts.names[0]:20} failed: exit status 3")
        self.assertRegex(lines[1], r"^deadhost +unreachable: deadhost: connection refused")
        self.assertEqual(os.listdir(self.tmp), ["res"])     # no job: no task subdirs
        self.assert_nothing_left()

    def test_a_script_that_raises_midway_leaves_no_process_socket_or_temp_dir(self):
        for persistent in (False, True):
            with self.subTest(persistent=persistent):
                out = self.script(f"""\
                    h = autoserv.SSHHost("nshost01", persistent={persistent})
                    g = autoserv.SSHHost("nshost02")
                    d = h.get_tmp_dir()
                    h.run("touch " + d + "/file")
                    g.run("true")
                    local = autoserv.get_tmp_dir()
                    print(d, local, flush=True)
                    raise RuntimeError("mid-way")
                    """)
                self.assertEqual(out.returncode, 1)
                self.assertIn("RuntimeError: mid-way", out.stderr)
                remote, local = out.stdout.split()
                self.assertFalse(os.path.exists(remote))
                self.assertFalse(os.path.exists(local))
                self.assert_nothing_left()

    def test_with_blocks_close_hosts_and_close_all_ends_the_rest(self):
        out = self.script("""\
            import os, stat
            ctrl = autoserv._ctrl_dir()
            def masters():
                return [n for n in os.listdir(ctrl)
                        if stat.S_ISSOCK(os.lstat(os.path.join(ctrl, n)).st_mode)]
            with autoserv.SSHHost("nshost01") as h:
                h.run("true")
                print("in", len(masters()))
            try:
                with autoserv.SSHHost("nshost02") as g:
                    g.run("true")
                    raise KeyError("inside")
            except KeyError:
                pass
            print("after", len(masters()))
            k = autoserv.SSHHost("nshost03")
            k.run("true")
            print("open", len(masters()))
            autoserv.close_all()
            print("closed", os.path.exists(ctrl))
            sys.stdout.flush()
            os._exit(0)             # no atexit: close_all() alone must have done it
            """)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["in", "1", "after", "0", "open", "1",
                                              "closed", "False"])
        self.assert_nothing_left()

    def test_a_hosts_commands_reach_a_handler_the_program_installs_bytes_and_all(self):
        import logging
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        mine = logging.getLogger("autoserv.host.nshost01")
        handler = Keep()
        mine.addHandler(handler)
        mine.setLevel(logging.DEBUG)
        self.addCleanup(mine.setLevel, logging.NOTSET)
        self.addCleanup(mine.removeHandler, handler)
        debug_log = os.path.join(self.tmp, "debug.log")
        autoserv.LOG.open(debug_log)
        self.addCleanup(autoserv.LOG.close)
        autoserv.set_ssh_defaults(ssh_config=self.hosts.ssh_config)
        self.addCleanup(autoserv.set_ssh_defaults, ssh_config=None)
        with autoserv.SSHHost("nshost01") as h, autoserv.SSHHost("nshost02") as other:
            h.run(r"printf 'raw\377\033[31m\n'")
            other.run("echo not-this-host")
        self.assertEqual({r.name for r in records}, {"autoserv.host.nshost01"})
        self.assertEqual({r.levelno for r in records}, {logging.DEBUG})
        texts = [r.getMessage() for r in records]
        self.assertIn(r"run: printf 'raw\377\033[31m\n'", texts)
        self.assertIn("raw\\xff\x1b[31m", texts)          # text a handler can write
        self.assertIn(b"raw\xff\x1b[31m", [r.raw for r in records])
        self.assertTrue(any(t.startswith("exit status 0 in ") for t in texts), texts)
        with open(debug_log, "rb") as f:
            log = f.read()
        self.assertIn(b"nshost01 stdout| raw\xff\x1b[31m\n", log)   # unaltered
        self.assertIn(b"nshost02 stdout| not-this-host\n", log)

    def test_nothing_is_printed_when_the_program_configured_no_logging(self):
        for setup in ("", "import logging; logging.basicConfig()"):
            with self.subTest(setup=setup):
                out = self.script(setup + "\n" + textwrap.dedent("""\
                    h = autoserv.SSHHost("nshost01")
                    h.run("echo to-the-log; echo err >&2")
                    try:
                        h.run("exit 4")
                    except autoserv.AutoservRunError:
                        pass
                    autoserv.LocalHost().run("echo local")
                    d = h.get_tmp_dir()
                    h.send_file("script.py", d + "/copy")
                    h.get_file(d + "/copy", "back.py")
                    assert open("back.py").read() == open("script.py").read()
                    autoserv.CommandPower(on="echo powered").on()
                    autoserv.parallel_simple(lambda n: autoserv.SSHHost(n).run("true"),
                                             ["nshost02", "nshost03"])
                    with autoserv.Job("res") as job:
                        h.run("true")
                    """))
                self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "", ""))
                log = read_file(os.path.join(self.tmp, "res", "debug", "autoserv.log"))
                self.assertIn("nshost01: run: true", log)
                shutil.rmtree(os.path.join(self.tmp, "res"))
        self.assert_nothing_left()

    def test_a_script_that_turns_sigterm_into_an_exit_leaves_nothing_when_terminated(self):
        # SIGTERM's default action skips atexit; README's one line makes it
        # an exit, and then close_all() runs as for any other exception.
        p = self.sleeping_script("""\
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            h = autoserv.SSHHost("nshost01", persistent=True)
            h.get_tmp_dir()
            autoserv.get_tmp_dir()
            h.run("sleep 4248.5")
            """, "4248.5")
        p.terminate()
        _, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 143, err)
        self.assert_nothing_left()

    def test_after_sigkill_of_the_script_its_remote_command_ends(self):
        # A SIGKILLed script runs no cleanup: what is guaranteed is that its
        # command on the host ends (the session's stdin closes with the
        # script; the wrapper kills the command's group).  The ssh master
        # (its own session) is ended here by the test; see README.
        p = self.sleeping_script('autoserv.SSHHost("nshost01").run("sleep 4249.5")\n',
                                 "4249.5")
        try:
            p.kill()
            p.communicate(timeout=10)
            wait_for(lambda: not [x for x in comm_pids("sleep")
                                  if x in processes_with("4249.5")], 10,
                     what="the remote command gone after SIGKILL")
            wait_for(lambda: not processes_with("AUTOSERV_RUN_ID="), 10,
                     what="no remote process of the killed script")
        finally:
            # What the killed script left (its master, its control dir): ours to end.
            for pid in processes_with(self.hosts.ssh_config):
                if pid in {k[0] for k in our_children()}:
                    os.kill(pid, signal.SIGTERM)
            reap()
            for name in _autoserv_paths() - self.before:
                shutil.rmtree(name, ignore_errors=True)
        self.assert_nothing_left()


# Boot loader and installables (no guest) ######################################

BOOTTOOL = os.path.join(HERE, "boottool")


def grub_mkconfig_fixture(root, kernels, initrds=()):
    """A real grub.cfg from Debian's grub-mkconfig (GRUB_DEFAULT=saved),
    written into root/boot/grub.  grub-mkconfig looks at the running
    system's /boot and /etc/default, so it runs in a private mount namespace
    with a fake /boot and /etc/default bound over them; nothing on this
    machine changes.  Kernel paths in the output are made /boot/... (the
    bind mount makes grub-mkconfig print the source dir instead)."""
    need("grub-mkconfig", "grub-editenv", "unshare", "mount")
    need_root()
    boot = os.path.join(root, "boot")
    os.makedirs(os.path.join(boot, "grub"), exist_ok=True)
    for k in kernels:
        open(os.path.join(boot, f"vmlinuz-{k}"), "a").close()
    for k in initrds:
        open(os.path.join(boot, f"initrd.img-{k}"), "a").close()
    etc_default = os.path.join(root, "etc-default")
    os.makedirs(etc_default, exist_ok=True)
    with open(os.path.join(etc_default, "grub"), "w") as f:
        f.write('GRUB_DEFAULT=saved\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=Debian\n'
                'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n'
                'GRUB_DISABLE_OS_PROBER=true\n')
    cfg = os.path.join(boot, "grub", "grub.cfg")
    out = subprocess.run(["unshare", "-m", "sh", "-c",
                          f"mount --make-rprivate / && mount --bind {shlex_quote(boot)} /boot && "
                          f"mount --bind {shlex_quote(etc_default)} /etc/default && "
                          f"grub-mkconfig -o {shlex_quote(cfg + '.new')}"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise AssertionError("grub-mkconfig: " + out.stderr)
    text = read_file(cfg + ".new").replace(boot + "/", "/boot/")
    os.unlink(cfg + ".new")
    with open(cfg, "w") as f:
        f.write(text)
    if not os.path.exists(os.path.join(boot, "grub", "grubenv")):
        sh("grub-editenv", os.path.join(boot, "grub", "grubenv"), "create")
    return cfg


_MACHINE_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def bls_fixture(root):
    """/boot/loader/entries as Fedora writes them, with grub2's grubenv."""
    need("grub-editenv")
    entries = os.path.join(root, "boot", "loader", "entries")
    os.makedirs(entries)
    os.makedirs(os.path.join(root, "boot", "grub2"))
    for v in ("6.5.6-300.fc39.x86_64", "6.8.9-300.fc40.x86_64"):
        with open(os.path.join(entries, f"{_MACHINE_ID}-{v}.conf"), "w") as f:
            f.write(f"title Fedora Linux ({v}) 40 (Forty)\nversion {v}\nlinux /vmlinuz-{v}\n"
                    f"initrd /initramfs-{v}.img\noptions root=UUID=5a1f3c2e-1111-2222-3333-"
                    "444455556666 ro rhgb quiet\ngrub_users $grub_users\n"
                    "grub_arg --unrestricted\ngrub_class fedora\n")
        open(os.path.join(root, "boot", f"vmlinuz-{v}"), "w").close()
    env = os.path.join(root, "boot", "grub2", "grubenv")
    sh("grub-editenv", env, "create")
    sh("grub-editenv", env, "set", f"saved_entry={_MACHINE_ID}-6.5.6-300.fc39.x86_64")
    return env


_MENU_LST = """# menu.lst - See: grub(8), info grub, update-grub(8)
default\t\t0
timeout\t\t5

### BEGIN AUTOMAGIC KERNELS LIST
title\t\tDebian GNU/Linux, kernel 2.6.18-6-amd64
root\t\t(hd0,0)
kernel\t\t/boot/vmlinuz-2.6.18-6-amd64 root=/dev/sda1 ro
initrd\t\t/boot/initrd.img-2.6.18-6-amd64
savedefault

title\t\tDebian GNU/Linux, kernel 2.6.18-6-amd64 (single-user mode)
root\t\t(hd0,0)
kernel\t\t/boot/vmlinuz-2.6.18-6-amd64 root=/dev/sda1 ro single
initrd\t\t/boot/initrd.img-2.6.18-6-amd64
savedefault

### END DEBIAN AUTOMAGIC KERNELS LIST
"""


# Runs a script (in a Debian root) able to import only what Debian's
# python3-minimal packages ship: the built-in modules and the top-level
# modules their dpkg file lists name.  (The root has the whole standard
# library; a module outside those lists, shutil, json, gettext..., is
# refused as if it were not there.)
_MINIMAL_ONLY = r"""
import glob, re, runpy, sys
shipped = set(sys.builtin_module_names)
for listed in glob.glob("/var/lib/dpkg/info/*python3*-minimal*.list"):
    with open(listed) as f:
        for line in f:
            m = re.match(r"/usr/lib/python3\.\d+/(?:lib-dynload/)?([A-Za-z_]\w*)"
                         r"(?:\.py|/__init__\.py|\.cpython[^/]*\.so)$", line.strip())
            if m:
                shipped.add(m.group(1))
if len(shipped) < 100:
    sys.exit("python3-minimal's file lists not found")


class OnlyMinimal:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in shipped and top not in sys.modules:
            raise ModuleNotFoundError(f"no module named {top!r} in python3-minimal", name=top)
        return None


sys.meta_path.insert(0, OnlyMinimal())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class TestBoottool(unittest.TestCase):
    """boottool on real menus: grub-mkconfig's output, Fedora-shaped BLS
    entries and a Debian etch menu.lst, each under --root-dir."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="as-bt-")
        self.addCleanup(shutil.rmtree, self.root)
        os.makedirs(os.path.join(self.root, "boot"), exist_ok=True)
        open(os.path.join(self.root, "boot", "vmlinuz-9.9-test"), "w").close()
        open(os.path.join(self.root, "boot", "initrd.img-9.9-test"), "w").close()

    def bt(self, *args, ok=True, python=sys.executable):
        out = subprocess.run([python, BOOTTOOL, f"--root-dir={self.root}", *args],
                             capture_output=True, text=True, timeout=60)
        if ok:
            self.assertEqual(out.returncode, 0, out.stderr)
        return out

    def info(self):
        return autoserv.Bootloader._parse_info(self.bt("--info=all").stdout)

    def snapshot(self):
        found = {}
        for d, _, files in os.walk(os.path.join(self.root, "boot")):
            for f in files:
                if not f.endswith(".bak"):
                    found[os.path.join(d, f)] = read_file(os.path.join(d, f), "rb")
        return found

    def round_trip(self, default_before):
        """add (boot once), default kept; set default; remove: back to start."""
        before = self.info()
        self.assertEqual(int(self.bt("--default").stdout), default_before)
        added = self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=autoserv test",
                        "--initrd=/boot/initrd.img-9.9-test", "--args=console=ttyS0 quiet",
                        "--boot-once").stdout
        self.assertIn("Added: autoserv test", added)
        after = self.info()
        self.assertEqual(len(after), len(before) + 1)
        new = next(e for e in after if e["title"] == "autoserv test")
        self.assertTrue(new["kernel"].endswith("/vmlinuz-9.9-test"))
        self.assertEqual(new["args"], "console=ttyS0 quiet")
        self.assertEqual(new["root"], before[default_before]["root"])   # copied from the default
        self.assertEqual(after[int(self.bt("--default").stdout)]["title"],
                         before[default_before]["title"])              # boot once: default kept
        self.bt("--update-kernel=autoserv test", "--args=debug", "--remove-args=quiet")
        new = next(e for e in self.info() if e["title"] == "autoserv test")
        self.assertEqual(new["args"], "console=ttyS0 debug")
        self.bt(f"--set-default={new['index']}")
        self.assertEqual(int(self.bt("--default").stdout), new["index"])
        again = self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=autoserv test", ok=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("--force", again.stderr)
        self.bt(f"--set-default={before[default_before]['title']}")
        self.bt("--remove-kernel=autoserv test")
        self.assertEqual(self.info(), before)
        self.assertEqual(int(self.bt("--default").stdout), default_before)
        return new

    def test_grub2_round_trip_on_grub_mkconfig_output_and_entries_survive_update_grub(self):
        kernels = ("6.1.0-56-cloud-amd64", "6.12.117+deb12-cloud-amd64")
        cfg = grub_mkconfig_fixture(self.root, kernels, initrds=kernels[1:])
        env = os.path.join(self.root, "boot", "grub", "grubenv")
        self.assertEqual(self.bt("--bootloader-probe").stdout.strip(), "grub2")
        titles = [e["title"] for e in self.info()]
        self.assertEqual(titles[0], "Debian GNU/Linux")
        self.assertIn("Debian GNU/Linux, with Linux 6.1.0-56-cloud-amd64", titles)  # submenu
        self.round_trip(0)
        # Boot once goes through grubenv's next_entry, the default through
        # saved_entry, and our entries live in custom.cfg ...
        self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=kept", "--boot-once")
        self.assertIn("next_entry=boottool-kept", read_file(env))
        self.assertNotIn("boottool", read_file(cfg))
        self.bt("--set-default=Debian GNU/Linux, with Linux 6.1.0-56-cloud-amd64")
        self.assertIn("saved_entry=gnulinux-advanced-", read_file(env))
        self.assertEqual(self.info()[int(self.bt("--default").stdout)]["title"],
                         "Debian GNU/Linux, with Linux 6.1.0-56-cloud-amd64")
        # ... so they survive update-grub.
        grub_mkconfig_fixture(self.root, kernels, initrds=kernels[1:])
        self.assertIn("kept", [e["title"] for e in self.info()])
        self.assertEqual(len(read_file(env, "rb")), 1024)

    def test_bls_round_trip_with_grubenv_and_with_loader_conf(self):
        env = bls_fixture(self.root)
        self.assertEqual(self.bt("--bootloader-probe").stdout.strip(), "bls")
        entries = self.info()
        self.assertEqual(entries[0]["title"], "Fedora Linux (6.8.9-300.fc40.x86_64) 40 (Forty)")
        self.assertEqual(entries[1]["root"], "UUID=5a1f3c2e-1111-2222-3333-444455556666")
        self.round_trip(1)
        self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=once", "--boot-once")
        conf = os.path.join(self.root, "boot", "loader", "entries",
                            f"{_MACHINE_ID}-boottool-once.conf")
        text = read_file(conf)
        self.assertIn("options root=UUID=5a1f3c2e-1111-2222-3333-444455556666 ro rhgb quiet",
                      text)
        self.assertIn("grub_class fedora", text)
        self.assertIn(f"next_entry={_MACHINE_ID}-boottool-once", read_file(env))
        # systemd-boot: no grubenv, the default in loader.conf.
        os.unlink(env)
        self.bt(f"--set-default={_MACHINE_ID}-6.8.9-300.fc40.x86_64")
        loader = read_file(os.path.join(self.root, "boot", "loader", "loader.conf"))
        self.assertIn(f"default {_MACHINE_ID}-6.8.9-300.fc40.x86_64.conf", loader)
        self.assertEqual(self.info()[int(self.bt("--default").stdout)]["title"],
                         "Fedora Linux (6.8.9-300.fc40.x86_64) 40 (Forty)")

    def test_grub_legacy_round_trip_and_boot_once_restores_the_default(self):
        menu = os.path.join(self.root, "boot", "grub", "menu.lst")
        os.makedirs(os.path.dirname(menu))
        write_file(menu, _MENU_LST)
        self.assertEqual(self.bt("--bootloader-probe").stdout.strip(), "grub")
        self.round_trip(0)
        self.bt("--set-default=1")
        self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=once", "--position=start",
                "--boot-once")
        # GRUB legacy boots the entry in /boot/grub/default; that entry's
        # "savedefault 2" puts the old default (now index 2) back.
        self.assertTrue(read_file(os.path.join(self.root, "boot", "grub", "default"))
                        .startswith("0\n"))
        self.assertRegex(read_file(menu), r"title once\n(.*\n)*?\s*savedefault 2\b")
        self.assertRegex(read_file(menu), r"(?m)^default\s+saved")
        self.assertEqual(int(self.bt("--default").stdout), 2)

    def test_info_output_has_the_original_layout(self):
        menu = os.path.join(self.root, "boot", "grub", "menu.lst")
        os.makedirs(os.path.dirname(menu))
        write_file(menu, _MENU_LST)
        out = self.bt("--info=0").stdout
        self.assertTrue(out.startswith("\nindex\t: 0\n"), out)
        for line in ("title\t: Debian GNU/Linux, kernel 2.6.18-6-amd64\n",
                     "kernel\t: /boot/vmlinuz-2.6.18-6-amd64\n", "args\t: ro\n",
                     "root\t: /dev/sda1\n", "initrd\t: /boot/initrd.img-2.6.18-6-amd64\n"):
            self.assertIn(line, out)
        self.assertEqual(self.bt("--info=all").stdout.count("\nindex\t: "), 2)

    def test_a_failed_edit_leaves_the_old_menu_and_default(self):
        grub_mkconfig_fixture(self.root, ("6.1.0-56-cloud-amd64",))
        self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=first")
        before = self.snapshot()
        # /boot/grub read-only (a read-only bind mount in a private mount
        # namespace): the edit fails with one line, nothing changes.
        grub = os.path.join(self.root, "boot", "grub")
        out = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --make-rprivate / && mount --bind {grub} {grub} "
             f"&& mount -o remount,bind,ro {grub} && exec \"$@\"", "sh", sys.executable,
             BOOTTOOL, f"--root-dir={self.root}", "--add-kernel=/boot/vmlinuz-9.9-test",
             "--title=second", "--make-default"], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
        self.assertIn("Read-only file system (nothing changed)", out.stderr)
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(int(self.bt("--default").stdout), 0)
        leftovers = [f for f in os.listdir(os.path.join(self.root, "boot", "grub"))
                     if ".boottool-" in f]
        self.assertEqual(leftovers, [])

    def test_unknown_loader_missing_kernel_and_bad_input_are_one_line_errors(self):
        for args, text in ((["--info=all"], "no known boot loader"),):
            out = self.bt(*args, ok=False)
            self.assertEqual(out.returncode, 1)
            self.assertIn(text, out.stderr)
        menu = os.path.join(self.root, "boot", "grub", "menu.lst")
        os.makedirs(os.path.dirname(menu))
        write_file(menu, _MENU_LST)
        for args, text in ((["--add-kernel=/boot/nope", "--title=x"], "kernel /boot/nope not found"),
                           (["--set-default=no such title"], "no boot entry 'no such title'"),
                           (["--remove-kernel=7"], "no boot entry '7'"),
                           (["--add-kernel=/boot/vmlinuz-9.9-test"], "needs --title"),
                           (["--position=middle", "--add-kernel=/boot/vmlinuz-9.9-test",
                             "--title=x"], "--position takes")):
            with self.subTest(args=args):
                out = self.bt(*args, ok=False)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
                self.assertIn(text, out.stderr)
        self.assertEqual(read_file(menu), _MENU_LST)

    def test_runs_with_only_what_debians_python3_minimal_carries(self):
        # Debian's python3 in a debootstrap root, able to import only what
        # python3-minimal ships (_MINIMAL_ONLY).
        root = debootstrap_root()
        work = tempfile.mkdtemp(prefix="bt-", dir=os.path.join(root, "tmp"))
        self.addCleanup(shutil.rmtree, work)
        shutil.copy(BOOTTOOL, os.path.join(work, "boottool"))
        self.root = os.path.join(work, "fx")
        os.makedirs(os.path.join(self.root, "boot"))
        open(os.path.join(self.root, "boot", "vmlinuz-9.9-test"), "w").close()
        grub_mkconfig_fixture(self.root, ("6.1.0-56-cloud-amd64",))
        inside = "/" + os.path.relpath(work, root)
        for args in (["--info=all"], ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=t",
                                      "--boot-once"], ["--default"]):
            out = subprocess.run(["chroot", root, "python3", "-c", _MINIMAL_ONLY,
                                  f"{inside}/boottool", f"--root-dir={inside}/fx", *args],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("next_entry=boottool-t",
                      read_file(os.path.join(self.root, "boot", "grub", "grubenv")))


    def fresh(self, kind):
        """A new root holding one kind of boot config (grub2: grub-mkconfig's,
        bls: Fedora's entries, grub: a Debian menu.lst); returns the files
        that are the menu."""
        self.root = tempfile.mkdtemp(prefix="as-bt-")
        self.addCleanup(shutil.rmtree, self.root)
        os.makedirs(os.path.join(self.root, "boot"))
        open(os.path.join(self.root, "boot", "vmlinuz-9.9-test"), "w").close()
        if kind == "grub2":
            grub_mkconfig_fixture(self.root, ("6.1.0-56-cloud-amd64",))
        elif kind == "bls":
            bls_fixture(self.root)
        else:
            menu = os.path.join(self.root, "boot", "grub", "menu.lst")
            os.makedirs(os.path.dirname(menu))
            with open(menu, "w") as f:
                f.write(_MENU_LST)

    def test_control_characters_in_titles_and_args_are_refused(self):
        for kind in ("grub2", "bls", "grub"):
            self.fresh(kind)
            before = self.snapshot()
            for args in (["--add-kernel=/boot/vmlinuz-9.9-test", "--title=t",
                          "--args=quiet\ntitle evil"],
                         ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=two\nlines"],
                         ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=t", "--args=a\rb"],
                         ["--update-kernel=0", "--args=x\n}"],
                         ["--set-default=x\x1b[2J"]):
                with self.subTest(kind=kind, args=args):
                    out = self.bt(*args, ok=False)
                    self.assertEqual(out.returncode, 1, out.stderr)
                    self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
                    self.assertIn("control character", out.stderr)
                    self.assertEqual(self.snapshot(), before)

    def test_quotes_in_args_and_titles_survive_every_edit(self):
        windows = 'acpi_osi="!Windows 2012"'
        title = "it's {odd} \"one\""
        for kind in ("grub2", "bls", "grub"):
            with self.subTest(kind=kind):
                self.fresh(kind)
                if kind == "grub2":      # an existing entry quoted GRUB's way
                    cfg = os.path.join(self.root, "boot", "grub", "grub.cfg")
                    text = read_file(cfg)
                    with open(cfg, "w") as f:
                        f.write(text.replace("console=ttyS0", "console=ttyS0 "
                                             "acpi_osi='!Windows 2012'"))
                    self.bt("--update-kernel=0", "--args=debug")
                    first = self.info()[0]
                    self.assertIn(windows, first["args"])
                    self.assertIn("debug", first["args"])
                    self.assertIn("acpi_osi='!Windows 2012'", read_file(cfg))
                self.bt("--add-kernel=/boot/vmlinuz-9.9-test", f"--title={title}",
                        f"--args=quiet {windows}")
                self.bt(f"--update-kernel={title}", "--args=debug", "--remove-args=quiet")
                self.bt("--add-kernel=/boot/vmlinuz-9.9-test", "--title=after", "--args=x")
                entries = self.info()
                new = next(e for e in entries if e["title"] == title)
                self.assertEqual(new["args"], f"{windows} debug")
                self.bt(f"--set-default={title}")
                self.assertEqual(int(self.bt("--default").stdout), new["index"])
                self.bt(f"--remove-kernel={title}")
                self.assertEqual([e["title"] for e in self.info()],
                                 [e["title"] for e in entries if e["title"] != title])

    def test_each_command_changes_all_its_files_or_none(self):
        # The second file a command writes cannot be put in (its backup's
        # name is taken by a directory): the first stays as it was too.
        cases = (("grub", [], "menu.lst",       # GRUB legacy's boot once: default, menu.lst
                  ["--boot-once", "--title=Debian GNU/Linux, kernel 2.6.18-6-amd64 "
                   "(single-user mode)"]),
                 ("grub2", [], "grubenv",
                  ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=new", "--make-default"]),
                 ("grub2", ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=new", "--args=a"],
                  "grubenv", ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=new",
                              "--args=b", "--force", "--make-default"]))
        for kind, setup, blocked, args in cases:
            with self.subTest(kind=kind, args=args):
                self.fresh(kind)
                if setup:
                    self.bt(*setup)
                grub = os.path.join(self.root, "boot", "grub")
                bak = os.path.join(grub, blocked + ".boottool.bak")
                if os.path.exists(bak):
                    os.unlink(bak)
                os.makedirs(os.path.join(bak, "in-the-way"))
                before = self.snapshot()
                out = self.bt(*args, ok=False)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertIn("nothing changed", out.stderr)
                self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
                self.assertEqual(self.snapshot(), before)
                self.assertEqual([f for f in os.listdir(grub) if ".boottool-" in f], [])
                shutil.rmtree(bak)
                self.bt(*args)
                self.assertNotEqual(self.snapshot(), before)
        # A target's own rename fails (a mount point: EBUSY) after the files
        # renamed before it went in: those are put back.  Each of the two
        # files the command writes in turn (one of them is renamed second).
        need_root()
        need("unshare", "mount")
        args = ["--add-kernel=/boot/vmlinuz-9.9-test", "--title=new", "--make-default"]
        for blocked in ("custom.cfg", "grubenv"):
            with self.subTest(blocked_target=blocked):
                self.fresh("grub2")
                target = os.path.join(self.root, "boot", "grub", blocked)
                if not os.path.exists(target):
                    write_file(target, "")
                before = self.snapshot()
                out = subprocess.run(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount --bind "$1" "$1" && shift && exec "$@"', "sh", target,
                     sys.executable, BOOTTOOL, f"--root-dir={self.root}", *args],
                    capture_output=True, text=True, timeout=60)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertIn("nothing changed", out.stderr)
                self.assertEqual(self.snapshot(), before)


def serve_on_loopback(test, handler, tmp, tls=False):
    """An http.server on 127.0.0.1 (with tls, HTTPS with a fresh self-signed
    certificate for 127.0.0.1) stopped at the test's cleanup: (base URL, cert)."""
    import http.server
    import ssl
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    cert = None
    if tls:
        need("openssl")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        if not os.path.exists(cert):
            sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
               "-keyout", key, "-out", cert)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(10)
    test.addCleanup(stop)
    scheme = "https" if tls else "http"
    return f"{scheme}://127.0.0.1:{server.server_address[1]}", cert


class _Served:
    """http.server and Debian's pyftpdlib FTP server on loopback, serving one dir."""

    def __init__(self, directory):
        import http.server
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=directory, **k)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http_url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.ftp = None
        if subprocess.run(["/usr/bin/python3", "-c", "import pyftpdlib"],
                          capture_output=True).returncode:
            return          # the FTP case is skipped (fails in CI)
        self.ftp, port = on_a_free_port(lambda port: subprocess.Popen(
            ["/usr/bin/python3", "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(port),
             "-d", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            accepts, "the FTP server")
        self.ftp_url = f"ftp://127.0.0.1:{port}"

    def close(self):
        self.http.shutdown()
        self.http.server_close()
        if self.ftp:
            self.ftp.terminate()
            self.ftp.wait(10)


class TestInstallables(unittest.TestCase):
    """InstallableObject.get() and package reading, on the server only."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="as-inst-")
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.deb, cls.kver = small_kernel_package(cls.dir)
        cls.rpm, _ = small_kernel_rpm(cls.dir)
        cls.served = _Served(cls.dir)
        cls.addClassCleanup(cls.served.close)

    def setUp(self):
        autoserv._TMP_DIRS = getattr(autoserv, "_TMP_DIRS", None)

    def test_get_accepts_file_dir_url_file_object_and_content(self):
        obj = autoserv.InstallableObject()
        self.assertEqual(obj.get(self.deb), self.deb)
        self.assertEqual(obj.get(self.dir), self.dir)
        got = obj.get(f"{self.served.http_url}/{os.path.basename(self.deb)}")
        self.assertEqual(read_file(got, "rb"), read_file(self.deb, "rb"))
        got = obj.get(io.BytesIO(b"from a file object"))
        self.assertEqual(read_file(got, "rb"), b"from a file object")
        got = obj.get("echo this string is the content\n")
        self.assertEqual(read_file(got), "echo this string is the content\n")
        k = autoserv.DEBKernel()
        k.get(f"{self.served.http_url}/{os.path.basename(self.deb)}")
        self.assertEqual(k.get_version(), self.kver)
        with self.subTest(url="ftp"):
            if not self.served.ftp:
                unavailable("python3-pyftpdlib is missing: no FTP server on loopback")
            got = obj.get(f"{self.served.ftp_url}/{os.path.basename(self.rpm)}")
            self.assertEqual(read_file(got, "rb"), read_file(self.rpm, "rb"))

    def test_a_slow_download_prints_its_bytes_and_rate_off_a_terminal(self):
        import http.server

        class Slow(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(8 * 65536))
                self.end_headers()
                for _ in range(8):              # 512 KiB in about 2.4 s
                    self.wfile.write(b"x" * 65536)
                    self.wfile.flush()
                    time.sleep(0.3)

            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        err = io.StringIO()
        os.environ["AUTOSERV_PROGRESS_EVERY"] = "0.5"
        try:
            with contextlib.redirect_stderr(err):
                got = autoserv.InstallableObject().get(
                    f"http://127.0.0.1:{server.server_address[1]}/pkg.deb")
        finally:
            del os.environ["AUTOSERV_PROGRESS_EVERY"]
        self.assertEqual(os.path.getsize(got), 8 * 65536)
        lines = err.getvalue().splitlines()
        sizes = [float(m.group(1)) for m in (re.fullmatch(
            r"autoserv: server: downloading \d+ s, ([\d.]+) KiB of 512\.0 KiB at [\d.]+ KiB/s",
            line) for line in lines) if m]
        self.assertGreaterEqual(len(sizes), 2, lines)
        self.assertEqual(sizes, sorted(sizes))

    def test_get_errors_name_the_location_and_the_reason(self):
        obj = autoserv.InstallableObject()
        port = free_port()
        for location, text in ((f"{self.served.http_url}/missing.deb", "404"),
                               (f"http://127.0.0.1:{port}/x.deb", "refused"),
                               ("/var/local/no-such-kernel.deb", "no such file"),
                               ("./typo.deb", "no such file")):
            with self.subTest(location=location), \
                    self.assertRaises(autoserv.AutoservInstallError) as cm:
                obj.get(location)
            self.assertIn(location if "://" not in location else location.split("/")[-1],
                          str(cm.exception))
            self.assertIn(text, str(cm.exception).lower() if text.islower() else
                          str(cm.exception))

    def test_rpm_names_come_from_the_header_without_rpm_on_the_server(self):
        code = ("import sys; sys.path.insert(0, %r); import autoserv, shutil\n"
                "assert shutil.which('rpm') is None and shutil.which('rpm2cpio') is None\n"
                "k = autoserv.RPMKernel(); k.get(%r); k.verify()\n"
                "print(k.get_version(), k.get_package_name(), k.get_package_version(), "
                "k.get_image_name(), k.get_initrd_name())" % (HERE, self.rpm))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PATH": "/nonexistent"}, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), [
            self.kver, "kernel-autoserv-test", self.kver.split("+")[0] + "-1",
            f"/boot/vmlinuz-{self.kver}", f"/boot/initramfs-{self.kver}.img"])

    def test_deb_names_for_debians_real_kernel_package(self):
        deb, kver = newer_kernel_package()
        k = autoserv.DEBKernel()
        k.get(deb)
        self.assertEqual(k.get_version(), kver)
        self.assertEqual(k.get_image_name(), f"/boot/vmlinuz-{kver}")
        self.assertEqual(k.get_initrd_name(), f"/boot/initrd.img-{kver}")
        self.assertRegex(k.get_package_version(), r"^6\.12\.")

    def test_corrupt_truncated_and_kernelless_packages_are_refused(self):
        data = read_file(self.deb, "rb")
        rpm = read_file(self.rpm, "rb")
        flipped = bytearray(rpm)
        flipped[len(rpm) - 5000] ^= 0xFF
        bad_deb = bytearray(data)
        bad_deb[len(data) // 2] ^= 0xFF
        notkernel = os.path.join(self.dir, "notkernel")
        os.makedirs(os.path.join(notkernel, "DEBIAN"), exist_ok=True)
        os.makedirs(os.path.join(notkernel, "usr", "share"), exist_ok=True)
        write_file(os.path.join(notkernel, "usr", "share", "x"), "x")
        write_file(os.path.join(notkernel, "DEBIAN", "control"),
                   "Package: notkernel\nVersion: 1\nArchitecture: all\n"
                   "Maintainer: t <t@localhost>\nDescription: no kernel here\n")
        sh("dpkg-deb", "--root-owner-group", "--build", notkernel,
           os.path.join(self.dir, "notkernel.deb"))
        cases = ((autoserv.DEBKernel, data[:len(data) // 2], "truncated"),
                 (autoserv.DEBKernel, bytes(bad_deb), "corrupt"),
                 (autoserv.DEBKernel, b"not a package at all", "not a .deb"),
                 (autoserv.DEBKernel, read_file(os.path.join(self.dir, "notkernel.deb"), "rb"),
                  "not a kernel package"),
                 (autoserv.RPMKernel, rpm[:len(rpm) - 4096], "truncated"),
                 (autoserv.RPMKernel, bytes(flipped), "corrupt"),
                 (autoserv.RPMKernel, rpm[:200], "truncated"))
        for n, (cls, blob, text) in enumerate(cases):
            path = os.path.join(self.dir, f"bad-{n}")
            write_file(path, blob, 'wb')
            with self.subTest(n=n, text=text), \
                    self.assertRaises(autoserv.AutoservInstallError) as cm:
                k = cls()
                k.get(path)
                k.verify()
            self.assertIn(text, str(cm.exception))
            self.assertIn(path, str(cm.exception))


# Guest images (QEMU) ##########################################################

CACHE = os.environ.get("AUTOSERV_TEST_CACHE",
                       os.path.join(os.path.expanduser("~"), ".cache", "autoserv-tests"))
GUEST_BUILDER_VERSION = "6"

_GUEST_RC = """#!/bin/sh
mount -t proc proc /proc
grep -q " /dev " /proc/mounts || mount -t devtmpfs dev /dev
mount -o remount,rw /
mount -t sysfs sys /sys
mkdir -p /dev/pts /tmp /run /var/log /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
for m in $(cat /etc/modules.load); do insmod "/lib/modules/$m" 2>/dev/null; done
ip link set lo up
mac=$(cat /sys/class/net/eth0/address 2>/dev/null)
# User-mode networking's address always; an address chosen by the MAC (the
# seed's bridged form) beside it.
ip addr add 10.0.2.15/24 dev eth0
gw=10.0.2.2
while read -r m a g; do
    [ "$m" = "$mac" ] && ip addr add "$a" dev eth0 && gw=$g
done < /etc/ipmap
ip link set eth0 up
ip route add default via "$gw" 2>/dev/null
hostname guest
/usr/sbin/dropbear -r /etc/dropbear/host_key -p 22 -E 2>/var/log/dropbear.log
echo "READY boot_id=$(cat /proc/sys/kernel/random/boot_id)" > /dev/ttyS0
"""

# MAC -> address, the way the seed's guests chose their IP (its examples use
# 02:00:00:00:00:01 as 10.0.0.1, and 02:00:00:00:00:NN as 192.168.2.NN).
_IPMAP = "02:00:00:00:00:01 10.0.0.1/24 10.0.0.254\n" + "".join(
    "02:00:00:00:00:%02x 192.168.2.%d/24 192.168.2.254\n" % (n, n) for n in range(1, 32))

_GUEST_INITTAB = """::sysinit:/etc/rc
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""


def _ldd_closure(paths):
    libs = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(/\S+) \(0x", line)
            if m:
                libs.add(m.group(1))
    return sorted(libs)


def _apt(*argv, cwd=None):
    """apt-get/apt-cache argv; on a failure, `apt-get update` and once more (a
    fresh machine may have no package lists, or old ones).  Registry traffic,
    in the set-up step.  Where it still fails, the test is skipped (fails in
    CI) with apt's message."""
    need(argv[0], "apt-get")
    for attempt in (1, 2):
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
        if out.returncode == 0:
            return out.stdout
        if attempt == 1:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
    unavailable(f"{' '.join(argv)}: {out.stderr.strip()[-500:]}")


def _apt_download(name, dest):
    """The .deb of a Debian package (registry traffic, in the set-up step)."""
    found = [f for f in os.listdir(dest) if f.startswith(name + "_") and f.endswith(".deb")]
    if found:
        return os.path.join(dest, sorted(found)[-1])
    _apt("apt-get", "download", name, cwd=dest)
    return _apt_download(name, dest)


_KERNEL_PACKAGES = {}        # metapackage -> the package it depends on, asked once a process


def _kernel_package(meta):
    """The versioned kernel package Debian's metapackage meta depends on
    (apt-cache took 1-3 s a call, and every guest a test starts asked)."""
    if meta not in _KERNEL_PACKAGES:
        m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)",
                      _apt("apt-cache", "depends", meta))
        if not m:
            unavailable(f"apt-cache: {meta} depends on no linux-image-*-cloud-amd64")
        _KERNEL_PACKAGES[meta] = m.group(1)
    return _KERNEL_PACKAGES[meta]


def cloud_kernel_package():
    return _kernel_package("linux-image-cloud-amd64")


def guest_image():
    """Builds (once, cached by package versions) a kernel + initramfs guest:
    busybox init, dropbear on :22 with a fixed host key and our client key,
    sftp-server, virtio-net.  Returns a dict of paths."""
    need("qemu-system-x86_64", "busybox", "dropbear", "dpkg-deb", "apt-get", "depmod",
         "modprobe", "cpio", "ssh-keygen", "dropbearkey", "/usr/lib/openssh/sftp-server")
    os.makedirs(CACHE, exist_ok=True)
    package = cloud_kernel_package()
    versions = subprocess.run(["dpkg-query", "-W", "-f", "${Version} ",
                               "busybox-static", "dropbear-bin", "openssh-sftp-server"],
                              capture_output=True, text=True).stdout.split()
    key = f"{package}-{'-'.join(versions)}-{GUEST_BUILDER_VERSION}".replace(":", "_")
    out = os.path.join(CACHE, "guest-" + key)
    files = {"kernel": os.path.join(out, "vmlinuz"), "initrd": os.path.join(out, "initrd.img"),
             "key": os.path.join(out, "id_ed25519"), "host_pub": os.path.join(out, "host_key.pub"),
             "deb": None, "kver": package[len("linux-image-"):], "dir": out}
    files["deb"] = _apt_download(package, CACHE)
    if os.path.exists(os.path.join(out, "done")):
        return files
    work = tempfile.mkdtemp(prefix="guest-build-", dir=CACHE)
    try:
        kroot = os.path.join(work, "kroot")
        sh("dpkg-deb", "-x", files["deb"], kroot)
        kver = files["kver"]
        sh("depmod", "-b", kroot, kver)
        deps = sh("modprobe", "-a", "-d", kroot, "-S", kver, "--show-depends",
                  "virtio_pci", "virtio_net", "virtio_rng").stdout
        modules = []
        for line in deps.splitlines():
            if line.startswith("insmod "):
                path = line.split()[1]
                if path not in modules:
                    modules.append(path)
        root = os.path.join(work, "root")
        for d in ("bin", "sbin", "etc/dropbear", "lib/modules", "root/.ssh", "proc", "sys",
                  "dev", "tmp", "usr/sbin", "usr/bin", "usr/lib/openssh", "var/log", "run"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
        applets = sh("busybox", "--list-full").stdout.split()
        for applet in applets:
            target = os.path.join(root, applet)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink("/bin/busybox", target)
        os.symlink("/bin/busybox", os.path.join(root, "init"))
        order = []
        for path in modules:
            rel = os.path.relpath(path, os.path.join(kroot, "lib", "modules", kver))
            name = os.path.basename(rel)
            shutil.copy(path, os.path.join(root, "lib", "modules", name))
            order.append(name)
        with open(os.path.join(root, "etc", "modules.load"), "w") as f:
            f.write("\n".join(order) + "\n")
        binaries = {"/usr/sbin/dropbear": "usr/sbin/dropbear",
                    "/usr/lib/openssh/sftp-server": "usr/lib/sftp-server"}
        for src, dst in binaries.items():
            shutil.copy(src, os.path.join(root, dst))
        shutil.copy("/usr/lib/openssh/sftp-server",
                    os.path.join(root, "usr", "lib", "openssh", "sftp-server"))
        for lib in _ldd_closure(list(binaries)):
            dst = os.path.join(root, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(lib, dst)
        os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
        shutil.copy("/lib64/ld-linux-x86-64.so.2", os.path.join(root, "lib64"))
        etc = os.path.join(root, "etc")
        for name, text in (("rc", _GUEST_RC), ("inittab", _GUEST_INITTAB),
                           ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("group", "root:x:0:\n"), ("shells", "/bin/sh\n"),
                           ("ipmap", _IPMAP), ("hosts", "127.0.0.1 localhost guest\n")):
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
        os.chmod(os.path.join(etc, "rc"), 0o755)
        sh("dropbearkey", "-t", "ed25519", "-f", os.path.join(etc, "dropbear", "host_key"))
        pub = sh("dropbearkey", "-y", "-f", os.path.join(etc, "dropbear", "host_key")).stdout
        host_pub = next(l for l in pub.splitlines() if l.startswith("ssh-ed25519"))
        os.makedirs(out, exist_ok=True)
        client = os.path.join(work, "id_ed25519")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", client)
        shutil.copy(client + ".pub", os.path.join(root, "root", ".ssh", "authorized_keys"))
        os.chmod(os.path.join(root, "root", ".ssh"), 0o700)
        initrd = os.path.join(work, "initrd.img")
        pack = subprocess.run(f"cd {shlex_quote(root)} && find . | cpio -o -H newc --quiet "
                              f"| gzip -1 > {shlex_quote(initrd)}", shell=True)
        if pack.returncode:
            raise AssertionError("packing the initramfs failed")
        shutil.copy(os.path.join(kroot, "boot", f"vmlinuz-{kver}"), files["kernel"])
        shutil.copy(initrd, files["initrd"])
        shutil.copy(client, files["key"])
        with open(files["host_pub"], "w") as f:
            f.write(" ".join(host_pub.split()[:2]) + "\n")
        open(os.path.join(out, "done"), "w").close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files


_GRUB_CFG = """set default=0
load_env
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
elif [ "${saved_entry}" ] ; then
   set default="${saved_entry}"
fi
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux, with Linux KVER' --id debian-KVER {
    linux /boot/vmlinuz-KVER root=/dev/nvme0n1p1 rw console=ttyS0,115200 panic=1 quiet
    initrd /boot/initrd.img-KVER
}
"""


def _new_uuid():
    import uuid
    return str(uuid.uuid4())


def _grub_disk(work, root, size, fs_uuid=None):
    """A raw disk in work/: an msdos label, GRUB's boot.img and a core.img
    that finds the ext4 partition by uuid, and the partition made from the
    root dir with mke2fs -d (sparse).  Returns its path."""
    fs_uuid = fs_uuid or _new_uuid()
    part = os.path.join(work, "part.img")
    sh("mke2fs", "-q", "-t", "ext4", "-d", root, "-U", fs_uuid, "-L", "root", part, size)
    early = os.path.join(work, "early.cfg")
    with open(early, "w") as f:
        f.write(f"search.fs_uuid {fs_uuid} root hd0,msdos1\nset prefix=($root)/boot/grub\n")
    core = os.path.join(work, "core.img")
    sh("grub-mkimage", "-O", "i386-pc", "-o", core, "-c", early, "-p", "/boot/grub",
       "biosdisk", "part_msdos", "ext2", "search_fs_uuid", "normal", "linux", "configfile",
       "echo", "loadenv", "test", "gzio", "serial", "terminal", "search")
    raw = os.path.join(work, "disk.img")
    with open(raw, "wb") as f:
        f.truncate((1 << 20) + os.path.getsize(part))
    subprocess.run(["sfdisk", "-q", raw], input="start=2048, type=83, bootable\n",
                   text=True, check=True, capture_output=True)
    with open(raw, "r+b") as f, open("/usr/lib/grub/i386-pc/boot.img", "rb") as b, \
            open(core, "rb") as c:
        f.write(b.read()[:440])
        core_data = c.read()
        assert len(core_data) < 2047 * 512, "core.img too big for the gap"
        f.seek(512)
        f.write(core_data)
    subprocess.run(["dd", f"if={part}", f"of={raw}", "bs=1M", "seek=1", "conv=sparse,notrunc",
                    "status=none"], check=True)
    os.unlink(part)
    return raw


def disk_image():
    """A raw disk that boots through real GRUB 2 (built with grub-mkimage and
    mke2fs -d, no loop devices): one ext4 partition holding the guest's root
    tree, /boot with the kernel and initramfs, grub.cfg in GRUB_DEFAULT=saved
    shape and a grubenv.  Cached beside the guest image."""
    need("grub-mkimage", "grub-editenv", "mke2fs", "sfdisk", "cpio",
         "/usr/lib/grub/i386-pc/boot.img")
    img = guest_image()
    disk = os.path.join(img["dir"], "disk.img")
    if os.path.exists(disk):
        return disk
    work = tempfile.mkdtemp(prefix="disk-build-", dir=CACHE)
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        subprocess.run(f"cd {shlex_quote(root)} && gzip -dc {shlex_quote(img['initrd'])} | "
                       "cpio -i --quiet --no-absolute-filenames", shell=True, check=True)
        kver = img["kver"]
        boot = os.path.join(root, "boot")
        os.makedirs(os.path.join(boot, "grub"))
        shutil.copy(img["kernel"], os.path.join(boot, f"vmlinuz-{kver}"))
        shutil.copy(img["initrd"], os.path.join(boot, f"initrd.img-{kver}"))
        with open(os.path.join(boot, "grub", "grub.cfg"), "w") as f:
            f.write(_GRUB_CFG.replace("KVER", kver))
        shutil.copytree("/usr/lib/grub/i386-pc", os.path.join(boot, "grub", "i386-pc"))
        sh("grub-editenv", os.path.join(boot, "grub", "grubenv"), "create")
        raw = _grub_disk(work, root, "96M")
        os.replace(raw, disk)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return disk


KDISK_BUILDER_VERSION = "6"
DEBOOTSTRAP_VERSION = "3"    # the minbase root under it, rebuilt only when this changes

# The kernel disk's rc: modules come from /lib/modules/$(uname -r) through
# kmod, so whatever kernel boots (the default or one a test installed) finds
# its own virtio drivers.
_KDISK_RC = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
grep -q " /dev " /proc/mounts || mount -t devtmpfs dev /dev
mount -o remount,rw /
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
modprobe -a virtio_pci virtio_net virtio_rng 2>/dev/null
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
gw=10.0.2.2
mac=$(cat /sys/class/net/eth0/address 2>/dev/null)
while read -r m a g; do
    [ "$m" = "$mac" ] && ip addr add "$a" dev eth0 && gw=$g
done < /etc/ipmap
ip link set eth0 up
ip route add default via "$gw"
hostname kguest
/usr/sbin/dropbear -r /etc/dropbear/host_key -p 22 -E 2>/var/log/dropbear.log
echo "READY boot_id=$(cat /proc/sys/kernel/random/boot_id) kernel=$(uname -r)" > /dev/ttyS0
"""

# grub.cfg in the shape grub-mkconfig writes with GRUB_DEFAULT=saved:
# next_entry/saved_entry through grubenv and 41_custom's custom.cfg.  Its entry
# loads the kernel with linux16 (the real-mode entry, as RHEL 7's grub2-mkconfig
# writes on BIOS; boottool's entries follow it): entered through GRUB's 32-bit
# `linux`, the 6.12 kernel's decompressor spends 20-60 s under TCG (1.4 s
# through linux16), and every install test boots it.
_KDISK_GRUB_CFG = """# generated in grub-mkconfig's shape (GRUB_DEFAULT=saved)
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="${saved_entry}"
fi
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
export menuentry_id_option
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
### BEGIN /etc/grub.d/10_linux ###
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-UUID' {
\tinsmod gzio
\tinsmod part_msdos
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root UUID
\techo\t'Loading Linux KVER ...'
\tlinux16\t/boot/vmlinuz-KVER root=/dev/nvme0n1p1 rw console=ttyS0,115200 panic=5 quiet
}
### END /etc/grub.d/10_linux ###
### BEGIN /etc/grub.d/41_custom ###
if [ -f  ${config_directory}/custom.cfg ]; then
  source ${config_directory}/custom.cfg
elif [ -z "${config_directory}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
### END /etc/grub.d/41_custom ###
"""


def debootstrap_root():
    """A cached Debian minbase root with dpkg, rpm, kmod, initramfs-tools and
    python3 (registry traffic, in the set-up step)."""
    need("debootstrap", "chroot")
    need_root()
    suite = subprocess.run(["sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME"],
                           capture_output=True, text=True).stdout.strip() or "bookworm"
    root = os.path.join(CACHE, f"debootstrap-{suite}-{DEBOOTSTRAP_VERSION}")
    if os.path.exists(os.path.join(root, ".done")):
        return root
    work = root + ".part"
    shutil.rmtree(work, ignore_errors=True)
    out = subprocess.run(["debootstrap", "--variant=minbase",
                          "--include=kmod,linux-base,initramfs-tools,rpm,python3",
                          suite, work, "http://deb.debian.org/debian"],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:      # no mirror reachable, say: skipped (fails in CI)
        unavailable("debootstrap failed: " + (out.stdout + out.stderr)[-2000:])
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                 "usr/share/man", "usr/share/locale", "usr/share/info"):
        path = os.path.join(work, junk)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    open(os.path.join(work, ".done"), "w").close()
    os.rename(work, root)
    return root


def newer_kernel_package():
    """Debian's real 6.12 cloud kernel .deb (the kernel the install tests put
    on the disk guest, beside its 6.1 default)."""
    package = _kernel_package("linux-image-6.12-cloud-amd64")
    return _apt_download(package, CACHE), package[len("linux-image-"):]


def kernel_disk_image():
    """A raw disk that boots through real GRUB 2 into a Debian root on NVMe
    (no initrd): debootstrap minbase (dpkg, rpm, kmod, initramfs-tools,
    python3-minimal) with the 6.1 cloud kernel installed by dpkg, busybox init,
    dropbear; grub.cfg in grub-mkconfig's saved/next_entry shape with
    custom.cfg.  Returns dict(disk, kver, key)."""
    need("grub-mkimage", "grub-editenv", "mke2fs", "sfdisk", "dpkg-deb",
         "/usr/lib/grub/i386-pc/boot.img")
    img = guest_image()
    out_dir = os.path.join(CACHE, f"kdisk-{img['kver']}-{KDISK_BUILDER_VERSION}")
    files = {"disk": os.path.join(out_dir, "disk.img"), "kver": img["kver"],
             "key": img["key"], "host_pub": img["host_pub"]}
    if os.path.exists(files["disk"]):
        return files
    base = debootstrap_root()
    work = tempfile.mkdtemp(prefix="kdisk-build-", dir=CACHE)
    try:
        root = os.path.join(work, "root")
        subprocess.run(["cp", "-a", base, root], check=True)
        os.unlink(os.path.join(root, ".done"))
        shutil.copy(img["deb"], os.path.join(root, "kernel.deb"))
        # The default kernel, installed the Debian way (no initrd: the cloud
        # kernel has NVMe and ext4 built in).
        out = subprocess.run(["chroot", root, "dpkg", "-i", "/kernel.deb"],
                             env={**os.environ, "INITRD": "No", "DEBIAN_FRONTEND": "noninteractive",
                                  "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                             capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise AssertionError("dpkg -i in the disk root: " + out.stdout[-1500:] + out.stderr)
        os.unlink(os.path.join(root, "kernel.deb"))
        # Smaller, faster initrds when a test installs a kernel that wants one.
        conf = os.path.join(root, "etc", "initramfs-tools", "initramfs.conf")
        text = read_file(conf)
        text = re.sub(r"^MODULES=.*$", "MODULES=dep", text, flags=re.M)
        text = re.sub(r"^COMPRESS=.*$", "COMPRESS=gzip", text, flags=re.M)
        write_file(conf, text)
        # No udev in them either (the site scripts below keep it from running
        # at boot): its hook, copying udevd, its rules and its helpers with
        # their libraries, was the biggest part of mkinitramfs under TCG (35 s
        # of a traced 157 s run on a loaded machine; klibc-utils next, 12 s),
        # which seed 01 runs.  mkinitramfs skips a hook that is not executable.
        os.chmod(os.path.join(root, "usr", "share", "initramfs-tools", "hooks", "udev"), 0o644)
        # ... and an initrd that boots without udev: under TCG its coldplug
        # (systemd-udevd, trigger, settle) takes 24 s of a 40 s boot, while
        # devtmpfs already has the root= device.  Site scripts of the same name
        # in /etc/initramfs-tools override the udev package's.
        scripts = os.path.join(root, "etc", "initramfs-tools", "scripts")
        for stage, body in (("init-top", ""),
                            ("init-bottom", 'mount -n -o move /dev "${rootmnt:?}/dev"\n'
                                            'rm -rf /dev\nln -s "${rootmnt}/dev" /dev\n')):
            os.makedirs(os.path.join(scripts, stage), exist_ok=True)
            path = os.path.join(scripts, stage, "udev")
            with open(path, "w") as f:
                f.write('#!/bin/sh\n[ "$1" = prereqs ] && exit 0\n' + body + "exit 0\n")
            os.chmod(path, 0o755)
        # busybox for init and the applets minbase lacks; dropbear; our rc.
        shutil.copy("/bin/busybox", os.path.join(root, "usr", "bin", "busybox"))
        for applet in sh("busybox", "--list-full").stdout.split():
            target = os.path.join(root, applet)
            if os.path.lexists(target) or not os.path.isdir(os.path.dirname(target)):
                continue
            os.symlink("/usr/bin/busybox", target)
        sbin_init = os.path.join(root, "sbin", "init")
        if not os.path.lexists(sbin_init):
            os.symlink("/usr/bin/busybox", sbin_init)
        for src in ("/usr/sbin/dropbear", "/usr/lib/openssh/sftp-server"):
            dst = os.path.join(root, src.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(src, dst)
        for lib in _ldd_closure(["/usr/sbin/dropbear", "/usr/lib/openssh/sftp-server"]):
            dst = os.path.join(root, lib.lstrip("/"))
            if not os.path.exists(dst):
                shutil.copy(lib, dst)
        shutil.copy("/usr/lib/openssh/sftp-server", os.path.join(root, "usr", "lib",
                                                                 "sftp-server"))
        etc = os.path.join(root, "etc")
        os.makedirs(os.path.join(etc, "dropbear"), exist_ok=True)
        subprocess.run(f"cd {shlex_quote(work)} && gzip -dc {shlex_quote(img['initrd'])} | "
                       "cpio -id --quiet --no-absolute-filenames etc/dropbear/host_key "
                       "root/.ssh/authorized_keys", shell=True, check=True)
        shutil.copy(os.path.join(work, "etc", "dropbear", "host_key"),
                    os.path.join(etc, "dropbear", "host_key"))
        os.makedirs(os.path.join(root, "root", ".ssh"), mode=0o700, exist_ok=True)
        shutil.copy(os.path.join(work, "root", ".ssh", "authorized_keys"),
                    os.path.join(root, "root", ".ssh", "authorized_keys"))
        for name, text in (("rc", _KDISK_RC), ("inittab", _GUEST_INITTAB),
                           ("hostname", "kguest\n"), ("fstab", ""), ("ipmap", _IPMAP)):
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)
        os.chmod(os.path.join(etc, "rc"), 0o755)
        boot = os.path.join(root, "boot")
        os.makedirs(os.path.join(boot, "grub"), exist_ok=True)
        fs_uuid = _new_uuid()
        with open(os.path.join(boot, "grub", "grub.cfg"), "w") as f:
            f.write(_KDISK_GRUB_CFG.replace("KVER", img["kver"]).replace("UUID", fs_uuid))
        shutil.copytree("/usr/lib/grub/i386-pc", os.path.join(boot, "grub", "i386-pc"))
        sh("grub-editenv", os.path.join(boot, "grub", "grubenv"), "create")
        raw = _grub_disk(work, root, "1200M", fs_uuid)
        os.makedirs(out_dir, exist_ok=True)
        os.replace(raw, files["disk"])
    finally:
        subprocess.run(["rm", "-rf", work])
    return files


def _newc_trailer():
    """A cpio (newc) archive holding nothing: a valid, empty initramfs."""
    name = b"TRAILER!!!\0"
    header = b"070701" + b"".join(b"%08X" % v for v in
                                  (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0))
    data = header + name
    data += b"\0" * (-len(data) % 4)
    return data + b"\0" * (-len(data) % 512)


_EMPTY_INITRAMFS = _newc_trailer()


# The test kernel packages below are built once into the cache (the set-up
# step builds them; a run that finds none builds its own) and copied out to
# each caller: building them took 10 s a .deb and 38 s the .rpm (xz payload)
# on a loaded machine, in every class that installs one (TestInstallables,
# the three kernel classes, seed 04 and 09, the hung-boot test's second deb).
KPKG_BUILDER_VERSION = "1"


def _cached_package(filename, build):
    """CACHE's copy of a test package (built by build(dir) -> its path, the
    first time; a rename puts it in place whole): its path."""
    _, kver = newer_kernel_package()
    cache = os.path.join(CACHE, f"kpkgs-{kver}-{KPKG_BUILDER_VERSION}")
    path = os.path.join(cache, filename)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        work = tempfile.mkdtemp(prefix="kpkg-build-", dir=cache)
        try:
            os.replace(build(work), path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path


def _copy_out(path, dest, name=None):
    out = os.path.join(dest, name or os.path.basename(path))
    shutil.copy(path, out)
    return out


def small_kernel_package(dest, version_suffix="", broken=False):
    """A small .deb (dpkg-deb --build) around the 6.12 cloud kernel's image and
    the virtio modules it needs; it installs in seconds under TCG.  broken=True
    puts garbage where the image should be: GRUB cannot boot it.  A copy of
    the cached one, in dest: (path, kernel release)."""
    _, kver = newer_kernel_package()
    name = f"autoserv-test-kernel{version_suffix}"
    cached = _cached_package(f"{name}{'.garbage' if broken else ''}.deb",
                             lambda work: _build_small_kernel_package(work, name, broken))
    return _copy_out(cached, dest, f"{name}.deb"), kver


def _build_small_kernel_package(dest, name, broken):
    need("dpkg-deb", "modprobe", "depmod")
    deb, kver = newer_kernel_package()
    out = os.path.join(dest, f"{name}.deb")
    tree = tempfile.mkdtemp(prefix="kpkg-", dir=dest)
    try:
        x = os.path.join(tree, "x")
        sh("dpkg-deb", "-x", deb, x)
        root = os.path.join(tree, "pkg")
        os.makedirs(os.path.join(root, "boot"))
        os.makedirs(os.path.join(root, "DEBIAN"))
        image = os.path.join(root, "boot", f"vmlinuz-{kver}")
        if broken:
            with open(image, "wb") as f:
                f.write(os.urandom(64 * 1024))
        else:
            shutil.copy(os.path.join(x, "boot", f"vmlinuz-{kver}"), image)
        shutil.copy(os.path.join(x, "boot", f"config-{kver}"), os.path.join(root, "boot"))
        # The package ships its initrd, a minimal one (no /init: the kernel goes
        # on to root= itself), so installing it in a test does not spend 20 s
        # of TCG in update-initramfs; Debian's real package (seed 01) makes
        # its initrd the real way.
        with open(os.path.join(root, "boot", f"initrd.img-{kver}"), "wb") as f:
            f.write(_EMPTY_INITRAMFS)
        mods = os.path.join(x, "lib", "modules", kver)
        if not os.path.isdir(mods):
            mods = os.path.join(x, "usr", "lib", "modules", kver)
        deps = sh("modprobe", "-a", "-d", x, "-S", kver, "--show-depends", "virtio_net",
                  "virtio_rng", check=False).stdout
        if "insmod" not in deps:
            sh("depmod", "-b", x, kver)
            deps = sh("modprobe", "-a", "-d", x, "-S", kver, "--show-depends", "virtio_net",
                      "virtio_rng").stdout
        target = os.path.join(root, "lib", "modules", kver)
        for line in deps.splitlines():
            if line.startswith("insmod "):
                src = line.split()[1]
                rel = os.path.relpath(src, mods)
                os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
                shutil.copy(src, os.path.join(target, rel))
        for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if os.path.exists(os.path.join(mods, f)):
                shutil.copy(os.path.join(mods, f), os.path.join(target, f))
        sh("depmod", "-b", root, kver)
        with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
            f.write(f"Package: {name}\nVersion: {kver.split('+')[0]}-1\nArchitecture: amd64\n"
                    f"Maintainer: autoserv tests <tests@localhost>\nSection: kernel\n"
                    f"Priority: optional\nDescription: test kernel {kver} (image + virtio "
                    "modules)\n")
        sh("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out)
        return out
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def small_kernel_rpm(dest):
    """A real RPM built with rpmbuild around the same files as
    small_kernel_package (6.12 image, config, virtio modules).  A copy of
    the cached one, in dest: (path, kernel release)."""
    _, kver = newer_kernel_package()
    cached = _cached_package(f"kernel-autoserv-test-{kver.split('+')[0]}-1.x86_64.rpm",
                             _build_small_kernel_rpm)
    return _copy_out(cached, dest), kver


def _build_small_kernel_rpm(dest):
    need("rpmbuild")
    deb, kver = small_kernel_package(dest)
    top = tempfile.mkdtemp(prefix="rpmbuild-", dir=dest)
    try:
        tree = os.path.join(top, "tree")
        sh("dpkg-deb", "-x", deb, tree)
        version = kver.split("+")[0]
        spec = os.path.join(top, "kernel.spec")
        with open(spec, "w") as f:
            f.write(f"""Name: kernel-autoserv-test
Version: {version}
Release: 1
Summary: test kernel {kver}
License: GPL-2.0-only
BuildArch: x86_64
AutoReqProv: no
%description
The 6.12 cloud kernel's image and virtio modules, for autoserv's tests.
%install
mkdir -p %{{buildroot}}
cp -a {tree}/boot {tree}/lib %{{buildroot}}/
mv %{{buildroot}}/boot/initrd.img-{kver} %{{buildroot}}/boot/initramfs-{kver}.img
%files
/boot/vmlinuz-{kver}
/boot/config-{kver}
/boot/initramfs-{kver}.img
/lib/modules/{kver}
""")
        out = subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {top}",
                              "--define", "_binary_payload w6.xzdio",
                              "--define", "__os_install_post %{nil}",
                              "--define", "debug_package %{nil}", spec],
                             capture_output=True, text=True, timeout=300)
        if out.returncode:
            raise AssertionError("rpmbuild: " + out.stderr[-1500:])
        built = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(top, "RPMS"))
                 for f in fs if f.endswith(".rpm")]
        target = os.path.join(dest, os.path.basename(built[0]))
        shutil.move(built[0], target)
        return target
    finally:
        shutil.rmtree(top, ignore_errors=True)


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


def tcg_accel():
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def kvm_source_tarball(directory, log):
    """A tiny synthetic 'QEMU source tree': ./configure and make produce a
    qemu-system-x86_64 wrapper that logs its use and runs the system qemu;
    'make install' would leave a marker (it must never run)."""
    tree = os.path.join(directory, "kvm-33")
    os.makedirs(tree)
    with open(os.path.join(tree, "configure"), "w") as f:
        f.write("#!/bin/sh\necho configured > config.status\n")
    os.chmod(os.path.join(tree, "configure"), 0o755)
    with open(os.path.join(tree, "Makefile"), "w") as f:
        f.write("all: qemu-system-x86_64\n"
                "qemu-system-x86_64: config.status\n"
                f"\tprintf '#!/bin/sh\\necho \"$$@\" >> {log}\\n"
                "exec /usr/bin/qemu-system-x86_64 \"$$@\"\\n' > $@\n"
                "\tchmod +x $@\n"
                f"install:\n\ttouch {log}.make-install\n")
    tarball = os.path.join(directory, "kvm-33.tar.gz")
    sh("tar", "-czf", tarball, "-C", directory, "kvm-33")
    return tarball


def kvm_compiled_tarball(directory, log):
    """The synthetic source tree of kvm_source_tarball, already built (the
    seed's kvm-compiled.tar.gz, for install(build=False))."""
    tree = os.path.join(directory, "kvm-compiled")
    os.makedirs(tree)
    sh("tar", "-xzf", kvm_source_tarball(tree, log), "-C", tree)
    built = os.path.join(tree, "kvm-33")
    subprocess.run("./configure && make", shell=True, cwd=built, check=True,
                   capture_output=True)
    tarball = os.path.join(directory, "kvm-compiled.tar.gz")
    sh("tar", "-czf", tarball, "-C", tree, "kvm-33")
    return tarball


def guest_ports(count):
    """count consecutive free loopback ports, below the kernel's ephemeral
    range (32768 and up here), where an outgoing connection could take one
    between this check and qemu's bind."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(50):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % max(1000, low - 20000 - 64)
        try:
            socks = []
            for i in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def start_guest(mac, append="console=ttyS0,115200 panic=1 quiet"):
    """A KVM on this machine with one user-mode address and a booted
    initramfs guest on it: (image, kvm, guest)."""
    img = guest_image()
    opts = '-m 256 -kernel %s -initrd %s -append "%s"' % (
        img["kernel"], img["initrd"], autoserv.sh_escape(append))
    kvm = autoserv.KVM(autoserv.LocalHost())
    kvm.install([{"mac": mac, "ip": "127.0.0.1", "port": guest_ports(1)}])
    guest = autoserv.KVMGuest(kvm, opts, identity=img["key"], connect_timeout=3)
    assert guest.wait_up(120), "guest did not come up:\n" + guest.serial_tail()
    return img, kvm, guest


def build_images():
    """The set-up step: guest kernel, initramfs and GRUB disk (downloads the
    kernel package; cached under ~/.cache/autoserv-tests)."""
    img = guest_image()
    disk = disk_image()
    kdisk = kernel_disk_image()
    newer, _ = newer_kernel_package()
    print(f"guest image: {img['dir']}\ndisk image: {disk}\nkernel disk: {kdisk['disk']}\n"
          f"kernel package: {newer}")
    scratch = tempfile.mkdtemp(prefix="kpkgs-")
    try:        # the test packages too (into the cache; the copies go)
        small_kernel_package(scratch)
        small_kernel_package(scratch, "-broken")
        small_kernel_rpm(scratch)
    finally:
        shutil.rmtree(scratch)


# QEMU guests: KVM, reboots, power, consoles ###################################

class TestKVM(unittest.TestCase):
    """QEMU guests (TCG here) driven through autoserv's KVM and KVMGuest."""

    @classmethod
    def setUpClass(cls):
        cls.img = guest_image()
        cls.disk = disk_image()
        cls.sshd = Sshd()
        cls.addClassCleanup(cls.sshd.stop)
        cls.kernel_opts = '-m 256 -kernel %s -initrd %s -append "%s"' % (
            cls.img["kernel"], cls.img["initrd"],
            autoserv.sh_escape("console=ttyS0,115200 panic=1 quiet"))
        cls.base = guest_ports(2)
        cls.kvm = autoserv.KVM(autoserv.LocalHost())
        cls.kvm.install([{"mac": "02:00:00:00:01:%02x" % n, "ip": "127.0.0.1",
                          "port": cls.base + n} for n in range(2)])
        cls.guest = autoserv.KVMGuest(cls.kvm, cls.kernel_opts, identity=cls.img["key"],
                                      connect_timeout=5)
        cls.addClassCleanup(cls.guest.close)
        assert cls.guest.wait_up(120), "shared guest did not come up"

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-kvm-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def qemu_pids(self, text):
        return [p for p in comm_pids("qemu-system-x86") if p in processes_with(text)]

    def run_seed(self, name, subs):
        """examples/seed/<name> with this class's sshd as 192.168.1.1."""
        return run_seed(seed_control(self.tmp, name, subs), "--ssh-config",
                        self.sshd.ssh_config, "-i", self.img["key"],
                        "-r", os.path.join(self.tmp, "res"), timeout=400)

    def test_guest_runs_commands_and_files_like_any_host(self):
        g = self.guest
        self.assertIn("guest", g.run("uname -a").stdout)
        for private in (os.path.dirname(g.qmp_socket), g.run_dir):     # QMP, pidfile, serial
            self.assertEqual(os.stat(private).st_mode & 0o777, 0o700, private)
        self.assertEqual(g.run("exit 7", ignore_status=True).exit_status, 7)
        f = os.path.join(self.tmp, "f")
        write_file(f, "to the guest")
        d = g.get_tmp_dir()
        g.send_file(f, d + "/f")
        g.get_file(d + "/f", os.path.join(self.tmp, "back"))
        self.assertEqual(read_file(os.path.join(self.tmp, "back")), "to the guest")
        with self.assertRaises(autoserv.AutoservTimeoutError):
            g.run("sleep 60", timeout=2)
        self.assertEqual(g.run("pgrep -x sleep || echo none").stdout.strip(), "none")

    def test_hardreset_brings_the_guest_back_with_a_new_boot_id(self):
        before = self.guest.get_boot_id()
        t0 = time.monotonic()
        self.guest.hardreset()
        self.assertLess(time.monotonic() - t0, 120)
        self.assertNotEqual(self.guest.get_boot_id(), before)

    def test_bootloader_on_a_host_without_python3_says_so(self):
        with self.assertRaises(autoserv.AutoservBootloaderError) as cm:
            self.guest.bootloader.get_titles()
        self.assertIn("no python3", str(cm.exception))

    def test_monitor_answers_through_qmp(self):
        self.assertIn("running", self.guest.monitor("info status"))

    def test_persistent_mode_on_a_host_without_python3_falls_back_to_per_command(self):
        g = self.guest
        g.persistent = True
        try:
            self.assertEqual(g.run("echo fine; exit 4", ignore_status=True).exit_status, 4)
            self.assertIs(g._agent, False)          # tried once, then per-command
            self.assertIn("autoserv", g.run("cat /proc/$PPID/cmdline").stdout)
            with self.assertRaises(autoserv.AutoservTimeoutError):
                g.run("sleep 60", timeout=2)
            self.assertEqual(g.run("pgrep -x sleep || echo none").stdout.strip(), "none")
        finally:
            g.persistent, g._agent = False, None

    def test_two_guests_at_once_a_third_has_no_address_and_close_leaves_nothing(self):
        second = autoserv.KVMGuest(self.kvm, self.kernel_opts, identity=self.img["key"])
        try:
            self.assertTrue(second.wait_up(120))
            self.assertNotEqual(second.get_boot_id(), self.guest.get_boot_id())
            with self.assertRaises(autoserv.AutoservVirtError) as cm:
                autoserv.KVMGuest(self.kvm, self.kernel_opts)
            self.assertIn("no free address", str(cm.exception))
        finally:
            pid, run_dir = second.qemu_pid, second.run_dir
            second.close()
        wait_for(lambda: not comm_pids("qemu-system-x86") or pid not in comm_pids("qemu-system-x86"),
                 10, what="qemu gone")
        self.assertFalse(os.path.exists(run_dir))
        self.assertTrue(self.guest.qemu_alive())

    def test_with_blocks_end_a_kvms_guests_and_a_script_that_raises_ends_its_qemu(self):
        def qemu_gone(pid):
            return lambda: pid not in comm_pids("qemu-system-x86")
        address = {"mac": "02:00:00:00:02:01", "ip": "127.0.0.1", "port": guest_ports(1)}
        with autoserv.KVM(autoserv.LocalHost()) as kvm:
            kvm.install([address])
            with autoserv.KVMGuest(kvm, self.kernel_opts, identity=self.img["key"]) as g:
                pid, run_dir = g.qemu_pid, g.run_dir
                self.assertIn(pid, comm_pids("qemu-system-x86"))
            wait_for(qemu_gone(pid), 10, what="the guest's qemu gone at its block's end")
            self.assertFalse(os.path.exists(run_dir))
            g = autoserv.KVMGuest(kvm, self.kernel_opts, identity=self.img["key"])
            pid = g.qemu_pid
        wait_for(qemu_gone(pid), 10, what="the guest's qemu gone at the KVM's block's end")
        self.assertEqual(kvm.in_use, {})
        # A script that starts a guest and dies of an exception.
        script = os.path.join(self.tmp, "guest.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(f"""\
                import sys
                sys.path.insert(0, {HERE!r})
                import autoserv
                kvm = autoserv.KVM(autoserv.LocalHost())
                kvm.install([{address!r}])
                g = autoserv.KVMGuest(kvm, {self.kernel_opts!r})
                print(g.qemu_pid, g.run_dir, flush=True)
                raise RuntimeError("mid-way")
                """))
        out = subprocess.run([sys.executable, script], capture_output=True, text=True,
                             timeout=120)
        self.assertIn("RuntimeError: mid-way", out.stderr)
        pid, run_dir = out.stdout.split()
        wait_for(qemu_gone(int(pid)), 10, what="the script's qemu gone")
        self.assertFalse(os.path.exists(run_dir))

    def test_wait_up_without_timeout_waits_past_boot_timeout_saying_so_and_returns_true(self):
        # boot_timeout=1: this guest takes longer than that to boot (TCG), so
        # a wait capped by it would give up; without a timeout it waits on.
        self.addCleanup(setattr, autoserv, "WAIT_PROGRESS_EVERY", autoserv.WAIT_PROGRESS_EVERY)
        autoserv.WAIT_PROGRESS_EVERY = 1.0
        g = autoserv.KVMGuest(self.kvm, self.kernel_opts, identity=self.img["key"],
                              boot_timeout=1)
        try:
            # Said at INFO on the host's logger (the CLI prints INFO on stderr).
            t0 = time.monotonic()
            with self.assertLogs("autoserv", "INFO") as said:
                self.assertIs(g.wait_up(), True)
            took = time.monotonic() - t0
            self.assertGreater(took, 1.0)
            progress = [r.getMessage() for r in said.records if "waiting on" in r.getMessage()]
            self.assertTrue(progress, said.output)
            self.assertEqual({r.name for r in said.records}, {f"autoserv.host.{g.hostname}"})
            self.assertIn(f"guest {g.hostname}:{g.port}: no ssh answer after", progress[0])
            self.assertLessEqual(len(progress), took + 1)         # about one a second
            self.assertIn("guest", g.run("uname -n").stdout)
        finally:
            g.close()

    def test_a_dead_qemu_fails_wait_up_at_once_with_the_serial_log(self):
        g = autoserv.KVMGuest(self.kvm, self.kernel_opts, identity=self.img["key"])
        try:
            wait_for(lambda: "Linux version" in read_file(g.serial_log) or
                     "READY" in read_file(g.serial_log), 60, what="guest booting")
            os.kill(g.qemu_pid, signal.SIGKILL)
            t0 = time.monotonic()
            with self.assertRaises(autoserv.AutoservVirtError) as cm:
                g.wait_up()
            self.assertLess(time.monotonic() - t0, 10)
            self.assertIn("has exited", str(cm.exception))
            self.assertIn("serial log ends", str(cm.exception))
        finally:
            g.close()

    def test_bad_qemu_options_and_missing_disk_surface_qemus_message(self):
        for opts, text in (("-m 256 -no-such-option", "no-such-option"),
                           ("-m 256 -hda /no/such/disk.img", "/no/such/disk.img")):
            with self.subTest(opts=opts), self.assertRaises(autoserv.AutoservVirtError) as cm:
                autoserv.KVMGuest(self.kvm, opts)
            self.assertIn(text, str(cm.exception))
        self.assertEqual(len(self.kvm.in_use), 1)

    def test_source_tree_without_a_binary_is_a_clear_error(self):
        tree = os.path.join(self.tmp, "empty-tree")
        os.makedirs(tree)
        kvm = autoserv.KVM(autoserv.LocalHost())
        kvm.get(tree)
        with self.assertRaises(autoserv.AutoservVirtError) as cm:
            kvm.install([{"mac": "02:00:00:00:00:09", "ip": "127.0.0.1", "port": 1}], build=False)
        self.assertIn("no qemu-system-x86_64", str(cm.exception))

    def test_a_named_guest_is_called_by_its_name_in_the_results(self):
        ctl = os.path.join(self.tmp, "named.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                k = kvm.KVM(hosts.LocalHost())
                k.install([{{"mac": "02:00:00:00:01:01", "ip": "127.0.0.1",
                             "port": {self.base + 1}}}])
                g = hosts.KVMGuest(k, {self.kernel_opts!r}, identity={self.img["key"]!r},
                                   connect_timeout=5, name="g1")
                assert g.wait_up(120)
                parallel_simple(lambda h: h.run("uname -n"), [g])
                """))
        res = os.path.join(self.tmp, "res")
        out = run_cli("-r", res, ctl, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sorted(json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]),
                         ["g1", "localhost"])       # the guest and its hypervisor
        self.assertIn("run: uname -n", read_file(os.path.join(res, "g1", "debug", "host.log")))
        log = read_file(os.path.join(res, "debug", "autoserv.log"))
        self.assertIn("] g1: ", log)
        # waiting for the boot asks the hypervisor about qemu every 2 s: not logged
        self.assertNotIn("/stat", log)

    def test_seed_05_with_user_mode_addresses_builds_kvm_and_runs_a_guest(self):
        log = os.path.join(self.tmp, "wrapper.log")
        out = self.run_seed("05", {
            "/var/local/src/kvm-33.tar.gz": kvm_source_tarball(self.tmp, log),
            '"ip" : "192.168.2.%d" % (num,)}': '"ip" : "127.0.0.1", "port": %d + num}'
                                               % guest_ports(32),
            SEED_DISK: self.disk})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux guest", out.stdout)
        self.assertIn(self.disk, read_file(log))         # the built binary was used
        self.assertFalse(os.path.exists(log + ".make-install"))
        self.assertFalse(self.qemu_pids(self.disk))
        status = read_file(os.path.join(self.tmp, "res", "status.log"))
        self.assertIn("TCG", status)

    def test_seed_05_with_its_own_addresses_bridges_the_guest_in_a_namespace(self):
        # The seed's addresses unchanged: br0 in a namespace on 192.168.2.254,
        # the guest on a tap as 192.168.2.1 (its address from its MAC), and
        # 192.168.1.1 an sshd on the namespace's loopback.
        ns = Netns()
        self.addCleanup(ns.close)
        ns.exec("ip", "link", "add", "br0", "type", "bridge")
        ns.exec("ip", "addr", "add", "192.168.2.254/24", "dev", "br0")
        ns.exec("ip", "link", "set", "br0", "up")
        sshd = Sshd(netns=ns.name)
        self.addCleanup(sshd.stop)
        log = os.path.join(self.tmp, "wrapper.log")
        ctl = seed_control(self.tmp, "05", {
            "/var/local/src/kvm-33.tar.gz": kvm_source_tarball(self.tmp, log),
            SEED_DISK: self.disk})
        res = os.path.join(self.tmp, "res")
        out = run_seed(ctl, "--ssh-config", sshd.ssh_config, "-i", self.img["key"], "-r", res,
                       netns=ns.name, timeout=400)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux guest", out.stdout)
        self.assertIn(self.disk, read_file(log))
        hosts = json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]
        self.assertEqual(hosts["192.168.2.1"]["outcome"], "GOOD")    # the guest, by its address
        self.assertFalse(self.qemu_pids(self.disk))
        links = ns.exec("ip", "-o", "link").stdout
        self.assertFalse(re.search(r"^\d+: ast\d+x\d+", links, re.M), links)  # tap gone

    def test_kvm_example_runs_with_a_built_disk(self):
        ctl = os.path.join(HERE, "examples", "kvm-guest.control")
        out = run_cli("-i", self.img["key"], "-r", os.path.join(self.tmp, "res"), ctl,
                      self.disk, timeout=400)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux guest", out.stdout)
        ids = re.findall(r"boot id (?:before a hard reset|after): +(\S+)", out.stdout)
        self.assertEqual(len(ids), 2)
        self.assertNotEqual(ids[0], ids[1])
        self.assertIn("VM status: running", out.stdout)

    def test_seed_08_boots_a_kernel_extracted_from_a_deb_on_the_hypervisor(self):
        log = os.path.join(self.tmp, "qemu.log")
        out = self.run_seed("08", {
            "/var/local/src/kvm-compiled.tar.gz": kvm_compiled_tarball(self.tmp, log),
            "/home/foo/linux-2.6.21.3-6_2.6.21.3-6_amd64-noNeedForInitrd.deb": self.img["deb"],
            SEED_DISK: self.disk,
            **user_mode_address("10.0.0.1", guest_ports(1))})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Linux guest " + self.img["kver"], out.stdout)
        self.assertIn("-kernel", read_file(log))       # the compiled qemu, the extracted image
        self.assertFalse(self.qemu_pids(self.disk))


class TestReboot(unittest.TestCase):
    """reboot() on a QEMU guest (never on loopback or namespace hosts: they
    share this machine's kernel)."""

    @classmethod
    def setUpClass(cls):
        cls.img, cls.kvm, cls.guest = start_guest("02:00:00:00:02:01")
        cls.addClassCleanup(cls.guest.close)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-reboot-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.addCleanup(check_guest, self, self.guest)
        self.job = autoserv.ServerJob(self.tmp)
        self.addCleanup(self._end_job)

    def _end_job(self):
        autoserv._JOB = None
        autoserv.LOG.close()

    def status(self):
        return autoserv.parse_status_log(read_file(os.path.join(self.tmp, "status.log")))

    def serial_readies(self):
        return read_file(self.guest.serial_log).count("READY boot_id=")

    def debug_log(self):
        with open(os.path.join(self.tmp, "debug", "autoserv.log"), errors="replace") as f:
            return f.read()

    @scenario(23)
    def test_a_reboot_faster_than_the_poll_counts_through_the_boot_id(self):
        # Probes 20 s apart: the guest (up again in about 5 s) reboots whole
        # between the first probe (old boot id: the reboot waits 2 s) and
        # the second, so only the changed boot id can prove it.
        before = self.guest.get_boot_id()
        self.guest.poll_interval = 20.0
        try:
            self.guest.reboot(reboot_cmd="sleep 2; reboot -f", timeout=120)
        finally:
            del self.guest.poll_interval
        after = self.guest.get_boot_id()
        self.assertNotEqual(after, before)
        log = self.debug_log()
        self.assertIn(f"down: boot id changed from {before} to {after} ", log)
        self.assertNotIn("down: no answer", log)
        codes = [(e["code"], e["operation"]) for e in self.status()]
        self.assertIn(("GOOD", "reboot.verify"), codes)

    def test_the_agent_on_a_dropbear_guest_without_python_leaves_its_connection_alone(self):
        # The guest's sshd is dropbear (it ends the whole connection on an
        # exec request over 9000 bytes: the agent's program is longer, so it
        # goes over stdin) and it has no python3: the agent is given up once,
        # said once, and every command runs on the same master.
        # A host object of its own: the guest's has given its agent up
        # already when the agent is on by default.
        h = autoserv.SSHHost(self.guest.hostname, port=self.guest.port,
                             identity=self.img["key"], host_key_policy="ephemeral",
                             connect_timeout=3, persistent=False)
        self.assertEqual(h.run("echo $((6*7))").stdout, "42\n")
        master = h._master.pid
        h.persistent = True
        for _ in range(3):
            self.assertEqual(h.run("echo $((6*7))").stdout, "42\n")
            self.assertEqual(h._master.pid, master, "the master was restarted")
        self.assertEqual(self.debug_log().count("no persistent agent"), 1)
        self.assertIn("can't execute 'python3'", self.debug_log())

    @scenario(24)
    def test_a_slow_shutdown_with_sshd_still_up_is_not_rebooted_early(self):
        before = self.guest.get_boot_id()
        t0 = time.monotonic()
        self.guest.reboot(reboot_cmd="sleep 15; reboot -f", timeout=180)
        self.assertGreaterEqual(time.monotonic() - t0, 15)
        self.assertNotEqual(self.guest.get_boot_id(), before)

    @scenario(27)
    def test_the_reboot_commands_own_connection_dying_is_success(self):
        # The reboot command is delivered but its reply never comes back: a
        # relay holds the guest's bytes back from the moment autoserv issues
        # it, and once the guest says (on its serial line) that the command
        # runs, drops them, so the session that carried it dies unanswered
        # (its keepalives, or its timeout) while the guest reboots.
        relay = HoldRelay(self.guest.port)
        self.addCleanup(relay.close)
        h = autoserv.SSHHost("127.0.0.1", port=relay.port, identity=self.img["key"],
                             host_key_policy="ephemeral", connect_timeout=5)
        self.addCleanup(h.close)
        before = h.get_boot_id()
        tag = "as-reboot-%d" % int.from_bytes(os.urandom(4), "big")
        issue = h._issue_reboot

        def issue_unanswered(command):
            relay.hold()
            watcher = threading.Thread(target=lambda: (
                wait_for(lambda: tag in read_file(self.guest.serial_log, errors="replace"),
                         60, what="the reboot command running"), relay.drop()))
            watcher.start()
            try:
                issue(command)
            finally:
                watcher.join()
        h._issue_reboot = issue_unanswered
        h.reboot(reboot_cmd=f"echo {tag} > /dev/ttyS0; reboot -f", timeout=180)
        self.assertNotEqual(self.guest.get_boot_id(), before)
        self.assertIn("the reboot command's connection ended", self.debug_log())
        self.assertGreater(relay.dropped(), 0, "no reply was held back")
        # Sent once: the lost session is not taken for one that never left.
        self.assertEqual(read_file(self.guest.serial_log, errors="replace").count(tag), 1)
        codes = [(e["code"], e["operation"]) for e in self.status()]
        self.assertIn(("GOOD", "reboot.verify"), codes)

    @scenario(23)
    def test_a_kernel_crash_through_sysrq_is_a_reboot_the_boot_id_proves(self):
        # The guest boots with panic=1: its kernel crashes and restarts itself.
        before = self.guest.get_boot_id()
        self.guest.reboot(reboot_cmd="echo c > /proc/sysrq-trigger", timeout=120)
        self.assertNotEqual(self.guest.get_boot_id(), before)
        self.assertIn("sysrq", read_file(self.guest.serial_log).lower())

    @scenario(26)
    def test_a_machine_that_reboots_twice_is_done_only_when_stable(self):
        # The second reboot comes once autoserv has seen the first new boot
        # id (its debug log says so), inside the stable_for window.
        start = self.serial_readies()
        seen = []

        def second_reset():
            def first_boot_seen():
                found = re.findall(r"up with boot id (\S+); checking", self.debug_log())
                seen[:] = found
                return bool(found)
            wait_for(first_boot_seen, 120, interval=0.05, what="autoserv seeing the first boot")
            self.kvm.qmp(self.guest.qmp_socket, {"execute": "system_reset"})
        thread = threading.Thread(target=second_reset)
        thread.start()
        try:
            self.guest.reboot(reboot_cmd="reboot -f", timeout=240, stable_for=5)
        finally:
            thread.join()
        self.assertEqual(self.serial_readies(), start + 2)
        last = read_file(self.guest.serial_log).rsplit("READY boot_id=", 1)[1].split()[0]
        final = self.guest.get_boot_id()
        self.assertEqual(final, last)
        self.assertNotEqual(seen[0], final)        # the intermediate boot was seen...
        self.assertIn(f"up with boot id {seen[0]}, then ", self.debug_log())  # ...and refused
        self.assertIn(f"up with boot id {final}, stable for 5", self.debug_log())

    @scenario(25)
    def test_a_host_that_never_returns_without_a_reset_path_is_an_error(self):
        plain = autoserv.SSHHost("127.0.0.1", port=self.guest.port, identity=self.img["key"],
                                 host_key_policy="ephemeral", connect_timeout=3)
        t0 = time.monotonic()
        try:
            with self.assertRaises(autoserv.AutoservRebootError) as cm:
                # A timeout no longer than it takes to see the host down (two
                # probes of 5 s) and a little more: what follows is waiting.
                plain.reboot(reboot_cmd="halt -f", timeout=15, down_timeout=10)
            self.assertLess(time.monotonic() - t0, 15 + 10)
            self.assertIn("did not return", str(cm.exception))
            self.assertIn(("ABORT", "reboot.verify"),
                          [(e["code"], e["operation"]) for e in self.status()])
        finally:
            plain.close()
            self.guest.hardreset()

    @scenario(28)
    def test_a_missing_qmp_socket_is_a_clear_error(self):
        sock = self.guest.qmp_socket
        self.guest.qmp_socket = sock + ".missing"
        try:
            t0 = time.monotonic()
            with self.assertRaises(autoserv.AutoservVirtError) as cm:
                self.guest.hardreset()
            self.assertLess(time.monotonic() - t0, 30)
            self.assertIn("QMP", str(cm.exception))
        finally:
            self.guest.qmp_socket = sock

    def test_the_report_of_a_job_with_a_reboot_a_failure_and_hostile_output_renders_inert(self):
        """index.html of a job over several hosts (this guest rebooted, a
        failed test, output and errors holding markup and escapes), opened
        in headless chromium: no console message (a blocked script or load
        would say so), the host table and a timeline lane per host in the
        DOM, nothing of the hosts' text turned into markup.  The screenshot
        is copied to $AUTOSERV_REPORT_PNG when that is set (README's)."""
        need("chromium")
        hostile = "<script>document.title='pwned'</script>\\033[31mred\\033]0;t\\a<img src=x>"
        ctl = os.path.join(self.tmp, "report.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                def work(name):
                    if name == "guest":
                        g = hosts.SSHHost("127.0.0.1", port={self.guest.port},
                                          identity={self.img["key"]!r},
                                          host_key_policy="ephemeral")
                        g.run("echo booted once")
                        g.reboot(reboot_cmd="sleep 1; reboot -f", timeout=180)
                    elif name == "failing":
                        job.record("START", None, "unit")
                        job.record("FAIL", None, "unit", "Traceback (most recent call "
                                   "last):\\n  File 't.py', line 3\\nAssertionError: 2 != 3")
                        job.record("END FAIL", None, "unit")
                    else:
                        out = hosts.create_host("localhost").run("printf '{hostile}'").stdout
                        job.record("INFO", None, "echo", out)
                        raise ValueError(out)
                parallel_simple(work, ["guest", "failing", "hostile<i>\\"x'"])
                """))
        res = os.path.join(self.tmp, "res")
        out = run_cli("-r", res, ctl, timeout=300)
        self.assertEqual(out.returncode, 1, out.stderr)
        page = os.path.join(res, "index.html")
        html_text = read_file(page, encoding="utf-8")
        self.assertNotIn("<script", html_text.lower())
        self.assertNotIn("\x1b", html_text)
        self.assertIn("&lt;script&gt;document.title=", html_text)
        self.assertIn("default-src 'none'", html_text)         # no script could run anyway
        # `report` writes the same page again from the files alone.
        os.unlink(page)
        again = run_cli("report", res)
        self.assertEqual(again.returncode, 0, again.stderr)
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        hosts = sorted(summary["hosts"])
        self.assertTrue({"guest", "failing", "hostile<i>\"x'"} <= set(hosts), hosts)
        chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--enable-logging=stderr", "--v=0", "--window-size=1280,900"]
        dump = subprocess.run(chromium + ["--dump-dom", "file://" + page],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(dump.returncode, 0, dump.stderr)
        dom = dump.stdout
        console = [l for l in dump.stderr.splitlines() if ":CONSOLE" in l]
        self.assertEqual(console, [])
        self.assertIn("<title>autoserv: FAIL: res</title>", dom)
        self.assertNotIn("<script", dom.lower())
        self.assertNotIn("<img", dom.lower())
        self.assertEqual(sorted(html.unescape(h) for h in re.findall(
            r'<tr class="host" data-host="([^"]*)"', dom)), hosts)
        self.assertEqual(sorted(html.unescape(h) for h in re.findall(
            r'<g class="lane" data-host="([^"]*)"', dom)), hosts)
        guest_lane = dom[dom.index('<g class="lane" data-host="guest"'):]
        guest_lane = guest_lane[:guest_lane.index("</g>")]
        self.assertIn("reboot: GOOD", guest_lane)
        self.assertRegex(dom, r'(?s)<details><summary>AssertionError: 2 != 3</summary>'
                              r'<pre>Traceback')
        for link in ("control.srv", "debug/autoserv.log", "guest/debug/stdout",
                     "hostile%3Ci%3E%22x%27/debug/stderr"):
            self.assertIn(f'href="./{link}"', dom)
        shot = os.path.join(self.tmp, "report.png")
        for width, path in ((1280, shot), (390, os.path.join(self.tmp, "phone.png"))):
            taken = subprocess.run(chromium[:-1] + [f"--window-size={width},900",
                                                    f"--screenshot={path}", "file://" + page],
                                   capture_output=True, text=True, timeout=120)
            self.assertEqual(taken.returncode, 0, taken.stderr)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        if os.environ.get("AUTOSERV_REPORT_PNG"):
            shutil.copy(shot, os.environ["AUTOSERV_REPORT_PNG"])



_CHASSIS_PY = """#!%(python)s
# ipmi_sim's chassis_control: drive a QEMU guest through its QMP socket.
import json, socket, sys
def qmp(*cmds):
    s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(%(sock)r)
    f = s.makefile("rwb"); f.readline()
    out = []
    for c in ("qmp_capabilities",) + cmds:
        f.write(json.dumps({"execute": c}).encode() + b"\\n"); f.flush()
        while True:
            m = json.loads(f.readline())
            if "return" in m or "error" in m:
                out.append(m); break
    return out
with open(%(calls)r, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
what = " ".join(sys.argv[1:3])
value = sys.argv[3].strip('"') if len(sys.argv) > 3 else ""
if what == "get power":
    print("power:%%d" %% (1 if qmp("query-status")[-1]["return"]["running"] else 0))
elif what == "set power":
    qmp("stop") if value == "0" else qmp("system_reset", "cont")
elif what == "set reset":
    qmp("system_reset")
"""


class IPMISim:
    """Debian's ipmi_sim on 127.0.0.1 whose chassis power drives a guest."""

    def __init__(self, qmp_socket, password):
        need("ipmi_sim", "ipmitool")
        self.dir = tempfile.mkdtemp(prefix="as-ipmi-")
        self.calls = os.path.join(self.dir, "calls")
        script = os.path.join(self.dir, "chassis")
        with open(script, "w") as f:
            f.write(_CHASSIS_PY % {"python": sys.executable, "sock": qmp_socket,
                                   "calls": self.calls})
        os.chmod(script, 0o755)
        self.script, self.password = script, password
        with open(os.path.join(self.dir, "sim.emu"), "w") as f:
            f.write("mc_setbmc 0x20\n"
                    "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
                    "sel_enable 0x20 50 0x0a\nmc_enable 0x20\n")
        os.mkdir(os.path.join(self.dir, "state"))
        self.proc, self.port = on_a_free_port(self._start, self._answers, "ipmi_sim answering")

    def _answers(self, port):
        return subprocess.run(
            ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port),
             "-U", "admin", "-E", "chassis", "power", "status"],
            env=dict(os.environ, IPMI_PASSWORD=self.password), capture_output=True,
            timeout=30).returncode == 0

    def _start(self, port):
        script, password = self.script, self.password
        with open(os.path.join(self.dir, "lan.conf"), "w") as f:
            f.write(textwrap.dedent(f"""\
                name "astest"
                set_working_mc 0x20
                  startlan 1
                    addr 127.0.0.1 {port}
                    priv_limit admin
                    allowed_auths_callback none md2 md5 straight
                    allowed_auths_user none md2 md5 straight
                    allowed_auths_operator none md2 md5 straight
                    allowed_auths_admin none md2 md5 straight
                    guid a123456789abcdefa123456789abcdef
                  endlan
                  chassis_control "{script}"
                  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
                """))
        with open(os.path.join(self.dir, "sim.log"), "wb") as log:
            return subprocess.Popen(
                ["ipmi_sim", "-n", "-c", os.path.join(self.dir, "lan.conf"),
                 "-f", os.path.join(self.dir, "sim.emu"), "-s", os.path.join(self.dir, "state")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class TestPower(unittest.TestCase):
    """Power controllers and hard resets against a QEMU guest."""
    PASSWORD = "s3cret-Pw-4251"

    @classmethod
    def setUpClass(cls):
        cls.img, cls.kvm, cls.guest = start_guest("02:00:00:00:03:01")
        cls.addClassCleanup(cls.guest.close)
        cls.bmc = IPMISim(cls.guest.qmp_socket, cls.PASSWORD)
        cls.addClassCleanup(cls.bmc.stop)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-power-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.addCleanup(check_guest, self, self.guest)

    def plain_host(self, **kw):
        h = autoserv.SSHHost("127.0.0.1", port=self.guest.port, identity=self.img["key"],
                             host_key_policy="ephemeral", connect_timeout=3, **kw)
        self.addCleanup(h.close)
        return h

    def bmc_calls_so_far(self):
        """Where this test's part of the BMC's call log (shared by the
        class) begins."""
        return len(read_file(self.bmc.calls)) if os.path.exists(self.bmc.calls) else 0

    def test_ipmi_power_cycle_brings_the_guest_back_with_a_new_boot_id(self):
        h = self.plain_host(power=autoserv.IPMIPower("127.0.0.1", port=self.bmc.port,
                                                     password=self.PASSWORD))
        self.assertEqual(h.power.status(), "on")
        before = h.get_boot_id()
        calls = self.bmc_calls_so_far()
        h.power_cycle()
        self.assertTrue(h.wait_down(timeout=60, old_boot_id=before))
        self.assertTrue(h.wait_up(timeout=120))
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertIn("set power 0", read_file(self.bmc.calls)[calls:])     # this test's

    def test_hardreset_uses_the_power_controllers_reset(self):
        h = self.plain_host(power=autoserv.IPMIPower("127.0.0.1", port=self.bmc.port,
                                                     password=self.PASSWORD))
        before = h.get_boot_id()
        calls = self.bmc_calls_so_far()
        h.hardreset(timeout=120)
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertEqual(read_file(self.bmc.calls)[calls:].count("set reset 1"), 1)

    @scenario(25)
    def test_a_host_that_never_returns_is_brought_back_by_one_ipmi_reset(self):
        # Through a power controller (the BMC's chassis reset drives the
        # guest), with ps sampled all along for the BMC password.
        autoserv.ServerJob(self.tmp)
        self.addCleanup(self._end_job)
        h = self.plain_host(power=autoserv.IPMIPower("127.0.0.1", port=self.bmc.port,
                                                     password=self.PASSWORD))
        before = h.get_boot_id()
        calls = self.bmc_calls_so_far()
        t0 = time.monotonic()
        with CmdlineSampler() as ps:
            h.reboot(reboot_cmd="halt -f", timeout=15, down_timeout=10)
        self.assertLess(time.monotonic() - t0, 10 + 15 + autoserv.POST_RESET_WAIT + 10)
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertEqual(read_file(self.bmc.calls)[calls:].count("set reset 1"), 1)   # one
        self.assertTrue(ps.seen("ipmitool"), "the sampler never saw ipmitool run")
        self.assertEqual(ps.seen(self.PASSWORD), [])
        ops = [(e["code"], e["operation"]) for e in autoserv.parse_status_log(
            read_file(os.path.join(self.tmp, "status.log")))]
        # Recovered: WARNs tell the story (did not return; back after the
        # reset), nothing that fails the job.
        reset = ops.index(("WARN", "reboot.verify"))
        self.assertIn(("WARN", "reboot.verify"), ops[reset + 1:])
        self.assertIn(("GOOD", "reboot.verify"), ops[reset:])
        self.assertEqual(autoserv.worst_status(*[c for c, _ in ops]), "WARN")
        # The reset follows at once: the host, known down, is not probed for
        # a boot id first (that probe only waited out its connect timeout).
        with open(os.path.join(self.tmp, "debug", "autoserv.log"), errors="replace") as f:
            log = f.read()
        gap = log[log.index("did not return; trying one hard reset"):
                  log.index("hard reset through IPMIPower")]
        self.assertEqual([line for line in gap.splitlines() if "ssh master" in line
                          or "random/boot_id" in line], [])

    def _end_job(self):
        autoserv._JOB = None
        autoserv.LOG.close()

    @scenario(28)
    def test_wrong_ipmi_password_is_a_clear_error_and_no_password_is_ever_shown(self):
        # A job whose BMC password (from the environment) is wrong: a clear
        # error in what autoserv writes, within the controller's timeout, and
        # neither password in ps, the output or any file of the results.
        wrong = "Wr0ng-Pw-4252"
        ctl = os.path.join(self.tmp, "reset.control")
        with open(ctl, "w") as f:
            f.write(f"h = hosts.SSHHost('127.0.0.1', port={self.guest.port}, "
                    f"identity={self.img['key']!r}, host_key_policy='ephemeral')\n"
                    f"h.power = power.IPMIPower('127.0.0.1', port={self.bmc.port})\n"
                    "h.hardreset()\n")
        res = os.path.join(self.tmp, "res")
        t0 = time.monotonic()
        with CmdlineSampler() as ps:
            out = run_cli("-r", res, ctl, env=dict(os.environ, IPMI_PASSWORD=wrong))
        self.assertLess(time.monotonic() - t0, 30 + 5 + 10)
        self.assertNotEqual(out.returncode, 0, out.stderr)
        self.assertIn("wrong user or password", out.stderr)
        self.assertNotIn("Traceback", out.stderr)
        self.assertTrue(ps.seen("ipmitool"), "the sampler never saw ipmitool run")
        for pw in (wrong, self.PASSWORD):
            self.assertEqual(ps.seen(pw), [])
            self.assertNotIn(pw, out.stdout + out.stderr)
        status = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertTrue([e for e in status if "AutoservHostError" in e["message"]
                         and "wrong user or password" in e["message"]], status)
        for top, _, names in os.walk(res):
            for name in names:
                with open(os.path.join(top, name), "rb") as f:
                    data = f.read()
                for pw in (wrong, self.PASSWORD):
                    self.assertNotIn(pw.encode(), data, os.path.join(top, name))
        self.assertIn(b"ipmitool chassis power", read_file(
            os.path.join(res, "debug", "autoserv.log"), "rb"))
        right = autoserv.IPMIPower("127.0.0.1", port=self.bmc.port, password=self.PASSWORD)
        self.assertEqual(right.status(), "on")

    @scenario(28)
    def test_qmp_power_cycle_and_a_frozen_qemu_is_a_clear_error(self):
        h = self.plain_host(power=autoserv.QMPPower(self.guest.qmp_socket))
        before = h.get_boot_id()
        h.hardreset(timeout=120)
        after_reset = h.get_boot_id()
        self.assertNotEqual(after_reset, before)
        # Off is off (QEMU stopped); a power cycle from there boots it again.
        h.power.off()
        self.assertEqual(h.power.status(), "off")
        h.power_cycle()
        self.assertEqual(h.power.status(), "on")
        self.assertTrue(h.wait_up(120))
        self.assertNotEqual(h.get_boot_id(), after_reset)
        # QMP system_reset does not unfreeze a stopped QEMU: the reset path is broken.
        self.kvm.qmp(self.guest.qmp_socket, {"execute": "stop"})
        try:
            t0 = time.monotonic()
            with self.assertRaises(autoserv.AutoservRebootError) as cm:
                self.guest.hardreset(timeout=15)
            self.assertLess(time.monotonic() - t0, 15 + 15)
            self.assertIn("did not come back", str(cm.exception))
        finally:
            self.kvm.qmp(self.guest.qmp_socket, {"execute": "cont"})
        self.assertTrue(self.guest.wait_up(120))

    def _redfish_stand_in(self):
        """A minimal Redfish service over HTTPS (a stand-in: no real emulator
        installs here without libvirt) whose reset actions drive the guest."""
        import base64
        import http.server
        test = self
        auth = "Basic " + base64.b64encode(b"admin:" + self.PASSWORD.encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorised(self):
                if self.headers.get("Authorization") != auth:
                    self.reply(401, {"error": "unauthorised"})
                    return False
                return True

            def do_GET(self):
                if not self.authorised():
                    return
                if self.path == "/redfish/v1/Systems":
                    self.reply(200, {"Members": [{"@odata.id": "/redfish/v1/Systems/guest"}]})
                elif self.path == "/redfish/v1/Systems/guest":
                    running = test.kvm.qmp(test.guest.qmp_socket,
                                           {"execute": "query-status"})[0]["running"]
                    self.reply(200, {"PowerState": "On" if running else "Off"})
                else:
                    self.reply(404, {})

            def do_POST(self):
                if not self.authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                test.redfish_calls.append(body["ResetType"])
                cmds = {"ForceOff": ["stop"], "On": ["system_reset", "cont"],
                        "PowerCycle": ["system_reset", "cont"],
                        "ForceRestart": ["system_reset"]}[body["ResetType"]]
                test.kvm.qmp(test.guest.qmp_socket, *[{"execute": c} for c in cmds])
                self.reply(204, {})

        self.redfish_calls = []
        return serve_on_loopback(self, Handler, self.tmp, tls=True)

    def test_redfish_power_against_a_stand_in_service_over_https(self):
        url, cert = self._redfish_stand_in()
        power = autoserv.RedfishPower(url, user="admin", password=self.PASSWORD, ca_file=cert)
        self.assertEqual(power.status(), "on")
        h = self.plain_host(power=power)
        before = h.get_boot_id()
        h.hardreset(timeout=120)
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertEqual(self.redfish_calls, ["ForceRestart"])
        unverified = autoserv.RedfishPower(url, user="admin", password=self.PASSWORD)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            unverified.status()
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(cm.exception))
        insecure = autoserv.RedfishPower(url, user="admin", password=self.PASSWORD,
                                         verify=False)
        self.assertEqual(insecure.status(), "on")
        wrong = autoserv.RedfishPower(url, user="admin", password="nope-4253", ca_file=cert)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            wrong.cycle()
        self.assertIn("authentication failed", str(cm.exception))
        self.assertNotIn("nope-4253", str(cm.exception))

    def test_dash_b_reboots_every_machine_after_the_job(self):
        config = os.path.join(self.tmp, "ssh_config")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                Host guestbox
                    HostName 127.0.0.1
                    Port {self.guest.port}
                    User root
                    IdentityFile {self.img['key']}
                    UserKnownHostsFile {os.path.join(self.tmp, 'kh')}
                """))
        ctl = os.path.join(self.tmp, "b.control")
        with open(ctl, "w") as f:
            f.write("print hosts.SSHHost(machines[0]).get_boot_id()\n")
        res = os.path.join(self.tmp, "res")
        out = run_cli("--ssh-config", config, "-r", res, "-b", "-m", "guestbox", ctl,
                      timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        before = out.stdout.strip()
        self.assertNotEqual(self.guest.get_boot_id(), before)
        codes = [(e["code"], e["operation"]) for e in autoserv.parse_status_log(
            read_file(os.path.join(res, "status.log")))]
        self.assertIn(("GOOD", "reboot.verify"), codes)

    def test_reboot_and_uname_through_an_ssh_config_alias(self):
        known = os.path.join(self.tmp, "known_hosts")
        config = os.path.join(self.tmp, "ssh_config")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                Host 192.168.1.1
                    HostName 127.0.0.1
                    Port {self.guest.port}
                    User root
                    IdentityFile {self.img['key']}
                    UserKnownHostsFile {known}
                """))
        ctl = os.path.join(self.tmp, "reboot.control")
        with open(ctl, "w") as f:
            boot = '"boot " + remote_host.run("cat /proc/sys/kernel/random/boot_id").stdout'
            f.write('remote_host= hosts.SSHHost("192.168.1.1")\n'
                    'print remote_host.run("uname -a").stdout\n'
                    f'print {boot}\n'
                    'remote_host.reboot()\n'
                    'print remote_host.run("uname -a").stdout\n'
                    f'print {boot}\n')
        res = os.path.join(self.tmp, "res")
        out = run_cli("--ssh-config", config, "-r", res, ctl, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.count("Linux guest"), 2)
        boots = re.findall(r"^boot (\S+)$", out.stdout, re.M)
        self.assertEqual(len(set(boots)), 2, out.stdout)      # it did reboot
        codes = [(e["code"], e["operation"]) for e in autoserv.parse_status_log(
            read_file(os.path.join(res, "status.log")))]
        self.assertIn(("GOOD", "reboot.verify"), codes)


class TestHealth(unittest.TestCase):
    """host.verify(), host.repair(), --verify, --verify-first: one QEMU
    guest (every destructive test heals it again: a reboot or a QMP reset)
    and three namespace hosts, the third with its link down when a test
    wants a sick host without a reset path.  Repair never reaches the
    namespace hosts' kernel: they are unreachable, or healthy (untouched)."""

    @classmethod
    def setUpClass(cls):
        cls.addClassCleanup(reap)           # cleanups run last first: reap at the end
        cls.addClassCleanup(autoserv._close_all_hosts)
        cls.img, cls.kvm, cls.guest = start_guest("02:00:00:00:0a:01")
        cls.addClassCleanup(cls.guest.close)
        cls.hosts = NamespaceHosts(3)
        cls.addClassCleanup(cls.hosts.close)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-health-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def job(self):
        autoserv.ServerJob(os.path.join(self.tmp, "job"))
        self.addCleanup(self._end_job)

    def _end_job(self):
        autoserv._JOB = None
        autoserv.LOG.close()

    def status(self):
        with open(os.path.join(self.tmp, "job", "status.log")) as f:
            return autoserv.parse_status_log(f.read())

    def fresh_guest(self, check=True):
        """A new connection to the shared guest, its reset path QMP; with
        check, the guest's R and L checks after the test."""
        h = autoserv.SSHHost("127.0.0.1", port=self.guest.port, identity=self.img["key"],
                             host_key_policy="ephemeral", connect_timeout=3,
                             power=autoserv.QMPPower(self.guest.qmp_socket))
        self.addCleanup(h.close)
        if check:
            self.addCleanup(check_guest, self, h)
        return h

    def link_down(self, i):
        self.hosts.link(i, "down")
        self.addCleanup(self.hosts.link, i, "up")

    def fill_tmp(self, h):
        # /tmp (a tmpfs) shrunk to 64 MB, then 24 MB of it filled: under
        # verify's 50 MB floor without pressing on the 256 MB guest's memory
        # (80 MB into its full-size /tmp once ended an ssh session, status
        # 255, in a full run).  A reboot brings /tmp back whole and empty.
        h.run("mount -o remount,size=64m /tmp && "
              "dd if=/dev/zero of=/tmp/as-fill bs=1M count=24 2>/dev/null", timeout=120)
        self.addCleanup(lambda: self.fresh_guest(check=False).run(
            "rm -f /tmp/as-fill; mount -o remount,size=50% /tmp", timeout=60,
            ignore_status=True))

    def cli(self, *args, timeout=240):
        return run_cli("--ssh-config", self.hosts.ssh_config, "-i", self.img["key"],
                       "--host-key-policy", "ephemeral", "--connect-timeout", "3", *args,
                       timeout=timeout)

    def test_a_healthy_guest_verifies_with_its_figures_and_repair_leaves_it_alone(self):
        self.job()
        h = self.fresh_guest()
        before, readies = h.get_boot_id(), read_file(self.guest.serial_log).count("READY")
        figures = h.verify()
        for text in ("reachable in ", f"boot id {before}", "/ ", "/tmp ", " MB free",
                     "clock "):
            self.assertIn(text, figures)
        h.repair()
        self.assertEqual(h.get_boot_id(), before)
        self.assertEqual(read_file(self.guest.serial_log).count("READY"), readies)
        ops = [(e["code"], e["operation"]) for e in self.status()]
        self.assertIn(("GOOD", "verify"), ops)
        self.assertFalse([op for _, op in ops if op and op.startswith(("repair", "reboot"))],
                         ops)

    def test_a_b_a_skewed_clock_and_an_incomplete_autotest_install_are_named(self):
        h = self.fresh_guest()
        fix_clock = lambda: h.run(f"date -s @{int(time.time())} >/dev/null", timeout=30)  # noqa: E731
        self.addCleanup(fix_clock)
        self.addCleanup(h.run, "rm -rf /usr/local/autotest", timeout=30)
        h.run(f"date -s @{int(time.time()) + 1000} >/dev/null", timeout=30)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.verify()
        self.assertEqual(cm.exception.check, "clock")
        self.assertRegex(cm.exception.detail, r"^\+(99\d|100\d) s from this machine's clock "
                                              r"\(bound 120 s\)$")
        fix_clock()
        h.run("mkdir -p /usr/local/autotest/tmp", timeout=30)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.verify()
        self.assertEqual((cm.exception.check, cm.exception.detail),
                         ("autotest install", "/usr/local/autotest: incomplete (neither "
                                              "autoserv.py nor bin/autotest there)"))
        h.run("touch /usr/local/autotest/autoserv.py", timeout=30)
        figures = h.verify()
        self.assertRegex(figures, r"/usr/local/autotest \d+ MB free; clock [-+]\d s; "
                                  r"autotest in /usr/local/autotest$")

    def test_b_a_full_tmp_fails_verify_naming_it_and_a_reboot_heals_it(self):
        self.job()
        h = self.fresh_guest()
        before = h.get_boot_id()
        self.fill_tmp(h)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.verify()
        self.assertEqual(cm.exception.check, "free space")
        self.assertRegex(str(cm.exception), r"/tmp: \d+ MB free, needs 50 MB")
        failed = [e for e in self.status() if e["operation"] == "verify"]
        self.assertEqual(failed[-1]["code"], "FAIL")
        self.assertRegex(failed[-1]["message"], r"free space: /tmp: \d+ MB free")
        worst = autoserv._JOB.status.worst       # verify()'s FAIL just now
        h.repair()
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertIn("0", h.run("ls /tmp | grep -c as-fill", ignore_status=True).stdout)
        steps = {e["operation"]: e for e in self.status()
                 if (e["operation"] or "").startswith("repair")}
        self.assertIn("still sick: free space: /tmp", steps["repair.reconnect"]["message"])
        self.assertIn("because free space failed", steps["repair.reboot"]["message"])
        self.assertIn("healthy:", steps["repair.reboot"]["message"])
        self.assertNotIn("repair.hardreset", steps)
        self.assertEqual(steps["repair"]["code"], "END GOOD")
        self.assertEqual(autoserv._JOB.status.worst, worst)

    def test_c_a_guest_whose_sshd_died_is_healed_by_a_qmp_reset_after_the_rest_fail(self):
        self.job()
        h = self.fresh_guest()
        before = h.get_boot_id()
        h.run("for p in $(pidof dropbear); do "
              "[ \"$(awk '{print $4}' /proc/$p/stat)\" = 1 ] && kill $p; done; true",
              timeout=30)
        h.close()                      # its master was the last way in
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.verify()
        self.assertEqual(cm.exception.check, "reachable")
        t0 = time.monotonic()
        worst = autoserv._JOB.status.worst
        h.repair()
        self.assertLess(time.monotonic() - t0, 240)
        # The soft reboot's ABORT is on record, but a healed host fails nothing.
        self.assertIn(("ABORT", "reboot.verify"),
                      [(e["code"], e["operation"]) for e in self.status()])
        self.assertEqual(autoserv._JOB.status.worst, worst)
        self.assertNotEqual(h.get_boot_id(), before)
        steps = {e["operation"]: e["message"] for e in self.status()
                 if (e["operation"] or "").startswith("repair.")}
        self.assertEqual(list(steps), ["repair.reconnect", "repair.reboot", "repair.hardreset"])
        self.assertIn("still sick: reachable", steps["repair.reconnect"])
        self.assertIn("it failed", steps["repair.reboot"])
        self.assertIn("healthy:", steps["repair.hardreset"])
        self.assertIn(("INFO", "hardreset"), [(e["code"], e["operation"]) for e in self.status()])

    def test_d_a_host_whose_link_is_down_has_no_reset_path_and_repair_says_so(self):
        self.job()
        self.link_down(2)
        h = autoserv.SSHHost(self.hosts.names[2], ssh_config=self.hosts.ssh_config,
                             connect_timeout=3)
        self.addCleanup(h.close)
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.repair()
        self.assertIn("no reset path", str(cm.exception))
        self.assertIn("reachable", str(cm.exception))
        steps = [(e["code"], e["operation"], e["message"]) for e in self.status()
                 if (e["operation"] or "").startswith("repair")]
        self.assertEqual([s[1] for s in steps], ["repair", "repair.reconnect", "repair.reboot",
                                                 "repair.hardreset", "repair", "repair"])
        self.assertIn("no reset path", steps[3][2])
        self.assertEqual(steps[-1][0], "END FAIL")

    def test_d_a_reachable_host_that_is_not_root_is_not_rebooted_and_has_no_reset_path(self):
        # A sick figure (a threshold over what / has) on a namespace host:
        # the reboot is refused before it is sent (an unprivileged login),
        # and with no reset path the repair stops, quickly.
        self.job()
        h = autoserv.SSHHost(self.hosts.names[0], ssh_config=self.hosts.ssh_config,
                             connect_timeout=3)
        self.addCleanup(h.close)
        before = h.get_boot_id()
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservHostError) as cm:
            h.repair(min_free={"/": 10 ** 9})
        self.assertLess(time.monotonic() - t0, 60)
        self.assertIn("repair failed; no reset path (free space: /: ", str(cm.exception))
        self.assertEqual(h.get_boot_id(), before)
        steps = {e["operation"]: e["message"] for e in self.status()
                 if (e["operation"] or "").startswith("repair.")}
        self.assertIn("it failed (AutoservHostError: nshost01: not rebooted (logged in as "
                      "uid", steps["repair.reboot"])
        self.assertNotIn("reboot", [e["operation"] for e in self.status()])

    def test_e_verify_names_each_sick_host_and_its_check_and_exits_4(self):
        h = self.fresh_guest()
        self.fill_tmp(h)
        self.link_down(2)
        guest = f"root@127.0.0.1:{self.guest.port}"
        res = os.path.join(self.tmp, "res")
        out = self.cli("--verify", "-r", res, "-m", ",".join(self.hosts.names + [guest]))
        self.assertEqual(out.returncode, 4, out.stderr)
        rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
        self.assertEqual(sorted(rows), sorted(self.hosts.names + [guest]))
        for name in self.hosts.names[:2]:
            self.assertRegex(rows[name], r"GOOD +reachable in ")
        self.assertRegex(rows["nshost03"], r"SICK +verify failed: reachable \(.*connection timed "
                                           r"out.*\(after [\d.]+ s; connect timeout 3 s\)\)")
        self.assertRegex(rows[guest], r"SICK +verify failed: free space \(/tmp: \d+ MB")
        self.assertIn("2 of 4 hosts GOOD", out.stderr)
        self.assertIn("nshost03 FAIL sick: verify failed: reachable", out.stderr)
        dropped = json.loads(read_file(os.path.join(res, "summary.json")))["job"]["dropped"]
        self.assertEqual(sorted(dropped), sorted([guest, "nshost03"]))
        self.assertEqual(sorted(json.loads(read_file(os.path.join(res, "summary.json")))["hosts"]),
                         sorted(self.hosts.names + [guest]))

    def test_f_verify_first_drops_the_sick_runs_the_rest_and_exits_4(self):
        # The guest's full /tmp is healed by --repair's reboot; nshost03
        # (link down, no reset path) is dropped; the control file runs on
        # the other three, and sees only them.
        h = self.fresh_guest()
        before = h.get_boot_id()
        self.fill_tmp(h)
        self.link_down(2)
        guest = f"root@127.0.0.1:{self.guest.port}"
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent("""\
                def uname(name):
                    return hosts.create_host(name).run("uname -n").stdout.strip()
                print("machines:", " ".join(machines))
                print("names:", " ".join(parallel_simple(uname, machines,
                                                         return_results=True)))
                """))
        res = os.path.join(self.tmp, "res")
        out = self.cli("--verify-first", "--repair", "-r", res, "-m",
                       ",".join(self.hosts.names + [guest]), ctl)
        self.assertEqual(out.returncode, 4, out.stderr)
        self.assertIn(f"machines: nshost01 nshost02 {guest}\n", out.stdout)
        self.assertIn("names: nshost01 nshost02 guest\n", out.stdout)
        self.assertNotEqual(h.get_boot_id(), before)
        self.assertRegex(out.stderr, r"dropped nshost03: repair failed; no reset path "
                                     r"\(reachable: .*connect timeout 3 s\)")
        self.assertIn("3 of 4 hosts GOOD; nshost03 FAIL dropped: repair failed", out.stderr)
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(list(summary["job"]["dropped"]), ["nshost03"])
        self.assertEqual(summary["job"]["outcome"], "WARN")
        self.assertEqual(summary["hosts"]["nshost01"]["outcome"], "GOOD")
        self.assertEqual(sorted(summary["hosts"]), sorted(self.hosts.names + [guest]))
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        self.assertIn(("WARN", "verify"), [(e["code"], e["operation"]) for e in entries
                                            if "nshost03: dropped" in e["message"]])
        self.assertIn(("END GOOD", "repair"), [(e["code"], e["operation"]) for e in entries])
        page = read_file(os.path.join(res, "index.html"))
        self.assertIn('<tr class="dropped" data-host="nshost03">', page)
        self.assertIn("repair failed; no reset path", page)


class TestConmux(unittest.TestCase):
    """ConmuxSSHHost with Debian's real conmux server in front of a guest's
    serial console; its hardreset command does a QMP system_reset."""

    @classmethod
    def setUpClass(cls):
        need("conmux", "conmux-console", "socat")
        cls.img, cls.kvm, cls.guest = start_guest("02:00:00:00:04:01",
                                                  append="console=ttyS0,115200 panic=1")
        cls.addClassCleanup(cls.guest.close)
        cls.dir = tempfile.mkdtemp(prefix="as-conmux-")
        chassis = os.path.join(cls.dir, "chassis")
        with open(chassis, "w") as f:
            f.write(_CHASSIS_PY % {"python": sys.executable, "sock": cls.guest.qmp_socket,
                                   "calls": os.path.join(cls.dir, "calls")})
        serial = os.path.join(cls.guest.run_dir, "serial.sock")
        scripts = {"bridge": f"while :; do socat - UNIX-CONNECT:{serial}; sleep 0.2; done\n",
                   "reset": f"exec {chassis} set reset 1\n"}
        for name, body in scripts.items():
            with open(os.path.join(cls.dir, name), "w") as f:
                f.write("#!/bin/sh\n" + body)
        for name in ("chassis", "bridge", "reset"):
            os.chmod(os.path.join(cls.dir, name), 0o755)
        cfg = os.path.join(cls.dir, "guest.cf")

        def start(port):
            with open(cfg, "w") as f:
                f.write(f"listener {port}\n"
                        f"application console 'guest console' '{cls.dir}/bridge'\n"
                        f"command 'hardreset' 'initiated a hard reset' '{cls.dir}/reset'\n"
                        "help 'hardreset' 'reset the guest through QMP'\n")
            return subprocess.Popen(["conmux", cfg], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        cls.server, cls.port = on_a_free_port(start, accepts, "conmux listening")
        cls.addClassCleanup(cls._stop_server)

    @classmethod
    def _stop_server(cls):
        try:
            os.killpg(cls.server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        cls.server.wait(10)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        shutil.rmtree(cls.dir, ignore_errors=True)
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-cmx-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.addCleanup(check_guest, self, self.guest)

    def test_hardreset_through_conmux_and_the_next_boot_is_in_console_log(self):
        autoserv.ServerJob(self.tmp)
        h = None
        try:
            h = autoserv.ConmuxSSHHost("127.0.0.1", port=self.guest.port,
                                       server=f"127.0.0.1:{self.port}",
                                       identity=self.img["key"], host_key_policy="ephemeral",
                                       connect_timeout=3)
            before = h.get_boot_id()
            h.hardreset(timeout=120)
            after = h.get_boot_id()
            self.assertNotEqual(after, before)
        finally:
            if h is not None:
                h.close()      # not every host: the class's guest lives on
            autoserv._JOB = None
            autoserv.LOG.close()
        log = read_file(os.path.join(self.tmp, "127.0.0.1", "console.log"), errors="replace")
        self.assertIn("Linux version", log)
        self.assertIn(f"READY boot_id={after}", log)
        self.assertNotIn(f"READY boot_id={before}", log)
        self.assertFalse([p for p in comm_pids("conmux-console")
                          if p in processes_with(f"127.0.0.1:{self.port}")])

    def test_conmux_power_cycles_through_the_same_command(self):
        h = autoserv.SSHHost("127.0.0.1", port=self.guest.port, identity=self.img["key"],
                             host_key_policy="ephemeral", connect_timeout=3,
                             power=autoserv.ConmuxPower(f"127.0.0.1:{self.port}"))
        self.addCleanup(h.close)
        before = h.get_boot_id()
        h.hardreset(timeout=120)
        self.assertNotEqual(h.get_boot_id(), before)

    def test_a_missing_conmux_client_is_a_clear_error(self):
        with self.assertRaises(autoserv.AutoservUsageError) as cm:
            autoserv.ConmuxSSHHost("somehost", attach="/no/such/conmux-console")
        self.assertIn("install conmux", str(cm.exception))


# Autotest #####################################################################

_CLIENT_TEST = """\
from autotest_lib.client.bin import test
from autotest_lib.client.common_lib import error


class mytest(test.test):
    version = 2

    def initialize(self, mode="pass"):
        self.mode = mode

    def run_once(self, mode="pass", size=3):
        print("mytest running, mode", mode)
        if mode == "fail":
            raise error.TestFail("asked to fail")
        if mode == "crash":
            raise ZeroDivisionError("a bug in the test")
        if mode == "na":
            raise error.TestNAError("does not apply here")
        self.write_perf_keyval({"size": size})
"""

_OLD_STYLE_TEST = """\
import test


class oldstyle(test.test):
    def run_once(self):
        open(self.resultsdir + "/out.txt", "w").write("written by an old-style test")
"""


def client_tree(parent):
    """A client tree in Autotest layout: tests/<name>/<name>.py."""
    tree = os.path.join(parent, "client")
    for name, text in (("mytest", _CLIENT_TEST), ("oldstyle", _OLD_STYLE_TEST)):
        os.makedirs(os.path.join(tree, "tests", name))
        with open(os.path.join(tree, "tests", name, f"{name}.py"), "w") as f:
            f.write(text)
    return tree


class TestAutotest(unittest.TestCase):
    """The autotest client harness, driven through Autotest.get/install/run,
    on a private sshd whose sessions have their own /usr/local/autotest."""

    @classmethod
    def setUpClass(cls):
        cls.sshd = Sshd(private_autodir=True)
        cls.addClassCleanup(cls.sshd.stop)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-at-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def cli(self, text, *args, ssh_config=None):
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write(text)
        return run_cli("--ssh-config", ssh_config or self.sshd.ssh_config,
                       "-r", os.path.join(self.tmp, "res"), *args, ctl, timeout=600)

    def status(self):
        return autoserv.parse_status_log(read_file(os.path.join(self.tmp, "res", "status.log")))

    def test_seed_02_streams_status_profiles_and_brings_results_home(self):
        need("perf")
        ctl = seed_control(self.tmp, "02", {"/var/local/autotest/client": client_tree(self.tmp)})
        out = run_seed(ctl, "--ssh-config", self.sshd.ssh_config, "-r",
                       os.path.join(self.tmp, "res"))
        self.assertEqual(out.returncode, 0, out.stderr)
        entries = self.status()
        ops = [(e["code"], e["subdir"], e["operation"]) for e in entries]
        self.assertIn(("START", "linus_stress", "linus_stress"), ops)
        self.assertIn(("GOOD", "linus_stress", "linus_stress"), ops)
        self.assertFalse([e for e in entries if e["code"] == "WARN"])
        # The client's lines sit inside the server's autotest.run block.
        run = next(e for e in entries if e["operation"] == "autotest.run")
        start = next(e for e in entries if e["code"] == "START" and e["subdir"] == "linus_stress")
        self.assertEqual(start["indent"], run["indent"] + 1)
        res = os.path.join(self.tmp, "res", "job_results")
        keyval = read_file(os.path.join(res, "linus_stress", "results", "keyval"))
        rates = {k: float(v) for k, v in re.findall(
            r"^(sha256_blocks_per_s|memory_mb_touched_per_s|io_mb_per_s)\{perf\}=(\S+)$",
            keyval, re.M)}
        self.assertEqual(len(rates), 3, keyval)
        self.assertTrue(all(v > 0 for v in rates.values()), rates)
        # Each figure is its own measurement, not one loop counter scaled
        # three ways (which made hashing exactly 2x, and I/O equal to, memory).
        self.assertNotAlmostEqual(rates["sha256_blocks_per_s"],
                                  2 * rates["memory_mb_touched_per_s"], delta=0.5)
        self.assertNotAlmostEqual(rates["io_mb_per_s"], rates["memory_mb_touched_per_s"],
                                  delta=0.5)
        self.assertIn("START\tlinus_stress", read_file(os.path.join(res, "status")))
        self.assertTrue(os.path.isfile(os.path.join(res, "linus_stress", "status")))
        # oprofile's event, recorded by perf (SPEC 13) while the test ran.
        report = read_file(os.path.join(res, "linus_stress", "profiling", "perf.report"))
        self.assertIn("Samples", report)

    def test_client_tests_record_good_fail_error_na_and_unknown_and_the_job_goes_on(self):
        tree = client_tree(self.tmp)
        autodir = os.path.join(self.tmp, "autodir")
        out = self.cli(textwrap.dedent(f"""\
            h = hosts.SSHHost("testhost")
            at = autotest.Autotest()
            at.get({tree!r})
            at.install(h, autodir={autodir!r})
            ok = at.run('''
            job.profilers.add("sampler", interval=0.1)
            job.profilers.add("nosuchprofiler")
            job.run_test("mytest", size=5, tag="good")
            job.run_test("mytest", mode="fail", tag="fail")
            job.run_test("mytest", mode="crash", tag="crash")
            job.run_test("mytest", mode="na", tag="na")
            job.run_test("nosuchtest")
            job.run_test("oldstyle")
            job.run_test("sleeptest", seconds=0.2)
            ''', "client", h)
            print("run returned", ok)
            """))
        self.assertEqual(out.returncode, 3, out.stderr)     # a test recorded FAIL
        self.assertIn("run returned False", out.stdout)
        codes = {(e["code"], e["subdir"]) for e in self.status()}
        for expected in (("GOOD", "mytest.good"), ("FAIL", "mytest.fail"),
                         ("ERROR", "mytest.crash"), ("TEST_NA", "mytest.na"),
                         ("FAIL", "nosuchtest"), ("GOOD", "oldstyle"), ("GOOD", "sleeptest"),
                         ("WARN", "----")):
            self.assertIn(expected, codes)
        res = os.path.join(self.tmp, "res", "client")
        self.assertIn("size{perf}=5", read_file(os.path.join(res, "mytest.good", "results",
                                                        "keyval")))
        self.assertIn("version=2", read_file(os.path.join(res, "mytest.good", "keyval")))
        self.assertGreater(len(read_file(os.path.join(res, "sleeptest", "profiling",
                                                 "sampler.csv")).splitlines(keepends=True)), 1)
        self.assertIn("ZeroDivisionError", read_file(os.path.join(res, "mytest.crash", "debug",
                                                             "harness.log")))
        self.assertEqual(read_file(os.path.join(res, "oldstyle", "results", "out.txt")),
                         "written by an old-style test")
        self.assertIn("FAIL\tmytest.fail", read_file(os.path.join(res, "mytest.fail", "status")))

    def test_perf_profiler_records_the_seeds_events_and_warns_for_the_rest(self):
        need("perf")
        autodir = os.path.join(self.tmp, "autodir")
        out = self.cli(textwrap.dedent(f"""\
            h = hosts.SSHHost("testhost")
            at = autotest.Autotest()
            at.install(h, autodir={autodir!r})
            at.run('''
            job.profilers.add("perf", events=["CPU_CLK_UNHALTED:8000", "NO_SUCH_EVENT:100"])
            job.profilers.add("sampler", interval=0.1, colour="blue")
            job.run_test("sleeptest", seconds=0.5)
            ''', "client", h)
            """))
        self.assertEqual(out.returncode, 0, out.stderr)
        warns = [e["message"] for e in self.status() if e["code"] == "WARN"]
        self.assertTrue(any("NO_SUCH_EVENT" in w for w in warns), warns)
        self.assertTrue(any("colour" in w for w in warns), warns)
        self.assertFalse(any("CPU_CLK_UNHALTED" in w for w in warns), warns)
        data = os.path.join(self.tmp, "res", "client", "sleeptest", "profiling", "perf.data")
        # What perf was asked to record (it may fall back to cpu-clock where
        # there are no hardware counters, as in a VM).
        header = subprocess.run(["perf", "report", "--header-only", "-i", data],
                                capture_output=True, text=True, timeout=60).stdout
        cmdline = next(l for l in header.splitlines() if "cmdline" in l)
        self.assertIn("-e cycles/period=8000/", cmdline)
        self.assertNotIn("NO_SUCH", cmdline)

    def test_client_tests_failing_inside_parallel_fail_the_job_as_outside(self):
        # Seed 09's shape: at.run on both sides under parallel(subcommand(...)).
        # (Two installs, one per side: each has its own control file.)
        out = self.cli(textwrap.dedent(f"""\
            h = hosts.SSHHost("testhost")
            sides = []
            for tag in ("server", "client"):
                at = autotest.Autotest()
                at.install(h, autodir={self.tmp!r} + "/autodir-" + tag)
                failing = "job.run_test('mytest', tag='%s')\\n" % tag
                sides.append(subcommand(at.run, [failing, tag, h]))
            parallel(sides)
            print("control file went on")
            """))
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertIn("control file went on", out.stdout)
        entries = self.status()
        tasks = [e for e in entries if e["operation"] == "Autotest.run"]
        self.assertEqual([(e["code"], e["message"]) for e in tasks],
                         [("START", "Autotest.run on testhost"),
                          ("END FAIL", "Autotest.run on testhost")] * 2)
        for tag in ("server", "client"):
            fail = next(e for e in entries if e["code"] == "FAIL"
                        and e["subdir"] == f"mytest.{tag}")
            self.assertGreater(fail["indent"], tasks[0]["indent"])
        parallel_end = [e for e in entries if e["operation"] == "parallel"][-1]
        self.assertEqual(parallel_end["code"], "END FAIL")
        summary = json.loads(read_file(os.path.join(self.tmp, "res", "summary.json")))
        self.assertEqual(summary["job"]["outcome"], "FAIL")
        self.assertEqual(summary["hosts"]["testhost"]["outcome"], "FAIL")
        self.assertIn("mytest", summary["hosts"]["testhost"]["error"])

    def test_a_broken_client_control_file_is_an_error_naming_it(self):
        autodir = os.path.join(self.tmp, "autodir")
        out = self.cli(textwrap.dedent(f"""\
            h = hosts.SSHHost("testhost")
            at = autotest.Autotest()
            at.install(h, autodir={autodir!r})
            at.run("job.run_test('sleeptest', seconds=0.1)\\nraise ValueError('client bug')\\n",
                   "client", h)
            """))
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("the client control file failed", out.stderr)
        self.assertIn("client bug", out.stderr)
        codes = [(e["code"], e["operation"]) for e in self.status()]
        self.assertIn(("ABORT", "client"), codes)
        self.assertIn(("GOOD", "sleeptest"), codes)


class TestAutotestFanOut(unittest.TestCase):
    """-c on three namespace hosts at once, and netperf2 between two of them."""

    @classmethod
    def setUpClass(cls):
        cls.hosts = NamespaceHosts(3)
        cls.addClassCleanup(cls.hosts.close)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-atfan-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp)
        self.autodirs = os.path.join(self.tmp, "autodirs")
        os.mkdir(self.autodirs)
        os.chmod(self.autodirs, 0o1777)

    def test_dash_c_runs_a_client_control_file_on_three_hosts_at_once(self):
        ctl = os.path.join(self.tmp, "client.control")
        with open(ctl, "w") as f:
            f.write('job.run_test("sleeptest", seconds=2)\n')
        t0 = time.monotonic()
        out = run_cli("--ssh-config", self.hosts.ssh_config, "-c",
                      "--autodir", os.path.join(self.autodirs, "{host}"),
                      "-m", ",".join(self.hosts.names), "-r", os.path.join(self.tmp, "res"),
                      ctl, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertLess(time.monotonic() - t0, 120)
        spans = []
        for name in self.hosts.names:
            with self.subTest(host=name):
                res = os.path.join(self.tmp, "res", name)
                self.assertIn("slept_seconds{perf}=2.0",
                              read_file(os.path.join(res, "sleeptest", "results", "keyval")))
                entries = autoserv.parse_status_log(
                    read_file(os.path.join(res, "status.log")))
                s = next(e for e in entries if e["code"] == "START" and e["subdir"] == "sleeptest")
                g = next(e for e in entries if e["code"] == "GOOD" and e["subdir"] == "sleeptest")
                spans.append((int(s["fields"]["timestamp"]), int(g["fields"]["timestamp"])))
        # The three ran at once: every sleeptest started before any ended.
        self.assertLessEqual(max(s for s, _ in spans), min(g for _, g in spans))

    def netperf_job(self, server_args, client_args):
        """Seed 09's shape on two namespace hosts: netperf2's server and
        client sides, each an at.run in its own subcommand of one parallel()."""
        a, b = self.hosts.names[:2]
        addr_a, addr_b = self.hosts.addrs[:2]
        ctl = os.path.join(self.tmp, "netperf.control")
        with open(ctl, "w") as f:
            f.write(textwrap.dedent(f"""\
                server, client = hosts.SSHHost({a!r}), hosts.SSHHost({b!r})
                at = autotest.Autotest()
                at.install(server, autodir={self.autodirs + '/s'!r})
                at.install(client, autodir={self.autodirs + '/c'!r})
                sc = 'job.run_test("netperf2", "{addr_a}", "{addr_b}", "server", tag="server"{server_args})'
                cc = 'job.run_test("netperf2", "{addr_a}", "{addr_b}", "client", tag="client"{client_args})'
                parallel([subcommand(at.run, [sc, "server", server]),
                          subcommand(at.run, [cc, "client", client])])
                """))
        res = os.path.join(self.tmp, "res")
        return run_cli("--ssh-config", self.hosts.ssh_config, "-r", res, ctl, timeout=300), res

    def test_netperf2_server_and_client_synchronise_across_two_hosts(self):
        addr_b = self.hosts.addrs[1]
        out, res = self.netperf_job("", ", test_time=2")
        self.assertEqual(out.returncode, 0, out.stderr)
        server = read_file(os.path.join(res, "server", "netperf2.server", "results", "keyval"))
        client = read_file(os.path.join(res, "client", "netperf2.client", "results", "keyval"))
        self.assertRegex(server, r"throughput_mbit_s\{perf\}=\d")
        sent = int(re.search(r"sent_bytes\{perf\}=(\d+)", client).group(1))
        got = int(re.search(r"received_bytes\{perf\}=(\d+)", server).group(1))
        self.assertEqual(sent, got)
        self.assertIn(f"client{{perf}}={addr_b}", server)

    def test_both_netperf_sides_failing_under_parallel_exit_3_as_seed_09_would(self):
        # Seed 09's shape with both sides failing: the server listens on one
        # port, the client looks for it on another; each gives up after 3 s.
        a, b = self.hosts.names[:2]
        out, res = self.netperf_job(", port=12866, wait=3", ", port=12867, wait=3")
        self.assertEqual(out.returncode, 3, out.stderr)
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        for host, tag in ((a, "server"), (b, "client")):
            start = next(i for i, e in enumerate(entries) if e["code"] == "START"
                         and e["message"] == f"Autotest.run on {host}")
            end = next(i for i, e in enumerate(entries) if i > start
                       and e["indent"] == entries[start]["indent"])
            self.assertEqual(entries[end]["code"], "END FAIL")
            fail = [e for e in entries[start:end] if e["code"] == "FAIL"
                    and e["subdir"] == f"netperf2.{tag}"]
            self.assertEqual(len(fail), 1)
            self.assertGreater(fail[0]["indent"], entries[start]["indent"])
        self.assertEqual([e["code"] for e in entries if e["operation"] == "parallel"],
                         ["START", "END FAIL"])
        summary = json.loads(read_file(os.path.join(res, "summary.json")))
        self.assertEqual(summary["job"]["outcome"], "FAIL")
        self.assertIn("no client within 3 s", summary["hosts"][a]["error"])
        self.assertIn("no server at", summary["hosts"][b]["error"])
        self.assertEqual((summary["hosts"][a]["outcome"], summary["hosts"][b]["outcome"]),
                         ("FAIL", "FAIL"))

class TestAutotestGuest(unittest.TestCase):
    """The client harness on a QEMU guest (Debian root with python3, booting
    through GRUB): the seed's example, and a reboot the client asks for."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="as-atg-")
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        cls.kg = KernelGuest(cls.dir, mac="02:00:00:00:07:01")
        cls.addClassCleanup(cls.kg.close)

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-atg-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.addCleanup(check_guest, self, self.kg.guest)

    def cli(self, text):
        ctl = os.path.join(self.tmp, "job.control")
        with open(ctl, "w") as f:
            f.write(text)
        return run_cli("--ssh-config", self.kg.ssh_config, "-r", os.path.join(self.tmp, "res"),
                       ctl, timeout=900)

    def test_seed_02_runs_on_a_guest_without_perf_with_one_warning(self):
        ctl = seed_control(self.tmp, "02", {"/var/local/autotest/client": client_tree(self.tmp)})
        out = run_seed(ctl, "--ssh-config", self.kg.ssh_config, "-r",
                       os.path.join(self.tmp, "res"))
        self.assertEqual(out.returncode, 0, out.stderr)
        status = read_file(os.path.join(self.tmp, "res", "status.log"))
        self.assertIn("GOOD\tlinus_stress\tlinus_stress", status)
        warns = [e["message"] for e in autoserv.parse_status_log(status) if e["code"] == "WARN"]
        self.assertEqual(len(warns), 1, warns)
        self.assertIn("no perf program", warns[0])
        self.assertTrue(os.path.isfile(os.path.join(self.tmp, "res", "job_results",
                                                    "linus_stress", "results", "keyval")))
        self.assertEqual(self.kg.guest.run("test -f /usr/local/autotest/autoserv.py && "
                                           "test -d /usr/local/autotest/tests/mytest",
                                           ignore_status=True).exit_status, 0)

    def test_seed_06_runs_autotest_in_a_guest_while_perf_profiles_the_hypervisor(self):
        need("perf")
        sshd = Sshd()
        self.addCleanup(sshd.stop)
        img = kernel_disk_image()
        log = os.path.join(self.tmp, "qemu.log")
        ctl = seed_control(self.tmp, "06", {
            "/var/local/src/kvm-compiled.tar.gz": kvm_compiled_tarball(self.tmp, log),
            SEED_DISK: img["disk"],
            "/home/foo/autotest/client": client_tree(self.tmp),
            **user_mode_address("10.0.0.1", guest_ports(1))})
        res = os.path.join(self.tmp, "res")
        out = run_seed(ctl, "--ssh-config", sshd.ssh_config, "-i", img["key"], "-r", res)
        self.assertEqual(out.returncode, 0, out.stderr)
        report = read_file(os.path.join(res, "g1_results", "host_oprofile"))
        self.assertIn("Samples", report)
        self.assertTrue(os.path.isfile(os.path.join(res, "g1_results", "linus_stress",
                                                    "results", "keyval")))
        self.assertIn("GOOD\tlinus_stress", read_file(os.path.join(res, "status.log")))
        self.assertFalse([p for p in comm_pids("perf") if p in processes_with("perf.data")])
        self.assertIn(img["disk"], read_file(log))

    def test_seed_09_installs_a_kernel_in_parallel_then_runs_netperf_guest_to_host(self):
        # The seed's addresses as they are, in a namespace: br0 on
        # 10.0.0.254 with the KVM guest bridged on it as 10.0.0.1 (its
        # address from its MAC); 192.168.1.1 an sshd on the namespace's
        # loopback (this machine's kernel: its release is the version string,
        # so check_kernel installs nothing there); 192.168.1.2 a GRUB disk
        # guest whose qemu runs in the namespace (the kernel goes there).
        ns = Netns()
        self.addCleanup(ns.close)
        ns.exec("ip", "link", "add", "br0", "type", "bridge")
        ns.exec("ip", "addr", "add", "10.0.0.254/24", "dev", "br0")
        ns.exec("ip", "link", "set", "br0", "up")
        sshd = Sshd(private_autodir=True, netns=ns.name)
        self.addCleanup(sshd.stop)
        host2 = NetnsKernelGuest(ns, self.tmp)
        self.addCleanup(host2.close)
        sshd.write_ssh_config(aliases=("192.168.1.1",))
        config = os.path.join(self.tmp, "ssh_config")
        with open(config, "w") as f:
            f.write(host2.ssh_block("192.168.1.2") + read_file(sshd.ssh_config))
        img = kernel_disk_image()
        deb, kver = small_kernel_package(self.tmp)
        ctl = seed_control(self.tmp, "09", {
            '"2.6.21.3-3"': repr(os.uname().release),
            "/var/local/linux-2.6.21.3-3_2.6.21.3-3_amd64.deb": deb,
            "/var/local/src/kvm-33.tar.gz":
                kvm_source_tarball(self.tmp, os.path.join(self.tmp, "qemu.log")),
            SEED_DISK: img["disk"],
            "/home/foo/autotest/client": client_tree(self.tmp)})
        res = os.path.join(self.tmp, "res")
        out = run_seed(ctl, "--ssh-config", config, "-i", img["key"], "-r", res, netns=ns.name)
        self.assertEqual(out.returncode, 0, out.stderr)
        entries = autoserv.parse_status_log(read_file(os.path.join(res, "status.log")))
        installs = [e for e in entries if e["operation"] == "kernel.install"]
        self.assertEqual([e["code"] for e in installs], ["GOOD"])     # on one host of two
        self.assertIn(("GOOD", "boot.kernel"), [(e["code"], e["operation"]) for e in entries])
        self.assertIn(kver, ns.exec("ssh", "-F", config, "-o", "BatchMode=yes", "192.168.1.2",
                                    "uname -r").stdout)
        server = read_file(os.path.join(res, "results-netperf-guest-to-host-far-server",
                                   "netperf2.server", "results", "keyval"))
        client = read_file(os.path.join(res, "results-netperf-guest-to-host-far-client",
                                   "netperf2.client", "results", "keyval"))
        self.assertIn("client{perf}=10.0.0.254", server)      # the far host, through br0
        self.assertIn("server{perf}=10.0.0.1", client)
        self.assertEqual(re.search(r"sent_bytes\{perf\}=(\d+)", client).group(1),
                         re.search(r"received_bytes\{perf\}=(\d+)", server).group(1))
        self.assertFalse(self.qemu_with(img["disk"] + ","))    # the KVM guest is gone
        links = ns.exec("ip", "-o", "link").stdout
        self.assertFalse(re.search(r"^\d+: ast\d+x\d+", links, re.M), links)   # tap gone

    def qemu_with(self, text):
        return [p for p in comm_pids("qemu-system-x86") if p in processes_with(text)]

    def test_a_reboot_the_client_asks_for_between_two_tests_completes_both(self):
        before = self.kg.guest.get_boot_id()
        out = self.cli(textwrap.dedent("""\
            h = hosts.SSHHost("192.168.1.1")
            at = autotest.Autotest()
            at.install(h)
            at.run('''
            job.run_test("sleeptest", seconds=0.5, tag="one")
            job.reboot()
            job.run_test("sleeptest", seconds=0.5, tag="two")
            ''', "client", h)
            """))
        self.assertEqual(out.returncode, 0, out.stderr)
        entries = autoserv.parse_status_log(read_file(os.path.join(self.tmp, "res",
                                                              "status.log")))
        ops = [(e["code"], e["subdir"], e["operation"]) for e in entries]
        self.assertEqual(ops.count(("START", "sleeptest.one", "sleeptest")), 1)
        self.assertEqual(ops.count(("GOOD", "sleeptest.one", "sleeptest")), 1)
        self.assertEqual(ops.count(("GOOD", "sleeptest.two", "sleeptest")), 1)
        self.assertEqual(ops.count(("GOOD", "----", "reboot.verify")), 1)
        reboot = next(e for e in entries if e["operation"] == "reboot.start")
        self.assertIn(before, reboot["message"])
        self.assertNotEqual(self.kg.guest.get_boot_id(), before)
        res = os.path.join(self.tmp, "res", "client")
        for tag in ("one", "two"):
            self.assertTrue(os.path.isdir(os.path.join(res, f"sleeptest.{tag}")))
        self.assertFalse(os.path.exists(os.path.join(res, ".client_state")))


# Kernels on guests and the seed's examples ####################################

class KernelGuest:
    """A guest booting through real GRUB from a fresh qcow2 overlay of the
    kernel disk (so what a test installs dies with it), plus an ssh config in
    which the seed's 192.168.1.1 leads to it with its host key pinned."""

    def __init__(self, tmp, mac="02:00:00:00:06:01"):
        self.img = kernel_disk_image()
        self.overlay = os.path.join(tmp, "kdisk.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", self.img["disk"],
           self.overlay)
        self.kvm = autoserv.KVM(autoserv.LocalHost())
        self.port = guest_ports(1)
        self.kvm.install([{"mac": mac, "ip": "127.0.0.1", "port": self.port}])
        self.guest = autoserv.KVMGuest(
            self.kvm, f"-m 512 -drive file={self.overlay},if=none,id=d0 "
            "-device nvme,drive=d0,serial=d0", identity=self.img["key"], connect_timeout=5)
        if not self.guest.wait_up(180):
            tail = self.guest.serial_tail(30)
            self.guest.close()
            raise AssertionError("kernel disk guest did not come up:\n" + tail)
        self.ssh_config = os.path.join(tmp, "ssh_config")
        with open(self.ssh_config, "w") as f:
            f.write(kdisk_ssh_block("192.168.1.1 192.168.1.2", self.port, self.img, tmp))

    def close(self):
        self.guest.close()


# examples/seed/ holds the seed's nine control files with SPEC 13's edits made
# once (disk and root device names, oprofile -> perf).  The tests run those
# files; what differs between test beds (the paths of packages and images, a
# forwarded port, this machine's kernel release) is put in at run time, also
# only in 13's kinds: seed_control() refuses a substitution whose text is not
# in the file.  `python3 test_autoserv.py --seed NN` runs one of them here.

SEED_DIR = os.path.join(HERE, "examples", "seed")
SEED_ORIGINALS = os.path.join(HERE, "..", "shared", "seed", "examples")
SEED_DISK = "/var/local/vdisk.img"


def seed_control(tmp, name, subs=None):
    """examples/seed/<name> (a prefix such as "09" will do) written into tmp
    with the run-time substitutions subs (the file's text -> the test bed's)."""
    name = next(n for n in sorted(os.listdir(SEED_DIR)) if n.startswith(name))
    with open(os.path.join(SEED_DIR, name)) as f:
        text = f.read()
    for old, new in (subs or {}).items():
        if old not in text:
            raise AssertionError(f"{name} has no {old!r} to substitute")
        text = text.replace(old, new)
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def run_seed(ctl, *args, netns=None, timeout=900):
    """autoserv on a seed control file (inside netns if given); with
    AUTOSERV_SEED_SHOW set (--seed NN), the command and its output are shown."""
    argv = [sys.executable, AUTOSERV, *args, ctl]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    note_slow_job(args, time.monotonic() - t0)
    if os.environ.get("AUTOSERV_SEED_SHOW"):
        with open(ctl) as f:
            text = f.read()
        sys.stderr.write(f"\n--- {ctl} as run:\n{text}\n--- $ {' '.join(argv)}\n"
                         f"{out.stdout}{out.stderr}--- exit status {out.returncode}\n")
    return out


def user_mode_address(ip, port):
    """An address entry's "ip" value in the seed -> user-mode networking's
    (13: the hypervisor's loopback address and a forwarded port)."""
    return {f'"ip" : "{ip}"}}': f'"ip" : "127.0.0.1", "port": {port}}}'}


def kdisk_ssh_block(aliases, port, img, directory):
    """An ssh config block in which aliases lead to a kernel-disk guest's
    ssh forwarded to 127.0.0.1:port, its host key pinned (a known_hosts
    file written in directory)."""
    known = os.path.join(directory, "known_hosts")
    with open(known, "w") as f:
        f.write(f"[127.0.0.1]:{port} {read_file(img['host_pub']).strip()}\n")
    return (f"Host {aliases}\n    HostName 127.0.0.1\n    Port {port}\n    User root\n"
            f"    IdentityFile {img['key']}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known}\n\n")


class NetnsKernelGuest:
    """A kernel-disk guest (GRUB, a fresh overlay) whose qemu runs inside a
    test namespace with user-mode networking: its ssh is the namespace's
    127.0.0.1:port, and it reaches the namespace's bridged guests through
    qemu's NAT.  Only a job run inside the namespace reaches it.  Ended by
    PID."""

    def __init__(self, ns, tmp, mac="02:00:00:00:09:02", port=2222):
        self.img = kernel_disk_image()
        self.dir = tempfile.mkdtemp(prefix="nsguest-", dir=tmp)
        self.port, self.pid = port, None
        overlay = os.path.join(self.dir, "kdisk.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", self.img["disk"],
           overlay)
        self.serial = os.path.join(self.dir, "serial.log")
        pidfile = os.path.join(self.dir, "qemu.pid")
        ns.exec("qemu-system-x86_64", *tcg_accel(), "-nodefaults", "-no-user-config",
                "-display", "none", "-m", "512",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac}", "-device", "virtio-rng-pci",
                "-drive", f"file={overlay},if=none,id=d0", "-device", "nvme,drive=d0,serial=d0",
                "-serial", f"file:{self.serial}", "-pidfile", pidfile, "-daemonize")
        self.pid = int(read_file(pidfile))
        try:
            wait_for(lambda: "READY" in read_file(self.serial, errors="replace"), 240,
                     interval=0.5, what="the namespace's kernel-disk guest up")
        except AssertionError:
            self.close()
            raise

    def ssh_block(self, alias):
        """An ssh config block in which alias leads to this guest (host key pinned)."""
        return kdisk_ssh_block(alias, self.port, self.img, self.dir)

    def close(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not os.path.exists(f"/proc/{self.pid}") or
                     read_file(f"/proc/{self.pid}/stat").split()[2] == "Z", 10,
                     what="the namespace guest's qemu gone")
            self.pid = None


class KernelGuestCase(unittest.TestCase):
    """Kernels installed with dpkg and rpm on a guest that boots through real
    GRUB, its menu edited by boottool.  Every test has its own guest (a fresh
    overlay boots in about 6 s).  Two classes of these tests, so that the
    suite's lanes can share them out."""

    @classmethod
    def setUpClass(cls):
        cls.pkgs = tempfile.mkdtemp(prefix="as-kpkgs-")
        cls.addClassCleanup(shutil.rmtree, cls.pkgs)
        cls.deb, cls.kver = small_kernel_package(cls.pkgs)
        cls.default_kver = kernel_disk_image()["kver"]
        # "Boots the new kernel" is told by uname -r: the two must differ.
        if cls.kver == cls.default_kver:
            raise AssertionError(f"the test kernel and the disk's default are both {cls.kver}: "
                                 "no test here could tell which one booted")

    @classmethod
    def tearDownClass(cls):
        autoserv._close_all_hosts()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-kinst-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def start(self, job=False):
        kg = KernelGuest(self.tmp)
        self.addCleanup(kg.close)
        self.addCleanup(check_guest, self, kg.guest)
        if job:
            self.res = os.path.join(self.tmp, "res")
            autoserv.ServerJob(self.res)
            self.addCleanup(self._end_job)
        return kg.guest, kg

    def _end_job(self):
        autoserv._JOB = None
        autoserv.LOG.close()

    def status(self):
        return autoserv.parse_status_log(read_file(os.path.join(self.res, "status.log")))

    def grub_state(self, g):
        """The boot menu and what GRUB reads from its environment (without
        the empty next_entry GRUB writes back after a boot-once boot)."""
        return g.run("cat /boot/grub/grub.cfg; grep -v -e '^#' -e '^next_entry=$' "
                     "/boot/grub/grubenv; cat /boot/grub/custom.cfg 2>/dev/null; true").stdout

    def run_seed(self, kg, name, subs, *args):
        """examples/seed/<name> on the guest kg (192.168.1.1)."""
        return run_seed(seed_control(self.tmp, name, subs), "--ssh-config", kg.ssh_config,
                        "-r", os.path.join(self.tmp, "res"), *args)


class TestKernelInstall(KernelGuestCase):
    """The seed's kernel examples: Debian's real package, a small .deb and
    .rpm, a KVM guest's kernel changed."""

    def test_seed_01_installs_debians_real_kernel_package_and_boots_it(self):
        deb, kver = newer_kernel_package()
        g, kg = self.start()
        out = self.run_seed(kg, "01", {"/var/local/linux-2.6.22.deb": deb})
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertIn(kver, lines)
        self.assertIn(f"/boot/vmlinuz-{kver}", lines)
        self.assertIn(f"/boot/initrd.img-{kver}", lines)
        unames = [line for line in lines if line.startswith("Linux kguest")]
        self.assertEqual(len(unames), 2, out.stdout)
        self.assertIn(self.default_kver, unames[0])
        self.assertIn(kver, unames[1])
        status = read_file(os.path.join(self.tmp, "res", "status.log"))
        self.assertRegex(status, r"GOOD\t----\tboot\.kernel\t.*running " + re.escape(kver))
        # dpkg knows it, its initrd was made, and it is now the default.
        self.assertIn("ii", g.run(f"dpkg -l linux-image-{kver}").stdout)
        self.assertEqual(g.run(f"test -s /boot/initrd.img-{kver}",
                               ignore_status=True).exit_status, 0)
        self.assertEqual(g.bootloader.get_default_title(), "autoserv")

    def test_install_passes_position_and_initrd_on_to_the_boot_entry(self):
        g, kg = self.start()
        initrd = "/boot/initrd.img-made-by-hand"       # not the package's own
        g.run(f"head -c 4096 /dev/zero > {initrd}")
        kernel = autoserv.DEBKernel()
        kernel.get(self.deb)
        kernel.install(g, title="added at the end", default=False)
        before = g.bootloader.get_titles()
        # GRUB 2 keeps boottool's entries in one block: "start" is its start.
        kernel.install(g, label="placed first", position="start", initrd=initrd, default=False)
        entries = g.bootloader.get_entries()
        self.assertEqual(len(entries), len(before) + 1)
        titles = [e["title"] for e in entries]
        self.assertLess(titles.index("placed first"), titles.index("added at the end"))
        new = entries[titles.index("placed first")]
        self.assertTrue(new["kernel"].endswith(f"/vmlinuz-{self.kver}"), new)
        self.assertTrue(new["initrd"].endswith(initrd[len("/boot"):]), new)
        old = entries[titles.index("added at the end")]
        self.assertTrue(old["initrd"].endswith(f"/initrd.img-{self.kver}"), old)
        self.assertNotIn(g.bootloader.get_default_title(), ("placed first", "added at the end"))

    def test_seed_03_installs_a_small_package_and_boots_it(self):
        g, kg = self.start()
        out = self.run_seed(kg, "03", {"/var/local/linux-2.6.22.deb": self.deb})
        self.assertEqual(out.returncode, 0, out.stderr)
        unames = [line for line in out.stdout.splitlines() if line.startswith("Linux kguest")]
        self.assertEqual([self.default_kver in unames[0], self.kver in unames[1]], [True, True])

    def test_seed_04_installs_with_rpm_on_every_machine(self):
        rpm, kver = small_kernel_rpm(self.tmp)
        g, kg = self.start()
        out = self.run_seed(kg, "04", {"/stuff/kernels/kernel-smp-2.6.18.x86_64.rpm": rpm},
                            "-m", "192.168.1.1")
        self.assertEqual(out.returncode, 0, out.stderr)
        unames = [line for line in out.stdout.splitlines() if line.startswith("Linux kguest")]
        self.assertEqual(len(unames), 2, out.stdout)
        self.assertIn(kver, unames[1])
        self.assertIn("Done.", out.stdout)
        self.assertIn("kernel-autoserv-test", g.run("rpm -q kernel-autoserv-test").stdout)

    def test_seed_07_changes_the_kernel_of_a_kvm_guest(self):
        sshd = Sshd()
        self.addCleanup(sshd.stop)
        img = kernel_disk_image()
        log = os.path.join(self.tmp, "qemu.log")
        ctl = seed_control(self.tmp, "07", {
            "/var/local/src/kvm-compiled.tar.gz": kvm_compiled_tarball(self.tmp, log),
            SEED_DISK: img["disk"],
            "/home/foo/linux-2.6.21.3-6_2.6.21.3-6_amd64.deb": self.deb,
            **user_mode_address("10.0.0.1", guest_ports(1))})
        out = run_seed(ctl, "--ssh-config", sshd.ssh_config, "-i", img["key"],
                       "-r", os.path.join(self.tmp, "res"))
        self.assertEqual(out.returncode, 0, out.stderr)
        unames = [line for line in out.stdout.splitlines() if line.startswith("Linux kguest")]
        self.assertEqual(len(unames), 2, out.stdout)
        self.assertIn(self.default_kver, unames[0])
        self.assertIn(self.kver, unames[1])
        self.assertIn(img["disk"], read_file(log))     # the unpacked, compiled qemu ran it
        self.assertFalse([p for p in comm_pids("qemu-system-x86")
                          if p in processes_with(img["disk"])])


class TestKernelBoot(KernelGuestCase):
    """Boot-once, a kernel that does not boot, and edits that change nothing."""

    def test_a_boot_once_entry_set_just_before_a_hard_reset_is_the_one_grub_boots(self):
        # A power cut seconds after boottool's edit: fsync put it in ext4's
        # journal, which GRUB does not replay; only a checkpoint puts the new
        # grubenv and custom.cfg where GRUB reads them.
        g, kg = self.start()
        image = f"/boot/vmlinuz-{self.default_kver}"
        g.bootloader.add_kernel(image, title="once before the cut",
                                args="root=/dev/nvme0n1p1 rw console=ttyS0,115200 autoserv_cut=1",
                                default=False, boot_once=True)
        g.hardreset(timeout=300)
        self.assertIn("autoserv_cut=1", g.run("cat /proc/cmdline").stdout,
                      g.serial_tail(20))
        self.assertEqual(g.bootloader.get_default_title(), "Debian GNU/Linux")    # once

    def test_boot_once_boots_the_new_kernel_once_and_kernel_args_last_one_boot(self):
        g, kg = self.start(job=True)
        k = autoserv.DEBKernel()
        k.get(self.deb)
        # A kernel added but not meant to boot next: the next reboot does
        # not check for it.
        k.install(g, default=False)
        menu = self.grub_state(g)
        # Kernel arguments go to the entry that boots next, for that boot only.
        g.reboot(timeout=300, kernel_args="autoserv_test_arg=1")
        self.assertEqual(g.run("uname -r").stdout.strip(), self.default_kver)
        self.assertIn("autoserv_test_arg=1", g.run("cat /proc/cmdline").stdout,
                      "the serial console (which entry GRUB booted):\n" + g.serial_tail(40))
        self.assertEqual(self.grub_state(g), menu)
        # Booted once, the new kernel takes the default's command line: no
        # argument of that earlier boot is in it; this reboot's arguments go
        # to it, the kernel meant to boot next.
        k.install(g, boot_once=True)
        self.assertEqual(g.bootloader.get_default_title(), "Debian GNU/Linux")
        g.reboot(timeout=300, kernel_args="autoserv_once_arg=1")
        self.assertEqual(g.run("uname -r").stdout.strip(), self.kver)
        cmdline = g.run("cat /proc/cmdline").stdout
        self.assertNotIn("autoserv_test_arg", cmdline)
        self.assertIn("autoserv_once_arg=1", cmdline)
        # Then the default returns, as it was.
        g.reboot(timeout=300)
        self.assertEqual(g.run("uname -r").stdout.strip(), self.default_kver)
        self.assertNotIn("autoserv_", g.run("cat /proc/cmdline").stdout)
        # A label boots that entry once; the default stays.
        g.reboot(timeout=300, label="autoserv")
        self.assertEqual(g.run("uname -r").stdout.strip(), self.kver)
        self.assertEqual(g.bootloader.get_default_title(), "Debian GNU/Linux")
        codes = [(e["code"], e["operation"]) for e in self.status()]
        self.assertIn(("GOOD", "kernel.install"), codes)
        self.assertEqual(codes.count(("GOOD", "boot.kernel")), 1)
        self.assertEqual(autoserv.worst_status(*[c for c, _ in codes]), "GOOD")

    def test_a_hung_boot_is_recovered_by_one_hard_reset_a_reboot_warns_a_kernel_fails(self):
        g, kg = self.start(job=True)
        # A job whose reboot hangs (arguments, for that boot only, that name
        # no root disk; with panic=0 it hangs for good) and comes back through
        # the one hard reset (QMP, from the control file) ends well: exit 0,
        # WARNs that tell the story.  The reset boots without those arguments.
        ctl = os.path.join(self.tmp, "hang.control")
        with open(ctl, "w") as f:
            f.write('h = hosts.SSHHost("192.168.1.1", power=power.QMPPower(args[0]))\n'
                    'h.reboot(timeout=20, kernel_args="root=/dev/nosuchdisk panic=0")\n'
                    'print("cmdline: " + h.run("cat /proc/cmdline").stdout)\n')
        res = os.path.join(self.tmp, "cli")
        out = run_cli("--ssh-config", kg.ssh_config, "-r", res, ctl, g.qmp_socket, timeout=600)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("cmdline: ", out.stdout)
        self.assertNotIn("nosuchdisk", out.stdout)
        with open(os.path.join(res, "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual([summary["job"]["outcome"], summary["hosts"]["192.168.1.1"]["outcome"]],
                         ["GOOD", "GOOD"])
        with open(os.path.join(res, "status.log")) as f:
            ops = [(e["code"], e["operation"], e["message"])
                   for e in autoserv.parse_status_log(f.read())]
        self.assertEqual([(c, m.split(": ", 1)[1]) for c, o, m in ops if o == "reboot.verify"
                          and c != "GOOD"],
                         [("WARN", "did not return; trying one hard reset"),
                          ("WARN", "back after a hard reset")])
        self.assertIn(("END WARN", "reboot"), [(c, o) for c, o, _ in ops])
        # A real kernel that cannot find its root hangs the same way.  (Garbage
        # for an image went through GRUB's error and menu paths, whose timing
        # raced the reset now and then.)  That kernel FAILs; the reboot itself
        # was recovered, a WARN: the worst the job records is the FAIL.
        broken, _ = small_kernel_package(self.tmp, "-broken")
        k = autoserv.DEBKernel()
        k.get(broken)
        k.install(g, boot_once=True, title="broken kernel",
                  args="root=/dev/nosuchdisk panic=0")
        t0 = time.monotonic()
        with self.assertRaises(autoserv.AutoservKernelBootError) as cm:
            g.reboot(timeout=20)      # it never boots: any wait past a good boot is waste
        self.assertLess(time.monotonic() - t0, 400)
        self.assertIn("did not come up", str(cm.exception))
        self.assertIn("hard reset", str(cm.exception))
        self.assertEqual(g.run("uname -r").stdout.strip(), self.default_kver)
        entries = self.status()
        fails = [e for e in entries if e["code"] == "FAIL" and e["operation"] == "boot.kernel"]
        self.assertEqual(len(fails), 1)
        self.assertIn("broken kernel", fails[0]["message"])
        codes = [(e["code"], e["operation"]) for e in entries]
        self.assertIn(("WARN", "reboot.verify"), codes)
        self.assertIn(("END FAIL", "reboot"), codes)
        self.assertEqual(autoserv.worst_status(*[c for c, _ in codes]), "FAIL")


class TestKernelBootEdits(KernelGuestCase):
    """The machine autoserv runs on reboots itself; edits that fail change
    nothing.  (A class of its own so that the suite's lanes can share out
    the kernel-boot tests.)"""

    def test_localhost_reboot_inside_a_guest_ends_the_job_then_reboots_the_machine(self):
        # autoserv itself runs inside the guest, detached from this ssh
        # session, and reboots the machine it runs on.
        g, kg = self.start()
        d = "/root/as-local"
        g.run(f"mkdir -p {d}")
        g.send_file(AUTOSERV, f"{d}/autoserv.py")
        for name, call in (("local", "h.reboot()"), ("fail", "h.reboot(reboot_cmd="
                                                       "'echo no reboot here >&2; false')")):
            with open(os.path.join(self.tmp, name), "w") as f:
                f.write("h = hosts.LocalHost(allow_local_reboot=True)\n"
                        "open('before', 'w').write(h.get_boot_id())\n"
                        f"{call}\n"
                        "open('after', 'w').write('the control file went on')\n")
            g.send_file(os.path.join(self.tmp, name), f"{d}/{name}.control")
        # A reboot command that fails: the job fails (exit 1) and says why;
        # the machine stays up.
        old = g.get_boot_id()
        out = g.run(f"cd {d} && python3 autoserv.py -r {d}/fail fail.control", ignore_status=True)
        self.assertEqual(out.exit_status, 1, out.stdout + out.stderr)
        self.assertIn("no reboot here", out.stderr)
        self.assertIn("exit_status=1", g.run(f"cat {d}/fail/keyval").stdout.splitlines())
        self.assertIn(("ABORT", "reboot.verify"), [(e["code"], e["operation"]) for e in
                      autoserv.parse_status_log(g.run(f"cat {d}/fail/status.log").stdout)])
        self.assertEqual(g.get_boot_id(), old)
        g.run(f"cd {d} && setsid python3 autoserv.py -r {d}/res local.control "
              ">out 2>&1 </dev/null &")
        if not g.wait_down(timeout=120, old_boot_id=old):
            self.fail("still up: " + g.run(f"cat {d}/out", ignore_status=True).stdout)
        self.assertTrue(g.wait_up(timeout=300), g.serial_tail(60))
        self.assertNotEqual(g.get_boot_id(), old)
        # The control file ended at reboot(); the job ended as after its last
        # line, its outcome on disk before the machine went down.
        self.assertEqual(g.run(f"cat {d}/res/before").stdout, old)
        self.assertNotEqual(g.run(f"test -e {d}/res/after", ignore_status=True).exit_status, 0)
        summary = json.loads(g.run(f"cat {d}/res/summary.json").stdout)
        self.assertEqual(summary["job"]["outcome"], "GOOD")
        self.assertIn("exit_status=0", g.run(f"cat {d}/res/keyval").stdout.splitlines())
        entries = autoserv.parse_status_log(g.run(f"cat {d}/res/status.log").stdout)
        start = [e["message"] for e in entries if e["operation"] == "reboot.start"]
        self.assertEqual(len(start), 1, entries)
        self.assertIn(f"(boot id {old})", start[0])
        self.assertIn("the job ends here", start[0])
        self.assertEqual([e for e in entries if e["code"] in ("FAIL", "ERROR", "ABORT")], [])

    @scenario(29)
    def test_scenario_29_damaged_package_or_boottool_and_failed_edits_change_nothing(self):
        g, kg = self.start(job=True)
        before = self.grub_state(g)
        # A damaged package: refused before anything is sent.
        data = bytearray(read_file(self.deb, "rb"))
        data[len(data) // 2] ^= 0xFF
        bad = os.path.join(self.tmp, "bad.deb")
        write_file(bad, bytes(data), 'wb')
        k = autoserv.DEBKernel()
        k.get(bad)
        with self.assertRaises(autoserv.AutoservInstallError) as cm:
            k.install(g, boot_once=True)
        self.assertIn("corrupt", str(cm.exception))
        # Refused here, before anything was sent: no transfer, no dpkg there
        # (dpkg would refuse it too, and roll back: not the guarantee).
        with open(os.path.join(self.res, "debug", "autoserv.log"), errors="replace") as f:
            log = f.read()
        self.assertNotIn("send_file", log)
        self.assertNotIn("dpkg -i", log)
        self.assertNotIn("autoserv-test-kernel", g.run("dpkg -l | cat").stdout)
        # boottool damaged on the host after it was copied: refused, by checksum.
        g.bootloader.get_type()
        remote = g.bootloader._remote
        g.run(f"echo '# tampered' >> {remote}")
        with self.assertRaises(autoserv.AutoservBootloaderError) as cm:
            g.bootloader.set_default(0)
        self.assertIn("corrupt", str(cm.exception))
        # boottool damaged beside autoserv.py: the CLI says so and stops.
        copy = os.path.join(self.tmp, "copy")
        os.mkdir(copy)
        shutil.copy(AUTOSERV, copy)
        write_file(os.path.join(copy, "boottool"), read_file(BOOTTOOL)[:3000])
        ctl = os.path.join(self.tmp, "boot.control")
        write_file(ctl, 'h = hosts.SSHHost("192.168.1.1")\nh.bootloader.set_default(0)\n')
        out = subprocess.run([sys.executable, os.path.join(copy, "autoserv.py"), "--ssh-config",
                              kg.ssh_config, "-r", os.path.join(self.tmp, "r2"), ctl],
                             capture_output=True, text=True, timeout=300)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("boottool is corrupt", out.stderr.replace(copy + "/", ""))
        self.assertNotIn("Traceback", out.stderr)
        self.assertEqual(self.grub_state(g), before)
        # A bootloader edit that fails (/boot/grub read-only): the package is
        # in, the menu and the default are as they were, the old kernel boots.
        g.bootloader._remote = None
        odd = os.path.join(self.tmp, "-odd name.deb")
        shutil.copy(self.deb, odd)
        k = autoserv.DEBKernel()
        k.get(odd)
        g.run("mount --bind /boot/grub /boot/grub && mount -o remount,bind,ro /boot/grub")
        with self.assertRaises(autoserv.AutoservBootloaderError) as cm:
            k.install(g)
        self.assertIn("nothing changed", str(cm.exception))
        g.run("umount /boot/grub")
        self.assertEqual(self.grub_state(g), before)
        g.reboot(timeout=300)
        self.assertEqual(g.run("uname -r").stdout.strip(), self.default_kver)
        # The same package (a path with a space and a leading '-') installs.
        k.install(g, boot_once=True)
        self.assertIn("autoserv", g.bootloader.get_titles())
        # A host whose boot loader boottool does not know: a clear error.
        g.run("mv /boot/grub/grub.cfg /boot/grub/grub.cfg.away")
        with self.assertRaises(autoserv.AutoservBootloaderError) as cm:
            g.bootloader.get_type()
        self.assertIn("no known boot loader", str(cm.exception))
        g.run("mv /boot/grub/grub.cfg.away /boot/grub/grub.cfg")


# Shards, merge and Slurm ######################################################

SHARD_CONTROL = """\
def work(name):
    hosts.create_host(name).run("echo " + name + "; sleep %s")
parallel_simple(work, machines)
"""


def shard_files(tmp, lines, pause=0, hosts_as="local"):
    """A machines file of `lines` and a control file running one command on
    each machine (LocalHost-named machines unless an ssh config names them)."""
    mf = os.path.join(tmp, "machines")
    with open(mf, "w") as f:
        f.write("# the lab\n" + "\n".join(lines) + "\n")
    ctl = os.path.join(tmp, "job.control")
    with open(ctl, "w") as f:
        f.write(SHARD_CONTROL % pause if hosts_as != "local" else
                "def work(name):\n    hosts.LocalHost(name).run('echo ' + name)\n"
                "parallel_simple(work, machines)\n")
    return mf, ctl


def read_results(path):
    with open(os.path.join(path, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(path, "status.log")) as f:
        status = autoserv.parse_status_log(f.read())
    keyval = dict(line.split("=", 1)
                  for line in read_file(os.path.join(path, "keyval")).splitlines())
    return summary, status, keyval


class TestShards(unittest.TestCase):
    """Machine groups, --shard and merge on LocalHost-named machines: no job engine."""

    LINES = ["a1", "b1 b2", "c1,c2", "d1", "e1  # a comment", "f1", "g1"]

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-shard-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.mf, self.ctl = shard_files(self.tmp, self.LINES)

    def shard(self, spec, name=None, env=None, mf=None, ctl=None):
        out = os.path.join(self.tmp, name or "r" + spec.replace("/", "of"))
        r = run_cli("-M", mf or self.mf, "--shard", spec, "-r", out, ctl or self.ctl, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def test_every_line_lands_in_one_shard_and_a_group_is_never_split(self):
        seen = []
        for i in range(3):
            summary, _, keyval = read_results(self.shard(f"{i}/3"))
            machines = summary["job"]["machines"]
            self.assertEqual(sorted(summary["hosts"]), sorted(machines))
            self.assertEqual(summary["job"]["shard"]["shard"], f"{i}/3")
            self.assertEqual(keyval["shard"], f"{i}/3")
            self.assertEqual(keyval["machines_digest"], summary["job"]["shard"]["machines_digest"])
            self.assertEqual(len(keyval["control_digest"]), 64)
            seen += machines
            for pair in (("b1", "b2"), ("c1", "c2")):
                self.assertIn(sum(h in machines for h in pair), (0, 2), machines)
        self.assertEqual(sorted(seen), sorted("a1 b1 b2 c1 c2 d1 e1 f1 g1".split()))
        # Stable: lines whose index mod 3 is 1 (b-group, e1) make shard 1.
        self.assertEqual(read_results(os.path.join(self.tmp, "r1of3"))[0]["job"]["machines"],
                         ["b1", "b2", "e1"])

    def test_shard_env_reads_slurm_gitlab_and_kubernetes_variables(self):
        cases = [({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                   "SLURM_ARRAY_TASK_MIN": "3"}, "env", (2, 4), "SLURM_ARRAY_TASK_ID=5"),
                 ({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3"}, "env", (0, 3), "CI_NODE_TOTAL=3"),
                 ({"JOB_COMPLETION_INDEX": "2"}, "env/5", (2, 5), "JOB_COMPLETION_INDEX=2")]
        for environ, spec, expected, source in cases:
            with self.subTest(environ=environ):
                index, count, how = autoserv.parse_shard(spec, environ)
                self.assertEqual((index, count), expected)
                self.assertIn(source, how)
        env = dict(os.environ, CI_NODE_INDEX="3", CI_NODE_TOTAL="3")
        env.pop("SLURM_ARRAY_TASK_ID", None)
        out = self.shard("env", "gitlab", env=env)
        _, _, keyval = read_results(out)
        self.assertEqual(keyval["shard"], "2/3")
        self.assertEqual(keyval["shard_source"], "CI_NODE_INDEX=3, CI_NODE_TOTAL=3")
        with open(os.path.join(out, "debug", "autoserv.log")) as f:
            self.assertIn("shard 2/3 (CI_NODE_INDEX=3, CI_NODE_TOTAL=3)", f.read())

    def test_each_shard_verifies_its_own_machines_and_the_merge_names_the_dropped(self):
        # localhost (only read, never repaired) is healthy; a loopback port
        # that refuses (no name to look up: no DNS query leaves the machine)
        # is sick.  Shard 1 has only the sick one: dropped, its control file
        # does not run, exit 4; the merge says 4 and names it.
        sick = f"127.0.0.1:{refused_port(self.addCleanup)}"
        mf, ctl = shard_files(self.tmp, ["localhost", sick])
        with open(ctl, "w") as f:
            f.write("print('ran on', ' '.join(machines))\n")
        outs = []
        for i, code in ((0, 0), (1, 4)):
            out = os.path.join(self.tmp, f"v{i}")
            r = run_cli("-M", mf, "--shard", f"{i}/2", "--verify-first", "--connect-timeout",
                        "3", "-r", out, ctl)
            self.assertEqual(r.returncode, code, r.stderr)
            self.assertEqual(r.stdout, "ran on localhost\n" if i == 0 else "")
            outs.append(out)
        self.assertIn(f"dropped {sick}: verify failed: reachable", r.stderr)
        merged = os.path.join(self.tmp, "merged")
        r = run_cli("merge", "-r", merged, *outs)
        self.assertEqual(r.returncode, 4, r.stderr)
        summary, _, keyval = read_results(merged)
        self.assertEqual(list(summary["job"]["dropped"]), [sick])
        self.assertEqual((summary["job"]["outcome"], keyval["exit_status"]), ("WARN", "4"))
        self.assertIn(f'<tr class="dropped" data-host="{sick}">',
                      read_file(os.path.join(merged, "index.html")))
        # --slurm hands each task the same health options (no CONTROL_FILE
        # with --verify: nothing is taken for one).
        argv = ["--slurm", "2", "-M", mf, "--verify", "--connect-timeout", "3", "-r", "R"]
        opts = autoserv._parser().parse_args(argv)
        self.assertEqual(autoserv._argv_for_shards(argv, opts),
                         ["-M", mf, "--verify", "--connect-timeout", "3"])

    def test_bad_shard_input_is_one_line_and_exit_status_2(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("SLURM_ARRAY_TASK_ID", "CI_NODE_INDEX", "JOB_COMPLETION_INDEX")}
        cases = [("3/3", "outside 0..2"), ("x/2", "not a whole number"), ("1", "give I/N"),
                 ("0/0", "1 or more"), ("env", "none of SLURM_ARRAY_TASK_ID")]
        for spec, words in cases:
            with self.subTest(spec=spec):
                r = run_cli("-M", self.mf, "--shard", spec, "-r",
                            os.path.join(self.tmp, "bad"), self.ctl, env=env)
                self.assertEqual(r.returncode, 2)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn(words, r.stderr)
                self.assertNotIn("Traceback", r.stderr)
        r = run_cli("-M", self.mf, "--shard", "env", self.ctl,
                    env=dict(env, JOB_COMPLETION_INDEX="1"))
        self.assertIn("--shard env/N", r.stderr)
        with open(self.mf, "a") as f:
            f.write("d1 z1\n")
        r = run_cli("-M", self.mf, "--shard", "0/2", self.ctl)
        self.assertEqual(r.returncode, 2)
        self.assertIn("d1 is already in", r.stderr)

    def test_merge_puts_the_shards_back_together(self):
        dirs = [self.shard(f"{i}/3") for i in range(3)]
        out = os.path.join(self.tmp, "merged")
        r = run_cli("merge", "-r", out, *dirs)
        self.assertEqual(r.returncode, 0, r.stderr)
        summary, status, keyval = read_results(out)
        everyone = "a1 b1 b2 c1 c2 d1 e1 f1 g1".split()
        self.assertEqual(sorted(summary["hosts"]), everyone)
        self.assertEqual(summary["job"]["exit_status"], 0)
        self.assertEqual(summary["job"]["shards"]["merged"], ["0/3", "1/3", "2/3"])
        groups = [e["operation"] for e in status if e["indent"] == 0 and e["code"] == "START"]
        self.assertEqual(groups, ["shard.0", "shard.1", "shard.2"])
        self.assertEqual([e["code"] for e in status if e["indent"] == 0].count("END GOOD"), 3)
        self.assertEqual(keyval["hostnames"], ",".join(everyone))
        self.assertEqual(keyval["exit_status"], "0")
        import xml.etree.ElementTree as ET
        suite = ET.parse(os.path.join(out, "junit.xml")).getroot()
        self.assertEqual((suite.get("tests"), suite.get("failures")), ("9", "0"))
        for host in everyone:       # linked, not copied
            self.assertTrue(os.path.islink(os.path.join(out, host)), host)
            self.assertTrue(os.path.isdir(os.path.join(out, host)), host)
        self.assertTrue(os.path.isdir(os.path.join(out, "debug", "shard.1")))

    def test_a_merged_dir_has_a_report_with_a_lane_per_host_through_the_shards(self):
        dirs = [self.shard(f"{i}/2") for i in range(2)]
        out = os.path.join(self.tmp, "merged")
        r = run_cli("merge", "-r", out, *dirs)
        self.assertEqual(r.returncode, 0, r.stderr)
        page = read_file(os.path.join(out, "index.html"), encoding="utf-8")
        everyone = "a1 b1 b2 c1 c2 d1 e1 f1 g1".split()
        self.assertEqual(sorted(re.findall(r'<tr class="host" data-host="([^"]*)"', page)),
                         everyone)
        lanes = re.findall(r'(?s)<g class="lane" data-host="([^"]*)">(.*?)</g>', page)
        self.assertEqual(sorted(name for name, _ in lanes), everyone)
        for name, body in lanes:        # each host's task group, found under its shard's
            self.assertIn('class="bar"', body, name)
        self.assertIn('href="./a1/debug/stdout"', page)
        self.assertIn("2 of 2 merged", page)
        # `report` again on it and on a shard (their pages removed first: each
        # job and the merge wrote one), and on a dir that is no results dir.
        for d in (out, dirs[0]):
            os.unlink(os.path.join(d, "index.html"))
        again = run_cli("report", out, dirs[0])
        self.assertEqual(again.returncode, 0, again.stderr)
        again_page = read_file(os.path.join(out, "index.html"), encoding="utf-8")
        self.assertIn("2 of 2 merged", again_page)
        self.assertEqual(sorted(re.findall(r'<tr class="host" data-host="([^"]*)"', again_page)),
                         everyone)
        self.assertIn('data-host="a1"', read_file(os.path.join(dirs[0], "index.html"),
                                                  encoding="utf-8"))
        bad = run_cli("report", self.tmp)
        self.assertEqual(bad.returncode, 2)
        self.assertEqual(bad.stderr.strip().splitlines(), [
            f"autoserv: error: report: {self.tmp}: not a results dir (no summary.json or "
            "status.log); give the dir a job wrote (-r)"])

    def test_merge_refuses_shards_that_are_not_one_job(self):
        dirs = [self.shard(f"{i}/3") for i in range(3)]
        other_ctl = os.path.join(self.tmp, "other.control")
        with open(self.ctl) as f, open(other_ctl, "w") as g:
            g.write(f.read() + "# changed\n")
        other_mf = os.path.join(self.tmp, "other.machines")
        with open(other_mf, "w") as f:
            f.write("\n".join(self.LINES + ["h1"]) + "\n")
        cases = [([dirs[0], self.shard("1/3", "ctl2", ctl=other_ctl)], "different control files"),
                 ([dirs[0], self.shard("1/3", "mf2", mf=other_mf)], "different machine lists"),
                 ([dirs[0], self.shard("1/2", "n2")], "different numbers of shards"),
                 ([dirs[1], self.shard("1/3", "again")], "overlapping shards"),
                 ([dirs[0], self.tmp], "no summary.json")]
        for n, (given, words) in enumerate(cases):
            with self.subTest(words=words):
                out = os.path.join(self.tmp, f"m{n}")
                r = run_cli("merge", "-r", out, *given)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(words, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertFalse(os.path.exists(out), "a refused merge claimed its OUT")

    def test_merge_names_a_missing_shard_and_its_hosts_as_not_run(self):
        dirs = [self.shard(f"{i}/3") for i in (0, 2)]
        out = os.path.join(self.tmp, "merged")
        r = run_cli("merge", "-r", out, *dirs)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("shard 1/3 missing", r.stderr)
        self.assertIn("b1, b2, e1", r.stderr)
        summary, status, keyval = read_results(out)
        self.assertEqual(summary["job"]["shards"]["missing"][0]["hosts"], ["b1", "b2", "e1"])
        for host in ("b1", "b2", "e1"):
            self.assertTrue(summary["hosts"][host]["error"].startswith("not run: shard 1/3"))
        self.assertEqual(summary["hosts"]["a1"]["outcome"], "GOOD")
        self.assertEqual(keyval["shards_missing"], "1")
        self.assertIn("END ABORT", [e["code"] for e in status if e["operation"] == "shard.1"])

    def test_slurm_argv_for_the_tasks_drops_what_makes_the_submitter(self):
        # An sbatch option starts with "-", so argparse wants it after "=".
        argv = ["--slurm", "4", "-r", "out", "--overwrite", "--slurm-option=-p x",
                "--slurm-option=--time=5", "--slurm-timeout", "60", "--junit", "j.xml",
                "-M", "mf", "job.control", "-r", "kept"]
        opts = autoserv._parser().parse_args(argv)
        self.assertEqual(autoserv._argv_for_shards(argv, opts),
                         ["-M", "mf", "job.control", "-r", "kept"])


class Slurm:
    """A single-node Slurm cluster (munged, slurmctld, slurmd) from a temp
    dir, per TESTBED §7: own munge socket and own ports, so it never meets
    another cluster on this machine; stopped by PID."""

    def __init__(self):
        need_root()
        need("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue",
             "scontrol", "scancel", "sinfo", "runuser")
        self.node = socket.gethostname().split(".")[0]
        try:
            socket.gethostbyname(self.node)
        except OSError:
            unavailable(f"this machine's name {self.node} does not resolve (Slurm needs it)")
        self.dir = tempfile.mkdtemp(prefix="as-slurm-")
        os.chmod(self.dir, 0o755)
        self.procs, self.munged, self.cgroup, self.link = [], None, False, None
        try:
            self._namespace_fixes()
            self._start()
        except BaseException:
            self.close()
            raise

    def _namespace_fixes(self):
        """What a test lane (or iso.sh) lacks and Slurm needs, added inside
        the lane's own namespaces only.  slurmd 22.05 loads its cgroup plugin
        even with task/none and fails without a cgroup filesystem; a fresh
        sysfs (a private mount namespace: the real one always has it) has
        none, so mount there the hierarchies this process is in (cgroup v1
        ones under a tmpfs, as on this machine, or the one cgroup2).
        slurmctld resolves its listening
        address with AI_ADDRCONFIG, which fails where loopback is the only
        interface (a private network namespace): give it a bridge with an
        address of its own."""
        if not os.listdir("/sys/fs/cgroup"):
            with open("/proc/self/cgroup") as f:
                v1 = [line.split(":")[1] for line in f if line.split(":")[1]]
            mounts = ([["-t", "cgroup2", "as-slurm-cgroup", "/sys/fs/cgroup"]] if not v1 else
                      [["-t", "tmpfs", "-o", "mode=755", "as-slurm-cgroup", "/sys/fs/cgroup"]]
                      + [["-t", "cgroup", "-o", opts, "cgroup",
                          "/sys/fs/cgroup/" + opts.replace("name=", "")] for opts in v1])
            self.cgroup = True
            for argv in mounts:
                os.makedirs(argv[-1], exist_ok=True)
                out = subprocess.run(["mount", *argv], capture_output=True, text=True)
                if out.returncode:
                    unavailable(f"slurmd needs a cgroup filesystem: mount {' '.join(argv)}: "
                                f"{out.stderr.strip()}")
        links = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                               text=True).stdout
        if all(" lo " in line for line in links.splitlines()):
            self.link = f"asslurm{os.getpid() % 10000}"
            sh("ip", "link", "add", self.link, "type", "bridge")
            sh("ip", "addr", "add", f"10.233.{os.getpid() % 250}.1/24", "dev", self.link)
            sh("ip", "link", "set", self.link, "up")

    def _start(self):
        d = self.dir
        munge_dir = os.path.join(d, "munge")
        os.mkdir(munge_dir, 0o755)     # munged: its socket dir must be searchable by all
        shutil.chown(munge_dir, "munge", "munge")
        if not os.path.exists("/etc/munge/munge.key"):
            sh("runuser", "-u", "munge", "--", "mungekey", "--create")
        self.socket = os.path.join(munge_dir, "munge.socket")
        pidfile = os.path.join(munge_dir, "munged.pid")
        sh("runuser", "-u", "munge", "--", "munged", "-S", self.socket, "--pid-file", pidfile,
           "--log-file", os.path.join(munge_dir, "munged.log"),
           "--seed-file", os.path.join(munge_dir, "munged.seed"))
        wait_for(lambda: os.path.exists(pidfile) and read_file(pidfile).strip(), 10,
                 what="munged's pid file")
        self.munged = int(read_file(pidfile))
        wait_for(lambda: subprocess.run(
            f"munge -n -S {self.socket} | unmunge -S {self.socket}", shell=True,
            capture_output=True).returncode == 0, 10, what="munge")
        node_line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True,
                                   check=True).stdout.splitlines()[0]
        fields = dict(f.split("=", 1) for f in node_line.split())
        fields["RealMemory"] = str(max(100, int(fields.get("RealMemory", "1000")) - 200))
        fields["NodeName"] = self.node
        node = " ".join(f"{k}={v}" for k, v in fields.items())
        self.conf = os.path.join(d, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                ClusterName=astest
                SlurmctldHost={self.node}
                SlurmctldPort={free_port()}
                SlurmdPort={free_port()}
                SlurmUser=root
                SlurmdUser=root
                AuthType=auth/munge
                CredType=cred/munge
                AuthInfo=socket={self.socket}
                ProctrackType=proctrack/linuxproc
                TaskPlugin=task/none
                JobAcctGatherType=jobacct_gather/none
                AccountingStorageType=accounting_storage/none
                JobCompType=jobcomp/none
                MpiDefault=none
                MailProg=/bin/true
                SchedulerType=sched/backfill
                SelectType=select/cons_tres
                SelectTypeParameters=CR_Core
                SchedulerParameters=batch_sched_delay=0
                ReturnToService=2
                KillWait=5
                MinJobAge=600
                StateSaveLocation={d}/state
                SlurmdSpoolDir={d}/spool
                SlurmctldPidFile={d}/slurmctld.pid
                SlurmdPidFile={d}/slurmd.pid
                SlurmctldLogFile={d}/slurmctld.log
                SlurmdLogFile={d}/slurmd.log
                {node} State=UNKNOWN
                PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
                """))
        os.makedirs(os.path.join(d, "state"))
        os.makedirs(os.path.join(d, "spool"))
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for daemon in ("slurmctld", "slurmd"):
            with open(os.path.join(d, daemon + ".err"), "wb") as err:
                self.procs.append(subprocess.Popen(
                    [daemon, "-D"], env=self.env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=err))
        try:
            wait_for(lambda: subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"],
                                            env=self.env, capture_output=True,
                                            text=True).stdout.strip() == "idle",
                     30, interval=0.2, what="the Slurm node idle")
        except AssertionError as e:
            tails = ""
            for name in ("slurmctld.log", "slurmd.log", "slurmctld.err", "slurmd.err"):
                try:
                    with open(os.path.join(d, name), errors="replace") as f:
                        tails += f"\n{name}: " + "".join(f.readlines()[-8:])
                except OSError:
                    pass
            raise AssertionError(f"{e}{tails}")

    def close(self):
        if self.procs:
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True,
                           timeout=30)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.munged:
            try:
                os.kill(self.munged, signal.SIGTERM)
                wait_for(lambda: not os.path.exists(f"/proc/{self.munged}") or
                         read_file(f"/proc/{self.munged}/stat").split(") ")[1][0] == "Z",
                         10, what="munged to end")
            except ProcessLookupError:
                pass
        if self.link:
            sh("ip", "link", "del", self.link, check=False)
        if self.cgroup:
            sh("umount", "-R", "/sys/fs/cgroup", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class TestSlurm(unittest.TestCase):
    """--slurm on a real single-node Slurm: twelve ssh aliases to a loopback
    sshd (one machines-file line a two-host group), four shards."""

    ALIASES = [f"h{i:02d}" for i in range(1, 13)]

    @classmethod
    def setUpClass(cls):
        cls.slurm = Slurm()
        try:
            cls.sshd = Sshd()
        except BaseException:
            cls.slurm.close()
            raise
        cls.sshd.write_ssh_config(aliases=cls.ALIASES)
        # A dead host: an alias whose port nobody listens on.
        with open(cls.sshd.ssh_config, "a") as f:
            f.write(f"\nHost deadhost\n    HostName 127.0.0.1\n    Port {refused_port(cls.addClassCleanup)}\n"
                    "    User root\n")

    @classmethod
    def tearDownClass(cls):
        cls.sshd.stop()
        cls.slurm.close()
        reap()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="as-slurm-job-")
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        # Eleven lines: h01+h02 a group, then one host a line.
        self.lines = ["h01 h02"] + self.ALIASES[2:]

    def run_slurm(self, lines, *extra, pause=2, timeout=300, name="r"):
        mf, ctl = shard_files(self.tmp, lines, pause=pause, hosts_as="ssh")
        out = os.path.join(self.tmp, name)
        argv = [sys.executable, AUTOSERV, "-M", mf, "--ssh-config", self.sshd.ssh_config,
                "--connect-timeout", "5", "-r", out, *extra, ctl]
        return out, subprocess.Popen(argv, env=self.slurm.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc, timeout=300):
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr

    def test_verify_first_runs_in_every_shard_and_the_merge_names_the_dropped_host(self):
        # Verify only (no --repair: these aliases are this machine's sshd).
        out, proc = self.run_slurm(["h01", "deadhost"], "--slurm", "2", "--verify-first",
                                   pause=0)
        status, stderr = self.finish(proc)
        self.assertEqual(status, 4, stderr)
        summary, log, keyval = read_results(out)
        self.assertEqual(list(summary["job"]["dropped"]), ["deadhost"])
        self.assertIn("verify failed: reachable", summary["job"]["dropped"]["deadhost"])
        self.assertEqual((summary["hosts"]["h01"]["outcome"], keyval["exit_status"]),
                         ("GOOD", "4"))
        self.assertIn(("GOOD", "verify"), [(e["code"], e["operation"]) for e in log
                                           if e["message"].startswith("h01: reachable")])

    def test_four_shards_over_twelve_hosts_run_every_host_once_and_merge_whole(self):
        t0 = time.monotonic()
        out, proc = self.run_slurm(self.lines, "--slurm", "4")
        status, stderr = self.finish(proc)
        sharded = time.monotonic() - t0
        self.assertEqual(status, 0, stderr)
        self.assertRegex(stderr, r"shard 3/4 (RUNNING|PENDING)")
        summary, log, keyval = read_results(out)
        self.assertEqual(sorted(summary["hosts"]), self.ALIASES)
        self.assertTrue(all(h["outcome"] == "GOOD" for h in summary["hosts"].values()))
        self.assertEqual(summary["job"]["shards"]["merged"], ["0/4", "1/4", "2/4", "3/4"])
        ran = {}
        for i in range(4):
            shard = json.loads(read_file(os.path.join(out, "shards", str(i), "summary.json")))
            for host in shard["job"]["machines"]:
                ran.setdefault(host, []).append(i)
            self.assertEqual(shard["job"]["shard"]["source"],
                             "SLURM_ARRAY_TASK_ID=%d, SLURM_ARRAY_TASK_COUNT=4" % i)
        self.assertEqual(sorted(ran), self.ALIASES)
        self.assertTrue(all(len(v) == 1 for v in ran.values()), ran)
        self.assertEqual(ran["h01"], ran["h02"])
        self.assertEqual([e["operation"] for e in log if e["indent"] == 0 and
                          e["code"] == "START"], [f"shard.{i}" for i in range(4)])
        import xml.etree.ElementTree as ET
        suite = ET.parse(os.path.join(out, "junit.xml")).getroot()
        self.assertEqual((suite.get("tests"), suite.get("failures")), ("12", "0"))
        self.assertEqual(keyval["exit_status"], "0")
        # The same job in one process, for the wall-time figure.
        t0 = time.monotonic()
        mf = os.path.join(self.tmp, "machines")
        r = subprocess.run([sys.executable, AUTOSERV, "-M", mf, "--ssh-config",
                            self.sshd.ssh_config, "-r", os.path.join(self.tmp, "one"),
                            os.path.join(self.tmp, "job.control")],
                           capture_output=True, text=True, timeout=300)
        single = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        print(f"\n12 hosts: --slurm 4 {sharded:.1f} s, unsharded {single:.1f} s",
              file=sys.stderr)

    def test_a_dead_host_fails_the_merged_job_by_name(self):
        out, proc = self.run_slurm(self.lines[:-1] + ["deadhost"], "--slurm", "4", pause=0)
        status, stderr = self.finish(proc)
        self.assertEqual(status, 1, stderr)
        self.assertIn("deadhost", stderr)
        summary, _, _ = read_results(out)
        self.assertEqual(summary["hosts"]["deadhost"]["outcome"], "FAIL")
        self.assertEqual([h for h, e in summary["hosts"].items() if e["outcome"] != "GOOD"],
                         ["deadhost"])

    def test_shards_that_cannot_write_the_results_dir_fail_clearly(self):
        # The tasks run as nobody, who cannot write the root-owned results dir:
        # as on a node that does not share it.
        out, proc = self.run_slurm(self.lines, "--slurm", "4", "--slurm-option=--uid=nobody",
                                   pause=0)
        status, stderr = self.finish(proc)
        self.assertEqual(status, 1, stderr)
        summary, _, _ = read_results(out)
        missing = summary["job"]["shards"]["missing"]
        self.assertEqual([m["shard"] for m in missing], ["0/4", "1/4", "2/4", "3/4"])
        self.assertIn("filesystem the nodes share", missing[0]["why"])
        self.assertIn("slurm: ", missing[0]["why"])
        self.assertIn("shard 0/4 missing", stderr)

    def test_ctrl_c_cancels_the_array_and_still_merges(self):
        out, proc = self.run_slurm(self.lines, "--slurm", "4", pause=20)
        wait_for(lambda: os.path.exists(os.path.join(out, "shards", "1", "h03")), 60,
                 what="the shards at work")
        proc.send_signal(signal.SIGINT)
        status, stderr = self.finish(proc, timeout=120)
        self.assertEqual(status, 130, stderr)
        self.assertIn("cancelling slurm job", stderr)
        summary, _, _ = read_results(out)
        self.assertTrue(summary["job"]["shards"]["missing"])
        self.assertEqual(sorted(summary["hosts"]), self.ALIASES)
        shards = os.path.join(out, "shards")
        wait_for(lambda: not processes_with(shards), 20, what="the shards' processes to end")
        self.assertEqual(subprocess.run(["squeue", "-h", "-n", "autoserv"], env=self.slurm.env,
                                        capture_output=True, text=True).stdout.strip(), "")

    def test_a_shard_cancelled_mid_run_is_named_with_its_hosts(self):
        out, proc = self.run_slurm(self.lines, "--slurm", "4", pause=20)
        shard1 = os.path.join(out, "shards", "1")
        # Once shard 1's remote commands run (each command's text is in two
        # command lines then: the local ssh's and the remote wrapper's), cancel
        # that one array task.
        remote = [f"echo {h}; sleep 20" for h in ("h03", "h07", "h11")]
        wait_for(lambda: all(len(processes_with(x)) >= 2 for x in remote), 60,
                 what="shard 1's remote commands running")
        script = read_file(os.path.join(out, "shards", "autoserv.sbatch"))
        job_id = subprocess.run(["squeue", "-h", "-o", "%F", "-n", "autoserv"],
                                env=self.slurm.env, capture_output=True,
                                text=True).stdout.split()[0]
        self.assertIn("--shard env", script)
        subprocess.run(["scancel", f"{job_id}_1"], env=self.slurm.env, check=True)
        # Nothing of that shard is left, long before its commands' own end
        # (20 s): not autoserv, not its remote commands.
        leftovers = [shard1, "SLURM_ARRAY_TASK_ID=1 "] + remote
        wait_for(lambda: not any(processes_with(x) for x in leftovers), 10,
                 what="shard 1's processes to end")
        status, stderr = self.finish(proc)
        self.assertNotEqual(status, 0, stderr)
        self.assertIn("shard 1/4 missing", stderr)
        summary, _, keyval = read_results(out)
        missing = summary["job"]["shards"]["missing"]
        self.assertEqual([m["shard"] for m in missing], ["1/4"])
        self.assertEqual(missing[0]["hosts"], ["h03", "h07", "h11"])
        self.assertEqual(keyval["shards_missing"], "1")


# Closing lines and lanes ######################################################

class _TimedResult(unittest.TextTestResult):
    """Charges each class the wall time from the previous test's end to the
    end of each of its tests, so its setUpClass (guest boots) counts too."""

    by_class = {}
    by_test = {}
    last = None
    planned = []                # the ids of the tests to run, in order
    ran = set()                 # the ids of those that ran

    def stopTest(self, test):
        now = time.monotonic()
        cls = type(test).__name__
        start = _TimedResult.last if _TimedResult.last is not None else now
        _TimedResult.by_class[cls] = _TimedResult.by_class.get(cls, 0.0) + now - start
        _TimedResult.by_test[test.id()] = now - start
        _TimedResult.last = now
        _TimedResult.ran.add(test.id())
        super().stopTest(test)


class _TimedRunner(unittest.TextTestRunner):
    """Notes the tests it is given (the suite drops them as they run)."""

    resultclass = _TimedResult

    def run(self, test):
        def ids(suite):
            for t in suite:
                yield from ids(t) if isinstance(t, unittest.TestSuite) else (t.id(),)
        _TimedResult.planned = list(ids(test))
        return super().run(test)


_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def _count(outcomes, reasons, test_id, outcome, reason=""):
    """Records a test's outcome; a test's worst part (subtest, phase) is its
    outcome: failed over skipped over passed."""
    if _RANK[outcome] >= _RANK[outcomes.get(test_id, "passed")]:
        outcomes[test_id] = outcome
        reasons[test_id] = reason


def _failure_reason(traceback_text):
    """A failure's reason for the closing lines: the exception and its
    message from its traceback, on one line of at most 300 characters."""
    lines = [line for line in traceback_text.splitlines() if line.strip()]
    # The exception: the first unindented line after the last frame, with
    # the lines of its message after it.
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    rest = lines[frames[-1] + 1:] if frames else lines
    start = next((i for i, line in enumerate(rest) if not line.startswith(" ")), 0)
    return " | ".join(line.strip() for line in rest[start:])[:300]


def _unittest_outcomes(result):
    """{test id: outcome}, {test id: reason} from a unittest result: each
    test once, with its subtests; the tests a failed or skipped setUpClass
    kept from running count as that."""
    outcomes = dict.fromkeys(_TimedResult.ran, "passed")
    reasons = {}
    entries = [(t, "failed", _failure_reason(tb)) for t, tb in result.failures + result.errors]
    entries += [(t, "failed", "unexpected success") for t in result.unexpectedSuccesses]
    entries += [(t, "skipped", why) for t, why in result.skipped]
    for test, outcome, reason in entries:
        test_id = getattr(test, "test_case", test).id()     # a subtest's own test
        if test_id in _TimedResult.ran:
            _count(outcomes, reasons, test_id, outcome, reason)
            continue
        # A class's set-up or tear-down ("setUpClass (module.Class)").
        kept = {t for t in _TimedResult.planned if t not in _TimedResult.ran
                and f"({t.rsplit('.', 1)[0]})" in test_id}
        for one in kept or {test_id}:
            _count(outcomes, reasons, one, outcome, reason)
    return outcomes, reasons


def closing_lines(outcomes, reasons, seconds_by_class):
    """The lines CI reads, under either runner: why tests were skipped, the
    time each class took, then N passed, N failed, N skipped.  Under CI=true
    a skipped test counts as failed: a missing tool is a failure.  Returns
    the failed count."""
    counts = dict.fromkeys(_RANK, 0)
    why = {}
    for test_id, outcome in sorted(outcomes.items()):
        if IN_CI and outcome == "skipped":
            print(f"CI: skipped test counts as failed: {test_id}: {reasons[test_id]}")
            outcome = "failed"
        elif outcome == "skipped":
            why[reasons[test_id]] = why.get(reasons[test_id], 0) + 1
        counts[outcome] += 1
    for reason, n in sorted(why.items(), key=lambda kv: -kv[1]):
        print(f"skipped {n}: {reason}")
    # The failed tests by name, near the end where a CI log's tail shows them.
    for test_id, outcome in sorted(outcomes.items()):
        if outcome == "failed":
            print(f"FAILED {test_id}: {reasons.get(test_id) or 'see its output above'}")
    slow = sorted(seconds_by_class.items(), key=lambda kv: -kv[1])[:10]
    print("time by class: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in slow))
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return counts["failed"]


# The whole suite runs as lanes side by side (two; AUTOSERV_TEST_LANES=N
# sets how many), each in namespaces of its own: PID (with its own /proc), mount (its own /tmp, a directory of the real
# one, and its own /run/netns) and network (its own loopback and ports).  So
# the invariants that scan /proc and /tmp see only their lane, names and
# ports cannot clash, and a guest booting in one lane overlaps the other's
# waits.  A lane's pid 1 reaps orphans and, when its tests end, reports any
# process still alive in the lane as a failure; the parent reports any
# /tmp/autoserv-* a lane left.  One lane (in this process) when not root,
# when unshare is missing, when tests are named, or with AUTOSERV_TEST_LANES=1.

# Seconds per class in a two-lane run here (the time-by-class line of the
# 969 s run of 1f755ed): the lanes take the classes longest first, each the
# next as it comes free (a class not listed counts 20 s).
_CLASS_SECONDS = {
    "TestKernelInstall": 296, "TestKernelBoot": 280, "TestAutotestGuest": 214,
    "TestReboot": 198, "TestPower": 186, "TestKernelBootEdits": 182, "TestKVM": 112,
    "TestFanOut": 82, "TestConmux": 65, "TestJobOutcome": 60, "TestSlurm": 40,
    "TestAutotest": 37, "TestSSHRun": 30, "TestSSHRunPersistent": 30, "TestFaults": 25,
}


def _lane_count():
    try:
        # Two.  With AUTOSERV_TEST_LANES=3 the third takes only classes that
        # start no guest (see _claim), so two guests fill the two cores while
        # the loopback and namespace classes run beside them; its full runs
        # here took 879 and 1181 s against about 970 s for two, and each of
        # three runs had a kernel-guest test fail on a bound at load ~6 (an
        # ssh -G past 10 s, a master's keepalive lost mid-install, a guest
        # unreachable for 30 s after a reset): so two stay the default.
        return max(1, int(os.environ.get("AUTOSERV_TEST_LANES", "2")))
    except ValueError:
        return 2


def _lanes_wanted():
    return (sys.argv[1:] == [] and os.geteuid() == 0 and shutil.which("unshare")
            and _lane_count() > 1
            and subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net",
                                "true"], capture_output=True).returncode == 0)


# What a class that boots QEMU guests calls (TestPublicAPI's KVMGuest is
# refused before qemu starts, and is not among them).
_GUEST_CALLS = {"start_guest", "KernelGuest", "NetnsKernelGuest", "guest_image",
                "disk_image", "kernel_disk_image"}


def _code_names(code):
    """The global and attribute names a code object (and those nested in
    it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _starts_guests(name):
    """True when the test class (or a base of it here) boots QEMU guests."""
    funcs = [getattr(f, "__func__", f) for c in globals()[name].__mro__
             if c.__module__ == __name__ for f in vars(c).values()]
    return any(_GUEST_CALLS & _code_names(f.__code__) for f in funcs if hasattr(f, "__code__"))


def _claim(queue, light=False):
    """The next class from the lanes' shared queue (a directory of
    NNN-ClassName files, opened as queue), or None: whichever lane unlinks
    an entry first has it.  A light lane (the third and later) passes over
    the classes that boot guests: two lanes' guests fill two cores."""
    for entry in sorted(os.listdir(queue)):
        if light and _starts_guests(entry.split("-", 1)[1]):
            continue
        try:
            os.unlink(entry, dir_fd=queue)
        except FileNotFoundError:
            continue
        return entry.split("-", 1)[1]
    return None


def _lane_child(tmp, results, queue_dir, light=False):
    """A lane's pid 1: its mounts and loopback, then the tests in a child,
    reaping every orphan until that child ends.  The child takes classes from
    the shared queue one at a time until it is empty.  results: a file
    written before /tmp is mounted over (one JSON line from the tests, then
    one of the processes left)."""
    report = open(results, "w")
    queue = os.open(queue_dir, os.O_RDONLY | os.O_DIRECTORY)
    os.makedirs("/run/netns", exist_ok=True)
    # A checkout under /tmp (a clone in /tmp/x) would vanish under the lane's
    # own /tmp, and with it autoserv.py, boottool and examples/ for every
    # test that runs them by path: it is bound in at its own path.
    keep = []
    if HERE.startswith("/tmp/"):
        inner = os.path.join(tmp, os.path.relpath(HERE, "/tmp"))
        os.makedirs(inner, exist_ok=True)
        keep = [["mount", "--bind", HERE, inner]]
    for argv in (["mount", "--make-rprivate", "/"], *keep, ["mount", "--rbind", tmp, "/tmp"],
                 ["mount", "-t", "tmpfs", "lane-netns", "/run/netns"],
                 ["mount", "-t", "sysfs", "lane-sysfs", "/sys"],
                 ["ip", "link", "set", "lo", "up"]):
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode:
            print(f"lane set-up failed: {' '.join(argv)}: {out.stderr.strip()}", flush=True)
            return 1
    runner = os.fork()
    if runner == 0:
        # The tests, ending by sys.exit so that autoserv's exit hook runs as in
        # a single-lane run.
        code = 1
        try:
            _subreaper()            # not inherited through fork
            outcomes, reasons = {}, {}
            while True:
                name = _claim(queue, light)
                if name is None:
                    break
                print(f"lane: {name}", flush=True)
                _TimedResult.last = time.monotonic()
                _TimedResult.ran = set()
                prog = unittest.main(module=__name__, argv=[sys.argv[0], name], exit=False,
                                     verbosity=2, testRunner=_TimedRunner)
                got, why = _unittest_outcomes(prog.result)
                outcomes.update(got)
                reasons.update(why)
            report.write(json.dumps({"outcomes": outcomes, "reasons": reasons,
                                     "seconds": _TimedResult.by_class,
                                     "tests": _TimedResult.by_test}) + "\n")
            report.flush()
            code = 0
            held = _autoserv_tmp("/tmp")
            if held:
                print("lane: held until the exit hook: " + ", ".join(
                    f"{n} ({' '.join(sorted(os.listdir('/tmp/' + n))[:6])})" for n in held))
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.exit(code)
    code = 1
    while True:
        pid, status = os.wait()
        if pid == runner:
            code = os.waitstatus_to_exitcode(status)
            break
    time.sleep(1)              # what the tests ended may still be exiting
    reap()
    left = [f"{pid} {' '.join(argv)}" for pid, argv in _lane_processes()]
    if left:
        print("lane: processes outlived the tests: " + "; ".join(left), flush=True)
    report.write(json.dumps(left) + "\n")
    report.close()
    return code


def _lane_processes():
    """(pid, argv) of every process in this PID namespace but pid 1."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == 1:
            continue
        try:
            argv = read_file(f"/proc/{pid}/cmdline", "rb").split(b"\0")
        except OSError:
            continue
        found.append((int(pid), [a.decode(errors="replace") for a in argv if a]))
    return found


def _lanes_run(order, count, queue, lanes, t0):
    """Starts count lanes (noting each in lanes as it goes) that take the
    classes of order, longest first, from the queue directory as each comes
    free; copies their lines out with a [n] prefix, and merges what they
    report: (outcomes, reasons, seconds by class, seconds by test)."""
    for n, name in enumerate(order):
        open(os.path.join(queue, f"{n:03d}-{name}"), "w").close()
    for i in range(1, count + 1):
        tmp = tempfile.mkdtemp(prefix=f"as-lane{i}-")
        os.chmod(tmp, 0o1777)       # the lane's /tmp, like any /tmp (the namespace hosts' user)
        results = os.path.join(tempfile.mkdtemp(prefix=f"as-lane{i}-results-"), "results.json")
        lanes.append([i, None, tmp, results])
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount",
                "--net", sys.executable] + [f"-W{w}" for w in sys.warnoptions] + \
            [os.path.abspath(__file__), "--lane", tmp, results, queue] + (["light"] * (i > 2))
        lanes[-1][1] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
    threads, ended, last = [], {}, {}
    for i, proc, _, _ in lanes:
        def pump(i=i, proc=proc):
            for line in proc.stdout:
                last[i] = line.decode(errors="replace").strip()
                try:
                    sys.stdout.write(f"[{i}] " + line.decode(errors="replace"))
                    sys.stdout.flush()
                except OSError:     # our stdout is gone: the lane must not block on it
                    pass
            ended[i] = time.monotonic() - t0
        th = threading.Thread(target=pump)
        th.start()
        threads.append(th)
    outcomes, reasons, seconds, tests = {}, {}, {}, {}
    # A bound on the whole run: a test that hangs ends its lane (and what
    # runs in it) here, named, rather than CI's own time limit ending all.
    bound = float(os.environ.get("AUTOSERV_TEST_BOUND", "2700"))
    for i, proc, tmp, results in lanes:
        try:
            code = proc.wait(timeout=max(1.0, t0 + bound - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"lane {i}: still running {bound:.0f} s after the suite began "
                  f"(AUTOSERV_TEST_BOUND); ended; its last line: {last.get(i, '')}", flush=True)
            proc.kill()
            code = proc.wait()
            outcomes[f"lane{i}.within_bound"] = "failed"
            reasons[f"lane{i}.within_bound"] = f"hung after: {last.get(i, '')}"[:300]
        threads[i - 1].join()
        print(f"lane {i}: ended with status {code} after {ended[i]:.0f} s", flush=True)
        got, left = {"outcomes": {}, "reasons": {}, "seconds": {}}, None
        with open(results) as f:
            lines = f.read().splitlines()
        with contextlib.suppress(ValueError, IndexError):
            got = json.loads(lines[0])
            left = json.loads(lines[1])
        if left != []:          # processes left, or the lane ended before it looked
            got["outcomes"][f"lane{i}.no_process_left"] = "failed"
            got["reasons"][f"lane{i}.no_process_left"] = (
                f"left running: {left}" if left else "the lane ended before it looked")
        leaked = _autoserv_tmp(tmp)
        for name in leaked:
            inside = sorted(os.listdir(os.path.join(tmp, name)))
            print(f"lane {i}: left in its /tmp: {name}: {' '.join(inside[:8])}", flush=True)
        if leaked:
            got["outcomes"][f"lane{i}.tmp_left"] = "failed"
            got["reasons"][f"lane{i}.tmp_left"] = "left in /tmp: " + " ".join(leaked)
        outcomes.update(got["outcomes"])
        reasons.update(got["reasons"])
        for name, secs in got["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + secs
        tests.update(got.get("tests", {}))
    for test_id in plan_ids(order):
        if test_id not in outcomes:                 # in a lane that died, or never taken
            outcomes[test_id] = "failed"
            reasons[test_id] = "no result: its lane died, was ended, or never took its class"
    return outcomes, reasons, seconds, tests


def _run_lanes(only=()):
    """The whole suite (or the classes named) in lanes (see above); the
    closing lines merge them.  Returns the exit status."""
    try:
        build_images()          # once, before the lanes, which only read the cache
    except unittest.SkipTest as e:
        print(f"guest images not built: {e}")
    loader = unittest.defaultTestLoader
    classes = [name for name, obj in sorted(globals().items())
               if isinstance(obj, type) and issubclass(obj, unittest.TestCase)
               and loader.getTestCaseNames(obj) and (not only or name in only)]
    order = sorted(classes, key=lambda c: -_CLASS_SECONDS.get(c, 20))
    count = min(_lane_count(), len(order))
    print(f"{count} lanes for: {' '.join(order)}", flush=True)
    t0 = time.monotonic()
    lanes = []
    queue = tempfile.mkdtemp(prefix="as-lane-queue-")

    def terminated(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        outcomes, reasons, seconds, tests = _lanes_run(order, count, queue, lanes, t0)
    finally:
        # However the run ends (a signal, our stdout closed), no lane, lane
        # process or lane dir outlives it: --kill-child takes a lane's PID 1,
        # and with it its namespace, when its unshare dies.
        for _, proc, tmp, results in lanes:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            subprocess.run(["rm", "-rf", tmp, os.path.dirname(results)])
        shutil.rmtree(queue, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    slowest = sorted(tests.items(), key=lambda kv: -kv[1])[:12]
    print("slowest tests: " + ", ".join(f"{t.split('.', 1)[1]} {secs:.0f} s"
                                        for t, secs in slowest))
    print(f"suite: {time.monotonic() - t0:.0f} s in {len(lanes)} lanes")
    failed = closing_lines(outcomes, reasons, seconds)
    return 0 if failed == 0 and outcomes else 1


def plan_ids(names):
    """The ids of the tests in the named classes."""
    loader = unittest.defaultTestLoader
    return [f"{__name__}.{name}.{t}" for name in names
            for t in loader.getTestCaseNames(globals()[name])]


def _run_seed_examples(numbers):
    """--seed NN...: the tests that run examples/seed/NN-* here, showing each
    control file as run, autoserv's command line and its output."""
    known = {}
    for cls in [c for c in globals().values() if isinstance(c, type)
                and issubclass(c, unittest.TestCase)]:
        for attr in dir(cls):
            m = re.match(r"test_seed_(\d\d)_", attr)
            if m and attr in vars(cls):
                known.setdefault(m.group(1), []).append(f"{cls.__name__}.{attr}")
    wanted = [n.zfill(2) for n in numbers] or sorted(known)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"test_autoserv.py: no seed example {', '.join(unknown)}; "
              f"there are {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    os.environ["AUTOSERV_SEED_SHOW"] = "1"
    sys.argv[1:] = [test for n in wanted for test in known[n]]
    return _run_in_process(verbosity=2, warnings="ignore")


def _run_in_process(verbosity=1, **unittest_options):
    """unittest on sys.argv's tests in this process, then the closing lines;
    the exit status."""
    _TimedResult.last = time.monotonic()
    prog = unittest.main(module=__name__, exit=False, verbosity=verbosity,
                         testRunner=_TimedRunner, **unittest_options)
    outcomes, reasons = _unittest_outcomes(prog.result)
    failed = closing_lines(outcomes, reasons, _TimedResult.by_class)
    return 0 if failed == 0 and outcomes else 1


def main():
    """unittest, then the closing lines."""
    if sys.argv[1:2] == ["--lane"]:
        return _lane_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:] == ["light"])
    if sys.argv[1:2] == ["--lanes"]:
        return _run_lanes(sys.argv[2:])
    if sys.argv[1:2] == ["--seed"]:
        return _run_seed_examples(sys.argv[2:])
    if _lanes_wanted():
        return _run_lanes()
    return _run_in_process()


if "pytest" in sys.modules:
    # Run by pytest (python3 -m pytest test_autoserv.py): this module is its
    # own plugin (there is no conftest.py), so the CI rule and the closing
    # lines are the same as under unittest.
    import pytest
    pytest_plugins = [__name__]
    _PYTEST = ({}, {}, {})          # outcomes, reasons, seconds by class

    def _skip_reason(report):
        if report.skipped and isinstance(report.longrepr, tuple):    # (path, line, reason)
            return report.longrepr[2].replace("Skipped: ", "", 1)
        return ""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        """Under CI=true a skip is a failure (pytest's own count and status too)."""
        report = (yield).get_result()
        if IN_CI and report.skipped:
            reason = _skip_reason(report) or report.longrepr
            report.outcome = "failed"
            report.longrepr = f"CI: skipped test counts as failed: {reason}"

    def pytest_runtest_logreport(report):
        outcomes, reasons, seconds = _PYTEST
        parts = report.nodeid.split("::")
        cls = parts[1] if len(parts) > 2 else parts[0]
        seconds[cls] = seconds.get(cls, 0.0) + report.duration
        _count(outcomes, reasons, report.nodeid, report.outcome, _skip_reason(report))

    def pytest_unconfigure(config):
        if _PYTEST[0]:
            closing_lines(*_PYTEST)


if __name__ == "__main__":
    if sys.argv[1:] == ["--build-images"]:
        try:
            build_images()
        except unittest.SkipTest as e:           # a missing tool (outside CI)
            sys.exit(f"guest images not built: {e}")
        sys.exit(0)
    sys.exit(main())
