//! Pod simulation: the containers of `manifests/` run as local processes, so the commands in the
//! YAML are proved to work together, not just to parse.
//!
//! The test reads the Job in `manifests/base/job.yaml` (and the classic-sidecar overlay's patch),
//! maps each volume to a temporary folder by rewriting the paths under its `mountPath`, resolves
//! `envFrom` (the base's `periscope.env`, with the source and storage patched like an overlay
//! would), `secretKeyRef` (test secrets) and the `job-name` label, then runs the containers in
//! Kubernetes' order: init containers one after another, a native sidecar (`restartPolicy:
//! Always`) left running, then the main containers; after the main container ends, SIGTERM to the
//! native sidecar. The source is a git repository the test commits (served by a git daemon on
//! 127.0.0.1, or as `git+file://`) and the storage a `file://` folder. Periscope's image has no
//! shell, so a container without `command` runs the binary under test with its `args`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::git::{GitDaemon, Repos};
use crate::harness::{periscope, run};

const JOB: &str = "training-job";

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The base Job, with the classic-sidecar overlay applied when `classic` (the overlay's patch is
/// a strategic merge on container names: delete the native sidecar, add the classic one).
fn job(classic: bool) -> Value {
    let mut job = yaml(&manifests().join("base/job.yaml"));
    assert_eq!(job["metadata"]["name"], JOB);
    if classic {
        let patch = yaml(&manifests().join("overlays/classic-sidecar/classic-sidecar.yaml"));
        let spec = &patch["spec"]["template"]["spec"];
        let pod = job["spec"]["template"]["spec"].as_object_mut().unwrap();
        for deleted in spec["initContainers"].as_array().unwrap() {
            assert_eq!(deleted["$patch"], "delete");
            let inits = pod
                .get_mut("initContainers")
                .unwrap()
                .as_array_mut()
                .unwrap();
            let before = inits.len();
            inits.retain(|c| c["name"] != deleted["name"]);
            assert_eq!(
                inits.len(),
                before - 1,
                "the patch deletes an existing container"
            );
        }
        let containers = pod.get_mut("containers").unwrap().as_array_mut().unwrap();
        containers.extend(spec["containers"].as_array().unwrap().iter().cloned());
    }
    job
}

/// A pod's volumes as folders on this machine, and the values the cluster would supply.
struct Node {
    root: PathBuf,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<(String, String), String>,
    /// Each container port mapped to a free loopback port, keyed by container and port number,
    /// as volumes are mapped to folders: pods have their own network namespace, tests do not.
    ports: std::sync::Mutex<BTreeMap<(String, u64), u16>>,
    /// The pod's own loopback ports (`127.0.0.1:PORT`, shared by its containers) mapped to free
    /// ports of this machine's.
    loopback: std::sync::Mutex<BTreeMap<u64, u16>>,
    /// `JOB_COMPLETION_INDEX`, which the Job controller sets in every container of an Indexed
    /// Job's pod.
    index: Option<u32>,
}

impl Node {
    /// `127.0.0.1:PORT` in `text` (the pod's loopback) becomes `127.0.0.1:<free port>`, the same
    /// one for every container of the pod.
    fn map_loopback(&self, text: &str) -> String {
        let Some((before, after)) = text.split_once("127.0.0.1:") else {
            return text.to_string();
        };
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let Ok(port) = digits.parse::<u64>() else {
            return text.to_string();
        };
        let mut loopback = self.loopback.lock().unwrap();
        let local = *loopback
            .entry(port)
            .or_insert_with(crate::harness::free_port);
        format!("{before}127.0.0.1:{local}{}", &after[digits.len()..])
    }

    /// `0.0.0.0:PORT` for a port the container declares becomes `127.0.0.1:<free port>`.
    fn map_listen(&self, c: &Value, arg: String) -> String {
        if arg.starts_with("127.0.0.1:") {
            return self.map_loopback(&arg);
        }
        let Some(port) = arg
            .strip_prefix("0.0.0.0:")
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return arg;
        };
        let declared = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["containerPort"].as_u64() == Some(port));
        assert!(
            declared,
            "container {} listens on {port} without declaring it",
            c["name"]
        );
        let key = (c["name"].as_str().unwrap().to_string(), port);
        let mut ports = self.ports.lock().unwrap();
        let local = *ports.entry(key).or_insert_with(crate::harness::free_port);
        format!("127.0.0.1:{local}")
    }

    /// The loopback port a container's named or numbered port was mapped to.
    fn mapped_port(&self, c: &Value, port: &Value) -> u16 {
        let number = match port {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| {
                    panic!(
                        "probe names port {name}, which {} does not declare",
                        c["name"]
                    )
                }),
            other => panic!("unsupported probe port {other}"),
        };
        let key = (c["name"].as_str().unwrap().to_string(), number);
        *self
            .ports
            .lock()
            .unwrap()
            .get(&key)
            .unwrap_or_else(|| panic!("nothing listens on {key:?}"))
    }

    fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// `path` with the container's mount prefix replaced by the volume's folder.
    fn map_path(&self, container: &Value, path: &str) -> String {
        let mut best: Option<(&str, &str)> = None;
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let mount = m["mountPath"].as_str().unwrap();
            let under = path == mount || path.starts_with(&format!("{mount}/"));
            if under && best.is_none_or(|(b, _)| mount.len() > b.len()) {
                best = Some((mount, m["name"].as_str().unwrap()));
            }
        }
        match best {
            Some((mount, name)) => {
                format!("{}{}", self.volume(name).display(), &path[mount.len()..])
            }
            None => {
                assert!(
                    !path.starts_with("/periscope") && !path.starts_with("/code"),
                    "container {} uses {path} without mounting it",
                    container["name"]
                );
                path.to_string()
            }
        }
    }

    /// The process a container runs, with its environment resolved the way the kubelet would.
    fn command(&self, c: &Value) -> Command {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| self.map_path(c, s.as_str().unwrap()))
                .collect()
        };
        let (command, args) = (strings(&c["command"]), strings(&c["args"]));
        let args: Vec<String> = args.into_iter().map(|a| self.map_listen(c, a)).collect();
        let image = c["image"].as_str().unwrap();
        let mut cmd = if command.is_empty() {
            assert!(
                image.contains("/periscope:"),
                "{image}: only Periscope's entrypoint is known"
            );
            // The entrypoint of Periscope's image is the binary itself.
            let mut cmd = periscope();
            cmd.env_clear();
            cmd
        } else {
            Command::new(&command[0])
        };
        cmd.args(command.iter().skip(1)).args(&args);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "PERISCOPE_TERMINATION_LOG",
                self.root
                    .join(format!("termination-{}", c["name"].as_str().unwrap())),
            );
        for from in c["envFrom"].as_array().into_iter().flatten() {
            assert_eq!(from["configMapRef"]["name"], "periscope");
            cmd.envs(&self.config);
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            if let Some(v) = e["value"].as_str() {
                cmd.env(name, self.map_loopback(&self.map_path(c, v)));
            } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                let value = match field {
                    // The Job controller labels its pods with job-name.
                    "metadata.labels['job-name']" => JOB.to_string(),
                    "metadata.name" => format!("{JOB}-{}-sim01", self.index.unwrap_or(0)),
                    "metadata.uid" => "5e1f0000-0000-4000-8000-000000000001".into(),
                    "spec.nodeName" => "node-sim".into(),
                    other => panic!("env {name}: unsupported field {other}"),
                };
                cmd.env(name, value);
            } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
                let key = (
                    s["name"].as_str().unwrap().to_string(),
                    s["key"].as_str().unwrap().to_string(),
                );
                match self.secrets.get(&key) {
                    Some(v) => {
                        cmd.env(name, v);
                    }
                    None => assert_eq!(s.get("optional"), Some(&Value::Bool(true)), "{key:?}"),
                }
            } else {
                panic!("env {name}: unsupported source {e}");
            }
        }
        if let Some(index) = self.index {
            cmd.env("JOB_COMPLETION_INDEX", index.to_string());
        }
        if let Some(dir) = c["workingDir"].as_str() {
            cmd.current_dir(self.map_path(c, dir));
        }
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// Waits for a process, killing it (and failing) if it is still running after `limit`: a hung
/// container must fail the test rather than hang it.
fn wait(name: &str, child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("container {name} still running after {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn output(name: &str, child: Child, limit: Duration) -> (ExitStatus, String) {
    let mut child = child;
    let status = wait(name, &mut child, limit);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status, text)
}

fn spawn(node: &Node, c: &Value) -> Child {
    node.command(c)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("container {}: {e}", c["name"]))
}

/// What the simulated pod left behind.
struct Ran {
    main_code: Option<i32>,
    commit: String,
    main_output: String,
    storage: PathBuf,
    volumes: PathBuf,
}

/// How the simulated pod reaches the training job's git repository.
#[derive(Clone, Copy)]
enum GitServer {
    /// `git://` from a git daemon on 127.0.0.1.
    Daemon,
    /// `git+file://` straight from the bare repository.
    File,
}

/// The training job's code, committed to a bare repository; returns the commit's SHA.
fn training_repo(repos: &Repos, exit_code: i32) -> String {
    let repo = repos.create("training-job");
    let train = format!(
        "import sys\n\
         epochs = int(open('data/epochs.txt').read())\n\
         for e in range(epochs):\n    print(f'epoch {{e}} loss {{1.0 / (e + 1):.3f}}', flush=True)\n\
         print('training done', file=sys.stderr)\n\
         sys.exit({exit_code})\n"
    );
    repo.commit(
        &[("train.py", &train), ("data/epochs.txt", "3\n")],
        &[],
        "training job",
    )
}

fn simulate(classic: bool, server: GitServer, exit_code: i32) -> (tempfile::TempDir, Ran) {
    let tmp = tempfile::tempdir().unwrap();
    let repos = Repos::new();
    let commit = training_repo(&repos, exit_code);
    let daemon;
    let source = match server {
        GitServer::Daemon => {
            daemon = GitDaemon::start(&repos.base(), false);
            daemon.url("training-job")
        }
        GitServer::File => format!("git+file://{}/training-job.git", repos.base().display()),
    };
    let job = job(classic);
    let pod = &job["spec"]["template"]["spec"];
    let storage = tmp.path().join("storage");
    fs::create_dir_all(&storage).unwrap();
    let mut config = BTreeMap::new();
    for line in fs::read_to_string(manifests().join("base/periscope.env"))
        .unwrap()
        .lines()
    {
        if let Some((k, v)) = line.split_once('=') {
            config.insert(k.to_string(), v.to_string());
        }
    }
    assert!(config.contains_key("PERISCOPE_SOURCE") && config.contains_key("PERISCOPE_STORAGE"));
    config.insert(
        "PERISCOPE_SOURCE".into(),
        format!("{source}#into=training-job"),
    );
    config.insert(
        "PERISCOPE_STORAGE".into(),
        format!("file://{}", storage.display()),
    );
    let node = Node {
        root: tmp.path().to_path_buf(),
        config,
        secrets: BTreeMap::new(),
        ports: Default::default(),
        loopback: Default::default(),
        index: (job["spec"]["completionMode"] == "Indexed").then_some(0),
    };
    for v in pod["volumes"].as_array().unwrap() {
        let dir = node.volume(v["name"].as_str().unwrap());
        fs::create_dir_all(&dir).unwrap();
        // Secret volumes hold the Secret's keys as files.
        if v["secret"]["secretName"] == "periscope-git" {
            fs::write(dir.join("token"), "test-token").unwrap();
            fs::write(dir.join("ssh-privatekey"), "").unwrap();
            fs::write(dir.join("known_hosts"), "").unwrap();
        }
    }

    // Init containers in order; a native sidecar starts and keeps running.
    let mut sidecars = Vec::new();
    for c in pod["initContainers"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        if c["restartPolicy"] == "Always" {
            let child = spawn(&node, c);
            // The kubelet's readiness probe, against the mapped port.
            if let Some(get) = c["readinessProbe"]["httpGet"].as_object() {
                let port = node.mapped_port(c, &get["port"]);
                let path = get["path"].as_str().unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                        && crate::harness::rawhttp::request(port, "GET", path, &[], b"").status
                            == 200;
                    if ok {
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "sidecar {name} never became ready on {path}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            sidecars.push((name, child));
        } else {
            let (status, out) = output(&name, spawn(&node, c), Duration::from_secs(120));
            assert!(
                status.success(),
                "init container {name} failed: {status}\n{out}"
            );
        }
    }
    // Main containers all start together; the training container is the one that is not ours.
    let mut main = None;
    let mut classic_sidecars = Vec::new();
    for c in pod["containers"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let child = spawn(&node, c);
        if c["image"].as_str().unwrap().contains("/periscope:") {
            classic_sidecars.push((name, child));
        } else {
            assert!(main.is_none(), "one training container");
            main = Some((name, child));
        }
    }
    let (name, child) = main.expect("a training container");
    let (status, main_output) = output(&name, child, Duration::from_secs(120));
    // Classic sidecars end on their own (--exit-when-file); native ones get SIGTERM now.
    for (name, child) in classic_sidecars {
        let (status, out) = output(&name, child, Duration::from_secs(60));
        assert!(status.success(), "sidecar {name} failed: {status}\n{out}");
    }
    for (name, child) in sidecars {
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let (status, out) = output(&name, child, Duration::from_secs(60));
        assert!(
            status.success(),
            "native sidecar {name} failed after SIGTERM: {status}\n{out}"
        );
    }
    let volumes = tmp.path().join("volumes");
    (
        tmp,
        Ran {
            main_code: status.code(),
            commit,
            main_output,
            storage,
            volumes,
        },
    )
}

fn check(ran: &Ran, exit_code: i32) {
    // The code was localized into /code, and the training command ran from it.
    let code = ran.volumes.join("code/training-job");
    assert!(
        code.join("train.py").is_file(),
        "code not localized into /code"
    );
    // ... at the exact commit, which the record names.
    let record = fs::read_to_string(code.join("../.periscope/localized.json")).unwrap();
    assert!(record.contains(&ran.commit), "{record}");
    assert!(ran.volumes.join("periscope/bin/periscope").is_file());
    // `kubectl logs` still sees the output, and the pod records the command's exit code.
    assert!(
        ran.main_output.contains("epoch 2 loss 0.333"),
        "{}",
        ran.main_output
    );
    assert_eq!(ran.main_code, Some(exit_code), "{}", ran.main_output);
    let recorded = fs::read_to_string(ran.volumes.join("periscope/logs/exit-code")).unwrap();
    assert_eq!(recorded.trim(), exit_code.to_string());
    // The logs were shipped to storage under <experiment>/<worker>, and read back complete.
    let base = format!("file://{}/{JOB}/worker-0/logs", ran.storage.display());
    let stdout = run(periscope().args(["logs", "cat", &format!("{base}/stdout.log")]));
    stdout.expect_code(0);
    assert_eq!(
        stdout.stdout,
        "epoch 0 loss 1.000\nepoch 1 loss 0.500\nepoch 2 loss 0.333\n"
    );
    let stderr = run(periscope().args(["logs", "cat", &format!("{base}/stderr.log")]));
    stderr.expect_code(0);
    assert_eq!(stderr.stdout, "training done\n");
}

#[test]
fn native_sidecar_pod_localizes_runs_and_ships_logs() {
    let (_tmp, ran) = simulate(false, GitServer::Daemon, 0);
    check(&ran, 0);
}

#[test]
fn classic_sidecar_pod_ships_logs_and_exits_on_the_exit_code_file() {
    let (_tmp, ran) = simulate(true, GitServer::File, 3);
    check(&ran, 3);
}
