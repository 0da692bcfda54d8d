//! How many instances a pool has: an elastic pool grows with demand (up to
//! its maximum) and retires instances idle for its idle timeout (down to its
//! minimum, which may be 0); any pool is resized by the repository API, TTIN
//! and TTOU with no failed request.

use super::*;

impl<B: Boot> Pool<B> {
    /// A request found every instance busy: an elastic pool below its
    /// maximum boots one more for it. The new instance joins the pool like a
    /// returning one, so it goes to the longest-waiting request, and it is
    /// kept even if the request that asked for it gives up.
    pub(super) fn grow_for_demand(self: &Arc<Self>) {
        if self.config.min_instances.is_none() {
            return;
        }
        let max = self.config.max_instances;
        let grown = self
            .target
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t < max).then_some(t + 1)
            });
        if grown.is_err() {
            return;
        }
        self.booting.fetch_add(1, Ordering::SeqCst);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = pool.add_instance(true).await {
                pool.target.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    model = %pool.metrics.model_name(),
                    "could not boot an instance for waiting requests: {}; they wait for the \
                     running ones",
                    crate::runtime::root_cause(&err)
                );
            }
            pool.booting.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Retires instances that sat idle for `idle_timeout`, longest idle
    /// first, while an elastic pool is above its minimum.
    /// Returns how many retired.
    pub(super) fn retire_idle(&self) -> usize {
        let Some(min) = self.config.min_instances else {
            return 0;
        };
        let idle_timeout = self.config.idle_timeout;
        let mut retired = 0;
        loop {
            if self.target.load(Ordering::SeqCst) <= min {
                return retired;
            }
            let mut idle = self.idle.lock().unwrap();
            match idle.front() {
                Some(oldest) if oldest.since.elapsed() >= idle_timeout => {}
                _ => return retired,
            }
            // The permit that stands for it, so that no request is promised
            // this instance; none free means requests are taking them now.
            let Ok(permit) = self.free.try_acquire() else {
                return retired;
            };
            permit.forget();
            let instance = idle.pop_front().expect("checked above").worker;
            drop(idle);
            self.target.fetch_sub(1, Ordering::SeqCst);
            self.retire(
                instance,
                &format!("idle for {idle_timeout:?} (--idle-timeout)"),
            );
            retired += 1;
        }
    }

    /// Fewest instances a resize may leave: 1, or an elastic pool's minimum.
    pub(super) fn floor(&self) -> usize {
        self.config.min_instances.unwrap_or(1)
    }

    /// Changes the number of instances to `wanted` (within the pool's floor
    /// and maximum) with no failed request: new instances boot before they
    /// count; surplus ones leave when idle. Returns the new target. An
    /// elastic pool then follows its load again from there.
    pub async fn resize(&self, wanted: usize) -> wasmtime::Result<usize> {
        let _reshaping = self.reshaping.lock().await;
        let wanted = wanted.clamp(self.floor(), self.config.max_instances);
        let target = self.target.load(Ordering::SeqCst);
        if wanted > target {
            for added in target..wanted {
                self.target.store(added + 1, Ordering::SeqCst);
                if let Err(err) = self.add_instance(true).await {
                    self.target.store(added, Ordering::SeqCst);
                    return Err(err);
                }
            }
        } else if wanted < target {
            self.target.store(wanted, Ordering::SeqCst);
            self.remove_surplus("the pool was shrunk");
        }
        Ok(wanted)
    }

    /// TTIN: one more instance, up to the pool's maximum.
    pub async fn grow(&self) {
        let target = self.target.load(Ordering::SeqCst);
        if target >= self.config.max_instances {
            tracing::warn!(
                "TTIN ignored: already at {target} instances, the most this pool was sized for"
            );
            return;
        }
        match self.resize(target + 1).await {
            Ok(n) => tracing::info!("TTIN: {n} instances"),
            Err(err) => tracing::error!("TTIN failed: {}", crate::runtime::root_cause(&err)),
        }
    }

    /// TTOU: one instance fewer, never below the floor. An idle instance
    /// goes at once; otherwise the next one to finish its request.
    pub async fn shrink(&self) {
        let target = self.target.load(Ordering::SeqCst);
        if target <= self.floor() {
            tracing::warn!("TTOU ignored: {target} instances is this pool's minimum");
            return;
        }
        let _ = self.resize(target - 1).await;
        tracing::info!("TTOU: shrinking to {} instances", target - 1);
    }
}

/// Retires an elastic pool's idle instances for as long as the pool lives,
/// checking a few times per idle timeout (so an instance retires at most a
/// quarter late).
pub(super) fn spawn_reaper<B: Boot>(pool: &Arc<Pool<B>>, idle_timeout: Duration) {
    let weak = Arc::downgrade(pool);
    let every = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let metrics = Arc::clone(pool.metrics.host());
    crate::core::supervise::spawn("elastic-reaper", metrics, move || {
        let weak = weak.clone();
        async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                if pool.retire_idle() > 0 {
                    release_free_memory();
                }
            }
        }
    });
}
