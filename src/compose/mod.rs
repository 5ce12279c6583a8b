//! `compose tree`: the pipeline from a treefile to an ostree commit, as a flat list of named,
//! timed steps ([`STEPS`]). Each step reads the settled environment (`Env`) and what earlier
//! steps returned, and returns its own typed result; none reaches back into an earlier one.
//! The ref moves only in the last step, after every object is written.

mod cpiogz;
mod initramfs;
mod kernel;
pub mod place;
mod postprocess;
mod rpmdb;
mod scripts;
mod walk;

use crate::fsutil;
use crate::lockfile::Lock;
use crate::ostreeutil::{self, MetaBuilder};
use crate::pkgcache::{self, PkgInfo};
use crate::process;
use crate::progress::{Progress, Timer};
use crate::rpmmd::{self, RepoDef, Solved};
use crate::treefile::MetadataTarget;
use crate::treefile::Treefile;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use rpmdb::{HeaderFeed, RpmdbJob};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// This build's version, recorded in commits and hashed into the input hash.
pub const HOSTFORGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `hostforge compose tree` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub treefile: PathBuf,
    pub repo: Option<PathBuf>,
    pub cachedir: PathBuf,
    pub write_commitid_to: Option<PathBuf>,
    pub write_composejson_to: Option<PathBuf>,
    pub add_metadata: Vec<(String, String)>,
    pub force_nocache: bool,
    pub dry_run: bool,
    pub quiet: bool,
    pub json: bool,
    /// `--ex-lockfile` files, in order.
    pub lockfiles: Vec<PathBuf>,
    pub lockfile_strict: bool,
    pub write_lockfile_to: Option<PathBuf>,
    /// `--disable-selinux`: no labels even when the treefile asks for them (as rpm-ostree).
    pub disable_selinux: bool,
    /// `--gpg-sign KEYID`: sign the commit (and the repo summary) with this key; wins over
    /// the treefile's `gpg-key`.
    pub gpg_sign: Option<String>,
    /// `--gpg-homedir DIR`: the GnuPG home holding the signing key (default: gpg's own).
    pub gpg_homedir: Option<PathBuf>,
    /// `--static-delta`: after the ref moves, a static delta from its previous commit.
    pub static_delta: bool,
    /// `--rebuild-initramfs`: run dracut even when a kept initramfs has the same inputs.
    pub rebuild_initramfs: bool,
}

#[derive(Default)]
struct FetchStats {
    cache_hits: usize,
    downloaded: usize,
    bytes_downloaded: u64,
}

impl Env {
    /// The key that signs: `--gpg-sign`, else the treefile's `gpg-key`.
    fn signing_key(&self) -> Option<&str> {
        self.opts
            .gpg_sign
            .as_deref()
            .or(self.tf.doc.gpg_key.as_deref())
    }

    fn gpg_homedir(&self) -> Option<String> {
        self.opts
            .gpg_homedir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// What every step reads: settled before the first step, never changed by one.
struct Env {
    opts: Options,
    progress: Progress,
    tf: Treefile,
    /// The ref to move (none: the treefile has no `ref`).
    treeref: Option<String>,
    target: Option<ostree::Repo>,
    cache: ostree::Repo,
    cache_path: PathBuf,
    work: PathBuf,
    repos: Vec<RepoDef>,
    /// The `--ex-lockfile` pins.
    pins: Option<Lock>,
}

impl Env {
    /// The ref for messages.
    fn ref_name(&self) -> &str {
        self.treeref.as_deref().unwrap_or("(no ref)")
    }

    /// The tree being composed.
    fn root(&self) -> PathBuf {
        self.work.join("root")
    }
}

/// The inputs hashed, and the commit they are compared with (the ref's current commit).
struct Input {
    inputhash: String,
    parent: Option<String>,
    /// `ostree-layers` then `ostree-override-layers`: (ref, its commit, may override).
    layers: Vec<Layer>,
}

/// One ostree layer: a ref of the target repo laid over the packages.
struct Layer {
    name: String,
    commit: String,
    overrides: bool,
}

/// What the inputhash step found.
enum Checked {
    /// The ref's commit was made from the same inputs.
    Unchanged {
        inputhash: String,
        commit: String,
        version: Option<String>,
    },
    Changed(Input),
}

/// The packages, in the cache repo: one commit each, with what the cache knows of them.
struct Packages {
    commits: Vec<String>,
    infos: Vec<PkgInfo>,
    stats: FetchStats,
    /// Which of them this compose downloaded (indexes).
    fetched: Vec<usize>,
}

/// Everything the tree steps settled, which the commit records.
struct Tree {
    input: Input,
    packages: Packages,
    version: Option<String>,
    /// The kernel version of a bootable tree.
    kver: Option<String>,
    /// Repo id -> when its metadata was generated.
    repo_generated: BTreeMap<String, u64>,
}

/// Committed path -> (uid, gid), for files not owned by root.
type Owners = BTreeMap<String, (u32, u32)>;

/// What the commit step wrote.
struct Committed {
    commit: String,
    objects_written: u64,
    bytes_written: u64,
}

/// How the compose ended, for the summary.
enum Outcome {
    DryRun {
        solved: Vec<Solved>,
    },
    Unchanged {
        inputhash: String,
        commit: String,
        /// The ref's commit's own parent.
        parent: Option<String>,
        version: Option<String>,
        packages: usize,
    },
    Committed {
        tree: Box<Tree>,
        committed: Committed,
        diff: PackageDiff,
    },
}

/// Times each step once and prints its line (a step with no detail prints none: it said why
/// itself).
struct Runner<'a> {
    progress: &'a Progress,
    seconds: Vec<(String, f64)>,
}

impl Runner<'_> {
    fn step<T, D: Into<Option<String>>>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<(T, D)>,
    ) -> Result<T> {
        debug_assert_eq!(
            STEPS.get(self.seconds.len()),
            Some(&name),
            "steps run in order"
        );
        let t = Timer::start();
        let (value, detail) = f().with_context(|| format!("compose step {name}"))?;
        self.seconds.push((name.to_string(), t.secs()));
        if let Some(d) = detail.into() {
            self.progress.step_done(name, t.secs(), &d);
        }
        Ok(value)
    }
}

/// The pipeline, in order (each step's output is what later steps receive).
pub const STEPS: &[&str] = &[
    "resolve",
    "inputhash",
    "fetch",
    "assemble",
    "scripts",
    "rpmdb",
    "postprocess",
    "initramfs",
    "layout",
    "commit",
];

/// Bump when the compose output changes for the same inputs, so old commits are redone.
const COMPOSE_FORMAT: &str = "hostforge-compose-1";

/// Runs a compose; returns what it did (the compose.json document).
pub fn compose_tree(opts: Options) -> Result<Summary> {
    let (env, lock) = setup(opts)?;
    let mut run = Runner {
        progress: &env.progress,
        seconds: Vec::new(),
    };
    let outcome = match pipeline(&env, &mut run) {
        Ok(o) => o,
        Err(e) => {
            // The build root can be large: a failed run does not keep it (nor a full disk).
            if let Err(clean) = clean_work_root(&env, true) {
                env.progress.info(&format!("{clean:#}"));
            }
            return Err(explain_out_of_space(&env, e));
        }
    };
    drop(lock);
    let doc = summary(&env, outcome, run.seconds).context("writing the compose summary")?;
    if let Some(p) = &env.opts.write_composejson_to {
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        fsutil::write_replacing(p, text.as_bytes())?;
    }
    if let (Some(p), Some(c)) = (&env.opts.write_commitid_to, &doc.commit) {
        fsutil::write_replacing(p, c.as_bytes())?;
    }
    Ok(doc)
}

/// An error from a full filesystem says which of the compose's places filled up, and what
/// is left on each.
fn explain_out_of_space(env: &Env, e: anyhow::Error) -> anyhow::Error {
    let mut places = vec![("for cachedir", env.opts.cachedir.as_path())];
    if let Some(r) = &env.opts.repo {
        places.push(("repo", r.as_path()));
    }
    fsutil::explain_out_of_space(e, &places, " and ", "")
}

/// The steps of [`STEPS`], each handed what the earlier ones returned.
fn pipeline(env: &Env, run: &mut Runner) -> Result<Outcome> {
    let (solved, repo_generated) = run.step("resolve", || resolve(env))?;
    let Some(target) = env.target.as_ref().filter(|_| !env.opts.dry_run) else {
        if !env.opts.json {
            for p in &solved {
                println!("{}", rpmmd::nevra(p));
            }
        }
        return Ok(Outcome::DryRun { solved });
    };
    let input = match run.step("inputhash", || inputhash(env, target, &solved))? {
        Checked::Unchanged {
            inputhash,
            commit,
            version,
        } => {
            // Nothing to build; a key given now still signs the commit the ref names.
            if env.signing_key().is_some() {
                sign_commit(env, target, &commit)?;
                update_summary(env, target)?;
            }
            return Ok(Outcome::Unchanged {
                parent: ostreeutil::commit_parent(target, &commit).ok().flatten(),
                inputhash,
                commit,
                version,
                packages: solved.len(),
            });
        }
        Checked::Changed(input) => input,
    };
    // Written while the packages are fetched and assembled, from their headers.
    let rpmdb = RpmdbJob::start(env, solved.len())?;
    let packages = run.step("fetch", || fetch_and_import(env, &solved, &rpmdb.feed()))?;
    // The previous compose's root, set aside by its commit step, goes while this one builds.
    let previous_root = OldRoots::remove_in_background(&env.work)?;
    let linked = run.step("assemble", || assemble(env, target, &input, &packages))?;
    run.step("scripts", || run_scriptlets(env, &packages))?;
    run.step("rpmdb", || rpmdb.place(env))?;
    let ahead = compress_ahead(env, target, &packages)?;
    let version = run.step("postprocess", || {
        postprocess_tree(env, target, &input, &packages)
    })?;
    let kver = run.step("initramfs", || initramfs(env))?;
    let owners = run.step("layout", || layout(env, &packages))?;
    let tree = Tree {
        input,
        packages,
        version,
        kver,
        repo_generated,
    };
    let committed = run.step("commit", || {
        commit(env, target, &tree, owners, &linked, ahead)
    })?;
    let diff = package_diff(target, &tree)?;
    previous_root.finish()?;
    Ok(Outcome::Committed {
        tree: Box::new(tree),
        committed,
        diff,
    })
}

/// Loads the treefile and its repos, opens the repos, and takes the cachedir's lock (held
/// until the returned file is dropped).
fn setup(opts: Options) -> Result<(Env, std::fs::File)> {
    process::check_required_programs()?;
    let progress = Progress::new(opts.quiet, opts.json);
    let mut tf = Treefile::load(&opts.treefile)?;
    if opts.disable_selinux {
        // In the flattened treefile too: it is hashed and travels in the commit.
        tf.doc.selinux = Some(false);
    }
    let treeref = tf.treeref();
    let target = match (&opts.repo, opts.dry_run) {
        (Some(r), _) => Some(ostreeutil::open_existing(r)?),
        (None, true) => None,
        (None, false) => bail!("--repo is required (unless --dry-run)"),
    };
    std::fs::create_dir_all(&opts.cachedir)
        .with_context(|| format!("creating cachedir {}", opts.cachedir.display()))?;
    // Programs we run get absolute paths (rpmdb --dbpath insists).
    let mut opts = opts;
    opts.cachedir = opts
        .cachedir
        .canonicalize()
        .with_context(|| format!("resolving cachedir {}", opts.cachedir.display()))?;
    let lock_path = opts.cachedir.join("lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        progress.info("waiting for another compose using this cachedir");
        lock.lock()?;
    }
    let cache_path = opts.cachedir.join("repo");
    // An older hostforge killed while creating the cache repo left one without a config:
    // nothing in it is worth keeping.
    if cache_path.is_dir() && !cache_path.join("config").exists() {
        std::fs::remove_dir_all(&cache_path)
            .with_context(|| format!("removing the unfinished {}", cache_path.display()))?;
    }
    let cache = ostreeutil::open_or_create(&cache_path, ostree::RepoMode::BareUser)
        .with_context(|| format!("opening the cache repo {}", cache_path.display()))?;
    let work = opts.cachedir.join("work");
    let all_repos = rpmmd::load_repo_files(&tf.dir)?;
    let mut repos = rpmmd::select_repos(&all_repos, tf.doc.repos.as_deref(), &tf.path)?;
    let pins = match opts.lockfiles.is_empty() {
        true => None,
        false => Some(Lock::read(&opts.lockfiles, opts.lockfile_strict)?),
    };
    // `lockfile-repos` are used only with a lockfile, and then only for locked packages.
    if let (Some(_), Some(extra)) = (&pins, &tf.doc.lockfile_repos) {
        for r in rpmmd::select_repos(&all_repos, Some(extra), &tf.path)? {
            if !repos.iter().any(|have| have.id == r.id) {
                repos.push(r);
            }
        }
    }
    rpmmd::resolve_urls(&mut repos, &tf.repo_vars())?;
    for (repo, _) in tf.repo_packages() {
        if !repos.iter().any(|have| have.id == repo) {
            bail!(
                "{}: repo-packages names repo [{repo}], which is not among the compose's repos \
                 ({})",
                tf.path.display(),
                repos
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let env = Env {
        opts,
        progress,
        tf,
        treeref,
        target,
        cache,
        cache_path,
        work,
        repos,
        pins,
    };
    Ok((env, lock))
}

/// The solution, and when each repo's metadata was generated (for `rpmostree.rpmmd-repos`).
type Resolved = (Vec<Solved>, BTreeMap<String, u64>);

fn resolve(env: &Env) -> Result<(Resolved, String)> {
    let reposdir = env.work.join("repos.d");
    let _ = std::fs::remove_dir_all(&reposdir);
    rpmmd::write_libdnf_reposdir(&env.repos, &reposdir)?;
    let installroot = env.work.join("dnf-root");
    std::fs::create_dir_all(&installroot)?;
    let releasever = env.tf.releasever();
    let excludes = env.tf.doc.exclude_packages.clone().unwrap_or_default();
    let req = rpmmd::libdnf::Request {
        reposdir: &reposdir,
        cachedir: &env.opts.cachedir.join("dnf"),
        installroot: &installroot,
        releasever: releasever.as_deref(),
        packages: env.tf.packages(),
        excludes: &excludes,
        recommends: env.tf.recommends(),
        repo_packages: &env.tf.repo_packages(),
        lock: env.pins.as_ref(),
        lockfile_repos: env.tf.doc.lockfile_repos.as_deref().unwrap_or_default(),
    };
    let solution = rpmmd::libdnf::depsolve(&req).with_context(|| {
        format!(
            "{}: resolving packages from repos {}",
            env.tf.path.display(),
            env.repos
                .iter()
                .map(|r| format!("[{}] {}", r.id, r.baseurl().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    for m in &solution.missing_locks {
        env.progress
            .info(&format!("warning: no repo has the locked package {m}"));
    }
    let solved = solution.packages;
    if let Some(p) = &env.opts.write_lockfile_to {
        let now = ostreeutil::source_date_epoch()?;
        crate::lockfile::write(p, &solved, &solution.repo_generated, now)?;
    }
    let detail = format!("{} packages", solved.len());
    Ok(((solved, solution.repo_generated), detail))
}

fn inputhash(
    env: &Env,
    target: &ostree::Repo,
    solved: &[Solved],
) -> Result<(Checked, Option<String>)> {
    let mut h = Sha256::new();
    h.update(format!("{COMPOSE_FORMAT}\n{HOSTFORGE_VERSION}\n"));
    h.update(env.tf.flattened_json());
    // The referenced files' bytes as the loader read them: the same bytes compose uses.
    let ext = &env.tf.externals;
    let files = ext
        .add_files
        .iter()
        .map(|(_, e)| e)
        .chain(&ext.postprocess_script)
        .chain(&ext.check_passwd)
        .chain(&ext.check_groups);
    for f in files {
        h.update(format!("\nfile {} {} {:o}\n", f.name, f.data.len(), f.mode));
        h.update(&f.data);
    }
    for p in solved {
        h.update(format!(
            "\npkg {} {}:{}",
            rpmmd::nevra(p),
            p.checksum_type,
            p.checksum
        ));
    }
    let layers = resolve_layers(env, target)?;
    for l in &layers {
        h.update(format!("\nlayer {} {} {}", l.name, l.commit, l.overrides));
    }
    let inputhash = hex::encode(h.finalize());
    let parent = match &env.treeref {
        Some(r) => ostreeutil::resolve(target, r)?,
        None => None,
    };
    if let (Some(parent), false) = (&parent, env.opts.force_nocache) {
        let meta = ostreeutil::commit_meta(target, parent)?;
        if ostreeutil::meta_str(&meta, "hostforge.inputhash").as_deref() == Some(&inputhash) {
            env.progress
                .info(&format!("no changes: {} is {parent}", env.ref_name()));
            let unchanged = Checked::Unchanged {
                inputhash,
                commit: parent.clone(),
                version: ostreeutil::meta_str(&meta, "version"),
            };
            return Ok((unchanged, None));
        }
    }
    let detail = inputhash.clone();
    let input = Input {
        inputhash,
        parent,
        layers,
    };
    Ok((Checked::Changed(input), Some(detail)))
}

fn fetch_and_import(
    env: &Env,
    solved: &[Solved],
    rpmdb: &HeaderFeed,
) -> Result<(Packages, String)> {
    let mut cached: Vec<Option<(String, PkgInfo)>> = Vec::with_capacity(solved.len());
    for (i, p) in solved.iter().enumerate() {
        let hit = pkgcache::lookup(&env.cache, p)?;
        if let Some((commit, _)) = &hit {
            rpmdb.cached(i, commit);
        }
        cached.push(hit);
    }
    let missing: Vec<usize> = (0..solved.len()).filter(|&i| cached[i].is_none()).collect();
    let mut stats = FetchStats {
        cache_hits: solved.len() - missing.len(),
        ..Default::default()
    };
    let dl_dir = env.opts.cachedir.join("downloads");
    std::fs::create_dir_all(&dl_dir)?;
    let mut verifiers = HashMap::new();
    for r in env.repos.iter().filter(|r| r.gpgcheck()) {
        verifiers.insert(r.id.clone(), rpmmd::load_verifier(r)?);
    }
    let bar = env.progress.bar("fetch", missing.len() as u64);
    // The workers get what they need, not the whole (not thread-safe) environment.
    let (cache_path, repos) = (&env.cache_path, &env.repos);
    let imported = crate::pool::map(
        &missing,
        crate::pool::workers(4),
        || {
            let repo = ostree::Repo::new_for_path(cache_path);
            repo.open(gio::Cancellable::NONE)?;
            Ok(repo)
        },
        |repo, &i| -> Result<(usize, (String, PkgInfo), u64)> {
            let pkg = &solved[i];
            let repodef = repos
                .iter()
                .find(|r| r.id == pkg.repo_id)
                .ok_or_else(|| anyhow!("package from unknown repo {}", pkg.repo_id))?;
            let dest = dl_dir.join(format!("{}.rpm", pkg.checksum));
            let fetched = rpmmd::fetch(repodef, pkg, &dest).with_context(|| {
                format!(
                    "downloading {} from repo [{}]",
                    rpmmd::nevra(pkg),
                    pkg.repo_id
                )
            })?;
            // The rpmdb takes the header as soon as it is checked, not once the files are in.
            let mut header_sent = false;
            let imported =
                pkgcache::import(repo, &fetched.path, pkg, verifiers.get(&pkg.repo_id), |m| {
                    if let Ok(bytes) = m.header_bytes() {
                        rpmdb.header(i, bytes);
                        header_sent = true;
                    }
                });
            if fetched.temporary {
                let _ = std::fs::remove_file(&fetched.path);
            }
            let imported = imported?;
            if !header_sent {
                rpmdb.cached(i, &imported.0);
            }
            bar.inc(&pkg.name);
            Ok((i, imported, fetched.size))
        },
    );
    drop(bar);
    let mut fetched = Vec::new();
    for (i, imported, size) in imported? {
        cached[i] = Some(imported);
        fetched.push(i);
        stats.downloaded += 1;
        stats.bytes_downloaded += size;
    }
    let (commits, infos): (Vec<String>, Vec<PkgInfo>) = cached
        .into_iter()
        .map(|c| c.expect("every package imported"))
        .unzip();
    let detail = format!(
        "{} downloaded and imported, {} from cache",
        stats.downloaded, stats.cache_hits
    );
    Ok((
        Packages {
            commits,
            infos,
            stats,
            fetched,
        },
        detail,
    ))
}

/// Build roots of earlier composes no compose will build on (a second root an interrupted
/// compose left, any `trash-*`), removed on a thread of their own while this compose
/// assembles and commits. Started after the fetch: a package import's syncfs would otherwise
/// flush what the removal dirtied too (about half of a one-package fetch here).
///
/// The previous compose's root (`root.old`, set aside by its commit step, or the `root` an
/// interrupted compose left) stays: assembly builds this compose's tree from it
/// ([`place::place_packages_over`]).
struct OldRoots(Option<std::thread::JoinHandle<Result<()>>>);

impl OldRoots {
    fn remove_in_background(work: &Path) -> Result<OldRoots> {
        let (root, old) = (work.join("root"), work.join("root.old"));
        if root.symlink_metadata().is_ok() {
            let to = if old.symlink_metadata().is_ok() {
                work.join(format!("trash-{}", std::process::id()))
            } else {
                old
            };
            postprocess::remove_any(&to)?;
            std::fs::rename(&root, &to)
                .with_context(|| format!("moving {} aside", root.display()))?;
        }
        let mut doomed = Vec::new();
        for entry in
            std::fs::read_dir(work).with_context(|| format!("reading {}", work.display()))?
        {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("trash-") {
                doomed.push(entry.path());
            }
        }
        if doomed.is_empty() {
            return Ok(OldRoots(None));
        }
        Ok(OldRoots(Some(std::thread::spawn(move || {
            for d in doomed {
                postprocess::remove_any(&d).with_context(|| format!("removing {}", d.display()))?;
            }
            Ok(())
        }))))
    }

    /// Waits for the removal (an error of it is the compose's).
    fn finish(mut self) -> Result<()> {
        match self.0.take() {
            Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => Ok(()),
        }
    }
}

impl Drop for OldRoots {
    fn drop(&mut self) {
        // A failed compose still lets the removal end (what is left goes next time).
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Removes the build root (`root`) and, with `all`, the previous compose's (`root.old`).
fn clean_work_root(env: &Env, all: bool) -> Result<()> {
    scripts::unmount_stale(&env.work.join("rofiles"));
    let mut roots = vec![env.root()];
    if all {
        roots.push(env.work.join("root.old"));
    }
    for r in roots {
        if r.exists() {
            std::fs::remove_dir_all(&r).with_context(|| format!("removing {}", r.display()))?;
        }
    }
    Ok(())
}

fn assemble(
    env: &Env,
    target: &ostree::Repo,
    input: &Input,
    packages: &Packages,
) -> Result<(place::Linked, String)> {
    // Two packages may ship one path only with identical content.
    let mut owners: HashMap<&str, (&str, &str)> = HashMap::new();
    for info in &packages.infos {
        for (path, csum) in &info.files {
            if let Some((other, other_csum)) = owners.get(path.as_str()) {
                if *other_csum != csum.as_str() {
                    bail!(
                        "file conflict: {path} is shipped by both {other} and {} with \
                         different content; exclude one of them (exclude-packages) or \
                         remove the path from one (remove-from-packages)",
                        info.nevra
                    );
                }
            } else {
                owners.insert(path, (&info.nevra, csum));
            }
        }
    }
    clean_work_root(env, false)?;
    let r = env.root();
    let old = env.work.join("root.old");
    let mut reused = None;
    if old.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        std::fs::rename(&old, &r).with_context(|| format!("moving {} back", old.display()))?;
        let bar = env.progress.bar("assemble", packages.commits.len() as u64);
        reused = place::place_packages_over(&env.cache_path, &r, &packages.infos, |info| {
            bar.inc(&info.name)
        })?;
        if reused.is_none() {
            // Laid out through a symlink: the old tree cannot tell what is new.
            postprocess::remove_any(&r)?;
        }
    }
    let linked = match &mut reused {
        Some(reused) => std::mem::take(&mut reused.linked),
        None => {
            postprocess::remove_any(&old)?;
            std::fs::create_dir_all(&r)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o755))?;
            let bar = env.progress.bar("assemble", packages.commits.len() as u64);
            place::place_packages(&env.cache_path, &r, &packages.infos, |info| {
                bar.inc(&info.name)
            })?
        }
    };
    check_out_layers(env, &input.layers)?;
    if env.tf.doc.preserve_passwd.unwrap_or(true) && !env.tf.container() {
        for file in ["passwd", "group"] {
            if let Some(prev) = read_parent_file(target, input, &format!("usr/etc/{file}")) {
                seed_ids(&r.join("etc").join(file), &prev)?;
            }
        }
    }
    // documentation: false and install-langs drop files after checkout (unlinking a hardlink
    // leaves the cache untouched).
    let langs = env.tf.doc.install_langs.clone();
    for info in &packages.infos {
        if !env.tf.documentation() {
            for d in &info.docs {
                postprocess::remove_any(&r.join(d.trim_start_matches('/')))?;
            }
        }
        if let Some(langs) = &langs {
            for (path, lang) in &info.langs {
                let keep = langs
                    .iter()
                    .any(|l| lang == l || lang.starts_with(&format!("{l}_")));
                if !keep {
                    postprocess::remove_any(&r.join(path.trim_start_matches('/')))?;
                }
            }
        }
    }
    let mut detail = format!("{} packages", packages.commits.len());
    if let Some(reused) = reused {
        detail += &format!(
            ", from the previous tree: {} kept, {} removed",
            reused.kept, reused.removed
        );
    }
    Ok((linked, detail))
}

/// `preserve-passwd` (rpm-ostree's default): the previous commit's users or groups that the
/// packages' file lacks are added to it before any scriptlet runs, so a scriptlet that
/// creates one finds it and its ids stay what they were. The file is replaced, never written
/// in place (it is a hardlink into the package cache).
fn seed_ids(path: &Path, previous: &str) -> Result<()> {
    let now = std::fs::read_to_string(path).unwrap_or_default();
    let name = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    let have: std::collections::HashSet<String> = now.lines().map(name).collect();
    let missing: Vec<&str> = previous
        .lines()
        .filter(|l| l.contains(':') && !l.starts_with('#') && !have.contains(&name(l)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut text = now;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for l in missing {
        text.push_str(l);
        text.push('\n');
    }
    // The new file keeps the mode of the package's (not the 0600 of a new temporary file).
    let mode = std::fs::metadata(path).map(|m| m.permissions());
    fsutil::write_replacing(path, text.as_bytes())
        .and_then(|()| match mode {
            Ok(mode) => Ok(std::fs::set_permissions(path, mode)?),
            Err(_) => Ok(()),
        })
        .with_context(|| format!("preserve-passwd: writing {}", path.display()))
}

/// The refs of `ostree-layers` and `ostree-override-layers` in the target repo, resolved
/// (they are inputs of the compose: their commits go into the input hash).
fn resolve_layers(env: &Env, target: &ostree::Repo) -> Result<Vec<Layer>> {
    let doc = &env.tf.doc;
    let named = doc
        .ostree_layers
        .iter()
        .flatten()
        .map(|l| (l, false))
        .chain(
            doc.ostree_override_layers
                .iter()
                .flatten()
                .map(|l| (l, true)),
        );
    let mut out = Vec::new();
    for (name, overrides) in named {
        let key = if overrides {
            "ostree-override-layers"
        } else {
            "ostree-layers"
        };
        let commit = ostreeutil::resolve(target, name)?.ok_or_else(|| {
            anyhow!(
                "{}: {key}: ref {name:?} is not in the target repo {}; commit the layer there \
                 first (e.g. `ostree commit --repo=REPO -b {name} --tree=dir=DIR`)",
                env.tf.path.display(),
                env.opts.repo.as_deref().unwrap_or(Path::new("?")).display()
            )
        })?;
        out.push(Layer {
            name: name.clone(),
            commit,
            overrides,
        });
    }
    Ok(out)
}

/// Lays the layers over the packages in order. An `ostree-layers` file may only repeat a
/// file that is already there byte for byte; an `ostree-override-layers` file replaces it.
fn check_out_layers(env: &Env, layers: &[Layer]) -> Result<()> {
    if layers.is_empty() {
        return Ok(());
    }
    // The layers' objects come into the cache repo, so the checkout hardlinks like packages.
    let commits: Vec<String> = layers.iter().map(|l| l.commit.clone()).collect();
    let repo = env
        .opts
        .repo
        .as_ref()
        .expect("layers are resolved in the target repo");
    ostreeutil::pull_local(&env.cache, repo, &commits)
        .context("copying the ostree layers into the cache repo")?;
    for layer in layers {
        let overwrite = if layer.overrides {
            ostree::RepoCheckoutOverwriteMode::UnionFiles
        } else {
            ostree::RepoCheckoutOverwriteMode::UnionIdentical
        };
        check_out_over_root(env, &layer.commit, overwrite).with_context(|| {
            let hint = if layer.overrides {
                ""
            } else {
                " (a file of it differs from one the packages ship: list the layer under \
                 ostree-override-layers to replace such files)"
            };
            format!("checking out ostree layer {}{hint}", layer.name)
        })?;
    }
    Ok(())
}

/// Checks a commit of the cache repo out over the tree being composed: hardlinks to the
/// cache's objects (their checksums remembered for the commit), files overwritten as
/// `overwrite` says.
fn check_out_over_root(
    env: &Env,
    commit: &str,
    overwrite: ostree::RepoCheckoutOverwriteMode,
) -> Result<()> {
    let opts = ostree::RepoCheckoutAtOptions {
        mode: ostree::RepoCheckoutMode::User,
        overwrite_mode: overwrite,
        no_copy_fallback: true,
        ..Default::default()
    };
    env.cache.checkout_at(
        Some(&opts),
        libc::AT_FDCWD,
        env.root(),
        commit,
        gio::Cancellable::NONE,
    )?;
    Ok(())
}

/// `%{_install_langs}` for rpm-ostree's scriptlet replacements.
fn install_langs_macro(tf: &Treefile) -> String {
    match &tf.doc.install_langs {
        Some(l) if !l.is_empty() => l.join(":"),
        _ => "all".into(),
    }
}

fn run_scriptlets(env: &Env, packages: &Packages) -> Result<((), String)> {
    let r = env.root();
    let metas: Vec<rpm::PackageMetadata> = packages
        .commits
        .iter()
        .map(|c| pkgcache::read_rpm_metadata(&env.cache, c))
        .collect::<Result<_>>()?;
    // Nothing to run (no scriptlet, no file trigger): no need to mount the root for them.
    let has_script = |m: &rpm::PackageMetadata| {
        [
            m.get_pre_install_script(),
            m.get_post_install_script(),
            m.get_post_trans_script(),
        ]
        .into_iter()
        .any(|s| s.is_ok_and(|s| !s.script.trim().is_empty()))
            || m.get_trans_file_triggers().is_ok_and(|t| !t.is_empty())
    };
    if !metas.iter().any(has_script) {
        return Ok(((), "0 scriptlets".to_string()));
    }
    let protected = scripts::Protected::mount(&r, &env.work.join("rofiles"))?;
    let scratch = env.work.join("scratch");
    let mut count = 0;
    type Getter = fn(&rpm::PackageMetadata) -> Result<rpm::Scriptlet, rpm::Error>;
    // What runs: %pre, %post and %posttrans (with the file triggers), as in rpm-ostree;
    // %pretrans, the uninstall kinds and %verifyscript are never run, since a compose
    // installs into an empty root and removes nothing. The kind is rpm-ostree's name.
    let phases: [(&str, Getter, &str, &str); 3] = [
        (
            "%pre",
            rpm::PackageMetadata::get_pre_install_script,
            "1",
            "prein",
        ),
        (
            "%post",
            rpm::PackageMetadata::get_post_install_script,
            "1",
            "post",
        ),
        (
            "%posttrans",
            rpm::PackageMetadata::get_post_trans_script,
            "0",
            "posttrans",
        ),
    ];
    let langs = install_langs_macro(&env.tf);
    let bar = env.progress.bar("scripts", metas.len() as u64 * 3);
    for (phase, get, arg, kind) in phases {
        if phase == "%posttrans" {
            count += run_trans_file_triggers(
                &packages.infos,
                &metas,
                protected.path(),
                &scratch,
                &langs,
            )?;
        }
        for (meta, info) in metas.iter().zip(&packages.infos) {
            bar.inc(&info.name);
            let Ok(s) = get(meta) else { continue };
            if s.script.trim().is_empty() {
                continue;
            }
            let label = format!("{} {phase} scriptlet", info.nevra);
            let prog = s.program.clone().unwrap_or_default();
            let Some((interpreter, body)) =
                scripts::program_for(&info.name, kind, &prog, &s.script, &langs)
                    .with_context(|| label.clone())?
            else {
                continue;
            };
            let script = scripts::Script {
                label: &label,
                interpreter,
                body: &body,
                args: vec![arg.to_string()],
                stdin: None,
            };
            scripts::run_in_root(protected.path(), &scratch, &script)?;
            process::fault_point("scripts");
            count += 1;
        }
    }
    drop(bar);
    drop(protected);
    Ok(((), format!("{count} scriptlets")))
}

/// `%transfiletriggerin`: each trigger gets, on stdin, the composed files under its prefixes.
fn run_trans_file_triggers(
    infos: &[PkgInfo],
    metas: &[rpm::PackageMetadata],
    root: &Path,
    scratch: &Path,
    langs: &str,
) -> Result<usize> {
    let mut all_files: Vec<&str> = infos
        .iter()
        .flat_map(|i| i.files.iter().map(|(p, _)| p.as_str()))
        .collect();
    all_files.sort();
    let mut count = 0;
    for (meta, info) in metas.iter().zip(infos) {
        let Ok(triggers) = meta.get_trans_file_triggers() else {
            continue;
        };
        for trig in triggers {
            // Only the "in" kind fires on install.
            if !trig
                .conditions
                .iter()
                .any(|c| c.flags.contains(rpm::DependencyFlags::TRIGGERIN))
            {
                continue;
            }
            let prefixes: Vec<&str> = trig.conditions.iter().map(|c| c.name.as_str()).collect();
            let matched: Vec<&str> = all_files
                .iter()
                .copied()
                .filter(|f| prefixes.iter().any(|p| f.starts_with(p)))
                .collect();
            if matched.is_empty() {
                continue;
            }
            let label = format!("{} %transfiletriggerin scriptlet", info.nevra);
            let Some((interpreter, body)) = scripts::program_for(
                &info.name,
                "transfiletriggerin",
                &trig.program,
                &trig.script,
                langs,
            )
            .with_context(|| label.clone())?
            else {
                continue;
            };
            let script = scripts::Script {
                label: &label,
                interpreter,
                body: &body,
                args: vec!["0".into(), "0".into()],
                stdin: Some((matched.join("\n") + "\n").into_bytes()),
            };
            scripts::run_in_root(root, scratch, &script)?;
            count += 1;
        }
    }
    Ok(count)
}

/// `automatic-version-prefix` as rpm-ostree numbers it: `P`, then `P.1`, `P.2`, ... after a
/// previous version in the series (`.` being `automatic-version-suffix`). A prefix with a
/// `<date:FORMAT>` tag (GLib's strftime-like formats, at `epoch`, UTC) always ends in a
/// build number: `P.0`, then `P.1`, ..., back to `.0` when the date (or prefix) changes.
pub fn next_version(
    prefix: &str,
    suffix: char,
    previous: Option<&str>,
    epoch: u64,
) -> Result<String> {
    let (prefix, dated) = expand_dates(prefix, epoch)?;
    let number = previous.and_then(|p| {
        p.strip_prefix(prefix.as_str())?
            .strip_prefix(suffix)?
            .parse::<u64>()
            .ok()
    });
    Ok(match (previous, number) {
        (_, Some(n)) => format!("{prefix}{suffix}{}", n + 1),
        (Some(p), None) if p == prefix && !dated => format!("{prefix}{suffix}1"),
        _ if dated => format!("{prefix}{suffix}0"),
        _ => prefix,
    })
}

/// Replaces each `<date:FORMAT>` in `s`; returns whether there was one.
fn expand_dates(s: &str, epoch: u64) -> Result<(String, bool)> {
    let mut out = String::new();
    let mut rest = s;
    let mut dated = false;
    while let Some(i) = rest.find("<date:") {
        let end = rest[i..].find('>').ok_or_else(|| {
            anyhow!("automatic-version-prefix {s:?}: <date: without its closing >")
        })?;
        out.push_str(&rest[..i]);
        out.push_str(&strftime_utc(&rest[i + 6..i + end], epoch)?);
        rest = &rest[i + end + 1..];
        dated = true;
    }
    out.push_str(rest);
    Ok((out, dated))
}

/// The subset of GLib's `g_date_time_format` that version prefixes use, in UTC.
fn strftime_utc(fmt: &str, epoch: u64) -> Result<String> {
    let crate::utctime::Utc {
        year,
        month,
        day,
        yday,
        secs,
    } = crate::utctime::Utc::at(epoch);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{year:04}")),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('C') => out.push_str(&format!("{:02}", year / 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('F') => out.push_str(&format!("{year:04}-{month:02}-{day:02}")),
            Some('s') => out.push_str(&epoch.to_string()),
            Some('%') => out.push('%'),
            other => bail!(
                "automatic-version-prefix: <date:{fmt}> uses %{}, which hostforge does not \
                 format (supported: %Y %y %C %m %d %e %j %H %M %S %F %s %%)",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

fn read_parent_file(target: &ostree::Repo, input: &Input, path: &str) -> Option<String> {
    let data = ostreeutil::read_commit_file(target, input.parent.as_ref()?, path).ok()?;
    Some(String::from_utf8_lossy(&data).into_owned())
}

/// Returns the tree's version.
fn postprocess_tree(
    env: &Env,
    target: &ostree::Repo,
    input: &Input,
    packages: &Packages,
) -> Result<(Option<String>, String)> {
    let r = env.root();
    let tf = &env.tf;
    // Version first: os-release mentions it.
    let user_version = env
        .opts
        .add_metadata
        .iter()
        .find(|(k, _)| k == "version")
        .map(|(_, v)| v.clone());
    let parent_version = match &input.parent {
        Some(p) => ostreeutil::meta_str(&ostreeutil::commit_meta(target, p)?, "version"),
        None => None,
    };
    let version = match (user_version, &tf.doc.automatic_version_prefix) {
        (Some(v), _) => Some(v),
        (None, Some(pfx)) => {
            let suffix = tf
                .doc
                .automatic_version_suffix
                .as_deref()
                .and_then(|s| s.chars().next())
                .unwrap_or('.');
            let epoch = ostreeutil::source_date_epoch()?;
            let v = next_version(pfx, suffix, parent_version.as_deref(), epoch)
                .with_context(|| format!("{}", tf.path.display()))?;
            // Substituted variables may not bring what the prefix itself may not contain.
            crate::validate::one_line_text("automatic-version-prefix (substituted)", &v)
                .with_context(|| format!("{}", tf.path.display()))?;
            Some(v)
        }
        (None, None) => None,
    };

    // rpm-ostree's order: units and the default target, then mutate-os-release,
    // remove-files and add-files, and the scripts last, so they see all of it.
    remove_from_packages(&r, tf, &packages.infos)?;
    postprocess::enable_units(&r, tf)?;
    postprocess::default_target(&r, tf)?;
    postprocess::mutate_os_release(&r, tf, version.as_deref())?;
    postprocess::remove_files(&r, tf)?;
    postprocess::add_files(&r, tf)?;
    let scripts_run = run_postprocess_scripts(env)?;
    let prev_passwd = read_parent_file(target, input, "usr/etc/passwd");
    let prev_group = read_parent_file(target, input, "usr/etc/group");
    let prev_dir = match (prev_passwd, prev_group) {
        (None, None) => None,
        (pw, gr) => {
            let d = env.work.join("previous/usr/etc");
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("passwd"), pw.unwrap_or_default())?;
            std::fs::write(d.join("group"), gr.unwrap_or_default())?;
            Some(env.work.join("previous"))
        }
    };
    postprocess::check_ids(&r, tf, prev_dir.as_deref())?;
    // The policy comes from the packages and the scripts; a tree that cannot be labelled
    // fails here, before the initramfs is built.
    let policy = match selinux_policy(env)? {
        Some(p) => format!(", SELinux policy {}", p.name().unwrap_or_default()),
        None => String::new(),
    };

    Ok((version, format!("{scripts_run} scripts{policy}")))
}

/// The composed tree's own SELinux policy, which labels every file of the commit, as
/// rpm-ostree does; `None` when the treefile says `selinux: false`. `selinux: true` is the
/// default, so a tree without a policy is an error rather than an unlabelled commit.
fn selinux_policy(env: &Env) -> Result<Option<ostree::SePolicy>> {
    if env.tf.doc.selinux == Some(false) {
        return Ok(None);
    }
    let tf = env.tf.path.display();
    if env.tf.doc.selinux_label_version == Some(1) && !ostree::check_version(2023, 7) {
        // Version 1 labels /usr/etc as /etc; libostree learnt that in 2023.7.
        bail!(
            "{tf}: selinux-label-version: 1 needs libostree 2023.7 or newer (it labels \
             /usr/etc as /etc); this hostforge runs with an older libostree. Remove the key \
             (version 0 labels /usr/etc by its own path) or build on a newer system"
        );
    }
    let root = env.root();
    let policy = ostree::SePolicy::new(&gio::File::for_path(&root), gio::Cancellable::NONE)
        .with_context(|| format!("{tf}: loading the composed tree's SELinux policy"))?;
    if policy.name().is_none() {
        bail!(
            "{tf}: SELinux labelling is on (`selinux: true`, rpm-ostree's default when the key \
             is absent) but the composed tree has no SELinux policy: no /etc/selinux/config \
             names one with SELINUXTYPE= and SELINUX=enforcing or permissive. Add the \
             policy's package to `packages` (e.g. selinux-policy-targeted), or set \
             `selinux: false` for a commit without labels"
        );
    }
    Ok(Some(policy))
}

/// `remove-from-packages`: deletes the paths of a package that match its regexes.
fn remove_from_packages(r: &Path, tf: &Treefile, infos: &[PkgInfo]) -> Result<()> {
    for entry in tf.doc.remove_from_packages.iter().flatten() {
        let (pkg, patterns) = entry.split_first().expect("validated");
        let info = infos.iter().find(|i| &i.name == pkg).ok_or_else(|| {
            anyhow!(
                "{}: remove-from-packages names {pkg:?}, which is not in the composed set",
                tf.path.display()
            )
        })?;
        let regexes: Vec<regex::Regex> = patterns
            .iter()
            .map(|p| {
                regex::Regex::new(p).with_context(|| {
                    format!(
                        "{}: remove-from-packages: bad regex {p:?}",
                        tf.path.display()
                    )
                })
            })
            .collect::<Result<_>>()?;
        for (path, _) in &info.files {
            if regexes.iter().any(|re| re.is_match(path)) {
                postprocess::remove_any(&r.join(path.trim_start_matches('/')))?;
            }
        }
    }
    Ok(())
}

/// `postprocess` (inline scripts) and `postprocess-script`, in that order, in the sandbox.
/// Returns how many ran.
fn run_postprocess_scripts(env: &Env) -> Result<usize> {
    let tf = &env.tf;
    let r = env.root();
    let mut scripts_run = 0;
    let mut bodies: Vec<(String, String)> = tf
        .doc
        .postprocess
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| (format!("postprocess[{i}]"), s.clone()))
        .collect();
    if let Some(ps) = &tf.externals.postprocess_script {
        let body = String::from_utf8(ps.data.clone())
            .with_context(|| format!("postprocess-script {}: not UTF-8 text", ps.path.display()))?;
        bodies.push((format!("postprocess-script {}", ps.name), body));
    }
    if !bodies.is_empty() {
        let protected = scripts::Protected::mount(&r, &env.work.join("rofiles"))?;
        for (name, body) in &bodies {
            let label = format!("{}: {name}", tf.path.display());
            let interp = if body.starts_with("#!") {
                body.lines().next().unwrap()[2..]
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            } else {
                vec!["/bin/sh".to_string(), "-e".to_string()]
            };
            let script = scripts::Script {
                label: &label,
                interpreter: interp,
                body,
                args: vec![],
                stdin: None,
            };
            scripts::run_in_root(protected.path(), &env.work.join("scratch"), &script)?;
            scripts_run += 1;
        }
    }
    Ok(scripts_run)
}

/// Returns the kernel version of a bootable tree.
fn initramfs(env: &Env) -> Result<(Option<String>, String)> {
    if env.tf.container() {
        return Ok((None, "container: no kernel handling".into()));
    }
    let cache = initramfs::Cache::new(&env.opts.cachedir);
    let prepared = kernel::prepare(
        &env.root(),
        &env.tf,
        &env.work,
        &cache,
        env.opts.rebuild_initramfs,
    )?;
    let detail = match &prepared {
        Some((k, kernel::Initramfs::None)) => format!("kernel {k}, no initramfs"),
        Some((k, kernel::Initramfs::Built { why, compressed })) => {
            format!("kernel {k}, initramfs built by dracut ({why}), {compressed}")
        }
        Some((k, kernel::Initramfs::Reused)) => {
            format!("kernel {k}, initramfs reused: nothing dracut reads changed")
        }
        None => "no kernel in the tree".to_string(),
    };
    Ok((prepared.map(|(k, _)| k), detail))
}

/// Returns the owners of files not owned by root, by committed path.
fn layout(env: &Env, packages: &Packages) -> Result<(Owners, String)> {
    let r = env.root();
    let tf = &env.tf;
    // The flattened treefile travels in the commit.
    let share = r.join("usr/share/hostforge");
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("treefile.json"), tf.flattened_json() + "\n")?;

    // Files owned by non-root users get their ids from the composed passwd/group; the commit
    // filter applies them, or `apply_owners` to files the commit took from the package cache.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap_or_default();
    let (uids, gids) = (name_ids(&passwd), name_ids(&group));
    let mut owners = Owners::new();
    for info in &packages.infos {
        for (path, user, grp) in &info.owners {
            if path.starts_with("/var/") || path.starts_with("/run/") {
                continue;
            }
            let uid = *uids.get(user.as_str()).ok_or_else(|| {
                anyhow!(
                    "{}: {path} is owned by user {user:?}, which no package or scriptlet \
                     created in /etc/passwd",
                    info.nevra
                )
            })?;
            let gid = *gids.get(grp.as_str()).ok_or_else(|| {
                anyhow!(
                    "{}: {path} is owned by group {grp:?}, which no package or scriptlet \
                     created in /etc/group",
                    info.nevra
                )
            })?;
            let committed = match path.strip_prefix("/etc/") {
                Some(rest) if !tf.container() => format!("/usr/etc/{rest}"),
                _ => path.clone(),
            };
            owners.insert(committed, (uid, gid));
        }
    }
    if tf.container() {
        postprocess::container_layout(&r)?;
        Ok((owners, "container layout".into()))
    } else {
        postprocess::ostree_layout(&r, tf)?;
        Ok((owners, "ostree layout".into()))
    }
}

fn name_ids(text: &str) -> HashMap<&str, u32> {
    let mut m: HashMap<&str, u32> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first().copied()?, f.get(2)?.parse().ok()?))
        })
        .collect();
    m.entry("root").or_insert(0);
    m
}

/// Commits the tree into the cache repo, copies the commit into `--repo`, and only then
/// moves the ref there.
/// `owners`: committed path -> (uid, gid) for files not owned by root (from the layout step).
fn commit(
    env: &Env,
    target: &ostree::Repo,
    tree: &Tree,
    owners: Owners,
    linked: &place::Linked,
    ahead: Option<ostreeutil::Precompress>,
) -> Result<(Committed, String)> {
    let committed = write_build_commit(env, tree, owners, linked)?;
    let built = &committed.commit;
    // The root is in the cache repo now: set aside, the next compose lays its packages out
    // over it (`place::place_packages_over`).
    let aside = env.work.join("root.old");
    postprocess::remove_any(&aside)?;
    std::fs::rename(env.root(), &aside)
        .with_context(|| format!("moving {} aside", env.root().display()))?;
    copy_into_target(env, target, tree.input.parent.as_deref(), built, ahead)?;
    sign_commit(env, target, built)?;
    static_delta(env, target, tree.input.parent.as_deref(), built)?;
    process::fault_point("commit");
    move_ref(env, target, built)?;
    let detail = format!("{} => {built}", env.ref_name());
    Ok((committed, detail))
}

/// Whether the commit takes package files with the checksums they have in the package cache
/// (no SELinux labels, no `readonly-executables`).
fn keeps_package_checksums(env: &Env) -> bool {
    env.tf.doc.selinux == Some(false) && env.tf.doc.readonly_executables != Some(true)
}

/// For an archive `target`, the files of the packages this compose downloaded and the rpmdb,
/// compressed on the other core while the tree is finished and committed into the cache: the
/// commit step's export takes those the commit holds. Only when the commit keeps the package
/// files' checksums (else few would be used).
fn compress_ahead(
    env: &Env,
    target: &ostree::Repo,
    packages: &Packages,
) -> Result<Option<ostreeutil::Precompress>> {
    if !keeps_package_checksums(env) {
        return Ok(None);
    }
    let files = packages.fetched.iter().flat_map(|&i| {
        packages.infos[i].layout.iter().filter_map(|p| match p {
            pkgcache::Placed::Link(_, csum) | pkgcache::Placed::Copy(_, csum, _) => {
                Some(csum.clone())
            }
            _ => None,
        })
    });
    let rpmdb = env.root().join("usr/share/rpm/rpmdb.sqlite");
    ostreeutil::Precompress::start(&env.cache_path, target, files.collect(), vec![rpmdb])
}

/// What the commit changes on the way in: owners from the composed passwd/group,
/// `readonly-executables`, and SELinux labels from the tree's own policy.
/// The commit's modifier, and whether it takes files still hardlinked to the package cache by
/// their inode alone (`DEVINO_CANONICAL`: such files then need [`apply_owners`]).
fn commit_modifier(env: &Env, owners: Owners) -> Result<(ostree::RepoCommitModifier, bool)> {
    let readonly_exec = env.tf.doc.readonly_executables == Some(true);
    let filter = move |_repo: &ostree::Repo, path: &str, info: &gio::FileInfo| {
        if let Some((uid, gid)) = owners.get(path) {
            info.set_attribute_uint32("unix::uid", *uid);
            info.set_attribute_uint32("unix::gid", *gid);
        }
        if readonly_exec && info.file_type() == gio::FileType::Regular {
            let mode = info.attribute_uint32("unix::mode");
            if mode & 0o111 != 0 {
                info.set_attribute_uint32("unix::mode", mode & !0o222);
            }
        }
        ostree::RepoCommitFilterResult::Allow
    };
    let policy = selinux_policy(env)?;
    let mut flags = ostree::RepoCommitModifierFlags::NONE;
    // Nothing but an owner would change a file still hardlinked to the package cache (no
    // label, no mode change): libostree takes its cached checksum without calling the filter
    // or reading the object's metadata, as rpm-ostree does; the owners are applied after.
    // (There is no policy exactly when the treefile says `selinux: false`.)
    let canonical = keeps_package_checksums(env);
    if canonical {
        flags |= ostree::RepoCommitModifierFlags::DEVINO_CANONICAL;
    }
    if policy.is_some() {
        // As rpm-ostree: a path the policy has no label for fails the commit.
        flags |= ostree::RepoCommitModifierFlags::ERROR_ON_UNLABELED;
        if env.tf.doc.selinux_label_version == Some(1) {
            flags |= ostree::RepoCommitModifierFlags::SELINUX_LABEL_V1;
        }
    }
    let modifier = ostree::RepoCommitModifier::new(flags, Some(Box::new(filter)));
    // Labels replace whatever security.selinux the files carry on disk. A labelled file is a
    // new object (the label is part of its checksum), so the devino shortcut below only
    // helps files whose label did not change.
    modifier.set_sepolicy(policy.as_ref());
    Ok((modifier, canonical))
}

/// Gives the files of `owners` their owner in `mtree` where the commit took them by checksum
/// from the package cache (a `DEVINO_CANONICAL` hit, which the filter never saw): the cached
/// object's content, mode and extended attributes (decoded by libostree from its bare-user
/// metadata, never that bookkeeping itself) written again as a new object with the owner.
/// Files the filter saw already carry their owner and are left as they are.
fn apply_owners(repo: &ostree::Repo, mtree: &ostree::MutableTree, owners: &Owners) -> Result<()> {
    for (path, &(uid, gid)) in owners {
        // Gone when removed after the packages were installed (remove-files, layout); a
        // directory got its owner from the filter.
        let Some((dir, name, checksum)) = mtree_file(mtree, path)? else {
            continue;
        };
        let owned = walk::owned(repo, &checksum, uid, gid, path)?;
        if owned == checksum {
            continue;
        }
        dir.replace_file(name, &owned)?;
    }
    Ok(())
}

/// The non-directory at `path` in `mtree`: its directory, its name and its checksum; None when
/// there is no such path or it is a directory.
fn mtree_file<'p>(
    mtree: &ostree::MutableTree,
    path: &'p str,
) -> Result<Option<(ostree::MutableTree, &'p str, String)>> {
    let lookup = |dir: &ostree::MutableTree, name: &str| match dir.lookup(name) {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.matches(gio::IOErrorEnum::NotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {path} in the commit")),
    };
    let path = path.trim_matches('/');
    let (parents, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut dir = mtree.clone();
    for comp in parents.split('/').filter(|c| !c.is_empty()) {
        match lookup(&dir, comp)? {
            Some((_, Some(sub))) => dir = sub,
            _ => return Ok(None),
        }
    }
    Ok(match lookup(&dir, name)? {
        Some((Some(checksum), _)) => Some((dir, name, checksum.to_string())),
        _ => None,
    })
}

/// The root written into the cache repo (in its open transaction) by libostree, as its
/// `RepoFile`. Files still hardlinked to the package cache (packages and layers) are known
/// by their inode: libostree maps every loose object's (device, inode) to its checksum.
fn libostree_tree(env: &Env, owners: Owners) -> Result<ostree::RepoFile> {
    let cancellable = gio::Cancellable::NONE;
    let (modifier, canonical) = commit_modifier(env, owners.clone())?;
    let cache = &env.cache;
    cache.scan_hardlinks(cancellable)?;
    let mtree = ostree::MutableTree::new();
    let dir = std::fs::File::open(env.root())?;
    use std::os::fd::AsRawFd;
    cache.write_dfd_to_mtree(dir.as_raw_fd(), ".", &mtree, Some(&modifier), cancellable)?;
    if canonical {
        apply_owners(cache, &mtree, &owners)?;
    }
    cache
        .write_mtree(&mtree, cancellable)?
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a RepoFile"))
}

/// The tree as a commit in the cache repo (ref `hostforge/build/REF`), in one transaction.
fn write_build_commit(
    env: &Env,
    tree: &Tree,
    owners: Owners,
    linked: &place::Linked,
) -> Result<Committed> {
    let cancellable = gio::Cancellable::NONE;
    let cache = &env.cache;
    // Aborted on drop: an error below leaves no half-open transaction in the cache.
    let tx = cache.auto_transaction(cancellable)?;
    // Files placed from the package cache are known by their inode. hostforge writes the
    // tree itself when nothing but owners changes a file (`walk`); layers' files are
    // hardlinks it did not place, so libostree commits a tree with layers.
    let ours = if keeps_package_checksums(env) && tree.input.layers.is_empty() {
        walk::write_root(cache, &env.cache_path, &env.root(), linked, &owners)?
    } else {
        None
    };
    let root_file = match ours {
        Some((contents, meta)) => {
            if cfg!(debug_assertions) {
                // Every test checks hostforge's tree against libostree's.
                let theirs = libostree_tree(env, owners)?;
                let theirs = (
                    theirs.tree_get_contents_checksum().map(|c| c.to_string()),
                    theirs.tree_get_metadata_checksum().map(|c| c.to_string()),
                );
                if theirs != (Some(contents.clone()), Some(meta.clone())) {
                    let at = match &theirs.0 {
                        Some(t) => walk::first_difference(cache, &contents, t, "/")?,
                        None => String::new(),
                    };
                    bail!(
                        "hostforge wrote the tree as {contents} (metadata {meta}), libostree \
                         as {theirs:?}: {at}"
                    );
                }
            }
            let mtree = ostree::MutableTree::from_checksum(cache, &contents, &meta);
            cache
                .write_mtree(&mtree, cancellable)?
                .downcast::<ostree::RepoFile>()
                .map_err(|_| anyhow!("write_mtree did not return a RepoFile"))?
        }
        None => libostree_tree(env, owners)?,
    };
    let meta = commit_metadata(env, tree)?;
    let name = env
        .tf
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let subject = match &tree.version {
        Some(v) => format!("{name} {v}"),
        None => name.into_owned(),
    };
    let time = crate::ostreeutil::source_date_epoch()?;
    let c = cache.write_commit_with_time(
        tree.input.parent.as_deref(),
        Some(&subject),
        None,
        Some(&meta),
        &root_file,
        time,
        cancellable,
    )?;
    // Keeps the build commit (and what the next compose reuses) alive in the cache.
    let build_ref = match &env.treeref {
        Some(r) => format!("hostforge/build/{r}"),
        None => "hostforge/build-without-ref".to_string(),
    };
    cache.transaction_set_ref(None, &build_ref, Some(&c));
    if env.tf.doc.repo_metadata == Some(MetadataTarget::Detached) {
        // `repo-metadata: detached`: the repos go into the commit's detached metadata.
        let mut dm = MetaBuilder::new();
        dm.value("rpmostree.rpmmd-repos", &rpmmd_repos(tree));
        cache.write_commit_detached_metadata(&c, Some(&dm.end()), cancellable)?;
    }
    let stats = ostreeutil::commit_transaction(cache, tx, &c)?;
    Ok(Committed {
        commit: c.to_string(),
        objects_written: stats.get_content_objects_written() as u64
            + stats.get_metadata_objects_written() as u64,
        bytes_written: stats.get_content_bytes_written(),
    })
}

/// Copies the commit's objects from the cache repo into `--repo` (no ref moves yet): into an
/// archive repo by hostforge (files compressed on every core, only the directories that
/// differ from the ref's previous commit walked), into the other kinds by libostree's pull.
fn copy_into_target(
    env: &Env,
    target: &ostree::Repo,
    parent: Option<&str>,
    built: &str,
    ahead: Option<ostreeutil::Precompress>,
) -> Result<()> {
    let exported = ostreeutil::export_commit_to_archive(
        &env.cache_path,
        target,
        built,
        parent,
        ahead,
        Some(&env.progress),
    )
    .with_context(|| format!("copying commit {built} into the target repo"))?;
    if exported.is_none() {
        ostreeutil::pull_local(target, &env.cache_path, &[built.to_string()])
            .with_context(|| format!("copying commit {built} into the target repo"))?;
    }
    Ok(())
}

/// Points the ref at the commit, and keeps a served repo's summary in step with its refs.
fn move_ref(env: &Env, target: &ostree::Repo, built: &str) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    // As rpm-ostree: no `ref`, or --write-commitid-to, leaves every ref where it is.
    let Some(treeref) = env
        .treeref
        .as_ref()
        .filter(|_| env.opts.write_commitid_to.is_none())
    else {
        return Ok(());
    };
    // The commit's objects were made durable when they went in; the ref file alone is written
    // (and synced) now. A transaction here cost a syncfs and an fsync of all 256 object
    // directories for nothing (~35 ms).
    target.set_ref_immediate(None, treeref, Some(built), cancellable)?;
    update_summary(env, target)
}

/// `--static-delta`: the delta from the ref's previous commit to `built`, made before the
/// ref moves (a failure leaves the ref where it was); the summary lists it.
fn static_delta(env: &Env, target: &ostree::Repo, parent: Option<&str>, built: &str) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    if let (true, Some(parent)) = (env.opts.static_delta, parent) {
        // Nodes on the parent fetch one delta instead of every changed object. libostree
        // reads `params` unchecked: an empty dictionary, not none, keeps its defaults.
        let params = glib::VariantDict::new(None).end();
        target
            .static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(parent),
                built,
                None,
                Some(&params),
                cancellable,
            )
            .with_context(|| format!("generating the static delta {parent} -> {built}"))?;
    }
    Ok(())
}

/// Keeps a served repo's summary in step with its refs and deltas: regenerated when the
/// repo has one, when generating deltas, or when signing (clients verify a signed summary
/// with `gpg-verify-summary`), and signed with the commit's key.
fn update_summary(env: &Env, target: &ostree::Repo) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    let key = env.signing_key();
    let served = env
        .opts
        .repo
        .as_ref()
        .is_some_and(|r| r.join("summary").exists());
    // Clients find deltas through the summary.
    if !served && key.is_none() && !env.opts.static_delta {
        return Ok(());
    }
    target
        .regenerate_summary(None, cancellable)
        .context("updating the repo summary")?;
    if let Some(key) = key {
        target
            .add_gpg_signature_summary(&[key], env.gpg_homedir().as_deref(), cancellable)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("signing the repo summary with GPG key {key}"))?;
    }
    Ok(())
}

/// Signs `commit` in `--repo` with the `--gpg-sign` (or treefile `gpg-key`) key, before any
/// ref points at it: a key gpg cannot use fails the compose with nothing moved. A commit
/// the key already signed stays as it is.
fn sign_commit(env: &Env, target: &ostree::Repo, commit: &str) -> Result<()> {
    let Some(key) = env.signing_key() else {
        return Ok(());
    };
    let homedir = env.gpg_homedir();
    match target.sign_commit(commit, key, homedir.as_deref(), gio::Cancellable::NONE) {
        Ok(()) => Ok(()),
        Err(e) if e.matches(gio::IOErrorEnum::Exists) => Ok(()),
        Err(e) => Err(anyhow!(
            "signing commit {commit} with GPG key {key} (keyring: {}): {e}; is the secret key \
             in that keyring, without a passphrase or with gpg-agent holding it?",
            homedir.as_deref().unwrap_or("gpg's default, ~/.gnupg")
        )),
    }
}

/// A JSON value as commit metadata: booleans, numbers and strings as themselves, a list of
/// strings as `as` (any other list as `av`), an object as `a{sv}` (objects stay objects, as
/// in rpm-ostree), null as an empty `av`.
fn json_to_variant(v: &serde_json::Value) -> glib::Variant {
    use serde_json::Value;
    match v {
        Value::Bool(b) => b.to_variant(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_variant(),
            (None, Some(u)) => u.to_variant(),
            _ => n.as_f64().unwrap_or_default().to_variant(),
        },
        Value::String(s) => s.to_variant(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect::<Vec<String>>()
            .to_variant(),
        Value::Array(a) => {
            let items: Vec<glib::Variant> = a
                .iter()
                .map(|x| glib::Variant::from_variant(&json_to_variant(x)))
                .collect();
            glib::Variant::array_from_iter_with_type(glib::VariantTy::VARIANT, items)
        }
        Value::Object(m) => {
            let dict = glib::VariantDict::new(None);
            for (k, x) in m {
                dict.insert_value(k, &json_to_variant(x));
            }
            dict.end()
        }
        Value::Null => glib::Variant::array_from_iter_with_type(
            glib::VariantTy::VARIANT,
            Vec::<glib::Variant>::new(),
        ),
    }
}

fn commit_metadata(env: &Env, tree: &Tree) -> Result<glib::Variant> {
    let mut m = MetaBuilder::new();
    for (k, v) in env.tf.doc.add_commit_metadata.iter().flatten() {
        // (String values had the variables substituted at load, rpm-ostree's rule.)
        m.value(k, &json_to_variant(v));
    }
    for (k, v) in &env.opts.add_metadata {
        m.str(k, v);
    }
    if let Some(v) = &tree.version {
        m.str("version", v);
    }
    if let Some(k) = &tree.kver {
        m.value("ostree.bootable", &true.to_variant())
            .str("ostree.linux", k);
    }
    if env.tf.doc.repo_metadata.unwrap_or_default() == MetadataTarget::Inline {
        m.value("rpmostree.rpmmd-repos", &rpmmd_repos(tree));
    }
    if let Some(cmd) = env.tf.doc.container_cmd.as_ref().filter(|c| !c.is_empty()) {
        // What an OCI image made from the commit runs by default (rpm-ostree's key).
        m.strv("ostree.container-cmd", cmd);
    }
    let nevras: Vec<String> = tree
        .packages
        .infos
        .iter()
        .map(|i| i.nevra.clone())
        .collect();
    let repos: Vec<String> = env
        .repos
        .iter()
        .map(|r| format!("{} {}", r.id, r.baseurl().unwrap_or_default()))
        .collect();
    m.str("hostforge.inputhash", &tree.input.inputhash)
        .str("rpmostree.inputhash", &tree.input.inputhash)
        .str("hostforge.treefile", &env.tf.flattened_json())
        .strv("hostforge.packages", &nevras)
        .strv("hostforge.repos", &repos)
        .str("hostforge.version", HOSTFORGE_VERSION);
    Ok(m.end())
}

/// rpm-ostree's `rpmostree.rpmmd-repos`: one `{id, timestamp}` per repo (`aa{sv}`), the
/// time its metadata was generated.
fn rpmmd_repos(tree: &Tree) -> glib::Variant {
    let items: Vec<glib::Variant> = tree
        .repo_generated
        .iter()
        .map(|(id, t)| {
            let d = glib::VariantDict::new(None);
            d.insert("id", id.as_str());
            d.insert("timestamp", *t);
            d.end()
        })
        .collect();
    glib::Variant::array_from_iter_with_type(glib::VariantTy::VARDICT, items)
}

/// What `compose tree` did: the compose.json document (`--write-composejson-to`, `--json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// The treefile's ref (none: the commit moved no ref).
    #[serde(rename = "ref")]
    pub treeref: Option<String>,
    /// The treefile and everything it included, in load order.
    pub treefiles: Vec<PathBuf>,
    /// The ref's commit after the compose (unset for `--dry-run`).
    pub commit: Option<String>,
    pub parent: Option<String>,
    pub version: Option<String>,
    pub inputhash: String,
    /// Whether a new commit was written (false: inputs unchanged).
    pub changed: bool,
    pub packages: PackageDiff,
    pub bytes_written: u64,
    pub objects_written: u64,
    pub cache_hits: usize,
    pub downloaded: usize,
    pub bytes_downloaded: u64,
    /// Seconds per step, in pipeline order.
    pub seconds: serde_json::Map<String, serde_json::Value>,
}

/// Packages against the parent commit, as NEVRAs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PackageDiff {
    pub total: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// [before, after]
    pub changed: Vec<[String; 2]>,
}

/// The packages against the parent commit's `hostforge.packages`.
fn package_diff(target: &ostree::Repo, tree: &Tree) -> Result<PackageDiff> {
    let now: BTreeMap<String, String> = pkgcache::nevra_index(&tree.packages.infos);
    let before: BTreeMap<String, String> = match &tree.input.parent {
        Some(p) => {
            let meta = ostreeutil::commit_meta(target, p)?;
            let list: Vec<String> = meta
                .lookup_value("hostforge.packages", None)
                .and_then(|v| v.get::<Vec<String>>())
                .unwrap_or_default();
            list.into_iter()
                .map(|nevra| (name_of_nevra(&nevra).to_string(), nevra))
                .collect()
        }
        None => BTreeMap::new(),
    };
    let added = now
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .map(|(_, v)| v.clone())
        .collect();
    let removed = before
        .iter()
        .filter(|(n, _)| !now.contains_key(*n))
        .map(|(_, v)| v.clone())
        .collect();
    let changed = now
        .iter()
        .filter_map(|(n, v)| {
            before
                .get(n)
                .filter(|b| *b != v)
                .map(|b| [b.clone(), v.clone()])
        })
        .collect();
    Ok(PackageDiff {
        total: now.len(),
        added,
        removed,
        changed,
    })
}

/// The name part of `name-[epoch:]version-release.arch`.
fn name_of_nevra(nevra: &str) -> &str {
    let mut it = nevra.rsplitn(3, '-');
    let _release = it.next();
    let _version = it.next();
    it.next().unwrap_or(nevra)
}

fn summary(env: &Env, outcome: Outcome, seconds: Vec<(String, f64)>) -> Result<Summary> {
    let seconds = seconds
        .into_iter()
        .map(|(k, v)| (k, json!((v * 1000.0).round() / 1000.0)))
        .collect();
    let mut doc = Summary {
        treeref: env.treeref.clone(),
        treefiles: env.tf.sources.clone(),
        commit: None,
        parent: None,
        version: None,
        inputhash: String::new(),
        changed: false,
        packages: PackageDiff::default(),
        bytes_written: 0,
        objects_written: 0,
        cache_hits: 0,
        downloaded: 0,
        bytes_downloaded: 0,
        seconds,
    };
    match outcome {
        Outcome::DryRun { solved } => doc.packages.total = solved.len(),
        Outcome::Unchanged {
            inputhash,
            commit,
            parent,
            version,
            packages,
        } => {
            doc.parent = parent;
            doc.commit = Some(commit);
            doc.version = version;
            doc.inputhash = inputhash;
            doc.packages.total = packages;
        }
        Outcome::Committed {
            tree,
            committed,
            diff,
        } => {
            doc.packages = diff;
            doc.commit = Some(committed.commit);
            doc.parent = tree.input.parent;
            doc.version = tree.version;
            doc.inputhash = tree.input.inputhash;
            doc.changed = true;
            doc.bytes_written = committed.bytes_written;
            doc.objects_written = committed.objects_written;
            let stats = tree.packages.stats;
            doc.cache_hits = stats.cache_hits;
            doc.downloaded = stats.downloaded;
            doc.bytes_downloaded = stats.bytes_downloaded;
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increment_like_rpm_ostree() {
        let v = |p: &str, prev: Option<&str>| next_version(p, '.', prev, 0).unwrap();
        assert_eq!(v("30", None), "30");
        assert_eq!(v("30", Some("30")), "30.1");
        assert_eq!(v("30", Some("30.1")), "30.2");
        assert_eq!(v("31", Some("30.4")), "31");
        assert_eq!(v("22.1", Some("22.1")), "22.1.1");
        assert_eq!(next_version("22", '-', Some("22-4"), 0).unwrap(), "22-5");
    }

    /// rpm-ostree's table: `22.<date:%Y>` gives 22.2019.0, 22.2019.1, 22.2020.0.
    #[test]
    fn dated_versions_restart_at_zero_when_the_date_changes() {
        let y2019 = 1_560_000_000; // 2019-06-08T13:20:00Z
        let y2020 = 1_590_000_000; // 2020-05-20T18:40:00Z
        let v = |p: &str, prev: Option<&str>, t| next_version(p, '.', prev, t).unwrap();
        assert_eq!(v("22.<date:%Y>", None, y2019), "22.2019.0");
        assert_eq!(v("22.<date:%Y>", Some("22.2019.0"), y2019), "22.2019.1");
        assert_eq!(v("22.<date:%Y>", Some("22.2019.1"), y2020), "22.2020.0");
        assert_eq!(
            v("22.<date:%Y>.1", Some("22.2019.1.0"), y2019),
            "22.2019.1.1"
        );
        assert_eq!(v("40.<date:%Y%m%d>.dev", None, y2020), "40.20200520.dev.0");
        assert_eq!(
            strftime_utc("%F %H:%M:%S %j %y %e %%", 951_782_400).unwrap(),
            "2000-02-29 00:00:00 060 00 29 %"
        );
        assert_eq!(strftime_utc("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        let e = next_version("1.<date:%Q>", '.', None, 0).unwrap_err();
        assert!(format!("{e:#}").contains("%Q"), "{e:#}");
        assert!(next_version("1.<date:%Y", '.', None, 0).is_err());
    }

    #[test]
    fn commit_metadata_values_keep_their_types() {
        let v: serde_json::Value = serde_json::json!({
            "n": 3, "big": u64::MAX, "f": 1.5, "b": true, "s": "x",
            "list": ["a", "b"], "mixed": [1, "a"], "obj": {"k": {"deep": 1}}, "nul": null
        });
        let var = json_to_variant(&v);
        assert_eq!(var.type_().as_str(), "a{sv}");
        let d = glib::VariantDict::new(Some(&var));
        let ty = |k: &str| {
            d.lookup_value(k, None)
                .unwrap()
                .type_()
                .as_str()
                .to_string()
        };
        assert_eq!(ty("n"), "x");
        assert_eq!(ty("big"), "t");
        assert_eq!(ty("f"), "d");
        assert_eq!(ty("b"), "b");
        assert_eq!(ty("s"), "s");
        assert_eq!(ty("list"), "as");
        assert_eq!(ty("mixed"), "av");
        assert_eq!(ty("obj"), "a{sv}");
        assert_eq!(ty("nul"), "av");
    }

    #[test]
    fn nevra_name() {
        assert_eq!(name_of_nevra("foo-bar-1.0-1.x86_64"), "foo-bar");
        assert_eq!(name_of_nevra("foo-2:1.0-1.noarch"), "foo");
    }
}
