//! The on-disk store: layer blobs named by their id, published atomically, verified on read.
//!
//! See the crate documentation for the layout. Invariants:
//! - a blob at `blobs-v1/blake3/<aa>/<id>` is complete and was fsynced before it got there;
//! - its uncompressed content hashes to `<id>` (checked on every read, and by [`Store::verify`]);
//! - files in `tmp/` belong to a writer that holds an exclusive lock on them; an unlocked one
//!   older than a minute was left by a crash and is swept.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::Digest;

use crate::create::{self, Change, CreateOptions, LayerInfo};
use crate::extract::{self, ExtractOptions, ExtractReport};
use crate::frames::SeekTable;
use crate::tar::Limits;
use crate::{Error, LayerId, Result};

/// The layout this build reads and writes.
const LAYOUT: &str = "strata-cas-v1";
const BLOBS_DIR: &str = "blobs-v1/blake3";
const TMP_DIR: &str = "tmp";
/// Unlocked temp files younger than this may belong to a writer that has not locked yet.
const STALE_TMP_AGE: Duration = Duration::from_secs(60);

/// A content-addressed store of layers in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    /// The layer id.
    pub id: LayerId,
    /// Bytes on disk.
    pub compressed_size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// zstd frames.
    pub frames: u32,
    /// Where the blob is.
    pub path: PathBuf,
}

/// A blob that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptBlob {
    /// The id it is stored under.
    pub id: LayerId,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs checked.
    pub checked: u64,
    /// Uncompressed bytes hashed.
    pub bytes: u64,
    /// Blobs that are corrupt.
    pub corrupt: Vec<CorruptBlob>,
}

/// The OCI (sha256) identities of a layer, for registries and OCI image configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OciDigests {
    /// sha256 of the uncompressed tar (the image config's `diff_id`).
    pub diff_id: String,
    /// sha256 of the blob as stored (the manifest's layer `digest`).
    pub digest: String,
    /// Size of the blob as stored.
    pub size: u64,
}

impl Store {
    /// Opens the store at `root`, creating it if needed, and sweeps temp files left by
    /// crashed writers. The root is made private to its owner ([`private_dir`]): layers hold
    /// whole root filesystems, setuid binaries and device nodes included.
    pub fn open(root: &Path) -> Result<Store> {
        refuse_foreign_dir(root)?;
        private_dir(root)?;
        let store = Store {
            root: root.to_path_buf(),
            blobs: root.join(BLOBS_DIR),
            tmp: root.join(TMP_DIR),
        };
        for dir in [&store.blobs, &store.tmp] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create the store directory", dir, e))?;
        }
        let layout = root.join("layout");
        match fs::read_to_string(&layout) {
            Ok(found) if found.trim() == LAYOUT => {}
            Ok(found) => {
                return Err(Error::StoreVersion {
                    path: root.to_path_buf(),
                    found: found.trim().to_owned(),
                    expected: LAYOUT,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (mut file, tmp_path) = store.temp_file()?;
                file.write_all(format!("{LAYOUT}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io("write", &tmp_path, e))?;
                // Concurrent openers write the same content; the last rename wins harmlessly.
                fs::rename(&tmp_path, &layout)
                    .map_err(|e| Error::io("rename into place", &layout, e))?;
            }
            Err(e) => return Err(Error::io("read", &layout, e)),
        }
        store.sweep_tmp()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob for `id` lives (whether or not it exists).
    pub fn blob_path(&self, id: &LayerId) -> PathBuf {
        let hex = id.to_hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Whether the store has `id`.
    pub fn contains(&self, id: &LayerId) -> bool {
        self.blob_path(id).is_file()
    }

    /// Stores the tree under `dir` as a layer.
    pub fn put_dir(&self, dir: &Path, opts: &CreateOptions) -> Result<LayerInfo> {
        self.write_blob(|out| create::create_from_dir(dir, out, opts))
    }

    /// Stores the listed changes of the tree under `dir` as a layer.
    pub fn put_changes(
        &self,
        dir: &Path,
        changes: &[Change],
        opts: &CreateOptions,
    ) -> Result<LayerInfo> {
        self.write_blob(|out| create::create_from_changes(dir, changes, out, opts))
    }

    /// Stores an uncompressed tar stream as a layer, keeping its bytes (so its id is its
    /// OCI diff_id's blake3 counterpart) after validating every header.
    pub fn put_tar<R: Read>(
        &self,
        input: R,
        opts: &CreateOptions,
        limits: &Limits,
    ) -> Result<LayerInfo> {
        self.write_blob(|out| create::compress_tar(input, out, opts, limits))
    }

    /// Stores a file already in the blob format (zstd frames and a seek table that describes
    /// them, as a store writes blobs: one another Strata pushed to a registry, say) as it is,
    /// without recompressing it. The frames are decompressed once, through `wrap` (which may
    /// check the stream and fail its read), every tar header is validated and the content is
    /// hashed; a failure stores nothing. `Ok(None)` when the file is not in that format (no
    /// seek table, or one that does not account for the whole file): store it with
    /// [`put_tar`](Self::put_tar) instead.
    pub fn put_framed(
        &self,
        path: &Path,
        limits: &Limits,
        wrap: impl FnOnce(Box<dyn Read + Send>) -> Box<dyn Read + Send>,
    ) -> Result<Option<LayerInfo>> {
        let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let Ok(Some(table)) = SeekTable::read_from(&mut file) else {
            return Ok(None);
        };
        if table.compressed_size().checked_add(table.encoded_len()) != Some(len) {
            return Ok(None);
        }
        let decoded = wrap(extract::zstd_reader(file, path)?);
        let mut counted = Counted {
            inner: decoded,
            hasher: blake3::Hasher::new(),
            len: 0,
        };
        let entries = crate::tar::TarReader::new(&mut counted, limits).validate_layer()?;
        if counted.len != table.uncompressed_size() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                problem: format!(
                    "the seek table says {} uncompressed bytes, the frames hold {}",
                    table.uncompressed_size(),
                    counted.len
                ),
            });
        }
        let id = LayerId::from(counted.hasher.finalize());
        let info = self.write_blob(|out| {
            let mut src = File::open(path).map_err(|e| Error::io("open", path, e))?;
            io::copy(&mut src, out).map_err(|e| Error::io("copy", path, e))?;
            Ok(LayerInfo {
                id,
                uncompressed_size: counted.len,
                compressed_size: len,
                frames: table.frames.len() as u32,
                entries,
            })
        })?;
        Ok(Some(info))
    }

    /// [`put_framed`](Self::put_framed) for a stream (a download): the bytes go to the new
    /// blob as they arrive while a streaming decoder validates and hashes the tar they hold,
    /// so nothing waits for the whole file. Fails, storing nothing, unless the stream ends with a seek
    /// table that accounts for all of it (it is not a blob another store wrote).
    pub fn put_framed_stream<R: Read>(
        &self,
        input: R,
        what: &str,
        limits: &Limits,
    ) -> Result<LayerInfo> {
        let stream_err = |source: io::Error| Error::Stream {
            what: what.to_owned(),
            source,
        };
        let not_framed = |problem: String| Error::Format {
            path: PathBuf::from(what),
            problem,
        };
        self.write_blob(|out| {
            let mut tee = Tee { input, out, len: 0 };
            let mut decoder = zstd::stream::read::Decoder::with_buffer(
                io::BufReader::with_capacity(1 << 20, &mut tee),
            )
            .map_err(stream_err)?;
            // zstd's default decoding window limit, said explicitly (see `zstd_reader`).
            decoder.window_log_max(27).map_err(stream_err)?;
            let mut counted = Counted {
                inner: &mut decoder,
                hasher: blake3::Hasher::new(),
                len: 0,
            };
            let entries = crate::tar::TarReader::new(&mut counted, limits).validate_layer()?;
            let (hash, uncompressed) = (counted.hasher.finalize(), counted.len);
            // Whatever follows the last frame (the seek table) goes to the blob too.
            let mut rest = decoder.finish();
            io::copy(&mut rest, &mut io::sink()).map_err(stream_err)?;
            drop(rest);
            let len = tee.len;
            // The seek table is read back from the blob's file, which holds the stream and
            // nothing else, instead of keeping a copy of the stream's end on the way.
            out.flush().map_err(stream_err)?;
            let mut file: &File = out.inner.get_ref();
            let table = SeekTable::read_from(&mut file);
            io::Seek::seek(&mut file, io::SeekFrom::End(0)).map_err(stream_err)?;
            let table = table
                .ok()
                .flatten()
                .ok_or_else(|| not_framed("ends without a seek table".into()))?;
            if table.compressed_size().checked_add(table.encoded_len()) != Some(len)
                || table.uncompressed_size() != uncompressed
            {
                return Err(not_framed(format!(
                    "its seek table does not describe it ({len} bytes, {uncompressed} \
                     uncompressed)"
                )));
            }
            Ok(LayerInfo {
                id: LayerId::from(hash),
                uncompressed_size: uncompressed,
                compressed_size: len,
                frames: table.frames.len() as u32,
                entries,
            })
        })
    }

    /// Stores a layer file (plain tar, zstd or gzip).
    pub fn put_file(&self, path: &Path) -> Result<LayerInfo> {
        self.put_file_with(path, &CreateOptions::default())
    }

    /// [`put_file`](Store::put_file) with these options (a progress counter, say, which
    /// counts the uncompressed tar).
    pub fn put_file_with(&self, path: &Path, opts: &CreateOptions) -> Result<LayerInfo> {
        let input = extract::open_layer_file(path)?;
        self.put_tar(input, opts, &Limits::default())
            .map_err(|e| match e {
                Error::Stream { what, source } => Error::Stream {
                    what: format!("{} ({what})", path.display()),
                    source,
                },
                other => other,
            })
    }

    /// Writes a blob through `write` into a locked temp file, then publishes it under its id.
    /// A failed write to the temp file (a full disk) is reported against it, whatever the
    /// writer was reading when it met the failure.
    fn write_blob(
        &self,
        write: impl FnOnce(&mut BlobWriter<BufWriter<&File>>) -> Result<LayerInfo>,
    ) -> Result<LayerInfo> {
        let (file, tmp_path) = self.temp_file()?;
        let guard = TempGuard(&tmp_path);
        file.lock().map_err(|e| Error::io("lock", &tmp_path, e))?;
        let mut out = BlobWriter {
            inner: BufWriter::with_capacity(1 << 20, &file),
            failed: None,
        };
        let info = match write(&mut out) {
            Ok(info) => info,
            Err(e) => {
                return Err(match out.failed.take() {
                    Some(source) => Error::io("write the new layer", &tmp_path, source),
                    None => e,
                });
            }
        };
        out.flush()
            .map_err(|e| Error::io("write the new layer", &tmp_path, e))?;
        drop(out);
        let target = self.blob_path(&info.id);
        if target.is_file() {
            // Already stored (same uncompressed bytes); report the blob that is kept.
            let kept = self.stat(&info.id)?;
            return Ok(LayerInfo {
                compressed_size: kept.compressed_size,
                frames: kept.frames,
                ..info
            });
        }
        file.sync_all()
            .map_err(|e| Error::io("sync", &tmp_path, e))?;
        let shard = target.parent().expect("blob paths have a shard directory");
        fs::create_dir_all(shard).map_err(|e| Error::io("create", shard, e))?;
        fs::rename(&tmp_path, &target).map_err(|e| Error::io("rename into place", &target, e))?;
        std::mem::forget(guard);
        sync_dir(shard)?;
        Ok(info)
    }

    fn temp_file(&self) -> Result<(File, PathBuf)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{}-{nanos}-{}.partial",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.tmp.join(name);
        // Readable too: a streamed blob's seek table is read back from it.
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        Ok((file, path))
    }

    /// Removes temp files that no live writer holds. Returns how many.
    pub fn sweep_tmp(&self) -> Result<u64> {
        let mut swept = 0;
        let entries = fs::read_dir(&self.tmp).map_err(|e| Error::io("list", &self.tmp, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &self.tmp, e))?;
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if !old {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                match fs::remove_file(&path) {
                    Ok(()) => swept += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove the stale temp file", &path, e)),
                }
            }
        }
        Ok(swept)
    }

    /// The blob file for `id`, or [`Error::NotFound`].
    fn open_blob(&self, id: &LayerId) -> Result<(File, PathBuf)> {
        let path = self.blob_path(id);
        match File::open(&path) {
            Ok(file) => Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                id: *id,
                store: self.root.clone(),
            }),
            Err(e) => Err(Error::io("open", &path, e)),
        }
    }

    /// Opens a layer's uncompressed tar. The reader checks the blake3 as it streams and
    /// fails at the end if the content does not match the id.
    pub fn open_layer(&self, id: &LayerId) -> Result<LayerReader> {
        let (file, path) = self.open_blob(id)?;
        let inner = extract::zstd_reader(file, &path)?;
        Ok(LayerReader {
            inner,
            hasher: blake3::Hasher::new(),
            expected: *id,
            path,
            checked: false,
        })
    }

    /// Applies a stored layer onto `dir`.
    pub fn apply(&self, id: &LayerId, dir: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
        extract::apply_tar(self.open_layer(id)?, dir, opts)
    }

    /// Sizes and location of a blob, from its seek table (no decompression).
    pub fn stat(&self, id: &LayerId) -> Result<BlobInfo> {
        let (mut file, path) = self.open_blob(id)?;
        let compressed_size = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let table = SeekTable::read_from(&mut file)
            .map_err(|e| Error::io("read the seek table of", &path, e))?
            .ok_or_else(|| Error::Format {
                path: path.clone(),
                problem: "blob has no seek table".into(),
            })?;
        Ok(BlobInfo {
            id: *id,
            compressed_size,
            uncompressed_size: table.uncompressed_size(),
            frames: table.frames.len() as u32,
            path,
        })
    }

    /// Ids of every stored blob, sorted.
    pub fn ids(&self) -> Result<Vec<LayerId>> {
        let mut ids = Vec::new();
        let shards = fs::read_dir(&self.blobs).map_err(|e| Error::io("list", &self.blobs, e))?;
        for shard in shards {
            let shard = shard.map_err(|e| Error::io("list", &self.blobs, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for blob in fs::read_dir(&shard).map_err(|e| Error::io("list", &shard, e))? {
                let blob = blob.map_err(|e| Error::io("list", &shard, e))?;
                if let Some(id) = blob.file_name().to_str().and_then(|n| n.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every stored blob, sorted by id.
    pub fn list(&self) -> Result<Vec<BlobInfo>> {
        self.ids()?.iter().map(|id| self.stat(id)).collect()
    }

    /// Removes a blob; `false` if it was not there.
    pub fn remove(&self, id: &LayerId) -> Result<bool> {
        let path = self.blob_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    /// Decompresses and hashes one blob; an error says what is wrong with it.
    pub fn verify_blob(&self, id: &LayerId) -> Result<u64> {
        let info = self.stat(id)?;
        let mut reader = self.open_layer(id)?;
        let bytes = io::copy(&mut reader, &mut io::sink()).map_err(|e| unwrap_io(e, &info.path))?;
        if bytes != info.uncompressed_size {
            return Err(Error::Format {
                path: info.path,
                problem: format!(
                    "seek table says {} uncompressed bytes, the frames hold {bytes}",
                    info.uncompressed_size
                ),
            });
        }
        Ok(bytes)
    }

    /// Verifies every blob, on every core.
    pub fn verify(&self) -> Result<VerifyReport> {
        let ids = self.ids()?;
        let next = AtomicU64::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..threads.min(ids.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(id) = ids.get(i) else { break };
                        let outcome = self.verify_blob(id);
                        results.lock().expect("verify lock").push((*id, outcome));
                    }
                });
            }
        });
        let mut report = VerifyReport::default();
        let mut results = results.into_inner().expect("verify lock");
        results.sort_by_key(|(id, _)| *id);
        for (id, outcome) in results {
            report.checked += 1;
            match outcome {
                Ok(bytes) => report.bytes += bytes,
                Err(e) => report.corrupt.push(CorruptBlob {
                    id,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(report)
    }

    /// Computes the sha256 digests OCI registries and image configs use. Costs one read and
    /// decompression of the blob; the blake3 is verified on the way.
    pub fn oci_digests(&self, id: &LayerId) -> Result<OciDigests> {
        let mut compressed = sha2::Sha256::new();
        let (mut raw, path) = self.open_blob(id)?;
        let size = io::copy(&mut raw, &mut DigestWriter(&mut compressed))
            .map_err(|e| Error::io("read", &path, e))?;
        let mut uncompressed = sha2::Sha256::new();
        let mut reader = self.open_layer(id)?;
        io::copy(&mut reader, &mut DigestWriter(&mut uncompressed))
            .map_err(|e| unwrap_io(e, &path))?;
        Ok(OciDigests {
            diff_id: format!("sha256:{}", hex::encode(uncompressed.finalize())),
            digest: format!("sha256:{}", hex::encode(compressed.finalize())),
            size,
        })
    }
}

/// Refuses to turn a directory that others may enter, and that holds files but no store,
/// into a store: making it private would lock others out of what is theirs (`--store /tmp`,
/// or a home directory). A new or empty directory, or an older store, is fine.
fn refuse_foreign_dir(root: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = fs::metadata(root) else {
            return Ok(()); // missing: made below; not a directory: said below
        };
        if !meta.is_dir() || meta.mode() & 0o077 == 0 || root.join("layout").exists() {
            return Ok(());
        }
        let mut entries = fs::read_dir(root).map_err(|e| Error::io("list", root, e))?;
        if entries.next().is_some() {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = root;
    Ok(())
}

/// Creates `dir` (and its missing parents) so that only its owner can enter it (mode 0700
/// on Unix), or narrows an existing one that others can enter: its group and other
/// permission bits are dropped, nothing is ever widened. A directory owned by another user
/// and open to others is refused with [`Error::NotPrivate`] rather than changed behind its
/// owner's back. Elsewhere than Unix it is only created.
pub fn private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o700);
        let created = match builder.create(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Parents are ordinary directories: only the last one is private.
                if let Some(parent) = dir.parent() {
                    fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
                }
                builder.create(dir)
            }
            other => other,
        };
        match created {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create", dir, e)),
        }
        // Followed if a symlink: a store root may be one.
        let meta = fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "use as a directory",
                dir,
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(());
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(Error::NotPrivate {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                mode,
            });
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & !0o077))
            .map_err(|e| Error::io("make private", dir, e))
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))
}

/// The writer of a blob's temp file: passes everything through and keeps a copy of the
/// first error, which callers up the stack may have wrapped as something else.
pub(crate) struct BlobWriter<W> {
    inner: W,
    failed: Option<io::Error>,
}

impl<W> BlobWriter<W> {
    fn note(&mut self, e: &io::Error) {
        // `write_all` retries an interrupted write: that is no failure.
        if self.failed.is_none() && e.kind() != io::ErrorKind::Interrupted {
            self.failed = Some(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            });
        }
    }
}

impl<W: Write> Write for BlobWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf);
        if let Err(e) = &written {
            self.note(e);
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = self.inner.flush();
        if let Err(e) = &flushed {
            self.note(e);
        }
        flushed
    }
}

struct DigestWriter<'a>(&'a mut sha2::Sha256);

impl Write for DigestWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Recovers a crate error carried inside an `io::Error` (from [`LayerReader`]).
fn unwrap_io(e: io::Error, path: &Path) -> Error {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
        return *e
            .into_inner()
            .expect("checked")
            .downcast::<Error>()
            .expect("checked");
    }
    Error::Stream {
        what: path.display().to_string(),
        source: e,
    }
}

/// Removes a temp file unless forgotten (after it was renamed into place).
struct TempGuard<'a>(&'a Path);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir; // Windows cannot open directories as files; NTFS journals the rename.
    Ok(())
}

/// A reader that writes what it reads to `out`, counting it.
struct Tee<'o, R, W> {
    input: R,
    out: &'o mut W,
    len: u64,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.len += n as u64;
        Ok(n)
    }
}

/// A reader that hashes and counts what it reads.
struct Counted<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A layer's uncompressed tar, verified against its id as it is read.
pub struct LayerReader {
    inner: Box<dyn Read + Send>,
    hasher: blake3::Hasher,
    expected: LayerId,
    path: PathBuf,
    checked: bool,
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("expected", &self.expected)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|source| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                Error::Decompress {
                    path: self.path.clone(),
                    source,
                },
            )
        })?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !self.checked && !buf.is_empty() {
            self.checked = true;
            let actual = LayerId::from(self.hasher.finalize());
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Error::Corrupt {
                        path: self.path.clone(),
                        expected: self.expected,
                        actual,
                    },
                ));
            }
        }
        Ok(n)
    }
}
