//! Where a repository's LFS objects come from, found as git-lfs finds it: `lfs.url`, then
//! `remote.origin.lfsurl`, in the repository's committed `.lfsconfig`; else derived from the
//! repository's URL (`https://host/org/repo.git` → `https://host/org/repo.git/info/lfs`). A local
//! repository keeps its objects in its own `lfs/objects/` folder.
//!
//! This module reads only the checkout's `.lfsconfig`; it never contacts a server.

use std::path::PathBuf;

use git2::Repository;

use super::super::error::GitError;
use super::super::remote::is_local;
use crate::redact::redact_url;

/// Where LFS objects are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The LFS API at this URL (the batch API is `URL/objects/batch`).
    Http(url::Url),
    /// The LFS object folders of a repository on this machine.
    Local(Vec<PathBuf>),
}

/// The endpoint for `repo`, which was fetched from `url` (without credentials).
pub fn find(repo: &Repository, url: &str) -> Result<Endpoint, GitError> {
    if let Some(configured) = configured(repo)? {
        return match url::Url::parse(&configured) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(Endpoint::Http(parsed)),
            // A local path from a repository's own file is honoured only for a local repository,
            // as for submodule URLs.
            _ if is_local(&configured) && is_local(url) => local(&configured),
            _ => Err(GitError::LfsUnsupported {
                reason: format!(
                    "the repository's .lfsconfig names `{}` as its LFS server, which is not http(s)",
                    redact_url(&configured)
                ),
            }),
        };
    }
    if is_local(url) {
        return local(url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) if matches!(parsed.scheme(), "http" | "https") => {
            let path = parsed.path().trim_end_matches('/').to_string();
            let suffix = if path.ends_with(".git") {
                "/info/lfs"
            } else {
                ".git/info/lfs"
            };
            parsed.set_path(&format!("{path}{suffix}"));
            parsed.set_query(None);
            parsed.set_fragment(None);
            Ok(Endpoint::Http(parsed))
        }
        _ => Err(GitError::LfsUnsupported {
            reason: "the repository was fetched over ssh or git://, and Periscope fetches LFS \
                     objects only over http(s) (git-lfs-authenticate over ssh is not supported)"
                .into(),
        }),
    }
}

/// `lfs.url` or `remote.origin.lfsurl` from the checkout's `.lfsconfig`.
fn configured(repo: &Repository) -> Result<Option<String>, GitError> {
    let Some(file) = repo.workdir().map(|w| w.join(".lfsconfig")) else {
        return Ok(None);
    };
    if !file.is_file() {
        return Ok(None);
    }
    let config = git2::Config::open(&file).map_err(GitError::local)?;
    Ok(["lfs.url", "remote.origin.lfsurl"]
        .iter()
        .find_map(|key| config.get_string(key).ok())
        .filter(|v| !v.trim().is_empty()))
}

/// The object folders of the local repository at `url` (bare or not).
fn local(url: &str) -> Result<Endpoint, GitError> {
    let path = match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "file" => {
            parsed
                .to_file_path()
                .map_err(|()| GitError::LfsUnsupported {
                    reason: format!("cannot read `{url}` as a local path"),
                })?
        }
        _ => PathBuf::from(url),
    };
    Ok(Endpoint::Local(vec![
        path.join("lfs/objects"),
        path.join(".git/lfs/objects"),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derived(url: &str) -> Result<Endpoint, GitError> {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        find(&repo, url)
    }

    #[test]
    fn derives_the_endpoint_from_the_repository_url_as_git_lfs_does() {
        let http = |u: &str| Endpoint::Http(url::Url::parse(u).unwrap());
        assert_eq!(
            derived("https://h.test/org/repo.git").unwrap(),
            http("https://h.test/org/repo.git/info/lfs")
        );
        assert_eq!(
            derived("http://h.test:8080/org/repo/").unwrap(),
            http("http://h.test:8080/org/repo.git/info/lfs")
        );
        assert_eq!(
            derived("file:///srv/repo.git").unwrap(),
            Endpoint::Local(vec![
                PathBuf::from("/srv/repo.git/lfs/objects"),
                PathBuf::from("/srv/repo.git/.git/lfs/objects")
            ])
        );
        for refused in [
            "ssh://git@h.test/org/repo.git",
            "git@h.test:org/repo.git",
            "git://h.test/r",
        ] {
            assert!(
                matches!(derived(refused), Err(GitError::LfsUnsupported { .. })),
                "{refused}"
            );
        }
    }

    #[test]
    fn lfsconfig_wins_and_may_not_point_a_remote_repository_at_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(".lfsconfig"),
            "[lfs]\n\turl = https://lfs.test/big\n",
        )
        .unwrap();
        assert_eq!(
            find(&repo, "ssh://git@h.test/r.git").unwrap(),
            Endpoint::Http(url::Url::parse("https://lfs.test/big").unwrap())
        );
        std::fs::write(
            dir.path().join(".lfsconfig"),
            "[remote \"origin\"]\n\tlfsurl = file:///etc\n",
        )
        .unwrap();
        assert!(matches!(
            find(&repo, "https://h.test/r.git"),
            Err(GitError::LfsUnsupported { .. })
        ));
    }
}
