//! Compressing dracut's archive on every core.
//!
//! dracut compresses its image with a single `gzip -9` (pigz only when the tree has it), which
//! is most of its run time. When the treefile and the tree's dracut config leave the
//! compressor to dracut's default, hostforge runs dracut with `--no-compress` and compresses
//! the archive itself: the main archive is cut at entry boundaries into pieces of about
//! [`PIECE`] bytes, and each piece becomes one gzip member (libdeflate, level 9), compressed
//! in parallel and written in order. The kernel's initramfs format allows exactly this: a
//! sequence of gzip-compressed cpio archives, each of whole entries, the last with the
//! trailer (Documentation/driver-api/early-userspace/buffer-format.rst), and `zcat` reads the
//! members as one stream. The cut points depend only on the archive, so the image is the same
//! whatever the number of cores. A leading early archive (microcode, marked by the
//! `early_cpio` entry) stays uncompressed, as dracut leaves it: the kernel reads it before it
//! decompresses anything.

use anyhow::{bail, Result};

/// About how many bytes of the archive go into one gzip member.
pub const PIECE: usize = 8 << 20;

/// libdeflate level 9: smaller than `gzip -9` output, and several times faster.
const LEVEL: i32 = 9;

/// The args (treefile `initramfs-args`) that choose dracut's compression.
const COMPRESS_ARGS: &[&str] = &[
    "--compress",
    "--no-compress",
    "--gzip",
    "--bzip2",
    "--lzma",
    "--xz",
    "--lzo",
    "--lz4",
    "--zstd",
];

/// Why dracut should compress (the treefile or the tree's config chose a compressor), or None
/// when hostforge may.
pub fn chosen_by_user(root: &std::path::Path, args: &[String]) -> Result<Option<String>> {
    if let Some(a) = args.iter().find(|a| {
        COMPRESS_ARGS
            .iter()
            .any(|c| a.as_str() == *c || a.starts_with(&format!("{c}=")))
    }) {
        return Ok(Some(format!("initramfs-args has {a}")));
    }
    let mut confs = vec![root.join("etc/dracut.conf")];
    for dir in ["etc/dracut.conf.d", "usr/lib/dracut/dracut.conf.d"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries {
                confs.push(e?.path());
            }
        }
    }
    confs.sort();
    for conf in confs {
        let Ok(text) = std::fs::read_to_string(&conf) else {
            continue;
        };
        let sets = text.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix("compress")
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        if sets {
            let rel = conf.strip_prefix(root).unwrap_or(&conf);
            return Ok(Some(format!("/{} sets compress=", rel.display())));
        }
    }
    Ok(None)
}

/// Bytes at an offset: the archive as a file (streamed) or, in tests, in memory.
pub trait ReadAt {
    /// Fills `buf` from offset `at`; an error when the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, at)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        let src = usize::try_from(at)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One parsed newc/crc entry header: where the next entry starts, and its name.
struct Header {
    next: u64,
    name: Vec<u8>,
}

fn hex_field(head: &[u8], at: u64, i: usize) -> Result<u64> {
    let f = &head[6 + 8 * i..14 + 8 * i];
    let s = std::str::from_utf8(f).map_err(|_| anyhow::anyhow!("bad cpio header at {at}"))?;
    u64::from_str_radix(s, 16).map_err(|_| anyhow::anyhow!("bad cpio header at {at}"))
}

fn header_at(src: &(impl ReadAt + ?Sized), len: u64, at: u64) -> Result<Header> {
    let mut head = [0u8; 110];
    if len < at + 110
        || src.read_exact_at(&mut head, at).is_err()
        || !(head.starts_with(b"070701") || head.starts_with(b"070702"))
    {
        bail!("dracut's archive has no cpio (newc) header at byte {at}");
    }
    let size = hex_field(&head, at, 6)?;
    let namesize = hex_field(&head, at, 11)?;
    let align = |n: u64| (n + 3) & !3;
    let data = align(at + 110 + namesize);
    let next = align(data + size);
    if namesize == 0 || namesize > 4096 || next > len {
        bail!("dracut's archive is cut short in the entry at byte {at}");
    }
    let mut name = vec![0; namesize as usize - 1];
    src.read_exact_at(&mut name, at + 110)
        .map_err(|_| anyhow::anyhow!("dracut's archive is cut short in the entry at byte {at}"))?;
    Ok(Header { next, name })
}

/// The archive starting at `start`: the offsets of its entries, where it ends (after the
/// trailer), and whether it is an early (microcode) archive. Reads the headers only.
fn archive_at(src: &(impl ReadAt + ?Sized), len: u64, start: u64) -> Result<(Vec<u64>, u64, bool)> {
    let (mut at, mut starts, mut early) = (start, Vec::new(), false);
    loop {
        let h = header_at(src, len, at)?;
        starts.push(at);
        early |= h.name == b"early_cpio";
        at = h.next;
        if h.name == b"TRAILER!!!" {
            return Ok((starts, at, early));
        }
    }
}

/// Where the image's parts begin and end: the first cut is the end of what stays
/// uncompressed (the early archive and the NUL padding after it); each later one starts a
/// gzip member.
fn cut_points(src: &(impl ReadAt + ?Sized), len: u64) -> Result<Vec<u64>> {
    let (mut starts, end, early) = archive_at(src, len, 0)?;
    let mut raw = 0;
    if early {
        raw = end;
        let mut b = [0u8; 1];
        while raw < len && src.read_exact_at(&mut b, raw).is_ok() && b[0] == 0 {
            raw += 1;
        }
        starts = archive_at(src, len, raw)?.0;
    }
    // Cut before the first entry at or past each PIECE boundary; the last piece takes the rest
    // (the trailer and anything dracut appended).
    let mut cuts = vec![raw];
    for s in starts {
        if s >= cuts.last().unwrap() + PIECE as u64 {
            cuts.push(s);
        }
    }
    cuts.push(len);
    Ok(cuts)
}

/// Reads `src[from..to]`.
fn read_range(src: &(impl ReadAt + ?Sized), from: u64, to: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0; (to - from) as usize];
    src.read_exact_at(&mut buf, from)
        .map_err(|e| anyhow::anyhow!("reading dracut's archive at byte {from}: {e}"))?;
    Ok(buf)
}

/// Writes `src` (dracut's `--no-compress` output, `len` bytes) to `out` as the kernel's
/// compressed initramfs. Streams: at most two pieces per worker are in memory at a time.
pub fn compress_to(
    src: &(impl ReadAt + Sync + ?Sized),
    len: u64,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let cuts = cut_points(src, len)?;
    // The early archive, and the NUL padding the kernel skips between archives, stay as they are.
    out.write_all(&read_range(src, 0, cuts[0])?)?;
    let pieces: Vec<(u64, u64)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let workers = crate::pool::workers(usize::MAX);
    for batch in pieces.chunks(2 * workers) {
        let members = crate::pool::map(
            batch,
            workers,
            || {
                let lvl = libdeflater::CompressionLvl::new(LEVEL)
                    .map_err(|e| anyhow::anyhow!("libdeflate level {LEVEL}: {e:?}"))?;
                Ok(libdeflater::Compressor::new(lvl))
            },
            |c, &(from, to)| -> Result<Vec<u8>> {
                let piece = read_range(src, from, to)?;
                let mut gz = vec![0; c.gzip_compress_bound(piece.len())];
                let n = c
                    .gzip_compress(&piece, &mut gz)
                    .map_err(|e| anyhow::anyhow!("gzip of the initramfs: {e:?}"))?;
                gz.truncate(n);
                Ok(gz)
            },
        )?;
        for gz in members {
            out.write_all(&gz)?;
        }
    }
    Ok(())
}

/// Compresses the archive at `path` in place: the image goes to a file beside it, which then
/// replaces the archive.
pub fn compress_file(path: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let src = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = src.metadata()?.len();
    let tmp = path.with_extension("gz-partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    compress_to(&src, len, &mut out)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`compress_to`] makes of an archive in memory.
    fn compress(archive: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        compress_to(archive, archive.len() as u64, &mut out)?;
        Ok(out)
    }

    /// A newc archive of `files` (name, content), with the trailer.
    fn newc(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = |name: &str, data: &[u8]| {
            let fields = [
                1,
                0o100644,
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                0,
                0,
                name.len() + 1,
                0,
            ];
            out.extend_from_slice(b"070701");
            for f in fields {
                out.extend_from_slice(format!("{f:08X}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        for (n, d) in files {
            entry(n, d);
        }
        entry("TRAILER!!!", b"");
        out
    }

    /// What `gzip -dc` (as `zcat` in lsinitrd) makes of `gz`.
    fn gunzip_all(gz: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("image.gz");
        std::fs::write(&f, gz).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Pieces of whole entries, one gzip member each, that decompress to the archive; the
    /// result does not depend on the number of threads.
    #[test]
    fn compresses_in_members_of_whole_entries() {
        let mut rng = 7u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % 7) as u8
                })
                .collect()
        };
        let files: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("usr/lib/f{i}"), noise(PIECE / 10 + i * 13)))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let archive = newc(&refs);
        let image = compress(&archive).unwrap();
        assert_eq!(gunzip_all(&image), archive);
        let members = image.windows(3).filter(|w| w == &[0x1f, 0x8b, 8]).count();
        assert!(
            members >= 4,
            "{members} gzip members for {} bytes",
            archive.len()
        );
        assert_eq!(compress(&archive).unwrap(), image, "not reproducible");
        // The streamed file gives the same image in place, and leaves nothing beside it.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("initramfs.img");
        std::fs::write(&f, &archive).unwrap();
        compress_file(&f).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), image);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// An early (microcode) archive stays uncompressed ahead of the compressed main one.
    #[test]
    fn the_early_archive_stays_uncompressed() {
        let early = newc(&[
            ("early_cpio", b"1\n".to_vec()),
            ("kernel/x86/microcode/GenuineIntel.bin", vec![9; 300]),
        ]);
        let main = newc(&[("init", b"#!/bin/sh\n".to_vec())]);
        let mut archive = early.clone();
        archive.extend_from_slice(&[0; 512]);
        archive.extend_from_slice(&main);
        let image = compress(&archive).unwrap();
        assert_eq!(&image[..early.len() + 512], &archive[..early.len() + 512]);
        assert_eq!(gunzip_all(&image[early.len() + 512..]), main);
    }

    #[test]
    fn a_damaged_archive_is_an_error() {
        let mut archive = newc(&[("init", b"x".to_vec())]);
        archive.truncate(archive.len() - 20);
        let e = compress(&archive).unwrap_err().to_string();
        assert!(e.contains("cpio"), "{e}");
        assert!(compress(
            b"not an archive at all, not even close to one of them, really no; \
            we need one hundred and ten bytes for a header to be read here"
        )
        .is_err());
    }

    #[test]
    fn the_users_compressor_is_respected() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(chosen_by_user(root.path(), &[]).unwrap(), None);
        let why = chosen_by_user(root.path(), &["--compress=zstd".into()]).unwrap();
        assert_eq!(why.as_deref(), Some("initramfs-args has --compress=zstd"));
        let d = root.path().join("usr/lib/dracut/dracut.conf.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("01-dist.conf"), "# compress=gzip\ncompressx=1\n").unwrap();
        assert_eq!(chosen_by_user(root.path(), &[]).unwrap(), None);
        std::fs::write(d.join("02-z.conf"), "  compress = \"zstd\"\n").unwrap();
        let why = chosen_by_user(root.path(), &[]).unwrap();
        assert_eq!(
            why.as_deref(),
            Some("/usr/lib/dracut/dracut.conf.d/02-z.conf sets compress=")
        );
    }
}
