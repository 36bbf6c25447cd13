//! Fuzzes the known_hosts reader: any text, asked about any host, port and key, must never panic;
//! a key is known only where the file lists it and revoked only where a line says `@revoked`.
//! The first bytes choose the question; the rest is the file (hashed `|1|salt|hash` names,
//! wildcards, negations, markers and all).

#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::localize::git::known_hosts::{base64, check_text, HostKeyStatus};

fuzz_target!(|data: &[u8]| {
    let (question, text) = data.split_at(data.len().min(8));
    let port = question
        .first()
        .map_or(22, |b| if b % 2 == 0 { 22 } else { 2222 });
    let host = match question.get(1).copied().unwrap_or(0) % 3 {
        0 => "127.0.0.1",
        1 => "git.example.test",
        _ => "H",
    };
    let key = question.get(2..).unwrap_or_default();
    let text = String::from_utf8_lossy(text);
    let status = check_text(&text, host, port, "ssh-ed25519", key);
    // Asking again gives the same answer: the reader keeps no state.
    assert_eq!(status, check_text(&text, host, port, "ssh-ed25519", key));
    match status {
        HostKeyStatus::Known => assert!(text.contains(&base64(key))),
        HostKeyStatus::Revoked => assert!(text.contains("@revoked")),
        HostKeyStatus::Changed | HostKeyStatus::Unknown => {}
    }
});
