//! MLflow: its REST API ([`api`]), spoken by both the local ingest endpoint that training scripts
//! log to ([`ingest`]) and the metastore that delivers queued items to an MLflow tracking server.
//!
//! The metastore is chosen by `--metastore mlflow+http(s)://HOST:PORT[/prefix]`, or by
//! `MLFLOW_TRACKING_URI` (`http(s)://…`) when no `--metastore` is given. A file per idea:
//!
//! * [`client`]: the reqwest client (credentials, private CA), calls and their failures.
//! * [`batch`]: items → `runs/log-batch` requests within MLflow's limits, and status updates.
//! * [`run`]: finding or creating the experiment and this worker's run, found again after a
//!   restart.
//! * [`mirror`]: copying an artifacts save into the run's artifacts, where they share a bucket.
//! * [`script_run`]: the server run of each run a script made through the endpoint.
//! * [`run_artifacts`]: a script run's stored files into its server run's artifacts.
//! * [`sink`]: the [`Sink`](super::Sink) that ties them together.
//!
//! Settings come from MLflow's standard variables ([`MlflowSettings::from_env`]). This module
//! never prints, never logs a credential, and never retries by itself: a transient failure goes
//! back to the pipeline, whose queue keeps the items and whose one retry policy decides when.

pub mod api;
pub mod batch;
pub mod client;
pub mod ingest;
pub mod mirror;
pub mod run;
pub mod run_artifacts;
pub mod script_run;
pub mod sink;

use std::fmt;
use std::path::PathBuf;

pub use client::{Auth, Transport};
pub use sink::MlflowSink;

use super::sink::SinkError;
use crate::error::ErrorClass;
use crate::redact::{redact_url, Secret};

/// An MLflow tracking server's address. Invariant: an `http` or `https` URL with a host, no
/// credentials, query or fragment, and a path that ends with `/` (empty prefix: just `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowUrl {
    base: url::Url,
}

impl MlflowUrl {
    /// Parses `http(s)://HOST[:PORT][/prefix]` (the `mlflow+` of `--metastore` already removed).
    pub fn parse(text: &str) -> Result<MlflowUrl, SinkError> {
        let usage = |why: &str| SinkError {
            message: format!(
                "`{}` is not an MLflow tracking server URL: {why}",
                redact_url(text)
            ),
            class: ErrorClass::Usage,
            transient: false,
            hint: None,
        };
        let mut base = url::Url::parse(text).map_err(|e| usage(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(usage("the scheme must be http or https"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(usage("it has no host"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // A URL is shown in logs; credentials belong in the environment.
            return Err(usage(
                "put credentials in MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME and \
                 MLFLOW_TRACKING_PASSWORD, not in the URL",
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(usage("a query or fragment is not allowed"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(MlflowUrl { base })
    }

    /// `<server>/api/2.0/mlflow/`.
    pub fn api_base(&self) -> url::Url {
        let mut api = self.base.clone();
        api.set_path(&format!("{}api/2.0/mlflow/", self.base.path()));
        api
    }

    /// True when this URL names `addr` itself (a loopback or unspecified address on the same
    /// port): the sidecar's own ingest endpoint, which would feed its queue back into itself.
    pub fn is_endpoint(&self, addr: std::net::SocketAddr) -> bool {
        let port = self.base.port_or_known_default();
        let loopback = match self.base.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            None => false,
        };
        let here = addr.ip().is_loopback() || addr.ip().is_unspecified();
        loopback && here && port == Some(addr.port())
    }
}

impl fmt::Display for MlflowUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Holds no credentials (see the invariant); the trailing `/` of an empty prefix is noise.
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

/// Everything the MLflow sink needs. Invariant: `experiment_name` and `run_id`, when set, are
/// non-empty.
#[derive(Debug, Clone)]
pub struct MlflowSettings {
    pub url: MlflowUrl,
    pub transport: Transport,
    /// `MLFLOW_EXPERIMENT_NAME`; the Periscope experiment id when unset.
    pub experiment_name: Option<String>,
    /// `MLFLOW_RUN_ID`: attach to this existing run instead of one run per worker.
    pub run_id: Option<String>,
    /// The sidecar's `--state-dir`, where the run id is remembered.
    pub state_dir: PathBuf,
    /// This sidecar's worker: its run's name.
    pub worker: String,
}

impl MlflowSettings {
    /// Reads MLflow's standard variables through `env` (the process environment in the binary,
    /// a map in tests).
    pub fn from_env(
        url: MlflowUrl,
        state_dir: PathBuf,
        worker: String,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<MlflowSettings, SinkError> {
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let auth = match (
            var("MLFLOW_TRACKING_TOKEN"),
            var("MLFLOW_TRACKING_USERNAME"),
            var("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Some(token), _, _) => Auth::Bearer(Secret::new(token.trim())),
            (None, Some(user), Some(password)) => Auth::Basic {
                user,
                password: Secret::new(password),
            },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(SinkError {
                    message: "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set \
                              together"
                        .into(),
                    class: ErrorClass::Usage,
                    transient: false,
                    hint: None,
                })
            }
            (None, None, None) => Auth::None,
        };
        let insecure = var("MLFLOW_TRACKING_INSECURE_TLS")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        Ok(MlflowSettings {
            url,
            transport: Transport {
                auth,
                ca_file: var("MLFLOW_TRACKING_SERVER_CERT_PATH").map(PathBuf::from),
                insecure,
                ..Transport::default()
            },
            experiment_name: var("MLFLOW_EXPERIMENT_NAME"),
            run_id: var("MLFLOW_RUN_ID"),
            state_dir,
            worker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn urls_keep_their_prefix_and_refuse_credentials() {
        let u = MlflowUrl::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:5000");
        assert_eq!(
            u.api_base().as_str(),
            "http://127.0.0.1:5000/api/2.0/mlflow/"
        );
        let u = MlflowUrl::parse("https://mlflow.example/tracking").unwrap();
        assert_eq!(
            u.api_base().as_str(),
            "https://mlflow.example/tracking/api/2.0/mlflow/"
        );
        assert_eq!(u.to_string(), "https://mlflow.example/tracking");
        let e = MlflowUrl::parse("https://bob:hunter2@mlflow.example").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert_eq!(e.class, ErrorClass::Usage);
        assert!(MlflowUrl::parse("databricks").is_err());
        assert!(MlflowUrl::parse("file:///tmp/mlruns").is_err());
        assert!(MlflowUrl::parse("http://h/?x=1").is_err());
    }

    #[test]
    fn a_url_naming_the_sidecars_own_endpoint_is_recognised() {
        let own: std::net::SocketAddr = "127.0.0.1:9090".parse().unwrap();
        assert!(MlflowUrl::parse("http://127.0.0.1:9090")
            .unwrap()
            .is_endpoint(own));
        assert!(MlflowUrl::parse("http://localhost:9090/")
            .unwrap()
            .is_endpoint("0.0.0.0:9090".parse().unwrap()));
        assert!(!MlflowUrl::parse("http://127.0.0.1:5000")
            .unwrap()
            .is_endpoint(own));
        assert!(!MlflowUrl::parse("http://mlflow:9090")
            .unwrap()
            .is_endpoint(own));
    }

    #[test]
    fn settings_come_from_mlflows_variables() {
        let url = MlflowUrl::parse("http://127.0.0.1:1").unwrap();
        let read = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            MlflowSettings::from_env(url.clone(), "/s".into(), "worker-0".into(), move |k| {
                map.get(k).cloned()
            })
        };
        let s = read(&[("MLFLOW_TRACKING_TOKEN", "tok\n"), ("MLFLOW_RUN_ID", "r1")]).unwrap();
        assert_eq!(s.transport.auth, Auth::Bearer(Secret::new("tok")));
        assert_eq!(s.run_id.as_deref(), Some("r1"));
        assert_eq!(s.experiment_name, None);
        let s = read(&[
            ("MLFLOW_TRACKING_USERNAME", "u"),
            ("MLFLOW_TRACKING_PASSWORD", "p"),
            ("MLFLOW_EXPERIMENT_NAME", "exp"),
            ("MLFLOW_TRACKING_SERVER_CERT_PATH", "/ca.pem"),
        ])
        .unwrap();
        assert!(matches!(s.transport.auth, Auth::Basic { ref user, .. } if user == "u"));
        assert_eq!(s.experiment_name.as_deref(), Some("exp"));
        assert_eq!(s.transport.ca_file, Some(PathBuf::from("/ca.pem")));
        let e = read(&[("MLFLOW_TRACKING_PASSWORD", "hunter2")]).unwrap_err();
        assert!(!e.message.contains("hunter2"));
        assert_eq!(read(&[]).unwrap().transport.auth, Auth::None);
    }
}
