//! Chores: installing host packages, building fixtures, running the tests, the demo and the
//! benchmarks. `cargo xtask help` lists them.

mod agent;
mod bench;
mod clidocs;
mod container;
mod distro;
mod fixtures;
mod follow;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the project needs to build and test.
const DEBIAN_PACKAGES: &[&str] = &[
    "ostree",
    "libostree-dev",
    "rpm",
    "librpm-dev",
    "libdnf-dev",
    "libext2fs-dev",
    "comerr-dev",
    "librepo-dev",
    "libsolv-dev",
    "createrepo-c",
    "bubblewrap",
    "time",
    "man-db",
    "clang",
    "libclang-dev",
    "pkg-config",
    "dnf",
    "libglib2.0-dev",
    "gnupg",
    "fuse3",
    "busybox-static",
    "dracut",
    "systemd",
    "ostree-boot",
    "linux-image-cloud-amd64",
    "e2fsprogs",
    "qemu-system-x86",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "mtools",
    "ovmf",
    "zstd",
    "buildah",
    "skopeo",
    "podman",
    "docker-registry",
    // The hostforge container image: its Debian 12 base, and the runtime its test runs it
    // with (see tests/container.rs).
    "mmdebstrap",
    "runc",
    // strip: the node's copy of the update agent.
    "binutils",
];

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Installs the Debian packages that are missing (needs root on a fresh machine).
fn deps() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    // From PyPI: kickstart validation, and the example CI pipelines' schema checks
    // (tests/container.rs).
    for (prog, package) in [
        ("ksvalidator", "pykickstart"),
        ("check-jsonschema", "check-jsonschema"),
    ] {
        if which(prog).is_none() {
            eprintln!("installing {package} ({prog}) from PyPI");
            run(Command::new("python3").args(["-m", "pip", "install", "-q", package]))?;
        }
    }
    if which("tekton-lint").is_none() {
        eprintln!("installing tekton-lint from the npm registry");
        run(Command::new("npm").args([
            "install",
            "--global",
            "--no-audit",
            "--no-fund",
            "--silent",
            "@ibm/tekton-lint@1.1.0",
        ]))
        .context("installing tekton-lint (npm, from Node.js, comes with this machine)")?;
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    // The machine may come with a newer qemu-utils than Debian 12's qemu-system-x86 accepts;
    // install the matching pair from bookworm (a downgrade of qemu-utils).
    let mut args: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
    if missing.contains(&"qemu-system-x86") {
        args.push("qemu-utils/bookworm".into());
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .args(&args))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Test tiers: name, what it covers, and the integration test files (`tests/NAME.rs`) in it.
/// `unit` is the library's and binaries' own tests: no fixtures, no services.
const TIERS: &[(&str, &str, &[&str])] = &[
    (
        "unit",
        "unit tests next to the code (no fixtures, no services)",
        &[],
    ),
    (
        "compose",
        "compose on the fixture repos, errors, dracut",
        &["compose", "errors", "dracut"],
    ),
    (
        "image",
        "image build and A/B operations without booting",
        &["image"],
    ),
    (
        "boot",
        "QEMU boots of composed nodes and built images",
        &["boot"],
    ),
    (
        "net",
        "PXE/HTTP provisioning, buildah and the registry, hostforge in a container",
        &["provision", "toolbox", "container"],
    ),
];

/// Fails when a file in tests/ belongs to no tier (it would run only in the full suite).
fn check_tiers() -> Result<()> {
    let mut listed: Vec<&str> = TIERS.iter().flat_map(|t| t.2.iter().copied()).collect();
    listed.sort();
    let mut found: Vec<String> = std::fs::read_dir(top().join("tests"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
        .collect();
    found.sort();
    if found != listed {
        bail!("tests/*.rs {found:?} and the tiers in xtask/src/main.rs {listed:?} differ");
    }
    Ok(())
}

/// `cargo xtask test [--tier NAME] [cargo test args]`: every test (CI), or one tier.
fn test(args: &[String]) -> Result<()> {
    check_tiers()?;
    let (tier, extra) = match args {
        [flag, name, rest @ ..] if flag == "--tier" => (Some(name.as_str()), rest),
        _ => (None, args),
    };
    let mut cargo_args: Vec<String> = vec!["test".into(), "--workspace".into()];
    match tier {
        None => {}
        Some("unit") => cargo_args.extend(["--lib".into(), "--bins".into()]),
        Some(name) => {
            let Some((_, _, files)) = TIERS.iter().find(|t| t.0 == name) else {
                let names: Vec<String> =
                    TIERS.iter().map(|t| format!("{} ({})", t.0, t.1)).collect();
                bail!("no test tier {name:?}; tiers: {}", names.join(", "));
            };
            for f in *files {
                cargo_args.extend(["--test".into(), f.to_string()]);
            }
        }
    }
    deps()?;
    let mut cmd = cargo();
    cmd.current_dir(top()).args(&cargo_args).args(extra);
    if tier != Some("unit") {
        let fx = fixtures::build(&top())?;
        let distro = distro::build(&top())?;
        let agent = agent::build(&top(), false)?;
        cmd.env("HOSTFORGE_FIXTURES", &fx)
            .env("HOSTFORGE_DISTRO", &distro)
            .env("HOSTFORGE_AGENT_REPO", &agent);
    }
    if tier.is_none() || tier == Some("net") {
        // The container image of the debug build (the one the other tests run).
        run(cargo()
            .current_dir(top())
            .args(["build", "--bin", "hostforge"]))?;
        container::build(
            &top(),
            &top().join("target/debug/hostforge"),
            CONTAINER_TEST_TAG,
        )?;
        cmd.env("HOSTFORGE_CONTAINER_IMAGE", CONTAINER_TEST_TAG);
    }
    run(&mut cmd)
}

/// The container image `cargo xtask test` builds for tests/container.rs.
const CONTAINER_TEST_TAG: &str = "localhost/hostforge:test";

fn build_release() -> Result<PathBuf> {
    run(cargo()
        .current_dir(top())
        .args(["build", "--release", "--bin", "hostforge"]))?;
    Ok(top().join("target/release/hostforge"))
}

/// Writes a treefile directory for the fixture distro: the example treefile and a .repo file
/// pointing at the built fixture repos.
fn demo_dir(fx: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(
        top().join("treefiles/fixture.yaml"),
        dir.join("fixture.yaml"),
    )?;
    std::fs::write(
        dir.join("fixture.repo"),
        format!(
            "[fixture-base]\nname=hostforge fixture base\nbaseurl=file://{}\ngpgcheck=0\n",
            fx.join("base").display()
        ),
    )?;
    Ok(dir.join("fixture.yaml"))
}

fn demo() -> Result<()> {
    deps()?;
    let fx = fixtures::build(&top())?;
    let distro = distro::build(&top())?;
    let bin = build_release()?;
    let work = top().join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    let treefile = demo_dir(&fx, &work.join("treefiles"))?;
    let node = distro::node_treefile(&top(), &distro, &work.join("treefiles"))?;
    follow::quick_agent(&node)?;
    let (gnupg, key, public) = follow::throwaway_key(&work)?;
    let repo = work.join("repo");
    run(&mut bench::ostree_init(&repo))?;
    let compose = |tf: &Path, json: &str, sign: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(["compose", "tree", "--repo"])
            .arg(&repo)
            .arg("--cachedir")
            .arg(work.join("cache"))
            .arg("--write-composejson-to")
            .arg(work.join(json));
        if sign {
            cmd.args(["--gpg-sign", &key, "--gpg-homedir"])
                .arg(&gnupg)
                .arg("--static-delta");
        }
        run(cmd.arg(tf))
    };
    eprintln!("== the synthetic fixture node");
    compose(&treefile, "fixture.json", false)?;
    eprintln!("== again: nothing changed");
    compose(&treefile, "fixture.json", false)?;
    eprintln!(
        "== the bootable node of the fixture distro (kernel, systemd, dracut initramfs, the \
         update agent), signed with a throwaway key"
    );
    compose(&node, "node.json", true)?;
    for r in ["hostforge/x86_64/fixture", "hostforge/x86_64/node"] {
        run(Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["log", r]))?;
    }
    let server = follow::Server::start(&repo)?;
    eprintln!(
        "== a bootable qcow2 of the node (images/qemu.yaml), following the repo served at \
         http://127.0.0.1:{} (10.0.2.2 from the guest) and trusting only that key",
        server.1
    );
    let disk = work.join("node.qcow2");
    // Somebody can log in: root's password comes from the first-boot config.
    let first_boot = work.join("first-boot.yaml");
    std::fs::write(
        &first_boot,
        format!(
            "# `openssl passwd -6 {DEMO_PASSWORD}`\nroot-password-hash: \"{DEMO_HASH}\"\n\
             network: {{hostname: hostforge-demo}}\n"
        ),
    )?;
    run(Command::new(&bin)
        .args(["image", "build", "--first-boot"])
        .arg(&first_boot)
        .arg("--repo")
        .arg(&repo)
        .args(["--ref", "hostforge/x86_64/node", "--layout"])
        .arg(top().join("images/qemu.yaml"))
        .arg("-o")
        .arg(&disk)
        .args(["--remote-url", &format!("http://10.0.2.2:{}", server.1)])
        .arg("--remote-gpg-key")
        .arg(&public))?;
    eprintln!("== boot it (QEMU, TCG), publish a new commit, watch the node follow");
    let first = bench::rev_parse(&repo, "hostforge/x86_64/node")?;
    let mut vm = follow::Node::boot(&disk, &work.join("node-console.log"))?;
    vm.wait_for(&format!("hostforge-booted: {first}"), 600)?;
    eprintln!("   node booted {first}");
    let tf = std::fs::read_to_string(&node)?;
    std::fs::write(
        &node,
        format!("{tf}  - echo 'published after the first boot' > /usr/share/hostforge-demo\n"),
    )?;
    compose(&node, "node.json", true)?;
    let second = bench::rev_parse(&repo, "hostforge/x86_64/node")?;
    eprintln!("   published {second}");
    vm.wait_for(&format!("hostforge-booted: {second}"), 900)?;
    eprintln!("   node rebooted into {second} by itself");
    drop(vm);
    drop(server);
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&gnupg)
        .args(["--kill", "gpg-agent"])
        .status();
    eprintln!("== the debug toolbox image, as an OCI layout (treefiles/toolbox.yaml)");
    let oci = work.join("toolbox-oci");
    run(Command::new(&bin)
        .args(["toolbox", "build", "--quiet"])
        .arg(work.join("treefiles/toolbox.yaml"))
        .args(["--tag", "localhost/hostforge/toolbox:demo", "--oci-dir"])
        .arg(&oci)
        .arg("--cachedir")
        .arg(work.join("cache")))?;
    eprintln!(
        "repo: {}\ncompose.json: {} and {}\ndisk image: {} (boot it: qemu-system-x86_64 -m 1024 \
         -nographic -drive file={},if=virtio; log in on the console as root, password \
         {DEMO_PASSWORD}, set by {})\nits console while it followed the repo: {}\n\
         toolbox: {}",
        repo.display(),
        work.join("fixture.json").display(),
        work.join("node.json").display(),
        disk.display(),
        disk.display(),
        first_boot.display(),
        work.join("node-console.log").display(),
        oci.display()
    );
    Ok(())
}

/// The demo node's root password, and its hash (`openssl passwd -6 -salt hostforgedemo`).
const DEMO_PASSWORD: &str = "hostforge";
const DEMO_HASH: &str =
    "$6$hostforgedemo$8dbB5YaUH4GBEvyyK3gr3OZ2eR.cRTr7geHSelQ982lb1IQM3bmYeB/JKKwvHFiilMQN5RLlwRd83hRDvVPj..";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("deps") => deps(),
        Some("fixtures") => {
            deps()?;
            println!("{}", fixtures::build(&top())?.display());
            println!("{}", distro::build(&top())?.display());
            println!("{}", agent::build(&top(), false)?.display());
            Ok(())
        }
        Some("test") => test(&args[1..]),
        // The QEMU boot tier alone (`cargo xtask test` runs it with everything else).
        Some("boot-test") => {
            let mut a = vec!["--tier".to_string(), "boot".to_string()];
            a.extend(args[1..].iter().cloned());
            test(&a)
        }
        Some("demo") => demo(),
        // `cargo xtask container [--tag TAG]`: the release build as a container image.
        Some("container") => {
            let tag = match &args[1..] {
                [] => container::DEFAULT_TAG.to_string(),
                [flag, tag] if flag == "--tag" => tag.clone(),
                _ => bail!("usage: cargo xtask container [--tag TAG]"),
            };
            deps()?;
            let bin = build_release()?;
            container::build(&top(), &bin, &tag)?;
            Ok(())
        }
        Some("docs") => {
            run(cargo().current_dir(top()).args(["build", "--bins"]))?;
            clidocs::generate(&top(), &top().join("target/debug"))
        }
        // `cargo xtask install [--prefix P] [--destdir D]`: release binaries, man pages and
        // completions under D/P (default /usr/local).
        Some("install") => {
            let (mut prefix, mut destdir) = (PathBuf::from("/usr/local"), PathBuf::from("/"));
            let mut rest = args[1..].iter();
            while let Some(a) = rest.next() {
                let value = rest.next().map(PathBuf::from);
                match (a.as_str(), value) {
                    ("--prefix", Some(v)) => prefix = v,
                    ("--destdir", Some(v)) => destdir = v,
                    _ => bail!("usage: cargo xtask install [--prefix PATH] [--destdir PATH]"),
                }
            }
            run(cargo()
                .current_dir(top())
                .args(["build", "--release", "--bins"]))?;
            let root = destdir.join(prefix.strip_prefix("/").unwrap_or(&prefix));
            for f in clidocs::install(&top(), &top().join("target/release"), &root)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("compose") => {
                deps()?;
                fixtures::build(&top())?;
                let bin = build_release()?;
                bench::compose(&top(), &bin)
            }
            Some("node") => {
                deps()?;
                let bin = build_release()?;
                bench::node(&top(), &bin)
            }
            Some("image") => {
                deps()?;
                let bin = build_release()?;
                bench::image(&top(), &bin)
            }
            Some("delta") => {
                deps()?;
                let bin = build_release()?;
                bench::delta(&top(), &bin)
            }
            Some("install") => {
                deps()?;
                let bin = build_release()?;
                bench::install(&top(), &bin)
            }
            // Every benchmark with a target, one after the other (install, which has none and
            // boots QEMU, runs alone).
            None | Some("all") => {
                deps()?;
                fixtures::build(&top())?;
                let bin = build_release()?;
                bench::compose(&top(), &bin)?;
                bench::node(&top(), &bin)?;
                bench::image(&top(), &bin)?;
                bench::delta(&top(), &bin)
            }
            _ => bail!("usage: cargo xtask bench [all|compose|node|image|delta|install]"),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <deps|fixtures|test [--tier unit|compose|image|boot|net]|\
                 boot-test|demo|container [--tag T]|docs|install [--prefix P] [--destdir D]|bench [all|compose|node|image|delta|install]>"
            );
            Ok(())
        }
    }
}
