//! A pooled connection that prepares each statement once.
//!
//! tokio-postgres runs a query given as text by preparing it first, in a round trip of its
//! own, every time: the server parses and plans it again and the call waits twice. The
//! statements of an execution's life (create, read, update) run thousands of times a second,
//! so each connection keeps them prepared and a call is one round trip.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// The most statements one connection keeps prepared; past it the cache starts again, so that
/// a caller with ever new statement texts cannot grow it without end.
const MAX_PREPARED: usize = 64;

/// A connection of the pool with its prepared statements; as a [`Client`] it runs anything.
#[derive(Debug)]
pub(super) struct Pooled {
    client: Client,
    prepared: Mutex<HashMap<String, Statement>>,
}

impl Deref for Pooled {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Pooled {
    pub(super) fn new(client: Client) -> Self {
        Self { client, prepared: Mutex::new(HashMap::new()) }
    }

    /// `sql` prepared on this connection, once.
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        let mut cache = self.cache();
        if cache.len() >= MAX_PREPARED {
            cache.clear();
        }
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.prepared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Client::execute`] of `sql`, prepared once.
    pub(super) async fn execute_prepared(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }

    /// [`Client::query_opt`] of `sql`, prepared once.
    pub(super) async fn query_opt_prepared(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await
    }
}
