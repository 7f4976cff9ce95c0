//! End-to-end tests of the image store against a real `docker-registry` (Debian's
//! distribution 2.8), with images built here and pushed with `skopeo`. They need root;
//! without root or the tools they skip with a message.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rswarm_image::testutil::{
    busybox_layer, tar_dir, write_oci_layout, Compression, Entry, ImageSpec, LayoutInfo,
};
use rswarm_image::{ImageError, ImageRef, ImageStore, PullProgress, RegistryConfig};
use support::{prerequisites, skopeo_copy, Registry, BUSYBOX};
use tokio::sync::mpsc;

fn r(s: &str) -> ImageRef {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn base_layer() -> Vec<(String, Entry)> {
    busybox_layer(BUSYBOX, &["sh", "ls", "cat", "echo"]).unwrap_or_else(|e| panic!("{e}"))
}

/// busybox + a layer adding `etc/motd` (text `motd`) and hiding `bin/cat`.
fn layout(dir: &Path, motd: &str, spec: ImageSpec) -> LayoutInfo {
    let top = vec![
        (
            "etc/motd".to_string(),
            Entry::File(motd.as_bytes().to_vec()),
        ),
        ("bin/cat".to_string(), Entry::Whiteout),
    ];
    write_oci_layout(dir, &[base_layer(), top], &spec).unwrap_or_else(|e| panic!("{e}"))
}

fn open(root: &Path, cfg: RegistryConfig) -> ImageStore {
    ImageStore::open(root, cfg).unwrap_or_else(|e| panic!("open: {e}"))
}

fn drain(mut rx: mpsc::Receiver<PullProgress>) -> Vec<PullProgress> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

fn check_layers(store: &ImageStore, image: &rswarm_image::Image) -> Vec<PathBuf> {
    let dirs = store.layer_dirs(image).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dirs.len(), 2);
    let bottom = &dirs[0];
    assert!(bottom.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(bottom.join("bin/sh")).ok(),
        Some(PathBuf::from("/bin/busybox"))
    );
    let top = &dirs[1];
    let cat = std::fs::symlink_metadata(top.join("bin/cat")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cat.file_type().is_char_device(),
        "whiteout is a char device"
    );
    assert_eq!(cat.rdev(), 0);
    assert!(top.join("etc/motd").is_file());
    dirs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_share_errors_remove_prune() {
    if !prerequisites() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let info = layout(&work.path().join("one"), "one\n", ImageSpec::default());
    reg.push(&work.path().join("one"), "latest", "test/bb:latest");
    let info2 = layout(&work.path().join("two"), "two\n", ImageSpec::default());
    reg.push(&work.path().join("two"), "latest", "test/bb2:latest");

    let root = work.path().join("store");
    let store = open(&root, RegistryConfig::default());
    let reference = r(&format!("{}/test/bb:latest", reg.host()));

    // two concurrent pulls of one reference share the work
    let (tx1, rx1) = mpsc::channel(1024);
    let (tx2, rx2) = mpsc::channel(1024);
    let (a, b) = tokio::join!(
        store.pull(&reference, None, Some(tx1)),
        store.pull(&reference, None, Some(tx2))
    );
    let a = a.unwrap_or_else(|e| panic!("pull: {e}"));
    let b = b.unwrap_or_else(|e| panic!("second pull: {e}"));
    assert_eq!(a.id, b.id);
    assert_eq!(a.id, info.config_digest);
    let ev1 = drain(rx1);
    let ev2 = drain(rx2);
    let statuses = |evs: &[PullProgress]| evs.iter().map(|e| e.status.clone()).collect::<Vec<_>>();
    let all: Vec<String> = statuses(&ev1).into_iter().chain(statuses(&ev2)).collect();
    assert!(all.iter().any(|s| s == "Pull complete"), "{all:?}");
    assert!(all.iter().any(|s| s == "Already exists"), "{all:?}");
    assert!(ev1.iter().chain(&ev2).all(|e| e.layer.len() == 12));

    let tag = format!("{}/test/bb:latest", reg.host());
    assert_eq!(a.repo_tags, vec![tag.clone()]);
    assert!(a.repo_digests[0].starts_with(&format!("{}/test/bb@sha256:", reg.host())));
    assert_eq!(a.diff_ids, info.diff_ids);
    assert!(a.size > 1_000_000);
    let dirs = check_layers(&store, &a);
    assert!(dirs[0].starts_with(root.join("layers")));
    assert!(dirs[0].file_name().map(|n| n.len()) == Some(12));

    // a different image sharing the base layer: unpacked once
    let reference2 = r(&format!("{}/test/bb2:latest", reg.host()));
    let c = store
        .pull(&reference2, None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.id, info2.config_digest);
    let dirs2 = check_layers(&store, &c);
    assert_eq!(dirs[0], dirs2[0]);
    assert_ne!(dirs[1], dirs2[1]);

    // the same two images pulled at once into a fresh store: the shared layer once
    let store2 = open(&work.path().join("store2"), RegistryConfig::default());
    let (x, y) = tokio::join!(
        store2.pull(&reference, None, None),
        store2.pull(&reference2, None, None)
    );
    let (x, y) = (
        x.unwrap_or_else(|e| panic!("{e}")),
        y.unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(check_layers(&store2, &x)[0], check_layers(&store2, &y)[0]);
    let layer_count = std::fs::read_dir(work.path().join("store2/layers"))
        .map(|d| d.count())
        .ok();
    assert_eq!(
        layer_count,
        Some(6),
        "3 layers, each a directory and a record"
    );

    // lookups
    assert_eq!(store.list().map(|l| l.len()).ok(), Some(2));
    let hex = &a.id["sha256:".len()..];
    for name in [tag.as_str(), &a.id, &hex[..8], &a.repo_digests[0]] {
        let found = store.resolve(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(found.map(|i| i.id), Some(a.id.clone()), "{name}");
    }

    // unknown tag: the error names the reference and the registry's answer
    let missing = r(&format!("{}/test/bb:nope", reg.host()));
    match store.pull(&missing, None, None).await {
        Err(e @ ImageError::ManifestNotFound { .. }) => {
            let s = e.to_string();
            assert!(s.contains(&missing.to_string()), "{s}");
            assert!(s.to_lowercase().contains("manifest unknown"), "{s}");
        }
        other => panic!("expected manifest not found, got {other:?}"),
    }

    // a corrupted blob is refused, nothing left behind
    let info3 = layout(&work.path().join("three"), "three\n", ImageSpec::default());
    reg.push(&work.path().join("three"), "latest", "test/bad:latest");
    let top_blob = reg.blob_file(&info3.layer_digests[1]);
    let mut bytes = std::fs::read(&top_blob).unwrap_or_else(|e| panic!("{e}"));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&top_blob, bytes).unwrap_or_else(|e| panic!("{e}"));
    let bad = r(&format!("{}/test/bad:latest", reg.host()));
    match store.pull(&bad, None, None).await {
        Err(e @ ImageError::DigestMismatch { .. }) => {
            assert!(e.to_string().contains(&info3.layer_digests[1]), "{e}");
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).map(|d| d.count()).ok(),
        Some(0)
    );
    assert!(!root
        .join("blobs/sha256")
        .join(info3.layer_digests[1].trim_start_matches("sha256:"))
        .exists());
    assert!(store.resolve(&bad.to_string()).ok().flatten().is_none());

    // remove: in use refused, then deleted with its own layer only
    let in_use = |id: &str| id == a.id;
    assert!(matches!(
        store.remove(&tag, false, &in_use),
        Err(ImageError::InUse { .. })
    ));
    let lines = store
        .remove(&tag, false, &|_: &str| false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lines[0], format!("Untagged: {tag}"));
    assert!(lines.contains(&format!("Deleted: {}", a.id)), "{lines:?}");
    assert!(!dirs[1].exists(), "the image's own top layer is gone");
    assert!(dirs[0].exists(), "the shared base layer stays");
    assert!(store.resolve(&tag).ok().flatten().is_none());

    // prune --all removes the rest, and every layer and blob
    let report = store
        .prune(true, &|_: &str| false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.deleted.contains(&format!("Deleted: {}", c.id)),
        "{report:?}"
    );
    assert!(report.reclaimed_bytes > 1_000_000);
    assert_eq!(
        std::fs::read_dir(root.join("layers"))
            .map(|d| d.count())
            .ok(),
        Some(0)
    );
    assert_eq!(
        std::fs::read_dir(root.join("blobs/sha256"))
            .map(|d| d.count())
            .ok(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth() {
    if !prerequisites() {
        return;
    }
    let reg = Registry::start(Some(("user", "pass")));
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    layout(&work.path().join("img"), "auth\n", ImageSpec::default());
    reg.push(&work.path().join("img"), "latest", "private/bb:latest");
    let store = open(&work.path().join("store"), RegistryConfig::default());
    let reference = r(&format!("{}/private/bb:latest", reg.host()));

    match store.pull(&reference, None, None).await {
        Err(e @ ImageError::Unauthorized { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains(&reference.to_string()) && s.contains("401"),
                "{s}"
            );
        }
        other => panic!("expected unauthorized, got {other:?}"),
    }
    let wrong = rswarm_image::Credentials {
        username: "user".into(),
        password: "wrong".into(),
    };
    assert!(matches!(
        store.pull(&reference, Some(&wrong), None).await,
        Err(ImageError::Unauthorized { .. })
    ));
    let creds = rswarm_image::Credentials {
        username: "user".into(),
        password: "pass".into(),
    };
    let image = store
        .pull(&reference, Some(&creds), None)
        .await
        .unwrap_or_else(|e| panic!("pull with credentials: {e}"));
    check_layers(&store, &image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_mirror() {
    if !prerequisites() {
        return;
    }
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let info = layout(&work.path().join("img"), "mirror\n", ImageSpec::default());
    reg.push(&work.path().join("img"), "latest", "library/bb:latest");
    let dead = support::free_port();
    let cfg = RegistryConfig {
        mirrors: vec![
            format!("http://127.0.0.1:{dead}"),
            format!("http://{}", reg.host()),
        ],
        insecure: vec![],
    };
    let store = open(&work.path().join("store"), cfg);
    let image = store
        .pull(&r("docker.io/library/bb:latest"), None, None)
        .await
        .unwrap_or_else(|e| panic!("pull through the mirror: {e}"));
    assert_eq!(image.id, info.config_digest);
    assert_eq!(image.repo_tags, vec!["bb:latest".to_string()]);
    assert!(image.repo_digests[0].starts_with("bb@sha256:"));
    assert!(store.resolve("bb").ok().flatten().is_some());
    check_layers(&store, &image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_archives() {
    if !prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = open(&work.path().join("store"), RegistryConfig::default());

    // docker save format, by skopeo
    let dir = work.path().join("img");
    let info = layout(&dir, "load\n", ImageSpec::default());
    let docker_tar = work.path().join("docker.tar");
    skopeo_copy(
        &dir,
        "latest",
        &format!("docker-archive:{}:bb:latest", docker_tar.display()),
    );
    let images = store
        .load(&docker_tar)
        .await
        .unwrap_or_else(|e| panic!("load docker-archive: {e}"));
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, info.config_digest);
    assert_eq!(images[0].repo_tags, vec!["bb:latest".to_string()]);
    check_layers(&store, &images[0]);

    // OCI layout tar named with io.containerd.image.name, zstd layers
    let dir2 = work.path().join("img2");
    let spec = ImageSpec {
        name: Some("docker.io/library/bboci:1".into()),
        compression: Compression::Zstd,
        ..ImageSpec::default()
    };
    let info2 = layout(&dir2, "oci\n", spec);
    let oci_tar = work.path().join("oci.tar");
    tar_dir(&dir2, &oci_tar).unwrap_or_else(|e| panic!("{e}"));
    let images = store
        .load(&oci_tar)
        .await
        .unwrap_or_else(|e| panic!("load oci tar: {e}"));
    assert_eq!(images[0].id, info2.config_digest);
    assert_eq!(images[0].repo_tags, vec!["bboci:1".to_string()]);
    check_layers(&store, &images[0]);

    // OCI archive by skopeo (ref.name "bb:2"), uncompressed layers
    let dir3 = work.path().join("img3");
    let spec = ImageSpec {
        compression: Compression::None,
        ..ImageSpec::default()
    };
    let info3 = layout(&dir3, "oci3\n", spec);
    let oci_tar3 = work.path().join("oci3.tar");
    skopeo_copy(
        &dir3,
        "latest",
        &format!("oci-archive:{}:bb:2", oci_tar3.display()),
    );
    let images = store
        .load(&oci_tar3)
        .await
        .unwrap_or_else(|e| panic!("load oci-archive: {e}"));
    assert_eq!(images[0].id, info3.config_digest);
    assert_eq!(images[0].repo_tags, vec!["bb:2".to_string()]);
    check_layers(&store, &images[0]);

    // loading again moves nothing and keeps the tags
    let again = store
        .load(&docker_tar)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again[0].repo_tags, vec!["bb:latest".to_string()]);
    assert_eq!(store.list().map(|l| l.len()).ok(), Some(3));

    // a corrupted archive is refused
    let mut bytes = std::fs::read(&oci_tar).unwrap_or_else(|e| panic!("{e}"));
    let blob = std::fs::read(
        dir2.join("blobs/sha256")
            .join(info2.layer_digests[0].trim_start_matches("sha256:")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pos = bytes
        .windows(64)
        .position(|w| w == &blob[..64])
        .unwrap_or_else(|| panic!("layer blob not found in the archive"));
    bytes[pos + 1000] ^= 0xff;
    let broken = work.path().join("broken.tar");
    std::fs::write(&broken, bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(store.load(&broken).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_registry_over_tls_without_verification() {
    if !prerequisites() {
        return;
    }
    let reg = Registry::start_with(None, true);
    let work = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    layout(&work.path().join("img"), "tls\n", ImageSpec::default());
    reg.push(&work.path().join("img"), "latest", "tls/bb:latest");
    // "localhost" is insecure by default: HTTPS without verifying the self-signed cert
    let store = open(&work.path().join("store"), RegistryConfig::default());
    let reference = r(&format!("localhost:{}/tls/bb:latest", reg.port));
    let image = store
        .pull(&reference, None, None)
        .await
        .unwrap_or_else(|e| panic!("pull over self-signed TLS: {e}"));
    assert_eq!(
        image.repo_tags,
        vec![format!("localhost:{}/tls/bb:latest", reg.port)]
    );
    check_layers(&store, &image);
}
