//! Submarine's own metastore: its MySQL/MariaDB database, `--metastore mysql://user:pw@host/db`
//! or Submarine's `mysql+pymysql://…` form (as in `SUBMARINE_TRACKING_URI`).
//!
//! [`url`] reads the URL and the TLS it asks for, [`connection`] opens a connection as it says,
//! [`statements`] turns a batch into prepared statements with every value bound as a parameter,
//! and [`errors`] sorts failures into transient and permanent. [`MySqlSink`] applies each batch
//! in one transaction on a connection it keeps between batches; it writes the experiment row
//! apart, and only while it may be missing (workers would wait for each other's lock on it).
//! This module never prints (tracing only) and never shows the password: the URL is kept
//! redacted for messages.

pub mod connection;
pub mod errors;
pub mod statements;
pub mod url;

use std::time::Duration;

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use self::errors::{classify, Failure};
use self::statements::{statements, Statement};
pub use self::url::MySqlUrl;
use super::model::Item;
use super::sink::{Sink, SinkError};
use super::submarine::datetime;

/// Longest wait for a connection or a statement's reply. A lock wait fails sooner: the session's
/// `innodb_lock_wait_timeout` is set below this.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the start-up check waits, so a metastore that does not answer delays the sidecar by
/// seconds at most (its items are queued meanwhile).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A sink into Submarine's MySQL tables. Invariant: `conn`, when present, is authenticated, set
/// up by [`connection::connect`] and outside any transaction; `row_seen` names the experiment
/// whose row existed when a transaction last committed, and is `None` once a write found it
/// missing.
pub struct MySqlSink {
    url: MySqlUrl,
    conn: Option<Conn>,
    row_seen: Option<String>,
    offered: connection::Offered,
}

impl MySqlSink {
    /// A sink for `url`; it connects on first use and again after a failure.
    pub fn new(url: MySqlUrl) -> MySqlSink {
        MySqlSink {
            url,
            conn: None,
            row_seen: None,
            offered: connection::Offered::default(),
        }
    }

    fn error(&self, e: &Failure, what: &str) -> SinkError {
        let context = format!("MySQL metastore {}: cannot {what}", self.url.shown());
        classify(e, &self.url.tls, &context)
    }

    async fn connect(&mut self, timeout: Duration) -> Result<Conn, SinkError> {
        let conn = connection::connect(&self.url, timeout, &mut self.offered)
            .await
            .map_err(|e| self.error(&e, "connect"))?;
        tracing::debug!(metastore = %self.url.shown(), "connected to the MySQL metastore");
        Ok(conn)
    }

    /// Applies `items` for `experiment` in one transaction, connecting first when needed. The
    /// experiment row is made sure of first, in a statement of its own, when this sink has not
    /// seen it yet, when the row was found missing, and before a status change (an update of a
    /// missing row changes nothing); a fleet of workers doing so in every batch would queue
    /// behind its lock.
    pub async fn apply(&mut self, experiment: &str, items: &[Item]) -> Result<(), SinkError> {
        let now = datetime(super::model::now_ms()).unwrap_or_default();
        let sets_status = items.iter().any(|i| matches!(i, Item::Status { .. }));
        let row = (sets_status || self.row_seen.as_deref() != Some(experiment))
            .then(|| statements::experiment_row(experiment, &now));
        let statements = statements(experiment, items, &now);
        let reused = self.conn.is_some();
        let applied = match self.transaction(row.as_ref(), &statements).await {
            // A connection kept from an earlier batch may have been closed by the server
            // meanwhile (`wait_timeout`, a restart): one immediate try on a fresh one.
            Err(e) if reused && e.transient && self.conn.is_none() => {
                tracing::debug!(error = %e, "the kept MySQL connection failed; reconnecting");
                self.transaction(row.as_ref(), &statements).await
            }
            other => other,
        };
        if applied.is_ok() {
            self.row_seen = Some(experiment.to_string());
        }
        applied
    }

    /// Runs `row` (see [`apply`](Self::apply)), then `statements` as one transaction. After a
    /// failure another try on the same connection may cure (a lock wait, a deadlock) it is rolled
    /// back and kept; after any other (a refusal such as a revoked privilege, an I/O error, a
    /// timeout) it is dropped, so the next try connects again and sees mended grants. A missing
    /// experiment row makes the next batch write it again.
    async fn transaction(
        &mut self,
        row: Option<&Statement>,
        statements: &[Statement],
    ) -> Result<(), SinkError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect(QUERY_TIMEOUT).await?,
        };
        match run(&mut conn, row, statements).await {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                if e.is_missing_row() {
                    self.row_seen = None;
                }
                let error = self.error(&e, "write a batch");
                let keep = !e.breaks_connection()
                    && error.transient
                    && timed(QUERY_TIMEOUT, conn.query_drop("ROLLBACK"))
                        .await
                        .is_ok();
                if keep {
                    self.conn = Some(conn);
                } else {
                    // The next connection asks for TLS again: the server may have restarted.
                    self.offered = connection::Offered::Unknown;
                }
                Err(error)
            }
        }
    }
}

/// `row` in a transaction of its own, so that it locks the experiment row only while it runs,
/// then `statements` in one transaction on `conn`, each within [`QUERY_TIMEOUT`]. A single
/// statement is a transaction of its own (the session is in autocommit): a worker's usual batch,
/// one multi-row insert, then takes two round trips fewer.
async fn run(
    conn: &mut Conn,
    row: Option<&Statement>,
    statements: &[Statement],
) -> Result<(), Failure> {
    if let Some(row) = row {
        exec(conn, row).await?;
    }
    match statements {
        [] => Ok(()),
        [st] => exec(conn, st).await,
        _ => {
            timed(QUERY_TIMEOUT, conn.query_drop("START TRANSACTION")).await?;
            for st in statements {
                exec(conn, st).await?;
            }
            timed(QUERY_TIMEOUT, conn.query_drop("COMMIT")).await
        }
    }
}

/// `st` on `conn`, within [`QUERY_TIMEOUT`].
async fn exec(conn: &mut Conn, st: &Statement) -> Result<(), Failure> {
    timed(
        QUERY_TIMEOUT,
        conn.exec_drop(st.sql.as_str(), st.params.clone()),
    )
    .await
}

/// `op` within `limit`.
async fn timed<T>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

impl Sink for MySqlSink {
    fn describe(&self) -> String {
        self.url.shown().to_string()
    }

    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.apply(experiment, items))
    }

    /// Connects, authenticates and reads zero rows of the three tables with the columns this
    /// sink writes, so wrong credentials, an unknown database or missing tables stop the sidecar
    /// at start. The connection is closed again.
    fn check(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut conn = self.connect(CHECK_TIMEOUT).await?;
            let read = async {
                for sql in [
                    "SELECT id, experiment_spec, experiment_status, accepted_time, running_time, \
                     finished_time, create_time, update_time FROM experiment LIMIT 0",
                    "SELECT id, `key`, value, worker_index, `timestamp`, step, is_nan FROM metric \
                     LIMIT 0",
                    "SELECT id, `key`, value, worker_index FROM param LIMIT 0",
                ] {
                    conn.query_drop(sql).await?;
                }
                Ok::<_, mysql_async::Error>(())
            };
            timed(CHECK_TIMEOUT, read)
                .await
                .map_err(|e| self.error(&e, "read Submarine's tables"))?;
            // Best effort: the server logs no aborted connection.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
            Ok(())
        })
    }

    /// Closes the kept connection: a server allows so many (`max_connections`, 151 by default),
    /// and a fleet of sidecars that each kept one would take them all while idle.
    fn release(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(conn) = self.conn.take() {
                // Best effort, as after the check: a connection that does not close is dropped.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
                tracing::debug!(metastore = %self.url.shown(), "idle: the MySQL connection is closed");
            }
        })
    }
}
