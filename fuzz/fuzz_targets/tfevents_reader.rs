//! Fuzzes the tf.events reader: any bytes, delivered as a file that grows in two pieces, must
//! never panic, must end, must only move forward, and must yield the same items as reading the
//! whole file at once.

#![no_main]

use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use periscope::tfevents::{EventItem, EventReader, Position};

/// A file whose visible length can grow while a reader has it open.
#[derive(Clone)]
struct Growing {
    bytes: Arc<Mutex<Vec<u8>>>,
    pos: u64,
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let bytes = self.bytes.lock().unwrap();
        let start = (self.pos as usize).min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Growing {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Start(p) => self.pos = p,
            _ => return Err(io::Error::other("only SeekFrom::Start is used")),
        }
        Ok(self.pos)
    }
}

/// Scalars (tag, step, value bits) and damage offsets, until the reader has nothing more.
fn drain<R: Read + Seek>(reader: &mut EventReader<R>, out: &mut Vec<String>, limit: usize) -> bool {
    for _ in 0..limit {
        let before = reader.position().offset;
        match reader.next_event().unwrap() {
            EventItem::Event(ev) => {
                assert!(ev.offset == before && ev.end > ev.offset);
                for s in ev.scalars {
                    out.push(format!("{} {} {:x}", s.tag, s.step, s.value.to_bits()));
                }
            }
            EventItem::Skipped(d) => out.push(format!("skipped {}", d.offset)),
            EventItem::Stopped(d) => {
                out.push(format!("stopped {}", d.offset));
                return true;
            }
            EventItem::Pending => return false,
        }
        assert!(reader.position().offset > before);
    }
    panic!("reader did not finish");
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * data.len()) / 255;

    let mut whole = EventReader::new(Cursor::new(data.to_vec()), Position::default()).unwrap();
    whole.records_mut().set_complete(true);
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected, data.len() + 2);

    let shared = Arc::new(Mutex::new(data[..cut].to_vec()));
    let source = Growing { bytes: shared.clone(), pos: 0 };
    let mut growing = EventReader::new(source, Position::default()).unwrap();
    // A bad last record is re-read before it is skipped; zero grace keeps the fuzzer fast.
    growing.records_mut().set_tail_grace(Duration::ZERO);
    let mut got = Vec::new();
    if !drain(&mut growing, &mut got, data.len() + 2) {
        shared.lock().unwrap().extend_from_slice(&data[cut..]);
        growing.records_mut().set_complete(true);
        drain(&mut growing, &mut got, data.len() + 2);
    }
    // However the file was cut, the same scalars and the same damage, each exactly once.
    assert_eq!(got, expected);
});
