//! The build root as ostree objects, written by hostforge instead of libostree's
//! `write_dfd_to_mtree` + `write_mtree`, for commits that keep the package files' checksums
//! (no SELinux labels, no `readonly-executables`): what libostree gives with
//! `DEVINO_CANONICAL`, without scanning every object of the cache for its inode, building a
//! `GFileInfo` for each of thousands of files, or serializing, normalizing and checksumming
//! each directory's tree through GVariant's checked paths.
//!
//! - A regular file whose inode is one placement hardlinked ([`Linked`]) is that object, as
//!   is (given its owner from `owners` as a new object when it has one that differs).
//! - Every other file, symlink and directory is read from disk: its mode, owner (or the one
//!   `owners` gives its path) and content, written through libostree (`write_content`,
//!   `write_metadata` for the directory's metadata).
//! - Each directory's tree object is serialized here and written only when the repo lacks it.
//!
//! Anything this does not handle (extended attributes on what it reads from disk, device
//! nodes, sockets, a mount inside the root) gives `None`: the caller commits with libostree.
//! Debug builds (every test) commit with libostree as well and fail when the two differ.

use anyhow::{bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use sha2::Digest;
use std::collections::{HashMap, HashSet};

use std::os::fd::OwnedFd;
use std::path::Path;

/// Inodes of the files placement hardlinked into the root, and their content objects.
pub type Linked = HashMap<u64, String>;

use super::Owners;

/// The root at `root` written into `repo` (in its open transaction): the checksums of its
/// tree and of its metadata; `None` when it holds something this does not handle.
pub fn write_root(
    repo: &ostree::Repo,
    repo_path: &Path,
    root: &Path,
    linked: &Linked,
    owners: &Owners,
) -> Result<Option<(String, String)>> {
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let root_fd = rfs::open(root, dir_flags, Mode::empty())
        .with_context(|| format!("opening {}", root.display()))?;
    let objects = rfs::open(repo_path.join("objects"), dir_flags, Mode::empty())?;
    let dev = rfs::fstat(&root_fd)?.st_dev;
    if rfs::fstat(&objects)?.st_dev != dev {
        return Ok(None);
    }
    let mut w = Walker {
        repo,
        objects,
        linked,
        owners,
        dev,
        dirmetas: crate::ostreeutil::DirMetaCache::default(),
        written: HashSet::new(),
    };
    match w.dir(&root_fd, "/") {
        Ok(r) => Ok(r),
        Err(e) => Err(e).with_context(|| format!("committing {}", root.display())),
    }
}

struct Walker<'a> {
    repo: &'a ostree::Repo,
    objects: OwnedFd,
    linked: &'a Linked,
    owners: &'a Owners,
    dev: u64,
    /// Dirmeta checksums by (uid, gid, mode).
    dirmetas: crate::ostreeutil::DirMetaCache,
    /// Dirtrees this walk wrote or found.
    written: HashSet<String>,
}

/// The path of `name` in directory `dir` ("/" is the root).
fn child(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether the file at `fd` has extended attributes.
fn has_xattrs(fd: &OwnedFd) -> Result<bool> {
    let mut names = [0u8; 64];
    Ok(match rfs::flistxattr(fd, &mut names[..]) {
        Ok(n) => n > 0,
        Err(rustix::io::Errno::RANGE) => true,
        Err(e) => return Err(e.into()),
    })
}

impl Walker<'_> {
    /// The owner `path` is committed with: the one `owners` gives it, else its own.
    fn owner(&self, path: &str, st: &rfs::Stat) -> (u32, u32) {
        self.owners
            .get(path)
            .copied()
            .unwrap_or((st.st_uid, st.st_gid))
    }

    /// Writes the directory at `fd` (path `path`) and all it holds: (tree, meta) checksums.
    fn dir(&mut self, fd: &OwnedFd, path: &str) -> Result<Option<(String, String)>> {
        let st = rfs::fstat(fd)?;
        if st.st_dev != self.dev || has_xattrs(fd)? {
            return Ok(None);
        }
        let (uid, gid) = self.owner(path, &st);
        let meta = self.dirmetas.get(self.repo, uid, gid, st.st_mode)?;
        let mut entries = Vec::new();
        for entry in rfs::Dir::read_from(fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                // libostree refuses such a name with its own error.
                return Ok(None);
            };
            entries.push((name.to_string(), entry.ino(), entry.file_type()));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut files: Vec<(String, [u8; 32])> = Vec::new();
        let mut dirs: Vec<(String, [u8; 32], [u8; 32])> = Vec::new();
        for (name, ino, kind) in entries {
            let p = child(path, &name);
            match kind {
                FileType::RegularFile => {
                    let csum = match self.linked.get(&ino) {
                        Some(c) => match self.owners.get(&p) {
                            Some(&(uid, gid)) => owned(self.repo, c, uid, gid, &p)?,
                            None => c.clone(),
                        },
                        None => match self.regular(fd, &name, &p)? {
                            Some(c) => c,
                            None => return Ok(None),
                        },
                    };
                    files.push((name, bytes(&csum)?));
                }
                FileType::Symlink => match self.symlink(fd, &name, &p)? {
                    Some(c) => files.push((name, bytes(&c)?)),
                    None => return Ok(None),
                },
                FileType::Directory => {
                    let sub = rfs::openat(
                        fd,
                        &name,
                        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    match self.dir(&sub, &p)? {
                        Some((t, m)) => dirs.push((name, bytes(&t)?, bytes(&m)?)),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            }
        }
        let tree = dirtree_bytes(&files, &dirs);
        if cfg!(debug_assertions) {
            assert_eq!(
                tree,
                dirtree(&files, &dirs).data(),
                "the tree of {path} as GVariant"
            );
        }
        let csum = hex::encode(sha2::Sha256::digest(&tree));
        if !self.written.contains(&csum) {
            let rel = crate::ostreeutil::loose_object_relpath(&csum, "dirtree");
            if rfs::statat(&self.objects, &rel, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                let tree = glib::Variant::from_bytes_with_type(
                    &glib::Bytes::from_owned(tree),
                    glib::VariantTy::new("(a(say)a(sayay))").expect("a variant type"),
                );
                self.repo
                    .write_metadata(
                        ostree::ObjectType::DirTree,
                        Some(&csum),
                        &tree,
                        gio::Cancellable::NONE,
                    )
                    .with_context(|| format!("writing the tree of {path}"))?;
            }
            self.written.insert(csum.clone());
        }
        Ok(Some((csum, meta)))
    }

    /// A regular file placement did not link: its content object, written from disk.
    fn regular(&mut self, dir: &OwnedFd, name: &str, path: &str) -> Result<Option<String>> {
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {path}"))?;
        let st = rfs::fstat(&fd)?;
        if st.st_dev != self.dev || has_xattrs(&fd)? {
            return Ok(None);
        }
        let (uid, gid) = self.owner(path, &st);
        let info = file_info(uid, gid, st.st_mode, gio::FileType::Regular);
        info.set_size(st.st_size);
        #[allow(unsafe_code)]
        // SAFETY: the stream takes the descriptor, which nothing else holds.
        let input = unsafe { gio::UnixInputStream::take_fd(fd) };
        let (stream, len) =
            ostree::raw_file_to_content_stream(&input, &info, None, gio::Cancellable::NONE)?;
        let csum = self
            .repo
            .write_content(None, &stream, len, gio::Cancellable::NONE)
            .with_context(|| format!("writing {path}"))?;
        Ok(Some(csum.to_hex()))
    }

    /// A symbolic link's content object.
    fn symlink(&mut self, dir: &OwnedFd, name: &str, path: &str) -> Result<Option<String>> {
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let target = rfs::readlinkat(dir, name, Vec::new())?;
        let Ok(target) = target.into_string() else {
            return Ok(None);
        };
        let mut names = [0u8; 64];
        let full = format!(
            "/proc/self/fd/{}/{name}",
            std::os::fd::AsRawFd::as_raw_fd(dir)
        );
        match rfs::llistxattr(&full, &mut names[..]) {
            Ok(0) => {}
            Ok(_) | Err(rustix::io::Errno::RANGE) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        }
        let (uid, gid) = self.owner(path, &st);
        let info = file_info(uid, gid, st.st_mode, gio::FileType::SymbolicLink);
        info.set_symlink_target(&target);
        let empty = gio::MemoryInputStream::new();
        let (stream, len) =
            ostree::raw_file_to_content_stream(&empty, &info, None, gio::Cancellable::NONE)?;
        let csum = self
            .repo
            .write_content(None, &stream, len, gio::Cancellable::NONE)
            .with_context(|| format!("writing {path}"))?;
        Ok(Some(csum.to_hex()))
    }
}

fn file_info(uid: u32, gid: u32, mode: u32, kind: gio::FileType) -> gio::FileInfo {
    let info = gio::FileInfo::new();
    info.set_file_type(kind);
    info.set_attribute_uint32("unix::uid", uid);
    info.set_attribute_uint32("unix::gid", gid);
    info.set_attribute_uint32("unix::mode", mode);
    info
}

/// The object `csum` (from the package cache) with owner `uid:gid`: itself when it has that
/// owner, else its content, mode and extended attributes written again with it.
pub fn owned(repo: &ostree::Repo, csum: &str, uid: u32, gid: u32, path: &str) -> Result<String> {
    let cancellable = gio::Cancellable::NONE;
    let (input, info, xattrs) = repo
        .load_file(csum, cancellable)
        .with_context(|| format!("reading {path} ({csum}) from the cache"))?;
    let owner = (
        info.attribute_uint32("unix::uid"),
        info.attribute_uint32("unix::gid"),
    );
    if owner == (uid, gid) {
        return Ok(csum.to_string());
    }
    info.set_attribute_uint32("unix::uid", uid);
    info.set_attribute_uint32("unix::gid", gid);
    let input = input.unwrap_or_else(|| gio::MemoryInputStream::new().upcast());
    let (stream, len) =
        ostree::raw_file_to_content_stream(&input, &info, Some(&xattrs), cancellable)?;
    let written = repo
        .write_content(None, &stream, len, cancellable)
        .with_context(|| format!("writing {path} with owner {uid}:{gid}"))?;
    Ok(written.to_hex())
}

fn bytes(csum: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(csum, &mut out).is_err() {
        bail!("not a checksum: {csum:?}");
    }
    Ok(out)
}

/// The serialized size of a GVariant container with `body` bytes and `n` framing offsets
/// (each as small as the whole allows).
fn container_size(body: usize, n: usize) -> usize {
    if body + n <= 0xff {
        body + n
    } else if body + 2 * n <= 0xffff {
        body + 2 * n
    } else if body + 4 * n <= 0xffff_ffff {
        body + 4 * n
    } else {
        body + 8 * n
    }
}

/// The size of each framing offset in a container of `total` bytes.
fn offset_size(total: usize) -> usize {
    match total {
        0 => 0,
        1..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// A tuple of variable-sized members with alignment 1 (`s`, `ay` and tuples and arrays of
/// them): the members, then the end of each but the last, last first.
fn gv_tuple(members: &[&[u8]]) -> Vec<u8> {
    let body: usize = members.iter().map(|m| m.len()).sum();
    let n = members.len().saturating_sub(1);
    let total = container_size(body, n);
    let size = offset_size(total);
    let mut out = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(n);
    for (i, m) in members.iter().enumerate() {
        out.extend_from_slice(m);
        if i < n {
            ends.push(out.len());
        }
    }
    for end in ends.iter().rev() {
        out.extend_from_slice(&(*end as u64).to_le_bytes()[..size]);
    }
    out
}

/// An array of variable-sized elements with alignment 1: the elements, then the end of each.
fn gv_array(elements: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = elements.iter().map(Vec::len).sum();
    let total = container_size(body, elements.len());
    let size = offset_size(total);
    let mut out = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(elements.len());
    for e in elements {
        out.extend_from_slice(e);
        ends.push(out.len());
    }
    for end in ends {
        out.extend_from_slice(&(end as u64).to_le_bytes()[..size]);
    }
    out
}

/// A dirtree object's bytes, `(a(say)a(sayay))` in GVariant's normal form, from entries
/// sorted by name: what [`dirtree`] gives, without a GVariant for each entry.
fn dirtree_bytes(files: &[(String, [u8; 32])], dirs: &[(String, [u8; 32], [u8; 32])]) -> Vec<u8> {
    let cstr = |n: &str| {
        let mut v = Vec::with_capacity(n.len() + 1);
        v.extend_from_slice(n.as_bytes());
        v.push(0);
        v
    };
    let files: Vec<Vec<u8>> = files
        .iter()
        .map(|(n, c)| gv_tuple(&[&cstr(n), c]))
        .collect();
    let dirs: Vec<Vec<u8>> = dirs
        .iter()
        .map(|(n, t, m)| gv_tuple(&[&cstr(n), t, m]))
        .collect();
    gv_tuple(&[&gv_array(&files), &gv_array(&dirs)])
}

/// A dirtree object, `(a(say)a(sayay))`, from entries sorted by name, built by GVariant.
fn dirtree(files: &[(String, [u8; 32])], dirs: &[(String, [u8; 32], [u8; 32])]) -> glib::Variant {
    let files = glib::Variant::array_from_iter_with_type(
        glib::VariantTy::new("(say)").expect("a variant type"),
        files.iter().map(|(n, c)| {
            glib::Variant::tuple_from_iter([
                n.to_variant(),
                glib::Variant::array_from_fixed_array(c),
            ])
        }),
    );
    let dirs = glib::Variant::array_from_iter_with_type(
        glib::VariantTy::new("(sayay)").expect("a variant type"),
        dirs.iter().map(|(n, t, m)| {
            glib::Variant::tuple_from_iter([
                n.to_variant(),
                glib::Variant::array_from_fixed_array(t),
                glib::Variant::array_from_fixed_array(m),
            ])
        }),
    );
    glib::Variant::tuple_from_iter([files, dirs])
}

/// A dirtree's files (name, checksum) and directories (name, tree, meta).
type Listing = (Vec<(String, String)>, Vec<(String, String, String)>);

/// The first path where the trees `a` and `b` (dirtree checksums in `repo`) differ, for the
/// error of a debug build's check against libostree.
pub fn first_difference(repo: &ostree::Repo, a: &str, b: &str, path: &str) -> Result<String> {
    let load = |c: &str| -> Result<Listing> {
        let v = repo.load_variant(ostree::ObjectType::DirTree, c)?;
        let hexof = |v: glib::Variant| hex::encode(v.fixed_array::<u8>().unwrap_or_default());
        let files = v.child_value(0);
        let dirs = v.child_value(1);
        let f = (0..files.n_children())
            .map(|i| {
                let e = files.child_value(i);
                (
                    e.child_value(0).str().unwrap_or_default().to_string(),
                    hexof(e.child_value(1)),
                )
            })
            .collect();
        let d = (0..dirs.n_children())
            .map(|i| {
                let e = dirs.child_value(i);
                (
                    e.child_value(0).str().unwrap_or_default().to_string(),
                    hexof(e.child_value(1)),
                    hexof(e.child_value(2)),
                )
            })
            .collect();
        Ok((f, d))
    };
    let ((fa, da), (fb, db)) = (load(a)?, load(b)?);
    if fa != fb {
        let only: Vec<_> = fa.iter().filter(|x| !fb.contains(x)).collect();
        let other: Vec<_> = fb.iter().filter(|x| !fa.contains(x)).collect();
        return Ok(format!("files of {path}: {only:?} against {other:?}"));
    }
    for ((na, ta, ma), (nb, tb, mb)) in da.iter().zip(&db) {
        if na != nb || ma != mb {
            return Ok(format!("{}: {na} {ma} against {nb} {mb}", child(path, na)));
        }
        if ta != tb {
            return first_difference(repo, ta, tb, &child(path, na));
        }
    }
    Ok(format!("directories of {path}: {da:?} against {db:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees of every size class (1-, 2- and 4-byte framing offsets, empty arrays, long
    /// names) serialize as GVariant does.
    #[test]
    fn dirtrees_serialize_as_gvariant_does() {
        let name = |i: usize, len: usize| format!("{i:04}{}", "n".repeat(len));
        for (nfiles, ndirs, len) in [
            (0, 0, 0),
            (1, 0, 0),
            (0, 1, 3),
            (2, 2, 200),
            (3, 1, 250),
            (40, 7, 10),
            (2000, 30, 12),
            (3, 3, 255 - 4),
        ] {
            let files: Vec<(String, [u8; 32])> =
                (0..nfiles).map(|i| (name(i, len), [i as u8; 32])).collect();
            let dirs: Vec<(String, [u8; 32], [u8; 32])> = (0..ndirs)
                .map(|i| (name(i, len), [i as u8; 32], [!(i as u8); 32]))
                .collect();
            let ours = dirtree_bytes(&files, &dirs);
            let theirs = dirtree(&files, &dirs);
            assert!(theirs.is_normal_form());
            assert_eq!(
                ours,
                theirs.data(),
                "{nfiles} files, {ndirs} dirs, names of {len}"
            );
        }
        // Over 64 KiB of files (4-byte offsets in the files array).
        let files: Vec<(String, [u8; 32])> = (0..3000).map(|i| (name(i, 20), [7; 32])).collect();
        assert!(dirtree_bytes(&files, &[]).len() > 0x10000);
        assert_eq!(dirtree_bytes(&files, &[]), dirtree(&files, &[]).data());
    }
}
