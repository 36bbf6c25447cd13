//! TensorBoard's `Event` and `Summary` messages, hand-written for prost (no `.proto` files, no
//! build step). Field numbers follow the public schema (`tensorflow/core/util/event.proto`,
//! `summary.proto`, `tensor.proto`, `tensor_shape.proto`).
//!
//! Only the fields Periscope reads or writes are declared. Everything else (graphs, images,
//! histograms, audio, run metadata, fields added by future versions) is skipped by prost as an
//! unknown field: never an error, and never copied. This module owns the wire shapes only; what a
//! value *means* is decided in [`scalar`](crate::scalar).

/// One record of an event file. Invariant: at most one of the `what` variants is set, as in the
/// schema's `oneof`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch, as the writer saw them.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "event::What", tags = "3, 5, 7")]
    pub what: Option<event::What>,
}

/// The `oneof what` of [`Event`].
pub mod event {
    /// What an event carries. Graphs, log messages and run metadata are not declared, so such
    /// events decode with `what: None`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// `brain.Event:2` on the first record of a file.
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(super::Summary),
        #[prost(message, tag = "7")]
        SessionLog(super::SessionLog),
    }
}

/// A set of tagged values written at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// One tagged value. Invariant: at most one `value` variant is set; images, histograms and audio
/// are not declared, so a value holding one of them has `value: None`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Present on a tag's first value in TF2 files, on every value after TensorBoard's migration.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "summary_value::Value", tags = "2, 8")]
    pub value: Option<summary_value::Value>,
}

/// The `oneof value` of [`SummaryValue`].
pub mod summary_value {
    /// The value kinds Periscope reads.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// PyTorch and TF1 scalars.
        #[prost(float, tag = "2")]
        SimpleValue(f32),
        /// TF2 writes every summary as a tensor; scalars are rank-0.
        #[prost(message, tag = "8")]
        Tensor(super::TensorProto),
    }
}

/// Which plugin a tag belongs to and what kind of data it is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub summary_description: String,
    /// `DataClass`: 0 unknown, 1 scalar, 2 tensor, 3 blob sequence.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

/// `DataClass` value meaning "a scalar time series".
pub const DATA_CLASS_SCALAR: i32 = 1;

/// The plugin that owns a tag, and its private settings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// A tensor's type, shape and values. Invariant (from the schema): values live either in
/// `tensor_content` (little-endian, packed) or in the typed field for `dtype`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`; see the `DT_*` constants.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// The 16 bits of each `DT_HALF` or `DT_BFLOAT16` value, widened to int32.
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
}

/// `DataType` numbers of the dtypes a scalar may have.
pub const DT_FLOAT: i32 = 1;
pub const DT_DOUBLE: i32 = 2;
pub const DT_INT32: i32 = 3;
pub const DT_INT64: i32 = 9;
pub const DT_BFLOAT16: i32 = 14;
pub const DT_HALF: i32 = 19;

/// A tensor's shape. A rank-0 tensor (a scalar) has no dimensions and a known rank.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorShapeDim>,
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

/// One dimension of a [`TensorShapeProto`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeDim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// A session's start, stop or checkpoint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionStatus`: 0 unspecified, 1 start, 2 stop, 3 checkpoint.
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionStatus` value for a (re)started session; with a step, earlier data past it is stale.
pub const SESSION_START: i32 = 1;
