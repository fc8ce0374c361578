//! Admission in front of a model: a bounded number of sequences at once and a bounded queue behind
//! them, so overload is refused at once (the APIs answer 503 with `Retry-After`) instead of piling up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sequences at once where a model merges its contexts' steps into shared passes: a pass of the default
/// model on OpenVINO exact takes 13 ms for one sequence, 25 for 8, 32 for 16 and 50 for 32, so many at
/// once cost little more than one.
pub const BATCHED_SEQUENCES: usize = 32;

/// Sequences at once where each context computes alone: more at once only share the cores.
pub const ALONE_SEQUENCES: usize = 8;

/// How many sequences one model serves at once, and how many may wait for a turn.
#[derive(Debug, Clone, Copy)]
pub struct ContextLimits {
    /// None: [`BATCHED_SEQUENCES`] or [`ALONE_SEQUENCES`], by whether the model batches its contexts.
    pub max_active: Option<usize>,
    pub max_queued: usize,
}

impl ContextLimits {
    /// Sequences at once for a model that batches its contexts' passes (`batched`) or not.
    pub fn active(&self, batched: bool) -> usize {
        let default = if batched {
            BATCHED_SEQUENCES
        } else {
            ALONE_SEQUENCES
        };
        self.max_active.unwrap_or(default).max(1)
    }
}

/// `max_active` execution contexts at a time, up to `max_queued` requests waiting, and past that an
/// immediate refusal.
pub struct Admission {
    active: Arc<Semaphore>,
    queued: AtomicUsize,
    max_active: usize,
    max_queued: usize,
}

/// The model's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("model is at capacity: {active} sequences running and {queued} waiting")]
pub struct AtCapacity {
    pub active: usize,
    pub queued: usize,
}

/// A sequence's turn; it ends when dropped.
pub type Slot = OwnedSemaphorePermit;

impl Admission {
    /// Admission to a model that batches its contexts' passes (`batched`) or not.
    pub fn new(limits: ContextLimits, batched: bool) -> Self {
        let max_active = limits.active(batched);
        Self {
            active: Arc::new(Semaphore::new(max_active)),
            queued: AtomicUsize::new(0),
            max_active,
            max_queued: limits.max_queued,
        }
    }

    /// Waits for a turn, or refuses at once when the queue is full; `on_queue` hears +1 when the request
    /// starts waiting and -1 when it stops (however the wait ends, the waiter being dropped included).
    pub async fn admit(&self, on_queue: impl Fn(i64)) -> Result<Slot, AtCapacity> {
        if let Ok(slot) = self.active.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(AtCapacity {
                active: self.max_active,
                queued,
            });
        }
        on_queue(1);
        struct Leave<'a, F: Fn(i64)>(&'a AtomicUsize, F);
        impl<F: Fn(i64)> Drop for Leave<'_, F> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
                (self.1)(-1);
            }
        }
        let _leave = Leave(&self.queued, on_queue);
        Ok(self
            .active
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    #[test]
    fn a_model_that_batches_admits_more_sequences_unless_told() {
        let default = ContextLimits {
            max_active: None,
            max_queued: 0,
        };
        assert_eq!(default.active(true), BATCHED_SEQUENCES);
        assert_eq!(default.active(false), ALONE_SEQUENCES);
        for (told, admitted) in [(3, 3), (0, 1)] {
            let limits = ContextLimits {
                max_active: Some(told),
                ..default
            };
            assert_eq!(
                (limits.active(true), limits.active(false)),
                (admitted, admitted)
            );
        }
    }

    #[tokio::test]
    async fn waits_in_a_bounded_queue_then_refuses() {
        let admission = Arc::new(Admission::new(
            ContextLimits {
                max_active: Some(1),
                max_queued: 1,
            },
            true,
        ));
        let waiting = Arc::new(AtomicI64::new(0));
        let first = admission.admit(|_| {}).await.unwrap();
        let queued = {
            let (admission, waiting) = (admission.clone(), waiting.clone());
            tokio::spawn(async move {
                admission
                    .admit(|d| {
                        waiting.fetch_add(d, Ordering::SeqCst);
                    })
                    .await
                    .map(drop)
            })
        };
        while waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = admission.admit(|_| {}).await.unwrap_err();
        assert_eq!((refused.active, refused.queued), (1, 1));
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(waiting.load(Ordering::SeqCst), 0, "left the queue");
    }
}
