//! The crate's error type.

use std::path::Path;

/// Everything that can go wrong in the image store.
///
/// Messages are lowercase, say what was wrong and, where there is one, what to do about it.
/// Errors that come from a registry name the reference and the registry's own answer.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The text is not a valid image reference.
    #[error("invalid reference format {input:?}: {reason}")]
    InvalidReference {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// The registry configuration (mirrors, insecure registries) is not valid.
    #[error("invalid registry configuration: {0}")]
    InvalidConfig(String),

    /// The registry refused the credentials, or asked for some and none were given.
    #[error("pull access denied for {reference}: registry {registry} answered: {answer}; check the repository name and log in with valid credentials")]
    Unauthorized {
        /// The reference being pulled (canonical form).
        reference: String,
        /// The registry host that answered.
        registry: String,
        /// The registry's answer.
        answer: String,
    },

    /// The registry does not know the manifest (unknown repository, tag or digest).
    #[error("manifest for {reference} not found: registry {registry} answered: {answer}; check the name and tag")]
    ManifestNotFound {
        /// The reference being pulled (canonical form).
        reference: String,
        /// The registry host that answered.
        registry: String,
        /// The registry's answer.
        answer: String,
    },

    /// Any other failure while talking to a registry.
    #[error("pulling {reference} from {registry} failed: {answer}")]
    Registry {
        /// The reference being pulled (canonical form).
        reference: String,
        /// The registry host (or mirror) that was asked.
        registry: String,
        /// The registry's answer, or the transport error.
        answer: String,
    },

    /// A manifest list / index has no entry for this node's platform.
    #[error("no matching manifest for {platform} in the manifest list entries of {reference} (available: {available}); pull an image built for this platform")]
    NoMatchingPlatform {
        /// The reference being pulled.
        reference: String,
        /// This node's platform, `os/arch[/variant]`.
        platform: String,
        /// The platforms the list offers.
        available: String,
    },

    /// A manifest or layer uses a media type this store cannot handle.
    #[error("unsupported media type {media_type:?} in {reference}: {what}")]
    UnsupportedMediaType {
        /// The image (reference or archive) it came from.
        reference: String,
        /// The media type.
        media_type: String,
        /// What carried it (manifest, layer ...).
        what: String,
    },

    /// Content did not hash to the digest it was announced with. Nothing was stored.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; the content was refused and removed")]
    DigestMismatch {
        /// What was verified (blob, layer diff id, manifest ...).
        what: String,
        /// The announced digest.
        expected: String,
        /// The digest of what was actually received.
        actual: String,
    },

    /// The registry sent more bytes than the descriptor announced.
    #[error("blob {digest} is larger than its descriptor's {expected} bytes; refused")]
    BlobTooLarge {
        /// The blob's digest.
        digest: String,
        /// The size the descriptor announced.
        expected: u64,
    },

    /// A layer entry would be written outside the layer directory (a `..` component, a
    /// path through a symlink, a hard link pointing out). The partial layer was removed.
    #[error("refusing layer {layer}: entry {path:?} {reason}")]
    UnsafeLayerEntry {
        /// The layer (diff id or blob) being unpacked.
        layer: String,
        /// The entry's path as written in the tar.
        path: String,
        /// Why it was refused.
        reason: String,
    },

    /// A layer tar could not be read or written out.
    #[error("unpacking layer {layer} failed: {message}")]
    Unpack {
        /// The layer being unpacked.
        layer: String,
        /// What went wrong.
        message: String,
    },

    /// An image archive (`docker save` or OCI layout) is malformed.
    #[error("invalid image archive {archive}: {reason}")]
    InvalidArchive {
        /// The archive's path.
        archive: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An image's configuration blob could not be parsed.
    #[error("invalid image configuration {digest}: {reason}")]
    InvalidImageConfig {
        /// The config digest.
        digest: String,
        /// The parse error.
        reason: String,
    },

    /// No image matches the name or id.
    #[error("no such image: {0}")]
    NoSuchImage(String),

    /// An id prefix matches more than one image.
    #[error("image id prefix {0:?} is ambiguous: it matches several images; give more hex digits")]
    AmbiguousId(String),

    /// The image is used by a container and `force` was not given.
    #[error("conflict: unable to remove {name} (image {id}): it is in use by a container; stop and remove the container first, or force")]
    InUse {
        /// The name that was given.
        name: String,
        /// The image id.
        id: String,
    },

    /// The image is tagged in several repositories and was named by id without `force`.
    #[error("conflict: unable to delete {id} (must be forced): image is referenced in multiple repositories ({tags})")]
    MultipleReferences {
        /// The image id.
        id: String,
        /// Its tags.
        tags: String,
    },

    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A record file could not be parsed or written.
    #[error("{context}: {source}")]
    Json {
        /// What was being read or written, with the path.
        context: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Adds context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    /// Wraps an I/O error with "`what` `path`".
    fn at(self, what: &str, path: &Path) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, what: &str, path: &Path) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::Io {
            context: format!("{what} {}", path.display()),
            source,
        })
    }
}
