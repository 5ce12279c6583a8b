//! Reusing the parent's initramfs: dracut is the slowest step of a node compose, and most
//! recomposes change nothing it reads.
//!
//! An initramfs is kept in the cachedir under a key of what dracut reads whatever the tree
//! holds: the kernel version, the dracut command line, `SOURCE_DATE_EPOCH`, and the whole of
//! the tree's dracut (`/usr/lib/dracut`, with hostforge's module, and `/etc/dracut.conf*`).
//! Beside it, a manifest of what dracut took from the tree: every path of its staging
//! directory, as the tree had it (a file's mode and content, a symlink's target, a directory's
//! list of names, or that the path was absent, for what dracut generated). A recompose reuses
//! the kept image only when the key is the same and every manifest entry still matches the
//! new tree. A directory's names are in the manifest so that a file added where dracut took
//! a whole directory or a glob (`/etc/modprobe.d/*.conf`) rebuilds it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Bump when what a manifest records, how dracut is run or how its image is compressed
/// (super::cpiogz) changes.
const FORMAT: &str = "hostforge-initramfs-2";

/// Kept images beyond this many (the newest by use) are removed.
const KEEP: usize = 4;

/// What dracut took from the tree: path (relative to the root) -> how the tree had it.
pub type Manifest = BTreeMap<String, Entry>;

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub enum Entry {
    Absent,
    File { mode: u32, sha256: String },
    Symlink { target: String },
    Dir { names: String },
}

#[derive(Serialize, Deserialize)]
struct Kept {
    format: String,
    /// The image's sha256: a damaged cache file is rebuilt, never booted.
    image_sha256: String,
    manifest: Manifest,
}

/// The key of what dracut reads whatever the tree holds.
pub fn key(root: &Path, kver: &str, dracut_bin: &str, args: &[String]) -> Result<String> {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    field(&mut h, FORMAT.as_bytes());
    field(&mut h, kver.as_bytes());
    field(&mut h, dracut_bin.as_bytes());
    for a in args {
        field(&mut h, a.as_bytes());
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_default();
    field(&mut h, epoch.as_bytes());
    for part in [
        dracut_bin.trim_start_matches('/'),
        "usr/lib/dracut",
        "etc/dracut.conf",
        "etc/dracut.conf.d",
    ] {
        field(&mut h, part.as_bytes());
        hash_tree(&root.join(part), &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Feeds a file, a symlink or a whole directory (sorted) into `h`; an absent path counts too.
fn hash_tree(path: &Path, h: &mut Sha256) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            h.update(b"absent\0");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    h.update(meta.mode().to_le_bytes());
    if meta.is_symlink() {
        h.update(std::fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if meta.is_dir() {
        for n in sorted_names(path)? {
            h.update(n.as_encoded_bytes());
            h.update(b"\0");
            hash_tree(&path.join(n), h)?;
        }
    } else {
        h.update(file_sha256(path)?.as_bytes());
    }
    Ok(())
}

/// The names in directory `path`, sorted.
fn sorted_names(path: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Where `rel` is in the tree at `root`, following symlinks as they would be followed with
/// `root` as `/` (an absolute target is the tree's, never the build host's). None when a
/// component is missing.
fn resolve_in(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(at.join("/")).join(&c);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        // The last component stays as it is: its entry says it is a symlink.
        if meta.is_symlink() && !todo.is_empty() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                at.clear();
            }
            for comp in target.components().rev() {
                if let Component::Normal(s) = comp {
                    todo.push(s.to_string_lossy().into_owned());
                } else if comp == Component::ParentDir {
                    todo.push("..".into());
                }
            }
        } else {
            at.push(c);
        }
    }
    Some(root.join(at.join("/")))
}

/// How the tree has `rel` now.
fn entry_of(root: &Path, rel: &str) -> Result<Entry> {
    let Some(path) = resolve_in(root, rel) else {
        return Ok(Entry::Absent);
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(_) => return Ok(Entry::Absent),
    };
    Ok(if meta.is_symlink() {
        Entry::Symlink {
            target: std::fs::read_link(&path)?.to_string_lossy().into_owned(),
        }
    } else if meta.is_dir() {
        let mut h = Sha256::new();
        for n in sorted_names(&path)? {
            h.update(n.as_encoded_bytes());
            h.update(b"\0");
        }
        Entry::Dir {
            names: hex::encode(h.finalize()),
        }
    } else {
        Entry::File {
            mode: meta.permissions().mode() & 0o7777,
            sha256: file_sha256(&path)?,
        }
    })
}

/// The manifest of a dracut staging directory (`initdir`): every file and symlink in it, as
/// `root` has it, and the names of each tree directory dracut took a regular file from (a
/// directory dracut only made, such as `/var` or `/run`, says nothing of the tree).
pub fn manifest_of_staging(root: &Path, staging: &Path) -> Result<Manifest> {
    let mut manifest = Manifest::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let here = staging.join(&dir);
        let mut took_a_file = false;
        for e in std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))? {
            let e = e?;
            let rel = if dir.is_empty() {
                e.file_name().to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", e.file_name().to_string_lossy())
            };
            let kind = e.file_type()?;
            if kind.is_dir() {
                dirs.push(rel);
                continue;
            }
            let entry = entry_of(root, &rel)?;
            took_a_file |= kind.is_file() && matches!(entry, Entry::File { .. });
            manifest.insert(rel, entry);
        }
        if took_a_file {
            let entry = entry_of(root, &dir)?;
            manifest.insert(dir, entry);
        }
    }
    Ok(manifest)
}

/// The kept images, one directory per key.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(cachedir: &Path) -> Cache {
        Cache {
            dir: cachedir.join("initramfs"),
        }
    }

    /// The kept image for `key` when every path of its manifest is as `root` has it now;
    /// otherwise None and the first path that differs (for the step's line).
    pub fn lookup(&self, key: &str, root: &Path) -> Result<Result<PathBuf, String>> {
        let entry = self.dir.join(key);
        let Ok(text) = std::fs::read(entry.join("manifest.json")) else {
            return Ok(Err("no initramfs kept for this kernel and dracut".into()));
        };
        let kept: Kept = match serde_json::from_slice(&text) {
            Ok(k) => k,
            Err(_) => return Ok(Err("the kept manifest is unreadable".into())),
        };
        if kept.format != FORMAT {
            return Ok(Err("kept by another hostforge".into()));
        }
        for (rel, was) in &kept.manifest {
            if entry_of(root, rel)? != *was {
                return Ok(Err(format!("/{rel} changed")));
            }
        }
        let image = entry.join("initramfs.img");
        match file_sha256(&image) {
            Ok(sum) if sum == kept.image_sha256 => {
                // Its age is its last use: pruning keeps what is used.
                let _ = filetime::set_file_mtime(&entry, filetime::FileTime::now());
                Ok(Ok(image))
            }
            _ => Ok(Err("the kept image is damaged".into())),
        }
    }

    /// Keeps `image` under `key` with its manifest. The entry appears whole or not at all
    /// (written aside, then renamed into place); older entries beyond [`KEEP`] are removed.
    pub fn keep(&self, key: &str, image: &Path, manifest: Manifest) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let aside = tempfile::Builder::new()
            .prefix(".new-")
            .tempdir_in(&self.dir)?;
        std::fs::copy(image, aside.path().join("initramfs.img"))?;
        let kept = Kept {
            format: FORMAT.into(),
            image_sha256: file_sha256(image)?,
            manifest,
        };
        std::fs::write(
            aside.path().join("manifest.json"),
            serde_json::to_vec(&kept)?,
        )?;
        let dest = self.dir.join(key);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        std::fs::rename(aside.keep(), &dest)
            .with_context(|| format!("keeping the initramfs in {}", dest.display()))?;
        self.prune()
    }

    fn prune(&self) -> Result<()> {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".new-") {
                // Left by an interrupted compose (the cachedir is locked: none is running).
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            entries.push((e.metadata()?.modified()?, e.path()));
        }
        entries.sort();
        while entries.len() > KEEP {
            let (_, p) = entries.remove(0);
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }
}

/// The one `dracut.*/initramfs` staging directory a `dracut --keep` left in `tmpdir`.
pub fn staging_dir(tmpdir: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(tmpdir)? {
        let p = e?.path().join("initramfs");
        if p.is_dir() {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "dracut --keep left {} staging directories in {}, expected one",
            found.len(),
            tmpdir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib/modprobe.d")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/sh"), "shell").unwrap();
        std::fs::write(r.join("usr/lib/modprobe.d/a.conf"), "options a").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        // An absolute symlink resolves inside the tree, never on the build host.
        std::os::unix::fs::symlink("/usr/lib", r.join("lib")).unwrap();
        t
    }

    #[test]
    fn paths_resolve_inside_the_tree() {
        let t = tree();
        let r = t.path();
        assert_eq!(resolve_in(r, "bin/sh"), Some(r.join("usr/bin/sh")));
        assert_eq!(
            resolve_in(r, "lib/modprobe.d/a.conf"),
            Some(r.join("usr/lib/modprobe.d/a.conf"))
        );
        assert_eq!(resolve_in(r, "bin"), Some(r.join("bin")));
        assert_eq!(
            resolve_in(r, "bin/../../../usr/bin/sh"),
            Some(r.join("usr/bin/sh"))
        );
        assert_eq!(resolve_in(r, "nope/x"), None);
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in(r, "loop/x"), None);
    }

    #[test]
    fn a_manifest_sees_changed_added_and_removed_files() {
        let t = tree();
        let r = t.path();
        let staging = tempfile::tempdir().unwrap();
        let s = staging.path();
        std::fs::create_dir_all(s.join("usr/lib/modprobe.d")).unwrap();
        std::fs::create_dir_all(s.join("usr/bin")).unwrap();
        std::fs::write(s.join("usr/bin/sh"), "").unwrap();
        std::fs::write(s.join("usr/lib/modprobe.d/a.conf"), "").unwrap();
        std::fs::write(s.join("usr/bin/generated"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", s.join("bin")).unwrap();
        let m = manifest_of_staging(r, s).unwrap();
        assert_eq!(m["usr/bin/generated"], Entry::Absent);
        assert!(matches!(m["usr/bin/sh"], Entry::File { mode: 0o644, .. }));
        assert!(matches!(m["usr/lib/modprobe.d"], Entry::Dir { .. }));
        // Only made by dracut: no file of the tree's in it.
        assert!(!m.contains_key("usr"));
        assert_eq!(
            m["bin"],
            Entry::Symlink {
                target: "usr/bin".into()
            }
        );

        let cachedir = tempfile::tempdir().unwrap();
        let cache = Cache::new(cachedir.path());
        let img = cachedir.path().join("built.img");
        std::fs::write(&img, "an initramfs").unwrap();
        cache.keep("k1", &img, m).unwrap();
        let hit = cache.lookup("k1", r).unwrap().unwrap();
        assert_eq!(std::fs::read(hit).unwrap(), b"an initramfs");
        assert!(cache.lookup("k2", r).unwrap().is_err());

        let miss = |r: &Path| cache.lookup("k1", r).unwrap().unwrap_err();
        // A file dracut took changes; its mode changes; a file appears where it took a
        // directory; a file it generated appears in the tree.
        std::fs::write(r.join("usr/bin/sh"), "other shell").unwrap();
        assert_eq!(miss(r), "/usr/bin/sh changed");
        std::fs::write(r.join("usr/bin/sh"), "shell").unwrap();
        assert!(cache.lookup("k1", r).unwrap().is_ok());
        std::fs::set_permissions(r.join("usr/bin/sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(miss(r), "/usr/bin/sh changed");
        std::fs::set_permissions(r.join("usr/bin/sh"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(r.join("usr/lib/modprobe.d/b.conf"), "options b").unwrap();
        assert_eq!(miss(r), "/usr/lib/modprobe.d changed");
        std::fs::remove_file(r.join("usr/lib/modprobe.d/b.conf")).unwrap();
        std::fs::write(r.join("usr/bin/generated"), "x").unwrap();
        assert!(miss(r).contains("changed"));
        std::fs::remove_file(r.join("usr/bin/generated")).unwrap();
        assert!(cache.lookup("k1", r).unwrap().is_ok());

        // A damaged kept image is not reused.
        std::fs::write(cachedir.path().join("initramfs/k1/initramfs.img"), "torn").unwrap();
        assert_eq!(miss(r), "the kept image is damaged");
    }

    #[test]
    fn the_key_covers_dracut_its_config_and_the_command_line() {
        let t = tree();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/lib/dracut/modules.d/90x")).unwrap();
        std::fs::write(r.join("usr/lib/dracut/modules.d/90x/module-setup.sh"), "a").unwrap();
        std::fs::write(r.join("usr/bin/dracut"), "dracut").unwrap();
        let k = |r: &Path, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            key(r, "6.1.0", "/usr/bin/dracut", &args).unwrap()
        };
        let k0 = k(r, &[]);
        assert_eq!(k0, k(r, &[]));
        assert_ne!(k0, k(r, &["--add", "x"]));
        std::fs::write(r.join("usr/lib/dracut/modules.d/90x/module-setup.sh"), "b").unwrap();
        let k1 = k(r, &[]);
        assert_ne!(k0, k1);
        std::fs::create_dir_all(r.join("etc/dracut.conf.d")).unwrap();
        std::fs::write(r.join("etc/dracut.conf.d/x.conf"), "y").unwrap();
        assert_ne!(k1, k(r, &[]));
    }

    #[test]
    fn only_the_newest_kept_images_stay() {
        let cachedir = tempfile::tempdir().unwrap();
        let cache = Cache::new(cachedir.path());
        let img = cachedir.path().join("i.img");
        std::fs::write(&img, "i").unwrap();
        for i in 0..KEEP + 2 {
            cache.keep(&format!("k{i}"), &img, Manifest::new()).unwrap();
            let past = filetime::FileTime::from_unix_time(1_000_000 + i as i64, 0);
            filetime::set_file_mtime(cachedir.path().join(format!("initramfs/k{i}")), past)
                .unwrap();
        }
        std::fs::create_dir(cachedir.path().join("initramfs/.new-torn")).unwrap();
        cache.prune().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(cachedir.path().join("initramfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["k2", "k3", "k4", "k5"]);
    }
}
