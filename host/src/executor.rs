//! Runs plugin calls on dedicated threads, off the async runtime.
//!
//! Plugin calls are synchronous and may hold a thread for up to a plugin's
//! `timeout_ms`; on a tokio worker that would stall every session sharing
//! it, and WASI's synchronous bindings refuse to run inside a tokio task. A
//! job sees the plugin set current when it starts, so a reload never changes
//! a call under way.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::plugin::PluginSet;

type Job = Box<dyn FnOnce(&PluginSet) + Send>;

/// Why a job did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    /// Every worker is busy and the queue is full: shed load.
    #[error("plugin workers are overloaded")]
    Overloaded,
    /// The executor is shutting down.
    #[error("plugin workers have stopped")]
    Stopped,
}

/// A pool of plugin worker threads sharing one job queue.
pub struct PluginExecutor {
    plugins: Arc<ArcSwap<PluginSet>>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Jobs waiting at most: past this, callers are told to back off.
const QUEUE_DEPTH: usize = 65_536;

impl PluginExecutor {
    /// Starts `threads` workers over `plugins`.
    pub fn start(plugins: PluginSet, threads: usize) -> std::io::Result<Self> {
        let plugins = Arc::new(ArcSwap::from_pointee(plugins));
        let (tx, rx) = sync_channel::<Job>(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let plugins = plugins.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("plugin-{i}"))
                    .spawn(move || worker(&rx, &plugins))?,
            );
        }
        Ok(PluginExecutor {
            plugins,
            jobs: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    /// The current plugin set (for decisions that need no call, such as
    /// whether any plugin applies to a topic).
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.plugins.load_full()
    }

    /// Replaces the plugin set; calls under way finish on the old one.
    pub fn swap(&self, mut plugins: PluginSet) {
        plugins.set_generation(self.plugins.load().generation() + 1);
        self.plugins.store(Arc::new(plugins));
    }

    /// Runs `f` on a worker and returns its result.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&PluginSet) -> R + Send + 'static,
    ) -> Result<R, ExecutorError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |set| {
            let _ = tx.send(f(set));
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            let sender = jobs.as_ref().ok_or(ExecutorError::Stopped)?;
            sender.try_send(job).map_err(|e| match e {
                TrySendError::Full(_) => ExecutorError::Overloaded,
                TrySendError::Disconnected(_) => ExecutorError::Stopped,
            })?;
        }
        rx.await.map_err(|_| ExecutorError::Stopped)
    }

    /// Stops taking jobs, lets queued ones finish and joins the workers.
    pub fn shutdown(&self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for PluginExecutor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, plugins: &ArcSwap<PluginSet>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let set = plugins.load_full();
        job(&set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_workers_and_return_results() {
        let ex = PluginExecutor::start(PluginSet::default(), 2).expect("start");
        let name = ex
            .run(|set| (set.len(), std::thread::current().name().map(str::to_owned)))
            .await;
        let (len, thread) = name.expect("ran");
        assert_eq!(len, 0);
        assert!(thread.is_some_and(|t| t.starts_with("plugin-")));
        ex.shutdown();
        assert_eq!(ex.run(|_| ()).await, Err(ExecutorError::Stopped));
    }
}
