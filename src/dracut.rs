//! The ostree dracut module: its source lives in `dracut/` and is compiled in, so
//! `hostforge dracut emit` and compose write the same files everywhere.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const MODULE_SETUP: &str = include_str!("../dracut/module-setup.sh");
const PREPARE_ROOT_UNIT: &str = include_str!("../dracut/ostree-prepare-root.service");

/// What to emit.
#[derive(Debug, Clone)]
pub struct Module {
    /// dracut module name, as given to `dracut --add`.
    pub name: String,
    /// Two-digit ordering prefix of the module directory.
    pub number: u8,
    /// `section.key=value` lines for `prepare-root.conf`, e.g. `sysroot.readonly=true`.
    pub prepare_root: Vec<String>,
}

impl Default for Module {
    fn default() -> Self {
        Module {
            name: "ostree".into(),
            number: 98,
            prepare_root: Vec::new(),
        }
    }
}

/// Renders `section.key=value` settings as ostree's prepare-root.conf keyfile.
pub fn prepare_root_conf(settings: &[String]) -> Result<String> {
    let mut sections: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for s in settings {
        let (lhs, value) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("prepare-root setting {s:?}: expected SECTION.KEY=VALUE"))?;
        let (section, key) = lhs
            .split_once('.')
            .ok_or_else(|| anyhow!("prepare-root setting {s:?}: expected SECTION.KEY=VALUE"))?;
        let keyfile_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        };
        if !keyfile_name(section) || !keyfile_name(key) {
            bail!(
                "prepare-root setting {s:?}: section and key must be letters, digits, '-' or '_'"
            );
        }
        if value.chars().any(char::is_control) {
            bail!("prepare-root setting {s:?}: the value must be one line");
        }
        sections.entry(section).or_default().push((key, value));
    }
    let mut out = String::new();
    for (section, kvs) in sections {
        out.push_str(&format!("[{section}]\n"));
        for (k, v) in kvs {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    Ok(out)
}

impl Module {
    pub fn dir_name(&self) -> String {
        format!("{:02}{}", self.number, self.name)
    }

    /// Writes the module into `modules_d/NNname/`, replacing what was there; returns the dir.
    pub fn write(&self, modules_d: &Path) -> Result<PathBuf> {
        crate::validate::plain_name("--name (the dracut module name)", &self.name)?;
        if self.number > 99 {
            bail!("dracut module number {} is not two digits", self.number);
        }
        let dir = modules_d.join(self.dir_name());
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("replacing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let setup = dir.join("module-setup.sh");
        std::fs::write(&setup, MODULE_SETUP)?;
        std::fs::set_permissions(&setup, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(dir.join("ostree-prepare-root.service"), PREPARE_ROOT_UNIT)?;
        if !self.prepare_root.is_empty() {
            std::fs::write(
                dir.join("prepare-root.conf"),
                prepare_root_conf(&self.prepare_root)?,
            )?;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_root_settings_group_by_section() {
        let conf = prepare_root_conf(&[
            "sysroot.readonly=true".into(),
            "composefs.enabled=no".into(),
        ])
        .unwrap();
        assert_eq!(
            conf,
            "[composefs]\nenabled = no\n[sysroot]\nreadonly = true\n"
        );
        assert!(prepare_root_conf(&["readonly=true".into()]).is_err());
    }

    #[test]
    fn writes_module_dir() {
        let d = tempfile::tempdir().unwrap();
        let m = Module {
            name: "hf-ostree".into(),
            number: 99,
            prepare_root: vec!["sysroot.readonly=true".into()],
        };
        let dir = m.write(d.path()).unwrap();
        assert_eq!(dir, d.path().join("99hf-ostree"));
        let mode = std::fs::metadata(dir.join("module-setup.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert!(dir.join("prepare-root.conf").exists());
    }

    #[test]
    fn prepare_root_settings_cannot_add_lines_or_sections() {
        for bad in [
            "sysroot.readonly=true\n[composefs]\nenabled=yes",
            "sysroot.readonly=true\renabled",
            "sys]root.readonly=true",
            "sysroot.read only=true",
            "[x].y=1",
        ] {
            let e = prepare_root_conf(&[bad.into()]).unwrap_err();
            assert!(
                format!("{e:#}").contains("prepare-root setting"),
                "{bad:?}: {e:#}"
            );
        }
        for bad in ["../x", "a b", "x\ny", ""] {
            let m = Module {
                name: bad.into(),
                number: 98,
                prepare_root: vec![],
            };
            let d = tempfile::tempdir().unwrap();
            let e = m.write(d.path()).unwrap_err();
            assert!(format!("{e:#}").contains("--name"), "{bad:?}: {e:#}");
        }
    }
}
