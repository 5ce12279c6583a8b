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
# After this boot's verdict: a check never runs during a boot still on trial.
After=network-online.target multi-user.target hostforge-boot-complete.service

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

const HEALTH: &str = "[Unit]
Description=hostforge health checks (/usr/lib/hostforge/health.d, /etc/hostforge/health.d)
Documentation=file:///usr/share/hostforge/updates.conf.example
ConditionKernelCommandLine=ostree
# The boot is judged once the system is up; boot-complete.target requires this unit.
After=multi-user.target
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/hostforge-update health
TimeoutStartSec=15min
StandardOutput=journal+console
StandardError=journal+console
";

const BOOT_COMPLETE: &str = "[Unit]
Description=hostforge: judge this boot (end its trial, reboot, or go back)
ConditionKernelCommandLine=ostree
Wants=boot-complete.target network-online.target
# Explicitly after multi-user.target, which wants this unit: a target is otherwise ordered
# after what it wants, and the health checks (after multi-user.target) would make a cycle.
After=multi-user.target boot-complete.target network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/hostforge-update boot-complete
StandardOutput=journal+console
StandardError=journal+console
";

/// systemd runs generators with three directories; the agent does the work.
const GENERATOR: &str = "#!/bin/sh
# Health check units in /usr/lib/hostforge/health.d and /etc/hostforge/health.d become
# required by boot-complete.target (see hostforge-update generate).
exec /usr/bin/hostforge-update generate \"$@\"
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

[rollback]
# A staged update is on trial: GRUB boots it at most this many times (1 to 9) without a
# good verdict, then goes back to the previous deployment, which becomes the default again;
# the failed commit is never installed again (a newer one is). A boot is good when every
# health check passes: executables and *.service units in /usr/lib/hostforge/health.d and
# /etc/hostforge/health.d (a name in /etc replaces the same name in /usr/lib; a link to
# /dev/null turns it off). A failed check reboots while the counter lasts.
boot_attempts = 3
";

/// Builds the agent with cargo (`release` or the dev profile), packages it and writes the
/// repository metadata; returns the repository's directory.
pub fn build(top: &Path, release: bool) -> Result<PathBuf> {
    build_variant(top, release, None)
}

/// Like [`build`]; with `note`, a changed build of the same package (the note appended to its
/// example configuration, its own release and repository), as a package update looks.
pub fn build_variant(top: &Path, release: bool, note: Option<&str>) -> Result<PathBuf> {
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
    let out = top.join("fixtures/out/agent").join(match note {
        Some(_) => format!("{profile}-changed"),
        None => profile.to_string(),
    });
    let example = format!("{EXAMPLE}{}", note.unwrap_or_default());
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
        HEALTH.as_bytes(),
        BOOT_COMPLETE.as_bytes(),
        GENERATOR.as_bytes(),
        example.as_bytes(),
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
    const UNITS: &str = "/usr/lib/systemd/system";
    for (path, text) in [
        (format!("{UNITS}/hostforge-update.service"), SERVICE),
        (format!("{UNITS}/hostforge-update.timer"), TIMER),
        (format!("{UNITS}/hostforge-health.service"), HEALTH),
        (
            format!("{UNITS}/hostforge-boot-complete.service"),
            BOOT_COMPLETE,
        ),
        (
            "/usr/share/hostforge/updates.conf.example".to_string(),
            example.as_str(),
        ),
    ] {
        b.with_file_contents(text, FileOptions::new(path).mode(FileMode::regular(0o644)))?;
    }
    b.with_file_contents(
        GENERATOR,
        FileOptions::new("/usr/lib/systemd/system-generators/hostforge-health-generator")
            .mode(FileMode::regular(0o755)),
    )?;
    // Enabled by the package itself: installing the agent turns automatic rollback on.
    for (dir, unit) in [
        ("boot-complete.target.requires", "hostforge-health.service"),
        ("multi-user.target.wants", "hostforge-boot-complete.service"),
    ] {
        b.with_symlink(FileOptions::symlink(
            format!("{UNITS}/{dir}/{unit}"),
            format!("../{unit}"),
        ))?;
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
