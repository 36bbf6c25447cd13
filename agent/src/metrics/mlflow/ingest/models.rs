//! The logged-model routes MLflow 3's `log_model` uses: create, get, finalize, tags, params and
//! search. A logged model lives in the registry; its files are artifacts under
//! `mlflow-artifacts:/<experiment>/models/<model>/artifacts`, stored as the files of its source
//! run (see [`super::artifacts`]).

use axum::body::Body;
use axum::response::Response;
use serde::Deserialize;

use super::super::api::{
    check_key, CreateLoggedModel, KeyValue, LoggedModelAnswer, LoggedModelsPage, SearchLoggedModels,
};
use super::endpoint::{answer, empty, invalid, not_found, ok, read_json, Fail, Req, Shared};
use super::registry::{ModelRecord, NewModel};
use super::search::{self, Entity, Field, Searchable, Target};
use crate::metrics::model::now_ms;

/// The statuses a logged model can be finalized with.
const MODEL_STATUSES: [&str; 3] = [
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
];

async fn find_model(s: &Shared, model_id: &str) -> Result<ModelRecord, Fail> {
    let id = model_id.to_string();
    s.registry(move |r| r.model(&id))
        .await?
        .ok_or_else(|| not_found(format!("Logged model with ID '{model_id}' not found")))
}

async fn model_answer(s: &Shared, record: ModelRecord) -> Result<Response, Fail> {
    let model = s.registry(move |r| r.full_model(&record)).await?;
    Ok(ok(&LoggedModelAnswer { model }))
}

pub async fn create(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: CreateLoggedModel = read_json(body).await?;
            let experiment_id = req.experiment_id.clone();
            let id = experiment_id.clone();
            if s.registry(move |r| r.experiment(&id)).await?.is_none() {
                return Err(not_found(format!(
                    "No Experiment with id={experiment_id} exists"
                )));
            }
            if let Some(run) = req.source_run_id.clone().filter(|r| !r.is_empty()) {
                let wanted = run.clone();
                if s.registry(move |r| r.run(&wanted)).await?.is_none() {
                    return Err(not_found(format!("Run '{run}' not found")));
                }
            }
            for kv in req.params.iter().chain(&req.tags) {
                check_key("logged model param or tag", &kv.key).map_err(invalid)?;
            }
            let new = NewModel {
                experiment_id,
                name: req
                    .name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "model".into()),
                source_run_id: req.source_run_id.filter(|r| !r.is_empty()),
                model_type: req.model_type.unwrap_or_default(),
                params: req.params,
                tags: req.tags,
            };
            let record = s.registry(move |r| r.create_model(&new, now_ms())).await?;
            model_answer(&s, record).await
        }
        .await,
    )
}

pub async fn get(s: Shared, r: Req) -> Response {
    let model_id = r.param(0).to_string();
    answer(
        async {
            let record = find_model(&s, &model_id).await?;
            model_answer(&s, record).await
        }
        .await,
    )
}

#[derive(Deserialize)]
struct Finalize {
    #[serde(default)]
    status: String,
}

pub async fn finalize(s: Shared, r: Req) -> Response {
    let model_id = r.param(0).to_string();
    let body = r.body;
    answer(
        async {
            let req: Finalize = read_json(body).await?;
            if !MODEL_STATUSES.contains(&req.status.as_str()) {
                return Err(invalid(format!(
                    "unknown logged model status `{}`; one of {MODEL_STATUSES:?}",
                    req.status
                )));
            }
            find_model(&s, &model_id).await?;
            let id = model_id.clone();
            s.registry(move |r| r.set_model_status(&id, &req.status, now_ms()))
                .await?;
            let record = find_model(&s, &model_id).await?;
            model_answer(&s, record).await
        }
        .await,
    )
}

#[derive(Deserialize)]
struct Pairs {
    #[serde(default)]
    tags: Vec<KeyValue>,
    #[serde(default)]
    params: Vec<KeyValue>,
}

async fn set_pairs(s: Shared, model_id: String, body: Body, params: bool) -> Response {
    answer(
        async {
            let req: Pairs = read_json(body).await?;
            let pairs = if params { req.params } else { req.tags };
            for kv in &pairs {
                check_key("logged model param or tag", &kv.key).map_err(invalid)?;
            }
            find_model(&s, &model_id).await?;
            s.registry(move |r| r.set_model_pairs(&model_id, params, &pairs))
                .await?;
            Ok(empty())
        }
        .await,
    )
}

pub async fn set_tags(s: Shared, r: Req) -> Response {
    let model_id = r.param(0).to_string();
    let body = r.body;
    set_pairs(s, model_id, body, false).await
}

pub async fn log_params(s: Shared, r: Req) -> Response {
    let model_id = r.param(0).to_string();
    let body = r.body;
    set_pairs(s, model_id, body, true).await
}

pub async fn delete_tag(s: Shared, r: Req) -> Response {
    let (model_id, key) = (r.param(0).to_string(), r.param(1).to_string());
    answer(
        async {
            find_model(&s, &model_id).await?;
            s.registry(move |r| r.delete_model_tag(&model_id, &key))
                .await?;
            Ok(empty())
        }
        .await,
    )
}

impl Searchable for super::super::api::LoggedModel {
    fn field(&self, e: &Entity) -> Option<Field<'_>> {
        let info = &self.info;
        match e {
            Entity::Attribute(a) => match a.as_str() {
                "name" => Some(Field::Text(&info.name)),
                "model_id" => Some(Field::Text(&info.model_id)),
                "source_run_id" => Some(Field::Text(&info.source_run_id)),
                "status" => Some(Field::Text(&info.status)),
                "model_type" => Some(Field::Text(&info.model_type)),
                "creation_timestamp" | "creation_time" => {
                    info.creation_timestamp_ms.map(|t| Field::Number(t as f64))
                }
                _ => None,
            },
            Entity::Tag(k) => info
                .tags
                .iter()
                .find(|t| &t.key == k)
                .map(|t| Field::Text(&t.value)),
            Entity::Param(k) => self
                .data
                .params
                .iter()
                .find(|t| &t.key == k)
                .map(|t| Field::Text(&t.value)),
            Entity::Metric(_) => None,
        }
    }
}

pub async fn search(s: Shared, r: Req) -> Response {
    let body = r.body;
    answer(
        async {
            let req: SearchLoggedModels = read_json(body).await?;
            let clauses = search::parse(req.filter.as_deref().unwrap_or(""), Target::Models)
                .map_err(invalid)?;
            let max = req.max_results.unwrap_or(100).clamp(1, 50_000) as usize;
            let ids = req.experiment_ids;
            let found = s
                .registry(move |r| {
                    r.models(&ids)?
                        .iter()
                        .map(|m| r.full_model(m))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            // Logged models take no order_by: the registry's order stands.
            let token = req.page_token.as_deref();
            let (models, next_page_token) =
                search::select(found, &clauses, &[], token, max).map_err(invalid)?;
            Ok(ok(&LoggedModelsPage {
                models,
                next_page_token,
            }))
        }
        .await,
    )
}
