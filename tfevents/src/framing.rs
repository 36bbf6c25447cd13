//! TFRecord frames: `u64 LE length`, masked CRC32C of those 8 bytes, the data, masked CRC32C of
//! the data.
//!
//! This module owns the byte layout only: it looks at a slice and says what the next frame is (a
//! whole good record, not enough bytes yet, or which check failed). It never reads files, never
//! allocates for a frame it has not seen whole, and never decides what to do about damage; the
//! [`reader`](crate::reader) applies the damage rules.

use crate::crc::masked_crc32c;

/// Bytes before a record's data: the length and its CRC.
pub const HEADER_LEN: usize = 12;
/// Bytes after a record's data: the data's CRC.
pub const FOOTER_LEN: usize = 4;

/// The largest record we accept. TensorBoard writes nothing near this (graphs are the largest
/// records, and protobuf caps messages at 2 GiB); a valid-looking length above it is treated as
/// broken framing rather than a reason to buffer gigabytes.
pub const MAX_RECORD_LEN: u64 = 1 << 30;

/// What the bytes at the start of a slice hold. Every size is exact: `frame_len` is the header,
/// data and footer together, so the next frame starts `frame_len` bytes later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record whose two CRCs match.
    Record { data: &'a [u8], frame_len: usize },
    /// The slice ends inside this frame; `needed` is how many bytes the whole frame takes (known
    /// only once the header is whole and checked, else the header length).
    Incomplete { needed: usize },
    /// The length's CRC does not match: nothing after this point can be located.
    BadLengthCrc,
    /// The length's CRC matches but the length is over [`MAX_RECORD_LEN`].
    TooLarge { len: u64 },
    /// The length is good but the data's CRC does not match; the frame's extent is still known.
    BadDataCrc { frame_len: usize },
}

/// Looks at the frame at the start of `buf`.
pub fn parse(buf: &[u8]) -> Frame<'_> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Frame::Incomplete { needed: HEADER_LEN };
    };
    let (len_bytes, len_crc) = header.split_at(8);
    if masked_crc32c(len_bytes) != read_u32(len_crc) {
        return Frame::BadLengthCrc;
    }
    let len = read_u64(len_bytes);
    if len > MAX_RECORD_LEN {
        return Frame::TooLarge { len };
    }
    // Cannot overflow: len <= 2^30 and usize is at least 32 bits on every target we build for,
    // but keep the check so a 32-bit build fails closed instead of wrapping.
    let Some(frame_len) = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(HEADER_LEN + FOOTER_LEN))
    else {
        return Frame::TooLarge { len };
    };
    let Some(frame) = buf.get(..frame_len) else {
        return Frame::Incomplete { needed: frame_len };
    };
    let data = &frame[HEADER_LEN..frame_len - FOOTER_LEN];
    if masked_crc32c(data) != read_u32(&frame[frame_len - FOOTER_LEN..]) {
        return Frame::BadDataCrc { frame_len };
    }
    Frame::Record { data, frame_len }
}

/// Appends one framed record holding `data` to `out`.
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.reserve(HEADER_LEN + data.len() + FOOTER_LEN);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(data, &mut out);
        out
    }

    #[test]
    fn round_trips_a_record() {
        let bytes = framed(b"hello");
        assert_eq!(
            parse(&bytes),
            Frame::Record {
                data: b"hello",
                frame_len: 21
            }
        );
    }

    #[test]
    fn every_prefix_is_incomplete_not_damage() {
        let bytes = framed(b"hello world");
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Frame::Incomplete { .. }),
                "cut at {cut}: {:?}",
                parse(&bytes[..cut])
            );
        }
    }

    #[test]
    fn flipped_length_byte_is_bad_length_crc() {
        let mut bytes = framed(b"hello");
        bytes[0] ^= 1;
        assert_eq!(parse(&bytes), Frame::BadLengthCrc);
    }

    #[test]
    fn flipped_data_byte_is_bad_data_crc_with_known_extent() {
        let mut bytes = framed(b"hello");
        bytes[13] ^= 0x40;
        assert_eq!(parse(&bytes), Frame::BadDataCrc { frame_len: 21 });
    }

    #[test]
    fn huge_length_with_valid_crc_is_too_large() {
        let len = (MAX_RECORD_LEN + 1).to_le_bytes();
        let mut bytes = len.to_vec();
        bytes.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        assert!(matches!(parse(&bytes), Frame::TooLarge { .. }));
    }
}
