//! Running package scriptlets and treefile postprocess scripts inside the target root with
//! bubblewrap: no network, the host invisible. While scripts run, the root is seen through
//! rofiles-fuse so a script can replace files but never write into a hardlink that is shared
//! with the package cache (the same protection rpm-ostree uses).

use crate::process;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A rofiles-fuse view of the root, unmounted on drop.
pub struct Protected {
    mnt: PathBuf,
}

impl Protected {
    pub fn mount(root: &Path, mnt: &Path) -> Result<Protected> {
        unmount_stale(mnt);
        std::fs::create_dir_all(mnt).with_context(|| format!("creating {}", mnt.display()))?;
        process::run(Command::new("rofiles-fuse").arg(root).arg(mnt))
            .context("mounting the root read-only for hardlinks (rofiles-fuse)")?;
        let protected = Protected {
            mnt: mnt.to_path_buf(),
        };
        // rofiles-fuse exits 0 when its mount fails after it went into the background (no
        // /dev/fuse, no right to mount): without this check the scripts would see an empty
        // directory for a root.
        if !is_mount_point(mnt) {
            bail!(
                "rofiles-fuse did not mount the root at {} (it needs /dev/fuse and the right \
                 to mount: in a container, pass --device /dev/fuse --cap-add SYS_ADMIN)",
                mnt.display()
            );
        }
        Ok(protected)
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

/// Whether a filesystem is mounted at `dir` (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts what a killed run may have left mounted at `mnt`. Its FUSE daemon may be gone
/// too: the mount point then fails every access (ENOTCONN), looks absent to `exists()`, and
/// makes `create_dir_all` fail with EEXIST; a lazy unmount clears it either way.
pub fn unmount_stale(mnt: &Path) {
    if std::fs::symlink_metadata(mnt).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return;
    }
    process::run_best_effort(
        Command::new("fusermount3")
            .args(["-u", "-q", "-z"])
            .arg(mnt),
    );
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = process::run(Command::new("fusermount3").arg("-u").arg(&self.mnt));
    }
}

/// bubblewrap with `root` as `/` (read-only unless `writable`): fresh /dev, /proc, /tmp and
/// /run, every namespace unshared (so no network), a clean environment. Callers add binds and
/// then `--` and the program.
pub fn sandbox(root: &Path, writable: bool) -> Command {
    let mut cmd = Command::new("bwrap");
    cmd.arg(if writable { "--bind" } else { "--ro-bind" })
        .arg(root)
        .arg("/")
        .args([
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run",
        ])
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--chdir",
            "/",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/sbin:/usr/bin:/sbin:/bin",
            "--setenv",
            "LANG",
            "C",
        ]);
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        cmd.args(["--setenv", "SOURCE_DATE_EPOCH", &epoch]);
    }
    cmd
}

/// One script to run in the root.
pub struct Script<'a> {
    /// Who the script belongs to, for messages: "foo-1.0-1.x86_64 %post".
    pub label: &'a str,
    pub interpreter: Vec<String>,
    pub body: &'a str,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

/// Runs `script` with bubblewrap in `root`, returning its output; on failure the error
/// names the script and shows the tail of what it printed.
pub fn run_in_root(root: &Path, scratch: &Path, script: &Script) -> Result<String> {
    std::fs::create_dir_all(scratch)?;
    let file = scratch.join("script");
    std::fs::write(&file, script.body)?;
    let mut cmd = sandbox(root, true);
    cmd.arg("--ro-bind")
        .arg(&file)
        .arg("/tmp/.hostforge-script")
        .arg("--");
    let interp = if script.interpreter.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        script.interpreter.clone()
    };
    let prog = &interp[0];
    let prog_in_root = root.join(prog.trim_start_matches('/'));
    if std::fs::symlink_metadata(&prog_in_root).is_err() {
        bail!(
            "{}: interpreter {prog} does not exist in the composed root; add the package \
             that provides it",
            script.label
        );
    }
    cmd.args(&interp)
        .arg("/tmp/.hostforge-script")
        .args(&script.args);
    let out = process::output_with_input(&mut cmd, script.stdin.as_deref())
        .with_context(|| format!("{}: running the script with bwrap", script.label))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // bubblewrap's own errors ("bwrap: Can't mount proc ...") mean the sandbox could not
        // be made: the script never ran, and the fix is in how hostforge is run.
        let hint = if out.stderr.starts_with(b"bwrap: ") {
            "\n(bubblewrap could not make the sandbox; it needs the right to mount and a fresh \
             /proc: in a container, pass --cap-add SYS_ADMIN --security-opt unmask=/proc/*)"
        } else {
            ""
        };
        return Err(anyhow!(
            "{} failed ({}); last output:\n{}{hint}",
            script.label,
            process::status_text(&out.status),
            process::tail(&text, 20)
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `%transfiletriggerin` fed more than a pipe holds, whose script prints
    /// more than a pipe holds before reading, hung compose (stdin was written before the
    /// output was read).
    #[test]
    fn trigger_with_megabytes_in_and_out_does_not_hang() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "head", "wc"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let input: Vec<u8> = (0..40_000)
            .flat_map(|i| format!("/usr/share/doc/pkg/file-{i:08}\n").into_bytes())
            .collect();
        assert!(input.len() > 1 << 20);
        let out = run_in_root(
            &root,
            &d.path().join("scratch"),
            &Script {
                label: "big-1-1.x86_64 %transfiletriggerin",
                interpreter: vec![],
                body: "head -c 1500000 /dev/zero\necho\nwc -l\n",
                args: vec![],
                stdin: Some(input),
            },
        )
        .unwrap();
        assert!(out.len() > 1_500_000);
        assert_eq!(out.trim_end().rsplit('\n').next().unwrap().trim(), "40000");
    }
}

/// rpm-ostree's shell replacements for Lua scriptlets it knows, keyed `NAME.KIND` (KIND as
/// rpm-ostree names it: `prein`, `post`, `posttrans`, `transfiletriggerin`). `%{_install_langs}`
/// in a body becomes the treefile's `install-langs` (`all` without it).
const LUA_REPLACEMENTS: &[(&str, &str, &str)] = &[
    (
        "fedora-release-atomichost.post",
        "/usr/bin/sh",
        "set -euo pipefail\nln -sf os.release.d/os-release-atomichost /usr/lib/os-release\n",
    ),
    (
        "fedora-release-coreos.post",
        "/usr/bin/sh",
        "set -euo pipefail\nln -sf os.release.d/os-release-coreos /usr/lib/os-release\n",
    ),
    (
        "fedora-release-workstation.post",
        "/usr/bin/sh",
        "set -euo pipefail\nln -sf os.release.d/os-release-workstation /usr/lib/os-release\n\
         preset=/usr/lib/os.release.d/presets/80-workstation.preset\n\
         if [ -f \"${preset}\" ]; then ln -sr ${preset} /usr/lib/systemd/system-preset && \
         systemctl preset -q sshd.socket sshd.service cups.socket cups.path cups.service; fi\n",
    ),
    (
        "fedora-release.post",
        "/usr/bin/sh",
        "set -euo pipefail\nif ! test -L /usr/lib/os-release; then ln -s \
         os.release.d/os-release-fedora /usr/lib/os-release; fi\n",
    ),
    (
        "glibc-all-langpacks.posttrans",
        "/usr/bin/sh",
        GLIBC_LANGPACKS,
    ),
    ("glibc-common.post", "/usr/bin/sh", GLIBC_LANGPACKS),
    (
        "glibc-common.transfiletriggerin",
        "/usr/bin/sh",
        "/sbin/ldconfig",
    ),
    ("glibc.post", "/usr/bin/bash", GLIBC_GCONV),
    ("glibc.posttrans", "/usr/bin/true", ""),
    ("glibc-gconv-extra.post", "/usr/bin/bash", GLIBC_GCONV),
    (
        "crypto-policies.post",
        "/usr/bin/bash",
        "cp /usr/share/crypto-policies/default-config /etc/crypto-policies/config\n\
         echo DEFAULT > /etc/crypto-policies/state/current\n\
         for f in /usr/share/crypto-policies/DEFAULT/*; do\n\
         \x20 ln -sf $f /etc/crypto-policies/back-ends/$(basename $f .txt).config\ndone",
    ),
    (
        "authselect-libs.prein",
        "/usr/bin/bash",
        "touch /var/lib/rpm-state/authselect.force",
    ),
    // The package rpm-ostree's own tests use; hostforge's fixtures ship one too.
    (
        "rpmostree-lua-override-test.post",
        "/usr/bin/sh",
        "set -euo pipefail\necho %{_install_langs} >/usr/share/rpmostree-lua-override-test\n",
    ),
];

const GLIBC_LANGPACKS: &str = "set -euo pipefail\ntmpl=/usr/lib/locale/locale-archive.tmpl\n\
     if test -s \"${tmpl}\"; then\n  cp -a \"${tmpl}\"{,.new} && mv \"${tmpl}\"{.new,}\n\
     \x20 exec /usr/sbin/build-locale-archive --install-langs \"%{_install_langs}\"\nfi\n";

const GLIBC_GCONV: &str = "libdir=/usr/lib64\n\
     exec iconvconfig -o ${libdir}/gconv/gconv-modules.cache --nostdlib ${libdir}/gconv";

/// What to run for a package's scriptlet, by rpm-ostree's rules: a shell scriptlet as it is;
/// a Lua one (`<lua>`) skipped when one of its first 10 lines starts with
/// `-- rpm-ostree-skip`, replaced by rpm-ostree's shell equivalent when it knows the
/// package's scriptlet, and refused otherwise. `None`: nothing to run.
pub fn program_for(
    pkg: &str,
    kind: &str,
    program: &[String],
    body: &str,
    install_langs: &str,
) -> Result<Option<(Vec<String>, String)>> {
    if program.first().map(String::as_str) != Some("<lua>") {
        // (An empty program is rpm's default, /bin/sh: run_in_root knows.)
        return Ok(Some((program.to_vec(), body.to_string())));
    }
    if body
        .lines()
        .take(10)
        .any(|l| l.starts_with("-- rpm-ostree-skip"))
    {
        return Ok(None);
    }
    let id = format!("{pkg}.{kind}");
    match LUA_REPLACEMENTS.iter().find(|(k, _, _)| *k == id) {
        Some((_, interp, repl)) => Ok(Some((
            vec![interp.to_string()],
            repl.replace("%{_install_langs}", install_langs),
        ))),
        None => bail!(
            "{pkg}: its %{kind} scriptlet is Lua, which hostforge does not run (and rpm-ostree \
             has no shell replacement for {id}); exclude the package, or mark the scriptlet \
             with a first line `-- rpm-ostree-skip` if it is not needed"
        ),
    }
}

#[cfg(test)]
mod lua_tests {
    use super::*;

    #[test]
    fn lua_scriptlets_follow_rpm_ostree() {
        let lua = vec!["<lua>".to_string()];
        let sh = vec!["/bin/sh".to_string()];
        assert_eq!(
            program_for("p", "post", &sh, "echo", "all").unwrap(),
            Some((sh.clone(), "echo".into()))
        );
        let skip = "-- comment\n-- rpm-ostree-skip\nerror('no')";
        assert_eq!(program_for("p", "post", &lua, skip, "all").unwrap(), None);
        let (interp, body) = program_for("rpmostree-lua-override-test", "post", &lua, "x", "de:fr")
            .unwrap()
            .unwrap();
        assert_eq!(interp, ["/usr/bin/sh"]);
        assert!(body.contains("echo de:fr >/usr/share/rpmostree-lua-override-test"));
        let (interp, body) = program_for("glibc-common", "transfiletriggerin", &lua, "x", "all")
            .unwrap()
            .unwrap();
        assert_eq!(
            (interp[0].as_str(), body.as_str()),
            ("/usr/bin/sh", "/sbin/ldconfig")
        );
        let e = program_for("other", "post", &lua, "print(1)", "all").unwrap_err();
        assert!(
            format!("{e}").contains("other: its %post scriptlet is Lua"),
            "{e}"
        );
    }
}
