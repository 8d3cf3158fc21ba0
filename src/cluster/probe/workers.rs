//! Running the probe round's work on many threads: [`at_once`] (scoped
//! threads for a command's one-off fan-out, `filerep state`) and
//! [`Workers`] (threads made once, for the arbiter's every round).

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f` of every item, at most `in_flight` at once (scoped threads taking
/// the next item as they finish): the answers in the order of `items`.
/// Probing hundreds of segments, a hung one costs its own timeout.
pub fn at_once<T: Sync, R: Default + Send>(items: &[T], in_flight: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found: Mutex<Vec<R>> = Mutex::new(items.iter().map(|_| R::default()).collect());
    std::thread::scope(|scope| {
        for _ in 0..in_flight.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                lock(&found)[i] = r;
            });
        }
    });
    found.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// A fixed set of threads, made once, that run jobs handed to them: the
/// rounds' probes and orders reuse them instead of starting threads every
/// round (hundreds of segments, a round every few hundred milliseconds).
pub(super) struct Workers {
    tx: crossbeam_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl Workers {
    pub(super) fn new(count: usize) -> Result<Workers> {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for _ in 0..count.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("filerep-probe".into())
                .spawn(move || {
                    // Ends when the sender is dropped.
                    for job in rx {
                        job();
                    }
                })
                .map_err(|e| Error::io("spawning the probe threads", e))?;
        }
        Ok(Workers { tx })
    }

    /// `f` of every item on the workers: the answers in the order of `items`.
    pub(super) fn map<T, R>(&self, items: Vec<T>, f: impl Fn(T) -> R + Send + Sync + 'static) -> Vec<Option<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
    {
        let f = Arc::new(f);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let (f, done_tx) = (f.clone(), done_tx.clone());
            let job: Box<dyn FnOnce() + Send> = Box::new(move || {
                let _ = done_tx.send((i, f(item)));
            });
            if let Err(e) = self.tx.send(job) {
                // No worker left (cannot happen while self lives): run it here.
                (e.0)();
            }
        }
        drop(done_tx);
        let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
        for (i, r) in done_rx {
            out[i] = Some(r);
        }
        out
    }
}
