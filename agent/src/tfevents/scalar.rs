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

use super::proto::{
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

/// What a tag's first value said it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagKind {
    Scalar,
    Other,
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
            let kind = self.kind_of(&value.tag, value);
            let number = match &value.value {
                Some(summary_value::Value::SimpleValue(v)) => Some(f64::from(*v)),
                Some(summary_value::Value::Tensor(t)) if kind == TagKind::Scalar => {
                    tensor_scalar(t)
                }
                _ => None,
            };
            if let Some(number) = number {
                out.push(Scalar {
                    tag: value.tag.clone(),
                    step: event.step,
                    wall_time: event.wall_time,
                    value: number,
                });
            }
        }
    }

    fn kind_of(&mut self, tag: &str, value: &super::proto::SummaryValue) -> TagKind {
        if let Some(kind) = self.tags.get(tag) {
            return *kind;
        }
        let kind = match (&value.value, &value.metadata) {
            // TensorBoard migrates every simple_value to the scalars plugin.
            (Some(summary_value::Value::SimpleValue(_)), _) => TagKind::Scalar,
            (_, Some(meta)) if declares_scalar(meta) => TagKind::Scalar,
            _ => TagKind::Other,
        };
        self.tags.insert(tag.to_owned(), kind);
        kind
    }
}

/// True when metadata marks a scalar series: the scalar data class, or (for writers that predate
/// data classes) the scalars plugin with no data class.
fn declares_scalar(meta: &SummaryMetadata) -> bool {
    match meta.data_class {
        DATA_CLASS_SCALAR => true,
        0 => meta
            .plugin_data
            .as_ref()
            .is_some_and(|p| p.plugin_name == SCALARS_PLUGIN),
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
    if let Some(shape) = &t.tensor_shape {
        if shape.unknown_rank || !shape.dim.is_empty() {
            return None;
        }
    }
    if !t.tensor_content.is_empty() {
        return from_content(t.dtype, &t.tensor_content);
    }
    match t.dtype {
        DT_FLOAT => t.float_val.first().map(|v| f64::from(*v)),
        DT_DOUBLE => t.double_val.first().copied(),
        DT_INT32 => t.int_val.first().map(|v| f64::from(*v)),
        // Values above 2^53 lose precision, as they do in TensorBoard's float conversion.
        DT_INT64 => t.int64_val.first().map(|v| *v as f64),
        // half_val holds the 16 bits widened to int32; the upper bits are zero by the schema.
        DT_HALF => t.half_val.first().map(|v| f16_to_f64(*v as u16)),
        DT_BFLOAT16 => t.half_val.first().map(|v| bf16_to_f64(*v as u16)),
        _ => None,
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
    use super::super::proto::{PluginData, Summary, SummaryValue, TensorShapeProto};
    use super::*;

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
            dim: vec![super::super::proto::TensorShapeDim { size: 1 }],
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
