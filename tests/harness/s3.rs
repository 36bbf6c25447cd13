//! moto's S3-compatible server on 127.0.0.1, from the test venv.
//!
//! Buckets are created and objects uploaded with plain HTTP, so the setup never goes through the
//! code under test. moto does not check signatures, but it treats requests without an
//! `Authorization` header as anonymous and refuses to let them overwrite or delete objects, so
//! setup requests carry a well-formed header with a dummy signature.

use std::time::Duration;

use super::process::ServerProcess;
use super::rawhttp::{encode_key, request, wait_for_port};
use super::{free_port, tool};

/// An `Authorization` header moto parses (for the account and region) but does not verify.
fn setup_auth() -> Vec<(&'static str, String)> {
    vec![(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDTESTTEST/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host, Signature=00"
            .to_string(),
    )]
}

/// A running moto server. Stops when dropped.
pub struct S3Server {
    _process: ServerProcess,
    pub port: u16,
}

impl S3Server {
    /// Starts moto on a free port and waits until it answers as S3. Another server may take the
    /// port between `free_port` and moto's bind; then moto exits and a new port is tried.
    pub fn start() -> S3Server {
        for _ in 0..5 {
            let port = free_port();
            let mut process = ServerProcess::spawn(
                std::process::Command::new(tool("venv/bin/moto_server")).args([
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]),
                "moto_server",
            );
            wait_for_port(port, "moto_server", Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(200));
            // The listener seen may have been another server's that closed since: a refused
            // probe means "try another port", not a failed test.
            let answers = || {
                std::panic::catch_unwind(|| request(port, "GET", "/", &[], b""))
                    .is_ok_and(|r| r.body.contains("ListAllMyBucketsResult"))
            };
            if process.is_running() && answers() {
                return S3Server {
                    _process: process,
                    port,
                };
            }
        }
        panic!("moto_server did not start on a free port after 5 tries");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a pod would have: endpoint, region and (any) keys, since moto does not check
    /// them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "AKIDTESTTEST".into()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret-key".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let r = request(self.port, "PUT", &format!("/{bucket}"), &setup_auth(), b"");
        assert_eq!(r.status, 200, "create bucket {bucket}: {}", r.body);
    }

    /// Uploads an object; the key is percent-encoded segment by segment.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.put_raw(bucket, &encode_key(key), body);
    }

    /// Uploads an object under a request target used as is (for hostile keys).
    pub fn put_raw(&self, bucket: &str, encoded_key: &str, body: &[u8]) {
        let r = request(
            self.port,
            "PUT",
            &format!("/{bucket}/{encoded_key}"),
            &setup_auth(),
            body,
        );
        assert_eq!(r.status, 200, "put {bucket}/{encoded_key}: {}", r.body);
    }

    /// An object's body as text (for JSON objects such as manifests); panics unless it exists.
    pub fn get_text(&self, bucket: &str, key: &str) -> String {
        let r = request(
            self.port,
            "GET",
            &format!("/{bucket}/{}", encode_key(key)),
            &setup_auth(),
            b"",
        );
        assert_eq!(r.status, 200, "get {bucket}/{key}: {}", r.body);
        r.body
    }

    /// The SHA-256 checksum the server recorded for an object (`x-amz-checksum-sha256`, base64;
    /// for a multipart upload the digest of its parts' digests), if any.
    pub fn checksum_sha256(&self, bucket: &str, key: &str) -> Option<String> {
        let mut headers = setup_auth();
        headers.push(("x-amz-checksum-mode", "ENABLED".into()));
        let r = request(
            self.port,
            "HEAD",
            &format!("/{bucket}/{}", encode_key(key)),
            &headers,
            b"",
        );
        assert_eq!(r.status, 200, "head {bucket}/{key}: {}", r.head);
        r.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-amz-checksum-sha256")
                .then(|| value.trim().to_string())
        })
    }

    /// Deletes an object.
    pub fn delete(&self, bucket: &str, key: &str) {
        let r = request(
            self.port,
            "DELETE",
            &format!("/{bucket}/{}", encode_key(key)),
            &setup_auth(),
            b"",
        );
        assert!(
            r.status == 204 || r.status == 200,
            "delete {key}: {}",
            r.body
        );
    }

    /// Turns on moto's IAM authentication and returns the (key id, secret) of a user allowed every
    /// S3 action. Call it after setup: from then on only correctly signed requests are accepted.
    pub fn enable_auth(&self) -> (String, String) {
        let iam =
            vec![(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDTESTTEST/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=00"
                .to_string(),
        ), ("Content-Type", "application/x-www-form-urlencoded".to_string())];
        let call = |form: &str| {
            let r = request(self.port, "POST", "/", &iam, form.as_bytes());
            assert_eq!(r.status, 200, "IAM {form}: {}", r.body);
            r.body
        };
        call("Action=CreateUser&UserName=ci&Version=2010-05-08");
        let created = call("Action=CreateAccessKey&UserName=ci&Version=2010-05-08");
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = created.find(&open).expect("access key in response") + open.len();
            let end = start + created[start..].find('<').expect("closing tag");
            created[start..end].to_string()
        };
        let policy = encode_key(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
        );
        call(&format!(
            "Action=PutUserPolicy&UserName=ci&PolicyName=all&PolicyDocument={policy}&Version=2010-05-08"
        ));
        let r = request(
            self.port,
            "POST",
            "/moto-api/reset-auth",
            &[("Content-Type", "text/plain".to_string())],
            b"0",
        );
        assert_eq!(r.status, 200, "enable moto auth: {}", r.body);
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// Every object under `prefix` as (key, LastModified text), from ListObjectsV2 (one page of up
    /// to 1000 keys: enough for tests).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        let r = request(
            self.port,
            "GET",
            &format!(
                "/{bucket}?list-type=2&max-keys=1000&prefix={}",
                encode_key(prefix)
            ),
            &setup_auth(),
            b"",
        );
        assert_eq!(r.status, 200, "list {bucket}/{prefix}: {}", r.body);
        let field = |xml: &str, name: &str| {
            let open = format!("<{name}>");
            let start = xml.find(&open)? + open.len();
            let end = start + xml[start..].find('<')?;
            Some(xml[start..end].to_string())
        };
        r.body
            .split("<Contents>")
            .skip(1)
            .filter_map(|c| Some((field(c, "Key")?, field(c, "LastModified")?)))
            .collect()
    }
}
