//! The search grammar the endpoint understands, for `runs/search`, `experiments/search` and
//! `logged-models/search`: MLflow's filter strings and `order_by` clauses, parsed and evaluated
//! over what the registry holds. This module does no I/O.
//!
//! A filter is comparisons joined by `AND` (any case): `<entity> <op> <value>`.
//! * Entities: `metrics.<key>`, `params.<key>`, `tags.<key>` (a key with other characters in
//!   backquotes or double quotes: ``tags.`mlflow.parentRunId` ``), and attributes, written
//!   `attributes.<name>` (also `attribute.`, `attr.`, `run.`) or bare (`name`, `run_name`).
//! * Operators: `=`, `!=`, `<`, `<=`, `>`, `>=` on metrics and on the time attributes; `=`, `!=`,
//!   `LIKE`, `ILIKE` on params, tags and text attributes; `IN (…)` and `NOT IN (…)` on ids.
//! * Values: text in single or double quotes, numbers.
//!
//! `OR`, parentheses, `IS NULL` and dataset filters are not supported: [`parse`] refuses them with
//! [`GRAMMAR`], which the endpoint sends as MLflow's `INVALID_PARAMETER_VALUE`.

use std::cmp::Ordering;

/// What the endpoint tells a client whose filter it cannot read.
pub const GRAMMAR: &str = "Periscope's MLflow endpoint supports filters of comparisons joined by \
AND: `metrics.<key>`, `params.<key>`, `tags.<key>` or an attribute (`attributes.run_name`, \
`attributes.status`, `attributes.run_id`, `attributes.start_time`, `attributes.end_time`, \
`attributes.user_id`; for experiments `name`, `creation_time`, `last_update_time`; for logged \
models `name`, `source_run_id`, `status`, `model_id`), compared with = != < <= > >= (numbers), \
= != LIKE ILIKE (text) or IN / NOT IN (ids), to a 'quoted' text or a number; OR, parentheses and \
IS NULL are not supported";

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Metric(String),
    Param(String),
    Tag(String),
    Attribute(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
}

/// The right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    List(Vec<String>),
}

/// One comparison. Invariant: `In`/`NotIn` come with a `List`, the others with a single value.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub entity: Entity,
    pub op: Op,
    pub value: Literal,
}

/// A value as an entity holds it, for comparisons and sorting.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Text(&'a str),
    Number(f64),
}

/// Something a filter can be evaluated on: a run, an experiment or a logged model.
pub trait Searchable {
    /// The value of `entity`, or `None` when it has none (never matches, sorts last).
    fn field(&self, entity: &Entity) -> Option<Field<'_>>;
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Backquoted(String),
    Number(f64),
    Op(String),
    Open,
    Close,
    Comma,
    Dot,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                out.push(Token::Dot);
                i += 1;
            }
            '\'' | '"' | '`' => {
                let close = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unclosed {close} in the filter")),
                        Some(&ch) if ch == close => {
                            // A doubled quote stands for itself, as in SQL.
                            if chars.get(i + 1) == Some(&close) {
                                s.push(close);
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(if close == '`' {
                    Token::Backquoted(s)
                } else {
                    Token::Quoted(s)
                });
            }
            '=' | '!' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let op = if matches!(two.as_str(), "!=" | "<=" | ">=" | "==" | "<>") {
                    i += 2;
                    match two.as_str() {
                        "==" => "=".to_string(),
                        "<>" => "!=".to_string(),
                        _ => two,
                    }
                } else if c == '!' {
                    return Err("`!` must be followed by `=`".into());
                } else {
                    i += 1;
                    c.to_string()
                };
                out.push(Token::Op(op));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' || c == '+' => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                out.push(Token::Number(n));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '-' | ':' | '/'))
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected {other:?} in the filter")),
        }
    }
    Ok(out)
}

/// Which kinds of entities a search takes, and what a bare identifier means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Runs,
    Experiments,
    Models,
}

/// Parses a filter (empty: no clauses).
pub fn parse(filter: &str, target: Target) -> Result<Vec<Clause>, String> {
    let toks = tokens(filter).map_err(|e| format!("{e}; {GRAMMAR}"))?;
    let mut clauses = Vec::new();
    let mut i = 0;
    let fail = |what: String| format!("{what}; {GRAMMAR}");
    while i < toks.len() {
        if !clauses.is_empty() {
            match toks.get(i) {
                Some(Token::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
                Some(Token::Word(w)) if w.eq_ignore_ascii_case("or") => {
                    return Err(fail("OR is not supported".into()))
                }
                other => return Err(fail(format!("expected AND, found {other:?}"))),
            }
        }
        let (entity, next) = entity(&toks, i, target).map_err(fail)?;
        i = next;
        let op = match toks.get(i) {
            Some(Token::Op(o)) => {
                i += 1;
                match o.as_str() {
                    "=" => Op::Eq,
                    "!=" => Op::Ne,
                    "<" => Op::Lt,
                    "<=" => Op::Le,
                    ">" => Op::Gt,
                    _ => Op::Ge,
                }
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("like") => {
                i += 1;
                Op::Like
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("ilike") => {
                i += 1;
                Op::ILike
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("in") => {
                i += 1;
                Op::In
            }
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("not") => match toks.get(i + 1) {
                Some(Token::Word(x)) if x.eq_ignore_ascii_case("in") => {
                    i += 2;
                    Op::NotIn
                }
                _ => return Err(fail("NOT is only supported in NOT IN".into())),
            },
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("is") => {
                return Err(fail("IS NULL is not supported".into()))
            }
            other => return Err(fail(format!("expected a comparison, found {other:?}"))),
        };
        let value = match (op, toks.get(i)) {
            (Op::In | Op::NotIn, Some(Token::Open)) => {
                i += 1;
                let mut list = Vec::new();
                loop {
                    match toks.get(i) {
                        Some(Token::Quoted(s)) => list.push(s.clone()),
                        other => {
                            return Err(fail(format!("expected a quoted id, found {other:?}")))
                        }
                    }
                    i += 1;
                    match toks.get(i) {
                        Some(Token::Comma) => i += 1,
                        Some(Token::Close) => {
                            i += 1;
                            break;
                        }
                        other => return Err(fail(format!("expected , or ), found {other:?}"))),
                    }
                }
                Literal::List(list)
            }
            (Op::In | Op::NotIn, other) => {
                return Err(fail(format!(
                    "IN needs a list in parentheses, found {other:?}"
                )))
            }
            (_, Some(Token::Quoted(s))) => {
                i += 1;
                Literal::Text(s.clone())
            }
            (_, Some(Token::Number(n))) => {
                i += 1;
                Literal::Number(*n)
            }
            (_, other) => return Err(fail(format!("expected a value, found {other:?}"))),
        };
        check(&entity, op, &value, target).map_err(fail)?;
        clauses.push(Clause { entity, op, value });
    }
    Ok(clauses)
}

/// Reads an entity starting at `toks[i]`; returns it and the index after it.
fn entity(toks: &[Token], i: usize, target: Target) -> Result<(Entity, usize), String> {
    let name = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        Some(Token::Backquoted(w) | Token::Quoted(w)) => Some(w.clone()),
        _ => None,
    };
    let first = match toks.get(i) {
        Some(Token::Word(w)) => w.clone(),
        Some(Token::Backquoted(w)) => return Ok((Entity::Attribute(w.clone()), i + 1)),
        other => return Err(format!("expected an entity, found {other:?}")),
    };
    if toks.get(i + 1) != Some(&Token::Dot) {
        return Ok((Entity::Attribute(first.to_ascii_lowercase()), i + 1));
    }
    // A key may itself hold dots when unquoted (`tags.mlflow.runName`): take words and dots until
    // the operator.
    let mut key = name(toks.get(i + 2)).ok_or("expected a key after the dot")?;
    let mut j = i + 3;
    if matches!(toks.get(i + 2), Some(Token::Word(_))) {
        while toks.get(j) == Some(&Token::Dot) {
            match toks.get(j + 1) {
                Some(Token::Word(w)) => {
                    key.push('.');
                    key.push_str(w);
                    j += 2;
                }
                _ => break,
            }
        }
    }
    let entity = match first.to_ascii_lowercase().as_str() {
        "metric" | "metrics" if target != Target::Experiments => Entity::Metric(key),
        "param" | "params" | "parameter" | "parameters" if target != Target::Experiments => {
            Entity::Param(key)
        }
        "tag" | "tags" => Entity::Tag(key),
        "attribute" | "attributes" | "attr" | "run" => Entity::Attribute(key.to_ascii_lowercase()),
        other => return Err(format!("`{other}.` is not a supported entity type")),
    };
    Ok((entity, j))
}

const TIME_ATTRIBUTES: [&str; 5] = [
    "start_time",
    "end_time",
    "creation_time",
    "last_update_time",
    "creation_timestamp",
];

/// Refuses comparisons the grammar does not define for the entity.
fn check(entity: &Entity, op: Op, value: &Literal, target: Target) -> Result<(), String> {
    let numeric = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
    match entity {
        Entity::Metric(_) => {
            if !matches!(value, Literal::Number(_)) || matches!(op, Op::Like | Op::ILike) {
                return Err("metrics compare with numbers".into());
            }
        }
        Entity::Param(_) | Entity::Tag(_) => {
            if numeric || matches!(op, Op::In | Op::NotIn) || !matches!(value, Literal::Text(_)) {
                return Err("params and tags compare with quoted text (= != LIKE ILIKE)".into());
            }
        }
        Entity::Attribute(a) => {
            let known: &[&str] = match target {
                Target::Runs => &[
                    "run_id",
                    "run_name",
                    "status",
                    "start_time",
                    "end_time",
                    "user_id",
                    "artifact_uri",
                ],
                Target::Experiments => {
                    &["name", "experiment_id", "creation_time", "last_update_time"]
                }
                Target::Models => &["name", "model_id", "source_run_id", "status", "model_type"],
            };
            if !known.contains(&a.as_str()) {
                return Err(format!("`{a}` is not a supported attribute"));
            }
            let time = TIME_ATTRIBUTES.contains(&a.as_str());
            if time != matches!(value, Literal::Number(_)) && !matches!(op, Op::In | Op::NotIn) {
                return Err(format!(
                    "`{a}` compares with {}",
                    if time { "numbers" } else { "quoted text" }
                ));
            }
            if time && matches!(op, Op::Like | Op::ILike) {
                return Err(format!("`{a}` cannot be compared with LIKE"));
            }
            if matches!(op, Op::In | Op::NotIn) && !a.ends_with("id") {
                return Err("IN and NOT IN compare ids only".into());
            }
        }
    }
    Ok(())
}

/// True when `item` satisfies every clause.
pub fn matches(item: &impl Searchable, clauses: &[Clause]) -> bool {
    clauses.iter().all(|c| holds(item, c))
}

fn holds(item: &impl Searchable, clause: &Clause) -> bool {
    let Some(field) = item.field(&clause.entity) else {
        return false;
    };
    match (&field, &clause.value) {
        (Field::Number(a), Literal::Number(b)) => {
            let (a, b) = (*a, *b);
            match clause.op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                _ => false,
            }
        }
        (Field::Text(a), Literal::Text(b)) => match clause.op {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Like => like(a, b, false),
            Op::ILike => like(a, b, true),
            _ => false,
        },
        (Field::Text(a), Literal::List(list)) => {
            let found = list.iter().any(|x| x == a);
            if clause.op == Op::In {
                found
            } else {
                !found
            }
        }
        _ => false,
    }
}

/// SQL's LIKE: `%` any run of characters, `_` one character.
pub fn like(text: &str, pattern: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (t, p) = (fold(text), fold(pattern));
    // Dynamic programming over (pattern position, text position): memory O(len(text)).
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for pc in &p {
        let mut next = vec![false; t.len() + 1];
        match pc {
            '%' => {
                let mut any = false;
                for j in 0..=t.len() {
                    any |= row[j];
                    next[j] = any;
                }
            }
            c => {
                for j in 1..=t.len() {
                    next[j] = row[j - 1] && (*c == '_' || t[j - 1] == *c);
                }
            }
        }
        row = next;
    }
    row[t.len()]
}

/// One `order_by` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub entity: Entity,
    pub descending: bool,
}

/// Parses `order_by` clauses (`<entity> [ASC|DESC]`).
pub fn parse_order(clauses: &[String], target: Target) -> Result<Vec<Order>, String> {
    let mut out = Vec::new();
    for text in clauses {
        let toks = tokens(text)?;
        let (entity, next) = entity(&toks, 0, target)?;
        let descending = match toks.get(next) {
            None => false,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("asc") => false,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("desc") => true,
            other => return Err(format!("`{text}`: expected ASC or DESC, found {other:?}")),
        };
        if toks.len() > next + 1 {
            return Err(format!("`{text}` is not `<entity> [ASC|DESC]`"));
        }
        out.push(Order { entity, descending });
    }
    Ok(out)
}

/// Compares two items by `orders`, entities an item lacks last.
pub fn compare(a: &impl Searchable, b: &impl Searchable, orders: &[Order]) -> Ordering {
    for o in orders {
        let ord = match (a.field(&o.entity), b.field(&o.entity)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let ord = match (x, y) {
                    (Field::Number(x), Field::Number(y)) => x.total_cmp(&y),
                    (Field::Text(x), Field::Text(y)) => x.cmp(y),
                    (Field::Number(_), Field::Text(_)) => Ordering::Less,
                    (Field::Text(_), Field::Number(_)) => Ordering::Greater,
                };
                if o.descending {
                    ord.reverse()
                } else {
                    ord
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// What a search answers: the `items` that match `clauses`, sorted by `orders` (none keeps their
/// order), and the page of them that `page_token` and `max_results` select, as [`page`] does.
pub fn select<T: Searchable>(
    items: Vec<T>,
    clauses: &[Clause],
    orders: &[Order],
    page_token: Option<&str>,
    max_results: usize,
) -> Result<(Vec<T>, Option<String>), String> {
    let mut found: Vec<T> = items
        .into_iter()
        .filter(|item| matches(item, clauses))
        .collect();
    found.sort_by(|a, b| compare(a, b, orders));
    page(found, page_token, max_results)
}

/// The page of `items` that `page_token` (an offset written by this function, or none) and
/// `max_results` select, and the token of the next page, if there is one.
pub fn page<T>(
    items: Vec<T>,
    page_token: Option<&str>,
    max_results: usize,
) -> Result<(Vec<T>, Option<String>), String> {
    let offset = match page_token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| format!("`{t}` is not a page token this endpoint gave"))?,
    };
    let total = items.len();
    let end = offset.saturating_add(max_results).min(total);
    let next = (end < total).then(|| end.to_string());
    Ok((
        items.into_iter().skip(offset).take(max_results).collect(),
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Item(HashMap<String, String>, HashMap<String, f64>);

    impl Searchable for Item {
        fn field(&self, e: &Entity) -> Option<Field<'_>> {
            match e {
                Entity::Metric(k) => self.1.get(k).map(|v| Field::Number(*v)),
                Entity::Tag(k) | Entity::Param(k) | Entity::Attribute(k) => {
                    if let Some(v) = self.1.get(k) {
                        return Some(Field::Number(*v));
                    }
                    self.0.get(k).map(|v| Field::Text(v))
                }
            }
        }
    }

    fn item(text: &[(&str, &str)], nums: &[(&str, f64)]) -> Item {
        Item(
            text.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            nums.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        )
    }

    #[test]
    fn the_fluent_apis_filters_parse_and_match() {
        let run = item(
            &[
                ("mlflow.parentRunId", "abc"),
                ("run_name", "trainer"),
                ("status", "FINISHED"),
                ("run_id", "r1"),
                ("lr", "0.01"),
            ],
            &[("loss", 0.2), ("start_time", 100.0)],
        );
        for (filter, expect) in [
            ("", true),
            ("tags.mlflow.parentRunId = 'abc'", true),
            ("tags.`mlflow.parentRunId` = \"abc\"", true),
            ("attributes.run_name = 'trainer'", true),
            (
                "attributes.status = 'FINISHED' AND metrics.loss < 0.3",
                true,
            ),
            ("metrics.loss >= 0.3", false),
            ("params.lr = '0.01' and run_name LIKE 'tr%'", true),
            ("attributes.run_name ILIKE 'TRAIN%'", true),
            ("attributes.run_id IN ('r1', 'r2')", true),
            ("attributes.run_id NOT IN ('r1')", false),
            ("attributes.start_time > 50", true),
            ("tags.missing != 'x'", false),
        ] {
            let clauses = parse(filter, Target::Runs).unwrap_or_else(|e| panic!("{filter}: {e}"));
            assert_eq!(matches(&run, &clauses), expect, "{filter}");
        }
    }

    #[test]
    fn what_the_grammar_lacks_is_refused_naming_it() {
        for filter in [
            "metrics.loss < 1 OR metrics.loss > 2",
            "(metrics.loss < 1)",
            "tags.x IS NULL",
            "metrics.loss = 'a'",
            "params.lr > 1",
            "attributes.color = 'red'",
            "datasets.name = 'x'",
            "metrics.loss <",
        ] {
            let e = parse(filter, Target::Runs).unwrap_err();
            assert!(e.contains("supports filters"), "{filter}: {e}");
        }
        assert!(parse("name = 'exp'", Target::Experiments).is_ok());
        assert!(parse("metrics.x = 1", Target::Experiments).is_err());
    }

    #[test]
    fn like_order_and_pages() {
        assert!(like("weights.bin", "%.bin", false));
        assert!(like("a_b", "a_b", false) && like("axb", "a_b", false));
        assert!(!like("AB", "ab", false) && like("AB", "ab", true));
        let a = item(&[], &[("start_time", 1.0)]);
        let b = item(&[], &[("start_time", 2.0)]);
        let c = item(&[], &[]);
        let orders = parse_order(&["attributes.start_time DESC".into()], Target::Runs).unwrap();
        let mut v = [&a, &c, &b];
        v.sort_by(|x, y| compare(*x, *y, &orders));
        assert_eq!(v[0].1.get("start_time"), Some(&2.0));
        assert!(v[2].1.is_empty(), "missing values sort last");
        let (first, next) = page((0..5).collect(), None, 2).unwrap();
        assert_eq!((first, next.as_deref()), (vec![0, 1], Some("2")));
        let (last, next) = page((0..5).collect(), Some("4"), 2).unwrap();
        assert_eq!((last, next), (vec![4], None));
    }
}
