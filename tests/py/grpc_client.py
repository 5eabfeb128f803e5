#!/usr/bin/env python3
"""gRPC client for the Weft demo app's Echo service (weft.demo.v1).

Stubs are generated at run time from demo-app/proto/weft/demo/v1/echo.proto with
grpc_tools.protoc into a temporary directory, so nothing generated is checked in.

Usage:
  grpc_client.py --target HOST:PORT [--tls-ca FILE --server-name NAME]
                 [--authority A] [--metadata K=V]... CASE

CASE is one of: unary, server_stream, client_stream, bidi, deadline, cancel, error,
health, or all (every case). Prints one JSON object on stdout:
  {"ok": bool, "target": ..., "cases": {CASE: {"ok": bool, ...details | "error": str}}}
and exits 1 if any case failed (2 on usage errors, 3 if packages are missing).
"""

import argparse
import base64
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "demo-app", "proto"))
PROTO = "weft/demo/v1/echo.proto"
INSTALL_HINT = "python3 -m pip install -r tests/py/requirements.txt"

try:
    import grpc
    from grpc_tools import protoc
except ImportError as err:  # pragma: no cover - depends on the machine
    print(json.dumps({"ok": False, "error": f"missing Python package ({err}); install with: {INSTALL_HINT}"}))
    sys.exit(3)


def load_stubs(proto_root):
    """Generates echo_pb2 / echo_pb2_grpc into a temp dir and imports them."""
    out = tempfile.mkdtemp(prefix="weft-demo-stubs-")
    try:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {proto_root}/{PROTO}")
        sys.path.insert(0, out)
        from weft.demo.v1 import echo_pb2, echo_pb2_grpc  # noqa: E402
        return echo_pb2, echo_pb2_grpc
    finally:
        # Modules are imported; the files are no longer needed.
        shutil.rmtree(out, ignore_errors=True)


class Failure(Exception):
    """A case's assertion failed."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def reply_dict(reply):
    return {
        "message": reply.message,
        "http_version": reply.http_version,
        "metadata": dict(reply.metadata),
        "index": reply.index,
        "app": reply.app,
    }


def trailing_dict(metadata):
    """Trailing metadata as {key: value}; binary (-bin) values as {"base64", "utf8"}."""
    out = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = {"base64": base64.b64encode(value).decode(), "utf8": value.decode("utf-8", "replace")}
        out[key] = value
    return out


class Cases:
    def __init__(self, args, pb2, pb2_grpc, channel):
        self.pb2 = pb2
        self.stub = pb2_grpc.EchoStub(channel)
        self.channel = channel
        self.metadata = [("x-demo-client", "grpc_client.py")] + list(args.metadata)

    def unary(self):
        reply = self.stub.Unary(self.pb2.EchoRequest(message="hello weft"), timeout=10, metadata=self.metadata)
        r = reply_dict(reply)
        md = r["metadata"]
        check(r["message"] == "hello weft", f"unexpected echo {r['message']!r}")
        check(r["http_version"] == "HTTP/2.0", f"http_version {r['http_version']!r}, want HTTP/2.0")
        check(md.get("content-type", "").startswith("application/grpc"), f"content-type seen: {md.get('content-type')!r}")
        check(md.get("te") == "trailers", f"te seen: {md.get('te')!r}")
        check("grpc-timeout" in md, "grpc-timeout not seen by the server")
        check("grpc-python" in md.get("user-agent", ""), f"user-agent seen: {md.get('user-agent')!r}")
        check(md.get("x-demo-client") == "grpc_client.py", "custom metadata x-demo-client not seen")
        return {"reply": r}

    def server_stream(self):
        start = time.monotonic()
        call = self.stub.ServerStream(
            self.pb2.EchoRequest(message="tick", count=5, interval_ms=100), timeout=10, metadata=self.metadata)
        replies, arrivals, apps = [], [], set()
        for reply in call:
            arrivals.append(round(time.monotonic() - start, 4))
            replies.append(reply.index)
            apps.add(reply.app)
        check(replies == [0, 1, 2, 3, 4], f"indexes {replies}, want [0..4]")
        spread = arrivals[-1] - arrivals[0]
        # 4 intervals of 100 ms: a buffered stream arrives all at once.
        check(spread >= 0.3, f"replies arrived within {spread:.3f}s: the stream was buffered")
        return {"indexes": replies, "arrivals_s": arrivals, "spread_s": round(spread, 4),
                "http_version": reply.http_version, "apps": sorted(apps)}

    def client_stream(self):
        parts = ["a", "b", "c", "d"]
        reply = self.stub.ClientStream(
            iter([self.pb2.EchoRequest(message=p) for p in parts]), timeout=10, metadata=self.metadata)
        check(reply.message == "abcd", f"concatenation {reply.message!r}, want 'abcd'")
        check(reply.index == 4, f"count {reply.index}, want 4")
        return {"reply": reply_dict(reply)}

    def bidi(self):
        requests = queue.Queue()
        done = object()

        def gen():
            while True:
                item = requests.get()
                if item is done:
                    return
                yield item

        call = self.stub.Bidi(gen(), timeout=10, metadata=self.metadata)
        rtts = []
        try:
            for i in range(5):
                sent = time.monotonic()
                requests.put(self.pb2.EchoRequest(message=f"ping-{i}"))
                # The next request is only sent after this echo arrived: a server or proxy
                # that buffers the stream makes this block until the call's deadline.
                reply = next(call)
                rtts.append(round(time.monotonic() - sent, 4))
                check(reply.message == f"ping-{i}", f"echo {reply.message!r}, want 'ping-{i}'")
                check(reply.index == i, f"index {reply.index}, want {i}")
        finally:
            requests.put(done)
        rest = list(call)
        check(rest == [], f"{len(rest)} unexpected extra replies")
        return {"round_trips_s": rtts, "messages": len(rtts), "http_version": reply.http_version,
                "app": reply.app}

    def deadline(self):
        start = time.monotonic()
        try:
            self.stub.Unary(self.pb2.EchoRequest(message="slow", sleep_ms=2000), timeout=0.2, metadata=self.metadata)
        except grpc.RpcError as err:
            elapsed = time.monotonic() - start
            check(err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"code {err.code().name}, want DEADLINE_EXCEEDED")
            check(elapsed < 1.5, f"took {elapsed:.3f}s for a 0.2s deadline")
            return {"code": err.code().name, "details": err.details(), "elapsed_s": round(elapsed, 4)}
        raise Failure("the call succeeded; want DEADLINE_EXCEEDED")

    def cancel(self):
        call = self.stub.ServerStream(
            self.pb2.EchoRequest(message="long", count=100, interval_ms=100), timeout=30, metadata=self.metadata)
        first = next(call)
        check(first.index == 0, f"first index {first.index}")
        call.cancel()
        try:
            extra = list(call)
        except grpc.RpcError as err:
            check(err.code() == grpc.StatusCode.CANCELLED, f"code {err.code().name}, want CANCELLED")
            return {"code": err.code().name, "received_before_cancel": 1}
        raise Failure(f"stream ended normally after cancel ({len(extra)} more replies)")

    def error(self):
        message = "no such thing"
        try:
            self.stub.Unary(self.pb2.EchoRequest(message="x", fail_code=5, fail_message=message),
                            timeout=10, metadata=self.metadata)
        except grpc.RpcError as err:
            trailing = trailing_dict(err.trailing_metadata())
            check(err.code() == grpc.StatusCode.NOT_FOUND, f"code {err.code().name}, want NOT_FOUND")
            check(err.details() == message, f"details {err.details()!r}, want {message!r}")
            check(trailing.get("x-demo-detail") == message, f"x-demo-detail {trailing.get('x-demo-detail')!r}")
            check((trailing.get("x-demo-bin") or {}).get("utf8") == message, f"x-demo-bin {trailing.get('x-demo-bin')!r}")
            return {"code": err.code().name, "details": err.details(), "trailing_metadata": trailing}
        raise Failure("the call succeeded; want NOT_FOUND")

    def health(self):
        # grpc.health.v1.Health/Check with hand-encoded messages, to need no extra package:
        # HealthCheckRequest{service: ""} is empty; HealthCheckResponse{status: SERVING} is 08 01.
        check_rpc = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b)
        raw = check_rpc(b"", timeout=10)
        check(raw == b"\x08\x01", f"health answer {raw!r}, want SERVING (08 01)")
        return {"status": "SERVING"}


CASES = ["unary", "server_stream", "client_stream", "bidi", "deadline", "cancel", "error", "health"]


def metadata_pair(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key.lower(), value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT of the server (or of the mesh in front of it)")
    parser.add_argument("--tls-ca", help="PEM file of the CA to trust: use TLS instead of h2c")
    parser.add_argument("--server-name", help="TLS server name to verify (with --tls-ca)")
    parser.add_argument("--authority", help=":authority to send (default: the target)")
    parser.add_argument("--metadata", action="append", default=[], type=metadata_pair, help="extra request metadata K=V")
    parser.add_argument("--proto-root", default=DEFAULT_PROTO_ROOT, help="directory holding weft/demo/v1/echo.proto")
    parser.add_argument("case", choices=CASES + ["all"])
    args = parser.parse_args()

    result = {"ok": False, "target": args.target, "cases": {}}
    try:
        pb2, pb2_grpc = load_stubs(args.proto_root)
    except Exception as err:  # noqa: BLE001 - reported as JSON
        result["error"] = f"generating stubs: {err}"
        print(json.dumps(result))
        return 1

    options = []
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)

    cases = Cases(args, pb2, pb2_grpc, channel)
    for name in CASES if args.case == "all" else [args.case]:
        start = time.monotonic()
        try:
            outcome = getattr(cases, name)()
            outcome = {"ok": True, **outcome}
        except Failure as err:
            outcome = {"ok": False, "error": str(err)}
        except grpc.RpcError as err:
            outcome = {"ok": False, "error": f"unexpected RPC error {err.code().name}: {err.details()}"}
        except Exception as err:  # noqa: BLE001 - reported as JSON
            outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        outcome["duration_s"] = round(time.monotonic() - start, 4)
        result["cases"][name] = outcome
    channel.close()
    result["ok"] = all(c["ok"] for c in result["cases"].values())
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
