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
