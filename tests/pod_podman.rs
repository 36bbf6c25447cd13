//! Two worker pods of the Indexed Job, run by a real container engine: `podman kube play` runs
//! the pod template that `manifests/overlays/indexed-workers-classic` renders (podman 4.3 runs no
//! native sidecars, so the classic-sidecar variant), with Periscope's real image (built and
//! checked by `images/check`) in every Periscope container, against moto (S3) and MariaDB on
//! this machine.
//!
//! What the test changes in the template, as the Job controller or this machine requires: each
//! pod gets its name, `JOB_COMPLETION_INDEX` in every container (the Job controller sets it) and
//! host networking (to reach the servers on 127.0.0.1), so the sidecar's ports are moved to free
//! ones; the images are local (the training image is busybox, standing in for python, running
//! `sh train.sh` from the localized code); `spec.nodeName`, which podman does not fill in, and
//! the ConfigMap and Secrets become plain env (the
//! source and storage point at moto, the metastore at MariaDB); the git Secret volume and the
//! resource limits are left out (no git source; cgroup limits need a delegated cgroup here).
//!
//! Checked: the code was localized into `/code` (the command ran from it); each worker's logs,
//! tf.events and metric rows are stored apart; the exit code becomes the run's status; every
//! container ends (the sidecar's drain completes and it exits 0).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::mariadb::MariaDb;
use crate::harness::s3::S3Server;
use crate::harness::{free_port, periscope, run, tools_dir};

const BUCKET: &str = "ml-jobs";
const IMAGE: &str = "localhost/periscope:podman-test";
const TRAINING_IMAGE: &str = "localhost/periscope-training:podman-test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman is installed by tests/run")
}

/// Whether podman can run a container here; the reason when it cannot.
fn podman_can_run(image: &str) -> Result<(), String> {
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "host",
        image,
        "/bin/busybox",
        "true",
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Imports a root filesystem folder as a local image.
fn import_rootfs(rootfs: &Path, name: &str, changes: &[&str]) {
    let mut cmd = Command::new("sh");
    let mut script = format!("tar -C '{}' -c . | podman import", rootfs.display());
    for c in changes {
        script.push_str(&format!(" --change '{c}'"));
    }
    script.push_str(&format!(" - {name}"));
    let out = cmd.args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The training image: busybox, standing in for a Python image.
fn training_image(work: &Path) {
    let rootfs = work.join("training-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, installed by tests/run)");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    import_rootfs(&rootfs, TRAINING_IMAGE, &["ENV PATH=/bin"]);
}

/// Periscope's image as `images/check` builds and checks it.
fn periscope_image(work: &Path) {
    let oci = work.join("oci");
    let out = Command::new(repo().join("images/check"))
        .env("PERISCOPE_IMAGE_OUT", &oci)
        .env("PERISCOPE_TEST_TOOLS", tools_dir())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The image's size limit is images/check's own verdict (tests/run runs it too); a pod test
    // runs the image whatever it weighs.
    if !out.status.success() {
        assert!(
            said.contains("kept the image") && said.contains("compressed"),
            "images/check failed:\n{said}"
        );
        eprintln!(
            "warning: images/check refused the image's size; the pods run it anyway:\n{said}"
        );
    }
    // As an OCI archive: podman names an `oci:` folder after its path, which may not be a valid
    // image name.
    let archive = work.join("periscope-oci.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let loaded = podman(&["load", "-q", "-i", archive.to_str().unwrap()]);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    // "Loaded image: NAME" (or "Loaded image(s): ID").
    let said = String::from_utf8_lossy(&loaded.stdout).into_owned();
    let id = said
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    let tagged = podman(&["tag", &id, IMAGE]);
    assert!(tagged.status.success());
}

/// The Job that `overlays/indexed-workers-classic` renders.
fn rendered_job() -> Value {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("manifests/overlays/indexed-workers-classic"))
        .output()
        .expect("kubectl is installed by tests/run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let job = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "Job")
        .expect("a Job");
    job
}

/// Pod `index` of the Job, changed as the module docs say.
fn pod(job: &Value, index: u32, env: &[(String, String)]) -> (String, Value) {
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert!(job["spec"]["completions"].as_u64().unwrap() >= 2);
    let job_name = job["metadata"]["name"].as_str().unwrap();
    let name = format!("{job_name}-{index}-podman");
    let mut spec = job["spec"]["template"]["spec"].clone();
    spec["hostNetwork"] = json!(true);
    let volumes = spec["volumes"].as_array_mut().unwrap();
    volumes.retain(|v| v.get("secret").is_none());
    let (probes, mlflow) = (free_port(), free_port());
    let mut env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": index.to_string()}));
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().unwrap() {
            let ours = c["image"].as_str().unwrap().contains("/periscope:");
            c["image"] = json!(if ours { IMAGE } else { TRAINING_IMAGE });
            c["imagePullPolicy"] = json!("Never");
            c.as_object_mut().unwrap().remove("resources");
            c.as_object_mut().unwrap().remove("envFrom");
            let mounts = c["volumeMounts"].as_array_mut().unwrap();
            mounts.retain(|m| m["name"] != "git");
            let mut own: Vec<Value> = Vec::new();
            for e in c["env"].as_array().cloned().unwrap_or_default() {
                if e["valueFrom"].get("secretKeyRef").is_some() {
                    continue;
                }
                let name = e["name"].as_str().unwrap();
                // podman fills in the pod's name, uid and labels, not the node's name.
                if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
                    own.push(json!({"name": name, "value": "podman-node"}));
                    continue;
                }
                if name == "MLFLOW_TRACKING_URI" {
                    own.push(json!({"name": name, "value": format!("http://127.0.0.1:{mlflow}")}));
                } else {
                    own.push(e);
                }
            }
            own.extend(env.iter().cloned());
            c["env"] = json!(own);
            let args: Vec<String> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let mut mapped = Vec::new();
            for a in args {
                mapped.push(match a.as_str() {
                    "0.0.0.0:9090" => format!("127.0.0.1:{probes}"),
                    "127.0.0.1:5000" => format!("127.0.0.1:{mlflow}"),
                    _ => a,
                });
            }
            if !mapped.is_empty() {
                c["args"] = json!(mapped);
            }
            if !ours {
                // The training command: after `--`, `sh train.sh` instead of `python3 train.py`.
                let command = c["command"].as_array_mut().unwrap();
                let dashes = command.iter().position(|a| a == "--").unwrap();
                command.truncate(dashes + 1);
                command.extend([json!("sh"), json!("train.sh")]);
            }
        }
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "job-name": job_name,
            "batch.kubernetes.io/job-completion-index": index.to_string(),
        }},
        "spec": spec,
    });
    (name, pod)
}

/// Removes the test's images when dropped, so runs leave no unnamed images behind.
struct Images;

impl Drop for Images {
    fn drop(&mut self) {
        let _ = podman(&[
            "rmi",
            "-f",
            IMAGE,
            TRAINING_IMAGE,
            "localhost/periscope:latest",
        ]);
    }
}

/// Removes the pod when dropped, whatever happened.
struct Played(String);

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman(&["pod", "rm", "-f", &self.0]);
    }
}

/// Plays a pod and waits until every container ended; returns each container's exit code and
/// logs.
fn play(work: &Path, name: &str, pod: &Value) -> (Played, Vec<(String, i64, String)>) {
    let file = work.join(format!("{name}.yaml"));
    std::fs::write(&file, serde_yaml::to_string(pod).unwrap()).unwrap();
    let _ = podman(&["pod", "rm", "-f", name]);
    let out = podman(&["kube", "play", file.to_str().unwrap()]);
    let played = Played(name.to_string());
    assert!(
        out.status.success(),
        "podman kube play: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{name}-{}", c["name"].as_str().unwrap()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let state = |c: &str| {
        let out = podman(&[
            "inspect",
            c,
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let logs = |c: &str| {
        let out = podman(&["logs", c]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    while !containers.iter().all(|c| state(c).starts_with("exited")) {
        if Instant::now() > deadline {
            let all: Vec<String> = containers
                .iter()
                .map(|c| format!("{c}: {}\n{}", state(c), logs(c)))
                .collect();
            panic!("pod {name} did not end:\n{}", all.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ended = containers
        .iter()
        .map(|c| {
            let code = state(c).split(' ').nth(1).unwrap().parse().unwrap();
            (c.clone(), code, logs(c))
        })
        .collect();
    (played, ended)
}

/// The training script and each worker's event files, as the code source in S3.
fn upload_code(s3: &S3Server, work: &Path) {
    let train = "\
set -e
i=$JOB_COMPLETION_INDEX
echo \"worker $i trains in $(pwd)\"
echo \"worker $i warns\" >&2
mkdir -p \"$SUBMARINE_TENSORBOARD_LOG_DIR\"
cp tb-$i/* \"$SUBMARINE_TENSORBOARD_LOG_DIR/\"
# A run and a metric, as mlflow.start_run and log_metric send them. A classic sidecar starts
# beside this container and may not listen yet: retry, as MLflow's client does.
api=\"$MLFLOW_TRACKING_URI/api/2.0/mlflow\"
post() { wget -q -O - --header 'Content-Type: application/json' --post-data \"$2\" \"$api/$1\"; }
for try in $(seq 100); do
  run=$(post runs/create '{\"experiment_id\":\"0\"}' 2>/dev/null | sed -n 's/.*\"run_id\": *\"\\([^\"]*\\)\".*/\\1/p')
  [ -n \"$run\" ] && break
  sleep 0.2
done
post runs/log-metric \"{\\\"run_id\\\":\\\"$run\\\",\\\"key\\\":\\\"posted\\\",\\\"value\\\":$i,\\\"timestamp\\\":1700000000000,\\\"step\\\":$i}\" >/dev/null
echo
exit $((i * 3))
";
    s3.put(BUCKET, "code/train.sh", train.as_bytes());
    for i in 0..2 {
        let dir = work.join(format!("tb-{i}"));
        crate::harness::python::run_script(
            "metrics_write_tbx.py",
            [
                "stream".as_ref(),
                dir.as_os_str(),
                std::ffi::OsStr::new(&format!("{}", 5 + i)),
            ],
        );
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            let key = format!("code/tb-{i}/{}", f.file_name().to_string_lossy());
            s3.put(BUCKET, &key, &std::fs::read(f.path()).unwrap());
        }
    }
}

#[test]
fn two_indexed_job_pods_run_by_podman_store_their_work_apart() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is missing: run tests/run once to install it");
    }
    let work = tempfile::tempdir().unwrap();
    let _images = Images;
    training_image(work.path());
    // A machine where podman cannot run containers fails here rather than passing unseen.
    if let Err(why) = podman_can_run(TRAINING_IMAGE) {
        panic!(
            "podman cannot run a container on this machine (tests/run writes \
             /etc/containers/containers.conf with runc and ulimits this sandbox allows): {why}"
        );
    }
    periscope_image(work.path());

    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    upload_code(&s3, work.path());
    let db = MariaDb::start_with_submarine_tables();
    let mut env: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.extend([
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        (
            "PERISCOPE_SOURCE".into(),
            format!("s3://{BUCKET}/code/#into=training-job"),
        ),
        ("PERISCOPE_STORAGE".into(), format!("s3://{BUCKET}/runs")),
        ("SUBMARINE_TRACKING_URI".into(), db.url()),
        ("PERISCOPE_LOG_LEVEL".into(), "info".into()),
    ]);

    let job = rendered_job();
    let job_name = job["metadata"]["name"].as_str().unwrap().to_string();
    let status = || {
        db.sql(&format!(
            "SELECT experiment_status FROM experiment WHERE id = '{job_name}'"
        ))
        .trim()
        .to_string()
    };
    // One pod after the other: the experiment's status is the last worker's (see Known gaps).
    for index in 0..2u32 {
        let (name, pod) = pod(&job, index, &env);
        let (_played, ended) = play(work.path(), &name, &pod);
        let all: String = ended
            .iter()
            .map(|(c, code, logs)| format!("--- {c} exited {code}\n{logs}\n"))
            .collect();
        for (container, code, logs) in &ended {
            let expected = if container.ends_with("-training") {
                i64::from(index * 3)
            } else {
                0
            };
            assert_eq!(*code, expected, "{container}\n{all}");
            if container.ends_with("-periscope-sidecar") {
                assert!(
                    logs.contains(&format!("worker-{index}")) && logs.contains("drained"),
                    "{all}"
                );
            }
        }
        let expected = if index == 0 { "Succeeded" } else { "Failed" };
        assert_eq!(status(), expected, "{all}");
    }

    // Each worker's logs, read back from S3 with the real binary.
    let cat = |worker: &str, log: &str| {
        let url = format!("s3://{BUCKET}/runs/{job_name}/{worker}/logs/{log}");
        let ran = run(periscope().args(["logs", "cat", &url]).envs(s3.env()));
        ran.expect_code(0);
        ran.stdout
    };
    for i in 0..2 {
        let worker = format!("worker-{i}");
        let stdout = cat(&worker, "stdout.log");
        assert!(
            stdout.starts_with(&format!("worker {i} trains in /code/training-job\n")),
            "{stdout}"
        );
        assert_eq!(cat(&worker, "stderr.log"), format!("worker {i} warns\n"));
        let events = s3.list(BUCKET, &format!("runs/{job_name}/{worker}/tfevents/"));
        assert!(!events.is_empty(), "{worker}'s tf.events are stored");
        // Metric rows per worker: the scalars of its own event file, and the posted metric.
        let rows = db.sql(&format!(
            "SELECT `key`, COUNT(*) FROM metric WHERE id = '{job_name}' AND worker_index = \
             '{worker}' GROUP BY `key` ORDER BY `key`"
        ));
        assert_eq!(
            rows,
            format!("posted\t1\ntrain/loss\t{}\n", 5 + i),
            "{worker}"
        );
    }
}
