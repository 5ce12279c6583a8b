//! Lays the packages out in the work root from the layout each package's import recorded
//! ([`PkgInfo::layout`]): what libostree's user-mode, union-files checkout of the packages'
//! cache commits gives, entry for entry, without reading each object's metadata again.
//!
//! As that checkout: a directory is created once, by the first package that has it, with its
//! mode (set, with mtime 0, after what the package puts in it); regular files are hardlinks to
//! the cache's objects, except empty files and files their owner cannot read, which are copied
//! without setuid/setgid bits; a later package's file replaces an earlier one at the same path
//! (the packages were checked to agree on its content); symbolic links are created. Paths are
//! resolved inside the root: a symlink on the way never leads out of it.
//!
//! [`place_packages_over`] gives the same tree from the previous compose's root instead of an
//! empty directory: what is already right there (a hardlink to the same object, a directory)
//! is kept, everything else is replaced or removed. A one-package recompose then links and
//! unlinks only what changed, instead of thousands of files twice.

use crate::pkgcache::{PkgInfo, Placed};
use anyhow::{Context, Result};
use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Places each package of `infos` in order over `root`, hardlinking from the bare-user repo
/// at `cache_repo`; `done` is called after each package. Returns the inodes of the objects
/// it hardlinked.
pub fn place_packages(
    cache_repo: &Path,
    root: &Path,
    infos: &[PkgInfo],
    mut done: impl FnMut(&PkgInfo),
) -> Result<Linked> {
    let mut placer = Placer::new(cache_repo, root)?;
    for info in infos {
        placer
            .package(info)
            .with_context(|| format!("laying out {}", info.nevra))?;
        done(info);
    }
    Ok(placer.linked)
}

/// The inodes of the objects a placement hardlinked, and their checksums.
pub type Linked = HashMap<u64, String>;

/// What [`place_packages_over`] did with the tree it was given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reused {
    /// The inodes of the objects hardlinked (as [`place_packages`] returns them).
    pub linked: Linked,
    /// Files and directories that were already right.
    pub kept: usize,
    /// Entries of the old tree no package has, removed.
    pub removed: usize,
}

/// The tree [`place_packages`] gives in an empty `root`, made from whatever tree is at `root`
/// (the previous compose's, after its scriptlets and postprocessing): a hardlink to the right
/// object and a directory owned as a new one would be, without extended attributes, are
/// kept; every other entry is replaced, and what no package has is removed. Directories get
/// their modes as in a fresh placement, the root directory 0755.
///
/// `Ok(None)` when the packages lay a directory out through a symbolic link (`/lib/foo` with
/// `/lib -> usr/lib`): what the link leads to may be left over from the old tree, so the
/// caller places into an empty root instead (what is at `root` is then in an unknown state).
pub fn place_packages_over(
    cache_repo: &Path,
    root: &Path,
    infos: &[PkgInfo],
    mut done: impl FnMut(&PkgInfo),
) -> Result<Option<Reused>> {
    let mut placer = Placer::new(cache_repo, root)?;
    let root_st = rfs::fstat(&placer.root)?;
    // Inodes are compared with the objects' (a placement links across no filesystems).
    if root_st.st_dev != rfs::fstat(&placer.objects)?.st_dev {
        return Ok(None);
    }
    let root_ino = root_st.st_ino;
    let mut xattrs = [0u8; 256];
    let has_xattrs = !matches!(rfs::flistxattr(&placer.root, &mut xattrs[..]), Ok(0));
    if has_xattrs {
        return Ok(None);
    }
    rfs::fchown(
        &placer.root,
        Some(rustix::process::geteuid()),
        Some(rustix::process::getegid()),
    )
    .with_context(|| format!("taking ownership of {}", root.display()))?;
    let mut over = Over {
        claimed: HashSet::new(),
        found: HashMap::new(),
        symlinks: HashSet::new(),
        root_path: root.to_path_buf(),
        reused: Reused::default(),
    };
    over.found
        .insert(root_ino, (String::new(), list(&placer.root)?));
    placer.over = Some(over);
    for info in infos {
        match placer.package(info) {
            Ok(()) => {}
            Err(e) if e.is::<ThroughSymlink>() => return Ok(None),
            Err(e) => return Err(e.context(format!("laying out {}", info.nevra))),
        }
        done(info);
    }
    let mut over = placer.over.take().expect("placing over a tree");
    over.sweep()?;
    rfs::fchmod(&placer.root, Mode::from_raw_mode(0o755))
        .with_context(|| format!("setting mode 755 on {}", root.display()))?;
    over.reused.linked = placer.linked;
    Ok(Some(over.reused))
}

/// A package lays a directory out through a symbolic link (placing over an old tree).
#[derive(Debug)]
struct ThroughSymlink;

impl std::fmt::Display for ThroughSymlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a directory is laid out through a symbolic link")
    }
}

impl std::error::Error for ThroughSymlink {}

/// A directory's entries: name → (inode, type).
type Entries = HashMap<String, (u64, FileType)>;

/// The entries of the directory at `fd`.
fn list(fd: &OwnedFd) -> Result<Entries> {
    let mut entries = HashMap::new();
    for entry in rfs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        entries.insert(name.into_owned(), (entry.ino(), entry.file_type()));
    }
    Ok(entries)
}

/// A placement over an old tree: what it has placed or kept, and what the old tree had.
struct Over {
    /// Entries placed or kept by this placement: (directory inode, name).
    claimed: HashSet<(u64, String)>,
    /// The old tree's entries in each directory this placement kept, read when it was kept:
    /// directory inode → (path, name → (inode, type)).
    found: HashMap<u64, (String, Entries)>,
    /// Claimed entries that are symbolic links.
    symlinks: HashSet<(u64, String)>,
    root_path: PathBuf,
    reused: Reused,
}

impl Over {
    /// Claims `name` in the directory with inode `dir` for this placement; what the old tree
    /// has there when this is its first claim (None: nothing, or this placement put it).
    fn claim(&mut self, dir: u64, name: &str) -> Option<(u64, FileType)> {
        if !self.claimed.insert((dir, name.to_string())) {
            return None;
        }
        self.found
            .get(&dir)
            .and_then(|(_, entries)| entries.get(name).copied())
    }

    /// Removes what the old tree had at `path` (a directory with all it holds).
    fn remove(&mut self, path: &str) -> Result<()> {
        crate::compose::postprocess::remove_any(&self.root_path.join(path))
            .with_context(|| format!("removing /{path} of the previous tree"))
    }

    /// Removes every entry of the old tree that no package claimed.
    fn sweep(&mut self) -> Result<()> {
        let found = std::mem::take(&mut self.found);
        for (ino, (dir, entries)) in &found {
            for name in entries.keys() {
                if !self.claimed.contains(&(*ino, name.clone())) {
                    let path = if dir.is_empty() {
                        name.clone()
                    } else {
                        format!("{dir}/{name}")
                    };
                    self.remove(&path)?;
                    self.reused.removed += 1;
                }
            }
        }
        Ok(())
    }
}

/// What placing over an old tree found at a non-directory's path.
enum Reuse {
    /// Not placing over an old tree, or the path was placed by this placement already.
    No,
    /// The old tree's entry is right and stays.
    Kept,
    /// The old tree's entry was removed: nothing is there.
    Cleared,
}

struct Placer {
    objects: OwnedFd,
    root: OwnedFd,
    tmp_serial: u64,
    /// The objects hardlinked: inode -> checksum.
    linked: Linked,
    /// Their inodes by checksum.
    inodes: HashMap<String, u64>,
    /// Set when placing over an old tree.
    over: Option<Over>,
}

/// `dir/name` split at its last `/` ("" for the root).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The content object's path under `objects/` in a bare-user repo.
fn loose(csum: &str) -> String {
    crate::ostreeutil::loose_object_relpath(csum, "file")
}

impl Placer {
    fn new(cache_repo: &Path, root: &Path) -> Result<Placer> {
        let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let objects_path = cache_repo.join("objects");
        let objects = rfs::open(&objects_path, dir_flags, Mode::empty())
            .with_context(|| format!("opening {}", objects_path.display()))?;
        let root = rfs::open(root, dir_flags, Mode::empty())
            .with_context(|| format!("opening {}", root.display()))?;
        Ok(Placer {
            objects,
            root,
            tmp_serial: 0,
            linked: HashMap::new(),
            inodes: HashMap::new(),
            over: None,
        })
    }

    fn package(&mut self, info: &PkgInfo) -> Result<()> {
        // The package's directories, opened as they come (each before what it holds), and
        // (placing over an old tree) their inodes.
        let mut dirs: HashMap<&str, (OwnedFd, u64)> = HashMap::new();
        let root_ino = match self.over {
            Some(_) => rfs::fstat(&self.root)?.st_ino,
            None => 0,
        };
        dirs.insert("", (self.root.try_clone()?, root_ino));
        let mut created: Vec<(&str, u32)> = Vec::new();
        for entry in &info.layout {
            match entry {
                Placed::Dir(path, mode) => {
                    let (parent, name) = split(path);
                    let (parent_fd, parent_ino) = dir(&dirs, parent)?;
                    let found = self.over.as_mut().and_then(|o| o.claim(parent_ino, name));
                    // Whether the directory is new (nothing of an old tree in it).
                    let (made, new) = match found {
                        Some((_, kind)) => (true, !self.reuse_dir(parent_fd, path, name, kind)?),
                        None => match rfs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o700)) {
                            Ok(()) => (true, true),
                            Err(Errno::EXIST) => {
                                if let Some(o) = &self.over {
                                    if o.symlinks.contains(&(parent_ino, name.to_string())) {
                                        return Err(ThroughSymlink.into());
                                    }
                                }
                                (false, false)
                            }
                            Err(e) => {
                                return Err(e).with_context(|| format!("creating /{path}"));
                            }
                        },
                    };
                    // An existing non-directory there fails here, as in a checkout.
                    let fd = self.open_dir(path)?;
                    let ino = match &mut self.over {
                        Some(o) => {
                            let ino = rfs::fstat(&fd)?.st_ino;
                            if new {
                                // Its inode may be one a removed directory had.
                                o.found.insert(ino, (path.clone(), HashMap::new()));
                            }
                            ino
                        }
                        None => 0,
                    };
                    dirs.insert(path, (fd, ino));
                    if made {
                        created.push((path, *mode));
                    }
                }
                Placed::Link(path, csum) => {
                    let (parent, name) = split(path);
                    let (parent, parent_ino) = dir(&dirs, parent)?;
                    self.record(csum)
                        .with_context(|| format!("reading object {csum} for /{path}"))?;
                    let placed = self.reuse(parent_ino, path, name, Some(csum));
                    match placed? {
                        Reuse::Kept => Ok(()),
                        Reuse::Cleared => {
                            rfs::linkat(&self.objects, loose(csum), parent, name, AtFlags::empty())
                                .map_err(anyhow::Error::from)
                        }
                        Reuse::No => self.link(parent, name, csum),
                    }
                    .with_context(|| format!("hardlinking /{path} to object {csum}"))?;
                }
                Placed::Copy(path, csum, mode) => {
                    let (parent, name) = split(path);
                    let (parent, parent_ino) = dir(&dirs, parent)?;
                    self.reuse(parent_ino, path, name, None)?;
                    self.copy(parent, name, csum, *mode)
                        .with_context(|| format!("copying object {csum} to /{path}"))?;
                }
                Placed::Symlink(path, target) => {
                    let (parent, name) = split(path);
                    let (parent, parent_ino) = dir(&dirs, parent)?;
                    self.reuse(parent_ino, path, name, None)?;
                    if let Some(o) = &mut self.over {
                        o.symlinks.insert((parent_ino, name.to_string()));
                    }
                    symlink_replacing(parent, name, target)
                        .with_context(|| format!("creating symlink /{path}"))?;
                }
            }
        }
        // Modes (and mtime 0) last, deepest first, as a checkout leaves each directory.
        let mtime_zero = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        for (path, mode) in created.iter().rev() {
            let (fd, _) = &dirs[path];
            rfs::fchmod(fd, Mode::from_raw_mode(*mode))
                .and_then(|()| rfs::futimens(fd, &mtime_zero))
                .with_context(|| format!("setting mode {mode:o} on /{path}"))?;
        }
        Ok(())
    }

    /// Placing over an old tree, at the first claim of a non-directory entry: keeps what
    /// the old tree has there when it is a hardlink to `object`, else removes it.
    fn reuse(
        &mut self,
        parent_ino: u64,
        path: &str,
        name: &str,
        object: Option<&str>,
    ) -> Result<Reuse> {
        let Some(o) = &mut self.over else {
            return Ok(Reuse::No);
        };
        let Some((ino, kind)) = o.claim(parent_ino, name) else {
            return Ok(Reuse::No);
        };
        if let (FileType::RegularFile, Some(csum)) = (kind, object) {
            if self.inodes.get(csum) == Some(&ino) {
                o.reused.kept += 1;
                return Ok(Reuse::Kept);
            }
        }
        o.remove(path)?;
        Ok(Reuse::Cleared)
    }

    /// Placing over an old tree, at the first claim of directory `path`, where the old tree
    /// has an entry of `kind`: a directory is kept when nothing sets it apart from a new one
    /// (owner, extended attributes), and its entries are read; anything else is replaced by
    /// a new directory. Whether it was kept; either way the directory counts as created by
    /// this package (mode 0700 until the package's end, as a new one).
    fn reuse_dir(
        &mut self,
        parent: BorrowedFd,
        path: &str,
        name: &str,
        kind: FileType,
    ) -> Result<bool> {
        let o = self.over.as_mut().expect("placing over a tree");
        if kind == FileType::Directory {
            let fd = rfs::openat(
                parent,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("opening /{path} of the previous tree"))?;
            let mut xattrs = [0u8; 256];
            if matches!(rfs::flistxattr(&fd, &mut xattrs[..]), Ok(0)) {
                // As a new directory would be: owned by this process, the group of a
                // setgid parent.
                let st = rfs::fstat(&fd)?;
                let up = rfs::fstat(parent)?;
                let uid = rustix::process::geteuid().as_raw();
                let gid = if up.st_mode & 0o2000 != 0 {
                    up.st_gid
                } else {
                    rustix::process::getegid().as_raw()
                };
                if (st.st_uid, st.st_gid) != (uid, gid) {
                    rfs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )
                    .with_context(|| format!("owning /{path} of the previous tree"))?;
                }
                rfs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
                o.found.insert(st.st_ino, (path.to_string(), list(&fd)?));
                o.reused.kept += 1;
                return Ok(true);
            }
        }
        o.remove(path)?;
        rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .with_context(|| format!("creating /{path}"))?;
        Ok(false)
    }

    /// Notes the inode of object `csum`, hardlinked by this placement.
    fn record(&mut self, csum: &str) -> Result<()> {
        if !self.inodes.contains_key(csum) {
            let st = rfs::statat(&self.objects, loose(csum), AtFlags::empty())?;
            self.inodes.insert(csum.to_string(), st.st_ino);
            self.linked.insert(st.st_ino, csum.to_string());
        }
        Ok(())
    }

    fn open_dir(&self, path: &str) -> Result<OwnedFd> {
        rfs::openat2(
            &self.root,
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT,
        )
        .with_context(|| format!("opening /{path} as a directory"))
    }

    fn tmp_name(&mut self) -> String {
        self.tmp_serial += 1;
        format!(
            ".hostforge-place-{}-{}",
            std::process::id(),
            self.tmp_serial
        )
    }

    /// Hardlinks object `csum` at `name`; an existing file there is replaced unless it is
    /// that object already.
    fn link(&mut self, dir: BorrowedFd, name: &str, csum: &str) -> Result<()> {
        let src = loose(csum);
        match rfs::linkat(&self.objects, &src, dir, name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let a = rfs::statat(&self.objects, &src, AtFlags::SYMLINK_NOFOLLOW)?;
        let b = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
            return Ok(());
        }
        let tmp = self.tmp_name();
        rfs::linkat(&self.objects, &src, dir, &tmp, AtFlags::empty())?;
        rename_over(dir, &tmp, name)
    }

    /// Writes a copy of object `csum` at `name` with `mode` less setuid/setgid (what a
    /// user-mode checkout does), replacing what is there.
    fn copy(&mut self, dir: BorrowedFd, name: &str, csum: &str, mode: u32) -> Result<()> {
        let mut content = Vec::new();
        let src = rfs::openat(
            &self.objects,
            loose(csum),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        std::fs::File::from(src).read_to_end(&mut content)?;
        let tmp = self.tmp_name();
        let fd = rfs::openat(
            dir,
            &tmp,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = std::fs::File::from(fd);
        let written = file.write_all(&content).and_then(|()| {
            rfs::fchmod(&file, Mode::from_raw_mode(mode & !0o6000)).map_err(Into::into)
        });
        drop(file);
        if let Err(e) = written {
            let _ = rfs::unlinkat(dir, &tmp, AtFlags::empty());
            return Err(e.into());
        }
        rename_over(dir, &tmp, name)
    }
}

/// The directory at `path` this package opened ("" is the root), and its inode (placing
/// over an old tree).
fn dir<'a>(dirs: &'a HashMap<&str, (OwnedFd, u64)>, path: &str) -> Result<(BorrowedFd<'a>, u64)> {
    dirs.get(path)
        .map(|(fd, ino)| (fd.as_fd(), *ino))
        .ok_or_else(|| anyhow::anyhow!("/{path} is used before the layout creates it"))
}

/// Renames `tmp` over `name` in `dir`; `tmp` is removed when that fails.
fn rename_over(dir: BorrowedFd, tmp: &str, name: &str) -> Result<()> {
    if let Err(e) = rfs::renameat(dir, tmp, dir, name) {
        let _ = rfs::unlinkat(dir, tmp, AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// Creates a symlink, replacing a non-directory already at `name`.
fn symlink_replacing(dir: BorrowedFd, name: &str, target: &str) -> Result<()> {
    match rfs::symlinkat(target, dir, name) {
        Ok(()) => return Ok(()),
        Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    rfs::symlinkat(target, dir, name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A cache with an object for each of `csums` (content: the checksum).
    fn cache(dir: &Path, csums: &[&str]) {
        for c in csums {
            let p = dir.join("objects").join(loose(c));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, c).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }

    fn pkg(name: &str, layout: Vec<Placed>) -> PkgInfo {
        PkgInfo {
            nevra: format!("{name}-1-1.x86_64"),
            name: name.into(),
            layout,
            ..Default::default()
        }
    }

    fn d(p: &str, mode: u32) -> Placed {
        Placed::Dir(p.into(), mode)
    }
    fn l(p: &str, c: &str) -> Placed {
        Placed::Link(p.into(), c.into())
    }
    fn s(p: &str, t: &str) -> Placed {
        Placed::Symlink(p.into(), t.into())
    }

    /// Every entry under `root` with what a commit of it records (type, mode, owner,
    /// extended attribute names, link target, content), and for regular files their inode.
    fn dump(root: &Path) -> Vec<(String, String, u64)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, u64)>) {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let m = std::fs::symlink_metadata(&p).unwrap();
                let mut xattrs = vec![0u8; 1024];
                let n = rfs::llistxattr(&p, &mut xattrs[..]).unwrap();
                xattrs.truncate(n);
                let what = if m.file_type().is_symlink() {
                    format!("-> {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_file() {
                    std::fs::read_to_string(&p).unwrap()
                } else {
                    "dir".into()
                };
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let desc = format!("{:o} {}:{} {xattrs:?} {what}", m.mode(), m.uid(), m.gid());
                let ino = if m.is_file() { m.ino() } else { 0 };
                out.push((rel, desc, ino));
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        let m = std::fs::metadata(root).unwrap();
        out.push((
            ".".into(),
            format!("{:o} {}:{}", m.mode(), m.uid(), m.gid()),
            0,
        ));
        out
    }

    const C1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const C3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    const C4: &str = "4444444444444444444444444444444444444444444444444444444444444444";

    fn packages() -> Vec<PkgInfo> {
        vec![
            pkg(
                "a",
                vec![
                    d("usr", 0o755),
                    d("usr/bin", 0o755),
                    l("usr/bin/a", C1),
                    Placed::Copy("usr/bin/empty".into(), C2.into(), 0o4755),
                    s("usr/bin/b", "a"),
                    d("etc", 0o750),
                    l("etc/conf", C3),
                    d("var", 0o2775),
                ],
            ),
            pkg(
                "b",
                vec![
                    d("usr", 0o700),
                    d("usr/lib", 0o755),
                    l("usr/lib/x", C4),
                    d("usr/bin", 0o755),
                    l("usr/bin/a", C1),
                    l("usr/bin/c", C2),
                    d("var", 0o755),
                    d("var/spool", 0o755),
                ],
            ),
        ]
    }

    /// Whatever the old tree holds (wrong objects, copies where links go, a directory where
    /// a file goes and the other way round, wrong owners, modes, link targets, extended
    /// attributes, files nobody ships), the tree placed over it is the one placed afresh,
    /// with the same hardlinks.
    #[test]
    fn placing_over_an_old_tree_gives_the_fresh_tree() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("cache");
        cache(&c, &[C1, C2, C3, C4]);
        let fresh = t.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
        place_packages(&c, &fresh, &packages(), |_| {}).unwrap();

        let old = t.path().join("old");
        std::fs::create_dir(&old).unwrap();
        let stale = vec![pkg(
            "stale",
            vec![
                d("usr", 0o711),
                d("usr/bin", 0o700),
                l("usr/bin/a", C3),
                l("usr/bin/b", C1),
                d("usr/lib", 0o755),
                d("usr/lib/x", 0o755),
                l("usr/lib/x/deep", C1),
                l("etc", C1),
                d("var", 0o755),
                d("var/spool", 0o755),
                l("usr/bin/stale", C4),
                d("opt", 0o755),
                d("opt/thing", 0o755),
            ],
        )];
        place_packages(&c, &old, &stale, |_| {}).unwrap();
        std::fs::remove_file(old.join("usr/bin/a")).unwrap();
        std::fs::write(old.join("usr/bin/a"), C1).unwrap();
        std::fs::write(old.join("usr/bin/c"), C2).unwrap();
        rfs::setxattr(
            old.join("usr/lib"),
            "user.left-over",
            b"1",
            rfs::XattrFlags::empty(),
        )
        .unwrap();
        std::os::unix::fs::chown(old.join("var/spool"), Some(1), Some(1)).unwrap();
        std::os::unix::fs::chown(&old, Some(2), Some(2)).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o700)).unwrap();

        let reused = place_packages_over(&c, &old, &packages(), |_| {})
            .unwrap()
            .expect("no directory under a symlink");
        let (a, b) = (dump(&fresh), dump(&old));
        let strip = |v: &[(String, String, u64)]| -> Vec<(String, String)> {
            v.iter().map(|(p, s, _)| (p.clone(), s.clone())).collect()
        };
        assert_eq!(strip(&a), strip(&b));
        // Hardlinks to the same objects; copies are files of their own.
        for ((path, _, ia), (_, _, ib)) in a.iter().zip(&b) {
            if path == "usr/bin/empty" {
                assert_ne!(ia, ib);
            } else {
                assert_eq!(ia, ib, "{path}");
            }
        }
        // usr, usr/bin, usr/lib/x... : what was right stayed.
        assert!(reused.kept >= 4, "{reused:?}");
        assert!(reused.removed >= 2, "{reused:?}");
        // An old tree that is the new one already: everything stays.
        let again = place_packages_over(&c, &old, &packages(), |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(again.removed, 0);
        assert_eq!(strip(&dump(&old)), strip(&a));
    }

    /// A package laying a directory out through a symlink another package placed: placing
    /// over an old tree gives up (the caller places afresh), and a fresh placement follows
    /// the link inside the root.
    #[test]
    fn a_directory_through_a_symlink_is_placed_afresh() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("cache");
        cache(&c, &[C1]);
        let infos = vec![
            pkg(
                "fs",
                vec![d("usr", 0o755), d("usr/lib", 0o755), s("lib", "usr/lib")],
            ),
            pkg("x", vec![d("lib", 0o755), l("lib/y", C1)]),
        ];
        let old = t.path().join("old");
        std::fs::create_dir(&old).unwrap();
        place_packages(&c, &old, &infos, |_| {}).unwrap();
        assert_eq!(std::fs::read_to_string(old.join("usr/lib/y")).unwrap(), C1);
        assert_eq!(place_packages_over(&c, &old, &infos, |_| {}).unwrap(), None);
    }
}
