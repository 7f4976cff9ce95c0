//! rswarm's image store: a node's images, pulled from registries or loaded from archives.
//!
//! Layout under the store root (see `docs/rfcs/002-containers.md`):
//!
//! ```text
//! blobs/sha256/<hex>          verified blobs (manifests, configs, layer blobs)
//! layers/<n>/                 one unpacked layer (an overlayfs lower dir); <n> a short chain id
//! layers/<n>.json             {diff_id, chain_id, size}
//! images/<config-hex>.json    image record: tags, repo digests, config, diff ids, blobs
//! tmp/                        partial downloads and unpacks; cleared by `open`
//! ```
//!
//! Everything is written in `tmp/` first and renamed into place once verified, so a failed
//! or interrupted operation leaves nothing half-written. One [`ImageStore`] per root.

#![deny(missing_docs)]

mod digest;
mod error;
mod load;
mod locks;
mod pull;
mod reference;
mod registry;
mod store;
pub mod testutil;
mod unpack;

pub use digest::{chain_ids, sha256_digest, short_id};
pub use error::ImageError;
pub use reference::ImageRef;
pub use registry::{
    endpoints, is_insecure, select_platform, Endpoint, Platform, RegistryConfig, Scheme,
};
pub use store::ImageStore;

/// An image in the store.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image's configuration blob.
    pub id: String,
    /// Tags in Docker's familiar form (`busybox:latest`, `localhost:5000/x:t`).
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` of the manifest (or manifest list) pulled, familiar form.
    pub repo_digests: Vec<String>,
    /// The config's `created` time (RFC 3339), if any.
    pub created: Option<String>,
    /// Unpacked size of all layers, bytes.
    pub size: u64,
    /// The image configuration.
    pub config: oci_spec::image::ImageConfiguration,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
}

/// Credentials for a registry (basic auth, also used for the bearer token flow).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One progress event of a pull, per layer, as Docker reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    /// Short digest (12 hex) of the layer blob.
    pub layer: String,
    /// `Pulling fs layer`, `Downloading`, `Verifying Checksum`, `Download complete`,
    /// `Extracting`, `Pull complete` or `Already exists`.
    pub status: String,
    /// Bytes done (for `Downloading`).
    pub current: u64,
    /// Bytes in all (the blob's size), 0 if unknown.
    pub total: u64,
}

/// What [`ImageStore::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// `Untagged: x` and `Deleted: sha256:...` lines, like `docker image prune`.
    pub deleted: Vec<String>,
    /// Bytes freed on disk (unpacked layers and blobs).
    pub reclaimed_bytes: u64,
}
