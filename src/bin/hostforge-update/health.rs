//! Health checks: what must hold before a boot counts as good (`boot-complete.target`).
//!
//! Checks live in `/usr/lib/hostforge/health.d` (shipped in the OS) and
//! `/etc/hostforge/health.d` (the node's own); a name in /etc replaces the same name in
//! /usr/lib, and a link to /dev/null there turns it off. An executable is a script, run by
//! `hostforge-health.service` in name order; a `*.service` file is a unit, which the generator
//! ([`generate`]) makes `boot-complete.target` require, ordered before it.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DIRS: [&str; 2] = ["/usr/lib/hostforge/health.d", "/etc/hostforge/health.d"];

/// The checks by name, later directories replacing earlier ones; masked names dropped.
pub fn checks(dirs: &[&Path]) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            out.insert(name, e.path());
        }
    }
    out.retain(|_, p| std::fs::canonicalize(p).map_or(true, |t| t != Path::new("/dev/null")));
    Ok(out)
}

fn is_unit(name: &str) -> bool {
    name.ends_with(".service")
}

/// A unit name systemd accepts and that stays one path component.
fn valid_unit_name(name: &str) -> bool {
    name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

/// What the failed script said, with its name.
#[derive(Debug)]
pub struct Failure {
    pub why: String,
}

/// Runs every script in name order, printing their output with their name; the first
/// failure ends the run (later checks would only add noise to a boot already judged bad).
pub fn run_scripts(dirs: &[&Path]) -> Result<Option<Failure>> {
    use std::os::unix::fs::PermissionsExt;
    for (name, path) in checks(dirs)? {
        if is_unit(&name) {
            continue;
        }
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            println!(
                "hostforge-health: {} is not an executable file; skipped",
                path.display()
            );
            continue;
        }
        let out = std::process::Command::new(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running health check {}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            println!("hostforge-health: {name}: {l}");
        }
        if !out.status.success() {
            let last = text
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            let status = match out.status.code() {
                Some(c) => format!("exit status {c}"),
                None => "a signal".to_string(),
            };
            return Ok(Some(Failure {
                why: format!("health check {name} failed ({status}): {last}"),
            }));
        }
        println!("hostforge-health: {name}: passed");
    }
    Ok(None)
}

/// The systemd generator: every unit in the health directories is linked into `normal`
/// (the generator's output directory), required by `boot-complete.target` and ordered
/// before it by a drop-in. Names systemd would not accept are reported and skipped.
pub fn generate(dirs: &[&Path], normal: &Path) -> Result<()> {
    let wants = normal.join("boot-complete.target.requires");
    for (name, path) in checks(dirs)? {
        if !is_unit(&name) {
            continue;
        }
        if !valid_unit_name(&name) {
            eprintln!("hostforge-health-generator: {name:?} is not a unit name; skipped");
            continue;
        }
        std::fs::create_dir_all(&wants)?;
        let link = normal.join(&name);
        if !link.exists() {
            std::os::unix::fs::symlink(&path, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&path, wants.join(&name))?;
        let dropin = normal.join(format!("{name}.d"));
        std::fs::create_dir_all(&dropin)?;
        std::fs::write(
            dropin.join("50-hostforge-health.conf"),
            "# A hostforge health check: the boot is good only if this unit succeeds.\n\
             [Unit]\nBefore=boot-complete.target\n",
        )?;
    }
    Ok(())
}

/// The failed units systemd knows of (for the reason of a bad boot that no script gave).
pub fn failed_units() -> Vec<String> {
    let out = std::process::Command::new("systemctl")
        .args(["list-units", "--failed", "--no-legend", "--plain"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether systemd reached `boot-complete.target` (every check it requires passed).
pub fn boot_complete() -> Result<bool> {
    let st = std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "boot-complete.target"])
        .status()
        .context("running systemctl is-active boot-complete.target")?;
    Ok(st.success())
}

/// Fails unless every generator argument is an absolute directory (systemd passes three).
pub fn generator_dir(args: &[PathBuf]) -> Result<&Path> {
    match args.first() {
        Some(p) if p.is_absolute() => Ok(p),
        _ => bail!("usage: hostforge-update generate NORMAL_DIR [EARLY_DIR LATE_DIR]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn etc_replaces_and_masks_usr_lib() {
        let t = tempfile::tempdir().unwrap();
        let (usr, etc) = (t.path().join("usr"), t.path().join("etc"));
        script(&usr, "10-ok", "echo fine");
        script(&usr, "20-bad", "echo broken >&2; exit 3");
        script(&usr, "30-masked", "exit 1");
        std::fs::write(usr.join("README"), "not a check").unwrap();
        let dirs = [usr.as_path(), etc.as_path()];
        let f = run_scripts(&dirs).unwrap().expect("20-bad fails");
        assert_eq!(f.why, "health check 20-bad failed (exit status 3): broken");
        script(&etc, "20-bad", "exit 0");
        std::os::unix::fs::symlink("/dev/null", etc.join("30-masked")).unwrap();
        assert!(run_scripts(&dirs).unwrap().is_none());
        let names: Vec<String> = checks(&dirs).unwrap().into_keys().collect();
        assert_eq!(names, ["10-ok", "20-bad", "README"]);
    }

    #[test]
    fn units_are_required_by_boot_complete() {
        let t = tempfile::tempdir().unwrap();
        let usr = t.path().join("usr");
        std::fs::create_dir_all(&usr).unwrap();
        std::fs::write(
            usr.join("disk-ok.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        std::fs::write(usr.join("bad name\n.service"), "").unwrap();
        script(&usr, "10-script", "true");
        let normal = t.path().join("gen");
        generate(&[usr.as_path()], &normal).unwrap();
        let req = normal.join("boot-complete.target.requires");
        let linked: Vec<_> = std::fs::read_dir(&req)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(linked, ["disk-ok.service"]);
        assert_eq!(
            std::fs::read_link(req.join("disk-ok.service")).unwrap(),
            usr.join("disk-ok.service")
        );
        let dropin =
            std::fs::read_to_string(normal.join("disk-ok.service.d/50-hostforge-health.conf"))
                .unwrap();
        assert!(dropin.ends_with("[Unit]\nBefore=boot-complete.target\n"));
    }
}
