//! Which route answers a request: MLflow's paths and methods, matched against a table, with
//! path parameters decoded. One axum handler serves them all (the router's fallback), so the
//! endpoint costs one handler's machinery in the binary rather than one per route; anything the
//! table does not hold answers MLflow's JSON error naming what is not supported.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;

use super::endpoint::{error, invalid, ok, Req, Shared};
use super::{artifacts, models, tracking};

/// A route's handler.
type Handler = fn(Shared, Req) -> BoxFuture<'static, Response>;

/// One route. `pattern` is a path whose `{}` segments match one segment and whose last `{*}`
/// matches the rest (at least one segment); both are captured, percent-decoded.
struct Route {
    method: Method,
    pattern: &'static str,
    handler: Handler,
}

macro_rules! route {
    ($method:ident, $pattern:expr, $f:path) => {
        Route {
            method: Method::$method,
            pattern: $pattern,
            handler: |s: Shared, r: Req| -> BoxFuture<'static, Response> { Box::pin($f(s, r)) },
        }
    };
}

/// Every route, a static path before a parameter that would match it too.
fn table() -> [Route; 35] {
    use tracking as t;
    [
        route!(GET, "/", root),
        route!(GET, "/api/3.0/mlflow/server-info", server_info),
        route!(GET, "/api/2.0/mlflow/server-info", server_info),
        route!(
            GET,
            "/api/2.0/mlflow/experiments/get-by-name",
            t::experiments_get_by_name
        ),
        route!(GET, "/api/2.0/mlflow/experiments/get", t::experiments_get),
        route!(
            POST,
            "/api/2.0/mlflow/experiments/create",
            t::experiments_create
        ),
        route!(
            POST,
            "/api/2.0/mlflow/experiments/search",
            t::experiments_search
        ),
        route!(
            POST,
            "/api/2.0/mlflow/experiments/set-experiment-tag",
            t::experiments_set_tag
        ),
        route!(POST, "/api/2.0/mlflow/runs/create", t::runs_create),
        route!(GET, "/api/2.0/mlflow/runs/get", t::runs_get),
        route!(POST, "/api/2.0/mlflow/runs/update", t::runs_update),
        route!(POST, "/api/2.0/mlflow/runs/log-metric", t::log_metric),
        route!(POST, "/api/2.0/mlflow/runs/log-parameter", t::log_parameter),
        route!(POST, "/api/2.0/mlflow/runs/set-tag", t::set_tag),
        route!(POST, "/api/2.0/mlflow/runs/delete-tag", t::delete_tag),
        route!(POST, "/api/2.0/mlflow/runs/log-batch", t::log_batch),
        route!(POST, "/api/2.0/mlflow/runs/log-inputs", t::log_inputs),
        route!(POST, "/api/2.0/mlflow/runs/outputs", t::log_outputs),
        route!(POST, "/api/2.0/mlflow/runs/search", t::runs_search),
        route!(
            GET,
            "/api/2.0/mlflow/metrics/get-history",
            t::metric_history
        ),
        route!(POST, "/api/2.0/mlflow/logged-models", models::create),
        route!(POST, "/api/2.0/mlflow/logged-models/search", models::search),
        route!(GET, "/api/2.0/mlflow/logged-models/{}", models::get),
        route!(PATCH, "/api/2.0/mlflow/logged-models/{}", models::finalize),
        route!(
            PATCH,
            "/api/2.0/mlflow/logged-models/{}/tags",
            models::set_tags
        ),
        route!(
            DELETE,
            "/api/2.0/mlflow/logged-models/{}/tags/{}",
            models::delete_tag
        ),
        route!(
            POST,
            "/api/2.0/mlflow/logged-models/{}/params",
            models::log_params
        ),
        route!(GET, "/api/2.0/mlflow-artifacts/artifacts", artifacts::list),
        route!(
            GET,
            "/api/2.0/mlflow-artifacts/artifacts/{*}",
            artifacts::download
        ),
        route!(
            PUT,
            "/api/2.0/mlflow-artifacts/artifacts/{*}",
            artifacts::upload
        ),
        route!(
            DELETE,
            "/api/2.0/mlflow-artifacts/artifacts/{*}",
            artifacts::delete
        ),
        route!(
            POST,
            "/api/2.0/mlflow-artifacts/mpu/create/{*}",
            artifacts::multipart_create
        ),
        route!(
            POST,
            "/api/2.0/mlflow-artifacts/mpu/complete/{*}",
            artifacts::multipart_complete
        ),
        route!(
            POST,
            "/api/2.0/mlflow-artifacts/mpu/abort/{*}",
            artifacts::multipart_abort
        ),
        route!(
            PUT,
            "/api/2.0/mlflow-artifacts/mpu/part/{}/{}",
            artifacts::multipart_part
        ),
    ]
}

/// The parameters `pattern` captures from `path`, when it matches.
fn captures(pattern: &str, path: &str) -> Option<Result<Vec<String>, String>> {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    let mut params = Vec::new();
    let decode = |seg: &str| {
        percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| format!("the path segment `{seg}` is not UTF-8"))
    };
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(Ok(params)),
            (Some("{*}"), Some(first)) => {
                let rest: Vec<&str> = std::iter::once(first).chain(got).collect();
                let rest = rest
                    .iter()
                    .map(|s| decode(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|segs| segs.join("/"));
                return Some(rest.map(|r| {
                    params.push(r);
                    params
                }));
            }
            (Some("{}"), Some(seg)) if !seg.is_empty() => match decode(seg) {
                Ok(p) => params.push(p),
                Err(e) => return Some(Err(e)),
            },
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// The one handler of every route (the router's fallback).
pub async fn dispatch(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().to_string();
    let mut allowed = false;
    for route in table() {
        let Some(params) = captures(route.pattern, &path) else {
            continue;
        };
        if route.method != method {
            allowed = true;
            continue;
        }
        let params = match params {
            Ok(p) => p,
            Err(e) => return invalid(e).into_response(),
        };
        let req = Req {
            uri,
            headers,
            body,
            params,
        };
        return (route.handler)(s, req).await;
    }
    let message = if allowed {
        format!("`{path}` does not take {method} at Periscope's MLflow-compatible endpoint")
    } else if path.starts_with("/api/") || path.starts_with("/ajax-api/") {
        format!(
            "`{method} {path}` is not supported by Periscope's MLflow-compatible endpoint, \
             which serves experiments, runs, logged models and artifacts (GET / lists them)"
        )
    } else {
        let m = format!(
            "no `{path}` here: this is Periscope's MLflow-compatible tracking endpoint (the \
             MLflow UI is not served; GET / says what is)"
        );
        return error(StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND", m).into_response();
    };
    let status = if allowed {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_IMPLEMENTED
    };
    error(status, "NOT_IMPLEMENTED", message).into_response()
}

/// `GET /`: what this endpoint is.
async fn root(s: Shared, _: Req) -> Response {
    let id = s.handle.identity();
    ok(&serde_json::json!({
        "service": "Periscope's MLflow-compatible tracking endpoint",
        "experiment": id.experiment,
        "worker": id.worker,
        "serves": [
            "experiments: get, get-by-name, create, search, set-experiment-tag",
            "runs: create, get, update, search, log-metric, log-parameter, log-batch, set-tag, \
             delete-tag, log-inputs, outputs; metrics/get-history",
            "logged-models: create, get, finalize, search, tags, params",
            "mlflow-artifacts: upload (single or multipart), list, download",
        ],
        "not_served": [
            "the MLflow UI",
            "model registry, traces, prompts, datasets, scorers, gateway",
            "deleting or restoring runs, experiments and artifacts",
        ],
        "runs": "each runs/create is one MLflow run of this Periscope experiment and worker; \
                 metrics and params reach the metastore through the sidecar's queue, artifacts \
                 reach storage under <experiment>/<worker>/mlflow/<run>/artifacts/",
    }))
}

/// MLflow 3's `server-info`: what the artifact client may use (multipart uploads, whose parts
/// come back to this endpoint).
async fn server_info(_: Shared, _: Req) -> Response {
    ok(&serde_json::json!({
        "store_type": "PeriscopeEndpoint",
        "workspaces_enabled": false,
        "multipart_uploads_enabled": true,
        "multipart_downloads_enabled": false,
        "presigned_upload_run_id_supported": false,
        "presigned_upload_model_id_supported": false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_decoded_segments_and_the_rest() {
        let ok = |p: &str, path: &str| captures(p, path).map(|r| r.unwrap());
        assert_eq!(ok("/a/b", "/a/b"), Some(vec![]));
        assert_eq!(ok("/a/b", "/a/b/c"), None);
        assert_eq!(ok("/m/{}/tags", "/m/m-1/tags"), Some(vec!["m-1".into()]));
        assert_eq!(ok("/m/{}", "/m/"), None, "an empty segment is no parameter");
        assert_eq!(
            ok("/x/{*}", "/x/1/r/artifacts/a%20b/%2E%2E/c"),
            Some(vec!["1/r/artifacts/a b/../c".into()])
        );
        assert_eq!(ok("/x/{*}", "/x"), None);
        assert!(captures("/x/{}", "/x/%FF").unwrap().is_err());
        // Every route of the table can be told apart from the others with its method.
        let t = table();
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert!(
                    a.pattern != b.pattern || a.method != b.method,
                    "{} twice",
                    a.pattern
                );
            }
        }
    }
}
