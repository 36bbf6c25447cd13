//! Reader properties across modules: growing files cut anywhere, damage rules, resuming, no panics.

use std::fs::OpenOptions;
use std::io::{Cursor, Write};
use std::time::Duration;

use proptest::prelude::*;

use crate::framing;
use crate::proto::{event, Event};
use crate::*;

/// A few framed events: a file_version, scalars of two tags, and a session start.
fn sample_file() -> (Vec<u8>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.1.test");
    let mut w = EventWriter::create_at(&path, 1.0).unwrap();
    w.add_scalar("loss", 0, 2.0, ScalarValue::F32(1.5)).unwrap();
    w.add_scalar("acc", 0, 2.5, ScalarValue::F64(0.25)).unwrap();
    w.add_session_start(1, 3.0).unwrap();
    w.add_scalar("loss", 1, 4.0, ScalarValue::F32(f32::NAN))
        .unwrap();
    w.flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let records = all_records(&bytes);
    (bytes, records)
}

/// Every record of a complete, undamaged file, via the reader.
fn all_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut r = RecordReader::new(Cursor::new(bytes.to_vec()), 0).unwrap();
    let mut out = Vec::new();
    loop {
        match r.next_record().unwrap() {
            Next::Record(rec) => out.push(rec.data.to_vec()),
            Next::Pending => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

/// Reads until Pending, appending record data to `out`; panics on damage.
fn drain<R: std::io::Read + std::io::Seek>(r: &mut RecordReader<R>, out: &mut Vec<Vec<u8>>) {
    loop {
        match r.next_record().unwrap() {
            Next::Record(rec) => out.push(rec.data.to_vec()),
            Next::Pending => return,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Writes `bytes` to a file in pieces ending at `cuts`, reading after each piece.
fn read_growing(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.growing");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut reader = RecordReader::open(&path, 0).unwrap();
    let mut got = Vec::new();
    let mut written = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(written, bytes.len());
        file.write_all(&bytes[written..cut]).unwrap();
        file.flush().unwrap();
        written = cut;
        drain(&mut reader, &mut got);
    }
    assert_eq!(reader.offset(), bytes.len() as u64);
    got
}

#[test]
fn growing_file_cut_at_every_offset_yields_each_record_once() {
    let (bytes, records) = sample_file();
    assert_eq!(records.len(), 5);
    for cut in 0..=bytes.len() {
        assert_eq!(read_growing(&bytes, &[cut]), records, "cut at {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn growing_file_cut_anywhere_many_times_yields_each_record_once(
        mut cuts in proptest::collection::vec(0usize..400, 0..8)
    ) {
        let (bytes, records) = sample_file();
        cuts.sort_unstable();
        prop_assert_eq!(read_growing(&bytes, &cuts), records);
    }

    #[test]
    fn no_byte_string_panics_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exhaust(&bytes);
    }

    #[test]
    fn no_record_payload_panics_the_event_decoder(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..8)
    ) {
        let mut bytes = Vec::new();
        for p in &payloads {
            framing::encode(p, &mut bytes);
        }
        exhaust(&bytes);
    }
}

/// Reads every item from `bytes` as a complete file; the loop must end.
fn exhaust(bytes: &[u8]) {
    let mut r = EventReader::new(Cursor::new(bytes.to_vec()), Position::default()).unwrap();
    r.records_mut().set_complete(true);
    for _ in 0..=bytes.len() + 1 {
        match r.next_event().unwrap() {
            EventItem::Pending | EventItem::Stopped(_) => return,
            EventItem::Event(_) | EventItem::Skipped(_) => {}
        }
    }
    panic!("reader did not finish");
}

/// Offsets where each record of `bytes` starts.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let framing::Frame::Record { frame_len, .. } = framing::parse(&bytes[at..]) {
        starts.push(at);
        at += frame_len;
    }
    starts
}

#[test]
fn truncated_tail_is_pending_not_damage() {
    let (bytes, records) = sample_file();
    let cut = bytes.len() - 3;
    let mut r = RecordReader::new(Cursor::new(bytes[..cut].to_vec()), 0).unwrap();
    r.set_complete(true);
    let mut got = Vec::new();
    drain(&mut r, &mut got);
    assert_eq!(got, records[..4]);
    assert_eq!(r.skipped(), 0);
    assert_eq!(r.unread_tail(), (cut - record_starts(&bytes)[4]) as u64);
}

#[test]
fn flipped_data_byte_skips_that_record_only() {
    let (mut bytes, records) = sample_file();
    let starts = record_starts(&bytes);
    bytes[starts[2] + framing::HEADER_LEN + 1] ^= 0x01;
    let mut r = RecordReader::new(Cursor::new(bytes), 0).unwrap();
    let mut got = Vec::new();
    let mut skipped = Vec::new();
    loop {
        match r.next_record().unwrap() {
            Next::Record(rec) => got.push(rec.data.to_vec()),
            Next::Skipped(d) => skipped.push(d),
            Next::Pending => break,
            Next::Stopped(d) => panic!("stopped: {d}"),
        }
    }
    assert_eq!(got, [&records[..2], &records[3..]].concat());
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].offset, starts[2] as u64);
    assert_eq!(r.skipped(), 1);
}

#[test]
fn a_damage_summary_counts_records_and_names_the_first() {
    let (mut bytes, _) = sample_file();
    let starts = record_starts(&bytes);
    for &start in &starts[1..3] {
        bytes[start + framing::HEADER_LEN] ^= 0x01;
    }
    let mut r = RecordReader::new(Cursor::new(bytes), 0).unwrap();
    let mut summary = DamageSummary::default();
    assert_eq!(summary.to_string(), "no damaged records");
    loop {
        match r.next_record().unwrap() {
            Next::Skipped(d) => summary.add(d),
            Next::Record(_) => {}
            Next::Pending | Next::Stopped(_) => break,
        }
    }
    assert_eq!(summary.count, 2);
    assert_eq!(summary.first.map(|d| d.offset), Some(starts[1] as u64));
    let line = summary.take().to_string();
    assert!(
        line.starts_with(&format!(
            "2 damaged records, the first: record at byte {}",
            starts[1]
        )),
        "{line}"
    );
    assert!(summary.is_empty(), "take starts afresh");
}

#[test]
fn flipped_length_byte_stops_the_file() {
    let (mut bytes, records) = sample_file();
    let starts = record_starts(&bytes);
    bytes[starts[3] + 2] ^= 0x80;
    let mut r = RecordReader::new(Cursor::new(bytes), 0).unwrap();
    let mut got = Vec::new();
    let damage = loop {
        match r.next_record().unwrap() {
            Next::Record(rec) => got.push(rec.data.to_vec()),
            Next::Stopped(d) => break d,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(got, records[..3]);
    assert_eq!(damage.kind, DamageKind::BadLengthCrc);
    assert!(damage.is_fatal());
    // Stopped is final: asking again does not move on.
    assert_eq!(r.next_record().unwrap(), Next::Stopped(damage));
    assert_eq!(r.offset(), starts[3] as u64);
}

#[test]
fn bad_crc_on_last_record_of_growing_file_is_reread_before_skipping() {
    let (bytes, records) = sample_file();
    let last = *record_starts(&bytes).last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.settling");
    // The last record's data is not settled yet (zeros where the data will be).
    let mut unsettled = bytes.clone();
    for b in &mut unsettled[last + framing::HEADER_LEN..bytes.len() - framing::FOOTER_LEN] {
        *b = 0;
    }
    std::fs::write(&path, &unsettled).unwrap();
    let mut r = RecordReader::open(&path, 0).unwrap();
    r.set_tail_grace(Duration::from_secs(3600));
    let mut got = Vec::new();
    drain(&mut r, &mut got);
    assert_eq!(got, records[..4]);
    assert_eq!(r.next_record().unwrap(), Next::Pending, "waits, no skip");
    // The bytes settle in place; the re-read finds a good record.
    std::fs::write(&path, &bytes).unwrap();
    drain(&mut r, &mut got);
    assert_eq!(got, records);
    assert_eq!(r.skipped(), 0);
}

#[test]
fn bad_crc_on_last_record_is_skipped_after_the_grace() {
    let (mut bytes, records) = sample_file();
    let n = bytes.len();
    bytes[n - 6] ^= 0x10;
    let mut r = RecordReader::new(Cursor::new(bytes), 0).unwrap();
    r.set_tail_grace(Duration::ZERO);
    let mut got = Vec::new();
    drain(&mut r, &mut got);
    assert_eq!(got, records[..4]);
    assert!(matches!(r.next_record().unwrap(), Next::Skipped(_)));
    assert_eq!(r.next_record().unwrap(), Next::Pending);
    assert_eq!(r.offset(), n as u64);
}

#[test]
fn resuming_at_a_reported_offset_continues_exactly() {
    let (bytes, _) = sample_file();
    let mut first = EventReader::new(Cursor::new(bytes.clone()), Position::default()).unwrap();
    let mut scalars = Vec::new();
    let mut seen = 0;
    while seen < 3 {
        if let EventItem::Event(ev) = first.next_event().unwrap() {
            scalars.extend(ev.scalars);
            seen += 1;
        }
    }
    // The checkpoint survives a serde round trip, as a sidecar would store it.
    let saved = serde_json::to_string(&first.position()).unwrap();
    let position: Position = serde_json::from_str(&saved).unwrap();
    let mut second = EventReader::new(Cursor::new(bytes), position).unwrap();
    let mut starts = Vec::new();
    loop {
        match second.next_event().unwrap() {
            EventItem::Event(ev) => {
                starts.extend(ev.session_start);
                scalars.extend(ev.scalars);
            }
            EventItem::Pending => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let summary: Vec<_> = scalars.iter().map(|s| (s.tag.as_str(), s.step)).collect();
    assert_eq!(summary, [("loss", 0), ("acc", 0), ("loss", 1)]);
    assert!(scalars[2].value.is_nan());
    assert_eq!(scalars[1].value, 0.25);
    assert_eq!(starts, [1]);
}

#[test]
fn undecodable_record_is_skipped_and_counted() {
    let mut bytes = Vec::new();
    let good = prost::Message::encode_to_vec(&Event {
        wall_time: 1.0,
        step: 0,
        what: Some(event::What::FileVersion("brain.Event:2".into())),
    });
    framing::encode(&[0xff, 0xff, 0xff], &mut bytes);
    framing::encode(&good, &mut bytes);
    let mut r = EventReader::new(Cursor::new(bytes), Position::default()).unwrap();
    assert!(matches!(
        r.next_event().unwrap(),
        EventItem::Skipped(Damage {
            kind: DamageKind::BadEvent,
            ..
        })
    ));
    assert!(matches!(r.next_event().unwrap(), EventItem::Event(_)));
    assert_eq!(r.skipped(), 1);
}

#[test]
fn a_large_declared_length_waits_without_buffering_ahead() {
    // A valid header announcing a 512 MiB record, with only a few bytes of it written so far.
    let len = (512u64 << 20).to_le_bytes();
    let mut bytes = len.to_vec();
    bytes.extend_from_slice(&crate::crc::masked_crc32c(&len).to_le_bytes());
    bytes.extend_from_slice(b"partial");
    let mut r = RecordReader::new(Cursor::new(bytes), 0).unwrap();
    assert_eq!(r.next_record().unwrap(), Next::Pending);
    assert_eq!(r.unread_tail(), 19);
    assert_eq!(r.offset(), 0);
}
