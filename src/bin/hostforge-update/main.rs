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
//! This program runs on nodes and links libostree only; it shares no code with `hostforge`.

mod config;
mod fleetlock;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config::{Config, Strategy};
use ostree::gio;
use serde::{Deserialize, Serialize};
use std::path::Path;

const CONFIG: &str = "/etc/hostforge/updates.conf";
const STATE: &str = "/var/lib/hostforge/updates.json";

/// hostforge's update agent: follows this node's signed remote and reboots by strategy.
#[derive(Parser)]
#[command(version)]
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
    let mut st = State::load();
    st.checked = now();
    let sysroot = ostree::Sysroot::new_default();
    sysroot.load(gio::Cancellable::NONE)?;
    let booted = sysroot
        .booted_deployment()
        .context("this system was not booted from an ostree deployment")?;
    st.booted = booted.csum().to_string();
    let fleet = fleet_client(&cfg)?;

    // After a good boot the lock goes back (zincati's steady state).
    if st.lock_held && sysroot.staged_deployment().is_none() {
        match &fleet {
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
        st.say("staged", format!("staged {rev} from {refspec}"))?;
    }
    reboot_if_allowed(&cfg, &mut st, fleet.as_ref(), &rev)
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
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Check => check(),
        Cmd::Status { json } => status(json),
    };
    if let Err(e) = r {
        eprintln!("hostforge-update: error: {e:#}");
        std::process::exit(1);
    }
}
