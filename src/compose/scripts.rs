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
        Ok(Protected {
            mnt: mnt.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
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
        return Err(anyhow!(
            "{} failed ({}); last output:\n{}",
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
