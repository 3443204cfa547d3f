//! The queue between the decoding threads and the tracker: bounded in bytes, and cancelled
//! from either side.
//!
//! Producers block while the queue is full; nothing else ever blocks on it, so the threads
//! the tracker uses (its rayon pool, ONNX Runtime's) can always run. Cancelling (an error on
//! either side, or the consumer going away, panics included) wakes every blocked producer,
//! and a producer that ends by panicking fails the queue, so the consumer never mistakes
//! it for a producer that finished.

use anyhow::{anyhow, Error};
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Why a push did not happen: the queue was cancelled.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    producers: usize,
    cancelled: bool,
    /// The first error, handed to the consumer once.
    error: Option<Error>,
    stats: QueueStats,
}

/// What the queue saw: how full it got and how often producers had to wait.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStats {
    pub peak_items: usize,
    pub peak_bytes: usize,
    /// Pushes that waited for room.
    pub full_waits: u64,
}

pub struct ByteQueue<T> {
    state: Mutex<State<T>>,
    not_full: Condvar,
    not_empty: Condvar,
    capacity: usize,
}

impl<T> ByteQueue<T> {
    /// A queue holding at most `capacity` bytes (but always at least one item), fed by
    /// `producers` producers, each of which must hold a [`ProducerGuard`].
    pub fn new(capacity: usize, producers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                producers,
                cancelled: false,
                error: None,
                stats: QueueStats::default(),
            }),
            not_full: Condvar::new(),
            not_empty: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The state stays consistent under panics (every update is a single assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an item of `bytes` bytes, waiting while the queue is full.
    pub fn push(&self, item: T, bytes: usize) -> Result<(), Cancelled> {
        let mut s = self.lock();
        let mut waited = false;
        while !s.cancelled && !s.items.is_empty() && s.bytes + bytes > self.capacity {
            waited = true;
            s = self.not_full.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.cancelled {
            return Err(Cancelled);
        }
        s.stats.full_waits += waited as u64;
        s.items.push_back((item, bytes));
        s.bytes += bytes;
        s.stats.peak_items = s.stats.peak_items.max(s.items.len());
        s.stats.peak_bytes = s.stats.peak_bytes.max(s.bytes);
        drop(s);
        self.not_empty.notify_one();
        Ok(())
    }

    /// The next item; `Ok(None)` once every producer is done and the queue is empty; the
    /// first error once the queue failed or was cancelled.
    pub fn pop(&self) -> Result<Option<T>, Error> {
        let mut s = self.lock();
        loop {
            if s.cancelled {
                return Err(s.error.take().unwrap_or_else(|| anyhow!(Cancelled)));
            }
            if let Some((item, bytes)) = s.items.pop_front() {
                s.bytes -= bytes;
                drop(s);
                self.not_full.notify_all();
                return Ok(Some(item));
            }
            if s.producers == 0 {
                return Ok(None);
            }
            s = self.not_empty.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ends the queue with `error` (the first one wins) and wakes everybody.
    pub fn fail(&self, error: Error) {
        let mut s = self.lock();
        if !s.cancelled {
            s.error = Some(error);
        }
        s.cancelled = true;
        s.items.clear();
        s.bytes = 0;
        drop(s);
        self.not_full.notify_all();
        self.not_empty.notify_all();
    }

    pub fn cancel(&self) {
        self.fail(anyhow!(Cancelled));
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    pub fn stats(&self) -> QueueStats {
        self.lock().stats
    }

    /// Held by each producer thread; dropping it (return or panic) marks the producer done.
    pub fn producer(&self) -> ProducerGuard<'_, T> {
        ProducerGuard { queue: self }
    }

    /// Held by the consumer; dropping it (return or panic) cancels the queue, so no producer
    /// stays blocked once nobody takes items.
    pub fn consumer(&self) -> ConsumerGuard<'_, T> {
        ConsumerGuard { queue: self }
    }
}

pub struct ProducerGuard<'a, T> {
    queue: &'a ByteQueue<T>,
}

impl<T> Drop for ProducerGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.queue.fail(anyhow!("a decoding thread panicked"));
        }
        let mut s = self.queue.lock();
        s.producers = s.producers.saturating_sub(1);
        drop(s);
        self.queue.not_empty.notify_all();
    }
}

pub struct ConsumerGuard<'a, T> {
    queue: &'a ByteQueue<T>,
}

impl<T> Drop for ConsumerGuard<'_, T> {
    fn drop(&mut self) {
        self.queue.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn bounded_in_bytes_and_drained_in_order() {
        let q = ByteQueue::new(10, 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _p = q.producer();
                for i in 0..100u32 {
                    q.push(i, 4).unwrap();
                }
            });
            let mut got = Vec::new();
            while let Some(i) = q.pop().unwrap() {
                got.push(i);
                std::thread::sleep(Duration::from_micros(200));
            }
            assert_eq!(got, (0..100).collect::<Vec<_>>());
        });
        let st = q.stats();
        // 10 bytes hold two 4-byte items, never three.
        assert_eq!((st.peak_items, st.peak_bytes), (2, 8));
        assert!(st.full_waits > 0);
    }

    #[test]
    fn an_item_larger_than_the_queue_still_passes() {
        let q = ByteQueue::new(1, 1);
        let p = q.producer();
        q.push("big", 1000).unwrap();
        drop(p);
        assert_eq!(q.pop().unwrap(), Some("big"));
        assert_eq!(q.pop().unwrap(), None);
    }

    #[test]
    fn consumer_going_away_wakes_blocked_producers() {
        let q = ByteQueue::new(1, 3);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    let _p = q.producer();
                    let mut n = 0;
                    while q.push(0u8, 1).is_ok() {
                        n += 1;
                    }
                    n
                });
            }
            let c = q.consumer();
            assert!(q.pop().unwrap().is_some());
            std::thread::sleep(Duration::from_millis(50)); // producers are blocked now
            drop(c);
        });
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_producer_error_reaches_the_consumer_first() {
        let q = ByteQueue::new(100, 2);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _p = q.producer();
                q.fail(anyhow!("video v7: cannot decode"));
            });
            s.spawn(|| {
                let _p = q.producer();
                while q.push(1u8, 1).is_ok() {}
            });
            let e = loop {
                match q.pop() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("ended without the error"),
                    Err(e) => break e,
                }
            };
            assert_eq!(e.to_string(), "video v7: cannot decode");
        });
    }

    #[test]
    fn a_panicking_producer_fails_the_queue() {
        let q = ByteQueue::<u8>::new(100, 1);
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let _p = q.producer();
                panic!("boom");
            })
            .join()
        });
        assert!(r.is_err());
        assert!(q.pop().unwrap_err().to_string().contains("panicked"));
    }
}
