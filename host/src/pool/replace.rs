//! What happens to an instance after a request: back to the pool, retired
//! (the pool shrank), or replaced (a fault, or recycling after
//! `--max-requests`), with a failed boot retried with backoff for as long as
//! the pool is in use.

use super::*;

impl<B: Boot> Pool<B> {
    /// Drops an instance for good.
    pub(super) fn retire(&self, instance: B::Worker, why: &str) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        let id = instance.id();
        self.metrics.instance_gone(id);
        tracing::info!(instance = id, "retired instance {id}: {why}");
    }

    /// Throws an instance away and boots a new one in its place, off the
    /// request's path. A failed boot is retried with backoff for as long as
    /// the pool is in use; meanwhile the pool is one short, and says so.
    pub(super) fn replace(self: &Arc<Self>, old: B::Worker, kind: &'static str, cause: String) {
        self.metrics.replaced(kind);
        self.metrics.instance_gone(old.id());
        // Weak: a pool that was unloaded must not be kept alive (with its
        // memory) by a replacement that keeps failing.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let old_id = old.id();
            // Drop first: the pooling allocator's slot is then free for the
            // replacement.
            drop(old);
            let started = Instant::now();
            let mut missing = false;
            let boot = || {
                let weak: Weak<Pool<B>> = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(pool) => pool.new_instance().await.map(|i| Some((pool, i))),
                        None => Ok(None),
                    }
                }
            };
            let booted = retry_with_backoff(boot, |err, delay| {
                let Some(pool) = weak.upgrade() else {
                    return false;
                };
                pool.metrics.boot_failed();
                if !missing {
                    missing = true;
                    pool.total.fetch_sub(1, Ordering::SeqCst);
                    pool.missing.fetch_add(1, Ordering::SeqCst);
                }
                tracing::error!(
                    old = old_id,
                    "could not replace instance {old_id} ({cause}): {}; \
                     retrying in {delay:?}, one instance short until then",
                    crate::runtime::root_cause(err)
                );
                true
            })
            .await;
            let Some(Some((pool, mut new))) = booted else {
                return;
            };
            if missing {
                pool.missing.fetch_sub(1, Ordering::SeqCst);
                pool.total.fetch_add(1, Ordering::SeqCst);
            }
            pool.replaced.fetch_add(1, Ordering::SeqCst);
            let new_id = new.id();
            pool.metrics
                .event(format!("instance {old_id} replaced by {new_id}: {cause}"));
            tracing::warn!(
                old = old_id,
                new = new_id,
                "replaced instance {old_id} with {new_id} in {:?}: {cause}",
                started.elapsed()
            );
            if let Some(bytes) = new.memory_changed() {
                pool.metrics.instance_memory(new_id, bytes);
            }
            pool.give_back(new, Instant::now());
        });
    }

    /// Where a returning instance goes: back to the pool, replaced, or retired.
    /// An instance came back from a lease at `now`, perhaps poisoned.
    pub(super) fn take_back(
        self: &Arc<Self>,
        mut instance: B::Worker,
        fault: Option<(&'static str, String)>,
        now: Instant,
    ) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.metrics.busy_ends(now.into_std());
        if let Some((kind, cause)) = fault {
            self.replace(instance, kind, cause);
        } else if self.total.load(Ordering::SeqCst) > self.target.load(Ordering::SeqCst) {
            self.retire(instance, "the pool was shrunk");
        } else if instance.recycle_due() {
            let cause = format!(
                "recycled after {} requests (--max-requests)",
                instance.served()
            );
            self.replace(instance, "recycled", cause);
        } else {
            if let Some(bytes) = instance.memory_changed() {
                self.metrics.instance_memory(instance.id(), bytes);
            }
            self.give_back(instance, now);
        }
    }

    /// Removes idle instances while the pool has more than its target: each
    /// removal takes a permit, so the semaphore and the stack stay in step.
    /// Busy ones are retired when they come back.
    pub(super) fn remove_surplus(&self, why: &str) {
        while self.total.load(Ordering::SeqCst) > self.target.load(Ordering::SeqCst) {
            let Ok(permit) = self.free.try_acquire() else {
                return;
            };
            permit.forget();
            let instance = self.idle.lock().unwrap().pop_back();
            let instance = instance.expect("a permit always has an idle instance behind it");
            self.retire(instance.worker, why);
        }
    }
}

/// The first wait after a failed boot; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds, waiting between failures with
/// exponential backoff. `failed` sees each error and the wait before the
/// next try, and returns whether to keep trying. A boot that failed once
/// (the pooling allocator out of slots, a transient host error) usually
/// succeeds later; giving up for good would leave the pool short forever.
pub(super) async fn retry_with_backoff<T, E, F>(
    mut attempt: impl FnMut() -> F,
    mut failed: impl FnMut(&E, Duration) -> bool,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => {
                if !failed(&err, delay) {
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A deterministic spread in `0..=max`, from the instance id: no random
/// number generator needed to keep instances from recycling in lockstep.
pub(super) fn jitter(id: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    // splitmix64
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % max.saturating_add(1)
}
