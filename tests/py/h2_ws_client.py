#!/usr/bin/env python3
"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) client for the Weft demo app's /ws.

Uses `h2` for HTTP/2 (h2c prior knowledge, or TLS with ALPN h2 given --tls-ca) and
`wsproto` for WebSocket framing on the CONNECT stream. Checks that the server advertises
SETTINGS_ENABLE_CONNECT_PROTOCOL, sends CONNECT with `:protocol websocket`, expects
:status 200, echoes a text and a binary message, then closes (close handshake, then
END_STREAM both ways).

Usage:
  h2_ws_client.py --host H --port P [--path /ws] [--authority A]
                  [--tls-ca FILE [--server-name NAME]] [--header K:V]...
                  [--binary-bytes N] [--timeout S]

Prints one JSON object on stdout:
  {"ok": bool, "enable_connect_protocol": 0|1, "status": "200",
   "response_headers": {name: [values]}, "text_echo": bool, "binary_echo": bool,
   "binary_bytes": N, "close_code": 1000, "stream_ended": bool, "error"?: str}
and exits 1 on failure (3 if packages are missing).
"""

import argparse
import json
import os
import sys

INSTALL_HINT = "python3 -m pip install -r tests/py/requirements.txt"

try:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

    import h2util
except ImportError as err:  # pragma: no cover - depends on the machine
    print(json.dumps({"ok": False, "error": f"missing Python package ({err}); install with: {INSTALL_HINT}"}))
    sys.exit(3)


class WsOverStream:
    """wsproto framing on one HTTP/2 stream."""

    def __init__(self, client, stream_id):
        self.client = client
        self.stream_id = stream_id
        self.state = client.stream(stream_id)
        self.ws = Connection(ConnectionType.CLIENT)
        self.pending = []  # parts of the message being received
        self.messages = []  # whole messages received
        self.close = None  # CloseConnection received

    def send(self, event):
        self.client.send(self.stream_id, self.ws.send(event))

    def feed(self):
        if self.state.data:
            self.ws.receive_data(bytes(self.state.data))
            self.state.data.clear()
        for event in self.ws.events():
            if isinstance(event, Message):
                self.pending.append(event.data)
                if event.message_finished:
                    joined = "".join(self.pending) if isinstance(event, TextMessage) else b"".join(self.pending)
                    self.messages.append(joined)
                    self.pending = []
            elif isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, CloseConnection):
                self.close = event

    def recv(self):
        def ready():
            self.feed()
            return bool(self.messages) or self.close is not None or self.state.ended

        self.client.wait(ready, "a WebSocket message")
        if not self.messages:
            raise ConnectionError(f"stream ended before a message (close: {self.close}, reset: {self.state.reset_code})")
        return self.messages.pop(0)


def run(args, result):
    client = h2util.H2Client(args.host, args.port, args.tls_ca, args.server_name, args.timeout)
    try:
        settings = client.wait_settings()
        result["enable_connect_protocol"] = settings.enable_connect_protocol
        if settings.enable_connect_protocol != 1:
            raise AssertionError("the server did not send SETTINGS_ENABLE_CONNECT_PROTOCOL=1")
        authority = args.authority or f"{args.host}:{args.port}"
        headers = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https" if client.tls else "http"),
            (":path", args.path),
            (":authority", authority),
            ("sec-websocket-version", "13"),
        ] + args.header
        stream_id = client.request(headers, end_stream=False)
        state = client.stream(stream_id)
        client.wait(lambda: state.headers is not None or state.ended, "the CONNECT answer")
        response = h2util.headers_dict(state.headers)
        result["status"] = (response.get(":status") or [None])[0]
        result["response_headers"] = response
        if result["status"] != "200":
            raise AssertionError(f"CONNECT answered {result['status']}, want 200 (reset: {state.reset_code})")

        ws = WsOverStream(client, stream_id)
        text = "hello weft over h2 \u2713"
        ws.send(TextMessage(data=text))
        got = ws.recv()
        result["text_echo"] = got == text
        if got != text:
            raise AssertionError(f"text echo {got!r}, want {text!r}")
        binary = os.urandom(args.binary_bytes)
        ws.send(BytesMessage(data=binary))
        got = ws.recv()
        result["binary_echo"] = got == binary
        result["binary_bytes"] = len(got)
        if got != binary:
            raise AssertionError("binary echo differs")

        ws.send(CloseConnection(code=1000, reason="done"))
        client.wait(lambda: (ws.feed(), ws.close is not None or state.ended)[1], "the server's close frame")
        result["close_code"] = ws.close.code if ws.close else None
        if result["close_code"] != 1000:
            raise AssertionError(f"close code {result['close_code']}, want 1000")
        if state.reset_code is not None:
            raise AssertionError(f"stream reset with code {state.reset_code} after the close handshake")
        client.send(stream_id, b"", end_stream=True)
        client.wait(lambda: state.ended, "the server's END_STREAM")
        result["stream_ended"] = state.reset_code is None
        if state.reset_code is not None:
            raise AssertionError(f"stream reset with code {state.reset_code} instead of END_STREAM")
    finally:
        client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--authority", help=":authority (default HOST:PORT)")
    parser.add_argument("--tls-ca", help="PEM CA file: connect with TLS (ALPN h2) instead of h2c")
    parser.add_argument("--server-name", help="TLS server name (default HOST)")
    parser.add_argument("--header", action="append", default=[], type=h2util.header_pair, help="extra header K:V")
    parser.add_argument("--binary-bytes", type=int, default=64 * 1024)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    result = {"ok": False, "target": f"{args.host}:{args.port}{args.path}"}
    try:
        run(args, result)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported as JSON
        result["error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
