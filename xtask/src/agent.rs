//! The `hostforge-update` package: the node's update agent (`src/bin/hostforge-update`) and
//! its systemd units, built from this workspace into a small RPM repository of its own
//! (`fixtures/out/agent/PROFILE`) that treefiles/node.yaml installs from, as a distribution
//! would ship Zincati. The release is a hash of the contents, so the package cache never
//! mistakes a rebuilt agent for the old one.

use anyhow::{Context, Result};
use rpm::{Dependency, FileMode, FileOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const SERVICE: &str = "[Unit]
Description=hostforge update agent: pull the remote ref, stage it, reboot by strategy
ConditionKernelCommandLine=ostree
Wants=network-online.target
# The reboot lock goes back once the boot got this far (a good boot).
After=network-online.target multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/bin/hostforge-update check
";

const TIMER: &str = "[Unit]
Description=Check for hostforge updates
ConditionKernelCommandLine=ostree

[Timer]
OnBootSec=2min
OnUnitInactiveSec=15min
RandomizedDelaySec=2min

[Install]
WantedBy=timers.target
";

const EXAMPLE: &str = "# /etc/hostforge/updates.conf: how this node updates (hostforge-update).
# Every key is optional; this file shows the defaults and the other choices.

[updates]
# immediate: reboot as soon as an update is staged
# periodic:  reboot only inside one of the windows below (UTC)
# fleet_lock: reboot only when the FleetLock server grants this node's group the lock
strategy = \"immediate\"

# [updates.fleet_lock]
# base_url = \"http://fleetlock.example.internal:8080\"

# [[updates.periodic.window]]
# days = [\"Sat\", \"Sun\"]
# start_time = \"22:30\"
# length_minutes = 60

[identity]
group = \"default\"
# node_id: default, an id derived from /etc/machine-id (as systemd's app-specific ids)

# [remote]
# refspec: default, the booted deployment's origin (REMOTE:REF)
";

/// Builds the agent with cargo (`release` or the dev profile), packages it and writes the
/// repository metadata; returns the repository's directory.
pub fn build(top: &Path, release: bool) -> Result<PathBuf> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(top)
        .args(["build", "--bin", "hostforge-update"]);
    if release {
        cargo.arg("--release");
    }
    crate::distro::run_out(&mut cargo)?;
    let profile = if release { "release" } else { "debug" };
    let bin = top.join("target").join(profile).join("hostforge-update");
    let out = top.join("fixtures/out/agent").join(profile);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let stripped = out.join("hostforge-update.stripped");
    crate::distro::run_out(Command::new("strip").arg("-o").arg(&stripped).arg(&bin))
        .context("strip (binutils) makes the node's copy of the agent")?;
    let binary = std::fs::read(&stripped)?;
    std::fs::remove_file(&stripped)?;
    let mut h = Sha256::new();
    for part in [
        &binary[..],
        SERVICE.as_bytes(),
        TIMER.as_bytes(),
        EXAMPLE.as_bytes(),
    ] {
        h.update(part);
    }
    let release_tag = hex::encode(h.finalize())[..12].to_string();
    let mut b = rpm::PackageBuilder::new(
        "hostforge-update",
        env!("CARGO_PKG_VERSION"),
        "MIT OR Apache-2.0",
        "x86_64",
        "hostforge's update agent for nodes",
    );
    b.using_config(
        rpm::BuildConfig::v4()
            .compression(rpm::CompressionType::Zstd)
            .source_date(1_700_000_000),
    )
    .release(release_tag)
    .build_host("fixtures.hostforge.invalid");
    b.requires(Dependency::any("ostree"));
    b.requires(Dependency::any("ostree-boot"));
    b.with_file_contents(
        binary,
        FileOptions::new("/usr/bin/hostforge-update").mode(FileMode::regular(0o755)),
    )?;
    for (path, text) in [
        ("/usr/lib/systemd/system/hostforge-update.service", SERVICE),
        ("/usr/lib/systemd/system/hostforge-update.timer", TIMER),
        ("/usr/share/hostforge/updates.conf.example", EXAMPLE),
    ] {
        b.with_file_contents(text, FileOptions::new(path).mode(FileMode::regular(0o644)))?;
    }
    let pkg = b.build()?;
    pkg.write_file(out.join("hostforge-update.rpm"))?;
    crate::distro::run_out(
        Command::new("createrepo_c")
            .args(["--quiet", "--no-database", "--simple-md-filenames"])
            .arg(&out),
    )?;
    Ok(out)
}

/// The `[hostforge-agent]` section of a .repo file for the repository at `repo`.
pub fn repo_section(repo: &Path) -> String {
    format!("[hostforge-agent]\nbaseurl=file://{}\n", repo.display())
}
