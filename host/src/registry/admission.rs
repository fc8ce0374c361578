//! Admission in front of a model: a bounded number of sequences at once and a bounded queue behind
//! them, so overload is refused at once (the APIs answer 503 with `Retry-After`) instead of piling up.
//! A context holds a turn per sequence it carries: one when it opens, as many as the rows of its steps
//! once it forks (a request's choices decoding as rows of one batch).

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

    /// Most sequences at once.
    pub fn max_active(&self) -> usize {
        self.max_active
    }

    /// Makes `slot` hold a turn for each of `sequences` (at most [`max_active`](Self::max_active)): turns
    /// no longer needed go back at once; for more, the context gives back its own and waits in line for
    /// all it needs, so that no two contexts each keep turns the other waits for (the semaphore hands
    /// turns to the first in line).
    pub async fn resize(&self, slot: &mut Slot, sequences: usize) {
        let wanted = sequences.clamp(1, self.max_active);
        let held = slot.num_permits();
        if wanted < held {
            drop(slot.split(held - wanted));
        } else if wanted > held {
            drop(slot.split(held));
            let grown = self
                .active
                .clone()
                .acquire_many_owned(wanted as u32)
                .await
                .expect("the semaphore is never closed");
            slot.merge(grown);
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
    async fn a_context_holds_a_turn_per_sequence_it_carries() {
        let admission = Arc::new(Admission::new(
            ContextLimits {
                max_active: Some(4),
                max_queued: 1,
            },
            true,
        ));
        let mut forked = admission.admit(|_| {}).await.unwrap();
        admission.resize(&mut forked, 3).await;
        assert_eq!(forked.num_permits(), 3);
        let other = admission.admit(|_| {}).await.unwrap();
        // Growing past what is free waits (its own turns handed to the queue, first in line first).
        let grow = tokio::spawn({
            let admission = admission.clone();
            async move {
                admission.resize(&mut forked, 8).await;
                forked
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!grow.is_finished());
        drop(other);
        let mut forked = grow.await.unwrap();
        assert_eq!(
            forked.num_permits(),
            4,
            "no more than the model's sequences at once"
        );
        admission.resize(&mut forked, 1).await;
        assert_eq!(admission.active.available_permits(), 3);
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
