//! Unix signals, as gunicorn users expect them: TERM and INT drain and exit
//! (a second one exits at once), HUP reloads every model whose file changed,
//! TTIN and TTOU add and remove one instance of a single-model host.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::lifecycle::registry::Registry;

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

/// What a control signal asks of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Reload,
    Grow,
    Shrink,
}

impl Control {
    fn signal(self) -> &'static str {
        match self {
            Control::Reload => "HUP",
            Control::Grow => "TTIN",
            Control::Shrink => "TTOU",
        }
    }
}

/// Listens for HUP, TTIN and TTOU for as long as the process runs.
///
/// One task receives the signals and another applies them, in order, one at
/// a time: a signal that arrives while a reload runs waits its turn (and the
/// log says so) instead of being lost, and HUPs that pile up during a reload
/// are folded into one more reload, which reads the newest file anyway.
pub fn spawn_control(registry: Arc<Registry>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(SIGTTOU))?;
    let (send, mut receive) = mpsc::unbounded_channel::<Control>();
    // Set while a command is being applied, and while a reload is queued.
    let applying = Arc::new(AtomicBool::new(false));
    let reload_queued = Arc::new(AtomicBool::new(false));
    {
        let (applying, reload_queued) = (Arc::clone(&applying), Arc::clone(&reload_queued));
        tokio::spawn(async move {
            loop {
                let control = tokio::select! {
                    _ = hup.recv() => Control::Reload,
                    _ = ttin.recv() => Control::Grow,
                    _ = ttou.recv() => Control::Shrink,
                };
                let name = control.signal();
                if control == Control::Reload && reload_queued.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        "received HUP with a reload already queued: that reload covers it"
                    );
                    continue;
                }
                if applying.load(Ordering::SeqCst) {
                    tracing::info!(
                        "received {name} while another signal is being applied: \
                         it will be applied next"
                    );
                }
                if send.send(control).is_err() {
                    return;
                }
            }
        });
    }
    tokio::spawn(async move {
        while let Some(control) = receive.recv().await {
            applying.store(true, Ordering::SeqCst);
            match control {
                Control::Reload => {
                    reload_queued.store(false, Ordering::SeqCst);
                    tracing::info!("received HUP: reloading the models whose files changed");
                    registry.reload_changed().await;
                }
                Control::Grow | Control::Shrink => match registry.only() {
                    Ok(served) if control == Control::Grow => {
                        let wanted = served.pool.status().target + 1;
                        if wanted > served.settings.pool.max_instances {
                            served.pool.grow().await;
                        } else {
                            match registry.resize(&served, wanted).await {
                                Ok(n) => tracing::info!("TTIN: {n} instances"),
                                Err(why) => tracing::warn!("TTIN refused: {why}"),
                            }
                        }
                    }
                    Ok(served) => served.pool.shrink().await,
                    Err(_) => tracing::warn!(
                        "{} ignored: it resizes a host that serves one model; resize a model \
                         with the repository API (a load whose config sets instances)",
                        control.signal()
                    ),
                },
            }
            applying.store(false, Ordering::SeqCst);
        }
    });
    Ok(())
}
