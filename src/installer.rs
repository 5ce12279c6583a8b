//! The live network installer: an initramfs made by dracut with hostforge's installer module
//! (`dracut/installer/`, compiled in) around the commit's own kernel. Booted from the network
//! with `hostforge.inst.*` kernel arguments, it brings the network up with DHCP, runs
//! `hostforge install` onto the named disk (verified against the key it carries, with the
//! first-boot config it carries or fetches), shows the progress and any failure on the
//! console, and reboots into the installed node. In the manner of coreos-installer's live
//! PXE images; `provision` builds it when the spec says `installer: hostforge`.

use crate::{ostreeutil, process};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const MODULE: &[(&str, &str)] = &[
    (
        "module-setup.sh",
        include_str!("../dracut/installer/module-setup.sh"),
    ),
    (
        "parse-hostforge-inst.sh",
        include_str!("../dracut/installer/parse-hostforge-inst.sh"),
    ),
    (
        "hostforge-installer.sh",
        include_str!("../dracut/installer/hostforge-installer.sh"),
    ),
    (
        "udhcpc.script",
        include_str!("../dracut/installer/udhcpc.script"),
    ),
];

/// Where the installer keeps what it carries (the key, the first-boot config, the layouts).
pub const CARRIED: &str = "/etc/hostforge/installer";

/// What goes into the installer.
pub struct Request<'a> {
    pub repo: &'a ostree::Repo,
    pub commit: &'a str,
    /// The kernel version in the commit's /usr/lib/modules.
    pub kver: &'a str,
    /// The trusted key's binary packets; without it the installer installs unverified.
    pub gpg_key: Option<&'a [u8]>,
    /// The first-boot config (a provisioning spec, YAML).
    pub config: Option<&'a str>,
    /// The initramfs to write.
    pub out: &'a Path,
}

/// Builds the installer initramfs (see the module docs) with this machine's dracut and the
/// running hostforge executable.
pub fn build(req: &Request) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("hostforge-installer-")
        .tempdir()
        .context("making a scratch directory for the installer")?;
    let w = work.path();
    // dracut's own tree with the installer module added: dracut finds modules only below
    // its base directory.
    let base = w.join("dracut");
    process::run(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/dracut")
            .arg(&base),
    )
    .context("copying dracut's modules (apt-get install dracut)")?;
    let module = base.join("modules.d/90hostforge-installer");
    std::fs::create_dir_all(&module)?;
    for (name, text) in MODULE {
        let p = module.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    // The commit's kernel modules, where dracut's --kmoddir wants them.
    let kmoddir = w.join("kmod/lib/modules").join(req.kver);
    std::fs::create_dir_all(kmoddir.parent().expect("has a parent"))?;
    ostreeutil::checkout_subpath(
        req.repo,
        req.commit,
        &format!("/usr/lib/modules/{}", req.kver),
        &kmoddir,
    )?;
    let carried = w.join("carried");
    std::fs::create_dir_all(carried.join("layouts"))?;
    for (name, text) in crate::image::layout::BUILTIN {
        std::fs::write(carried.join(format!("layouts/{name}.yaml")), text)?;
    }
    if let Some(key) = req.gpg_key {
        std::fs::write(carried.join("trusted.gpg"), key)?;
    }
    if let Some(config) = req.config {
        std::fs::write(carried.join("config.yaml"), config)?;
    }
    for tool in ["busybox", "mkfs.ext4", "mformat", "grub-mkimage", "gpg"] {
        if which(tool).is_none() {
            bail!(
                "the installer needs {tool} on this machine (apt-get install busybox-static \
                 e2fsprogs mtools grub-common grub-pc-bin grub-efi-amd64-bin gpg)"
            );
        }
    }
    let exe = std::env::current_exe().context("finding the hostforge executable")?;
    let confdir = w.join("conf.d");
    std::fs::create_dir_all(&confdir)?;
    process::run(
        Command::new("dracut")
            .env("dracutbasedir", &base)
            .env("HOSTFORGE_BIN", &exe)
            // This machine's dracut settings (its own initramfs's modules) stay out.
            .args(["--conf", "/dev/null", "--confdir"])
            .arg(&confdir)
            .args([
                "--force",
                "--quiet",
                "--no-hostonly",
                "--no-hostonly-cmdline",
                "--reproducible",
                "--no-early-microcode",
                "--compress",
                "zstd",
                "--modules",
                "bash hostforge-installer",
                "--kver",
                req.kver,
                "--kmoddir",
            ])
            .arg(&kmoddir)
            .arg("--include")
            .arg(&carried)
            .arg(CARRIED)
            .arg(req.out),
    )
    .context("building the installer initramfs with dracut")?;
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}
