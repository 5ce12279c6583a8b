//! `image build` as a flat list of named, timed steps, each handing its result to the next:
//!
//! | step | what it does |
//! |---|---|
//! | prepare | loads the layout, resolves the refs, claims the workspace, starts grub-mkimage |
//! | pull | makes a sysroot in scratch space and pulls the commits into its repo; meanwhile (from a local repo) a thread formats the root partition and adds each object directory the pull has completed (the bulk of the root filesystem, which the deployments hardlink) |
//! | deploy | deploys them; meanwhile that thread adds the rest of the repo's objects |
//! | filesystems | fills the /boot partition and the rest of the root partition |
//! | bootloader | the ESP, BIOS GRUB's boot code, the GPT |
//! | output | completes the qcow2 image (streamed since the pull, see `qcow2`), or converts or compresses, and renames the image over the output |
//! | cleanup | removes the workspace |
//!
//! A failing step leaves the previous output as it was: the workspace is removed when the
//! plan is dropped.

use super::filesystems::{self as fs, DirStamp, OBJECTS};
use super::layout::{self, Bootloader, Format, Layout, PartType};
use super::scratch::{remove_staging, Workspace};
use super::{ext2fs, gpt, grub, qcow2, sysroot};
use crate::progress::{Progress, Timer};
use crate::{ostreeutil, process};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

const MIB: u64 = 1 << 20;

/// Where the commits come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A local repo (a compose's `--repo`).
    Repo(&'a Path),
    /// A repo over the network, pulled through [`BuildRequest::remote`] (which must be set:
    /// its name and trusted key verify the pull) from this URL.
    Url(&'a str),
}

pub struct BuildRequest<'a> {
    pub source: Source<'a>,
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
    /// Scratch space for the staging sysroot (default: see [`super::scratch::scratch_dir`]).
    pub tmpdir: Option<&'a Path>,
    /// The image file to write, or with `device` the disk to install onto.
    pub out: &'a Path,
    /// `out` is a disk (a block device, or an existing raw file standing for one) written in
    /// place: its size is the disk's, `format` and `compress` do not apply, and its partition
    /// table is wiped before anything else is written, so a failed install leaves no
    /// bootable half-OS.
    pub device: bool,
    /// The remote the node follows for updates (deployments' origins say `NAME:REF`).
    pub remote: Option<sysroot::Remote>,
    /// Hostname, root's password and keys, network and kernel arguments for the node's
    /// first boot (the provisioning spec's fields; see [`super::firstboot`]).
    pub first_boot: Option<&'a crate::provision::Spec>,
}

/// Builds the image; see the module docs.
pub fn build(req: &BuildRequest) -> Result<()> {
    build_steps(req).map_err(|e| explain_out_of_space(req, e))
}

/// An error from a full filesystem says so, with the output's directory and the scratch
/// space and what is left on each.
fn explain_out_of_space(req: &BuildRequest, e: anyhow::Error) -> anyhow::Error {
    let out_dir = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = req.tmpdir.unwrap_or(Path::new(super::scratch::SHM));
    crate::fsutil::explain_out_of_space(
        e,
        &[
            ("in the output's directory", out_dir),
            ("the scratch space", scratch),
        ],
        " or ",
        " (or pass --tmpdir)",
    )
}

fn build_steps(req: &BuildRequest) -> Result<()> {
    let progress = Progress::new(req.quiet, false);
    let started = Timer::start();
    let (plan, grub_images) = step(&progress, "prepare", || prepare(req))?;
    let (pulled, filling) = step(&progress, "pull", || pull(&plan))?;
    let mut disk = step(&progress, "deploy", || deploy(&plan, &pulled, filling))?;
    step(&progress, "filesystems", || filesystems(&plan, &mut disk))?;
    step(&progress, "bootloader", || {
        bootloader(&plan, grub_images, &mut disk)
    })?;
    step(&progress, "output", || output(&plan, pulled, disk))?;
    step(&progress, "cleanup", || {
        plan.work.close()?;
        Ok(((), "scratch removed".to_string()))
    })?;
    progress.step_done("total", started.secs(), &req.out.display().to_string());
    Ok(())
}

/// Runs one step: timed once, its line printed with the detail it returns, its error marked
/// with its name.
pub(super) fn step<T>(
    progress: &Progress,
    name: &str,
    f: impl FnOnce() -> Result<(T, String)>,
) -> Result<T> {
    let t = Timer::start();
    let (value, detail) = f().with_context(|| format!("step {name}"))?;
    progress.step_done(name, t.secs(), &detail);
    Ok(value)
}

/// What `prepare` settles for every later step.
struct Plan<'a> {
    req: &'a BuildRequest<'a>,
    layout: Layout,
    format: Format,
    disk_bytes: u64,
    placed: Vec<Placed>,
    /// Dropped on an error: the workspace goes with it.
    work: Workspace,
}

struct Placed {
    first_lba: u64,
    last_lba: u64,
}

impl Plan<'_> {
    fn index_of(&self, mount: &str) -> Option<usize> {
        self.layout
            .partitions
            .iter()
            .position(|p| p.mount.as_deref() == Some(mount))
    }

    fn offset(&self, i: usize) -> u64 {
        self.placed[i].first_lba * gpt::SECTOR
    }

    fn bytes(&self, i: usize) -> u64 {
        (self.placed[i].last_lba - self.placed[i].first_lba + 1) * gpt::SECTOR
    }

    fn label(&self, i: usize) -> String {
        let p = &self.layout.partitions[i];
        p.label.clone().unwrap_or_else(|| p.name.clone())
    }

    fn uuid(&self, i: usize) -> &str {
        self.layout.partitions[i]
            .uuid
            .as_deref()
            .expect("validated")
    }

    fn root(&self) -> usize {
        self.index_of("/").expect("validated")
    }

    fn separate_boot(&self) -> bool {
        self.index_of("/boot").is_some()
    }

    /// The partition GRUB reads its config from: /boot, or / when /boot is part of it.
    fn grub_partition(&self) -> usize {
        self.index_of("/boot").unwrap_or_else(|| self.root())
    }

    fn sysroot_dir(&self) -> PathBuf {
        self.work.scratch.join("sysroot")
    }

    fn boot_tree(&self) -> PathBuf {
        self.work.scratch.join("bootfs")
    }
}

/// GRUB's images, made by grub-mkimage while the commits are pulled and deployed.
#[derive(Default)]
struct GrubImages {
    bios_core: Option<PathBuf>,
    efi: Option<PathBuf>,
}

/// [`GrubImages`] on their way; dropping it waits, so the workspace is not removed under
/// a running grub-mkimage.
struct GrubImagesJob(Option<JoinHandle<Result<GrubImages>>>);

impl GrubImagesJob {
    fn wait(mut self) -> Result<GrubImages> {
        self.0
            .take()
            .expect("waited once")
            .join()
            .map_err(|_| anyhow!("the grub-mkimage thread panicked"))?
    }
}

impl Drop for GrubImagesJob {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

fn prepare<'a>(req: &'a BuildRequest<'a>) -> Result<((Plan<'a>, GrubImagesJob), String)> {
    let mut layout = Layout::load(req.layout)?;
    if req.random_uuids {
        layout.randomize_ids()?;
    }
    let format = req.format.unwrap_or(layout.format);
    let detail = match req.source {
        Source::Repo(path) => {
            let repo = ostreeutil::open_existing(path)?;
            let commit = ostreeutil::resolve(&repo, req.treeref)?
                .ok_or_else(|| anyhow!("ref {} is not in {}", req.treeref, path.display()))?;
            if let Some(prev) = req.previous {
                ostreeutil::resolve(&repo, prev)?
                    .ok_or_else(|| anyhow!("--previous {prev} is not in {}", path.display()))?;
            }
            commit
        }
        Source::Url(url) => {
            if req.remote.is_none() {
                bail!("pulling from {url} needs the remote (its name and trusted key)");
            }
            format!("{} from {url}", req.treeref)
        }
    };
    let layout_bytes = layout::parse_size(&layout.size)?;
    let (disk_bytes, work) = if req.device {
        let bytes = device_bytes(req.out)?;
        if bytes < layout_bytes {
            bail!(
                "{} is too small: {} MiB, and layout {} needs at least {} MiB (its size)",
                req.out.display(),
                bytes / MIB,
                req.layout.display(),
                layout_bytes / MIB
            );
        }
        let work = Workspace::claim_for_device(req.out, req.tmpdir)?;
        (bytes - bytes % MIB, work)
    } else {
        let work = Workspace::claim(req.out, "hostforge-tmp", layout_bytes, req.tmpdir)
            .with_context(|| format!("-o {}", req.out.display()))?;
        (layout_bytes, work)
    };
    let placed = place(&layout, disk_bytes)?;
    let plan = Plan {
        req,
        layout,
        format,
        disk_bytes,
        placed,
        work,
    };
    let grub = start_grub_images(&plan);
    Ok(((plan, grub), detail))
}

/// The size of a disk: a block device's (seeking to its end), or a raw file's.
fn device_bytes(dev: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = std::fs::metadata(dev).with_context(|| format!("{}", dev.display()))?;
    use std::os::unix::fs::FileTypeExt;
    if !(meta.file_type().is_block_device() || meta.is_file()) {
        bail!(
            "{}: not a disk (a block device, or a raw file to install into)",
            dev.display()
        );
    }
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    Ok(f.seek(SeekFrom::End(0))?)
}

fn start_grub_images(plan: &Plan) -> GrubImagesJob {
    let scratch = plan.work.scratch.clone();
    let separate_boot = plan.separate_boot();
    let bios = plan.layout.has(Bootloader::Grub2Bios);
    // An ESP always carries GRUB as the removable-media loader.
    let efi = plan.layout.has(Bootloader::Grub2Efi)
        || plan
            .layout
            .partitions
            .iter()
            .any(|p| p.kind == PartType::Esp);
    let grub_part = plan.grub_partition();
    let boot_uuid = plan.uuid(grub_part).to_string();
    GrubImagesJob(Some(std::thread::spawn(move || {
        Ok(GrubImages {
            bios_core: match bios {
                true => Some(grub::bios_core(&scratch, grub_part + 1, separate_boot)?),
                false => None,
            },
            efi: match efi {
                true => Some(grub::efi_binary(&scratch, &boot_uuid, separate_boot)?),
                false => None,
            },
        })
    })))
}

/// The sysroot in scratch space and the commits pulled into it.
struct Pulled {
    sysroot: ostree::Sysroot,
    new: String,
    previous: Option<String>,
    /// The new commit's time: every time in the filesystems.
    epoch: u64,
}

/// The disk being written while the commits are pulled and deployed: the image file (or the
/// device), the qcow2 image streamed from it, and a thread that formats the root partition
/// and fills in the sysroot repo's objects (the bulk of the root filesystem, which the
/// deployments hardlink): each object directory as soon as the pull has put all of the
/// commit's file objects in it, then the rest once the pull is over.
struct Filling {
    path: PathBuf,
    file: std::fs::File,
    qcow2: Option<qcow2::Stream>,
    /// `Some(dir)`: the pull is done with `dir`; `None`: the pull is over. Dropped without
    /// `None`, the thread stops.
    dirs: Option<std::sync::mpsc::Sender<Option<String>>>,
    thread: Option<JoinHandle<Result<FilledObjects>>>,
    /// The time the filesystems were started with (the new commit's).
    epoch: u64,
}

/// The root filesystem with the repo's objects in, and the object directories' stamps as
/// they were filled in.
type FilledObjects = (ext2fs::Fs, Vec<DirStamp>);

impl Filling {
    /// Tells the thread the pull `dir` is done with (a name under `ostree/repo/objects`).
    fn dir_done(&self) -> impl Fn(&str) + Sync {
        let tx = std::sync::Mutex::new(self.dirs.clone().expect("until the pull is over"));
        move |dir: &str| {
            let _ = tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Some(dir.to_string()));
        }
    }

    /// Tells the thread the pull is over, waits for it, and returns the root filesystem and
    /// the object directories' stamps as it filled them.
    fn pull_over(&mut self) -> Result<FilledObjects> {
        if let Some(tx) = self.dirs.take() {
            let _ = tx.send(None);
        }
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("the root filesystem thread panicked"))?
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        drop(self.dirs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates the image (or opens the device and wipes its partition tables), starts the qcow2
/// image beside it when that is the output, and starts the root filesystem thread.
fn start_filling(plan: &Plan, epoch: u64) -> Result<Filling> {
    let req = plan.req;
    let (path, file) = if req.device {
        let path = req.out.to_path_buf();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        wipe_partition_tables(&mut file, plan.disk_bytes)
            .with_context(|| format!("wiping the partition tables of {}", path.display()))?;
        (path, file)
    } else {
        // A raw image without compression is the output itself: make it beside OUT.
        let path = if plan.format == Format::Raw && !req.compress {
            plan.work.staging.join("disk.raw")
        } else {
            plan.work.scratch.join("disk.raw")
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len(plan.disk_bytes)?;
        (path, file)
    };
    // An uncompressed qcow2 image is written while the disk is filled (see `qcow2`).
    let qcow2 = if !req.device && plan.format == Format::Qcow2 && !req.compress {
        let out = plan.work.staging.join("disk.qcow2");
        Some(qcow2::Stream::start(&path, &out, plan.disk_bytes)?)
    } else {
        None
    };
    let report = qcow2.as_ref().map(qcow2::Stream::sender);
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    let sysroot_dir = plan.sysroot_dir();
    let root = plan.root();
    let (offset, bytes, label, uuid) = (
        plan.offset(root),
        plan.bytes(root),
        plan.label(root),
        plan.uuid(root).to_string(),
    );
    let image = path.clone();
    let thread = std::thread::Builder::new()
        .name("rootfs".into())
        .spawn(move || -> Result<FilledObjects> {
            let mut root_fs = fs::format_ext4(&image, offset, bytes, &label, &uuid, epoch)?;
            if let Some(tx) = report {
                root_fs.report_data_to(tx);
            }
            let what = || format!("filling the {label} filesystem");
            loop {
                match rx.recv() {
                    Ok(Some(dir)) => {
                        // Its file objects are all there; metadata objects come later.
                        let rel = Path::new(OBJECTS).join(dir);
                        let file = |n: &std::ffi::OsStr| n.as_bytes().ends_with(b".file");
                        if sysroot_dir.join(&rel).is_dir() {
                            root_fs
                                .add_picked(&sysroot_dir, &rel, file)
                                .with_context(what)?;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => bail!("stopped before the pull was over"),
                }
            }
            let stamps = fs::dir_stamps(&sysroot_dir.join(OBJECTS))?;
            root_fs
                .add(&sysroot_dir, Path::new(OBJECTS))
                .with_context(what)?;
            Ok((root_fs, stamps))
        })
        .context("starting the root filesystem thread")?;
    Ok(Filling {
        path,
        file,
        qcow2,
        dirs: Some(tx),
        thread: Some(thread),
        epoch,
    })
}

fn pull(plan: &Plan) -> Result<((Pulled, Option<Filling>), String)> {
    let layout = &plan.layout;
    let grub = layout.uses_grub().then_some(plan.separate_boot());
    let sysroot = sysroot::create(
        &plan.sysroot_dir(),
        &layout.ostree.osname,
        grub,
        layout.ostree.sysroot_readonly,
    )?;
    let srepo = sysroot.repo();
    let remote = plan.req.remote.as_ref();
    if let Some(remote) = remote {
        sysroot::add_remote(&srepo, remote)?;
    }
    let mut filling = None;
    let (new, previous, detail) = match (plan.req.source, remote) {
        (Source::Url(url), Some(remote)) => {
            let mut refs: Vec<&str> = plan.req.previous.into_iter().collect();
            refs.push(plan.req.treeref);
            let (mut commits, fetched) =
                sysroot::pull_url(&srepo, &remote.name, Some(url), &refs, plan.req.quiet)?;
            let new = commits.pop().expect("one per ref");
            let detail = format!(
                "{new}, {} objects, {:.1} MiB fetched",
                fetched.objects,
                fetched.bytes as f64 / MIB as f64
            );
            (new, commits.pop(), detail)
        }
        (Source::Url(url), None) => {
            bail!("pulling from {url} needs the remote (its name and trusted key)")
        }
        (Source::Repo(repo), _) => {
            // The new commit's time is known before it is pulled: the disk can be written
            // while it is.
            let src = ostreeutil::open_existing(repo)?;
            let commit = ostreeutil::resolve(&src, plan.req.treeref)?
                .ok_or_else(|| anyhow!("ref {} is not in {}", plan.req.treeref, repo.display()))?;
            filling = Some(start_filling(
                plan,
                ostreeutil::commit_epoch(&src, &commit)?,
            )?);
            let told = filling.as_ref().map(Filling::dir_done);
            let pull = |r: &str, tell: bool| -> Result<String> {
                let commit = match (&told, tell) {
                    (Some(told), true) => sysroot::pull_into_telling(&srepo, repo, r, told)?,
                    _ => sysroot::pull_into(&srepo, repo, r)?,
                };
                if let Some(remote) = remote {
                    // The ref `ostree admin upgrade` compares the remote's against.
                    srepo
                        .set_ref_immediate(
                            Some(&remote.name),
                            r,
                            Some(&commit),
                            ostree::gio::Cancellable::NONE,
                        )
                        .with_context(|| {
                            format!("setting ref {}:{r} in the sysroot repo", remote.name)
                        })?;
                }
                Ok(commit)
            };
            let previous = match plan.req.previous {
                Some(prev) => Some(pull(prev, false)?),
                None => None,
            };
            let new = pull(plan.req.treeref, true)?;
            (new.clone(), previous, new)
        }
    };
    let epoch = ostreeutil::commit_epoch(&srepo, &new)?;
    Ok((
        (
            Pulled {
                sysroot,
                new,
                previous,
                epoch,
            },
            filling,
        ),
        detail,
    ))
}

/// The disk image on its way: the file, the root filesystem open for filling, and the qcow2
/// image being written from it.
struct Disk {
    path: PathBuf,
    file: std::fs::File,
    root_fs: Option<ext2fs::Fs>,
    qcow2: Option<qcow2::Stream>,
    epoch: u64,
}

fn deploy(plan: &Plan, pulled: &Pulled, filling: Option<Filling>) -> Result<(Disk, String)> {
    let layout = &plan.layout;
    let epoch = pulled.epoch;
    // Started during the pull with the time of the commit the ref named then; should the ref
    // have moved before the pull read it, the disk is started again.
    let mut filling = match filling {
        Some(f) if f.epoch == epoch => f,
        other => {
            drop(other);
            start_filling(plan, epoch)?
        }
    };
    let sysroot_dir = plan.sysroot_dir();
    let osname = &layout.ostree.osname;
    // Nothing writes to ostree/repo/objects after the pull: the rest of its files go into the
    // root filesystem while ostree deploys (the deployments are hardlinks to them).
    let (root_fs, stamps) = std::thread::scope(|scope| {
        let objects = scope.spawn(|| filling.pull_over());
        let deployed = deploy_commits(plan, pulled);
        let objects = objects
            .join()
            .map_err(|_| anyhow!("the root filesystem thread panicked"))?;
        deployed?;
        objects
    })?;
    if fs::dir_stamps(&sysroot_dir.join(OBJECTS))? != stamps {
        bail!("ostree/repo/objects changed during the deploy; the root filesystem would miss it");
    }
    let (path, file, qcow2) = (
        filling.path.clone(),
        filling.file.try_clone()?,
        filling.qcow2.take(),
    );
    let disk = Disk {
        path,
        file,
        root_fs: Some(root_fs),
        qcow2,
        epoch,
    };
    Ok((disk, osname.clone()))
}

/// `--previous` (if given) and then the new commit, each with the layout's kernel arguments;
/// /etc/fstab mounts a separate /boot.
fn deploy_commits(plan: &Plan, pulled: &Pulled) -> Result<()> {
    let layout = &plan.layout;
    let req = plan.req;
    let osname = &layout.ostree.osname;
    let mut kargs = vec![format!("root=UUID={}", plan.uuid(plan.root()))];
    kargs.extend(layout.kargs.iter().cloned());
    if let Some(spec) = req.first_boot {
        kargs.extend(spec.kargs.iter().cloned());
    }
    let sysroot = &pulled.sysroot;
    // Deployments follow the remote when there is one: `ostree admin upgrade` on the node
    // pulls `REMOTE:REF`.
    let refspec = |r: &str| match &req.remote {
        Some(remote) => format!("{}:{r}", remote.name),
        None => r.to_string(),
    };
    if let (Some(prev), Some(pc)) = (req.previous, &pulled.previous) {
        sysroot::deploy(
            sysroot,
            osname,
            &refspec(prev),
            pc,
            Some(&kargs),
            sysroot::Keep::All,
        )?;
    }
    sysroot::deploy(
        sysroot,
        osname,
        &refspec(req.treeref),
        &pulled.new,
        Some(&kargs),
        sysroot::Keep::All,
    )?;
    let sysroot_dir = plan.sysroot_dir();
    let dirs: Vec<PathBuf> = sysroot
        .deployments()
        .iter()
        .map(|d| sysroot_dir.join(sysroot.deployment_dirpath(d).as_str()))
        .collect();
    if let Some(b) = plan.index_of("/boot") {
        for dir in &dirs {
            let fstab = dir.join("etc/fstab");
            let mut text = std::fs::read_to_string(&fstab).unwrap_or_default();
            text.push_str(&format!("UUID={} /boot ext4 defaults 0 2\n", plan.uuid(b)));
            std::fs::write(&fstab, text).with_context(|| format!("writing {}", fstab.display()))?;
        }
    }
    if let Some(spec) = req.first_boot {
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let var = sysroot_dir.join("ostree/deploy").join(osname).join("var");
        let done = super::firstboot::apply(&dirs, &var, spec).context("the first-boot config")?;
        if !req.quiet {
            eprintln!("first boot: {done}");
        }
    }
    if layout.uses_grub() {
        grub::populate_grub_dir(&sysroot_dir.join("boot"))?;
    }
    Ok(())
}

/// /boot from the sysroot's boot directory into its partition, beside the rest of the root
/// filesystem (the deployments, /etc, the repo's refs) into the root partition.
fn filesystems(plan: &Plan, disk: &mut Disk) -> Result<((), String)> {
    let sysroot_dir = plan.sysroot_dir();
    let boot_tree = plan.boot_tree();
    let boot = plan.index_of("/boot");
    let epoch = disk.epoch;
    if boot.is_some() {
        std::fs::rename(sysroot_dir.join("boot"), &boot_tree)?;
        std::fs::create_dir(sysroot_dir.join("boot"))?;
    }
    disk.file.sync_all()?;
    let root = plan.root();
    let root_fs = disk.root_fs.take().expect("filled once");
    std::thread::scope(|scope| -> Result<()> {
        let boot_fs = boot.map(|b| {
            let (path, tree) = (&disk.path, &boot_tree);
            scope.spawn(move || {
                fs::mkfs_ext4(
                    tree,
                    path,
                    plan.offset(b),
                    plan.bytes(b),
                    &plan.label(b),
                    plan.uuid(b),
                    epoch,
                )
            })
        });
        let mut root_fs = root_fs;
        root_fs
            .add(&sysroot_dir, Path::new(""))
            .with_context(|| format!("filling the {} filesystem", plan.label(root)))?;
        fs::finish_ext4(
            root_fs,
            &disk.path,
            plan.offset(root),
            &plan.label(root),
            epoch,
        )?;
        if let Some(h) = boot_fs {
            h.join()
                .map_err(|_| anyhow!("the /boot mkfs thread panicked"))??;
        }
        Ok(())
    })?;
    let n = 1 + usize::from(boot.is_some());
    Ok(((), format!("{n} ext4")))
}

/// The ESP with GRUB's EFI binary, BIOS GRUB's core.img and boot code, and the GPT.
fn bootloader(plan: &Plan, grub_images: GrubImagesJob, disk: &mut Disk) -> Result<((), String)> {
    let images = grub_images.wait()?;
    let epoch = disk.epoch;
    let layout = &plan.layout;
    let mut done = Vec::new();
    for (i, p) in layout.partitions.iter().enumerate() {
        match p.kind {
            PartType::Esp => {
                let efi = images.efi.as_deref().expect("made for an ESP");
                disk.file.sync_all()?;
                fs::mkfs_esp(
                    &disk.path,
                    plan.offset(i),
                    plan.bytes(i),
                    p.label.as_deref().unwrap_or("EFI-SYSTEM"),
                    p.uuid.as_deref().unwrap_or_default(),
                    efi,
                    &plan.work.scratch,
                    epoch,
                )?;
                done.push("ESP");
            }
            PartType::BiosBoot if layout.has(Bootloader::Grub2Bios) => {
                let core = images.bios_core.as_deref().expect("made for grub2-bios");
                grub::install_bios(
                    &mut disk.file,
                    core,
                    plan.placed[i].first_lba,
                    plan.placed[i].last_lba - plan.placed[i].first_lba + 1,
                )?;
                done.push("BIOS boot code");
            }
            _ => {}
        }
    }
    // The partition table goes last: a run that dies before this leaves a disk that boots
    // nothing (an install wiped the old tables first).
    process::fault_point("gpt");
    gpt::write(
        &mut disk.file,
        plan.disk_bytes / gpt::SECTOR,
        &layout.disk_guid,
        &gpt_partitions(plan),
    )?;
    done.push("GPT");
    disk.file.flush()?;
    disk.file.sync_all()?;
    Ok(((), done.join(", ")))
}

fn gpt_partitions(plan: &Plan) -> Vec<gpt::Partition> {
    plan.layout
        .partitions
        .iter()
        .zip(&plan.placed)
        .map(|(p, at)| gpt::Partition {
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
        })
        .collect()
}

/// The image in its format, renamed over the output (the trees are freed meanwhile); a disk
/// was written in place and synced by `bootloader`.
fn output(plan: &Plan, pulled: Pulled, disk: Disk) -> Result<((), String)> {
    let req = plan.req;
    if req.device {
        drop(disk);
        drop(pulled);
        return Ok(((), format!("installed on {}", req.out.display())));
    }
    let Disk {
        path: raw,
        file,
        qcow2,
        ..
    } = disk;
    drop(file);
    drop(pulled);
    let trees = [plan.sysroot_dir(), plan.boot_tree()];
    let freeing = std::thread::spawn(move || {
        for t in &trees {
            let _ = remove_staging(t);
        }
    });
    let staging = &plan.work.staging;
    let image = match (plan.format, req.compress) {
        (Format::Raw, false) => raw.clone(),
        (Format::Raw, true) => {
            let z = staging.join("disk.raw.zst");
            process::run(
                Command::new("zstd")
                    .args(["-q", "-T0", "--sparse", "-o"])
                    .arg(&z)
                    .arg(&raw),
            )
            .context("compressing with zstd (apt-get install zstd)")?;
            z
        }
        (Format::Qcow2, false) if qcow2.is_some() => qcow2
            .expect("checked")
            .finish()
            .context("writing the qcow2 image")?,
        (Format::Qcow2, compress) => {
            let q = staging.join("disk.qcow2");
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
            q
        }
    };
    // The intermediate raw disk is freed while the rename frees the previous image's blocks
    // (each ~0.1 s for the fixture node); the cleanup step removes whatever is left.
    let freeing_raw = (image != raw).then(|| std::thread::spawn(move || std::fs::remove_file(raw)));
    let _ = freeing.join();
    process::fault_point("image");
    let renamed = std::fs::rename(&image, req.out)
        .with_context(|| format!("moving the image to {}", req.out.display()));
    if let Some(t) = freeing_raw {
        let _ = t.join();
    }
    renamed?;
    Ok(((), format!("{:?}", plan.format).to_lowercase()))
}

/// Zeroes the first and last MiB of a disk (the protective MBR with any boot code, both
/// GPTs) and syncs: from here until the new GPT is written last, the disk boots nothing.
fn wipe_partition_tables(disk: &mut std::fs::File, bytes: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let zeros = vec![0u8; MIB as usize];
    for at in [0, bytes.saturating_sub(MIB)] {
        disk.seek(SeekFrom::Start(at))?;
        disk.write_all(&zeros)?;
    }
    disk.sync_all()?;
    Ok(())
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
