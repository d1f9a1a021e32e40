//! A snapshot's layers as OCI blobs: compressed as asked, with their digests, and opened as
//! streams of exactly those bytes.

use std::fs::File;
use std::io::{self, BufReader, Read, Write as _};
use std::str::FromStr;

use strata_cas::LayerId;
use strata_snapshot::Engine;

use crate::digest::{HashWriter, VerifyReader};
use crate::error::{Error, Result, io_err, unwrap_stream};
use crate::{Digest, media};

/// How layers are compressed in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// The stored blobs as they are: no work at all.
    #[default]
    Zstd,
    /// For engines older than Docker 23, which cannot read zstd layers. Deterministic (no
    /// timestamp, one level), so the same layer always gives the same blob and digest.
    Gzip,
    /// Plain tar, as `docker save` writes layers.
    None,
}

/// The gzip level: fast, since gzip output is for compatibility, not for keeping.
const GZIP_LEVEL: u32 = 1;

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Zstd => media::LAYER_ZSTD,
            Compression::Gzip => media::LAYER_GZIP,
            Compression::None => media::LAYER_TAR,
        }
    }
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Compression> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            _ => Err(crate::error::invalid(
                format!("compression {s:?}"),
                "expected zstd, gzip or none",
            )),
        }
    }
}

/// One layer of a snapshot as an OCI blob.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerBlob {
    /// The layer in the store.
    pub layer: LayerId,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the blob as sent.
    pub digest: Digest,
    /// Size of the blob as sent.
    pub size: u64,
    /// How the blob is compressed.
    pub compression: Compression,
}

impl LayerBlob {
    /// Describes `layer` compressed as `compression`. zstd and plain tar reuse the digests the
    /// engine remembers; gzip compresses the layer once to learn its digest.
    pub fn new(engine: &Engine, layer: &LayerId, compression: Compression) -> Result<LayerBlob> {
        let known = engine.oci_digests(layer)?;
        let diff_id: Digest = known.diff_id.parse()?;
        let (digest, size) = match compression {
            Compression::Zstd => (known.digest.parse()?, known.size),
            Compression::None => (diff_id, engine.cas().stat(layer)?.uncompressed_size),
            Compression::Gzip => {
                let mut sink = HashWriter::new(io::sink());
                let mut gz = gzip(engine.cas().open_layer(layer)?);
                io::copy(&mut gz, &mut sink)
                    .map_err(|e| unwrap_stream("compress", &format!("layer {layer}"), e))?;
                sink.hasher.finish()
            }
        };
        Ok(LayerBlob {
            layer: *layer,
            diff_id,
            digest,
            size,
            compression,
        })
    }

    /// The OCI media type of the blob.
    pub fn media_type(&self) -> &'static str {
        self.compression.media_type()
    }

    /// The blob's bytes, streamed: exactly [`size`](Self::size) bytes hashing to
    /// [`digest`](Self::digest), or a read error saying they do not (a blob corrupted on disk
    /// is never passed on as good).
    pub fn open(&self, engine: &Engine) -> Result<Box<dyn Read + Send>> {
        let cas = engine.cas();
        let inner: Box<dyn Read + Send> = match self.compression {
            Compression::Zstd => {
                let path = cas.blob_path(&self.layer);
                let file = File::open(&path).map_err(io_err("open", &path))?;
                Box::new(BufReader::with_capacity(1 << 20, file))
            }
            Compression::None => Box::new(cas.open_layer(&self.layer)?),
            Compression::Gzip => Box::new(gzip(cas.open_layer(&self.layer)?)),
        };
        Ok(Box::new(VerifyReader::new(
            inner,
            self.digest,
            Some(self.size),
            format!("layer {} as sent", self.layer),
        )))
    }
}

fn gzip<R: Read>(inner: R) -> GzipReader<R> {
    GzipReader {
        inner,
        // GzBuilder's defaults write no name and a zero mtime.
        encoder: Some(
            flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(GZIP_LEVEL)),
        ),
        out: Vec::new(),
        pos: 0,
        input: vec![0; GZIP_CHUNK],
    }
}

/// Input is fed to the compressor in chunks of this size whatever the source's reads, so
/// the output depends on the input bytes alone (deflate's output does depend on how its
/// input is cut; a layer's reader cuts it differently from run to run).
const GZIP_CHUNK: usize = 256 << 10;

/// gzip as a reader, deterministic: what a blob's digest was computed from is what is sent.
struct GzipReader<R> {
    inner: R,
    /// None once finished.
    encoder: Option<flate2::write::GzEncoder<Vec<u8>>>,
    out: Vec<u8>,
    pos: usize,
    input: Vec<u8>,
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let Some(encoder) = self.encoder.as_mut() else {
                return Ok(0);
            };
            self.pos = 0;
            let mut filled = 0;
            while filled < self.input.len() {
                match self.inner.read(&mut self.input[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                self.out = self.encoder.take().expect("checked above").finish()?;
                continue;
            }
            encoder.write_all(&self.input[..filled])?;
            self.out = std::mem::take(encoder.get_mut());
        }
    }
}
