//! MLflow's artifact proxy routes (`/api/2.0/mlflow-artifacts/…`), which the client uses for the
//! `mlflow-artifacts:` URIs this endpoint gives runs and logged models: upload (one `PUT`, or the
//! multipart upload the client uses for large files, whose parts come back to this endpoint),
//! listing and download.
//!
//! An upload is answered once the file is durable in the spool ([`super::spool`]); the uploader
//! stores it in Periscope's storage afterwards. Listing and download see both: the spool's
//! latest files over what storage holds. A path must stay below its run's (or model's)
//! artifacts: `..`, `.`, empty segments, an absolute path, a backslash or a NUL are refused, and
//! so is the id of a run or model this endpoint did not make, or one under another experiment.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Deserialize;

use super::super::api::{
    CreateMultipartUpload, FileInfo, FileList, FinishMultipartUpload, MultipartUpload,
    PartCredential,
};
use super::endpoint::{
    answer, empty, error, internal, invalid, not_found, ok, read_json, Fail, Req, Shared,
};
use super::registry::{ModelRecord, RunRecord};
use super::spool::{self, SpoolError, Target};
use crate::artifacts::push::under;
use crate::metrics::model::ModelRef;

/// Most parts a multipart upload may have (S3's limit).
const MAX_PARTS: i64 = 10_000;

/// Whose artifacts a path names.
enum Owner {
    Run(RunRecord),
    Model(ModelRecord, Option<RunRecord>),
}

/// Splits `<experiment>/<run>/artifacts[/<rest>]` or `<experiment>/models/<model>/artifacts[/<rest>]`
/// and finds the run or model; returns the target of `<rest>` (which may be empty).
async fn resolve(s: &Shared, path: &str) -> Result<Target, Fail> {
    let path = path.trim_start_matches('/');
    let mut parts = path.splitn(3, '/');
    let (experiment, second, tail) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let (owner, rest) = if second == "models" {
        let (model_id, rest) = tail.split_once('/').unwrap_or((&tail, ""));
        let rest = rest.strip_prefix("artifacts").ok_or_else(|| shape(path))?;
        let id = model_id.to_string();
        let found = s
            .registry(move |r| {
                let Some(m) = r.model(&id)? else {
                    return Ok(None);
                };
                let run = match &m.source_run_id {
                    Some(run) => r.run(run)?,
                    None => None,
                };
                Ok(Some((m, run)))
            })
            .await?;
        let (model, run) = found.ok_or_else(|| {
            not_found(format!(
                "no logged model `{model_id}` was made through this endpoint"
            ))
        })?;
        if model.experiment_id != experiment {
            return Err(not_found(format!(
                "logged model `{model_id}` is not in experiment {experiment}"
            )));
        }
        (Owner::Model(model, run), rest.to_string())
    } else {
        let rest = tail.strip_prefix("artifacts").ok_or_else(|| shape(path))?;
        let id = second.clone();
        let run = s.registry(move |r| r.run(&id)).await?.ok_or_else(|| {
            not_found(format!(
                "Run '{second}' not found: only runs made through this endpoint \
                 (mlflow.start_run) have artifacts here"
            ))
        })?;
        if run.experiment_id != experiment {
            return Err(not_found(format!(
                "run `{second}` is not in experiment {experiment}"
            )));
        }
        (Owner::Run(run), rest.to_string())
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(shape(path));
    }
    let rest = rest.strip_prefix('/').unwrap_or(&rest).to_string();
    Ok(match owner {
        Owner::Run(run) => Target {
            run: Some(run.run_id),
            index: run.worker_index,
            model: None,
            path: rest,
        },
        Owner::Model(model, run) => Target {
            index: run
                .as_ref()
                .map(|r| r.worker_index.clone())
                .unwrap_or_else(|| s.handle.identity().worker.clone()),
            run: model.source_run_id.clone(),
            model: Some(ModelRef {
                id: model.model_id,
                name: model.name,
            }),
            path: rest,
        },
    })
}

fn shape(path: &str) -> Fail {
    invalid(format!(
        "`{path}` is not an artifact path of this endpoint: \
         <experiment>/<run>/artifacts/<path> or <experiment>/models/<model>/artifacts/<path>"
    ))
}

/// Refuses a path that is not a plain relative path below the run's artifacts.
fn check_relative(path: &str, allow_empty: bool) -> Result<(), Fail> {
    if path.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(invalid("an artifact needs a file name"))
        };
    }
    let bad = path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        return Err(invalid(format!(
            "Invalid artifact path `{path}`: it must be relative and stay below the run's \
             artifacts (no `..`, `.`, empty or absolute parts)"
        )));
    }
    Ok(())
}

fn spool_error(e: SpoolError) -> Fail {
    match e {
        SpoolError::NoSpace { .. } | SpoolError::DiskFull { .. } => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "RESOURCE_EXHAUSTED",
            format!("{e}; nothing was stored: free space on the sidecar's --state-dir volume"),
        ),
        SpoolError::Body(_) => invalid(e.to_string()),
        SpoolError::Upload(_) => invalid(e.to_string()),
        SpoolError::Io { .. } => internal(e.to_string()),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub async fn upload(s: Shared, r: Req) -> Response {
    let path = r.param(0).to_string();
    let (headers, body) = (r.headers, r.body);
    answer(
        async {
            let target = resolve(&s, &path).await?;
            check_relative(&target.path, false)?;
            let length = content_length(&headers);
            if let Some(len) = length {
                if let Err(e) = s.spool.check_space(len) {
                    spool::drain(body.into_data_stream()).await;
                    return Err(spool_error(e));
                }
            }
            let mut incoming = s.spool.receive().map_err(spool_error)?;
            let written = incoming
                .write_all(body.into_data_stream())
                .await
                .map_err(spool_error)?;
            if length.is_some_and(|len| len != written) {
                return Err(invalid(format!(
                    "the body ended after {written} of {} bytes",
                    length.unwrap_or_default()
                )));
            }
            let shown = target.path.clone();
            incoming.commit(target).await.map_err(spool_error)?;
            s.uploaded.notify_one();
            tracing::debug!(path = %shown, bytes = written, "artifact received");
            Ok(empty())
        }
        .await,
    )
}

pub async fn download(s: Shared, r: Req) -> Response {
    let path = r.param(0).to_string();
    answer(
        async {
            let target = resolve(&s, &path).await?;
            check_relative(&target.path, false)?;
            let key = target.key();
            if let Some((_, file, size)) = s.spool.latest(&key) {
                match tokio::fs::File::open(&file).await {
                    Ok(f) => {
                        let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                        return Ok((
                            [
                                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                                (header::CONTENT_LENGTH, size.to_string()),
                            ],
                            Body::from_stream(stream),
                        )
                            .into_response());
                    }
                    // Stored and removed from the spool meanwhile: storage has it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(internal(format!("cannot read the artifact: {e}"))),
                }
            }
            let storage = &s.storage;
            let object = under(&storage.prefix, &key);
            match storage.store.get(&object).await {
                Ok(got) => {
                    let size = got.meta.size;
                    let stream = got.into_stream().map_err(std::io::Error::other);
                    Ok((
                        [
                            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                            (header::CONTENT_LENGTH, size.to_string()),
                        ],
                        Body::from_stream(stream),
                    )
                        .into_response())
                }
                Err(object_store::Error::NotFound { .. }) => Err(not_found(format!(
                    "No such artifact: '{}'",
                    path.trim_start_matches('/')
                ))),
                Err(e) => Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "TEMPORARILY_UNAVAILABLE",
                    format!(
                        "cannot read the artifact from storage: {}",
                        crate::storage::StorageError::request(
                            storage.service,
                            object.to_string(),
                            &e
                        )
                    ),
                )),
            }
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    path: Option<String>,
}

pub async fn list(s: Shared, r: Req) -> Response {
    let q: ListQuery = match r.query() {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    answer(
        async {
            let path = q.path.unwrap_or_default();
            if path.trim_matches('/').is_empty() {
                return Ok(ok(&FileList::default()));
            }
            let target = resolve(&s, &path).await?;
            check_relative(&target.path, true)?;
            let folder = match target.path.as_str() {
                "" => target.folder(),
                sub => format!("{}{sub}/", target.folder()),
            };
            let mut entries: BTreeMap<String, Option<u64>> = BTreeMap::new();
            let storage = &s.storage;
            let prefix = under(&storage.prefix, folder.trim_end_matches('/'));
            match storage.store.list_with_delimiter(Some(&prefix)).await {
                Ok(listed) => {
                    for dir in listed.common_prefixes {
                        if let Some(name) = dir.filename() {
                            entries.insert(name.to_string(), None);
                        }
                    }
                    for object in listed.objects {
                        if let Some(name) = object.location.filename() {
                            entries.insert(name.to_string(), Some(object.size));
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "TEMPORARILY_UNAVAILABLE",
                        format!(
                            "cannot list the artifacts in storage: {}",
                            crate::storage::StorageError::request(
                                storage.service,
                                prefix.to_string(),
                                &e
                            )
                        ),
                    ))
                }
            }
            for (key, size) in s.spool.latest_under(&folder) {
                let rest = &key[folder.len()..];
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        entries.entry(dir.to_string()).or_insert(None);
                    }
                    None => {
                        entries.insert(rest.to_string(), Some(size));
                    }
                }
            }
            let files = entries
                .into_iter()
                .map(|(name, size)| FileInfo {
                    path: name,
                    is_dir: size.is_none(),
                    file_size: size,
                })
                .collect();
            Ok(ok(&FileList { files }))
        }
        .await,
    )
}

pub async fn delete(_: Shared, r: Req) -> Response {
    let path = r.param(0);
    error(
        StatusCode::NOT_IMPLEMENTED,
        "NOT_IMPLEMENTED",
        format!(
            "deleting artifacts (`{path}`) is not supported by Periscope's MLflow endpoint: \
             what a run logged is kept"
        ),
    )
    .into_response()
}

// ---- multipart uploads ----

/// The artifact a multipart call names: the artifact folder in the URL, the file name from the
/// client's local path.
async fn multipart_target(s: &Shared, path: &str, local: &str) -> Result<Target, Fail> {
    let mut target = resolve(s, path).await?;
    check_relative(&target.path, true)?;
    let name = local
        .rsplit(['/', '\\'])
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("the multipart upload names no file"))?;
    target.path = match target.path.as_str() {
        "" => name.to_string(),
        dir => format!("{dir}/{name}"),
    };
    check_relative(&target.path, false)?;
    Ok(target)
}

pub async fn multipart_create(s: Shared, r: Req) -> Response {
    let path = r.param(0).to_string();
    let (headers, body) = (r.headers, r.body);
    answer(
        async {
            let req: CreateMultipartUpload = read_json(body).await?;
            let target = multipart_target(&s, &path, &req.path).await?;
            let parts = req.num_parts.unwrap_or(1);
            if !(1..=MAX_PARTS).contains(&parts) {
                return Err(invalid(format!(
                    "a multipart upload has 1 to {MAX_PARTS} parts; got {parts}"
                )));
            }
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| invalid("the request has no Host header to send the parts to"))?
                .to_string();
            let upload_id = s
                .spool
                .create_upload(target, parts as u64)
                .map_err(spool_error)?;
            let credentials = (1..=parts)
                .map(|n| PartCredential {
                    url: format!("http://{host}/api/2.0/mlflow-artifacts/mpu/part/{upload_id}/{n}"),
                    part_number: n,
                    headers: Default::default(),
                })
                .collect();
            Ok(ok(&MultipartUpload {
                upload_id,
                credentials,
            }))
        }
        .await,
    )
}

pub async fn multipart_part(s: Shared, r: Req) -> Response {
    let upload_id = r.param(0).to_string();
    let Ok(part) = r.param(1).parse::<u64>() else {
        return invalid(format!("`{}` is not a part number", r.param(1))).into_response();
    };
    let (headers, body) = (r.headers, r.body);
    answer(
        async {
            let len =
                content_length(&headers).ok_or_else(|| invalid("a part needs a Content-Length"))?;
            s.spool
                .write_part(&upload_id, part, len, body.into_data_stream())
                .await
                .map_err(spool_error)?;
            let mut r = empty();
            if let Ok(v) = header::HeaderValue::from_str(&format!("\"{part}-{len}\"")) {
                r.headers_mut().insert(header::ETAG, v);
            }
            Ok(r)
        }
        .await,
    )
}

pub async fn multipart_complete(s: Shared, r: Req) -> Response {
    let path = r.param(0).to_string();
    let body = r.body;
    answer(
        async {
            let req: FinishMultipartUpload = read_json(body).await?;
            let target = multipart_target(&s, &path, &req.path).await?;
            if s.spool.upload_target(&req.upload_id).as_ref() != Some(&target) {
                return Err(not_found(format!(
                    "no multipart upload {} of {}",
                    req.upload_id, target.path
                )));
            }
            for p in &req.parts {
                if p.etag.is_empty() {
                    return Err(invalid(format!("part {} has no ETag", p.part_number)));
                }
            }
            let (_, size) = s
                .spool
                .complete_upload(&req.upload_id)
                .await
                .map_err(spool_error)?;
            s.uploaded.notify_one();
            tracing::debug!(path = %target.path, bytes = size, "artifact received in parts");
            Ok(empty())
        }
        .await,
    )
}

pub async fn multipart_abort(s: Shared, r: Req) -> Response {
    let path = r.param(0).to_string();
    let body = r.body;
    answer(
        async {
            let req: FinishMultipartUpload = read_json(body).await?;
            let target = multipart_target(&s, &path, &req.path).await?;
            if s.spool.upload_target(&req.upload_id).as_ref() == Some(&target) {
                s.spool.forget_upload(&req.upload_id);
            }
            Ok(empty())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_artifacts() {
        for ok in ["a.txt", "dir/b.bin", "weird name/ü.png", "a..b"] {
            assert!(check_relative(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\b",
            "a\0b",
            "x/",
        ] {
            assert!(check_relative(bad, false).is_err(), "{bad:?}");
        }
        assert!(check_relative("", true).is_ok());
    }
}
