//! Image resolution. No registry is reachable from skiff's nodes, so images resolve
//! locally, and an image that does not resolve says where skiff looked:
//!
//! - `skiff.local/host` (any `:tag` accepted and ignored) runs the container on the
//!   node's own filesystem; volumes are bind-mounted at their mountPath in a private mount
//!   namespace, over directories that must already exist on the node;
//! - `skiff.local/rootfs/<absolute path>` runs the container chrooted into that
//!   directory (a root filesystem, e.g. an unpacked image), in its own mount namespace,
//!   with `/proc` and `/dev` mounted when the directory has them;
//! - anything else is `ErrImagePull`.

use std::path::{Path, PathBuf};

/// Where a container's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Host,
    Rootfs(PathBuf),
}

pub const HOST: &str = "skiff.local/host";
pub const ROOTFS_PREFIX: &str = "skiff.local/rootfs/";

/// Resolves an image reference; the error is the `ErrImagePull` message.
pub fn resolve(image: &str) -> Result<Image, String> {
    let untagged = image.split_once(':').map_or(image, |(name, _)| name);
    if untagged == HOST {
        return Ok(Image::Host);
    }
    if let Some(rest) = image.strip_prefix(ROOTFS_PREFIX) {
        let path = Path::new("/").join(rest.trim_start_matches('/'));
        return if path.join("bin").is_dir() || path.join("usr").is_dir() {
            Ok(Image::Rootfs(path))
        } else {
            Err(format!(
                "image {image:?}: {} is not a root filesystem directory (no bin/ or usr/ in it); skiff looks images up locally: the directory after {ROOTFS_PREFIX} must hold an unpacked root filesystem",
                path.display()
            ))
        };
    }
    Err(format!(
        "image {image:?} is not available: skiff resolves images locally and never contacts a registry. Use {HOST:?} to run on the node's filesystem, or \"{ROOTFS_PREFIX}<absolute path>\" for a root filesystem directory on the node"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_rootfs_resolve_others_explain() {
        assert_eq!(resolve("skiff.local/host"), Ok(Image::Host));
        assert_eq!(resolve("skiff.local/host:latest"), Ok(Image::Host));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let img = format!("{ROOTFS_PREFIX}{}", dir.path().display());
        assert_eq!(resolve(&img), Ok(Image::Rootfs(dir.path().to_path_buf())));
        let empty = tempfile::tempdir().unwrap();
        let err = resolve(&format!("{ROOTFS_PREFIX}{}", empty.path().display())).unwrap_err();
        assert!(err.contains("not a root filesystem"), "{err}");
        let err = resolve("nginx:1.27").unwrap_err();
        assert!(
            err.contains("never contacts a registry") && err.contains("skiff.local/host"),
            "{err}"
        );
        assert!(resolve("skiff.local/hostile").is_err());
    }
}
