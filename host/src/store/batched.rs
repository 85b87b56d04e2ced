//! Lookups many sessions make at the same moment (a connection storm reads
//! every new session's inbox cursor), answered by one query per batch.
//!
//! A task takes every request queued while the previous query ran, asks
//! the store once for all their keys, and answers each. Alone, a request
//! costs one query as before; under load, one query serves hundreds (each
//! query through sqlx's SQLite worker thread costs two thread hand-offs,
//! which dominated a storm's server CPU).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

type Reply<V> = oneshot::Sender<Result<Option<V>, String>>;

/// A lookup by key, batched.
pub struct BatchedLookup<K, V> {
    tx: mpsc::Sender<(K, Reply<V>)>,
}

impl<K, V> BatchedLookup<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts the task: `lookup` gets at most `max_batch` distinct keys and
    /// returns the values found (a key left out has none). The task ends
    /// when the lookup is dropped.
    pub fn start<F, Fut>(max_batch: usize, lookup: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, StoreError>> + Send,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(K, Reply<V>)>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                let keys: Vec<K> = batch
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect::<HashSet<K>>()
                    .into_iter()
                    .collect();
                match lookup(keys).await {
                    Ok(found) => {
                        for (key, reply) in batch.drain(..) {
                            let _ = reply.send(Ok(found.get(&key).cloned()));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        BatchedLookup { tx }
    }

    /// The value of `key`, if the store has one.
    pub async fn get(&self, key: K) -> Result<Option<V>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((key, reply))
            .await
            .map_err(|_| StoreError::Batch("the lookup task has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Batch("the lookup task has stopped".into()))?
            .map_err(StoreError::Batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_requests_share_queries_and_each_gets_its_own_answer() {
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = batches.clone();
        let lookup = Arc::new(BatchedLookup::start(64, move |keys: Vec<u32>| {
            seen.lock().expect("lock").push(keys.len());
            async move {
                // Slow enough for the other requests to queue behind.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(keys
                    .into_iter()
                    .filter(|k| k % 2 == 0)
                    .map(|k| (k, k * 10))
                    .collect())
            }
        }));
        let asks: Vec<_> = (0..200u32)
            .map(|k| {
                let lookup = lookup.clone();
                tokio::spawn(async move { (k, lookup.get(k % 100).await) })
            })
            .collect();
        for ask in asks {
            let (k, got) = ask.await.expect("join");
            let want = (k % 2 == 0).then_some((k % 100) * 10);
            assert_eq!(got.expect("answer"), want, "key {k}");
        }
        let batches = batches.lock().expect("lock").clone();
        assert!(
            batches.len() < 20,
            "200 requests took {} queries: {batches:?}",
            batches.len()
        );
        assert!(batches.iter().all(|&n| n <= 64), "{batches:?}");
    }

    #[tokio::test]
    async fn a_failed_query_fails_every_request_of_its_batch_and_not_the_next() {
        let calls = Arc::new(Mutex::new(0));
        let n = calls.clone();
        let lookup = BatchedLookup::start(8, move |keys: Vec<u32>| {
            let first = {
                let mut n = n.lock().expect("lock");
                *n += 1;
                *n == 1
            };
            async move {
                if first {
                    Err(StoreError::Migrate("down".into()))
                } else {
                    Ok(keys.into_iter().map(|k| (k, k)).collect())
                }
            }
        });
        let err = lookup.get(1).await.expect_err("the first query fails");
        assert!(err.to_string().contains("down"), "{err}");
        assert_eq!(lookup.get(2).await.expect("answer"), Some(2));
    }
}
