//! `compose tree`: the pipeline from a treefile to an ostree commit, as a flat list of named,
//! timed steps over one context. No step reaches back into an earlier one; the ref moves only
//! in the last step, after every object is written.

mod kernel;
mod postprocess;
mod scripts;

use crate::ostreeutil::{self, MetaBuilder};
use crate::pkgcache::{self, PkgInfo};
use crate::process;
use crate::progress::{Progress, Timer};
use crate::rpmmd::{self, RepoDef, Solved};
use crate::treefile::Treefile;
use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

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
}

#[derive(Default)]
struct Stats {
    cache_hits: usize,
    downloaded: usize,
    bytes_downloaded: u64,
    objects_written: u64,
    bytes_written: u64,
}

/// Everything the steps share.
struct Ctx {
    opts: Options,
    progress: Progress,
    tf: Treefile,
    treeref: String,
    target: Option<ostree::Repo>,
    cache: ostree::Repo,
    cache_path: PathBuf,
    work: PathBuf,
    repos: Vec<RepoDef>,
    solved: Vec<Solved>,
    inputhash: String,
    parent: Option<String>,
    pkg_commits: Vec<String>,
    infos: Vec<PkgInfo>,
    version: Option<String>,
    /// The kernel version of a bootable tree.
    kver: Option<String>,
    commit: Option<String>,
    changed: bool,
    stats: Stats,
    steps: Vec<(String, f64)>,
    /// (device, inode) -> checksum of every file the assemble step hardlinked from the cache.
    devino: ostree::RepoDevInoCache,
    /// Committed path -> (uid, gid) for files not owned by root, from the layout step.
    owners: BTreeMap<String, (u32, u32)>,
}

/// How a step ended: whether the pipeline goes on, and the detail for the step's progress
/// line (a stop without one prints no line: the step said why itself).
enum Flow {
    Continue(String),
    Stop(Option<String>),
}

type Step = fn(&mut Ctx) -> Result<Flow>;

/// The pipeline, in order.
const STEPS: &[(&str, Step)] = &[
    ("resolve", resolve),
    ("inputhash", inputhash),
    ("fetch", fetch_and_import),
    ("assemble", assemble),
    ("scripts", run_scriptlets),
    ("rpmdb", write_rpmdb),
    ("postprocess", postprocess_tree),
    ("initramfs", initramfs),
    ("layout", layout),
    ("commit", commit),
];

/// Bump when the compose output changes for the same inputs, so old commits are redone.
const COMPOSE_FORMAT: &str = "hostforge-compose-1";

/// Runs a compose; returns what it did (the compose.json document).
pub fn compose_tree(opts: Options) -> Result<Summary> {
    process::check_required_programs()?;
    let progress = Progress::new(opts.quiet, opts.json);
    let tf = Treefile::load(&opts.treefile)?;
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
    opts.cachedir = opts.cachedir.canonicalize()?;
    let lock = std::fs::File::create(opts.cachedir.join("lock"))?;
    if lock.try_lock().is_err() {
        progress.info("waiting for another compose using this cachedir");
        lock.lock()?;
    }
    let cache_path = opts.cachedir.join("repo");
    let cache = ostreeutil::open_or_create(&cache_path, ostree::RepoMode::BareUser)?;
    let work = opts.cachedir.join("work");
    let all_repos = rpmmd::load_repo_files(&tf.dir)?;
    let repos = rpmmd::select_repos(
        &all_repos,
        tf.doc.repos.as_deref().unwrap_or_default(),
        &tf.path,
    )?;
    let mut ctx = Ctx {
        opts,
        progress,
        tf,
        treeref,
        target,
        cache,
        cache_path,
        work,
        repos,
        solved: Vec::new(),
        inputhash: String::new(),
        parent: None,
        pkg_commits: Vec::new(),
        infos: Vec::new(),
        version: None,
        kver: None,
        commit: None,
        changed: false,
        stats: Stats::default(),
        steps: Vec::new(),
        devino: ostree::RepoDevInoCache::new(),
        owners: BTreeMap::new(),
    };
    // Each step is timed here, once; its line carries the detail it returns.
    for (name, step) in STEPS {
        let t = Timer::start();
        let flow = step(&mut ctx).with_context(|| format!("compose step {name}"))?;
        ctx.steps.push((name.to_string(), t.secs()));
        match flow {
            Flow::Continue(detail) => ctx.progress.step_done(name, t.secs(), &detail),
            Flow::Stop(detail) => {
                if let Some(d) = detail {
                    ctx.progress.step_done(name, t.secs(), &d);
                }
                break;
            }
        }
    }
    drop(lock);
    let doc = summary(&ctx)?;
    if let Some(p) = &ctx.opts.write_composejson_to {
        std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let (Some(p), Some(c)) = (&ctx.opts.write_commitid_to, &ctx.commit) {
        std::fs::write(p, c).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(doc)
}

fn resolve(ctx: &mut Ctx) -> Result<Flow> {
    let reposdir = ctx.work.join("repos.d");
    let _ = std::fs::remove_dir_all(&reposdir);
    rpmmd::write_libdnf_reposdir(&ctx.repos, &reposdir)?;
    let installroot = ctx.work.join("dnf-root");
    std::fs::create_dir_all(&installroot)?;
    let releasever = ctx.tf.releasever();
    let excludes = ctx.tf.doc.exclude_packages.clone().unwrap_or_default();
    let req = rpmmd::libdnf::Request {
        reposdir: &reposdir,
        cachedir: &ctx.opts.cachedir.join("dnf"),
        installroot: &installroot,
        releasever: releasever.as_deref(),
        packages: ctx.tf.packages(),
        excludes: &excludes,
        recommends: ctx.tf.recommends(),
    };
    ctx.solved = rpmmd::libdnf::depsolve(&req).with_context(|| {
        format!(
            "{}: resolving packages from repos {}",
            ctx.tf.path.display(),
            ctx.repos
                .iter()
                .map(|r| format!("[{}] {}", r.id, r.baseurl().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let detail = format!("{} packages", ctx.solved.len());
    if ctx.opts.dry_run {
        if !ctx.opts.json {
            for p in &ctx.solved {
                println!("{}", rpmmd::nevra(p));
            }
        }
        return Ok(Flow::Stop(Some(detail)));
    }
    Ok(Flow::Continue(detail))
}

fn inputhash(ctx: &mut Ctx) -> Result<Flow> {
    let mut h = Sha256::new();
    h.update(format!("{COMPOSE_FORMAT}\n{HOSTFORGE_VERSION}\n"));
    h.update(ctx.tf.flattened_json());
    // The referenced files' bytes as the loader read them: the same bytes compose uses.
    let ext = &ctx.tf.externals;
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
    for p in &ctx.solved {
        h.update(format!(
            "\npkg {} {}:{}",
            rpmmd::nevra(p),
            p.checksum_type,
            p.checksum
        ));
    }
    ctx.inputhash = hex::encode(h.finalize());
    let target = ctx.target.as_ref().expect("target repo outside dry-run");
    ctx.parent = ostreeutil::resolve(target, &ctx.treeref)?;
    if let (Some(parent), false) = (&ctx.parent, ctx.opts.force_nocache) {
        let meta = ostreeutil::commit_meta(target, parent)?;
        if ostreeutil::meta_str(&meta, "hostforge.inputhash").as_deref() == Some(&ctx.inputhash) {
            ctx.commit = Some(parent.clone());
            ctx.version = ostreeutil::meta_str(&meta, "version");
            ctx.progress
                .info(&format!("no changes: {} is {parent}", ctx.treeref));
            return Ok(Flow::Stop(None));
        }
    }
    ctx.changed = true;
    Ok(Flow::Continue(ctx.inputhash.clone()))
}

fn fetch_and_import(ctx: &mut Ctx) -> Result<Flow> {
    let mut commits: Vec<Option<String>> = Vec::with_capacity(ctx.solved.len());
    for p in &ctx.solved {
        commits.push(pkgcache::lookup(&ctx.cache, p)?);
    }
    let missing: Vec<usize> = (0..ctx.solved.len())
        .filter(|&i| commits[i].is_none())
        .collect();
    ctx.stats.cache_hits = ctx.solved.len() - missing.len();
    let dl_dir = ctx.opts.cachedir.join("downloads");
    std::fs::create_dir_all(&dl_dir)?;
    let mut verifiers = HashMap::new();
    for r in ctx.repos.iter().filter(|r| r.gpgcheck()) {
        verifiers.insert(r.id.clone(), rpmmd::load_verifier(r)?);
    }
    let bar = ctx.progress.bar("fetch", missing.len() as u64);
    let imported = crate::pool::map(
        &missing,
        crate::pool::workers(4),
        || {
            let repo = ostree::Repo::new_for_path(&ctx.cache_path);
            repo.open(gio::Cancellable::NONE)?;
            Ok(repo)
        },
        |repo, &i| -> Result<(usize, String, u64)> {
            let pkg = &ctx.solved[i];
            let repodef = ctx
                .repos
                .iter()
                .find(|r| r.id == pkg.repo_id)
                .ok_or_else(|| anyhow!("package from unknown repo {}", pkg.repo_id))?;
            let dest = dl_dir.join(format!("{}.rpm", pkg.checksum));
            let size = rpmmd::download(repodef, pkg, &dest).with_context(|| {
                format!(
                    "downloading {} from repo [{}]",
                    rpmmd::nevra(pkg),
                    pkg.repo_id
                )
            })?;
            let imported = pkgcache::import(repo, &dest, pkg, verifiers.get(&pkg.repo_id));
            let _ = std::fs::remove_file(&dest);
            let imported = imported?;
            bar.inc(&pkg.name);
            Ok((i, imported, size))
        },
    );
    drop(bar);
    for (i, commit, size) in imported? {
        commits[i] = Some(commit);
        ctx.stats.downloaded += 1;
        ctx.stats.bytes_downloaded += size;
    }
    ctx.pkg_commits = commits
        .into_iter()
        .map(|c| c.expect("every package imported"))
        .collect();
    ctx.infos = ctx
        .pkg_commits
        .iter()
        .map(|c| pkgcache::read_info(&ctx.cache, c))
        .collect::<Result<_>>()?;
    Ok(Flow::Continue(format!(
        "{} downloaded and imported, {} from cache",
        ctx.stats.downloaded, ctx.stats.cache_hits
    )))
}

fn root(ctx: &Ctx) -> PathBuf {
    ctx.work.join("root")
}

/// Empties the work dir of an earlier (possibly interrupted) compose.
fn clean_work_root(ctx: &Ctx) -> Result<()> {
    let mnt = ctx.work.join("rofiles");
    if mnt.exists() {
        process::run_best_effort(Command::new("fusermount3").arg("-u").arg(&mnt));
    }
    let r = root(ctx);
    if r.exists() {
        std::fs::remove_dir_all(&r).with_context(|| format!("removing {}", r.display()))?;
    }
    Ok(())
}

fn assemble(ctx: &mut Ctx) -> Result<Flow> {
    // Two packages may ship one path only with identical content.
    let mut owners: HashMap<&str, (&str, &str)> = HashMap::new();
    for info in &ctx.infos {
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
    clean_work_root(ctx)?;
    let r = root(ctx);
    std::fs::create_dir_all(&r)?;
    let devino = ctx.devino.clone();
    let bar = ctx.progress.bar("assemble", ctx.pkg_commits.len() as u64);
    for (commit, info) in ctx.pkg_commits.iter().zip(&ctx.infos) {
        let opts = ostree::RepoCheckoutAtOptions {
            mode: ostree::RepoCheckoutMode::User,
            overwrite_mode: ostree::RepoCheckoutOverwriteMode::UnionFiles,
            no_copy_fallback: true,
            devino_to_csum_cache: Some(devino.clone()),
            ..Default::default()
        };
        ctx.cache
            .checkout_at(
                Some(&opts),
                libc::AT_FDCWD,
                &r,
                commit,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("checking out {}", info.nevra))?;
        bar.inc(&info.name);
    }
    drop(bar);
    // documentation: false and install-langs drop files after checkout (unlinking a hardlink
    // leaves the cache untouched).
    let langs = ctx.tf.doc.install_langs.clone();
    for info in &ctx.infos {
        if !ctx.tf.documentation() {
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
    Ok(Flow::Continue(format!(
        "{} packages",
        ctx.pkg_commits.len()
    )))
}

fn script_interp(label: &str, s: &rpm::Scriptlet) -> Result<Vec<String>> {
    let prog = s.program.clone().unwrap_or_default();
    if prog.first().is_some_and(|p| p == "<lua>") {
        bail!("{label}: Lua scriptlets are not supported");
    }
    Ok(prog)
}

fn run_scriptlets(ctx: &mut Ctx) -> Result<Flow> {
    let r = root(ctx);
    let metas: Vec<rpm::PackageMetadata> = ctx
        .pkg_commits
        .iter()
        .map(|c| pkgcache::read_rpm_metadata(&ctx.cache, c))
        .collect::<Result<_>>()?;
    let protected = scripts::Protected::mount(&r, &ctx.work.join("rofiles"))?;
    let scratch = ctx.work.join("scratch");
    let mut count = 0;
    type Getter = fn(&rpm::PackageMetadata) -> Result<rpm::Scriptlet, rpm::Error>;
    let phases: [(&str, Getter, &str); 3] = [
        ("%pre", rpm::PackageMetadata::get_pre_install_script, "1"),
        ("%post", rpm::PackageMetadata::get_post_install_script, "1"),
        (
            "%posttrans",
            rpm::PackageMetadata::get_post_trans_script,
            "0",
        ),
    ];
    let bar = ctx.progress.bar("scripts", metas.len() as u64 * 3);
    for (phase, get, arg) in phases {
        if phase == "%posttrans" {
            count += run_trans_file_triggers(ctx, &metas, protected.path(), &scratch)?;
        }
        for (meta, info) in metas.iter().zip(&ctx.infos) {
            bar.inc(&info.name);
            let Ok(s) = get(meta) else { continue };
            if s.script.trim().is_empty() {
                continue;
            }
            let label = format!("{} {phase} scriptlet", info.nevra);
            let script = scripts::Script {
                label: &label,
                interpreter: script_interp(&label, &s)?,
                body: &s.script,
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
    Ok(Flow::Continue(format!("{count} scriptlets")))
}

/// `%transfiletriggerin`: each trigger gets, on stdin, the composed files under its prefixes.
fn run_trans_file_triggers(
    ctx: &Ctx,
    metas: &[rpm::PackageMetadata],
    root: &Path,
    scratch: &Path,
) -> Result<usize> {
    let mut all_files: Vec<&str> = ctx
        .infos
        .iter()
        .flat_map(|i| i.files.iter().map(|(p, _)| p.as_str()))
        .collect();
    all_files.sort();
    let mut count = 0;
    for (meta, info) in metas.iter().zip(&ctx.infos) {
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
            let script = scripts::Script {
                label: &label,
                interpreter: trig.program.clone(),
                body: &trig.script,
                args: vec!["0".into(), "0".into()],
                stdin: Some((matched.join("\n") + "\n").into_bytes()),
            };
            scripts::run_in_root(root, scratch, &script)?;
            count += 1;
        }
    }
    Ok(count)
}

fn write_rpmdb(ctx: &mut Ctx) -> Result<Flow> {
    let r = root(ctx);
    let dbpath = r.join("usr/share/rpm");
    postprocess::remove_any(&dbpath)?;
    std::fs::create_dir_all(&dbpath)?;
    let mut headers = Vec::new();
    for c in &ctx.pkg_commits {
        let meta = pkgcache::read_rpm_metadata(&ctx.cache, c)?;
        headers.extend(
            meta.header_bytes()
                .map_err(|e| anyhow!("serializing header: {e}"))?,
        );
    }
    let export = ctx.work.join("headers.rpmdb");
    std::fs::write(&export, &headers)?;
    process::run_with_stdin(
        Command::new("rpmdb").arg("--dbpath").arg(&dbpath).args([
            "--define",
            "_db_backend sqlite",
            "--importdb",
        ]),
        std::fs::File::open(&export)?,
    )
    .context("writing the rpmdb")?;
    for f in ["rpmdb.sqlite-shm", "rpmdb.sqlite-wal", ".rpm.lock"] {
        let _ = std::fs::remove_file(dbpath.join(f));
    }
    Ok(Flow::Continue(format!("{} headers", ctx.pkg_commits.len())))
}

/// `automatic-version-prefix`: `P`, then `P.1`, `P.2`, ... as rpm-ostree numbers them.
pub fn next_version(prefix: &str, previous: Option<&str>) -> String {
    match previous {
        Some(p) if p == prefix => format!("{prefix}.1"),
        Some(p) => match p
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => format!("{prefix}.{}", n + 1),
            None => prefix.to_string(),
        },
        None => prefix.to_string(),
    }
}

fn read_parent_file(ctx: &Ctx, path: &str) -> Option<String> {
    let data =
        ostreeutil::read_commit_file(ctx.target.as_ref()?, ctx.parent.as_ref()?, path).ok()?;
    Some(String::from_utf8_lossy(&data).into_owned())
}

fn postprocess_tree(ctx: &mut Ctx) -> Result<Flow> {
    let r = root(ctx);
    let tf = &ctx.tf;
    // Version first: os-release mentions it.
    let user_version = ctx
        .opts
        .add_metadata
        .iter()
        .find(|(k, _)| k == "version")
        .map(|(_, v)| v.clone());
    let parent_version = match (&ctx.target, &ctx.parent) {
        (Some(repo), Some(p)) => {
            ostreeutil::meta_str(&ostreeutil::commit_meta(repo, p)?, "version")
        }
        _ => None,
    };
    ctx.version = user_version.or_else(|| {
        tf.doc
            .automatic_version_prefix
            .as_ref()
            .map(|pfx| next_version(&tf.substitute(pfx), parent_version.as_deref()))
    });

    for entry in tf.doc.remove_from_packages.iter().flatten() {
        let (pkg, patterns) = entry.split_first().expect("validated");
        let info = ctx.infos.iter().find(|i| &i.name == pkg).ok_or_else(|| {
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
    postprocess::remove_files(&r, tf)?;
    postprocess::add_files(&r, tf)?;
    postprocess::enable_units(&r, tf)?;
    postprocess::default_target(&r, tf)?;

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
        let protected = scripts::Protected::mount(&r, &ctx.work.join("rofiles"))?;
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
            scripts::run_in_root(protected.path(), &ctx.work.join("scratch"), &script)?;
            scripts_run += 1;
        }
    }
    postprocess::mutate_os_release(&r, tf, ctx.version.as_deref())?;
    let prev_passwd = read_parent_file(ctx, "usr/etc/passwd");
    let prev_group = read_parent_file(ctx, "usr/etc/group");
    let prev_dir = match (prev_passwd, prev_group) {
        (None, None) => None,
        (pw, gr) => {
            let d = ctx.work.join("previous/usr/etc");
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("passwd"), pw.unwrap_or_default())?;
            std::fs::write(d.join("group"), gr.unwrap_or_default())?;
            Some(ctx.work.join("previous"))
        }
    };
    postprocess::check_ids(&r, tf, prev_dir.as_deref())?;

    Ok(Flow::Continue(format!("{scripts_run} scripts")))
}

fn initramfs(ctx: &mut Ctx) -> Result<Flow> {
    if ctx.tf.container() {
        return Ok(Flow::Continue("container: no kernel handling".into()));
    }
    ctx.kver = kernel::prepare(&root(ctx), &ctx.tf, &ctx.work)?;
    let detail = match &ctx.kver {
        Some(k) if ctx.tf.doc.no_initramfs == Some(true) => format!("kernel {k}, no initramfs"),
        Some(k) => format!("kernel {k}"),
        None => "no kernel in the tree".to_string(),
    };
    Ok(Flow::Continue(detail))
}

fn layout(ctx: &mut Ctx) -> Result<Flow> {
    let r = root(ctx);
    let tf = &ctx.tf;
    // The flattened treefile travels in the commit.
    let share = r.join("usr/share/hostforge");
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("treefile.json"), tf.flattened_json() + "\n")?;

    // Files owned by non-root users get their ids from the composed passwd/group; the commit
    // filter applies them (libostree skips the devino shortcut for files a filter changed).
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap_or_default();
    let (uids, gids) = (name_ids(&passwd), name_ids(&group));
    let mut owners: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for info in &ctx.infos {
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
    ctx.owners = owners;
    if tf.container() {
        postprocess::container_layout(&r)?;
        Ok(Flow::Continue("container layout".into()))
    } else {
        postprocess::ostree_layout(&r, tf)?;
        Ok(Flow::Continue("ostree layout".into()))
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
fn commit(ctx: &mut Ctx) -> Result<Flow> {
    let built = write_build_commit(ctx)?;
    copy_into_target(ctx, &built)?;
    process::fault_point("commit");
    move_ref(ctx, &built)?;
    ctx.commit = Some(built.clone());
    clean_work_root(ctx)?;
    Ok(Flow::Continue(format!("{} => {built}", ctx.treeref)))
}

/// What the commit changes on the way in: owners from the composed passwd/group, and
/// `readonly-executables`.
fn commit_modifier(ctx: &Ctx, owners: BTreeMap<String, (u32, u32)>) -> ostree::RepoCommitModifier {
    let readonly_exec = ctx.tf.doc.readonly_executables == Some(true);
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
    let modifier = ostree::RepoCommitModifier::new(
        ostree::RepoCommitModifierFlags::NONE,
        Some(Box::new(filter)),
    );
    // Reuse checksums of files still hardlinked to the package cache.
    modifier.set_devino_cache(&ctx.devino);
    modifier
}

/// The tree as a commit in the cache repo (ref `hostforge/build/REF`), in one transaction.
fn write_build_commit(ctx: &mut Ctx) -> Result<String> {
    let cancellable = gio::Cancellable::NONE;
    let owners = std::mem::take(&mut ctx.owners);
    let modifier = commit_modifier(ctx, owners);
    let cache = &ctx.cache;
    // Aborted on drop: an error below leaves no half-open transaction in the cache.
    let tx = cache.auto_transaction(cancellable)?;
    let mtree = ostree::MutableTree::new();
    let dir = std::fs::File::open(root(ctx))?;
    use std::os::fd::AsRawFd;
    cache.write_dfd_to_mtree(dir.as_raw_fd(), ".", &mtree, Some(&modifier), cancellable)?;
    let root_file = cache.write_mtree(&mtree, cancellable)?;
    let root_file = root_file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a RepoFile"))?;
    let meta = commit_metadata(ctx)?;
    let name = ctx
        .tf
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let subject = match &ctx.version {
        Some(v) => format!("{name} {v}"),
        None => name.into_owned(),
    };
    let time = crate::ostreeutil::source_date_epoch()?;
    let c = cache.write_commit_with_time(
        ctx.parent.as_deref(),
        Some(&subject),
        None,
        Some(&meta),
        &root_file,
        time,
        cancellable,
    )?;
    cache.transaction_set_ref(None, &format!("hostforge/build/{}", ctx.treeref), Some(&c));
    let stats = tx.commit(cancellable)?;
    ctx.stats.objects_written =
        stats.get_content_objects_written() as u64 + stats.get_metadata_objects_written() as u64;
    ctx.stats.bytes_written = stats.get_content_bytes_written();
    Ok(c.to_string())
}

/// Copies the commit's objects from the cache repo into `--repo` (no ref moves yet).
fn copy_into_target(ctx: &Ctx, built: &str) -> Result<()> {
    let target = ctx.target.as_ref().expect("target repo");
    let opts = glib::VariantDict::new(None);
    opts.insert("refs", vec![built.to_string()]);
    opts.insert("depth", 0i32);
    let url = format!("file://{}", ctx.cache_path.canonicalize()?.display());
    target
        .pull_with_options(&url, &opts.end(), None, gio::Cancellable::NONE)
        .with_context(|| format!("copying commit {built} into the target repo"))?;
    Ok(())
}

/// Points the ref at the commit, and keeps a served repo's summary in step with its refs.
fn move_ref(ctx: &Ctx, built: &str) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    let target = ctx.target.as_ref().expect("target repo");
    let tx = target.auto_transaction(cancellable)?;
    target.transaction_set_ref(None, &ctx.treeref, Some(built));
    tx.commit(cancellable)?;
    if ctx
        .opts
        .repo
        .as_ref()
        .is_some_and(|r| r.join("summary").exists())
    {
        target
            .regenerate_summary(None, cancellable)
            .context("updating the repo summary")?;
    }
    Ok(())
}

fn json_to_variant(v: &serde_json::Value) -> glib::Variant {
    match v {
        serde_json::Value::Bool(b) => b.to_variant(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_variant(),
            None => n.as_f64().unwrap_or_default().to_variant(),
        },
        serde_json::Value::String(s) => s.to_variant(),
        serde_json::Value::Array(a) => {
            let strs: Vec<String> = a
                .iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            strs.to_variant()
        }
        other => other.to_string().to_variant(),
    }
}

fn commit_metadata(ctx: &Ctx) -> Result<glib::Variant> {
    let mut m = MetaBuilder::new();
    for (k, v) in ctx.tf.doc.add_commit_metadata.iter().flatten() {
        m.value(k, &json_to_variant(v));
    }
    for (k, v) in &ctx.opts.add_metadata {
        m.str(k, v);
    }
    if let Some(v) = &ctx.version {
        m.str("version", v);
    }
    if let Some(k) = &ctx.kver {
        m.value("ostree.bootable", &true.to_variant())
            .str("ostree.linux", k);
    }
    let nevras: Vec<String> = ctx.infos.iter().map(|i| i.nevra.clone()).collect();
    let repos: Vec<String> = ctx
        .repos
        .iter()
        .map(|r| format!("{} {}", r.id, r.baseurl().unwrap_or_default()))
        .collect();
    m.str("hostforge.inputhash", &ctx.inputhash)
        .str("rpmostree.inputhash", &ctx.inputhash)
        .str("hostforge.treefile", &ctx.tf.flattened_json())
        .strv("hostforge.packages", &nevras)
        .strv("hostforge.repos", &repos)
        .str("hostforge.version", HOSTFORGE_VERSION);
    Ok(m.end())
}

/// What `compose tree` did: the compose.json document (`--write-composejson-to`, `--json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    #[serde(rename = "ref")]
    pub treeref: String,
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

fn package_diff(ctx: &Ctx) -> Result<PackageDiff> {
    let now: BTreeMap<String, String> = pkgcache::nevra_index(&ctx.infos);
    let before: BTreeMap<String, String> = match (&ctx.target, &ctx.parent, ctx.changed) {
        (Some(repo), Some(p), true) => {
            let meta = ostreeutil::commit_meta(repo, p)?;
            let list: Vec<String> = meta
                .lookup_value("hostforge.packages", None)
                .and_then(|v| v.get::<Vec<String>>())
                .unwrap_or_default();
            list.into_iter()
                .map(|nevra| (name_of_nevra(&nevra).to_string(), nevra))
                .collect()
        }
        _ => {
            return Ok(PackageDiff {
                total: ctx.solved.len(),
                ..Default::default()
            })
        }
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

fn summary(ctx: &Ctx) -> Result<Summary> {
    let seconds = ctx
        .steps
        .iter()
        .map(|(k, v)| (k.clone(), json!((v * 1000.0).round() / 1000.0)))
        .collect();
    // Unchanged: the ref's commit is the parent we compared with; report its own parent.
    let parent = if ctx.changed {
        ctx.parent.clone()
    } else {
        match (&ctx.parent, &ctx.target) {
            (Some(p), Some(t)) => ostreeutil::commit_parent(t, p).ok().flatten(),
            _ => None,
        }
    };
    Ok(Summary {
        treeref: ctx.treeref.clone(),
        treefiles: ctx.tf.sources.clone(),
        commit: ctx.commit.clone(),
        parent,
        version: ctx.version.clone(),
        inputhash: ctx.inputhash.clone(),
        changed: ctx.changed,
        packages: package_diff(ctx)?,
        bytes_written: ctx.stats.bytes_written,
        objects_written: ctx.stats.objects_written,
        cache_hits: ctx.stats.cache_hits,
        downloaded: ctx.stats.downloaded,
        bytes_downloaded: ctx.stats.bytes_downloaded,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increment_like_rpm_ostree() {
        assert_eq!(next_version("30", None), "30");
        assert_eq!(next_version("30", Some("30")), "30.1");
        assert_eq!(next_version("30", Some("30.1")), "30.2");
        assert_eq!(next_version("31", Some("30.4")), "31");
    }

    #[test]
    fn nevra_name() {
        assert_eq!(name_of_nevra("foo-bar-1.0-1.x86_64"), "foo-bar");
        assert_eq!(name_of_nevra("foo-2:1.0-1.noarch"), "foo");
    }
}
