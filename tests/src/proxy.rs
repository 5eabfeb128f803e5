//! A TCP proxy a test can cut: while open it forwards bytes both ways; once cut, every
//! connection (open or new) stays up but carries nothing, the way a network partition
//! looks to both ends (no reset, no FIN: only silence).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CutProxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let task = {
            let cut = cut.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let rx = cut.subscribe();
                    tokio::spawn(relay(client, target, rx));
                }
            })
        };
        CutProxy { addr, cut, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on nothing passes, in either direction.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let already_cut = *cut.borrow();
    if already_cut {
        // Accepted, then silence: hold the socket until the test ends.
        let _held = client;
        std::future::pending::<()>().await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let copy = async {
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = cr.read(&mut buf).await?;
                if n == 0 {
                    return uw.shutdown().await;
                }
                uw.write_all(&buf[..n]).await?;
            }
        };
        let down = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = ur.read(&mut buf).await?;
                if n == 0 {
                    return cw.shutdown().await;
                }
                cw.write_all(&buf[..n]).await?;
            }
        };
        let _: (std::io::Result<()>, std::io::Result<()>) = tokio::join!(up, down);
    };
    let partitioned = async {
        let _ = cut.wait_for(|c| *c).await.map(|_| ());
    };
    tokio::select! {
        () = copy => {}
        () = partitioned => {
            // Partitioned: keep every socket open and silent until the test ends.
            std::future::pending::<()>().await;
        }
    }
}
