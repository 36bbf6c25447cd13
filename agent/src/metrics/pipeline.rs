//! The metrics pipeline: sources → durable queue → sink, and its loop in the sidecar.
//!
//! [`MetricsPipeline::poll_sources`] reads what the sources have that is new, and appends it to
//! the queue as one record (so a batch is queued whole or not at all), keeping the sources'
//! checkpoint in step (see [`checkpoint`](super::checkpoint)). When the queue is full the sources
//! are simply not read: they pause, and nothing is dropped. So they do while the state folder
//! cannot be written (a full disk): the write is retried with the backoff, ingest requests are
//! refused as when the queue is full (MLflow clients retry), and delivery goes on.
//! [`MetricsPipeline::deliver`] hands queued items to the sink in order and acknowledges them; a
//! failing sink is retried with [`RetryPolicy`] backoff, forever, while the queue keeps everything.
//!
//! The two sides share only the queue, behind a mutex held for one append, read or ack, never
//! across a sink write. The reading side owns the sources, their checkpoint and the queue's end;
//! the delivery side (`Delivery`) owns the sink and the queue's delivered position. So a slow
//! or locked metastore never delays reading sources or answering ingest requests: only the
//! queue's bound does (sources pause, ingest answers 503).
//!
//! [`run`] is the sidecar's loop for it, with the stop and drain rules of every sidecar loop
//! ([`crate::lifecycle`]): once the job is over, keep reading and delivering until the passes are
//! quiet with nothing queued and nothing undelivered, then record the final status and deliver
//! it. While it runs, delivery happens on a thread of
//! its own (sinks may do blocking work, such as SQLite's, inside `write`), which `run` lends the
//! `Delivery` to and takes it back from before returning. This module never prints.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{FusedFuture, FutureExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::checkpoint::{SourcesCheckpoint, SourcesState};
use super::intake::{IngestRequest, Refusal};
use super::model::{now_ms, Item, RunStatus};
use super::queue::{Queue, QueueConfig, QueueError};
use super::sink::{Sink, SinkError};
use super::{jsonl, run_info, scalars, MetricsError};
use crate::error::Classify;
use crate::job::JobIdentity;
use crate::lifecycle::{Drain, Ending, Next, Stop};
use crate::retry::{Outage, RetryPolicy, Verdict};

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
    /// A folder searched for the event files a command writes of its own accord.
    pub tfevents_search: Option<crate::tfevents::Search>,
    /// The sources the run's code came from: their revisions become params and tags.
    pub code: Vec<crate::localized::Entry>,
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
            tfevents_search: None,
            code: Vec::new(),
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
    /// True while the sources are paused because the queue is full or cannot be written.
    pub paused: bool,
    pub sink_failures: u64,
}

/// The queue as the reading side and the delivery side share it.
type SharedQueue = Arc<Mutex<Queue>>;

/// Locks the queue. A thread that panicked while holding it is reported by [`run`] anyway, and
/// the queue's state on disk stays valid (appends and acks are crash-safe), so its data is used.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most items one delivery pass hands to the sink before letting its caller look around.
const PASS_ITEMS: u64 = 100_000;

/// How delivery to the metastore goes: counted and set by the delivery side, read by
/// [`MetricsPipeline::stats`] and by the sidecar's health endpoints; with it, how writes to the
/// queue go (set by the reading side). Invariant: `failing` holds the last write's error exactly
/// while that write has not been followed by a successful one.
#[derive(Debug, Default)]
pub struct DeliveryStatus {
    delivered_items: AtomicU64,
    sink_failures: AtomicU64,
    failing: Mutex<Option<String>>,
    /// Appends to the queue (and the sources' checkpoint) that fail for want of a writable state
    /// folder, while they do.
    pub queue_writes: Outage,
}

impl DeliveryStatus {
    /// Why the metastore does not take writes right now, while it does not.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Metastore writes that failed so far (each is retried).
    pub fn failures(&self) -> u64 {
        self.sink_failures.load(Ordering::Relaxed)
    }

    fn set_failing(&self, error: Option<String>) {
        *self.failing.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// How often a metastore that keeps refusing is reported again while it does.
const REPORT_AGAIN: Duration = Duration::from_secs(60);

/// The delivery side: owns the sink, reads batches from the shared queue, writes them without
/// holding the queue's lock, then acknowledges them. Invariant: only it moves the queue's
/// delivered position, so what it read stays in the queue until its ack.
struct Delivery {
    queue: SharedQueue,
    sink: Box<dyn Sink>,
    retry: RetryPolicy,
    failures: u32,
    retry_at: Option<Instant>,
    counters: Arc<DeliveryStatus>,
    /// When the current failure was last logged, and with which message.
    reported: Option<(Instant, String)>,
    /// The delivered position could not be written at the last ack (it is taken anyway).
    position_unsaved: bool,
}

impl Delivery {
    /// Delivers queued items to the sink until the queue is empty, the sink fails (it is retried
    /// after a backoff) or a pass's worth was delivered. Returns the items delivered.
    async fn deliver(&mut self) -> Result<u64, MetricsError> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(0);
        }
        let mut delivered = 0u64;
        while delivered < PASS_ITEMS {
            let batch = lock(&self.queue).read(1 << 20)?;
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
                // The queue is not locked here: appends go on while the metastore is slow.
                if let Err(e) = self.sink.write(&group.experiment, &group.items).await {
                    self.failed(&e);
                    return Ok(delivered);
                }
                n += group.items.len() as u64;
            }
            let acked = lock(&self.queue).ack(batch.end);
            self.position_saved(acked);
            if self.failures > 0 {
                tracing::info!("metastore writes succeed again");
                self.counters.set_failing(None);
            }
            self.failures = 0;
            self.retry_at = None;
            self.reported = None;
            delivered += n;
            self.counters
                .delivered_items
                .fetch_add(n, Ordering::Relaxed);
        }
        Ok(delivered)
    }

    /// Says once when the delivered position starts failing to be written (a full state folder)
    /// and once when it is written again. Delivery goes on meanwhile: the sink stored the records.
    fn position_saved(&mut self, acked: Result<(), QueueError>) {
        match acked {
            Ok(()) if self.position_unsaved => {
                tracing::info!("the metrics queue's delivered position is written again");
                self.position_unsaved = false;
            }
            Ok(()) => {}
            Err(e) if !self.position_unsaved => {
                tracing::warn!(error = %e,
                    "cannot write the metrics queue's delivered position; delivery goes on (after a crash meanwhile, some metrics are delivered again)");
                self.position_unsaved = true;
            }
            Err(_) => {}
        }
    }

    /// A write failed: keeps the batch queued and schedules the next attempt after a backoff.
    /// Whatever the failure, acknowledged metrics are never dropped: a metastore that refuses
    /// (a revoked privilege, a dropped table) is tried again, as one that does not answer is, and
    /// recovers when the cause is mended; meanwhile the log and the health endpoints say why.
    fn failed(&mut self, e: &SinkError) {
        self.failures += 1;
        self.counters.sink_failures.fetch_add(1, Ordering::Relaxed);
        // A server that said when it will be ready knows better than our backoff.
        let verdict = self
            .sink
            .retry_after()
            .map_or(Verdict::Transient, Verdict::RetryAfter);
        let wait = self.retry.delay(self.failures, verdict);
        self.retry_at = Some(Instant::now() + wait);
        let message = e.to_string();
        self.counters.set_failing(Some(message.clone()));
        let repeat = self
            .reported
            .as_ref()
            .is_some_and(|(at, m)| *m == message && at.elapsed() < REPORT_AGAIN);
        if repeat {
            tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "metastore write failed again");
            return;
        }
        self.reported = Some((Instant::now(), message));
        let backlog = lock(&self.queue).backlog();
        if e.transient {
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, backlog,
                "metastore write failed; metrics stay queued");
        } else {
            let hint = e.hint().unwrap_or_default();
            tracing::error!(error = %e, hint = %hint, retry_in_ms = wait.as_millis() as u64, backlog,
                "the metastore refuses writes; metrics stay queued and are retried until it takes them");
        }
    }
}

/// The running pipeline. Invariants: `state` is what the checkpoint on disk says, and every item
/// the sources gave before it is in the queue; only this side appends to the queue, so its end
/// moves only here. `delivery` is `None` only while [`run`] has lent it to its thread. When
/// `checkpoint_settled` is true, the checkpoint on disk resolves to `state` however far the
/// queue's end moves (no pending intent, or one whose record is in the queue).
pub struct MetricsPipeline {
    cfg: PipelineConfig,
    queue: SharedQueue,
    checkpoint: SourcesCheckpoint,
    state: SourcesState,
    checkpoint_settled: bool,
    delivery: Option<Delivery>,
    sink_name: String,
    /// Tells the delivery side that something was appended.
    appended: Arc<Notify>,
    counters: Arc<DeliveryStatus>,
    stats: MetricsStats,
    /// Items from no source that wait for the queue to take them (the run's start, queued
    /// before anything the sources give). Nobody was told they are stored.
    held: Vec<Item>,
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
        let queue = Arc::new(Mutex::new(queue));
        let counters = Arc::new(DeliveryStatus::default());
        Ok(MetricsPipeline {
            sink_name: sink.describe(),
            delivery: Some(Delivery {
                queue: queue.clone(),
                sink,
                retry: cfg.retry,
                failures: 0,
                retry_at: None,
                counters: counters.clone(),
                reported: None,
                position_unsaved: false,
            }),
            cfg,
            queue,
            checkpoint,
            state,
            // A pending intent left on disk may still wait for a queue end not reached yet: the
            // first append writes an intent of its own.
            checkpoint_settled: false,
            appended: Arc::new(Notify::new()),
            counters,
            stats: MetricsStats::default(),
            held: Vec::new(),
        })
    }

    /// The metastore, for logs.
    pub fn describe_sink(&self) -> String {
        self.sink_name.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> MetricsStats {
        MetricsStats {
            delivered_items: self.counters.delivered_items.load(Ordering::Relaxed),
            sink_failures: self.counters.sink_failures.load(Ordering::Relaxed),
            ..self.stats.clone()
        }
    }

    /// How delivery goes, shared with whoever reports it (the health endpoints).
    pub fn status(&self) -> Arc<DeliveryStatus> {
        self.counters.clone()
    }

    /// Undelivered bytes in the queue.
    pub fn backlog(&self) -> u64 {
        lock(&self.queue).backlog()
    }

    /// Lines of `--metrics-file`s skipped as not metrics, in all.
    pub fn bad_lines(&self) -> u64 {
        self.state.jsonl.values().map(|s| s.bad_lines).sum()
    }

    /// Queues the start of the run: status Running, the code revision params and tags. While the
    /// queue cannot take them, they wait in memory, ahead of the sources.
    pub fn start(&mut self) -> Result<(), MetricsError> {
        let mut items = vec![Item::Status {
            status: RunStatus::Running,
            at_ms: now_ms(),
        }];
        items.extend(run_info::code_params(
            &self.cfg.code,
            &self.cfg.identity.worker,
        ));
        items.extend(run_info::code_tags(&self.cfg.code));
        self.held = items;
        self.queue_held().map(|_| ())
    }

    /// Queues the held items, if any. Returns whether none are left.
    fn queue_held(&mut self) -> Result<bool, MetricsError> {
        if self.held.is_empty() {
            return Ok(true);
        }
        let state = self.state.clone();
        let items = std::mem::take(&mut self.held);
        if self.append(items.clone(), state)? {
            return Ok(true);
        }
        self.held = items;
        Ok(false)
    }

    /// Queues items that come from no source (status, params). Refused with
    /// [`QueueError::Full`] when the queue is full or the state folder cannot be written.
    pub fn enqueue(&mut self, items: Vec<Item>) -> Result<(), MetricsError> {
        let state = self.state.clone();
        if self.append(items, state)? {
            Ok(())
        } else {
            Err(self.full())
        }
    }

    /// Queues what an ingest request carries; the run's failure, when it says so, is marked
    /// first (once the script hears "stored", a restart must still know).
    fn ingest(&mut self, items: Vec<Item>, script_failed: bool) -> Result<(), MetricsError> {
        if script_failed {
            if let Err(e) = run_info::remember_script_failure(&self.cfg.state_dir) {
                self.write_failed(e)?;
                return Err(self.full());
            }
        }
        self.enqueue(items)
    }

    /// The refusal of an append the queue cannot take now.
    fn full(&self) -> MetricsError {
        MetricsError::Queue(QueueError::Full {
            backlog: self.backlog(),
            max: self.cfg.queue.max_bytes,
        })
    }

    /// A write to the state folder failed: when it is one (a full or read-only disk), the
    /// sources pause and it is retried after the backoff, said once per episode; anything else
    /// is returned.
    fn write_failed(&mut self, e: MetricsError) -> Result<(), MetricsError> {
        if !matches!(
            e,
            MetricsError::Checkpoint { .. } | MetricsError::Queue(QueueError::Io { .. })
        ) {
            return Err(e);
        }
        self.stats.paused = true;
        if self
            .counters
            .queue_writes
            .failed(&self.cfg.retry, &e.to_string())
        {
            tracing::warn!(error = %e,
                "cannot write the metrics queue in the state folder; sources wait and ingest requests are refused until it can (delivery goes on, nothing is dropped)");
        }
        Ok(())
    }

    /// A write to the state folder worked: ends an episode of failures, saying so.
    fn write_worked(&mut self) {
        if self.counters.queue_writes.succeeded() {
            tracing::info!("the metrics queue takes writes again; sources resume");
        }
    }

    /// Reads new items from every source into the queue. Returns how many were queued (0 when
    /// there was nothing new or the queue is full).
    pub fn poll_sources(&mut self) -> Result<u64, MetricsError> {
        if lock(&self.queue).would_refuse(1) {
            if !self.stats.paused {
                tracing::warn!(
                    backlog = self.backlog(),
                    "metrics queue full; sources paused until the metastore catches up"
                );
            }
            self.stats.paused = true;
            return Ok(0);
        }
        if !self.counters.queue_writes.due() || !self.queue_held()? {
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
            self.cfg.tfevents_search.as_ref(),
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
                let committed =
                    self.checkpoint
                        .commit(&next)
                        .map_err(|source| MetricsError::Checkpoint {
                            path: self.checkpoint.path().to_path_buf(),
                            source,
                        });
                match committed {
                    Ok(()) => {
                        self.write_worked();
                        self.state = next;
                        self.checkpoint_settled = true;
                    }
                    // The sources are read again from `state` after the backoff.
                    Err(e) => self.write_failed(e)?,
                }
            }
            return Ok(0);
        }
        let n = items.len() as u64;
        Ok(if self.append(items, next)? { n } else { 0 })
    }

    /// Appends `items` as one record and moves the sources to `next`, crash-safely. Returns false
    /// when the queue is full or the state folder cannot be written (nothing changed).
    fn append(&mut self, items: Vec<Item>, next: SourcesState) -> Result<bool, MetricsError> {
        let n = items.len() as u64;
        let entry = Entry {
            experiment: self.cfg.identity.experiment.clone(),
            items,
        };
        let payload =
            vec![serde_json::to_vec(&entry).map_err(|e| MetricsError::Encode(e.to_string()))?];
        let size = Queue::encoded_len(&payload);
        // Held for the whole append (a check, an intent and one fsync'd record), not longer: the
        // delivery side only waits that long to read or acknowledge.
        let mut queue = lock(&self.queue);
        if queue.would_refuse(size) || !self.counters.queue_writes.due() {
            self.stats.paused = true;
            return Ok(false);
        }
        let cp_err = |source| MetricsError::Checkpoint {
            path: self.checkpoint.path().to_path_buf(),
            source,
        };
        let mut written = Ok(());
        // An append that moves the sources writes its intent first, so a stale intent can never
        // be satisfied by some other record. An append that leaves them where they are (ingest
        // requests, status, params) needs none once the checkpoint is settled: whatever the
        // queue's end becomes, the file on disk already resolves to `state`. This saves ingest
        // two fsyncs (file and folder) per request.
        if !(self.checkpoint_settled && next == self.state) {
            // Until the record is in the queue, the file on disk waits for it.
            self.checkpoint_settled = false;
            written = self
                .checkpoint
                .intend(&self.state, &next, queue.end() + size)
                .map_err(cp_err);
        }
        if written.is_ok() {
            written = queue.append(&payload).map_err(MetricsError::from);
        }
        drop(queue);
        if let Err(e) = written {
            self.write_failed(e)?;
            return Ok(false);
        }
        self.write_worked();
        self.checkpoint_settled = true;
        self.appended.notify_one();
        // No separate commit: the intent on disk already says `next` is valid now that the
        // record is in the queue (one fewer fsync'd write per batch); the next intent or commit
        // replaces it.
        self.state = next;
        self.stats.queued_items += n;
        self.stats.paused = false;
        Ok(true)
    }

    /// Delivers queued items to the sink until the queue is empty, the sink fails (it is retried
    /// after a backoff) or a pass's worth was delivered, on the caller's task (outside [`run`],
    /// which delivers on a thread of its own). Returns the items delivered.
    pub async fn deliver(&mut self) -> Result<u64, MetricsError> {
        match &mut self.delivery {
            Some(delivery) => delivery.deliver().await,
            None => Err(MetricsError::DeliveryLost),
        }
    }
}

/// What the delivery thread gives back: the delivery, and why it stopped (`Ok` when asked to).
type DeliveryEnd = (Delivery, Result<(), MetricsError>);

/// Runs `delivery` on a thread of its own until `stop` (or a queue error), so neither a
/// sink's blocking work nor its waits delay the loop that reads sources and answers ingest.
fn spawn_delivery(
    mut delivery: Delivery,
    appended: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<oneshot::Receiver<DeliveryEnd>, MetricsError> {
    let thread_err = |e: std::io::Error| MetricsError::Thread(e.to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(thread_err)?;
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new()
        .name("metrics-delivery".into())
        .spawn(move || {
            let result = runtime.block_on(deliver_until(&mut delivery, &appended, &mut stop));
            // `run` went away only if it panicked; nobody needs the delivery then.
            let _ = done.send((delivery, result));
        })
        .map_err(thread_err)?;
    Ok(ended)
}

/// The delivery thread's loop: deliver, then wait for an append or the retry time.
async fn deliver_until(
    delivery: &mut Delivery,
    appended: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), MetricsError> {
    loop {
        // A write cut short by the stop was not acknowledged: it is delivered again next start
        // (sinks are idempotent).
        let delivered = tokio::select! {
            r = delivery.deliver() => r?,
            _ = stop.wait_for(|&s| s) => return Ok(()),
        };
        if delivered > 0 {
            continue;
        }
        // Appends while we waited or wrote left a permit in `appended`, so none is missed.
        let retry_at = delivery.retry_at.map(tokio::time::Instant::from_std);
        let sink = &mut delivery.sink;
        tokio::select! {
            _ = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => {
                        // Nothing to write: after a short while, the sink gives back its server
                        // connection until the next append.
                        let quiet = tokio::time::sleep(RELEASE_AFTER);
                        tokio::select! {
                            _ = appended.notified() => return,
                            _ = quiet => sink.release().await,
                        }
                        appended.notified().await
                    }
                }
            } => {}
            _ = stop.wait_for(|&s| s) => return Ok(()),
        }
    }
}

/// How long the delivery thread waits with nothing to write before the sink releases its server
/// connection. A fleet of sidecars shares a server's `max_connections`: 200 writing once a
/// second each, which release theirs this long after a write, held at most 82 of MariaDB's 151
/// at once (`bench/fleet`); at 0.5 s they took all 151, and the ones refused waited out a
/// backoff. A sidecar writing more than ten times a second keeps its connection.
const RELEASE_AFTER: Duration = Duration::from_millis(100);

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
        let script_failed = items.iter().any(|i| {
            matches!(
                i,
                Item::Status {
                    status: RunStatus::Failed,
                    ..
                }
            )
        });
        let result = pipeline.ingest(items, script_failed);
        let answer = match &result {
            Ok(()) => Ok(()),
            Err(MetricsError::Queue(QueueError::Full { .. })) => Err(Refusal::Full),
            Err(e) => Err(Refusal::Failed(e.to_string())),
        };
        for req in group {
            // A client that went away no longer needs the answer.
            let _ = req.reply.send(answer.clone());
        }
        match result {
            Ok(()) => taken += n,
            Err(MetricsError::Queue(QueueError::Full { .. })) => return Ok(taken),
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

/// Runs the pipeline until the drain ends (see [`crate::lifecycle`]), delivering on a thread of
/// its own meanwhile. See the module docs.
pub async fn run(
    pipeline: &mut MetricsPipeline,
    drain: Drain,
    stop: Stop,
    wake: mpsc::UnboundedReceiver<()>,
    ingest: Option<mpsc::Receiver<IngestRequest>>,
) -> Result<Ending, MetricsError> {
    pipeline.start()?;
    let delivery = pipeline.delivery.take().ok_or(MetricsError::DeliveryLost)?;
    let (stop_delivery, stopped) = watch::channel(false);
    let mut ended = spawn_delivery(delivery, pipeline.appended.clone(), stopped)?.fuse();
    let ending = serve(pipeline, drain, stop, wake, ingest, &mut ended).await;
    if ended.is_terminated() {
        return ending;
    }
    // Drained means nothing is left to write; otherwise what is in flight stays queued.
    let _ = stop_delivery.send(true);
    let (delivery, result) = ended.await.map_err(|_| MetricsError::DeliveryLost)?;
    pipeline.delivery = Some(delivery);
    result?;
    ending
}

/// [`run`]'s loop, reading sources and answering ingest while the delivery thread (`ended`
/// resolves when it stops) empties the queue. Once drained, the run's final status is queued and
/// delivered before the loop ends.
async fn serve(
    pipeline: &mut MetricsPipeline,
    mut drain: Drain,
    mut stop: Stop,
    mut wake: mpsc::UnboundedReceiver<()>,
    mut ingest: Option<mpsc::Receiver<IngestRequest>>,
    ended: &mut futures::future::Fuse<oneshot::Receiver<DeliveryEnd>>,
) -> Result<Ending, MetricsError> {
    let mut final_status_queued = false;
    let mut waiting: Option<IngestRequest> = None;
    loop {
        let read = pipeline.poll_sources()?;
        let ingested = serve_ingest(pipeline, &mut ingest, waiting.take())?;
        let idle =
            read == 0 && ingested == 0 && pipeline.backlog() == 0 && pipeline.held.is_empty();
        match drain.after_pass(idle, pipeline.backlog()) {
            Next::End(Ending::Drained) => {
                if !final_status_queued {
                    final_status_queued = true;
                    let status = drain
                        .settings()
                        .exit_when_file
                        .as_deref()
                        .and_then(|exit| run_info::final_status(exit, &pipeline.cfg.state_dir));
                    if let Some(status) = status {
                        let item = Item::Status {
                            status,
                            at_ms: now_ms(),
                        };
                        match pipeline.enqueue(vec![item]) {
                            Ok(()) => {
                                drain.quiet_again();
                                continue;
                            }
                            // Tried again after the pause (a full queue or state folder).
                            Err(MetricsError::Queue(QueueError::Full { .. })) => {
                                final_status_queued = false;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                if final_status_queued {
                    run_info::forget_script_failure(&pipeline.cfg.state_dir);
                    return Ok(Ending::Drained);
                }
            }
            Next::End(ending) => return Ok(ending),
            Next::PassNow => continue,
            Next::Continue => {}
        }
        // A read that filled its budget left more behind (a large event file, a long JSONL
        // backlog): read on at once rather than one budget per poll interval.
        let more = read as usize >= pipeline.cfg.max_items_per_read;
        let pause = if more { Duration::ZERO } else { drain.pause() };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            Some(()) = wake.recv() => {
                while wake.try_recv().is_ok() {}
            }
            req = next_ingest(&mut ingest) => waiting = Some(req),
            // The delivery thread stops by itself only on a queue error (the disk).
            end = &mut *ended => {
                let (delivery, result) = end.map_err(|_| MetricsError::DeliveryLost)?;
                pipeline.delivery = Some(delivery);
                result?;
                return Err(MetricsError::DeliveryLost);
            }
            requests = stop.next() => {
                if let Next::End(ending) = drain.on_stop(requests, || pipeline.backlog()) {
                    return Ok(ending);
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

    fn identity() -> JobIdentity {
        JobIdentity {
            experiment: "e".into(),
            worker: "worker-0".into(),
        }
    }

    /// Metric `k` at `step`, with `step` as its value.
    fn metric(step: i64) -> Item {
        Item::Metric(super::super::model::Metric {
            key: "k".into(),
            value: step as f64,
            step,
            timestamp_ms: 1000 + step,
            worker: "worker-0".into(),
        })
    }

    #[tokio::test]
    async fn ingest_skips_the_checkpoint_only_when_no_intent_is_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let db = dir.path().join("metastore.db");
        let file = dir.path().join("m.jsonl");
        let mut cfg = PipelineConfig::new(state_dir.clone(), identity());
        cfg.metrics_files = vec![file.clone()];
        let open = |cfg: &PipelineConfig| {
            MetricsPipeline::open(cfg.clone(), Box::new(SqliteStore::open(&db).unwrap())).unwrap()
        };
        let line = |i: i64| {
            format!(
                r#"{{"key":"f","value":{i},"step":{i},"timestamp":{}}}"#,
                1000 + i
            )
        };
        let mut f = std::fs::File::create(&file).unwrap();
        writeln!(f, "{}\n{}", line(0), line(1)).unwrap();
        let checkpoint = state_dir.join(super::super::checkpoint::CHECKPOINT_FILE);

        let mut p = open(&cfg);
        assert_eq!(p.poll_sources().unwrap(), 2);
        // Ingest appends leave the sources where they are: the checkpoint is not rewritten.
        let before = std::fs::read(&checkpoint).unwrap();
        p.enqueue(vec![metric(10)]).unwrap();
        p.enqueue(vec![metric(11)]).unwrap();
        assert_eq!(std::fs::read(&checkpoint).unwrap(), before);

        // A read whose record is lost in a crash leaves an intent waiting for a queue end that
        // later ingest appends reach: the first append after the restart must replace it, or
        // the next restart would take the lost line as read.
        writeln!(f, "{}", line(2)).unwrap();
        let end_before = lock(&p.queue).end();
        assert_eq!(p.poll_sources().unwrap(), 1);
        let lost_end = lock(&p.queue).end();
        drop(p);
        let seg = state_dir.join(QUEUE_DIR).join(format!("seg-{:020}.q", 0));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[lost_end as usize - 1] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let mut p = open(&cfg);
        assert_eq!(lock(&p.queue).end(), end_before);
        p.enqueue((20..30).map(metric).collect()).unwrap();
        assert!(lock(&p.queue).end() >= lost_end);
        drop(p);
        let mut p = open(&cfg);
        assert_eq!(p.poll_sources().unwrap(), 1, "the lost line is read again");
        while p.backlog() > 0 {
            p.deliver().await.unwrap();
        }
        let store = SqliteStore::open(&db).unwrap();
        let f_steps: Vec<i64> = store
            .metrics(
                "e",
                &MetricFilter {
                    key: Some("f".into()),
                    ..MetricFilter::default()
                },
            )
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(f_steps, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_locked_metastore_fills_the_queue_pauses_the_file_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metastore.db");
        let file = dir.path().join("m.jsonl");
        let identity = identity();
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

    #[tokio::test]
    async fn an_unwritable_state_folder_pauses_sources_refuses_ingest_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let db = dir.path().join("metastore.db");
        let file = dir.path().join("m.jsonl");
        let mut cfg = PipelineConfig::new(state_dir.clone(), identity());
        cfg.metrics_files = vec![file.clone()];
        cfg.retry = RetryPolicy {
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let mut p = MetricsPipeline::open(cfg, Box::new(SqliteStore::open(&db).unwrap())).unwrap();
        let mut f = std::fs::File::create(&file).unwrap();
        let line = |i: i64| format!(r#"{{"key":"f","value":{i},"step":{i},"timestamp":{i}}}"#);
        writeln!(f, "{}", line(0)).unwrap();
        assert_eq!(p.poll_sources().unwrap(), 1);
        // A folder where the sources' checkpoint goes: writing it fails, as on a full disk.
        let blocker = state_dir.join(super::super::checkpoint::CHECKPOINT_FILE);
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        writeln!(f, "{}", line(1)).unwrap();
        assert_eq!(p.poll_sources().unwrap(), 0);
        assert!(p.stats().paused);
        assert!(p.status().queue_writes.failing().is_some());
        // Ingest is refused as when the queue is full (the endpoint answers 503, clients retry).
        assert!(matches!(
            p.enqueue(vec![metric(10)]),
            Err(MetricsError::Queue(QueueError::Full { .. }))
        ));
        // Delivery goes on meanwhile.
        assert_eq!(p.deliver().await.unwrap(), 1);
        std::fs::remove_dir_all(&blocker).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(p.poll_sources().unwrap(), 1);
        assert!(!p.stats().paused);
        assert!(p.status().queue_writes.failing().is_none());
        p.enqueue(vec![metric(10)]).unwrap();
        assert_eq!(p.deliver().await.unwrap(), 2);
        let rows = SqliteStore::open(&db)
            .unwrap()
            .metrics("e", &MetricFilter::default())
            .unwrap();
        let mut steps: Vec<i64> = rows.iter().map(|m| m.step).collect();
        steps.sort();
        assert_eq!(steps, [0, 1, 10]);
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
        let identity = identity();
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        // Our own backoff alone would retry within 1 ms.
        cfg.retry.base = Duration::from_millis(1);
        cfg.retry.max_delay = Duration::from_secs(10);
        let mut p = MetricsPipeline::open(cfg, Box::new(Busy)).unwrap();
        p.start().unwrap();
        assert_eq!(p.deliver().await.unwrap(), 0);
        let retry_at = p.delivery.as_ref().and_then(|d| d.retry_at);
        let wait = retry_at.expect("a retry is scheduled") - Instant::now();
        assert!(wait > Duration::from_millis(4900), "{wait:?}");
        assert!(p.backlog() > 0, "the items stay queued");
    }

    #[tokio::test]
    async fn ingest_requests_are_refused_while_the_queue_is_full_and_taken_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metastore.db");
        let identity = identity();
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        cfg.queue.max_bytes = 200;
        cfg.retry.base = Duration::from_millis(1);
        cfg.retry.max_delay = Duration::from_millis(1);
        let mut p = MetricsPipeline::open(cfg, Box::new(SqliteStore::open(&db).unwrap())).unwrap();
        let (handle, rx) =
            crate::metrics::mlflow::ingest::channel(crate::metrics::mlflow::ingest::RunIdentity {
                experiment: "e".into(),
                worker: "worker-0".into(),
                start_ms: 0,
            });
        drop(handle);
        let mut ingest = Some(rx);
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

    /// A metastore whose first write waits until the test releases it, and that records what
    /// it was given.
    struct Held {
        started: Option<oneshot::Sender<()>>,
        release: Option<oneshot::Receiver<()>>,
        written: Arc<Mutex<Vec<Item>>>,
    }

    impl Sink for Held {
        fn describe(&self) -> String {
            "held".into()
        }

        fn write<'a>(
            &'a mut self,
            _: &'a str,
            items: &'a [Item],
        ) -> futures::future::BoxFuture<'a, Result<(), super::super::SinkError>> {
            Box::pin(async move {
                if let Some(started) = self.started.take() {
                    let _ = started.send(());
                }
                if let Some(release) = self.release.take() {
                    let _ = release.await;
                }
                self.written.lock().unwrap().extend(items.iter().cloned());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn ingest_is_answered_and_sources_are_queued_while_a_write_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.jsonl");
        std::fs::File::create(&file).unwrap();
        let identity = identity();
        let mut cfg = PipelineConfig::new(dir.path().join("state"), identity);
        cfg.metrics_files = vec![file.clone()];
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Held {
            started: Some(started_tx),
            release: Some(release_rx),
            written: written.clone(),
        };
        let mut p = MetricsPipeline::open(cfg, Box::new(sink)).unwrap();
        let (requests, ingest) = mpsc::channel(8);
        let (stop_tx, stop) = Stop::channel();
        let (wake_tx, wake) = mpsc::unbounded_channel();
        let lifecycle = crate::lifecycle::Lifecycle {
            poll_interval: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(3600),
            exit_when_file: None,
        };
        let drain = Drain::new(lifecycle, "metrics", Default::default());
        let task = tokio::spawn(async move {
            let ending = run(&mut p, drain, stop, wake, Some(ingest)).await;
            (ending, p)
        });
        let ask = |items: Vec<Item>| {
            let (reply, answer) = oneshot::channel();
            (IngestRequest { items, reply }, answer)
        };
        // The run's Running status is being written, and that write does not return.
        started.await.unwrap();
        // A guard against hanging forever, not a speed requirement.
        let guard = Duration::from_secs(60);
        let (req, answer) = ask(vec![metric(1)]);
        requests.send(req).await.unwrap();
        let first = tokio::time::timeout(guard, answer).await;
        assert_eq!(
            first.expect("answered while the write hangs").unwrap(),
            Ok(())
        );
        // The file source is read and queued too: its line is queued before the next ingest
        // request is answered (each pass reads the sources first).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        writeln!(f, r#"{{"key":"k","value":2,"step":2,"timestamp":1002}}"#).unwrap();
        drop(f);
        wake_tx.send(()).unwrap();
        let (req, answer) = ask(vec![metric(3)]);
        requests.send(req).await.unwrap();
        let second = tokio::time::timeout(guard, answer).await;
        assert_eq!(
            second.expect("answered while the write hangs").unwrap(),
            Ok(())
        );
        assert!(
            written.lock().unwrap().is_empty(),
            "the write is still held"
        );
        release.send(()).unwrap();
        stop_tx.request();
        let (ending, p) = task.await.unwrap();
        assert_eq!(ending.unwrap(), Ending::Drained);
        assert_eq!(p.backlog(), 0);
        let steps: Vec<i64> = written
            .lock()
            .unwrap()
            .iter()
            .filter_map(|item| match item {
                Item::Metric(m) => Some(m.step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![1, 2, 3], "delivered in the order queued");
        assert_eq!(p.stats().delivered_items, 4);
    }
}
