//! The floor for reading an event file: read its bytes and check every record's two CRCs, nothing
//! else (no decoding). `bench/tfevents/run` compares `periscope tfevents scalars` against it.
//!
//! Usage: tfrecord_crc FILE — prints the number of records whose CRCs match.

use std::io::Read;

fn masked(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

fn main() -> std::io::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: tfrecord_crc FILE");
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let (mut at, mut good) = (0usize, 0u64);
    // The `unwrap`s below convert slices whose length the bounds checks just fixed.
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        if masked(len_bytes) != len_crc {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let end = at + 12 + len + 4;
        if end > bytes.len() {
            break;
        }
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[end - 4..end].try_into().unwrap());
        good += u64::from(masked(data) == crc);
        at = end;
    }
    println!("{good}");
    Ok(())
}
