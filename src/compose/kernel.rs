//! Making a tree bootable: find the kernel wherever the packages put it (Fedora's
//! `/usr/lib/modules/KVER/vmlinuz` or Debian's `/boot/vmlinuz-KVER`), run depmod, and build the
//! initramfs with the tree's own dracut and hostforge's ostree module, in bubblewrap.

use super::scripts;
use crate::dracut;
use crate::process;
use crate::treefile::{BootLocation, Treefile};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Kernel versions present in the tree: directories of /usr/lib/modules that have a kernel
/// image there or in /boot.
fn find_kernels(root: &Path) -> Result<Vec<String>> {
    let mut kvers = Vec::new();
    let modules = root.join("usr/lib/modules");
    if let Ok(rd) = std::fs::read_dir(&modules) {
        for e in rd.flatten() {
            let kver = e.file_name().to_string_lossy().into_owned();
            let has_image = modules.join(&kver).join("vmlinuz").exists()
                || root.join(format!("boot/vmlinuz-{kver}")).exists();
            if has_image {
                kvers.push(kver);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("boot")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(kver) = name.strip_prefix("vmlinuz-") {
                if !modules.join(kver).is_dir() {
                    bail!("/boot/{name} has no /usr/lib/modules/{kver}: the kernel's modules are missing");
                }
            }
        }
    }
    kvers.sort();
    Ok(kvers)
}

/// Moves a Debian-style `/boot/NAME-KVER` into `/usr/lib/modules/KVER/DEST`.
fn adopt(root: &Path, kver: &str, boot_name: &str, dest: &str) -> Result<()> {
    let from = root.join(format!("boot/{boot_name}-{kver}"));
    if std::fs::symlink_metadata(&from).is_ok() {
        let to = root.join(format!("usr/lib/modules/{kver}/{dest}"));
        if std::fs::symlink_metadata(&to).is_err() {
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        } else {
            std::fs::remove_file(&from)?;
        }
    }
    Ok(())
}

/// What became of the initramfs.
pub enum Initramfs {
    /// `no-initramfs: true`.
    None,
    /// dracut ran, for this reason (no kept image, or what changed); `compressed` says who
    /// compressed the image.
    Built { why: String, compressed: String },
    /// A kept image whose inputs are all as this tree has them.
    Reused,
}

/// Places the kernel and builds (or reuses) the initramfs; returns the kernel version, or
/// None for a tree without a kernel. A kept initramfs (see [`super::initramfs`]) is reused
/// when its inputs are unchanged, unless `rebuild` (`--rebuild-initramfs`) asks for dracut;
/// what dracut builds is kept in `cache` for next time.
pub fn prepare(
    root: &Path,
    tf: &Treefile,
    work: &Path,
    cache: &super::initramfs::Cache,
    rebuild: bool,
) -> Result<Option<(String, Initramfs)>> {
    let kvers = find_kernels(root)?;
    let kver = match kvers.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => bail!(
            "{}: the tree has several kernels ({}); install exactly one",
            tf.path.display(),
            many.join(", ")
        ),
    };
    adopt(root, &kver, "vmlinuz", "vmlinuz")?;
    adopt(root, &kver, "config", "config")?;
    adopt(root, &kver, "System.map", "System.map")?;
    // Distribution-built initramfs images are host-specific; ours replaces them.
    for stale in [
        format!("boot/initrd.img-{kver}"),
        format!("boot/initramfs-{kver}.img"),
    ] {
        let p = root.join(stale);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p)?;
        }
    }

    let depmod = ["usr/sbin/depmod", "usr/bin/depmod"]
        .iter()
        .find(|p| root.join(p).exists())
        .map(|p| format!("/{p}"));
    match depmod {
        Some(depmod) => {
            process::run(
                scripts::sandbox(root, true)
                    .arg("--")
                    .arg(&depmod)
                    .arg(&kver),
            )
            .with_context(|| format!("running the tree's depmod for kernel {kver}"))?;
        }
        // A tree without kmod still gets its module index, from the host's depmod.
        None => {
            process::run(
                std::process::Command::new("depmod")
                    .arg("-b")
                    .arg(root)
                    .arg(&kver),
            )
            .with_context(|| format!("running depmod -b for kernel {kver}"))?;
        }
    }

    let moddir = root.join(format!("usr/lib/modules/{kver}"));
    let initramfs = if tf.doc.no_initramfs == Some(true) {
        Initramfs::None
    } else {
        let dracut_bin = ["usr/bin/dracut", "usr/sbin/dracut"]
            .iter()
            .find(|p| root.join(p).exists())
            .map(|p| format!("/{p}"));
        let Some(dracut_bin) = dracut_bin else {
            bail!(
                "{}: the tree has kernel {kver} but no dracut; add the dracut package or set \
                 `no-initramfs: true`",
                tf.path.display()
            );
        };
        let modules_d = root.join("usr/lib/dracut/modules.d");
        dracut::Module::default().write(&modules_d)?;
        let mut args: Vec<String> = [
            "--no-hostonly",
            "--reproducible",
            "--add",
            "ostree",
            "--kver",
            &kver,
        ]
        .map(String::from)
        .to_vec();
        args.extend(tf.doc.initramfs_args.iter().flatten().cloned());
        // dracut's default compressor is one gzip process; hostforge compresses on every core
        // unless the treefile or the tree's dracut config chose one (see super::cpiogz).
        let dracut_compresses = super::cpiogz::chosen_by_user(root, &args)?;
        if dracut_compresses.is_none() {
            args.push("--no-compress".into());
        }
        let key = super::initramfs::key(root, &kver, &dracut_bin, &args)?;
        let img = moddir.join("initramfs.img");
        if std::fs::symlink_metadata(&img).is_ok() {
            std::fs::remove_file(&img)?;
        }
        let kept = if rebuild {
            Err("--rebuild-initramfs".to_string())
        } else {
            cache.lookup(&key, root)?
        };
        let initramfs = match kept {
            Ok(kept) => {
                std::fs::copy(&kept, &img)?;
                Initramfs::Reused
            }
            Err(why) => {
                let out = work.join("initramfs-out");
                let stage = work.join("initramfs-stage");
                for d in [&out, &stage] {
                    let _ = std::fs::remove_dir_all(d);
                    std::fs::create_dir_all(d)?;
                }
                // dracut works in /var/tmp (the layout step empties /var afterwards); --keep
                // leaves its staging directory there, which says what it took from the tree.
                std::fs::create_dir_all(root.join("var/tmp"))?;
                let mut cmd = scripts::sandbox(root, false);
                cmd.arg("--bind")
                    .arg(&stage)
                    .arg("/var/tmp")
                    .arg("--bind")
                    .arg(&out)
                    .arg("/tmp/hostforge-out")
                    .arg("--")
                    .arg(&dracut_bin)
                    .args(&args)
                    .args(["--keep", "--force", "/tmp/hostforge-out/initramfs.img"]);
                process::run(&mut cmd).with_context(|| {
                    format!("building the initramfs for kernel {kver} with the tree's dracut")
                })?;
                let built = out.join("initramfs.img");
                let compressed = match dracut_compresses {
                    Some(why) => format!("compressed by dracut: {why}"),
                    None => {
                        super::cpiogz::compress_file(&built).with_context(|| {
                            format!(
                                "compressing the initramfs of kernel {kver} (to let dracut do \
                                 it, add --compress=gzip to initramfs-args)"
                            )
                        })?;
                        "gzip by hostforge on every core".to_string()
                    }
                };
                let manifest = super::initramfs::manifest_of_staging(
                    root,
                    &super::initramfs::staging_dir(&stage)?,
                )?;
                cache.keep(&key, &built, manifest)?;
                std::fs::remove_dir_all(&stage)?;
                std::fs::copy(&built, &img)?;
                Initramfs::Built { why, compressed }
            }
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644))?;
        initramfs
    };
    if tf.doc.boot_location == Some(BootLocation::Both) {
        std::fs::copy(
            moddir.join("vmlinuz"),
            root.join(format!("boot/vmlinuz-{kver}")),
        )?;
        if moddir.join("initramfs.img").exists() {
            std::fs::copy(
                moddir.join("initramfs.img"),
                root.join(format!("boot/initramfs-{kver}.img")),
            )?;
        }
    }
    Ok(Some((kver, initramfs)))
}
