//! Image references (`REGISTRY/REPO:TAG`, `REGISTRY/REPO@sha256:…`), checked before any part
//! of one goes into a URL.

use std::fmt;
use std::str::FromStr;

use crate::Digest;
use crate::error::Error;

/// Where an image is: a registry, a repository in it, and a tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reference {
    /// `host[:port]`, as URLs name it (`registry-1.docker.io` for Docker Hub).
    pub registry: String,
    /// `team/app`.
    pub repository: String,
    /// The tag, `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest, when given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// A repository (`REGISTRY/REPO`, no tag) with `tag`.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The tag or digest, as the manifests endpoint takes it.
    pub(crate) fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// Whether the registry is on a loopback address, where plain HTTP is allowed.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => self.registry.split(':').next().unwrap_or(""),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference, Error> {
        let bad = |problem: &str| Error::BadReference {
            reference: s.chars().take(300).collect(),
            problem: problem.to_owned(),
        };
        if s.len() > 1024 {
            return Err(bad("longer than 1024 bytes"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| bad("bad digest"))?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path)
            }
            _ => ("registry-1.docker.io".to_owned(), rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (path, None),
        };
        let repository = if registry == "registry-1.docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if !registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
            || registry.is_empty()
        {
            return Err(bad("the registry is not host[:port]"));
        }
        if repository.is_empty()
            || repository.len() > 255
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            })
        {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - between slashes",
            ));
        }
        if let Some(tag) = &tag
            && (tag.is_empty()
                || tag.len() > 128
                || tag.starts_with(['.', '-'])
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return Err(bad("the tag must be at most 128 letters, digits and . _ -"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r: Reference = "localhost:5000/team/app:1.0".parse().unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert!(r.is_loopback());
        let r: Reference = "127.0.0.1:5000/app".parse().unwrap();
        assert_eq!(r.object(), "latest");
        assert!(r.is_loopback());
        let r: Reference =
            "ghcr.io/o/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap();
        assert!(r.digest.is_some() && r.tag.is_none() && !r.is_loopback());
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.to_string(), "registry-1.docker.io/library/busybox:latest");
        assert!("[::1]:5000/a:b".parse::<Reference>().unwrap().is_loopback());
        for bad in [
            "localhost:5000/App",
            "localhost:5000/a/../b",
            "localhost:5000/a:b/c d",
            "localhost:5000/a:-x",
            "local host:5000/a",
            "localhost:5000/a@sha256:zz",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad}");
        }
    }
}
