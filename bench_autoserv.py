#!/usr/bin/env python3
"""autoserv's speed, against raw OpenSSH in the same run.

    python3 bench_autoserv.py            # autoserv and raw ssh
    python3 bench_autoserv.py --quick    # fewer repetitions and smaller files

It starts its own sshd hosts on 127.0.0.1 (the test suite's fixture: own keys,
own config, clean remote HOME), measures each row's work with autoserv and with
the floor (plain OpenSSH doing the same work), and prints medians, p95s and the
ratio autoserv/floor.  Needs root (sshd) and the tools the tests need.
Comparison peers (Fabric, parallel-ssh, Ansible) and the persistent-session
mode are not measured here yet (issue 8).
"""

import argparse
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
    def __init__(self, quick):
        self.quick = quick
        self.rows = []
        self.tmp = tempfile.mkdtemp(prefix="as-bench-")
        self.sshds = []

    def close(self):
        autoserv._close_all_hosts()
        for s in self.sshds:
            s.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def row(self, work, ours, floor, unit="s", note=""):
        """ours/floor: lists of samples (seconds) or a single rate (MB/s)."""
        if unit == "MB/s":
            ratio = ours / floor if floor else float("nan")
            self.rows.append((work, f"{ours:8.0f} MB/s", "", f"{floor:8.0f} MB/s", "",
                              f"{ratio:5.2f}x", note))
        else:
            (om, op), (fm, fp) = summary(ours), summary(floor)
            self.rows.append((work, f"{om * 1000:8.1f} ms", f"{op * 1000:8.1f}",
                              f"{fm * 1000:8.1f} ms", f"{fp * 1000:8.1f}",
                              f"{om / fm:5.2f}x", note))
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def hosts(self, count):
        while len(self.sshds) < count:
            self.sshds.append(fixtures.Sshd())
        return self.sshds[:count]

    @staticmethod
    def raw_ssh(sshd, control=None):
        argv = ["ssh", "-F", sshd.ssh_config, "-o", "BatchMode=yes"]
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
        h = sshd.host()
        h.run("true")
        n = 30 if self.quick else 200
        ours = timed(lambda: h.run("true"), n)
        path = self.master(sshd)
        floor = timed(lambda: subprocess.run(self.raw_ssh(sshd, path) + ["true"], check=True), n)
        self.end_master(sshd, path)
        self.row('run("true"), warm host', ours, floor, note="floor: ssh over a warm "
                 "ControlMaster")

    def fan_out(self, count=16):
        sshds = self.hosts(count)
        hs = [s.host() for s in sshds]
        for h in hs:
            h.run("true")
        n = 5 if self.quick else 20

        def ours():
            autoserv.parallel_simple(lambda h: h.run("uname -r"), hs, log=False)
        paths = [self.master(s) for s in sshds]

        def floor():
            procs = [subprocess.Popen(self.raw_ssh(s, p) + ["uname -r"],
                                      stdout=subprocess.DEVNULL) for s, p in zip(sshds, paths)]
            for p in procs:
                p.wait()
        self.row(f"uname -r on {count} warm hosts (parallel_simple)", timed(ours, n),
                 timed(floor, n), note="floor: all ssh at once over warm masters")
        for s, p in zip(sshds, paths):
            self.end_master(s, p)

        def ours_cold():
            autoserv._close_all_hosts()
            fresh = [s.host() for s in sshds]
            autoserv.parallel_simple(lambda h: h.run("uname -r"), fresh, log=False)
            autoserv._close_all_hosts()

        def floor_cold():
            procs = [subprocess.Popen(self.raw_ssh(s) + ["uname -r"], stdout=subprocess.DEVNULL)
                     for s in sshds]
            for p in procs:
                p.wait()
        n = 3 if self.quick else 8
        self.row(f"uname -r on {count} cold hosts", timed(ours_cold, n), timed(floor_cold, n),
                 note="floor: fresh ssh each; kex curve25519 (see README)")

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
        t0 = time.perf_counter()
        h.send_file(src, remote + "/big")
        ours = size / (time.perf_counter() - t0) / 1e6
        path = self.master(sshd)
        t0 = time.perf_counter()
        with open(src, "rb") as f:
            subprocess.run(self.raw_ssh(sshd, path) + [f"cat > {remote}/raw"], stdin=f,
                           check=True)
        floor = size / (time.perf_counter() - t0) / 1e6
        self.end_master(sshd, path)
        h.run(f"rm -f {remote}/big {remote}/raw {remote}/warm")
        os.unlink(src)
        self.row(f"send_file {size >> 20} MiB", ours, floor, unit="MB/s",
                 note="floor: ssh host 'cat > f' (ratio: higher is better)")

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
        n = 2 if self.quick else 5
        k = iter(range(100))
        ours = timed(lambda: h.send_file(src + "/", f"{remote}/ours{next(k)}/"), n)
        path = self.master(sshd)
        j = iter(range(100))

        def floor():
            dest = f"{remote}/raw{next(j)}"
            tar = subprocess.Popen(["tar", "-C", src, "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(self.raw_ssh(sshd, path) + [f"mkdir {dest} && tar -C {dest} -xf -"],
                           stdin=tar.stdout, check=True)
            tar.stdout.close()
            tar.wait()
        floor_t = timed(floor, n)
        self.end_master(sshd, path)
        h.run(f"rm -rf {remote}/*")
        self.row(f"send a tree of {count} x 4 KiB files", ours, floor_t,
                 note="floor: tar piped to ssh tar over a warm master")

    def wait_up(self):
        """From starting sshd to knowing it answers: autoserv's wait_up
        against polling the TCP banner every 50 ms."""
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
        ours, floor = [], []
        for _ in range(n):
            t0 = restart()
            if not h.wait_up(timeout=30):
                raise SystemExit("wait_up failed")
            ours.append(time.perf_counter() - t0)
            t0 = restart()
            banner()
            floor.append(time.perf_counter() - t0)
        self.row("wait_up from sshd's start", ours, floor,
                 note="floor: polling the TCP banner every 50 ms")

    def startup(self):
        n = 5 if self.quick else 20
        cached = timed(lambda: subprocess.run([sys.executable, "-m", "autoserv", "--version"],
                                              cwd=HERE, capture_output=True, check=True), n)
        floor = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), n)
        self.row("python3 -m autoserv --version", cached, floor,
                 note="floor: python3 -c pass")
        script = timed(lambda: subprocess.run([sys.executable, os.path.join(HERE, "autoserv.py"),
                                               "--version"], capture_output=True, check=True), n)
        self.row("python3 autoserv.py --version", script, floor,
                 note="recompiles the file each run")

    def flood(self):
        sshd = self.hosts(1)[0]
        size_mb = 256 if self.quick else 2048
        code = (f"import sys; sys.path.insert(0, {HERE!r}); import autoserv\n"
                f"h = autoserv.SSHHost('testhost', ssh_config={sshd.ssh_config!r})\n"
                f"r = h.run('head -c {size_mb // 2}M /dev/zero; head -c {size_mb // 2}M "
                f"/dev/zero >&2', timeout=600)\n"
                "print(len(r.stdout), len(r.stderr))\n")
        t0 = time.perf_counter()
        _, rss = fixtures.max_rss_of(code, timeout=900)
        took = time.perf_counter() - t0
        self.rows.append((f"a command printing {size_mb} MB (stdout+stderr)",
                          f"{rss:6.0f} MB RSS", "", f"took {took:6.1f} s", "", "",
                          "no deadlock; output kept as head and tail"))
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def table(self):
        head = ("work", "autoserv median", "p95", "floor median", "p95", "ratio", "note")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(c.strip() for c in r) + " |")
        return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, smaller files")
    p.add_argument("--only", action="append", help="run only these rows (method names)")
    opts = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_autoserv.py: needs root (it starts its own sshd hosts)")
    b = Bench(opts.quick)
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
          f"{os.cpu_count()} CPUs, {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")
    print(b.table())


if __name__ == "__main__":
    main()
