//! A/B operations. On images, offline: `status` reads the boot loader entries and the
//! deployment links without mounting anything (/boot read out by debugfs, the root
//! filesystem's links and files through libext2fs); `rollback`
//! makes the other deployment the default by rewriting the /boot filesystem (entries and GRUB
//! config together) in a copy of the image that replaces the original in one rename; `deploy`
//! and `pin` edit the filesystems' trees with the `ostree` crate and make them again. On a
//! live sysroot (`--sysroot /` on a booted node) the same operations go through libostree
//! (status reads the same links and files from its directories, with the same reader),
//! whose loader swap changes the entries and GRUB's config (kept in the loader directory) in
//! one rename.

use super::filesystems::{copy_range_sparse, mkfs_ext4};
use super::scratch::Workspace;
use super::{gpt, grub};
use crate::process;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    /// 0 is the default, 1 the rollback.
    pub index: usize,
    pub default: bool,
    pub rollback: bool,
    /// Kept when newer deployments would prune it.
    pub pinned: bool,
    pub osname: String,
    pub commit: String,
    /// The commit's `version` metadata, when it has one.
    pub version: Option<String>,
    pub title: String,
    pub kargs: String,
    /// What the deployment follows (`[origin] refspec`): `REMOTE:REF` on a node that
    /// updates from a remote.
    pub refspec: Option<String>,
}

/// The `version` in a serialized commit object's metadata.
fn commit_version(commit_object: Vec<u8>) -> Option<String> {
    use ostree::glib;
    let v = glib::Variant::from_data_with_type(
        commit_object,
        glib::VariantTy::new("(a{sv}aya(say)sstayay)").ok()?,
    );
    let meta = glib::VariantDict::new(Some(&v.child_value(0)));
    meta.lookup::<String>("version").ok().flatten()
}

fn is_qcow2(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.read_exact(&mut magic)
        .with_context(|| format!("{} is too short to be a disk image", path.display()))?;
    Ok(&magic == b"QFI\xfb")
}

/// The raw disk to edit: a qcow2 image is converted into `scratch`; a raw image is copied
/// into `staging` (beside it), where the edited copy is renamed over the original.
fn working_copy(img: &Path, staging: &Path, scratch: &Path) -> Result<(PathBuf, bool)> {
    let qcow2 = is_qcow2(img)?;
    let raw = if qcow2 { scratch } else { staging }.join("work.raw");
    if qcow2 {
        process::run(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(img)
                .arg(&raw),
        )?;
    } else {
        process::run(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(img)
                .arg(&raw),
        )?;
    }
    Ok((raw, qcow2))
}

fn partition(raw: &Path, type_guid: &str) -> Result<gpt::Found> {
    let want = gpt::guid_bytes(type_guid)?;
    let mut f = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    gpt::read(&mut f)
        .with_context(|| format!("reading the partition table of {}", raw.display()))?
        .into_iter()
        .find(|p| p.type_guid == want)
        .ok_or_else(|| anyhow!("the image has no partition of type {type_guid}"))
}

fn extract_fs(raw: &Path, part: &gpt::Found, dest: &Path) -> Result<()> {
    let src = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let out =
        std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    copy_range_sparse(&src, part.offset, part.bytes, &out, 0)
        .with_context(|| format!("copying a filesystem out of {}", raw.display()))
}

/// Writes the filesystem image `fs` over its partition in the raw disk `raw`, and syncs.
fn write_fs(raw: &Path, part: &gpt::Found, fs: &Path) -> Result<()> {
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(raw)
        .with_context(|| format!("opening {}", raw.display()))?;
    let from = std::fs::File::open(fs).with_context(|| format!("opening {}", fs.display()))?;
    copy_range_sparse(&from, 0, part.bytes, &disk, part.offset)
        .with_context(|| format!("writing a filesystem into {}", raw.display()))?;
    disk.sync_all()
        .with_context(|| format!("syncing {}", raw.display()))?;
    Ok(())
}

/// A node that was switched off (or a VM killed) leaves its journal unreplayed; debugfs does
/// not replay it and would read stale directories. e2fsck replays it into our copy.
fn replay_journal(fs: &Path) -> Result<()> {
    // 0: clean; 1: fixed (the journal was replayed).
    process::run_accepting(
        Command::new("e2fsck")
            .args(["-E", "journal_only", "-p"])
            .arg(fs),
        &[0, 1],
    )
    .context("replaying the journal of the filesystem read from the image (e2fsck)")?;
    Ok(())
}

fn debugfs(fs: &Path, request: &str) -> Result<String> {
    process::run(Command::new("debugfs").arg("-R").arg(request).arg(fs))
}

/// An image opened for an operation: its workspace (dropping it cleans up), a raw working
/// copy and both filesystems read out of it.
struct Opened {
    work: Workspace,
    raw: PathBuf,
    qcow2: bool,
    boot_part: gpt::Found,
    boot_fs: PathBuf,
    boot_dir: PathBuf,
    root_fs: PathBuf,
}

fn open(img: &Path) -> Result<Opened> {
    let work = Workspace::claim(img, "hostforge-op", virtual_size(img)?, None)?;
    let scratch = &work.scratch;
    let (raw, qcow2) = working_copy(img, &work.staging, scratch)?;
    let boot_part = partition(&raw, gpt::TYPE_XBOOTLDR)
        .context("finding /boot (hostforge images keep it on its own partition)")?;
    let root_part = partition(&raw, gpt::TYPE_ROOT_X86_64)?;
    let boot_fs = scratch.join("boot.ext4");
    let root_fs = scratch.join("root.ext4");
    extract_fs(&raw, &boot_part, &boot_fs)?;
    extract_fs(&raw, &root_part, &root_fs)?;
    replay_journal(&boot_fs)?;
    replay_journal(&root_fs)?;
    let boot_dir = scratch.join("boot");
    std::fs::create_dir_all(&boot_dir)
        .with_context(|| format!("creating {}", boot_dir.display()))?;
    debugfs(&boot_fs, &format!("rdump / {}", boot_dir.display()))
        .context("reading the /boot filesystem")?;
    Ok(Opened {
        work,
        raw,
        qcow2,
        boot_part,
        boot_fs,
        boot_dir,
        root_fs,
    })
}

/// The size of the disk in `img` (a qcow2's virtual size, a raw file's length).
fn virtual_size(img: &Path) -> Result<u64> {
    let info = process::run(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(img),
    )?;
    let v: serde_json::Value = serde_json::from_str(&info)?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| anyhow!("qemu-img info gave no virtual-size for {}", img.display()))
}

impl Opened {
    /// Removes the workspace at the end of an operation that worked, reporting a failure
    /// to (dropping it on an error only warns).
    fn close(self) -> Result<()> {
        self.work.close()
    }
}

/// A sysroot's files as the deployment reader needs them: an image's filesystems read
/// through debugfs, or a live sysroot's directories.
trait SysrootFiles {
    /// The /boot directory (with `loader/entries`).
    fn boot_dir(&self) -> PathBuf;
    /// The target of the symlink at `path` (absolute in the root filesystem).
    fn read_link(&self, path: &str) -> Result<String>;
    /// The file at `path` (absolute in the root filesystem), if it can be read.
    fn read(&self, path: &str) -> Option<Vec<u8>>;
}

/// An image's filesystems as read out into the workspace: /boot as a directory tree, the
/// root filesystem through libext2fs (no debugfs per file).
struct ImageFiles<'a> {
    boot_dir: &'a Path,
    root: super::ext2fs::Reader,
}

impl<'a> ImageFiles<'a> {
    fn open(o: &'a Opened) -> Result<Self> {
        Ok(ImageFiles {
            boot_dir: &o.boot_dir,
            root: super::ext2fs::Reader::open(&o.root_fs, 0)?,
        })
    }
}

impl SysrootFiles for ImageFiles<'_> {
    fn boot_dir(&self) -> PathBuf {
        self.boot_dir.to_path_buf()
    }

    fn read_link(&self, path: &str) -> Result<String> {
        self.root
            .read_link(path)
            .with_context(|| format!("{path} is not a deployment link on the root filesystem"))
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.root.read_file(path).ok()
    }
}

/// A live sysroot's directories.
struct LiveFiles<'a>(&'a Path);

impl SysrootFiles for LiveFiles<'_> {
    fn boot_dir(&self) -> PathBuf {
        self.0.join("boot")
    }

    fn read_link(&self, path: &str) -> Result<String> {
        let p = self.0.join(path.trim_start_matches('/'));
        let target =
            std::fs::read_link(&p).with_context(|| format!("{path} is not a deployment link"))?;
        Ok(target.to_string_lossy().into_owned())
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.0.join(path.trim_start_matches('/'))).ok()
    }
}

/// The deployments, default first, from the boot loader entries and the deployment links
/// they name (`ostree=/ostree/boot.N/OS/BOOTCSUM/0` -> `../../../deploy/OS/deploy/COMMIT.N`):
/// the one reader for images and live sysroots.
fn deployments(files: &dyn SysrootFiles) -> Result<Vec<Deployment>> {
    let entries = grub::read_entries(&files.boot_dir())?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let ostree_path = e
                .options
                .split_whitespace()
                .find_map(|a| a.strip_prefix("ostree="))
                .ok_or_else(|| anyhow!("boot entry {:?} has no ostree= argument", e.title))?;
            let target = files.read_link(ostree_path)?;
            let parts: Vec<&str> = target.split('/').collect();
            let dirname = parts.last().copied().unwrap_or_default().to_string();
            let commit = dirname.split('.').next().unwrap_or_default().to_string();
            let osname = parts.iter().rev().nth(2).copied().unwrap_or_default();
            let osname = osname.to_string();
            if commit.len() != 64 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("{ostree_path} -> {target} does not name a deployment");
            }
            let object = format!(
                "/ostree/repo/objects/{}/{}.commit",
                &commit[..2],
                &commit[2..]
            );
            let version = files.read(&object).and_then(commit_version);
            let origin = format!("/ostree/deploy/{osname}/deploy/{dirname}.origin");
            let origin = files
                .read(&origin)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let pinned = origin_pinned(&origin);
            let refspec = origin_refspec(&origin);
            Ok(Deployment {
                index: i,
                default: i == 0,
                rollback: i == 1,
                pinned,
                osname,
                commit,
                version,
                title: e.title.clone(),
                kargs: e.options.clone(),
                refspec,
            })
        })
        .collect()
}

/// The value of `key` in `[group]` of an origin file (a GKeyFile, read without glib).
fn origin_value(origin: &str, group: &str, key: &str) -> Option<String> {
    let mut current = "";
    for l in origin.lines().map(str::trim) {
        if let Some(g) = l.strip_prefix('[').and_then(|g| g.strip_suffix(']')) {
            current = g;
        } else if current == group {
            if let Some((k, v)) = l.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// `refspec=` in an origin file's `[origin]` group.
fn origin_refspec(origin: &str) -> Option<String> {
    origin_value(origin, "origin", "refspec")
}

/// `pinned=true` in an origin file's `[libostree-transient]` group.
fn origin_pinned(origin: &str) -> bool {
    origin_value(origin, "libostree-transient", "pinned").as_deref() == Some("true")
}

/// What the node's update agent (hostforge-update) did last, as it keeps it in
/// `/var/lib/hostforge/updates.json` of the default deployment's stateroot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpdateState {
    /// Seconds since the epoch of the agent's last check.
    pub checked: u64,
    /// idle, up-to-date, staged, waiting, rebooting or failed.
    pub state: String,
    /// The commit the node ran then.
    pub booted: String,
    /// The commit it found on the remote (staged, waiting, or refused).
    #[serde(default)]
    pub target: Option<String>,
    pub message: String,
    /// Whether the node held its group's FleetLock reboot lock.
    #[serde(default)]
    pub lock_held: bool,
    /// The node's automatic rollbacks, oldest first: `from` is never installed again.
    #[serde(default)]
    pub rollbacks: Vec<AutoRollback>,
    /// The last health verdict.
    #[serde(default)]
    pub health: Option<HealthVerdict>,
}

/// A rollback the node made by itself after `from` failed to come up healthy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AutoRollback {
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// What the node's health checks said of a boot of `commit`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HealthVerdict {
    pub commit: String,
    pub ok: bool,
    pub message: String,
    pub at: u64,
}

/// The agent's state file for the default deployment's stateroot, if there is one; a
/// state file that does not parse is reported as an error in the status, not skipped.
fn update_state(files: &dyn SysrootFiles, deps: &[Deployment]) -> Option<UpdateState> {
    let d = deps.first()?;
    let bytes = files.read(&format!(
        "/ostree/deploy/{}/var/lib/hostforge/updates.json",
        d.osname
    ))?;
    Some(
        serde_json::from_slice(&bytes).unwrap_or_else(|e| UpdateState {
            checked: 0,
            state: "unknown".into(),
            booted: String::new(),
            target: None,
            message: format!("/var/lib/hostforge/updates.json does not parse: {e}"),
            lock_held: false,
            rollbacks: Vec::new(),
            health: None,
        }),
    )
}

/// The deployments of an image, default first, and what its update agent did last.
pub fn status(img: &Path) -> Result<(Vec<Deployment>, Option<UpdateState>)> {
    let o = open(img)?;
    let files = ImageFiles::open(&o)?;
    let deps = deployments(&files)?;
    let update = update_state(&files, &deps);
    drop(files);
    o.close()?;
    Ok((deps, update))
}

/// Puts the edited working copy in place of `img` (converted back to qcow2 if it was), in one
/// rename; `op` names the fault point for the interruption tests.
fn replace_image(o: &Opened, img: &Path, op: &str) -> Result<()> {
    let final_path = if o.qcow2 {
        let q = o.work.staging.join("work.qcow2");
        super::qcow2::convert(&o.raw, &q).context("writing the qcow2 image")?;
        q
    } else {
        o.raw.clone()
    };
    process::fault_point(op);
    std::fs::rename(&final_path, img).with_context(|| format!("replacing {}", img.display()))
}

/// Reads a filesystem's label and UUID from its superblock.
fn fs_identity(fs: &Path) -> Result<(String, String)> {
    let out = process::run(Command::new("dumpe2fs").arg("-h").arg(fs))?;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let label = field("Filesystem volume name:");
    Ok((
        if label == "<none>" {
            String::new()
        } else {
            label
        },
        field("Filesystem UUID:"),
    ))
}

/// Makes the rollback deployment the default (and the default the rollback).
pub fn rollback(img: &Path) -> Result<Vec<Deployment>> {
    let o = open(img)?;
    let deps = deployments(&ImageFiles::open(&o)?)?;
    if deps.len() < 2 {
        bail!(
            "{} has one deployment; there is nothing to roll back to",
            img.display()
        );
    }
    // ostree orders deployments by the entries' version, highest first: swap the two.
    let dir = o.boot_dir.join("loader/entries");
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        let text = std::fs::read_to_string(&p)?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("version "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        files.push((v, p));
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let (v0, v1) = (files[0].0, files[1].0);
    for (p, new_v) in [(&files[0].1, v1), (&files[1].1, v0)] {
        let text = std::fs::read_to_string(p)?;
        let swapped: String = text
            .lines()
            .map(|l| {
                if l.starts_with("version ") {
                    format!("version {new_v}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(p, swapped)?;
    }
    let (label, uuid) = fs_identity(&o.boot_fs)?;
    grub::write_config(&o.boot_dir, true)?;
    // The choice is made by hand: a boot-counting trial would undo it.
    grub::settle_boot_counting(&o.boot_dir)?;
    let _ = std::fs::remove_dir_all(o.boot_dir.join("lost+found"));
    let epoch = crate::ostreeutil::source_date_epoch()?;
    mkfs_ext4(
        &o.boot_dir,
        &o.boot_fs,
        0,
        o.boot_part.bytes,
        &label,
        &uuid,
        epoch,
    )?;
    write_fs(&o.raw, &o.boot_part, &o.boot_fs)?;
    // /boot in the staging dir now holds the edited entries; re-read the order from them.
    let new_deps = deployments(&ImageFiles::open(&o)?)?;
    replace_image(&o, img, "rollback")?;
    o.close()?;
    Ok(new_deps)
}

/// Deploys `r` from `repo` into the image as the new default; the previous default stays as
/// the rollback and older deployments are pruned (pinned ones are kept by ostree). The image's
/// filesystems are read out with debugfs, changed with the `ostree` crate's sysroot API, made
/// again and written into a copy of the image that replaces the original in one rename.
pub fn deploy(img: &Path, repo: &Path, r: &str) -> Result<Vec<Deployment>> {
    offline_edit(img, "deploy", |sysroot| deploy_in(sysroot, repo, r))
}

/// Pins (or unpins) deployment `index` of the image, so later deploys keep it.
pub fn pin(img: &Path, index: usize, pinned: bool) -> Result<Vec<Deployment>> {
    offline_edit(img, "pin", |sysroot| pin_in(sysroot, index, pinned))
}

fn deploy_in(sysroot: &ostree::Sysroot, repo: &Path, r: &str) -> Result<()> {
    // The booted deployment's stateroot on a node; the default's otherwise.
    let osname = sysroot
        .booted_deployment()
        .or_else(|| sysroot.deployments().into_iter().next())
        .ok_or_else(|| anyhow!("the sysroot has no deployment to deploy over"))?
        .osname();
    let commit = super::sysroot::pull_into(&sysroot.repo(), repo, r)?;
    super::sysroot::deploy(
        sysroot,
        &osname,
        r,
        &commit,
        None,
        super::sysroot::Keep::RollbackAndPinned,
    )
}

fn pin_in(sysroot: &ostree::Sysroot, index: usize, pinned: bool) -> Result<()> {
    let deps = sysroot.deployments();
    let dep = deps.get(index).ok_or_else(|| {
        anyhow!(
            "there is no deployment {index}; the sysroot has {} (0 is the default)",
            deps.len()
        )
    })?;
    sysroot
        .deployment_set_pinned(dep, pinned)
        .context("changing the deployment's pin")?;
    Ok(())
}

fn rollback_in(sysroot: &ostree::Sysroot) -> Result<()> {
    let mut deps = sysroot.deployments();
    if deps.len() < 2 {
        bail!("the sysroot has one deployment; there is nothing to roll back to");
    }
    deps.swap(0, 1);
    sysroot
        .write_deployments(&deps, ostree::gio::Cancellable::NONE)
        .context("writing the deployments in their new order")?;
    Ok(())
}

/// Reads the image's root and /boot filesystems into a staging sysroot, runs `edit` on it
/// through libostree, makes both filesystems again and replaces the image in one rename.
fn offline_edit(
    img: &Path,
    op: &str,
    edit: impl FnOnce(&ostree::Sysroot) -> Result<()>,
) -> Result<Vec<Deployment>> {
    use super::build::step;
    use ostree::gio;
    // Each phase says when it is done, with its size: an operation on a large image is
    // never silent until its end.
    let progress = crate::progress::Progress::new(false, false);
    let gib = |bytes: u64| format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64);
    let o = open(img)?;
    deployments(&ImageFiles::open(&o)?)?;
    let (sysroot_dir, boot_dir) = step(&progress, "read", || {
        let sysroot_dir = o.work.scratch.join("sysroot");
        std::fs::create_dir_all(&sysroot_dir)?;
        debugfs(&o.root_fs, &format!("rdump / {}", sysroot_dir.display()))
            .context("reading the root filesystem")?;
        let _ = std::fs::remove_dir_all(sysroot_dir.join("lost+found"));
        let boot_dir = sysroot_dir.join("boot");
        std::fs::create_dir_all(&boot_dir)?;
        debugfs(&o.boot_fs, &format!("rdump / {}", boot_dir.display()))?;
        let _ = std::fs::remove_dir_all(boot_dir.join("lost+found"));
        let read = std::fs::metadata(&o.root_fs)?.len() + std::fs::metadata(&o.boot_fs)?.len();
        let detail = format!(
            "/ and /boot out of {} ({} of filesystems)",
            img.display(),
            gib(read)
        );
        Ok(((sysroot_dir, boot_dir), detail))
    })?;

    step(&progress, op, || {
        grub::check_hook()?;
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(&sysroot_dir)));
        sysroot
            .load(gio::Cancellable::NONE)
            .context("loading the image's sysroot")?;
        relink_deployments(&sysroot, &sysroot_dir)?;
        edit(&sysroot)?;
        Ok(((), "the sysroot changed".to_string()))
    })?;

    step(&progress, "filesystems", || {
        let (boot_label, boot_uuid) = fs_identity(&o.boot_fs)?;
        let (root_label, root_uuid) = fs_identity(&o.root_fs)?;
        let epoch = crate::ostreeutil::source_date_epoch()?;
        let boot_copy = o.work.scratch.join("bootfs");
        std::fs::rename(&boot_dir, &boot_copy)?;
        std::fs::create_dir(&boot_dir)?;
        let root_part = partition(&o.raw, gpt::TYPE_ROOT_X86_64)?;
        mkfs_ext4(
            &boot_copy,
            &o.boot_fs,
            0,
            o.boot_part.bytes,
            &boot_label,
            &boot_uuid,
            epoch,
        )?;
        mkfs_ext4(
            &sysroot_dir,
            &o.root_fs,
            0,
            root_part.bytes,
            &root_label,
            &root_uuid,
            epoch,
        )?;
        write_fs(&o.raw, &o.boot_part, &o.boot_fs)?;
        write_fs(&o.raw, &root_part, &o.root_fs)?;
        let detail = format!(
            "/boot and / made again and written ({})",
            gib(o.boot_part.bytes + root_part.bytes)
        );
        Ok(((), detail))
    })?;

    let new_deps = step(&progress, "output", || {
        // Re-read what was written, from the new filesystems.
        let _ = std::fs::remove_dir_all(&o.boot_dir);
        std::fs::create_dir_all(&o.boot_dir)?;
        debugfs(&o.boot_fs, &format!("rdump / {}", o.boot_dir.display()))?;
        let new_deps = deployments(&ImageFiles::open(&o)?)?;
        replace_image(&o, img, op)?;
        let detail = format!(
            "{} replaced ({})",
            img.display(),
            gib(std::fs::metadata(img)?.len())
        );
        Ok((new_deps, detail))
    })?;
    o.close()?;
    Ok(new_deps)
}

/// debugfs' rdump writes every name as its own file, so a deployment read out of an image no
/// longer shares inodes with the repo's objects (the root filesystem would double with each
/// deploy). Each deployment is checked out again from the repo, with hardlinks, keeping its
/// own /etc; everything else in a deployment is the commit's content.
fn relink_deployments(sysroot: &ostree::Sysroot, sysroot_dir: &Path) -> Result<()> {
    let repo = sysroot.repo();
    for dep in sysroot.deployments() {
        let dir = sysroot_dir.join(sysroot.deployment_dirpath(&dep).as_str());
        let fresh = dir.with_extension("relink");
        let old = dir.with_extension("old");
        for p in [&fresh, &old] {
            if p.exists() {
                std::fs::remove_dir_all(p)?;
            }
        }
        crate::ostreeutil::checkout(&repo, dep.csum().as_str(), &fresh)
            .context("checking the deployment out again with hardlinks")?;
        let etc = dir.join("etc");
        if etc.exists() {
            let _ = std::fs::remove_dir_all(fresh.join("etc"));
            std::fs::rename(&etc, fresh.join("etc"))?;
        }
        std::fs::rename(&dir, &old)?;
        std::fs::rename(&fresh, &dir)?;
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// A live sysroot (a booted node's `/`, or any sysroot directory), loaded and locked.
struct Live {
    path: PathBuf,
    sysroot: ostree::Sysroot,
}

impl Live {
    fn open(path: &Path) -> Result<Live> {
        use ostree::gio;
        if !path.join("ostree/repo").is_dir() {
            bail!(
                "{} is not an ostree sysroot (no ostree/repo)",
                path.display()
            );
        }
        let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
        sysroot
            .load(gio::Cancellable::NONE)
            .with_context(|| format!("loading the sysroot at {}", path.display()))?;
        Ok(Live {
            path: path.to_path_buf(),
            sysroot,
        })
    }

    /// Runs `edit` holding the sysroot lock, then reloads.
    fn edit(&self, edit: impl FnOnce(&ostree::Sysroot) -> Result<()>) -> Result<()> {
        grub::check_hook()?;
        self.sysroot
            .lock()
            .context("locking the sysroot (is another ostree operation running?)")?;
        let r = edit(&self.sysroot);
        self.sysroot.unlock();
        r?;
        self.sysroot.load(ostree::gio::Cancellable::NONE)?;
        Ok(())
    }

    fn deployments(&self) -> Result<Vec<Deployment>> {
        deployments(&LiveFiles(&self.path))
    }
}

/// The deployments of a live sysroot, default first, and what its update agent did last.
pub fn live_status(sysroot: &Path) -> Result<(Vec<Deployment>, Option<UpdateState>)> {
    let deps = Live::open(sysroot)?.deployments()?;
    let update = update_state(&LiveFiles(sysroot), &deps);
    Ok((deps, update))
}

/// Deploys `r` on a live sysroot as the new default (the old default stays as rollback).
pub fn live_deploy(sysroot: &Path, repo: &Path, r: &str) -> Result<Vec<Deployment>> {
    let live = Live::open(sysroot)?;
    live.edit(|s| deploy_in(s, repo, r))?;
    live.deployments()
}

/// Swaps the default and rollback deployments of a live sysroot in one loader swap.
pub fn live_rollback(sysroot: &Path) -> Result<Vec<Deployment>> {
    let live = Live::open(sysroot)?;
    live.edit(rollback_in)?;
    grub::settle_boot_counting(&sysroot.join("boot"))?;
    live.deployments()
}

/// Pins or unpins deployment `index` of a live sysroot.
pub fn live_pin(sysroot: &Path, index: usize, pinned: bool) -> Result<Vec<Deployment>> {
    let live = Live::open(sysroot)?;
    live.edit(|s| pin_in(s, index, pinned))?;
    live.deployments()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_from_the_transient_group() {
        assert!(origin_pinned(
            "[origin]\nrefspec=a\n\n[libostree-transient]\npinned=true\n"
        ));
        assert!(!origin_pinned("[origin]\npinned=true\n"));
        assert!(!origin_pinned(
            "[origin]\nrefspec=a\n[libostree-transient]\npinned=false\n"
        ));
        assert_eq!(
            origin_refspec("[origin]\nrefspec = hostforge:a/b\n[x]\nrefspec=c\n").as_deref(),
            Some("hostforge:a/b")
        );
        assert_eq!(origin_refspec("[x]\nrefspec=c\n"), None);
    }
}
