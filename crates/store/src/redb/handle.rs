//! The redb handle the threads share, and its replacement after a write to the file failed.
//!
//! Once a write to its file has failed (a full disk), a redb `Database` takes no more writes,
//! nor reads that need the file (`PreviousIo`), until it is closed and opened again. The file
//! holds the last commit that succeeded, so the handle is closed and the file opened again, by
//! the redb writer right after the failure or by a read that met it first, and the store goes
//! on from there (writes once the disk has room). Opening may repair the file first, which
//! reads it whole.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ::redb::{Database, DatabaseError};
use baton_core::StoreError;

/// The current handle of the redb file; `None` while it could not be opened again.
#[derive(Debug)]
pub(super) struct Handle {
    path: PathBuf,
    cache_bytes: usize,
    current: RwLock<Option<Arc<Database>>>,
}

/// How long reopening waits for the reads of the old handle to let go of the file.
const LET_GO_WITHIN: Duration = Duration::from_secs(10);

impl Handle {
    pub(super) fn new(path: PathBuf, cache_bytes: usize, db: Database) -> Self {
        Self { path, cache_bytes, current: RwLock::new(Some(Arc::new(db))) }
    }

    /// The handle to read or write with now.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.clone().ok_or_else(|| {
            StoreError::unavailable(format!(
                "{} could not be opened again after a failed write; the next write tries again",
                self.path.display()
            ))
        })
    }

    /// Closes `failed`, a handle a write failed on, and opens the file again, unless that was
    /// done already (the current handle is another); with `None`, opens the file when there is
    /// no handle. On failure no handle is left, and the next call tries again.
    pub(super) fn replace(&self, failed: Option<Arc<Database>>) -> Result<(), DatabaseError> {
        // Let go of the failed handle before waiting for the slot: a caller holding it while it
        // waits would keep the one in the slot, which waits for every holder to let go, from
        // ever closing. The weak reference only keeps its address from being reused.
        let failed = failed.map(|db| Arc::downgrade(&db));
        // Holding the slot, no read starts on the old handle while it closes; reads wait.
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = match (&*current, &failed) {
            (None, _) => true,
            (Some(now), Some(failed)) => std::ptr::eq(Arc::as_ptr(now), failed.as_ptr()),
            (Some(_), None) => false,
        };
        if !stale {
            return Ok(());
        }
        let deadline = Instant::now() + LET_GO_WITHIN;
        if let Some(old) = current.take() {
            // Reads under way hold the old handle: wait for them before letting it go.
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        open(&mut current, &self.path, self.cache_bytes, deadline)
    }
}

fn open(
    current: &mut RwLockWriteGuard<'_, Option<Arc<Database>>>,
    path: &std::path::Path,
    cache_bytes: usize,
    deadline: Instant,
) -> Result<(), DatabaseError> {
    loop {
        match super::create_database(path, cache_bytes) {
            Ok(db) => {
                **current = Some(Arc::new(db));
                return Ok(());
            }
            // A transaction of the old handle still holds the file for a moment.
            Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_holders_of_a_failed_handle_replace_it_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handle.redb");
        let handle = Arc::new(Handle::new(path.clone(), 1 << 20, Database::create(&path).unwrap()));
        let (first, second) = (handle.get().unwrap(), handle.get().unwrap());
        // Each holds the failed handle until it calls: whichever gets the slot first must not
        // wait for the other to let go of it.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let replacing: Vec<_> = [first, second]
            .into_iter()
            .map(|failed| {
                let (handle, barrier) = (Arc::clone(&handle), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    handle.replace(Some(failed))
                })
            })
            .collect();
        for thread in replacing {
            thread.join().unwrap().expect("the file opens again");
        }
        let db = handle.get().unwrap();
        assert_eq!(Arc::strong_count(&db), 2, "one handle, in the slot and here");
    }
}
