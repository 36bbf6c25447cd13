//! Which HTTP proxy a request goes through: one rule for every HTTP client of Periscope (git over
//! HTTP(S) and Git LFS, archive downloads, object stores), read from the environment as curl and
//! git read it.
//!
//! * `http_proxy` for `http://` URLs, `https_proxy` for `https://` URLs, `all_proxy` for both
//!   when the scheme's own is not set. Each name may be lowercase or uppercase; the lowercase one
//!   wins when both are set (curl's order), and an empty value counts as unset.
//! * `no_proxy` (or `NO_PROXY`): comma-separated hosts reached directly. `example.com` and
//!   `.example.com` match the host and every subdomain, an IP address or CIDR block matches
//!   addresses, `*` matches everything. Nothing is exempt by default, not even `localhost`.
//! * A proxy is an `http://` (or `https://`) URL; `host:port` means `http://host:port`, and a user
//!   and password in it are sent to the proxy only.
//!
//! The matching itself is hyper-util's (the matcher reqwest applies to its own environment), so
//! every client decides the same way. This module never prints; a proxy URL is shown redacted.

use std::sync::Arc;

use hyper_util::client::proxy::matcher::Matcher;

use crate::redact::redact_url;

/// The proxies the environment names. Invariant: `http` and `https` are URLs with an `http` or
/// `https` scheme, and `matcher` was built from exactly these settings.
#[derive(Clone)]
pub struct Proxies {
    http: Option<String>,
    https: Option<String>,
    no_proxy: String,
    matcher: Arc<Matcher>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("http", &self.http.as_deref().map(redact_url))
            .field("https", &self.https.as_deref().map(redact_url))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// A proxy setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable} `{shown}` is not an HTTP proxy URL: {reason}")]
pub struct ProxyError {
    pub variable: &'static str,
    /// The value, redacted.
    pub shown: String,
    pub reason: String,
}

impl Proxies {
    /// The proxies of this process's environment.
    pub fn from_env() -> Result<Proxies, ProxyError> {
        Proxies::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxies `get` names (a variable's value by its name).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Proxies, ProxyError> {
        let var = |lower: &'static str, upper: &'static str| {
            [lower, upper].into_iter().find_map(|name| {
                get(name)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
        };
        let all = var("all_proxy", "ALL_PROXY");
        let http = var("http_proxy", "HTTP_PROXY").or(all.clone());
        let https = var("https_proxy", "HTTPS_PROXY").or(all);
        let http = http.map(|(name, v)| checked(name, &v)).transpose()?;
        let https = https.map(|(name, v)| checked(name, &v)).transpose()?;
        let no_proxy = var("no_proxy", "NO_PROXY")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let mut builder = Matcher::builder().no(no_proxy.clone());
        if let Some(p) = &http {
            builder = builder.http(p.clone());
        }
        if let Some(p) = &https {
            builder = builder.https(p.clone());
        }
        Ok(Proxies {
            http,
            https,
            no_proxy,
            matcher: Arc::new(builder.build()),
        })
    }

    /// No proxy at all.
    pub fn none() -> Proxies {
        Proxies::from_vars(|_| None).unwrap_or_else(|_| unreachable!("no variable, no error"))
    }

    /// The proxy a request to `url` goes through, or `None` when it goes directly.
    pub fn proxy_for(&self, url: &str) -> Option<String> {
        let uri: http::Uri = url.parse().ok()?;
        self.matcher
            .intercept(&uri)
            .map(|intercept| intercept.uri().to_string())
    }

    /// The proxy for requests with `scheme` (`http` or `https`) to hosts outside `no_proxy`.
    pub fn for_scheme(&self, scheme: &str) -> Option<&str> {
        match scheme {
            "http" => self.http.as_deref(),
            "https" => self.https.as_deref(),
            _ => None,
        }
    }

    /// The `no_proxy` list as given (empty when unset).
    pub fn no_proxy(&self) -> &str {
        &self.no_proxy
    }

    /// The host a request to `url` must resolve first: the proxy's, when it goes through one.
    pub fn host_to_resolve(&self, url: &str) -> Option<String> {
        let target = self.proxy_for(url).unwrap_or_else(|| url.to_string());
        let parsed = url::Url::parse(&target).ok()?;
        parsed.host_str().map(str::to_string)
    }

    /// `builder` following this rule, and only it (reqwest's own reading of the environment, whose
    /// order of names differs, is turned off).
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.http.is_none() && self.https.is_none() {
            return builder.no_proxy();
        }
        let rule = self.clone();
        builder.no_proxy().proxy(reqwest::Proxy::custom(move |url| {
            let uri: http::Uri = url.as_str().parse().ok()?;
            rule.matcher.intercept(&uri)?;
            // The URL as configured: the matcher's own copy has the credentials taken out.
            url::Url::parse(rule.for_scheme(url.scheme())?).ok()
        }))
    }
}

/// `value` as a proxy URL for `variable`: `host:port` gains `http://`; other schemes than http and
/// https are refused (no SOCKS support is built in).
fn checked(variable: &'static str, value: &str) -> Result<String, ProxyError> {
    let url = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let refuse = |reason: &str| ProxyError {
        variable,
        shown: redact_url(&url),
        reason: reason.into(),
    };
    let parsed = url::Url::parse(&url).map_err(|e| refuse(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse("only http:// and https:// proxies are supported"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse("it names no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(vars: &[(&str, &str)]) -> Proxies {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Proxies::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap()
    }

    #[test]
    fn each_scheme_has_its_variable_lowercase_first_and_all_proxy_fills_in() {
        let p = proxies(&[
            ("http_proxy", "proxy.test:3128"),
            ("HTTP_PROXY", "http://upper.test:1"),
            ("HTTPS_PROXY", "http://secure.test:8080"),
        ]);
        assert_eq!(
            p.proxy_for("http://git.test/r.git").as_deref(),
            Some("http://proxy.test:3128/")
        );
        assert_eq!(
            p.proxy_for("https://files.test/a.tgz").as_deref(),
            Some("http://secure.test:8080/")
        );
        let p = proxies(&[("ALL_PROXY", "http://all.test:1"), ("http_proxy", " ")]);
        assert_eq!(
            p.proxy_for("http://h.test/").as_deref(),
            Some("http://all.test:1/")
        );
        assert_eq!(
            p.proxy_for("https://h.test/").as_deref(),
            Some("http://all.test:1/")
        );
        assert_eq!(proxies(&[]).proxy_for("https://h.test/"), None);
    }

    #[test]
    fn no_proxy_exempts_hosts_domains_addresses_and_everything() {
        let p = proxies(&[
            ("https_proxy", "http://p.test:1"),
            ("NO_PROXY", "internal.test, .corp.test,10.0.0.0/8"),
        ]);
        for direct in [
            "https://internal.test/x",
            "https://git.internal.test/x",
            "https://corp.test/x",
            "https://10.1.2.3/x",
        ] {
            assert_eq!(p.proxy_for(direct), None, "{direct}");
        }
        assert!(p.proxy_for("https://notinternal.test/x").is_some());
        assert!(
            p.proxy_for("https://127.0.0.1:9/x").is_some(),
            "loopback is not exempt"
        );
        let p = proxies(&[("https_proxy", "http://p.test:1"), ("no_proxy", "*")]);
        assert_eq!(p.proxy_for("https://anything.test/"), None);
    }

    #[test]
    fn the_host_to_resolve_is_the_proxy_when_there_is_one() {
        let p = proxies(&[("https_proxy", "http://u:pw@proxy.test:3128")]);
        assert_eq!(
            p.host_to_resolve("https://h.test/x").as_deref(),
            Some("proxy.test")
        );
        assert_eq!(
            p.host_to_resolve("http://h.test/x").as_deref(),
            Some("h.test")
        );
    }

    #[test]
    fn unusable_proxies_are_refused_without_their_password() {
        let vars = [("https_proxy", "socks5://u:hunter2@p.test:1080")];
        let err = Proxies::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap_err();
        assert_eq!(err.variable, "https_proxy");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
