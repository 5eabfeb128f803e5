"""A small blocking HTTP/2 client connection on top of the `h2` package, shared by
h2_ws_client.py and h2_request.py: h2c (prior knowledge) or TLS with ALPN h2, flow
control honoured in both directions, per-stream state collected as frames arrive."""

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events


class StreamState:
    """What arrived on one stream."""

    def __init__(self):
        self.informational = []  # lists of (name, value) of 1xx answers
        self.headers = None  # [(name, value)] of the final answer
        self.data = bytearray()  # data not yet taken
        self.data_bytes = 0  # all data received
        self.trailers = None
        self.ended = False
        self.reset_code = None


class H2Client:
    def __init__(self, host, port, tls_ca=None, server_name=None, timeout=10.0, raw=False):
        self.timeout = timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = bool(tls_ca)
        if tls_ca:
            ctx = ssl.create_default_context(cafile=tls_ca)
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=server_name or host)
            if sock.selected_alpn_protocol() != "h2":
                raise RuntimeError(f"server chose ALPN {sock.selected_alpn_protocol()!r}, not h2")
        self.sock = sock
        # raw: send header fields exactly as given (no validation, no normalisation), to
        # see how a server treats fields a careful client would never send.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=not raw,
            normalize_outbound_headers=not raw,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.streams = {}
        self.got_settings = False
        self.goaway = None
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def stream(self, stream_id):
        return self.streams.setdefault(stream_id, StreamState())

    def pump(self, deadline):
        """Reads once from the socket (until `deadline`) and handles what arrived."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout as err:
            raise TimeoutError("timed out waiting for the server") from err
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self.handle(event)
        self.flush()

    def handle(self, event):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.got_settings = True
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self.stream(event.stream_id).informational.append(event.headers)
        elif isinstance(event, h2.events.ResponseReceived):
            self.stream(event.stream_id).headers = event.headers
        elif isinstance(event, h2.events.DataReceived):
            s = self.stream(event.stream_id)
            s.data += event.data
            s.data_bytes += len(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.stream(event.stream_id).trailers = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            self.stream(event.stream_id).ended = True
        elif isinstance(event, h2.events.StreamReset):
            s = self.stream(event.stream_id)
            s.reset_code = int(event.error_code)
            s.ended = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code)

    def wait(self, cond, what, timeout=None):
        """Pumps until cond() is true; raises if the connection ends first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not cond():
            if self.closed:
                raise ConnectionError(f"connection closed while waiting for {what}")
            try:
                self.pump(deadline)
            except TimeoutError as err:
                raise TimeoutError(f"timed out waiting for {what}") from err

    def wait_settings(self):
        self.wait(lambda: self.got_settings, "the server's SETTINGS")
        return self.conn.remote_settings

    def request(self, headers, end_stream):
        stream_id = self.conn.get_next_available_stream_id()
        self.stream(stream_id)
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    def send(self, stream_id, data, end_stream=False):
        """Sends data within the peer's flow-control windows."""
        view = memoryview(bytes(data))
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.wait(lambda: self.conn.local_flow_control_window(stream_id) > 0, "a WINDOW_UPDATE")
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, chunk.tobytes())
            self.flush()
        if end_stream:
            self.conn.end_stream(stream_id)
            self.flush()

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # noqa: BLE001 - best effort
            pass
        self.sock.close()


def headers_dict(headers):
    """[(name, value)] as {name: [values]} (pseudo-headers included)."""
    out = {}
    for name, value in headers or ():
        out.setdefault(name, []).append(value)
    return out


def raw_header_pair(text):
    """argparse type for K:V taken verbatim: the value keeps its whitespace."""
    key, sep, value = text.partition(":")
    if not sep or not key:
        raise ValueError(f"expected K:V, got {text!r}")
    return key.lower(), value


def header_pair(text):
    """argparse type for K:V (a leading ':' is part of the name, as in :authority)."""
    head = ":" if text.startswith(":") else ""
    key, sep, value = text[len(head):].partition(":")
    if not sep or not key.strip():
        raise ValueError(f"expected K:V, got {text!r}")
    return (head + key.strip()).lower(), value.strip()
