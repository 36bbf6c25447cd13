//! The tracking routes: experiments, runs and what is logged to them.
//!
//! Everything a script logs is checked as MLflow's server checks it (keys, lengths, batch
//! limits, params that would change), queued durably for the metastore, and only then recorded in
//! the registry and answered. A run's record goes into the queue ([`Item::ScriptRun`]) when it is
//! made and whenever it changes; a top-level run the script ends `FAILED` or `KILLED` also marks
//! the Periscope experiment failed, whatever the main container's exit code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::super::api::{
    self, check_key, check_length, CreateExperiment, CreateRun, ExperimentAnswer, ExperimentsPage,
    KeyValue, LogBatch, LogInputs, LogMetric, LogOutputs, RunAnswer, RunKeyValue, RunsPage,
    SearchExperiments, SearchRuns, UpdateRun, MAX_ENTITIES, MAX_EXPERIMENT_NAME, MAX_METRICS,
    MAX_PARAMS, MAX_PARAM_VALUE, MAX_TAGS, MAX_TAG_VALUE, RUN_STATUSES,
};
use super::endpoint::{
    answer, empty, error, invalid, not_found, ok, read_json, Answer, Fail, Req, Shared,
};
use super::registry::{
    new_id, run_info, NewRun, RunRecord, DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME,
};
use super::search::{self, Entity, Field, Searchable, Target};
use crate::metrics::model::{now_ms, Item, Metric, Param, RunStatus, ScriptRun, Tag};

/// Most results a search returns when the client does not say (MLflow's default).
const DEFAULT_MAX_RESULTS: i64 = 1000;
/// Most results a search returns at all.
const MAX_RESULTS: i64 = 50_000;

fn resource_exists(message: impl Into<String>) -> Fail {
    error(StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS", message)
}

// ---- experiments ----

#[derive(Deserialize)]
pub struct ByName {
    #[serde(default)]
    experiment_name: Option<String>,
}

pub async fn experiments_get_by_name(s: Shared, r: Req) -> Response {
    let q: ByName = match r.query() {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    answer(
        async {
            let name = q
                .experiment_name
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid("experiment_name is required"))?;
            let wanted = name.clone();
            match s.registry(move |r| r.experiment_by_name(&wanted)).await? {
                Some(experiment) => Ok(ok(&ExperimentAnswer { experiment })),
                None => Err(not_found(format!(
                    "Could not find experiment with name '{name}'"
                ))),
            }
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct ById {
    #[serde(default)]
    experiment_id: Option<String>,
}

pub async fn experiments_get(s: Shared, r: Req) -> Response {
    let q: ById = match r.query() {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    answer(
        async {
            let id = q
                .experiment_id
                .ok_or_else(|| invalid("experiment_id is required"))?;
            let wanted = id.clone();
            match s.registry(move |r| r.experiment(&wanted)).await? {
                Some(experiment) => Ok(ok(&ExperimentAnswer { experiment })),
                None => Err(not_found(format!("No Experiment with id={id} exists"))),
            }
        }
        .await,
    )
}

pub async fn experiments_create(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(async {
        let req: CreateExperiment = read_json(body).await?;
        let name = req.name.unwrap_or_default();
        if name.trim().is_empty() {
            return Err(invalid("an experiment name must not be empty"));
        }
        check_length("the experiment name", &name, MAX_EXPERIMENT_NAME).map_err(invalid)?;
        for t in &req.tags {
            check_key("experiment tag", &t.key).map_err(invalid)?;
        }
        let wanted = name.clone();
        match s
            .registry(move |r| r.create_experiment(&wanted, &req.tags, now_ms()))
            .await?
        {
            Some(experiment_id) => {
                tracing::info!(experiment = %name, id = %experiment_id, "MLflow experiment created");
                Ok(ok(&serde_json::json!({ "experiment_id": experiment_id })))
            }
            None => Err(resource_exists(format!(
                "Experiment(name={name}) already exists"
            ))),
        }
    }
    .await)
}

pub async fn experiments_set_tag(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: RunKeyValue = read_json(body).await?;
            let id = req
                .experiment_id
                .ok_or_else(|| invalid("experiment_id is required"))?;
            let tag = KeyValue {
                key: req.key.unwrap_or_default(),
                value: req.value.unwrap_or_default(),
            };
            check_key("experiment tag", &tag.key).map_err(invalid)?;
            let found = s
                .registry(move |r| {
                    if r.experiment(&id)?.is_none() {
                        return Ok(false);
                    }
                    r.set_experiment_tag(&id, &tag).map(|()| true)
                })
                .await?;
            if !found {
                return Err(not_found("no such experiment"));
            }
            Ok(empty())
        }
        .await,
    )
}

impl Searchable for api::Experiment {
    fn field(&self, e: &Entity) -> Option<Field<'_>> {
        match e {
            Entity::Attribute(a) => match a.as_str() {
                "name" => Some(Field::Text(&self.name)),
                "experiment_id" => Some(Field::Text(&self.experiment_id)),
                "creation_time" => self.creation_time.map(|t| Field::Number(t as f64)),
                "last_update_time" => self.last_update_time.map(|t| Field::Number(t as f64)),
                _ => None,
            },
            Entity::Tag(k) => self
                .tags
                .iter()
                .find(|t| &t.key == k)
                .map(|t| Field::Text(&t.value)),
            Entity::Metric(_) | Entity::Param(_) => None,
        }
    }
}

/// The number of results a search asked for, within MLflow's bounds.
fn max_results(asked: Option<i64>) -> Result<usize, Fail> {
    let n = asked.unwrap_or(DEFAULT_MAX_RESULTS);
    if !(1..=MAX_RESULTS).contains(&n) {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_RESULTS}; got {n}"
        )));
    }
    Ok(n as usize)
}

/// True when `view` (`ACTIVE_ONLY`, `DELETED_ONLY`, `ALL`; none: active) shows active items,
/// the only kind this endpoint has.
fn shows_active(view: Option<&str>) -> Result<bool, Fail> {
    match view.unwrap_or("ACTIVE_ONLY") {
        "ACTIVE_ONLY" | "ALL" | "" => Ok(true),
        "DELETED_ONLY" => Ok(false),
        other => Err(invalid(format!("unknown view type {other}"))),
    }
}

pub async fn experiments_search(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: SearchExperiments = read_json(body).await?;
            let clauses = search::parse(req.filter.as_deref().unwrap_or(""), Target::Experiments)
                .map_err(invalid)?;
            let mut orders =
                search::parse_order(&req.order_by, Target::Experiments).map_err(invalid)?;
            orders.push(search::Order {
                entity: Entity::Attribute("creation_time".into()),
                descending: true,
            });
            orders.push(search::Order {
                entity: Entity::Attribute("experiment_id".into()),
                descending: false,
            });
            let max = max_results(req.max_results)?;
            let active = shows_active(req.view_type.as_deref())?;
            let mut found: Vec<api::Experiment> = s.registry(|r| r.experiments()).await?;
            found.retain(|_| active);
            let token = req.page_token.as_deref();
            let (experiments, next_page_token) =
                search::select(found, &clauses, &orders, token, max).map_err(invalid)?;
            Ok(ok(&ExperimentsPage {
                experiments,
                next_page_token,
            }))
        }
        .await,
    )
}

// ---- runs ----

/// The run id a request names (`run_id`, or the older `run_uuid`).
fn run_id_of(run_id: Option<String>, run_uuid: Option<String>) -> Result<String, Fail> {
    run_id
        .filter(|r| !r.is_empty())
        .or(run_uuid.filter(|r| !r.is_empty()))
        .ok_or_else(|| invalid("run_id is required"))
}

/// The run's record; 404 as MLflow's when there is none (a run of another sidecar, or made up).
async fn find_run(s: &Shared, run_id: &str) -> Result<RunRecord, Fail> {
    let id = run_id.to_string();
    s.registry(move |r| r.run(&id)).await?.ok_or_else(|| {
        not_found(format!(
            "Run '{run_id}' not found: runs are made by this endpoint with runs/create \
             (mlflow.start_run); an id of another tracking server's run is not known here"
        ))
    })
}

/// A run's record as the metastore gets it.
fn script_run(record: &RunRecord, experiment_name: Option<String>) -> ScriptRun {
    ScriptRun {
        run_id: record.run_id.clone(),
        index: record.worker_index.clone(),
        experiment: experiment_name,
        name: record.name.clone(),
        parent: record.parent.clone(),
        user: record.user_id.clone(),
        start_ms: record.start_ms,
        end_ms: record.end_ms,
        status: record.status.clone(),
    }
}

/// The name the metastore knows the run's experiment by (`None`: the default experiment).
async fn experiment_name(s: &Shared, experiment_id: &str) -> Result<Option<String>, Fail> {
    if experiment_id == DEFAULT_EXPERIMENT_ID {
        return Ok(None);
    }
    let id = experiment_id.to_string();
    Ok(s.registry(move |r| r.experiment(&id))
        .await?
        .map(|e| e.name)
        .filter(|n| n != DEFAULT_EXPERIMENT_NAME))
}

fn check_tags(tags: &[KeyValue]) -> Result<(), Fail> {
    for t in tags {
        check_key("tag", &t.key).map_err(invalid)?;
        check_length(
            &format!("the value of tag `{}`", t.key),
            &t.value,
            MAX_TAG_VALUE,
        )
        .map_err(invalid)?;
    }
    Ok(())
}

fn check_params(params: &[KeyValue]) -> Result<(), Fail> {
    for p in params {
        check_key("param", &p.key).map_err(invalid)?;
        check_length(
            &format!("the value of param `{}`", p.key),
            &p.value,
            MAX_PARAM_VALUE,
        )
        .map_err(invalid)?;
    }
    Ok(())
}

pub async fn runs_create(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(async {
        let req: CreateRun = read_json(body).await?;
        let experiment_id = req
            .experiment_id
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_EXPERIMENT_ID.into());
        let id = experiment_id.clone();
        let experiment = s
            .registry(move |r| r.experiment(&id))
            .await?
            .ok_or_else(|| not_found(format!("No Experiment with id={experiment_id} exists")))?;
        let mut tags = req.tags;
        check_tags(&tags)?;
        let tag = |key: &str| tags.iter().find(|t| t.key == key).map(|t| t.value.clone());
        let name = req
            .run_name
            .filter(|n| !n.is_empty())
            .or_else(|| tag("mlflow.runName"))
            .unwrap_or_else(|| format!("run-{}", &new_id()[..8]));
        let user_id = req
            .user_id
            .filter(|u| !u.is_empty())
            .or_else(|| tag("mlflow.user"))
            .unwrap_or_default();
        let parent = match tag("mlflow.parentRunId") {
            Some(p) => {
                let wanted = p.clone();
                s.registry(move |r| r.run(&wanted)).await?.map(|_| p)
            }
            None => None,
        };
        tags.retain(|t| t.key != "mlflow.runName");
        tags.push(KeyValue {
            key: "mlflow.runName".into(),
            value: name.clone(),
        });
        let new = NewRun {
            experiment_id: experiment.experiment_id.clone(),
            name,
            user_id,
            start_ms: req.start_time.unwrap_or_else(now_ms),
            parent,
            tags: tags.clone(),
        };
        let record = s.registry(move |r| r.create_run(&new)).await?;
        let experiment_name = Some(experiment.name).filter(|n| {
            experiment.experiment_id != DEFAULT_EXPERIMENT_ID && n != DEFAULT_EXPERIMENT_NAME
        });
        let items = vec![
            Item::ScriptRun(script_run(&record, experiment_name)),
            Item::RunData {
                run: record.run_id.clone(),
                metrics: Vec::new(),
                params: Vec::new(),
                tags: tags.into_iter().map(tag_item).collect(),
            },
        ];
        if let Err(refused) = s.queue(items).await {
            // The client is told to retry, so this run must not stay behind.
            let id = record.run_id.clone();
            s.registry(move |r| r.delete_run(&id)).await?;
            return Err(refused);
        }
        tracing::info!(run_id = %record.run_id, name = %record.name, worker_index = %record.worker_index,
            "MLflow run started");
        let run = s.registry(move |r| r.full_run(&record)).await?;
        Ok(ok(&RunAnswer { run }))
    }
    .await)
}

fn tag_item(t: KeyValue) -> Tag {
    Tag {
        key: t.key,
        value: t.value,
    }
}

#[derive(Deserialize)]
pub struct RunQuery {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    run_uuid: Option<String>,
}

pub async fn runs_get(s: Shared, r: Req) -> Response {
    let q: RunQuery = match r.query() {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    answer(
        async {
            let id = run_id_of(q.run_id, q.run_uuid)?;
            let record = find_run(&s, &id).await?;
            let run = s.registry(move |r| r.full_run(&record)).await?;
            Ok(ok(&RunAnswer { run }))
        }
        .await,
    )
}

pub async fn runs_update(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: UpdateRun = read_json(body).await?;
            let id = run_id_of(req.run_id, req.run_uuid)?;
            let mut record = find_run(&s, &id).await?;
            if let Some(status) = &req.status {
                if !RUN_STATUSES.contains(&status.as_str()) {
                    return Err(invalid(format!(
                        "unknown run status {status}; one of {RUN_STATUSES:?}"
                    )));
                }
                record.status = status.clone();
            }
            if let Some(end) = req.end_time {
                if chrono::DateTime::from_timestamp_millis(end).is_none() {
                    return Err(invalid(format!("end_time {end} is out of range")));
                }
                record.end_ms = Some(end);
            }
            if let Some(name) = req.run_name.as_ref().filter(|n| !n.is_empty()) {
                record.name = name.clone();
            }
            let name = experiment_name(&s, &record.experiment_id).await?;
            let mut items = vec![Item::ScriptRun(script_run(&record, name))];
            // A script that gives up on its (top-level) run has failed, whatever the exit code: the
            // pipeline keeps that verdict durably before this is answered.
            if record.parent.is_none() && matches!(req.status.as_deref(), Some("FAILED" | "KILLED"))
            {
                items.push(Item::Status {
                    status: RunStatus::Failed,
                    at_ms: record.end_ms.unwrap_or_else(now_ms),
                });
            }
            s.queue(items).await?;
            let (status, end, run_name) = (req.status, req.end_time, req.run_name);
            let updated = s
                .registry(move |r| {
                    r.update_run(
                        &id,
                        status.as_deref(),
                        end,
                        run_name.as_deref().filter(|n| !n.is_empty()),
                    )
                })
                .await?
                .unwrap_or(record);
            Ok(ok(&serde_json::json!({ "run_info": run_info(&updated) })))
        }
        .await,
    )
}

/// A metric as received, checked, as the item the queue takes.
fn metric_item(m: api::Metric, index: &str) -> Result<(Metric, api::Metric), Fail> {
    check_key("metric", &m.key).map_err(invalid)?;
    let timestamp_ms = m.timestamp.unwrap_or_else(now_ms);
    if chrono::DateTime::from_timestamp_millis(timestamp_ms).is_none() {
        return Err(invalid(format!("timestamp {timestamp_ms} is out of range")));
    }
    let step = m.step.unwrap_or(0);
    let item = Metric {
        key: m.key.clone(),
        value: m.value,
        step,
        timestamp_ms,
        worker: index.to_string(),
    };
    let point = api::Metric {
        key: m.key,
        value: m.value,
        timestamp: Some(timestamp_ms),
        step: Some(step),
    };
    Ok((item, point))
}

/// Queues and records data logged to a run; refuses a param whose value would change.
async fn log(
    s: &Shared,
    record: RunRecord,
    metrics: Vec<api::Metric>,
    params: Vec<KeyValue>,
    tags: Vec<KeyValue>,
) -> Answer {
    check_params(&params)?;
    check_tags(&tags)?;
    let mut items = Vec::with_capacity(metrics.len());
    let mut points = Vec::with_capacity(metrics.len());
    for m in metrics {
        let (item, point) = metric_item(m, &record.worker_index)?;
        items.push(item);
        points.push(point);
    }
    let run_id = record.run_id.clone();
    let (id, wanted) = (run_id.clone(), params.clone());
    let changed = s.registry(move |r| r.changed_params(&id, &wanted)).await?;
    if let Some((key, old)) = changed.first() {
        let new = params
            .iter()
            .find(|p| &p.key == key)
            .map(|p| p.value.as_str())
            .unwrap_or_default();
        return Err(invalid(format!(
            "Changing param values is not allowed. Param with key='{key}' was already logged \
             with value='{old}' for run ID='{run_id}'. Attempted logging new value '{new}'."
        )));
    }
    let renamed = tags
        .iter()
        .rev()
        .find(|t| t.key == "mlflow.runName")
        .map(|t| t.value.clone());
    let mut queued = vec![Item::RunData {
        run: run_id.clone(),
        metrics: items,
        params: params
            .iter()
            .map(|p| Param {
                key: p.key.clone(),
                value: p.value.clone(),
                worker: record.worker_index.clone(),
            })
            .collect(),
        tags: tags.iter().cloned().map(tag_item).collect(),
    }];
    if let Some(name) = renamed {
        let mut renamed = record.clone();
        renamed.name = name;
        let experiment = experiment_name(s, &record.experiment_id).await?;
        queued.push(Item::ScriptRun(script_run(&renamed, experiment)));
    }
    s.queue(queued).await?;
    s.registry(move |r| r.log(&run_id, &points, &params, &tags))
        .await?;
    Ok(empty())
}

pub async fn log_metric(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: LogMetric = read_json(body).await?;
            let id = run_id_of(req.run_id, req.run_uuid)?;
            let record = find_run(&s, &id).await?;
            log(&s, record, vec![req.metric], Vec::new(), Vec::new()).await
        }
        .await,
    )
}

pub async fn log_parameter(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: RunKeyValue = read_json(body).await?;
            let id = run_id_of(req.run_id, req.run_uuid)?;
            let record = find_run(&s, &id).await?;
            let param = KeyValue {
                key: req.key.unwrap_or_default(),
                value: req.value.unwrap_or_default(),
            };
            log(&s, record, Vec::new(), vec![param], Vec::new()).await
        }
        .await,
    )
}

pub async fn set_tag(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: RunKeyValue = read_json(body).await?;
            let id = run_id_of(req.run_id, req.run_uuid)?;
            let record = find_run(&s, &id).await?;
            let tag = KeyValue {
                key: req.key.unwrap_or_default(),
                value: req.value.unwrap_or_default(),
            };
            log(&s, record, Vec::new(), Vec::new(), vec![tag]).await
        }
        .await,
    )
}

pub async fn delete_tag(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: RunKeyValue = read_json(body).await?;
            let id = run_id_of(req.run_id, req.run_uuid)?;
            let key = req.key.unwrap_or_default();
            find_run(&s, &id).await?;
            let (run, wanted) = (id.clone(), key.clone());
            if !s.registry(move |r| r.has_tag(&run, &wanted)).await? {
                return Err(not_found(format!(
                    "No tag with name: {key} in run with id {id}"
                )));
            }
            s.queue(vec![Item::RunTagDeleted {
                run: id.clone(),
                key: key.clone(),
            }])
            .await?;
            s.registry(move |r| r.delete_tag(&id, &key)).await?;
            Ok(empty())
        }
        .await,
    )
}

pub async fn log_batch(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let batch: LogBatch = read_json(body).await?;
            let (m, p, t) = (batch.metrics.len(), batch.params.len(), batch.tags.len());
            if m > MAX_METRICS || p > MAX_PARAMS || t > MAX_TAGS || m + p + t > MAX_ENTITIES {
                return Err(invalid(format!(
                    "a batch holds at most {MAX_METRICS} metrics, {MAX_PARAMS} params, \
                 {MAX_TAGS} tags and {MAX_ENTITIES} items in all; got {m}, {p} and {t}"
                )));
            }
            let record = find_run(&s, &batch.run_id).await?;
            let params = batch.params.into_owned();
            let mut seen = std::collections::HashMap::new();
            for param in &params {
                if let Some(other) = seen.insert(param.key.as_str(), param.value.as_str()) {
                    if other != param.value {
                        return Err(invalid(format!(
                            "the batch gives param `{}` two values",
                            param.key
                        )));
                    }
                }
            }
            log(
                &s,
                record,
                batch.metrics.into_owned(),
                params,
                batch.tags.into_owned(),
            )
            .await
        }
        .await,
    )
}

pub async fn log_inputs(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: LogInputs = read_json(body).await?;
            let record = find_run(&s, &req.run_id).await?;
            if req.datasets.len() > MAX_ENTITIES {
                return Err(invalid(format!(
                    "at most {MAX_ENTITIES} datasets per call; got {}",
                    req.datasets.len()
                )));
            }
            for d in &req.datasets {
                if d.get("dataset").and_then(|x| x.get("name")).is_none() {
                    return Err(invalid("every dataset input needs dataset.name"));
                }
            }
            if !req.datasets.is_empty() {
                s.queue(vec![Item::RunInputs {
                    run: record.run_id.clone(),
                    datasets: req.datasets.clone(),
                }])
                .await?;
            }
            let id = record.run_id;
            s.registry(move |r| r.log_inputs(&id, &req.datasets, &req.models))
                .await?;
            Ok(empty())
        }
        .await,
    )
}

pub async fn log_outputs(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: LogOutputs = read_json(body).await?;
            let record = find_run(&s, &req.run_id).await?;
            let id = record.run_id;
            s.registry(move |r| r.log_outputs(&id, &req.models)).await?;
            Ok(empty())
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    run_uuid: Option<String>,
    #[serde(default)]
    metric_key: Option<String>,
    #[serde(default)]
    max_results: Option<i64>,
    #[serde(default)]
    page_token: Option<String>,
}

pub async fn metric_history(s: Shared, r: Req) -> Response {
    let q: HistoryQuery = match r.query() {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    answer(
        async {
            let id = run_id_of(q.run_id, q.run_uuid)?;
            let key = q
                .metric_key
                .filter(|k| !k.is_empty())
                .ok_or_else(|| invalid("metric_key is required"))?;
            find_run(&s, &id).await?;
            let points = s.registry(move |r| r.history(&id, &key)).await?;
            let max = q.max_results.unwrap_or(25_000).clamp(1, 1_000_000) as usize;
            let (metrics, next_page_token) =
                search::page(points, q.page_token.as_deref(), max).map_err(invalid)?;
            let mut body = serde_json::json!({ "metrics": metrics });
            if let Some(t) = next_page_token {
                body["next_page_token"] = t.into();
            }
            Ok(ok(&body))
        }
        .await,
    )
}

impl Searchable for api::Run {
    fn field(&self, e: &Entity) -> Option<Field<'_>> {
        fn text<'a>(list: &'a [KeyValue], k: &str) -> Option<Field<'a>> {
            list.iter()
                .find(|kv| kv.key == k)
                .map(|kv| Field::Text(kv.value.as_str()))
        }
        match e {
            Entity::Metric(k) => self
                .data
                .metrics
                .iter()
                .find(|m| &m.key == k)
                .map(|m| Field::Number(m.value)),
            Entity::Param(k) => text(&self.data.params, k),
            Entity::Tag(k) => text(&self.data.tags, k),
            Entity::Attribute(a) => match a.as_str() {
                "run_id" => Some(Field::Text(&self.info.run_id)),
                "run_name" => Some(Field::Text(&self.info.run_name)),
                "status" => Some(Field::Text(&self.info.status)),
                "user_id" => Some(Field::Text(&self.info.user_id)),
                "artifact_uri" => Some(Field::Text(&self.info.artifact_uri)),
                "start_time" => self.info.start_time.map(|t| Field::Number(t as f64)),
                "end_time" => self.info.end_time.map(|t| Field::Number(t as f64)),
                _ => None,
            },
        }
    }
}

pub async fn runs_search(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: SearchRuns = read_json(body).await?;
            let clauses = search::parse(req.filter.as_deref().unwrap_or(""), Target::Runs)
                .map_err(invalid)?;
            let mut orders = search::parse_order(&req.order_by, Target::Runs).map_err(invalid)?;
            // MLflow's order after the client's: newest first, then by id.
            orders.push(search::Order {
                entity: Entity::Attribute("start_time".into()),
                descending: true,
            });
            orders.push(search::Order {
                entity: Entity::Attribute("run_id".into()),
                descending: false,
            });
            let max = max_results(req.max_results)?;
            let active = shows_active(req.run_view_type.as_deref())?;
            let ids = req.experiment_ids;
            let mut runs: Vec<api::Run> = s
                .registry(move |r| {
                    r.runs(&ids)?
                        .iter()
                        .map(|record| r.full_run(record))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            runs.retain(|_| active);
            let token = req.page_token.as_deref();
            let (runs, next_page_token) =
                search::select(runs, &clauses, &orders, token, max).map_err(invalid)?;
            Ok(ok(&RunsPage {
                runs,
                next_page_token,
            }))
        }
        .await,
    )
}
