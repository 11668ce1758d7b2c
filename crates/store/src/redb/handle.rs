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
        // Holding the slot, no read starts on the old handle while it closes; reads wait.
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = match (&*current, &failed) {
            (None, _) => true,
            (Some(now), Some(failed)) => Arc::ptr_eq(now, failed),
            (Some(_), None) => false,
        };
        drop(failed);
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
