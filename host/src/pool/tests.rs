//! The pool's rules with fake instances under tokio's paused clock.

use std::cell::RefCell;
use std::time::Duration;

use super::replace::{jitter, retry_with_backoff};

#[tokio::test]
async fn a_failed_boot_is_retried_with_doubling_backoff_until_it_succeeds() {
    let attempts = RefCell::new(Vec::new());
    let started = tokio::time::Instant::now();
    let booted = retry_with_backoff(
        || {
            attempts.borrow_mut().push(started.elapsed());
            let n = attempts.borrow().len();
            async move { if n < 4 { Err("no slot") } else { Ok(n) } }
        },
        |_, _| true,
    )
    .await;
    assert_eq!(booted, Some(4));
    // Waits of 10, 20 and 40 ms between the four tries (real time: a
    // busy machine may stretch them, never shorten them).
    let at: Vec<Duration> = attempts.borrow().clone();
    for (gap, want) in at.windows(2).zip([10, 20, 40]) {
        let gap = gap[1] - gap[0];
        assert!(gap >= Duration::from_millis(want), "{at:?}");
    }
    assert!(at[3] < Duration::from_secs(2), "{at:?}");
}

#[tokio::test]
async fn retrying_stops_when_the_instance_is_no_longer_wanted() {
    let mut tries = 0;
    let booted: Option<()> = retry_with_backoff(
        || async { Err("no slot") },
        |_, _| {
            tries += 1;
            tries < 3
        },
    )
    .await;
    assert_eq!((booted, tries), (None, 3));
}

#[test]
fn jitter_spreads_instances_within_its_bound() {
    let values: Vec<u64> = (1..=64).map(|id| jitter(id, 10)).collect();
    assert!(values.iter().all(|&v| v <= 10));
    let distinct: std::collections::HashSet<_> = values.iter().collect();
    assert!(distinct.len() >= 8, "{values:?}");
    assert_eq!(jitter(7, 0), 0);
}

/// The pool's rules with fake instances: no wasmtime, and tokio's clock
/// paused, so waits and timeouts are exact and instant.
mod fake {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::super::*;
    use crate::core::metrics::Metrics;

    /// A fake instance: its input's first byte says what to do.
    pub struct Fake {
        id: InstanceId,
        served: u64,
    }

    /// 0: answer after 100 ms; 1: trap at once; 2: run for 10 s.
    pub fn input(action: u8) -> Vec<Tensor> {
        vec![Tensor {
            datatype: crate::runtime::contract::Datatype::Uint8,
            shape: vec![1],
            data: vec![action],
        }]
    }

    impl Worker for Fake {
        fn id(&self) -> InstanceId {
            self.id
        }
        fn memory_changed(&mut self) -> Option<usize> {
            None
        }
        fn recycle_due(&self) -> bool {
            false
        }
        fn served(&self) -> u64 {
            self.served
        }
        fn predict(
            &mut self,
            inputs: &[Tensor],
            _: &[(String, String)],
            _: std::time::Instant,
            timeout: Duration,
        ) -> impl Future<Output = Result<Vec<Tensor>, Fault>> + Send {
            self.served += 1;
            let action = inputs[0].data[0];
            async move {
                match action {
                    1 => Err(Fault::Trap("asked to trap".into())),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Err(Fault::Timeout(timeout))
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(Vec::new())
                    }
                }
            }
        }
    }

    /// Boots fakes; fails the boots numbered in `fail` (0 is the first).
    pub struct FakeBoot {
        pub boots: Arc<AtomicUsize>,
        pub fail: Vec<usize>,
    }

    impl Boot for FakeBoot {
        type Worker = Fake;
        fn boot(
            &self,
            id: InstanceId,
            _: Option<u64>,
        ) -> impl Future<Output = wasmtime::Result<Fake>> + Send {
            let n = self.boots.fetch_add(1, Ordering::SeqCst);
            let fails = self.fail.contains(&n);
            async move {
                if fails {
                    Err(wasmtime::Error::msg("no slot"))
                } else {
                    Ok(Fake { id, served: 0 })
                }
            }
        }
    }

    pub async fn pool(instances: usize, max_queue: usize, fail: Vec<usize>) -> Arc<Pool<FakeBoot>> {
        let config = PoolConfig {
            instances,
            max_instances: instances * 2,
            min_instances: None,
            idle_timeout: Duration::from_secs(1),
            memory_limit: 1 << 20,
            queue_timeout: Duration::from_secs(1),
            max_queue,
            max_requests: None,
            max_requests_jitter: 0,
        };
        start(config, fail).await
    }

    /// An elastic pool from `min` to `max`, idle timeout 1 s.
    pub async fn elastic(min: usize, max: usize, fail: Vec<usize>) -> Arc<Pool<FakeBoot>> {
        let config = PoolConfig {
            instances: min,
            max_instances: max,
            min_instances: Some(min),
            idle_timeout: Duration::from_secs(1),
            memory_limit: 1 << 20,
            queue_timeout: Duration::from_secs(1),
            max_queue: 64,
            max_requests: None,
            max_requests_jitter: 0,
        };
        start(config, fail).await
    }

    async fn start(config: PoolConfig, fail: Vec<usize>) -> Arc<Pool<FakeBoot>> {
        let metrics = Arc::new(Metrics::new()).for_model("fake", "1", false);
        let boot = FakeBoot {
            boots: Arc::new(AtomicUsize::new(0)),
            fail,
        };
        Pool::start(boot, config, metrics, Arc::new(AtomicU64::new(1)))
            .await
            .unwrap()
    }
}

use std::sync::{Arc, Mutex};

use fake::{elastic, input, pool};
use tokio::time::Instant;

use super::Overloaded;

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_served_in_arrival_order_and_time_out_with_503() {
    let pool = pool(1, 8, vec![]).await;
    let mut first = pool.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..3)
        .map(|n| {
            let (pool, order) = (Arc::clone(&pool), Arc::clone(&order));
            tokio::spawn(async move {
                // Arrive 10 ms apart.
                tokio::time::sleep(Duration::from_millis(10 * n)).await;
                let mut lease = pool.acquire().await?;
                order.lock().unwrap().push(n);
                lease
                    .predict(&input(0), &[], Duration::from_secs(1))
                    .await
                    .unwrap();
                Ok::<_, Overloaded>(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.status().queued, 3);
    first
        .predict(&input(0), &[], Duration::from_secs(1))
        .await
        .unwrap();
    drop(first);
    // 3 × 100 ms of work behind one instance: the third waited 350 ms
    // of its 1 s queue timeout, and all were served in order.
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    // A request that waits longer than the queue timeout gets Waited.
    let _held = pool.acquire().await.unwrap();
    let started = Instant::now();
    let late = pool.acquire().await.err().unwrap();
    assert_eq!(late, Overloaded::Waited(Duration::from_secs(1)));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let pool = pool(1, 1, vec![]).await;
    let _held = pool.acquire().await.unwrap();
    let waiting = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.acquire().await.map(drop) })
    };
    tokio::task::yield_now().await;
    let refused = pool.acquire().await.err().unwrap();
    assert_eq!(
        refused,
        Overloaded::QueueFull {
            instances: 1,
            max_queue: 1
        }
    );
    drop(_held);
    waiting.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_instance_whose_call_answered_goes_back_to_the_pool_unreplaced() {
    let pool = pool(1, 8, vec![]).await;
    let lease = pool.acquire().await.unwrap();
    let first = lease.instance_id();
    // A lease dropped before any call, then one after a clean call.
    drop(lease);
    let mut lease = pool.acquire().await.unwrap();
    assert_eq!(lease.instance_id(), first);
    lease
        .predict(&input(0), &[], Duration::from_secs(1))
        .await
        .unwrap();
    drop(lease);
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.instance_id(), first);
    assert_eq!(pool.status().replaced, 0);
}

#[tokio::test(start_paused = true)]
async fn a_trapped_or_abandoned_instance_is_replaced_with_a_new_id() {
    let pool = pool(1, 8, vec![]).await;
    let mut lease = pool.acquire().await.unwrap();
    let first = lease.instance_id();
    assert!(
        lease
            .predict(&input(1), &[], Duration::from_secs(1))
            .await
            .is_err()
    );
    drop(lease);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut lease = pool.acquire().await.unwrap();
    let second = lease.instance_id();
    assert_ne!(second, first);
    // A call whose future is dropped half-way (a client that left).
    let long = input(2);
    {
        let call = lease.predict(&long, &[], Duration::from_secs(60));
        let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
    }
    drop(lease);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let lease = pool.acquire().await.unwrap();
    assert_ne!(lease.instance_id(), second);
    let status = pool.status();
    assert_eq!((status.total, status.replaced), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_fails_to_boot_is_retried_and_the_shortfall_shows() {
    // Boots 0 and 1 start the pool; 2 and 3 (the first replacement's
    // first two tries) fail.
    let pool = pool(2, 8, vec![2, 3]).await;
    let mut lease = pool.acquire().await.unwrap();
    assert!(
        lease
            .predict(&input(1), &[], Duration::from_secs(1))
            .await
            .is_err()
    );
    drop(lease);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = pool.status();
    assert_eq!(
        (status.total, status.missing),
        (1, 1),
        "one short while retrying"
    );
    assert!(pool.ready(), "a pool short of its target still serves");
    // The retries wait 10 ms, then 20 ms.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let status = pool.status();
    assert_eq!((status.total, status.missing), (2, 0), "{status:?}");
    assert!(pool.ready());
}

#[tokio::test(start_paused = true)]
async fn a_resize_grows_at_once_and_shrinks_as_instances_come_back() {
    let pool = pool(2, 8, vec![]).await;
    assert_eq!(pool.resize(4).await.unwrap(), 4);
    assert_eq!(pool.status().total, 4);
    let (busy, also_busy) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    assert_eq!(pool.resize(1).await.unwrap(), 1);
    // Idle ones leave at once; busy ones as they come back, until the
    // target is met.
    assert_eq!(pool.status().total, 2);
    drop(busy);
    assert_eq!(pool.status().total, 1);
    drop(also_busy);
    assert_eq!((pool.status().total, pool.status().idle), (1, 1));
    assert_eq!(
        pool.resize(100).await.unwrap(),
        4,
        "never past the pool's maximum"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_scaled_to_zero_boots_an_instance_for_its_first_request() {
    let pool = elastic(0, 2, vec![]).await;
    assert_eq!(pool.status().total, 0);
    assert!(pool.ready(), "an idle pool at zero is ready to serve");
    let mut lease = pool.acquire().await.unwrap();
    lease
        .predict(&input(0), &[], Duration::from_secs(1))
        .await
        .unwrap();
    drop(lease);
    assert_eq!(pool.status().total, 1);
    // Idle for the timeout (checked every 250 ms): back to zero.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let status = pool.status();
    assert_eq!((status.total, status.target, status.idle), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_burst_grows_an_elastic_pool_to_its_max_and_idle_instances_retire_to_its_min() {
    let pool = elastic(1, 4, vec![]).await;
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let (pool, peak) = (Arc::clone(&pool), Arc::clone(&peak));
            tokio::spawn(async move {
                let mut lease = pool.acquire().await?;
                peak.fetch_max(pool.status().total, std::sync::atomic::Ordering::SeqCst);
                lease
                    .predict(&input(0), &[], Duration::from_secs(1))
                    .await
                    .unwrap();
                Ok::<_, Overloaded>(lease.instance_id())
            })
        })
        .collect();
    let mut served = std::collections::HashSet::new();
    for request in requests {
        served.insert(request.await.unwrap().unwrap());
    }
    // 12 requests of 100 ms on 4 instances: every one served, by 4
    // instances, never more.
    assert_eq!(served.len(), 4);
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(pool.status().total, 4);
    // Within the idle timeout nothing retires; after it, all but one.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.status().total, 4);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = pool.status();
    assert_eq!((status.total, status.target, status.idle), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_instance_that_fails_to_boot_on_demand_leaves_its_request_to_a_running_one() {
    // Boot 0 starts the pool; boot 1, the one for the second request, fails.
    let pool = elastic(1, 2, vec![1]).await;
    let mut first = pool.acquire().await.unwrap();
    let second = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let mut lease = pool.acquire().await?;
            lease
                .predict(&input(0), &[], Duration::from_secs(1))
                .await
                .unwrap();
            Ok::<_, Overloaded>(lease.instance_id())
        })
    };
    first
        .predict(&input(0), &[], Duration::from_secs(1))
        .await
        .unwrap();
    let id = first.instance_id();
    drop(first);
    assert_eq!(second.await.unwrap().unwrap(), id);
    let status = pool.status();
    assert_eq!((status.total, status.target, status.booting), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_fixed_pool_never_grows_by_itself() {
    let pool = pool(1, 8, vec![]).await;
    let _held = pool.acquire().await.unwrap();
    let waiting = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.acquire().await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((pool.status().total, pool.status().queued), (1, 1));
    drop(_held);
    waiting.await.unwrap().unwrap();
}
