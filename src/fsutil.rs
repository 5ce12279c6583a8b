//! Small file helpers shared by the pipelines.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` by writing a temporary file beside it and renaming it over
/// `path`: a reader (or a full disk, or a kill) sees the old file or the new one, never a
/// part of the new one.
pub fn write_replacing(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".hostforge-")
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Gives `path`, a regular file with other hardlinks, an inode of its own: the same content,
/// mode and extended attributes in a new file renamed over it (the other links keep the old
/// inode, untouched). A file with no other link, or none at all, is left as it is.
pub fn unshare_hardlink(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_file() || meta.nlink() < 2 {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".hostforge-")
        .tempfile_in(dir)
        .with_context(|| format!("copying {}", path.display()))?;
    let copy = || -> Result<()> {
        // Content, owner, mode (after the owner: chown clears setuid bits), then the extended
        // attributes one by one (after the owner too: chown drops security.capability).
        std::fs::copy(path, tmp.path())?;
        std::os::unix::fs::lchown(tmp.path(), Some(meta.uid()), Some(meta.gid()))?;
        std::fs::set_permissions(tmp.path(), meta.permissions())?;
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(path, &mut names)?;
        for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(path, name, &mut value)?;
            rustix::fs::lsetxattr(
                tmp.path(),
                name,
                &value[..len],
                rustix::fs::XattrFlags::empty(),
            )?;
        }
        Ok(())
    };
    copy().with_context(|| format!("copying {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Whether an error was caused by a full filesystem (ENOSPC or EDQUOT anywhere in its chain,
/// as an I/O error or in a message from a program, or libostree's refusal to eat into a
/// repo's `min-free-space` reserve).
pub fn out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }) || {
            let s = c.to_string();
            s.contains("No space left on device")
                || s.contains("Disk quota exceeded")
                // sqlite's SQLITE_FULL, through rpmdb
                || s.contains("database or disk is full")
                || (s.contains("min-free-space") && s.contains("would be exceeded"))
        }
    })
}

/// Free bytes on the filesystem holding `path` (None if it cannot be asked).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail * st.f_frsize)
}

/// When `e` comes from a full filesystem, adds what to do: "out of disk space: make room
/// {joined places}{hint}", each place with the room left on it. Other errors pass unchanged.
pub fn explain_out_of_space(
    e: anyhow::Error,
    places: &[(&str, &Path)],
    joiner: &str,
    hint: &str,
) -> anyhow::Error {
    if !out_of_space(&e) {
        return e;
    }
    let room: Vec<String> = places
        .iter()
        .map(|(what, p)| match free_bytes(p) {
            Some(b) => format!("{what} {} ({} KiB free)", p.display(), b / 1024),
            None => format!("{what} {}", p.display()),
        })
        .collect();
    e.context(format!(
        "out of disk space: make room {}{hint}",
        room.join(joiner)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The unshared file keeps content, owner, setuid mode and xattrs on an inode of its own;
    /// its other link is untouched; a file with one link, or none, is left alone.
    #[test]
    fn unsharing_a_hardlink_keeps_the_file_as_it_was() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (cached, tree) = (dir.path().join("cached"), dir.path().join("tree"));
        std::fs::write(&cached, b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::chown(&cached, Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o4755)).unwrap();
        rustix::fs::setxattr(
            &cached,
            "user.test",
            b"kept",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::hard_link(&cached, &tree).unwrap();
        unshare_hardlink(&tree).unwrap();
        let (c, t) = (
            std::fs::metadata(&cached).unwrap(),
            std::fs::metadata(&tree).unwrap(),
        );
        assert_ne!(c.ino(), t.ino());
        assert_eq!((c.nlink(), t.nlink()), (1, 1));
        assert_eq!(
            std::fs::read(&tree).unwrap(),
            std::fs::read(&cached).unwrap()
        );
        assert_eq!((t.uid(), t.gid(), t.mode()), (1000, 1001, c.mode()));
        assert_eq!(t.mode() & 0o7777, 0o4755);
        let mut v = [0u8; 16];
        let n = rustix::fs::getxattr(&tree, "user.test", &mut v).unwrap();
        assert_eq!(&v[..n], b"kept");
        let before = std::fs::metadata(&tree).unwrap().ino();
        unshare_hardlink(&tree).unwrap();
        assert_eq!(std::fs::metadata(&tree).unwrap().ino(), before);
        unshare_hardlink(&dir.path().join("gone")).unwrap();
    }
}
