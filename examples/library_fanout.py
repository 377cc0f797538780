#!/usr/bin/env python3
"""Runs one command on several hosts at once from plain Python (no control
file, no autoserv command line) and prints one line per host.

    python3 examples/library_fanout.py [--ssh-config FILE] [--results DIR]
                                       [--command CMD] [-v] HOST [HOST...]

autoserv.py is found next to this script's directory (a vendored copy: the
file copied into your tree, or a git submodule); put yours on sys.path the
same way.  Exit status: 0 when every host answered, 1 when one did not.
"""

import argparse
import logging
import os
import signal
import sys
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import autoserv  # noqa: E402


def fan_out(names: List[str], command: str) -> List[Tuple[str, str, Optional[str]]]:
    """(host, output, error) for every host, the error told by its class."""

    def on(name: str) -> str:
        # Runs in its own forked process: one host, one command; the with
        # block ends the host's ssh master however the function leaves.
        with autoserv.SSHHost(name) as host:
            return host.run(command, timeout=60).stdout.strip()

    rows = []
    results = autoserv.parallel_simple(on, names, return_results=True, timeout=300)
    for name, result in zip(names, results):
        if isinstance(result, autoserv.AutoservSSHError):        # the transport failed
            rows.append((name, "", f"unreachable: {result}"))
        elif isinstance(result, autoserv.AutoservRunError):      # the command failed
            rows.append((name, "", f"failed: {result.result.status_text()}"))
        elif isinstance(result, BaseException):
            rows.append((name, "", f"{type(result).__name__}: {result}"))
        else:
            rows.append((name, result, None))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hosts", nargs="+", metavar="HOST")
    parser.add_argument("--ssh-config", help="an ssh_config file (Host aliases, keys)")
    parser.add_argument("--results", help="also write a results dir (status.log, "
                                          "summary.json, debug/autoserv.log)")
    parser.add_argument("--command", default="uname -n -r")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="autoserv's debug lines (each command, exit, output) on stderr")
    opts = parser.parse_args(argv)
    # A SIGTERM (a cancelled CI job) becomes an exit, so that autoserv's exit
    # handler ends the ssh masters and temp dirs as it does for an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # autoserv adds no handler of its own: this program decides what is shown.
    logging.basicConfig(level=logging.DEBUG if opts.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    if opts.ssh_config:
        autoserv.set_ssh_defaults(ssh_config=os.path.abspath(opts.ssh_config))
    if opts.results:
        with autoserv.Job(opts.results):
            rows = fan_out(opts.hosts, opts.command)
    else:
        rows = fan_out(opts.hosts, opts.command)
    for name, output, error in rows:
        print(f"{name:20} {error or output}")
    return 1 if any(error for _, _, error in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
