//! The mirror against an in-memory store: segments, restarts, replaced files, several folders.

use std::path::Path as FsPath;

use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::ObjectStoreExt;

use super::*;
use crate::tfevents::{EventWriter, ScalarValue};

fn config(roots: Vec<PathBuf>, state: &FsPath) -> MirrorConfig {
    MirrorConfig {
        roots,
        worker_prefix: Path::from("p/exp/w0"),
        state_dir: state.to_path_buf(),
        interval: Duration::ZERO,
        tail_bytes: 1 << 10,
        segment_bytes: 8 << 10,
        ..MirrorConfig::default()
    }
}

/// Every stored object under the prefix, sorted by key, with its bytes.
async fn stored(store: &InMemory) -> Vec<(String, Vec<u8>)> {
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.push((m.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

/// The stored segments of the file with stored name `name`, concatenated in key order.
async fn joined(store: &InMemory, name: &str) -> Vec<u8> {
    let prefix = format!("p/exp/w0/tfevents/{name}");
    stored(store)
        .await
        .into_iter()
        .filter(|(k, _)| k == &prefix || k.starts_with(&format!("{prefix}.")))
        .flat_map(|(_, b)| b)
        .collect()
}

fn write_steps(w: &mut EventWriter, steps: std::ops::Range<i64>) {
    for step in steps {
        w.add_scalar("loss", step, step as f64, ScalarValue::F32(step as f32))
            .unwrap();
    }
    w.flush().unwrap();
}

fn file_name(w: &EventWriter) -> String {
    w.path().file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_growing_file_is_stored_once_as_segments_that_join_into_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tb");
    std::fs::create_dir_all(root.join("run")).unwrap();
    let store = Arc::new(InMemory::new());
    let mut mirror = TfeventsMirror::open(
        config(vec![root.clone()], &dir.path().join("st")),
        store.clone(),
    )
    .unwrap();
    let mut w = EventWriter::create(&root.join("run")).unwrap();
    let name = format!("run/{}", file_name(&w));
    for round in 0..40 {
        write_steps(&mut w, round * 20..(round + 1) * 20);
        mirror.tick(false).await.unwrap();
    }
    mirror.tick(true).await.unwrap();
    let local = std::fs::read(w.path()).unwrap();
    assert_eq!(joined(&store, &name).await, local);
    let objects = stored(&store).await;
    assert!(objects.len() > 5, "{} segments", objects.len());
    for (key, bytes) in &objects {
        assert!(bytes.len() <= 8 << 10, "{key} holds {} bytes", bytes.len());
    }
    let sent = mirror.totals().bytes;
    let size = local.len() as u64;
    // Each round adds about 700 bytes: the open tail is sent again until it holds 1 KiB.
    assert!(sent <= size * 2, "sent {sent} bytes for a {size}-byte file");
    assert!(!mirror.has_backlog());
}

#[tokio::test]
async fn a_restart_sends_again_at_most_the_open_tail() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tb");
    std::fs::create_dir_all(&root).unwrap();
    let state = dir.path().join("st");
    let store = Arc::new(InMemory::new());
    let mut w = EventWriter::create(&root).unwrap();
    let name = file_name(&w);
    write_steps(&mut w, 0..400);
    let mut first =
        TfeventsMirror::open(config(vec![root.clone()], &state), store.clone()).unwrap();
    first.tick(true).await.unwrap();
    let stored_before = first.files[&name].follower.state.stored;
    drop(first);
    write_steps(&mut w, 400..420);
    let mut second =
        TfeventsMirror::open(config(vec![root.clone()], &state), store.clone()).unwrap();
    second.tick(true).await.unwrap();
    let size = std::fs::metadata(w.path()).unwrap().len();
    let tail = stored_before.stored - stored_before.open.unwrap_or(stored_before.stored);
    assert_eq!(second.totals().bytes, size - stored_before.stored + tail);
    assert_eq!(
        joined(&store, &name).await,
        std::fs::read(w.path()).unwrap()
    );
}

#[tokio::test]
async fn a_replaced_file_is_stored_afresh_and_its_old_segments_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tb");
    std::fs::create_dir_all(&root).unwrap();
    let store = Arc::new(InMemory::new());
    let mut mirror = TfeventsMirror::open(
        config(vec![root.clone()], &dir.path().join("st")),
        store.clone(),
    )
    .unwrap();
    let mut w = EventWriter::create(&root).unwrap();
    let path = w.path().to_path_buf();
    let name = file_name(&w);
    write_steps(&mut w, 0..600);
    mirror.tick(true).await.unwrap();
    assert!(stored(&store).await.len() > 2);
    drop(w);
    // Another writer's file under the same name, shorter than what is stored.
    let mut other = EventWriter::create(dir.path()).unwrap();
    write_steps(&mut other, 0..10);
    std::fs::rename(other.path(), &path).unwrap();
    mirror.tick(true).await.unwrap();
    mirror.tick(true).await.unwrap();
    let objects = stored(&store).await;
    assert_eq!(
        objects.len(),
        1,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_eq!(joined(&store, &name).await, std::fs::read(&path).unwrap());
}

#[tokio::test]
async fn two_folders_holding_the_same_file_name_are_stored_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a/tb"), dir.path().join("b/tb"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut wa = EventWriter::create(&a).unwrap();
    write_steps(&mut wa, 0..5);
    let name = file_name(&wa);
    let mut wb = EventWriter::create(&b).unwrap();
    write_steps(&mut wb, 100..110);
    std::fs::rename(wb.path(), b.join(&name)).unwrap();
    let store = Arc::new(InMemory::new());
    let mut mirror = TfeventsMirror::open(
        config(vec![a.clone(), b.clone()], &dir.path().join("st")),
        store.clone(),
    )
    .unwrap();
    mirror.tick(true).await.unwrap();
    assert_eq!(
        joined(&store, &format!("a/tb/{name}")).await,
        std::fs::read(a.join(&name)).unwrap()
    );
    assert_eq!(
        joined(&store, &format!("b/tb/{name}")).await,
        std::fs::read(b.join(&name)).unwrap()
    );
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_holds_uploads_back_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tb");
    let state = dir.path().join("st");
    std::fs::create_dir_all(root.join("run")).unwrap();
    // A folder where the checkpoint goes: writing it fails, as on a full disk.
    let blocker = state.join(MIRROR_FILE);
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let store = Arc::new(InMemory::new());
    let cfg = MirrorConfig {
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        },
        ..config(vec![root.clone()], &state)
    };
    let mut mirror = TfeventsMirror::open(cfg, store.clone()).unwrap();
    let outage = mirror.checkpoint_outage();
    let mut w = EventWriter::create(&root.join("run")).unwrap();
    let name = format!("run/{}", file_name(&w));
    write_steps(&mut w, 0..20);
    assert_eq!(mirror.tick(true).await.unwrap().uploads, 1);
    assert!(outage.failing().is_some());
    // The checkpoint on disk does not name that upload: nothing more is sent until it does.
    for round in 1..5 {
        write_steps(&mut w, round * 20..(round + 1) * 20);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(mirror.tick(true).await.unwrap().uploads, 0);
    }
    assert!(mirror.has_backlog());
    std::fs::remove_dir_all(&blocker).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    assert!(mirror.tick(true).await.unwrap().uploads > 0);
    assert!(outage.failing().is_none());
    assert_eq!(outage.failures(), 5);
    assert_eq!(
        joined(&store, &name).await,
        std::fs::read(w.path()).unwrap()
    );
    assert!(!mirror.has_backlog());
}
