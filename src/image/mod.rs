//! Disk images from commits: an ostree sysroot deployed in a scratch directory (a tmpfs when
//! there is room) with the `ostree` crate's sysroot API, filesystems formatted by `mkfs.ext4`
//! and filled from directories by [`ext2fs`] (inode times then pinned in place by [`ext4`]),
//! a GPT and the GRUB boot code written into the image file directly, qcow2 by `qemu-img`.
//! Nothing is mounted; the output appears by rename only when complete.

mod ext2fs;
mod ext4;
pub mod gpt;
pub mod grub;
pub mod layout;
pub mod ops;

use crate::progress::{Progress, Timer};
use crate::{ostreeutil, process};
use anyhow::{anyhow, bail, Context, Result};
use layout::{Bootloader, Format, Layout, PartType};
use ostree::gio;
use ostree::glib;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

pub struct BuildRequest<'a> {
    pub repo: &'a Path,
    pub treeref: &'a str,
    pub previous: Option<&'a str>,
    pub layout: &'a Path,
    pub format: Option<Format>,
    /// Compress the output with zstd (qcow2: compressed clusters; raw: a .zst stream).
    pub compress: bool,
    /// Random GUIDs/UUIDs instead of the layout's fixed ones.
    pub random_uuids: bool,
    /// Print nothing but errors (otherwise one line per timed step on stderr).
    pub quiet: bool,
    /// Scratch space for the staging sysroot (default: see [`scratch_dir`]).
    pub tmpdir: Option<&'a Path>,
    pub out: &'a Path,
}

/// Pulls `r` from `repo` into the sysroot's repo by checksum (a stale summary file cannot
/// redirect it) and gives it the same ref there, so deploy's cleanup keeps it.
fn pull_into(sysroot_repo: &ostree::Repo, repo: &Path, r: &str) -> Result<String> {
    let src = ostreeutil::open_existing(repo)?;
    let commit = ostreeutil::resolve(&src, r)?
        .ok_or_else(|| anyhow!("ref {r} is not in {}", repo.display()))?;
    let imported = ostreeutil::import_archive_commit(repo, sysroot_repo, &commit)
        .with_context(|| format!("pulling {r} ({commit}) from {}", repo.display()))?;
    if !imported {
        let opts = glib::VariantDict::new(None);
        opts.insert("refs", vec![commit.clone()]);
        let url = format!("file://{}", repo.canonicalize()?.display());
        sysroot_repo
            .pull_with_options(&url, &opts.end(), None, gio::Cancellable::NONE)
            .with_context(|| format!("pulling {r} ({commit}) from {}", repo.display()))?;
    }
    sysroot_repo
        .set_ref_immediate(None, r, Some(&commit), gio::Cancellable::NONE)
        .with_context(|| format!("setting ref {r} in the sysroot repo"))?;
    Ok(commit)
}

/// Calls `f` on every entry under `dir` (not `dir` itself), without following symlinks.
fn walk(dir: &Path, mut f: impl FnMut(&Path, &std::fs::Metadata) -> Result<()>) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            if m.is_dir() {
                stack.push(p.clone());
            }
            f(&p, &m)?;
        }
    }
    Ok(())
}

/// Sets the atime and mtime of `p` (a symlink itself, not its target) to `t`; a directory
/// ostree made immutable has the flag lifted first.
fn set_time(p: &Path, is_dir: bool, t: filetime::FileTime) -> Result<()> {
    if filetime::set_symlink_file_times(p, t, t).is_ok() || !is_dir {
        return Ok(());
    }
    process::run(Command::new("chattr").arg("-i").arg(p))?;
    filetime::set_symlink_file_times(p, t, t)
        .with_context(|| format!("setting times of {}", p.display()))
}

/// Sets every timestamp under `dir` to `epoch`, symlinks included, so filesystems built
/// from it are byte-identical run after run.
fn clamp_times(dir: &Path, epoch: u64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(epoch as i64, 0);
    walk(dir, |p, m| set_time(p, m.is_dir(), t))?;
    set_time(dir, true, t)
}

/// Makes an ext4 filesystem of `bytes` from `dir`, `offset` bytes into `image` (a partition
/// of a disk image, or a whole new file when 0), with fixed UUID, hash seed and times:
/// `mkfs.ext4` formats (its own times from `E2FSPROGS_FAKE_TIME`), [`ext2fs::Fs`] copies the
/// tree in (libext2fs's times from `epoch`), and [`ext4::pin_times`] then makes sure every
/// inode's times are `epoch`.
fn mkfs_ext4(
    dir: &Path,
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
) -> Result<()> {
    if offset == 0 {
        let _ = std::fs::remove_file(image);
    }
    let mut fs = format_ext4(image, offset, bytes, label, uuid, epoch)?;
    fs.add(dir, Path::new(""))
        .with_context(|| format!("filling the {label} filesystem from {}", dir.display()))?;
    finish_ext4(fs, image, offset, label, epoch)
}

/// An empty ext4 filesystem at `offset` in `image` (made by `mkfs.ext4`), open for filling.
fn format_ext4(
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
) -> Result<ext2fs::Fs> {
    process::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .args(["-q", "-F", "-L", label, "-U", uuid])
            .arg("-E")
            .arg(format!("root_owner=0:0,hash_seed={uuid},offset={offset}"))
            // GRUB 2.06 cannot read ext4 with orphan_file or metadata_csum_seed.
            .args(["-O", "^orphan_file,^metadata_csum_seed"])
            .arg(image)
            .arg(format!("{}k", bytes / 1024)),
    )
    .with_context(|| format!("making the {label} filesystem"))?;
    ext2fs::Fs::open(image, offset, epoch as i64)
}

/// Where a sysroot keeps its repo's objects.
const OBJECTS: &str = "ostree/repo/objects";

/// A directory's path and modification time (which changes with each entry added or removed).
type DirStamp = (PathBuf, std::time::SystemTime);

/// The stamps of `dir` and of the directories right below it: enough to see whether
/// anything was added to or removed from a repo's objects.
fn dir_stamps(dir: &Path) -> Result<Vec<DirStamp>> {
    let mut stamps = vec![(dir.to_path_buf(), std::fs::metadata(dir)?.modified()?)];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            stamps.push((e.path(), e.metadata()?.modified()?));
        }
    }
    stamps.sort();
    Ok(stamps)
}

/// Closes a filled filesystem and pins its inode times to `epoch`.
fn finish_ext4(fs: ext2fs::Fs, image: &Path, offset: u64, label: &str, epoch: u64) -> Result<()> {
    fs.finish()
        .with_context(|| format!("writing the {label} filesystem"))?;
    ext4::pin_times(image, offset, epoch as i64)
        .with_context(|| format!("pinning the inode times of the {label} filesystem"))?;
    Ok(())
}

/// Lifts the immutable flag (which ostree puts on each deployment's root directory) from
/// `p`; errors are ignored, the removal that follows reports what still fails.
fn lift_immutable(p: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(f) = std::fs::File::open(p) else {
        return;
    };
    if let Ok(flags) = ioctl_getflags(&f) {
        if flags.contains(IFlags::IMMUTABLE) {
            let _ = ioctl_setflags(&f, flags - IFlags::IMMUTABLE);
        }
    }
}

/// Removes a staging directory, lifting the immutable flag ostree puts on deployments.
fn remove_staging(dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    if std::fs::remove_dir_all(dir).is_err() {
        // Deployments (ostree/deploy/OS/deploy/CSUM.N) sit at whatever depth the sysroot
        // is below `dir`: lift the flag on every directory.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            lift_immutable(&d);
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// A scratch directory for the staging sysroot and the intermediate disk: a tmpfs
/// (`/dev/shm`) when it and free memory have room for twice the disk (the tree and the
/// filesystems made from it), so nothing of it is written back to a disk or synced; else
/// `None` (the staging directory beside the output). Named after the output, so a build
/// killed before cleaning up is cleaned up by the next build of the same output.
fn scratch_dir(out: &Path, disk_bytes: u64) -> Option<PathBuf> {
    let base = Path::new(SHM);
    let st = rustix::fs::statvfs(base).ok()?;
    let free = st.f_bavail * st.f_frsize;
    let avail_mem = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    if free < 2 * disk_bytes || avail_mem < 2 * disk_bytes {
        return None;
    }
    let key = std::path::absolute(out).ok()?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, key.as_os_str().as_encoded_bytes());
    let name = format!(
        "{SCRATCH_PREFIX}{}",
        &hex::encode(sha2::Digest::finalize(h))[..16]
    );
    Some(base.join(name))
}

const SHM: &str = "/dev/shm";
const SCRATCH_PREFIX: &str = "hostforge-image-";

/// Creates `dir` and holds an exclusive lock in it for as long as the returned file lives;
/// refuses a directory another live build holds.
fn claim_scratch(dir: &Path) -> Result<std::fs::File> {
    use rustix::fs::{flock, FlockOperation};
    if let Ok(f) = std::fs::File::open(dir.join(".lock")) {
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "{} is in use by another hostforge image build of the same output",
                dir.display()
            );
        }
    }
    remove_staging(dir)?;
    // Made and locked under another name, then renamed into place: a sweep by another build
    // (see [`sweep_scratch`]) never sees it unlocked.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let claim = parent.join(format!(".hostforge-claim-{}", std::process::id()));
    remove_staging(&claim)?;
    std::fs::create_dir(&claim)
        .with_context(|| format!("creating the scratch directory {}", claim.display()))?;
    let f = std::fs::File::create(claim.join(".lock"))?;
    flock(&f, FlockOperation::NonBlockingLockExclusive)
        .with_context(|| format!("locking {}", claim.display()))?;
    std::fs::rename(&claim, dir)
        .with_context(|| format!("creating the scratch directory {}", dir.display()))?;
    Ok(f)
}

/// Removes the scratch directories in `base` left by builds that were killed (their lock
/// is free), so a tmpfs does not keep them until the next reboot.
fn sweep_scratch(base: &Path) {
    use rustix::fs::{flock, FlockOperation};
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let dir = e.path();
        let stale = match std::fs::File::open(dir.join(".lock")) {
            Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok(),
            // Without a lock file: not one of ours (they are renamed into place locked).
            Err(_) => false,
        };
        if stale {
            let _ = remove_staging(&dir);
        }
    }
}

struct Placed {
    first_lba: u64,
    last_lba: u64,
}

/// Partition positions, MiB-aligned, the last `rest` one filling the disk.
fn place(layout: &Layout, disk_bytes: u64) -> Result<Vec<Placed>> {
    let sectors = disk_bytes / gpt::SECTOR;
    let mut next = MIB / gpt::SECTOR;
    let mut out = Vec::new();
    for p in &layout.partitions {
        let first = next;
        let last = if p.size == "rest" {
            // Leave the backup GPT and keep the end MiB-aligned.
            let end = gpt::last_usable(sectors) + 1;
            (end / (MIB / gpt::SECTOR)) * (MIB / gpt::SECTOR) - 1
        } else {
            first + layout::parse_size(&p.size)? / gpt::SECTOR - 1
        };
        if last <= first || last > gpt::last_usable(sectors) {
            bail!(
                "partition {} does not fit in a disk of {}",
                p.name,
                layout.size
            );
        }
        next = last + 1;
        out.push(Placed {
            first_lba: first,
            last_lba: last,
        });
    }
    Ok(out)
}

/// Deploys `commit` (ref `r`) in the sysroot, keeping earlier deployments as rollback.
fn deploy(
    sysroot: &ostree::Sysroot,
    osname: &str,
    r: &str,
    commit: &str,
    kargs: &[String],
) -> Result<()> {
    let c = gio::Cancellable::NONE;
    let origin = sysroot.origin_new_from_refspec(r);
    let merge = sysroot.merge_deployment(Some(osname));
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
    sysroot
        .simple_write_deployment(
            Some(osname),
            &dep,
            merge.as_ref(),
            ostree::SysrootSimpleWriteDeploymentFlags::RETAIN,
            c,
        )
        .context("writing the deployment")?;
    sysroot.load(c)?;
    Ok(())
}

/// Builds the image; see the module docs.
pub fn build(req: &BuildRequest) -> Result<()> {
    let started = Timer::start();
    let mut layout = Layout::load(req.layout)?;
    if req.random_uuids {
        layout.randomize_ids()?;
    }
    let format = req.format.unwrap_or(layout.format);
    let repo = ostreeutil::open_existing(req.repo)?;
    let commit = ostreeutil::resolve(&repo, req.treeref)?
        .ok_or_else(|| anyhow!("ref {} is not in {}", req.treeref, req.repo.display()))?;
    if let Some(prev) = req.previous {
        ostreeutil::resolve(&repo, prev)?
            .ok_or_else(|| anyhow!("--previous {prev} is not in {}", req.repo.display()))?;
    }
    let epoch = ostreeutil::commit_epoch(&repo, &commit)?;
    let out_name = req
        .out
        .file_name()
        .ok_or_else(|| anyhow!("-o {}: not a file name", req.out.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(".{out_name}.hostforge-tmp"));
    remove_staging(&staging)?;
    std::fs::create_dir_all(&staging)?;
    let disk_bytes = layout::parse_size(&layout.size)?;
    sweep_scratch(Path::new(SHM));
    let scratch = req
        .tmpdir
        .map(|d| d.join(format!(".{out_name}.hostforge-scratch")))
        .or_else(|| scratch_dir(req.out, disk_bytes))
        .unwrap_or_else(|| staging.join("scratch"));
    let lock = claim_scratch(&scratch)?;
    let dirs = Dirs {
        staging: &staging,
        scratch: &scratch,
    };
    Progress::new(req.quiet, false).step_done("prepare", started.secs(), &commit);
    let result = build_in(req, &layout, format, epoch, &dirs);
    let tmp_image = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = remove_staging(&scratch);
            let _ = remove_staging(&staging);
            return Err(e);
        }
    };
    process::fault_point("image");
    std::fs::rename(&tmp_image, req.out)
        .with_context(|| format!("moving the image to {}", req.out.display()))?;
    let t = Timer::start();
    remove_staging(&scratch)?;
    drop(lock);
    remove_staging(&staging)?;
    let progress = Progress::new(req.quiet, false);
    progress.step_done("cleanup", t.secs(), "scratch removed");
    progress.step_done("total", started.secs(), &req.out.display().to_string());
    Ok(())
}

/// Where a build writes: `staging`, beside the output on its filesystem, gets the finished
/// image (so the last step is a rename); `scratch` everything on the way (sysroot, trees,
/// an intermediate raw disk), in a tmpfs when there is room (see [`scratch_dir`]).
struct Dirs<'a> {
    staging: &'a Path,
    scratch: &'a Path,
}

fn build_in(
    req: &BuildRequest,
    layout: &Layout,
    format: Format,
    epoch: u64,
    dirs: &Dirs,
) -> Result<PathBuf> {
    let scratch = dirs.scratch;
    let c = gio::Cancellable::NONE;
    let progress = Progress::new(req.quiet, false);
    let t = Timer::start();
    let sysroot_dir = scratch.join("sysroot");
    std::fs::create_dir_all(&sysroot_dir)?;
    // A deploy ends with sync(), flushing every filesystem of the machine; the scratch
    // sysroot is thrown away after mkfs reads it, so only its own syncfs is left.
    if std::env::var_os("OSTREE_SYSROOT_OPTS").is_none() {
        std::env::set_var("OSTREE_SYSROOT_OPTS", "skip-sync");
    }
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(&sysroot_dir)));
    sysroot
        .ensure_initialized(c)
        .context("initializing the sysroot")?;
    sysroot.load(c)?;
    let osname = &layout.ostree.osname;
    sysroot
        .init_osname(osname, c)
        .context("initializing the stateroot")?;
    sysroot.load(c)?;
    let srepo = sysroot.repo();
    let root = layout.part("/").expect("validated");
    let boot = layout.part("/boot");
    // ostree's grub2 backend has hostforge write GRUB's config into each new loader
    // directory, so config and entries switch together; without GRUB, ostree writes none.
    let cfg = srepo.config();
    if layout.uses_grub() {
        grub::configure_sysroot(&cfg, boot.is_some());
        grub::install_hook(scratch)?;
    } else {
        cfg.set_string("sysroot", "bootloader", "none");
    }
    cfg.set_boolean("sysroot", "readonly", layout.ostree.sysroot_readonly);
    // The scratch tree is copied into filesystems and the image is synced as a whole; syncing
    // each object and deployment here would only cost time.
    cfg.set_boolean("core", "fsync", false);
    srepo.write_config(&cfg)?;
    srepo.reload_config(c)?;

    let mut kargs = vec![format!("root=UUID={}", root.uuid.as_deref().unwrap())];
    kargs.extend(layout.kargs.iter().cloned());
    let pc = match req.previous {
        Some(prev) => Some(pull_into(&srepo, req.repo, prev)?),
        None => None,
    };
    let nc = pull_into(&srepo, req.repo, req.treeref)?;
    progress.step_done("pull", t.secs(), &nc);
    let t = Timer::start();

    // The disk, its partitions placed.
    let disk_bytes = layout::parse_size(&layout.size)?;
    let placed = place(layout, disk_bytes)?;
    // A raw image without compression is the output itself: make it beside OUT.
    let raw = if format == Format::Raw && !req.compress {
        dirs.staging.join("disk.raw")
    } else {
        scratch.join("disk.raw")
    };
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw)?;
    disk.set_len(disk_bytes)?;
    let part_bytes = |i: usize| (placed[i].last_lba - placed[i].first_lba + 1) * gpt::SECTOR;
    let label_of = |p: &layout::PartitionSpec| p.label.clone().unwrap_or_else(|| p.name.clone());
    let root_index = layout
        .partitions
        .iter()
        .position(|p| p.mount.as_deref() == Some("/"))
        .expect("validated");
    let root_offset = placed[root_index].first_lba * gpt::SECTOR;
    let root_label = label_of(&layout.partitions[root_index]);

    let boot_dir = scratch.join("bootfs");
    let t = std::thread::scope(|scope| -> Result<Timer> {
        // The root filesystem's bulk, the repo's objects, goes in while ostree deploys (the
        // deployment is hardlinks to them): a thread formats the partition and adds
        // ostree/repo/objects, which nothing writes to after the pull.
        let objects = scope.spawn(|| -> Result<(ext2fs::Fs, Vec<DirStamp>)> {
            let mut fs = format_ext4(
                &raw,
                root_offset,
                part_bytes(root_index),
                &root_label,
                root.uuid.as_deref().unwrap(),
                epoch,
            )?;
            let stamps = dir_stamps(&sysroot_dir.join(OBJECTS))?;
            fs.add(&sysroot_dir, Path::new(OBJECTS))
                .with_context(|| format!("filling the {root_label} filesystem"))?;
            Ok((fs, stamps))
        });
        let deployed = (|| -> Result<()> {
            if let (Some(prev), Some(pc)) = (req.previous, &pc) {
                deploy(&sysroot, osname, prev, pc, &kargs)?;
            }
            deploy(&sysroot, osname, req.treeref, &nc, &kargs)?;
            // The deployments mount /boot from its own partition.
            if let Some(b) = boot {
                for dep in sysroot.deployments() {
                    let dir = sysroot_dir.join(sysroot.deployment_dirpath(&dep).as_str());
                    let fstab = dir.join("etc/fstab");
                    let mut text = std::fs::read_to_string(&fstab).unwrap_or_default();
                    text.push_str(&format!(
                        "UUID={} /boot ext4 defaults 0 2\n",
                        b.uuid.as_deref().unwrap()
                    ));
                    std::fs::write(&fstab, text)?;
                }
            }
            if layout.uses_grub() {
                grub::link_config(&sysroot_dir.join("boot"))?;
            }
            Ok(())
        })();
        let objects = objects
            .join()
            .map_err(|_| anyhow!("the root filesystem thread panicked"))?;
        deployed?;
        let (mut root_fs, stamps) = objects?;
        if dir_stamps(&sysroot_dir.join(OBJECTS))? != stamps {
            bail!(
                "ostree/repo/objects changed during the deploy; the root filesystem would miss it"
            );
        }
        progress.step_done("deploy", t.secs(), osname);
        let t = Timer::start();

        // Filesystems: /boot from sysroot/boot, / from the rest (with an empty /boot).
        if boot.is_some() {
            std::fs::rename(sysroot_dir.join("boot"), &boot_dir)?;
            std::fs::create_dir(sysroot_dir.join("boot"))?;
        }
        let mut parts = Vec::new();
        let mut ext4_jobs = Vec::new();
        for (i, (p, at)) in layout.partitions.iter().zip(&placed).enumerate() {
            if p.kind == PartType::Esp {
                let boot_uuid = boot.or(Some(root)).and_then(|b| b.uuid.as_deref()).unwrap();
                let efi = grub::efi_binary(scratch, boot_uuid, boot.is_some())?;
                disk.sync_all()?;
                mkfs_esp(
                    &raw,
                    at.first_lba * gpt::SECTOR,
                    part_bytes(i),
                    p.label.as_deref().unwrap_or("EFI-SYSTEM"),
                    p.uuid.as_deref().unwrap_or_default(),
                    &efi,
                    scratch,
                    epoch,
                )?;
            }
            if p.mount.as_deref() == Some("/boot") {
                ext4_jobs.push((
                    &boot_dir,
                    at.first_lba * gpt::SECTOR,
                    part_bytes(i),
                    label_of(p),
                    p.uuid.as_deref().unwrap(),
                ));
            }
            parts.push(gpt::Partition {
                type_guid: match p.kind {
                    PartType::BiosBoot => gpt::TYPE_BIOS_BOOT,
                    PartType::Esp => gpt::TYPE_ESP,
                    PartType::Xbootldr => gpt::TYPE_XBOOTLDR,
                    PartType::Root => gpt::TYPE_ROOT_X86_64,
                    PartType::Linux => gpt::TYPE_LINUX,
                }
                .to_string(),
                guid: p.guid.clone(),
                name: p.name.clone(),
                first_lba: at.first_lba,
                last_lba: at.last_lba,
                attributes: 0,
            });
        }
        // Straight into the disk image at each partition's offset (no copy of a filesystem),
        // the partitions side by side, and the boot code and GPT beside them: all are
        // disjoint ranges of the file.
        disk.sync_all()?;
        let write_boot_code = |disk: &mut std::fs::File| -> Result<()> {
            if layout.has(Bootloader::Grub2Bios) {
                let (i, _) = layout
                    .partitions
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.kind == PartType::BiosBoot)
                    .expect("validated");
                let boot_index = layout
                    .partitions
                    .iter()
                    .position(|p| {
                        p.mount.as_deref() == Some(if boot.is_some() { "/boot" } else { "/" })
                    })
                    .unwrap();
                grub::install_bios(
                    disk,
                    scratch,
                    placed[i].first_lba,
                    placed[i].last_lba - placed[i].first_lba + 1,
                    boot_index + 1,
                    boot.is_some(),
                )?;
            }
            gpt::write(disk, disk_bytes / gpt::SECTOR, &layout.disk_guid, &parts)?;
            disk.flush()?;
            Ok(())
        };
        std::thread::scope(|scope| -> Result<()> {
            let handles: Vec<_> = ext4_jobs
                .iter()
                .map(|(src, offset, bytes, label, uuid)| {
                    let raw = &raw;
                    scope.spawn(move || mkfs_ext4(src, raw, *offset, *bytes, label, uuid, epoch))
                })
                .collect();
            let boot_code = scope.spawn(|| write_boot_code(&mut disk));
            // The rest of the root filesystem: the deployments, /etc, the repo's refs.
            root_fs
                .add(&sysroot_dir, Path::new(""))
                .with_context(|| format!("filling the {root_label} filesystem"))?;
            finish_ext4(root_fs, &raw, root_offset, &root_label, epoch)?;
            for h in handles {
                h.join().map_err(|_| anyhow!("a mkfs thread panicked"))??;
            }
            boot_code
                .join()
                .map_err(|_| anyhow!("the boot code thread panicked"))??;
            Ok(())
        })?;
        Ok(t)
    })?;
    disk.sync_all()?;
    drop(disk);
    progress.step_done(
        "filesystems",
        t.secs(),
        &format!("{} partitions, GPT and boot code", layout.partitions.len()),
    );
    // The trees are in the filesystems now: free them while the output is written.
    let trees = [sysroot_dir.clone(), boot_dir.clone()];
    let freeing = std::thread::spawn(move || {
        for t in &trees {
            let _ = remove_staging(t);
        }
    });
    let t = Timer::start();
    let out = match (format, req.compress) {
        (Format::Raw, false) => Ok(raw),
        (Format::Raw, true) => {
            let z = dirs.staging.join("disk.raw.zst");
            process::run(
                Command::new("zstd")
                    .args(["-q", "-T0", "--sparse", "-o"])
                    .arg(&z)
                    .arg(&raw),
            )
            .context("compressing with zstd (apt-get install zstd)")?;
            std::fs::remove_file(&raw)?;
            Ok(z)
        }
        (Format::Qcow2, compress) => {
            let q = dirs.staging.join("disk.qcow2");
            let convert = |direct: bool| {
                let mut cmd = Command::new("qemu-img");
                cmd.args(["convert", "-f", "raw", "-O", "qcow2", "-W"]);
                if direct {
                    // O_DIRECT: the image goes to the disk without filling the page cache
                    // (and evicting what the machine had there) on the way.
                    cmd.args(["-t", "none"]);
                }
                if compress {
                    cmd.args(["-c", "-o", "compression_type=zstd"]);
                }
                process::run(cmd.arg(&raw).arg(&q))
            };
            // Filesystems without O_DIRECT (tmpfs) get the page cache after all.
            convert(true)
                .or_else(|_| convert(false))
                .context("converting to qcow2")?;
            std::fs::remove_file(&raw)?;
            Ok(q)
        }
    };
    let _ = freeing.join();
    progress.step_done("output", t.secs(), &format!("{format:?}").to_lowercase());
    out
}

/// Makes the ESP (FAT, by mtools) at `offset` in `image` holding GRUB as the removable-media
/// loader. mtools takes its timestamps from SOURCE_DATE_EPOCH, so the ESP is reproducible.
#[allow(clippy::too_many_arguments)]
fn mkfs_esp(
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    serial: &str,
    efi: &Path,
    staging: &Path,
    epoch: u64,
) -> Result<()> {
    let serial = layout::fat_serial(serial).expect("validated");
    let tree = staging.join("esp");
    let boot = tree.join("EFI/BOOT");
    std::fs::create_dir_all(&boot)?;
    std::fs::copy(efi, boot.join("BOOTX64.EFI"))?;
    clamp_times(&tree, epoch)?;
    let target = format!("{}@@{offset}", image.display());
    let sectors = bytes / 512;
    process::run(
        Command::new("mformat")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(&target)
            .args(["-F", "-h", "64", "-s", "32", "-T"])
            .arg(sectors.to_string())
            .arg("-v")
            .arg(label)
            .arg("-N")
            .arg(format!("{serial:08x}"))
            .arg("::"),
    )
    .context("making the ESP's FAT filesystem (apt-get install mtools)")?;
    process::run(
        Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(&target)
            .args(["-s", "-m", "-Q"])
            .arg(tree.join("EFI"))
            .arg("::/"),
    )
    .context("copying GRUB onto the ESP")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep removes scratch directories of killed builds (lock free) and keeps those of
    /// live builds (lock held) and anything not named like ours; a held one is refused.
    #[test]
    fn sweep_keeps_live_scratch_and_removes_stale() {
        let base = tempfile::tempdir().unwrap();
        let live = base.path().join(format!("{SCRATCH_PREFIX}live"));
        let stale = base.path().join(format!("{SCRATCH_PREFIX}stale"));
        let other = base.path().join("something-else");
        let held = claim_scratch(&live).unwrap();
        drop(claim_scratch(&stale).unwrap());
        std::fs::create_dir(&other).unwrap();
        sweep_scratch(base.path());
        assert!(live.join(".lock").exists());
        assert!(!stale.exists());
        assert!(other.exists());
        let err = claim_scratch(&live).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        drop(held);
        sweep_scratch(base.path());
        assert!(!live.exists());
    }
}
