//! The package cache: each RPM is imported once into a bare-user ostree repo under
//! `--cachedir`, one ref per NEVRA (as rpm-ostree's pkgcache does), so assembling a root is a
//! hardlink checkout. The payload is read with the `rpm` crate; paths that would escape the
//! root are refused; `/var` and `/run` content becomes `tmpfiles.d` entries.

use crate::ostreeutil::{self, DirMetaCache, MetaBuilder};
use crate::rpmmd::{nevra, Solved};
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use rpm::FileType;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Bump when the import format changes so old cache entries are re-imported.
pub const IMPORT_VERSION: u32 = 2;

/// What the cache remembers about a package beside its files.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PkgInfo {
    pub nevra: String,
    pub name: String,
    pub sha256: String,
    pub import_version: u32,
    /// Non-directory paths and their ostree content checksums (for conflict checks).
    pub files: Vec<(String, String)>,
    /// Paths owned by someone other than root: (path, user, group), resolved at assembly.
    pub owners: Vec<(String, String, String)>,
    /// Files marked %doc.
    pub docs: Vec<String>,
    /// Files with a language tag: (path, lang).
    pub langs: Vec<(String, String)>,
    /// The package's tree as assembly lays it out, each directory before what it holds.
    #[serde(default)]
    pub layout: Vec<Placed>,
}

/// One entry of a package's tree in the cache commit, as libostree's user-mode checkout
/// would place it (paths relative to the root, without a leading `/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Placed {
    /// A directory and its permission bits.
    Dir(String, u32),
    /// A regular file hardlinked to its content object (checksum).
    Link(String, String),
    /// A regular file a user-mode checkout copies instead of hardlinking (it is empty, or
    /// unreadable to its owner): content object and permission bits.
    Copy(String, String, u32),
    /// A symbolic link and its target.
    Symlink(String, String),
}

/// The cache ref of a package.
pub fn pkg_ref(nevra: &str) -> String {
    let escaped: String = nevra
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c.to_string(),
            other => format!("_{:02X}", other as u32),
        })
        .collect();
    format!("hostforge/pkg/{escaped}")
}

/// Returns the cached commit of `pkg` and what the cache knows of it, if it was imported from
/// the same RPM by this version (and its import finished: a partial commit is imported again).
pub fn lookup(repo: &ostree::Repo, pkg: &Solved) -> Result<Option<(String, PkgInfo)>> {
    let Some(commit) = ostreeutil::resolve(repo, &pkg_ref(&nevra(pkg)))? else {
        return Ok(None);
    };
    let (v, state) = repo
        .load_commit(&commit)
        .with_context(|| format!("loading cache commit {commit}"))?;
    if state.contains(ostree::RepoCommitState::PARTIAL) {
        return Ok(None);
    }
    let info = info_of(&commit, &glib::VariantDict::new(Some(&v.child_value(0))))?;
    if info.sha256 == pkg.checksum && info.import_version == IMPORT_VERSION {
        Ok(Some((commit, info)))
    } else {
        Ok(None)
    }
}

pub fn read_info(repo: &ostree::Repo, commit: &str) -> Result<PkgInfo> {
    info_of(commit, &ostreeutil::commit_meta(repo, commit)?)
}

/// The package info in `meta`, the metadata of cache commit `commit`.
fn info_of(commit: &str, meta: &glib::VariantDict) -> Result<PkgInfo> {
    let json = ostreeutil::meta_str(meta, "hostforge.pkginfo")
        .ok_or_else(|| anyhow!("cache commit {commit} has no hostforge.pkginfo"))?;
    serde_json::from_str(&json).with_context(|| format!("cache commit {commit}: package info"))
}

/// The RPM lead, signature and header (everything but the payload), kept for the rpmdb and
/// the scriptlets.
pub fn read_rpm_metadata(repo: &ostree::Repo, commit: &str) -> Result<rpm::PackageMetadata> {
    let meta = ostreeutil::commit_meta(repo, commit)?;
    let bytes = ostreeutil::meta_bytes(&meta, "hostforge.rpmmeta")
        .ok_or_else(|| anyhow!("cache commit {commit} has no RPM header"))?;
    rpm::PackageMetadata::parse(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow!("cache commit {commit}: parsing RPM header: {e}"))
}

struct Entry {
    path: String,
    ftype: FileType,
    mode: u32,
    caps: Option<String>,
    linkto: Option<String>,
    digest: Option<String>,
    ghost: bool,
}

/// Splits an RPM path into components, refusing anything that is not a plain absolute path.
pub fn checked_components(path: &str) -> Result<Vec<&str>> {
    if !path.starts_with('/') {
        bail!("path {path:?} is not absolute");
    }
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for c in &comps {
        if *c == ".." || *c == "." {
            bail!("path {path:?} contains {c:?}: it could escape the root");
        }
    }
    Ok(comps)
}

/// A relative symlink target that climbs above `/` from where the link sits.
pub fn symlink_escapes(link_path: &[&str], target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = link_path.len().saturating_sub(1) as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Text capabilities (`cap_net_raw=ep`) as the `security.capability` xattr value (v2).
pub fn caps_to_xattr(text: &str) -> Result<Vec<u8>> {
    const NAMES: &[&str] = &[
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    let (mut permitted, mut inheritable, mut effective) = (0u64, 0u64, false);
    for clause in text.split_whitespace() {
        let pos = clause
            .find(['=', '+', '-'])
            .ok_or_else(|| anyhow!("capability clause {clause:?} has no =, + or -"))?;
        let (names, ops) = clause.split_at(pos);
        let mut bits = 0u64;
        for n in names.split(',').filter(|n| !n.is_empty()) {
            let n = n.to_ascii_lowercase();
            let n = n.strip_prefix("cap_").unwrap_or(&n);
            if n == "all" {
                bits = (1u64 << NAMES.len()) - 1;
                continue;
            }
            let i = NAMES
                .iter()
                .position(|x| *x == n)
                .ok_or_else(|| anyhow!("unknown capability {n:?} in {text:?}"))?;
            bits |= 1 << i;
        }
        let mut op = ' ';
        for ch in ops.chars() {
            match ch {
                '=' => {
                    op = '=';
                    permitted &= !bits;
                    inheritable &= !bits;
                }
                '+' | '-' => op = ch,
                'p' | 'i' | 'e' => {
                    let set = op != '-';
                    let target = match ch {
                        'p' => &mut permitted,
                        'i' => &mut inheritable,
                        _ => {
                            effective = set && bits != 0;
                            continue;
                        }
                    };
                    if set {
                        *target |= bits
                    } else {
                        *target &= !bits
                    }
                }
                _ => bail!("bad capability flag {ch:?} in {text:?}"),
            }
        }
    }
    let mut out = Vec::with_capacity(20);
    let magic: u32 = 0x0200_0000 | u32::from(effective);
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&(permitted as u32).to_le_bytes());
    out.extend_from_slice(&(inheritable as u32).to_le_bytes());
    out.extend_from_slice(&((permitted >> 32) as u32).to_le_bytes());
    out.extend_from_slice(&((inheritable >> 32) as u32).to_le_bytes());
    Ok(out)
}

fn caps_variant(caps: Option<&str>) -> Result<Option<glib::Variant>> {
    let Some(c) = caps.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let value = caps_to_xattr(c)?;
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"security.capability\0".to_vec(), value)];
    Ok(Some(xattrs.to_variant()))
}

fn ensure_dirs(
    repo: &ostree::Repo,
    root: &ostree::MutableTree,
    comps: &[&str],
    dirmeta: &mut DirMetaCache,
) -> Result<ostree::MutableTree> {
    let mut cur = root.clone();
    for c in comps {
        cur = match cur.lookup(c) {
            Ok((_, Some(sub))) => sub,
            Ok((Some(_), None)) => bail!("{c:?} is a file, not a directory"),
            _ => {
                let next = cur
                    .ensure_dir(c)
                    .map_err(|e| anyhow!("creating directory {c:?}: {e}"))?;
                next.set_metadata_checksum(&dirmeta.get(repo, 0, 0, 0o755)?);
                next
            }
        };
    }
    Ok(cur)
}

/// Imports the RPM at `rpm_path` (already checksum-verified) into the cache repo: its commit
/// and what the cache knows of it. `verified` sees the package's header once its digests,
/// identity and signature were checked, before the payload is unpacked.
pub fn import(
    repo: &ostree::Repo,
    rpm_path: &Path,
    pkg: &Solved,
    verifier: Option<&rpm::signature::pgp::Verifier>,
    verified: impl FnOnce(&rpm::PackageMetadata),
) -> Result<(String, PkgInfo)> {
    let nv = nevra(pkg);
    let mut payload = open_verified(rpm_path, pkg, verifier)?;
    verified(&payload.metadata);
    let mut entries = header_entries(&payload.metadata, &nv)?;
    let mut info = package_info(&payload.metadata, pkg)?;
    // Every path is checked before anything is written.
    check_paths(&entries, &nv)?;
    let cancellable = gio::Cancellable::NONE;
    // Aborted on drop: a failed import leaves no half-open transaction in the cache.
    let tx = repo.auto_transaction(cancellable)?;
    let commit = write_package(repo, &mut payload, &mut entries, &mut info, pkg)
        .with_context(|| format!("importing {nv} into the package cache"))?;
    crate::ostreeutil::commit_transaction(repo, tx, &commit)
        .with_context(|| format!("importing {nv} into the package cache"))?;
    Ok((commit, info))
}

/// The RPM at `rpm_path` opened for import, its header parsed once and checked: its digests
/// (the header's, and the payload's read as a stream: the package is never held whole in
/// memory), that it is the package the repodata promised and, for a `gpgcheck=1` repo, its
/// signature. The reader stands at the start of the payload.
fn open_verified(
    rpm_path: &Path,
    pkg: &Solved,
    verifier: Option<&rpm::signature::pgp::Verifier>,
) -> Result<rpm::PackageReader> {
    let nv = nevra(pkg);
    let reader =
        open_rpm(rpm_path).with_context(|| format!("{nv}: reading RPM {}", rpm_path.display()))?;
    let m = &reader.metadata;
    m.verify_digests()
        .map_err(anyhow::Error::from)
        .and_then(|()| check_payload_digests(m, rpm_path))
        .map_err(|e| anyhow!("{nv}: RPM digest check failed, the package is corrupt: {e:#}"))?;
    // The header must be the package the repodata promised: a repo that lists one package
    // and serves another (with a matching checksum) is refused before anything is unpacked.
    let header_nevra = nevra(&Solved {
        name: m.get_name().unwrap_or_default().to_string(),
        epoch: u64::from(m.get_epoch().unwrap_or(0)),
        version: m.get_version().unwrap_or_default().to_string(),
        release: m.get_release().unwrap_or_default().to_string(),
        arch: m.get_arch().unwrap_or_default().to_string(),
        ..pkg.clone()
    });
    if header_nevra != nv {
        bail!(
            "{nv}: the RPM from repo [{}] is {header_nevra} by its header; the repodata and \
             the package disagree",
            pkg.repo_id
        );
    }
    if let Some(v) = verifier {
        if m.signatures().map(|s| s.is_empty()).unwrap_or(true) {
            bail!(
                "{nv}: package is not signed, but its repo [{}] has gpgcheck=1",
                pkg.repo_id
            );
        }
        // The signature covers the header, and the header the payload's digest, checked above.
        m.verify_signature(v).map_err(|e| {
            anyhow!(
                "{nv}: signature check against the gpgkey of repo [{}] failed: {e}",
                pkg.repo_id
            )
        })?;
    }
    Ok(reader)
}

/// Checks the payload digests the header of the RPM at `path` gives against its payload as
/// it is in the file, read as a stream: every digest of the compressed payload present must
/// match. A package without one is accepted, as by the rpm crate (payload digests exist
/// since rpm 4.14); the `ALT` digests, of the uncompressed archive, are not checked.
fn check_payload_digests(m: &rpm::PackageMetadata, path: &Path) -> Result<()> {
    use rpm::IndexTag as T;
    use sha2::digest::DynDigest;
    use std::io::{Read, Seek};
    let hasher = |tag| -> Box<dyn DynDigest> {
        match tag {
            T::RPMTAG_PAYLOADSHA256 => Box::new(sha2::Sha256::default()),
            T::RPMTAG_PAYLOAD_SHA512 => Box::new(sha2::Sha512::default()),
            _ => Box::new(sha3::Sha3_256::default()),
        }
    };
    let mut checks: Vec<(T, &str, Box<dyn DynDigest>)> = [
        T::RPMTAG_PAYLOADSHA256,
        T::RPMTAG_PAYLOAD_SHA512,
        T::RPMTAG_PAYLOAD_SHA3_256,
    ]
    .into_iter()
    .filter_map(|tag| {
        Some((
            tag,
            m.header.get_entry_data_as_string(tag).ok()?,
            hasher(tag),
        ))
    })
    .collect();
    if checks.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(
        m.get_package_segment_offsets().payload,
    ))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        checks.iter_mut().for_each(|(_, _, h)| h.update(&buf[..n]));
    }
    for (tag, expected, h) in checks {
        let actual = hex::encode(h.finalize());
        if actual != expected {
            bail!(
                "payload digest {tag:?} mismatch: the header says {expected}, the payload is \
                 {actual}"
            );
        }
    }
    Ok(())
}

/// Opens an RPM file whose header structure was checked first: the rpm crate indexes its
/// header store with the offsets the file gives, and panics on one that points outside it
/// (found by `crate::fuzz`).
pub(crate) fn open_rpm(path: &Path) -> Result<rpm::PackageReader> {
    let mut f = std::fs::File::open(path)?;
    check_header_bounds(&mut f)?;
    rpm::PackageReader::open(path).map_err(|e| anyhow!("{e}"))
}

/// Checks the signature header and the main header of an RPM: every index entry's data lies
/// inside its header's data store, and the sizes are sane.
fn check_header_bounds(mut f: impl std::io::Read) -> Result<()> {
    const LEAD: usize = 96;
    const MAX_STORE: usize = 256 << 20;
    let mut lead = [0u8; LEAD];
    f.read_exact(&mut lead).context("not an RPM: too short")?;
    if lead[..4] != [0xed, 0xab, 0xee, 0xdb] {
        bail!("not an RPM: no lead magic");
    }
    for (which, pad) in [("signature header", true), ("header", false)] {
        let mut intro = [0u8; 16];
        f.read_exact(&mut intro)
            .with_context(|| format!("truncated {which}"))?;
        if intro[..3] != [0x8e, 0xad, 0xe8] {
            bail!("{which}: bad magic");
        }
        let nindex = u32::from_be_bytes(intro[8..12].try_into().unwrap()) as usize;
        let hsize = u32::from_be_bytes(intro[12..16].try_into().unwrap()) as usize;
        if nindex > MAX_STORE / 16 || hsize > MAX_STORE {
            bail!("{which}: {nindex} entries, {hsize} bytes of data: too large");
        }
        let mut index = vec![0u8; nindex * 16];
        f.read_exact(&mut index)
            .with_context(|| format!("truncated {which} index"))?;
        for e in index.chunks_exact(16) {
            let word = |i: usize| u32::from_be_bytes(e[i..i + 4].try_into().unwrap()) as usize;
            let (tag, ty, offset, count) = (word(0), word(4), word(8), word(12));
            let size = match ty {
                0..=2 | 7 => Some(1),
                3 => Some(2),
                4 => Some(4),
                5 => Some(8),
                // Strings: at least one byte each.
                6 | 8 | 9 => Some(1),
                _ => None,
            };
            let end = size.and_then(|s| count.checked_mul(s)?.checked_add(offset));
            if end.is_none_or(|end| end > hsize) {
                bail!(
                    "{which}: entry for tag {tag} (type {ty}, {count} items at offset \
                     {offset}) lies outside its {hsize}-byte data store"
                );
            }
        }
        let mut store = hsize;
        if pad {
            store = store.div_ceil(8) * 8;
        }
        let mut skip = vec![0u8; store];
        f.read_exact(&mut skip)
            .with_context(|| format!("truncated {which} data"))?;
    }
    Ok(())
}

/// The package's files as its header lists them (their contents come from the payload).
fn header_entries(metadata: &rpm::PackageMetadata, nv: &str) -> Result<Vec<Entry>> {
    let files = metadata
        .get_file_entries()
        .map_err(|e| anyhow!("{nv}: reading file list: {e}"))?;
    Ok(files
        .iter()
        .map(|m| Entry {
            path: m.path().to_string_lossy().into_owned(),
            ftype: m.file_type(),
            mode: u32::from(m.mode().raw_mode()) & 0o7777,
            caps: m.caps().map(str::to_string),
            linkto: m.linkto().map(str::to_string),
            digest: m.digest().map(|d| d.to_string()),
            ghost: m.flags().contains(rpm::FileFlags::GHOST),
        })
        .collect())
}

/// Reads the payload one file at a time: `each` gets the path and, for an entry the payload
/// carries content for, that content (never more than the header declares: a payload that
/// decompresses to more, a decompression bomb or a lying header, is refused before it fills
/// memory). Only one file's content is in memory at a time.
fn read_payload(
    reader: &mut rpm::PackageReader,
    nv: &str,
    mut each: impl FnMut(&str, Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    use std::io::Read;
    let mut content = Vec::new();
    while let Some(mut f) = reader
        .next_file()
        .map_err(|e| anyhow!("{nv}: payload is corrupt: {e}"))?
    {
        let path = f.metadata.path().to_string_lossy().into_owned();
        let declared = f.metadata.size() as u64;
        content.clear();
        (&mut f)
            .take(declared + 1)
            .read_to_end(&mut content)
            .map_err(|e| anyhow!("{nv}: payload is corrupt at {path}: {e}"))?;
        if content.len() as u64 > declared {
            bail!(
                "{nv}: the payload holds more than the {declared} bytes the header declares for \
                 {path}; refusing the package (corrupt, or a decompression bomb)"
            );
        }
        let has_payload = f.has_payload();
        f.finish()
            .map_err(|e| anyhow!("{nv}: payload is corrupt at {path}: {e}"))?;
        drop(f);
        each(&path, has_payload.then_some(content.as_slice()))?;
    }
    Ok(())
}

/// Per-file facts kept beside the tree: owners, docs, languages.
fn package_info(metadata: &rpm::PackageMetadata, pkg: &Solved) -> Result<PkgInfo> {
    let nv = nevra(pkg);
    let mut info = PkgInfo {
        nevra: nv.clone(),
        name: pkg.name.clone(),
        sha256: pkg.checksum.clone(),
        import_version: IMPORT_VERSION,
        ..Default::default()
    };
    let file_entries = metadata
        .get_file_entries()
        .map_err(|e| anyhow!("{nv}: reading file list: {e}"))?;
    for m in &file_entries {
        let p = m.path().to_string_lossy().into_owned();
        if m.user() != "root" || m.group() != "root" {
            info.owners
                .push((p.clone(), m.user().to_string(), m.group().to_string()));
        }
        if m.flags().contains(rpm::FileFlags::DOC) {
            info.docs.push(p.clone());
        }
        if let Some(l) = m.language().filter(|l| !l.is_empty()) {
            info.langs.push((p, l.to_string()));
        }
    }
    Ok(info)
}

/// Refuses paths that are not plain absolute paths, symlinks that point outside the root and
/// files under a symlink of the same package.
fn check_paths(entries: &[Entry], nv: &str) -> Result<()> {
    let mut symlinks: Vec<String> = Vec::new();
    for e in entries {
        let comps = checked_components(&e.path).map_err(|err| anyhow!("{nv}: refusing {err}"))?;
        if e.ftype == FileType::SymbolicLink {
            let target = e.linkto.as_deref().unwrap_or_default();
            if symlink_escapes(&comps, target) {
                bail!(
                    "{nv}: refusing symlink {} -> {target}: it points outside the root",
                    e.path
                );
            }
            symlinks.push(format!("{}/", e.path));
        }
    }
    for e in entries {
        if let Some(link) = symlinks.iter().find(|l| e.path.starts_with(l.as_str())) {
            bail!(
                "{nv}: refusing {}: it lies under the symlink {} in the same package",
                e.path,
                link.trim_end_matches('/')
            );
        }
    }
    Ok(())
}

/// The tree of one package as it is written: directory metadata by mode, content objects by
/// digest (hardlinks in the payload share one), hardlinks whose content comes later.
struct PkgTree<'r> {
    repo: &'r ostree::Repo,
    mtree: ostree::MutableTree,
    dirmeta: DirMetaCache,
    by_digest: HashMap<String, String>,
    deferred: Vec<(Vec<String>, String, String)>,
    /// What each content object written is: a regular file (mode, empty) or a symlink.
    objects: HashMap<String, Object>,
}

enum Object {
    Regular { mode: u32, empty: bool },
    Symlink(String),
}

impl<'r> PkgTree<'r> {
    fn new(repo: &'r ostree::Repo) -> Result<Self> {
        let mut t = PkgTree {
            repo,
            mtree: ostree::MutableTree::new(),
            dirmeta: DirMetaCache::default(),
            by_digest: HashMap::new(),
            deferred: Vec::new(),
            objects: HashMap::new(),
        };
        let root_meta = t.dirmeta.get(repo, 0, 0, 0o755)?;
        t.mtree.set_metadata_checksum(&root_meta);
        Ok(t)
    }

    /// A regular file: its content object, or, for a hardlink whose content comes later in
    /// the payload, a deferred link.
    fn regular(&mut self, comps: &[&str], e: &Entry, content: Option<&[u8]>) -> Result<()> {
        let key = e.digest.clone().unwrap_or_default() + &format!(":{:o}", e.mode);
        let (name, parent) = comps.split_last().unwrap();
        let dir = ensure_dirs(self.repo, &self.mtree, parent, &mut self.dirmeta)?;
        let Some(content) = content else {
            if e.digest.is_some() {
                self.deferred.push((
                    comps.iter().map(|s| s.to_string()).collect(),
                    key,
                    e.path.clone(),
                ));
                return Ok(());
            }
            bail!("{} has no content in the payload", e.path);
        };
        let xattrs = caps_variant(e.caps.as_deref())
            .with_context(|| format!("{}: file capabilities", e.path))?;
        let csum = self.repo.write_regfile_inline(
            None,
            0,
            0,
            libc::S_IFREG | e.mode,
            xattrs.as_ref(),
            content,
            gio::Cancellable::NONE,
        )?;
        if e.digest.is_some() {
            self.by_digest.insert(key, csum.to_string());
        }
        self.objects.insert(
            csum.to_string(),
            Object::Regular {
                mode: e.mode & 0o7777,
                empty: content.is_empty(),
            },
        );
        dir.replace_file(name, &csum)?;
        Ok(())
    }

    fn dir(&mut self, comps: &[&str], mode: u32) -> Result<()> {
        let d = ensure_dirs(self.repo, &self.mtree, comps, &mut self.dirmeta)?;
        d.set_metadata_checksum(&self.dirmeta.get(self.repo, 0, 0, mode)?);
        Ok(())
    }

    fn symlink(&mut self, comps: &[&str], target: &str) -> Result<String> {
        let (name, parent) = comps.split_last().unwrap();
        let dir = ensure_dirs(self.repo, &self.mtree, parent, &mut self.dirmeta)?;
        let csum = self
            .repo
            .write_symlink(None, 0, 0, None, target, gio::Cancellable::NONE)?;
        self.objects
            .insert(csum.to_string(), Object::Symlink(target.to_string()));
        dir.replace_file(name, &csum)?;
        Ok(csum.to_string())
    }

    /// The entries under `dir` (at `prefix`) in a checkout's order: its files by name, then
    /// each subdirectory and what it holds.
    fn layout(&self, prefix: &str, dir: &ostree::MutableTree, out: &mut Vec<Placed>) -> Result<()> {
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            }
        };
        let files: BTreeMap<String, String> = dir.copy_files().into_iter().collect();
        for (name, csum) in files {
            let path = join(&name);
            out.push(match self.objects.get(&csum) {
                Some(Object::Symlink(target)) => Placed::Symlink(path, target.clone()),
                // As libostree's user-mode checkout: empty files and files their owner cannot
                // read are copied, never hardlinked.
                Some(&Object::Regular { mode, empty }) if empty || mode & 0o400 == 0 => {
                    Placed::Copy(path, csum, mode)
                }
                Some(Object::Regular { .. }) => Placed::Link(path, csum),
                None => bail!("{path}: no object recorded for {csum}"),
            });
        }
        let subdirs: BTreeMap<String, ostree::MutableTree> =
            dir.copy_subdirs().into_iter().collect();
        for (name, sub) in subdirs {
            let path = join(&name);
            let meta = sub.metadata_checksum();
            let mode = self
                .dirmeta
                .mode_of(&meta)
                .ok_or_else(|| anyhow!("{path}: unknown directory metadata {meta}"))?;
            out.push(Placed::Dir(path.clone(), mode));
            self.layout(&path, &sub, out)?;
        }
        Ok(())
    }

    /// Hardlinks whose content came after them in the payload.
    fn link_deferred(&mut self, nv: &str) -> Result<()> {
        for (comps, digest, path) in std::mem::take(&mut self.deferred) {
            let comps: Vec<&str> = comps.iter().map(String::as_str).collect();
            let csum = self.by_digest.get(&digest).cloned().ok_or_else(|| {
                anyhow!("{nv}: {path} is a hardlink whose content is missing from the payload")
            })?;
            let (name, parent) = comps.split_last().unwrap();
            let dir = ensure_dirs(self.repo, &self.mtree, parent, &mut self.dirmeta)?;
            dir.replace_file(name, &csum)?;
        }
        Ok(())
    }
}

/// Writes the package's tree and its commit (with the header and `info`) into the open
/// transaction, and points the package's ref at it.
fn write_package(
    repo: &ostree::Repo,
    payload: &mut rpm::PackageReader,
    entries: &mut [Entry],
    info: &mut PkgInfo,
    pkg: &Solved,
) -> Result<String> {
    let nv = nevra(pkg);
    let cancellable = gio::Cancellable::NONE;
    let mut tree = PkgTree::new(repo)?;
    // Directories first so their modes apply, then symlinks; regular files as the payload
    // streams by.
    entries.sort_by(|a, b| {
        (a.ftype != FileType::Dir)
            .cmp(&(b.ftype != FileType::Dir))
            .then(a.path.cmp(&b.path))
    });
    let mut tmpfiles: Vec<String> = Vec::new();
    for e in entries.iter() {
        let comps = checked_components(&e.path)?;
        if matches!(comps.first(), Some(&"var") | Some(&"run")) {
            tmpfiles.extend(tmpfiles_line(e, &comps).map_err(|err| anyhow!("{nv}: {err}"))?);
            continue;
        }
        if e.ghost || comps.is_empty() {
            continue;
        }
        match e.ftype {
            FileType::Dir => tree.dir(&comps, e.mode)?,
            FileType::SymbolicLink => {
                let csum = tree.symlink(&comps, e.linkto.as_deref().unwrap_or_default())?;
                info.files.push((e.path.clone(), csum));
            }
            // Device nodes, FIFOs and sockets cannot live in an ostree commit.
            _ => {}
        }
    }
    let index: HashMap<&str, &Entry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();
    read_payload(payload, &nv, |path, content| {
        let Some(e) = index
            .get(path)
            .filter(|e| e.ftype == FileType::Regular && !e.ghost)
        else {
            return Ok(());
        };
        let comps = checked_components(&e.path)?;
        if matches!(comps.first(), Some(&"var") | Some(&"run")) {
            // Content in /var is shipped in /usr/share/factory and copied at boot.
            let mut fac = vec!["usr", "share", "factory"];
            fac.extend(&comps);
            tree.regular(&fac, e, content)
        } else if comps.is_empty() {
            Ok(())
        } else {
            tree.regular(&comps, e, content)
        }
    })?;
    tree.link_deferred(&nv)?;
    for (path, csum) in by_digest_paths(entries, &tree.by_digest) {
        info.files.push((path, csum));
    }
    if !tmpfiles.is_empty() {
        tmpfiles.sort();
        tmpfiles.dedup();
        let text = format!(
            "# Generated by hostforge from {nv}'s /var and /run content\n{}\n",
            tmpfiles.join("\n")
        );
        let e = Entry {
            path: String::new(),
            ftype: FileType::Regular,
            mode: 0o644,
            caps: None,
            linkto: None,
            digest: None,
            ghost: false,
        };
        let name = format!("pkg-{}.conf", pkg.name);
        tree.regular(
            &["usr", "lib", "tmpfiles.d", &name],
            &e,
            Some(text.as_bytes()),
        )?;
    }
    info.files.sort();
    tree.layout("", &tree.mtree, &mut info.layout)?;
    let root = repo.write_mtree(&tree.mtree, cancellable)?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a RepoFile"))?;
    let mut header = Vec::new();
    payload
        .metadata
        .write(&mut header)
        .map_err(|e| anyhow!("{nv}: serializing header: {e}"))?;
    let meta = MetaBuilder::new()
        .str("hostforge.pkginfo", &serde_json::to_string(&info)?)
        .bytes("hostforge.rpmmeta", &header)
        .end();
    let commit =
        repo.write_commit_with_time(None, Some(&nv), None, Some(&meta), &root, 0, cancellable)?;
    repo.transaction_set_ref(None, &pkg_ref(&nv), Some(&commit));
    crate::process::fault_point("import");
    Ok(commit.to_string())
}

/// Regular files keyed by path with their checksums (content files and their hardlinks).
fn by_digest_paths(
    entries: &[Entry],
    by_digest: &HashMap<String, String>,
) -> Vec<(String, String)> {
    entries
        .iter()
        .filter(|e| e.ftype == FileType::Regular && !e.ghost)
        .filter(|e| !matches!(e.path.split('/').nth(1), Some("var" | "run")))
        .filter_map(|e| {
            let key = e.digest.clone().unwrap_or_default() + &format!(":{:o}", e.mode);
            by_digest.get(&key).map(|c| (e.path.clone(), c.clone()))
        })
        .collect()
}

/// The `tmpfiles.d` line that recreates a /var or /run entry at boot.
fn tmpfiles_line(e: &Entry, comps: &[&str]) -> Result<Option<String>> {
    let shown = format!("/{}", comps.join("/"));
    let path = crate::validate::tmpfiles_path(&shown)?;
    Ok(match e.ftype {
        FileType::Dir => Some(format!("d {path} {:04o} root root - -", e.mode)),
        FileType::SymbolicLink => {
            let target = e.linkto.as_deref().unwrap_or_default();
            let target = crate::validate::tmpfiles_link_target(&shown, target)?;
            Some(format!("L {path} - - - - {target}"))
        }
        FileType::Regular if !e.ghost => Some(format!(
            "C {path} - - - - /usr/share/factory{}",
            shown.replace('%', "%%")
        )),
        _ => None,
    })
}

/// Groups packages by name for messages: `name -> nevra`.
pub fn nevra_index(infos: &[PkgInfo]) -> BTreeMap<String, String> {
    infos
        .iter()
        .map(|i| (i.name.clone(), i.nevra.clone()))
        .collect()
}

/// Everything compose reads of an RPM file, errors ignored: for the parser tests in
/// `crate::fuzz`, which feed it mutated packages.
#[cfg(test)]
pub(crate) fn read_all_for_tests(path: &Path) {
    let Ok(mut reader) = open_rpm(path) else {
        return;
    };
    let m = &reader.metadata.clone();
    let solved = Solved {
        name: m.get_name().unwrap_or_default().to_string(),
        epoch: m.get_epoch().unwrap_or_default().into(),
        version: m.get_version().unwrap_or_default().to_string(),
        release: m.get_release().unwrap_or_default().to_string(),
        arch: m.get_arch().unwrap_or_default().to_string(),
        repo_id: "fuzz".into(),
        location: "fuzz.rpm".into(),
        checksum_type: "sha256".into(),
        checksum: String::new(),
        download_size: 0,
    };
    let _ = package_info(m, &solved);
    let _ = check_payload_digests(m, path);
    if let Ok(entries) = header_entries(m, "fuzz") {
        let _ = check_paths(&entries, "fuzz");
    }
    let _ = read_payload(&mut reader, "fuzz", |_, _| Ok(()));
    let _ = m.get_pre_install_script();
    let _ = m.get_post_install_script();
    let _ = m.get_post_trans_script();
    let _ = m.get_trans_file_triggers();
    let _ = m.header_bytes();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repo whose repodata names one package and serves another (its checksum matching the
    /// file served) is refused before the payload is read.
    #[test]
    fn a_header_that_disagrees_with_the_repodata_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("evil.rpm");
        rpm::PackageBuilder::new("evil", "6.6", "MIT", "x86_64", "not what was listed")
            .release("1")
            .build()
            .unwrap()
            .write_file(&path)
            .unwrap();
        let solved = |name: &str, epoch: u64| Solved {
            name: name.into(),
            epoch,
            version: "6.6".into(),
            release: "1".into(),
            arch: "x86_64".into(),
            repo_id: "mirror".into(),
            location: "evil.rpm".into(),
            checksum_type: "sha256".into(),
            checksum: String::new(),
            download_size: 0,
        };
        if let Err(e) = open_verified(&path, &solved("evil", 0), None) {
            panic!("{e:#}");
        }
        for (name, epoch) in [("glibc", 0), ("evil", 1)] {
            let e = format!(
                "{:#}",
                open_verified(&path, &solved(name, epoch), None)
                    .err()
                    .expect("refused")
            );
            assert!(
                e.contains("is evil-6.6-1.x86_64 by its header") && e.contains("[mirror]"),
                "{e}"
            );
        }
    }

    /// A payload that unpacks to more than the header declares (here: another package's
    /// payload, 1 MiB of zeros where the header says 10 bytes) is refused, not read whole.
    #[test]
    fn a_payload_larger_than_its_header_says_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let build = |content: Vec<u8>, path: &Path| {
            let src = d.path().join("x");
            std::fs::write(&src, content).unwrap();
            rpm::PackageBuilder::new("bomb", "1", "MIT", "noarch", "small, it says")
                .release("1")
                .with_file(&src, rpm::FileOptions::new("/usr/share/x"))
                .unwrap()
                .build()
                .unwrap()
                .write_file(path)
                .unwrap();
        };
        let (small, big) = (d.path().join("small.rpm"), d.path().join("big.rpm"));
        build(b"ten bytes\n".to_vec(), &small);
        build(vec![0u8; 1 << 20], &big);
        // The files the payload hands over, one at a time.
        let read = |p: &Path| -> Result<Vec<(String, usize)>> {
            let mut reader = rpm::PackageReader::open(p).unwrap();
            let mut seen = Vec::new();
            read_payload(&mut reader, "bomb", |path, content| {
                seen.push((path.to_string(), content.map_or(0, <[u8]>::len)));
                Ok(())
            })?;
            Ok(seen)
        };
        assert_eq!(read(&small).unwrap(), [("/usr/share/x".to_string(), 10)]);
        let header_end = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            let mut cur = std::io::Cursor::new(&bytes);
            check_header_bounds(&mut cur).unwrap();
            (bytes.clone(), cur.position() as usize)
        };
        let (s, s_end) = header_end(&small);
        let (b, b_end) = header_end(&big);
        let franken = d.path().join("franken.rpm");
        std::fs::write(&franken, [&s[..s_end], &b[b_end..]].concat()).unwrap();
        let Err(e) = read(&franken) else {
            panic!("the oversized payload was read");
        };
        let e = format!("{e:#}");
        assert!(
            e.contains("more than the 10 bytes the header declares for /usr/share/x"),
            "{e}"
        );
    }

    #[test]
    fn dotdot_paths_are_refused() {
        assert!(checked_components("/usr/../../etc/shadow").is_err());
        assert!(checked_components("usr/bin/x").is_err());
        assert_eq!(
            checked_components("/usr//bin/x").unwrap(),
            ["usr", "bin", "x"]
        );
    }

    #[test]
    fn symlink_escape_detection() {
        assert!(symlink_escapes(&["usr", "lib", "x"], "../../../etc"));
        assert!(!symlink_escapes(&["usr", "lib", "x"], "../../etc"));
        assert!(!symlink_escapes(&["usr", "lib", "x"], "/etc/shadow"));
        assert!(!symlink_escapes(&["usr", "lib", "x"], "a/../b"));
    }

    #[test]
    fn caps_text_to_xattr() {
        let v = caps_to_xattr("cap_net_raw=ep").unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(u32::from_le_bytes(v[0..4].try_into().unwrap()), 0x0200_0001);
        assert_eq!(u32::from_le_bytes(v[4..8].try_into().unwrap()), 1 << 13);
        let v = caps_to_xattr("cap_net_admin,cap_net_raw+p").unwrap();
        assert_eq!(u32::from_le_bytes(v[0..4].try_into().unwrap()), 0x0200_0000);
        assert_eq!(
            u32::from_le_bytes(v[4..8].try_into().unwrap()),
            (1 << 12) | (1 << 13)
        );
        assert!(caps_to_xattr("cap_bogus=ep").is_err());
    }

    #[test]
    fn refs_are_escaped() {
        assert_eq!(
            pkg_ref("foo-1:2.0-1.x86_64"),
            "hostforge/pkg/foo-1_3A2.0-1.x86_64"
        );
    }
}
