#!/usr/bin/env python3
"""autoserv's speed, against raw OpenSSH and its peers in the same run.

    python3 bench_autoserv.py            # autoserv (per-command and persistent) and raw ssh
    python3 bench_autoserv.py --peers    # also Fabric, parallel-ssh and Ansible
    python3 bench_autoserv.py --quick    # fewer repetitions and smaller files

It starts its own sshd hosts on 127.0.0.1 (the test suite's fixture: own keys,
own config, clean remote HOME), measures each row's work with autoserv, with
the floor (plain OpenSSH or a TCP poll doing the same work) and, with --peers,
with Fabric, parallel-ssh and ansible-core installed into a throwaway
virtualenv in a temp dir (removed at the end; never a dependency of
autoserv), each out of the box and with TCP_NODELAY set on its socket.  It
prints medians, p95s and each contender's ratio to the floor.  Needs root
(sshd) and the tools the tests need.
"""

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import autoserv  # noqa: E402
import test_autoserv as fixtures  # noqa: E402

PEER_PACKAGES = ["fabric", "parallel-ssh", "ansible-core"]


def timed(fn, repeat):
    """Seconds of each of repeat calls of fn()."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summary(times):
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95


class Bench:
    def __init__(self, quick, peers, venv=None):
        self.quick = quick
        self.rows = []             # (work, who, median, p95, unit, ratio, note)
        self.tmp = tempfile.mkdtemp(prefix="as-bench-")
        self.sshds = []
        self.venv = self.make_venv(venv) if peers or venv else None

    def close(self):
        autoserv._close_all_hosts()
        self.end_ansible_masters()
        for s in self.sshds:
            s.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

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
        """entries: [(who, samples)] (unit ms: seconds each; MB/s: one rate);
        floor: the index of the floor's entry."""
        base = entries[floor][1]
        for i, (who, value) in enumerate(entries):
            if unit == "MB/s":
                med, p95 = value[0], None
                ratio = med / base[0]
                shown = (f"{med:.0f} MB/s", "")
            else:
                med, p95 = summary(value)
                ratio = med / summary(base)[0]
                shown = (f"{med * 1000:.1f} ms", f"{p95 * 1000:.1f}")
            row = (work if i == 0 else "", who + (" (floor)" if i == floor else ""),
                   shown[0], shown[1], f"{ratio:.2f}x", note if i == 0 else "")
            self.rows.append(row)
            print("  " + " | ".join(row), flush=True)

    def in_job(self, kind, sshds, n, persistent=False):
        """Samples of parallel_simple(uname -r) over sshds, timed in a child
        that imports autoserv alone, as a job's process does (this process
        also holds the test suite's fixtures, which doubles a fork's cost)."""
        cfg = dict(kind=kind, n=n, persistent=persistent, configs=[s.ssh_config for s in sshds])
        out = subprocess.run([sys.executable, "-c", JOB_TIMER, HERE, json.dumps(cfg)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"bench job failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def hosts(self, count):
        while len(self.sshds) < count:
            self.sshds.append(fixtures.Sshd())
        return self.sshds[:count]

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
        h = sshd.host()
        h.run("true")
        ours = timed(lambda: h.run("true"), n)
        hp = sshd.host(persistent=True)
        hp.run("true")
        persistent = timed(lambda: hp.run("true"), n)
        path = self.master(sshd)
        floor = timed(lambda: subprocess.run(self.raw_ssh(sshd, path) + ["true"], check=True), n)
        self.end_master(sshd, path)
        entries = [("autoserv", ours), ("autoserv persistent", persistent), ("ssh, warm master", floor)]
        entries += list(self.peer("run_true", [sshd], n).items())
        if self.venv:
            entries.append(("ansible ad-hoc", self.ansible([sshd], "true", 3 if self.quick else 10)))
        self.record('run("true"), warm host', entries, 2)

    def fan_out(self, count=16):
        sshds = self.hosts(count)
        n = 5 if self.quick else 20

        paths = [self.master(s) for s in sshds]

        def floor():
            procs = [subprocess.Popen(self.raw_ssh(s, p) + ["uname -r"],
                                      stdout=subprocess.DEVNULL) for s, p in zip(sshds, paths)]
            for p in procs:
                p.wait()
        entries = [("autoserv parallel_simple", self.in_job("warm", sshds, n)),
                   ("autoserv parallel_simple, persistent",
                    self.in_job("warm", sshds, n, persistent=True)),
                   ("16 ssh at once, warm masters", timed(floor, n))]
        for s, p in zip(sshds, paths):
            self.end_master(s, p)
        entries += list(self.peer("fan_out", sshds, n).items())
        if self.venv:
            entries.append(("ansible ad-hoc -f 16",
                            self.ansible(sshds, "uname -r", 3 if self.quick else 5)))
        self.record(f"uname -r on {count} warm hosts", entries, 2)

        def floor_cold():
            procs = [subprocess.Popen(self.raw_ssh(s) + ["uname -r"], stdout=subprocess.DEVNULL)
                     for s in sshds]
            for p in procs:
                p.wait()
        n = 3 if self.quick else 8
        entries = [("autoserv parallel_simple", self.in_job("cold", sshds, n)),
                   ("16 fresh ssh at once", timed(floor_cold, n))]
        entries += list(self.peer("fan_out_cold", sshds, n).items())
        self.record(f"uname -r on {count} cold hosts", entries, 1,
                    note="kex curve25519 in the test ssh config (see README)")

    def send_file(self):
        sshd = self.hosts(1)[0]
        h = sshd.host()
        size = (64 if self.quick else 512) << 20
        src = os.path.join(self.tmp, "big")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        remote = h.get_tmp_dir()
        h.send_file(src, remote + "/warm")

        def rate(fn):
            t0 = time.perf_counter()
            fn()
            return [size / (time.perf_counter() - t0) / 1e6]
        ours = rate(lambda: h.send_file(src, remote + "/big"))
        path = self.master(sshd)

        def raw():
            with open(src, "rb") as f:
                subprocess.run(self.raw_ssh(sshd, path) + [f"cat > {remote}/raw"], stdin=f,
                               check=True)
        floor = rate(raw)
        self.end_master(sshd, path)
        h.run(f"rm -f {remote}/big {remote}/raw {remote}/warm")
        entries = [("autoserv send_file", ours), ("ssh host 'cat > f'", floor)]
        entries += list(self.peer("send_file", [sshd], 1, src=src, remote=remote,
                                  size=size).items())
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
        h.run(f"rm -rf {remote}/*")
        shutil.rmtree(src)
        self.record(f"send a tree of {count} x 4 KiB files", entries, 1)

    def wait_up(self):
        """From starting sshd to knowing it answers: autoserv's wait_up
        against polling the TCP banner every 50 ms and `ssh true` every 0.2 s."""
        sshd = self.hosts(1)[0]
        n = 3 if self.quick else 10
        h = sshd.host()

        def restart():
            sshd.proc.terminate()
            sshd.proc.wait(10)
            autoserv._close_all_hosts()
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
        cached = timed(lambda: subprocess.run([sys.executable, "-m", "autoserv", "--version"],
                                              cwd=HERE, capture_output=True, check=True), n)
        script = timed(lambda: subprocess.run([sys.executable, os.path.join(HERE, "autoserv.py"),
                                               "--version"], capture_output=True, check=True), n)
        floor = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), n)
        entries = [("python3 -m autoserv --version", cached),
                   ("python3 autoserv.py --version (recompiles)", script),
                   ("python3 -c pass", floor)]
        entries += list(self.peer("startup", [], n).items())
        self.record("start-up", entries, 2)

    def flood(self):
        sshd = self.hosts(1)[0]
        size_mb = 256 if self.quick else 2048
        for persistent in (False, True):
            code = (f"import sys; sys.path.insert(0, {HERE!r}); import autoserv\n"
                    f"h = autoserv.SSHHost('testhost', ssh_config={sshd.ssh_config!r}, "
                    f"persistent={persistent})\n"
                    f"r = h.run('head -c {size_mb // 2}M /dev/zero; head -c {size_mb // 2}M "
                    f"/dev/zero >&2', timeout=600)\n"
                    "print(len(r.stdout), len(r.stderr))\n"
                    "autoserv._close_all_hosts()\n")
            t0 = time.perf_counter()
            _, rss = fixtures.max_rss_of(code, timeout=900)
            took = time.perf_counter() - t0
            row = (f"a command printing {size_mb} MB (stdout+stderr)" if not persistent else "",
                   "autoserv persistent" if persistent else "autoserv",
                   f"{rss:.0f} MB RSS", "", f"took {took:.1f} s",
                   "no deadlock; head and tail kept" if not persistent else "")
            self.rows.append(row)
            print("  " + " | ".join(row), flush=True)

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
if cfg["kind"] == "warm":
    hosts = make()
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
    c = fabric_conn(hosts[0])
    c.run("true", hide=True)
    t = timed(lambda: c.put(src, remote + "/fabric"), 1)
    out["Fabric put"] = [size / t[0] / 1e6]
    fabric_nodelay(c)
    t = timed(lambda: c.put(src, remote + "/fabric2"), 1)
    out["Fabric put+NODELAY"] = [size / t[0] / 1e6]
    c.run(f"rm -f {remote}/fabric {remote}/fabric2", hide=True)
    c.close()
    p = pssh_single(hosts[0])
    pssh_run(p, "true")
    t = timed(lambda: p.scp_send(src, remote + "/pssh"), 1)
    out["parallel-ssh scp_send"] = [size / t[0] / 1e6]
    nodelay(p.sock)
    t = timed(lambda: p.scp_send(src, remote + "/pssh2"), 1)
    out["parallel-ssh scp_send+NODELAY"] = [size / t[0] / 1e6]
    pssh_run(p, f"rm -f {remote}/pssh {remote}/pssh2")
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
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files")
    p.add_argument("--peers", action="store_true",
                   help="also Fabric, parallel-ssh, Ansible (pip into a throwaway virtualenv)")
    p.add_argument("--venv", metavar="DIR", help="--peers with the virtualenv in DIR (made "
                   "there if missing, and kept): saves the install between runs")
    p.add_argument("--only", action="append", help="run only these rows (method names)")
    opts = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_autoserv.py: needs root (it starts its own sshd hosts)")
    b = Bench(opts.quick, opts.peers, opts.venv and os.path.abspath(opts.venv))
    rows = ["run_true", "fan_out", "send_file", "tree", "wait_up", "startup", "flood"]
    try:
        for name in rows:
            if opts.only and name not in opts.only:
                continue
            getattr(b, name)()
    finally:
        b.close()
    print()
    print(f"autoserv {autoserv.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, "
          f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
    print(b.table())


if __name__ == "__main__":
    main()
