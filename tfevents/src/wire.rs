//! A zero-copy reader of the `Event` records nearly every event file is made of (summaries of
//! simple values and tensors): it finds their scalars in the record's bytes, without building
//! prost messages or allocating.
//!
//! It is an accelerator, never a second opinion. It accepts only records it can show prost
//! decodes, and reads them exactly as prost would (the last of a repeated singular field wins,
//! the first element of a repeated field is the first on the wire). Anything else is
//! [`None`], "unsure", and the caller decodes that record with prost instead: file versions,
//! session logs, groups, a oneof or an optional message set twice, a known field with another
//! wire type, invalid UTF-8, a varint or length prost would refuse. So damage is judged by prost
//! alone. The tests compare the two readers on written, generated and mutated records.
//!
//! This module owns the protobuf wire format for reading only; the field numbers are those of
//! [`proto`](crate::proto), and what a value means is decided in [`scalar`](crate::scalar).

use std::ops::Range;

use crate::scalar::{declares_scalar_parts, Shape, TensorView, ValueKind};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The parts of an `Event` record outside its summary values. Invariant: as prost would decode
/// them (defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Head {
    pub step: i64,
    pub wall_time: f64,
}

/// A summary value's tag: one the caller knows already (its index in the caller's list, found by
/// comparing bytes, so it needs no UTF-8 check), or a range of the record checked to be UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireTag {
    Known(usize),
    New(Range<usize>),
}

/// One summary value, decoded but not yet judged against the tags seen before it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireValue {
    pub tag: WireTag,
    pub kind: ValueKind,
    /// Whether the value's metadata declares a scalar series.
    pub declares: bool,
}

/// Reads the summary values of an `Event` record into `values` (cleared first), or `None` when
/// this reader cannot vouch for the record (then `values` holds nothing meaningful). `known`
/// finds a tag's bytes among the tags the caller has seen.
pub(crate) fn decode_event(
    data: &[u8],
    known: impl Fn(&[u8]) -> Option<usize> + Copy,
    values: &mut Vec<WireValue>,
) -> Option<Head> {
    values.clear();
    let mut head = Head {
        step: 0,
        wall_time: 0.0,
    };
    let mut what_seen = false;
    let mut r = Reader::new(data);
    while !r.done() {
        match r.key()? {
            (1, FIXED64) => head.wall_time = f64::from_le_bytes(r.fixed()?),
            (2, VARINT) => head.step = r.varint()? as i64,
            (5, LEN) if !what_seen => {
                what_seen = true;
                summary(r.sub()?, known, values)?;
            }
            // A known field with another wire type, a second oneof, or a file version or session
            // log (oneof members this reader leaves to prost).
            (1 | 2 | 3 | 5 | 7, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(head)
}

fn summary(
    mut r: Reader<'_>,
    known: impl Fn(&[u8]) -> Option<usize> + Copy,
    values: &mut Vec<WireValue>,
) -> Option<()> {
    while !r.done() {
        match r.key()? {
            (1, LEN) => values.push(summary_value(r.sub()?, known)?),
            (1, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(())
}

fn summary_value(mut r: Reader<'_>, known: impl Fn(&[u8]) -> Option<usize>) -> Option<WireValue> {
    let mut value = WireValue {
        tag: WireTag::New(0..0),
        kind: ValueKind::Absent,
        declares: false,
    };
    let (mut oneof_seen, mut metadata_seen) = (false, false);
    while !r.done() {
        match r.key()? {
            (1, LEN) => {
                let range = r.delimited()?;
                value.tag = match known(&r.data[range.clone()]) {
                    // Equal to a string the caller holds, so UTF-8 as prost requires.
                    Some(i) => WireTag::Known(i),
                    None => {
                        std::str::from_utf8(&r.data[range.clone()]).ok()?;
                        WireTag::New(range)
                    }
                };
            }
            (2, FIXED32) if !oneof_seen => {
                oneof_seen = true;
                value.kind = ValueKind::Simple(f32::from_le_bytes(r.fixed()?));
            }
            (8, LEN) if !oneof_seen => {
                oneof_seen = true;
                value.kind = ValueKind::Tensor(tensor(r.sub()?)?.scalar());
            }
            (9, LEN) if !metadata_seen => {
                metadata_seen = true;
                value.declares = metadata(r.sub()?)?;
            }
            (1 | 2 | 8 | 9, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(value)
}

/// Whether a `SummaryMetadata` declares a scalar series.
fn metadata(mut r: Reader<'_>) -> Option<bool> {
    let (mut data_class, mut plugin_name, mut plugin_seen) = (0i32, "", false);
    while !r.done() {
        match r.key()? {
            (1, LEN) if !plugin_seen => {
                plugin_seen = true;
                plugin_name = plugin_data(r.sub()?)?;
            }
            (2 | 3, LEN) => {
                r.text()?;
            }
            (4, VARINT) => data_class = r.varint()? as i32,
            (1..=4, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(declares_scalar_parts(data_class, plugin_name))
}

/// The plugin name of a `PluginData`.
fn plugin_data(mut r: Reader<'_>) -> Option<&str> {
    let mut name = 0..0;
    while !r.done() {
        match r.key()? {
            (1, LEN) => name = r.text()?,
            (2, LEN) => {
                r.sub()?;
            }
            (1 | 2, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    r.str(name)
}

fn tensor(mut r: Reader<'_>) -> Option<TensorView<'_>> {
    let mut t = TensorView::default();
    let mut shape_seen = false;
    while !r.done() {
        match r.key()? {
            (1, VARINT) => t.dtype = r.varint()? as i32,
            (2, LEN) if !shape_seen => {
                shape_seen = true;
                t.shape = shape(r.sub()?)?;
            }
            (4, LEN) => t.content = r.bytes()?,
            (5, wire @ (FIXED32 | LEN)) => {
                let first = first_fixed::<4>(&mut r, wire)?;
                if t.first_float.is_none() {
                    t.first_float = first.map(f32::from_le_bytes);
                }
            }
            (6, wire @ (FIXED64 | LEN)) => {
                let first = first_fixed::<8>(&mut r, wire)?;
                if t.first_double.is_none() {
                    t.first_double = first.map(f64::from_le_bytes);
                }
            }
            // int32 fields keep the low 32 bits of the varint, as prost does.
            (7, wire @ (VARINT | LEN)) => {
                let first = first_varint(&mut r, wire)?;
                if t.first_int.is_none() {
                    t.first_int = first.map(|v| v as i32);
                }
            }
            (10, wire @ (VARINT | LEN)) => {
                let first = first_varint(&mut r, wire)?;
                if t.first_int64.is_none() {
                    t.first_int64 = first.map(|v| v as i64);
                }
            }
            (13, wire @ (VARINT | LEN)) => {
                let first = first_varint(&mut r, wire)?;
                if t.first_half.is_none() {
                    t.first_half = first.map(|v| v as i32);
                }
            }
            (1 | 2 | 4 | 5 | 6 | 7 | 10 | 13, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(t)
}

fn shape(mut r: Reader<'_>) -> Option<Shape> {
    let (mut dims, mut unknown_rank) = (false, false);
    while !r.done() {
        match r.key()? {
            (2, LEN) => {
                dims = true;
                dim(r.sub()?)?;
            }
            (3, VARINT) => unknown_rank = r.varint()? != 0,
            (2 | 3, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(if dims || unknown_rank {
        Shape::NotRankZero
    } else {
        Shape::RankZero
    })
}

/// Checks a `TensorShapeProto.Dim` the way prost decodes it (only `size` is declared).
fn dim(mut r: Reader<'_>) -> Option<()> {
    while !r.done() {
        match r.key()? {
            (1, VARINT) => {
                r.varint()?;
            }
            (1, _) => return None,
            (_, wire) => r.skip(wire)?,
        }
    }
    Some(())
}

/// The first element of one occurrence of a repeated fixed-width field: one element (wire type
/// `FIXED32` or `FIXED64`, whichever is `N` bytes) or a packed run (`LEN`).
fn first_fixed<const N: usize>(r: &mut Reader<'_>, wire: u8) -> Option<Option<[u8; N]>> {
    if wire == LEN {
        packed_fixed::<N>(r.bytes()?)
    } else {
        r.fixed().map(Some)
    }
}

/// The first element of one occurrence of a repeated varint field: one element (`VARINT`) or a
/// packed run (`LEN`).
fn first_varint(r: &mut Reader<'_>, wire: u8) -> Option<Option<u64>> {
    if wire == LEN {
        packed_varints(r.sub()?)
    } else {
        r.varint().map(Some)
    }
}

/// The first element of a packed fixed-width field; `None` when the length is not a whole
/// number of elements (prost refuses that), `Some(None)` when it is empty.
fn packed_fixed<const N: usize>(bytes: &[u8]) -> Option<Option<[u8; N]>> {
    if bytes.len() % N != 0 {
        return None;
    }
    Some(bytes.first_chunk::<N>().copied())
}

/// The first element of a packed varint field, after checking every element.
fn packed_varints(mut r: Reader<'_>) -> Option<Option<u64>> {
    let mut first = None;
    while !r.done() {
        let v = r.varint()?;
        first.get_or_insert(v);
    }
    Some(first)
}

/// A cursor over one message of a record. Invariant: `pos <= end <= data.len()`; ranges it hands
/// out are ranges of the whole record, `data`.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            end: data.len(),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    /// A varint, accepted exactly when prost's `decode_varint` accepts it: at most ten bytes, and
    /// a tenth byte of 0 or 1.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // Keys, dtypes and lengths are nearly always one byte.
        if self.pos < self.end && self.data[self.pos] < 0x80 {
            self.pos += 1;
            return Some(u64::from(self.data[self.pos - 1]));
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return None;
            }
            let byte = self.data[self.pos];
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return (i < 9 || byte < 2).then_some(value);
            }
        }
        None
    }

    /// A field key, accepted as prost's `decode_key` accepts it: fits 32 bits, wire type 0 to 5,
    /// field number at least 1.
    fn key(&mut self) -> Option<(u32, u8)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let wire = (key & 7) as u8;
        let field = key >> 3;
        (wire <= FIXED32 && field >= 1).then_some((field, wire))
    }

    fn take(&mut self, len: usize) -> Option<Range<usize>> {
        let start = self.pos;
        let end = start.checked_add(len).filter(|&e| e <= self.end)?;
        self.pos = end;
        Some(start..end)
    }

    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let range = self.take(N)?;
        self.data[range].try_into().ok()
    }

    /// The range of a length-delimited field.
    fn delimited(&mut self) -> Option<Range<usize>> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let range = self.delimited()?;
        Some(&self.data[range])
    }

    /// A nested message.
    fn sub(&mut self) -> Option<Reader<'a>> {
        let range = self.delimited()?;
        Some(Reader {
            data: self.data,
            pos: range.start,
            end: range.end,
        })
    }

    /// The range of a string field, which prost requires to be UTF-8.
    fn text(&mut self) -> Option<Range<usize>> {
        let range = self.delimited()?;
        std::str::from_utf8(&self.data[range.clone()]).ok()?;
        Some(range)
    }

    fn str(&self, range: Range<usize>) -> Option<&'a str> {
        std::str::from_utf8(&self.data[range]).ok()
    }

    /// Skips an unknown field as prost does, except groups, which are left to prost.
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::events::{Decoder, ScalarItem};
    use crate::proto::{
        event, summary_value, Event, PluginData, SessionLog, Summary, SummaryMetadata,
        SummaryValue, TensorProto, TensorShapeDim, TensorShapeProto, DT_BFLOAT16, DT_DOUBLE,
        DT_FLOAT, DT_HALF, DT_INT32, DT_INT64,
    };
    use crate::reader::RecordRef;
    use crate::scalar::{session_start_step, Scalar, ScalarExtractor};

    /// A scalar as comparable bits (NaN included).
    type Point = (String, i64, u64, u64);

    fn points(scalars: &[Scalar]) -> Vec<Point> {
        scalars
            .iter()
            .map(|s| {
                let (w, v) = (s.wall_time.to_bits(), s.value.to_bits());
                (s.tag.clone(), s.step, w, v)
            })
            .collect()
    }

    /// Whenever the reader decodes a record through this module, prost decodes it to the same
    /// scalars and the same tag kinds. The record is decoded twice, so the second time its tags
    /// are known ones. Returns whether this module vouched for it.
    fn agrees_with_prost(data: &[u8], tags: &ScalarExtractor) -> bool {
        let mut decoder = Decoder::new(tags.clone());
        let mut vouched = false;
        for _ in 0..2 {
            let before = decoder.tags().clone();
            let record = RecordRef {
                offset: 0,
                end: 0,
                data,
            };
            let found = match decoder.decode(record) {
                ScalarItem::Event(r) if r.by_wire() => {
                    let scalars: Vec<Scalar> = r.iter().map(|s| s.to_scalar()).collect();
                    points(&scalars)
                }
                _ => return vouched,
            };
            vouched = true;
            let event = Event::decode(data).expect("wire accepted a record prost refuses");
            let mut prost_tags = before;
            let mut scalars = Vec::new();
            prost_tags.extract(&event, &mut scalars);
            assert_eq!(found, points(&scalars), "record {data:x?}");
            assert_eq!(decoder.tags(), &prost_tags, "record {data:x?}");
            assert_eq!(session_start_step(&event), None);
        }
        vouched
    }

    fn tensor() -> impl Strategy<Value = TensorProto> {
        let dtype = prop_oneof![
            Just(DT_FLOAT),
            Just(DT_DOUBLE),
            Just(DT_INT32),
            Just(DT_INT64),
            Just(DT_HALF),
            Just(DT_BFLOAT16),
            0i32..30,
        ];
        let shape = (proptest::collection::vec(any::<i64>(), 0..2), any::<bool>()).prop_map(
            |(dims, unknown_rank)| TensorShapeProto {
                dim: dims
                    .into_iter()
                    .map(|size| TensorShapeDim { size })
                    .collect(),
                unknown_rank,
            },
        );
        let content = prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..9)
        ];
        let few = |n| 0..n;
        (
            dtype,
            proptest::option::of(shape),
            content,
            proptest::collection::vec(any::<f32>(), few(3)),
            proptest::collection::vec(any::<f64>(), few(3)),
            proptest::collection::vec(any::<i32>(), few(3)),
            proptest::collection::vec(any::<i64>(), few(3)),
            proptest::collection::vec(any::<i32>(), few(3)),
        )
            .prop_map(|(dtype, shape, content, f, d, i, l, h)| TensorProto {
                dtype,
                tensor_shape: shape,
                tensor_content: content,
                float_val: f,
                double_val: d,
                int_val: i,
                int64_val: l,
                half_val: h,
            })
    }

    fn value() -> impl Strategy<Value = SummaryValue> {
        let tag = prop_oneof![Just("loss".to_owned()), Just(String::new()), "[a-c]{1,2}"];
        let metadata = proptest::option::of(
            (
                prop_oneof![Just("scalars"), Just("images"), Just("")],
                0i32..4,
                any::<bool>(),
            )
                .prop_map(|(name, data_class, plugin)| SummaryMetadata {
                    plugin_data: plugin.then(|| PluginData {
                        plugin_name: name.to_owned(),
                        content: vec![1, 2],
                    }),
                    display_name: "shown".to_owned(),
                    summary_description: String::new(),
                    data_class,
                }),
        );
        let value = prop_oneof![
            Just(None),
            any::<f32>().prop_map(|v| Some(summary_value::Value::SimpleValue(v))),
            tensor().prop_map(|t| Some(summary_value::Value::Tensor(t))),
        ];
        (tag, metadata, value).prop_map(|(tag, metadata, value)| SummaryValue {
            tag,
            metadata,
            value,
        })
    }

    fn event() -> impl Strategy<Value = Event> {
        let what = prop_oneof![
            Just(None),
            proptest::collection::vec(value(), 0..4)
                .prop_map(|value| Some(event::What::Summary(Summary { value }))),
            Just(Some(event::What::FileVersion("brain.Event:2".to_owned()))),
            (0i32..4).prop_map(|status| Some(event::What::SessionLog(SessionLog {
                status,
                ..Default::default()
            }))),
        ];
        (any::<f64>(), any::<i64>(), what).prop_map(|(wall_time, step, what)| Event {
            wall_time,
            step,
            what,
        })
    }

    /// Tag kinds as a reader might hold them when the record comes.
    fn seen_tags() -> impl Strategy<Value = ScalarExtractor> {
        proptest::collection::vec(value(), 0..3).prop_map(|values| {
            let mut tags = ScalarExtractor::new();
            let seed = Event {
                what: Some(event::What::Summary(Summary { value: values })),
                ..Default::default()
            };
            tags.extract(&seed, &mut Vec::new());
            tags
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn written_events_read_as_prost_reads_them(ev in event(), tags in seen_tags()) {
            let data = ev.encode_to_vec();
            let vouched = agrees_with_prost(&data, &tags);
            // Summaries are what this module is for: it must not leave them to prost.
            if matches!(ev.what, None | Some(event::What::Summary(_))) {
                prop_assert!(vouched);
            }
        }

        #[test]
        fn merged_events_read_as_prost_reads_them(
            a in event(), b in event(), tags in seen_tags()
        ) {
            // Concatenated messages merge: repeated oneofs, optional messages and last-wins fields.
            let mut data = a.encode_to_vec();
            data.extend(b.encode_to_vec());
            agrees_with_prost(&data, &tags);
        }

        #[test]
        fn damaged_events_read_as_prost_reads_them(
            ev in event(),
            tags in seen_tags(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = ev.encode_to_vec();
            if data.is_empty() {
                return Ok(());
            }
            for (at, byte) in edits {
                let i = at.index(data.len());
                data[i] = byte;
            }
            agrees_with_prost(&data, &tags);
            let keep = cut.index(data.len());
            agrees_with_prost(&data[..keep], &tags);
        }

        #[test]
        fn arbitrary_bytes_read_as_prost_reads_them(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            tags in seen_tags(),
        ) {
            agrees_with_prost(&data, &tags);
        }
    }

    #[test]
    fn varints_are_accepted_exactly_as_prost_accepts_them() {
        let cases: [&[u8]; 6] = [
            &[0x80, 0x00],
            &[0xff; 9],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
            &[],
        ];
        for bytes in cases {
            let mut r = Reader::new(bytes);
            let mut b = bytes;
            let ours = r.varint();
            let theirs = prost::encoding::decode_varint(&mut b).ok();
            assert_eq!(ours, theirs, "{bytes:x?}");
            if ours.is_some() {
                assert_eq!(r.pos, bytes.len() - b.len());
            }
        }
    }
}
