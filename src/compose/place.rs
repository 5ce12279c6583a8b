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

use crate::pkgcache::{PkgInfo, Placed};
use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Places each package of `infos` in order over `root`, hardlinking from the bare-user repo
/// at `cache_repo`; `done` is called after each package.
pub fn place_packages(
    cache_repo: &Path,
    root: &Path,
    infos: &[PkgInfo],
    mut done: impl FnMut(&PkgInfo),
) -> Result<()> {
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let objects_path = cache_repo.join("objects");
    let objects = rfs::open(&objects_path, dir_flags, Mode::empty())
        .with_context(|| format!("opening {}", objects_path.display()))?;
    let root_fd = rfs::open(root, dir_flags, Mode::empty())
        .with_context(|| format!("opening {}", root.display()))?;
    let mut placer = Placer {
        objects,
        root: root_fd,
        tmp_serial: 0,
    };
    for info in infos {
        placer
            .package(info)
            .with_context(|| format!("laying out {}", info.nevra))?;
        done(info);
    }
    Ok(())
}

struct Placer {
    objects: OwnedFd,
    root: OwnedFd,
    tmp_serial: u64,
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
    fn package(&mut self, info: &PkgInfo) -> Result<()> {
        // The package's directories, opened as they come (each before what it holds).
        let mut dirs: HashMap<&str, OwnedFd> = HashMap::new();
        dirs.insert("", self.root.try_clone()?);
        let mut created: Vec<(&str, u32)> = Vec::new();
        for entry in &info.layout {
            match entry {
                Placed::Dir(path, mode) => {
                    let (parent, name) = split(path);
                    let made = {
                        let parent = dir(&dirs, parent)?;
                        match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                            Ok(()) => true,
                            Err(Errno::EXIST) => false,
                            Err(e) => {
                                return Err(e).with_context(|| format!("creating /{path}"));
                            }
                        }
                    };
                    // An existing non-directory there fails here, as in a checkout.
                    let fd = self.open_dir(path)?;
                    dirs.insert(path, fd);
                    if made {
                        created.push((path, *mode));
                    }
                }
                Placed::Link(path, csum) => {
                    let (parent, name) = split(path);
                    let parent = dir(&dirs, parent)?;
                    self.link(parent, name, csum)
                        .with_context(|| format!("hardlinking /{path} to object {csum}"))?;
                }
                Placed::Copy(path, csum, mode) => {
                    let (parent, name) = split(path);
                    let parent = dir(&dirs, parent)?;
                    self.copy(parent, name, csum, *mode)
                        .with_context(|| format!("copying object {csum} to /{path}"))?;
                }
                Placed::Symlink(path, target) => {
                    let (parent, name) = split(path);
                    let parent = dir(&dirs, parent)?;
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
            let fd = &dirs[path];
            rfs::fchmod(fd, Mode::from_raw_mode(*mode))
                .and_then(|()| rfs::futimens(fd, &mtime_zero))
                .with_context(|| format!("setting mode {mode:o} on /{path}"))?;
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

/// The directory at `path` this package opened ("" is the root).
fn dir<'a>(dirs: &'a HashMap<&str, OwnedFd>, path: &str) -> Result<BorrowedFd<'a>> {
    dirs.get(path)
        .map(|fd| fd.as_fd())
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
