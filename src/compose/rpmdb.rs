//! The rpmdb of the composed packages, written by `rpmdb --importdb` (a child process) while
//! the packages are fetched and assembled.
//!
//! The job starts as soon as the package set is known. Headers go to the child through a pipe
//! in the order of the package set, each as soon as it is known (a cache hit's at once, read
//! from the cache by a feeder thread; a download's once its digests and signature are checked,
//! before its files are imported). [`RpmdbJob::place`] waits for the database and puts it at
//! `/usr/share/rpm` in the root, as if it had been written there then. Dropped before that
//! (the compose failed), the child is killed ([`process::Background`]) and the scratch
//! directory removed.

use super::postprocess;
use super::Env;
use crate::pkgcache;
use crate::process;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A package's header: in the cache (its commit there) or at hand.
enum Header {
    Cached(String),
    Bytes(Vec<u8>),
}

/// Hands the feeder each package's header once it is known; `index` is the package's place
/// in the package set. (A feeder that is gone failed; [`RpmdbJob::place`] reports why.)
#[derive(Clone)]
pub(super) struct HeaderFeed(mpsc::Sender<(usize, Header)>);

impl HeaderFeed {
    /// The header is in the package's cache commit.
    pub(super) fn cached(&self, index: usize, commit: &str) {
        let _ = self.0.send((index, Header::Cached(commit.to_string())));
    }

    /// The header itself (serialized), of a package checked but not imported yet.
    pub(super) fn header(&self, index: usize, bytes: Vec<u8>) {
        let _ = self.0.send((index, Header::Bytes(bytes)));
    }
}

pub(super) struct RpmdbJob {
    child: Option<process::Background>,
    feed: Option<HeaderFeed>,
    /// Returns every header, in order (what a second run on disk reads).
    feeder: Option<JoinHandle<Result<Vec<u8>>>>,
    dir: PathBuf,
    count: usize,
}

/// Where `rpmdb --importdb` writes: a directory in memory (`/dev/shm`) when there is one,
/// since sqlite's ~10,000 small writes for a hundred packages cost twice as long on disk here
/// and the database is scratch until it is placed; else the work dir. One per cachedir (the
/// cachedir's lock makes it this compose's; one a killed compose left is removed next time).
fn scratch(env: &Env) -> PathBuf {
    let shm = Path::new(crate::image::scratch::SHM);
    let cachedir = env
        .opts
        .cachedir
        .canonicalize()
        .unwrap_or_else(|_| env.opts.cachedir.clone());
    let key = hex::encode(&Sha256::digest(cachedir.as_os_str().as_encoded_bytes())[..8]);
    let dir = shm.join(format!("hostforge-rpmdb-{key}"));
    if shm.is_dir() && postprocess::remove_any(&dir).is_ok() && std::fs::create_dir(&dir).is_ok() {
        return dir;
    }
    on_disk(env)
}

fn on_disk(env: &Env) -> PathBuf {
    env.work.join("rpmdb")
}

fn log(env: &Env) -> PathBuf {
    env.work.join("rpmdb.log")
}

fn importdb(dir: &Path, headers: impl Into<Stdio>, log: &Path) -> Result<process::Background> {
    process::Background::start(
        Command::new("rpmdb").arg("--dbpath").arg(dir).args([
            "--define",
            "_db_backend sqlite",
            "--importdb",
        ]),
        headers,
        log,
    )
}

/// Writes the headers of `count` packages to `pipe` in order as [`HeaderFeed`] hands them
/// over; returns them all. A child that stopped reading is not an error here
/// (its exit status is); a package never named is.
fn feed(
    cache_path: &Path,
    count: usize,
    names: mpsc::Receiver<(usize, Header)>,
    pipe: std::io::PipeWriter,
) -> Result<Vec<u8>> {
    let repo = ostree::Repo::new_for_path(cache_path);
    repo.open(gio::Cancellable::NONE)?;
    let mut pipe = Some(pipe);
    let mut ready: Vec<Option<Header>> = (0..count).map(|_| None).collect();
    let (mut next, mut all) = (0, Vec::new());
    while next < count {
        let Ok((i, header)) = names.recv() else {
            bail!("the rpmdb got {next} of {count} package headers");
        };
        ready[i] = Some(header);
        while let Some(header) = ready.get_mut(next).and_then(Option::take) {
            let header = match header {
                Header::Bytes(bytes) => bytes,
                Header::Cached(commit) => pkgcache::read_rpm_metadata(&repo, &commit)?
                    .header_bytes()
                    .map_err(|e| anyhow!("serializing the header of cache commit {commit}: {e}"))?,
            };
            if pipe.as_mut().is_some_and(|p| p.write_all(&header).is_err()) {
                pipe = None;
            }
            all.extend(header);
            next += 1;
        }
    }
    Ok(all)
}

impl RpmdbJob {
    /// Starts `rpmdb --importdb` for `count` packages; their headers follow through
    /// [`RpmdbJob::feed`].
    pub(super) fn start(env: &Env, count: usize) -> Result<RpmdbJob> {
        postprocess::remove_any(&on_disk(env))?;
        let dir = scratch(env);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (reader, writer) = std::io::pipe().context("creating a pipe for the rpmdb")?;
        let child = importdb(&dir, reader, &log(env))?;
        let (tx, rx) = mpsc::channel();
        let cache_path = env.cache_path.clone();
        let feeder = std::thread::Builder::new()
            .name("rpmdb headers".into())
            .spawn(move || feed(&cache_path, count, rx, writer))
            .context("starting the rpmdb header thread")?;
        Ok(RpmdbJob {
            child: Some(child),
            feed: Some(HeaderFeed(tx)),
            feeder: Some(feeder),
            dir,
            count,
        })
    }

    pub(super) fn feed(&self) -> HeaderFeed {
        self.feed.clone().expect("fed until placed")
    }

    /// Every header written, in order (the feeder's result).
    fn headers(&mut self) -> Result<Vec<u8>> {
        drop(self.feed.take());
        let feeder = self.feeder.take().expect("joined once");
        feeder
            .join()
            .map_err(|_| anyhow!("the rpmdb header thread panicked"))?
    }

    pub(super) fn place(mut self, env: &Env) -> Result<((), String)> {
        let headers = self.headers().context("writing the rpmdb")?;
        let child = self.child.take().expect("placed once");
        if let Err(e) = child.wait() {
            if self.dir == on_disk(env) {
                return Err(e.context("writing the rpmdb"));
            }
            // Out of room in memory (a small /dev/shm in a container): again on disk.
            let why = format!("{e:#}");
            env.progress.info(&format!(
                "the rpmdb did not fit in {}, writing it on disk instead: {}",
                self.dir.display(),
                why.lines().next().unwrap_or_default()
            ));
            let _ = postprocess::remove_any(&self.dir);
            self.dir = on_disk(env);
            std::fs::create_dir_all(&self.dir)?;
            let export = env.work.join("headers.rpmdb");
            std::fs::write(&export, &headers)
                .with_context(|| format!("writing {}", export.display()))?;
            importdb(&self.dir, std::fs::File::open(&export)?, &log(env))?
                .wait()
                .context("writing the rpmdb")?;
        }
        for f in ["rpmdb.sqlite-shm", "rpmdb.sqlite-wal", ".rpm.lock"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        let dbpath = env.root().join("usr/share/rpm");
        postprocess::remove_any(&dbpath)?;
        std::fs::create_dir_all(env.root().join("usr/share"))?;
        if self.dir == on_disk(env) {
            std::fs::rename(&self.dir, &dbpath)
                .with_context(|| format!("moving the rpmdb to {}", dbpath.display()))?;
        } else {
            std::fs::create_dir(&dbpath)?;
            for entry in std::fs::read_dir(&self.dir)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    let to = dbpath.join(entry.file_name());
                    std::fs::copy(entry.path(), &to)
                        .with_context(|| format!("copying the rpmdb to {}", to.display()))?;
                }
            }
            postprocess::remove_any(&self.dir)?;
        }
        Ok(((), format!("{} headers", self.count)))
    }
}

impl Drop for RpmdbJob {
    fn drop(&mut self) {
        // The child killed (dropped) first, so that a feeder blocked on the pipe gets EPIPE;
        // the feeder ends once the feed is gone; then the directory goes.
        drop(self.child.take());
        drop(self.feed.take());
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        if self.dir.starts_with(crate::image::scratch::SHM) {
            let _ = postprocess::remove_any(&self.dir);
        }
    }
}
