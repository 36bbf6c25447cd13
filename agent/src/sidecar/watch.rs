//! Change notifications for the folders a loop follows, so a pass runs as soon as a file grows
//! rather than at the next poll.

use std::path::PathBuf;

use tokio::sync::mpsc;

/// True for notifications that can mean new bytes or files. Opening or reading a file is not a
/// change: the pipelines read the files they follow, and waking on that would make every read
/// trigger the next one (a busy loop on an idle job).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        // A writer closing its file is worth a look; our own read-only opens and closes are not.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts change notifications for `folders` (recursive). Returns the watcher (keep it alive) and
/// the channel; when notifications cannot be set up, polling alone still works.
pub fn watch_folders(
    folders: &[PathBuf],
) -> (
    Option<notify::RecommendedWatcher>,
    mpsc::UnboundedReceiver<()>,
) {
    use notify::Watcher;
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| is_change(&e.kind)) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file notifications unavailable; polling only");
            return (None, rx);
        }
    };
    for folder in folders {
        if let Err(e) = watcher.watch(folder, notify::RecursiveMode::Recursive) {
            tracing::debug!(folder = %folder.display(), error = %e, "cannot watch folder; polling it");
        }
    }
    (Some(watcher), rx)
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};

    #[test]
    fn reading_a_file_is_not_a_change_writing_one_is() {
        assert!(!super::is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(super::is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(super::is_change(&EventKind::Create(CreateKind::File)));
    }
}
