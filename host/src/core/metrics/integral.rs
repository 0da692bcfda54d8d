//! Exact integrals over time ([`Integral`]) and latency buckets
//! ([`Buckets`]) the status page reads.

use super::*;

/// The integral over time of a level that moves up and down by one (busy
/// instances, pending requests), brought up to date at every move and when
/// read, so that it is exact at any instant. A mutex rather than atomics:
/// level, time and sum must move together, or a reading could go backwards,
/// which Prometheus takes for a counter reset.
#[derive(Default)]
pub struct Integral(Mutex<IntegralState>);

#[derive(Default)]
struct IntegralState {
    level: u64,
    since: Option<Instant>,
    /// Level × nanoseconds, summed.
    sum_ns: u128,
}

impl IntegralState {
    fn advance(&mut self, now: Instant) {
        if let Some(since) = self.since {
            self.sum_ns += u128::from(self.level) * now.saturating_duration_since(since).as_nanos();
            // Times read on different threads can arrive out of order.
            self.since = Some(now.max(since));
        } else {
            self.since = Some(now);
        }
    }
}

impl Integral {
    pub(super) fn starting_at(seconds: f64) -> Integral {
        Integral(Mutex::new(IntegralState {
            sum_ns: (seconds * 1e9) as u128,
            ..IntegralState::default()
        }))
    }

    /// The level rose by one at `at`. The caller passes the time it has
    /// already read for the same event; an `at` before the last move counts
    /// as that move's time, so the integral never goes backwards.
    pub fn rise_at(&self, at: Instant) {
        let mut state = self.0.lock().unwrap();
        state.advance(at);
        state.level += 1;
    }

    /// The level fell by one at `at` (see [`Integral::rise_at`]).
    pub fn fall_at(&self, at: Instant) {
        let mut state = self.0.lock().unwrap();
        state.advance(at);
        state.level = state.level.saturating_sub(1);
    }

    /// Level-seconds so far.
    pub fn seconds(&self) -> f64 {
        let mut state = self.0.lock().unwrap();
        state.advance(Instant::now());
        state.sum_ns as f64 / 1e9
    }

    /// Brings a counter up to the integral's value, under the same lock,
    /// so that two scrapes at once cannot add the same time twice.
    pub(super) fn export(&self, counter: &Counter<f64, AtomicU64>) {
        let mut state = self.0.lock().unwrap();
        state.advance(Instant::now());
        let delta = state.sum_ns as f64 / 1e9 - counter.get();
        if delta > 0.0 {
            counter.inc_by(delta);
        }
    }
}

/// Success latencies in the same buckets as the histograms, readable (the
/// client crate's histograms are write-only): the status page takes p50 and
/// p99 from the difference between two readings.
pub struct Buckets([AtomicU64; BUCKETS as usize + 1]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Buckets {
    pub(super) fn observe(&self, took: Duration) {
        let ratio = took.as_secs_f64() / FIRST_BUCKET;
        let index = if ratio <= 1.0 {
            0
        } else {
            (ratio.log2().ceil() as usize).min(BUCKETS as usize)
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Each bucket's upper bound in seconds (the last is unbounded: `null`)
    /// and its count (not cumulative).
    pub fn json(&self) -> serde_json::Value {
        let bounds: Vec<Option<f64>> = (0..=BUCKETS as i32)
            .map(|i| (i < i32::from(BUCKETS)).then(|| FIRST_BUCKET * 2f64.powi(i)))
            .collect();
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        serde_json::json!({ "bounds": bounds, "counts": counts })
    }
}
