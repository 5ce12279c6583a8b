//! hostforge as a container image for CI (`cargo xtask container`; `cargo xtask test` builds
//! one from the debug build as localhost/hostforge:test): `compose tree` and `image build` run
//! in `podman run` with the privileges README.md documents and give the same tree and the
//! same disk as on the host; without each of those privileges the compose fails, names what
//! to pass, and moves no ref.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output};

/// What `compose tree` needs in a container, as README.md documents it: FUSE and the right to
/// mount (rofiles-fuse protects the package cache while scripts run), and a /proc that
/// bubblewrap may mount afresh for the scripts' sandbox. `image build` needs none of them.
const COMPOSE_PRIVILEGES: &[&str] = &[
    "--device",
    "/dev/fuse",
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "unmask=/proc/*",
];

/// What this CI machine needs on top, whatever the image: it is itself a sandbox without
/// CAP_SYS_RESOURCE (crun and runc cannot raise rlimits to podman's defaults) and with a
/// hybrid cgroup layout that crun refuses; runc, with limits below the machine's own, works.
const MACHINE_QUIRKS: &[&str] = &[
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=8192:8192",
];

fn image() -> String {
    std::env::var("HOSTFORGE_CONTAINER_IMAGE")
        .expect("HOSTFORGE_CONTAINER_IMAGE is unset: run the tests with `cargo xtask test`")
}

/// `podman run` of the hostforge image with `privileges`, the directories `mounts` at the same
/// paths inside (read-write), and `args` for hostforge.
fn in_container(mounts: &[&Path], privileges: &[&str], args: &[&str]) -> Output {
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm"])
        .args(MACHINE_QUIRKS)
        .args(privileges)
        .args(["--env", "SOURCE_DATE_EPOCH=1700000000"]);
    for m in mounts {
        cmd.arg("--volume")
            .arg(format!("{}:{}", m.display(), m.display()));
    }
    cmd.arg(image()).args(args).output().unwrap()
}

#[test]
fn compose_and_image_build_run_in_the_container() {
    let (host_repo, _) = composed_node();
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tf = top.join("target/test-node/tf");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ostree_at(&repo, &["init", "--mode=archive"]);
    let cache = dir.path().join("cache");
    let (distro, agent) = (distro(), agent_repo());
    let mounts: [&Path; 4] = [&tf, &distro, &agent, dir.path()];
    let compose = |privileges: &[&str]| {
        in_container(
            &mounts,
            privileges,
            &[
                "compose",
                "tree",
                "--repo",
                repo.to_str().unwrap(),
                "--cachedir",
                cache.to_str().unwrap(),
                tf.join("node.yaml").to_str().unwrap(),
            ],
        )
    };

    // Each documented privilege is needed: without it the compose stops and says what to pass.
    let without = |skip: &str| -> Vec<&str> {
        let mut kept = Vec::new();
        for pair in COMPOSE_PRIVILEGES.chunks(2) {
            if pair[1] != skip {
                kept.extend_from_slice(pair);
            }
        }
        kept
    };
    for (skip, says) in [
        ("/dev/fuse", "--device /dev/fuse --cap-add SYS_ADMIN"),
        ("SYS_ADMIN", "--device /dev/fuse --cap-add SYS_ADMIN"),
        ("unmask=/proc/*", "--security-opt unmask=/proc/*"),
    ] {
        let out = compose(&without(skip));
        assert_fails_with(&out, &[says]);
        assert_eq!(
            ostree_at(&repo, &["refs"]).trim(),
            "",
            "a failed compose (without {skip}) moved a ref"
        );
    }

    // With them: the tree the host composes from the same treefile, byte for byte (the
    // commits differ in their parent and version, as the host's repo has history).
    let out = compose(COMPOSE_PRIVILEGES);
    assert_ok(&out);
    let tree = |repo: &Path| ostree_at(repo, &["ls", "-C", "-d", "hostforge/x86_64/node", "/"]);
    assert_eq!(tree(&repo), tree(&host_repo), "{}", stderr(&out));

    // image build with no privileges at all: the disk the host builds from the same commit.
    let layouts = top.join("images");
    let disk = dir.path().join("node.raw");
    let out = in_container(
        &[dir.path(), &layouts],
        &[],
        &[
            "image",
            "build",
            "--repo",
            repo.to_str().unwrap(),
            "--ref",
            "hostforge/x86_64/node",
            "--layout",
            layouts.join("qemu.yaml").to_str().unwrap(),
            "--format",
            "raw",
            "-o",
            disk.to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    let host_disk = dir.path().join("host.raw");
    assert_ok(
        &image_build_cmd(
            &repo,
            "hostforge/x86_64/node",
            "qemu.yaml",
            "raw",
            &host_disk,
            None,
        )
        .output()
        .unwrap(),
    );
    let same = Command::new("cmp")
        .arg("-l")
        .arg(&disk)
        .arg(&host_disk)
        .output()
        .unwrap();
    let differ: Vec<String> = String::from_utf8_lossy(&same.stdout)
        .lines()
        .take(10)
        .map(str::to_string)
        .collect();
    assert!(
        same.status.success(),
        "the container built another disk than the host (bytes that differ, first ten: {differ:?}) {}",
        stderr(&same)
    );
    unlock_tree(dir.path());
}

/// The example pipelines in examples/ci/ pass their schemas (GitHub's and GitLab's, through
/// check-jsonschema) and Tekton's linter (tekton-lint), and pass the compose the privileges
/// the test above shows it needs.
#[test]
fn ci_examples_pass_their_schemas_and_linters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci");
    for (file, schema) in [
        ("github-actions.yml", "vendor.github-workflows"),
        ("gitlab-ci.yml", "vendor.gitlab-ci"),
    ] {
        let out = Command::new("check-jsonschema")
            .args(["--builtin-schema", schema])
            .arg(dir.join(file))
            .output()
            .expect("check-jsonschema (cargo xtask deps installs it)");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
    let out = Command::new("tekton-lint")
        .args(["--format", "json"])
        .arg(dir.join("tekton-task.yaml"))
        .output()
        .expect("tekton-lint (cargo xtask deps installs it)");
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tekton-lint printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    assert!(
        out.status.success() && problems == serde_json::json!([]),
        "tekton-task.yaml: {problems:#}"
    );

    // The privileges: the flags themselves in GitHub's, the runner's settings in GitLab's,
    // a privileged compose step (and an unprivileged image step) in Tekton's.
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let flags = COMPOSE_PRIVILEGES
        .chunks(2)
        .map(|p| format!("{}={}", p[0], p[1]))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        text("github-actions.yml").contains(&format!("COMPOSE_PRIVILEGES: {flags}")),
        "github-actions.yml does not pass {flags}"
    );
    let gitlab = text("gitlab-ci.yml");
    for want in [
        "devices = [\"/dev/fuse\"]",
        "cap_add = [\"SYS_ADMIN\"]",
        "systempaths=unconfined",
    ] {
        assert!(gitlab.contains(want), "gitlab-ci.yml lacks {want}");
    }
    assert_eq!(
        text("tekton-task.yaml").matches("privileged: true").count(),
        1
    );
}
