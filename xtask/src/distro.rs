//! The bootable fixture distro: a curated set of Debian 12 packages, downloaded with apt and
//! repacked into RPMs (files moved under /usr, Depends/Provides translated so libdnf resolves
//! them), plus hostforge's own node-base package. Maintainer scripts are not carried over;
//! what they would set up is in node-base or in treefiles/node.yaml's postprocess.
//! Cached by a hash of this file and the Debian package versions apt chose.

use anyhow::{bail, Context, Result};
use rpm::{Dependency, FileMode, FileOptions, PackageBuilder};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("distro.rs");
const BUILD_TIME: u32 = 1_700_000_000;

/// What the node needs: a kernel, systemd, udev, the ostree boot pieces, dracut and a shell;
/// what the debug toolbox (`treefiles/toolbox.yaml`) adds: strace, tcpdump, iproute2, lsof;
/// and an SELinux policy for composes that label (`selinux: true`, rpm-ostree's default).
const DEBIAN_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "dracut",
    "ostree",
    "ostree-boot",
    "bash",
    "coreutils",
    "util-linux",
    "kmod",
    "e2fsprogs",
    "base-files",
    "base-passwd",
    "libc-bin",
    "mount",
    "dash",
    "sed",
    "grep",
    "findutils",
    "gzip",
    "zstd",
    "cpio",
    "procps",
    // Its `login` applet is the node's login program (no PAM stack to set up).
    "busybox",
    "strace",
    "tcpdump",
    "iproute2",
    "lsof",
    "iputils-ping",
    "less",
    // What the node's `toolbox` runs on (podman, with skopeo, runc and conmon), and the
    // container runtime a kubelet talks to (containerd, with runc; `ctr` for people).
    "podman",
    "skopeo",
    "runc",
    "conmon",
    "containerd",
    "selinux-policy-default",
    // Not for nodes: the repack runs the distro's own semodule to build the policy.
    "semodule-utils",
];

/// The Debian package whose maintainer script builds the SELinux policy; the repack builds it.
const SELINUX_POLICY: &str = "selinux-policy-default";
/// Its policy type: `/etc/selinux/TYPE/` in the tree, `SELINUXTYPE=` in /etc/selinux/config.
const SELINUX_TYPE: &str = "default";

/// Parts of packages a node never needs; dropped like dpkg's path-exclude would.
const EXCLUDED_PREFIXES: &[&str] = &[
    "/usr/share/doc/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/locale/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
];

pub(crate) fn run_out(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads the dependency closure of DEBIAN_PACKAGES as if nothing were installed.
fn download(dir: &Path) -> Result<Vec<PathBuf>> {
    let archives = dir.join("archives");
    std::fs::create_dir_all(archives.join("partial"))?;
    let status = dir.join("status");
    std::fs::write(&status, "")?;
    let fetch = || {
        run_out(
            Command::new("apt-get")
                .args([
                    "install",
                    "--download-only",
                    "--no-install-recommends",
                    "-y",
                    "-q",
                ])
                .arg(format!("-o=Dir::State::status={}", status.display()))
                .arg(format!("-o=Dir::Cache::archives={}", archives.display()))
                .arg("-o=Debug::NoLocking=1")
                .args(DEBIAN_PACKAGES),
        )
    };
    if fetch().is_err() {
        // A machine whose package lists are missing or stale: refresh once and retry.
        run_out(Command::new("apt-get").args(["update", "-q"]))?;
        fetch().context("downloading the fixture distro's Debian packages")?;
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&archives)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

struct Control {
    name: String,
    version: String,
    arch: String,
    depends: String,
    provides: String,
}

fn control(deb: &Path) -> Result<Control> {
    let text = run_out(Command::new("dpkg-deb").arg("-f").arg(deb).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
        "Pre-Depends",
        "Provides",
    ]))?;
    let mut fields = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            fields.insert(k.to_string(), v.trim().to_string());
        }
    }
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let mut depends = get("Depends");
    let pre = get("Pre-Depends");
    if !pre.is_empty() {
        depends = if depends.is_empty() {
            pre
        } else {
            format!("{depends}, {pre}")
        };
    }
    Ok(Control {
        name: get("Package"),
        version: get("Version"),
        arch: get("Architecture"),
        depends,
        provides: get("Provides"),
    })
}

/// Debian `[epoch:]upstream[-revision]` as RPM (epoch, version, release).
pub fn rpm_evr(debver: &str) -> (u32, String, String) {
    let (epoch, rest) = match debver.split_once(':') {
        Some((e, r)) => (e.parse().unwrap_or(0), r),
        None => (0, debver),
    };
    let (version, release) = match rest.rsplit_once('-') {
        Some((v, r)) => (v.to_string(), r.to_string()),
        None => (rest.to_string(), "0".to_string()),
    };
    (epoch, version.replace('-', "_"), release.replace('-', "_"))
}

/// Names in a Debian relationship field, alternatives grouped: "a (>= 1) | b, c:any".
fn relation_groups(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|g| {
            g.split('|')
                .map(|alt| {
                    let name = alt.trim().split([' ', '(']).next().unwrap_or("");
                    name.split(':').next().unwrap_or("").to_string()
                })
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// `/bin/x` → `/usr/bin/x` and the like: the tree has /bin, /sbin, /lib, /lib64 as links.
pub fn usrmerge(path: &str) -> Option<String> {
    for top in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        if path == format!("/{top}") {
            return None;
        }
        if let Some(rest) = path.strip_prefix(&format!("/{top}/")) {
            return Some(format!("/usr/{top}/{rest}"));
        }
    }
    Some(path.to_string())
}

fn ids(master: &str) -> HashMap<u32, String> {
    master
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

fn builder(name: &str, evr: &(u32, String, String), arch: &str) -> PackageBuilder {
    let mut b = PackageBuilder::new(
        name,
        &evr.1,
        "Debian",
        arch,
        &format!("{name} repacked from Debian 12"),
    );
    b.using_config(
        rpm::BuildConfig::v4()
            .compression(rpm::CompressionType::Zstd)
            .source_date(BUILD_TIME),
    )
    .release(evr.2.clone())
    .build_host("fixtures.hostforge.invalid");
    if evr.0 > 0 {
        b.epoch(evr.0);
    }
    b
}

struct Repack<'a> {
    provided: &'a BTreeSet<String>,
    users: &'a HashMap<u32, String>,
    groups: &'a HashMap<u32, String>,
    /// The policy tools' root (see [`selinux_tools`]).
    selinux_tools: &'a Path,
}

impl Repack<'_> {
    fn package(&self, deb: &Path, ctl: &Control, scratch: &Path) -> Result<rpm::Package> {
        let _ = std::fs::remove_dir_all(scratch);
        std::fs::create_dir_all(scratch)?;
        run_out(Command::new("dpkg-deb").arg("-x").arg(deb).arg(scratch))?;
        if ctl.name == SELINUX_POLICY {
            build_selinux_policy(scratch, self.selinux_tools)
                .context("building the SELinux policy")?;
        }
        let conffiles: BTreeSet<String> = Command::new("dpkg-deb")
            .arg("-I")
            .arg(deb)
            .arg("conffiles")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let arch = match ctl.arch.as_str() {
            "amd64" => "x86_64",
            _ => "noarch",
        };
        let mut b = builder(&ctl.name, &rpm_evr(&ctl.version), arch);
        let mut seen = BTreeSet::new();
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack = vec![scratch.to_path_buf()];
        let mut entries = Vec::new();
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                let m = std::fs::symlink_metadata(&p)?;
                if m.is_dir() {
                    stack.push(p.clone());
                }
                entries.push((p, m));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, m) in entries {
            let debpath = format!("/{}", p.strip_prefix(scratch)?.display());
            let Some(path) = usrmerge(&debpath) else {
                continue;
            };
            if EXCLUDED_PREFIXES
                .iter()
                .any(|x| path.starts_with(x) || format!("{path}/") == *x)
            {
                continue;
            }
            if !seen.insert(path.clone()) {
                continue;
            }
            let user = self
                .users
                .get(&m.uid())
                .cloned()
                .unwrap_or_else(|| "root".into());
            let group = self
                .groups
                .get(&m.gid())
                .cloned()
                .unwrap_or_else(|| "root".into());
            let perms = (m.mode() & 0o7777) as u16;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p)?.to_string_lossy().into_owned();
                b.with_symlink(FileOptions::symlink(path, target))?;
            } else if m.is_dir() {
                b.with_dir_entry(
                    FileOptions::dir(path)
                        .permissions(perms)
                        .user(user)
                        .group(group),
                )?;
            } else if m.is_file() {
                let mut opts = FileOptions::new(path.clone())
                    .mode(FileMode::regular(perms))
                    .user(user)
                    .group(group);
                if conffiles.contains(&debpath) {
                    opts = opts.config().noreplace();
                }
                if m.nlink() > 1 {
                    let id = inodes
                        .entry((m.dev(), m.ino()))
                        .or_insert_with(|| format!("ino{}", m.ino()))
                        .clone();
                    opts = opts.hardlink(id);
                }
                b.with_file_contents(std::fs::read(&p)?, opts)?;
            }
        }
        for group in relation_groups(&ctl.depends) {
            if let Some(name) = group.iter().find(|n| self.provided.contains(*n)) {
                if *name != ctl.name {
                    b.requires(Dependency::any(name.clone()));
                }
            }
        }
        for group in relation_groups(&ctl.provides) {
            for name in group {
                b.provides(Dependency::any(name));
            }
        }
        b.requires(Dependency::any("hostforge-node-base"));
        Ok(b.build()?)
    }
}

/// What selinux-policy-default's postinst does on a Debian system, done at repack time into
/// the extracted package: `semodule` compiles the shipped modules into the binary policy
/// (`/etc/selinux/default/policy/policy.NN`) and the file contexts
/// (`contexts/files/file_contexts`) that label a tree. semodule is the distro's own, run in
/// `tools` (see [`selinux_tools`]) under bubblewrap: installing policycoreutils on the build
/// machine would give it an /etc/selinux/config naming a policy it does not have, which
/// breaks libostree there. The module store semodule keeps under /var/lib/selinux is left
/// out (an immutable node never rebuilds its policy), and /etc/selinux/config names the
/// policy (no Debian package ships that file; ostree and libselinux read it).
fn build_selinux_policy(root: &Path, tools: &Path) -> Result<()> {
    let share = format!("/usr/share/selinux/{SELINUX_TYPE}");
    let list_path = root.join(share.trim_start_matches('/')).join(".modules");
    let list = std::fs::read_to_string(&list_path)
        .with_context(|| format!("reading {}", list_path.display()))?;
    let mut cmd = Command::new("bwrap");
    cmd.arg("--bind")
        .arg(tools)
        .arg("/")
        .arg("--bind")
        .arg(root)
        .arg("/policy")
        .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
        .args(["--unshare-all", "--die-with-parent", "--clearenv"])
        .args(["--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin"])
        .args([
            "semodule",
            "-p",
            "/policy",
            "-s",
            SELINUX_TYPE,
            "-n",
            "-X",
            "100",
        ]);
    for module in list.split_whitespace() {
        cmd.arg("-i").arg(format!("/policy{share}/{module}.pp.bz2"));
    }
    run_out(&mut cmd)?;
    let _ = std::fs::remove_dir_all(root.join("var/lib/selinux"));
    let policy = root.join("etc/selinux").join(SELINUX_TYPE);
    for built in ["contexts/files/file_contexts", "policy"] {
        if !policy.join(built).exists() {
            bail!("semodule did not write {}", policy.join(built).display());
        }
    }
    std::fs::write(
        root.join("etc/selinux/config"),
        format!("SELINUX=permissive\nSELINUXTYPE={SELINUX_TYPE}\n"),
    )?;
    Ok(())
}

/// A root holding the distro's SELinux policy tools (policycoreutils' `.pp` converter,
/// semodule-utils' `semodule`) and everything they depend on, extracted from the downloaded
/// Debian packages as they are (not repacked).
fn selinux_tools(debs: &[PathBuf], controls: &[Control], dir: &Path) -> Result<()> {
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, c) in controls.iter().enumerate() {
        by_name.insert(c.name.clone(), i);
    }
    for (i, c) in controls.iter().enumerate() {
        for p in relation_groups(&c.provides).into_iter().flatten() {
            by_name.entry(p).or_insert(i);
        }
    }
    let mut wanted = BTreeSet::new();
    let mut queue: Vec<usize> = ["policycoreutils", "semodule-utils"]
        .iter()
        .map(|n| {
            by_name
                .get(*n)
                .copied()
                .with_context(|| format!("{n} was not downloaded"))
        })
        .collect::<Result<_>>()?;
    while let Some(i) = queue.pop() {
        if !wanted.insert(i) {
            continue;
        }
        for group in relation_groups(&controls[i].depends) {
            if let Some(&dep) = group.iter().find_map(|n| by_name.get(n.as_str())) {
                queue.push(dep);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for i in wanted {
        run_out(Command::new("dpkg-deb").arg("-x").arg(&debs[i]).arg(dir))?;
    }
    Ok(())
}

const BOOTED_UNIT: &str = "[Unit]
Description=Print which ostree commit booted, for hostforge's boot tests
After=multi-user.target
ConditionKernelCommandLine=ostree

[Service]
Type=oneshot
ExecStart=/usr/libexec/hostforge-booted
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

const BOOTED_SCRIPT: &str = "#!/bin/sh
# Prints the checksum of the booted deployment's commit, read from ostree itself.
set -e
commit=$(ostree admin status | sed -n 's/^\\* [^ ]* \\([0-9a-f]\\{64\\}\\)\\..*/\\1/p')
echo \"hostforge-booted: ${commit:-unknown}\" | tee /dev/console
";

/// hostforge's own package: the merged-/usr links, accounts from base-passwd's master files,
/// and the unit that reports the booted commit.
fn node_base(passwd: &str, group: &str) -> Result<rpm::Package> {
    let mut b = builder(
        "hostforge-node-base",
        &(0, "1.0".into(), "1".into()),
        "noarch",
    );
    for d in [
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/libexec",
        "/etc",
        "/boot",
        "/var",
    ] {
        b.with_dir_entry(FileOptions::dir(d).permissions(0o755))?;
    }
    for top in ["bin", "sbin", "lib", "lib64"] {
        b.with_symlink(FileOptions::symlink(
            format!("/{top}"),
            format!("usr/{top}"),
        ))?;
    }
    let shadow: String = passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|u| {
            if u == "root" {
                // Locked: a first-boot config (`install --config`, `image build
                // --first-boot`) gives root a password hash or SSH keys.
                "root:!:19000:0:99999:7:::\n".to_string()
            } else {
                format!("{u}:*:19000:0:99999:7:::\n")
            }
        })
        .collect();
    let gshadow: String = group
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(|g| format!("{g}:*::\n"))
        .collect();
    // The passwords live in shadow and gshadow: `x` in the master files' password field,
    // as `shadowconfig on` leaves them (login programs refuse an account whose field is `*`).
    let shadowed = |text: &str| -> String {
        text.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() > 1 {
                    f[1] = "x";
                }
                f.join(":") + "\n"
            })
            .collect()
    };
    let etc = |p: &str| FileOptions::new(p).config().noreplace();
    b.with_file_contents(
        shadowed(passwd),
        etc("/etc/passwd").mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents(
        shadowed(group),
        etc("/etc/group").mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents(
        shadow,
        etc("/etc/shadow")
            .mode(FileMode::regular(0o640))
            .group("shadow"),
    )?;
    b.with_file_contents(
        gshadow,
        etc("/etc/gshadow")
            .mode(FileMode::regular(0o640))
            .group("shadow"),
    )?;
    b.with_file_contents(
        "node\n",
        etc("/etc/hostname").mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents(
        "",
        FileOptions::new("/etc/machine-id").mode(FileMode::regular(0o444)),
    )?;
    b.with_file_contents("", etc("/etc/fstab").mode(FileMode::regular(0o644)))?;
    b.with_file_contents(
        BOOTED_UNIT,
        FileOptions::new("/usr/lib/systemd/system/hostforge-booted.service")
            .mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents(
        BOOTED_SCRIPT,
        FileOptions::new("/usr/libexec/hostforge-booted").mode(FileMode::regular(0o755)),
    )?;
    Ok(b.build()?)
}

/// Copies treefiles/node.yaml into `dir` with a fixture-distro.repo pointing at `distro` and
/// a hostforge-agent.repo pointing at the agent package, built in release mode (see
/// [`crate::agent`]);
/// returns the treefile's path.
pub fn node_treefile(top: &Path, distro: &Path, dir: &Path) -> Result<PathBuf> {
    let agent = crate::agent::build(top, true)?;
    let tf = distro_treefile(top, distro, dir, "node.yaml")?;
    std::fs::write(
        dir.join("hostforge-agent.repo"),
        crate::agent::repo_section(&agent),
    )?;
    Ok(tf)
}

/// Copies `treefiles/` (the treefiles and the files they add) into `dir` with a
/// fixture-distro.repo pointing at `distro`; returns the path of treefile `name` there.
pub fn distro_treefile(top: &Path, distro: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tf = dir.join(name);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(top.join("treefiles").join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                std::fs::create_dir_all(dir.join(&r))?;
                stack.push(r);
            } else {
                std::fs::copy(e.path(), dir.join(&r))?;
            }
        }
    }
    std::fs::write(
        dir.join("fixture-distro.repo"),
        format!("[fixture-distro]\nbaseurl=file://{}\n", distro.display()),
    )?;
    Ok(tf)
}

/// Builds (or reuses) the fixture distro repo; returns its directory.
pub fn build(top: &Path) -> Result<PathBuf> {
    build_with(top, false)
}

/// Like [`build`]; `force` repacks even when a cached repo exists (for timing it).
pub fn build_with(top: &Path, force: bool) -> Result<PathBuf> {
    let t = std::time::Instant::now();
    let base = top.join("fixtures/out/distro");
    let dl = base.join("apt");
    let debs = download(&dl)?;
    let mut h = Sha256::new();
    h.update(SOURCE);
    for d in &debs {
        h.update(d.file_name().unwrap().to_string_lossy().as_bytes());
    }
    let key = hex::encode(h.finalize());
    let out = base.join(&key[..16]);
    if out.join("stamp").exists() && !force {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(&out);
    let controls: Vec<Control> = debs.iter().map(|d| control(d)).collect::<Result<_>>()?;
    let mut provided: BTreeSet<String> = controls.iter().map(|c| c.name.clone()).collect();
    for c in &controls {
        for g in relation_groups(&c.provides) {
            provided.extend(g);
        }
    }
    // Accounts come from base-passwd's master files.
    let bp = debs
        .iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("base-passwd_")
        })
        .context("base-passwd was not downloaded")?;
    let scratch = base.join("scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    run_out(Command::new("dpkg-deb").arg("-x").arg(bp).arg(&scratch))?;
    let passwd = std::fs::read_to_string(scratch.join("usr/share/base-passwd/passwd.master"))?;
    let group = std::fs::read_to_string(scratch.join("usr/share/base-passwd/group.master"))?;
    let (users, groups) = (ids(&passwd), ids(&group));
    let tools = base.join("selinux-tools");
    selinux_tools(&debs, &controls, &tools).context("extracting the SELinux policy tools")?;
    let repack = Repack {
        provided: &provided,
        users: &users,
        groups: &groups,
        selinux_tools: &tools,
    };
    let pkgdir = out.join("Packages");
    std::fs::create_dir_all(&pkgdir)?;
    // Repack on every core; each worker has its own scratch directory.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (repack, next, debs, controls, pkgdir) =
                    (&repack, &next, &debs, &controls, &pkgdir);
                let scratch = scratch.join(format!("w{w}"));
                s.spawn(move || -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let (Some(deb), Some(ctl)) = (debs.get(i), controls.get(i)) else {
                            return Ok(());
                        };
                        let p = repack
                            .package(deb, ctl, &scratch)
                            .with_context(|| format!("repacking {}", deb.display()))?;
                        p.write_file(pkgdir.join(p.canonical_filename()?))?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("repack worker panicked")?;
        }
        Ok(())
    })?;
    let names: BTreeMap<String, String> = controls
        .iter()
        .map(|c| (c.name.clone(), c.version.clone()))
        .collect();
    let nb = node_base(&passwd, &group)?;
    nb.write_file(pkgdir.join(nb.canonical_filename()?))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&tools);
    run_out(
        Command::new("createrepo_c")
            .args([
                "--quiet",
                "--no-database",
                "--simple-md-filenames",
                "--revision",
            ])
            .arg(BUILD_TIME.to_string())
            .arg("--set-timestamp-to-revision")
            .arg(&out),
    )?;
    std::fs::write(
        out.join("debian-packages.txt"),
        names
            .iter()
            .map(|(n, v)| format!("{n} {v}\n"))
            .collect::<String>(),
    )?;
    std::fs::write(out.join("stamp"), "ok\n")?;
    eprintln!(
        "fixture distro: {} Debian packages repacked in {:.1}s: {}",
        debs.len(),
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_map_to_rpm() {
        assert_eq!(
            rpm_evr("1:2.3-4~deb12u1"),
            (1, "2.3".into(), "4~deb12u1".into())
        );
        assert_eq!(rpm_evr("0.5.12-2"), (0, "0.5.12".into(), "2".into()));
        assert_eq!(rpm_evr("2022.7"), (0, "2022.7".into(), "0".into()));
        assert_eq!(rpm_evr("1.0-beta-3"), (0, "1.0_beta".into(), "3".into()));
    }

    #[test]
    fn relations_parse() {
        let g = relation_groups("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any");
        assert_eq!(
            g,
            [
                vec!["libc6"],
                vec!["debconf", "debconf-2.0"],
                vec!["python3"]
            ]
        );
    }

    #[test]
    fn paths_move_under_usr() {
        assert_eq!(usrmerge("/bin/sh").as_deref(), Some("/usr/bin/sh"));
        assert_eq!(usrmerge("/lib"), None);
        assert_eq!(usrmerge("/etc/x").as_deref(), Some("/etc/x"));
        assert_eq!(usrmerge("/libexec/x").as_deref(), Some("/libexec/x"));
    }
}
