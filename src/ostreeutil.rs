//! The few helpers hostforge needs over the `ostree` crate: opening or creating repos,
//! directory metadata, commit metadata dictionaries and reading them back.

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Opens the repo at `path`, creating it with `mode` when it does not exist.
pub fn open_or_create(path: &Path, mode: ostree::RepoMode) -> Result<ostree::Repo> {
    if !path.join("config").exists() {
        // Made aside and renamed into place: a run killed while libostree writes the config
        // and then the directories never leaves a repo that has a config and no objects/.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        remove_stale_asides(parent);
        let aside = tempfile::Builder::new()
            .prefix(".new-repo-")
            .tempdir_in(parent)?;
        ostree::Repo::new_for_path(aside.path())
            .create(mode, gio::Cancellable::NONE)
            .with_context(|| format!("creating ostree repo {}", path.display()))?;
        std::fs::rename(aside.keep(), path)
            .with_context(|| format!("creating ostree repo {}", path.display()))?;
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening ostree repo {}", path.display()))?;
    Ok(repo)
}

/// Removes `.new-repo-*` directories in `parent` left by a run killed while it created a repo.
/// Creating one takes well under a second, so one older than ten minutes is no other run's.
fn remove_stale_asides(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(".new-repo-")
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(600));
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Opens an existing repo; the error says how to create one.
pub fn open_existing(path: &Path) -> Result<ostree::Repo> {
    if !path.join("config").exists() {
        anyhow::bail!(
            "{} is not an ostree repository: create it with `ostree init --repo={} \
             --mode=archive` (or bare)",
            path.display(),
            path.display()
        );
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening ostree repo {}", path.display()))?;
    Ok(repo)
}

/// Writes (once per distinct owner/mode) the dirmeta object for a directory.
#[derive(Default)]
pub struct DirMetaCache {
    cache: HashMap<(u32, u32, u32), String>,
}

impl DirMetaCache {
    pub fn get(&mut self, repo: &ostree::Repo, uid: u32, gid: u32, mode: u32) -> Result<String> {
        let mode = libc::S_IFDIR | (mode & 0o7777);
        if let Some(c) = self.cache.get(&(uid, gid, mode)) {
            return Ok(c.clone());
        }
        let info = gio::FileInfo::new();
        info.set_attribute_uint32("unix::uid", uid);
        info.set_attribute_uint32("unix::gid", gid);
        info.set_attribute_uint32("unix::mode", mode);
        let v = ostree::create_directory_metadata(&info, None);
        let csum = repo
            .write_metadata(
                ostree::ObjectType::DirMeta,
                None,
                &v,
                gio::Cancellable::NONE,
            )
            .context("writing directory metadata")?;
        let hex = csum.to_hex();
        self.cache.insert((uid, gid, mode), hex.clone());
        Ok(hex)
    }

    /// The permission bits of a directory metadata object this cache wrote.
    pub fn mode_of(&self, checksum: &str) -> Option<u32> {
        self.cache
            .iter()
            .find(|(_, c)| c.as_str() == checksum)
            .map(|(&(_, _, mode), _)| mode & 0o7777)
    }
}

/// Builds an `a{sv}` commit metadata dictionary.
#[derive(Default)]
pub struct MetaBuilder {
    dict: Option<glib::VariantDict>,
}

impl MetaBuilder {
    pub fn new() -> Self {
        MetaBuilder {
            dict: Some(glib::VariantDict::new(None)),
        }
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.dict.as_ref().unwrap().insert(k, v);
        self
    }

    pub fn bytes(&mut self, k: &str, v: &[u8]) -> &mut Self {
        self.dict
            .as_ref()
            .unwrap()
            .insert_value(k, &glib::Variant::array_from_fixed_array(v));
        self
    }

    pub fn strv(&mut self, k: &str, v: &[String]) -> &mut Self {
        self.dict.as_ref().unwrap().insert_value(k, &v.to_variant());
        self
    }

    pub fn value(&mut self, k: &str, v: &glib::Variant) -> &mut Self {
        self.dict.as_ref().unwrap().insert_value(k, v);
        self
    }

    pub fn end(&mut self) -> glib::Variant {
        self.dict.take().unwrap().end()
    }
}

/// The metadata dictionary of a commit.
pub fn commit_meta(repo: &ostree::Repo, commit: &str) -> Result<glib::VariantDict> {
    let v = repo
        .load_variant(ostree::ObjectType::Commit, commit)
        .with_context(|| format!("loading commit {commit}"))?;
    let meta = v.child_value(0);
    Ok(glib::VariantDict::new(Some(&meta)))
}

pub fn meta_str(dict: &glib::VariantDict, key: &str) -> Option<String> {
    dict.lookup_value(key, None)
        .and_then(|v| v.str().map(str::to_string))
}

pub fn meta_bytes(dict: &glib::VariantDict, key: &str) -> Option<Vec<u8>> {
    dict.lookup_value(key, Some(glib::VariantTy::BYTE_STRING))
        .map(|v| {
            v.fixed_array::<u8>()
                .map(|s| s.to_vec())
                .unwrap_or_default()
        })
}

/// The parent recorded in a commit object, if any.
pub fn commit_parent(repo: &ostree::Repo, commit: &str) -> Result<Option<String>> {
    let v = repo.load_variant(ostree::ObjectType::Commit, commit)?;
    Ok(ostree::commit_get_parent(&v).map(|s| s.to_string()))
}

/// The commit a ref points at in `repo`, if it exists.
pub fn resolve(repo: &ostree::Repo, r: &str) -> Result<Option<String>> {
    Ok(repo
        .resolve_rev(r, true)
        .with_context(|| format!("resolving ref {r}"))?
        .map(|s| s.to_string()))
}

/// The content of the regular file at `path` in `commit`.
pub fn read_commit_file(repo: &ostree::Repo, commit: &str, path: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let (root, _) = repo
        .read_commit(commit, gio::Cancellable::NONE)
        .with_context(|| format!("reading commit {commit}"))?;
    let f = root
        .resolve_relative_path(path.trim_start_matches('/'))
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("{path}: not a file of the commit"))?;
    f.ensure_resolved()
        .with_context(|| format!("{path} is not in commit {commit}"))?;
    let (stream, _, _) = repo
        .load_file(&f.checksum(), gio::Cancellable::NONE)
        .with_context(|| format!("loading {path} from commit {commit}"))?;
    let stream = stream.ok_or_else(|| anyhow::anyhow!("{path} is not a regular file"))?;
    let mut data = Vec::new();
    stream.into_read().read_to_end(&mut data)?;
    Ok(data)
}

/// Names in the directory `path` of `commit`, sorted.
pub fn list_commit_dir(repo: &ostree::Repo, commit: &str, path: &str) -> Result<Vec<String>> {
    let (root, _) = repo.read_commit(commit, gio::Cancellable::NONE)?;
    let dir = root.resolve_relative_path(path.trim_start_matches('/'));
    let mut names = Vec::new();
    let Ok(en) = dir.enumerate_children(
        "standard::name",
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    ) else {
        return Ok(names);
    };
    while let Some(info) = en.next_file(gio::Cancellable::NONE)? {
        names.push(info.name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Copies `commits` (checksums, with what they reference; no parents) from the repo at
/// `from` into `into`, the way ostree pulls from a local repo.
pub fn pull_local(into: &ostree::Repo, from: &std::path::Path, commits: &[String]) -> Result<()> {
    let opts = ostree::glib::VariantDict::new(None);
    opts.insert("refs", commits.to_vec());
    opts.insert("depth", 0i32);
    let url = format!("file://{}", from.canonicalize()?.display());
    into.pull_with_options(&url, &opts.end(), None, ostree::gio::Cancellable::NONE)?;
    Ok(())
}

/// Checks out `commit` into the new directory `dest` with real ownership and modes, sharing
/// inodes with the repo's objects where the repo mode allows (bare, bare-user as root).
pub fn checkout(repo: &ostree::Repo, commit: &str, dest: &std::path::Path) -> Result<()> {
    checkout_at(repo, commit, None, dest)
        .with_context(|| format!("checking out {commit} to {}", dest.display()))
}

/// Checks out the directory `subpath` of `commit` into the new directory `dest`.
pub fn checkout_subpath(
    repo: &ostree::Repo,
    commit: &str,
    subpath: &str,
    dest: &std::path::Path,
) -> Result<()> {
    checkout_at(repo, commit, Some(subpath), dest)
        .with_context(|| format!("checking out {subpath} of {commit} to {}", dest.display()))
}

fn checkout_at(
    repo: &ostree::Repo,
    commit: &str,
    subpath: Option<&str>,
    dest: &std::path::Path,
) -> Result<()> {
    /// `AT_FDCWD`: `dest` resolves against the working directory, or is absolute.
    const AT_FDCWD: i32 = -100;
    let opts = ostree::RepoCheckoutAtOptions {
        mode: ostree::RepoCheckoutMode::None,
        subpath: subpath.map(Into::into),
        ..Default::default()
    };
    repo.checkout_at(
        Some(&opts),
        AT_FDCWD,
        dest,
        commit,
        ostree::gio::Cancellable::NONE,
    )?;
    Ok(())
}

/// Seconds since the epoch for everything hostforge stamps (commit times, filesystem times):
/// `SOURCE_DATE_EPOCH` when set, for reproducible output, else now.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

/// Timestamp for everything built from `commit` (image filesystems, container layers):
/// SOURCE_DATE_EPOCH when set, else the commit's own time, so one commit gives one output.
pub fn commit_epoch(repo: &ostree::Repo, commit: &str) -> Result<u64> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
        return source_date_epoch();
    }
    let c = repo.load_variant(ostree::ObjectType::Commit, commit)?;
    Ok(ostree::commit_get_timestamp(&c))
}

/// Copies `commit` and everything it reaches from the archive repo at `src_path` into the
/// bare repo `dest`, on every core: libostree parses each `.filez` header and writes each
/// object (`write_content_trusted`), libdeflate inflates the payloads. Inflating is most of
/// the work, and libostree's own local pull does it with zlib, several times slower.
/// Metadata objects are imported with libostree, the commit last, so `dest` never holds the
/// commit without its tree. Returns `false` (nothing done) when `src` is not an archive repo
/// of its own (bare sources are better served by libostree's hardlinking pull).
pub fn import_archive_commit(src_path: &Path, dest: &ostree::Repo, commit: &str) -> Result<bool> {
    import_archive_commit_telling(src_path, dest, commit, &|_| {})
}

/// [`import_archive_commit`], with file objects imported in checksum order and `dir_done`
/// called with each object directory's name (`00` to `ff`, in order) once every file object
/// of the commit in it is there (the metadata objects come after all of them).
pub fn import_archive_commit_telling(
    src_path: &Path,
    dest: &ostree::Repo,
    commit: &str,
    dir_done: &(dyn Fn(&str) + Sync),
) -> Result<bool> {
    let c = gio::Cancellable::NONE;
    let src = open_existing(src_path)?;
    if src.mode() != ostree::RepoMode::Archive || src.parent().is_some() {
        return Ok(false);
    }
    let dest_path = dest
        .path()
        .path()
        .context("the destination repo has no local path")?;
    let objects = src
        .traverse_commit(commit, 0, c)
        .with_context(|| format!("reading commit {commit} in {}", src_path.display()))?;
    let mut files = Vec::new();
    let mut meta = Vec::new();
    for o in &objects {
        match o.object_type() {
            ostree::ObjectType::File => files.push(o.checksum().to_string()),
            ostree::ObjectType::Commit => {}
            t => meta.push((t, o.checksum().to_string())),
        }
    }
    files.sort_unstable();
    // Items done, and how many from the start are all done; the directory of the next
    // object not done is the first not told.
    let progress = std::sync::Mutex::new((vec![false; files.len()], 0usize, 0usize));
    let dir_of = |i: usize| -> usize {
        files
            .get(i)
            .and_then(|f| usize::from_str_radix(&f[..2], 16).ok())
            .unwrap_or(256)
    };
    let mark = |i: usize| {
        let mut g = progress.lock().unwrap_or_else(|e| e.into_inner());
        let (done, prefix, told) = &mut *g;
        done[i] = true;
        while *prefix < done.len() && done[*prefix] {
            *prefix += 1;
        }
        let upto = dir_of(*prefix);
        while *told < upto {
            dir_done(&format!("{:02x}", *told));
            *told += 1;
        }
    };
    let indexed: Vec<(usize, &String)> = files.iter().enumerate().collect();
    crate::pool::map(
        &indexed,
        crate::pool::workers(usize::MAX),
        // A Repo is not Sync: each worker reads and writes through its own.
        || {
            Ok((
                open_existing(&dest_path)?,
                open_existing(src_path)?,
                libdeflater::Decompressor::new(),
                Vec::new(),
            ))
        },
        |(dest, src, inflater, buf), &(i, csum)| -> Result<()> {
            if !dest.has_object(ostree::ObjectType::File, csum, gio::Cancellable::NONE)? {
                import_filez(src_path, src, (dest, &dest_path), csum, (inflater, buf))
                    .with_context(|| format!("importing file object {csum}"))?;
            }
            mark(i);
            Ok(())
        },
    )?;
    if files.is_empty() {
        (0..256).for_each(|d| dir_done(&format!("{d:02x}")));
    }
    for (t, csum) in meta.iter().chain(std::iter::once(&(
        ostree::ObjectType::Commit,
        commit.to_string(),
    ))) {
        dest.import_object_from_with_trust(&src, *t, csum, true, c)
            .with_context(|| format!("importing {t:?} object {csum}"))?;
    }
    Ok(true)
}

/// One `.filez` object of an archive repo into `dest`.
fn import_filez(
    src: &Path,
    src_repo: &ostree::Repo,
    (dest, dest_path): (&ostree::Repo, &Path),
    csum: &str,
    (inflater, content): (&mut libdeflater::Decompressor, &mut Vec<u8>),
) -> Result<()> {
    let c = gio::Cancellable::NONE;
    let path = loose_object_path(src, csum, "filez");
    let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // [u32 BE header length][4 bytes padding][header variant][raw deflate payload]
    if raw.len() < 8 {
        anyhow::bail!("{} is truncated", path.display());
    }
    let header_len = u32::from_be_bytes(raw[..4].try_into().unwrap()) as usize;
    let payload_at = 8 + header_len;
    if payload_at > raw.len() {
        anyhow::bail!("{} is truncated", path.display());
    }
    // The header is (size, uid, gid, mode, rdev, symlink target, xattrs), integers
    // big-endian. Only regular files have a payload; the rest go libostree's own way.
    let header = glib::Variant::from_data_with_type(
        &raw[8..payload_at],
        glib::VariantTy::new("(tuuuusa(ayay))").unwrap(),
    );
    let mode = header
        .try_child_get::<u32>(3)
        .ok()
        .flatten()
        .map(u32::from_be)
        .with_context(|| format!("{}: no mode in its header", path.display()))?;
    if mode & libc::S_IFMT != libc::S_IFREG {
        dest.import_object_from_with_trust(src_repo, ostree::ObjectType::File, csum, true, c)?;
        return Ok(());
    }
    let input = gio::MemoryInputStream::from_bytes(&glib::Bytes::from(&raw[..payload_at]));
    let (_, info, xattrs) = ostree::content_stream_parse(true, &input, payload_at as u64, true, c)
        .with_context(|| format!("parsing the header of {}", path.display()))?;
    content.resize(info.size() as usize, 0);
    let n = inflater
        .deflate_decompress(&raw[payload_at..], content)
        .map_err(|e| anyhow::anyhow!("inflating {}: {e:?}", path.display()))?;
    if n != content.len() {
        anyhow::bail!(
            "{}: {n} bytes inflated, {} expected",
            path.display(),
            content.len()
        );
    }
    if dest.mode() == ostree::RepoMode::Bare {
        return write_bare_regfile(dest_path, csum, content, &info, &xattrs)
            .with_context(|| format!("writing file object {csum}"));
    }
    // libostree's way takes the buffer; the worker's next file starts a new one.
    let content = std::mem::take(content);
    let data = gio::MemoryInputStream::from_bytes(&glib::Bytes::from_owned(content));
    let (stream, len) = ostree::raw_file_to_content_stream(&data, &info, Some(&xattrs), c)?;
    dest.write_content_trusted(csum, &stream, len, c)?;
    Ok(())
}

/// A regular file object of a bare repo, written as libostree writes one (owner, mode, xattrs
/// and an mtime of 0 on the object itself), without its stream copies: aside in the repo's
/// tmp/, then renamed into place, so a killed run leaves only whole objects.
fn write_bare_regfile(
    repo: &Path,
    csum: &str,
    content: &[u8],
    info: &gio::FileInfo,
    xattrs: &glib::Variant,
) -> Result<()> {
    use std::os::fd::AsFd;
    let to = loose_object_path(repo, csum, "file");
    std::fs::create_dir_all(to.parent().expect("an object path has a directory"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix("hostforge-file-")
        .tempfile_in(repo.join("tmp"))?;
    std::io::Write::write_all(&mut tmp, content)?;
    let fd = tmp.as_file().as_fd();
    let attr = |name: &str| info.attribute_uint32(name);
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(attr("unix::uid"))),
        Some(rustix::fs::Gid::from_raw(attr("unix::gid"))),
    )?;
    // After the chown, which clears set-id bits.
    rustix::fs::fchmod(
        fd,
        rustix::fs::Mode::from_raw_mode(attr("unix::mode") & 0o7777),
    )?;
    for i in 0..xattrs.n_children() {
        let x = xattrs.child_value(i);
        let name = x.child_value(0);
        let name = name
            .fixed_array::<u8>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = std::ffi::CStr::from_bytes_until_nul(name)
            .map_err(|_| anyhow::anyhow!("an xattr name without its NUL"))?;
        let value = x.child_value(1);
        let value = value
            .fixed_array::<u8>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty())
            .with_context(|| format!("setting xattr {name:?}"))?;
    }
    let zero = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        fd,
        &rustix::fs::Timestamps {
            last_access: zero,
            last_modification: zero,
        },
    )?;
    tmp.persist(to)?;
    Ok(())
}

/// Where a repo at `repo` keeps the loose object `csum` of kind `ext` ("filez", "dirtree", ...).
fn loose_object_path(repo: &Path, csum: &str, ext: &str) -> std::path::PathBuf {
    repo.join("objects").join(loose_object_relpath(csum, ext))
}

/// The loose object `csum` of kind `ext`, relative to the repo's `objects/` directory.
pub fn loose_object_relpath(csum: &str, ext: &str) -> String {
    format!("{}/{}.{ext}", &csum[..2], &csum[2..])
}

/// The hex checksum in a variant of type `ay` (32 bytes).
fn hex_checksum(v: &glib::Variant) -> Result<String> {
    let bytes = v
        .fixed_array::<u8>()
        .map_err(|e| anyhow::anyhow!("a checksum in an ostree object: {e}"))?;
    if bytes.len() != 32 {
        anyhow::bail!("a checksum of {} bytes in an ostree object", bytes.len());
    }
    Ok(hex::encode(bytes))
}

/// The root dirtree and dirmeta of the commit object `v`.
fn commit_root(v: &glib::Variant) -> Result<(String, String)> {
    Ok((
        hex_checksum(&v.child_value(6))?,
        hex_checksum(&v.child_value(7))?,
    ))
}

/// Walks the dirtrees of `commit` in `repo` from the root down, skipping a subtree whose
/// dirtree is in `skip`; `visit` sees each dirtree walked (with its checksum and its files'
/// checksums) and each subdirectory's dirmeta.
fn walk_dirtrees(
    repo: &ostree::Repo,
    commit: &str,
    skip: &std::collections::HashSet<String>,
    mut visit: impl FnMut(&str, Vec<String>, Vec<String>),
) -> Result<()> {
    let v = repo
        .load_variant(ostree::ObjectType::Commit, commit)
        .with_context(|| format!("loading commit {commit}"))?;
    let (tree, meta) = commit_root(&v)?;
    let mut todo = vec![(tree, meta)];
    let mut seen = std::collections::HashSet::new();
    while let Some((tree, meta)) = todo.pop() {
        if skip.contains(&tree) || !seen.insert(tree.clone()) {
            continue;
        }
        let d = repo
            .load_variant(ostree::ObjectType::DirTree, &tree)
            .with_context(|| format!("loading dirtree {tree} of commit {commit}"))?;
        let files = d.child_value(0);
        let files = (0..files.n_children())
            .map(|i| hex_checksum(&files.child_value(i).child_value(1)))
            .collect::<Result<Vec<_>>>()?;
        let dirs = d.child_value(1);
        let mut metas = vec![meta];
        for i in 0..dirs.n_children() {
            let e = dirs.child_value(i);
            let (t, m) = (
                hex_checksum(&e.child_value(1))?,
                hex_checksum(&e.child_value(2))?,
            );
            metas.push(m.clone());
            todo.push((t, m));
        }
        visit(&tree, files, metas);
    }
    Ok(())
}

/// Into an archive repo `dest`: `commit` of the repo at `src_path`, its files compressed on
/// every core by hostforge (libdeflate: raw deflate at the level libostree would use,
/// `archive.zlib-level`, 6 by default, several times faster than libostree's zlib; files
/// above 8 MiB streamed through zlib-rs instead, so no worker holds a large file). As in a
/// libostree transaction, under the repo's shared lock (a concurrent `ostree prune` waits),
/// every new object is written aside in the repo's tmp/, all of them reach the disk with one
/// syncfs, then they are renamed into objects/ and the directories they went into are synced,
/// the commit object last: neither a killed run nor a power cut leaves a partial object, or a
/// commit object without the objects it refers to. Unlike a transaction, only the object
/// directories that got something are synced (libostree syncs all 256). A dirtree of `base`,
/// a complete commit already in `dest` (the ref's previous commit), is there with
/// everything under it: those subtrees are not walked, so a recompose that changed a few
/// directories copies and checks only those. Returns the number of file objects written, or
/// None, leaving everything to libostree's pull, when `dest` is not an archive repo or
/// `commit` is already complete in it.
///
/// `ahead`: file objects already compressed for `dest` ([`Precompress`]); those the commit
/// holds go in as they are.
pub fn export_commit_to_archive(
    src_path: &Path,
    dest: &ostree::Repo,
    commit: &str,
    base: Option<&str>,
    ahead: Option<Precompress>,
    progress: Option<&crate::progress::Progress>,
) -> Result<Option<usize>> {
    if dest.mode() != ostree::RepoMode::Archive {
        return Ok(None);
    }
    let complete = |csum: &str| {
        dest.load_commit(csum)
            .is_ok_and(|(_, state)| !state.contains(ostree::RepoCommitState::PARTIAL))
    };
    if complete(commit) {
        return Ok(None);
    }
    let dest_path = dest
        .path()
        .path()
        .context("the destination repo has no local path")?;
    let _lock = RepoLock::shared(dest)?;
    let level = archive_level(dest);
    let mut ahead = match ahead {
        Some(a) => a.finish()?,
        None => HashMap::new(),
    };
    let src = open_existing(src_path)?;
    let mut known = std::collections::HashSet::new();
    if let Some(base) = base.filter(|b| complete(b)) {
        walk_dirtrees(dest, base, &Default::default(), |tree, _, _| {
            known.insert(tree.to_string());
        })?;
    }
    let (mut files, mut trees, mut metas) = (Vec::new(), Vec::new(), Vec::new());
    walk_dirtrees(&src, commit, &known, |tree, f, m| {
        trees.push(tree.to_string());
        files.extend(f);
        metas.extend(m);
    })
    .with_context(|| format!("reading commit {commit} in {}", src_path.display()))?;
    files.sort();
    files.dedup();
    metas.sort();
    metas.dedup();
    // Those compressed ahead are done; the rest are compressed now.
    let mut compressed = Vec::new();
    files.retain(|f| match ahead.remove(f) {
        Some(tmp) => {
            compressed.push((f.clone(), tmp));
            false
        }
        None => true,
    });
    let object_path = |csum: &str, ext: &str| loose_object_path(&dest_path, csum, ext);
    let bar = progress.map(|p| p.bar("commit", files.len() as u64));
    let written = crate::pool::map(
        &files,
        crate::pool::workers(usize::MAX),
        // A Repo is not Sync: each worker reads through its own.
        || {
            let lvl = libdeflater::CompressionLvl::new(level)
                .map_err(|e| anyhow::anyhow!("deflate level {level}: {e:?}"))?;
            Ok((open_existing(src_path)?, libdeflater::Compressor::new(lvl)))
        },
        |(src, deflater), csum| -> Result<Option<tempfile::TempPath>> {
            let staged = if object_path(csum, "filez").exists() {
                None
            } else {
                let aside = write_filez(src, &dest_path, csum, deflater, level)
                    .with_context(|| format!("writing file object {csum} into the archive repo"))?;
                Some(aside)
            };
            if let Some(bar) = &bar {
                bar.inc("files");
            }
            Ok(staged)
        },
    )?;
    // The metadata objects are the same bytes in every kind of repo: copied as they are,
    // checked against their names.
    let mut aside: Vec<(std::path::PathBuf, tempfile::TempPath)> = files
        .iter()
        .zip(written)
        .filter_map(|(csum, w)| Some((object_path(csum, "filez"), w?)))
        .chain(
            compressed
                .into_iter()
                .map(|(csum, tmp)| (object_path(&csum, "filez"), tmp)),
        )
        .collect();
    let file_objects = aside.len();
    let src_object = |csum: &str, ext: &str| loose_object_path(src_path, csum, ext);
    let metadata = metas
        .iter()
        .map(|m| (m, "dirmeta"))
        .chain(trees.iter().map(|t| (t, "dirtree")));
    for (csum, ext) in metadata {
        let to = object_path(csum, ext);
        if !to.exists() {
            let tmp = copy_metadata_object(&src_object(csum, ext), &dest_path, Some(csum))?;
            aside.push((to, tmp));
        }
    }
    // The commit object goes in last, once everything it refers to is in place.
    let mut last = Vec::new();
    let detached = src_object(commit, "commitmeta");
    if detached.exists() {
        let tmp = copy_metadata_object(&detached, &dest_path, None)?;
        last.push((object_path(commit, "commitmeta"), tmp));
    }
    let tmp = copy_metadata_object(&src_object(commit, "commit"), &dest_path, Some(commit))?;
    last.push((object_path(commit, "commit"), tmp));
    let tmp = std::fs::File::open(dest_path.join("tmp"))?;
    rustix::fs::syncfs(&tmp).context("syncing the archive repo's new objects")?;
    rename_objects_in(aside)?;
    rename_objects_in(last)?;
    Ok(Some(file_objects))
}

/// The deflate level of an archive repo's file objects (`archive.zlib-level`, as libostree).
fn archive_level(repo: &ostree::Repo) -> i32 {
    repo.config()
        .integer("archive", "zlib-level")
        .unwrap_or(6)
        .clamp(1, 9)
}

/// File objects of one repo compressed for an archive repo before the commit that holds them
/// exists, on a thread of their own (the compose's commit step walks its tree on one core
/// meanwhile): [`export_commit_to_archive`] stops it, renames in those its commit holds
/// instead of compressing them again, and compresses the rest. They wait in the archive
/// repo's tmp/; dropped unused, the thread stops and they are removed.
pub struct Precompress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<HashMap<String, tempfile::TempPath>>>>,
}

impl Precompress {
    /// Starts on those of `csums` (file objects of the repo at `src_path`), then of `files`
    /// (regular files on disk, to be committed as they are: owner, mode, no extended
    /// attributes), that `dest` does not hold; None when `dest` is not an archive repo.
    pub fn start(
        src_path: &Path,
        dest: &ostree::Repo,
        csums: Vec<String>,
        files: Vec<PathBuf>,
    ) -> Result<Option<Self>> {
        use std::sync::atomic::Ordering;
        if dest.mode() != ostree::RepoMode::Archive || (csums.is_empty() && files.is_empty()) {
            return Ok(None);
        }
        let dest_path = dest
            .path()
            .path()
            .context("the destination repo has no local path")?;
        let (src_path, level) = (src_path.to_path_buf(), archive_level(dest));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("precompress".into())
            .spawn(move || {
                let src = open_existing(&src_path)?;
                let lvl = libdeflater::CompressionLvl::new(level)
                    .map_err(|e| anyhow::anyhow!("deflate level {level}: {e:?}"))?;
                let mut deflater = libdeflater::Compressor::new(lvl);
                let mut done = HashMap::new();
                for csum in csums {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    if done.contains_key(&csum)
                        || loose_object_path(&dest_path, &csum, "filez").exists()
                    {
                        continue;
                    }
                    let tmp = write_filez(&src, &dest_path, &csum, &mut deflater, level)
                        .with_context(|| format!("compressing file object {csum} ahead"))?;
                    done.insert(csum, tmp);
                }
                for path in files {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let ahead = file_ahead(&path, &dest_path, &mut deflater, level)
                        .with_context(|| format!("compressing {} ahead", path.display()))?;
                    if let Some((csum, tmp)) = ahead {
                        done.insert(csum, tmp);
                    }
                }
                Ok(done)
            })
            .context("starting the precompress thread")?;
        Ok(Some(Precompress {
            stop,
            thread: Some(thread),
        }))
    }

    /// What was compressed, by checksum. The thread stops after the file it is on: what is
    /// left is the export's, on every core.
    fn finish(mut self) -> Result<HashMap<String, tempfile::TempPath>> {
        let thread = self.thread.take().expect("finished once");
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the precompress thread panicked"))?
    }
}

impl Drop for Precompress {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// The regular file at `path` (up to [`FILEZ_STREAM_ABOVE`]) as a file object for the archive
/// repo at `dest`, read once: its checksum (owner and mode from the file, no extended
/// attributes), and the object written aside; None when `dest` has it, it is larger, or it
/// is not there.
fn file_ahead(
    path: &Path,
    dest: &Path,
    deflater: &mut libdeflater::Compressor,
    level: i32,
) -> Result<Option<(String, tempfile::TempPath)>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut f = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        f => f?,
    };
    let m = f.metadata()?;
    if !m.is_file() || m.len() > FILEZ_STREAM_ABOVE as u64 {
        return Ok(None);
    }
    let mut content = Vec::with_capacity(m.len() as usize);
    f.read_to_end(&mut content)?;
    let info = gio::FileInfo::new();
    info.set_file_type(gio::FileType::Regular);
    info.set_size(content.len() as i64);
    info.set_attribute_uint32("unix::uid", m.uid());
    info.set_attribute_uint32("unix::gid", m.gid());
    info.set_attribute_uint32("unix::mode", m.mode());
    let xattrs = glib::Variant::array_from_iter_with_type(
        glib::VariantTy::new("(ayay)").expect("a valid type"),
        std::iter::empty::<glib::Variant>(),
    );
    let bytes = glib::Bytes::from_owned(content);
    let stream = || gio::MemoryInputStream::from_bytes(&bytes);
    let csum = ostree::checksum_file_from_input(
        &info,
        Some(&xattrs),
        Some(&stream()),
        ostree::ObjectType::File,
        gio::Cancellable::NONE,
    )
    .map_err(|e| anyhow::anyhow!("checksumming: {e}"))?
    .to_string();
    if loose_object_path(dest, &csum, "filez").exists() {
        return Ok(None);
    }
    let tmp = write_filez_of(
        dest,
        Some(stream().upcast()),
        &info,
        xattrs,
        deflater,
        level,
    )?;
    Ok(Some((csum, tmp)))
}

/// libostree's repo lock, held while objects are written outside a transaction (a transaction
/// holds it shared; `ostree prune` exclusive, so it cannot remove them before a ref names
/// them). Released when dropped.
pub struct RepoLock<'a>(&'a ostree::Repo);

#[allow(unsafe_code)]
impl<'a> RepoLock<'a> {
    /// Waits for the shared lock (as long as the repo's `core.lock-timeout-secs`).
    pub fn shared(repo: &'a ostree::Repo) -> Result<Self> {
        use glib::translate::{from_glib_full, ToGlibPtr};
        let mut error = std::ptr::null_mut();
        // SAFETY: a live repo, no cancellable, and an error out-pointer libostree fills on
        // failure (taken over by `from_glib_full`).
        let ok = unsafe {
            ostree::ffi::ostree_repo_lock_push(
                repo.to_glib_none().0,
                ostree::ffi::OSTREE_REPO_LOCK_SHARED,
                std::ptr::null_mut(),
                &mut error,
            )
        };
        if ok == glib::ffi::GFALSE {
            let error: glib::Error = unsafe { from_glib_full(error) };
            return Err(error).context("locking the repo");
        }
        Ok(RepoLock(repo))
    }
}

#[allow(unsafe_code)]
impl Drop for RepoLock<'_> {
    fn drop(&mut self) {
        use glib::translate::ToGlibPtr;
        let mut error = std::ptr::null_mut();
        // SAFETY: as in `shared`; this pops the lock pushed there. An error (the lock file
        // gone) leaves nothing to undo: it is freed.
        unsafe {
            if ostree::ffi::ostree_repo_lock_pop(
                self.0.to_glib_none().0,
                ostree::ffi::OSTREE_REPO_LOCK_SHARED,
                std::ptr::null_mut(),
                &mut error,
            ) == glib::ffi::GFALSE
            {
                glib::ffi::g_error_free(error);
            }
        }
    }
}

/// A copy of the metadata object `from` written aside in the repo at `dest`'s tmp/ (0644, as
/// libostree writes objects), checked against `csum` when it has one (a detached metadata
/// object has none).
fn copy_metadata_object(
    from: &Path,
    dest: &Path,
    csum: Option<&str>,
) -> Result<tempfile::TempPath> {
    use sha2::Digest;
    use std::io::Write;
    let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if let Some(csum) = csum {
        let got = hex::encode(sha2::Sha256::digest(&data));
        if got != csum {
            anyhow::bail!("{} holds an object of checksum {got}", from.display());
        }
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(FILEZ_ASIDE)
        .tempfile_in(dest.join("tmp"))?;
    tmp.write_all(&data)?;
    finish_aside(tmp)
}

/// Renames objects written aside (and synced) to their names in objects/, on every core,
/// then syncs each object directory that got one, so the renames are durable before anything
/// that refers to the objects is written.
fn rename_objects_in(objects: Vec<(std::path::PathBuf, tempfile::TempPath)>) -> Result<()> {
    crate::pool::map(
        &objects,
        crate::pool::workers(usize::MAX),
        || Ok(()),
        |_, (to, tmp)| -> Result<()> {
            let dir = to.parent().expect("an object path has a directory");
            std::fs::create_dir_all(dir)?;
            std::fs::rename(tmp, to)
                .with_context(|| format!("moving {} to {}", tmp.display(), to.display()))
        },
    )?;
    let mut dirs: Vec<&Path> = objects.iter().filter_map(|(to, _)| to.parent()).collect();
    dirs.sort();
    dirs.dedup();
    crate::pool::map(
        &dirs,
        crate::pool::workers(usize::MAX),
        || Ok(()),
        |_, dir| -> Result<()> {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", dir.display()))
        },
    )?;
    // The renamed paths are gone; nothing is left for the TempPaths to remove.
    for (_, tmp) in objects {
        let _ = tmp.keep();
    }
    Ok(())
}

/// The name prefix of a `.filez` object written aside in the archive repo's tmp/.
const FILEZ_ASIDE: &str = "hostforge-filez-";

/// Files above this size are compressed as a stream (zlib-rs, a third slower than
/// libdeflate, in bounded memory) rather than whole in memory with libdeflate.
const FILEZ_STREAM_ABOVE: usize = 8 << 20;

/// One file (regular or symlink) of `src` as a `.filez` object written aside in the archive
/// repo at `dest`, to be renamed into objects/.
fn write_filez(
    src: &ostree::Repo,
    dest: &Path,
    csum: &str,
    deflater: &mut libdeflater::Compressor,
    level: i32,
) -> Result<tempfile::TempPath> {
    let (stream, info, xattrs) = src.load_file(csum, gio::Cancellable::NONE)?;
    write_filez_of(dest, stream, &info, xattrs, deflater, level)
}

/// A file object (content `stream`, `info`, `xattrs`) as a `.filez` object written aside in
/// the archive repo at `dest`.
fn write_filez_of(
    dest: &Path,
    stream: Option<gio::InputStream>,
    info: &gio::FileInfo,
    xattrs: glib::Variant,
    deflater: &mut libdeflater::Compressor,
    level: i32,
) -> Result<tempfile::TempPath> {
    use std::io::Write;
    let c = gio::Cancellable::NONE;
    let target = match info.file_type() {
        gio::FileType::Regular => None,
        gio::FileType::SymbolicLink => Some(
            info.symlink_target()
                .context("a symlink object without a target")?,
        ),
        other => anyhow::bail!("an object of file type {other:?}"),
    };
    // As libostree: a symlink's size is what its file info says (0 from a bare-user repo).
    let size = if info.has_attribute("standard::size") {
        info.size() as usize
    } else {
        0
    };
    // [u32 BE header length][4 bytes padding][header variant][raw deflate payload, regular
    // files only]; the header is (size, uid, gid, mode, rdev, symlink target, xattrs),
    // integers big-endian.
    let attr = |name: &str| info.attribute_uint32(name).to_be();
    let header = glib::Variant::tuple_from_iter([
        (size as u64).to_be().to_variant(),
        attr("unix::uid").to_variant(),
        attr("unix::gid").to_variant(),
        attr("unix::mode").to_variant(),
        0u32.to_variant(),
        target
            .as_deref()
            .map_or("", |t| t.to_str().unwrap_or_default())
            .to_variant(),
        xattrs,
    ]);
    let header = header.data();
    let mut prefix = Vec::with_capacity(8 + header.len());
    prefix.extend_from_slice(&(header.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&[0; 4]);
    prefix.extend_from_slice(header);
    let mut tmp = tempfile::Builder::new()
        .prefix(FILEZ_ASIDE)
        .tempfile_in(dest.join("tmp"))?;
    let stream = match (target, stream) {
        (None, Some(stream)) => stream,
        (None, None) => anyhow::bail!("a regular file object without content"),
        (Some(_), _) => {
            tmp.write_all(&prefix)?;
            return finish_aside(tmp);
        }
    };
    if size > FILEZ_STREAM_ABOVE {
        let out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let mut enc =
            flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level as u32));
        enc.get_mut().write_all(&prefix)?;
        let mut input = stream.into_read();
        let n = std::io::copy(&mut input, &mut enc)?;
        if n != size as u64 {
            anyhow::bail!("{n} bytes read, {size} expected");
        }
        enc.finish()?.flush()?;
    } else {
        let mut content = vec![0u8; size];
        let (n, _) = stream.read_all(&mut content, c)?;
        if n != size {
            anyhow::bail!("{n} bytes read, {size} expected");
        }
        let mut out = prefix;
        let at = out.len();
        out.resize(at + deflater.deflate_compress_bound(size), 0);
        let n = deflater
            .deflate_compress(&content, &mut out[at..])
            .map_err(|e| anyhow::anyhow!("deflate: {e:?}"))?;
        out.truncate(at + n);
        tmp.write_all(&out)?;
    }
    finish_aside(tmp)
}

/// An object written aside, given the mode libostree gives objects (0644).
fn finish_aside(tmp: tempfile::NamedTempFile) -> Result<tempfile::TempPath> {
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(tmp.into_temp_path())
}

/// Commits a transaction that wrote `commit` (and maybe set a ref to it), with the commit
/// marked partial while libostree moves the staged objects into the repo. It moves them in
/// directory order, so a process killed in the middle could leave the commit object without
/// some of the objects it refers to, which `ostree fsck` reports as corruption; a partial
/// commit is skipped by fsck and never reached by a ref (refs are written after the objects).
pub fn commit_transaction(
    repo: &ostree::Repo,
    tx: ostree::TransactionGuard,
    commit: &str,
) -> Result<ostree::RepoTransactionStats> {
    let cancellable = gio::Cancellable::NONE;
    repo.mark_commit_partial(commit, true)?;
    if repo.is_disable_fsync() {
        let stats = tx.commit(cancellable)?;
        repo.mark_commit_partial(commit, false)?;
        return Ok(stats);
    }
    // The same order as libostree's (objects durable before they are renamed in, everything
    // durable before the commit stops being partial), with one syncfs on each side instead of
    // an fsync of each of the 256 object directories (a disk cache flush each, ~20 ms here).
    let sync = || {
        // SAFETY: the repo's directory fd stays open while the repo is alive.
        #[allow(unsafe_code)]
        let dfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(repo.dfd()) };
        rustix::fs::syncfs(dfd).context("syncfs on the repo")
    };
    sync()?;
    repo.set_disable_fsync(true);
    let stats = tx.commit(cancellable);
    repo.set_disable_fsync(false);
    let stats = stats?;
    sync()?;
    // Not synced: lost in a crash, the marker only makes the commit be written again.
    repo.mark_commit_partial(commit, false)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn ostree(repo: &Path, args: &[&str]) -> String {
        let out = Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `.new-repo-*` left by a run killed mid-create is removed by the next creation once it
    /// is old; a fresh one (another run's, in progress) is left alone.
    #[test]
    fn creating_a_repo_removes_old_leftovers_of_killed_creations() {
        let dir = tempfile::tempdir().unwrap();
        let (old, fresh) = (
            dir.path().join(".new-repo-old"),
            dir.path().join(".new-repo-fresh"),
        );
        for d in [&old, &fresh] {
            std::fs::create_dir_all(d.join("objects")).unwrap();
            std::fs::write(d.join("config"), "[core]\n").unwrap();
        }
        let hour_ago = filetime::FileTime::from_system_time(
            std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
        );
        filetime::set_file_mtime(&old, hour_ago).unwrap();
        open_or_create(&dir.path().join("repo"), ostree::RepoMode::Archive).unwrap();
        assert!(!old.exists(), "the old leftover is still there");
        assert!(
            fresh.exists(),
            "a fresh .new-repo-* (in progress) was removed"
        );
        assert!(dir.path().join("repo/objects").is_dir());
    }

    /// The objects written aside that are still in `repo`'s tmp/.
    fn aside_in_tmp(repo: &Path) -> Vec<String> {
        std::fs::read_dir(repo.join("tmp"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(FILEZ_ASIDE))
            .collect()
    }

    /// A tree with what a content object's header carries: a setuid file owned by 1000:1001,
    /// an empty file with an xattr, a symlink, committed into a new repo of `mode` at `repo`.
    fn commit_sample_tree(dir: &Path, repo: &Path, mode: &str) -> String {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        let text: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(tree.join("usr/bin/tool"), text).unwrap();
        // Above FILEZ_STREAM_ABOVE: the export compresses it as a stream.
        let big: Vec<u8> = (0..9u32 << 20)
            .map(|i| ((i % 253) ^ (i >> 13)) as u8)
            .collect();
        std::fs::write(tree.join("usr/big"), big).unwrap();
        std::fs::write(tree.join("usr/empty"), "").unwrap();
        std::os::unix::fs::symlink("bin/tool", tree.join("usr/link")).unwrap();
        rustix::fs::setxattr(
            tree.join("usr/empty"),
            "user.test",
            b"on",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::os::unix::fs::chown(tree.join("usr/bin/tool"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(
            tree.join("usr/bin/tool"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        ostree(repo, &["init", &format!("--mode={mode}")]);
        let commit = ostree(
            repo,
            &[
                "commit",
                "-b",
                "t",
                &format!("--tree=dir={}", tree.display()),
            ],
        );
        commit.trim().to_string()
    }

    /// The archive import gives the bare repo the same commit, objects that pass fsck
    /// (content, owner, mode and xattrs are all in the checksum), and the same tree.
    #[test]
    fn archive_import_matches_the_source_and_passes_fsck() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        let commit = commit_sample_tree(dir.path(), &src, "archive");
        let commit = commit.as_str();
        let dest_repo = open_or_create(&dest, ostree::RepoMode::Bare).unwrap();
        assert!(import_archive_commit(&src, &dest_repo, commit).unwrap());
        ostree(&dest, &["fsck", "--quiet"]);
        let listing = ostree(&dest, &["ls", "-RX", commit]);
        assert_eq!(ostree(&src, &["ls", "-RX", commit]), listing);
        assert!(listing.contains("user.test"), "{listing}");
        assert!(listing.contains("-04755 1000 1001"), "{listing}");
        // The objects on disk are as libostree's own pull writes them: owner, mode, and the
        // regular files' mtime of 0.
        let theirs = dir.path().join("theirs");
        let theirs_repo = open_or_create(&theirs, ostree::RepoMode::Bare).unwrap();
        pull_local(&theirs_repo, &src, &[commit.to_string()]).unwrap();
        let objects = |repo: &Path| {
            let mut out = Vec::new();
            for d in std::fs::read_dir(repo.join("objects")).unwrap() {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    let f = f.unwrap();
                    let m = f.path().symlink_metadata().unwrap();
                    use std::os::unix::fs::MetadataExt;
                    // Metadata objects and symlinks get the time of their writing.
                    let regular = m.is_file() && f.path().extension() == Some("file".as_ref());
                    let mtime = regular.then(|| m.mtime());
                    out.push((f.file_name(), m.mode(), m.uid(), m.gid(), mtime));
                }
            }
            out.sort();
            out
        };
        assert_eq!(objects(&dest), objects(&theirs));
        // A bare source is left to libostree's pull.
        let other = open_or_create(&dir.path().join("other"), ostree::RepoMode::Bare).unwrap();
        assert!(!import_archive_commit(&dest, &other, commit).unwrap());
    }

    /// hostforge's archive export makes a repo that passes fsck and holds the tree as
    /// libostree's own pull makes it; a file object already there is not written again; with
    /// the previous commit as base, only the directories that changed are walked and the
    /// repo still holds every object of the new commit.
    #[test]
    fn archive_export_passes_fsck_and_matches_libostrees_pull() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (src, ours, theirs) = (
            dir.path().join("src"),
            dir.path().join("ours"),
            dir.path().join("theirs"),
        );
        let commit = commit_sample_tree(dir.path(), &src, "bare-user");
        let ours_repo = open_or_create(&ours, ostree::RepoMode::Archive).unwrap();
        let written =
            export_commit_to_archive(&src, &ours_repo, &commit, None, None, None).unwrap();
        assert_eq!(written, Some(4), "three regular files and a symlink");
        ostree(&ours, &["fsck"]);
        assert_eq!(aside_in_tmp(&ours), Vec::<String>::new());
        let theirs_repo = open_or_create(&theirs, ostree::RepoMode::Archive).unwrap();
        pull_local(&theirs_repo, &src, std::slice::from_ref(&commit)).unwrap();
        let listing = ostree(&ours, &["ls", "-RX", &commit]);
        assert_eq!(ostree(&theirs, &["ls", "-RX", &commit]), listing);
        assert!(listing.contains("-04755 1000 1001"), "{listing}");
        // The same objects as libostree's pull writes, mode 0644, metadata objects and the
        // symlink byte for byte (regular files differ only in their deflate streams).
        let link = ostree(&ours, &["ls", "-C", &commit, "/usr/link"]);
        let link = link.split_whitespace().find(|w| w.len() == 64).unwrap();
        let objects = |repo: &Path| {
            let mut out = std::collections::BTreeMap::new();
            for d in std::fs::read_dir(repo.join("objects")).unwrap() {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    let path = f.unwrap().path();
                    let name = format!(
                        "{}{}",
                        path.parent()
                            .unwrap()
                            .file_name()
                            .unwrap()
                            .to_str()
                            .unwrap(),
                        path.file_name().unwrap().to_str().unwrap()
                    );
                    use std::os::unix::fs::MetadataExt;
                    let mode = path.metadata().unwrap().mode();
                    let whole = !name.ends_with(".filez") || name.starts_with(link);
                    out.insert(name, (mode, whole.then(|| std::fs::read(&path).unwrap())));
                }
            }
            out
        };
        let (o, t) = (objects(&ours), objects(&theirs));
        assert_eq!(o.len(), t.len());
        for (name, (mode, bytes)) in &t {
            assert_eq!(o.get(name), Some(&(*mode, bytes.clone())), "{name}");
        }
        for f in ["/usr/bin/tool", "/usr/big"] {
            assert_eq!(
                ostree(&ours, &["cat", &commit, f]),
                ostree(&theirs, &["cat", &commit, f])
            );
        }
        // Complete already: nothing to do.
        assert_eq!(
            export_commit_to_archive(&src, &ours_repo, &commit, None, None, None).unwrap(),
            None
        );
        // A second commit adds a directory; with the first as base, only its file is
        // written, and fsck finds every object of the new commit.
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/new.conf"), "x = 1\n").unwrap();
        let second = ostree(
            &src,
            &[
                "commit",
                "-b",
                "t",
                &format!("--tree=dir={}", tree.display()),
            ],
        );
        let second = second.trim();
        // A copy of the repo that lost usr/bin/tool's object shows the unchanged usr/ is not
        // walked with a base: the missing object is not noticed, so not written.
        let probe = dir.path().join("probe");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&ours)
            .arg(&probe)
            .status()
            .unwrap()
            .success());
        let listed = ostree(&ours, &["ls", "-C", &commit, "/usr/bin/tool"]);
        let tool = listed.split_whitespace().find(|w| w.len() == 64).unwrap();
        std::fs::remove_file(probe.join(format!("objects/{}/{}.filez", &tool[..2], &tool[2..])))
            .unwrap();
        let probe_repo = open_existing(&probe).unwrap();
        let written =
            export_commit_to_archive(&src, &probe_repo, second, Some(&commit), None, None).unwrap();
        assert_eq!(written, Some(1), "usr/ was walked");
        let written =
            export_commit_to_archive(&src, &ours_repo, second, Some(&commit), None, None).unwrap();
        assert_eq!(written, Some(1), "etc/new.conf alone");
        ostree(&ours, &["fsck"]);
        assert_eq!(
            ostree(&ours, &["ls", "-RX", second]),
            ostree(&src, &["ls", "-RX", second])
        );
        let bare = open_or_create(&dir.path().join("bare"), ostree::RepoMode::Bare).unwrap();
        assert_eq!(
            export_commit_to_archive(&src, &bare, &commit, None, None, None).unwrap(),
            None
        );
    }

    /// File objects compressed ahead go into the archive repo as the export would write them:
    /// the repo passes fsck and holds the same tree; one the commit does not hold is not
    /// renamed in, and nothing is left in tmp/. A file read from disk gets the commit's
    /// checksum. Started for a repo of another kind, nothing starts.
    #[test]
    fn file_objects_compressed_ahead_go_in_as_the_export_writes_them() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (src, ours) = (dir.path().join("src"), dir.path().join("ours"));
        let first = commit_sample_tree(dir.path(), &src, "bare-user");
        // A second commit whose new file is in the source repo but not in `first`.
        let tree = dir.path().join("tree");
        std::fs::write(tree.join("usr/other"), "only in the second commit\n").unwrap();
        let tree_arg = format!("--tree=dir={}", tree.display());
        ostree(&src, &["commit", "-b", "t2", &tree_arg]);
        let csums = |commit: &str| -> Vec<String> {
            ostree(&src, &["ls", "-RC", commit])
                .lines()
                .filter(|l| l.starts_with('-') || l.starts_with('l'))
                .filter_map(|l| Some(l.split_whitespace().nth(4)?.to_string()))
                .collect()
        };
        let first_files = csums(&first);
        assert_eq!(first_files.len(), 4, "three regular files and a symlink");
        let other = csums("t2")
            .into_iter()
            .find(|c| !first_files.contains(c))
            .unwrap();
        let ours_repo = open_or_create(&ours, ostree::RepoMode::Archive).unwrap();
        let mut ahead = first_files.clone();
        ahead.push(other.clone());
        let pre = Precompress::start(&src, &ours_repo, ahead, vec![])
            .unwrap()
            .unwrap();
        // Let it finish: the export stops it after the file it is on.
        while !pre.thread.as_ref().unwrap().is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        use std::os::unix::fs::MetadataExt;
        let inodes = |paths: Vec<PathBuf>| -> std::collections::BTreeSet<u64> {
            paths.iter().map(|p| p.metadata().unwrap().ino()).collect()
        };
        let staged = aside_in_tmp(&ours);
        assert_eq!(staged.len(), 5, "{staged:?}");
        let staged = inodes(staged.iter().map(|n| ours.join("tmp").join(n)).collect());
        let written =
            export_commit_to_archive(&src, &ours_repo, &first, None, Some(pre), None).unwrap();
        assert_eq!(written, Some(4));
        // The objects are the files compressed ahead, renamed in.
        let objects = first_files
            .iter()
            .map(|c| loose_object_path(&ours, c, "filez"))
            .collect();
        assert!(inodes(objects).is_subset(&staged));
        ostree(&ours, &["fsck"]);
        assert_eq!(
            ostree(&ours, &["ls", "-RX", &first]),
            ostree(&src, &["ls", "-RX", &first])
        );
        let unused = format!("objects/{}/{}.filez", &other[..2], &other[2..]);
        assert!(!ours.join(unused).exists());
        assert_eq!(aside_in_tmp(&ours), Vec::<String>::new());
        // Dropped unused: stopped, its files removed.
        let pre = Precompress::start(&src, &ours_repo, vec![other], vec![]).unwrap();
        drop(pre);
        assert_eq!(aside_in_tmp(&ours), Vec::<String>::new());
        // A file on disk gets the checksum the commit gave it (owner and mode from the file);
        // one with an extended attribute does not (none are read).
        let listed = |path: &str| {
            let l = ostree(&src, &["ls", "-C", &first, path]);
            l.split_whitespace()
                .find(|w| w.len() == 64)
                .unwrap()
                .to_string()
        };
        let fresh = dir.path().join("fresh");
        open_or_create(&fresh, ostree::RepoMode::Archive).unwrap();
        let mut deflater =
            libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let (csum, _tmp) = file_ahead(&tree.join("usr/bin/tool"), &fresh, &mut deflater, 6)
            .unwrap()
            .unwrap();
        assert_eq!(csum, listed("/usr/bin/tool"));
        let (csum, _tmp) = file_ahead(&tree.join("usr/empty"), &fresh, &mut deflater, 6)
            .unwrap()
            .unwrap();
        assert_ne!(csum, listed("/usr/empty"));
        assert!(file_ahead(&tree.join("nothing"), &fresh, &mut deflater, 6)
            .unwrap()
            .is_none());
        let bare = open_or_create(&dir.path().join("bare"), ostree::RepoMode::Bare).unwrap();
        assert!(Precompress::start(&src, &bare, first_files, vec![])
            .unwrap()
            .is_none());
    }
}
