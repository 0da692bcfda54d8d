//! Background tasks that must not die silently: the repository poll, an
//! elastic pool's reaper. A panic inside one (a bug, or input nobody
//! expected) would otherwise end it without a word, and the host would go on
//! looking healthy while models stop loading or instances stop retiring.
//! Each runs as its own tokio task; when it panics, the panic is logged with
//! its message, counted in `wasm_host_background_task_restarts_total{task}`,
//! and the task is started again after a pause.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::core::metrics::Metrics;

/// The pause before a panicked task starts again: short enough to keep the
/// host working, long enough that a task that panics at once does not spin.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs `make()`'s future until it returns; each time it panics instead,
/// logs and counts it, and runs a fresh one.
pub fn spawn<F, Fut>(task: &'static str, metrics: Arc<Metrics>, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(err) if err.is_panic() => {
                    let payload = err.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    tracing::error!(
                        "background task {task} panicked ({message}); it restarts in \
                         {RESTART_AFTER:?}. Please report this as a bug"
                    );
                    metrics.task_restarted(task);
                    tokio::time::sleep(RESTART_AFTER).await;
                }
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_counted_and_restarted_until_it_ends() {
        let metrics = Arc::new(Metrics::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut done = Some(done);
        let counted = Arc::clone(&runs);
        spawn("test", Arc::clone(&metrics), move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let done = if run == 2 { done.take() } else { None };
            async move {
                if let Some(done) = done {
                    let _ = done.send(());
                    return;
                }
                panic!("run {run} fails");
            }
        });
        finished.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let text = metrics.render();
        assert!(
            text.contains("wasm_host_background_task_restarts_total{task=\"test\"} 2"),
            "{text}"
        );
    }
}
