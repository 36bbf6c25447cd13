//! Two worker pods of the Indexed Job, run at the same time by a real container engine:
//! `podman kube play` starts both pods of the pod template that
//! `manifests/overlays/indexed-workers-classic` renders (podman 4.3 runs no native sidecars, so
//! the classic-sidecar variant), with Periscope's real image (built and checked by
//! `images/check`) in every Periscope container, against moto (S3) and MariaDB on this machine.
//!
//! What the test changes in the template, as the Job controller or this machine requires: each
//! pod gets its name, `JOB_COMPLETION_INDEX` in every container (the Job controller sets it) and
//! host networking (to reach the servers on 127.0.0.1), so the sidecars' ports are moved to free
//! ones; the images are local (the training image is busybox, standing in for python, running
//! `sh train.sh` from the localized code); `spec.nodeName`, which podman does not fill in, and
//! the ConfigMap and Secrets become plain env (the source and storage point at moto, the
//! metastore at MariaDB); the git Secret volume and the resource limits are left out (no git
//! source; cgroup limits need a delegated cgroup here); each pod's emptyDir volumes get names of
//! their own (podman makes an emptyDir a named volume, which every pod naming it would share). The
//! training containers also mount a host folder (a hostPath volume) where each says it started.
//!
//! The pods overlap, and the test fails if they ran one after the other: each training script
//! waits (60 s at most, else it exits 7) until the other worker's has started, and podman's
//! record of the two training containers' start and end times must overlap. Worker 1 then exits
//! 3 at once; worker 0 exits 0 only once worker 1's sidecar has ended (its probes port closes
//! after it stored the failure), so worker 0's success is the last status the metastore gets, and
//! the experiment must still end Failed.
//!
//! Checked: the code was localized into `/code` (the command ran from it); each worker's logs,
//! tf.events and metric rows are stored apart; a failed worker fails the experiment; every
//! container ends (each sidecar's drain completes and it exits 0).

use std::os::unix::fs::PermissionsExt;
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

/// A sidecar's ports on the host network.
#[derive(Debug, Clone, Copy)]
struct Ports {
    probes: u16,
    mlflow: u16,
}

/// Distinct free ports for `n` pods' sidecars.
fn ports(n: usize) -> Vec<Ports> {
    let mut taken = std::collections::BTreeSet::new();
    let mut free = || loop {
        let port = free_port();
        if taken.insert(port) {
            return port;
        }
    };
    (0..n)
        .map(|_| Ports {
            probes: free(),
            mlflow: free(),
        })
        .collect()
}

/// The host folder the training containers mount.
const RENDEZVOUS: &str = "/rendezvous";

/// Pod `index` of the Job, changed as the module docs say; its sidecar listens on `own`, and
/// its training container gets the other worker's probes port as `PEER_PROBES` and the host
/// folder `rendezvous` at [`RENDEZVOUS`].
fn pod(
    job: &Value,
    index: u32,
    env: &[(String, String)],
    own: Ports,
    peer: Ports,
    rendezvous: &Path,
) -> (String, Value) {
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert!(job["spec"]["completions"].as_u64().unwrap() >= 2);
    let job_name = job["metadata"]["name"].as_str().unwrap();
    let name = format!("{job_name}-{index}-podman");
    let mut spec = job["spec"]["template"]["spec"].clone();
    spec["hostNetwork"] = json!(true);
    let volumes = spec["volumes"].as_array_mut().unwrap();
    volumes.retain(|v| v.get("secret").is_none());
    // podman makes an emptyDir a named volume of the same name, which two pods would share.
    let mut renamed = std::collections::BTreeMap::new();
    for v in volumes.iter_mut().filter(|v| v.get("emptyDir").is_some()) {
        let own = format!("{name}-{}", v["name"].as_str().unwrap());
        renamed.insert(v["name"].as_str().unwrap().to_string(), own.clone());
        v["name"] = json!(own);
    }
    volumes.push(json!({"name": "rendezvous", "hostPath": {
        "path": rendezvous.to_str().unwrap(), "type": "Directory"}}));
    let Ports { probes, mlflow } = own;
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
            for m in mounts.iter_mut() {
                if let Some(own) = renamed.get(m["name"].as_str().unwrap()) {
                    m["name"] = json!(own);
                }
            }
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
            // The probes' and the endpoint's addresses, whichever host the manifest names: the
            // pods share the host's network.
            let mut mapped = Vec::new();
            for a in args {
                mapped.push(if a.ends_with(":9090") {
                    format!("127.0.0.1:{probes}")
                } else if a.ends_with(":5000") {
                    format!("127.0.0.1:{mlflow}")
                } else {
                    a
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
                c["volumeMounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "rendezvous", "mountPath": RENDEZVOUS}));
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "PEER_PROBES", "value": peer.probes.to_string()}));
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

/// How a container ended: its name, exit code, logs, and when it ran (ns since the epoch).
struct Ended {
    container: String,
    code: i64,
    logs: String,
    ran: std::ops::Range<i64>,
}

/// Plays `pods` with one `podman kube play` and waits until every container of each ended;
/// returns how each pod's containers ended.
fn play(work: &Path, pods: &[(String, Value)]) -> (Vec<Played>, Vec<Vec<Ended>>) {
    let file = work.join("pods.yaml");
    let mut yaml = String::new();
    for (_, pod) in pods {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(pod).unwrap());
    }
    std::fs::write(&file, yaml).unwrap();
    // What an earlier run that was killed may have left: its pods and their emptyDir volumes.
    for (name, pod) in pods {
        let _ = podman(&["pod", "rm", "-f", name]);
        for v in pod["spec"]["volumes"].as_array().unwrap() {
            if v.get("emptyDir").is_some() {
                let _ = podman(&["volume", "rm", "-f", v["name"].as_str().unwrap()]);
            }
        }
    }
    let out = podman(&["kube", "play", file.to_str().unwrap()]);
    let played: Vec<Played> = pods.iter().map(|(n, _)| Played(n.clone())).collect();
    assert!(
        out.status.success(),
        "podman kube play: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let containers: Vec<Vec<String>> = pods
        .iter()
        .map(|(name, pod)| {
            pod["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| format!("{name}-{}", c["name"].as_str().unwrap()))
                .collect()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let state = |c: &str| {
        let out = podman(&[
            "inspect",
            c,
            "--format",
            "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt.UnixNano}} \
             {{.State.FinishedAt.UnixNano}}",
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
    let all = containers.concat();
    while !all.iter().all(|c| state(c).starts_with("exited")) {
        if Instant::now() > deadline {
            let said: Vec<String> = all
                .iter()
                .map(|c| format!("{c}: {}\n{}", state(c), logs(c)))
                .collect();
            panic!("the pods did not end:\n{}", said.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ended = containers
        .iter()
        .map(|pod| {
            pod.iter()
                .map(|c| {
                    let state = state(c);
                    let field = |n: usize| state.split(' ').nth(n).unwrap().parse().unwrap();
                    Ended {
                        container: c.clone(),
                        code: field(1),
                        logs: logs(c),
                        ran: field(2)..field(3),
                    }
                })
                .collect()
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
# Both workers run at once: each says it started (its sidecar answers) in the folder both pods
# mount, and waits, 60 s at most, until the other has.
peer=$((1 - i))
touch /rendezvous/started-$i
for try in $(seq 600); do
  [ -e /rendezvous/started-$peer ] && break
  sleep 0.1
done
[ -e /rendezvous/started-$peer ] || { echo \"worker $peer did not start within 60 s\" >&2; exit 7; }
echo \"worker $i saw worker $peer start\"
# Worker 1 fails at once. Worker 0 succeeds once worker 1's sidecar has ended (its probes port
# closes once it stored the failure), 120 s at most, so its success comes last.
if [ $i = 0 ]; then
  for try in $(seq 1200); do
    wget -q -O /dev/null \"http://127.0.0.1:$PEER_PROBES/metrics\" 2>/dev/null || break
    sleep 0.1
  done
  if wget -q -O /dev/null \"http://127.0.0.1:$PEER_PROBES/metrics\" 2>/dev/null; then
    echo \"worker $peer's sidecar did not end within 120 s\" >&2
    exit 8
  fi
fi
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
    // Both pods at once, with a host folder both training containers mount (writable by the
    // pods' non-root user).
    let rendezvous = work.path().join("rendezvous");
    std::fs::create_dir(&rendezvous).unwrap();
    std::fs::set_permissions(&rendezvous, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ports = ports(2);
    let pods: Vec<(String, Value)> = (0..2u32)
        .map(|i| {
            let (own, peer) = (ports[i as usize], ports[1 - i as usize]);
            pod(&job, i, &env, own, peer, &rendezvous)
        })
        .collect();
    let (_played, ended) = play(work.path(), &pods);
    let all: String = ended
        .iter()
        .flatten()
        .map(|e| format!("--- {} exited {}\n{}\n", e.container, e.code, e.logs))
        .collect();
    let ran = |index: usize, container: &str| {
        let e = ended[index]
            .iter()
            .find(|e| e.container.ends_with(container));
        e.unwrap().ran.clone()
    };
    for (index, pod) in ended.iter().enumerate() {
        for e in pod {
            let expected = if e.container.ends_with("-training") {
                index as i64 * 3
            } else {
                0
            };
            assert_eq!(e.code, expected, "{}\n{all}", e.container);
            if e.container.ends_with("-periscope-sidecar") {
                assert!(
                    e.logs.contains(&format!("worker-{index}")) && e.logs.contains("drained"),
                    "{all}"
                );
            }
        }
    }
    // As podman recorded them: each training container started before the other ended.
    let (w0, w1) = (ran(0, "-training"), ran(1, "-training"));
    assert!(
        w0.start < w1.end && w1.start < w0.end,
        "the training containers did not overlap: {w0:?} and {w1:?}\n{all}"
    );
    // Worker 1's sidecar stored Failed before worker 0's command ended, as both sidecars logged
    // it (one host clock). Podman's end time of a container comes after its process exited and
    // may fall after worker 0's exit although the probes port had closed before.
    let logged = |index: usize, what: &str| {
        let e = ended[index]
            .iter()
            .find(|e| e.container.ends_with("-periscope-sidecar"))
            .unwrap();
        let line = e.logs.lines().find(|l| l.contains(what));
        let line = line.unwrap_or_else(|| panic!("no {what:?} in worker {index}'s log\n{all}"));
        line.split_whitespace().next().unwrap().to_string()
    };
    let (stored_failed, w0_ended) = (
        logged(1, "ended=Failed"),
        logged(0, "the command has ended"),
    );
    assert!(
        stored_failed < w0_ended,
        "{stored_failed} {w0_ended}\n{all}"
    );
    // Worker 0's success came last, and the experiment stays Failed.
    assert_eq!(status(), "Failed", "{all}");

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
            stdout.starts_with(&format!("worker {i} trains in /code/training-job\n"))
                && stdout.contains(&format!("worker {i} saw worker {} start\n", 1 - i)),
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
