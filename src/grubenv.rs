//! GRUB's environment block (`grub/grubenv` on /boot) and the boot counting kept in it.
//!
//! The block is one 1024-byte file: `# GRUB Environment Block`, `name=value` lines, `#`
//! padding. GRUB reads it with `load_env` and writes it with `save_env` straight to the disk
//! blocks of the file, so a block that exists is rewritten in place (same inode, same disk
//! block): a new inode could sit in the filesystem's journal where GRUB, which does not replay
//! journals, would not see it.
//!
//! Boot counting, as greenboot does it: `boot_success=0` and `boot_counter=N` put the default
//! deployment on trial; GRUB's menu ([`counting_menu`]) takes one from the counter on each boot
//! and, when none is left, boots entry 1 (the previous deployment) with `boot_counter=-1`.
//! Userspace ends the trial with `boot_success=1` once the boot was found healthy.
//!
//! The update agent (`src/bin/hostforge-update`) compiles this file too (it links nothing of
//! the hostforge library), so it uses nothing but std and anyhow.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Seek, Write};
use std::path::Path;

/// The size of every GRUB environment block.
pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";
/// The most boots a deployment on trial may get: GRUB's menu counts down one digit.
pub const MAX_ATTEMPTS: u8 = 9;

/// The GRUB script that counts boots, the same in hostforge's menu and in the node's
/// `grub-mkconfig` (a test compares them). `$prefix` is the GRUB directory on /boot.
pub fn counting_menu() -> String {
    let mut s = String::from(
        "# Boot counting (hostforge-update): while a new deployment is on trial (boot_success=0),\n\
         # each boot of it takes one from boot_counter; when none is left, entry 1 boots instead.\n\
         if [ -f \"${prefix}/grubenv\" ]; then\n\
         \x20 load_env -f \"${prefix}/grubenv\" boot_counter boot_success\n\
         fi\n\
         if [ \"${boot_success}\" = \"0\" -a -n \"${boot_counter}\" ]; then\n\
         \x20 if [ \"${boot_counter}\" = \"0\" -o \"${boot_counter}\" = \"-1\" ]; then\n\
         \x20   set default=1\n\
         \x20   set boot_counter=-1\n",
    );
    for n in 1..=MAX_ATTEMPTS {
        s.push_str(&format!(
            "  elif [ \"${{boot_counter}}\" = \"{n}\" ]; then\n    set boot_counter={}\n",
            n - 1
        ));
    }
    s.push_str("  fi\n  save_env -f \"${prefix}/grubenv\" boot_counter\nfi\n");
    s
}

/// The variables of one environment block, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

/// Where a deployment stands in boot counting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Counting {
    /// No trial: the default deployment boots and nothing counts.
    Settled,
    /// The default deployment is on trial; `left` more boots before GRUB gives up on it.
    OnTrial { left: u8 },
    /// GRUB gave up: the previous deployment (entry 1) was booted instead.
    FellBack,
}

impl Env {
    /// Parses a block; anything but GRUB's own format is an error naming `origin`.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Env> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow!("{origin}: not a GRUB environment block (not UTF-8)"))?;
        let body = text
            .strip_prefix(HEADER)
            .ok_or_else(|| anyhow!("{origin}: not a GRUB environment block (no header)"))?;
        let mut vars = Vec::new();
        for line in body.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("{origin}: line {line:?} is not NAME=VALUE"))?;
            vars.push((k.to_string(), v.to_string()));
        }
        Ok(Env { vars })
    }

    /// Reads the block at `path`; a missing file is an empty environment.
    pub fn read(path: &Path) -> Result<Env> {
        match std::fs::read(path) {
            Ok(b) => Env::parse(&b, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Env::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`; names are GRUB variable names, values one plain line without backslashes
    /// (GRUB would read an escape), so nothing written here becomes another variable.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("GRUB environment: {key:?} is not a variable name");
        }
        if value.chars().any(|c| c.is_control() || c == '\\') {
            bail!("GRUB environment: the value of {key} holds a control character or a backslash");
        }
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn unset(&mut self, key: &str) {
        self.vars.retain(|(k, _)| k != key);
    }

    /// The block's 1024 bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = HEADER.as_bytes().to_vec();
        for (k, v) in &self.vars {
            out.extend_from_slice(format!("{k}={v}\n").as_bytes());
        }
        if out.len() > SIZE {
            bail!("GRUB environment: the variables take more than {SIZE} bytes");
        }
        out.resize(SIZE, b'#');
        Ok(out)
    }

    /// Writes the block to `path`: over the existing block in place when there is one of the
    /// right size, else as a new file by rename; synced either way.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let ctx = || format!("writing {}", path.display());
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == SIZE as u64) {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(ctx)?;
            f.rewind()?;
            f.write_all(&bytes).with_context(ctx)?;
            f.sync_all().with_context(ctx)?;
            return Ok(());
        }
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{}: no directory", path.display()))?;
        std::fs::create_dir_all(dir).with_context(ctx)?;
        let tmp = path.with_extension("new");
        let mut f = std::fs::File::create(&tmp).with_context(ctx)?;
        f.write_all(&bytes).with_context(ctx)?;
        f.sync_all().with_context(ctx)?;
        std::fs::rename(&tmp, path).with_context(ctx)?;
        std::fs::File::open(dir)?.sync_all().with_context(ctx)?;
        Ok(())
    }

    /// Where boot counting stands.
    pub fn counting(&self) -> Counting {
        if self.get("boot_success") != Some("0") {
            return Counting::Settled;
        }
        match self.get("boot_counter") {
            Some("-1") => Counting::FellBack,
            Some(n) => match n.parse::<u8>() {
                Ok(left) => Counting::OnTrial { left },
                Err(_) => Counting::Settled,
            },
            None => Counting::Settled,
        }
    }

    /// Puts the next default deployment on trial for `attempts` boots (1 to [`MAX_ATTEMPTS`]).
    pub fn arm(&mut self, attempts: u8) -> Result<()> {
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            bail!("boot attempts: {attempts} is not between 1 and {MAX_ATTEMPTS}");
        }
        self.set("boot_success", "0")?;
        self.set("boot_counter", &attempts.to_string())
    }

    /// Ends any trial: the booted deployment is good, nothing counts any more.
    pub fn settle(&mut self) -> Result<()> {
        self.unset("boot_counter");
        self.set("boot_success", "1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_in_grubs_format() {
        let mut e = Env::default();
        e.set("saved_entry", "x").unwrap();
        e.arm(3).unwrap();
        let b = e.to_bytes().unwrap();
        assert_eq!(b.len(), SIZE);
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "# GRUB Environment Block\nsaved_entry=x\nboot_success=0\nboot_counter=3\n###"
        ));
        let back = Env::parse(&b, "t").unwrap();
        assert_eq!(back, e);
        assert_eq!(back.counting(), Counting::OnTrial { left: 3 });
        let mut fell = back.clone();
        fell.set("boot_counter", "-1").unwrap();
        assert_eq!(fell.counting(), Counting::FellBack);
        fell.settle().unwrap();
        assert_eq!(fell.counting(), Counting::Settled);
        assert_eq!(fell.get("boot_counter"), None);
        assert_eq!(fell.get("saved_entry"), Some("x"));
        assert!(Env::parse(b"garbage", "grubenv")
            .unwrap_err()
            .to_string()
            .contains("grubenv: not a GRUB environment block"));
    }

    /// A newline or an escape in a value never becomes a second variable.
    #[test]
    fn nothing_smuggled_into_the_block() {
        let mut e = Env::default();
        for bad in ["1\nboot_counter=9", "a\\", "x\r"] {
            assert!(e.set("boot_success", bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a=b", "a b", "9x", "a\nb"] {
            assert!(e.set(bad, "1").is_err(), "{bad:?}");
        }
        assert!(e.arm(0).is_err() && e.arm(10).is_err());
        e.set("big", &"x".repeat(SIZE)).unwrap();
        assert!(e.to_bytes().is_err());
    }

    #[test]
    fn an_existing_block_is_rewritten_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grub/grubenv");
        assert_eq!(Env::read(&p).unwrap(), Env::default());
        let mut e = Env::default();
        e.write(&p).unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        e.arm(2).unwrap();
        e.write(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(
            Env::read(&p).unwrap().counting(),
            Counting::OnTrial { left: 2 }
        );
        assert_eq!(std::fs::metadata(&p).unwrap().len(), SIZE as u64);
    }

    #[test]
    fn the_menu_counts_down_every_digit() {
        let m = counting_menu();
        for n in 1..=MAX_ATTEMPTS {
            assert!(m.contains(&format!(
                "= \"{n}\" ]; then\n    set boot_counter={}\n",
                n - 1
            )));
        }
        assert!(m.ends_with("save_env -f \"${prefix}/grubenv\" boot_counter\nfi\n"));
    }
}
