//! The TCP accept loop both HTTP listeners share: the server's WebSocket port and the
//! admin port of either binary.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long to wait after a failed accept: out of file descriptors and the like clears
/// up only as connections close, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections until `stop` fires, running `serve` for each in a task of its
/// own. `what` names the listener in logs.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    what: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        tokio::spawn(serve(stream, peer));
    }
}
