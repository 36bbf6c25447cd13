//! Fuzzes tar entry headers (names, types, sizes, links, PAX and GNU extensions) through the
//! unpack guard: see `common/unpack.rs` for what must hold. The first byte picks `#strip=`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::localize::ArchiveFormat;

#[path = "common/unpack.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&strip, data)) = data.split_first() else {
        return;
    };
    common::check(data, ArchiveFormat::Tar, usize::from(strip % 3));
});
