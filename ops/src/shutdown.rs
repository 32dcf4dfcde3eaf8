//! `Shutdown`: the two stages of stopping, passed down as a value, for both binaries.
//!
//! `begin` starts the orderly stop (first SIGTERM from the kubelet, or SIGINT from a
//! terminal): the server drains, the operator finishes its reconciles and releases its
//! Lease. `now` ends it at once (a second signal). Tests trigger the same tokens
//! instead of sending signals.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    pub begin: CancellationToken,
    pub now: CancellationToken,
}

impl Shutdown {
    /// Wires SIGTERM and SIGINT: the first begins the stop, the second makes it immediate.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            for stage in [&this.begin, &this.now] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                stage.cancel();
            }
        });
        Ok(())
    }
}
