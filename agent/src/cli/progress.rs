//! How localize progress is shown: bars on a terminal, a log line every few seconds elsewhere.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use periscope::localize::{ProgressEvent, ProgressSink};

use super::size::human;

/// How often a non-terminal run logs progress for a source that is still moving.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Shows progress for every source of one run.
pub enum Display {
    Bars(Bars),
    Lines(Lines),
}

impl Display {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn for_stderr() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Bars(Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: Mutex::new(Vec::new()),
            })
        } else {
            Display::Lines(Lines {
                state: Mutex::new(Vec::new()),
            })
        }
    }
}

impl ProgressSink for Display {
    fn event(&self, source: usize, event: ProgressEvent) {
        match self {
            Display::Bars(b) => b.event(source, event),
            Display::Lines(l) => l.event(source, event),
        }
    }
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
            ProgressEvent::Finished | ProgressEvent::Skipped => {
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
            ProgressEvent::Finished | ProgressEvent::Skipped => {}
        }
    }
}
