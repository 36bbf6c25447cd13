//! The metrics pipeline: sources → durable queue → sink, and its loop in the sidecar.
//!
//! [`MetricsPipeline::poll_sources`] reads what the sources have that is new, and appends it to
//! the queue as one record (so a batch is queued whole or not at all), keeping the sources'
//! checkpoint in step (see [`checkpoint`](super::checkpoint)). When the queue is full the sources
//! are simply not read: they pause, and nothing is dropped. [`MetricsPipeline::deliver`] hands
//! queued items to the sink in order and acknowledges them; a failing sink is retried with
//! [`RetryPolicy`] backoff, forever, while the queue keeps everything.
//!
//! [`run`] is the sidecar's loop for it, with the same stop and drain rules as the log shipper
//! ([`crate::sidecar`]): on the first stop request or when the exit-code file appears, keep
//! reading and delivering until two quiet passes, then record the final status and deliver it.
//! This module never prints.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::checkpoint::{SourcesCheckpoint, SourcesState};
use super::ingest::{IngestRequest, Refusal};
use super::model::{now_ms, Item, RunStatus};
use super::queue::{Queue, QueueConfig};
use super::sink::Sink;
use super::{jsonl, run_info, scalars, MetricsError};
use crate::job::JobIdentity;
use crate::retry::{RetryPolicy, Verdict};
use crate::sidecar::{Ending, Lifecycle};

/// The queue's folder inside the state folder.
pub const QUEUE_DIR: &str = "metrics-queue";

/// What the pipeline reads and how. Invariant: `max_items_per_read >= 1`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub state_dir: PathBuf,
    pub identity: JobIdentity,
    /// `--metrics-file` JSONL files.
    pub metrics_files: Vec<PathBuf>,
    /// `--tfevents` folders.
    pub tfevents_roots: Vec<PathBuf>,
    /// Where `periscope localize` put the code (its `localized.json` gives the revision params).
    pub code_dir: Option<PathBuf>,
    pub queue: QueueConfig,
    /// Most items read from tf.events files into one queue record.
    pub max_items_per_read: usize,
    /// Most bytes read from each `--metrics-file` into one queue record.
    pub max_file_bytes_per_read: u64,
    /// Backoff between attempts while the sink fails (its `attempts` is ignored: we never give up).
    pub retry: RetryPolicy,
}

impl PipelineConfig {
    /// Defaults for everything but the identity and state folder.
    pub fn new(state_dir: PathBuf, identity: JobIdentity) -> Self {
        PipelineConfig {
            state_dir,
            identity,
            metrics_files: Vec::new(),
            tfevents_roots: Vec::new(),
            code_dir: None,
            queue: QueueConfig::default(),
            max_items_per_read: 5000,
            max_file_bytes_per_read: 1 << 20,
            retry: RetryPolicy {
                max_delay: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
        }
    }
}

/// One queue record. Invariant: `items` are in the order the sink must apply them.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    experiment: String,
    items: Vec<Item>,
}

/// Counters for logs and the final summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsStats {
    pub queued_items: u64,
    pub delivered_items: u64,
    /// True while the sources are paused because the queue is full.
    pub paused: bool,
    pub sink_failures: u64,
}

/// The running pipeline. Invariant: `state` is what the checkpoint on disk says, and every item
/// the sources gave before it is in the queue.
pub struct MetricsPipeline {
    cfg: PipelineConfig,
    queue: Queue,
    checkpoint: SourcesCheckpoint,
    state: SourcesState,
    sink: Box<dyn Sink>,
    failures: u32,
    retry_at: Option<Instant>,
    stats: MetricsStats,
}

impl MetricsPipeline {
    /// Opens the queue and the checkpoint in the state folder, recovering from a crash.
    pub fn open(cfg: PipelineConfig, sink: Box<dyn Sink>) -> Result<Self, MetricsError> {
        let queue = Queue::open(&cfg.state_dir.join(QUEUE_DIR), cfg.queue)?;
        let checkpoint = SourcesCheckpoint::new(&cfg.state_dir);
        let state = checkpoint
            .load(queue.end())
            .map_err(|source| MetricsError::Checkpoint {
                path: checkpoint.path().to_path_buf(),
                source,
            })?;
        if queue.backlog() > 0 {
            tracing::info!(
                bytes = queue.backlog(),
                "metrics left from a previous run will be delivered"
            );
        }
        Ok(MetricsPipeline {
            cfg,
            queue,
            checkpoint,
            state,
            sink,
            failures: 0,
            retry_at: None,
            stats: MetricsStats::default(),
        })
    }

    /// The metastore, for logs.
    pub fn describe_sink(&self) -> String {
        self.sink.describe()
    }

    /// Counters so far.
    pub fn stats(&self) -> &MetricsStats {
        &self.stats
    }

    /// Undelivered bytes in the queue.
    pub fn backlog(&self) -> u64 {
        self.queue.backlog()
    }

    /// Lines of `--metrics-file`s skipped as not metrics, in all.
    pub fn bad_lines(&self) -> u64 {
        self.state.jsonl.values().map(|s| s.bad_lines).sum()
    }

    /// Queues the start of the run: status Running, the code revision params and tags.
    pub fn start(&mut self) -> Result<(), MetricsError> {
        let mut items = vec![Item::Status {
            status: RunStatus::Running,
            at_ms: now_ms(),
        }];
        if let Some(dir) = &self.cfg.code_dir {
            items.extend(run_info::code_params(dir, &self.cfg.identity.worker));
            items.extend(run_info::code_tags(dir));
        }
        self.enqueue(items)
    }

    /// Queues items that come from no source (status, params). Refused when the queue is full.
    pub fn enqueue(&mut self, items: Vec<Item>) -> Result<(), MetricsError> {
        let state = self.state.clone();
        if self.append(items, state)? {
            Ok(())
        } else {
            Err(MetricsError::Queue(super::queue::QueueError::Full {
                backlog: self.queue.backlog(),
                max: self.cfg.queue.max_bytes,
            }))
        }
    }

    /// Reads new items from every source into the queue. Returns how many were queued (0 when
    /// there was nothing new or the queue is full).
    pub fn poll_sources(&mut self) -> Result<u64, MetricsError> {
        if self.queue.would_refuse(1) {
            if !self.stats.paused {
                tracing::warn!(
                    backlog = self.queue.backlog(),
                    "metrics queue full; sources paused until the metastore catches up"
                );
            }
            self.stats.paused = true;
            return Ok(0);
        }
        let worker = self.cfg.identity.worker.clone();
        let mut items = Vec::new();
        let mut next = self.state.clone();
        for path in &self.cfg.metrics_files {
            let id = path.to_string_lossy().into_owned();
            let current = self.state.jsonl.get(&id).cloned().unwrap_or_default();
            let budget = self.cfg.max_file_bytes_per_read;
            match jsonl::read(path, &current, &worker, budget, &mut items) {
                Ok(s) => {
                    next.jsonl.insert(id, s);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the metrics file; will retry")
                }
            }
        }
        let budget = self
            .cfg
            .max_items_per_read
            .saturating_sub(items.len())
            .max(1);
        match scalars::read(
            &self.cfg.tfevents_roots,
            &self.state.scalars,
            &worker,
            budget,
            &mut items,
        ) {
            Ok(s) => next.scalars = s,
            Err(e) => tracing::warn!(error = %e, "cannot read tf.events folders; will retry"),
        }
        if items.is_empty() {
            if next != self.state {
                self.checkpoint
                    .commit(&next)
                    .map_err(|source| MetricsError::Checkpoint {
                        path: self.checkpoint.path().to_path_buf(),
                        source,
                    })?;
                self.state = next;
            }
            return Ok(0);
        }
        let n = items.len() as u64;
        Ok(if self.append(items, next)? { n } else { 0 })
    }

    /// Appends `items` as one record and moves the sources to `next`, crash-safely. Returns false
    /// when the queue is full (nothing changed).
    fn append(&mut self, items: Vec<Item>, next: SourcesState) -> Result<bool, MetricsError> {
        let n = items.len() as u64;
        let entry = Entry {
            experiment: self.cfg.identity.experiment.clone(),
            items,
        };
        let payload =
            vec![serde_json::to_vec(&entry).map_err(|e| MetricsError::Encode(e.to_string()))?];
        let size = Queue::encoded_len(&payload);
        if self.queue.would_refuse(size) {
            self.stats.paused = true;
            return Ok(false);
        }
        let cp_err = |source| MetricsError::Checkpoint {
            path: self.checkpoint.path().to_path_buf(),
            source,
        };
        // Every append writes its intent first, so a stale intent can never be satisfied by
        // some other record.
        self.checkpoint
            .intend(&self.state, &next, self.queue.end() + size)
            .map_err(cp_err)?;
        self.queue.append(&payload)?;
        // No separate commit: the intent on disk already says `next` is valid now that the
        // record is in the queue (one fewer fsync'd write per batch); the next intent or commit
        // replaces it.
        self.state = next;
        self.stats.queued_items += n;
        self.stats.paused = false;
        Ok(true)
    }

    /// Delivers queued items to the sink until the queue is empty, the sink fails (it is retried
    /// after a backoff) or a pass's worth was delivered. Returns the items delivered.
    pub async fn deliver(&mut self) -> Result<u64, MetricsError> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(0);
        }
        let mut delivered = 0u64;
        while delivered < 100_000 {
            let batch = self.queue.read(1 << 20)?;
            if batch.records.is_empty() {
                break;
            }
            let mut groups: Vec<Entry> = Vec::new();
            for record in &batch.records {
                match serde_json::from_slice::<Entry>(record) {
                    Ok(entry) => match groups.last_mut() {
                        Some(last) if last.experiment == entry.experiment => {
                            last.items.extend(entry.items)
                        }
                        _ => groups.push(entry),
                    },
                    // It passed its checksum, so only a bug (or a newer version) wrote it.
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable metrics queue record skipped")
                    }
                }
            }
            let mut n = 0u64;
            for group in &groups {
                if let Err(e) = self.sink.write(&group.experiment, &group.items).await {
                    if !e.transient {
                        return Err(e.into());
                    }
                    self.failures += 1;
                    self.stats.sink_failures += 1;
                    // A server that said when it will be ready knows better than our backoff.
                    let verdict = self
                        .sink
                        .retry_after()
                        .map_or(Verdict::Transient, Verdict::RetryAfter);
                    let wait = self.cfg.retry.delay(self.failures, verdict);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        backlog = self.queue.backlog(), "metastore write failed; metrics stay queued");
                    self.retry_at = Some(Instant::now() + wait);
                    return Ok(delivered);
                }
                n += group.items.len() as u64;
            }
            self.queue.ack(batch.end)?;
            if self.failures > 0 {
                tracing::info!("metastore writes succeed again");
            }
            self.failures = 0;
            self.retry_at = None;
            delivered += n;
            self.stats.delivered_items += n;
        }
        Ok(delivered)
    }
}

/// Most ingest requests appended as one queue record (group commit: one fsync for all of them).
const INGEST_GROUP: usize = 64;

/// Appends every ingest request waiting now, in groups, and answers each. Returns the items taken.
fn serve_ingest(
    pipeline: &mut MetricsPipeline,
    ingest: &mut Option<mpsc::Receiver<IngestRequest>>,
    first: Option<IngestRequest>,
) -> Result<u64, MetricsError> {
    let mut first = first;
    let mut taken = 0u64;
    loop {
        let mut group: Vec<IngestRequest> = first.take().into_iter().collect();
        while let Some(rx) = ingest.as_mut().filter(|_| group.len() < INGEST_GROUP) {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            return Ok(taken);
        }
        let items: Vec<Item> = group.iter().flat_map(|r| r.items.iter().cloned()).collect();
        let n = items.len() as u64;
        let result = pipeline.enqueue(items);
        let answer = match &result {
            Ok(()) => Ok(()),
            Err(MetricsError::Queue(super::queue::QueueError::Full { .. })) => Err(Refusal::Full),
            Err(e) => Err(Refusal::Failed(e.to_string())),
        };
        for req in group {
            // A client that went away no longer needs the answer.
            let _ = req.reply.send(answer.clone());
        }
        match result {
            Ok(()) => taken += n,
            Err(MetricsError::Queue(super::queue::QueueError::Full { .. })) => return Ok(taken),
            Err(e) => return Err(e),
        }
    }
}

/// The next ingest request; never resolves when there is no endpoint or it has closed.
async fn next_ingest(ingest: &mut Option<mpsc::Receiver<IngestRequest>>) -> IngestRequest {
    if let Some(rx) = ingest {
        if let Some(req) = rx.recv().await {
            return req;
        }
    }
    std::future::pending().await
}

/// Runs the pipeline until `stop` has been signalled (or the exit-code file appeared) and the
/// drain ended. See the module docs.
pub async fn run(
    pipeline: &mut MetricsPipeline,
    cfg: &Lifecycle,
    mut stop: watch::Receiver<u32>,
    mut wake: mpsc::UnboundedReceiver<()>,
    mut ingest: Option<mpsc::Receiver<IngestRequest>>,
) -> Result<Ending, MetricsError> {
    pipeline.start()?;
    let mut drain_deadline: Option<Instant> = None;
    let mut quiet_passes = 0;
    let mut quiet_since = Instant::now();
    let mut final_status_queued = false;
    let mut waiting: Option<IngestRequest> = None;
    // Change notifications can trigger passes microseconds apart; "nothing more is coming" needs
    // quiet passes that also span some time.
    let quiet_for = (cfg.poll_interval * 2).min(Duration::from_millis(400));
    loop {
        let draining = drain_deadline.is_some();
        let read = pipeline.poll_sources()?;
        let ingested = serve_ingest(pipeline, &mut ingest, waiting.take())?;
        pipeline.deliver().await?;
        if let Some(deadline) = drain_deadline {
            if read == 0 && ingested == 0 && pipeline.backlog() == 0 {
                if quiet_passes == 0 {
                    quiet_since = Instant::now();
                }
                quiet_passes += 1;
                if quiet_passes >= 2 && quiet_since.elapsed() >= quiet_for {
                    if !final_status_queued {
                        final_status_queued = true;
                        let status = cfg
                            .exit_when_file
                            .as_deref()
                            .and_then(run_info::status_from_exit_file);
                        if let Some(status) = status {
                            pipeline.enqueue(vec![Item::Status {
                                status,
                                at_ms: now_ms(),
                            }])?;
                            quiet_passes = 0;
                            continue;
                        }
                    }
                    return Ok(Ending::Drained);
                }
            } else {
                quiet_passes = 0;
            }
            if Instant::now() >= deadline {
                return Ok(Ending::Incomplete {
                    backlog: pipeline.backlog(),
                    reason: "drain timeout",
                });
            }
        } else if cfg.exit_when_file.as_ref().is_some_and(|p| p.exists()) {
            tracing::info!("the main container has exited; draining metrics");
            drain_deadline = Some(Instant::now() + cfg.drain_timeout);
            continue;
        }
        // A read that filled its budget left more behind (a large event file, a long JSONL
        // backlog): read on at once rather than one budget per poll interval.
        let more = read as usize >= pipeline.cfg.max_items_per_read;
        let pause = if more {
            Duration::ZERO
        } else if draining {
            Duration::from_millis(100).min(cfg.poll_interval)
        } else {
            cfg.poll_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            Some(()) = wake.recv() => {
                while wake.try_recv().is_ok() {}
            }
            req = next_ingest(&mut ingest) => waiting = Some(req),
            changed = stop.changed() => {
                let requests = if changed.is_ok() { *stop.borrow() } else { 1 };
                if requests >= 2 || changed.is_err() && draining {
                    let backlog = pipeline.backlog();
                    return Ok(if backlog == 0 { Ending::Drained } else {
                        Ending::Incomplete { backlog, reason: "second stop request" }
                    });
                }
                if drain_deadline.is_none() {
                    drain_deadline = Some(Instant::now() + cfg.drain_timeout);
                    quiet_passes = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sqlite::{MetricFilter, SqliteStore};
    use std::io::Write;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn a_locked_metastore_fills_the_queue_pauses_the_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metastore.db");
        let file = dir.path().join("m.jsonl");
        let identity = JobIdentity {
            experiment: "e".into(),
            worker: "worker-0".into(),
        };
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        cfg.metrics_files = vec![file.clone()];
        cfg.queue.max_bytes = 300;
        cfg.max_file_bytes_per_read = 100;
        cfg.retry.base = Duration::from_millis(1);
        cfg.retry.max_delay = Duration::from_millis(1);
        let mut p = MetricsPipeline::open(cfg, Box::new(SqliteStore::open(&db).unwrap())).unwrap();
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..40 {
            writeln!(
                f,
                r#"{{"key":"k","value":{i},"step":{i},"timestamp":{}}}"#,
                1000 + i
            )
            .unwrap();
        }
        // Another writer holds the database: every delivery fails.
        let lock = rusqlite::Connection::open(&db).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let mut queued = 0;
        for _ in 0..5 {
            queued += p.poll_sources().unwrap();
            assert_eq!(p.deliver().await.unwrap(), 0);
        }
        assert!(p.stats().paused, "the file source paused on a full queue");
        assert!(
            queued < 40,
            "the file was not read past what the queue holds"
        );
        assert!(p.backlog() > 0);
        lock.execute_batch("ROLLBACK").unwrap();
        drop(lock);
        for _ in 0..100 {
            p.poll_sources().unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            p.deliver().await.unwrap();
            if p.backlog() == 0 && p.poll_sources().unwrap() == 0 {
                break;
            }
        }
        let rows = SqliteStore::open(&db)
            .unwrap()
            .metrics("e", &MetricFilter::default())
            .unwrap();
        let steps: Vec<i64> = rows.iter().map(|m| m.step).collect();
        assert_eq!(steps, (0..40).collect::<Vec<_>>());
    }

    /// A metastore that is busy and says for how long.
    struct Busy;

    impl Sink for Busy {
        fn describe(&self) -> String {
            "busy".into()
        }

        fn write<'a>(
            &'a mut self,
            _: &'a str,
            _: &'a [Item],
        ) -> futures::future::BoxFuture<'a, Result<(), super::super::SinkError>> {
            Box::pin(async {
                Err(super::super::SinkError::transient(
                    crate::error::ErrorClass::Network,
                    "429",
                ))
            })
        }

        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(5))
        }
    }

    #[tokio::test]
    async fn a_sinks_retry_after_sets_the_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let identity = JobIdentity {
            experiment: "e".into(),
            worker: "worker-0".into(),
        };
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        // Our own backoff alone would retry within 1 ms.
        cfg.retry.base = Duration::from_millis(1);
        cfg.retry.max_delay = Duration::from_secs(10);
        let mut p = MetricsPipeline::open(cfg, Box::new(Busy)).unwrap();
        p.start().unwrap();
        assert_eq!(p.deliver().await.unwrap(), 0);
        let wait = p.retry_at.expect("a retry is scheduled") - Instant::now();
        assert!(wait > Duration::from_millis(4900), "{wait:?}");
        assert!(p.backlog() > 0, "the items stay queued");
    }

    #[tokio::test]
    async fn ingest_requests_are_refused_while_the_queue_is_full_and_taken_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metastore.db");
        let identity = JobIdentity {
            experiment: "e".into(),
            worker: "worker-0".into(),
        };
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        cfg.queue.max_bytes = 200;
        cfg.retry.base = Duration::from_millis(1);
        cfg.retry.max_delay = Duration::from_millis(1);
        let mut p = MetricsPipeline::open(cfg, Box::new(SqliteStore::open(&db).unwrap())).unwrap();
        let (handle, rx) = super::super::ingest::channel(super::super::ingest::RunIdentity {
            experiment: "e".into(),
            worker: "worker-0".into(),
            start_ms: 0,
        });
        drop(handle);
        let mut ingest = Some(rx);
        let metric = |step: i64| {
            Item::Metric(super::super::model::Metric {
                key: "k".into(),
                value: step as f64,
                step,
                timestamp_ms: 1000 + step,
                worker: "worker-0".into(),
            })
        };
        let lock = rusqlite::Connection::open(&db).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let mut answers = Vec::new();
        for step in 0..3 {
            let (reply, answer) = oneshot::channel();
            let first = IngestRequest {
                items: vec![metric(step)],
                reply,
            };
            serve_ingest(&mut p, &mut ingest, Some(first)).unwrap();
            p.deliver().await.unwrap();
            answers.push(answer.await.unwrap());
        }
        // The first request fits in the empty queue; the queue then holds more than 200 bytes.
        assert_eq!(answers[0], Ok(()));
        assert!(answers[1..].contains(&Err(Refusal::Full)), "{answers:?}");
        lock.execute_batch("ROLLBACK").unwrap();
        drop(lock);
        // Past the (1 ms) backoff of the failed attempts.
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.deliver().await.unwrap();
        assert_eq!(p.backlog(), 0);
        let (reply, answer) = oneshot::channel();
        let again = IngestRequest {
            items: vec![metric(9)],
            reply,
        };
        serve_ingest(&mut p, &mut ingest, Some(again)).unwrap();
        assert_eq!(answer.await.unwrap(), Ok(()));
    }
}
