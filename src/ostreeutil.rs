//! The few helpers hostforge needs over the `ostree` crate: opening or creating repos,
//! directory metadata, commit metadata dictionaries and reading them back.

use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Opens the repo at `path`, creating it with `mode` when it does not exist.
pub fn open_or_create(path: &Path, mode: ostree::RepoMode) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    if path.join("config").exists() {
        repo.open(gio::Cancellable::NONE)
            .with_context(|| format!("opening ostree repo {}", path.display()))?;
    } else {
        std::fs::create_dir_all(path)?;
        repo.create(mode, gio::Cancellable::NONE)
            .with_context(|| format!("creating ostree repo {}", path.display()))?;
    }
    Ok(repo)
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

/// Checks out `commit` into the new directory `dest` with real ownership and modes, sharing
/// inodes with the repo's objects where the repo mode allows (bare, bare-user as root).
pub fn checkout(repo: &ostree::Repo, commit: &str, dest: &std::path::Path) -> Result<()> {
    /// `AT_FDCWD`: `dest` resolves against the working directory, or is absolute.
    const AT_FDCWD: i32 = -100;
    let opts = ostree::RepoCheckoutAtOptions {
        mode: ostree::RepoCheckoutMode::None,
        ..Default::default()
    };
    repo.checkout_at(
        Some(&opts),
        AT_FDCWD,
        dest,
        commit,
        ostree::gio::Cancellable::NONE,
    )
    .with_context(|| format!("checking out {commit} to {}", dest.display()))?;
    Ok(())
}

/// Timestamp for everything built from `commit` (image filesystems, container layers):
/// SOURCE_DATE_EPOCH when set, else the commit's own time, so one commit gives one output.
pub fn commit_epoch(repo: &ostree::Repo, commit: &str) -> Result<u64> {
    if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
        return crate::source_date_epoch();
    }
    let c = repo.load_variant(ostree::ObjectType::Commit, commit)?;
    Ok(ostree::commit_get_timestamp(&c))
}
