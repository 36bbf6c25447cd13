//! Artifacts saves as each metastore records them, with the real binary, moto's S3 on 127.0.0.1
//! as the storage, and real metastores: Submarine's `param` rows in MariaDB (one per save, with
//! the worker), and an MLflow tracking server's run, read with the real mlflow client: the tag
//! per save always, and the save's files among the run's artifacts when the run's artifact store
//! is the storage's bucket. The embedded SQLite metastore is checked in tests/artifacts.rs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use periscope::artifacts::manifest::sha256_hex;
use serde_json::Value;

use crate::artifacts::{make_artifacts, read_tree};
use crate::harness::mariadb::MariaDb;
use crate::harness::metrics::wait_with_timeout;
use crate::harness::mlflow::{ArtifactStore, MlflowServer};
use crate::harness::rawhttp::request;
use crate::harness::s3::S3Server;
use crate::harness::{free_port, periscope};

const BUCKET: &str = "models";

/// A worker's folders and its sidecar command, saving `model` to `s3://models/jobs` and
/// recording into `metastore` when the job ends (the exit-code file is written first).
struct Job {
    _dir: tempfile::TempDir,
    root: PathBuf,
    experiment: &'static str,
    worker: &'static str,
}

impl Job {
    fn new(experiment: &'static str, worker: &'static str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Job {
            _dir: dir,
            root,
            experiment,
            worker,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The URL of save `n`, as recorded.
    fn save_url(&self, n: u64) -> String {
        format!(
            "s3://{BUCKET}/jobs/{}/{}/artifacts/{n}/",
            self.experiment, self.worker
        )
    }

    /// Runs the sidecar once, as a job that has just ended, and waits for it to exit 0.
    fn sidecar(&self, s3: &S3Server, metastore: &str) {
        std::fs::write(self.path("exit-code"), "0\n").unwrap();
        let mut cmd = periscope();
        cmd.args(["sidecar", "--storage", &format!("s3://{BUCKET}/jobs")])
            .args(["--experiment-id", self.experiment, "--worker", self.worker])
            .args(["--metastore", metastore, "--poll-interval", "0.1"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--code-dir")
            .arg(self.path("no-code"))
            .arg("--exit-when-file")
            .arg(self.path("exit-code"))
            .arg("--artifacts")
            .arg(self.path("model"))
            .envs(s3.env())
            .env_remove("SUBMARINE_TRACKING_URI")
            .env_remove("MLFLOW_TRACKING_URI")
            .env_remove("MLFLOW_RUN_ID")
            .env_remove("MLFLOW_EXPERIMENT_NAME")
            .env_remove("PERISCOPE_METASTORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = wait_with_timeout(cmd.spawn().unwrap(), Duration::from_secs(120));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// moto with the bucket, and the environment the mlflow server and client reach it with.
fn s3_with_bucket() -> (S3Server, Vec<(&'static str, String)>) {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let env = vec![
        ("MLFLOW_S3_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", "AKIDTESTTEST".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret-key".to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
    ];
    (s3, env)
}

#[test]
fn artifacts_saves_become_submarine_param_rows_per_worker_in_mariadb() {
    let db = MariaDb::start_with_submarine_tables();
    let (s3, _) = s3_with_bucket();
    let job = Job::new("exp-art-my", "worker-1");
    make_artifacts(&job.path("model"), 3, 1);
    job.sidecar(&s3, &db.url());
    // The job runs again and changes the model: a second save, a second row.
    std::fs::write(job.path("model/model.bin"), "fine-tuned").unwrap();
    job.sidecar(&s3, &db.url());
    let rows = db.sql(
        "SELECT `key`, value, worker_index FROM param \
         WHERE id = 'exp-art-my' AND `key` LIKE 'artifacts.%' ORDER BY `key`",
    );
    assert_eq!(
        rows,
        format!(
            "artifacts.1\t{}\tworker-1\nartifacts.2\t{}\tworker-1\n",
            job.save_url(1),
            job.save_url(2)
        )
    );
    // Each row names a complete save in the storage.
    for n in [1, 2] {
        let manifest = s3.get_text(
            BUCKET,
            &format!("jobs/exp-art-my/worker-1/artifacts/{n}/manifest.json"),
        );
        assert!(manifest.contains("\"model.bin\""), "{manifest}");
    }
}

/// The tag of save `n` of `job`, checked to name the save and the digest of its stored manifest;
/// returns the stored manifest.
fn check_tag(run: &Value, s3: &S3Server, job: &Job, n: u64) -> String {
    let manifest = s3.get_text(
        BUCKET,
        &format!(
            "jobs/{}/{}/artifacts/{n}/manifest.json",
            job.experiment, job.worker
        ),
    );
    let tag = &run["tags"][format!("periscope.artifacts.{}.{n}", job.worker)];
    assert_eq!(
        tag.as_str(),
        Some(
            format!(
                "{} sha256:{}",
                job.save_url(n),
                sha256_hex(manifest.as_bytes())
            )
            .as_str()
        ),
        "tags: {}",
        run["tags"]
    );
    manifest
}

#[test]
fn mlflow_runs_get_the_save_as_artifacts_when_their_store_is_the_storage_bucket() {
    let (s3, env) = s3_with_bucket();
    let server = MlflowServer::start_with_artifacts(ArtifactStore {
        root: format!("s3://{BUCKET}/mlflow"),
        env,
    });
    let job = Job::new("exp-art-mlflow", "worker-0");
    let expected = make_artifacts(&job.path("model"), 5, 3);
    job.sidecar(&s3, &format!("mlflow+{}", server.uri()));

    let download = job.path("download");
    let run = server.read_artifacts(job.experiment, &download);
    let artifact_uri = run["artifact_uri"].as_str().unwrap();
    assert!(
        artifact_uri.starts_with(&format!("s3://{BUCKET}/mlflow/")),
        "{run}"
    );
    let manifest = check_tag(&run, &s3, &job, 1);
    // list_artifacts shows every file of the save and its manifest, under <worker>/<n>/.
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    for (path, size) in run["files"].as_object().unwrap() {
        listed.insert(path.clone(), size.as_u64().unwrap());
    }
    let mut wanted: BTreeMap<String, u64> = expected
        .iter()
        .map(|(rel, content)| (format!("worker-0/1/{rel}"), content.len() as u64))
        .collect();
    wanted.insert("worker-0/1/manifest.json".into(), manifest.len() as u64);
    assert_eq!(listed, wanted);
    // What the mlflow client downloads is byte-identical, the manifest included.
    let mut downloaded = read_tree(&download.join("worker-0/1"));
    assert_eq!(
        downloaded.remove("manifest.json").as_deref(),
        Some(manifest.as_bytes())
    );
    assert_eq!(downloaded, expected);
    // The MLflow UI lists a run's artifacts through the server's REST API.
    let run_id = run["run_id"].as_str().unwrap();
    let ui = request(
        server.port,
        "GET",
        &format!("/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=worker-0/1"),
        &[],
        b"",
    );
    assert_eq!(ui.status, 200, "{}", ui.body);
    for name in ["model.bin", "manifest.json", "config with space.json"] {
        assert!(
            ui.body.contains(&format!("\"worker-0/1/{name}\"")),
            "{}",
            ui.body
        );
    }
}

#[test]
fn mlflow_runs_whose_artifacts_the_server_proxies_get_the_tag_only() {
    let (s3, _) = s3_with_bucket();
    // MLflow 3's default: the server serves artifacts, runs have `mlflow-artifacts:` URIs.
    let server = MlflowServer::start();
    let job = Job::new("exp-art-proxied", "worker-0");
    make_artifacts(&job.path("model"), 2, 1);
    job.sidecar(&s3, &format!("mlflow+{}", server.uri()));

    let run = server.read_artifacts(job.experiment, &job.path("download"));
    assert!(
        run["artifact_uri"]
            .as_str()
            .unwrap()
            .starts_with("mlflow-artifacts:"),
        "{run}"
    );
    check_tag(&run, &s3, &job, 1);
    assert_eq!(run["files"], serde_json::json!({}), "{run}");
    // Nothing was written to the bucket besides the save.
    let outside: Vec<String> = s3
        .list(BUCKET, "")
        .into_iter()
        .map(|(key, _)| key)
        .filter(|k| !k.starts_with("jobs/exp-art-proxied/worker-0/"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}
