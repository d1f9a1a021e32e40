//! The engine connection: a small tokio runtime owned by the driver, and the Engine API
//! calls it runs on it (image load, container lifecycle, changes, sweep). Everything here
//! blocks the calling thread; nothing async leaks out of the crate.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigIsolationEnum, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, ImportImageOptions, ListContainersOptions,
    ListImagesOptions, RemoveContainerOptions, RemoveImageOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use strata_isolate::{Cancel, ChangesSink, LayerChain, Outcome};

use crate::archive::{ArchiveLayer, image_config, write_archive};
use crate::changes::{ChangeSet, Kind, filter};
use crate::plan::{ContainerPlan, LABEL, SNAPSHOT_LABEL, snapshot_image};
use crate::{Error, Result};

/// How long one API request may take before its response starts: long, since loading a
/// multi-GB image is one request.
const TIMEOUT: Duration = Duration::from_secs(3600);

/// How often a running job checks for cancellation and its deadline.
const POLL: Duration = Duration::from_millis(50);

/// A connected engine.
#[derive(Debug)]
pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    /// Where the engine is, for messages.
    pub(crate) address: String,
}

impl Client {
    /// Connects through `host` (else `DOCKER_HOST`, else the local socket or named pipe) and
    /// negotiates the API version down to what the engine speaks.
    pub(crate) fn connect(host: Option<&str>) -> Result<Client> {
        let address = host
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| {
                if cfg!(windows) {
                    "npipe:////./pipe/docker_engine".to_owned()
                } else {
                    "unix:///var/run/docker.sock".to_owned()
                }
            });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("strata-docker")
            .enable_all()
            .build()
            .map_err(Error::io("start the docker driver's runtime"))?;
        let connect_err = |source| Error::Connect {
            address: address.clone(),
            source,
        };
        let docker = rt.block_on(async {
            let docker = match host {
                Some(h) if h.starts_with("unix://") || h.starts_with('/') => {
                    Docker::connect_with_socket(h, TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                }
                Some(h) => {
                    Docker::connect_with_http(h, TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                }
                None => Docker::connect_with_defaults(),
            }
            .map_err(connect_err)?
            .with_timeout(TIMEOUT);
            docker.negotiate_version().await.map_err(connect_err)
        })?;
        Ok(Client {
            rt,
            docker,
            address,
        })
    }

    pub(crate) fn ping(&self) -> Result<()> {
        self.rt
            .block_on(self.docker.ping())
            .map(drop)
            .map_err(|source| Error::Connect {
                address: self.address.clone(),
                source,
            })
    }

    /// Whether the engine has an image by this name or id.
    pub(crate) fn has_image(&self, image: &str) -> Result<bool> {
        match self.rt.block_on(self.docker.inspect_image(image)) {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(source) => Err(Error::Api {
                what: format!("inspect image {image}"),
                source,
            }),
        }
    }

    /// The engine's id of `image` (`sha256:...`).
    pub(crate) fn image_id(&self, image: &str) -> Result<String> {
        let inspect = self
            .rt
            .block_on(self.docker.inspect_image(image))
            .map_err(Error::api(format!("inspect image {image}")))?;
        inspect.id.ok_or_else(|| Error::Protocol {
            what: format!("image {image} has no id"),
        })
    }

    /// The image of `chain`'s snapshot, loaded from its layers unless the engine has it.
    /// Layers the engine holds already, as an ancestor's image, are not sent again.
    pub(crate) fn ensure_image(&self, chain: &dyn LayerChain) -> Result<String> {
        let tag = snapshot_image(chain.snapshot());
        if self.has_image(&tag)? {
            return Ok(tag);
        }
        let n = chain.layers().len();
        let mut held = 0;
        for depth in (1..n).rev() {
            if let Some(ancestor) = chain.ancestor(depth)
                && self.has_image(&snapshot_image(&ancestor))?
            {
                held = depth;
                break;
            }
        }
        match self.load(chain, &tag, held) {
            // The ancestor's image went away meanwhile, and its layers with it: send all.
            Err(_) if held > 0 => self.load(chain, &tag, 0)?,
            other => other?,
        }
        Ok(tag)
    }

    /// Loads `chain` as image `tag` through `POST /images/load`, sending the layers from
    /// `held` on (the engine has those below).
    fn load(&self, chain: &dyn LayerChain, tag: &str, held: usize) -> Result<()> {
        let diff_ids = (0..chain.layers().len())
            .map(|i| chain.diff_id(i))
            .collect::<io::Result<Vec<_>>>()
            .map_err(Error::io(format!(
                "compute the diff ids of snapshot {}",
                chain.snapshot()
            )))?;
        let config = image_config(
            &diff_ids,
            &[(LABEL, "1"), (SNAPSHOT_LABEL, chain.snapshot())],
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
        let (diff_ids, config) = (&diff_ids, &config);
        std::thread::scope(|s| {
            // Owns the sender: the body ends when the writer is done.
            let writing = s.spawn(move || {
                let mut layers = Vec::new();
                for (i, diff_id) in diff_ids.iter().enumerate() {
                    let data = if i < held {
                        None
                    } else {
                        Some((chain.layers()[i].1, chain.open(i)?))
                    };
                    layers.push(ArchiveLayer {
                        diff_id: diff_id.clone(),
                        data,
                    });
                }
                let mut out = ChannelWriter::new(tx.clone());
                let written =
                    write_archive(&mut out, layers, config, tag).and_then(|()| out.flush());
                if let Err(e) = &written {
                    // The engine must not take a truncated archive for a whole one.
                    let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                written
            });
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let loaded = self.rt.block_on(async {
                let mut progress = self.docker.import_image_stream(
                    ImportImageOptions {
                        quiet: true,
                        ..Default::default()
                    },
                    body,
                    None,
                );
                while let Some(info) = progress.next().await {
                    info?;
                }
                Ok::<_, BollardError>(())
            });
            let written = writing
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")));
            written.map_err(Error::io(format!("stream snapshot {}", chain.snapshot())))?;
            loaded.map_err(Error::api(format!("load image {tag}")))
        })?;
        if !self.has_image(tag)? {
            return Err(Error::Protocol {
                what: format!("the engine loaded the archive of {tag} but has no such image"),
            });
        }
        Ok(())
    }

    /// Runs `plan` in a container of `image`, streaming its output to `log`; with `changes`,
    /// hands the container's changes over once it exited with status 0. The container is
    /// removed whatever happens.
    pub(crate) fn run(
        &self,
        plan: &ContainerPlan,
        image: &str,
        log: &mut dyn Write,
        cancel: &Cancel,
        changes: Option<&mut ChangesSink<'_>>,
    ) -> Result<Outcome> {
        let result = self.run_inner(plan, image, log, cancel, changes);
        let removed = self.remove_container(&plan.name);
        let outcome = result?;
        removed?;
        Ok(outcome)
    }

    fn run_inner(
        &self,
        plan: &ContainerPlan,
        image: &str,
        log: &mut dyn Write,
        cancel: &Cancel,
        changes: Option<&mut ChangesSink<'_>>,
    ) -> Result<Outcome> {
        let name = plan.name.as_str();
        let body = create_body(plan, image);
        let stopped = |source| Error::EngineStopped {
            container: name.to_owned(),
            source,
        };
        let outcome = self.rt.block_on(async {
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    }),
                    body,
                )
                .await
                .map_err(Error::api(format!("create container {name} from {image}")))?;
            // Attached before it starts, or a fast job's output is lost.
            let mut attached = self
                .docker
                .attach_container(
                    name,
                    Some(AttachContainerOptions {
                        stream: true,
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(Error::api(format!("attach to container {name}")))?;
            self.docker
                .start_container(name, None)
                .await
                .map_err(Error::api(format!("start container {name}")))?;
            let mut tick = tokio::time::interval(POLL);
            loop {
                tokio::select! {
                    frame = attached.output.next() => match frame {
                        Some(Ok(
                            LogOutput::StdOut { message }
                            | LogOutput::StdErr { message }
                            | LogOutput::Console { message },
                        )) => log
                            .write_all(&message)
                            .map_err(Error::io("write the job's log"))?,
                        Some(Ok(LogOutput::StdIn { .. })) => {}
                        Some(Err(e)) => return Err(stopped(e)),
                        None => break,
                    },
                    _ = tick.tick() => {
                        if let Some(why) = cancel.wait(Duration::ZERO) {
                            return Ok(why);
                        }
                    }
                }
            }
            let mut waiting = self.docker.wait_container(
                name,
                Some(WaitContainerOptions {
                    condition: "not-running".to_owned(),
                }),
            );
            // A non-zero exit arrives as an error carrying the code.
            match waiting.next().await {
                Some(Ok(r)) => Ok(exit(r.status_code)),
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(exit(code)),
                Some(Err(e)) => Err(stopped(e)),
                None => Err(Error::Protocol {
                    what: format!("no exit status for container {name}"),
                }),
            }
        })?;
        if let (Outcome::Exited(0), Some(sink)) = (outcome, changes) {
            self.changes(plan, sink)?;
        }
        Ok(outcome)
    }

    /// Hands the changes of the stopped container `plan.name` to `sink` as a layer.
    fn changes(&self, plan: &ContainerPlan, sink: &mut ChangesSink<'_>) -> Result<()> {
        let name = plan.name.as_str();
        let list = self
            .rt
            .block_on(self.docker.container_changes(name))
            .map_err(Error::api(format!("list the changes of container {name}")))?
            .unwrap_or_default();
        let set = ChangeSet::new(
            list.iter().map(|c| {
                let kind = match c.kind {
                    bollard::models::ChangeType::_0 => Kind::Modified,
                    bollard::models::ChangeType::_1 => Kind::Added,
                    bollard::models::ChangeType::_2 => Kind::Deleted,
                };
                (c.path.as_str(), kind)
            }),
            &plan.exclude,
        );
        let docker = self.docker.clone();
        let container = name.to_owned();
        let (exporting, rx) =
            self.stream(async move { docker.export_container(&container).boxed() });
        let (reader, writer) = io::pipe().map_err(Error::io("create a pipe"))?;
        let result = std::thread::scope(|s| {
            let filtering = s.spawn(move || filter(rx, &set, writer, name));
            let mut reader = reader;
            let taken = sink(&mut reader).map_err(|source| Error::Sink {
                container: name.to_owned(),
                source,
            });
            // Unblocks the filter if the sink stopped reading early.
            drop(reader);
            let filtered = filtering.join().unwrap_or_else(|_| {
                Err(Error::Protocol {
                    what: "the change filter panicked".to_owned(),
                })
            });
            // The filter's error explains a sink's broken stream better.
            filtered.and(taken)
        });
        exporting.abort();
        result
    }

    /// Streams `docker save` of `image` through [`crate::archive::read_archive`].
    pub(crate) fn save_image(
        &self,
        image: &str,
        on_layer: &mut dyn FnMut(
            &str,
            &mut dyn Read,
        ) -> std::result::Result<(), crate::error::SinkError>,
    ) -> Result<Vec<String>> {
        if !self.has_image(image)? {
            return Err(Error::Protocol {
                what: format!("the engine has no image `{image}`"),
            });
        }
        let docker = self.docker.clone();
        let name = image.to_owned();
        let (saving, rx) = self.stream(async move { docker.export_image(&name).boxed() });
        let result =
            crate::archive::read_archive(rx, &format!("the saved image {image}"), on_layer);
        saving.abort();
        result
    }

    /// Runs the response body `make` returns on the runtime, handing it over chunk by
    /// chunk to the returned reader; abort the task once done with the reader.
    fn stream<F>(&self, make: F) -> (tokio::task::JoinHandle<()>, ChannelReader)
    where
        F: std::future::Future<
                Output = futures_util::stream::BoxStream<
                    'static,
                    std::result::Result<Bytes, BollardError>,
                >,
            > + Send
            + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Bytes>>(16);
        let task = self.rt.spawn(async move {
            let mut stream = make.await;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(io::Error::other);
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    break;
                }
            }
        });
        (task, ChannelReader::new(rx))
    }

    /// Removes container `name` (and its anonymous volumes), running or not; a container
    /// that does not exist is fine.
    pub(crate) fn remove_container(&self, name: &str) -> Result<()> {
        match self.rt.block_on(self.docker.remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )) {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Already being removed (by a concurrent sweep, say).
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(Error::Api {
                what: format!("remove container {name}"),
                source: e,
            }),
        }
    }

    /// The names of the containers labelled as Strata's (and with label `key=value`).
    pub(crate) fn strata_containers(&self, label: Option<(&str, &str)>) -> Result<Vec<String>> {
        let mut filters = HashMap::new();
        let mut labels = vec![LABEL.to_owned()];
        labels.extend(label.map(|(k, v)| format!("{k}={v}")));
        filters.insert("label".to_owned(), labels);
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            })))
            .map_err(Error::api("list containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| c.names?.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect())
    }

    /// Removes every image made from a snapshot (labelled [`SNAPSHOT_LABEL`]) whose
    /// snapshot `keep` refuses; returns their tags.
    pub(crate) fn remove_images(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_owned(), vec![SNAPSHOT_LABEL.to_owned()]);
        let list = self
            .rt
            .block_on(self.docker.list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            })))
            .map_err(Error::api("list images"))?;
        let mut removed = Vec::new();
        for image in list {
            let Some(snapshot) = image.labels.get(SNAPSHOT_LABEL) else {
                continue;
            };
            if keep(snapshot) {
                continue;
            }
            let tag = snapshot_image(snapshot);
            match self.rt.block_on(self.docker.remove_image(
                &image.id,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )) {
                Ok(_)
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => removed.push(tag),
                Err(e) => {
                    return Err(Error::Api {
                        what: format!("remove image {tag}"),
                        source: e,
                    });
                }
            }
        }
        Ok(removed)
    }
}

fn exit(code: i64) -> Outcome {
    Outcome::Exited(i32::try_from(code).unwrap_or(i32::MAX))
}

/// The create request for `plan` on `image`.
fn create_body(plan: &ContainerPlan, image: &str) -> ContainerCreateBody {
    let mounts = plan
        .mounts
        .iter()
        .map(|m| Mount {
            source: Some(m.source.clone()),
            target: Some(m.target.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        mounts: Some(mounts),
        network_mode: Some(plan.network_mode.clone()),
        isolation: plan.isolation.as_deref().map(|i| match i {
            "hyperv" => HostConfigIsolationEnum::HYPERV,
            _ => HostConfigIsolationEnum::PROCESS,
        }),
        memory: plan.memory,
        memory_swap: plan.memory,
        nano_cpus: plan.nano_cpus,
        pids_limit: plan.pids_limit,
        // Removed by the driver once the changes are read, never by the engine.
        auto_remove: Some(false),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(plan.cmd.clone()),
        entrypoint: Some(Vec::new()),
        user: Some(plan.user.clone()),
        env: Some(plan.env.clone()),
        working_dir: Some(plan.working_dir.clone()),
        hostname: plan.hostname.clone(),
        labels: Some(plan.labels.clone().into_iter().collect()),
        network_disabled: Some(plan.network_mode == "none"),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Writes into a channel the runtime reads a request body from, in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl ChannelWriter {
    fn new(tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading"))
    }
}

/// Reads a response body the runtime sends chunk by chunk.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.chunk = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}
