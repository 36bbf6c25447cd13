//! TensorBoard event files (stub: to be written).
