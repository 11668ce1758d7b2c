//! Why an operation on the file failed: a storage error or a broken rule.

use super::*;

/// Why an operation on the file failed: a storage error (fails the whole batch) or a broken
/// rule (fails this operation only).
#[derive(Debug)]
pub(super) enum Fail {
    Storage(::redb::Error),
    Store(StoreError),
}

impl Fail {
    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            Self::Storage(e) => StoreError::unavailable(format!("redb: {e}")),
            Self::Store(e) => e,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Storage(e) => e.fmt(f),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for Fail {
            fn from(e: $error) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(
    ::redb::Error,
    StorageError,
    TableError,
    TransactionError,
    CommitError,
    SetDurabilityError,
    DatabaseError
);
