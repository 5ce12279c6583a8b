//! The libext2fs binding: fills an (empty) ext4 filesystem that `mkfs.ext4` made inside a
//! disk image with a directory tree, in this process, without mounting anything. With
//! `mkfs.ext4 -d` doing the same, a build waits for the whole tree before the first byte is
//! written, and each new directory entry costs `mkfs` three lookups that re-verify the
//! checksum of every directory block they read. Here the tree can be added in parts (the
//! ostree repo's objects while ostree still deploys, the rest after), each entry is looked up
//! once, and file data goes from the source file to its blocks with `copy_file_range`.
//!
//! Like `mkfs.ext4 -d`: modes, owners, sizes, xattrs, symlinks and hardlinks are copied (a
//! file seen again under the same (device, inode) becomes a link); inode flags are not;
//! directories are linear (no htree), entries in byte order of their names. All times are
//! the `epoch` given to [`Fs::open`] (libext2fs takes them from it).
#![allow(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/ext2fs_bindings.rs"));
}

const ROOT_INO: u32 = sys::EXT2_ROOT_INO;

/// libext2fs's message for `code`, after what was being done.
fn check(code: sys::errcode_t, what: impl FnOnce() -> String) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: error_message returns a static string (or a buffer of com_err's) for any code.
    let msg = unsafe { CStr::from_ptr(sys::error_message(code)) }
        .to_string_lossy()
        .into_owned();
    Err(anyhow!("{}: {msg}", what()))
}

/// libext2fs's handle for the filesystem at `offset` in `image`, opened with `flags`; the
/// caller owns it (and frees it with `ext2fs_free`).
fn open_handle(image: &Path, offset: u64, flags: u32) -> Result<sys::ext2_filsys> {
    let name = cstr(image.as_os_str().as_bytes())?;
    let opts = cstr(format!("offset={offset}").as_bytes())?;
    let mut fs: sys::ext2_filsys = std::ptr::null_mut();
    // SAFETY: valid C strings; unix_io_manager is libext2fs's own static manager.
    check(
        unsafe {
            sys::ext2fs_open2(
                name.as_ptr(),
                opts.as_ptr(),
                flags as i32,
                0,
                0,
                sys::unix_io_manager,
                &mut fs,
            )
        },
        || "ext2fs_open2".into(),
    )?;
    Ok(fs)
}

/// The names in directory `dir`, in byte order.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn cstr(s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{:?} contains a NUL byte", String::from_utf8_lossy(s)))
}

/// An open ext4 filesystem being filled. Dropped without [`Fs::finish`], nothing more is
/// written to it.
pub struct Fs {
    fs: sys::ext2_filsys,
    image: std::fs::File,
    offset: u64,
    block_size: u64,
    /// Source (device, inode) of every regular file added → its inode here.
    files: HashMap<(u64, u64), u32>,
    /// Directories made, by path relative to the source root.
    dirs: HashMap<PathBuf, u32>,
    /// Directories added whole: later passes leave them alone.
    complete: HashSet<PathBuf>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    /// Whether `copy_file_range` works from the tree into the image.
    in_kernel_copy: bool,
    buf: Vec<u8>,
    /// Told the byte range in the image of every file's blocks once its data is in them.
    data_written: Option<std::sync::mpsc::Sender<(u64, u64)>>,
}

// SAFETY: the handle belongs to this value alone and libext2fs keeps no thread-local
// state; the value is used by one thread at a time (it is moved, never shared).
unsafe impl Send for Fs {}

impl Drop for Fs {
    fn drop(&mut self) {
        if !self.fs.is_null() {
            // SAFETY: fs came from ext2fs_open2 and is freed once.
            unsafe { sys::ext2fs_free(self.fs) };
        }
    }
}

impl Fs {
    /// Opens the filesystem at byte `offset` of `image` for writing; every time libext2fs
    /// sets is `epoch`.
    pub fn open(image: &Path, offset: u64, epoch: i64) -> Result<Fs> {
        let what = || {
            format!(
                "opening the ext4 filesystem at {offset} in {}",
                image.display()
            )
        };
        let flags = sys::EXT2_FLAG_RW | sys::EXT2_FLAG_64BITS | sys::EXT2_FLAG_IGNORE_CSUM_ERRORS;
        // Opened first: once libext2fs has a handle, nothing fails before `Fs` owns it.
        let image_file = std::fs::OpenOptions::new()
            .write(true)
            .open(image)
            .with_context(what)?;
        let fs = open_handle(image, offset, flags).with_context(what)?;
        let mut me = Fs {
            fs,
            image: image_file,
            offset,
            block_size: 0,
            files: HashMap::new(),
            dirs: HashMap::new(),
            complete: HashSet::new(),
            xattr_names: vec![0; 65536],
            xattr_value: vec![0; 65536],
            in_kernel_copy: true,
            buf: vec![0; 1 << 20],
            data_written: None,
        };
        // SAFETY: fs is a valid handle from here on.
        unsafe {
            (*fs).now = epoch;
            me.block_size = u64::from((*fs).blocksize);
        }
        // SAFETY: as above.
        check(unsafe { sys::ext2fs_read_bitmaps(fs) }, what)?;
        me.dirs.insert(PathBuf::new(), ROOT_INO);
        Ok(me)
    }

    /// Reports to `tx`, from here on, the byte range in the image of each run of a file's
    /// blocks once its data is written there (whole blocks: the end of the last one is
    /// zeros). Nothing writes those blocks again.
    pub fn report_data_to(&mut self, tx: std::sync::mpsc::Sender<(u64, u64)>) {
        self.data_written = Some(tx);
    }

    /// Writes out bitmaps, group descriptors and superblock, and closes the filesystem.
    pub fn finish(mut self) -> Result<()> {
        let mut fs = std::mem::replace(&mut self.fs, std::ptr::null_mut());
        // SAFETY: fs is a valid handle; close_free frees it (and nulls our copy) even on
        // error, so Drop has nothing left to do.
        check(unsafe { sys::ext2fs_close_free(&mut fs) }, || {
            "writing the ext4 filesystem's metadata".into()
        })
    }

    /// Adds `src/rel` and everything below it, with its parent directories (as they are in
    /// `src`) where they are not in the filesystem yet. Entries added before are left as
    /// they are, so a second call on a parent adds only what is new; `rel` itself is not
    /// looked at again by later calls.
    pub fn add(&mut self, src: &Path, rel: &Path) -> Result<()> {
        let ino = self.make_dirs(src, rel)?;
        if ino == ROOT_INO {
            self.copy_xattrs(src, ino)?;
        }
        self.fill(src, rel, ino)?;
        self.complete.insert(rel.to_path_buf());
        Ok(())
    }

    /// Adds the entries of directory `src/rel` whose names `pick` (with its parent
    /// directories, as [`Fs::add`]) that are not in the filesystem yet; a later call, or
    /// [`Fs::add`] on it or a parent, adds only the others. So that the filesystem is the
    /// same run after run, the caller knows which of them are there by now.
    pub fn add_picked(
        &mut self,
        src: &Path,
        rel: &Path,
        pick: impl Fn(&std::ffi::OsStr) -> bool,
    ) -> Result<()> {
        let ino = self.make_dirs(src, rel)?;
        for name in sorted_names(&src.join(rel))? {
            let r = rel.join(&name);
            if !pick(&name) || self.complete.contains(&r) || self.dirs.contains_key(&r) {
                continue;
            }
            if let Some(c) = self.add_entry(src, &r, ino)? {
                self.fill(src, &r, c)?;
            }
            self.complete.insert(r);
        }
        Ok(())
    }

    /// The inode of directory `rel`, made (as in `src`) with its parents where missing.
    fn make_dirs(&mut self, src: &Path, rel: &Path) -> Result<u32> {
        let mut cur = PathBuf::new();
        let mut ino = ROOT_INO;
        for comp in rel.components() {
            let parent = ino;
            cur.push(comp);
            ino = match self.dirs.get(&cur) {
                Some(&i) => i,
                None => self
                    .add_entry(src, &cur, parent)?
                    .ok_or_else(|| anyhow!("{} is not a directory", src.join(&cur).display()))?,
            };
        }
        Ok(ino)
    }

    fn fill(&mut self, src: &Path, rel: &Path, ino: u32) -> Result<()> {
        for name in sorted_names(&src.join(rel))? {
            let r = rel.join(&name);
            if self.complete.contains(&r) {
                continue;
            }
            let child = match self.dirs.get(&r) {
                Some(&c) => Some(c),
                None => self.add_entry(src, &r, ino)?,
            };
            if let Some(c) = child {
                self.fill(src, &r, c)?;
            }
        }
        Ok(())
    }

    /// Makes `src/rel` in directory `parent`; returns its inode if it is a directory.
    fn add_entry(&mut self, src: &Path, rel: &Path, parent: u32) -> Result<Option<u32>> {
        let path = src.join(rel);
        let name = rel.file_name().expect("a path below the root").as_bytes();
        let dir = self
            .add_entry_at(&path, name, parent)
            .with_context(|| format!("adding {} to the filesystem", path.display()))?;
        if let Some(ino) = dir {
            self.dirs.insert(rel.to_path_buf(), ino);
        }
        Ok(dir)
    }

    fn add_entry_at(&mut self, path: &Path, name: &[u8], parent: u32) -> Result<Option<u32>> {
        let m = std::fs::symlink_metadata(path)?;
        let cname = cstr(name)?;
        let ft = m.file_type();
        if parent == ROOT_INO && name == b"lost+found" && ft.is_dir() {
            // mkfs made it; fill the one that is there.
            let mut ino = 0;
            // SAFETY: valid handle and name.
            check(
                unsafe {
                    sys::ext2fs_lookup(
                        self.fs,
                        ROOT_INO,
                        cname.as_ptr(),
                        name.len() as i32,
                        std::ptr::null_mut(),
                        &mut ino,
                    )
                },
                || "looking up lost+found".into(),
            )?;
            return Ok(Some(ino));
        }
        if ft.is_file() {
            if let Some(&ino) = self.files.get(&(m.dev(), m.ino())) {
                self.link(parent, &cname, ino, sys::EXT2_FT_REG_FILE)?;
                self.update_inode(ino, |i| i.i_links_count += 1)?;
                return Ok(None);
            }
        }
        let mode = if ft.is_dir() {
            sys::LINUX_S_IFDIR
        } else if ft.is_file() {
            sys::LINUX_S_IFREG
        } else if ft.is_symlink() {
            sys::LINUX_S_IFLNK
        } else {
            bail!("not a regular file, directory or symlink (ostree trees have no others)");
        };
        let mut ino = 0;
        // SAFETY: valid handle; a null map means the filesystem's own inode bitmap.
        check(
            unsafe {
                sys::ext2fs_new_inode(self.fs, parent, mode as i32, std::ptr::null_mut(), &mut ino)
            },
            || "allocating an inode".into(),
        )?;
        if ft.is_dir() {
            self.retry_full(parent, || {
                // SAFETY: valid handle, inode allocated above, valid name.
                unsafe { sys::ext2fs_mkdir(self.fs, parent, ino, cname.as_ptr()) }
            })?;
            self.set_owner_mode(ino, &m)?;
        } else if ft.is_symlink() {
            let target = cstr(std::fs::read_link(path)?.as_os_str().as_bytes())?;
            self.retry_full(parent, || {
                // SAFETY: as above.
                unsafe {
                    sys::ext2fs_symlink(self.fs, parent, ino, cname.as_ptr(), target.as_ptr())
                }
            })?;
            self.set_owner_mode(ino, &m)?;
        } else {
            self.new_file(path, &m, parent, &cname, ino)?;
            self.files.insert((m.dev(), m.ino()), ino);
        }
        self.copy_xattrs(path, ino)?;
        Ok(ft.is_dir().then_some(ino))
    }

    /// Runs a libext2fs call that adds a name to directory `dir`, growing the directory by
    /// a block when it is full (as `mkfs.ext4 -d` does).
    fn retry_full(&self, dir: u32, mut f: impl FnMut() -> sys::errcode_t) -> Result<()> {
        let mut code = f();
        if code == sys::EXT2_ET_DIR_NO_SPACE as sys::errcode_t {
            // SAFETY: valid handle and directory inode.
            check(unsafe { sys::ext2fs_expand_dir(self.fs, dir) }, || {
                "growing a directory".into()
            })?;
            code = f();
        }
        check(code, || "adding a directory entry".into())
    }

    fn link(&self, dir: u32, name: &CStr, ino: u32, ft: u32) -> Result<()> {
        self.retry_full(dir, || {
            // SAFETY: valid handle, inodes and name.
            unsafe { sys::ext2fs_link(self.fs, dir, name.as_ptr(), ino, ft as i32) }
        })
    }

    fn update_inode(&self, ino: u32, f: impl FnOnce(&mut sys::ext2_inode)) -> Result<()> {
        // SAFETY: a zeroed ext2_inode is a valid value; valid handle and inode number.
        let mut inode: sys::ext2_inode = unsafe { std::mem::zeroed() };
        check(
            unsafe { sys::ext2fs_read_inode(self.fs, ino, &mut inode) },
            || format!("reading inode {ino}"),
        )?;
        f(&mut inode);
        // SAFETY: as above.
        check(
            unsafe { sys::ext2fs_write_inode(self.fs, ino, &mut inode) },
            || format!("writing inode {ino}"),
        )
    }

    fn set_owner_mode(&self, ino: u32, m: &std::fs::Metadata) -> Result<()> {
        self.update_inode(ino, |i| {
            i.i_mode = (i.i_mode & sys::LINUX_S_IFMT as u16) | (m.mode() & 0o7777) as u16;
            set_ids(i, m.uid(), m.gid());
        })
    }

    /// A regular file: inode, directory entry, blocks, then its data straight into them.
    fn new_file(
        &mut self,
        path: &Path,
        m: &std::fs::Metadata,
        parent: u32,
        name: &CStr,
        ino: u32,
    ) -> Result<()> {
        self.link(parent, name, ino, sys::EXT2_FT_REG_FILE)?;
        // SAFETY: valid handle; a zeroed ext2_inode is a valid value.
        unsafe { sys::ext2fs_inode_alloc_stats2(self.fs, ino, 1, 0) };
        let mut inode: sys::ext2_inode = unsafe { std::mem::zeroed() };
        inode.i_mode = (sys::LINUX_S_IFREG | (m.mode() & 0o7777)) as u16;
        set_ids(&mut inode, m.uid(), m.gid());
        inode.i_links_count = 1;
        let size = m.len();
        // SAFETY: valid handle and inode; extent_open2 on an inode without extents sets up
        // an empty extent tree in it (as mkfs.ext4 -d does), and the handle is freed at once.
        unsafe {
            check(
                sys::ext2fs_inode_size_set(self.fs, &mut inode, size as i64),
                || "setting the size".into(),
            )?;
            let mut handle: sys::ext2_extent_handle_t = std::ptr::null_mut();
            check(
                sys::ext2fs_extent_open2(self.fs, ino, &mut inode, &mut handle),
                || "making the extent tree".into(),
            )?;
            sys::ext2fs_extent_free(handle);
            check(
                sys::ext2fs_write_new_inode(self.fs, ino, &mut inode),
                || format!("writing inode {ino}"),
            )?;
        }
        if size == 0 {
            return Ok(());
        }
        let blocks = size.div_ceil(self.block_size);
        // SAFETY: valid handle and inode; a null inode makes libext2fs read and write it.
        check(
            unsafe {
                sys::ext2fs_fallocate(
                    self.fs,
                    sys::EXT2_FALLOCATE_FORCE_INIT as i32,
                    ino,
                    std::ptr::null_mut(),
                    !0,
                    0,
                    blocks,
                )
            },
            || format!("allocating {blocks} blocks"),
        )?;
        let src = std::fs::File::open(path)?;
        for (lblk, pblk, len) in self.extents(ino)? {
            let from = lblk * self.block_size;
            let end = ((lblk + len) * self.block_size).min(size);
            let to = self.offset + pblk * self.block_size;
            self.copy_range(&src, from, end, to)
                .with_context(|| format!("copying the data of {}", path.display()))?;
            if let Some(tx) = &self.data_written {
                // A receiver that is gone has failed, and its owner says so.
                let _ = tx.send((to, len * self.block_size));
            }
        }
        Ok(())
    }

    /// Copies bytes `from..end` of `src` to offset `to` of the image: in the kernel when
    /// both are on one filesystem, else through a buffer.
    fn copy_range(
        &mut self,
        src: &std::fs::File,
        mut from: u64,
        end: u64,
        mut to: u64,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        while from < end && self.in_kernel_copy {
            let want = (end - from) as usize;
            match rustix::fs::copy_file_range(
                src,
                Some(&mut from),
                &self.image,
                Some(&mut to),
                want,
            ) {
                Ok(0) => bail!("the file got shorter while it was copied"),
                Ok(_) => {}
                // Across filesystems (a tmpfs tree into an image on disk), or no support.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP,
                ) => self.in_kernel_copy = false,
                Err(e) => return Err(e.into()),
            }
        }
        while from < end {
            let n = ((end - from) as usize).min(self.buf.len());
            src.read_exact_at(&mut self.buf[..n], from)?;
            self.image.write_all_at(&self.buf[..n], to)?;
            from += n as u64;
            to += n as u64;
        }
        Ok(())
    }

    /// The (logical block, physical block, length) runs of inode `ino`.
    fn extents(&self, ino: u32) -> Result<Vec<(u64, u64, u64)>> {
        let mut runs = Vec::new();
        let mut handle: sys::ext2_extent_handle_t = std::ptr::null_mut();
        // SAFETY: valid handle and inode; the extent handle is freed below.
        check(
            unsafe { sys::ext2fs_extent_open2(self.fs, ino, std::ptr::null_mut(), &mut handle) },
            || format!("reading the extents of inode {ino}"),
        )?;
        let mut op = sys::EXT2_EXTENT_ROOT;
        let result = loop {
            // SAFETY: a zeroed ext2fs_extent is a valid value; valid extent handle.
            let mut e: sys::ext2fs_extent = unsafe { std::mem::zeroed() };
            let code = unsafe { sys::ext2fs_extent_get(handle, op as i32, &mut e) };
            if code == sys::EXT2_ET_EXTENT_NO_NEXT as sys::errcode_t {
                break Ok(runs);
            }
            if let Err(err) = check(code, || format!("reading the extents of inode {ino}")) {
                break Err(err);
            }
            if e.e_flags & sys::EXT2_EXTENT_FLAGS_LEAF != 0 {
                runs.push((e.e_lblk, e.e_pblk, u64::from(e.e_len)));
            }
            op = sys::EXT2_EXTENT_NEXT_LEAF;
        };
        // SAFETY: opened above, freed once.
        unsafe { sys::ext2fs_extent_free(handle) };
        result
    }

    /// Copies the extended attributes of `path` (not following a symlink) to inode `ino`.
    fn copy_xattrs(&mut self, path: &Path, ino: u32) -> Result<()> {
        let n = match rustix::fs::llistxattr(path, &mut self.xattr_names[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => 0,
            Err(e) => {
                return Err(e).with_context(|| format!("listing the xattrs of {}", path.display()))
            }
        };
        if n == 0 {
            return Ok(());
        }
        let mut h: *mut sys::ext2_xattr_handle = std::ptr::null_mut();
        // SAFETY: valid handle and inode; the xattr handle is closed below.
        check(
            unsafe { sys::ext2fs_xattrs_open(self.fs, ino, &mut h) },
            || "opening the xattrs".into(),
        )?;
        let names = self.xattr_names[..n].to_vec();
        let result = (|| -> Result<()> {
            // SAFETY: h is open.
            check(unsafe { sys::ext2fs_xattrs_read(h) }, || {
                "reading the xattrs".into()
            })?;
            for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
                let len = rustix::fs::lgetxattr(path, key, &mut self.xattr_value[..])
                    .with_context(|| format!("reading xattr {}", String::from_utf8_lossy(key)))?;
                let ckey = cstr(key)?;
                // SAFETY: h is open; key and value are valid for the call.
                check(
                    unsafe {
                        sys::ext2fs_xattr_set(
                            h,
                            ckey.as_ptr(),
                            self.xattr_value.as_ptr().cast(),
                            len,
                        )
                    },
                    || format!("setting xattr {}", String::from_utf8_lossy(key)),
                )?;
            }
            Ok(())
        })();
        // SAFETY: h was opened above and is closed once.
        let closed = check(unsafe { sys::ext2fs_xattrs_close(&mut h) }, || {
            "writing the xattrs".into()
        });
        result.and(closed)
    }
}

fn set_ids(i: &mut sys::ext2_inode, uid: u32, gid: u32) {
    i.i_uid = uid as u16;
    i.i_gid = gid as u16;
    // linux2 is the Linux view of the OS-dependent union, the one ext4 uses.
    i.osd2.linux2.l_i_uid_high = (uid >> 16) as u16;
    i.osd2.linux2.l_i_gid_high = (gid >> 16) as u16;
}

/// An ext4 filesystem opened read-only, to read a few links and files (an image's
/// deployment links, commit objects and origins) without spawning debugfs for each.
pub struct Reader {
    fs: sys::ext2_filsys,
    path: PathBuf,
}

// SAFETY: as for [`Fs`]: the handle belongs to this value alone.
unsafe impl Send for Reader {}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: fs came from ext2fs_open2 and is freed once.
        unsafe { sys::ext2fs_free(self.fs) };
    }
}

impl Reader {
    /// Opens the filesystem at `offset` in `image` for reading.
    pub fn open(image: &Path, offset: u64) -> Result<Reader> {
        let fs = open_handle(image, offset, sys::EXT2_FLAG_64BITS)
            .with_context(|| format!("opening the ext4 filesystem in {}", image.display()))?;
        Ok(Reader {
            fs,
            path: image.to_path_buf(),
        })
    }

    /// The inode at the absolute `path` (a final symlink is not followed).
    fn lookup(&self, path: &str) -> Result<(u32, sys::ext2_inode)> {
        let c = cstr(path.trim_start_matches('/').as_bytes())?;
        let mut ino: u32 = 0;
        // SAFETY: valid handle and C string; ino is written on success.
        check(
            unsafe { sys::ext2fs_namei(self.fs, ROOT_INO, ROOT_INO, c.as_ptr(), &mut ino) },
            || format!("{path} in {}", self.path.display()),
        )?;
        // SAFETY: ext2_inode is plain data; read_inode fills it.
        let mut inode: sys::ext2_inode = unsafe { std::mem::zeroed() };
        check(
            unsafe { sys::ext2fs_read_inode(self.fs, ino, &mut inode) },
            || format!("reading the inode of {path}"),
        )?;
        Ok((ino, inode))
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &str) -> Result<String> {
        let (ino, mut inode) = self.lookup(path)?;
        if u32::from(inode.i_mode) & sys::LINUX_S_IFMT != sys::LINUX_S_IFLNK {
            bail!("{path} is not a symlink");
        }
        let size = inode.i_size as usize;
        // SAFETY: inode is a valid inode read above.
        let bytes = if unsafe { sys::ext2fs_is_fast_symlink(&mut inode) } != 0 {
            // A short target is kept in the inode's block array itself.
            // SAFETY: i_block is a plain array inside `inode`, read as bytes.
            let raw: &[u8] = unsafe {
                std::slice::from_raw_parts(
                    inode.i_block.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(&inode.i_block),
                )
            };
            raw[..size.min(raw.len())].to_vec()
        } else if inode.i_flags & sys::EXT4_INLINE_DATA_FL != 0 {
            bail!("{path}: symlinks with inline data are not supported");
        } else {
            self.read_ino(ino, path)?
        };
        String::from_utf8(bytes).map_err(|_| anyhow!("{path}: the target is not UTF-8"))
    }

    /// The contents of the regular file at `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let (ino, inode) = self.lookup(path)?;
        if u32::from(inode.i_mode) & sys::LINUX_S_IFMT != sys::LINUX_S_IFREG {
            bail!("{path} is not a regular file");
        }
        self.read_ino(ino, path)
    }

    fn read_ino(&self, ino: u32, path: &str) -> Result<Vec<u8>> {
        let mut file: sys::ext2_file_t = std::ptr::null_mut();
        // SAFETY: valid handle and inode number; file is closed below.
        check(
            unsafe { sys::ext2fs_file_open(self.fs, ino, 0, &mut file) },
            || format!("opening {path}"),
        )?;
        let result = (|| -> Result<Vec<u8>> {
            let mut size: u64 = 0;
            // SAFETY: file is open.
            check(
                unsafe { sys::ext2fs_file_get_lsize(file, &mut size) },
                || format!("sizing {path}"),
            )?;
            let mut buf = vec![0u8; size as usize];
            let mut done = 0usize;
            while done < buf.len() {
                let want = (buf.len() - done).min(1 << 30) as u32;
                let mut got: u32 = 0;
                // SAFETY: file is open; the buffer has `want` bytes from `done`.
                check(
                    unsafe {
                        sys::ext2fs_file_read(file, buf[done..].as_mut_ptr().cast(), want, &mut got)
                    },
                    || format!("reading {path}"),
                )?;
                if got == 0 {
                    bail!("{path}: ends after {done} of {size} bytes");
                }
                done += got as usize;
            }
            Ok(buf)
        })();
        // SAFETY: file is open and closed once.
        unsafe { sys::ext2fs_file_close(file) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(cmd: &mut Command) -> String {
        crate::process::run(cmd).unwrap()
    }

    /// A tree with every kind of entry ostree trees have, added in two passes (a subtree
    /// first, as image builds add the repo's objects), gives a filesystem that e2fsck finds
    /// clean and that holds the same names, bytes, modes, owners, links and xattrs.
    #[test]
    fn filled_filesystem_matches_the_tree_and_is_clean() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        // The image on another filesystem where there is one (as a raw OUT on disk is from
        // a tree in tmpfs): the data then goes through the buffer, not copy_file_range.
        let shm = Path::new("/dev/shm");
        let img_dir = tempfile::tempdir_in(if shm.is_dir() { shm } else { dir.path() }).unwrap();
        let (src, img) = (dir.path().join("src"), img_dir.path().join("disk.img"));
        let objects = src.join("repo/objects");
        std::fs::create_dir_all(&objects).unwrap();
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        // Enough long names that the directory needs more than one block.
        for i in 0..300 {
            std::fs::write(objects.join(format!("{i:0>60}.file")), format!("{i}")).unwrap();
        }
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(objects.join("big"), &big).unwrap();
        std::fs::hard_link(objects.join("big"), src.join("usr/bin/big")).unwrap();
        std::fs::write(src.join("usr/empty"), "").unwrap();
        let suid = src.join("usr/bin/tool");
        std::fs::write(&suid, "#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(&suid, Some(70000), Some(1001)).unwrap();
        std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("bin/tool", src.join("usr/short")).unwrap();
        std::os::unix::fs::symlink("x".repeat(200), src.join("usr/long")).unwrap();
        rustix::fs::setxattr(
            src.join("usr/empty"),
            "user.test",
            b"on",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();

        let offset = 1 << 20;
        std::fs::File::create(&img)
            .unwrap()
            .set_len(offset + (64 << 20))
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E"])
            .arg(format!("root_owner=0:0,offset={offset}"))
            .arg(&img)
            .arg("64M"));
        let mut fs = Fs::open(&img, offset, 1_000_000_000).unwrap();
        fs.add(&src, Path::new("repo/objects")).unwrap();
        fs.add(&src, Path::new("")).unwrap();
        fs.finish().unwrap();

        let dev = format!("{}?offset={offset}", img.display());
        run(Command::new("e2fsck").args(["-fn", &dev]));
        let debugfs = |req: &str| run(Command::new("debugfs").args(["-R", req, &dev]));
        let tool = debugfs("stat /usr/bin/tool");
        assert!(tool.contains("Mode:  04755"), "{tool}");
        assert!(tool.contains("User: 70000   Group:  1001"), "{tool}");
        let big_stat = debugfs("stat /usr/bin/big");
        assert!(big_stat.contains("Links: 2"), "{big_stat}");
        assert!(debugfs("ea_list /usr/empty").contains("user.test (2) = \"on\""));
        assert!(debugfs("stat /usr/short").contains("Fast link dest: \"bin/tool\""));
        assert!(debugfs("stat /").contains("Mode:  0755"));

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        debugfs(&format!("rdump / {}", out.display()));
        run(Command::new("diff")
            .args(["-r", "--no-dereference", "-x", "lost+found"])
            .arg(&src)
            .arg(&out));
        // The same inode under both names.
        let ino = |p: &str| {
            debugfs(&format!("stat {p}"))
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(ino("/repo/objects/big"), ino("/usr/bin/big"));

        // Read back through libext2fs, as image status reads deployments.
        let r = Reader::open(&img, offset).unwrap();
        assert_eq!(r.read_link("/usr/short").unwrap(), "bin/tool");
        assert_eq!(r.read_link("/usr/long").unwrap(), "x".repeat(200));
        assert_eq!(r.read_file("/usr/bin/big").unwrap(), big);
        assert_eq!(r.read_file("/usr/empty").unwrap(), b"");
        assert!(r.read_file("/usr/short").is_err());
        assert!(r.read_link("/usr/bin/tool").is_err());
        let e = format!("{:#}", r.read_file("/usr/missing").unwrap_err());
        assert!(e.contains("/usr/missing"), "{e}");
    }

    /// A file of more extents than fit in the inode (an extent tree of depth 1, here from
    /// 1 KiB blocks: 8 MiB groups, 32 MiB extents at most) keeps its bytes.
    #[test]
    fn files_of_many_extents_keep_their_bytes() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (src, img) = (dir.path().join("src"), dir.path().join("disk.img"));
        std::fs::create_dir_all(&src).unwrap();
        let data: Vec<u8> = (0..70_000_000u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("big"), &data).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(&img)
            .arg("100M"));
        let mut fs = Fs::open(&img, 0, 0).unwrap();
        fs.add(&src, Path::new("")).unwrap();
        fs.finish().unwrap();
        let dev = img.to_str().unwrap();
        run(Command::new("e2fsck").args(["-fn", dev]));
        let extents = run(Command::new("debugfs").args(["-R", "ex /big", dev]));
        assert!(
            extents.lines().any(|l| l.trim_start().starts_with("0/ 1")),
            "{extents}"
        );
        let out = dir.path().join("out");
        run(Command::new("debugfs").args(["-R", &format!("dump /big {}", out.display()), dev]));
        assert!(std::fs::read(&out).unwrap() == data, "the bytes differ");
    }

    /// Entries ostree trees cannot hold are refused with the path named.
    #[test]
    fn unsupported_entries_are_named() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (src, img) = (dir.path().join("src"), dir.path().join("disk.img"));
        std::fs::create_dir_all(&src).unwrap();
        run(Command::new("mkfifo").arg(src.join("pipe")));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .arg("8M"));
        let mut fs = Fs::open(&img, 0, 0).unwrap();
        let err = format!("{:#}", fs.add(&src, Path::new("")).unwrap_err());
        assert!(
            err.contains("pipe") && err.contains("not a regular file"),
            "{err}"
        );
    }
}
