//! `periscope version`.

/// Prints the version, the target it was built for, and what it can talk to.
pub fn print() {
    println!("periscope {}", env!("CARGO_PKG_VERSION"));
    println!(
        "target: {}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    println!("sources: git (https, http, ssh, git, file), http(s) archives (tar, tar.gz, zip), s3, gs, az, file");
}
