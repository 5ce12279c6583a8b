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
        // Moved to a name of this run's first (its lock still held), so the scratch name is
        // free at once and no sweep can take what is being removed for a stale directory.
        let trash = trash_name(&self.scratch);
        let scratch = match std::fs::rename(&self.scratch, &trash) {
            Ok(()) => remove_staging(&trash),
            Err(_) => remove_staging(&self.scratch),
        };
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

/// A scratch directory being removed (moved here, under the remover's process id and a
/// number, before its files are deleted).
const TRASH_PREFIX: &str = ".hostforge-trash-";

/// How long a claim waits for a lock held only for a moment (by a run moving a stale
/// directory of that name away) before it calls the directory in use.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates `dir` and holds an exclusive lock in it for as long as the returned file lives;
/// refuses a directory another live build holds, and removes one a killed build left.
pub fn claim_scratch(dir: &Path) -> Result<std::fs::File> {
    use rustix::fs::{flock, FlockOperation};
    if !remove_unless_held(dir, CLAIM_WAIT, true)? {
        bail!(
            "{} is in use by another hostforge image build or operation on the same image",
            dir.display()
        );
    }
    // Made and locked under another name, then renamed into place: a sweep by another build
    // (see [`sweep_scratch`]) never sees it unlocked.
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let claim = parent.join(format!("{CLAIM_PREFIX}{}", std::process::id()));
    remove_staging(&claim)?;
    std::fs::create_dir(&claim)
        .with_context(|| format!("creating the scratch directory {}", claim.display()))?;
    let f = std::fs::File::create(claim.join(".lock"))
        .with_context(|| format!("creating the lock in {}", claim.display()))?;
    flock(&f, FlockOperation::NonBlockingLockExclusive)
        .with_context(|| format!("locking {}", claim.display()))?;
    // A directory at `dir` now (another run's claim of the same output) is not empty: the
    // rename fails rather than replace it.
    std::fs::rename(&claim, dir).with_context(|| {
        format!(
            "creating the scratch directory {} (another run on the same image?)",
            dir.display()
        )
    })?;
    Ok(f)
}

/// Removes the scratch directory `dir` unless a live run holds its lock (`false` then, after
/// waiting up to `wait` for it to be released); `true` when it is gone. The lock is taken,
/// checked to still be `dir`'s (not that of a directory another run moved away meanwhile),
/// and held while `dir` is moved to a name of this process's: two runs never remove one
/// directory, and none removes a directory that was claimed after it looked. A directory
/// without a lock file is removed only when `unlocked_too` (it is not a scratch directory
/// a sweep may touch).
fn remove_unless_held(dir: &Path, wait: std::time::Duration, unlocked_too: bool) -> Result<bool> {
    use rustix::fs::{flock, fstat, stat, FlockOperation};
    use std::io::ErrorKind::NotFound;
    let deadline = std::time::Instant::now() + wait;
    let lock_path = dir.join(".lock");
    // Each retry follows a change by another run (a release, a move); bounded all the same.
    for _ in 0..1000 {
        let lock = match std::fs::File::open(&lock_path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("opening {}", lock_path.display())),
        };
        match &lock {
            Some(f) => {
                if flock(f, FlockOperation::NonBlockingLockExclusive).is_err() {
                    if std::time::Instant::now() >= deadline {
                        return Ok(false);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                let ours = fstat(f)?;
                match stat(&lock_path) {
                    Ok(now) if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) => {}
                    // Moved away or replaced since it was opened: look again.
                    _ => continue,
                }
            }
            None if !unlocked_too => return Ok(!dir.exists()),
            None => {}
        }
        let trash = trash_name(dir);
        match std::fs::rename(dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == NotFound => return Ok(true),
            Err(e) => {
                return Err(e).with_context(|| format!("moving {} away", dir.display()));
            }
        }
        drop(lock);
        remove_staging(&trash)?;
        return Ok(true);
    }
    bail!("{} keeps changing under this run", dir.display())
}

/// A name beside `dir`, unique to this process and call, to move a directory to before
/// removing it.
fn trash_name(dir: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.parent()
        .unwrap_or(Path::new("."))
        .join(format!("{TRASH_PREFIX}{}-{n}", std::process::id()))
}

/// Removes the scratch directories in `base` left by builds that were killed (their lock
/// is free), and claims and half-removed directories whose process is gone, so a tmpfs does
/// not keep them until the next reboot. Nothing here fails a run: what cannot be removed
/// now is left to a later sweep.
pub fn sweep_scratch(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if name.starts_with(SCRATCH_PREFIX) {
            // Without a lock file: not one of ours (they are renamed into place locked).
            let _ = remove_unless_held(&dir, std::time::Duration::ZERO, false);
        } else if let Some(rest) = name
            .strip_prefix(CLAIM_PREFIX)
            .or_else(|| name.strip_prefix(TRASH_PREFIX))
        {
            // A claim not yet renamed into place (PID), or a directory being removed
            // (PID-N): stale once its process is gone.
            if rest.split('-').next().is_some_and(dead) {
                let _ = remove_staging(&dir);
            }
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

    /// Sweeps by other runs, looping the whole time, never take a directory from a run that
    /// claims its name while the directory a killed run left there is stale: every claim ends
    /// holding the directory at that name, and nothing else is left beside it.
    #[test]
    fn sweeps_never_remove_a_directory_being_claimed() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join(format!("{SCRATCH_PREFIX}raced"));
        for round in 0..100 {
            drop(claim_scratch(&dir).unwrap());
            // Enough files that removing them takes a while, as a killed run's tree does.
            std::fs::create_dir(dir.join("tree")).unwrap();
            for i in 0..300 {
                std::fs::write(dir.join("tree").join(i.to_string()), "x").unwrap();
            }
            std::fs::write(dir.join("left-by-a-killed-run"), "x").unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let sweeper = {
                let (stop, base) = (stop.clone(), base.path().to_path_buf());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        sweep_scratch(&base);
                    }
                })
            };
            let held = claim_scratch(&dir).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
            stop.store(true, Ordering::Relaxed);
            sweeper.join().unwrap();
            let lock = rustix::fs::fstat(&held).unwrap();
            let at = rustix::fs::stat(dir.join(".lock"))
                .unwrap_or_else(|e| panic!("round {round}: the claimed directory is gone: {e}"));
            assert_eq!(
                (at.st_dev, at.st_ino),
                (lock.st_dev, lock.st_ino),
                "round {round}"
            );
            assert!(!dir.join("left-by-a-killed-run").exists(), "round {round}");
            std::fs::write(dir.join("work"), "x").unwrap();
            drop(held);
            let names: Vec<String> = std::fs::read_dir(base.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, [format!("{SCRATCH_PREFIX}raced")], "round {round}");
        }
    }
}
