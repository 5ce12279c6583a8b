//! Filesystems for disk images, written straight into the image file at a partition's
//! offset: ext4 formatted by `mkfs.ext4` and filled by `ext2fs` (inode times then pinned
//! by `ext4`), and the ESP as FAT by mtools. Nothing is mounted.

use super::{ext2fs, ext4, layout};
use crate::process;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Calls `f` on every entry under `dir` (not `dir` itself), without following symlinks.
pub fn walk(dir: &Path, mut f: impl FnMut(&Path, &std::fs::Metadata) -> Result<()>) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            if m.is_dir() {
                stack.push(p.clone());
            }
            f(&p, &m)?;
        }
    }
    Ok(())
}

/// Sets the atime and mtime of `p` (a symlink itself, not its target) to `t`; a directory
/// ostree made immutable has the flag lifted first.
pub fn set_time(p: &Path, is_dir: bool, t: filetime::FileTime) -> Result<()> {
    if filetime::set_symlink_file_times(p, t, t).is_ok() || !is_dir {
        return Ok(());
    }
    process::run(Command::new("chattr").arg("-i").arg(p))?;
    filetime::set_symlink_file_times(p, t, t)
        .with_context(|| format!("setting times of {}", p.display()))
}

/// Sets every timestamp under `dir` to `epoch`, symlinks included, so filesystems built
/// from it are byte-identical run after run.
pub fn clamp_times(dir: &Path, epoch: u64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(epoch as i64, 0);
    walk(dir, |p, m| set_time(p, m.is_dir(), t))?;
    set_time(dir, true, t)
}

/// Makes an ext4 filesystem of `bytes` from `dir`, `offset` bytes into `image` (a partition
/// of a disk image, or a whole new file when 0), with fixed UUID, hash seed and times:
/// `mkfs.ext4` formats (its own times from `E2FSPROGS_FAKE_TIME`), `ext2fs::Fs` copies the
/// tree in (libext2fs's times from `epoch`), and `ext4::pin_times` then makes sure every
/// inode's times are `epoch`.
pub fn mkfs_ext4(
    dir: &Path,
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
) -> Result<()> {
    if offset == 0 {
        let _ = std::fs::remove_file(image);
    }
    let mut fs = format_ext4(image, offset, bytes, label, uuid, epoch)?;
    fs.add(dir, Path::new(""))
        .with_context(|| format!("filling the {label} filesystem from {}", dir.display()))?;
    finish_ext4(fs, image, offset, label, epoch)
}

/// An empty ext4 filesystem at `offset` in `image` (made by `mkfs.ext4`), open for filling.
pub fn format_ext4(
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
) -> Result<ext2fs::Fs> {
    process::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .args(["-q", "-F", "-L", label, "-U", uuid])
            .arg("-E")
            .arg(format!("root_owner=0:0,hash_seed={uuid},offset={offset}"))
            // GRUB 2.06 cannot read ext4 with orphan_file or metadata_csum_seed.
            .args(["-O", "^orphan_file,^metadata_csum_seed"])
            .arg(image)
            .arg(format!("{}k", bytes / 1024)),
    )
    .with_context(|| format!("making the {label} filesystem"))?;
    ext2fs::Fs::open(image, offset, epoch as i64)
}

/// Where a sysroot keeps its repo's objects.
pub const OBJECTS: &str = "ostree/repo/objects";

/// A directory's path and modification time (which changes with each entry added or removed).
pub type DirStamp = (PathBuf, std::time::SystemTime);

/// The stamps of `dir` and of the directories right below it: enough to see whether
/// anything was added to or removed from a repo's objects.
pub fn dir_stamps(dir: &Path) -> Result<Vec<DirStamp>> {
    let mut stamps = vec![(dir.to_path_buf(), std::fs::metadata(dir)?.modified()?)];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            stamps.push((e.path(), e.metadata()?.modified()?));
        }
    }
    stamps.sort();
    Ok(stamps)
}

/// Closes a filled filesystem and pins its inode times to `epoch`.
pub fn finish_ext4(
    fs: ext2fs::Fs,
    image: &Path,
    offset: u64,
    label: &str,
    epoch: u64,
) -> Result<()> {
    fs.finish()
        .with_context(|| format!("writing the {label} filesystem"))?;
    ext4::pin_times(image, offset, epoch as i64)
        .with_context(|| format!("pinning the inode times of the {label} filesystem"))?;
    Ok(())
}

/// Makes the ESP (FAT, by mtools) at `offset` in `image` holding GRUB as the removable-media
/// loader. mtools takes its timestamps from SOURCE_DATE_EPOCH, so the ESP is reproducible.
#[allow(clippy::too_many_arguments)]
pub fn mkfs_esp(
    image: &Path,
    offset: u64,
    bytes: u64,
    label: &str,
    serial: &str,
    efi: &Path,
    staging: &Path,
    epoch: u64,
) -> Result<()> {
    let serial = layout::fat_serial(serial).expect("validated");
    let tree = staging.join("esp");
    let boot = tree.join("EFI/BOOT");
    std::fs::create_dir_all(&boot)?;
    std::fs::copy(efi, boot.join("BOOTX64.EFI"))?;
    clamp_times(&tree, epoch)?;
    let target = format!("{}@@{offset}", image.display());
    let sectors = bytes / 512;
    process::run(
        Command::new("mformat")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(&target)
            .args(["-F", "-h", "64", "-s", "32", "-T"])
            .arg(sectors.to_string())
            .arg("-v")
            .arg(label)
            .arg("-N")
            .arg(format!("{serial:08x}"))
            .arg("::"),
    )
    .context("making the ESP's FAT filesystem (apt-get install mtools)")?;
    process::run(
        Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .arg("-i")
            .arg(&target)
            .args(["-s", "-m", "-Q"])
            .arg(tree.join("EFI"))
            .arg("::/"),
    )
    .context("copying GRUB onto the ESP")?;
    Ok(())
}

/// Copies `len` bytes at `src_off` in `src` to `dst_off` in `dst`, reading and writing only
/// the source's data segments: the destination range is made a hole first (it reads as
/// zeros, so the copy is exact) and a sparse filesystem stays sparse. An image's partitions
/// are mostly empty, so this moves megabytes where a plain copy moves gigabytes. Where the
/// destination cannot punch holes, the range is copied whole.
pub fn copy_range_sparse(
    src: &std::fs::File,
    src_off: u64,
    len: u64,
    dst: &std::fs::File,
    dst_off: u64,
) -> Result<()> {
    use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
    use std::os::unix::fs::FileExt;
    if dst.metadata()?.len() < dst_off + len {
        dst.set_len(dst_off + len)?;
    }
    let punched = fallocate(
        dst,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        dst_off,
        len,
    );
    let end = src_off + len;
    let mut buf = vec![0u8; 1 << 20];
    let mut copy = |from: u64, to: u64| -> Result<()> {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], dst_off + (at - src_off))?;
            at += n as u64;
        }
        Ok(())
    };
    if punched.is_err() {
        return copy(src_off, end);
    }
    let mut pos = src_off;
    while pos < end {
        let data = match seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after pos: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = seek(src, SeekFrom::Hole(data))?.min(end);
        copy(data, hole)?;
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// The destination range ends up byte for byte the source range (data and holes, over
    /// old bytes), the bytes around it untouched, and the copy of a sparse file sparse.
    #[test]
    fn sparse_copy_is_exact_and_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src = std::fs::File::create_new(dir.path().join("src")).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"first", 3 << 20).unwrap();
        src.write_all_at(&vec![7u8; 3 << 20], 40 << 20).unwrap();
        let dst = std::fs::File::create_new(dir.path().join("dst")).unwrap();
        dst.write_all_at(&vec![0xAAu8; 70 << 20], 0).unwrap();
        copy_range_sparse(&src, 1 << 20, 60 << 20, &dst, 2 << 20).unwrap();
        let mut a = vec![0u8; 60 << 20];
        let mut b = vec![0u8; 60 << 20];
        src.read_exact_at(&mut a, 1 << 20).unwrap();
        dst.read_exact_at(&mut b, 2 << 20).unwrap();
        assert!(a == b, "the copied range differs");
        let mut edge = [0u8; 1];
        dst.read_exact_at(&mut edge, (2 << 20) - 1).unwrap();
        assert_eq!(edge[0], 0xAA);
        dst.read_exact_at(&mut edge, 62 << 20).unwrap();
        assert_eq!(edge[0], 0xAA);

        let fresh = std::fs::File::create_new(dir.path().join("fresh")).unwrap();
        copy_range_sparse(&src, 0, 64 << 20, &fresh, 0).unwrap();
        use std::os::unix::fs::MetadataExt;
        let blocks = fresh.metadata().unwrap().blocks() * 512;
        assert!(
            blocks < 16 << 20,
            "{blocks} bytes allocated for 3 MiB of data"
        );
    }
}
