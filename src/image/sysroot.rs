//! The ostree sysroot side of images: commits pulled into a sysroot's repo, and the one
//! deploy that image builds, offline image operations and live sysroots all use.

use crate::ostreeutil;
use anyhow::{anyhow, Context, Result};
use ostree::gio;
use std::path::Path;

/// Pulls `r` from `repo` into the sysroot's repo by checksum (a stale summary file cannot
/// redirect it) and gives it the same ref there, so deploy's cleanup keeps it.
pub fn pull_into(sysroot_repo: &ostree::Repo, repo: &Path, r: &str) -> Result<String> {
    let src = ostreeutil::open_existing(repo)?;
    let commit = ostreeutil::resolve(&src, r)?
        .ok_or_else(|| anyhow!("ref {r} is not in {}", repo.display()))?;
    let imported = ostreeutil::import_archive_commit(repo, sysroot_repo, &commit)
        .with_context(|| format!("pulling {r} ({commit}) from {}", repo.display()))?;
    if !imported {
        ostreeutil::pull_local(sysroot_repo, repo, std::slice::from_ref(&commit))
            .with_context(|| format!("pulling {r} ({commit}) from {}", repo.display()))?;
    }
    sysroot_repo
        .set_ref_immediate(None, r, Some(&commit), gio::Cancellable::NONE)
        .with_context(|| format!("setting ref {r} in the sysroot repo"))?;
    Ok(commit)
}

/// What a deploy does with the deployments already there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    /// Every one stays (an image build deploying `--previous`, then the new default).
    All,
    /// ostree's rule for upgrades: the booted or previous default stays as the rollback,
    /// pinned ones stay, the rest are removed and what they used is pruned.
    RollbackAndPinned,
}

/// Deploys `commit` (pulled for ref `r`) as the new default of the stateroot `osname`, over
/// its merge deployment (whose /etc changes carry over). `kargs`: the kernel arguments, or
/// `None` for the merge deployment's own.
pub fn deploy(
    sysroot: &ostree::Sysroot,
    osname: &str,
    r: &str,
    commit: &str,
    kargs: Option<&[String]>,
    keep: Keep,
) -> Result<()> {
    let c = gio::Cancellable::NONE;
    let origin = sysroot.origin_new_from_refspec(r);
    let merge = sysroot.merge_deployment(Some(osname));
    let kargs: Vec<String> = match kargs {
        Some(k) => k.to_vec(),
        None => merge
            .as_ref()
            .ok_or_else(|| anyhow!("no deployment of {osname} to deploy over"))?
            .bootconfig()
            .and_then(|b| b.get("options"))
            .map(|o| {
                o.split_whitespace()
                    .filter(|a| !a.starts_with("ostree="))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let kargs: Vec<&str> = kargs.iter().map(String::as_str).collect();
    let dep = sysroot
        .deploy_tree(
            Some(osname),
            commit,
            Some(&origin),
            merge.as_ref(),
            &kargs,
            c,
        )
        .with_context(|| format!("deploying {r} ({commit})"))?;
    let flags = match keep {
        Keep::All => ostree::SysrootSimpleWriteDeploymentFlags::RETAIN,
        Keep::RollbackAndPinned => ostree::SysrootSimpleWriteDeploymentFlags::NONE,
    };
    sysroot
        .simple_write_deployment(Some(osname), &dep, merge.as_ref(), flags, c)
        .context("writing the deployments")?;
    if keep == Keep::RollbackAndPinned {
        sysroot
            .cleanup(c)
            .context("pruning what the old deployments used")?;
    }
    sysroot.load(c)?;
    Ok(())
}

/// A new sysroot in `dir` for an image: stateroot `osname`, the boot loader configured
/// (`grub`: `Some(separate_boot)`, GRUB's menu written by hostforge through the hook of
/// [`super::grub::OstreeEnv::set_up`]; `None`: no boot loader), no fsync (the tree is copied
/// into filesystems and the image synced as a whole).
pub fn create(
    dir: &Path,
    osname: &str,
    grub: Option<bool>,
    readonly: bool,
) -> Result<ostree::Sysroot> {
    let c = gio::Cancellable::NONE;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(dir)));
    sysroot
        .ensure_initialized(c)
        .context("initializing the sysroot")?;
    sysroot.load(c)?;
    sysroot
        .init_osname(osname, c)
        .context("initializing the stateroot")?;
    sysroot.load(c)?;
    let srepo = sysroot.repo();
    let cfg = srepo.config();
    match grub {
        Some(separate_boot) => {
            super::grub::check_hook()?;
            super::grub::configure_sysroot(&cfg, separate_boot);
        }
        None => cfg.set_string("sysroot", "bootloader", "none"),
    }
    cfg.set_boolean("sysroot", "readonly", readonly);
    cfg.set_boolean("core", "fsync", false);
    srepo.write_config(&cfg)?;
    srepo.reload_config(c)?;
    Ok(sysroot)
}
