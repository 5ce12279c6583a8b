//! qcow2 images written by hostforge, while the raw disk they hold is still being filled.
//!
//! `qemu-img convert` can only start once the raw disk is complete, and then the whole image
//! goes to the disk at the end of the build. Here a thread ([`Stream`]) copies each 64 KiB
//! cluster of the raw disk into the qcow2 file as soon as file data fills it whole (the
//! filesystem writer reports the blocks of every file it copies), with `O_DIRECT`, so the
//! disk writes the bulk of the image while the build still deploys and fills filesystems.
//! [`Stream::finish`] then copies every other cluster that holds data (filesystem metadata,
//! partitions written by other tools), checks each streamed cluster against the raw disk by
//! CRC-32 and writes again any that changed (a guard against a writer we did not know about,
//! not a security boundary: nothing but the build writes to the raw disk), appends the L2
//! tables, L1 table and refcounts, writes the header, and syncs.
//!
//! The file is a plain qcow2 version 3 image: 64 KiB clusters, 16-bit refcounts, no backing
//! file, no compression, every cluster referenced once (`QCOW_OFLAG_COPIED` set), clusters
//! that are all zeros in the raw disk left unallocated (read as zeros). Host clusters are
//! placed in the order the reports fill them, then the rest in disk order: the same build
//! gives the same bytes.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Entries of one L2 table (64-bit each).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Host clusters one refcount block counts (16-bit refcounts).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// The cluster is referenced exactly once (so qemu may write it in place).
const COPIED: u64 = 1 << 63;
/// Clusters written with one `pwrite`.
const BATCH: usize = 64;
/// Bytes written between two syncs while streaming.
const SYNC_EVERY: u64 = 32 << 20;
/// Coverage is tracked in 1 KiB units (the smallest ext4 block): 64 per cluster.
const UNIT: u64 = 1024;
/// Whether streamed clusters are checked at the end (see [`Writer::complete`]).
const CHECK: bool = cfg!(debug_assertions);

/// A buffer whose start is aligned for `O_DIRECT`.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        const ALIGN: usize = 4096;
        let buf = vec![0u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Aligned { buf, start, len }
    }

    fn get(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn all_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(16);
    let tail = words.remainder();
    words
        .map(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Reads guest cluster `c` of the raw disk (`size` bytes) into `buf`, zeros past its end.
fn read_cluster(raw: &std::fs::File, size: u64, c: u64, buf: &mut [u8]) -> Result<()> {
    let at = c * CLUSTER;
    let n = (size - at).min(CLUSTER) as usize;
    raw.read_exact_at(&mut buf[..n], at)
        .context("reading the raw disk")?;
    buf[n..].fill(0);
    Ok(())
}

/// The qcow2 file.
struct Out {
    path: PathBuf,
    file: std::fs::File,
    direct: bool,
}

impl Out {
    /// Writes `data` at byte `at`; a filesystem that takes `O_DIRECT` at open but refuses
    /// the write gets the page cache instead.
    fn write_at(&mut self, data: &[u8], at: u64) -> Result<()> {
        match self.file.write_all_at(data, at) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .with_context(|| format!("opening {}", self.path.display()))?;
                self.direct = false;
                self.file.write_all_at(data, at)
            }
            r => r,
        }
        .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The qcow2 file being written: data clusters appended in the order they are placed.
struct Writer {
    out: Out,
    /// The raw disk, read from.
    raw: std::fs::File,
    virtual_size: u64,
    /// Guest cluster → host cluster.
    map: HashMap<u64, u64>,
    /// Debug builds: CRC-32 of each host data cluster as written (index: host cluster - 1).
    crcs: Vec<u32>,
    /// The next host cluster to place (0 is the header).
    next: u64,
    /// Clusters placed but not written yet: host clusters `next - batch_len .. next`.
    batch: Aligned,
    batch_len: usize,
    /// Bytes written since the last sync.
    unsynced: u64,
}

impl Writer {
    fn create(raw: &Path, out: &Path, virtual_size: u64) -> Result<Writer> {
        // A new file, never one a writer before may still hold open.
        match std::fs::remove_file(out) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", out.display()));
            }
            _ => {}
        }
        let open = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(true).create(true).truncate(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(out)
        };
        // tmpfs (before Linux 6.6) and some others refuse O_DIRECT: the page cache then.
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(_) => (
                open(false).with_context(|| format!("creating {}", out.display()))?,
                false,
            ),
        };
        let raw_file =
            std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
        Ok(Writer {
            out: Out {
                path: out.to_path_buf(),
                file,
                direct,
            },
            raw: raw_file,
            virtual_size,
            map: HashMap::new(),
            crcs: Vec::new(),
            next: 1,
            batch: Aligned::new(BATCH * CLUSTER as usize),
            batch_len: 0,
            unsynced: 0,
        })
    }

    fn guest_clusters(&self) -> u64 {
        self.virtual_size.div_ceil(CLUSTER)
    }

    /// Places guest cluster `c` at the next host cluster with the bytes the raw disk holds
    /// now (or `data` when given).
    fn append(&mut self, c: u64, data: Option<&[u8]>) -> Result<()> {
        let slot = self.batch_len * CLUSTER as usize;
        let dst = &mut self.batch.get_mut()[slot..slot + CLUSTER as usize];
        match data {
            Some(d) => dst.copy_from_slice(d),
            None => read_cluster(&self.raw, self.virtual_size, c, dst)?,
        }
        let sum = if CHECK { crc(dst) } else { 0 };
        self.map.insert(c, self.next);
        if CHECK {
            self.crcs.push(sum);
        }
        self.next += 1;
        self.batch_len += 1;
        if self.batch_len == BATCH {
            self.flush()?;
            self.sync_some()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch_len == 0 {
            return Ok(());
        }
        let first = self.next - self.batch_len as u64;
        let bytes = self.batch_len * CLUSTER as usize;
        self.batch_len = 0;
        self.unsynced += bytes as u64;
        self.out
            .write_at(&self.batch.get()[..bytes], first * CLUSTER)
    }

    /// While streaming: syncs once enough is written since the last sync, so the disk
    /// writes the image while the build goes on (a virtual disk's host may keep even
    /// `O_DIRECT` writes in its cache until a flush).
    fn sync_some(&mut self) -> Result<()> {
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            self.out
                .file
                .sync_data()
                .with_context(|| format!("syncing {}", self.out.path.display()))?;
        }
        Ok(())
    }

    /// Follows the reports of file data written into the raw disk (byte ranges) until every
    /// sender is gone, placing each cluster the reports cover whole.
    fn stream(&mut self, rx: Receiver<(u64, u64)>) -> Result<()> {
        let mut covered: HashMap<u64, u64> = HashMap::new();
        let mut next = rx.recv().ok();
        while let Some((off, len)) = next {
            let end = (off + len).min(self.virtual_size);
            let mut c = off / CLUSTER;
            while c * CLUSTER < end {
                let base = c * CLUSTER;
                // Whole units only: a unit partly reported is not known to be final.
                let lo = (off.max(base) - base).div_ceil(UNIT);
                let hi = (end.min(base + CLUSTER) - base) / UNIT;
                if hi > lo && !self.map.contains_key(&c) {
                    let bits = if hi - lo == 64 {
                        !0u64
                    } else {
                        ((1u64 << (hi - lo)) - 1) << lo
                    };
                    let m = covered.entry(c).or_insert(0);
                    *m |= bits;
                    if *m == !0 {
                        covered.remove(&c);
                        self.append(c, None)?;
                    }
                }
                c += 1;
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(_) => {
                    // Nothing waiting: write what is placed while the reports come.
                    self.flush()?;
                    self.sync_some()?;
                    rx.recv().ok()
                }
            };
        }
        self.flush()
    }

    /// The byte ranges of the raw disk that hold data (not holes), in clusters.
    fn data_clusters(&self) -> Result<Vec<(u64, u64)>> {
        use rustix::fs::{seek, SeekFrom};
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0u64;
        while pos < self.virtual_size {
            let start = match seek(&self.raw, SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                    // No SEEK_DATA: the whole disk is data.
                    return Ok(vec![(0, self.guest_clusters())]);
                }
                Err(e) => return Err(e).context("finding the data in the raw disk"),
            };
            let end = seek(&self.raw, SeekFrom::Hole(start))
                .context("finding the data in the raw disk")?
                .min(self.virtual_size);
            let (a, b) = (start / CLUSTER, end.div_ceil(CLUSTER));
            match out.last_mut() {
                Some(last) if last.1 >= a => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
            pos = end;
        }
        Ok(out)
    }

    /// Places every cluster with data that is not placed yet. A streamed cluster is not read
    /// again: it holds file data, which nothing writes twice. Debug builds (the tests) read
    /// it anyway and fail if it changed.
    fn complete(&mut self) -> Result<()> {
        let regions = self.data_clusters()?;
        let mut buf = Aligned::new(CLUSTER as usize);
        for &(a, b) in &regions {
            for c in a..b {
                let placed = self.map.get(&c).copied();
                if placed.is_some() && !CHECK {
                    continue;
                }
                read_cluster(&self.raw, self.virtual_size, c, buf.get_mut())?;
                match placed {
                    Some(h) => self.check(c, h, buf.get())?,
                    None if all_zero(buf.get()) => {}
                    None => self.append(c, Some(buf.get()))?,
                }
            }
        }
        self.flush()?;
        if CHECK {
            let zero = Aligned::new(CLUSTER as usize);
            let in_data = |c: u64| regions.iter().any(|&(a, b)| (a..b).contains(&c));
            let holes: Vec<(u64, u64)> = self
                .map
                .iter()
                .filter(|(&c, _)| !in_data(c))
                .map(|(&c, &h)| (c, h))
                .collect();
            for (c, h) in holes {
                self.check(c, h, zero.get())?;
            }
        }
        Ok(())
    }

    /// Debug builds: guest cluster `c`, written to host cluster `h` while streaming, still
    /// holds what was written.
    fn check(&self, c: u64, h: u64, now: &[u8]) -> Result<()> {
        if CHECK && self.crcs[h as usize - 1] != crc(now) {
            bail!(
                "bytes {}..{} of the raw disk changed after they were written to the qcow2 \
                 image (a writer wrote file data twice)",
                c * CLUSTER,
                (c + 1) * CLUSTER
            );
        }
        Ok(())
    }

    /// Appends the L2 tables, L1 table, refcount table and blocks, writes the header, and
    /// syncs the file.
    fn finish(mut self) -> Result<()> {
        let data_end = self.next;
        let l1_entries = self.virtual_size.div_ceil(CLUSTER * L2_ENTRIES);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
        let tables: BTreeSet<u64> = self.map.keys().map(|c| c / L2_ENTRIES).collect();
        let l2_count = tables.len() as u64;
        // Refcount blocks count every host cluster, their own and the table's included.
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        let total = loop {
            let total = data_end + l2_count + l1_clusters + table_clusters + blocks;
            let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let t = (b * 8).div_ceil(CLUSTER);
            if (b, t) == (blocks, table_clusters) {
                break total;
            }
            (blocks, table_clusters) = (b, t);
        };
        let l2_at = data_end;
        let l1_at = l2_at + l2_count;
        let table_at = l1_at + l1_clusters;
        let blocks_at = table_at + table_clusters;
        debug_assert_eq!(blocks_at + blocks, total);

        let meta_clusters = (total - data_end) as usize;
        let mut meta = Aligned::new(meta_clusters * CLUSTER as usize);
        let m = meta.get_mut();
        let put = |m: &mut [u8], cluster: u64, index: u64, v: u64| {
            let at = ((cluster - data_end) * CLUSTER + index * 8) as usize;
            m[at..at + 8].copy_from_slice(&v.to_be_bytes());
        };
        let mut entries: Vec<(u64, u64)> = self.map.iter().map(|(&g, &h)| (g, h)).collect();
        entries.sort_unstable();
        let index_of: HashMap<u64, u64> = tables
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, i as u64))
            .collect();
        for (g, h) in entries {
            let l2 = l2_at + index_of[&(g / L2_ENTRIES)];
            put(m, l2, g % L2_ENTRIES, (h * CLUSTER) | COPIED);
        }
        for (&t, &i) in &index_of {
            put(m, l1_at, t, ((l2_at + i) * CLUSTER) | COPIED);
        }
        for b in 0..blocks {
            put(m, table_at, b, (blocks_at + b) * CLUSTER);
        }
        for h in 0..total {
            let at = ((blocks_at - data_end) * CLUSTER + h * 2) as usize;
            m[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        self.out.write_at(meta.get(), data_end * CLUSTER)?;

        let mut header = Aligned::new(CLUSTER as usize);
        let h = header.get_mut();
        let mut at = 0usize;
        let mut field = |bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        field(b"QFI\xfb");
        field(&3u32.to_be_bytes()); // version
        field(&0u64.to_be_bytes()); // backing_file_offset
        field(&0u32.to_be_bytes()); // backing_file_size
        field(&CLUSTER_BITS.to_be_bytes());
        field(&self.virtual_size.to_be_bytes());
        field(&0u32.to_be_bytes()); // crypt_method
        field(&(l1_entries as u32).to_be_bytes());
        field(&(l1_at * CLUSTER).to_be_bytes());
        field(&(table_at * CLUSTER).to_be_bytes());
        field(&(table_clusters as u32).to_be_bytes());
        field(&0u32.to_be_bytes()); // nb_snapshots
        field(&0u64.to_be_bytes()); // snapshots_offset
        field(&0u64.to_be_bytes()); // incompatible_features
        field(&0u64.to_be_bytes()); // compatible_features
        field(&0u64.to_be_bytes()); // autoclear_features
        field(&4u32.to_be_bytes()); // refcount_order: 16-bit refcounts
        field(&104u32.to_be_bytes()); // header_length
                                      // The end of the (empty) list of header extensions: type 0, length 0.
        field(&[0u8; 8]);
        self.out.write_at(header.get(), 0)?;
        self.out
            .file
            .sync_data()
            .with_context(|| format!("syncing {}", self.out.path.display()))
    }
}

/// A qcow2 image being written beside its raw disk; see the module docs.
pub struct Stream {
    tx: Option<Sender<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<Result<Writer>>>,
    out: PathBuf,
}

impl Stream {
    /// Starts writing `out`, the qcow2 image of the raw disk `raw` (`virtual_size` bytes,
    /// already at its size): the clusters [`Stream::sender`]'s reports cover whole are
    /// copied as they come.
    pub fn start(raw: &Path, out: &Path, virtual_size: u64) -> Result<Stream> {
        let mut w = Writer::create(raw, out, virtual_size)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("qcow2".into())
            .spawn(move || w.stream(rx).map(|()| w))
            .context("starting the qcow2 writer")?;
        Ok(Stream {
            tx: Some(tx),
            thread: Some(thread),
            out: out.to_path_buf(),
        })
    }

    /// Where writers of the raw disk report the byte ranges of file data they wrote, and
    /// will not write again.
    pub fn sender(&self) -> Sender<(u64, u64)> {
        self.tx.clone().expect("until finish")
    }

    /// Once nothing writes the raw disk any more (every sender dropped): completes the
    /// image and syncs it; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        drop(self.tx.take());
        let thread = self.thread.take().expect("finished once");
        let mut w = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the qcow2 writer panicked"))??;
        w.complete()?;
        w.finish()?;
        Ok(self.out.clone())
    }
}

/// The qcow2 image of the raw disk `raw`, written to `out` and synced.
pub fn convert(raw: &Path, out: &Path) -> Result<()> {
    let size = std::fs::metadata(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .len();
    if size == 0 {
        bail!("{} is empty", raw.display());
    }
    Stream::start(raw, out, size)?.finish().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str], paths: &[&Path]) -> std::process::Output {
        Command::new("qemu-img")
            .args(args)
            .args(paths)
            .output()
            .expect("qemu-img (apt-get install qemu-utils)")
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// A raw disk of 5 MiB + 12 KiB (not whole clusters) with data at its start, across a
    /// cluster boundary, a cluster of zeros written out, data at 3 MiB, and its last bytes.
    fn sample_raw(dir: &Path) -> (PathBuf, u64) {
        let raw = dir.join("disk.raw");
        let size = (5 << 20) + 12 * 1024;
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&pattern(512, 1), 0).unwrap();
        f.write_all_at(&pattern(300, 2), (1 << 20) - 100).unwrap();
        f.write_all_at(&vec![0; CLUSTER as usize], 2 << 20).unwrap();
        f.write_all_at(&pattern(200 * 1024, 3), 3 << 20).unwrap();
        f.write_all_at(&pattern(100, 4), size - 100).unwrap();
        (raw, size)
    }

    fn assert_same_disk(raw: &Path, q: &Path) {
        let check = qemu_img(&["check"], &[q]);
        assert!(check.status.success(), "{check:?}");
        let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2"], &[raw, q]);
        assert!(cmp.status.success(), "{cmp:?}");
    }

    /// (guest offset, host offset) of each allocated run, from `qemu-img map`.
    fn map(q: &Path) -> Vec<(u64, u64)> {
        let out = qemu_img(&["map", "--output=json"], &[q]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| (e["start"].as_u64().unwrap(), e["offset"].as_u64().unwrap()))
            .collect()
    }

    #[test]
    fn converted_image_holds_the_raw_disk_and_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, size) = sample_raw(dir.path());
        let q = dir.path().join("disk.qcow2");
        convert(&raw, &q).unwrap();
        assert_same_disk(&raw, &q);
        let info = qemu_img(&["info", "--output=json"], &[&q]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], size);
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
        // Clusters of zeros are not stored: data at 0, 1 MiB (two clusters), 3 MiB (four),
        // and the last one, in disk order after the header.
        let runs = map(&q);
        let last = (size - 1) / CLUSTER * CLUSTER;
        let guest: Vec<u64> = runs.iter().map(|r| r.0).collect();
        assert_eq!(
            guest,
            vec![0, (1 << 20) - CLUSTER, 3 << 20, last],
            "{runs:?}"
        );
        assert_eq!(runs[0].1, CLUSTER);
        // The same disk gives the same bytes.
        let again = dir.path().join("again.qcow2");
        convert(&raw, &again).unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn reported_clusters_come_first_and_the_rest_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, size) = sample_raw(dir.path());
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        let q = dir.path().join("disk.qcow2");
        let stream = Stream::start(&raw, &q, size).unwrap();
        let tx = stream.sender();
        // "File data" at 4 MiB: two clusters, reported in three pieces (4 KiB blocks), the
        // second cluster's last block only in the last report.
        let at = 4 << 20;
        f.write_all_at(&pattern(2 * CLUSTER as usize, 5), at)
            .unwrap();
        tx.send((at, CLUSTER + 4096)).unwrap();
        tx.send((at + CLUSTER + 4096, CLUSTER - 8192)).unwrap();
        // Half of the cluster at 3 MiB: it waits for the end.
        tx.send((3 << 20, CLUSTER / 2)).unwrap();
        tx.send((at + 2 * CLUSTER - 4096, 4096)).unwrap();
        drop(tx);
        // Written after the reports, as metadata would be.
        f.write_all_at(&pattern(64, 6), (4 << 20) - 64).unwrap();
        assert_eq!(stream.finish().unwrap(), q);
        assert_same_disk(&raw, &q);
        // The two reported clusters right after the header; the rest after them.
        let runs = map(&q);
        assert!(runs.contains(&(4 << 20, CLUSTER)), "{runs:?}");
        let rest = runs.iter().filter(|r| r.0 != 4 << 20);
        assert!(rest.clone().count() == 5, "{runs:?}");
        assert!(rest.into_iter().all(|r| r.1 >= 3 * CLUSTER), "{runs:?}");
    }

    /// Debug builds check that file data reported once was not written again.
    #[cfg(debug_assertions)]
    #[test]
    fn file_data_written_again_after_its_report_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, size) = sample_raw(dir.path());
        let mut w = Writer::create(&raw, &dir.path().join("disk.qcow2"), size).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send((3 << 20, CLUSTER)).unwrap();
        drop(tx);
        w.stream(rx).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.write_all_at(b"again", (3 << 20) + 10).unwrap();
        let err = format!("{:#}", w.complete().unwrap_err());
        assert!(err.contains(&format!("bytes {}..", 3 << 20)), "{err}");
    }
}
