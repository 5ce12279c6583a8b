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
    Grub2Bios,
    None,
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

#[derive(Debug, Clone, Deserialize, Default)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layout {
    pub format: Format,
    pub size: String,
    pub disk_guid: String,
    pub bootloader: Bootloader,
    #[serde(default)]
    pub kargs: Vec<String>,
    #[serde(default)]
    pub ostree: OstreeSettings,
    pub partitions: Vec<PartitionSpec>,
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

impl Layout {
    pub fn load(path: &Path) -> Result<Layout> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading layout {}", path.display()))?;
        let layout: Layout = crate::treefile::yaml_from_str(path, &text)?;
        layout
            .validate()
            .with_context(|| format!("layout {}", path.display()))?;
        Ok(layout)
    }

    fn validate(&self) -> Result<()> {
        parse_size(&self.size)?;
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
            if p.mount.is_some() {
                if p.filesystem.as_deref() != Some("ext4") {
                    bail!(
                        "partition {}: filesystem must be ext4 (the only one supported yet)",
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
        if self.bootloader == Bootloader::Grub2Bios
            && !self.partitions.iter().any(|p| p.kind == PartType::BiosBoot)
        {
            bail!("bootloader grub2-bios needs a partition of type bios-boot (1MiB is enough)");
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
