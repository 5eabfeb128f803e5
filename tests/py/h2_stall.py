#!/usr/bin/env python3
"""A client that stalls: opens STREAMS HTTP/2 streams for large bodies with an initial
stream window of 0 and never reads a byte of them, then holds the connection open.

This is how one public client could stop every other client of a shared upstream
connection whose connection window is smaller than the sum of its stream windows.

Usage:
  h2_stall.py --port P [--host 127.0.0.1] --authority A [--path /bytes?n=8000000]
              [--streams 12] [--hold S] [--ready-file F] [--until-file G]

Writes F (when given) once every stream got its response headers, so the caller knows
the stall is in place, then keeps the connection open for --hold seconds (answering
PINGs, never opening any window), or until G exists. Prints one JSON object:
  {"ok": bool, "streams": N, "headers": N (responses whose headers arrived),
   "data_bytes": N (body bytes received: 0 with a window of 0), "closed_by_server": bool,
   "error"?: str}
Exits 1 on failure (3 if packages are missing).
"""

import argparse
import json
import os
import socket
import sys
import time

INSTALL_HINT = "python3 -m pip install -r tests/py/requirements.txt"

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
except ImportError as err:  # pragma: no cover - depends on the machine
    print(json.dumps({"ok": False, "error": f"missing Python package ({err}); install with: {INSTALL_HINT}"}))
    sys.exit(3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--path", default="/bytes?n=8000000")
    p.add_argument("--streams", type=int, default=12)
    p.add_argument("--hold", type=float, default=20.0)
    p.add_argument("--ready-file")
    p.add_argument("--until-file")
    args = p.parse_args()
    result = {"ok": False, "streams": args.streams, "headers": 0, "data_bytes": 0,
              "closed_by_server": False}
    try:
        sock = socket.create_connection((args.host, args.port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        conn.initiate_connection()
        for _ in range(args.streams):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [
                (":method", "GET"), (":scheme", "http"),
                (":authority", args.authority), (":path", args.path),
            ], end_stream=True)
        sock.sendall(conn.data_to_send())
        answered = set()
        ready_written = False
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            if args.until_file and os.path.exists(args.until_file):
                break
            sock.settimeout(max(0.05, min(0.2, deadline - time.monotonic())))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                result["closed_by_server"] = True
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answered.add(event.stream_id)
                elif isinstance(event, h2.events.DataReceived):
                    # Counted, never acknowledged: the window stays closed.
                    result["data_bytes"] += len(event.data)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            result["headers"] = len(answered)
            if args.ready_file and not ready_written and len(answered) == args.streams:
                with open(args.ready_file, "w") as f:
                    f.write("stalled\n")
                ready_written = True
        result["ok"] = len(answered) == args.streams
        sock.close()
    except Exception as err:  # noqa: BLE001 - reported as JSON
        result["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
