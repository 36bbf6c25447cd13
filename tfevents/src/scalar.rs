//! Which summary values are scalars, and their numbers.
//!
//! The rules follow what TensorBoard's own loader shows in its scalars dashboard:
//! * a `simple_value` (PyTorch, TF1) is always a scalar;
//! * a tensor is a scalar when its tag's *first* value declared the `scalars` plugin (or the
//!   scalar data class), and it is rank-0 of a numeric dtype (float, double, half, bfloat16,
//!   int32, int64), read from the typed `*_val` field or from little-endian `tensor_content`.
//!
//! TF2 writes a tag's metadata on its first value only, so the extractor remembers each tag's kind
//! for the file it reads. That memory is part of a reader's resumable state: a caller that
//! checkpoints a byte offset must checkpoint the extractor beside it (it is `Serialize`).
//!
//! This module never reads files and never fails: a value it does not understand is not a scalar.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::proto::{
    event, summary_value, Event, SummaryMetadata, TensorProto, DATA_CLASS_SCALAR, DT_BFLOAT16,
    DT_DOUBLE, DT_FLOAT, DT_HALF, DT_INT32, DT_INT64, SESSION_START,
};

/// TensorBoard's scalar plugin name, as written in `SummaryMetadata.plugin_data`.
pub const SCALARS_PLUGIN: &str = "scalars";

/// One point of a scalar time series. `value` keeps NaN and ±Infinity as they were written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub wall_time: f64,
    pub value: f64,
}

impl Scalar {
    /// The same point, borrowed.
    pub fn as_ref(&self) -> ScalarRef<'_> {
        ScalarRef {
            tag: &self.tag,
            step: self.step,
            wall_time: self.wall_time,
            value: self.value,
        }
    }
}

/// A [`Scalar`] whose tag is borrowed (from the record it was read from), so reading needs no
/// allocation per point. Invariant: the same fields, with the same meaning, as [`Scalar`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarRef<'a> {
    pub tag: &'a str,
    pub step: i64,
    pub wall_time: f64,
    pub value: f64,
}

impl ScalarRef<'_> {
    /// The same point, owning its tag.
    pub fn to_scalar(&self) -> Scalar {
        Scalar {
            tag: self.tag.to_owned(),
            step: self.step,
            wall_time: self.wall_time,
            value: self.value,
        }
    }
}

/// What a tag's first value said it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagKind {
    Scalar,
    Other,
}

/// What one summary value holds, as far as scalars are concerned, however it was decoded (prost
/// messages or [`wire`](crate::wire)). Invariant: `Tensor` holds [`tensor_scalar`]'s answer for
/// the value's tensor, whatever the tag's kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ValueKind {
    /// No value kind Periscope reads (an image, a histogram, audio, or nothing).
    Absent,
    Simple(f32),
    Tensor(Option<f64>),
}

/// Remembers each tag's kind within one file. Invariant: a tag's kind is set by its first value
/// and never changes afterwards, as in TensorBoard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalarExtractor {
    tags: HashMap<String, TagKind>,
}

impl ScalarExtractor {
    /// A fresh extractor, for the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the scalars `event` holds to `out`, in the order they appear.
    pub fn extract(&mut self, event: &Event, out: &mut Vec<Scalar>) {
        let Some(event::What::Summary(summary)) = &event.what else {
            return;
        };
        for value in &summary.value {
            let kind = match &value.value {
                Some(summary_value::Value::SimpleValue(v)) => ValueKind::Simple(*v),
                Some(summary_value::Value::Tensor(t)) => ValueKind::Tensor(tensor_scalar(t)),
                None => ValueKind::Absent,
            };
            let declares = value.metadata.as_ref().is_some_and(declares_scalar);
            if let Some(number) = self.number(&value.tag, kind, declares) {
                out.push(Scalar {
                    tag: value.tag.clone(),
                    step: event.step,
                    wall_time: event.wall_time,
                    value: number,
                });
            }
        }
    }

    /// The number of one summary value when it is a scalar. Records the tag's kind when this is
    /// its first value; `declares` is whether the value's metadata declares a scalar series.
    pub(crate) fn number(&mut self, tag: &str, value: ValueKind, declares: bool) -> Option<f64> {
        let kind = self.kind_of(tag, matches!(value, ValueKind::Simple(_)), declares);
        number_of(kind, value)
    }

    /// The kind of `tag`, if a value of it was seen.
    pub(crate) fn kind(&self, tag: &str) -> Option<TagKind> {
        self.tags.get(tag).copied()
    }

    fn kind_of(&mut self, tag: &str, simple: bool, declares: bool) -> TagKind {
        if let Some(kind) = self.tags.get(tag) {
            return *kind;
        }
        // TensorBoard migrates every simple_value to the scalars plugin.
        let kind = if simple || declares {
            TagKind::Scalar
        } else {
            TagKind::Other
        };
        self.tags.insert(tag.to_owned(), kind);
        kind
    }
}

/// The number of a value of a tag of `kind`, when it is a scalar.
pub(crate) fn number_of(kind: TagKind, value: ValueKind) -> Option<f64> {
    match value {
        ValueKind::Simple(v) => Some(f64::from(v)),
        ValueKind::Tensor(number) if kind == TagKind::Scalar => number,
        _ => None,
    }
}

/// True when metadata marks a scalar series: the scalar data class, or (for writers that predate
/// data classes) the scalars plugin with no data class.
fn declares_scalar(meta: &SummaryMetadata) -> bool {
    let plugin = meta
        .plugin_data
        .as_ref()
        .map_or("", |p| p.plugin_name.as_str());
    declares_scalar_parts(meta.data_class, plugin)
}

/// [`declares_scalar`] from the two fields it reads; `plugin_name` is `""` without plugin data.
pub(crate) fn declares_scalar_parts(data_class: i32, plugin_name: &str) -> bool {
    match data_class {
        DATA_CLASS_SCALAR => true,
        0 => plugin_name == SCALARS_PLUGIN,
        _ => false,
    }
}

/// The step of a `SessionLog` START event: the writer restarted there (PyTorch's `purge_step`),
/// so a reader that shows time series should drop points at or after it from earlier records.
pub fn session_start_step(event: &Event) -> Option<i64> {
    match &event.what {
        Some(event::What::SessionLog(log)) if log.status == SESSION_START => Some(event.step),
        _ => None,
    }
}

/// The number in a rank-0 numeric tensor, or `None` for anything else.
pub fn tensor_scalar(t: &TensorProto) -> Option<f64> {
    TensorView {
        dtype: t.dtype,
        shape: match &t.tensor_shape {
            None => Shape::Absent,
            Some(s) if s.unknown_rank || !s.dim.is_empty() => Shape::NotRankZero,
            Some(_) => Shape::RankZero,
        },
        content: &t.tensor_content,
        first_float: t.float_val.first().copied(),
        first_double: t.double_val.first().copied(),
        first_int: t.int_val.first().copied(),
        first_int64: t.int64_val.first().copied(),
        first_half: t.half_val.first().copied(),
    }
    .scalar()
}

/// A tensor's shape, as far as scalars care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Shape {
    /// No `tensor_shape` field.
    #[default]
    Absent,
    /// A shape with no dimensions and a known rank.
    RankZero,
    /// Dimensions, or an unknown rank.
    NotRankZero,
}

/// The fields of a `TensorProto` that decide its scalar, however it was decoded. Invariant:
/// `content` is `tensor_content` and each `first_*` is the first element of that repeated field.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TensorView<'a> {
    pub dtype: i32,
    pub shape: Shape,
    pub content: &'a [u8],
    pub first_float: Option<f32>,
    pub first_double: Option<f64>,
    pub first_int: Option<i32>,
    pub first_int64: Option<i64>,
    pub first_half: Option<i32>,
}

impl TensorView<'_> {
    /// The number in a rank-0 numeric tensor, or `None` for anything else.
    pub fn scalar(&self) -> Option<f64> {
        if self.shape == Shape::NotRankZero {
            return None;
        }
        if !self.content.is_empty() {
            return from_content(self.dtype, self.content);
        }
        match self.dtype {
            DT_FLOAT => self.first_float.map(f64::from),
            DT_DOUBLE => self.first_double,
            DT_INT32 => self.first_int.map(f64::from),
            // Values above 2^53 lose precision, as they do in TensorBoard's float conversion.
            DT_INT64 => self.first_int64.map(|v| v as f64),
            // half_val holds the 16 bits widened to int32; the upper bits are zero by the schema.
            DT_HALF => self.first_half.map(|v| f16_to_f64(v as u16)),
            DT_BFLOAT16 => self.first_half.map(|v| bf16_to_f64(v as u16)),
            _ => None,
        }
    }
}

/// Reads one little-endian value; `content` must be exactly one element.
fn from_content(dtype: i32, content: &[u8]) -> Option<f64> {
    match dtype {
        DT_FLOAT => Some(f64::from(f32::from_le_bytes(content.try_into().ok()?))),
        DT_DOUBLE => Some(f64::from_le_bytes(content.try_into().ok()?)),
        DT_INT32 => Some(f64::from(i32::from_le_bytes(content.try_into().ok()?))),
        DT_INT64 => Some(i64::from_le_bytes(content.try_into().ok()?) as f64),
        DT_HALF => Some(f16_to_f64(u16::from_le_bytes(content.try_into().ok()?))),
        DT_BFLOAT16 => Some(bf16_to_f64(u16::from_le_bytes(content.try_into().ok()?))),
        _ => None,
    }
}

/// IEEE 754 binary16 to f64 (exact: every half is representable).
pub fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// bfloat16 is the upper half of an f32.
pub fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PluginData, Summary, SummaryValue, TensorShapeProto};

    fn tensor(dtype: i32) -> TensorProto {
        TensorProto {
            dtype,
            tensor_shape: Some(TensorShapeProto::default()),
            ..Default::default()
        }
    }

    fn event(values: Vec<SummaryValue>) -> Event {
        Event {
            wall_time: 1.5,
            step: 7,
            what: Some(event::What::Summary(Summary { value: values })),
        }
    }

    fn scalars_meta() -> Option<SummaryMetadata> {
        Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: SCALARS_PLUGIN.into(),
                content: vec![],
            }),
            ..Default::default()
        })
    }

    #[test]
    fn half_and_bfloat16_decode_exactly() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(bf16_to_f64(0x3f80), 1.0);
        assert_eq!(bf16_to_f64(0xff80), f64::NEG_INFINITY);
    }

    #[test]
    fn typed_fields_and_content_give_the_same_number() {
        let mut typed = tensor(DT_INT64);
        typed.int64_val = vec![-42];
        let mut packed = tensor(DT_INT64);
        packed.tensor_content = (-42i64).to_le_bytes().to_vec();
        assert_eq!(tensor_scalar(&typed), Some(-42.0));
        assert_eq!(tensor_scalar(&packed), Some(-42.0));
    }

    #[test]
    fn rank_one_and_wrong_content_length_are_not_scalars() {
        let mut t = tensor(DT_FLOAT);
        t.float_val = vec![1.0];
        t.tensor_shape = Some(TensorShapeProto {
            dim: vec![crate::proto::TensorShapeDim { size: 1 }],
            unknown_rank: false,
        });
        assert_eq!(tensor_scalar(&t), None);
        let mut c = tensor(DT_DOUBLE);
        c.tensor_content = vec![0; 4];
        assert_eq!(tensor_scalar(&c), None);
    }

    #[test]
    fn metadata_on_first_value_is_remembered_per_tag() {
        let mut ex = ScalarExtractor::new();
        let mut out = Vec::new();
        let mut t = tensor(DT_FLOAT);
        t.float_val = vec![0.5];
        let first = SummaryValue {
            tag: "loss".into(),
            metadata: scalars_meta(),
            value: Some(summary_value::Value::Tensor(t.clone())),
        };
        let later = SummaryValue {
            metadata: None,
            ..first.clone()
        };
        let other = SummaryValue {
            tag: "text".into(),
            metadata: None,
            value: Some(summary_value::Value::Tensor(t)),
        };
        ex.extract(&event(vec![first, other.clone()]), &mut out);
        ex.extract(&event(vec![later, other]), &mut out);
        let tags: Vec<_> = out.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, ["loss", "loss"]);
        assert_eq!(out[1].value, 0.5);
        assert_eq!(out[1].step, 7);
    }
}
