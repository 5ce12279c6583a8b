//! One in-place edit of a finished ext4 filesystem: every inode's timestamps set to one
//! value, with each inode's checksum redone, so a filesystem made twice from the same commit
//! is the same. (`mke2fs -d` copied each file's ctime from the source tree, which no program
//! can set; libext2fs, which fills filesystems now, takes its times from one value already,
//! but keeps 32-bit seconds and falls back to the clock for 0: this edit writes the epoch
//! bits past 2038 and any value exactly.) Only inode table bytes change; bitmaps, group
//! descriptors and the superblock keep their checksums.
//!
//! Offsets are from the kernel's `Documentation/filesystems/ext4/` (superblock, group
//! descriptors, inodes) and e2fsprogs' `lib/ext2fs/csum.c` (the inode checksum).

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SB_MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;
const ROOT_INO: u32 = 2;

/// CRC-32C (Castagnoli) without the final inversion, as ext4 chains it
/// (`ext2fs_crc32c_le`).
fn crc32c_le(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The superblock fields this edit needs.
struct Geometry {
    block_size: u64,
    groups: u64,
    inodes_per_group: u32,
    inode_size: usize,
    first_ino: u32,
    desc_size: usize,
    gdt_block: u64,
    /// Some(seed) when inodes carry checksums (metadata_csum).
    csum_seed: Option<u32>,
    /// Group descriptors track unused inodes (gdt_csum or metadata_csum).
    uninit_bg: bool,
}

fn geometry(sb: &[u8]) -> Result<Geometry> {
    if le16(sb, 0x38) != SB_MAGIC {
        bail!("no ext4 superblock (magic {:#06x})", le16(sb, 0x38));
    }
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    let log = le32(sb, 0x18);
    if log > 6 {
        bail!("block size 2^(10+{log}) is not supported");
    }
    let block_size = 1024u64 << log;
    let mut blocks = le32(sb, 0x04) as u64;
    let is64 = incompat & INCOMPAT_64BIT != 0;
    if is64 {
        blocks |= (le32(sb, 0x150) as u64) << 32;
    }
    let first_data_block = le32(sb, 0x14) as u64;
    let per_group = le32(sb, 0x20) as u64;
    let inodes_per_group = le32(sb, 0x28);
    let rev = le32(sb, 0x4C);
    let (inode_size, first_ino) = if rev == 0 {
        (128, 11)
    } else {
        (le16(sb, 0x58) as usize, le32(sb, 0x54))
    };
    if per_group == 0 || inodes_per_group == 0 || !(128..=4096).contains(&inode_size) {
        bail!("implausible ext4 geometry");
    }
    let desc_size = if is64 { le16(sb, 0xFE) as usize } else { 32 };
    if desc_size < 32 {
        bail!("group descriptor size {desc_size} is not valid");
    }
    let csum_seed = if ro_compat & RO_COMPAT_METADATA_CSUM == 0 {
        None
    } else if incompat & INCOMPAT_CSUM_SEED != 0 {
        Some(le32(sb, 0x270))
    } else {
        Some(crc32c_le(!0, &sb[0x68..0x78]))
    };
    Ok(Geometry {
        block_size,
        groups: (blocks - first_data_block).div_ceil(per_group),
        inodes_per_group,
        inode_size,
        first_ino,
        desc_size,
        gdt_block: first_data_block + 1,
        csum_seed,
        uninit_bg: ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
    })
}

/// The inode checksum over `inode` (its checksum fields taken as zero).
fn inode_csum(seed: u32, ino: u32, inode: &[u8], has_hi: bool) -> u32 {
    let mut buf = inode.to_vec();
    put16(&mut buf, 0x7C, 0);
    if has_hi {
        put16(&mut buf, 0x82, 0);
    }
    let crc = crc32c_le(seed, &ino.to_le_bytes());
    let crc = crc32c_le(crc, &buf[0x64..0x68]); // i_generation
    crc32c_le(crc, &buf)
}

/// ext4's split of a time into the 32-bit field and the two epoch bits of its `_extra` word
/// (nanoseconds zero).
fn encode_time(t: i64) -> (u32, u32) {
    let lo = t as u32;
    let epoch_bits = ((t - lo as i32 as i64) >> 32) as u32 & 3;
    (lo, epoch_bits)
}

/// Sets atime, ctime, mtime and crtime of `inode` to `t` and redoes its checksum; checks the
/// old checksum first, so a wrong reading of the format fails loudly instead of writing
/// checksums the kernel would refuse.
fn pin_inode(g: &Geometry, ino: u32, inode: &mut [u8], t: i64) -> Result<()> {
    let extra = if g.inode_size > 128 {
        le16(inode, 0x80) as usize
    } else {
        0
    };
    if 128 + extra > g.inode_size {
        bail!("inode {ino}: extra size {extra} runs past the inode");
    }
    let has_hi = extra >= 4;
    if let Some(seed) = g.csum_seed {
        let stored = le16(inode, 0x7C) as u32
            | if has_hi {
                (le16(inode, 0x82) as u32) << 16
            } else {
                0
            };
        let mut want = inode_csum(seed, ino, inode, has_hi);
        if !has_hi {
            want &= 0xFFFF;
        }
        if stored != want {
            bail!("inode {ino}: checksum {stored:#x} does not match {want:#x}");
        }
    }
    let (lo, ebits) = encode_time(t);
    for at in [0x08, 0x0C, 0x10] {
        put32(inode, at, lo); // atime, ctime, mtime
    }
    // ctime_extra, mtime_extra, atime_extra, crtime, crtime_extra: those the inode has.
    for (at, v) in [
        (0x84, ebits),
        (0x88, ebits),
        (0x8C, ebits),
        (0x90, lo),
        (0x94, ebits),
    ] {
        if 128 + extra >= at + 4 {
            put32(inode, at, v);
        }
    }
    if let Some(seed) = g.csum_seed {
        let c = inode_csum(seed, ino, inode, has_hi);
        put16(inode, 0x7C, c as u16);
        if has_hi {
            put16(inode, 0x82, (c >> 16) as u16);
        }
    }
    Ok(())
}

/// Sets the times of every inode in use (the root directory and all files; not mke2fs' own
/// reserved inodes, which carry the fake time already) of the ext4 filesystem `offset`
/// bytes into `image` to `t`. Returns how many inodes it changed.
pub fn pin_times(image: &Path, offset: u64, t: i64) -> Result<u64> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let ctx = || format!("ext4 at byte {offset} of {}", image.display());
    let mut sb = vec![0u8; 1024];
    f.read_exact_at(&mut sb, offset + 1024).with_context(ctx)?;
    let g = geometry(&sb).with_context(ctx)?;
    let mut gdt = vec![0u8; g.groups as usize * g.desc_size];
    f.read_exact_at(&mut gdt, offset + g.gdt_block * g.block_size)
        .with_context(ctx)?;
    let mut changed = 0;
    for group in 0..g.groups {
        let d = &gdt[group as usize * g.desc_size..][..g.desc_size];
        let hi = |lo_at: usize, hi_at: usize| {
            le32(d, lo_at) as u64
                | if g.desc_size >= 64 {
                    (le32(d, hi_at) as u64) << 32
                } else {
                    0
                }
        };
        let bitmap_block = hi(0x04, 0x24);
        let table_block = hi(0x08, 0x28);
        let flags = le16(d, 0x12);
        let unused = le16(d, 0x1C) as u32
            | if g.desc_size >= 64 {
                (le16(d, 0x32) as u32) << 16
            } else {
                0
            };
        let used = if g.uninit_bg {
            if flags & BG_INODE_UNINIT != 0 {
                continue;
            }
            g.inodes_per_group
                .checked_sub(unused)
                .ok_or_else(|| anyhow!("group {group}: more unused inodes than inodes"))
                .with_context(ctx)?
        } else {
            g.inodes_per_group
        };
        if used == 0 {
            continue;
        }
        let mut bitmap = vec![0u8; (used as usize).div_ceil(8)];
        f.read_exact_at(&mut bitmap, offset + bitmap_block * g.block_size)
            .with_context(ctx)?;
        let mut table = vec![0u8; used as usize * g.inode_size];
        let table_at = offset + table_block * g.block_size;
        f.read_exact_at(&mut table, table_at).with_context(ctx)?;
        let mut dirty = false;
        for i in 0..used {
            let ino = (group * g.inodes_per_group as u64 + i as u64 + 1) as u32;
            let in_use = bitmap[i as usize / 8] & (1 << (i % 8)) != 0;
            if !in_use || (ino != ROOT_INO && ino < g.first_ino) {
                continue;
            }
            let inode = &mut table[i as usize * g.inode_size..][..g.inode_size];
            pin_inode(&g, ino, inode, t).with_context(ctx)?;
            dirty = true;
            changed += 1;
        }
        if dirty {
            f.write_all_at(&table, table_at).with_context(ctx)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // CRC-32C of "123456789" is 0xE3069283 (with the usual inversions).
        assert_eq!(!crc32c_le(!0, b"123456789"), 0xE306_9283);
    }

    /// A filesystem made twice by `mkfs_ext4` from trees made at different times is the same
    /// byte for byte, every inode carries the pinned times, and e2fsck accepts the checksums.
    #[test]
    fn pinned_filesystems_are_identical_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = 1_700_000_000u64;
        let mut images = Vec::new();
        for run in 0..2 {
            let tree = dir.path().join(format!("tree{run}"));
            std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
            std::fs::write(tree.join("etc/a"), "same content\n").unwrap();
            std::fs::hard_link(tree.join("etc/a"), tree.join("etc/sub/b")).unwrap();
            std::os::unix::fs::symlink("../a", tree.join("etc/sub/c")).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let img = dir.path().join(format!("fs{run}.img"));
            crate::image::filesystems::mkfs_ext4(
                &tree,
                &img,
                0,
                32 << 20,
                "t",
                "5f607182-93a4-4b5c-c6d7-e8f901234567",
                epoch,
            )
            .unwrap();
            let fsck = std::process::Command::new("e2fsck")
                .arg("-fn")
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                fsck.status.success(),
                "e2fsck: {}",
                String::from_utf8_lossy(&fsck.stdout)
            );
            for p in ["/", "/etc", "/etc/a", "/etc/sub/c"] {
                let out = std::process::Command::new("debugfs")
                    .arg("-R")
                    .arg(format!("stat {p}"))
                    .arg(&img)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                for field in ["ctime", "atime", "mtime", "crtime"] {
                    assert!(
                        text.contains(&format!("{field}: 0x{epoch:08x}:00000000")),
                        "{p} {field} not pinned:\n{text}"
                    );
                }
            }
            images.push(std::fs::read(&img).unwrap());
        }
        assert!(images[0] == images[1], "the two filesystems differ");
    }

    #[test]
    fn times_past_2038_use_the_epoch_bits() {
        assert_eq!(encode_time(1_700_000_000), (1_700_000_000, 0));
        assert_eq!(encode_time(0x8000_0000), (0x8000_0000, 1));
        assert_eq!(encode_time(0x1_0000_0000), (0, 1));
    }
}
