#!/usr/bin/env python3
"""autoserv's speed, against raw OpenSSH and its peers in the same run.

    python3 bench_autoserv.py            # autoserv (per-command and persistent) and raw ssh
    python3 bench_autoserv.py --peers    # also Fabric, parallel-ssh and Ansible
    python3 bench_autoserv.py --quick    # fewer repetitions and smaller files
    python3 bench_autoserv.py --scale 16,64,256 --only scale   # the scale row alone

It starts its own sshd hosts on 127.0.0.1 (the test suite's fixture: own keys,
own config, clean remote HOME), measures each row's work with autoserv, with
the floor (plain OpenSSH or a TCP poll doing the same work) and, with --peers,
with Fabric, parallel-ssh and ansible-core installed into a throwaway
virtualenv in a temp dir (removed at the end; never a dependency of
autoserv), each out of the box and with TCP_NODELAY set on its socket.  It
prints medians, p95s (only where a row has at least 20 samples) and each
contender's ratio to the floor.  Needs root (sshd) and the tools the tests
need.

Everything it makes locally (sshd dirs, spill files of huge output, control
sockets) lives under one temp dir, TMPDIR for itself and its children, which
is removed at the end, also on Ctrl-C or SIGTERM; each row's spill files are
removed when the row ends, and the run ends by listing whatever it finds left
behind (ssh processes of its own, new /tmp/autoserv-* dirs).
"""

import argparse
import concurrent.futures
import glob
import json
import os
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import autoserv  # noqa: E402
import test_autoserv as fixtures  # noqa: E402

# The test module makes its importer a child subreaper (its invariant checks
# need it); a job's process is none, and this one never waits for orphans,
# which would pile up here as zombies (over a thousand in a run).
_prctl = fixtures.ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [fixtures.ctypes.c_int] + [fixtures.ctypes.c_ulong] * 4
_prctl(fixtures.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

PEER_PACKAGES = ["fabric", "parallel-ssh", "ansible-core"]


def timed(fn, repeat):
    """Seconds of each of repeat calls of fn()."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


MIN_P95_SAMPLES = 20


def summary(times):
    """(median, p95); p95 is None under MIN_P95_SAMPLES samples (too few to
    say anything about a tail)."""
    times = sorted(times)
    if len(times) < MIN_P95_SAMPLES:
        return statistics.median(times), None
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95


def mem_available_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise SystemExit("bench_autoserv.py: no MemAvailable in /proc/meminfo")


class MemSampler:
    """MemAvailable every 20 ms on a thread, as (time.monotonic(), kB): the
    clock is system-wide, so a child's round marks select its samples."""

    def __init__(self):
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), mem_available_kb()))
            self.stop.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def before(self, t):
        """The last sample taken before t."""
        earlier = [kb for at, kb in self.samples if at <= t]
        return earlier[-1] if earlier else self.samples[0][1]

    def lowest(self, t0, t1):
        inside = [kb for at, kb in self.samples if t0 <= at <= t1]
        return min(inside + [self.before(t1)])


def run_child(argv, timeout, what):
    """Runs argv (stdout to a file, returned; stderr to a file) to its end;
    on a timeout, Ctrl-C or SIGTERM it gets SIGTERM (autoserv ends its
    tasks and masters on it) and 30 s before SIGKILL: never a hang, never a
    child killed before it could clean up."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            proc.wait(timeout)
        except BaseException as e:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                raise SystemExit(f"bench_autoserv.py: {what} took over {timeout} s; stopped it")
            raise
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"bench_autoserv.py: {what} failed (exit {proc.returncode}):\n"
                             + err.read().decode(errors="replace")[-2000:])
        return out.read().decode()


def cgroup_pids_room():
    """(room, limit) for new processes in this process's cgroups (v2), the
    tightest along the path; (None, None) when no pids controller limits it."""
    try:
        with open("/proc/self/cgroup") as f:
            path = [l.split(":", 2)[2].strip() for l in f if l.startswith("0::")][0]
    except (OSError, IndexError):
        return None, None
    best = (None, None)
    while True:
        d = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        try:
            with open(os.path.join(d, "pids.max")) as f:
                limit = f.read().strip()
            with open(os.path.join(d, "pids.current")) as f:
                current = int(f.read())
            if limit != "max":
                room = int(limit) - current
                if best[0] is None or room < best[0]:
                    best = (room, int(limit))
        except (OSError, ValueError):
            pass
        if path in ("", "/"):
            return best
        path = os.path.dirname(path)


FDS_PER_HOST = 4          # a task's result/stdout/stderr pipes in the job, and slack
PROCS_PER_HOST = 12       # task, ssh (and master), sshd's two, shell, command, wrapper...


def check_scale_limits(n):
    """Exits with one line when this machine cannot hold n hosts at once;
    raises the soft open-file limit to the hard one when that is enough."""
    need = FDS_PER_HOST * n + 128
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    if soft != inf and soft < need:
        if hard != inf and hard < need:
            sys.exit(f"bench_autoserv.py: --scale {n} needs about {need} open files a "
                     f"process; ulimit -n is {soft} (hard {hard}): raise it (ulimit -n "
                     f"{need}) or choose smaller sizes with --scale")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"raised the soft open-file limit from {soft} to {hard} for {n} hosts", flush=True)
    procs = PROCS_PER_HOST * n + 64
    running = sum(1 for p in os.listdir("/proc") if p.isdigit())
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with open("/proc/sys/kernel/threads-max") as f:
        threads_max = int(f.read())
    room, limit = cgroup_pids_room()
    checks = [("kernel.pid_max", pid_max - running, pid_max),
              ("kernel.threads-max", threads_max - running, threads_max)]
    if room is not None:
        checks.append(("the cgroup's pids.max", room, limit))
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if os.geteuid() != 0 and nproc != inf:
        checks.append(("ulimit -u", nproc - running, nproc))
    for name, free, limit in checks:
        if free < procs:
            sys.exit(f"bench_autoserv.py: --scale {n} needs about {procs} more processes; "
                     f"{name} ({limit}) leaves room for {free}: choose smaller sizes with --scale")
    return need, procs


def own_ssh_pids(text):
    """PIDs of ssh processes whose command line or environment holds text (a
    path of this run's own temp dir, or its TMPDIR: only this run's name it)."""
    return sorted(set(fixtures.comm_pids("ssh")) & set(fixtures.processes_with(text)))


class ShPipe:
    """The persistent floor: one long-lived `ssh host sh`; a command is
    written to it as `sh -c CMD` (one process start, as autoserv's agent
    makes for a command: `true` alone would be the shell's builtin) and its
    output read up to a marker line."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv + ["sh"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.marker = b"__as_bench_end_%d__ " % os.getpid()
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.run("true")

    def send(self, command):
        self.proc.stdin.write(b"sh -c " + shlex.quote(command).encode() + b"\necho "
                              + self.marker + b"$?\n")

    def feed(self):
        """Reads once; the command's status once its marker line is in."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            raise SystemExit("bench_autoserv.py: the ssh sh pipe ended")
        self.buf += chunk
        at = self.buf.rfind(self.marker)
        if at < 0 or not self.buf.endswith(b"\n"):
            return None
        status = int(self.buf[at + len(self.marker):].strip() or b"-1")
        self.buf = b""
        return status

    def run(self, command):
        self.send(command)
        while True:
            status = self.feed()
            if status is not None:
                return status

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def run_on_pipes(pipes, command):
    """command on every pipe at once; returns when all have answered."""
    sel = selectors.DefaultSelector()
    for p in pipes:
        p.send(command)
        sel.register(p.fd, selectors.EVENT_READ, p)
    left = len(pipes)
    while left:
        for key, _ in sel.select():
            if key.data.feed() is not None:
                sel.unregister(key.fd)
                left -= 1
    sel.close()


def in_forked_tasks(fns):
    """Each fn() in a forked process of its own, all at once, as
    parallel_simple's tasks are: the least a task per host costs (no
    autoserv in it), for the fan-out rows' fork-per-task floors."""
    pids = []
    for fn in fns:
        pid = os.fork()
        if pid == 0:
            try:
                fn()
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def warm_up(h, limit=30.0):
    """A few commands on h, then more until its agent is up (the default
    starts it in the background on a host's second command)."""
    h.run("true")
    h.run("true")
    end = time.monotonic() + limit
    while time.monotonic() < end and not (isinstance(h._agent, dict) and "local" in h._agent):
        h.run("true")


class Bench:
    def __init__(self, quick, peers, venv=None, scale=None):
        self.quick = quick
        self.scale_sizes = scale or ([16] if quick else [16, 64, 256])
        self.rows = []             # (work, who, median, p95, unit, ratio, note)
        self.tmp = tempfile.mkdtemp(prefix="as-bench-")
        # TMPDIR for this process and every child: sshd dirs, autoserv's
        # spill files and control dirs all land under self.tmp.
        self.tmpdir = os.path.join(self.tmp, "t")
        os.mkdir(self.tmpdir, 0o700)
        os.environ["TMPDIR"] = self.tmpdir
        tempfile.tempdir = self.tmpdir
        self.remote_tmp_before = set(glob.glob("/tmp/autoserv-*"))
        self.closed = False
        self.sshds = []
        self.sshd_lock = threading.Lock()
        self.ports_given = set()
        self.versions = {}
        self.venv = None
        self.want_venv = (peers or bool(venv), venv)

    def setup_peers(self):
        """The peers' virtualenv (inside the run's try: a failed pip still
        ends in close()), and their versions, printed."""
        if self.want_venv[0]:
            self.venv = self.make_venv(self.want_venv[1])
            self.versions = self.peer_versions()
            print("peers: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                  flush=True)

    def close(self):
        if self.closed:
            return
        self.closed = True
        autoserv._close_all_hosts()
        self.end_ansible_masters()
        for s in self.sshds:
            s.stop()
        left = own_ssh_pids(self.tmp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        if left:
            print(f"left behind: {len(left)} ssh processes of this run (PIDs "
                  f"{' '.join(map(str, left))}); ended them", flush=True)
        self.remove_spill("the end")
        shutil.rmtree(self.tmp, ignore_errors=True)
        new = sorted(set(glob.glob("/tmp/autoserv-*")) - self.remote_tmp_before)
        if new:
            print(f"left behind: {len(new)} new /tmp/autoserv-* ({', '.join(new[:5])}): "
                  "not removed (maybe not this run's)", flush=True)

    def remove_spill(self, row):
        """Removes spill files (autoserv's whole-stream files of output past
        max_output) left in this run's TMPDIR; says so when there were any."""
        found = [os.path.join(d, f) for d, _, files in os.walk(self.tmpdir)
                 for f in files if f.startswith("output-") and f.endswith(".log")]
        size = 0
        for path in found:
            try:
                size += os.path.getsize(path)
                os.unlink(path)
            except OSError:
                pass
        if found:
            print(f"  {row}: removed {len(found)} spill files left in TMPDIR "
                  f"({size / 2**20:.0f} MiB)", flush=True)

    # peers ######################################################################

    def make_venv(self, keep=None):
        venv = keep or os.path.join(self.tmp, "venv")
        if keep and os.path.exists(os.path.join(venv, "bin", "ansible")):
            return venv
        print(f"installing {', '.join(PEER_PACKAGES)} into a throwaway virtualenv ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        out = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q",
                              "--disable-pip-version-check"] + PEER_PACKAGES,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit("bench_autoserv.py: pip could not install the peers:\n"
                             + out.stderr[-2000:])
        return venv

    def peer_versions(self):
        """{package: version} of the peers in the virtualenv."""
        code = ("import importlib.metadata as m, json, sys\n"
                "v = {}\n"
                "for p in sys.argv[1:]:\n"
                "    try:\n"
                "        v[p] = m.version(p)\n"
                "    except m.PackageNotFoundError:\n"
                "        v[p] = 'missing'\n"
                "print(json.dumps(v))\n")
        out = subprocess.run([os.path.join(self.venv, "bin", "python"), "-c", code]
                             + PEER_PACKAGES, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def peer(self, row, sshds, n, **extra):
        """{label: samples} from the peer script in the virtualenv."""
        if not self.venv:
            return {}
        cfg = dict(row=row, n=n, hosts=[{"port": s.port, "key": s.client_key} for s in sshds],
                   **extra)
        script = os.path.join(self.tmp, "peers.py")
        with open(script, "w") as f:
            f.write(PEER_SCRIPT)
        out = subprocess.run([os.path.join(self.venv, "bin", "python"), script, json.dumps(cfg)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            print(f"  peers failed on {row}: {out.stderr.strip()[-800:]}", flush=True)
            return {}
        return json.loads(out.stdout.strip().splitlines()[-1])

    def ansible(self, sshds, command, n, forks=16):
        """ansible ad-hoc -m command over its own ControlPersist masters (the
        out-of-the-box setting), which close() ends with ssh -O exit."""
        if not self.venv:
            return []
        inv = os.path.join(self.tmp, "inventory")
        with open(inv, "w") as f:
            for i, s in enumerate(sshds):
                f.write(f"h{i} ansible_host=127.0.0.1 ansible_port={s.port} ansible_user=root "
                        f"ansible_ssh_private_key_file={s.client_key} "
                        f"ansible_ssh_common_args='-o UserKnownHostsFile={s.known_hosts}'\n")
        env = dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(self.tmp, "cp"),
                   ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3", ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.tmp, "ansible-local"),
                   ANSIBLE_NOCOLOR="1")
        argv = [os.path.join(self.venv, "bin", "ansible"), "all", "-i", inv, "-f", str(forks),
                "-m", "command", "-a", command]

        def once():
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        once()
        return timed(once, n)

    def end_ansible_masters(self):
        for sock in glob.glob(os.path.join(self.tmp, "cp", "*")):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True, timeout=10)

    # recording ##################################################################

    def record(self, work, entries, floor, unit="ms", note=""):
        """entries: [(who, samples)] or [(who, samples, {"floor": i, "note": s})]
        (unit ms: seconds each; MB/s: rates); floor: the index of the row's
        floor entry; an entry's own "floor" (another entry: a persistent
        floor for persistent rows) is named beside its ratio."""
        def med(samples):
            return statistics.median(samples) if unit == "MB/s" else summary(samples)[0]
        floors = {floor} | {e[2]["floor"] for e in entries if len(e) > 2 and "floor" in e[2]}
        for i, entry in enumerate(entries):
            who, value = entry[0], entry[1]
            extra = entry[2] if len(entry) > 2 else {}
            against = extra.get("floor", floor)
            ratio = med(value) / med(entries[against][1])
            if unit == "MB/s":
                shown = (f"{med(value):.0f} MB/s", "-")
            else:
                m, p95 = summary(value)
                shown = (f"{m * 1000:.1f} ms", "-" if p95 is None else f"{p95 * 1000:.1f}")
            ratio_text = f"{ratio:.2f}x"
            if against != floor:
                ratio_text += f" of {extra.get('vs', entries[against][0])}"
            notes = [n for n in (note if i == 0 else "", extra.get("note", "")) if n]
            if len(value) < MIN_P95_SAMPLES:
                notes.append(f"{len(value)} samples")
            row = (work if i == 0 else "", who + (" (floor)" if i in floors else ""),
                   shown[0], shown[1], ratio_text, "; ".join(notes))
            self.rows.append(row)
            print("  " + " | ".join(row), flush=True)

    def in_job(self, kind, sshds, n, persistent=False):
        """Samples of parallel_simple(uname -r) over sshds, timed in a child
        that imports autoserv alone, as a job's process does (this process
        also holds the test suite's fixtures, which doubles a fork's cost);
        kind "noop": {"times": samples, "cpu": [parent, tasks] ms a round}."""
        cfg = dict(kind=kind, n=n, persistent=persistent, configs=[s.ssh_config for s in sshds])
        return json.loads(run_child([sys.executable, "-c", JOB_TIMER, HERE, json.dumps(cfg)],
                                    600, f"the {kind} fan-out job"))

    def hosts(self, count):
        """The first count sshds, started as needed, four at a time (each
        start is two ssh-keygen runs and a wait for the listener)."""
        def start():
            # Ports handed out here, never twice: the fixture picks one at
            # random and, were it another of ours, its readiness probe
            # could reach that other sshd before its own had died of the clash.
            for attempt in range(5):
                with self.sshd_lock:
                    taken = {x.port for x in self.sshds} | self.ports_given
                    port = fixtures.free_port()
                    while port in taken:
                        port = fixtures.free_port()
                    self.ports_given.add(port)
                try:
                    s = fixtures.Sshd(port=port)
                    break
                except AssertionError as e:
                    if "Address already in use" not in str(e) or attempt == 4:
                        raise
            with self.sshd_lock:
                self.sshds.append(s)
        need = count - len(self.sshds)
        if need > 0:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(start) for _ in range(need)]
                try:
                    for f in futures:
                        f.result()
                except BaseException:       # the started ones are in self.sshds
                    for f in futures:
                        f.cancel()
                    raise
        dead = [x.port for x in self.sshds[:count] if x.proc.poll() is not None]
        if dead:
            raise SystemExit(f"bench_autoserv.py: sshd on ports {dead} died after starting")
        return self.sshds[:count]

    def stop_hosts_beyond(self, count):
        extra, self.sshds[count:] = self.sshds[count:], []
        for s in extra:
            s.stop()

    @staticmethod
    def raw_ssh(sshd, control=None):
        argv = ["ssh", "-F", sshd.ssh_config, "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if control:
            argv += ["-o", f"ControlPath={control}"]
        return argv + ["testhost"]

    def master(self, sshd):
        """A warm raw ControlMaster for the floor."""
        path = os.path.join(self.tmp, f"raw-{sshd.port}")
        subprocess.run(self.raw_ssh(sshd) + ["-o", "ControlMaster=yes", "-o",
                       f"ControlPath={path}", "-o", "ControlPersist=600", "-f", "-N"],
                       check=True)
        return path

    def end_master(self, sshd, path):
        subprocess.run(self.raw_ssh(sshd, path) + ["-O", "exit"], capture_output=True)

    # rows ########################################################################

    def run_true(self):
        sshd = self.hosts(1)[0]
        n = 30 if self.quick else 200
        h = sshd.host()                 # the default: the agent once it is up
        warm_up(h)
        ours = timed(lambda: h.run("true"), n)
        hs = sshd.host(persistent=False)
        hs.run("true")
        own = timed(lambda: hs.run("true"), n)
        hp = sshd.host(persistent=True)
        hp.run("true")
        persistent = timed(lambda: hp.run("true"), n)
        path = self.master(sshd)
        floor = timed(lambda: subprocess.run(self.raw_ssh(sshd, path) + ["true"], check=True), n)
        self.end_master(sshd, path)
        pipe = ShPipe(self.raw_ssh(sshd))
        on_pipe = timed(lambda: pipe.run("true"), n)
        pipe.close()
        entries = [("autoserv (default: the agent once up)", ours),
                   ("autoserv --no-persistent (its own session)", own),
                   ("autoserv persistent=True", persistent, {"floor": 4, "vs": "the sh pipe"}),
                   ("ssh, warm master", floor),
                   ("one long-lived `ssh host sh`, sh -c CMD and a marker", on_pipe)]
        entries += list(self.peer("run_true", [sshd], n).items())
        if self.venv:
            entries.append(("ansible ad-hoc", self.ansible([sshd], "true", 3 if self.quick else 10)))
        self.record('run("true"), warm host', entries, 3)

    def fan_out(self, count=16):
        sshds = self.hosts(count)
        n = 5 if self.quick else 20

        paths = [self.master(s) for s in sshds]

        def floor():
            procs = [subprocess.Popen(self.raw_ssh(s, p) + ["uname -r"],
                                      stdout=subprocess.DEVNULL) for s, p in zip(sshds, paths)]
            for p in procs:
                p.wait()
        entries = [("autoserv parallel_simple (default)", self.in_job("warm", sshds, n,
                                                                    persistent="auto")),
                   ("autoserv parallel_simple, --no-persistent", self.in_job("warm", sshds, n)),
                   ("autoserv parallel_simple, persistent=True",
                    self.in_job("warm", sshds, n, persistent=True),
                    {"floor": 4, "vs": "the sh pipes"}),
                   (f"{count} ssh at once, warm masters", timed(floor, n))]
        pipes = [ShPipe(self.raw_ssh(s)) for s in sshds]
        entries.append((f"{count} long-lived `ssh host sh`, sh -c 'uname -r' on all at once",
                        timed(lambda: run_on_pipes(pipes, "uname -r"), n)))
        entries.append((f"{count} forked tasks, each sh -c 'uname -r' on its own long-lived "
                        "`ssh host sh` (the least a task per host costs)",
                        timed(lambda: in_forked_tasks(
                            [lambda p=p: p.run("uname -r") for p in pipes]), n)))
        noop = self.in_job("noop", sshds, n)      # also the CPU a round, parent and tasks
        entries.append((f"autoserv parallel_simple of {count} tasks that do nothing "
                        "(its forks)", noop["times"],
                        {"note": "CPU a round: parent {:.1f} ms, tasks {:.1f} ms".format(
                            *noop["cpu"])}))
        for p in pipes:
            p.close()
        for s, p in zip(sshds, paths):
            self.end_master(s, p)
        entries += list(self.peer("fan_out", sshds, n).items())
        if self.venv:
            entries.append((f"ansible ad-hoc -f {count}",
                            self.ansible(sshds, "uname -r", 3 if self.quick else 5)))
        self.record(f"uname -r on {count} warm hosts", entries, 3)

        def floor_cold():
            procs = [subprocess.Popen(self.raw_ssh(s) + ["uname -r"], stdout=subprocess.DEVNULL)
                     for s in sshds]
            for p in procs:
                p.wait()

        def forked_cold():
            in_forked_tasks([lambda s=s: subprocess.run(self.raw_ssh(s) + ["uname -r"],
                                                        stdout=subprocess.DEVNULL)
                             for s in sshds])
        def staying():
            # The same fresh ssh, each staying as its connection's master
            # (as autoserv's first contact does): what OpenSSH's own
            # ControlPersist costs.  The masters end after the timing.
            paths = [os.path.join(self.tmp, f"cold-{s.port}") for s in sshds]
            t0 = time.perf_counter()
            try:
                procs = [subprocess.Popen(self.raw_ssh(s) + [
                    "-o", "ControlMaster=auto", "-o", f"ControlPath={path}",
                    "-o", "ControlPersist=yes", "uname -r"], stdout=subprocess.DEVNULL)
                    for s, path in zip(sshds, paths)]
                for p in procs:
                    p.wait()
                return time.perf_counter() - t0
            finally:
                for s, path in zip(sshds, paths):
                    self.end_master(s, path)
        n = 3 if self.quick else 8
        entries = [("autoserv parallel_simple", self.in_job("cold", sshds, n)),
                   (f"{count} fresh ssh at once", timed(floor_cold, n)),
                   (f"{count} fresh ssh at once, each staying as its master (ControlPersist)",
                    [staying() for _ in range(n)]),
                   (f"{count} forked tasks, each one fresh ssh (the least a task per host "
                    "costs)", timed(forked_cold, n))]
        entries += list(self.peer("fan_out_cold", sshds, n).items())
        self.record(f"uname -r on {count} cold hosts", entries, 1,
                    note="kex curve25519 in the test ssh config (see README)")

    def send_file(self):
        """Rates of several sends each (autoserv and the floor interleaved,
        after one warm-up each); the median is shown."""
        sshd = self.hosts(1)[0]
        h = sshd.host()
        size = (64 if self.quick else 512) << 20
        n = 3 if self.quick else 7
        src = os.path.join(self.tmp, "big")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        remote = h.get_tmp_dir()
        path = self.master(sshd)

        def rate(fn):
            t0 = time.perf_counter()
            fn()
            return size / (time.perf_counter() - t0) / 1e6

        def ours():
            h.send_file(src, remote + "/big")

        def raw():
            with open(src, "rb") as f:
                subprocess.run(self.raw_ssh(sshd, path) + [f"cat > {remote}/raw"], stdin=f,
                               check=True)
        ours()
        raw()
        samples = ([], [])
        for _ in range(n):
            samples[0].append(rate(ours))
            samples[1].append(rate(raw))
        self.end_master(sshd, path)
        h.run(f"rm -f {remote}/big {remote}/raw")
        entries = [("autoserv send_file", samples[0]), ("ssh host 'cat > f'", samples[1])]
        entries += list(self.peer("send_file", [sshd], n, src=src, remote=remote,
                                  size=size).items())
        h.close()        # its temp dir (the peers' too) goes now, while its sshd runs
        os.unlink(src)
        self.record(f"send_file {size >> 20} MiB", entries, 1, unit="MB/s",
                    note="higher is better")

    def tree(self):
        sshd = self.hosts(1)[0]
        h = sshd.host()
        count = 1000 if self.quick else 5000
        src = os.path.join(self.tmp, "tree")
        for i in range(count):
            d = os.path.join(src, f"d{i // 100}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(os.urandom(4096))
        remote = h.get_tmp_dir()
        n = 3 if self.quick else 8
        k = iter(range(1000))
        path = self.master(sshd)
        j = iter(range(1000))

        def ours():
            h.send_file(src + "/", f"{remote}/ours{next(k)}/")

        def floor():
            dest = f"{remote}/raw{next(j)}"
            tar = subprocess.Popen(["tar", "-C", src, "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(self.raw_ssh(sshd, path) + [f"mkdir {dest} && tar -C {dest} -xf -"],
                           stdin=tar.stdout, check=True)
            tar.stdout.close()
            tar.wait()
        ssh_e = " ".join(self.raw_ssh(sshd, path)[:-1])

        def rsync():
            subprocess.run(["rsync", "-a", "-e", ssh_e, src + "/",
                            f"testhost:{remote}/rsync{next(j)}/"], check=True)

        def scp():
            subprocess.run(["scp", "-q", "-r", "-F", sshd.ssh_config, "-o",
                            f"ControlPath={path}", src, f"testhost:{remote}/scp{next(j)}"],
                           check=True)
        # Interleaved after one warm-up each: the disk here is slow and
        # uneven, and whoever goes first pays for the cold source files.
        fns = [ours, floor, rsync, scp]
        samples = [[] for _ in fns]
        for fn in fns:
            fn()
        for _ in range(n):
            for fn, got in zip(fns, samples):
                got += timed(fn, 1)
        entries = [("autoserv send_file", samples[0]),
                   ("tar piped to ssh tar, warm master", samples[1]),
                   ("rsync -a, warm master", samples[2]), ("scp -r, warm master", samples[3])]
        self.end_master(sshd, path)
        h.close()                   # its temp dir, trees and all, goes now
        shutil.rmtree(src)
        self.record(f"send a tree of {count} x 4 KiB files", entries, 1)

    def wait_up(self):
        """From starting sshd to knowing it answers: autoserv's wait_up
        against polling the TCP banner every 50 ms and `ssh true` every 0.2 s."""
        sshd = self.hosts(1)[0]
        n = 3 if self.quick else 10
        h = sshd.host()

        def restart():
            # Hosts closed first: a host closed once its sshd is gone cannot
            # remove its remote temp dirs (a run left one in /tmp so).
            autoserv._close_all_hosts()
            sshd.proc.terminate()
            sshd.proc.wait(10)
            sshd.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", sshd.conf],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            return time.perf_counter()

        def banner():
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", sshd.port), 1) as c:
                        if c.recv(4).startswith(b"SSH-"):
                            return
                except OSError:
                    time.sleep(0.05)

        def ssh_true():
            while subprocess.run(self.raw_ssh(sshd) + ["true"], stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL).returncode != 0:
                time.sleep(0.2)
        ours, floor, poll = [], [], []
        for _ in range(n):
            t0 = restart()
            if not h.wait_up(timeout=30):
                raise SystemExit("wait_up failed")
            ours.append(time.perf_counter() - t0)
            t0 = restart()
            banner()
            floor.append(time.perf_counter() - t0)
            t0 = restart()
            ssh_true()
            poll.append(time.perf_counter() - t0)
        self.record("wait_up from sshd's start", [("autoserv wait_up", ours),
                                                  ("TCP banner every 50 ms", floor),
                                                  ("ssh true every 0.2 s", poll)], 1,
                    note="autoserv also proves a login works")

    def startup(self):
        n = 5 if self.quick else 20
        # The cached row's bytecode: PYTHONDONTWRITEBYTECODE (set in some
        # shells) would make it recompile every time, as the script row does.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

        def cached_run():
            subprocess.run([sys.executable, "-m", "autoserv", "--version"], cwd=HERE, env=env,
                           capture_output=True, check=True)
        cached_run()
        cached = timed(cached_run, n)
        script = timed(lambda: subprocess.run([sys.executable, os.path.join(HERE, "autoserv.py"),
                                               "--version"], capture_output=True, check=True), n)
        floor = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), n)
        entries = [("python3 -m autoserv --version", cached),
                   ("python3 autoserv.py --version (recompiles)", script),
                   ("python3 -c pass", floor)]
        entries += list(self.peer("startup", [], n).items())
        self.record("start-up", entries, 2)

    def flood(self):
        """A command writing size_mb MB, half on each stream at the same time,
        each framed by a head and a tail marker: peak RSS of the process that
        runs it, and checks that each result keeps its stream's head and
        tail and that the spill file (the whole stream, past max_output)
        holds every byte.  The spill files are removed here: outside a job
        autoserv leaves them (in TMPDIR) for the caller, named in
        CmdResult.output_files."""
        sshd = self.hosts(1)[0]
        size_mb = 256 if self.quick else 2048
        half = size_mb // 2
        command = (f"{{ echo OUT-HEAD; head -c {half}M /dev/zero; echo; echo OUT-TAIL; }} & "
                   f"{{ echo ERR-HEAD; head -c {half}M /dev/zero; echo; echo ERR-TAIL; }} >&2; "
                   "wait")
        for persistent in (False, True):
            code = (f"import json, os, sys; sys.path.insert(0, {HERE!r}); import autoserv\n"
                    f"h = autoserv.SSHHost('testhost', ssh_config={sshd.ssh_config!r}, "
                    f"persistent={persistent})\n"
                    f"r = h.run({command!r}, timeout=600)\n"
                    f"want = {half << 20} + 9 + 10\n"
                    "checks = {}\n"
                    "for name, tag in (('stdout', 'OUT'), ('stderr', 'ERR')):\n"
                    "    text = getattr(r, name)\n"
                    "    checks[name + ' head'] = text.startswith(tag + '-HEAD\\n')\n"
                    "    checks[name + ' tail'] = text.endswith('\\n' + tag + '-TAIL\\n')\n"
                    "    path = r.output_files.get(name)\n"
                    "    checks[name + ' spilled whole'] = bool(path) and "
                    "os.path.getsize(path) == want\n"
                    "    if path:\n"
                    "        with open(path, 'rb') as f:\n"
                    "            first = f.read(9)\n"
                    "            f.seek(-10, 2)\n"
                    "            last = f.read()\n"
                    "        checks[name + ' file head and tail'] = (first == (tag + '-HEAD\\n')"
                    ".encode() and last == ('\\n' + tag + '-TAIL\\n').encode())\n"
                    "        os.unlink(path)\n"
                    "print('CHECKS', json.dumps(checks))\n"
                    "autoserv._close_all_hosts()\n")
            t0 = time.perf_counter()
            try:
                out, rss = fixtures.max_rss_of(code, timeout=900)
            finally:
                self.remove_spill("flood")
            took = time.perf_counter() - t0
            checks = json.loads(out.split("CHECKS ", 1)[1].splitlines()[0])
            failed = [k for k, ok in checks.items() if not ok]
            verdict = ("head and tail kept, whole streams in the spill files"
                       if not failed else "FAILED: " + ", ".join(failed))
            row = (f"a command printing {size_mb} MB, both streams at once"
                   if not persistent else "",
                   "autoserv persistent" if persistent else "autoserv",
                   f"{rss:.0f} MB RSS", "-", f"took {took:.1f} s", verdict)
            self.rows.append(row)
            print("  " + " | ".join(row), flush=True)

    def scale(self):
        for n in self.scale_sizes:
            self.scale_one(n)
        self.stop_hosts_beyond(16)

    def scale_config(self, sshds):
        """One ssh config naming the hosts h0..h{n-1}, as a lab's would."""
        path = os.path.join(self.tmp, f"scale-{len(sshds)}.ssh_config")
        with open(path, "w") as f:
            for i, s in enumerate(sshds):
                f.write(f"Host h{i}\n    HostName 127.0.0.1\n    Port {s.port}\n"
                        f"    User root\n    IdentityFile {s.client_key}\n"
                        f"    IdentitiesOnly yes\n    UserKnownHostsFile {s.known_hosts}\n"
                        "    StrictHostKeyChecking accept-new\n"
                        "    KexAlgorithms curve25519-sha256\n\n")
        return path

    def scale_one(self, n):
        """uname -r on n hosts (one sshd each) with parallel_simple: a cold
        round and a second round, hosts made in the parent and hosts made in
        the task (create_host(m), as control files do), against n fresh ssh
        at once.  Each timed in a child that imports autoserv alone; the
        machine's memory use is the deepest MemAvailable drop during the
        round, from just before the shape's first round (so a second round
        counts what the first left running)."""
        check_scale_limits(n)
        print(f"  starting {n} sshd ...", flush=True)
        t0 = time.monotonic()
        sshds = self.hosts(n)
        print(f"  {n} sshd up in {time.monotonic() - t0:.1f} s", flush=True)
        config = self.scale_config(sshds)
        reps = 1 if n > 64 else (3 if n > 16 else 5)
        if self.quick:
            reps = min(reps, 2)
        shapes = ["floor", "parent", "inside"]
        walls = {}                    # (shape, round) -> [s]
        mems = {}                     # (shape, round) -> [kB]
        timeout = 120 + 3 * n
        with MemSampler() as mem:
            for rep in range(reps):
                for shape in shapes:
                    cfg = dict(n=n, shape=shape, config=config)
                    out = run_child([sys.executable, "-c", SCALE_TIMER, HERE, json.dumps(cfg)],
                                    timeout, f"the {n}-host {shape} fan-out")
                    rounds = json.loads(out)
                    base = mem.before(rounds[0][1])
                    for label, t_start, t_end in rounds:
                        walls.setdefault((shape, label), []).append(t_end - t_start)
                        mems.setdefault((shape, label), []).append(
                            base - mem.lowest(t_start, t_end))
                    left = own_ssh_pids(config)
                    if left:
                        print(f"  left behind by the {shape} job: {len(left)} ssh "
                              f"processes (PIDs {' '.join(map(str, left[:10]))}); ending them",
                              flush=True)
                        for pid in left:
                            try:
                                os.kill(pid, signal.SIGTERM)
                            except OSError:
                                pass
                    self.remove_spill(f"scale {n}")
        names = {("floor", "cold"): f"{n} fresh ssh at once",
                 ("parent", "cold"): "hosts made in the parent, cold round",
                 ("parent", "second"): "hosts made in the parent, second round",
                 ("inside", "cold"): "create_host(m) in the task, cold round",
                 ("inside", "second"): "create_host(m) in the task, second round"}
        entries = []
        for key, who in names.items():
            wall = statistics.median(walls[key])
            mb = statistics.median(mems[key]) / 1024
            entries.append((who, walls[key],
                            {"note": f"{wall / n * 1000:.1f} ms/host; memory {mb:.0f} MB, "
                                     f"{mb / n:.2f} MB/host"}))
        self.record(f"scale: uname -r on {n} hosts, parallel_simple", entries, 0)

    def table(self):
        head = ("work", "who", "median", "p95", "vs floor", "note")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(c.strip() for c in r) + " |")
        return "\n".join(lines)


JOB_TIMER = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import autoserv
cfg = json.loads(sys.argv[2])


def make():
    return [autoserv.SSHHost("testhost", ssh_config=c, alive_interval=1, alive_count=3,
                             connect_timeout=5, persistent=cfg["persistent"])
            for c in cfg["configs"]]


def fan_out(hosts):
    autoserv.parallel_simple(lambda h: h.run("uname -r"), hosts, log=False)


times = []
if cfg["kind"] == "noop":        # parallel_simple's own cost: a fork per task
    import resource

    def used(who):
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime
    for _ in range(cfg["n"] + 1):
        if len(times) == 1:     # CPU from after the first round
            cpu0 = [used(resource.RUSAGE_SELF), used(resource.RUSAGE_CHILDREN)]
        t0 = time.perf_counter()
        autoserv.parallel_simple(lambda x: None, range(len(cfg["configs"])), log=False)
        times.append(time.perf_counter() - t0)
    cpu = [(used(who) - c0) * 1000 / cfg["n"]
           for who, c0 in zip((resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN), cpu0)]
    print(json.dumps({"times": times[1:], "cpu": cpu}))
    sys.exit(0)
if cfg["kind"] == "warm":
    hosts = make()
    for h in hosts:
        h.run("true")
        h.run("true")
    end = time.monotonic() + 30         # with the agent on: until each one's is up
    while cfg["persistent"] == "auto" and time.monotonic() < end and not all(
            isinstance(h._agent, dict) and "local" in h._agent for h in hosts):
        for h in hosts:
            h.run("true")
    fan_out(hosts)
for _ in range(cfg["n"]):
    t0 = time.perf_counter()
    if cfg["kind"] == "warm":
        fan_out(hosts)
    else:
        fan_out(make())
        autoserv._close_all_hosts()
        del autoserv._HOSTS[:]
    times.append(time.perf_counter() - t0)
autoserv._close_all_hosts()
print(json.dumps(times))
'''


SCALE_TIMER = r'''
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
cfg = json.loads(sys.argv[2])
names = ["h%d" % i for i in range(cfg["n"])]
config = cfg["config"]
rounds = []


def mark(label, fn):
    t0 = time.monotonic()
    fn()
    rounds.append([label, t0, time.monotonic()])


if cfg["shape"] == "floor":
    def fresh():
        procs = [subprocess.Popen(["ssh", "-F", config, "-o", "BatchMode=yes", "-o",
                                   "LogLevel=ERROR", name, "uname -r"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                 for name in names]
        failed = sum(1 for p in procs if p.wait() != 0)
        if failed:
            sys.exit("%d of %d fresh ssh failed" % (failed, len(procs)))
    mark("cold", fresh)
else:
    import autoserv
    if cfg["shape"] == "parent":
        hosts = [autoserv.hosts.create_host(name, ssh_config=config) for name in names]

        def one_round():
            autoserv.parallel_simple(lambda h: h.run("uname -r"), hosts, log=False)
    else:
        def task(name):
            autoserv.hosts.create_host(name, ssh_config=config).run("uname -r")

        def one_round():
            autoserv.parallel_simple(task, names, log=False)
    mark("cold", one_round)
    mark("second", one_round)
    autoserv._close_all_hosts()
print(json.dumps(rounds))
'''


PEER_SCRIPT = r'''
"""Runs inside the bench's throwaway virtualenv: times Fabric and
parallel-ssh doing a row's work; prints {"label": [seconds, ...]} as JSON."""
import json, os, socket, sys, time

cfg = json.loads(sys.argv[1])
row, n = cfg["row"], cfg["n"]
hosts = cfg["hosts"]                     # [{"port":, "key":}, ...] all 127.0.0.1, user root
out = {}


def timed(fn, count):
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def nodelay(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def fabric_conn(h):
    import fabric
    return fabric.Connection("127.0.0.1", user="root", port=h["port"],
                             connect_kwargs={"key_filename": h["key"], "look_for_keys": False,
                                             "allow_agent": False})


def fabric_nodelay(c):
    c.open()
    nodelay(c.client.get_transport().sock)


def pssh_single(h):
    from pssh.clients import SSHClient
    return SSHClient("127.0.0.1", user="root", port=h["port"], pkey=h["key"],
                     allow_agent=False, identity_auth=False)


def pssh_run(c, cmd):
    out = c.run_command(cmd)
    for _ in out.stdout:
        pass
    c.wait_finished(out)


def pssh_group(hs):
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig
    return ParallelSSHClient(["127.0.0.1"] * len(hs), user="root",
                             host_config=[HostConfig(port=h["port"], private_key=h["key"])
                                          for h in hs],
                             allow_agent=False, identity_auth=False, pool_size=len(hs))


def pssh_group_run(g, cmd):
    output = g.run_command(cmd)
    g.join(output)
    for o in output:
        for _ in o.stdout:
            pass


def pssh_group_nodelay(g):
    pssh_group_run(g, "true")
    for c in g._host_clients.values():
        nodelay(c.sock)


if row == "run_true":
    c = fabric_conn(hosts[0])
    c.run("true", hide=True)
    out["Fabric"] = timed(lambda: c.run("true", hide=True), n)
    fabric_nodelay(c)
    out["Fabric+NODELAY"] = timed(lambda: c.run("true", hide=True), n)
    c.close()
    p = pssh_single(hosts[0])
    pssh_run(p, "true")
    out["parallel-ssh"] = timed(lambda: pssh_run(p, "true"), n)
    nodelay(p.sock)
    out["parallel-ssh+NODELAY"] = timed(lambda: pssh_run(p, "true"), n)
elif row == "fan_out":
    import fabric
    conns = [fabric_conn(h) for h in hosts]
    group = fabric.ThreadingGroup.from_connections(conns)
    group.run("uname -r", hide=True)
    out["Fabric ThreadingGroup"] = timed(lambda: group.run("uname -r", hide=True), n)
    for c in conns:
        fabric_nodelay(c)
    out["Fabric ThreadingGroup+NODELAY"] = timed(lambda: group.run("uname -r", hide=True), n)
    group.close()
    g = pssh_group(hosts)
    pssh_group_run(g, "uname -r")
    out["parallel-ssh"] = timed(lambda: pssh_group_run(g, "uname -r"), n)
    pssh_group_nodelay(g)
    out["parallel-ssh+NODELAY"] = timed(lambda: pssh_group_run(g, "uname -r"), n)
elif row == "fan_out_cold":
    import fabric

    def fab():
        group = fabric.ThreadingGroup.from_connections([fabric_conn(h) for h in hosts])
        group.run("uname -r", hide=True)
        group.close()

    def ps():
        g = pssh_group(hosts)
        pssh_group_run(g, "uname -r")
        del g
    out["Fabric ThreadingGroup"] = timed(fab, n)
    out["parallel-ssh"] = timed(ps, n)
elif row == "send_file":
    src, remote, size = cfg["src"], cfg["remote"], cfg["size"]

    def rates(fn, count):
        fn()
        return [size / t / 1e6 for t in timed(fn, count)]
    c = fabric_conn(hosts[0])
    c.run("true", hide=True)
    out["Fabric put"] = rates(lambda: c.put(src, remote + "/fabric"), n)
    fabric_nodelay(c)
    out["Fabric put+NODELAY"] = rates(lambda: c.put(src, remote + "/fabric"), n)
    c.run(f"rm -f {remote}/fabric", hide=True)
    c.close()
    p = pssh_single(hosts[0])
    pssh_run(p, "true")
    out["parallel-ssh scp_send"] = rates(lambda: p.scp_send(src, remote + "/pssh"), n)
    nodelay(p.sock)
    out["parallel-ssh scp_send+NODELAY"] = rates(lambda: p.scp_send(src, remote + "/pssh"), n)
    pssh_run(p, f"rm -f {remote}/pssh")
elif row == "startup":
    py = sys.executable
    import subprocess
    out["the virtualenv's python3 -c pass"] = timed(
        lambda: subprocess.run([py, "-c", "pass"], check=True), n)
    for label, mod in (("import fabric", "fabric"), ("import ansible", "ansible"),
                       ("import pssh", "pssh.clients")):
        out[label] = timed(lambda: subprocess.run([py, "-c", "import " + mod], check=True), n)
print(json.dumps(out))
'''


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files, "
                   "the scale row at 16 hosts only")
    p.add_argument("--peers", action="store_true",
                   help="also Fabric, parallel-ssh, Ansible (pip into a throwaway virtualenv)")
    p.add_argument("--venv", metavar="DIR", help="--peers with the virtualenv in DIR (made "
                   "there if missing, and kept): saves the install between runs")
    p.add_argument("--only", action="append", help="run only these rows (method names)")
    p.add_argument("--scale", metavar="N1,N2,...", help="the scale row's host counts "
                   "(default 16,64,256; 16 with --quick)")
    opts = p.parse_args()
    sizes = None
    if opts.scale:
        try:
            sizes = [int(x) for x in opts.scale.split(",") if x.strip()]
        except ValueError:
            p.error("--scale takes counts separated by commas, e.g. 16,64,256")
        if not sizes or min(sizes) < 1:
            p.error("--scale takes counts of 1 or more")
    if os.geteuid() != 0:
        sys.exit("bench_autoserv.py: needs root (it starts its own sshd hosts)")
    rows = ["run_true", "fan_out", "send_file", "tree", "wait_up", "startup", "scale", "flood"]
    chosen = [r for r in rows if not opts.only or r in opts.only]
    if "scale" in chosen:               # before anything starts: one line, no hang
        check_scale_limits(max(sizes or ([16] if opts.quick else [16, 64, 256])))

    def stop(signum, frame):            # SIGTERM ends the run as Ctrl-C does
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    # The job processes the rows start import autoserv as an installed module
    # is imported: from its .pyc (Python writes it on first import, but not
    # under PYTHONDONTWRITEBYTECODE, which some machines set).  From source,
    # a process keeps the compiler's memory, and every fork pays for it.
    import importlib.util
    import py_compile
    py_compile.compile(autoserv.__file__, doraise=True,
                       cfile=importlib.util.cache_from_source(autoserv.__file__))
    b = Bench(opts.quick, opts.peers, opts.venv and os.path.abspath(opts.venv), sizes)
    try:
        b.setup_peers()
        for name in chosen:
            getattr(b, name)()
            b.remove_spill(name)
    except KeyboardInterrupt:
        b.close()
        sys.exit("bench_autoserv.py: interrupted; its sshd, ssh and temp files are gone")
    finally:
        b.close()
    print()
    print(f"autoserv {autoserv.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, "
          f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
    if b.versions:
        print("peers: " + ", ".join(f"{k} {v}" for k, v in b.versions.items()))
    print(b.table())


if __name__ == "__main__":
    main()
