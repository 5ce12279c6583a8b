//! hostforge-update: the update agent of a hostforge node, in the manner of Zincati.
//!
//! A systemd timer runs `hostforge-update check`: it pulls the booted deployment's remote ref
//! (libostree verifies the signatures the remote's configuration asks for), stages the new
//! commit as the next deployment (finalized by `ostree-finalize-staged` at shutdown), and
//! reboots when the configured strategy allows: at once, inside a weekly window, or once a
//! FleetLock server grants the reboot lock (given back after the next good boot). What it did
//! is printed to the journal and kept in `/var/lib/hostforge/updates.json`, which
//! `hostforge-update status` on the node and `hostforge image status` on an image read.
//!
//! A staged update is on trial: `/boot/grub/grubenv` gets a boot counter that GRUB counts
//! down. `hostforge-update health` runs the health checks before `boot-complete.target`;
//! `hostforge-update boot-complete` judges the boot after it: a good boot ends the trial and
//! gives the lock back, a bad one reboots (GRUB goes back to the previous deployment when the
//! counter runs out), and a boot that GRUB fell back to makes the previous deployment the
//! default again and remembers the bad commit, which `check` then never installs.
//!
//! This program runs on nodes and links libostree only; of `hostforge` it shares just the
//! source of the GRUB environment block (`src/grubenv.rs`) and of the man page and completion
//! writer (`src/clidocs.rs`).

/// Shared with the hostforge binary by source (this binary does not link hostforge's library).
#[path = "../../clidocs.rs"]
mod clidocs;
mod config;
mod fleetlock;
// The agent counts boots but never writes GRUB menus: the menu text is the library's.
#[allow(dead_code)]
#[path = "../../grubenv.rs"]
mod grubenv;
mod health;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config::{Config, Strategy};
use ostree::gio;
use serde::{Deserialize, Serialize};
use std::path::Path;

const CONFIG: &str = "/etc/hostforge/updates.conf";
const STATE: &str = "/var/lib/hostforge/updates.json";
/// GRUB's environment block, on /boot (its own partition, or /sysroot/boot bound there).
const GRUBENV: &str = "/boot/grub/grubenv";
/// Rollbacks remembered (their commits are never installed again).
const KEEP_ROLLBACKS: usize = 32;

/// hostforge's update agent: follows this node's signed remote and reboots by strategy.
#[derive(Parser)]
#[command(name = "hostforge-update", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One pass: give back a held reboot lock, pull, stage, reboot if the strategy allows.
    Check,
    /// What the agent last did, the booted and staged commits, and the configuration.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the health checks in /usr/lib/hostforge/health.d and /etc/hostforge/health.d.
    Health,
    /// Judge this boot after boot-complete.target: end the trial, reboot, or go back.
    BootComplete,
    /// The systemd generator: health check units become required by boot-complete.target.
    Generate {
        /// The generator's output directories (normal, early, late).
        dirs: Vec<std::path::PathBuf>,
    },
    /// Write the man pages and shell completions (`cargo xtask docs` runs this).
    #[command(hide = true)]
    GenerateDocs(clidocs::GenerateDocsArgs),
}

/// An automatic rollback: `from` failed on this node and is never installed again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rollback {
    from: String,
    to: String,
    reason: String,
    /// Seconds since the epoch.
    at: u64,
}

/// The last health verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Health {
    commit: String,
    ok: bool,
    message: String,
    at: u64,
}

/// What the agent did last, kept across reboots in /var (shared by all deployments).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Seconds since the epoch of the last check.
    checked: u64,
    /// idle, up-to-date, staged, waiting, rebooting or failed.
    state: String,
    /// The commit the node ran at the last check.
    booted: String,
    /// The commit the last check found on the remote (staged, or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Why, in a sentence.
    message: String,
    /// Whether this node holds its group's FleetLock reboot lock.
    #[serde(default)]
    lock_held: bool,
    /// Automatic rollbacks, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rollbacks: Vec<Rollback>,
    /// The last health verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    health: Option<Health>,
    /// The last bad one (kept when the deployment GRUB went back to passes: it says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failure: Option<Health>,
    /// Reboots after failed health checks of `health.commit` (a bound in case GRUB does not
    /// count, such as another boot loader).
    #[serde(default)]
    health_reboots: u32,
}

impl State {
    fn load() -> State {
        std::fs::read(STATE)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state by rename, so a reader never sees half of it.
    fn save(&self) -> Result<()> {
        let path = Path::new(STATE);
        std::fs::create_dir_all(path.parent().unwrap())?;
        let tmp = path.with_extension("json.tmp");
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        // Synced: the node may be reset right after (a reboot, a power cut), and
        // `hostforge image status` reads this file from the disk.
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {STATE}"))?;
        std::fs::File::open(path.parent().unwrap())?.sync_all()?;
        Ok(())
    }

    /// Records and prints what happened, on one line (libostree's GPG errors span several).
    fn record_health(&mut self, commit: &str, ok: bool, message: &str) {
        let h = Health {
            commit: commit.to_string(),
            ok,
            message: message.to_string(),
            at: now(),
        };
        if !ok {
            self.last_failure = Some(h.clone());
        }
        self.health = Some(h);
    }

    fn say(&mut self, state: &str, message: String) -> Result<()> {
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        self.state = state.to_string();
        println!("hostforge-update: {message}");
        self.message = message;
        self.save()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn node_id(cfg: &Config) -> Result<String> {
    match &cfg.node_id {
        Some(id) => Ok(id.clone()),
        None => fleetlock::app_specific_id(
            &std::fs::read_to_string("/etc/machine-id").context("reading /etc/machine-id")?,
        ),
    }
}

fn fleet_client(cfg: &Config) -> Result<Option<fleetlock::Client>> {
    match &cfg.strategy {
        Strategy::FleetLock { base_url } => Ok(Some(fleetlock::Client::new(
            base_url,
            &node_id(cfg)?,
            &cfg.group,
        ))),
        _ => Ok(None),
    }
}

fn commit_timestamp(repo: &ostree::Repo, rev: &str) -> Result<u64> {
    let v = repo
        .load_variant(ostree::ObjectType::Commit, rev)
        .with_context(|| format!("loading commit {rev}"))?;
    Ok(ostree::commit_get_timestamp(&v))
}

/// The refspec to follow: the configuration's, else the booted deployment's origin.
fn refspec(cfg: &Config, booted: &ostree::Deployment) -> Result<String> {
    if let Some(r) = &cfg.refspec {
        return Ok(r.clone());
    }
    let origin = booted
        .origin()
        .context("the booted deployment has no origin file")?;
    origin
        .string("origin", "refspec")
        .map(|s| s.to_string())
        .map_err(|_| {
            anyhow::anyhow!(
                "the booted deployment's origin names no refspec; set remote.refspec in {CONFIG}"
            )
        })
}

fn check() -> Result<()> {
    let cfg = Config::load(Path::new(CONFIG))?;
    let _lock = lock_state()?;
    let mut st = State::load();
    st.checked = now();
    let sysroot = ostree::Sysroot::new_default();
    sysroot.load(gio::Cancellable::NONE)?;
    let booted = sysroot
        .booted_deployment()
        .context("this system was not booted from an ostree deployment")?;
    st.booted = booted.csum().to_string();
    let fleet = fleet_client(&cfg)?;
    let env = grubenv::Env::read(Path::new(GRUBENV))?;
    // A trial armed for a staged deployment is for the next boot; without one, it is this boot's.
    if env.counting() != grubenv::Counting::Settled && sysroot.staged_deployment().is_none() {
        return st.say(
            "waiting",
            format!(
                "{} is on trial; waiting for this boot's health checks (boot-complete.target)",
                st.booted
            ),
        );
    }
    // The lock goes back once a boot was judged good (zincati's steady state); normally
    // `boot-complete` did it, this retries when the server was not reachable then.
    if st.lock_held && sysroot.staged_deployment().is_none() {
        release_lock(&mut st, fleet.as_ref())?;
    }

    let refspec = refspec(&cfg, &booted)?;
    let (remote, r) = ostree::parse_refspec(&refspec)
        .with_context(|| format!("refspec {refspec:?} is not REMOTE:REF"))?;
    let Some(remote) = remote else {
        bail!(
            "the booted deployment follows {refspec:?}, which names no remote: build the image \
             with `hostforge image build --remote-url URL --remote-gpg-key FILE`, or set \
             remote.refspec in {CONFIG}"
        );
    };
    let repo = sysroot.repo();
    if let Err(e) = repo.pull(
        &remote,
        &[r.as_str()],
        ostree::RepoPullFlags::NONE,
        None,
        gio::Cancellable::NONE,
    ) {
        st.target = None;
        st.say(
            "failed",
            format!("pulling {refspec} failed; staying on {}: {e}", st.booted),
        )?;
        bail!("{}", st.message);
    }
    let rev = repo
        .resolve_rev(&refspec, false)?
        .context("the pulled ref does not resolve")?
        .to_string();
    if rev == st.booted {
        st.target = None;
        return st.say(
            "up-to-date",
            format!("{refspec} is at {rev}, which is booted"),
        );
    }
    st.target = Some(rev.clone());
    if let Some(rb) = st.rollbacks.iter().find(|r| r.from == rev).cloned() {
        return st.say(
            "held",
            format!(
                "{refspec} is at {rev}, which failed on this node ({}) and was rolled back; \
                 staying on {} until a newer commit is published",
                rb.reason, st.booted
            ),
        );
    }
    let staged = sysroot.staged_deployment().map(|d| d.csum().to_string());
    if staged.as_deref() != Some(rev.as_str()) {
        if commit_timestamp(&repo, &rev)? < commit_timestamp(&repo, &st.booted)? {
            st.say(
                "failed",
                format!(
                    "{refspec} is at {rev}, older than the booted {}; not going back \
                     (a rollback is `ostree admin rollback`)",
                    st.booted
                ),
            )?;
            bail!("refusing to downgrade");
        }
        stage(&sysroot, &booted, &rev)?;
        let trial = arm_trial(cfg.boot_attempts)?;
        st.say("staged", format!("staged {rev} from {refspec}; {trial}"))?;
    }
    reboot_if_allowed(&cfg, &mut st, fleet.as_ref(), &rev)
}

/// Gives the FleetLock reboot lock back (a lock without a FleetLock strategy is just dropped).
fn release_lock(st: &mut State, fleet: Option<&fleetlock::Client>) -> Result<()> {
    match fleet {
        Some(c) => match c.steady_state()? {
            Ok(()) => {
                st.lock_held = false;
                println!(
                    "hostforge-update: booted {}; released the reboot lock",
                    st.booted
                );
            }
            Err(why) => println!("hostforge-update: the FleetLock server kept the lock: {why}"),
        },
        None => st.lock_held = false,
    }
    Ok(())
}

/// Puts the staged deployment on trial: GRUB boots it at most `attempts` times without a
/// good verdict before it goes back to the booted one. Says what it did.
fn arm_trial(attempts: u8) -> Result<String> {
    let path = Path::new(GRUBENV);
    if !path.exists() {
        return Ok(format!(
            "no GRUB environment block at {GRUBENV}, so no automatic rollback \
             (images built by hostforge have one)"
        ));
    }
    let mut env = grubenv::Env::read(path)?;
    env.arm(attempts)?;
    env.write(path)?;
    Ok(format!(
        "it gets {attempts} boot(s) to pass its health checks before GRUB goes back"
    ))
}

/// Stages `rev` as the next deployment, keeping the booted one's origin and kernel arguments.
fn stage(sysroot: &ostree::Sysroot, booted: &ostree::Deployment, rev: &str) -> Result<()> {
    sysroot.lock().context("locking the sysroot")?;
    let result = (|| -> Result<()> {
        sysroot.load(gio::Cancellable::NONE)?;
        let osname = booted.osname();
        let merge = sysroot.merge_deployment(Some(osname.as_str()));
        let origin = booted.origin().unwrap_or_default();
        sysroot
            .stage_tree_with_options(
                Some(osname.as_str()),
                rev,
                Some(&origin),
                merge.as_ref(),
                &ostree::SysrootDeployTreeOpts::default(),
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("staging {rev}"))?;
        Ok(())
    })();
    sysroot.unlock();
    result
}

fn reboot_if_allowed(
    cfg: &Config,
    st: &mut State,
    fleet: Option<&fleetlock::Client>,
    rev: &str,
) -> Result<()> {
    match &cfg.strategy {
        Strategy::Immediate => {}
        Strategy::Periodic(windows) => {
            if !windows.iter().any(|w| w.contains(st.checked)) {
                return st.say(
                    "waiting",
                    format!("{rev} is staged; waiting for a reboot window (periodic)"),
                );
            }
        }
        Strategy::FleetLock { base_url } => {
            let c = fleet.expect("fleet_lock has a client");
            match c.pre_reboot()? {
                Ok(()) => st.lock_held = true,
                Err(why) => {
                    return st.say(
                        "waiting",
                        format!(
                            "{rev} is staged; the FleetLock server at {base_url} denied the \
                             reboot lock for group {}: {why}",
                            cfg.group
                        ),
                    )
                }
            }
        }
    }
    st.say(
        "rebooting",
        format!("rebooting into {rev} (strategy {})", cfg.strategy.name()),
    )?;
    reboot()
}

/// Holds `/var/lib/hostforge/lock` while a command changes the state file: the timer's check
/// and the boot's verdict may run at once.
fn lock_state() -> Result<std::fs::File> {
    let dir = Path::new(STATE).parent().unwrap();
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::create(dir.join("lock")).context("opening the agent's lock")?;
    f.lock().context("locking /var/lib/hostforge/lock")?;
    Ok(f)
}

fn booted_deployment(sysroot: &ostree::Sysroot) -> Result<ostree::Deployment> {
    sysroot.load(gio::Cancellable::NONE)?;
    sysroot
        .booted_deployment()
        .context("this system was not booted from an ostree deployment")
}

/// `hostforge-update health`: the scripts' verdict, recorded for `boot-complete`.
fn health_cmd() -> Result<()> {
    let sysroot = ostree::Sysroot::new_default();
    let booted = booted_deployment(&sysroot)?.csum().to_string();
    let dirs: Vec<&Path> = health::DIRS.iter().map(Path::new).collect();
    let failure = health::run_scripts(&dirs)?;
    let _lock = lock_state()?;
    let mut st = State::load();
    let (ok, message) = match &failure {
        None => (true, "every health check passed".to_string()),
        Some(f) => (false, f.why.clone()),
    };
    println!("hostforge-health: {booted}: {message}");
    st.record_health(&booted, ok, &message);
    st.save()?;
    if !ok {
        bail!("{message}");
    }
    Ok(())
}

/// `hostforge-update boot-complete`, after boot-complete.target: judges this boot.
fn boot_complete_cmd() -> Result<()> {
    let cfg = Config::load(Path::new(CONFIG))?;
    let good = health::boot_complete()?;
    let _lock = lock_state()?;
    let mut st = State::load();
    let sysroot = ostree::Sysroot::new_default();
    let booted = booted_deployment(&sysroot)?;
    st.booted = booted.csum().to_string();
    let path = Path::new(GRUBENV);
    let mut env = grubenv::Env::read(path)?;
    let trial = env.counting();
    let default = sysroot.deployments().into_iter().next();
    let is_default = default.as_ref().is_some_and(|d| d.equal(&booted));
    if !good {
        let why = match &st.health {
            Some(h) if !h.ok && h.commit == st.booted => h.message.clone(),
            _ => format!(
                "boot-complete.target was not reached (failed units: {})",
                health::failed_units().join(" ")
            ),
        };
        let booted = st.booted.clone();
        st.record_health(&booted, false, &why);
        return match trial {
            grubenv::Counting::OnTrial { left } if is_default => {
                st.health_reboots += 1;
                if st.health_reboots > u32::from(grubenv::MAX_ATTEMPTS) + 1 {
                    return st.say(
                        "failed",
                        format!(
                            "{} is unhealthy ({why}) and rebooted {} times without GRUB going \
                             back; not rebooting again",
                            st.booted,
                            st.health_reboots - 1
                        ),
                    );
                }
                st.say(
                    "unhealthy",
                    format!(
                        "{} failed this boot ({why}); rebooting ({left} boot(s) left before \
                         GRUB goes back to the previous deployment)",
                        st.booted
                    ),
                )?;
                reboot()
            }
            grubenv::Counting::FellBack => st.say(
                "failed",
                format!(
                    "the previous deployment {} was booted after the new one failed, and it \
                     failed too ({why}); not rebooting: this node needs a person",
                    st.booted
                ),
            ),
            _ => st.say(
                "unhealthy",
                format!(
                    "{} failed its health checks ({why}); it is not on trial, so there is \
                     nothing to go back to by itself",
                    st.booted
                ),
            ),
        };
    }

    st.health_reboots = 0;
    match trial {
        grubenv::Counting::FellBack if !is_default => {
            let bad = default.expect("a default deployment").csum().to_string();
            let reason = match &st.last_failure {
                Some(h) if h.commit == bad => h.message.clone(),
                _ => format!(
                    "it did not come up healthy in {} boot(s) (no health verdict reached)",
                    cfg.boot_attempts
                ),
            };
            make_default(&sysroot, &booted)?;
            env.settle()?;
            env.write(path)?;
            st.rollbacks.push(Rollback {
                from: bad.clone(),
                to: st.booted.clone(),
                reason: reason.clone(),
                at: now(),
            });
            let excess = st.rollbacks.len().saturating_sub(KEEP_ROLLBACKS);
            st.rollbacks.drain(..excess);
            st.say(
                "rolled-back",
                format!(
                    "rolled back from {bad} to {}: {reason}; {} is the default again and \
                     {bad} will not be installed again",
                    st.booted, st.booted
                ),
            )?;
        }
        grubenv::Counting::Settled => {
            println!("hostforge-update: boot of {} is good", st.booted);
        }
        _ => {
            env.settle()?;
            env.write(path)?;
            st.say(
                "booted",
                format!("boot of {} is good; its trial is over", st.booted),
            )?;
        }
    }
    if st.lock_held {
        release_lock(&mut st, fleet_client(&cfg)?.as_ref())?;
    }
    st.save()
}

/// Makes `booted` the default deployment (the one GRUB went back to), keeping the others in
/// their order: ostree's own rollback, done by the node itself.
fn make_default(sysroot: &ostree::Sysroot, booted: &ostree::Deployment) -> Result<()> {
    sysroot.lock().context("locking the sysroot")?;
    let result = (|| -> Result<()> {
        sysroot.load(gio::Cancellable::NONE)?;
        let mut deps = sysroot.deployments();
        let i = deps
            .iter()
            .position(|d| d.equal(booted))
            .context("the booted deployment is not in the sysroot's list")?;
        let d = deps.remove(i);
        deps.insert(0, d);
        sysroot
            .write_deployments(&deps, gio::Cancellable::NONE)
            .context("writing the deployments with the booted one first")?;
        // The new order stands either way; without the checkpoint only a power cut before the
        // next clean shutdown could undo it.
        if let Err(e) = checkpoint_boot() {
            println!("hostforge-update: warning: {e:#}");
        }
        Ok(())
    })();
    sysroot.unlock();
    result
}

/// Puts /boot's journal into place on its filesystem (a freeze and thaw cycle, as ostree
/// does before it swaps /boot/loader). ostree 2022.7 does not do it after the swap, and GRUB
/// does not replay ext4 journals: after a power cut it would read the old loader link, whose
/// deployment links the cleanup has just removed, and the node would not boot (seen in the
/// boot tier with a reset right after a rollback).
fn checkpoint_boot() -> Result<()> {
    let run = |flag: &str| -> Result<()> {
        let out = std::process::Command::new("fsfreeze")
            .args([flag, "/boot"])
            .output()
            .with_context(|| format!("running fsfreeze {flag} /boot"))?;
        if !out.status.success() {
            bail!(
                "fsfreeze {flag} /boot: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let frozen = run("--freeze");
    // Thawed whatever the freeze said: a frozen /boot would stop every later update.
    let thawed = run("--unfreeze");
    frozen.and(thawed)
}

fn reboot() -> Result<()> {
    let status = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .context("running systemctl reboot")?;
    if !status.success() {
        bail!("systemctl reboot failed: {status}");
    }
    Ok(())
}

fn status(json: bool) -> Result<()> {
    let st = State::load();
    let cfg = Config::load(Path::new(CONFIG));
    let sysroot = ostree::Sysroot::new_default();
    sysroot.load(gio::Cancellable::NONE)?;
    let booted = sysroot.booted_deployment().map(|d| d.csum().to_string());
    let staged = sysroot.staged_deployment().map(|d| d.csum().to_string());
    let strategy = match &cfg {
        Ok(c) => c.strategy.name().to_string(),
        Err(e) => format!("invalid configuration: {e:#}"),
    };
    if json {
        let v = serde_json::json!({
            "booted": booted, "staged": staged, "strategy": strategy, "last": st,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "booted:   {}",
        booted.as_deref().unwrap_or("(not an ostree boot)")
    );
    println!("staged:   {}", staged.as_deref().unwrap_or("none"));
    println!("strategy: {strategy}");
    if st.checked == 0 {
        println!("last check: never");
    } else {
        println!(
            "last check: {} ({} s ago): {}",
            st.state,
            now().saturating_sub(st.checked),
            st.message
        );
    }
    if st.lock_held {
        println!("holds the FleetLock reboot lock");
    }
    if let Some(h) = &st.health {
        let verdict = if h.ok { "healthy" } else { "unhealthy" };
        println!("health:   {} was {verdict}: {}", h.commit, h.message);
    }
    for r in &st.rollbacks {
        println!("rolled back from {} to {}: {}", r.from, r.to, r.reason);
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Check => check(),
        Cmd::Status { json } => status(json),
        Cmd::Health => health_cmd(),
        Cmd::BootComplete => boot_complete_cmd(),
        Cmd::Generate { dirs } => health::generator_dir(&dirs).and_then(|normal| {
            let dirs: Vec<&Path> = health::DIRS.iter().map(Path::new).collect();
            health::generate(&dirs, normal)
        }),
        Cmd::GenerateDocs(a) => {
            use clap::CommandFactory;
            clidocs::write(Cli::command(), &a.out)
        }
    };
    if let Err(e) = r {
        eprintln!("hostforge-update: error: {e:#}");
        std::process::exit(1);
    }
}
