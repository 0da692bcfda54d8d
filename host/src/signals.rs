//! Unix signals, as gunicorn users expect them: TERM and INT drain and exit
//! (a second one exits at once), HUP reloads the model file, TTIN and TTOU add
//! and remove one instance.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::pool::Pool;

/// Linux's numbers for SIGTTIN and SIGTTOU (the same on x86-64 and ARM);
/// tokio names only the common signals.
const SIGTTIN: i32 = 21;
const SIGTTOU: i32 = 22;

/// Resolves on the first TERM or INT, and arms an immediate exit on the
/// second.
pub async fn shutdown() {
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("cannot listen for SIGINT");
    tokio::select! {
        _ = term.recv() => tracing::info!("received TERM: draining; a second signal exits at once"),
        _ = int.recv() => tracing::info!("received INT: draining; a second signal exits at once"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
}

/// Listens for HUP, TTIN and TTOU for as long as the process runs.
pub fn spawn_control(pool: Arc<Pool>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(SIGTTOU))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("received HUP: reloading the model");
                    if let Err(err) = pool.reload().await {
                        tracing::error!("reload failed, still serving the previous model: {err:#}");
                    }
                }
                _ = ttin.recv() => pool.grow().await,
                _ = ttou.recv() => pool.shrink().await,
            }
        }
    });
    Ok(())
}
