//! `cargo xtask bench compose`: hostforge against the baseline a user would script by hand
//! (`dnf --installroot ... install` + `ostree commit`) on the same repo, in the same run.
//! Figures go to docs/benchmarks.md between this benchmark's markers.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn timed(what: &str, cmd: &mut Command) -> Result<f64> {
    measure(what, cmd).map(|r| r.secs)
}

/// Like [`timed`], also returning stderr (where hostforge prints its timed steps).
fn timed_output(what: &str, cmd: &mut Command) -> Result<(f64, String)> {
    measure(what, cmd).map(|r| (r.secs, r.stderr))
}

/// What one command cost.
struct Run {
    secs: f64,
    /// User + system CPU seconds of the command and the children it waited for.
    cpu: f64,
    /// Peak resident set of the largest process among them, MiB.
    rss_mib: f64,
    stderr: String,
}

/// Runs `cmd` under GNU time, which reports the command's CPU time and the peak RSS of its
/// largest process (children included), and fails when it fails. GNU time is the measured
/// command's parent because a process forked from this one would count this one's memory:
/// Linux keeps the high-water RSS of the address space a process had before its exec.
fn measure(what: &str, cmd: &mut Command) -> Result<Run> {
    let report = tempfile_path("time")?;
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%U %S %M", "-o"])
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = timed.output().with_context(|| format!("starting {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed: {stderr}");
    }
    let figures = std::fs::read_to_string(&report)?;
    let _ = std::fs::remove_file(&report);
    // The last line: GNU time writes "Command exited ..." above it on failure only.
    let f: Vec<f64> = figures
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [user, sys, rss_kib] = f[..] else {
        bail!("{what}: GNU time said {figures:?}");
    };
    let run = Run {
        secs,
        cpu: user + sys,
        rss_mib: rss_kib / 1024.0,
        stderr,
    };
    eprintln!(
        "{what:<40} {secs:>8.2}s  cpu {:.1}s  peak RSS {:.0} MiB",
        run.cpu, run.rss_mib
    );
    Ok(run)
}

/// A fresh path under target/ for a scratch file.
fn tempfile_path(name: &str) -> Result<std::path::PathBuf> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-scratch");
    std::fs::create_dir_all(&dir)?;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!("{name}-{}-{n}", std::process::id())))
}

/// `name  1.23s  detail` step lines as "name 1.23 s, ...".
fn step_split(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let secs = w.next()?.strip_suffix('s')?.parse::<f64>().ok()?;
            Some(format!("{name} {secs:.2} s"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A step's seconds in a compose.json document.
fn step_secs(doc: &str, step: &str) -> f64 {
    let seconds = doc.split("\"seconds\"").nth(1).unwrap_or_default();
    seconds
        .split(&format!("\"{step}\": "))
        .nth(1)
        .and_then(|r| r.split([',', '\n', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// `hostforge compose tree -q` of `treefile` into `repo` with `cache`.
/// `hostforge compose tree`, `-q` when `quiet` (without it, each step says what it did).
fn compose_cmd(bin: &Path, repo: &Path, cache: &Path, treefile: &Path, quiet: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["compose", "tree"]);
    if quiet {
        cmd.arg("-q");
    }
    cmd.arg("--repo")
        .arg(repo)
        .arg("--cachedir")
        .arg(cache)
        .arg(treefile);
    cmd
}

/// `ostree init --mode=archive` for `repo`.
pub fn ostree_init(repo: &Path) -> Command {
    let mut cmd = Command::new("ostree");
    cmd.arg(format!("--repo={}", repo.display()))
        .args(["init", "--mode=archive"]);
    cmd
}

/// The commit `r` names in `repo`.
pub fn rev_parse(repo: &Path, r: &str) -> Result<String> {
    Ok(crate::distro::run_out(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["rev-parse", r]),
    )?
    .trim()
    .to_string())
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
pub fn write_section(top: &Path, name: &str, body: &str) -> Result<()> {
    let path = top.join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench ...`; each section compares against a \
         baseline measured in the same run on the same machine.\n"
            .to_string()
    });
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let section = format!("{open}\n{body}{close}");
    let new = match (old.find(&open), old.find(&close)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &old[..a], &old[b + close.len()..]),
        // The headline goes above every other section.
        _ if name == "headline" => match old.find("<!-- bench:") {
            Some(a) => format!("{}{section}\n{}", &old[..a], &old[a..]),
            None => format!("{}\n{section}\n", old.trim_end()),
        },
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

/// One headline figure of a benchmark run.
struct Headline {
    metric: &'static str,
    /// As shown, with its unit: "0.53×", "2.2 s", "412 MiB".
    value: String,
    /// The target, as shown ("≤ 0.6× baseline"); empty when the figure is only recorded.
    target: &'static str,
    holds: bool,
}

impl Headline {
    fn new(metric: &'static str, value: String, target: &'static str, holds: bool) -> Headline {
        Headline {
            metric,
            value,
            target,
            holds,
        }
    }
}

/// Today's date (UTC), from `date` (what the machine says).
fn today() -> Result<String> {
    Ok(
        crate::distro::run_out(Command::new("date").args(["-u", "+%Y-%m-%d"]))?
            .trim()
            .to_string(),
    )
}

/// Records `figures` in docs/bench-history.tsv (date, metric, value, target, holds; a rerun on
/// the same date replaces that date's figures) and rewrites the headline section of
/// docs/benchmarks.md from it: the latest figure of each metric, and each metric by date.
fn record(top: &Path, figures: &[Headline]) -> Result<()> {
    let path = top.join("docs/bench-history.tsv");
    let date = today()?;
    let mut rows: Vec<Vec<String>> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
        .filter(|r| r.len() == 5)
        .filter(|r| !(r[0] == date && figures.iter().any(|f| f.metric == r[1])))
        .collect();
    for f in figures {
        rows.push(vec![
            date.clone(),
            f.metric.to_string(),
            f.value.clone(),
            f.target.to_string(),
            match (f.target.is_empty(), f.holds) {
                (true, _) => "",
                (false, true) => "yes",
                (false, false) => "no",
            }
            .to_string(),
        ]);
    }
    rows.sort_by(|a, b| (&a[0], &a[1]).cmp(&(&b[0], &b[1])));
    let mut tsv = String::from("date\tmetric\tvalue\ttarget\tholds\n");
    for r in &rows {
        tsv.push_str(&r.join("\t"));
        tsv.push('\n');
    }
    std::fs::write(&path, tsv)?;

    // The metrics in the order the benches report them, the latest figure of each.
    let mut metrics: Vec<&str> = Vec::new();
    for r in rows.iter().rev() {
        if !metrics.contains(&r[1].as_str()) {
            metrics.push(&r[1]);
        }
    }
    metrics.sort();
    let mut dates: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    dates.dedup();
    let shown: Vec<&str> = dates.iter().rev().take(6).rev().copied().collect();
    let mut latest =
        String::from("| metric | latest | target | holds | measured |\n|---|---:|---|---|---|\n");
    let mut history = format!(
        "| metric | {} |\n|---|{}\n",
        shown.join(" | "),
        "---:|".repeat(shown.len())
    );
    for m in &metrics {
        let of_m: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == *m).collect();
        let last = of_m.last().unwrap();
        latest.push_str(&format!(
            "| {m} | {} | {} | {} | {} |\n",
            last[2], last[3], last[4], last[0]
        ));
        let cells: Vec<String> = shown
            .iter()
            .map(|d| {
                of_m.iter()
                    .find(|r| r[0] == *d)
                    .map_or("".to_string(), |r| r[2].clone())
            })
            .collect();
        history.push_str(&format!("| {m} | {} |\n", cells.join(" | ")));
    }
    let body = format!(
        "## headline\n\n\
         The figures each benchmark checks against its target (latest run of each), then the \
         same figures by date (the last {} dates of docs/bench-history.tsv).\n\n\
         {latest}\n{history}",
        shown.len()
    );
    write_section(top, "headline", &body)?;
    println!("{body}");
    Ok(())
}

pub fn compose(top: &Path, bin: &Path) -> Result<()> {
    let (repo_a_dir, repo_b, names) = fixtures::bench_repos(top)?;
    let work = top.join("target/bench-compose");
    let _ = std::fs::remove_dir_all(&work);
    Command::new("sync").status()?;
    let tf_dir = work.join("tf");
    std::fs::create_dir_all(&tf_dir)?;
    let repo_file = |dir: &Path| {
        format!(
            "[bench]\nname=bench\nbaseurl=file://{}\ngpgcheck=0\n",
            dir.display()
        )
    };
    std::fs::write(tf_dir.join("bench.repo"), repo_file(&repo_a_dir))?;
    let treefile = tf_dir.join("bench.yaml");
    std::fs::write(
        &treefile,
        format!(
            "ref: bench/node\nrepos: [bench]\nselinux: false\npackages:\n{}",
            names
                .iter()
                .map(|n| format!("  - {n}\n"))
                .collect::<String>()
        ),
    )?;
    let size: u64 = std::fs::read_dir(repo_a_dir.join("Packages"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    // Each figure is the median of ROUNDS runs, each after `sync` and each in directories of
    // its own: this machine's disk is mounted with `discard`, and a run right after a large
    // removal measured up to twice as slow (single cold composes varied from 5.7 s to 11.6 s).
    const ROUNDS: usize = 3;
    let sync = || Command::new("sync").status();
    let mut dnf_runs = Vec::new();
    let mut commit_runs = Vec::new();
    for round in 1..=ROUNDS {
        // Baseline: dnf into an installroot, then ostree commit into an archive repo.
        let dir = work.join(format!("baseline-{round}"));
        let root = dir.join("dnf-root");
        sync()?;
        dnf_runs.push(timed(
            &format!("baseline: dnf --installroot install, round {round}"),
            Command::new("dnf")
                .arg(format!("--installroot={}", root.display()))
                .args([
                    "--releasever=0",
                    "-y",
                    "-q",
                    "--nogpgcheck",
                    "--disableplugin=*",
                ])
                .arg(format!("--setopt=reposdir={}", tf_dir.display()))
                .arg(format!(
                    "--setopt=cachedir={}",
                    dir.join("dnf-cache").display()
                ))
                .args(["--setopt=install_weak_deps=False", "install"])
                .args(&names),
        )?);
        let base_repo = dir.join("repo");
        std::fs::create_dir_all(&dir)?;
        timed("baseline: ostree init", &mut ostree_init(&base_repo))?;
        sync()?;
        commit_runs.push(timed(
            &format!("baseline: ostree commit, round {round}"),
            Command::new("ostree")
                .arg(format!("--repo={}", base_repo.display()))
                .args(["commit", "--branch=bench/baseline"])
                .arg(format!("--tree=dir={}", root.display())),
        )?);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let baseline_runs: Vec<f64> = dnf_runs
        .iter()
        .zip(&commit_runs)
        .map(|(a, b)| a + b)
        .collect();
    let (dnf, commit, baseline) = (
        median(&dnf_runs),
        median(&commit_runs),
        median(&baseline_runs),
    );

    let hf = |label: &str, dir: &Path| -> Result<f64> {
        sync()?;
        timed(
            label,
            &mut compose_cmd(bin, &dir.join("repo"), &dir.join("cache"), &treefile, true),
        )
    };
    let mut cold_runs = Vec::new();
    for round in 1..=ROUNDS {
        let dir = work.join(format!("cold-{round}"));
        std::fs::create_dir_all(&dir)?;
        timed("ostree init", &mut ostree_init(&dir.join("repo")))?;
        cold_runs.push(hf(
            &format!("hostforge: cold compose, round {round}"),
            &dir,
        )?);
    }
    let cold_dir = work.join("cold-1");
    let mut nochange_runs = Vec::new();
    for round in 1..=ROUNDS {
        nochange_runs.push(hf(
            &format!("hostforge: no change, round {round}"),
            &cold_dir,
        )?);
    }
    // Each round of "one package changed" starts from a copy of the repo and cache a cold
    // compose left.
    std::fs::write(tf_dir.join("bench.repo"), repo_file(&repo_b))?;
    let mut changed_runs = Vec::new();
    for round in 1..=ROUNDS {
        let dir = work.join(format!("changed-{round}"));
        let st = Command::new("cp")
            .arg("-a")
            .arg(&cold_dir)
            .arg(&dir)
            .status()?;
        if !st.success() {
            bail!("cp -a {} {} failed", cold_dir.display(), dir.display());
        }
        changed_runs.push(hf(
            &format!("hostforge: one package changed, round {round}"),
            &dir,
        )?);
    }
    let (cold, nochange, changed) = (
        median(&cold_runs),
        median(&nochange_runs),
        median(&changed_runs),
    );
    // What is left for a look afterwards: the first cold compose's repo and cache.
    for round in 1..=ROUNDS {
        for name in ["baseline", "changed", "cold"] {
            if (name, round) != ("cold", 1) {
                let _ = std::fs::remove_dir_all(work.join(format!("{name}-{round}")));
            }
        }
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let body = format!(
        "## compose\n\n\
         {n} packages, {mb:.0} MB of RPMs ({files} files), archive target repo, `nproc` = {cpus}.\n\n\
         | run | seconds | ratio | target |\n|---|---:|---:|---|\n\
         | baseline: `dnf --installroot install` + `ostree commit` | {baseline:.2} | 1.00 | |\n\
         | hostforge cold (empty cache, empty repo) | {cold:.2} | {r1:.2}× baseline | ≤ 0.5× |\n\
         | hostforge, one package changed | {changed:.2} | {r2:.3}× cold | ≤ 0.05× |\n\
         | hostforge, nothing changed | {nochange:.2} | | ≤ 0.1 s |\n\n\
         Medians of {ROUNDS} runs, each after `sync`: baseline {bl}; cold {cl}; one package \
         changed {ch} (each from a copy of the repo and cache the cold compose left); nothing \
         changed {nc}. Baseline split: dnf {dnf:.2} s, ostree commit {commit:.2} s.\n",
        bl = list(&baseline_runs),
        cl = list(&cold_runs),
        ch = list(&changed_runs),
        nc = list(&nochange_runs),
        n = names.len(),
        mb = size as f64 / 1e6,
        files = (names.len() - 1) * 40,
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
        r1 = cold / baseline,
        r2 = changed / cold,
    );
    write_section(top, "compose", &body)?;
    println!("{body}");
    let (r1, r2) = (cold / baseline, changed / cold);
    record(
        top,
        &[
            Headline::new(
                "compose: cold ÷ dnf + ostree commit",
                format!("{r1:.2}×"),
                "≤ 0.5×",
                r1 <= 0.5,
            ),
            Headline::new(
                "compose: one package changed ÷ cold",
                format!("{r2:.3}×"),
                "≤ 0.05×",
                r2 <= 0.05,
            ),
            Headline::new(
                "compose: nothing changed",
                format!("{nochange:.2} s"),
                "≤ 0.1 s",
                nochange <= 0.1,
            ),
        ],
    )
}

/// `cargo xtask bench node`: what the bootable-node pipeline costs on this machine: repacking
/// the fixture distro, and a cold compose of treefiles/node.yaml with its initramfs.
pub fn node(top: &Path, bin: &Path) -> Result<()> {
    let t = Instant::now();
    let distro = crate::distro::build_with(top, true)?;
    let repack = t.elapsed().as_secs_f64();
    let work = top.join("target/bench-node");
    let _ = std::fs::remove_dir_all(&work);
    let treefile = crate::distro::node_treefile(top, &distro, &work.join("tf"))?;
    let repo = work.join("repo");
    timed("ostree init", &mut ostree_init(&repo))?;
    // The baseline, in this run: the same cold compose with dracut compressing its image
    // (`--compress=gzip` is its default), as hostforge did before it compressed on every core.
    let old_tf = treefile.with_file_name("node-dracut-gzip.yaml");
    std::fs::write(
        &old_tf,
        std::fs::read_to_string(&treefile)?.replace(
            "packages:\n",
            "initramfs-args: [--compress=gzip]\npackages:\n",
        ),
    )?;
    let old_repo = work.join("repo-dracut-gzip");
    timed("ostree init", &mut ostree_init(&old_repo))?;
    let old = measure(
        "hostforge: cold compose, dracut gzips",
        &mut compose_cmd(
            bin,
            &old_repo,
            &work.join("cache-dracut-gzip"),
            &old_tf,
            false,
        ),
    )?;
    if !old.stderr.contains("compressed by dracut") {
        bail!(
            "the baseline compose did not leave compression to dracut:\n{}",
            old.stderr
        );
    }
    let json = work.join("compose.json");
    let cold = measure(
        "hostforge: cold compose of node.yaml",
        compose_cmd(bin, &repo, &work.join("cache"), &treefile, true)
            .arg("--write-composejson-to")
            .arg(&json),
    )?;
    let compose = cold.secs;
    // How many cores libostree's copy of the commit into the archive repo keeps busy.
    let copy_repo = work.join("repo-copy");
    timed("ostree init", &mut ostree_init(&copy_repo))?;
    let copy = measure(
        "ostree pull-local of the build commit",
        Command::new("ostree")
            .arg(format!("--repo={}", copy_repo.display()))
            .arg("pull-local")
            .arg(work.join("cache/repo"))
            .arg("hostforge/build/hostforge/x86_64/node"),
    )?;
    let doc = std::fs::read_to_string(&json)?;
    let secs = |step: &str| step_secs(&doc, step);
    // Recomposes: nothing changed; one non-kernel package updated (the agent, rebuilt with a
    // changed file), with the kept initramfs and, as the baseline, with dracut run anyway.
    let unchanged = timed(
        "hostforge: recompose, nothing changed",
        &mut compose_cmd(bin, &repo, &work.join("cache"), &treefile, true),
    )?;
    let tf_dir = treefile.parent().unwrap();
    let update = |n: u32| -> Result<()> {
        let agent = crate::agent::build_variant(
            top,
            true,
            Some(&format!("# bench: update {n} of this package\n")),
        )?;
        std::fs::write(
            tf_dir.join("hostforge-agent.repo"),
            crate::agent::repo_section(&agent),
        )?;
        Ok(())
    };
    let recompose = |label: &str, extra: &[&str]| -> Result<(f64, String)> {
        // Not quiet: the initramfs step's line says whether it was reused.
        let (secs, out) = timed_output(
            label,
            compose_cmd(bin, &repo, &work.join("cache"), &treefile, false)
                .args(extra)
                .arg("--write-composejson-to")
                .arg(&json),
        )?;
        if extra.is_empty() && !out.contains("initramfs reused") {
            bail!("{label}: the initramfs was not reused:\n{out}");
        }
        let initramfs = step_secs(&std::fs::read_to_string(&json)?, "initramfs");
        Ok((secs, format!("{initramfs:.1}")))
    };
    update(1)?;
    let (reused, reused_step) = recompose("hostforge: one package changed", &[])?;
    update(2)?;
    let (rebuilt, rebuilt_step) = recompose(
        "hostforge: one package changed, --rebuild-initramfs",
        &["--rebuild-initramfs"],
    )?;
    let pkgs = std::fs::read_dir(distro.join("Packages"))?.count();
    let cold_table = format!(
        "| cold compose | seconds | ratio | peak RSS | target |\n|---|---:|---:|---:|---|\n\
         | dracut compresses its image (`initramfs-args: [--compress=gzip]`, the baseline) | \
         {:.1} | 1.00 | {:.0} MiB | |\n\
         | hostforge compresses it on every core (the default) | {compose:.1} | {:.2}× | \
         {:.0} MiB | ≤ 0.6× |\n",
        old.secs,
        old.rss_mib,
        compose / old.secs,
        cold.rss_mib,
    );
    let recompose_table = format!(
        "| recompose | seconds | ratio | target |\n|---|---:|---:|---|\n\
         | nothing changed | {unchanged:.2} | {:.3}× cold | |\n\
         | one package changed (hostforge-update rebuilt), initramfs reused | {reused:.1} | \
         {:.2}× cold | ≤ 0.15× |\n\
         | the same with `--rebuild-initramfs` (dracut runs: the baseline) | {rebuilt:.1} | \
         {:.2}× cold | |\n\n\
         The initramfs step took {reused_step} s reused and {rebuilt_step} s with dracut.\n",
        unchanged / compose,
        reused / compose,
        rebuilt / compose,
    );
    let body = format!(
        "## node (fixture distro, bootable commit)\n\n\
         {pkgs} RPMs repacked from Debian 12; `nproc` = {cpus}. Debian package download by apt is \
         not included (it is cached after the first run).\n\n\
         | step | seconds |\n|---|---:|\n\
         | repack Debian packages into RPMs + createrepo_c | {repack:.1} |\n\
         | cold compose of `treefiles/node.yaml` (all steps) | {compose:.1} |\n\
         | of which: fetch + import | {fetch:.1} |\n\
         | of which: initramfs (depmod + dracut in bubblewrap) | {initramfs:.1} |\n\
         | of which: commit (into the cache, copy into the archive repo) | {commit:.1} |\n\n\
         {cold_table}\n\
         Peak RSS is GNU time's: the largest of hostforge and the children it waited for; \
         what runs inside bubblewrap (dracut, scriptlets) is reaped by the sandbox's own init \
         and is not counted. The commit writes the files into the archive repo with libdeflate \
         on every core; libostree's local pull alone (zlib, its own threads) copies the same \
         commit in {copy_secs:.1} s with {copy_cpu:.1} s of CPU ({copy_cores:.1} cores busy).\n\n\
         {recompose_table}\n\
         The QEMU boot to `hostforge-booted:` (TCG) takes about 40 s more in `tests/boot.rs`.\n",
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
        fetch = secs("fetch"),
        initramfs = secs("initramfs"),
        commit = secs("commit"),
        copy_secs = copy.secs,
        copy_cpu = copy.cpu,
        copy_cores = copy.cpu / copy.secs,
    );
    write_section(top, "node", &body)?;
    println!("{body}");
    let (cold_ratio, recompose_ratio) = (compose / old.secs, reused / compose);
    record(
        top,
        &[
            Headline::new("node: cold compose", format!("{compose:.1} s"), "", true),
            Headline::new(
                "node: cold compose ÷ dracut compressing",
                format!("{cold_ratio:.2}×"),
                "≤ 0.6×",
                cold_ratio <= 0.6,
            ),
            Headline::new(
                "node: one package changed ÷ cold",
                format!("{recompose_ratio:.2}×"),
                "≤ 0.15×",
                recompose_ratio <= 0.15,
            ),
            Headline::new(
                "node: compose peak RSS",
                format!("{:.0} MiB", cold.rss_mib),
                "",
                true,
            ),
        ],
    )
}

/// `cargo xtask bench image`: `hostforge image build` of the node against the floor of the
/// same work done by plain tools (mkfs.ext4 -d of the deployed tree + qemu-img convert).
/// Each side runs three times, alternating, after a `sync` (so no run pays for the
/// write-back of the one before); the medians are compared.
pub fn image(top: &Path, bin: &Path) -> Result<()> {
    const ROUNDS: usize = 5;
    let distro = crate::distro::build(top)?;
    let work = top.join("target/bench-image");
    let _ = Command::new("chattr")
        .args(["-R", "-i"])
        .arg(&work)
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let treefile = crate::distro::node_treefile(top, &distro, &work.join("tf"))?;
    let repo = work.join("repo");
    timed("ostree init", &mut ostree_init(&repo))?;
    timed(
        "hostforge: compose node.yaml (not compared)",
        &mut compose_cmd(bin, &repo, &work.join("cache"), &treefile, true),
    )?;
    let r = "hostforge/x86_64/node";

    // The floor's deployed tree, made with ostree's CLI (timed, but not part of the floor).
    let sysroot = work.join("sysroot");
    std::fs::create_dir_all(&sysroot)?;
    let sr = format!("--sysroot={}", sysroot.display());
    timed(
        "floor setup: ostree admin init-fs",
        Command::new("ostree")
            .args(["admin", "init-fs"])
            .arg(&sysroot),
    )?;
    timed(
        "floor setup: ostree admin os-init",
        Command::new("ostree").args(["admin", "os-init", "node", &sr]),
    )?;
    let setup_pull = timed(
        "floor setup: ostree pull-local",
        Command::new("ostree")
            .arg(format!("--repo={}", sysroot.join("ostree/repo").display()))
            .arg("pull-local")
            .arg(&repo)
            .arg(r),
    )?;
    let setup_deploy = timed(
        "floor setup: ostree admin deploy",
        Command::new("ostree").args(["admin", "deploy", &sr, "--os=node", r]),
    )?;

    let sync = || Command::new("sync").status();
    let (mut ours_runs, mut mkfs_runs, mut convert_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut replace_runs = Vec::new();
    let mut steps = String::new();
    let mut build_rss: f64 = 0.0;
    for round in 1..=ROUNDS {
        sync()?;
        let Run {
            secs,
            stderr: out,
            rss_mib,
            ..
        } = measure(
            &format!("hostforge: image build (qcow2), round {round}"),
            Command::new(bin)
                .args(["image", "build", "--repo"])
                .arg(&repo)
                .args(["--ref", r, "--layout"])
                .arg(top.join("images/qemu.yaml"))
                .arg("-o")
                .arg(work.join("node.qcow2")),
        )?;
        ours_runs.push(secs);
        build_rss = build_rss.max(rss_mib);
        if round == ROUNDS.div_ceil(2) {
            steps = out;
        }
        // The floor: only the two steps no image builder can skip.
        let raw = work.join("floor.raw");
        let _ = std::fs::remove_file(&raw);
        sync()?;
        mkfs_runs.push(timed(
            &format!("floor: mkfs.ext4 -d, round {round}"),
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&sysroot)
                .arg(&raw)
                .arg("3G"),
        )?);
        convert_runs.push(timed(
            &format!("floor: qemu-img convert, round {round}"),
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(work.join("floor.qcow2")),
        )?);
        // What hostforge does with its output, by hand: convert beside the previous image,
        // then rename over it (ext4 writes the new file out at such a rename, auto_da_alloc).
        sync()?;
        replace_runs.push(timed(
            &format!("floor, replacing by rename: qemu-img convert + mv, round {round}"),
            Command::new("sh").arg("-ec").arg(format!(
                "qemu-img convert -f raw -O qcow2 {raw} {tmp}; mv {tmp} {out}",
                raw = raw.display(),
                tmp = work.join("floor-replace.qcow2.tmp").display(),
                out = work.join("floor-replace.qcow2").display(),
            )),
        )?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let floor_runs: Vec<f64> = mkfs_runs
        .iter()
        .zip(&convert_runs)
        .map(|(a, b)| a + b)
        .collect();
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A/B: B (one file changed) deployed beside A in the built image, against `ostree admin
    // deploy` of B in the floor's sysroot (both with B's objects to copy in).
    let text = std::fs::read_to_string(&treefile)?;
    std::fs::write(
        &treefile,
        format!("{text}  - echo B > /usr/share/hostforge-variant\n"),
    )?;
    timed(
        "hostforge: compose B (not compared)",
        &mut compose_cmd(bin, &repo, &work.join("cache"), &treefile, true),
    )?;
    let deploy = measure(
        "hostforge: image deploy of B",
        Command::new(bin)
            .args(["image", "deploy", "--repo"])
            .arg(&repo)
            .args(["--ref", r])
            .arg(work.join("node.qcow2")),
    )?;
    let floor_deploy = timed(
        "floor: ostree pull-local B + admin deploy",
        Command::new("sh").arg("-ec").arg(format!(
            "ostree --repo={sysroot}/ostree/repo pull-local {repo} {r}; \
             ostree admin deploy --sysroot={sysroot} --os=node {r}",
            sysroot = sysroot.display(),
            repo = repo.display()
        )),
    )?;
    let (ours_list, floor_list) = (list(&ours_runs), list(&floor_runs));
    let ours = median(&mut ours_runs);
    let floor = median(&mut floor_runs.clone());
    let mkfs = median(&mut mkfs_runs);
    let convert = median(&mut convert_runs);
    let replace = median(&mut replace_runs);
    let body = format!(
        "## image\n\n\
         `hostforge image build` of the fixture node (qcow2, `images/qemu.yaml`) against the floor \
         of the same work by plain tools, in one run; `nproc` = {cpus}. Medians of {ROUNDS} \
         alternating rounds, each after `sync` (hostforge: {ours_list} s; floor: {floor_list} s).\n\n\
         | run | seconds | ratio | target |\n|---|---:|---:|---|\n\
         | floor: `mkfs.ext4 -d` of the deployed tree + `qemu-img convert` | {floor:.2} | 1.00 | |\n\
         | hostforge image build (deploy, GRUB, two filesystems, GPT, qcow2) | {ours:.2} | {ratio:.2}× | ≤ 1.1× |\n\n\
         | A/B deploy of B (one file changed) | seconds | peak RSS |\n|---|---:|---:|\n\
         | floor: `ostree pull-local` + `ostree admin deploy` in a plain sysroot directory | \
         {floor_deploy:.2} | |\n\
         | `hostforge image deploy` into the qcow2 image (opens it, deploys, writes it back) | \
         {deploy_secs:.2} | {deploy_rss:.0} MiB |\n\n\
         Peak RSS of `hostforge image build`: {build_rss:.0} MiB (largest of the rounds).\n\n\
         Floor split (medians): mkfs {mkfs:.2} s, convert {convert:.2} s. The floor's convert \
         overwrites its previous image in place; converting beside it and renaming over it, as \
         hostforge replaces its output (never a half-written image at the path), takes \
         {replace:.2} s (floor so: {floor_replace:.2} s, hostforge {ratio_replace:.2}× of it); \
         hostforge writes its qcow2 itself while it builds (O_DIRECT, synced before the \
         rename: durable, where the floor's image is still in the page cache), so its rename \
         has nothing left to flush. Its setup, not counted, which \
         hostforge does inside its run: `ostree pull-local` {setup_pull:.2} s, `ostree admin deploy` \
         {setup_deploy:.2} s (floor + setup = {with_setup:.2} s, {ratio_setup:.2}×).\n\n\
         hostforge's steps in round {mid}: {split}.\n",
        mid = ROUNDS.div_ceil(2),
        floor_replace = mkfs + replace,
        ratio_replace = ours / (mkfs + replace),
        with_setup = floor + setup_pull + setup_deploy,
        ratio_setup = ours / (floor + setup_pull + setup_deploy),
        split = step_split(&steps),
        cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
        ratio = ours / floor,
        deploy_secs = deploy.secs,
        deploy_rss = deploy.rss_mib,
    );
    write_section(top, "image", &body)?;
    println!("{body}");
    record(
        top,
        &[
            Headline::new(
                "image: build ÷ floor",
                format!("{:.2}×", ours / floor),
                "≤ 1.1×",
                ours / floor <= 1.1,
            ),
            Headline::new(
                "image: build peak RSS",
                format!("{build_rss:.0} MiB"),
                "",
                true,
            ),
            Headline::new(
                "image: deploy peak RSS",
                format!("{:.0} MiB", deploy.rss_mib),
                "",
                true,
            ),
        ],
    )?;
    let _ = Command::new("chattr")
        .args(["-R", "-i"])
        .arg(&work)
        .stderr(std::process::Stdio::null())
        .status();
    Ok(())
}

/// `ostree --repo=REPO ARGS`'s output; its stderr in the error.
fn ostree_in(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("ostree {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes a `REMOTE: N KiB transferred` line of `ostree pull` reports.
fn pulled_bytes(out: &str) -> Result<f64> {
    let line = out
        .lines()
        .find(|l| l.contains("transferred"))
        .with_context(|| format!("no transfer figure in {out:?}"))?;
    let before = line.split(" transferred").next().unwrap_or_default();
    let mut w = before.rsplit(' ');
    let unit = w.next().unwrap_or_default();
    let n: f64 = w.next().unwrap_or_default().parse()?;
    let scale = match unit {
        "bytes" => 1.0,
        "kB" | "KiB" => 1024.0,
        "MB" | "MiB" => 1024.0 * 1024.0,
        "GB" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("unknown unit {u:?} in {line:?}"),
    };
    Ok(n * scale)
}

/// `cargo xtask bench delta`: what a node on commit A downloads to reach B, with the static
/// delta `compose tree --static-delta` publishes against fetching the changed objects one by
/// one (`--disable-static-deltas`), both over HTTP on loopback into a bare repo as a node's.
/// B is A with one more package (strace) and a changed file.
pub fn delta(top: &Path, bin: &Path) -> Result<()> {
    let distro = crate::distro::build(top)?;
    let work = top.join("target/bench-delta");
    let _ = std::fs::remove_dir_all(&work);
    let treefile = crate::distro::node_treefile(top, &distro, &work.join("tf"))?;
    let repo = work.join("repo");
    let cache = work.join("cache");
    timed("ostree init", &mut ostree_init(&repo))?;
    timed(
        "hostforge: compose A",
        &mut compose_cmd(bin, &repo, &cache, &treefile, true),
    )?;
    let r = "hostforge/x86_64/node";
    let a = rev_parse(&repo, r)?;
    let text = std::fs::read_to_string(&treefile)?
        .replace("  - strace\n", "")
        .replace("packages:\n", "packages:\n  - strace\n");
    std::fs::write(
        &treefile,
        format!("{text}  - echo B > /usr/share/hostforge-variant\n"),
    )?;
    let generate = timed(
        "hostforge: compose B --static-delta",
        compose_cmd(bin, &repo, &cache, &treefile, true).arg("--static-delta"),
    )?;
    let b = rev_parse(&repo, r)?;
    if a == b {
        bail!("B did not change the commit");
    }

    let server = crate::follow::Server::start(&repo)?;
    let port = server.1;
    let pull = |name: &str, extra: &[&str]| -> Result<(f64, f64)> {
        let client = work.join(name);
        let ostree = |args: &[&str]| ostree_in(&client, args);
        ostree(&["init", "--mode=bare"])?;
        let url = format!("http://127.0.0.1:{port}");
        ostree(&["remote", "add", "--no-gpg-verify", "origin", &url])?;
        ostree(&["pull", "origin", &format!("{r}@{a}")])?;
        let t = Instant::now();
        let mut args = vec!["pull"];
        args.extend(extra);
        args.extend(["origin", r]);
        let out = ostree(&args)?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("{name:<40} {secs:>8.2}s  {}", out.trim());
        Ok((pulled_bytes(&out)?, secs))
    };
    let with = pull("node-with-delta", &[]);
    let without = pull("node-without-delta", &["--disable-static-deltas"]);
    // What a node without A would fetch: all of B, into an empty repo.
    let full = (|| -> Result<f64> {
        let client = work.join("node-from-nothing");
        ostree_in(&client, &["init", "--mode=bare"])?;
        let url = format!("http://127.0.0.1:{port}");
        ostree_in(
            &client,
            &["remote", "add", "--no-gpg-verify", "origin", &url],
        )?;
        let out = ostree_in(&client, &["pull", "origin", r])?;
        pulled_bytes(&out)
    })();
    drop(server);
    let ((delta_bytes, delta_secs), (object_bytes, object_secs)) = (with?, without?);
    let full_bytes = full?;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let body = format!(
        "## delta (a node on A updates to B over HTTP)\n\n\
         A is `treefiles/node.yaml`; B adds one package (strace) and one file. Both pulls go \
         into a bare repo on commit A over HTTP on loopback; `compose tree --static-delta` \
         made the delta in {generate:.1} s (whole compose of B included).\n\n\
         | update A -> B | MiB transferred | seconds |\n|---|---:|---:|\n\
         | static delta (hostforge `--static-delta`) | {:.2} | {delta_secs:.2} |\n\
         | objects one by one (`--disable-static-deltas`, the baseline) | {:.2} | \
         {object_secs:.2} |\n\n\
         The delta moves {:.0}% of the baseline's bytes in {:.0}% of its time. A full pull \
         of B into an empty repo fetches {:.1} MiB: the update by delta is {:.1}% of it \
         (target ≤ 5%), by objects {:.1}%.\n",
        mib(delta_bytes),
        mib(object_bytes),
        100.0 * delta_bytes / object_bytes,
        100.0 * delta_secs / object_secs,
        mib(full_bytes),
        100.0 * delta_bytes / full_bytes,
        100.0 * object_bytes / full_bytes,
    );
    write_section(top, "delta", &body)?;
    println!("{body}");
    let share = 100.0 * delta_bytes / full_bytes;
    record(
        top,
        &[Headline::new(
            "delta: update ÷ full pull of B",
            format!("{share:.1}%"),
            "≤ 5%",
            share <= 5.0,
        )],
    )
}

/// `cargo xtask bench install`: `hostforge install` of the signed node from its repo served
/// over HTTP on loopback onto a blank raw disk (images/metal.yaml), against the baseline of
/// the same pull alone (`ostree pull` of the ref into an empty bare repo, signatures checked
/// the same way): what partitioning, deploying, the filesystems and the boot loader add.
pub fn install(top: &Path, bin: &Path) -> Result<()> {
    let distro = crate::distro::build(top)?;
    let work = top.join("target/bench-install");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let treefile = crate::distro::node_treefile(top, &distro, &work.join("tf"))?;
    let (gnupg, key, public) = crate::follow::throwaway_key(&work)?;
    let repo = work.join("repo");
    timed("ostree init", &mut ostree_init(&repo))?;
    timed(
        "hostforge: compose the signed node",
        compose_cmd(bin, &repo, &work.join("cache"), &treefile, true)
            .args(["--gpg-sign", &key, "--gpg-homedir"])
            .arg(&gnupg),
    )?;
    let r = "hostforge/x86_64/node";
    let server = crate::follow::Server::start(&repo)?;
    let url = format!("http://127.0.0.1:{}", server.1);

    let client = work.join("pulled");
    let ostree = |args: &[&str]| ostree_in(&client, args);
    ostree(&["init", "--mode=bare"])?;
    ostree(&[
        "remote",
        "add",
        "--set=gpg-verify-summary=true",
        "origin",
        &url,
    ])?;
    ostree(&[
        "remote",
        "gpg-import",
        "origin",
        "-k",
        public.to_str().context("key path")?,
    ])?;
    let t = Instant::now();
    let out = ostree(&["pull", "origin", r])?;
    let pull_secs = t.elapsed().as_secs_f64();
    let pull_bytes = pulled_bytes(&out)?;
    eprintln!("{:<40} {pull_secs:>8.2}s  {}", "ostree pull", out.trim());

    let disk = work.join("disk.raw");
    std::fs::File::create(&disk)?.set_len(8 << 30)?;
    let (install_secs, err) = timed_output(
        "hostforge install",
        Command::new(bin)
            .args(["install", "--device"])
            .arg(&disk)
            .arg("--layout")
            .arg(top.join("images/metal.yaml"))
            .args(["--url", &url, "--ref", r, "--gpg-key"])
            .arg(&public),
    )?;
    let (tcg_secs, tcg_install, tcg_fetched) = live_install(bin, &work, &repo, &public, server.1)?;
    drop(server);
    let fetched = err
        .lines()
        .find(|l| l.starts_with("pull ") && l.contains("MiB fetched"))
        .and_then(|l| l.split(", ").last())
        .and_then(|f| f.strip_suffix(" MiB fetched"))
        .and_then(|f| f.parse::<f64>().ok())
        .with_context(|| format!("no fetched figure in {err:?}"))?;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let body = format!(
        "## install (a blank disk from a signed remote over HTTP)\n\n\
         `hostforge install --url` of the signed `treefiles/node.yaml` commit onto a blank 8 GiB \
         raw disk with `images/metal.yaml` (GPT, BIOS and UEFI GRUB, ext4 /boot and /), the \
         repo served over HTTP on loopback; the baseline is the same pull alone into an empty \
         bare repo, signatures checked alike.\n\n\
         | | MiB fetched | seconds |\n|---|---:|---:|\n\
         | `hostforge install` (pull, deploy, filesystems, boot loader) | {fetched:.1} | \
         {install_secs:.2} |\n\
         | `ostree pull` alone (the baseline) | {:.1} | {pull_secs:.2} |\n\
         | the live installer in QEMU (TCG, one vCPU), `hostforge install` alone | \
         {tcg_fetched:.1} | {tcg_install:.2} |\n\
         | the same, from power-on (iPXE, TFTP, installer boot, DHCP) to power-off | | \
         {tcg_secs:.2} |\n\n\
         Steps of the install on this machine: {}\n\n\
         The live installer netboots what `provision` made with `installer: hostforge` (the \
         commit's kernel, the installer initramfs with the release hostforge) from QEMU's \
         user-net TFTP and pulls over HTTP through QEMU's gateway; TCG emulates the CPU, so \
         its figures are several times a real machine's.\n",
        mib(pull_bytes),
        step_split(&err),
    );
    write_section(top, "install", &body)?;
    println!("{body}");
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&gnupg)
        .args(["--kill", "gpg-agent"])
        .status();
    Ok(())
}

/// The live installer from `provision` (installer: hostforge) netbooted by QEMU (TCG) onto a
/// blank disk, powering off when done: (seconds from power-on to power-off, seconds of
/// `hostforge install` as it reports, MiB it fetched).
fn live_install(
    bin: &Path,
    work: &Path,
    repo: &Path,
    public: &Path,
    port: u16,
) -> Result<(f64, f64, f64)> {
    let pxe = work.join("pxe");
    std::fs::create_dir_all(&pxe)?;
    std::fs::copy(public, pxe.join("publisher.asc"))?;
    std::fs::write(
        pxe.join("spec.yaml"),
        "installer: hostforge\ndisk: vda\nlayout: metal\ngpg-key: publisher.asc\n\
         ssh-keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench@hostforge\"]\n\
         kargs: [console=ttyS0, hostforge.inst.poweroff]\n",
    )?;
    let out = pxe.join("out");
    timed(
        "hostforge provision (builds the installer)",
        Command::new(bin)
            .args(["provision", "--repo"])
            .arg(repo)
            .args(["--ref", "hostforge/x86_64/node", "--url"])
            .arg(format!("http://10.0.2.2:{port}"))
            .arg("--spec")
            .arg(pxe.join("spec.yaml"))
            .arg("--out")
            .arg(&out),
    )?;
    let disk = pxe.join("blank.raw");
    std::fs::File::create(&disk)?.set_len(8 << 30)?;
    let console = pxe.join("console.log");
    let t = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-boot", "order=cn", "-drive"])
        .arg(format!("file={},if=none,id=d0,format=raw", disk.display()))
        .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1", "-netdev"])
        .arg(format!(
            "user,id=n0,tftp={},bootfile=boot.ipxe",
            out.join("tftp").display()
        ))
        .args(["-device", "virtio-net-pci,netdev=n0,bootindex=2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&console)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let status = loop {
        if let Some(st) = qemu.try_wait()? {
            break Some(st);
        }
        if t.elapsed().as_secs() > 1800 {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let secs = t.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&std::fs::read(&console)?).into_owned();
    if status.is_none() || !log.contains("hostforge-installer: installed") {
        bail!(
            "the live installer did not finish within 30 minutes; its console is {}",
            console.display()
        );
    }
    let figure = |prefix: &str| -> Option<String> {
        log.lines()
            .map(str::trim_end)
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    };
    let total = figure("total ")
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
        .context("no total on the installer's console")?;
    let fetched = figure("pull ")
        .and_then(|l| l.rsplit(", ").next().map(str::to_string))
        .and_then(|f| f.strip_suffix(" MiB fetched").map(str::to_string))
        .and_then(|f| f.parse::<f64>().ok())
        .context("no fetched figure on the installer's console")?;
    eprintln!(
        "{:<40} {secs:>8.2}s",
        "live installer (TCG), power-on to off"
    );
    Ok((secs, total, fetched))
}
