//! Azurite (the Azure Blob Storage emulator) on 127.0.0.1, installed by `tests/run` with npm.
//!
//! object_store cannot create containers, so containers (and test blobs) are made here with
//! SharedKey-signed requests using the emulator's well-known account key, as the Azure docs
//! describe; the code under test is never used for setup.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::process::ServerProcess;
use super::rawhttp::{encode_key, request, wait_for_port, Response};
use super::{free_port, tool};

/// The emulator's well-known account and key (public; documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

/// A running Azurite blob service with its data in a temp folder. Stops when dropped.
pub struct Azurite {
    _process: ServerProcess,
    _data: tempfile::TempDir,
    pub port: u16,
}

impl Azurite {
    /// Starts azurite-blob on a free port and waits until it listens; retries on another port if
    /// the process lost its port to another server.
    pub fn start() -> Azurite {
        for _ in 0..5 {
            let port = free_port();
            let data = tempfile::tempdir().expect("tempdir");
            let mut process = ServerProcess::spawn(
                std::process::Command::new(tool("npm/node_modules/.bin/azurite-blob"))
                    .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(data.path())
                    .args(["--skipApiVersionCheck", "--silent"]),
                "azurite-blob",
            );
            wait_for_port(port, "azurite-blob", Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(200));
            if process.is_running() {
                return Azurite {
                    _process: process,
                    _data: data,
                    port,
                };
            }
        }
        panic!("azurite-blob did not start on a free port after 5 tries");
    }

    /// The environment a pod would have to use the emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }

    /// Creates a container.
    pub fn create_container(&self, container: &str) {
        let r = self.signed("PUT", container, "", &[("restype", "container")], &[], b"");
        assert_eq!(r.status, 201, "create container {container}: {}", r.body);
    }

    /// Uploads a block blob.
    pub fn put(&self, container: &str, key: &str, body: &[u8]) {
        let r = self.signed(
            "PUT",
            container,
            key,
            &[],
            &[("x-ms-blob-type", "BlockBlob".into())],
            body,
        );
        assert_eq!(r.status, 201, "put {container}/{key}: {}", r.body);
    }

    fn signed(
        &self,
        method: &str,
        container: &str,
        key: &str,
        query: &[(&str, &str)],
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Response {
        let date = httpdate_now();
        let mut path = format!("/{ACCOUNT}/{container}");
        if !key.is_empty() {
            path.push('/');
            path.push_str(&encode_key(key));
        }
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        headers.push(("x-ms-date", date));
        headers.push(("x-ms-version", VERSION.into()));
        let mut ms: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-ms-"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        ms.sort();
        let canonical_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let mut resource = format!("/{ACCOUNT}{path}");
        let mut q: Vec<_> = query.to_vec();
        q.sort();
        for (k, v) in &q {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let to_sign =
            format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n{canonical_headers}{resource}");
        let key = base64_decode(ACCOUNT_KEY);
        let signature = base64_encode(&hmac_sha256(&key, to_sign.as_bytes()));
        headers.push(("Authorization", format!("SharedKey {ACCOUNT}:{signature}")));
        let target = if q.is_empty() {
            path
        } else {
            let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{path}?{}", qs.join("&"))
        };
        request(self.port, method, &target, &headers, body)
    }
}

fn httpdate_now() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner_hash = Sha256::new()
        .chain_update(&inner)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer)
        .chain_update(inner_hash)
        .finalize()
        .to_vec()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c).expect("base64 character") as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

#[test]
fn base64_and_hmac_match_known_values() {
    assert_eq!(base64_encode(b"hello!?"), "aGVsbG8hPw==");
    assert_eq!(base64_decode("aGVsbG8hPw=="), b"hello!?");
    // RFC 4231 test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
