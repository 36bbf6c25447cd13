//! Submarine's own metastore: its MySQL/MariaDB database, `--metastore mysql://user:pw@host/db`
//! or Submarine's `mysql+pymysql://…` form (as in `SUBMARINE_TRACKING_URI`).
//!
//! This module owns the SQL written to Submarine's `experiment`, `metric` and `param` tables; the
//! mapping from items to rows is [`super::submarine`]'s, shared with the SQLite metastore, so
//! both store the same rows. Each batch is one transaction: the experiment row (created when
//! missing, never changed beyond its status and times), then multi-row inserts that skip rows
//! whose primary key exists (`ON DUPLICATE KEY UPDATE id = id`: the first value wins, so a
//! redelivered batch adds nothing), purges and status updates, in queue order.
//!
//! MySQL's `FLOAT` cannot hold ±Infinity: they are stored as ±3.402823466e38 (`FLOAT`'s
//! largest values). Strings longer than Submarine's columns (`key`/`value` 190 characters,
//! `worker_index` 32, `id` 64) are cut to fit, with a warning.
//!
//! Failures are sorted for the pipeline: a lost connection, a timeout, a lock wait timeout, a
//! deadlock, a server going away or restarting are transient (the queue keeps the items and the
//! batch is retried on a new connection); refused credentials, an unknown database and missing
//! tables are permanent, with a hint saying what to do. This module never prints (tracing only)
//! and never shows the password: the URL is kept redacted for messages, the password only as a
//! [`Secret`] that [`wire`] scrambles.
//!
//! The protocol client is [`wire`], a minimal one written for Periscope: `sqlx`'s MySQL driver
//! made the static binary too large for its 15,000,000-byte limit (measured; see the commit
//! that added this module).

pub mod tls;
pub mod wire;

use std::time::Duration;

use futures::future::BoxFuture;

use self::wire::{ConnectOptions, Connection, Reply, WireError};
use super::model::{Item, RunStatus};
use super::sink::{Sink, SinkError};
use super::submarine::{changes, datetime, Change};
use crate::error::ErrorClass;
use crate::redact::{redact_url, Secret};

/// MySQL's port when the URL names none.
const DEFAULT_PORT: u16 = 3306;
/// Longest statement sent: far below every server's default `max_allowed_packet` (4 MiB on
/// MySQL 5.7, 16 MiB on MariaDB, 64 MiB on MySQL 8).
const MAX_STATEMENT: usize = 1 << 20;
/// Longest wait for a connection or a query's reply. A lock wait fails sooner: the session's
/// `innodb_lock_wait_timeout` is set below this.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the start-up check waits, so a metastore that does not answer delays the sidecar by
/// seconds at most (its items are queued meanwhile).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest finite `FLOAT`: what ±Infinity is stored as.
const FLOAT_MAX: &str = "3.402823466e38";
/// `DATETIME`'s range, 1000-01-01 to 9999-12-31 23:59:59.999, in ms since the epoch.
const DATETIME_MS: std::ops::RangeInclusive<i64> = -30_610_224_000_000..=253_402_300_799_999;

/// Session settings for every connection: a known `sql_mode` (not strict, so a 4-byte character
/// that a `utf8` column cannot hold becomes `?` instead of failing its batch forever; backslash
/// escapes on, which [`quote`] relies on) and lock waits shorter than [`QUERY_TIMEOUT`].
const SESSION_SETUP: &str = "SET @@SESSION.sql_mode = 'NO_ENGINE_SUBSTITUTION', \
                             @@SESSION.innodb_lock_wait_timeout = 10, @@SESSION.autocommit = 1";

/// A parsed `mysql://` or `mysql+pymysql://` metastore URL. Invariant: `shown` is redacted and
/// the password lives only in `opts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MySqlUrl {
    opts: ConnectOptions,
    shown: String,
}

impl MySqlUrl {
    /// Parses `mysql[+pymysql]://user[:password]@host[:port]/database[?charset=…]`. User,
    /// password and database may be percent-encoded. TLS options (`ssl…`, `tls…`) are refused:
    /// Periscope does not speak TLS to MySQL, and must not silently connect without it.
    pub fn parse(raw: &str) -> Result<MySqlUrl, SinkError> {
        let shown = redact_url(raw);
        let usage = |why: &str| {
            SinkError::permanent(ErrorClass::Usage, format!("metastore URL {shown}: {why}"))
                .with_hint("write it as mysql://user:password@host:3306/database")
        };
        let url = url::Url::parse(raw).map_err(|e| usage(&e.to_string()))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| usage("user, password and database must be UTF-8"))
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| usage("no host"))?
            .to_string();
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(usage("no user"));
        }
        let password = Secret::new(decode(url.password().unwrap_or_default())?);
        let database = decode(url.path().trim_start_matches('/'))?;
        if database.is_empty() || database.contains('/') {
            return Err(usage("the path must be the database name"));
        }
        // MySQL's `ssl-mode` / `ssl-ca`, also in PyMySQL's and JDBC's spellings.
        let (mut ssl_mode, mut ssl_ca) = (None, None);
        for (key, value) in url.query_pairs() {
            match key.to_ascii_lowercase().replace('_', "-").as_str() {
                "ssl-mode" | "sslmode" => ssl_mode = Some(value.into_owned()),
                "ssl-ca" | "sslca" => ssl_ca = Some(std::path::PathBuf::from(value.as_ref())),
                k if k.starts_with("ssl") || k.starts_with("tls") => {
                    return Err(SinkError::permanent(
                        ErrorClass::Usage,
                        format!("metastore URL {shown}: `{key}` is not supported"),
                    )
                    .with_hint(
                        "TLS takes ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY \
                         and ssl-ca=PATH; client certificates are not supported",
                    ));
                }
                _ => tracing::debug!(option = %key, "metastore URL option ignored"),
            }
        }
        let tls =
            tls::TlsMode::from_options(ssl_mode.as_deref(), ssl_ca).map_err(|why| usage(&why))?;
        Ok(MySqlUrl {
            opts: ConnectOptions {
                host,
                port: url.port().unwrap_or(DEFAULT_PORT),
                user,
                password,
                database,
                timeout: QUERY_TIMEOUT,
                tls,
            },
            shown,
        })
    }

    /// The URL with its password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// A sink into Submarine's MySQL tables. Invariant: `conn`, when present, is authenticated, set
/// up with [`SESSION_SETUP`] and outside any transaction.
pub struct MySqlSink {
    url: MySqlUrl,
    conn: Option<Connection>,
}

impl MySqlSink {
    /// A sink for `url`; it connects on first use and again after a failure.
    pub fn new(url: MySqlUrl) -> MySqlSink {
        MySqlSink { url, conn: None }
    }

    async fn connect(&self, timeout: Duration) -> Result<Connection, SinkError> {
        let mut opts = self.url.opts.clone();
        opts.timeout = timeout;
        let mut conn = Connection::connect(&opts)
            .await
            .map_err(|e| self.error(e, "connect"))?;
        conn.query(SESSION_SETUP)
            .await
            .map_err(|e| self.error(e, "set up the session"))?;
        tracing::debug!(metastore = %self.url.shown, "connected to the MySQL metastore");
        Ok(conn)
    }

    fn error(&self, e: WireError, what: &str) -> SinkError {
        classify(
            e,
            &format!("MySQL metastore {}: cannot {what}", self.url.shown),
        )
    }

    /// Applies `items` for `experiment` in one transaction, connecting first when needed.
    pub async fn apply(&mut self, experiment: &str, items: &[Item]) -> Result<(), SinkError> {
        let now = datetime(super::model::now_ms()).unwrap_or_default();
        let statements = statements(experiment, items, &now);
        let reused = self.conn.is_some();
        match self.transaction(&statements).await {
            // A connection kept from an earlier batch may have been closed by the server
            // meanwhile (`wait_timeout`, a restart): one immediate try on a fresh one.
            Err(e) if reused && e.transient && self.conn.is_none() => {
                tracing::debug!(error = %e, "the kept MySQL connection failed; reconnecting");
                self.transaction(&statements).await
            }
            other => other,
        }
    }

    /// Runs `statements` between `START TRANSACTION` and `COMMIT`. On failure the connection is
    /// rolled back, or dropped when its state is unknown (I/O error, timeout).
    async fn transaction(&mut self, statements: &[String]) -> Result<(), SinkError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect(QUERY_TIMEOUT).await?,
        };
        let mut result = Ok(());
        for sql in std::iter::once("START TRANSACTION")
            .chain(statements.iter().map(String::as_str))
            .chain(std::iter::once("COMMIT"))
        {
            if let Err(e) = conn.query(sql).await {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                let keep =
                    matches!(e, WireError::Server { .. }) && conn.query("ROLLBACK").await.is_ok();
                if keep {
                    self.conn = Some(conn);
                }
                Err(self.error(e, "write a batch"))
            }
        }
    }
}

impl Sink for MySqlSink {
    fn describe(&self) -> String {
        self.url.shown.clone()
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
            for sql in [
                "SELECT id, experiment_spec, experiment_status, accepted_time, running_time, \
                 finished_time, create_time, update_time FROM experiment LIMIT 0",
                "SELECT id, `key`, value, worker_index, `timestamp`, step, is_nan FROM metric \
                 LIMIT 0",
                "SELECT id, `key`, value, worker_index FROM param LIMIT 0",
            ] {
                match conn.query(sql).await {
                    Ok(Reply::Rows(_)) => {}
                    Ok(Reply::Ok { .. }) => {
                        return Err(self.error(
                            WireError::Protocol("no result set for a SELECT".into()),
                            "read the tables",
                        ))
                    }
                    Err(e) => return Err(self.error(e, "read Submarine's tables")),
                }
            }
            conn.quit().await;
            Ok(())
        })
    }
}

/// Sorts a protocol failure into transient or permanent, with the class and hint the user needs.
fn classify(e: WireError, context: &str) -> SinkError {
    let message = format!("{context}: {e}");
    let credentials = "check the user and password in the metastore URL (or its Secret) and that \
                       the user may SELECT, INSERT, UPDATE and DELETE on the database's \
                       experiment, metric and param tables";
    let tables = "create Submarine's tables (experiment, metric, param) in that database with \
                  Submarine's schema (its submarine.sql)";
    match &e {
        WireError::Connect { .. } | WireError::Io(_) | WireError::Timeout(_) => {
            SinkError::transient(ErrorClass::Network, message)
        }
        WireError::UnsupportedAuth(_) => SinkError::permanent(ErrorClass::Auth, message).with_hint(
            "give the metastore user mysql_native_password or caching_sha2_password \
                 (ALTER USER … IDENTIFIED WITH mysql_native_password BY …)",
        ),
        WireError::FullAuthRequired => SinkError::permanent(ErrorClass::Auth, message).with_hint(
            "let the connection use TLS (the server must offer it; ssl-mode=VERIFY_IDENTITY&\
             ssl-ca=PATH checks who it is), or give the user mysql_native_password",
        ),
        WireError::TlsUnavailable(_) => SinkError::permanent(ErrorClass::Auth, message).with_hint(
            "configure TLS on the server (ssl_cert, ssl_key), or lower ssl-mode in the \
                 metastore URL if the network is trusted",
        ),
        WireError::TlsConfig(_) => SinkError::permanent(ErrorClass::Usage, message)
            .with_hint("ssl-ca must name a readable PEM file with the CA's certificate"),
        WireError::Tls {
            mode: "VERIFY_CA" | "VERIFY_IDENTITY",
            ..
        } => SinkError::permanent(ErrorClass::Auth, message).with_hint(
            "check that ssl-ca is the CA that signed the server's certificate and, for \
             VERIFY_IDENTITY, that the certificate names the host in the URL",
        ),
        // No certificate is checked in the other modes: the two sides found no common TLS.
        WireError::Tls { .. } => SinkError::permanent(ErrorClass::Network, message).with_hint(
            "the server's TLS could not be negotiated (TLS 1.2 or newer is needed): update the \
             server's TLS settings, or use ssl-mode=DISABLED on a trusted network",
        ),
        WireError::Protocol(_) => SinkError::permanent(ErrorClass::Network, message)
            .with_hint("check that the metastore URL points at a MySQL or MariaDB server"),
        WireError::Server { code, .. } => match code {
            // Access denied (to the server, the database, a table or column); a password that
            // expired or must be reset; an account locked; an unsupported auth protocol.
            1044 | 1045 | 1142 | 1143 | 1227 | 1251 | 1698 | 1820 | 1862 | 3118 | 4151 => {
                SinkError::permanent(ErrorClass::Auth, message).with_hint(credentials)
            }
            1049 => SinkError::permanent(ErrorClass::NotFound, message).with_hint(
                "create the database, or fix its name in the metastore URL (the path after \
                 host:port)",
            ),
            // No such table or column: not Submarine's schema.
            1146 | 1054 => SinkError::permanent(ErrorClass::NotFound, message).with_hint(tables),
            // Syntax errors and rejected values are bugs in this module: retrying cannot help.
            1064 | 1264 | 1292 | 1366 | 1406 => SinkError::permanent(ErrorClass::Internal, message),
            // Lock wait timeout, deadlock, too many connections, server shutting down, query
            // killed, read-only during a failover, …: they pass.
            _ => SinkError::transient(ErrorClass::Network, message),
        },
    }
}

/// The statements (without the transaction around them) that apply `items` for `experiment`.
/// Consecutive metrics and params are batched into multi-row inserts of at most
/// [`MAX_STATEMENT`] bytes; a purge or a status change flushes them first, to keep queue order.
pub fn statements(experiment: &str, items: &[Item], now: &str) -> Vec<String> {
    let id = quoted(experiment, 64, "experiment id");
    let mut out = vec![format!(
        "INSERT INTO experiment (id, experiment_spec, create_time, update_time, \
         experiment_status, accepted_time) VALUES ({id}, '{{}}', '{now}', '{now}', 'Accepted', \
         '{now}') ON DUPLICATE KEY UPDATE id = id"
    )];
    let mut metrics = Insert::new(
        "INSERT INTO metric (id, `key`, value, worker_index, `timestamp`, step, is_nan) VALUES ",
    );
    let mut params = Insert::new("INSERT INTO param (id, `key`, value, worker_index) VALUES ");
    for change in changes(items, now) {
        match change {
            Change::Metric {
                key,
                value,
                is_nan,
                worker,
                timestamp,
                step,
            } => {
                let in_range = super::submarine::parse_datetime(&timestamp)
                    .is_some_and(|ms| DATETIME_MS.contains(&ms));
                if !in_range {
                    tracing::warn!(key, %timestamp,
                        "metric timestamp outside MySQL's DATETIME range; not stored");
                    continue;
                }
                let row = format!(
                    "({id}, {}, {}, {}, '{timestamp}', {step}, {})",
                    quoted(key, 190, "metric key"),
                    float(value),
                    quoted(worker, 32, "worker index"),
                    u8::from(is_nan)
                );
                metrics.push(&row, &mut out);
            }
            Change::Param { key, value, worker } => {
                let row = format!(
                    "({id}, {}, {}, {})",
                    quoted(&key, 190, "param key"),
                    quoted(&value, 190, "param value"),
                    quoted(worker, 32, "worker index")
                );
                params.push(&row, &mut out);
            }
            Change::Purge {
                keys,
                worker,
                from_step,
            } => {
                metrics.flush(&mut out);
                params.flush(&mut out);
                let head = format!(
                    "DELETE FROM metric WHERE id = {id} AND worker_index = {} AND step >= \
                     {from_step} AND `key` IN (",
                    quoted(worker, 32, "worker index")
                );
                let mut sql = String::new();
                for key in keys {
                    if sql.len() > MAX_STATEMENT {
                        sql.push(')');
                        out.push(std::mem::take(&mut sql));
                    }
                    sql.push_str(if sql.is_empty() { &head } else { ", " });
                    sql.push_str(&quoted(key, 190, "metric key"));
                }
                if !sql.is_empty() {
                    sql.push(')');
                    out.push(sql);
                }
            }
            Change::Status { status, at } => {
                metrics.flush(&mut out);
                params.flush(&mut out);
                out.push(match status {
                    RunStatus::Running => format!(
                        "UPDATE experiment SET experiment_status = 'Running', running_time = \
                         COALESCE(running_time, '{at}'), finished_time = NULL WHERE id = {id}"
                    ),
                    RunStatus::Succeeded | RunStatus::Failed => format!(
                        "UPDATE experiment SET experiment_status = '{}', finished_time = '{at}' \
                         WHERE id = {id}",
                        status.as_submarine()
                    ),
                });
            }
        }
    }
    metrics.flush(&mut out);
    params.flush(&mut out);
    out
}

/// A multi-row `INSERT … ON DUPLICATE KEY UPDATE id = id` being built. Invariant: `sql` is empty
/// or holds the head and at least one row.
struct Insert {
    head: &'static str,
    sql: String,
}

impl Insert {
    fn new(head: &'static str) -> Insert {
        Insert {
            head,
            sql: String::new(),
        }
    }

    fn push(&mut self, row: &str, out: &mut Vec<String>) {
        if self.sql.len() + row.len() > MAX_STATEMENT {
            self.flush(out);
        }
        if self.sql.is_empty() {
            self.sql.push_str(self.head);
        } else {
            self.sql.push_str(", ");
        }
        self.sql.push_str(row);
    }

    fn flush(&mut self, out: &mut Vec<String>) {
        if !self.sql.is_empty() {
            // Keeps the existing row: the first value of a primary key wins.
            self.sql.push_str(" ON DUPLICATE KEY UPDATE id = id");
            out.push(std::mem::take(&mut self.sql));
        }
    }
}

/// A value for a `FLOAT` column: ±Infinity (and finite values beyond `FLOAT`) become its
/// largest value, which MySQL can store; NaN never comes here ([`Change::Metric`] holds 0).
fn float(v: f64) -> String {
    if v.is_finite() && v.abs() <= f32::MAX as f64 {
        format!("{v:e}")
    } else if v > 0.0 {
        FLOAT_MAX.to_string()
    } else {
        format!("-{FLOAT_MAX}")
    }
}

/// `text` as a SQL string literal, cut to `max_chars` characters (the column's width, which a
/// longer value would not fit), escaped as `mysql_real_escape_string` does. Safe because the
/// session's `sql_mode` keeps backslash escapes on and the connection's character set is
/// utf8mb4, which has no multi-byte sequence ending in a quote or backslash byte.
fn quoted(text: &str, max_chars: usize, what: &str) -> String {
    let cut = match text.char_indices().nth(max_chars) {
        Some((end, _)) => {
            tracing::warn!(
                what,
                max_chars,
                "value longer than Submarine's column; cut to fit"
            );
            &text[..end]
        }
        None => text,
    };
    let mut out = String::with_capacity(cut.len() + 2);
    out.push('\'');
    for c in cut.chars() {
        match c {
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\x1a' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Metric, Param};

    fn metric(key: &str, step: i64, value: f64) -> Item {
        Item::Metric(Metric {
            key: key.into(),
            value,
            step,
            timestamp_ms: 1_700_000_000_000 + step,
            worker: "worker-0".into(),
        })
    }

    #[test]
    fn urls_in_both_forms_keep_the_password_out_of_sight() {
        let u = MySqlUrl::parse("mysql+pymysql://sub:p%40ss@db.ns:3307/submarine?charset=utf8mb4")
            .unwrap();
        assert_eq!(u.opts.host, "db.ns");
        assert_eq!(u.opts.port, 3307);
        assert_eq!(u.opts.user, "sub");
        assert_eq!(u.opts.password.expose(), "p@ss");
        assert_eq!(u.opts.database, "submarine");
        assert!(!u.shown().contains("p%40ss") && !format!("{u:?}").contains("p@ss"));
        let u = MySqlUrl::parse("mysql://root@127.0.0.1/m").unwrap();
        assert_eq!((u.opts.port, u.opts.password.expose()), (3306, ""));
        for bad in [
            "mysql://u:hunter2@h/",
            "mysql://:hunter2@h/db",
            "mysql://u:hunter2@h/db?ssl-mode=VERIFY_IDENTITY",
            "mysql://u:hunter2@h/db?ssl_cert=/client.pem",
        ] {
            let e = MySqlUrl::parse(bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::Usage, "{bad}");
            assert!(!e.message.contains("hunter2"), "{}", e.message);
        }
        // TLS options in MySQL's, PyMySQL's and JDBC's spellings.
        let tls = |raw: &str| MySqlUrl::parse(raw).unwrap().opts.tls;
        assert_eq!(tls("mysql://u@h/db"), tls::TlsMode::Preferred);
        assert_eq!(
            tls("mysql+pymysql://u@h/db?ssl_ca=/ca.pem"),
            tls::TlsMode::VerifyCa("/ca.pem".into())
        );
        assert_eq!(
            tls("mysql://u@h/db?ssl-mode=verify_identity&ssl-ca=/ca.pem"),
            tls::TlsMode::VerifyIdentity("/ca.pem".into())
        );
        assert_eq!(
            tls("mysql://u@h/db?sslMode=DISABLED"),
            tls::TlsMode::Disabled
        );
    }

    #[test]
    fn a_batch_becomes_ordered_idempotent_statements() {
        let items = vec![
            metric("loss", 0, 0.5),
            metric("loss", 1, f64::NAN),
            metric("it's", 2, f64::NEG_INFINITY),
            Item::Param(Param {
                key: "lr".into(),
                value: "0.1\\".into(),
                worker: "worker-0".into(),
            }),
            Item::Purge {
                keys: vec!["loss".into()],
                worker: "worker-0".into(),
                from_step: 1,
            },
            metric("loss", 1, 2.0),
            Item::Status {
                status: RunStatus::Failed,
                at_ms: 5000,
            },
        ];
        let s = statements("e'1", &items, "2026-01-01 00:00:00.000");
        assert_eq!(s.len(), 6, "{s:#?}");
        assert!(s[0].starts_with("INSERT INTO experiment") && s[0].contains("VALUES ('e\\'1'"));
        assert_eq!(
            s[1],
            "INSERT INTO metric (id, `key`, value, worker_index, `timestamp`, step, is_nan) VALUES \
             ('e\\'1', 'loss', 5e-1, 'worker-0', '2023-11-14 22:13:20.000', 0, 0), \
             ('e\\'1', 'loss', 0e0, 'worker-0', '2023-11-14 22:13:20.001', 1, 1), \
             ('e\\'1', 'it\\'s', -3.402823466e38, 'worker-0', '2023-11-14 22:13:20.002', 2, 0) \
             ON DUPLICATE KEY UPDATE id = id"
        );
        assert_eq!(
            s[2],
            "INSERT INTO param (id, `key`, value, worker_index) VALUES \
             ('e\\'1', 'lr', '0.1\\\\', 'worker-0') ON DUPLICATE KEY UPDATE id = id"
        );
        assert!(s[3].starts_with("DELETE FROM metric") && s[3].ends_with("`key` IN ('loss')"));
        assert!(s[4].contains("'2023-11-14 22:13:20.001', 1, 0)"));
        assert_eq!(
            s[5],
            "UPDATE experiment SET experiment_status = 'Failed', finished_time = \
             '1970-01-01 00:00:05.000' WHERE id = 'e\\'1'"
        );
    }

    #[test]
    fn long_values_are_cut_to_the_column_and_big_batches_split() {
        let long = "é".repeat(300);
        assert_eq!(quoted(&long, 190, "x").chars().count(), 192);
        let items: Vec<Item> = (0..20_000).map(|i| metric(&long, i, 1.0)).collect();
        let s = statements("e", &items, "2026-01-01 00:00:00.000");
        assert!(s.len() > 2, "{}", s.len());
        assert!(s.iter().all(|q| q.len() <= MAX_STATEMENT + 1024));
    }

    #[test]
    fn failures_are_sorted_into_transient_and_permanent() {
        let server = |code| WireError::Server {
            code,
            state: "HY000".into(),
            message: "m".into(),
        };
        let c = classify(server(1045), "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
        assert!(c.hint.is_some());
        let c = classify(server(1146), "x");
        assert_eq!((c.class, c.transient), (ErrorClass::NotFound, false));
        assert!(c.hint.unwrap().contains("create Submarine's tables"));
        for code in [1205, 1213, 1040, 1053, 1927] {
            assert!(classify(server(code), "x").transient, "{code}");
        }
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(classify(WireError::Io(io), "x").transient);
        // TLS: a certificate the CA does not vouch for is an auth failure; no common protocol
        // in the unverified modes is not about the CA.
        let tls = |mode| WireError::Tls {
            mode,
            source: std::io::Error::other("handshake"),
        };
        let c = classify(tls("VERIFY_IDENTITY"), "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
        assert!(c.hint.unwrap().contains("ssl-ca"));
        let c = classify(tls("PREFERRED"), "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Network, false));
        assert!(c.hint.unwrap().contains("ssl-mode=DISABLED"));
        let c = classify(WireError::TlsUnavailable("REQUIRED"), "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
    }
}
