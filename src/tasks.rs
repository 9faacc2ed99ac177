//! [`SessionTasks`]: the session tasks the server started, for the drain to wait on and, past
//! `shutdown_timeout`, abort.
//!
//! A session that ends only takes itself off the set, on its own thread: it wakes nobody
//! unless a drain waits for the last one. (A `JoinSet` on the accepting thread would be woken
//! at every session's end, a cross-thread wake-up per connection that a
//! connect-per-request client pays in full.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The live session tasks.
#[derive(Debug, Default)]
pub struct SessionTasks {
    live: Mutex<Live>,
    /// A drain waits: the last task to end notifies it.
    draining: AtomicBool,
    emptied: Notify,
}

#[derive(Debug, Default)]
struct Live {
    next_id: u64,
    /// Each task's abort handle, once its spawn returned it.
    tasks: HashMap<u64, Option<AbortHandle>>,
}

/// Takes its task off the set when dropped: when the task ends, panics or is aborted.
struct Member {
    set: Arc<SessionTasks>,
    id: u64,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut live = self.set.lock();
        live.tasks.remove(&self.id);
        if live.tasks.is_empty() && self.set.draining.load(Ordering::Acquire) {
            self.set.emptied.notify_waiters();
        }
    }
}

impl SessionTasks {
    pub fn new() -> Arc<SessionTasks> {
        Arc::new(SessionTasks::default())
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while holding the lock leaves the map consistent (one insert or remove).
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `session` on `handle` (the caller's runtime when `None`), as a member of the set.
    pub fn spawn<F>(self: &Arc<Self>, handle: Option<&tokio::runtime::Handle>, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // On the set before it runs (the lock is not held across the spawn, which may drop a
        // task at once: its member then takes it off).
        let id = {
            let mut live = self.lock();
            let id = live.next_id;
            live.next_id += 1;
            live.tasks.insert(id, None);
            id
        };
        let member = Member {
            set: self.clone(),
            id,
        };
        let task = async move {
            let _member = member;
            session.await;
        };
        let join = match handle {
            Some(h) => h.spawn(task),
            None => tokio::spawn(task),
        };
        // A task that ended already is off the set: nothing to abort.
        if let Some(slot) = self.lock().tasks.get_mut(&id) {
            *slot = Some(join.abort_handle());
        }
    }

    /// How many session tasks are running.
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    /// True when no session task runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every session task has ended.
    pub async fn wait_empty(&self) {
        self.draining.store(true, Ordering::Release);
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check: an end between the two still wakes it.
            emptied.as_mut().enable();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Aborts every session task and waits until they have ended.
    pub async fn abort_all(&self) {
        self.abort_now();
        self.wait_empty().await;
    }

    /// Aborts every session task, without waiting.
    fn abort_now(&self) {
        for task in self.lock().tasks.values().flatten() {
            task.abort();
        }
    }

    /// A guard that aborts every session task when dropped: the server's sessions do not
    /// outlive a server dropped without a drain (as a `JoinSet`'s would not).
    pub fn abort_on_drop(self: &Arc<Self>) -> AbortOnDrop {
        AbortOnDrop(self.clone())
    }
}

/// See [`SessionTasks::abort_on_drop`].
#[derive(Debug)]
pub struct AbortOnDrop(Arc<SessionTasks>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tasks_leave_the_set_when_they_end_or_are_aborted() {
        let set = SessionTasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        set.spawn(None, async move {
            let _ = rx.await;
        });
        set.spawn(None, std::future::pending());
        assert_eq!(set.len(), 2);
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while set.len() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the ended task left");
        let waited = tokio::time::timeout(Duration::from_millis(50), set.wait_empty()).await;
        assert!(waited.is_err(), "a pending task keeps the set busy");
        tokio::time::timeout(Duration::from_secs(5), set.abort_all())
            .await
            .expect("the aborted task left");
        assert!(set.is_empty());
    }

    #[tokio::test]
    async fn a_drain_wakes_when_the_last_task_ends() {
        let set = SessionTasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        set.spawn(None, async move {
            let _ = rx.await;
        });
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move { set.wait_empty().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
