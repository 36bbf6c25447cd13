//! Fuzzes zip entry headers (names, unix modes, symlinks, sizes, the central directory) through
//! the unpack guard: see `common/unpack.rs` for what must hold. The first byte picks `#strip=`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::localize::ArchiveFormat;

#[path = "common/unpack.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&strip, data)) = data.split_first() else {
        return;
    };
    common::check(data, ArchiveFormat::Zip, usize::from(strip % 3));
});
