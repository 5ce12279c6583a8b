//! Turning an installed root into the ostree layout: `/etc` moves to `/usr/etc`, `/var` is
//! emptied into tmpfiles.d entries, the toplevel directories become what ostree expects, and
//! the treefile's edits (units, default target, os-release, remove/add files) are applied.

use crate::treefile::{CheckPasswdType, OptUsrLocal, Treefile};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Removes a path of any kind if it exists.
pub fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p)?,
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    Ok(())
}

/// `remove-files`: paths relative to the root (a leading `/` is allowed).
pub fn remove_files(root: &Path, tf: &Treefile) -> Result<()> {
    for f in tf.doc.remove_files.iter().flatten() {
        let path = inside_root(root, f).context("remove-files")?;
        remove_any(&path)?;
    }
    Ok(())
}

/// `rel` (absolute in the tree) under `root`, refusing `..` and symlinks on the way: a link
/// in the composed tree (`/var/run -> /run`) would otherwise lead a write onto the host.
fn inside_root(root: &Path, rel: &str) -> Result<std::path::PathBuf> {
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, c) in parts.iter().enumerate() {
        if *c == ".." {
            bail!("{rel:?} contains ..");
        }
        at.push(c);
        if i + 1 < parts.len() && at.is_symlink() {
            bail!(
                "{rel:?}: /{} is a symlink in the composed tree; give the path it points to",
                parts[..=i].join("/")
            );
        }
    }
    if parts.is_empty() {
        bail!("{rel:?} names no file");
    }
    Ok(at)
}

/// `add-files`: [source relative to the treefile, absolute destination].
pub fn add_files(root: &Path, tf: &Treefile) -> Result<()> {
    for (dest, src) in &tf.externals.add_files {
        let to = inside_root(root, dest)
            .with_context(|| format!("{}: add-files destination", tf.path.display()))?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        remove_any(&to)?;
        let written = std::fs::write(&to, &src.data).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(src.mode))
        });
        written.with_context(|| {
            format!(
                "{}: add-files: writing {} to {dest}",
                tf.path.display(),
                src.path.display()
            )
        })?;
    }
    Ok(())
}

fn wanted_by(unit_text: &str) -> Vec<String> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in unit_text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if in_install {
            if let Some(v) = l.strip_prefix("WantedBy=") {
                out.extend(v.split_whitespace().map(str::to_string));
            }
        }
    }
    out
}

/// `units`: enabled like `systemctl enable`, by the unit's `WantedBy=`.
pub fn enable_units(root: &Path, tf: &Treefile) -> Result<()> {
    for unit in tf.doc.units.iter().flatten() {
        let rel = format!("usr/lib/systemd/system/{unit}");
        let path = root.join(&rel);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: units: {unit} is not in /usr/lib/systemd/system of the composed tree",
                tf.path.display()
            )
        })?;
        let targets = wanted_by(&text);
        if targets.is_empty() {
            bail!(
                "{}: units: {unit} has no WantedBy= in its [Install] section",
                tf.path.display()
            );
        }
        for t in targets {
            let dir = root.join(format!("etc/systemd/system/{t}.wants"));
            std::fs::create_dir_all(&dir)?;
            let link = dir.join(unit);
            remove_any(&link)?;
            symlink(format!("/usr/lib/systemd/system/{unit}"), &link)?;
        }
    }
    Ok(())
}

pub fn default_target(root: &Path, tf: &Treefile) -> Result<()> {
    if let Some(t) = &tf.doc.default_target {
        let dir = root.join("etc/systemd/system");
        std::fs::create_dir_all(&dir)?;
        let link = dir.join("default.target");
        remove_any(&link)?;
        symlink(format!("/usr/lib/systemd/system/{t}"), link)?;
    }
    Ok(())
}

/// `mutate-os-release`: the given string in VERSION and PRETTY_NAME becomes the commit
/// version, and OSTREE_VERSION is added, as rpm-ostree does.
pub fn mutate_os_release(root: &Path, tf: &Treefile, version: Option<&str>) -> Result<()> {
    let (Some(from), Some(version)) = (&tf.doc.mutate_os_release, version) else {
        return Ok(());
    };
    // (Variables were substituted and the result checked when the treefile was loaded.)
    let from = from.as_str();
    let candidates = ["usr/lib/os-release", "etc/os-release"];
    let Some(path) = candidates
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_file() && !p.is_symlink())
    else {
        bail!(
            "{}: mutate-os-release is set but the tree has no /usr/lib/os-release",
            tf.path.display()
        );
    };
    let text = std::fs::read_to_string(&path)?;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("VERSION=") || line.starts_with("PRETTY_NAME=") {
            out.push_str(&line.replace(from, version));
        } else if line.starts_with("OSTREE_VERSION=") {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str(&format!("OSTREE_VERSION='{version}'\n"));
    remove_any(&path)?;
    std::fs::write(&path, out)?;
    Ok(())
}

/// name -> the ids that must not change: (uid, gid) from passwd lines, (gid) from group lines.
fn parse_ids(text: &str, file: &str) -> BTreeMap<String, Vec<String>> {
    let n = if file == "passwd" { 2 } else { 1 };
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 2 + n).then(|| {
                (
                    f[0].to_string(),
                    f[2..2 + n].iter().map(|s| s.to_string()).collect(),
                )
            })
        })
        .collect()
}

/// `check-passwd` / `check-groups` (default `previous`, as in rpm-ostree; `none` for
/// containers): every name of the reference keeps its ids (a user its uid and gid, a group
/// its gid), and a name of the reference missing from the new tree is refused unless
/// `ignore-removed-users` / `ignore-removed-groups` lists it (or `*`).
pub fn check_ids(root: &Path, tf: &Treefile, previous: Option<&Path>) -> Result<()> {
    let default_kind = if tf.container() {
        CheckPasswdType::None
    } else {
        CheckPasswdType::Previous
    };
    for (file, check, ignored, ignore_key) in [
        (
            "passwd",
            &tf.doc.check_passwd,
            &tf.doc.ignore_removed_users,
            "ignore-removed-users",
        ),
        (
            "group",
            &tf.doc.check_groups,
            &tf.doc.ignore_removed_groups,
            "ignore-removed-groups",
        ),
    ] {
        let kind = check.as_ref().map(|c| c.kind).unwrap_or(default_kind);
        let reference: Option<String> = match kind {
            CheckPasswdType::None => None,
            CheckPasswdType::Previous => match previous {
                Some(prev) => std::fs::read_to_string(prev.join("usr/etc").join(file)).ok(),
                None => None,
            },
            CheckPasswdType::File => {
                let ext = match file {
                    "passwd" => &tf.externals.check_passwd,
                    _ => &tf.externals.check_groups,
                };
                ext.as_ref()
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned())
            }
            CheckPasswdType::Data => check.as_ref().and_then(|c| c.entries.as_ref()).map(|m| {
                // passwd: NAME: UID or [UID, GID]; group: NAME: GID.
                m.iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::Array(a) => {
                            let id = |i: usize| a.get(i).map(|x| x.to_string()).unwrap_or_default();
                            format!("{k}:x:{}:{}\n", id(0), id(1))
                        }
                        other if file == "passwd" => format!("{k}:x:{other}:{other}\n"),
                        other => format!("{k}:x:{other}\n"),
                    })
                    .collect()
            }),
        };
        let Some(reference) = reference else { continue };
        let now = std::fs::read_to_string(root.join("etc").join(file)).unwrap_or_default();
        let (want, have) = (parse_ids(&reference, file), parse_ids(&now, file));
        let what = if file == "passwd" { "uid:gid" } else { "gid" };
        for (name, ids) in &have {
            if let Some(expected) = want.get(name) {
                // `data` may give a user's uid only: compare what the reference has.
                let differs = expected
                    .iter()
                    .zip(ids)
                    .any(|(e, h)| !e.is_empty() && e != h);
                if differs {
                    bail!(
                        "{}: check-{file}: {name} has {what} {} in the new tree but {} in the \
                         reference; files owned by it would change owner",
                        tf.path.display(),
                        ids.join(":"),
                        expected.join(":")
                    );
                }
            }
        }
        let ignored = ignored.as_deref().unwrap_or_default();
        let removed: Vec<&String> = want
            .keys()
            .filter(|n| !have.contains_key(*n))
            .filter(|n| !ignored.iter().any(|i| i == "*" || i == *n))
            .collect();
        if !removed.is_empty() {
            let names: Vec<&str> = removed.iter().map(|s| s.as_str()).collect();
            bail!(
                "{}: check-{file}: {} of the reference {} missing from the new tree; list \
                 {} under {ignore_key} if that is meant",
                tf.path.display(),
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
                if names.len() == 1 { "it" } else { "them" }
            );
        }
    }
    Ok(())
}

/// Converts what is left in `/var` into tmpfiles.d `d`/`L` lines and empties it.
fn var_to_tmpfiles(root: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    fn walk(base: &Path, dir: &Path, lines: &mut Vec<String>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let shown = format!("/{}", p.strip_prefix(base).unwrap().display());
            // Names with spaces, quotes, '%' or newlines stay one field of one line.
            let rel = crate::validate::tmpfiles_path(&shown)?;
            let m = std::fs::symlink_metadata(&p)?;
            if m.is_dir() {
                lines.push(format!(
                    "d {rel} {:04o} root root - -",
                    m.permissions().mode() & 0o7777
                ));
                walk(base, &p, lines)?;
            } else if m.is_symlink() {
                let target = std::fs::read_link(&p)?.display().to_string();
                let target = crate::validate::tmpfiles_link_target(&shown, &target)?;
                lines.push(format!("L {rel} - - - - {target}"));
            }
        }
        Ok(())
    }
    // Paths a package already declared keep the package's line (its mode and owner).
    let mut declared = std::collections::HashSet::new();
    if let Ok(rd) = std::fs::read_dir(root.join("usr/lib/tmpfiles.d")) {
        for e in rd.flatten() {
            for l in std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
            {
                if let Some(p) = l.split_whitespace().nth(1) {
                    declared.insert(p.to_string());
                }
            }
        }
    }
    let var = root.join("var");
    if var.is_dir() {
        walk(root, &var, &mut lines)?;
        lines.retain(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| !declared.contains(p))
        });
        std::fs::remove_dir_all(&var)?;
    }
    std::fs::create_dir_all(&var)?;
    Ok(lines)
}

/// The ostree layout: /etc → /usr/etc, /var empty, toplevel links into /var and /sysroot.
/// A container root: the rpmdb stays in /usr/share/rpm with /var/lib/rpm pointing at it,
/// /tmp is a sticky directory, and the mount points a runtime expects exist. /etc and /var
/// stay where they are; there is no /boot.
pub fn container_layout(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let rpm = root.join("var/lib/rpm");
    remove_any(&rpm)?;
    std::fs::create_dir_all(root.join("var/lib"))?;
    symlink("../../usr/share/rpm", &rpm)?;
    remove_any(&root.join("tmp"))?;
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for d in ["dev", "proc", "sys", "run", "host"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let boot = root.join("boot");
    if std::fs::symlink_metadata(&boot).is_ok() {
        remove_any(&boot)?;
    }
    Ok(())
}

pub fn ostree_layout(root: &Path, tf: &Treefile) -> Result<()> {
    if tf.doc.machineid_compat == Some(false) {
        remove_any(&root.join("etc/machine-id"))?;
    }
    // The rpmdb lives in /usr/share/rpm; /var/lib/rpm points at it.
    let mut lines = var_to_tmpfiles(root)?;
    lines.retain(|l| !l.starts_with("d /var/lib/rpm ") && !l.starts_with("L /var/lib/rpm "));
    // `opt-usrlocal: root` keeps /opt and /usr/local as directories of the commit
    // (read-only, content kept); by default they point into /var like rpm-ostree's.
    let opt_in_var = tf.doc.opt_usrlocal.unwrap_or_default() == OptUsrLocal::Var;
    let links: &[(&str, &str)] = &[
        ("home", "var/home"),
        ("root", "var/roothome"),
        ("opt", "var/opt"),
        ("srv", "var/srv"),
        ("mnt", "var/mnt"),
        ("media", "run/media"),
        ("ostree", "sysroot/ostree"),
    ];
    for (name, target) in links {
        if *name == "opt" && !opt_in_var {
            std::fs::create_dir_all(root.join("opt"))?;
            continue;
        }
        let p = root.join(name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            // Content shipped in these dirs cannot survive; ostree keeps them in /var.
            std::fs::remove_dir_all(&p)?;
        }
        remove_any(&p)?;
        symlink(target, &p)?;
    }
    let local = root.join("usr/local");
    if opt_in_var {
        remove_any(&local)?;
        std::fs::create_dir_all(root.join("usr"))?;
        symlink("../var/usrlocal", &local)?;
    } else if !local.is_dir() || local.is_symlink() {
        remove_any(&local)?;
        std::fs::create_dir_all(&local)?;
    }
    for d in [
        "var/home",
        "var/roothome",
        "var/opt",
        "var/srv",
        "var/mnt",
        "var/usrlocal",
    ] {
        if !opt_in_var && (d == "var/opt" || d == "var/usrlocal") {
            continue;
        }
        let mode = if d == "var/roothome" { "0700" } else { "0755" };
        lines.push(format!("d /{d} {mode} root root - -"));
    }
    lines.push("L /var/lib/rpm - - - - ../../usr/share/rpm".into());
    if tf.tmp_is_dir() {
        remove_any(&root.join("tmp"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    } else {
        remove_any(&root.join("tmp"))?;
        symlink("sysroot/tmp", root.join("tmp"))?;
    }
    for d in ["sysroot", "boot", "dev", "proc", "sys", "run", "var"] {
        let p = root.join(d);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            // Keep /boot content (kernels may be placed there); empty the API filesystems.
            if d != "boot" && d != "var" {
                std::fs::remove_dir_all(&p)?;
            }
        }
        std::fs::create_dir_all(&p)?;
    }
    let tmpfiles_dir = root.join("usr/lib/tmpfiles.d");
    std::fs::create_dir_all(&tmpfiles_dir)?;
    lines.sort();
    lines.dedup();
    std::fs::write(
        tmpfiles_dir.join("hostforge-autovar.conf"),
        format!(
            "# Generated by hostforge: /var as the composed tree had it\n{}\n",
            lines.join("\n")
        ),
    )?;
    // Finally /etc becomes the default configuration ostree merges at deploy time.
    let etc = root.join("etc");
    let usr_etc = root.join("usr/etc");
    if std::fs::symlink_metadata(&usr_etc).is_ok() {
        bail!("the composed tree already has /usr/etc; it would be overwritten by /etc");
    }
    if etc.is_dir() {
        std::fs::rename(&etc, &usr_etc)?;
    } else {
        std::fs::create_dir_all(&usr_etc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd names in /var stay one path each: systemd-tmpfiles recreates exactly them.
    #[test]
    fn var_names_with_spaces_quotes_and_percent_survive_tmpfiles() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let odd = ["a b", "100%h", "q'\"x", "back\\slash"];
        for n in odd {
            std::fs::create_dir_all(root.join("var/lib").join(n)).unwrap();
        }
        symlink("../run/x%y z", root.join("var/lnk")).unwrap();
        let lines = var_to_tmpfiles(&root).unwrap();
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");
        let conf = d.path().join("t.conf");
        std::fs::write(&conf, lines.join("\n") + "\n").unwrap();
        let again = d.path().join("again");
        std::fs::create_dir_all(&again).unwrap();
        crate::process::run(
            std::process::Command::new("systemd-tmpfiles")
                .arg("--create")
                .arg(format!("--root={}", again.display()))
                .arg(&conf),
        )
        .unwrap();
        for n in odd {
            assert!(again.join("var/lib").join(n).is_dir(), "{n:?}: {lines:?}");
        }
        assert_eq!(
            std::fs::read_link(again.join("var/lnk")).unwrap(),
            Path::new("../run/x%y z")
        );
        // A newline cannot be one field: refused with the path named.
        std::fs::create_dir_all(root.join("var/lib/new\nline")).unwrap();
        let e = format!("{:#}", var_to_tmpfiles(&root).unwrap_err());
        assert!(e.contains("new\\nline"), "{e}");
    }

    /// Regression: add-files wrote through a symlink of the composed tree onto the host.
    #[test]
    fn add_files_destinations_stay_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("var")).unwrap();
        symlink(d.path().join("host"), root.join("var/run")).unwrap();
        for (dest, says) in [
            ("/var/run/x", "/var/run is a symlink"),
            ("/usr/../../x", "contains .."),
            ("/", "names no file"),
        ] {
            let e = format!("{:#}", inside_root(&root, dest).unwrap_err());
            assert!(e.contains(says), "{dest}: {e}");
        }
        assert_eq!(inside_root(&root, "/etc/x").unwrap(), root.join("etc/x"));
    }

    /// Regression: remove-files deleted through a symlink of the composed tree on the host.
    #[test]
    fn remove_files_stay_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let (root, host) = (d.path().join("root"), d.path().join("host"));
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("x"), "keep").unwrap();
        symlink(&host, root.join("var/run")).unwrap();
        for f in ["/var/run/x", "usr/../../host/x"] {
            let dir = d.path().join("tf");
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("t.yaml");
            std::fs::write(
                &p,
                format!("ref: a/b\nrepos: [r]\npackages: [x]\nremove-files: [\"{f}\"]\n"),
            )
            .unwrap();
            let tf = Treefile::load(&p).unwrap();
            let e = format!("{:#}", remove_files(&root, &tf).unwrap_err());
            assert!(e.starts_with("remove-files"), "{f}: {e}");
            assert!(host.join("x").exists(), "{f}");
        }
    }

    #[test]
    fn wanted_by_reads_install_section() {
        let t = "[Unit]\nWantedBy=no\n[Install]\nWantedBy=multi-user.target graphical.target\n";
        assert_eq!(wanted_by(t), ["multi-user.target", "graphical.target"]);
    }
}
