//! Submodules, recursively: each one is fetched at exactly the commit its parent records, laid out
//! as `git submodule update --init --recursive` does (its repository under the parent's
//! `.git/modules/`, a `.git` file in its folder).
//!
//! A repository chooses its submodules' names and URLs, so they are checked first: a name may not
//! climb out of `.git/modules/` (git's rule since CVE-2018-11235), a submodule may not reach into
//! the local filesystem unless the parent itself came from there (the rule git adopted for
//! CVE-2022-39253), and nesting is bounded. Relative URLs (`../other.git`) are resolved against
//! the parent's URL here, as `git submodule` does, rather than by libgit2, which drops a slash of
//! `file:///`.

use git2::Repository;

use super::error::GitError;
use super::fetch::FetchPlan;
use super::remote::is_local;

/// How deep submodules may nest: deeper trees are almost surely a loop.
const MAX_NESTING: usize = 16;

/// Fetches and checks out every submodule of `repo`, and theirs.
/// `parent` is how `repo` itself was fetched.
pub fn update_all(repo: &Repository, parent: &FetchPlan<'_>, level: usize) -> Result<(), GitError> {
    let parent_url = parent.url;
    let local = GitError::local;
    check_declared_names(repo)?;
    for mut sub in repo.submodules().map_err(local)? {
        let path = sub.path().display().to_string();
        let wrap = |error: GitError| GitError::Submodule {
            path: path.clone(),
            error: Box::new(error),
        };
        if level >= MAX_NESTING {
            return Err(wrap(GitError::SubmoduleUrl {
                url: sub.url().ok().flatten().unwrap_or_default().to_string(),
                reason: format!("submodules nest more than {MAX_NESTING} levels deep"),
            }));
        }
        // The commit the parent's tree records; a submodule declared but not committed is skipped,
        // as git does.
        let Some(commit) = sub.head_id() else {
            tracing::warn!(submodule = %path, "declared in .gitmodules but not in the tree; skipped");
            continue;
        };
        let name = sub.name().unwrap_or_default().to_string();
        check_name(&name).map_err(wrap)?;
        let declared = sub.url().ok().flatten().unwrap_or_default().to_string();
        let url = resolve_url(&declared, parent_url).map_err(wrap)?;
        check_url(&url, parent_url).map_err(wrap)?;
        sub.init(false).map_err(local).map_err(wrap)?;
        let subrepo = sub.repo_init(true).map_err(local).map_err(wrap)?;
        // What `git submodule update --init` records: the resolved URL, in the parent's config
        // and as the submodule's origin.
        repo.config()
            .and_then(|mut c| c.set_str(&format!("submodule.{name}.url"), &url))
            .and_then(|()| subrepo.remote_set_url("origin", &url))
            .map_err(local)
            .map_err(wrap)?;
        tracing::info!(submodule = %path, url = %crate::redact::redact_url(&url), %commit, "fetching submodule");
        let plan = FetchPlan {
            url: &url,
            ..*parent
        };
        plan.run(&subrepo, Some(&commit.to_string()))
            .map_err(wrap)?;
        update_all(&subrepo, &plan, level + 1).map_err(wrap)?;
    }
    Ok(())
}

/// Refuses a `.gitmodules` that declares a name [`check_name`] refuses. libgit2 skips such an
/// entry without a word, which would leave its submodule looking merely unconfigured.
fn check_declared_names(repo: &Repository) -> Result<(), GitError> {
    let Some(file) = repo.workdir().map(|w| w.join(".gitmodules")) else {
        return Ok(());
    };
    if !file.is_file() {
        return Ok(());
    }
    let config = git2::Config::open(&file).map_err(GitError::local)?;
    let mut entries = config.entries(None).map_err(GitError::local)?;
    while let Some(entry) = entries.next() {
        let entry = entry.map_err(GitError::local)?;
        let key = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        if let Some(name) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.rsplit_once('.'))
            .map(|(name, _)| name)
        {
            check_name(name)?;
        }
    }
    Ok(())
}

/// Refuses a submodule name that could lead outside `.git/modules/`, as git does.
fn check_name(name: &str) -> Result<(), GitError> {
    if name.is_empty() || name.split(['/', '\\']).any(|part| part == "..") {
        return Err(GitError::SubmoduleName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The URL a submodule is fetched from: `url` itself, or, when it starts with `./` or `../`, that
/// path taken from the parent's URL as `git submodule` does (each `../` drops one path
/// component of the parent's URL). A relative URL may not climb above the server's root.
fn resolve_url(url: &str, parent_url: &str) -> Result<String, GitError> {
    if url.is_empty() {
        return Err(GitError::SubmoduleUrl {
            url: String::new(),
            reason: "it has no URL".into(),
        });
    }
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Ok(url.to_string());
    }
    let climbs = || GitError::SubmoduleUrl {
        url: crate::redact::redact_url(url),
        reason: "its relative URL climbs above the parent's server".into(),
    };
    // Where the path starts: after `scheme://host`, or after `host:` in scp-like syntax.
    let root = match parent_url.find("://") {
        Some(i) => parent_url[i + 3..]
            .find('/')
            .map_or(parent_url.len(), |j| i + 3 + j),
        None => parent_url.find(':').map_or(0, |i| i + 1),
    };
    let mut base = parent_url.trim_end_matches('/').to_string();
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let cut = base.rfind('/').filter(|&i| i >= root).ok_or_else(climbs)?;
            base.truncate(cut);
        } else {
            break;
        }
    }
    if base.len() < root.saturating_sub(1) || base.ends_with(':') {
        return Err(climbs());
    }
    Ok(format!("{base}/{rest}"))
}

/// Refuses submodule URLs that reach the local filesystem from a remote parent, and transports
/// Periscope does not speak.
fn check_url(url: &str, parent_url: &str) -> Result<(), GitError> {
    let refuse = |reason: &str| {
        Err(GitError::SubmoduleUrl {
            url: crate::redact::redact_url(url),
            reason: reason.into(),
        })
    };
    if url.starts_with('-') || url.contains("::") {
        return refuse("it could be read as an option or a transport helper");
    }
    if is_local(url) && !is_local(parent_url) {
        return refuse(
            "a repository fetched from a server may not reach into the local filesystem",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_urls_like_git() {
        for (url, parent, expected) in [
            (
                "../leaf.git",
                "file:///srv/repos/top.git",
                "file:///srv/repos/leaf.git",
            ),
            (
                "./sub.git",
                "https://h.test/org/top.git/",
                "https://h.test/org/top.git/sub.git",
            ),
            (
                "../../other/x.git",
                "https://h.test/org/top.git",
                "https://h.test/other/x.git",
            ),
            (
                "../leaf.git",
                "git@h.test:org/top.git",
                "git@h.test:org/leaf.git",
            ),
            (
                "https://x.test/a.git",
                "file:///srv/top.git",
                "https://x.test/a.git",
            ),
        ] {
            assert_eq!(
                resolve_url(url, parent).unwrap(),
                expected,
                "{url} from {parent}"
            );
        }
        assert!(resolve_url("../../../evil.test/x.git", "https://h.test/org/top.git").is_err());
        assert!(resolve_url("../../x.git", "git@h.test:org/top.git").is_err());
    }

    #[test]
    fn refuses_names_that_climb_out_of_modules() {
        assert!(check_name("deps/leaf").is_ok());
        assert!(check_name("a..b").is_ok());
        for bad in ["../../modules/evil", "a/../../b", "..", "a\\..\\b", ""] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_local_urls_from_remote_parents() {
        assert!(check_url("file:///etc/repo", "https://h.test/r.git").is_err());
        assert!(check_url("/srv/other", "git://h.test/r").is_err());
        assert!(check_url("ext::sh -c evil", "git://h.test/r").is_err());
        assert!(check_url("file:///srv/sub", "file:///srv/super").is_ok());
        assert!(check_url("git://h.test/sub", "git://h.test/r").is_ok());
    }
}
