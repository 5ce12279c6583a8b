//! `cargo xtask container [--tag TAG] [--debug]`: hostforge as a container image for CI
//! pipelines. The base is Debian 12 made by mmdebstrap from Debian's mirror (minbase plus
//! what hostforge runs at compose and image-build time); buildah puts the hostforge binary on
//! top and commits the image into the local containers storage, where `podman run` finds it.
//! See README.md ("hostforge in a container") for how it runs and what it needs.

use crate::run;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's default name.
pub const DEFAULT_TAG: &str = "localhost/hostforge:latest";

/// What hostforge runs besides its own code: the libraries it links (libostree, libdnf and
/// librepo, libsolv, libext2fs), the ostree CLI and rofiles-fuse (fuse3), rpm, bubblewrap
/// for scriptlets, dracut and kmod when the tree brings none, e2fsprogs and qemu-img for
/// images, GRUB's BIOS and UEFI images and mtools for bootloaders, gnupg for signing,
/// systemd's tools (systemctl presets, tmpfiles), and CA certificates for HTTPS repos.
const PACKAGES: &[&str] = &[
    "ostree",
    "libostree-1-1",
    "rpm",
    "libdnf2",
    "librepo0",
    "libsolvext1",
    "libext2fs2",
    "e2fsprogs",
    "fuse3",
    "bubblewrap",
    "dracut",
    "kmod",
    "cpio",
    "zstd",
    "diffutils",
    "qemu-utils",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "mtools",
    "gnupg",
    "systemd",
    "ca-certificates",
];

/// The Debian 12 root file system as a tar, made once per package list (kept under
/// target/container/).
fn base_rootfs(top: &Path) -> Result<PathBuf> {
    let mut h = Sha256::new();
    for p in PACKAGES {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let dir = top.join("target/container");
    std::fs::create_dir_all(&dir)?;
    let tar = dir.join(format!("debian12-{}.tar", &hex::encode(h.finalize())[..16]));
    if tar.exists() {
        return Ok(tar);
    }
    let partial = tar.with_extension("tar.partial");
    eprintln!("container: making the Debian 12 base with mmdebstrap");
    run(Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--quiet",
        ])
        .arg(format!("--include={}", PACKAGES.join(",")))
        // No documentation or translations in the image (dpkg path-exclude, as slim images).
        .arg("--dpkgopt=path-exclude=/usr/share/{doc,man,info,locale}/*")
        .arg("--dpkgopt=path-include=/usr/share/locale/locale.alias")
        .arg("bookworm")
        .arg(&partial))
    .context("making the Debian 12 base (mmdebstrap; cargo xtask deps installs it)")?;
    std::fs::rename(&partial, &tar)?;
    Ok(tar)
}

/// Builds the image from `bin` (a hostforge binary built on this Debian 12 machine) and
/// tags it `tag`; returns the image id.
pub fn build(top: &Path, bin: &Path, tag: &str) -> Result<String> {
    let rootfs = base_rootfs(top)?;
    let out = |cmd: &mut Command| -> Result<String> {
        Ok(crate::distro::run_out(cmd)?.trim().to_string())
    };
    let ctr = out(Command::new("buildah").args(["from", "--quiet", "scratch"]))?;
    let built = (|| -> Result<String> {
        run(Command::new("buildah")
            .args(["add", "--quiet", &ctr])
            .arg(&rootfs)
            .arg("/"))?;
        run(Command::new("buildah")
            .args(["copy", "--quiet", "--chmod", "0755", &ctr])
            .arg(bin)
            .arg("/usr/bin/hostforge"))?;
        let version = out(Command::new(bin).arg("--version"))?;
        run(Command::new("buildah").args([
            "config",
            "--entrypoint",
            r#"["/usr/bin/hostforge"]"#,
            "--cmd",
            "--help",
            "--workingdir",
            "/work",
            "--env",
            "LANG=C.UTF-8",
            "--label",
            "org.opencontainers.image.title=hostforge",
            "--label",
            "org.opencontainers.image.description=Composes rpm-ostree treefiles and builds bootable disk images",
            "--label",
            &format!(
                "org.opencontainers.image.version={}",
                version.trim_start_matches("hostforge ")
            ),
            "--label",
            "org.opencontainers.image.base.name=debian:12",
            &ctr,
        ]))?;
        out(Command::new("buildah").args(["commit", "--quiet", "--rm", &ctr, tag]))
    })();
    if built.is_err() {
        let _ = Command::new("buildah").args(["rm", &ctr]).output();
    }
    let id = built?;
    eprintln!("container: {tag} ({id})");
    Ok(id)
}
