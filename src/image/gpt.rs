//! A GUID partition table written straight into an image file: protective MBR, primary header
//! and entries, backup entries and header. No loop devices, no partitioning tools.

use anyhow::{bail, Result};
use std::io::{Seek, SeekFrom, Write};

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes (128 × 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const TYPE_LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
pub const TYPE_XBOOTLDR: &str = "bc13c2ff-59e6-4262-a352-b275fd6f7172";

/// A GUID in its on-disk byte order (the first three fields little-endian).
pub fn guid_bytes(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        bail!("{s:?} is not a GUID like 0fc63daf-8483-4772-8e79-3d69d8477de4");
    }
    let raw = hex::decode(&hex).map_err(|_| anyhow::anyhow!("{s:?} is not a GUID"))?;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..16].copy_from_slice(&raw[8..16]);
    Ok(b)
}

pub struct Partition {
    pub type_guid: String,
    pub guid: String,
    pub name: String,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
}

/// First usable LBA of a disk with a standard-size entry array.
pub const FIRST_USABLE: u64 = 2 + ENTRY_SECTORS;

/// Last usable LBA for a disk of `sectors`.
pub fn last_usable(sectors: u64) -> u64 {
    sectors - 2 - ENTRY_SECTORS
}

fn header(disk_guid: &[u8; 16], sectors: u64, primary: bool, entries_crc: u32) -> Vec<u8> {
    let last = sectors - 1;
    let (current, backup, entries_lba) = if primary {
        (1, last, 2)
    } else {
        (last, 1, last - ENTRY_SECTORS)
    };
    let mut h = Vec::with_capacity(SECTOR as usize);
    h.extend_from_slice(b"EFI PART");
    h.extend_from_slice(&0x0001_0000u32.to_le_bytes());
    h.extend_from_slice(&92u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // header CRC, filled below
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&current.to_le_bytes());
    h.extend_from_slice(&backup.to_le_bytes());
    h.extend_from_slice(&FIRST_USABLE.to_le_bytes());
    h.extend_from_slice(&last_usable(sectors).to_le_bytes());
    h.extend_from_slice(disk_guid);
    h.extend_from_slice(&entries_lba.to_le_bytes());
    h.extend_from_slice(&(ENTRIES as u32).to_le_bytes());
    h.extend_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h.extend_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h.resize(SECTOR as usize, 0);
    h
}

/// Writes the protective MBR (keeping bytes 0..440, the boot code), both GPT headers and
/// both entry arrays into `file`, a disk of `sectors` sectors.
pub fn write(
    file: &mut std::fs::File,
    sectors: u64,
    disk_guid: &str,
    parts: &[Partition],
) -> Result<()> {
    let disk_guid = guid_bytes(disk_guid)?;
    if parts.len() as u64 > ENTRIES {
        bail!("at most {ENTRIES} partitions");
    }
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        if p.first_lba < FIRST_USABLE
            || p.last_lba > last_usable(sectors)
            || p.last_lba < p.first_lba
        {
            bail!("partition {} does not fit on the disk", p.name);
        }
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.guid)?);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > 36 {
            bail!("partition name {:?} is longer than 36 characters", p.name);
        }
        for (j, c) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);

    // Protective MBR: one 0xEE partition over the whole disk.
    let mut mbr = vec![0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    std::io::Read::read_exact(file, &mut mbr)?;
    let pe = &mut mbr[446..462];
    pe.fill(0);
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pe[4] = 0xEE;
    pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&((sectors - 1).min(0xFFFF_FFFF) as u32).to_le_bytes());
    mbr[462..510].fill(0);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&mbr)?;

    file.seek(SeekFrom::Start(SECTOR))?;
    file.write_all(&header(&disk_guid, sectors, true, entries_crc))?;
    file.write_all(&entries)?;
    file.seek(SeekFrom::Start((sectors - 1 - ENTRY_SECTORS) * SECTOR))?;
    file.write_all(&entries)?;
    file.write_all(&header(&disk_guid, sectors, false, entries_crc))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_mixed_endian() {
        let b = guid_bytes("0fc63daf-8483-4772-8e79-3d69d8477de4").unwrap();
        assert_eq!(&b[..4], &[0xaf, 0x3d, 0xc6, 0x0f]);
        assert_eq!(&b[4..8], &[0x83, 0x84, 0x72, 0x47]);
        assert_eq!(&b[8..], &[0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4]);
        assert!(guid_bytes("nope").is_err());
    }
}

/// A partition found in an image: its type, GUID and byte range.
#[derive(Debug, Clone)]
pub struct Found {
    pub type_guid: [u8; 16],
    pub offset: u64,
    pub bytes: u64,
}

/// Reads the primary GPT of `file`, checking its signature and CRCs.
pub fn read(file: &mut std::fs::File) -> Result<Vec<Found>> {
    use std::io::Read;
    let mut hdr = vec![0u8; SECTOR as usize];
    file.seek(SeekFrom::Start(SECTOR))?;
    file.read_exact(&mut hdr)?;
    if &hdr[0..8] != b"EFI PART" {
        bail!("no GPT found (is this a hostforge disk image?)");
    }
    let mut check = hdr[..92].to_vec();
    let stored = u32::from_le_bytes(check[16..20].try_into().unwrap());
    check[16..20].fill(0);
    if crc32fast::hash(&check) != stored {
        bail!("the GPT header checksum is wrong: the image is damaged");
    }
    let entries_lba = u64::from_le_bytes(hdr[72..80].try_into().unwrap());
    let count = u32::from_le_bytes(hdr[80..84].try_into().unwrap()) as usize;
    let size = u32::from_le_bytes(hdr[84..88].try_into().unwrap()) as usize;
    let mut entries = vec![0u8; count * size];
    file.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    file.read_exact(&mut entries)?;
    if crc32fast::hash(&entries) != u32::from_le_bytes(hdr[88..92].try_into().unwrap()) {
        bail!("the GPT partition entries checksum is wrong: the image is damaged");
    }
    let mut out = Vec::new();
    for e in entries.chunks(size) {
        let type_guid: [u8; 16] = e[0..16].try_into().unwrap();
        if type_guid == [0; 16] {
            continue;
        }
        let first = u64::from_le_bytes(e[32..40].try_into().unwrap());
        let last = u64::from_le_bytes(e[40..48].try_into().unwrap());
        out.push(Found {
            type_guid,
            offset: first * SECTOR,
            bytes: (last - first + 1) * SECTOR,
        });
    }
    Ok(out)
}
