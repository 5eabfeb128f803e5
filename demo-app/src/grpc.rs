//! gRPC mode: the `weft.demo.v1.Echo` service and `grpc.health.v1.Health`, served on the
//! app's own h2c server next to the HTTP echo (requests whose `content-type` is
//! `application/grpc*` go to gRPC, the rest to [`crate::http`]).
//!
//! Every reply tells the HTTP version and the request metadata the server saw. Requests
//! can ask the server to wait (`sleep_ms`, cut short by cancellation or the caller's
//! `grpc-timeout`, logged as "request cancelled") or to fail (`fail_code`, with
//! `fail_message` and trailing metadata `x-demo-detail` / `x-demo-bin`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{Request, Response, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::service::Routes;
use tonic::{Code, Status, Streaming};
use tower::ServiceExt as _;

use crate::body::{BoxError, RespBody};
use crate::report::version_str;

/// Generated code of `proto/weft/demo/v1/echo.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("weft.demo.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

/// What the transport knew about a request that tonic does not keep: put into the
/// request's extensions before the gRPC router sees it.
#[derive(Clone, Debug)]
struct RequestInfo {
    version: Version,
    authority: Option<String>,
}

/// Builds the gRPC router: Echo plus the standard health service (both SERVING).
pub async fn routes(app: String) -> Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EchoServer<EchoService>>().await;
    Routes::new(EchoServer::new(EchoService { app })).add_service(health)
}

/// True for gRPC requests (`content-type: application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Serves one gRPC request through the router.
pub async fn serve(
    routes: Routes,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let info = RequestInfo {
        version: req.version(),
        authority: req.uri().authority().map(ToString::to_string).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        }),
    };
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(info);
    let resp = match routes.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    tracing::info!(%peer, %path, "grpc request");
    resp.map(|body| {
        body.map_err(|status| Box::new(status) as BoxError)
            .boxed_unsync()
    })
}

/// The `weft.demo.v1.Echo` implementation.
#[derive(Debug)]
pub struct EchoService {
    app: String,
}

/// What every reply reports about its call.
struct CallInfo {
    http_version: String,
    metadata: BTreeMap<String, String>,
    deadline: Option<Instant>,
}

impl CallInfo {
    fn of<T>(req: &tonic::Request<T>) -> Self {
        let info = req.extensions().get::<RequestInfo>();
        let mut metadata = flatten(req.metadata());
        if let Some(authority) = info.and_then(|i| i.authority.clone()) {
            metadata.insert(":authority".to_owned(), authority);
        }
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        CallInfo {
            http_version: version_str(info.map_or(Version::HTTP_2, |i| i.version)).to_owned(),
            metadata,
            deadline,
        }
    }

    fn reply(&self, app: &str, message: String, index: u32) -> EchoReply {
        EchoReply {
            message,
            http_version: self.http_version.clone(),
            metadata: self.metadata.clone(),
            index,
            app: app.to_owned(),
        }
    }
}

/// How much earlier than our deadline a caller's deadline reset may arrive.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// Logs "request cancelled" if dropped before [`CancelGuard::done`]: that is what
/// happens to a handler whose caller reset the stream (cancel or client deadline).
/// The caller's clock for its deadline started a transit time before ours, so its
/// reset can arrive just before our own timer fires: a reset within
/// [`DEADLINE_SLACK`] of the call's deadline, or after it, is logged as the deadline.
struct CancelGuard {
    rpc: &'static str,
    deadline: Option<Instant>,
    done: bool,
}

impl CancelGuard {
    fn new(rpc: &'static str, deadline: Option<Instant>) -> Self {
        CancelGuard {
            rpc,
            deadline,
            done: false,
        }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self
            .deadline
            .is_some_and(|d| d <= Instant::now() + DEADLINE_SLACK)
        {
            tracing::info!(
                rpc = self.rpc,
                status = "DEADLINE_EXCEEDED",
                "request cancelled: deadline exceeded"
            );
        } else {
            tracing::info!(rpc = self.rpc, status = "CANCELLED", "request cancelled");
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let call = CallInfo::of(&req);
        let msg = req.into_inner();
        let guard = CancelGuard::new("Unary", call.deadline);
        let result = pause("Unary", msg.sleep_ms, call.deadline).await;
        guard.done();
        result?;
        check_fail(&msg)?;
        Ok(tonic::Response::new(call.reply(&self.app, msg.message, 0)))
    }

    type ServerStreamStream = ReceiverStream<Result<EchoReply, Status>>;

    async fn server_stream(
        &self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, Status> {
        let call = CallInfo::of(&req);
        let msg = req.into_inner();
        let guard = CancelGuard::new("ServerStream", call.deadline);
        let result = pause("ServerStream", msg.sleep_ms, call.deadline).await;
        guard.done();
        result?;
        check_fail(&msg)?;
        let (tx, rx) = mpsc::channel(4);
        let app = self.app.clone();
        tokio::spawn(async move {
            let count = msg.count.max(1);
            let interval = Duration::from_millis(msg.interval_ms.into());
            for index in 0..count {
                if index > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = tx.closed() => {
                            tracing::info!(rpc = "ServerStream", sent = index, status = "CANCELLED", "request cancelled");
                            return;
                        }
                    }
                }
                let reply = call.reply(&app, msg.message.clone(), index);
                if tx.send(Ok(reply)).await.is_err() {
                    tracing::info!(
                        rpc = "ServerStream",
                        sent = index,
                        status = "CANCELLED",
                        "request cancelled"
                    );
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn client_stream(
        &self,
        req: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let call = CallInfo::of(&req);
        let mut stream = req.into_inner();
        let guard = CancelGuard::new("ClientStream", call.deadline);
        let mut joined = String::new();
        let mut count = 0u32;
        // A read error means the caller went away: the guard logs it.
        while let Some(msg) = stream.message().await? {
            let outcome = match pause("ClientStream", msg.sleep_ms, call.deadline).await {
                Ok(()) => check_fail(&msg),
                Err(status) => Err(status),
            };
            if let Err(status) = outcome {
                guard.done();
                return Err(status);
            }
            joined.push_str(&msg.message);
            count += 1;
        }
        guard.done();
        Ok(tonic::Response::new(call.reply(&self.app, joined, count)))
    }

    type BidiStream = ReceiverStream<Result<EchoReply, Status>>;

    async fn bidi(
        &self,
        req: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<Self::BidiStream>, Status> {
        let call = CallInfo::of(&req);
        let stream = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(bidi_loop(self.app.clone(), call, stream, tx));
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Echoes each message of a Bidi call as soon as it arrives.
async fn bidi_loop(
    app: String,
    call: CallInfo,
    mut stream: Streaming<EchoRequest>,
    tx: mpsc::Sender<Result<EchoReply, Status>>,
) {
    let mut index = 0u32;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            () = tx.closed() => {
                tracing::info!(rpc = "Bidi", sent = index, status = "CANCELLED", "request cancelled");
                return;
            }
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(status) => {
                tracing::info!(rpc = "Bidi", sent = index, "request cancelled: {status}");
                return;
            }
        };
        let reply = match pause("Bidi", msg.sleep_ms, call.deadline).await {
            Ok(()) => check_fail(&msg).map(|()| call.reply(&app, msg.message, index)),
            Err(status) => Err(status),
        };
        let failed = reply.is_err();
        if tx.send(reply).await.is_err() {
            tracing::info!(
                rpc = "Bidi",
                sent = index,
                status = "CANCELLED",
                "request cancelled"
            );
            return;
        }
        if failed {
            return;
        }
        index += 1;
    }
}

/// Waits `sleep_ms`, or until the call's deadline (`grpc-timeout`), whichever is first.
/// A call whose caller goes away meanwhile is dropped here, which its [`CancelGuard`]
/// logs.
async fn pause(rpc: &'static str, sleep_ms: u32, deadline: Option<Instant>) -> Result<(), Status> {
    if sleep_ms == 0 {
        return Ok(());
    }
    let wake = Instant::now() + Duration::from_millis(sleep_ms.into());
    match deadline {
        Some(deadline) if deadline < wake => {
            tokio::time::sleep_until(deadline).await;
            tracing::info!(
                rpc,
                status = "DEADLINE_EXCEEDED",
                "request cancelled: deadline exceeded"
            );
            Err(Status::deadline_exceeded(format!(
                "the caller's grpc-timeout passed during sleep_ms={sleep_ms}"
            )))
        }
        _ => {
            tokio::time::sleep_until(wake).await;
            Ok(())
        }
    }
}

/// `fail_code` != 0: that status, with `fail_message` and trailing metadata
/// `x-demo-detail: <fail_message>` and `x-demo-bin: <fail_message bytes>`.
fn check_fail(msg: &EchoRequest) -> Result<(), Status> {
    if msg.fail_code == 0 {
        return Ok(());
    }
    let mut metadata = MetadataMap::new();
    match MetadataValue::try_from(msg.fail_message.as_str()) {
        Ok(value) => {
            metadata.insert("x-demo-detail", value);
        }
        Err(_) => {
            tracing::warn!("fail_message is not a valid ASCII header value: no x-demo-detail")
        }
    }
    metadata.insert_bin(
        "x-demo-bin",
        MetadataValue::from_bytes(msg.fail_message.as_bytes()),
    );
    Err(Status::with_metadata(
        Code::from_i32(msg.fail_code),
        msg.fail_message.clone(),
        metadata,
    ))
}

/// Request metadata as one string per key: values joined with ", ", binary values in
/// standard base64.
fn flatten(metadata: &MetadataMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (
                key.as_str(),
                String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
            ),
            KeyAndValueRef::Binary(key, value) => (
                key.as_str(),
                value
                    .to_bytes()
                    .map_or_else(|_| "<invalid base64>".to_owned(), |b| STANDARD.encode(b)),
            ),
        };
        out.entry(key.to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// Parses `grpc-timeout` (`<1-8 digits><H|M|S|m|u|n>`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999u"),
            Some(Duration::from_micros(99999))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn fail_carries_trailing_metadata() {
        let req = EchoRequest {
            fail_code: 5,
            fail_message: "nope".into(),
            ..Default::default()
        };
        let status = check_fail(&req).unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "nope");
        assert_eq!(status.metadata().get("x-demo-detail").unwrap(), "nope");
        assert_eq!(
            status
                .metadata()
                .get_bin("x-demo-bin")
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            b"nope"
        );
    }
}
