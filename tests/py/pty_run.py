#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal (as if a person ran it in a terminal), lets it
run for --seconds, sends it SIGINT (Ctrl-C), and prints one JSON object: its exit
code, whether it exited within --grace seconds of the interrupt, and everything it
wrote (decoded as UTF-8 with replacement).

Usage: pty_run.py --seconds 3 [--grace 5] -- COMMAND [ARG...]
"""

import argparse
import json
import os
import pty
import select
import signal
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, required=True, help="time to let it run")
    parser.add_argument("--grace", type=float, default=5.0, help="time to exit after SIGINT")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command is needed after --")

    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)
    output = bytearray()

    def drain(until):
        while time.monotonic() < until:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                output.extend(chunk)

    drain(time.monotonic() + args.seconds)
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + args.grace
    status = None
    while time.monotonic() < deadline:
        drain(time.monotonic() + 0.05)
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
            break
    exited = status is not None
    if not exited:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    json.dump(
        {
            "exited_after_interrupt": exited,
            "exit_code": os.waitstatus_to_exitcode(status),
            "output": output.decode("utf-8", "replace"),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
