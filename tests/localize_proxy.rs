//! `periscope localize` through an HTTP proxy (tinyproxy on 127.0.0.1): git over HTTP(S), archive
//! downloads and object stores follow one rule, curl's: `http_proxy` / `https_proxy` /
//! `all_proxy` / `no_proxy`, lowercase or uppercase, the lowercase name first. The proxy's log
//! shows each request it forwarded.

use std::path::Path;

use crate::harness::archive::{file, tar_gz};
use crate::harness::gcs::FakeGcs;
use crate::harness::git::{GitHttp, Repos};
use crate::harness::http_server::HttpServer;
use crate::harness::localize::localize_env;
use crate::harness::tinyproxy::Tinyproxy;
use crate::harness::tls::TestCa;

/// A git repository over smart HTTP, an archive, and an object store, each a real server.
struct Servers {
    _repos: Repos,
    git: GitHttp,
    files: HttpServer,
    gcs: FakeGcs,
}

impl Servers {
    fn start() -> Servers {
        let repos = Repos::new();
        repos
            .create("job")
            .commit(&[("train.py", "print('git')\n")], &[], "one");
        let git = GitHttp::start(&repos.base());
        let files = HttpServer::start();
        files.put(
            "/job.tar.gz",
            tar_gz(&[file("job/run.py", b"print('archive')\n")]),
        );
        let gcs = FakeGcs::start();
        gcs.create_bucket("ml");
        gcs.put("ml", "jobs/j1/model.txt", b"weights\n");
        Servers {
            _repos: repos,
            git,
            files,
            gcs,
        }
    }

    /// Each source with what its fetch must leave, and the request line prefix the proxy logs
    /// for it.
    fn sources(&self) -> Vec<(String, &'static str, String)> {
        let git = self.git.url("job");
        let archive = self.files.url("/job.tar.gz");
        vec![
            (
                format!("git+{git}#into=g"),
                "g/train.py",
                format!("GET {git}/info/refs?service=git-upload-pack "),
            ),
            (
                format!("{archive}#strip=1&into=a"),
                "a/run.py",
                format!("GET {archive} "),
            ),
            (
                "gs://ml/jobs/j1/#into=o".to_string(),
                "o/model.txt",
                format!("GET http://127.0.0.1:{}/ml?list-type=2", self.gcs.port),
            ),
        ]
    }
}

/// Localizes `source` into a fresh folder with `env` (and the emulator's variable).
fn fetch(servers: &Servers, env: &[(&str, String)], source: &str, lands: &str) {
    let dest = tempfile::tempdir().unwrap();
    let mut env = env.to_vec();
    env.extend(servers.gcs.env());
    localize_env(&env, dest.path(), source, &["--retries", "2"]).expect_code(0);
    assert!(dest.path().join(lands).is_file(), "{source}: no {lands}");
}

fn went_through(proxy: &Tinyproxy, line: &str) -> bool {
    proxy.requests().iter().any(|r| r.starts_with(line))
}

#[test]
fn git_archives_and_object_stores_go_through_http_proxy() {
    let servers = Servers::start();
    let proxy = Tinyproxy::start();
    let env = [("http_proxy", proxy.url()), ("no_proxy", String::new())];
    for (source, lands, line) in servers.sources() {
        fetch(&servers, &env, &source, lands);
        assert!(
            went_through(&proxy, &line),
            "{source}: `{line}` not in the proxy's log: {:#?}",
            proxy.requests()
        );
    }
    // git's negotiation went through it too, not only the ref list.
    let negotiate = format!("POST {}/git-upload-pack ", servers.git.url("job"));
    assert!(went_through(&proxy, &negotiate), "{:#?}", proxy.requests());
}

/// curl reads `http_proxy` before `HTTP_PROXY` (and git, through curl, does too); an empty
/// value counts as unset. Here the uppercase names point at a closed port: a client that read
/// them instead would fail to connect.
#[test]
fn the_lowercase_name_wins_and_an_empty_value_is_unset() {
    let servers = Servers::start();
    let proxy = Tinyproxy::start();
    let dead = "http://127.0.0.1:1".to_string();
    let env = [
        ("http_proxy", proxy.url()),
        ("HTTP_PROXY", dead.clone()),
        ("ALL_PROXY", dead),
        ("NO_PROXY", String::new()),
    ];
    for (source, lands, line) in servers.sources() {
        fetch(&servers, &env, &source, lands);
        assert!(
            went_through(&proxy, &line),
            "{source}: {:#?}",
            proxy.requests()
        );
    }
}

#[test]
fn no_proxy_sends_a_host_directly() {
    let servers = Servers::start();
    let proxy = Tinyproxy::start();
    for no_proxy in [
        ("no_proxy", "127.0.0.1"),
        ("NO_PROXY", "localhost, 127.0.0.0/8"),
    ] {
        let env = [
            ("HTTP_PROXY", proxy.url()),
            (no_proxy.0, no_proxy.1.to_string()),
        ];
        for (source, lands, _) in servers.sources() {
            fetch(&servers, &env, &source, lands);
        }
    }
    assert_eq!(proxy.requests(), Vec::<String>::new());
}

/// `https://` goes through `https_proxy` (here uppercase) with CONNECT: the proxy carries the
/// TLS bytes and never sees inside them.
#[test]
fn https_goes_through_https_proxy_with_connect() {
    let ca = TestCa::new();
    let files = HttpServer::start_tls(&ca);
    files.put(
        "/job.tar.gz",
        tar_gz(&[file("job/run.py", b"print('tls')\n")]),
    );
    let repos = Repos::new();
    repos
        .create("job")
        .commit(&[("train.py", "print('git')\n")], &[], "one");
    let git = GitHttp::start_tls(&repos.base(), &ca);
    let proxy = Tinyproxy::start();
    let env = [("HTTPS_PROXY", proxy.url())];
    let ca_file = ca.ca_cert.to_str().unwrap();
    for (source, lands) in [
        (files.url("/job.tar.gz") + "#strip=1&into=a", "a/run.py"),
        (format!("git+{}#into=g", git.url("job")), "g/train.py"),
    ] {
        let dest = tempfile::tempdir().unwrap();
        localize_env(&env, dest.path(), &source, &["--ca-file", ca_file]).expect_code(0);
        assert!(dest.path().join(lands).is_file(), "{source}");
        let port = url::Url::parse(source.trim_start_matches("git+"))
            .unwrap()
            .port()
            .unwrap();
        let connect = format!("CONNECT 127.0.0.1:{port} ");
        assert!(went_through(&proxy, &connect), "{:#?}", proxy.requests());
    }
}

/// A proxy setting that cannot be used is a usage error naming the variable, never a silent
/// direct connection, and its password is not shown.
#[test]
fn an_unusable_proxy_is_refused_with_exit_2() {
    let servers = Servers::start();
    let env = [(
        "https_proxy",
        "socks5://user:hunter2@127.0.0.1:1080".to_string(),
    )];
    for (source, _, _) in servers.sources() {
        let source = source.replace("http://", "https://");
        let dest = tempfile::tempdir().unwrap();
        let mut env = env.to_vec();
        env.extend(servers.gcs.env());
        localize_env(&env, dest.path(), &source, &[])
            .expect_code(2)
            .expect_output("https_proxy")
            .refute_output("hunter2");
        assert!(!Path::new(&dest.path().join("g")).exists());
    }
}

/// A proxy that asks for credentials gets them from the proxy URL, and only it; without them the
/// fetch is refused as an authentication failure (exit 4) that says where they go.
#[test]
fn proxy_credentials_ride_in_the_proxy_url() {
    let servers = Servers::start();
    let proxy = Tinyproxy::start_with_auth("pod", "hunter2");
    let with = format!("http://pod:hunter2@127.0.0.1:{}", proxy.port);
    for (source, lands, line) in servers.sources() {
        let dest = tempfile::tempdir().unwrap();
        let mut env = vec![("http_proxy", proxy.url())];
        env.extend(servers.gcs.env());
        let refused = localize_env(&env, dest.path(), &source, &["--retries", "1"]);
        if !source.starts_with("gs://") {
            refused.expect_code(4).expect_output("proxy");
        } else {
            // Object stores: refused too, but the store's error classes do not single out a
            // proxy's 407 (see the README's gaps).
            assert_ne!(refused.code, Some(0), "{source}: {refused:?}");
        }
        let env = [("http_proxy", with.clone())];
        let mut env = env.to_vec();
        env.extend(servers.gcs.env());
        localize_env(&env, dest.path(), &source, &[])
            .expect_code(0)
            .refute_output("hunter2");
        assert!(dest.path().join(lands).is_file(), "{source}");
        assert!(
            went_through(&proxy, &line),
            "{source}: {:#?}",
            proxy.requests()
        );
    }
}
