#!/usr/bin/env python3
"""HTTP/1.1 WebSocket client (RFC 6455) for the Weft demo app's /ws echo.

Uses the `websockets` package (sync client). Sends a text message and a binary message
(64 KiB by default), checks that both come back unchanged, and closes cleanly.

Usage:
  ws_client.py --url ws://HOST:PORT/ws [--header K:V]... [--binary-bytes N] [--timeout S]

Prints one JSON object on stdout:
  {"ok": bool, "url", "status": 101, "response_headers": {name: [values]},
   "text_echo": bool, "binary_echo": bool, "binary_bytes": N, "close_code": 1000,
   "round_trip_s": float, "error"?: str}
and exits 1 on failure (3 if packages are missing).
"""

import argparse
import json
import os
import sys
import time

INSTALL_HINT = "python3 -m pip install -r tests/py/requirements.txt"

try:
    from websockets.sync.client import connect
except ImportError as err:  # pragma: no cover - depends on the machine
    print(json.dumps({"ok": False, "error": f"missing Python package ({err}); install with: {INSTALL_HINT}"}))
    sys.exit(3)


def header_pair(text):
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected K:V, got {text!r}")
    return key.strip(), value.strip()


def headers_dict(headers):
    out = {}
    for key, value in headers.raw_items():
        out.setdefault(key.lower(), []).append(value)
    return out


def run(args, result):
    text = "hello weft \u2713"
    binary = os.urandom(args.binary_bytes)
    start = time.monotonic()
    with connect(
        args.url,
        additional_headers=args.header,
        compression=None,  # exact echo: no permessage-deflate
        max_size=None,
        open_timeout=args.timeout,
        close_timeout=args.timeout,
    ) as ws:
        result["status"] = ws.response.status_code
        result["response_headers"] = headers_dict(ws.response.headers)
        ws.send(text)
        got = ws.recv(timeout=args.timeout)
        result["text_echo"] = got == text
        if got != text:
            raise AssertionError(f"text echo {got!r}, want {text!r}")
        ws.send(binary)
        got = ws.recv(timeout=args.timeout)
        result["binary_echo"] = got == binary
        result["binary_bytes"] = len(got) if isinstance(got, bytes) else None
        if got != binary:
            raise AssertionError(f"binary echo differs ({type(got).__name__} of {len(got)})")
        result["round_trip_s"] = round(time.monotonic() - start, 4)
        ws.close()
        result["close_code"] = ws.close_code
    if result["close_code"] != 1000:
        raise AssertionError(f"close code {result['close_code']}, want 1000")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/ws (or wss://)")
    parser.add_argument("--header", action="append", default=[], type=header_pair, help="extra request header K:V")
    parser.add_argument("--binary-bytes", type=int, default=64 * 1024, help="size of the binary message")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each step")
    args = parser.parse_args()

    result = {"ok": False, "url": args.url}
    try:
        run(args, result)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported as JSON
        result["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
