#!/usr/bin/env python3
"""Continuous HTTP traffic for the compose demo's fault tests (standard library only).

  traffic.py --target NAME=URL[,CAFILE] [--target ...] [--interval 0.02]

One sequential client per target (keep-alive HTTP/1.1, or TLS when the URL is https, trusting CAFILE),
each request with a 5 s timeout. https URLs are sent to 127.0.0.1 with the URL's host as
SNI and Host, so *.localhost names need no resolver. Runs until SIGTERM or SIGINT, then
prints one JSON object: per target the count of ok and failed requests, the longest run
of consecutive failed requests (how many, and the seconds from the start of its first
request to the end of its last), the apps that answered (the demo app's "app" field) in
order of first answer, and the first errors. A request fails on a connection error, a
timeout or a status other than 200.
"""

import argparse
import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit

stop = threading.Event()


class LoopbackHTTPS(http.client.HTTPSConnection):
    """TLS over TCP to 127.0.0.1:port, with SNI and the certificate check for `host`."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Target:
    def __init__(self, name, url, context):
        self.name = name
        self.url = urlsplit(url)
        self.context = context
        self.ok = 0
        self.failed = 0
        self.apps = {}
        self.errors = []
        self.conn = None
        # The run of failures in progress: [count, start of its first request].
        self.failing = None
        self.longest = (0, 0.0)

    def connect(self):
        host = self.url.hostname
        port = self.url.port or (443 if self.url.scheme == "https" else 80)
        if self.url.scheme == "https":
            return LoopbackHTTPS(host, port, timeout=5, context=self.context)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def fail(self, why, started):
        self.failed += 1
        if self.failing is None:
            self.failing = [0, started]
        self.failing[0] += 1
        if self.failing[0] > self.longest[0]:
            self.longest = (self.failing[0], time.monotonic() - self.failing[1])
        if len(self.errors) < 10:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {why}")
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def one(self):
        path = self.url.path or "/"
        started = time.monotonic()
        try:
            if self.conn is None:
                self.conn = self.connect()
            self.conn.request("GET", path, headers={"Host": self.url.hostname})
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as err:
            self.fail(f"{type(err).__name__}: {err}", started)
            return
        if resp.status != 200:
            self.fail(f"status {resp.status} {resp.getheader('weft-error-code', '')} {body[:200]!r}", started)
            return
        try:
            app = json.loads(body).get("app", "?")
        except ValueError:
            app = "?"
        self.ok += 1
        self.failing = None
        self.apps[app] = self.apps.get(app, 0) + 1

    def run(self, interval):
        while not stop.is_set():
            self.one()
            stop.wait(interval)

    def summary(self):
        return {
            "ok": self.ok,
            "failed": self.failed,
            "longest_failed_run": {"requests": self.longest[0], "seconds": round(self.longest[1], 3)},
            "apps": self.apps,
            "errors": self.errors,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", required=True, help="NAME=URL[,CAFILE]")
    parser.add_argument("--interval", type=float, default=0.02, help="pause between requests (s)")
    args = parser.parse_args()
    targets = []
    for spec in args.target:
        name, sep, rest = spec.partition("=")
        url, _, cafile = rest.partition(",")
        if not sep or not url.startswith(("http://", "https://")):
            parser.error(f"--target {spec!r}: expected NAME=http(s)://HOST:PORT/PATH[,CAFILE]")
        # One context per target: two gateways' development certificates can share a
        # subject name, and one trust store holding both picks the wrong one.
        context = ssl.create_default_context(cafile=cafile or None)
        targets.append(Target(name, url, context))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=t.run, args=(args.interval,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    while not stop.is_set():
        stop.wait(0.2)
    for t in threads:
        t.join(timeout=6)
    print(json.dumps({t.name: t.summary() for t in targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
