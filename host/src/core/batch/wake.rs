//! Waking a forming batch's leader when its queue delay is up, to the
//! microsecond: tokio's timer counts whole milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long waking a leader takes (the timer thread, then a runtime worker
/// picking the task up), learnt from the wake-ups so far: the timer is set
/// this much early, so that a batch goes when its delay is up rather than a
/// wake-up later. Starts at 50 µs; kept within 0 to 250 µs.
static WAKE_UP_NS: AtomicU64 = AtomicU64::new(50_000);

pub(super) fn wake_up() -> Duration {
    Duration::from_nanos(WAKE_UP_NS.load(Ordering::Relaxed))
}

/// A leader runs again after its timer was set for `fire_at`: if the timer
/// woke it (not a complete batch, earlier), moves the estimate an eighth of
/// the way to how late it ran.
pub(super) fn woke_up_after(fire_at: Instant) {
    let now = Instant::now();
    if now < fire_at {
        return;
    }
    let late = (now - fire_at).as_nanos().min(250_000) as u64;
    let _ = WAKE_UP_NS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(old - old / 8 + late / 8)
    });
}

/// Wakes a forming batch's leader at `at`, to the microsecond rather than
/// on tokio's timer, which counts whole milliseconds and would stretch a
/// 500 µs queue delay to 1–2 ms. One thread for the host sleeps until the
/// earliest deadline (a futex wait, which wakes within tens of µs).
pub(super) fn wake_at(at: Instant, leader: Arc<Notify>) {
    type Due = (std::time::Instant, Arc<Notify>);
    static TIMER: OnceLock<mpsc::Sender<Due>> = OnceLock::new();
    let timer = TIMER.get_or_init(|| {
        let (sender, due) = mpsc::channel::<Due>();
        std::thread::Builder::new()
            .name("batch-timer".into())
            .spawn(move || {
                // Wake at the deadline, not up to the default 50 µs of
                // timer slack after it.
                // SAFETY: PR_SET_TIMERSLACK takes a number and changes
                // only this thread's timers.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
                let mut waiting: Vec<Due> = Vec::new();
                loop {
                    let next = waiting.iter().map(|(at, _)| *at).min();
                    let received = match next {
                        None => due.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => due
                            .recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
                    };
                    match received {
                        Ok(entry) => waiting.push(entry),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = std::time::Instant::now();
                    waiting.retain(|(at, leader)| {
                        let due = *at <= now;
                        if due {
                            leader.notify_one();
                        }
                        !due
                    });
                }
            })
            .expect("start the batch timer thread");
        sender
    });
    if timer.send((at.into_std(), Arc::clone(&leader))).is_err() {
        // No timer: go at once rather than wait without one.
        leader.notify_one();
    }
}
