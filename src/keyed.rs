//! `KeyedLocks`: one async lock per key (a deployment id, an image), made on demand and
//! forgotten when unused, for work that must not overlap for one key but may for others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One lock per key, held while the work for that key runs; entries go when unused.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Runs `work` while holding the lock of `key`.
    pub async fn with<T>(&self, key: &str, work: impl Future<Output = T>) -> T {
        let lock = self.map().entry(key.to_owned()).or_default().clone();
        let result = {
            let _held = lock.lock().await;
            work.await
        };
        let mut map = self.map();
        // Only the map and this caller hold it: nobody waits, forget it.
        if Arc::strong_count(&lock) == 2 {
            map.remove(key);
        }
        result
    }

    /// How many callers hold or wait for the lock of `key`.
    pub fn users(&self, key: &str) -> usize {
        self.map()
            .get(key)
            .map_or(0, |lock| Arc::strong_count(lock) - 1)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedLocks;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_of_one_key_share_the_work() {
        let locks = Arc::new(KeyedLocks::default());
        let done = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, done, runs) = (locks.clone(), done.clone(), runs.clone());
                tokio::spawn(async move {
                    locks
                        .with("image:1", async {
                            // The check-then-work of ensure_image.
                            if done.load(Ordering::SeqCst) == 0 {
                                runs.fetch_add(1, Ordering::SeqCst);
                                tokio::task::yield_now().await;
                                done.store(1, Ordering::SeqCst);
                            }
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(locks.map().is_empty(), "unused locks are forgotten");
    }
}
