//! Safe archive unpacking (stub: to be written).

use crate::error::{Classify, ErrorClass};

/// An archive that cannot be unpacked safely.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unpacking is not implemented yet")]
    Unimplemented,
}

impl Classify for UnpackError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}
