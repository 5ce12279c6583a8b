//! Disk layouts (`images/*.yaml`): partitions, sizes, filesystems, fixed GUIDs and UUIDs,
//! kernel arguments, bootloader and ostree settings. Parsed strictly, checked up front.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    /// GRUB's core.img in a BIOS boot partition, boot.img in the MBR.
    Grub2Bios,
    /// GRUB as `EFI/BOOT/BOOTX64.EFI` on the ESP.
    Grub2Efi,
    None,
}

/// `bootloader: grub2-bios` or `bootloader: [grub2-bios, grub2-efi]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Bootloader>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Bootloader>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("grub2-bios, grub2-efi, none, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Bootloader::deserialize(serde::de::value::StrDeserializer::new(v)).map(|b| vec![b])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = a.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PartType {
    BiosBoot,
    Esp,
    Xbootldr,
    Root,
    Linux,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PartitionSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PartType,
    /// `512MiB`, `2GiB`, or `rest` (only the last partition).
    pub size: String,
    pub filesystem: Option<String>,
    pub mount: Option<String>,
    pub label: Option<String>,
    /// The partition's GPT GUID.
    pub guid: String,
    /// The filesystem UUID.
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OstreeSettings {
    #[serde(default = "default_osname")]
    pub osname: String,
    #[serde(default)]
    pub sysroot_readonly: bool,
}

fn default_osname() -> String {
    "hostforge".into()
}

/// A layout without `ostree:` gets the same values as one with an empty `ostree:`.
impl Default for OstreeSettings {
    fn default() -> Self {
        OstreeSettings {
            osname: default_osname(),
            sysroot_readonly: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layout {
    pub format: Format,
    pub size: String,
    pub disk_guid: String,
    #[serde(deserialize_with = "one_or_many")]
    pub bootloader: Vec<Bootloader>,
    #[serde(default)]
    pub kargs: Vec<String>,
    #[serde(default)]
    pub ostree: OstreeSettings,
    pub partitions: Vec<PartitionSpec>,
}

/// A FAT volume serial (`ABCD-1234`) as the number mformat takes.
pub fn fat_serial(s: &str) -> Option<u32> {
    let (a, b) = s.split_once('-')?;
    if a.len() != 4 || b.len() != 4 {
        return None;
    }
    u32::from_str_radix(&format!("{a}{b}"), 16).ok()
}

/// `512MiB` / `3GiB` / `1048576` as bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("size {s:?}: use a number with KiB, MiB or GiB"))?;
    Ok(n * mult)
}

/// The layouts in `images/`, compiled in: `--layout metal` works without the source tree,
/// and the live installer carries them.
pub const BUILTIN: &[(&str, &str)] = &[
    ("metal", include_str!("../../images/metal.yaml")),
    ("qemu", include_str!("../../images/qemu.yaml")),
];

impl Layout {
    /// Loads the layout file `path`, or one of [`BUILTIN`] by name (`metal`, `qemu`) when no
    /// such file exists.
    pub fn load(path: &Path) -> Result<Layout> {
        let builtin = BUILTIN
            .iter()
            .find(|(name, _)| Path::new(name) == path)
            .filter(|_| !path.exists());
        let text = match builtin {
            Some((_, text)) => text.to_string(),
            None => std::fs::read_to_string(path).with_context(|| {
                format!(
                    "reading layout {} (or name one of hostforge's: {})",
                    path.display(),
                    BUILTIN.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                )
            })?,
        };
        let layout: Layout = crate::treefile::yaml_from_str(path, &text)?;
        layout
            .validate()
            .with_context(|| format!("layout {}", path.display()))?;
        Ok(layout)
    }

    fn validate(&self) -> Result<()> {
        parse_size(&self.size)?;
        // Both end up in boot loader entries and the GRUB menu.
        for k in &self.kargs {
            crate::validate::kernel_arg("kargs", k)?;
        }
        crate::validate::plain_name("ostree.osname", &self.ostree.osname)?;
        super::gpt::guid_bytes(&self.disk_guid).context("disk-guid")?;
        let mut roots = 0;
        for (i, p) in self.partitions.iter().enumerate() {
            super::gpt::guid_bytes(&p.guid).with_context(|| format!("partition {}", p.name))?;
            if p.size == "rest" {
                if i + 1 != self.partitions.len() {
                    bail!(
                        "partition {}: only the last partition can have size rest",
                        p.name
                    );
                }
            } else {
                parse_size(&p.size).with_context(|| format!("partition {}", p.name))?;
            }
            match p.mount.as_deref() {
                Some("/") => roots += 1,
                Some("/boot") | None => {}
                Some(other) => bail!(
                    "partition {}: mount {other:?}: only / and /boot are supported",
                    p.name
                ),
            }
            if p.kind == PartType::Esp {
                if p.filesystem.as_deref() != Some("vfat") || p.mount.is_some() {
                    bail!(
                        "partition {}: an ESP has `filesystem: vfat` and no mount",
                        p.name
                    );
                }
                let serial = p.uuid.as_deref().unwrap_or_default();
                if fat_serial(serial).is_none() {
                    bail!(
                        "partition {}: uuid {serial:?}: a FAT volume serial looks like ABCD-1234",
                        p.name
                    );
                }
            }
            if p.mount.is_some() {
                if p.filesystem.as_deref() != Some("ext4") {
                    bail!(
                        "partition {}: filesystem must be ext4 for / and /boot (the only one supported yet)",
                        p.name
                    );
                }
                let uuid = p.uuid.as_deref().ok_or_else(|| {
                    anyhow!(
                        "partition {}: a mounted partition needs a filesystem uuid",
                        p.name
                    )
                })?;
                super::gpt::guid_bytes(uuid)
                    .with_context(|| format!("partition {} uuid", p.name))?;
            }
        }
        if roots != 1 {
            bail!("exactly one partition must have `mount: /`");
        }
        if self.has(Bootloader::Grub2Bios)
            && !self.partitions.iter().any(|p| p.kind == PartType::BiosBoot)
        {
            bail!("bootloader grub2-bios needs a partition of type bios-boot (1MiB is enough)");
        }
        if self.has(Bootloader::Grub2Efi)
            && !self.partitions.iter().any(|p| p.kind == PartType::Esp)
        {
            bail!("bootloader grub2-efi needs a partition of type esp (filesystem: vfat)");
        }
        if self.bootloader.is_empty() {
            bail!("bootloader: name one (grub2-bios, grub2-efi) or none");
        }
        Ok(())
    }

    pub fn has(&self, b: Bootloader) -> bool {
        self.bootloader.contains(&b)
    }

    /// Whether any GRUB is installed (and so its config kept beside ostree's entries).
    pub fn uses_grub(&self) -> bool {
        self.has(Bootloader::Grub2Bios) || self.has(Bootloader::Grub2Efi)
    }

    /// Replaces the disk GUID, partition GUIDs and filesystem UUIDs with random ones
    /// (`--random-uuids`): for images that must not share identities, at the cost of
    /// reproducibility.
    pub fn randomize_ids(&mut self) -> Result<()> {
        let rand = || -> Result<String> {
            Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
                .trim()
                .to_string())
        };
        self.disk_guid = rand()?;
        for p in &mut self.partitions {
            p.guid = rand()?;
            if p.kind == PartType::Esp {
                let u = rand()?.replace('-', "").to_uppercase();
                p.uuid = Some(format!("{}-{}", &u[..4], &u[4..8]));
            } else if p.uuid.is_some() {
                p.uuid = Some(rand()?);
            }
        }
        Ok(())
    }

    pub fn part(&self, mount: &str) -> Option<&PartitionSpec> {
        self.partitions
            .iter()
            .find(|p| p.mount.as_deref() == Some(mount))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_layouts_are_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml");
        let l = Layout::load(&p).unwrap();
        assert_eq!(l.format, Format::Qcow2);
        assert!(l.kargs.iter().any(|k| k == "console=ttyS0"));
        assert_eq!(l.bootloader, vec![Bootloader::Grub2Bios]);
        let m = Layout::load(&p.with_file_name("metal.yaml")).unwrap();
        assert_eq!(m.format, Format::Raw);
        assert!(m.has(Bootloader::Grub2Bios) && m.has(Bootloader::Grub2Efi));
    }

    #[test]
    fn random_ids_differ_and_keep_shapes() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/metal.yaml");
        let a = Layout::load(&p).unwrap();
        let mut b = a.clone();
        b.randomize_ids().unwrap();
        b.validate().unwrap();
        assert_ne!(a.disk_guid, b.disk_guid);
        for (x, y) in a.partitions.iter().zip(&b.partitions) {
            assert_ne!(x.guid, y.guid);
            if x.uuid.is_some() {
                assert_ne!(x.uuid, y.uuid);
            }
        }
    }

    #[test]
    fn bootloader_needs_its_partition() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.yaml");
        let base =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml"))
                .unwrap();
        std::fs::write(
            &p,
            base.replace(
                "bootloader: grub2-bios",
                "bootloader: [grub2-bios, grub2-efi]",
            ),
        )
        .unwrap();
        let e = format!("{:#}", Layout::load(&p).unwrap_err());
        assert!(e.contains("grub2-efi needs a partition of type esp"), "{e}");
        std::fs::write(
            &p,
            base.replace("bootloader: grub2-bios", "bootloader: lilo"),
        )
        .unwrap();
        let e = format!("{:#}", Layout::load(&p).unwrap_err());
        assert!(e.contains("l.yaml:") && e.contains("lilo"), "{e}");
    }

    #[test]
    fn kargs_and_osname_cannot_smuggle_boot_loader_syntax() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.yaml");
        let base =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml"))
                .unwrap();
        let kargs = "kargs: [console=ttyS0, rw, panic=10, rd.shell=0, rd.emergency=reboot]";
        assert!(base.contains(&format!("{kargs}\n")));
        for (bad, field) in [
            ("[\"console=ttyS0\\ninitrd /evil\"]", "kargs"),
            ("[\"console=ttyS0; reboot\"]", "kargs"),
            ("[\"x=$(id)\"]", "kargs"),
            ("[\"quiet 'x\"]", "kargs"),
        ] {
            let text = base.replace(kargs, &format!("kargs: {bad}"));
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", Layout::load(&p).unwrap_err());
            assert!(e.contains(field), "{bad:?}: {e}");
        }
        let mut l =
            Layout::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml")).unwrap();
        l.ostree.osname = "node\n[evil]".into();
        let e = format!("{:#}", l.validate().unwrap_err());
        assert!(e.contains("ostree.osname"), "{e}");
    }

    /// Regression: a layout without `ostree:` had an empty stateroot name.
    #[test]
    fn ostree_settings_default_to_the_hostforge_stateroot() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.yaml");
        let base =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml"))
                .unwrap();
        let without: String = base
            .lines()
            .filter(|l| !l.starts_with("ostree:") && !l.starts_with("  osname:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!without.contains("osname"), "{without}");
        std::fs::write(&p, without).unwrap();
        assert_eq!(Layout::load(&p).unwrap().ostree.osname, "hostforge");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("3GiB").unwrap(), 3 << 30);
        assert!(parse_size("3GB").is_err());
    }

    #[test]
    fn unknown_key_has_a_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.yaml");
        std::fs::write(&p, "format: raw\nsize: 1GiB\nsizes: 2\n").unwrap();
        let e = format!("{:#}", Layout::load(&p).unwrap_err());
        assert!(e.contains("l.yaml:3") && e.contains("sizes"), "{e}");
    }
}
