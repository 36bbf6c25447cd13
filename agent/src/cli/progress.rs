//! How localize progress is shown: bars on a terminal, a log line every few seconds elsewhere,
//! and the one line that says what each source became.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use periscope::localize::{Entry, ProgressEvent, ProgressSink};

use super::size::human;

/// How often a non-terminal run logs progress for a source that is still moving.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows progress for every source of one run. Invariant: with `announce`, each source that is
/// done is said once, in a log line; without, the caller prints its own summary.
pub struct Display {
    view: View,
    announce: bool,
}

enum View {
    Bars(Bars),
    Lines(Lines),
}

impl Display {
    /// Bars when stderr is a terminal, log lines otherwise; each source that is done is logged
    /// with [`summary_line`] (for commands that print no summary of their own).
    pub fn for_stderr() -> Display {
        let view = if std::io::stderr().is_terminal() {
            View::Bars(Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(Vec::new()),
            })
        } else {
            View::Lines(Lines {
                state: Mutex::new(Vec::new()),
            })
        };
        Display {
            view,
            announce: true,
        }
    }

    /// As [`Display::for_stderr`], for a command that prints the summary itself.
    pub fn without_summary() -> Display {
        Display {
            announce: false,
            ..Display::for_stderr()
        }
    }
}

impl ProgressSink for Display {
    fn event(&self, source: usize, event: ProgressEvent) {
        if let (true, ProgressEvent::Done { entry, skipped }) = (self.announce, &event) {
            tracing::info!("{}", summary_line(entry, *skipped, None));
        }
        match &self.view {
            View::Bars(b) => b.event(source, event),
            View::Lines(l) => l.event(source, event),
        }
    }
}

/// What a source became, in one line: `localized URL -> PATH (git 3f2a9c0e1b2d, 12 files,
/// 3.1 MiB, 0.4s)`; for a source already in place, `unchanged …` with the time it was fetched
/// (`localized 2026-12-06 02:40:01 UTC`) rather than a duration, since nothing was fetched now.
pub fn summary_line(entry: &Entry, skipped: bool, path: Option<&Path>) -> String {
    let verb = if skipped { "unchanged" } else { "localized" };
    let target = path
        .map(|p| format!(" -> {}", p.display()))
        .unwrap_or_default();
    let when = if skipped {
        let at = chrono::DateTime::parse_from_rfc3339(&entry.localized_at)
            .map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|_| entry.localized_at.clone());
        format!("localized {at}")
    } else {
        format!("{:.1}s", entry.seconds)
    };
    let id = &entry.revision.id;
    format!(
        "{verb} {}{target} ({} {}, {} files, {}, {when})",
        entry.url,
        entry.kind,
        id.get(..12).unwrap_or(id),
        entry.files,
        human(entry.bytes),
    )
}

/// One indicatif bar per source.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<Vec<Option<ProgressBar>>>,
}

impl Bars {
    fn event(&self, source: usize, event: ProgressEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if bars.len() <= source {
            bars.resize(source + 1, None);
        }
        match event {
            ProgressEvent::Started { label } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(spinner_style());
                bar.set_message(label);
                bar.enable_steady_tick(Duration::from_millis(120));
                bars[source] = Some(bar);
            }
            ProgressEvent::Total(total) => {
                if let Some(bar) = &bars[source] {
                    bar.set_length(total);
                    bar.set_style(bar_style());
                }
            }
            ProgressEvent::Advanced(n) => {
                if let Some(bar) = &bars[source] {
                    bar.inc(n);
                }
            }
            ProgressEvent::Done { .. } => {
                if let Some(bar) = bars[source].take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg:40!} {bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Per-source counters for periodic log lines.
pub struct Lines {
    state: Mutex<Vec<LineState>>,
}

#[derive(Clone)]
struct LineState {
    label: String,
    done: u64,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
}

impl Lines {
    fn event(&self, source: usize, event: ProgressEvent) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state.len() <= source {
            state.resize(
                source + 1,
                LineState {
                    label: String::new(),
                    done: 0,
                    total: None,
                    started: now,
                    last_log: now,
                },
            );
        }
        let s = &mut state[source];
        match event {
            ProgressEvent::Started { label } => {
                s.label = label;
                s.started = now;
                s.last_log = now;
            }
            ProgressEvent::Total(t) => s.total = Some(t),
            ProgressEvent::Advanced(n) => {
                s.done += n;
                if now.duration_since(s.last_log) >= LOG_EVERY {
                    s.last_log = now;
                    let secs = now.duration_since(s.started).as_secs_f64().max(0.001);
                    let rate = human((s.done as f64 / secs) as u64);
                    match s.total {
                        Some(t) => {
                            tracing::info!(source = %s.label, "{} of {} ({rate}/s)", human(s.done), human(t))
                        }
                        None => tracing::info!(source = %s.label, "{} ({rate}/s)", human(s.done)),
                    }
                }
            }
            ProgressEvent::Done { .. } => {}
        }
    }
}
