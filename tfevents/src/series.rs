//! Summaries of scalar series: per tag, how many points there are, the first and last step and
//! the last value, which is what a table of runs shows.
//!
//! Summarising touches every point, so it lives beside the reader (in this crate, built for
//! speed) rather than in the code that prints the table. This module never prints.

use std::collections::BTreeMap;

use crate::events::RecordScalars;
use crate::scalar::ScalarRef;

/// One tag's series. Invariant: `count >= 1`; the steps and value are those of the first and
/// the last point added, in the order they were added.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Series {
    pub count: u64,
    pub first_step: i64,
    pub last_step: i64,
    pub last_value: f64,
}

/// The series of each tag seen, in tag order. Invariant: every tag added has a [`Series`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesSummary {
    tags: BTreeMap<String, Series>,
}

impl SeriesSummary {
    /// An empty summary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one point to its tag's series.
    pub fn add(&mut self, s: ScalarRef<'_>) {
        // Look up before inserting: the common case allocates nothing.
        let series = match self.tags.get_mut(s.tag) {
            Some(series) => series,
            None => self.tags.entry(s.tag.to_owned()).or_insert(Series {
                count: 0,
                first_step: s.step,
                last_step: s.step,
                last_value: s.value,
            }),
        };
        series.count += 1;
        series.last_step = s.step;
        series.last_value = s.value;
    }

    /// Adds every scalar of a record, in order.
    pub fn add_record(&mut self, record: &RecordScalars<'_>) {
        for s in record.iter() {
            self.add(s);
        }
    }

    /// True when no point was added.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Each tag and its series, in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Series)> {
        self.tags.iter().map(|(tag, s)| (tag.as_str(), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(tag: &str, step: i64, value: f64) -> ScalarRef<'_> {
        ScalarRef {
            tag,
            step,
            wall_time: 0.0,
            value,
        }
    }

    #[test]
    fn keeps_count_first_and_last_per_tag() {
        let mut s = SeriesSummary::new();
        s.add(point("loss", 5, 1.0));
        s.add(point("acc", 5, 0.1));
        s.add(point("loss", 3, 0.5));
        let rows: Vec<_> = s.iter().map(|(t, s)| (t.to_owned(), *s)).collect();
        assert_eq!(rows[0].0, "acc");
        assert_eq!(
            rows[1],
            (
                "loss".to_owned(),
                Series {
                    count: 2,
                    first_step: 5,
                    last_step: 3,
                    last_value: 0.5
                }
            )
        );
    }
}
