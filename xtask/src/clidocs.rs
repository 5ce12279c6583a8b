//! `cargo xtask docs` (man pages and completions into docs/cli/) and `cargo xtask install`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries with a CLI of their own.
pub const BINS: &[&str] = &["hostforge", "hostforge-update"];

/// Regenerates docs/cli/ from the clap definitions, through each binary's hidden
/// `generate-docs` (`bin_dir` holds the built binaries).
pub fn generate(top: &Path, bin_dir: &Path) -> Result<()> {
    let out = top.join("docs/cli");
    let _ = std::fs::remove_dir_all(&out);
    for bin in BINS {
        crate::run(
            Command::new(bin_dir.join(bin))
                .arg("generate-docs")
                .arg("--out")
                .arg(&out),
        )?;
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// Where each installed file goes under `root` (DESTDIR + prefix): the binaries, their man
/// pages and the completions where bash-completion, zsh and fish look for them.
pub fn install(top: &Path, bin_dir: &Path, root: &Path) -> Result<Vec<PathBuf>> {
    let docs = top.join("docs/cli");
    if !docs.join("man").is_dir() {
        bail!(
            "{} has no man pages: run `cargo xtask docs`",
            docs.display()
        );
    }
    let mut plan: Vec<(PathBuf, PathBuf, u32)> = Vec::new();
    for bin in BINS {
        plan.push((bin_dir.join(bin), root.join("bin").join(bin), 0o755));
    }
    for e in std::fs::read_dir(docs.join("man"))? {
        let e = e?;
        plan.push((
            e.path(),
            root.join("share/man/man1").join(e.file_name()),
            0o644,
        ));
    }
    for bin in BINS {
        let c = docs.join("completions");
        plan.push((
            c.join(format!("{bin}.bash")),
            root.join("share/bash-completion/completions").join(bin),
            0o644,
        ));
        plan.push((
            c.join(format!("_{bin}")),
            root.join("share/zsh/site-functions")
                .join(format!("_{bin}")),
            0o644,
        ));
        plan.push((
            c.join(format!("{bin}.fish")),
            root.join("share/fish/vendor_completions.d")
                .join(format!("{bin}.fish")),
            0o644,
        ));
    }
    let mut done = Vec::new();
    for (from, to, mode) in plan {
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(&from, &to)
            .with_context(|| format!("installing {} as {}", from.display(), to.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        done.push(to);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every binary, man page and completion lands where its reader looks, with its mode.
    #[test]
    fn install_places_binaries_man_pages_and_completions() {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = top.join(format!("target/xtask-install-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bins = dir.join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for b in BINS {
            std::fs::write(bins.join(b), "#!/bin/sh\n").unwrap();
        }
        let root = dir.join("root/usr/local");
        let done = install(top, &bins, &root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("bin/hostforge"), 0o755);
        assert_eq!(mode("bin/hostforge-update"), 0o755);
        assert_eq!(mode("share/man/man1/hostforge-compose-tree.1"), 0o644);
        for p in [
            "share/man/man1/hostforge-update.1",
            "share/bash-completion/completions/hostforge",
            "share/zsh/site-functions/_hostforge",
            "share/fish/vendor_completions.d/hostforge-update.fish",
        ] {
            assert!(root.join(p).is_file(), "{p} missing");
        }
        let pages = std::fs::read_dir(top.join("docs/cli/man")).unwrap().count();
        assert_eq!(done.len(), BINS.len() * 4 + pages);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
