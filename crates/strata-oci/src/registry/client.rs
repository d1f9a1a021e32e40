//! A small blocking client of the OCI distribution API on one repository: blobs (exists,
//! upload, download) and manifests, with Docker's token and basic authentication.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{Response, StatusCode};
use ureq::{Agent, Body, SendBody};

use super::{Options, Reference};
use crate::Digest;
use crate::error::{Error, Result};

/// The most an error body or a token answer may weigh.
const MAX_SMALL: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// One repository of one registry, with the authorization it earned.
#[derive(Debug)]
pub(crate) struct Client {
    agent: Agent,
    base: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// The `Authorization` header value in use, once a challenge was answered.
    authorization: Mutex<Option<String>>,
    /// What a token is asked for: `pull` or `pull,push`.
    actions: &'static str,
}

/// A request body: a reader with its length, or nothing.
pub(crate) struct Upload<'r> {
    pub(crate) reader: &'r mut (dyn Read + Send),
    pub(crate) len: u64,
    pub(crate) content_type: &'static str,
}

/// rustls with webpki's roots; on macOS the system's TLS and trust store (see Cargo.toml).
/// How often a request without a body is sent when the registry answers 429 or 5xx (the
/// pauses add up to 1.5 s).
const RETRIES: u32 = 5;

fn tls_config() -> ureq::tls::TlsConfig {
    let config = ureq::tls::TlsConfig::builder();
    #[cfg(target_os = "macos")]
    let config = config
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier);
    config.build()
}

impl Client {
    pub(crate) fn new(reference: &Reference, opts: &Options, push: bool) -> Result<Client> {
        // Plain HTTP only where nobody can listen in, or when asked for.
        let scheme = if reference.is_loopback() || opts.insecure {
            "http"
        } else {
            "https"
        };
        let agent: Agent = Agent::config_builder()
            .tls_config(tls_config())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(300)))
            .timeout_per_write(Some(Duration::from_secs(300)))
            .max_redirects(5)
            .user_agent("strata")
            .build()
            .into();
        Ok(Client {
            agent,
            base: format!("{scheme}://{}", reference.registry),
            repository: reference.repository.clone(),
            credentials: opts.credentials_for(&reference.registry),
            authorization: Mutex::new(None),
            actions: if push { "pull,push" } else { "pull" },
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Sends a request, answering one authentication challenge (and retrying) if the body
    /// can be sent again, that is, when there is none. A request without a body is also
    /// sent again, after a pause, when the registry answers that it is busy or failed
    /// (429 or 5xx): registries do, under concurrent uploads of one blob for one.
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        upload: Option<Upload<'_>>,
    ) -> Result<Response<Body>> {
        if upload.is_some() {
            return self.send_authenticated(method, url, headers, upload);
        }
        let mut pause = Duration::from_millis(100);
        for _ in 1..RETRIES {
            let response = self.send_authenticated(method, url, headers, None)?;
            let status = response.status().as_u16();
            if status != 429 && !(500..600).contains(&status) {
                return Ok(response);
            }
            std::thread::sleep(pause);
            pause *= 2;
        }
        self.send_authenticated(method, url, headers, None)
    }

    fn send_authenticated(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        mut upload: Option<Upload<'_>>,
    ) -> Result<Response<Body>> {
        for attempt in 0..2 {
            let auth = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let response = self.send_once(method, url, headers, auth.as_deref(), upload.as_mut());
            let response = response.map_err(|source| Error::Http {
                method: method.name(),
                url: without_query(url).to_owned(),
                source: Box::new(source),
            })?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 && upload.is_none() {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                if self.authenticate(&challenge)? {
                    continue;
                }
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second pass")
    }

    fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        auth: Option<&str>,
        upload: Option<&mut Upload<'_>>,
    ) -> Result<Response<Body>, ureq::Error> {
        macro_rules! with_headers {
            ($req:expr) => {{
                let mut req = $req;
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                if let Some(auth) = auth {
                    req = req.header("Authorization", auth);
                }
                req
            }};
        }
        match (method, upload) {
            (Method::Get, _) => with_headers!(self.agent.get(url)).call(),
            (Method::Head, _) => with_headers!(self.agent.head(url)).call(),
            (Method::Post, None) => with_headers!(self.agent.post(url)).send_empty(),
            (Method::Put, None) => with_headers!(self.agent.put(url)).send_empty(),
            (Method::Post | Method::Put, Some(up)) => {
                let req = if method == Method::Post {
                    self.agent.post(url)
                } else {
                    self.agent.put(url)
                };
                with_headers!(req)
                    .header("Content-Length", up.len.to_string())
                    .header("Content-Type", up.content_type)
                    .send(SendBody::from_reader(&mut up.reader))
            }
        }
    }

    /// Answers a `WWW-Authenticate` challenge: a bearer token from the realm (with the
    /// credentials, if any), or basic authentication. Returns whether to retry.
    fn authenticate(&self, challenge: &str) -> Result<bool> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let params = parse_params(params);
        let header = if scheme.eq_ignore_ascii_case("bearer") {
            let Some(realm) = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v) else {
                return Ok(false);
            };
            let mut url = format!(
                "{realm}?scope={}",
                percent(&format!("repository:{}:{}", self.repository, self.actions))
            );
            if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                url.push_str(&format!("&service={}", percent(service)));
            }
            let mut req = self.agent.get(&url);
            if let Some((user, password)) = &self.credentials {
                req = req.header("Authorization", basic(user, password));
            }
            let mut response = req.call().map_err(|source| Error::Http {
                method: "GET",
                url: url.clone(),
                source: Box::new(source),
            })?;
            if !response.status().is_success() {
                return Err(status_error("GET", &url, response));
            }
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_SMALL)
                .read_to_vec()
                .map_err(|source| Error::Http {
                    method: "GET",
                    url: url.clone(),
                    source: Box::new(source),
                })?;
            #[derive(serde::Deserialize)]
            struct Token {
                token: Option<String>,
                access_token: Option<String>,
            }
            let token: Token = crate::import::parse(&body, "the registry's token answer")?;
            match token.token.or(token.access_token) {
                Some(t) => format!("Bearer {t}"),
                None => return Ok(false),
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            match &self.credentials {
                Some((user, password)) => basic(user, password),
                None => return Ok(false),
            }
        } else {
            return Ok(false);
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(header);
        Ok(true)
    }

    /// Authenticates ahead of uploads, whose bodies cannot be sent twice.
    pub(crate) fn ping(&self) -> Result<()> {
        let url = self.url("tags/list");
        let response = self.send(Method::Get, &url, &[], None)?;
        match response.status().as_u16() {
            200 | 404 => Ok(()),
            _ => Err(status_error("GET", &url, response)),
        }
    }

    /// Whether the repository has the blob.
    pub(crate) fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(Method::Head, &url, &[], None)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error("HEAD", &url, response)),
        }
    }

    /// Uploads a blob in one request (a POST for the session, then one PUT).
    pub(crate) fn put_blob(&self, digest: &Digest, upload: Upload<'_>) -> Result<()> {
        let url = self.url("blobs/uploads/");
        let response = self.send(Method::Post, &url, &[], None)?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, response));
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| crate::error::invalid(format!("POST {url}"), "answered no Location"))?
            .to_owned();
        let mut put = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            return Err(crate::error::invalid(
                format!("POST {url}"),
                format!("answered a Location that is not a URL: {location:?}"),
            ));
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={}", percent(&digest.to_string())));
        let response = self.send(Method::Put, &put, &[], Some(upload))?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error("PUT", &put, response));
        }
        Ok(())
    }

    /// Streams a blob; the caller verifies what it reads. A thread reads ahead of the
    /// caller, so the download goes on while the caller decompresses and hashes.
    pub(crate) fn get_blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(Method::Get, &url, &[], None)?;
        if response.status() != StatusCode::OK {
            return Err(status_error("GET", &url, response));
        }
        Ok(Box::new(ReadAhead::new(response.into_body().into_reader())))
    }

    /// Whether the repository has a manifest under `object` (a tag or digest).
    pub(crate) fn has_manifest(&self, object: &str) -> Result<bool> {
        use crate::media::*;
        let url = self.url(&format!("manifests/{object}"));
        let accept = [MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let response = self.send(Method::Head, &url, &[("Accept", &accept)], None)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error("HEAD", &url, response)),
        }
    }

    /// Puts a manifest under `object` (a tag or digest).
    pub(crate) fn put_manifest(
        &self,
        object: &str,
        media_type: &'static str,
        bytes: &[u8],
    ) -> Result<()> {
        let url = self.url(&format!("manifests/{object}"));
        let mut reader: &[u8] = bytes;
        let upload = Upload {
            reader: &mut reader,
            len: bytes.len() as u64,
            content_type: media_type,
        };
        let response = self.send(Method::Put, &url, &[], Some(upload))?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error("PUT", &url, response));
        }
        Ok(())
    }

    /// Gets a manifest (or index) by tag or digest: its bytes, at most `limit`, and its media
    /// type. None if the registry has no such manifest.
    pub(crate) fn get_manifest(
        &self,
        object: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, String)>> {
        use crate::media::*;
        let url = self.url(&format!("manifests/{object}"));
        let accept = [MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let mut response = self.send(Method::Get, &url, &[("Accept", &accept)], None)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if response.status() != StatusCode::OK {
            return Err(status_error("GET", &url, response));
        }
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| crate::error::unwrap_stream("read", &url, e))?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge { what: url, limit });
        }
        Ok(Some((bytes, media_type)))
    }
}

/// Chunks a read-ahead thread may hold before the reader takes them (at most 8 MiB): enough
/// to keep the connection busy while the reader hashes and decompresses, few enough that
/// the chunks handed back are soon filled again instead of fresh ones being allocated.
const AHEAD_CHUNKS: usize = 8;
const AHEAD_CHUNK: usize = 1 << 20;

/// A reader fed by a thread that reads `inner` ahead, up to [`AHEAD_CHUNKS`] chunks; the
/// thread stops at the end, at an error (handed on) or when the reader is dropped.
struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    /// Chunks read out, handed back for the thread to fill again: a fresh zeroed megabyte
    /// per chunk cost page faults and a memset of every byte downloaded.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    fn new(mut inner: impl Read + Send + 'static) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_CHUNKS);
        let (spent, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            loop {
                let mut chunk = recycled.try_recv().unwrap_or_default();
                chunk.resize(AHEAD_CHUNK, 0);
                let mut filled = 0;
                let result = loop {
                    match inner.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == chunk.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                chunk.truncate(filled);
                let last = filled == 0 || result.is_err();
                let sent = match result {
                    Err(e) if filled == 0 => tx.send(Err(e)),
                    Err(e) => tx.send(Ok(chunk)).and_then(|()| tx.send(Err(e))),
                    Ok(()) => tx.send(Ok(chunk)),
                };
                if sent.is_err() || last {
                    return;
                }
            }
        });
        ReadAhead {
            chunks: rx,
            spent,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    // The thread may have finished: then the chunk is simply dropped.
                    let _ = self.spent.send(spent);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended without an empty chunk: it panicked.
                Err(_) => {
                    self.done = true;
                    return Err(std::io::Error::other("the download thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A URL without its query, for messages: upload URLs carry long opaque state.
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The registry's answer as an error, with the start of its body (distribution's JSON
/// errors say what was wrong).
fn status_error(method: &'static str, url: &str, mut response: Response<Body>) -> Error {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_SMALL)
        .read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let message: String = text.trim().chars().take(500).collect();
    Error::Status {
        method,
        url: without_query(url).to_owned(),
        status,
        message: if message.is_empty() {
            "(no body)".to_owned()
        } else {
            message
        },
    }
}

/// `key="value", key=value` pairs of a challenge.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, a)) => (v.to_owned(), a),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, a)) => (v.trim().to_owned(), a),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((key, value));
        rest = after.trim_start_matches(',').trim();
    }
    out
}

/// Percent-encodes what is not unreserved in a query value.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry on a loopback port that answers each request with the next of `statuses`
    /// (then 200 forever), counting the requests.
    fn answering(
        statuses: &'static [u16],
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    // The request's headers, to the blank line.
                    while line != "\r\n" {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as usize;
                    let status = statuses.get(n).copied().unwrap_or(200);
                    let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                }
            }
        });
        (format!("127.0.0.1:{port}/team/app:1"), count)
    }

    #[test]
    fn requests_without_a_body_are_sent_again_while_the_registry_is_busy() {
        let digest = crate::digest::Digest::of(b"abc");
        let (reference, count) = answering(&[500, 503, 429]);
        let client = Client::new(&reference.parse().unwrap(), &Options::new(), false).unwrap();
        assert!(client.has_blob(&digest).unwrap());
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);

        // A registry that keeps failing is reported, after a bounded number of tries.
        let (reference, count) = answering(&[500; 16]);
        let client = Client::new(&reference.parse().unwrap(), &Options::new(), false).unwrap();
        let err = client.has_blob(&digest).unwrap_err().to_string();
        assert!(err.contains("500"), "{err}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), RETRIES);
    }

    #[test]
    fn read_ahead_hands_on_every_byte_then_the_error() {
        let data: Vec<u8> = (0..3 * AHEAD_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        ReadAhead::new(std::io::Cursor::new(data.clone()))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        let failing = std::io::Cursor::new(vec![1u8; 10]).chain(Failing);
        let mut out = Vec::new();
        let err = ReadAhead::new(failing).read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert_eq!(out, vec![1u8; 10]);
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::ConnectionReset.into())
        }
    }

    #[test]
    fn parses_challenges() {
        let p = parse_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2].1, "repository:a/b:pull");
        assert_eq!(
            percent("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
