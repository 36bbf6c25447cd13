//! Fuzzes what the MLflow-compatible endpoint does with a request's bytes before anything is
//! queued: the JSON body (with Python's bare `NaN`/`Infinity`), the key and length checks, and the
//! search grammar (`filter`, `order_by`, SQL's LIKE). Any input must be answered without a panic,
//! and:
//! - quoting bare non-finite numbers never changes a body that was valid JSON already;
//! - a metric that parsed survives being sent again (the client's serialization) unchanged;
//! - a key the checks accept is one MLflow would accept (short enough, not a path alias);
//! - a filter that parsed evaluates on a run without a panic, and `%` alone matches everything.
//!
//! The first byte picks what the rest is: a body, or a filter/order clause.

#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::metrics::mlflow::api::{self, check_key, path_is_unique, LogBatch, MAX_KEY};
use periscope::metrics::mlflow::ingest::endpoint::parse_json;
use periscope::metrics::mlflow::ingest::search::{
    self, Entity, Field, Searchable, Target,
};
use periscope::metrics::model::float::quote_non_finite;

/// A run with one of each kind of field, for evaluating parsed filters.
struct Run;

impl Searchable for Run {
    fn field(&self, entity: &Entity) -> Option<Field<'_>> {
        match entity {
            Entity::Metric(k) if k == "loss" => Some(Field::Number(0.5)),
            Entity::Param(k) if k == "lr" => Some(Field::Text("0.01")),
            Entity::Tag(_) => Some(Field::Text("mlflow.runName")),
            Entity::Attribute(_) => Some(Field::Text("FINISHED")),
            _ => None,
        }
    }
}

fn body(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        assert!(parse_json::<LogBatch<'static>>(&bytes.to_vec().into()).is_err());
        return;
    };
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        let quoted = quote_non_finite(text);
        let again: serde_json::Value =
            serde_json::from_str(&quoted).expect("quoting broke valid JSON");
        assert_eq!(value, again, "quoting changed valid JSON");
    }
    let Ok(batch) = parse_json::<LogBatch<'static>>(&bytes.to_vec().into()) else {
        return;
    };
    for metric in batch.metrics.iter() {
        let sent = serde_json::to_string(metric).expect("a parsed metric serializes");
        let back: api::Metric = parse_json(&sent.into_bytes().into()).expect("sent metric parses");
        assert_eq!(back.key, metric.key);
        assert_eq!((back.step, back.timestamp), (metric.step, metric.timestamp));
        assert!(
            back.value.to_bits() == metric.value.to_bits()
                || (back.value.is_nan() && metric.value.is_nan())
        );
    }
    let keys = batch.metrics.iter().map(|m| &m.key);
    for key in keys.chain(batch.params.iter().map(|p| &p.key)) {
        if check_key("metric", key).is_ok() {
            assert!(key.chars().count() <= MAX_KEY && path_is_unique(key));
        }
    }
}

fn filter(text: &str, target: Target) {
    if let Ok(clauses) = search::parse(text, target) {
        let _ = search::matches(&Run, &clauses);
    }
    let orders: Vec<String> = text.split(',').map(str::to_string).collect();
    if let Ok(orders) = search::parse_order(&orders, target) {
        let _ = search::compare(&Run, &Run, &orders);
    }
    let middle = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    let (value, pattern) = text.split_at(middle);
    let _ = search::like(value, pattern, true);
    assert!(search::like(text, "%", false));
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 | 1 => body(rest),
        2 => filter(&String::from_utf8_lossy(rest), Target::Runs),
        _ => filter(&String::from_utf8_lossy(rest), Target::Experiments),
    }
});
