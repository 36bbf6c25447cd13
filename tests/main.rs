//! Integration tests. Each talks to real servers that the harness starts on 127.0.0.1 (git daemon,
//! git http-backend, an HTTP server with fault injection, an S3-compatible server, Azurite) and
//! runs the real `periscope` binary. Run them with `tests/run`, which installs the servers first.

mod harness;

// Git sources over git daemon, smart HTTP(S), ssh and file://.
mod localize_git;

mod artifacts;
mod artifacts_metastore;
mod cli;
mod examples;
mod exec;
mod localize_gcs;
mod localize_hostile;
mod localize_http;
mod localize_messages;
mod localize_object;
mod localize_proxy;
mod localize_sync;
mod metrics_mlflow;
mod metrics_mysql;
mod metrics_refused;
mod metrics_sqlite;
mod mlflow_dropin;
mod pod_podman;
mod pod_simulation;
mod pod_workers;
mod run_cmd;
mod run_sources;
mod run_ux;
mod saves_checkpoints;
mod ship_full_state;
mod ship_logs;
mod ship_tfevents;
mod sidecar_endpoints;
mod tfevents;
