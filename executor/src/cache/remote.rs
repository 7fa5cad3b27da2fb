//! The distributed cache: `[runners.cache] Type = "s3" | "gcs" | "gcsv2" | "azure"`
//! (docs/configuration.md, docs/scaling.md).
//!
//! The local archive (`<cache_dir>/<namespace>/<key>/cache.tar.zst`) stays the working copy:
//! a save builds it as before and uploads it in one PUT once written, or, when it is over
//! [`SINGLE_PUT_MAX`], in parts while it is written (a zip after it is written); a restore
//! asks the store for the object's
//! metadata and reads the local copy when this host already has that version (the "local
//! tier"), otherwise downloads it next to the local copy and extracts it from there. Either
//! way the archive's prepared copy (tier.rs) is moved into place instead of extracting it
//! when there is one for that very archive.
//!
//! Object names are gitlab-runner's: `[<Path>/][runner/<short token>/]project/<id>/<key>`
//! (the `runner/<short token>` part is left out with `Shared = true`), so a fleet that mixes
//! gitlab-runner and ferry hosts shares one cache. Every failure is a warning: the job goes on.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_config::{CacheSection, S3Auth, S3Encryption};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::meter::Progress;

/// gitlab-runner's default for `CACHE_REQUEST_TIMEOUT` (minutes).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Multipart uploads (archives over [`RemoteCache::single_put_max`]) go up in parts this size,
/// a few in flight at once (S3 needs parts of at least 5 MiB).
const PART_SIZE: usize = 16 * 1024 * 1024;
/// The default of [`RemoteCache::single_put_max`]: archives up to 256 MiB go up in one PUT
/// once written, as gitlab-runner's presigned-URL upload sends every archive; bigger ones as a
/// multipart upload while they are written (docs/sources-cache-artifacts.md,
/// docs/benchmarks.md says what each costs).
pub const SINGLE_PUT_MAX: u64 = 256 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 4;
/// A download writes what came of a range to the file in pieces of this size.
const DOWNLOAD_PIECE: usize = 1024 * 1024;
/// The longest range a download asks for, in parts.
const MAX_RANGE_PARTS: u64 = 4;
/// What this host last knew of the remote object, next to the local archive.
pub(super) const STATE_NAME: &str = "remote.json";

/// Where and how a runner's caches are kept remotely (built by the runner from
/// `[runners.cache]` and the job's `CACHE_REQUEST_TIMEOUT`/`RESTORE_CACHE_ATTEMPTS`).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteCache {
    /// `kind` is set (the config turns an unusable `Type` into None).
    pub config: Arc<CacheSection>,
    /// Object name prefix without the key: see [`object_prefix`].
    pub prefix: String,
    /// Bound of one upload or download (`CACHE_REQUEST_TIMEOUT`, minutes).
    pub request_timeout: Duration,
    /// Downloads tried per key (`RESTORE_CACHE_ATTEMPTS`, at least 1).
    pub restore_attempts: u32,
    /// `TRANSFER_METER_FREQUENCY`: progress lines during uploads and downloads (meter.rs).
    pub transfer_meter: Option<Duration>,
    /// Archives up to this many bytes go up in one PUT of the finished file, bigger ones as a
    /// multipart upload ([`SINGLE_PUT_MAX`]; tests give a smaller one).
    pub single_put_max: u64,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("kind", &self.config.kind)
            .field("bucket", &self.bucket())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The plan shows where caches go, never how the store is reached (no credentials).
impl Serialize for RemoteCache {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RemoteCache", 4)?;
        st.serialize_field("kind", &self.config.kind)?;
        st.serialize_field("bucket", self.bucket())?;
        st.serialize_field("prefix", &self.prefix)?;
        st.serialize_field("request_timeout_secs", &self.request_timeout.as_secs())?;
        st.end()
    }
}

/// gitlab-runner's object prefix: `[<Path>/][runner/<short token>/]project/<project id>`.
pub fn object_prefix(config: &CacheSection, short_token: &str, project_id: u64) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let path = config.path.as_deref().unwrap_or("");
    parts.extend(path.split('/').filter(|p| !p.is_empty()));
    let short = short_token.to_string();
    if !config.shared {
        parts.push("runner");
        parts.push(&short);
    }
    let id = project_id.to_string();
    parts.push("project");
    parts.push(&id);
    parts.join("/")
}

/// A store failure, with what was being done; never contains credentials.
#[derive(Debug)]
pub(super) struct RemoteError(pub String);

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// This host's record of the remote object its local archive corresponds to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RemoteState {
    object: String,
    e_tag: Option<String>,
    last_modified: String,
    pub(super) size: u64,
}

impl RemoteState {
    fn of(meta: &ObjectMeta) -> RemoteState {
        RemoteState {
            object: meta.location.to_string(),
            e_tag: meta.e_tag.clone(),
            last_modified: meta.last_modified.to_rfc3339(),
            size: meta.size,
        }
    }

    /// How many ranged GETs download this object (1 = one streamed GET).
    pub(super) fn ranges(&self) -> u64 {
        if self.e_tag.is_none() {
            return 1;
        }
        self.size.div_ceil(self.range_len()).max(1)
    }

    /// The length of one range: as many ranges as are fetched at once when that makes them
    /// between one and four parts long (fewer, longer requests: a store whose ranged reads
    /// cost more than their length, moto's, answers them faster; docs/benchmarks.md).
    fn range_len(&self) -> u64 {
        let part = PART_SIZE as u64;
        self.size
            .div_ceil(PARTS_IN_FLIGHT as u64)
            .clamp(part, MAX_RANGE_PARTS * part)
    }

    pub(super) fn read(key_dir: &Path) -> Option<RemoteState> {
        serde_json::from_slice(&std::fs::read(key_dir.join(STATE_NAME)).ok()?).ok()
    }

    pub(super) fn write(&self, key_dir: &Path) -> io::Result<()> {
        let tmp = super::archive::temp_path(key_dir, "remote");
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(&tmp, key_dir.join(STATE_NAME)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    pub(super) fn forget(key_dir: &Path) {
        let _ = std::fs::remove_file(key_dir.join(STATE_NAME));
    }
}

/// What a HEAD of the object found.
pub(super) enum Head {
    Found(RemoteState),
    Missing,
}

impl RemoteCache {
    fn bucket(&self) -> &str {
        let c = &self.config;
        match c.kind.as_deref() {
            Some("s3") => &c.s3.bucket_name,
            Some("gcs" | "gcsv2") => &c.gcs.bucket_name,
            Some("azure") => &c.azure.container_name,
            _ => "",
        }
    }

    pub(super) fn object(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// Removes every credential from a message of the store's client.
    fn scrub(&self, text: String) -> String {
        let c = &self.config;
        let mut text = text;
        for s in [
            c.s3.secret_key.expose(),
            c.s3.session_token.expose(),
            c.gcs.private_key.expose(),
            c.azure.account_key.expose(),
        ] {
            if s.len() >= 4 {
                text = text.replace(s, "[MASKED]");
            }
        }
        text
    }

    /// One line (a store's error may carry a multi-line XML body), without credentials.
    fn err(&self, what: &str, e: impl std::fmt::Display) -> RemoteError {
        let text = format!("{what}: {e}");
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        RemoteError(self.scrub(line))
    }

    fn client(&self) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(self.request_timeout)
    }

    /// A few quick retries of what the client sees as transient (connection refused, 5xx);
    /// `RESTORE_CACHE_ATTEMPTS` is the user's knob for more.
    fn retry() -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        }
    }

    /// The store, from the config alone (no request is made here).
    pub(super) fn store(&self) -> Result<Arc<dyn ObjectStore>, RemoteError> {
        let c = &self.config;
        let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match c.kind.as_deref() {
            Some("s3") => {
                let s3 = &c.s3;
                let mut b = match s3.authentication_type {
                    // environment, web identity (RoleARN), ECS task role, instance profile
                    S3Auth::Iam => AmazonS3Builder::from_env(),
                    S3Auth::AccessKey => AmazonS3Builder::new()
                        .with_access_key_id(&s3.access_key)
                        .with_secret_access_key(s3.secret_key.expose()),
                };
                if s3.authentication_type == S3Auth::AccessKey && !s3.session_token.is_empty() {
                    b = b.with_token(s3.session_token.expose());
                }
                let region = if s3.bucket_location.is_empty() {
                    "us-east-1"
                } else {
                    &s3.bucket_location
                };
                b = b
                    .with_bucket_name(&s3.bucket_name)
                    .with_region(region)
                    .with_client_options(self.client())
                    .with_allow_http(s3.insecure)
                    .with_retry(Self::retry());
                if !s3.role_arn.is_empty() {
                    b = b.with_config(AmazonS3ConfigKey::RoleArn, &s3.role_arn);
                }
                let (endpoint, virtual_host) = s3_endpoint(s3);
                b = b.with_virtual_hosted_style_request(virtual_host);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                match s3.server_side_encryption {
                    None => {}
                    Some(S3Encryption::Aes256) => {
                        // The key is only public through its name.
                        if let Ok(k) = "aws_server_side_encryption".parse::<AmazonS3ConfigKey>() {
                            b = b.with_config(k, "AES256");
                        }
                    }
                    Some(S3Encryption::Kms) => {
                        b = b.with_sse_kms_encryption(&s3.server_side_encryption_key_id)
                    }
                    Some(S3Encryption::DsseKms) => {
                        b = b.with_dsse_kms_encryption(&s3.server_side_encryption_key_id)
                    }
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            Some("gcs" | "gcsv2") => {
                let g = &c.gcs;
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&g.bucket_name)
                    .with_client_options(self.client())
                    .with_retry(Self::retry());
                if !g.credentials_file.is_empty() {
                    b = b.with_service_account_path(&g.credentials_file);
                } else if !g.access_id.is_empty() && !g.private_key.is_empty() {
                    let key = serde_json::json!({
                        "type": "service_account",
                        "client_email": g.access_id,
                        "private_key": g.private_key.expose(),
                        "private_key_id": "",
                    });
                    b = b.with_service_account_key(key.to_string());
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            Some("azure") => {
                let a = &c.azure;
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_account(&a.account_name)
                    .with_container_name(&a.container_name)
                    .with_client_options(self.client())
                    .with_retry(Self::retry());
                if !a.account_key.is_empty() {
                    b = b.with_access_key(a.account_key.expose());
                }
                if !a.storage_domain.is_empty() {
                    b = b.with_endpoint(format!("https://{}.{}", a.account_name, a.storage_domain));
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            other => {
                return Err(RemoteError(format!(
                    "cache type {other:?} has no remote store"
                )));
            }
        };
        built.map_err(|e| self.err("configuring the cache store", e))
    }

    /// The object's metadata, within the request timeout.
    pub(super) async fn head(
        &self,
        store: &dyn ObjectStore,
        key: &str,
    ) -> Result<Head, RemoteError> {
        let object = ObjectPath::from(self.object(key));
        match tokio::time::timeout(self.request_timeout, store.head(&object)).await {
            Err(_) => Err(RemoteError(format!(
                "looking up {object}: no answer within {}s (CACHE_REQUEST_TIMEOUT)",
                self.request_timeout.as_secs()
            ))),
            Ok(Ok(meta)) => Ok(Head::Found(RemoteState::of(&meta))),
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(Head::Missing),
            Ok(Err(e)) => Err(self.err(&format!("looking up {object}"), e)),
        }
    }

    /// Downloads the object to `dest` (a temporary file the caller renames); returns what was
    /// downloaded. `known` is the object's metadata from the HEAD just before: an archive over
    /// one part with an ETag is fetched as ranges, a few at once, each GET conditional on that
    /// ETag (an object replaced under way fails the download instead of mixing two archives);
    /// anything else is one streamed GET.
    pub(super) async fn download(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        dest: &Path,
        known: &RemoteState,
        progress: &Progress,
    ) -> Result<(RemoteState, u64), RemoteError> {
        let object = ObjectPath::from(self.object(key));
        let what = format!("downloading {object}");
        if known.ranges() > 1
            && let Some(etag) = &known.e_tag
        {
            let work = self.download_ranges(
                store,
                &object,
                dest,
                (known.size, known.range_len(), etag),
                &what,
                progress,
            );
            return match tokio::time::timeout(self.request_timeout, work).await {
                Ok(Ok(())) => Ok((known.clone(), known.size)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RemoteError(format!(
                    "{what}: not done within {}s (CACHE_REQUEST_TIMEOUT)",
                    self.request_timeout.as_secs()
                ))),
            };
        }
        let work = async {
            let got = store.get(&object).await.map_err(|e| self.err(&what, e))?;
            let state = RemoteState::of(&got.meta);
            let mut stream = got.into_stream();
            let mut out = tokio::fs::File::create(dest)
                .await
                .map_err(|e| self.err(&what, e))?;
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(&what, e))?;
                n += chunk.len() as u64;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| self.err(&what, e))?;
                progress.add(chunk.len() as u64);
            }
            out.flush().await.map_err(|e| self.err(&what, e))?;
            Ok((state, n))
        };
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RemoteError(format!(
                "{what}: not done within {}s (CACHE_REQUEST_TIMEOUT)",
                self.request_timeout.as_secs()
            ))),
        }
    }

    async fn download_ranges(
        &self,
        store: &dyn ObjectStore,
        object: &ObjectPath,
        dest: &Path,
        (size, range_len, etag): (u64, u64, &str),
        what: &str,
        progress: &Progress,
    ) -> Result<(), RemoteError> {
        let file = std::fs::File::create(dest).map_err(|e| self.err(what, e))?;
        file.set_len(size).map_err(|e| self.err(what, e))?;
        let file = Arc::new(file);
        let ranges: Vec<std::ops::Range<u64>> = (0..size)
            .step_by(range_len as usize)
            .map(|start| start..(start + range_len).min(size))
            .collect();
        let mut parts = futures::stream::iter(ranges)
            .map(|range| {
                let file = file.clone();
                async move {
                    let opts = GetOptions {
                        range: Some(GetRange::Bounded(range.clone())),
                        if_match: Some(etag.to_string()),
                        ..GetOptions::default()
                    };
                    let got = store
                        .get_opts(object, opts)
                        .await
                        .map_err(|e| self.err(what, e))?;
                    // Written where it belongs as it comes, a piece at a time: a range is
                    // never whole in memory.
                    let mut stream = got.into_stream();
                    let mut at = range.start;
                    let mut piece: Vec<u8> = Vec::new();
                    loop {
                        let next = stream.next().await;
                        if let Some(chunk) = &next {
                            let chunk = chunk.as_ref().map_err(|e| self.err(what, e))?;
                            piece.extend_from_slice(chunk);
                            if piece.len() < DOWNLOAD_PIECE {
                                continue;
                            }
                        }
                        let n = piece.len() as u64;
                        if at + n > range.end {
                            break;
                        }
                        if n > 0 {
                            let (f, p) = (file.clone(), std::mem::take(&mut piece));
                            tokio::task::spawn_blocking(move || {
                                use std::os::unix::fs::FileExt;
                                f.write_all_at(&p, at)
                            })
                            .await
                            .map_err(|e| self.err(what, e))?
                            .map_err(|e| self.err(what, e))?;
                            at += n;
                            progress.add(n);
                        }
                        if next.is_none() {
                            break;
                        }
                    }
                    if at != range.end {
                        return Err(RemoteError(format!(
                            "{what}: range {range:?} came back with {} bytes",
                            at - range.start + piece.len() as u64
                        )));
                    }
                    Ok(())
                }
            })
            .buffer_unordered(PARTS_IN_FLIGHT);
        while let Some(part) = parts.next().await {
            part?;
        }
        Ok(())
    }

    /// Uploads `archive` as the object of `key`: one PUT of the mapped file up to
    /// [`RemoteCache::single_put_max`] (see [`mapped`]), a multipart upload otherwise, which the store only makes visible once complete (an
    /// upload that fails half-way is aborted and leaves the previous object in place).
    pub(super) async fn upload(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        archive: &Path,
        progress: &Progress,
    ) -> Result<RemoteState, RemoteError> {
        let object = ObjectPath::from(self.object(key));
        let what = format!("uploading {object}");
        let mut multipart: Option<WriteMultipart> = None;
        let work = async {
            let mut file = tokio::fs::File::open(archive)
                .await
                .map_err(|e| self.err(&what, e))?;
            let len = file.metadata().await.map_err(|e| self.err(&what, e))?.len();
            if len <= self.single_put_max {
                let file = file.into_std().await;
                let body = tokio::task::spawn_blocking(move || mapped(&file, len))
                    .await
                    .map_err(|e| self.err(&what, e))?
                    .map_err(|e| self.err(&what, e))?;
                store
                    .put(&object, PutPayload::from_bytes(body))
                    .await
                    .map_err(|e| self.err(&what, e))?;
                progress.add(len);
            } else {
                let upload = store
                    .put_multipart(&object)
                    .await
                    .map_err(|e| self.err(&what, e))?;
                let w = multipart.insert(WriteMultipart::new_with_chunk_size(upload, PART_SIZE));
                let mut buf = vec![0u8; 1024 * 1024];
                let res: Result<(), RemoteError> = async {
                    loop {
                        let n = file.read(&mut buf).await.map_err(|e| self.err(&what, e))?;
                        if n == 0 {
                            return Ok(());
                        }
                        w.wait_for_capacity(PARTS_IN_FLIGHT)
                            .await
                            .map_err(|e| self.err(&what, e))?;
                        w.write(&buf[..n]);
                        progress.add(n as u64);
                    }
                }
                .await;
                if let Err(e) = res {
                    self.abort(multipart.take()).await;
                    return Err(e);
                }
                if let Some(w) = multipart.take() {
                    w.finish().await.map_err(|e| self.err(&what, e))?;
                }
            }
            match self.head(store, key).await? {
                Head::Found(state) => Ok(state),
                Head::Missing => Err(RemoteError(format!(
                    "{what}: the object is not there after the upload"
                ))),
            }
        };
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(r) => r,
            // Aborted while the parts go up; dropped in its completion, it is left incomplete
            // (never visible; docs/scaling.md has the bucket rule that removes it).
            Err(_) => {
                self.abort(multipart.take()).await;
                Err(RemoteError(format!(
                    "{what}: not done within {}s (CACHE_REQUEST_TIMEOUT)",
                    self.request_timeout.as_secs()
                )))
            }
        }
    }
}

/// A piece of an archive while it is being written, for [`RemoteCache::upload_stream`].
#[derive(Debug)]
pub(super) enum Piece {
    /// First: a readable handle of the file being written (each [`Piece::Data`] is in it
    /// before it is sent), which the upload reads from.
    File(std::fs::File),
    Data(bytes::Bytes),
    /// The archive is complete and in place locally, this many bytes long: make it the object.
    Commit(u64),
}

/// What became of a streamed upload.
pub(super) enum Streamed {
    Uploaded(RemoteState),
    Failed(RemoteError),
    /// Not committed (no new archive, one written twice, or over `MaxUploadedArchiveSize`):
    /// nothing was made visible; the caller decides whether to upload the file.
    Dropped,
}

impl RemoteCache {
    /// Uploads an archive being written (docs/sources-cache-artifacts.md): up to
    /// [`RemoteCache::single_put_max`] bytes, in one PUT of the finished file; once it grows
    /// past that, as a multipart upload fed while it is written (the bytes already written read
    /// back from the file, then the pieces as they come). Only a [`Piece::Commit`] whose
    /// length matches what came makes it the object; anything else (the sender dropped, more
    /// than `max` bytes when `max` > 0, `stop`) sends nothing or aborts the multipart upload:
    /// the store never makes part of an archive visible.
    ///
    /// `CACHE_REQUEST_TIMEOUT` counts from the commit: the archive may take longer than it to
    /// write (each request is bounded by it on its own, [`RemoteCache::client`]).
    pub(super) async fn upload_stream(
        &self,
        store: Arc<dyn ObjectStore>,
        key: &str,
        mut pieces: tokio::sync::mpsc::Receiver<Piece>,
        progress: Progress,
        max: u64,
        stop: tokio_util::sync::CancellationToken,
    ) -> Streamed {
        let object = ObjectPath::from(self.object(key));
        let what = format!("uploading {object}");
        let mut file: Option<Arc<std::fs::File>> = None;
        let mut total = 0u64;
        let mut multipart: Option<WriteMultipart> = None;
        // Until the commit: the pieces, as they come.
        let feed = async {
            loop {
                match pieces.recv().await {
                    None => return Ok(false),
                    Some(Piece::File(f)) => file = Some(Arc::new(f)),
                    Some(Piece::Data(b)) => {
                        total += b.len() as u64;
                        if max > 0 && total > max {
                            return Ok(false);
                        }
                        if multipart.is_none() {
                            if total <= self.single_put_max {
                                // In the file: it goes up in one PUT once complete.
                                continue;
                            }
                            let Some(f) = file.clone() else {
                                return Ok(false);
                            };
                            let upload = store
                                .put_multipart(&object)
                                .await
                                .map_err(|e| self.err(&what, e))?;
                            let w = multipart
                                .insert(WriteMultipart::new_with_chunk_size(upload, PART_SIZE));
                            // What was written before this piece, from the file.
                            let before = total - b.len() as u64;
                            let mut at = 0u64;
                            while at < before {
                                let n = (before - at).min(READ_BACK as u64);
                                let f = f.clone();
                                let chunk = tokio::task::spawn_blocking(move || {
                                    use std::os::unix::fs::FileExt;
                                    let mut buf = vec![0u8; n as usize];
                                    f.read_exact_at(&mut buf, at).map(|()| buf)
                                })
                                .await
                                .map_err(|e| self.err(&what, e))?
                                .map_err(|e| self.err(&what, e))?;
                                w.wait_for_capacity(PARTS_IN_FLIGHT)
                                    .await
                                    .map_err(|e| self.err(&what, e))?;
                                w.write(&chunk);
                                progress.add(n);
                                at += n;
                            }
                        }
                        if let Some(w) = multipart.as_mut() {
                            w.wait_for_capacity(PARTS_IN_FLIGHT)
                                .await
                                .map_err(|e| self.err(&what, e))?;
                            w.write(&b);
                            progress.add(b.len() as u64);
                        }
                    }
                    Some(Piece::Commit(n)) => return Ok(n == total),
                }
            }
        };
        let fed: Result<bool, RemoteError> = tokio::select! {
            r = feed => r,
            _ = stop.cancelled() => Ok(false),
        };
        // The writer is not held up by an upload that ends here.
        drop(pieces);
        let committed = match fed {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                self.abort(multipart.take()).await;
                return Streamed::Failed(e);
            }
        };
        if !committed {
            self.abort(multipart.take()).await;
            return Streamed::Dropped;
        }
        // After the commit: within CACHE_REQUEST_TIMEOUT, the parts in flight (the upload is
        // aborted if they take longer), then the last part and the completion (dropped if they
        // take longer: incomplete, never visible; docs/scaling.md has the bucket's lifecycle
        // rule that removes such uploads).
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let timed_out = || {
            RemoteError(format!(
                "{what}: not done within {}s of the archive's end (CACHE_REQUEST_TIMEOUT)",
                self.request_timeout.as_secs()
            ))
        };
        if let Some(w) = multipart.as_mut() {
            let failure = tokio::select! {
                r = tokio::time::timeout_at(deadline, w.wait_for_capacity(0)) => match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(Streamed::Failed(self.err(&what, e))),
                    Err(_) => Some(Streamed::Failed(timed_out())),
                },
                _ = stop.cancelled() => Some(Streamed::Dropped),
            };
            if let Some(failure) = failure {
                self.abort(multipart.take()).await;
                return failure;
            }
        }
        let finish = async {
            match multipart.take() {
                Some(w) => w.finish().await.map(|_| ()).map_err(|e| self.err(&what, e)),
                None => {
                    let Some(f) = file.take() else {
                        return Err(RemoteError(format!("{what}: the archive's file is gone")));
                    };
                    let body = tokio::task::spawn_blocking(move || mapped(&f, total))
                        .await
                        .map_err(|e| self.err(&what, e))?
                        .map_err(|e| self.err(&what, e))?;
                    store
                        .put(&object, PutPayload::from_bytes(body))
                        .await
                        .map_err(|e| self.err(&what, e))?;
                    progress.add(total);
                    Ok(())
                }
            }
        };
        let finished = tokio::select! {
            r = tokio::time::timeout_at(deadline, finish) => r,
            _ = stop.cancelled() => return Streamed::Dropped,
        };
        match finished {
            Err(_) => Streamed::Failed(timed_out()),
            Ok(Err(e)) => Streamed::Failed(e),
            Ok(Ok(())) => match self.head(&*store, key).await {
                Ok(Head::Found(state)) => Streamed::Uploaded(state),
                Ok(Head::Missing) => Streamed::Failed(RemoteError(format!(
                    "{what}: the object is not there after the upload"
                ))),
                Err(e) => Streamed::Failed(e),
            },
        }
    }

    /// Aborts the multipart upload `w`, if any, so the store drops its parts.
    async fn abort(&self, w: Option<WriteMultipart>) {
        if let Some(w) = w
            && let Ok(Err(e)) = tokio::time::timeout(ABORT_TIMEOUT, w.abort()).await
        {
            let e = self.err("aborting an incomplete cache upload", e);
            tracing::warn!(error = %e, "the bucket's lifecycle rule removes it (docs/scaling.md)");
        }
    }
}

/// What a multipart upload that starts once the archive is past the single-PUT size reads back
/// from the file at a time.
const READ_BACK: usize = 1024 * 1024;

/// The first `len` bytes of a finished archive, for a single PUT, mapped from its file rather
/// than read: the archive is never in memory twice (the mapping shares the file's page cache;
/// on tmpfs, its very pages), and object_store sends the one buffer as it is (and signs it).
///
/// The file is ferry's own, in the cache dir no job can write (its namespace is not a volume
/// directory), and an archive is only ever replaced by a rename or removed, never truncated or
/// rewritten in place, so the mapped pages stay valid while the request holds them (a removed
/// file lives on while mapped). A file shorter than `len` is refused.
fn mapped(file: &std::fs::File, len: u64) -> io::Result<bytes::Bytes> {
    use std::os::fd::AsRawFd;
    if file.metadata()?.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive is shorter than what was written",
        ));
    }
    if len == 0 {
        return Ok(bytes::Bytes::new());
    }
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file at least that
    // long; nothing else refers to the address, and `Mapping` unmaps it once.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes::Bytes::from_owner(Mapping { ptr, len }))
}

/// A read-only mapping, unmapped when the last `Bytes` of it is dropped.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; any thread may read or unmap it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made by `mapped`, unmapped only here.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// How long aborting a multipart upload may take; an upload not aborted stays incomplete
/// (never visible) until the bucket's lifecycle rule removes it (docs/scaling.md).
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint object_store is given (none = AWS's, from the region) and whether requests
/// are virtual-host style; object_store wants the bucket in a virtual-host endpoint.
fn s3_endpoint(s3: &ferry_config::CacheS3) -> (Option<String>, bool) {
    let virtual_host = s3
        .path_style
        .map(|p| !p)
        .unwrap_or_else(|| virtual_host_by_default(&s3.server_address));
    if s3.server_address.is_empty() {
        return (None, virtual_host);
    }
    let scheme = if s3.insecure { "http" } else { "https" };
    let host = if virtual_host {
        format!("{}.{}", s3.bucket_name, s3.server_address)
    } else {
        s3.server_address.clone()
    };
    (Some(format!("{scheme}://{host}")), virtual_host)
}

/// gitlab-runner's rule when `PathStyle` is not set: virtual-host style on AWS and Google
/// (whose endpoints support it), path style for any other server (MinIO, Ceph, ...).
fn virtual_host_by_default(server_address: &str) -> bool {
    let host = server_address.split(':').next().unwrap_or("");
    server_address.is_empty()
        || host.ends_with(".amazonaws.com")
        || host == "storage.googleapis.com"
}

/// `CACHE_REQUEST_TIMEOUT` (whole minutes, as gitlab-runner reads it); anything else or
/// nothing gives the default.
pub fn request_timeout(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|m| *m > 0)
        .map(|m| Duration::from_secs(m.saturating_mul(60)))
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
}

/// `RESTORE_CACHE_ATTEMPTS`: 1 unless a number from 1 to 10 is given.
pub fn restore_attempts(value: Option<&str>) -> u32 {
    value
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(|n| n.clamp(1, 10))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_gitlab_runners() {
        let mut c = CacheSection::default();
        assert_eq!(
            object_prefix(&c, "abcdefghi", 42),
            "runner/abcdefghi/project/42"
        );
        c.path = Some("/ci/cache/".into());
        assert_eq!(
            object_prefix(&c, "abcdefghi", 42),
            "ci/cache/runner/abcdefghi/project/42"
        );
        c.shared = true;
        assert_eq!(object_prefix(&c, "abcdefghi", 42), "ci/cache/project/42");
    }

    #[test]
    fn path_style_default_follows_the_address() {
        assert!(virtual_host_by_default(""));
        assert!(virtual_host_by_default("s3.eu-west-1.amazonaws.com"));
        assert!(!virtual_host_by_default("minio.internal:9000"));
        assert!(!virtual_host_by_default("127.0.0.1:9000"));
    }

    #[test]
    fn endpoints_for_path_and_virtual_host_style() {
        let mut s3 = ferry_config::CacheS3 {
            server_address: "minio:9000".into(),
            bucket_name: "b".into(),
            ..Default::default()
        };
        assert_eq!(s3_endpoint(&s3), (Some("https://minio:9000".into()), false));
        s3.path_style = Some(false);
        s3.insecure = true;
        assert_eq!(s3_endpoint(&s3), (Some("http://b.minio:9000".into()), true));
        s3.server_address = String::new();
        s3.path_style = None;
        assert_eq!(s3_endpoint(&s3), (None, true));
        s3.path_style = Some(true);
        assert_eq!(s3_endpoint(&s3), (None, false));
    }

    #[test]
    fn downloads_ask_for_one_range_per_connection_of_one_to_four_parts() {
        let state = |mib: u64| RemoteState {
            object: "o".into(),
            e_tag: Some("e".into()),
            last_modified: String::new(),
            size: mib * 1024 * 1024,
        };
        // (size in MiB, ranges): at most 4 at once, each 16 to 64 MiB.
        for (mib, ranges) in [
            (10, 1),
            (16, 1),
            (20, 2),
            (64, 4),
            (105, 4),
            (256, 4),
            (300, 5),
        ] {
            assert_eq!(state(mib).ranges(), ranges, "{mib} MiB");
        }
        let no_etag = RemoteState {
            e_tag: None,
            ..state(300)
        };
        assert_eq!(no_etag.ranges(), 1);
    }

    #[test]
    fn job_variables() {
        assert_eq!(request_timeout(None), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(request_timeout(Some("2")), Duration::from_secs(120));
        assert_eq!(request_timeout(Some("x")), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(restore_attempts(None), 1);
        assert_eq!(restore_attempts(Some("3")), 3);
        assert_eq!(restore_attempts(Some("0")), 1);
        assert_eq!(restore_attempts(Some("99")), 10);
    }

    fn memory_remote(request_timeout: Duration, single_put_max: u64) -> RemoteCache {
        RemoteCache {
            config: Arc::new(CacheSection {
                kind: Some("s3".into()),
                ..CacheSection::default()
            }),
            prefix: "project/1".into(),
            request_timeout,
            restore_attempts: 1,
            transfer_meter: None,
            single_put_max,
        }
    }

    /// An archive being written, as archive.rs feeds an upload: the file gets each piece
    /// before the piece is sent.
    struct Writer {
        file: std::fs::File,
        tx: tokio::sync::mpsc::Sender<Piece>,
        _dir: tempfile::TempDir,
    }

    impl Writer {
        async fn new(tx: tokio::sync::mpsc::Sender<Piece>) -> Writer {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("archive"))
                .unwrap();
            tx.send(Piece::File(file.try_clone().unwrap()))
                .await
                .unwrap();
            Writer {
                file,
                tx,
                _dir: dir,
            }
        }

        async fn write(&mut self, data: &'static [u8]) {
            use std::io::Write;
            self.file.write_all(data).unwrap();
            self.tx
                .send(Piece::Data(bytes::Bytes::from_static(data)))
                .await
                .unwrap();
        }
    }

    async fn object(store: &Arc<dyn ObjectStore>) -> Option<Vec<u8>> {
        let got = store.get(&ObjectPath::from("project/1/k")).await.ok()?;
        Some(got.bytes().await.unwrap().to_vec())
    }

    /// `CACHE_REQUEST_TIMEOUT` counts from the archive's end: an archive slower to write than
    /// it still goes up.
    #[tokio::test]
    async fn a_streamed_upload_may_take_longer_than_the_request_timeout_before_its_commit() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let remote = memory_remote(Duration::from_millis(300), SINGLE_PUT_MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let stop = tokio_util::sync::CancellationToken::new();
        let upload = tokio::spawn({
            let (remote, store) = (remote.clone(), store.clone());
            async move {
                remote
                    .upload_stream(store, "k", rx, Progress::default(), 0, stop)
                    .await
            }
        });
        let mut w = Writer::new(tx).await;
        w.write(b"slow ").await;
        // The archive takes longer to write than the request timeout.
        tokio::time::sleep(Duration::from_millis(900)).await;
        w.write(b"archive").await;
        w.tx.send(Piece::Commit(12)).await.unwrap();
        match upload.await.unwrap() {
            Streamed::Uploaded(state) => assert_eq!(state.size, 12),
            Streamed::Failed(e) => panic!("failed: {e}"),
            Streamed::Dropped => panic!("dropped"),
        }
        assert_eq!(object(&store).await.unwrap(), b"slow archive");
    }

    /// An archive that grows past the single-PUT size goes up as a multipart upload from
    /// then on: what was written before is read back from the file, nothing is lost or doubled.
    #[tokio::test]
    async fn past_the_single_put_size_the_written_bytes_are_read_back_from_the_file() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let remote = memory_remote(Duration::from_secs(10), 10);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let progress = Progress::default();
        let upload = tokio::spawn({
            let (remote, store, progress) = (remote.clone(), store.clone(), progress.clone());
            let stop = tokio_util::sync::CancellationToken::new();
            async move {
                remote
                    .upload_stream(store, "k", rx, progress, 0, stop)
                    .await
            }
        });
        let mut w = Writer::new(tx).await;
        for piece in [&b"0123"[..], b"4567", b"89ab", b"cdef"] {
            w.write(piece).await;
        }
        w.tx.send(Piece::Commit(16)).await.unwrap();
        assert!(matches!(upload.await.unwrap(), Streamed::Uploaded(_)));
        assert_eq!(object(&store).await.unwrap(), b"0123456789abcdef");
        assert_eq!(progress.get(), 16);
    }

    /// A commit whose length is not what was sent (another archive) makes nothing visible, in
    /// one PUT or in parts.
    #[tokio::test]
    async fn a_commit_of_another_length_uploads_nothing() {
        for single_put_max in [SINGLE_PUT_MAX, 4] {
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            let remote = memory_remote(Duration::from_secs(10), single_put_max);
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let upload = tokio::spawn({
                let (remote, store) = (remote.clone(), store.clone());
                let stop = tokio_util::sync::CancellationToken::new();
                async move {
                    remote
                        .upload_stream(store, "k", rx, Progress::default(), 0, stop)
                        .await
                }
            });
            let mut w = Writer::new(tx).await;
            w.write(b"half of ").await;
            w.write(b"an archive").await;
            w.tx.send(Piece::Commit(100)).await.unwrap();
            assert!(matches!(upload.await.unwrap(), Streamed::Dropped));
            assert_eq!(object(&store).await, None, "{single_put_max}");
        }
    }

    /// The single PUT sends the file's bytes as they are, from its mapping.
    #[test]
    fn a_mapped_archive_is_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"archive bytes").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(&mapped(&f, 13).unwrap()[..], b"archive bytes");
        assert_eq!(&mapped(&f, 7).unwrap()[..], b"archive");
        assert!(mapped(&f, 0).unwrap().is_empty());
        // A file shorter than what was sent is refused, never mapped past its end.
        assert!(mapped(&f, 14).is_err());
    }
}
