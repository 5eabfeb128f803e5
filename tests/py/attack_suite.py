#!/usr/bin/env python3
"""Attacks on the edge gateway, each run while a victim client measures its own latency.

One attack per run, against a gateway on 127.0.0.1 that routes --authority to an
HTTP/1.1 demo app (weft-demo-app, whose /_requests journal is the canary: it says which
requests reached the app). Every attack is bounded in time (a few seconds) and count.

A run goes: the victim's baseline (its own latency with nothing else going on), then
the attack with the victim measuring again on its own connection (opened before the
attack, as an existing client's), then checks of what the attack achieved. The victim
is a separate process: an HTTP/1.1 keep-alive client sending one small GET every
--interval seconds and timing each from its *intended* send time, so a stall also
delays the requests behind it. The attacker is a separate process too, at nice 10, so
that on one small machine it does not take the victim's CPU through the scheduler
(real attackers do not share the victim's cores).

The verdict on the victim: p99 during the attack <= 2 x max(baseline p99, --floor-ms),
with no failed request. The floor keeps scheduler noise (a few ms) from failing a run
whose baseline p99 is well under it. When the attack was bounded but the victim missed,
the whole measurement (fresh baseline, attack again) is repeated, up to three in all,
since other work on a shared machine can take the CPU for a moment; a gateway that lets
the attack hurt the victim misses every time. The verdict on the attack ("refused or bounded"): see
each attack's docstring.

  attack_suite.py --port P --authority HOST --app ADDR
                  [--gateway-pid PID] [--connection-cap N] ATTACK
  attack_suite.py victim|attacker ...   (the two child processes of a run)
  attack_suite.py isolation --port P --authority HOST [--stall-path P] [--download-path P]
      (the figure of bench/gateway.sh: five downloads alone, then while the stall is held)

Prints one JSON object: {"attack", "ok", "bounded", "evidence": {...}, "victim":
{"baseline": {...}, "attack": {...}, "ratio", "limit_ms", "ok"}, "attempts": [ratios]};
exit 1 when not ok, 3 when a package is missing.
"""

import argparse
import errno
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

INSTALL_HINT = "python3 -m pip install -r tests/py/requirements.txt"

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    import hpack
except ImportError as err:  # pragma: no cover - depends on the machine
    print(json.dumps({"ok": False, "error": f"missing Python package ({err}); install with: {INSTALL_HINT}"}))
    sys.exit(3)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

# How long the victim measures, at baseline and under attack (seconds).
VICTIM_SECONDS = 3.0
# The victim starts measuring this long after the attack started (its steady state).
ATTACK_LEAD = 0.7


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings_frame(pairs=()):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def request_block(encoder, authority, path="/", method="GET"):
    return encoder.encode([(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)])


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[index]


def rss_kib(pid):
    """The gateway's resident memory (KiB), or None without a pid."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def connect(host, port, timeout=5.0):
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock, wait=0.0):
    """Whether the server closed (or reset) the connection; reads what is pending."""
    sock.settimeout(wait if wait > 0 else 0.0001)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True


def read_frames(sock, seconds):
    """Reads h2 frames for up to `seconds`; returns ([(type, flags, stream, payload)], closed)."""
    frames = []
    buf = b""
    deadline = time.monotonic() + seconds
    closed = False
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not data:
            closed = True
            break
        buf += data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frames.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + length]))
            buf = buf[9 + length :]
    return frames, closed


def goaway_code(frames):
    for ftype, _, _, payload in frames:
        if ftype == GOAWAY and len(payload) >= 8:
            return int.from_bytes(payload[4:8], "big")
    return None


# ---------------------------------------------------------------- the victim


class H1Client:
    """A keep-alive HTTP/1.1 client on one connection (reconnects after a failure)."""

    def __init__(self, host, port, authority, timeout=5.0):
        self.host, self.port, self.authority, self.timeout = host, port, authority, timeout
        self.sock = None

    def get(self, path):
        """Returns the body; raises on any failure (the connection is then dropped)."""
        try:
            if self.sock is None:
                self.sock = connect(self.host, self.port, self.timeout)
            self.sock.settimeout(self.timeout)
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.authority}\r\n\r\n".encode())
            return self._read()
        except Exception:
            self.close()
            raise

    def _read(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the answer's head")
            buf += data
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ConnectionError(f"no content-length in {lines[0]!r}")
        while len(body) < length:
            data = self.sock.recv(max(65536, length - len(body)))
            if not data:
                raise ConnectionError("closed mid-body")
            body += data
        if status != 200:
            raise ConnectionError(f"status {status}")
        return body

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None


def victim_main(a):
    """Connects and warms up, prints `ready`, waits for a line on stdin, then measures
    for --seconds and prints its JSON. The connection predates the attack, like an
    existing client's (10,000 idle connections may fill the gateway's cap for new ones)."""
    client = H1Client(a.host, a.port, a.authority)
    latencies, errors, first_error = [], 0, None
    # Warm the connection and the path behind it (not timed, but a failure counts).
    for _ in range(10):
        try:
            client.get(a.path)
        except Exception as err:  # noqa: BLE001 - any failure is the victim's failure
            errors += 1
            first_error = first_error or f"warming up: {err!r}"
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    end = start + a.seconds
    intended = start
    # A stalled gateway must not stretch the window: stop at its end (+ one timeout).
    while intended < end and time.monotonic() < end + client.timeout:
        now = time.monotonic()
        if now < intended:
            time.sleep(intended - now)
        try:
            client.get(a.path)
        except Exception as err:  # noqa: BLE001 - any failure is the victim's failure
            errors += 1
            first_error = first_error or repr(err)
        latencies.append((time.monotonic() - intended) * 1000.0)
        intended += a.interval
    client.close()
    print(json.dumps({"latencies_ms": latencies, "errors": errors, "first_error": first_error}), flush=True)


def summary(run):
    lat = run["latencies_ms"]
    return {
        "samples": len(lat),
        "errors": run["errors"],
        "first_error": run.get("first_error"),
        "p50_ms": round(percentile(lat, 0.50) or 0, 2),
        "p99_ms": round(percentile(lat, 0.99) or 0, 2),
        "max_ms": round(max(lat) if lat else 0, 2),
    }


def child(a, role, extra, nice=0):
    """This script as a child process in `role` (same target arguments)."""
    cmd = [sys.executable, os.path.abspath(__file__), role, "--host", a.host, "--port", str(a.port)]
    cmd += ["--authority", a.authority, "--interval", str(a.interval), "--seconds", str(a.seconds)]
    for flag, value in (("--app", a.app), ("--gateway-pid", a.gateway_pid), ("--connection-cap", a.connection_cap)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += ["--stall-path", a.stall_path, "--download-path", a.download_path] + extra
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )


def last_json(proc, what):
    """Sends `go` (or `stop`), then the JSON the child prints last."""
    try:
        out, err = proc.communicate("go\n", timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the {what} printed no JSON: {out!r} {err!r}")


class Victim:
    """The victim process: connected and warmed up when constructed, measuring on
    `measure()`."""

    def __init__(self, a):
        self.proc = child(a, "victim", [])
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the victim did not start: {line!r} {self.proc.stderr.read()!r}")

    def measure(self):
        return summary(last_json(self.proc, "victim"))


# ---------------------------------------------------------------- attacks
#
# Each takes (args, stop: threading.Event) and returns (bounded: bool, evidence: dict).
# It runs until `stop` is set or its own bound is reached.


def attack_rapid_reset(a, stop):
    """HEADERS (END_STREAM) + RST_STREAM(CANCEL) as fast as possible, on a new connection
    whenever the gateway ends one, up to 10,000 streams in all. Bounded: the gateway ends
    those connections (GOAWAY ENHANCE_YOUR_CALM), and at most half the streams opened
    reach the app."""
    before = app_total(a)
    sent, connections, goaways, closed = 0, 0, set(), 0
    while sent < 10000 and not stop.is_set():
        sock = connect(a.host, a.port)
        connections += 1
        sock.sendall(PREFACE + settings_frame())
        enc = hpack.Encoder()
        stream, frames, was_closed = 1, [], False
        while sent < 10000 and not stop.is_set():
            block = request_block(enc, a.authority, "/rapid-reset")
            try:
                sock.sendall(frame(HEADERS, END_STREAM | END_HEADERS, stream, block) + frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8)))
            except OSError:
                was_closed = True
                break
            sent += 1
            stream += 2
            if sent % 100 == 0:
                got, was_closed = read_frames(sock, 0.001)
                frames += got
                if was_closed:
                    break
        got, c = read_frames(sock, 0.2)
        frames += got
        code = goaway_code(frames)
        if code is not None:
            goaways.add(code)
        sock.close()
        if was_closed or c:
            closed += 1
        else:
            connections -= 1  # ended by the 10,000 or the window, not by the gateway
    time.sleep(0.5)
    reached = app_total(a) - before
    bounded = reached <= sent // 2 and closed == connections
    return bounded, {
        "streams_sent": sent,
        "connections": connections,
        "closed_by_server": closed,
        "goaway_codes": sorted(goaways),
        "reached_app": reached,
    }


def attack_continuation(a, stop):
    """HEADERS without END_HEADERS, then CONTINUATION frames of HPACK literals, again on a
    new connection 0.1 s after the gateway ends one (a persistent client, not a flood of
    connections: each costs the gateway about a header list's worth of decoding before
    the cut-off). Bounded: the gateway cuts every connection off long before 64 MiB."""
    enc_chunk = b"".join(b"\x00" + bytes([10]) + b"x-flood-%02d" % (i % 100) + bytes([100]) + b"v" * 100 for i in range(100))
    connections, cut, most = 0, 0, 0
    while not stop.is_set() and connections < 200:
        sock = connect(a.host, a.port)
        connections += 1
        sock.sendall(PREFACE + settings_frame())
        sent, closed = 0, False
        try:
            sock.sendall(frame(HEADERS, 0, 1, request_block(hpack.Encoder(), a.authority)))
            while sent < 64 * 1024 * 1024 and not stop.is_set():
                sock.sendall(frame(CONTINUATION, 0, 1, enc_chunk))
                sent += len(enc_chunk)
                if sent % (1 << 20) < len(enc_chunk) and closed_by_peer(sock):
                    closed = True
                    break
        except OSError:
            closed = True
        closed = closed or closed_by_peer(sock, 0.2)
        sock.close()
        most = max(most, sent)
        if closed:
            cut += 1
            stop.wait(0.1)
        elif stop.is_set():
            connections -= 1  # cut short by the end of the window, not by the gateway
            break
        else:
            break
    return cut == connections and most < 64 * 1024 * 1024, {
        "connections": connections,
        "cut_off": cut,
        "most_bytes_on_one": most,
    }


def attack_hpack_bomb(a, stop):
    """One 4 KiB header put in the HPACK table, then a block of 10,000 one-byte references
    to it (40 MB decoded), on new streams and connections until stopped. Bounded: no such
    request is answered 2xx (431, RST_STREAM or GOAWAY instead) and the gateway's memory
    grows by less than 64 MiB."""
    literal = b"\x40" + bytes([6]) + b"x-bomb" + b"\x7f" + encode_int(4096 - 127) + b"a" * 4096
    block_tail = b"\xbe" * 10000  # indexed field 62: the entry just inserted
    tries, answered_2xx, refused = 0, 0, 0
    peak = base = rss_kib(a.gateway_pid) or 0
    while not stop.is_set() and tries < 200:
        try:
            sock = connect(a.host, a.port)
            sock.sendall(PREFACE + settings_frame())
            enc = hpack.Encoder()
            block = request_block(enc, a.authority, "/hpack-bomb") + literal + block_tail
            # Split over HEADERS + CONTINUATION within the default 16 KiB frame size.
            first, rest = block[:16000], block[16000:]
            sock.sendall(frame(HEADERS, END_STREAM if rest else END_STREAM | END_HEADERS, 1, first))
            if rest:
                sock.sendall(frame(CONTINUATION, END_HEADERS, 1, rest))
            frames, closed = read_frames(sock, 0.5)
            sock.close()
        except OSError:
            frames, closed = [], True
        tries += 1
        statuses = [status_of(p) for t, _, s, p in frames if t == HEADERS and s == 1]
        if any(s and s.startswith("2") for s in statuses):
            answered_2xx += 1
        else:
            refused += 1
        peak = max(peak, rss_kib(a.gateway_pid) or 0)
    grown = (peak - base) // 1024
    return answered_2xx == 0 and grown < 64, {"requests": tries, "answered_2xx": answered_2xx, "refused": refused, "rss_growth_mib": grown}


def encode_int(value):
    """HPACK integer continuation bytes (after a saturated prefix)."""
    out = b""
    while value >= 128:
        out += bytes([(value % 128) + 128])
        value //= 128
    return out + bytes([value])


def status_of(block):
    try:
        for name, value in hpack.Decoder().decode(block):
            if name in (":status", b":status"):
                return value.decode() if isinstance(value, bytes) else value
    except Exception:  # noqa: BLE001 - a block that needs earlier table state
        return None
    return None


def hold_stall(a):
    """Opens the stalling client: 12 streams for --stall-path with an initial window of
    0, never granting any window. It does read its socket and answers SETTINGS and PINGs
    like a live client, so keep-alive checks do not end it for the gateway. Returns
    (socket, thread); closing the socket ends the thread."""
    sock = connect(a.host, a.port)
    sock.sendall(PREFACE + settings_frame([(0x4, 0)]))  # SETTINGS_INITIAL_WINDOW_SIZE = 0
    enc = hpack.Encoder()
    for i in range(12):
        sock.sendall(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, request_block(enc, a.authority, a.stall_path)))

    def answer():
        buf = b""
        sock.settimeout(None)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags, payload = buf[3], buf[4], buf[9 : 9 + length]
                buf = buf[9 + length :]
                try:
                    if ftype == SETTINGS and not flags & ACK:
                        sock.sendall(frame(SETTINGS, ACK, 0))
                    elif ftype == PING and not flags & ACK:
                        sock.sendall(frame(PING, ACK, 0, payload))
                except OSError:
                    return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    time.sleep(0.2)  # the gateway asks for the 12 bodies and fills what it can
    return sock, thread


def hang_up(sock):
    """Closes a socket another thread may be blocked reading (close alone does not wake it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def stall_figure(alone, during):
    worst = lambda runs: max(d["seconds"] for d in runs)  # noqa: E731
    return {
        "downloads_alone_s": [d["seconds"] for d in alone],
        "downloads_during_stall_s": [d["seconds"] for d in during],
        "alone_max_s": worst(alone),
        "during_max_s": worst(during),
        "failed": sum(1 for d in during if not d["ok"]),
        "errors": [d.get("error") for d in during if not d["ok"]],
    }


def attack_window_stall(a, stop):
    """A client opens 12 streams asking for 8 MB each with an initial window of 0 and never
    reads. Bounded (isolation): while it holds them, five other clients' 2 MB downloads
    through the same gateway complete (the same downloads alone are timed before the
    baseline)."""
    sock, reader = hold_stall(a)
    during = downloads(a, 5)
    stop.wait()  # the victim measures while the streams are still held
    still_open = reader.is_alive()
    hang_up(sock)
    return all(d["ok"] for d in during), {
        "downloads_during_stall_s": [d["seconds"] for d in during],
        "failed_during_stall": [d["error"] for d in during if not d["ok"]],
        "staller_still_connected": still_open,
    }


def isolation_main(a):
    """The benchmark's isolation figure (bench/gateway.sh): the downloads alone, then
    while the stall is held."""
    alone = downloads(a, 5)
    sock, _ = hold_stall(a)
    during = downloads(a, 5)
    hang_up(sock)
    figure = stall_figure(alone, during)
    figure["ok"] = figure["failed"] == 0
    print(json.dumps(figure))


def downloads(a, n, deadline=20.0):
    """n concurrent GETs of --download-path, each on its own connection; each timed."""
    results = [None] * n

    def one(i):
        started = time.monotonic()
        client = H1Client(a.host, a.port, a.authority, timeout=deadline)
        try:
            body = client.get(a.download_path)
            results[i] = {"ok": True, "seconds": round(time.monotonic() - started, 3), "bytes": len(body)}
        except Exception as err:  # noqa: BLE001 - reported
            results[i] = {"ok": False, "seconds": round(time.monotonic() - started, 3), "error": repr(err)}
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def flood(a, stop, make_frame, name):
    """Sends `make_frame(i)` as fast as the socket takes it and never reads (so acks pile
    up). Bounded: the gateway closes the connection, or stops reading it (the socket's
    buffers fill and a send blocks for a second), with its memory growing by less than
    64 MiB."""
    sock = connect(a.host, a.port)
    sock.sendall(PREFACE + settings_frame())
    base = rss_kib(a.gateway_pid) or 0
    peak = base
    sent, closed, blocked = 0, False, False
    sock.settimeout(1.0)
    batch = b"".join(make_frame(i) for i in range(100))
    while not stop.is_set() and sent < 5_000_000:
        try:
            sock.sendall(batch)
            sent += 100
        except socket.timeout:
            # The server stopped reading. (Part of a batch may be out: send no more.)
            blocked = True
            break
        except OSError:
            closed = True
            break
        if sent % 10000 == 0:
            peak = max(peak, rss_kib(a.gateway_pid) or 0)
    while not stop.wait(0.2):
        peak = max(peak, rss_kib(a.gateway_pid) or 0)
    peak = max(peak, rss_kib(a.gateway_pid) or 0)
    closed = closed or closed_by_peer(sock, 0.2)
    sock.close()
    grown = (peak - base) // 1024
    return (closed or blocked) and grown < 64, {
        f"{name}_frames_sent": sent,
        "closed_by_server": closed,
        "server_stopped_reading": blocked,
        "rss_growth_mib": grown,
    }


def attack_settings_flood(a, stop):
    return flood(a, stop, lambda i: settings_frame([(0x3, 100 + i % 50)]), "settings")


def attack_ping_flood(a, stop):
    return flood(a, stop, lambda i: frame(PING, 0, 0, struct.pack(">Q", i)), "ping")


def hold_many(a, stop, count, opener, dribble):
    """Opens `count` connections with `opener(sock)`, then calls `dribble(sock)` on each
    every 0.5 s until stopped. Bounded: the gateway's memory grows by less than 64 MiB
    (and, with --connection-cap, it holds at most that many)."""
    base = rss_kib(a.gateway_pid) or 0
    socks, refused = [], 0
    for _ in range(count):
        if stop.is_set():
            break
        try:
            sock = connect(a.host, a.port, timeout=2.0)
            opener(sock)
            socks.append(sock)
        except OSError:
            refused += 1
    peak = rss_kib(a.gateway_pid) or 0
    while not stop.wait(0.5):
        for sock in socks:
            try:
                dribble(sock)
            except OSError:
                pass
        peak = max(peak, rss_kib(a.gateway_pid) or 0)
    closed = sum(1 for s in socks if closed_by_peer(s))
    for s in socks:
        s.close()
    grown = (peak - base) // 1024
    return grown < 64, {"connections": len(socks), "refused": refused, "closed_by_server": closed, "rss_growth_mib": grown}


def attack_slowloris_h1(a, stop):
    """500 HTTP/1.1 requests whose header section never ends (one more byte every 0.5 s)."""
    head = f"GET /slow HTTP/1.1\r\nHost: {a.authority}\r\n".encode()
    return hold_many(a, stop, 500, lambda s: s.sendall(head), lambda s: s.send(b"x"))


def attack_slowloris_h2(a, stop):
    """500 HTTP/2 connections each opening a header block that never ends (one more
    CONTINUATION byte every 0.5 s)."""
    enc = hpack.Encoder()
    block = request_block(enc, a.authority, "/slow")

    def opener(sock):
        sock.sendall(PREFACE + settings_frame() + frame(HEADERS, END_STREAM, 1, block))

    return hold_many(a, stop, 500, opener, lambda s: s.send(frame(CONTINUATION, 0, 1, b"\x00")))


def attack_h2c_upgrade_hold(a, stop):
    """500 connections asking for `Upgrade: h2c`, then never sending the HTTP/2 preface."""
    req = (
        f"GET /upgrade-hold HTTP/1.1\r\nHost: {a.authority}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    ).encode()
    return hold_many(a, stop, 500, lambda s: s.sendall(req), lambda s: None)


def open_fds(pid):
    """How many file descriptors the gateway has open (its accepted connections count)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, TypeError):
        return None


def attack_idle_connections(a, stop):
    """10,000 connections that never send a byte. Bounded: the gateway holds at most its
    connection cap (--connection-cap) of them (counted as its open file descriptors);
    the others are refused or closed, or wait in the kernel's backlog, unaccepted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10_100:
        return False, {"error": f"this process may open only {hard} files: raise the hard limit (ulimit -Hn 20000)"}
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = open_fds(a.gateway_pid)
    socks, failed = [], 0
    # Non-blocking connects: the kernel completes the handshakes (into the listener's
    # backlog) at once, so all 10,000 are up within the victim's window.
    for _ in range(10000):
        if stop.is_set():
            break
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((a.host, a.port))
        if err in (0, errno.EINPROGRESS):
            socks.append(s)
        else:
            s.close()
            failed += 1
    stop.wait()
    during = open_fds(a.gateway_pid)
    closed = sum(1 for s in socks if closed_by_peer(s))
    for s in socks:
        s.close()
    held = None if before is None or during is None else during - before
    cap = a.connection_cap
    bounded = cap is not None and held is not None and held <= cap
    return bounded, {
        "opened": len(socks),
        "connect_failed": failed,
        "closed_by_gateway": closed,
        "gateway_fds_added": held,
        "cap": cap,
        "fd_limit": hard,
    }


def smuggle(a, name, request):
    """Sends `request` (raw bytes) on one connection, reads every answer to the close."""
    sock = connect(a.host, a.port)
    sock.sendall(request)
    out = b""
    sock.settimeout(1.0)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except OSError:
        pass
    sock.close()
    statuses = [int(line.split()[1]) for line in out.decode("latin-1").split("\r\n") if line.startswith("HTTP/1.")]
    return {"variant": name, "statuses": statuses}


def attack_smuggling(a, stop):
    """CL+TE, TE.CL and obfuscated Transfer-Encoding, each with a second request hidden
    where a proxy that picked the other framing would see one. Bounded (refused): the
    canary app sees exactly the requests the gateway answered, each with the body the
    chunked framing gives, and never a hidden one."""
    host = a.authority
    variants = {
        "cl-te": (
            f"POST /smuggle-clte HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"5\r\nhello\r\n0\r\n\r\nGET /hidden-clte HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        "te-cl": (
            f"POST /smuggle-tecl HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            f"8\r\nSMUGGLED\r\n0\r\n\r\nGET /hidden-tecl HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        "te-space-colon": (
            f"POST /smuggle-space HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n"
            f"0\r\n\r\nGET /hidden-space HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        "te-identity-chunked": (
            f"POST /smuggle-list HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
            f"0\r\n\r\nGET /hidden-list HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        "te-tab": (
            f"POST /smuggle-tab HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n"
            f"0\r\n\r\nGET /hidden-tab HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
    }
    results = [smuggle(a, name, req.encode()) for name, req in variants.items()]
    stop.wait()
    events = app_events(a)
    seen = [(e["method"], e["path"], e.get("bytes")) for e in events if "smuggle" in e["path"] or "hidden" in e["path"]]
    hidden = [s for s in seen if "hidden" in s[1]]
    answered_2xx = sum(1 for r in results for s in r["statuses"] if 200 <= s < 300)
    # Each smuggle request the app saw must have the chunked framing's body, and the app
    # must have seen no more requests than the gateway answered with a 2xx.
    bodies_ok = all(
        (path != "/smuggle-clte" or n == 5) and (path != "/smuggle-tecl" or n == 8) for _, path, n in seen
    )
    bounded = not hidden and bodies_ok and len(seen) <= answered_2xx
    return bounded, {"answers": results, "app_saw": seen, "hidden_reached_app": hidden}


def app_events(a):
    with urllib.request.urlopen(f"http://{a.app}/_requests", timeout=5) as r:
        return json.loads(r.read())["events"]


def app_total(a):
    with urllib.request.urlopen(f"http://{a.app}/_requests", timeout=5) as r:
        return json.loads(r.read())["total"]


ATTACKS = {
    "rapid_reset": attack_rapid_reset,
    "continuation_flood": attack_continuation,
    "hpack_bomb": attack_hpack_bomb,
    "window_stall": attack_window_stall,
    "settings_flood": attack_settings_flood,
    "ping_flood": attack_ping_flood,
    "slowloris_h1": attack_slowloris_h1,
    "slowloris_h2": attack_slowloris_h2,
    "h2c_upgrade_hold": attack_h2c_upgrade_hold,
    "smuggling": attack_smuggling,
    "idle_connections": attack_idle_connections,
}


# ---------------------------------------------------------------- one run


# What an attack needs measured before the baseline, merged into its evidence after.
PREPARE = {
    "window_stall": lambda a: {"downloads_alone_s": [d["seconds"] for d in downloads(a, 5)]},
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attacker_main(a):
    """Runs attack --name until a line arrives on stdin, then prints its JSON."""
    stop = threading.Event()

    def wait_for_stop():
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    try:
        bounded, evidence = ATTACKS[a.name](a, stop)
    except Exception as err:  # noqa: BLE001 - reported as the attack's failure
        bounded, evidence = False, {"error": repr(err)}
    print(json.dumps({"bounded": bool(bounded), "evidence": evidence}), flush=True)


def attempt(a, prepared):
    """One measurement: the victim alone, then under attack. The attacker is its own
    process at a lower CPU priority (nice 10): on one small machine an attacker process
    would otherwise take CPU from the victim through the scheduler, which says nothing
    about the gateway (real attackers do not share the victim's cores)."""
    log(f"{a.attack}: baseline")
    baseline = Victim(a).measure()
    victim = Victim(a)  # connected before the attack starts
    log(f"{a.attack}: attack")
    attacker = child(a, "attacker", ["--name", a.attack], nice=10)
    time.sleep(ATTACK_LEAD)
    under = victim.measure()
    log(f"{a.attack}: victim done, stopping the attack")
    result = last_json(attacker, "attacker")
    evidence = result["evidence"]
    evidence.update(prepared)
    floor = max(baseline["p99_ms"], a.floor_ms)
    limit = 2 * floor
    return {
        "bounded": result["bounded"],
        "evidence": evidence,
        "victim": {
            "baseline": baseline,
            "attack": under,
            "ratio": round(under["p99_ms"] / max(0.001, baseline["p99_ms"]), 2),
            "limit_ms": round(limit, 2),
            "ok": under["errors"] == 0 and under["p99_ms"] <= limit,
        },
    }


# Measurements of one attack, when the victim keeps missing its bound.
ATTEMPTS = 3


def run(a):
    """Up to ATTEMPTS measurements: when the attack is bounded but the victim missed its
    bound, the whole measurement (a fresh baseline, then the attack again) is repeated,
    since other work on a shared machine can take the CPU for a moment. A gateway that
    lets the attack hurt the victim misses every time."""
    prepared = PREPARE[a.attack](a) if a.attack in PREPARE else {}
    attempts = []
    for _ in range(ATTEMPTS):
        r = attempt(a, prepared)
        attempts.append(r)
        v = r["victim"]
        print(
            f"{a.attack:18} victim p99 {v['baseline']['p99_ms']:7.2f} ms alone, {v['attack']['p99_ms']:7.2f} ms under "
            f"attack (x{v['ratio']}, limit {v['limit_ms']} ms, {v['attack']['errors']} errors); "
            f"{'bounded' if r['bounded'] else 'NOT BOUNDED'}: {json.dumps(r['evidence'])[:400]}",
            file=sys.stderr,
            flush=True,
        )
        if not r["bounded"] or v["ok"]:
            break
    last = attempts[-1]
    return {
        "attack": a.attack,
        "ok": bool(last["bounded"]) and last["victim"]["ok"],
        "bounded": last["bounded"],
        "evidence": last["evidence"],
        "victim": last["victim"],
        "attempts": [r["victim"]["ratio"] for r in attempts],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("attack", choices=sorted(ATTACKS) + ["victim", "isolation", "attacker"])
    p.add_argument("--name", choices=sorted(ATTACKS), help="(attacker) which attack")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="the gateway's cleartext port")
    p.add_argument("--authority", default="localhost", help="a host the gateway routes to the demo app")
    p.add_argument("--app", help="the demo app's address (its /_requests journal is the canary)")
    p.add_argument("--gateway-pid", type=int, help="to watch the gateway's memory")
    p.add_argument("--connection-cap", type=int, help="the gateway's cap on open connections per listener")
    p.add_argument("--interval", type=float, default=0.005, help="seconds between the victim's requests")
    p.add_argument("--seconds", type=float, default=VICTIM_SECONDS, help="(victim) seconds measured")
    p.add_argument("--floor-ms", type=float, default=5.0, help="p99 below this counts as this (scheduler noise)")
    p.add_argument("--path", default="/victim", help="(victim) the path it asks for")
    p.add_argument("--stall-path", default="/bytes?n=8000000&stall", help="(window_stall, isolation) what the staller asks for")
    p.add_argument("--download-path", default="/bytes?n=2000000", help="(window_stall, isolation) what the others download")
    a = p.parse_args()
    if a.attack == "victim":
        victim_main(a)
        return
    if a.attack == "isolation":
        isolation_main(a)
        return
    if a.attack == "attacker":
        attacker_main(a)
        return
    if not a.app:
        p.error("--app is needed for attacks (the canary's journal)")
    out = run(a)
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
