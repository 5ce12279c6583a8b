//! Scratch directories for image builds and image operations: claimed under a lock (so two
//! runs on one output cannot share one), put on a tmpfs when there is room, swept when the
//! run that held them was killed, and removed with the immutable flag ostree leaves on
//! deployments lifted.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Where one image build or operation works: `staging`, beside the output on its
/// filesystem, receives the finished image (so the last step is a rename); `scratch` holds
/// everything on the way (sysroot, trees, an intermediate raw disk), on a tmpfs when there is
/// room (see [`scratch_dir`]). Both are removed when this is dropped; [`Workspace::close`]
/// removes them and reports a failure to.
pub struct Workspace {
    pub staging: PathBuf,
    pub scratch: PathBuf,
    lock: Option<std::fs::File>,
}

impl Workspace {
    /// Claims the workspace for the output `out`: `staging` is `.NAME.SUFFIX` beside it;
    /// `scratch` is `.NAME.hostforge-scratch` in `tmpdir` when given, else the tmpfs
    /// directory for `out` when `disk_bytes` fit there, else beside `out`. The scratch name
    /// depends on `out` alone, so builds and operations on one image exclude each other.
    /// Sweeps what killed runs left on the tmpfs first.
    pub fn claim(out: &Path, suffix: &str, disk_bytes: u64, tmpdir: Option<&Path>) -> Result<Self> {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{}: not a file name", out.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let staging = parent.join(format!(".{name}.{suffix}"));
        sweep_scratch(Path::new(SHM));
        let scratch = match tmpdir {
            Some(d) => d.join(format!(".{name}.hostforge-scratch")),
            None => scratch_dir(out, disk_bytes)
                .unwrap_or_else(|| parent.join(format!(".{name}.hostforge-scratch"))),
        };
        // The lock first: a second run on the same output is refused before it can remove
        // what the first one is writing in staging.
        let lock = claim_scratch(&scratch)?;
        remove_staging(&staging)?;
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        Ok(Workspace {
            staging,
            scratch,
            lock: Some(lock),
        })
    }

    /// Claims the workspace for an install onto the disk `device`, which is written in
    /// place: only scratch space (for the sysroot), in `tmpdir` when given, else on the tmpfs
    /// (an installer's memory), else in the temporary directory; `staging` lies inside it.
    pub fn claim_for_device(device: &Path, tmpdir: Option<&Path>) -> Result<Self> {
        sweep_scratch(Path::new(SHM));
        let base = match tmpdir {
            Some(d) => d.to_path_buf(),
            None if Path::new(SHM).is_dir() => PathBuf::from(SHM),
            None => std::env::temp_dir(),
        };
        let scratch = base.join(scratch_name(device).context("naming the scratch directory")?);
        let lock = claim_scratch(&scratch).with_context(|| {
            format!(
                "claiming scratch space to install onto {}",
                device.display()
            )
        })?;
        let staging = scratch.join("staging");
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        Ok(Workspace {
            staging,
            scratch,
            lock: Some(lock),
        })
    }

    /// Removes the scratch directory (then releases its lock) and the staging directory.
    pub fn close(mut self) -> Result<()> {
        self.remove()
    }

    fn remove(&mut self) -> Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let scratch = remove_staging(&self.scratch);
        drop(lock);
        let staging = remove_staging(&self.staging);
        scratch.and(staging)
    }
}

impl Drop for Workspace {
    /// A run that failed leaves no scratch behind either; a cleanup error here is only a
    /// warning, so it never hides the error that ended the run.
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: cleaning up {}: {e:#}", self.staging.display());
        }
    }
}

/// Lifts the immutable flag (which ostree puts on each deployment's root directory) from
/// `p`; errors are ignored, the removal that follows reports what still fails.
pub fn lift_immutable(p: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(f) = std::fs::File::open(p) else {
        return;
    };
    if let Ok(flags) = ioctl_getflags(&f) {
        if flags.contains(IFlags::IMMUTABLE) {
            let _ = ioctl_setflags(&f, flags - IFlags::IMMUTABLE);
        }
    }
}

/// Removes a staging directory, lifting the immutable flag ostree puts on deployments.
pub fn remove_staging(dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    if std::fs::remove_dir_all(dir).is_err() {
        // Deployments (ostree/deploy/OS/deploy/CSUM.N) sit at whatever depth the sysroot
        // is below `dir`: lift the flag on every directory.
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            lift_immutable(&d);
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// A scratch directory for the staging sysroot and the intermediate disk: a tmpfs
/// (`/dev/shm`) when it and free memory have room for twice the disk (the tree and the
/// filesystems made from it), so nothing of it is written back to a disk or synced; else
/// `None` (the staging directory beside the output). Named after the output, so a build
/// killed before cleaning up is cleaned up by the next build of the same output.
pub fn scratch_dir(out: &Path, disk_bytes: u64) -> Option<PathBuf> {
    let base = Path::new(SHM);
    let st = rustix::fs::statvfs(base).ok()?;
    let free = st.f_bavail * st.f_frsize;
    let avail_mem = std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    if free < 2 * disk_bytes || avail_mem < 2 * disk_bytes {
        return None;
    }
    Some(base.join(scratch_name(out)?))
}

/// The scratch directory's name for the output (or disk) `out`: the same for every run on
/// it, so runs exclude each other and a killed run's directory is found.
fn scratch_name(out: &Path) -> Option<String> {
    let key = std::path::absolute(out).ok()?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, key.as_os_str().as_encoded_bytes());
    Some(format!(
        "{SCRATCH_PREFIX}{}",
        &hex::encode(sha2::Digest::finalize(h))[..16]
    ))
}

pub const SHM: &str = "/dev/shm";

pub const SCRATCH_PREFIX: &str = "hostforge-image-";

/// A scratch directory being claimed (made and locked under this name + the process id).
const CLAIM_PREFIX: &str = ".hostforge-claim-";

/// Creates `dir` and holds an exclusive lock in it for as long as the returned file lives;
/// refuses a directory another live build holds.
pub fn claim_scratch(dir: &Path) -> Result<std::fs::File> {
    use rustix::fs::{flock, FlockOperation};
    if let Ok(f) = std::fs::File::open(dir.join(".lock")) {
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "{} is in use by another hostforge image build or operation on the same image",
                dir.display()
            );
        }
    }
    remove_staging(dir)?;
    // Made and locked under another name, then renamed into place: a sweep by another build
    // (see [`sweep_scratch`]) never sees it unlocked.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let claim = parent.join(format!("{CLAIM_PREFIX}{}", std::process::id()));
    remove_staging(&claim)?;
    std::fs::create_dir(&claim)
        .with_context(|| format!("creating the scratch directory {}", claim.display()))?;
    let f = std::fs::File::create(claim.join(".lock"))?;
    flock(&f, FlockOperation::NonBlockingLockExclusive)
        .with_context(|| format!("locking {}", claim.display()))?;
    std::fs::rename(&claim, dir)
        .with_context(|| format!("creating the scratch directory {}", dir.display()))?;
    Ok(f)
}

/// Removes the scratch directories in `base` left by builds that were killed (their lock
/// is free), and claims whose process is gone, so a tmpfs does not keep them until the next
/// reboot.
pub fn sweep_scratch(base: &Path) {
    use rustix::fs::{flock, FlockOperation};
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        let stale = if name.starts_with(SCRATCH_PREFIX) {
            match std::fs::File::open(dir.join(".lock")) {
                Ok(f) => flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok(),
                // Without a lock file: not one of ours (they are renamed into place locked).
                Err(_) => false,
            }
        } else if let Some(pid) = name.strip_prefix(CLAIM_PREFIX) {
            // A claim not yet renamed into place: stale once its process is gone.
            pid.parse::<u32>()
                .is_ok_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
        } else {
            false
        };
        if stale {
            let _ = remove_staging(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep removes scratch directories of killed builds (lock free) and keeps those of
    /// live builds (lock held) and anything not named like ours; a held one is refused.
    #[test]
    fn sweep_keeps_live_scratch_and_removes_stale() {
        let base = tempfile::tempdir().unwrap();
        let live = base.path().join(format!("{SCRATCH_PREFIX}live"));
        let stale = base.path().join(format!("{SCRATCH_PREFIX}stale"));
        let other = base.path().join("something-else");
        // A claim of a process that is gone (pid beyond pid_max), and one of a live process.
        let dead_claim = base.path().join(format!("{CLAIM_PREFIX}4294967295"));
        let live_claim = base
            .path()
            .join(format!("{CLAIM_PREFIX}{}", std::process::id()));
        let held = claim_scratch(&live).unwrap();
        drop(claim_scratch(&stale).unwrap());
        for d in [&other, &dead_claim, &live_claim] {
            std::fs::create_dir(d).unwrap();
        }
        sweep_scratch(base.path());
        assert!(live.join(".lock").exists());
        assert!(!stale.exists() && !dead_claim.exists());
        assert!(other.exists() && live_claim.exists());
        let err = claim_scratch(&live).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        drop(held);
        sweep_scratch(base.path());
        assert!(!live.exists());
    }
}
