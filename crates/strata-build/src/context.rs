//! The build context a step runs in: workdir, user, environment and shell, changed by ops.

use strata_isolate::Capabilities;
use strata_spec::User;

use crate::key::KeyBuilder;

/// Where, as whom and how `run` steps execute. OBuilder's `Context`, minus the log and the
/// source dir (which belong to the whole build). The context a build ends in is recorded
/// with its result ([`Builder::image_context`](crate::Builder::image_context)), and is what
/// an image of that snapshot runs with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Context {
    pub workdir: String,
    pub user: User,
    /// In order; `env` replaces an existing name in place.
    pub env: Vec<(String, String)>,
    pub shell: Vec<String>,
    /// The engine image (its id) that supplies the OS, for drivers that mount the snapshot
    /// as state ([`Layout::MountedState`](strata_isolate::Layout::MountedState)); part of
    /// the key, so a rebuilt image invalidates the steps on it.
    pub image: Option<String>,
}

/// The `PATH` a fresh base gets (the image carries no environment of its own).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Context {
    /// The context a spec starts in under a driver: its default shell, workdir and user.
    pub fn for_driver(caps: &Capabilities) -> Context {
        let user = match &caps.default_user {
            strata_isolate::User::Unix { uid, gid } => User::Unix {
                uid: *uid,
                gid: *gid,
            },
            strata_isolate::User::Name(n) => User::Name(n.clone()),
        };
        let env = match caps.os {
            strata_isolate::TargetOs::Windows => vec![],
            _ => vec![("PATH".to_owned(), DEFAULT_PATH.to_owned())],
        };
        Context {
            workdir: caps.default_workdir.clone(),
            user,
            env,
            shell: caps.default_shell.clone(),
            image: None,
        }
    }

    /// Applies `(workdir PATH)`: relative paths join the previous workdir.
    pub fn set_workdir(&mut self, path: &str) {
        self.workdir = join(&self.workdir, path);
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.env.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The uid/gid files made for this user get (0:0 for named users, whose ids the
    /// mounted-state drivers map themselves).
    pub fn owner(&self) -> (u32, u32) {
        match self.user {
            User::Unix { uid, gid } => (uid, gid),
            User::Name(_) => (0, 0),
        }
    }

    pub(crate) fn hash_into(&self, k: &mut KeyBuilder) {
        k.str("workdir", &self.workdir);
        match &self.user {
            User::Unix { uid, gid } => k
                .str("user", "unix")
                .u64("uid", u64::from(*uid))
                .u64("gid", u64::from(*gid)),
            User::Name(n) => k.str("user", "name").str("name", n),
        };
        k.list("env", &self.env, |k, (n, v)| {
            k.str("name", n).str("value", v);
        });
        k.list("shell", &self.shell, |k, a| {
            k.str("arg", a);
        });
        // Only when there is one: keys of other drivers stay as they were.
        if let Some(image) = &self.image {
            k.str("image", image);
        }
    }
}

/// Whether `p` is absolute in either Unix (`/x`) or Windows (`C:\x`, `C:/x`, `\x`) form.
pub(crate) fn is_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || p.starts_with('\\')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'/' || b[2] == b'\\'))
}

/// Joins `rel` onto `base` unless it is absolute, keeping the base's separator style.
pub(crate) fn join(base: &str, rel: &str) -> String {
    if is_absolute(rel) {
        return rel.to_owned();
    }
    let sep = if base.contains('\\') && !base.contains('/') {
        '\\'
    } else {
        '/'
    };
    if base.ends_with(['/', '\\']) {
        format!("{base}{rel}")
    } else {
        format!("{base}{sep}{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_joins_relative_paths() {
        assert_eq!(join("/", "src"), "/src");
        assert_eq!(join("/src", "lib"), "/src/lib");
        assert_eq!(join("/src", "/abs"), "/abs");
        assert_eq!(join("C:/", "obuilder"), "C:/obuilder");
        assert_eq!(join(r"C:\x", "y"), r"C:\x\y");
        assert_eq!(join("/src", r"C:\y"), r"C:\y");
    }

    #[test]
    fn env_replaces_in_place() {
        let mut c = Context {
            workdir: "/".into(),
            user: User::Unix { uid: 0, gid: 0 },
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            shell: vec![],
            image: None,
        };
        c.set_env("A", "3");
        c.set_env("C", "4");
        assert_eq!(
            c.env,
            vec![
                ("A".into(), "3".into()),
                ("B".into(), "2".into()),
                ("C".into(), "4".into())
            ]
        );
    }
}
