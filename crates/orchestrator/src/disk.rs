//! The data directory's disk, watched, so that a full disk is seen and said: logged, reported
//! by the health service (`NOT_SERVING`) and the metrics, and new executions refused with a
//! message naming the directory, until there is room again.
//!
//! The disk counts as full when it has less free than `min_free` (`--min-free-disk-mib`:
//! below it, runs under way still journal into what is left, but nothing new starts), or when
//! the store refused a write for lack of space since the last look. It is looked at every
//! second and whenever asked whether it is full.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

/// How often the disk is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Watches the disk of a data directory; cheap to clone.
#[derive(Clone)]
pub struct DiskWatch {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    min_free: u64,
    /// Writes the store has refused for lack of space so far.
    refused_writes: Box<dyn Fn() -> u64 + Send + Sync>,
    state: Mutex<State>,
    serving: watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    free: Option<u64>,
    full: bool,
    refused_writes: u64,
}

impl std::fmt::Debug for DiskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWatch")
            .field("dir", &self.inner.dir)
            .field("min_free", &self.inner.min_free)
            .field("state", &*self.inner.state.lock())
            .finish()
    }
}

impl DiskWatch {
    /// Watches the disk of `dir`, full below `min_free` bytes free or when `refused_writes`
    /// (the store's count of writes refused for lack of space) has grown since the last look.
    /// Looks once now, then every second on the current runtime while a clone is alive.
    pub fn start(dir: &Path, min_free: u64, refused_writes: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        let (serving, _) = watch::channel(true);
        let refused = refused_writes();
        let watch = Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                min_free,
                refused_writes: Box::new(refused_writes),
                state: Mutex::new(State { refused_writes: refused, ..State::default() }),
                serving,
            }),
        };
        watch.look();
        let weak: Weak<Inner> = Arc::downgrade(&watch.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Self { inner }.look();
            }
        });
        watch
    }

    /// Looks at the disk and the store's refused writes now; logs and reports a change.
    pub fn look(&self) {
        let inner = &self.inner;
        let free = rustix::fs::statvfs(&inner.dir).ok().map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        let refused = (inner.refused_writes)();
        let mut state = inner.state.lock();
        let was_full = state.full;
        let refused_since = refused > state.refused_writes;
        state.free = free;
        state.refused_writes = refused;
        state.full = free.is_some_and(|free| free < inner.min_free) || refused_since;
        let now_full = state.full;
        drop(state);
        if now_full == was_full {
            return;
        }
        if now_full {
            tracing::error!(
                data_dir = %inner.dir.display(),
                free_mib = free.map(mib),
                min_free_mib = mib(inner.min_free),
                refused_writes = refused,
                "the data directory's disk is full: new executions are refused and runs wait for room"
            );
        } else {
            tracing::info!(
                data_dir = %inner.dir.display(),
                free_mib = free.map(mib),
                "the data directory's disk has room again: new executions are accepted and runs go on"
            );
        }
        let _ = inner.serving.send_replace(!now_full);
    }

    /// Why new work is refused, when the disk is full: a message naming the directory.
    pub fn full(&self) -> Option<String> {
        let state = *self.inner.state.lock();
        state.full.then(|| {
            let free =
                state.free.map_or_else(|| "an unknown amount".to_owned(), |free| format!("{:.1} MiB", mib(free)));
            format!(
                "the disk of the data directory {} is full ({free} free; baton serve keeps {:.1} MiB free, \
                 --min-free-disk-mib): no new executions until it has room",
                self.inner.dir.display(),
                mib(self.inner.min_free)
            )
        })
    }

    /// Whether the disk is full, as last seen.
    pub fn is_full(&self) -> bool {
        self.inner.state.lock().full
    }

    /// The bytes free on the disk for the server, as last seen; `None` when it could not be read.
    pub fn free_bytes(&self) -> Option<u64> {
        self.inner.state.lock().free
    }

    /// Whether the server should report itself serving: false while the disk is full.
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.inner.serving.subscribe()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn full_below_the_free_space_kept_or_after_a_refused_write_and_not_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let refused = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&refused);
        // No disk has this much free.
        let watch = DiskWatch::start(dir.path(), u64::MAX, move || count.load(Ordering::SeqCst));
        let serving = watch.serving();
        assert!(watch.is_full() && !*serving.borrow());
        let message = watch.full().unwrap();
        assert!(message.contains(&format!("data directory {} is full", dir.path().display())), "{message}");
        assert!(watch.free_bytes().is_some_and(|free| free > 0));

        let watch = DiskWatch::start(dir.path(), 0, {
            let refused = Arc::clone(&refused);
            move || refused.load(Ordering::SeqCst)
        });
        assert!(!watch.is_full() && watch.full().is_none());
        // The store refused a write: full until a look sees no new refusal.
        refused.fetch_add(1, Ordering::SeqCst);
        watch.look();
        assert!(watch.is_full());
        assert!(!*watch.serving().borrow());
        watch.look();
        assert!(!watch.is_full() && *watch.serving().borrow());
    }
}
