//! Graceful shutdown, the same for every node kind: a `watch` channel that turns `true` once.
//!
//! `main` takes a [`ShutdownSignal`] from [`on_signal`] (SIGTERM or Ctrl-C) and passes it to
//! the node's `run`; tests and dfget's embedded peer make their own with
//! `tokio::sync::watch::channel(false)` and send `true` to stop. Servers stop accepting when
//! [`requested`] returns, then drain.

use tokio::sync::watch;

/// A shutdown signal that many tasks wait on: stop when it turns `true`.
pub type ShutdownSignal = watch::Receiver<bool>;

/// A signal that turns `true` at the first SIGTERM or Ctrl-C (SIGINT). Call it inside the
/// runtime: it spawns the task that waits for them.
pub fn on_signal() -> ShutdownSignal {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        terminate_or_interrupt().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// Returns once shutdown is requested: the signal turned `true`, or every sender is gone (nobody
/// is left to keep the node running). Cancel-safe.
pub async fn requested(signal: &mut ShutdownSignal) {
    let _ = signal.wait_for(|stop| *stop).await;
}

/// Waits for SIGTERM (what Kubernetes and systemd send) or Ctrl-C; Ctrl-C only when SIGTERM
/// cannot be watched.
async fn terminate_or_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requested_on_true_or_when_the_sender_is_gone() {
        let (tx, mut rx) = watch::channel(false);
        let waiter = tokio::spawn(async move { requested(&mut rx).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(true).unwrap();
        waiter.await.unwrap();

        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        requested(&mut rx).await;

        // Already requested before anyone waits.
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        requested(&mut rx).await;
    }

    #[tokio::test]
    async fn a_false_update_is_not_a_request() {
        let (tx, mut rx) = watch::channel(false);
        let waiter = tokio::spawn(async move { requested(&mut rx).await });
        tx.send(false).unwrap();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(true).unwrap();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn on_signal_starts_false() {
        let rx = on_signal();
        assert!(!*rx.borrow());
    }
}
