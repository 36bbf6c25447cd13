//! The masked CRC32C that TFRecord frames carry.
//!
//! TFRecord does not store a plain CRC32C: it rotates and offsets it ("masks" it) so that a CRC
//! computed over data that itself contains CRCs does not collapse. This module owns that one
//! formula and must never be bypassed: framing and the writer both call [`masked_crc32c`].

/// The constant TFRecord adds after rotating the CRC.
const MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a raw CRC32C the way TFRecord stores it.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// The masked CRC32C of `data`, as written after a TFRecord's length and after its data.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test spells the formula out by hand on purpose, to check `rotate_right` against it.
    #[allow(clippy::manual_rotate)]
    #[test]
    fn mask_is_rotate_then_add() {
        // The formula from the format: ((crc >> 15) | (crc << 17)) + 0xa282ead8, wrapping.
        let crc = 0xdead_beef_u32;
        let expected = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(mask(crc), expected);
    }

    #[test]
    fn known_crc32c_vector() {
        // The CRC32C check value from the Castagnoli paper's test suite.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b"123456789"), mask(0xe306_9283));
    }
}
