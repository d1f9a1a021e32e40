//! Strata's Docker driver (`--sandbox docker`): each step runs as a container through the
//! Engine API (bollard), with Strata's store as the source of truth.
//!
//! Full-rootfs mode ([`Layout::Layers`], Linux engines): the parent snapshot becomes an
//! engine image by loading Strata's own layers (`POST /images/load`, a docker-archive
//! stream, see [`archive`]), cached per snapshot as `strata-snapshot:<id>` and labelled, so
//! the engine shares layers with the store instead of receiving a flattened copy. The step
//! runs in a container made from it (attached before it starts, so output streams live; a
//! non-zero exit, which bollard reports as an error, is read as the status it is). Its
//! changes come back through the engine's change list and the container's export, filtered
//! into a layer with OCI whiteouts by Strata's strict tar reader ([`changes`]), and the
//! builder records them as an ordinary snapshot.
//!
//! Every container is named after its job ([`strata_isolate::job_name`], which holds the
//! owning process) and labelled `strata`; [`Driver::cleanup`] removes those of dead
//! processes. A run removes its container however it ends (exit, failure, cancel, timeout).
//!
//! The runtime (tokio, one worker) and the connection are made on first use and owned by
//! the driver: nothing async leaves this crate. Windows containers are planned as data
//! ([`plan`]) and tested on every platform.

use std::io::Write;
use std::sync::OnceLock;

use strata_isolate::{
    Cancel, Capabilities, ChangesSink, Driver, Job, LayerChain, Layout, Limits, NetworkMode,
    Outcome, Plan, TargetOs, User,
};

pub mod archive;
pub mod changes;
mod client;
mod error;
pub mod plan;

pub use error::{Error, Result, SinkError};
pub use plan::{ContainerPlan, Isolation, Platform};

use client::Client;

/// The driver's name, as `--sandbox` takes it.
pub const NAME: &str = "docker";

/// How the Docker driver is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerOptions {
    /// How many containers may run at once.
    pub slots: usize,
    /// Memory, CPU and process limits of each container.
    pub limits: Limits,
    /// The containers the engine runs.
    pub platform: Platform,
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://host:2375`); `None`:
    /// `DOCKER_HOST`, else the local socket or named pipe.
    pub host: Option<String>,
    /// Labels added to every container, besides [`plan::LABEL`] and [`plan::JOB_LABEL`]:
    /// the store a container works for, a test's own id.
    pub labels: Vec<(String, String)>,
    /// Mounted-state mode when not empty (always for Windows containers): `(from IMAGE)`
    /// names an engine image that supplies the OS, and the snapshot, checked out on the
    /// host, is bind-mounted at these paths: at the only one as a whole, else its
    /// subdirectory `0`, `1`... at each.
    pub state_targets: Vec<String>,
}

impl DockerOptions {
    pub fn new(slots: usize) -> DockerOptions {
        DockerOptions {
            slots,
            limits: Limits::default(),
            platform: Platform::Linux,
            host: None,
            labels: Vec::new(),
            state_targets: Vec::new(),
        }
    }
}

/// Runs jobs as Docker containers; see the crate docs.
#[derive(Debug)]
pub struct DockerDriver {
    options: DockerOptions,
    capabilities: Capabilities,
    client: OnceLock<std::result::Result<Client, String>>,
}

impl DockerDriver {
    pub fn new(options: DockerOptions) -> DockerDriver {
        let capabilities = match options.platform {
            Platform::Linux if !options.state_targets.is_empty() => Capabilities {
                slots: options.slots,
                layout: Layout::MountedState {
                    targets: options.state_targets.clone(),
                },
                networks: vec![NetworkMode::None, NetworkMode::Host],
                unix_users: true,
                named_users: true,
                os: TargetOs::Linux,
                // The image's own shell, as Docker's RUN.
                default_shell: ["/bin/sh", "-c"].map(str::to_owned).to_vec(),
                default_workdir: "/".to_owned(),
                default_user: User::Unix { uid: 0, gid: 0 },
            },
            Platform::Linux => Capabilities {
                slots: options.slots,
                layout: Layout::Layers,
                networks: vec![NetworkMode::None, NetworkMode::Host],
                unix_users: true,
                named_users: true,
                os: TargetOs::Linux,
                // As runc's, so that a spec builds the same with either.
                default_shell: ["/usr/bin/env", "bash", "-c"].map(str::to_owned).to_vec(),
                default_workdir: "/".to_owned(),
                default_user: User::Unix { uid: 0, gid: 0 },
            },
            // Windows containers cannot be exported or committed while running: only the
            // state, bind-mounted, can be kept.
            Platform::Windows(_) => Capabilities {
                slots: options.slots,
                layout: Layout::MountedState {
                    targets: if options.state_targets.is_empty() {
                        vec![r"C:\Users\ContainerAdministrator\AppData\Local\opam".to_owned()]
                    } else {
                        options.state_targets.clone()
                    },
                },
                networks: vec![NetworkMode::None, NetworkMode::Host],
                unix_users: false,
                named_users: true,
                os: TargetOs::Windows,
                default_shell: plan::WINDOWS_SHELL.map(str::to_owned).to_vec(),
                default_workdir: r"C:\".to_owned(),
                default_user: User::Name("ContainerAdministrator".to_owned()),
            },
        };
        DockerDriver {
            options,
            capabilities,
            client: OnceLock::new(),
        }
    }

    pub fn options(&self) -> &DockerOptions {
        &self.options
    }

    /// The connection, made on first use.
    fn client(&self) -> Result<&Client> {
        self.client
            .get_or_init(|| {
                Client::connect(self.options.host.as_deref()).map_err(|e| error_chain(&e))
            })
            .as_ref()
            .map_err(|reason| Error::Protocol {
                what: reason.clone(),
            })
    }

    /// The engine image of `chain`'s snapshot, loaded from its layers unless cached.
    pub fn image_for(&self, chain: &dyn LayerChain) -> Result<String> {
        self.client()?.ensure_image(chain)
    }

    /// The names of the containers (of any process) carrying label `key` set to `value`.
    pub fn containers_labelled(&self, key: &str, value: &str) -> Result<Vec<String>> {
        self.client()?.strata_containers(Some((key, value)))
    }

    /// Reads `image` from the engine (`docker save`), giving each layer (an uncompressed tar,
    /// named by its path in the archive) to `on_layer` as it streams; returns the layer
    /// paths in order, the base's first. `strata import --docker` stores them as snapshots.
    pub fn save_image(
        &self,
        image: &str,
        on_layer: &mut dyn FnMut(
            &str,
            &mut dyn std::io::Read,
        ) -> std::result::Result<(), error::SinkError>,
    ) -> Result<Vec<String>> {
        self.client()?.save_image(image, on_layer)
    }

    /// Whether the engine has `image`.
    pub fn has_image(&self, image: &str) -> Result<bool> {
        self.client()?.has_image(image)
    }

    /// The engine's id of `image` (`sha256:<hex>`).
    pub fn image_id(&self, image: &str) -> Result<String> {
        self.client()?.image_id(image)
    }

    /// Removes the images made from snapshots that `keep` (given a snapshot id) refuses;
    /// returns their tags. Images not made by Strata are never touched.
    pub fn remove_images(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        self.client()?.remove_images(keep)
    }

    fn container_plan(plan: &Plan) -> strata_isolate::Result<ContainerPlan> {
        if plan.driver != NAME {
            return Err(strata_isolate::Error::Unsupported {
                driver: NAME.to_owned(),
                reason: format!("the plan was made by driver `{}`", plan.driver),
            });
        }
        serde_json::from_value(plan.detail.clone()).map_err(|source| {
            strata_isolate::Error::PlanDetail {
                driver: NAME.to_owned(),
                what: "the plan's container request is malformed",
                source,
            }
        })
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

impl Driver for DockerDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn plan(&self, job: &Job) -> strata_isolate::Result<Plan> {
        let mut container = plan::container_plan(job, self.options.platform, &self.options.limits)?;
        container.labels.extend(self.options.labels.iter().cloned());
        Ok(Plan {
            driver: NAME.to_owned(),
            job: job.clone(),
            files: Vec::new(),
            argv: Vec::new(),
            detail: serde_json::to_value(&container).expect("a plan serializes"),
        })
    }

    /// Runs a plan whose image is known (mounted state); jobs on layers go through
    /// [`Driver::run_on_layers`].
    fn run(
        &self,
        plan: &Plan,
        log: &mut dyn Write,
        cancel: &Cancel,
    ) -> strata_isolate::Result<Outcome> {
        let container = Self::container_plan(plan)?;
        let Some(image) = container.image.clone() else {
            return Err(strata_isolate::Error::Unsupported {
                driver: NAME.to_owned(),
                reason: "a job on a snapshot runs on its layers (run_on_layers)".to_owned(),
            });
        };
        // The subdirectories of several state targets; the checkout may not have them yet.
        for m in &container.mounts {
            let source = std::path::Path::new(&m.source);
            if source.starts_with(&plan.job.root) && source != plan.job.root {
                std::fs::create_dir_all(source).map_err(|e| strata_isolate::Error::Io {
                    op: "create the state directory",
                    path: source.to_path_buf(),
                    source: e,
                })?;
            }
        }
        Ok(self.client()?.run(&container, &image, log, cancel, None)?)
    }

    fn run_on_layers(
        &self,
        plan: &Plan,
        parent: &dyn LayerChain,
        log: &mut dyn Write,
        cancel: &Cancel,
        changes: &mut ChangesSink<'_>,
    ) -> strata_isolate::Result<Outcome> {
        let container = Self::container_plan(plan)?;
        let client = self.client()?;
        let image = client.ensure_image(parent)?;
        Ok(client.run(&container, &image, log, cancel, Some(changes))?)
    }

    fn resolve_image(&self, image: &str) -> strata_isolate::Result<String> {
        let client = self.client()?;
        if !client.has_image(image)? {
            return Err(Error::Unsupported {
                job: format!("(from {image})"),
                reason: format!(
                    "the engine has no image `{image}` (pull, load or build it first; \
                     Strata pulls nothing)"
                ),
            }
            .into());
        }
        Ok(client.image_id(image)?)
    }

    fn plan_on_image(&self, job: &Job, image: &str) -> strata_isolate::Result<Plan> {
        let Layout::MountedState { targets } = &self.capabilities.layout else {
            return self.plan(job);
        };
        let mut plan = self.plan(job)?;
        let mut container = Self::container_plan(&plan)?;
        container.image = Some(image.to_owned());
        container
            .mounts
            .extend(plan::state_mounts(job, targets, self.options.platform)?);
        plan.detail = serde_json::to_value(&container).expect("a plan serializes");
        Ok(plan)
    }

    fn cleanup(&self) -> strata_isolate::Result<Vec<String>> {
        let client = self.client()?;
        let mut removed = Vec::new();
        for name in client.strata_containers(None)? {
            let dead =
                strata_isolate::parse_job_name(&name).is_some_and(|(owner, _)| !owner.is_alive());
            if dead {
                client.remove_container(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn check(&self) -> strata_isolate::Result<()> {
        Ok(self.client()?.ping()?)
    }
}
