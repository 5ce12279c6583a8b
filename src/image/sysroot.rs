//! The ostree sysroot side of images: commits pulled into a sysroot's repo, and the one
//! deploy that image builds, offline image operations and live sysroots all use.

use crate::ostreeutil;
use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::gio::prelude::FileExt;
use std::path::Path;

/// Pulls `r` from `repo` into the sysroot's repo by checksum (a stale summary file cannot
/// redirect it) and gives it the same ref there, so deploy's cleanup keeps it.
pub fn pull_into(sysroot_repo: &ostree::Repo, repo: &Path, r: &str) -> Result<String> {
    pull_into_telling(sysroot_repo, repo, r, &|_| {})
}

/// [`pull_into`], calling `dir_done` with each object directory's name once the commit's
/// file objects in it are all there, when the pull can tell (from an archive repo; see
/// [`ostreeutil::import_archive_commit_telling`]).
pub fn pull_into_telling(
    sysroot_repo: &ostree::Repo,
    repo: &Path,
    r: &str,
    dir_done: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let src = ostreeutil::open_existing(repo)?;
    let commit = ostreeutil::resolve(&src, r)?
        .ok_or_else(|| anyhow!("ref {r} is not in {}", repo.display()))?;
    let imported = ostreeutil::import_archive_commit_telling(repo, sysroot_repo, &commit, dir_done)
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

/// What a network pull moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetched {
    pub bytes: u64,
    pub objects: u64,
}

/// Pulls `refs` over the network through `remote` (already in the sysroot's repo, with its
/// signature checks), from `url` when given instead of the remote's own URL (an installer may
/// reach the repo by another address than the node will). Each ref is also set locally so
/// deploy's cleanup keeps it; returns the commits and what was fetched. Progress goes to
/// stderr every few seconds unless `quiet`.
pub fn pull_url(
    sysroot_repo: &ostree::Repo,
    remote: &str,
    url: Option<&str>,
    refs: &[&str],
    quiet: bool,
) -> Result<(Vec<String>, Fetched)> {
    use ostree::glib;
    use ostree::prelude::ToVariant;
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &refs.to_variant());
    if let Some(url) = url {
        opts.insert("override-url", url);
    }
    let progress = ostree::AsyncProgress::new();
    let last = std::cell::Cell::new(std::time::Instant::now());
    if !quiet {
        progress.connect_changed(move |p| {
            if last.get().elapsed() < std::time::Duration::from_secs(5) {
                return;
            }
            last.set(std::time::Instant::now());
            let (done, wanted) = (p.uint("fetched"), p.uint("requested"));
            let bytes = p.uint64("bytes-transferred");
            eprintln!(
                "pulling: {done}/{wanted} objects, {:.1} MiB",
                bytes as f64 / (1 << 20) as f64
            );
        });
    }
    let source = url.unwrap_or(remote);
    sysroot_repo
        .pull_with_options(remote, &opts.end(), Some(&progress), gio::Cancellable::NONE)
        .map_err(|e| {
            let why = e.to_string();
            let hint = match why.contains("ignature") || why.contains("GPG") {
                true => "\nrefused: not signed by a key the remote trusts (the --gpg-key given)",
                false => "",
            };
            anyhow!("pulling {} from {source}: {why}{hint}", refs.join(", "))
        })?;
    let fetched = Fetched {
        bytes: progress.uint64("bytes-transferred"),
        objects: u64::from(progress.uint("fetched")),
    };
    progress.finish();
    let mut commits = Vec::new();
    for r in refs {
        let commit = sysroot_repo
            .resolve_rev(&format!("{remote}:{r}"), false)?
            .ok_or_else(|| anyhow!("{remote}:{r} did not resolve after the pull"))?
            .to_string();
        sysroot_repo
            .set_ref_immediate(None, r, Some(&commit), gio::Cancellable::NONE)
            .with_context(|| format!("setting ref {r} in the sysroot repo"))?;
        commits.push(commit);
    }
    Ok((commits, fetched))
}

/// The remote a node follows for updates: written into the sysroot repo's config with
/// `gpg-verify` (and `gpg-verify-summary`) on when a trusted key is given, the key imported
/// where ostree reads a remote's keys (`/ostree/repo/NAME.trustedkeys.gpg`).
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub url: String,
    /// The trusted public key(s), armored or binary; `None` only when verification was
    /// explicitly turned off.
    pub gpg_key: Option<Vec<u8>>,
}

impl Remote {
    /// Checks what goes into the repo config: a name ostree accepts, a one-line URL ostree
    /// can fetch from.
    pub fn validate(&self) -> Result<()> {
        ostree::validate_remote_name(&self.name)
            .map_err(|e| anyhow!("remote name {:?}: {e}", self.name))?;
        crate::validate::one_line_text("remote URL", &self.url)?;
        if !["http://", "https://", "file:///"]
            .iter()
            .any(|p| self.url.starts_with(p))
        {
            anyhow::bail!(
                "remote URL {:?}: ostree fetches from http://, https:// or file:/// URLs",
                self.url
            );
        }
        Ok(())
    }
}

/// Adds `remote` to the sysroot's repo and imports its trusted key.
pub fn add_remote(sysroot_repo: &ostree::Repo, remote: &Remote) -> Result<()> {
    let c = gio::Cancellable::NONE;
    let verify = remote.gpg_key.is_some();
    let opts = ostree::glib::VariantDict::new(None);
    opts.insert("gpg-verify", verify);
    opts.insert("gpg-verify-summary", verify);
    sysroot_repo
        .remote_add(&remote.name, Some(&remote.url), Some(&opts.end()), c)
        .with_context(|| format!("adding remote {} ({})", remote.name, remote.url))?;
    if let Some(key) = &remote.gpg_key {
        // What `ostree remote gpg-import` writes: the key's binary packets as the remote's
        // keyring. (libostree's import API takes key ids to export; the binding cannot say
        // "all of them".)
        let packets = crate::validate::openpgp_public_key("the remote's trusted key", key)?;
        let dir = sysroot_repo
            .path()
            .path()
            .ok_or_else(|| anyhow!("the sysroot repo has no path"))?;
        let keyring = dir.join(format!("{}.trustedkeys.gpg", remote.name));
        std::fs::write(&keyring, packets)
            .with_context(|| format!("writing {}", keyring.display()))?;
    }
    Ok(())
}

/// The refspec a new deployment of `r` follows: `r` itself when it names a remote, else the
/// remote the deployment it replaces follows (a node keeps following its remote), else the
/// local ref.
fn refspec_for(merge: Option<&ostree::Deployment>, r: &str) -> String {
    if r.contains(':') {
        return r.to_string();
    }
    let remote = merge
        .and_then(|m| m.origin())
        .and_then(|o| o.string("origin", "refspec").ok())
        .and_then(|s| s.split_once(':').map(|(remote, _)| remote.to_string()));
    match remote {
        Some(remote) => format!("{remote}:{r}"),
        None => r.to_string(),
    }
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

/// Deploys `commit` (pulled for ref `r`, or `REMOTE:REF`) as the new default of the stateroot
/// `osname`, over its merge deployment (whose /etc changes carry over and whose remote the
/// new deployment follows). `kargs`: the kernel arguments, or
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
    let merge = sysroot.merge_deployment(Some(osname));
    let origin = sysroot.origin_new_from_refspec(&refspec_for(merge.as_ref(), r));
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
    // The deployments' /tmp is a link to sysroot/tmp (rpm-ostree's layout), so the physical
    // root needs it, world-writable and sticky, as `ostree admin init-fs` makes it.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
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
