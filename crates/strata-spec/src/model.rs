//! The spec model: what an OBuilder spec says, as plain data (serde for embedders).

use serde::{Deserialize, Serialize};

/// A build spec: earlier stages, the base image, then the ops run on it in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Spec {
    /// `(build NAME spec)` stages, in source order; they precede `from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// `(from IMAGE)`.
    pub from: String,
    /// The ops after `from`.
    #[serde(default)]
    pub ops: Vec<Op>,
}

/// A named stage whose result a later `copy (from (build NAME))` reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub spec: Spec,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `(comment TEXT)`: printed, changes nothing.
    Comment(String),
    /// `(workdir PATH)`: relative paths join the previous workdir.
    Workdir(String),
    /// `(shell ARG...)`: the argv prefix later `run` steps use.
    Shell(Vec<String>),
    Run(Run),
    Copy(Copy),
    User(User),
    /// `(env NAME VALUE)`.
    Env {
        name: String,
        value: String,
    },
}

/// `(run (cache ...) (network ...) (secrets ...) (shell CMD))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Run {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Mount>,
    /// Network names; `[]` means none, `["host"]` the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Mount>,
    /// The command, passed as the last argument after the context's shell.
    pub shell: String,
}

/// A cache or secret mount: `(ID (target PATH) [(buildkit_options (K V)...)])`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    pub id: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buildkit_options: Vec<(String, String)>,
}

/// `(copy [(from context|(build NAME))] (src SRC...) (dst DST) [(exclude NAME...)])`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Copy {
    #[serde(default)]
    pub from: CopyFrom,
    pub src: Vec<String>,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Where a `copy` reads from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFrom {
    /// The build context directory.
    #[default]
    Context,
    /// The result of the earlier stage of this name.
    Build(String),
}

/// `(user (uid N) (gid N))` or `(user (name NAME))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum User {
    Unix {
        uid: u32,
        gid: u32,
    },
    /// A user name (Windows, FreeBSD).
    Name(String),
}
