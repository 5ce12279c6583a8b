//! Toolbox tier: treefiles/toolbox.yaml composed from the fixture distro, built into an OCI
//! image by buildah, pushed to Debian's docker-registry on loopback, checked with skopeo, and
//! pulled by the node's `toolbox` script (the one node.yaml installs as /usr/bin/toolbox), run
//! here on the build host; the boot tier runs it on a booted node.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The package cache shared by this binary's tests (the compose is the slow part).
fn cachedir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-toolbox/cache")
}

/// Builds share the cache's buildah storage, which one test empties: one build at a time.
static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn toolbox_build(tf: &Path, tag: &str, extra: &[&str], path: Option<&str>) -> Output {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    toolbox_build_unlocked(tf, tag, extra, path)
}

fn toolbox_build_unlocked(tf: &Path, tag: &str, extra: &[&str], path: Option<&str>) -> Output {
    let mut cmd = toolbox_build_cmd(tf, tag, &cachedir());
    cmd.args(extra);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

fn skopeo_inspect(reference: &str, config: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if config {
        cmd.arg("--config");
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs the node's toolbox script with its config and a podman storage of its own.
fn node_toolbox(conf: &Path, storage_conf: &Path, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/node/toolbox");
    Command::new("sh")
        .arg(script)
        .args(args)
        .env("TOOLBOX_CONF", conf)
        .env("CONTAINERS_STORAGE_CONF", storage_conf)
        .output()
        .unwrap()
}

#[test]
fn toolbox_builds_pushes_reproducibly_and_nodes_pull_on_demand() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tf = toolbox_treefile(dir.path());
    let tag = format!("{}/hostforge/toolbox:1", reg.host());
    let oci = dir.path().join("oci");
    let out = toolbox_build(
        &tf,
        &tag,
        &[
            "--push",
            "--tls-verify=false",
            "--oci-dir",
            oci.to_str().unwrap(),
        ],
        None,
    );
    assert_ok(&out);
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = built["digest"].as_str().unwrap().to_string();
    let commit = built["commit"].as_str().unwrap().to_string();

    // What the registry holds: the digest we printed, our labels, one layer.
    let info = skopeo_inspect(&tag, false);
    assert_eq!(info["Digest"], digest.as_str(), "{info}");
    assert_eq!(info["Labels"]["com.github.containers.toolbox"], "true");
    assert_eq!(info["Labels"]["io.hostforge.commit"], commit.as_str());
    assert_eq!(
        info["Labels"]["org.opencontainers.image.revision"],
        commit.as_str()
    );
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1, "{info}");
    assert_eq!(info["Created"], "2023-11-14T22:13:20Z");
    let config = skopeo_inspect(&tag, true);
    assert_eq!(
        config["config"]["Entrypoint"][0], "/usr/bin/env",
        "{config}"
    );
    assert!(config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str().unwrap().starts_with("PATH=")));

    // The layer is the container root: the debug tools, the rpmdb, no kernel, no docs.
    let blob = info["Layers"][0].as_str().unwrap().replace("sha256:", "");
    let layer = oci.join("blobs/sha256").join(&blob);
    assert!(layer.exists(), "the OCI layout has the same layer");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    assert_ok(&listing);
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "usr/bin/strace",
        "usr/bin/tcpdump",
        "bin/ip",
        "usr/bin/lsof",
        "usr/bin/ps",
        "usr/share/rpm/rpmdb.sqlite",
        "var/lib/rpm",
        "etc/passwd",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_start_matches("./").ends_with(want)),
            "{want} missing from the layer"
        );
    }
    assert!(!listing.contains("usr/share/doc/"), "docs are dropped");
    assert!(!listing.contains("usr/lib/modules/"), "no kernel");
    assert!(
        !listing.contains("usr/etc/"),
        "/etc stays /etc in a container"
    );
    assert!(oci.join("index.json").exists());

    // Built again from scratch storage: the same digest.
    let again = {
        // (Not while another test's build writes into that storage.)
        let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::remove_dir_all(cachedir().join("toolbox/storage")).unwrap();
        toolbox_build_unlocked(&tf, &tag, &["--push", "--tls-verify=false"], None)
    };
    assert_ok(&again);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["digest"],
        digest.as_str(),
        "the build is not reproducible"
    );

    // The node side: the first call pulls, the second finds the image current.
    let conf = dir.path().join("toolbox.conf");
    std::fs::write(
        &conf,
        format!(
            "# test\nregistry = {}\nimage=hostforge/toolbox:1\ntls-verify=false\n",
            reg.host()
        ),
    )
    .unwrap();
    let storage = dir.path().join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.path().join("podman/graph").display(),
            dir.path().join("podman/run").display()
        ),
    )
    .unwrap();
    let first = node_toolbox(&conf, &storage, &["pull"]);
    assert_ok(&first);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("pulling") && err.contains(&digest), "{err}");
    let local = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Digest}}", &tag])
        .env("CONTAINERS_STORAGE_CONF", &storage)
        .output()
        .unwrap();
    assert_ok(&local);
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim(), digest);
    let second = node_toolbox(&conf, &storage, &["pull"]);
    assert_ok(&second);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("up to date") && !err.contains("pulling"),
        "{err}"
    );

    // A new image under the tag (here: the same layers under a Docker v2 manifest, so a new
    // digest) is pulled again.
    let newer = retag_as_docker_v2(&tag);
    assert_ne!(newer, digest);
    let third = node_toolbox(&conf, &storage, &["pull"]);
    assert_ok(&third);
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("pulling") && err.contains(&newer), "{err}");

    // What `toolbox CMD` runs. (It runs on a booted node in the boot tier,
    // `installs_onto_a_blank_disk_and_boots_with_its_first_boot_config`; not here, where crun
    // cannot set rlimits without CAP_SYS_RESOURCE and refuses the hybrid cgroup layout.)
    let print = node_toolbox(&conf, &storage, &["--print", "tcpdump", "-i", "any"]);
    assert_ok(&print);
    let line = String::from_utf8_lossy(&print.stdout);
    for want in [
        "podman run",
        "--privileged",
        "--net=host",
        "--pid=host",
        "--ipc=host",
        "-v /:/host",
        &tag,
        "tcpdump -i any",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
}

#[test]
fn toolbox_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let tf = toolbox_treefile(dir.path());

    // A bad tag is refused before anything is built.
    let out = toolbox_build(&tf, "Toolbox:1", &["--push"], None);
    assert_fails_with(&out, &["--tag", "registry"]);
    // Nothing to deliver to.
    let out = toolbox_build(&tf, "127.0.0.1:5000/toolbox:1", &[], None);
    assert_fails_with(&out, &["--push", "--oci-dir"]);
    // No buildah.
    let out = toolbox_build(
        &tf,
        "127.0.0.1:5000/toolbox:1",
        &["--push"],
        Some("/nonexistent"),
    );
    assert_fails_with(
        &out,
        &["buildah is not installed", "apt-get install buildah"],
    );
    // The registry is down: the compose and the build happen, the push names the registry.
    let port = free_port();
    let tag = format!("127.0.0.1:{port}/hostforge/toolbox:1");
    let out = toolbox_build(&tf, &tag, &["--push", "--tls-verify=false"], None);
    assert_fails_with(&out, &[&format!("127.0.0.1:{port}"), "reachable"]);

    // A treefile that is not a container.
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/fixture.yaml");
    let out = toolbox_build(&node, &tag, &["--push"], None);
    assert_fails_with(&out, &["container: true"]);

    // The node script: no config, a config without a registry, a registry that is down.
    let storage = dir.path().join("storage.conf");
    std::fs::write(&storage, "").unwrap();
    let conf = dir.path().join("toolbox.conf");
    let out = node_toolbox(&conf, &storage, &["pull"]);
    assert_fails_with(&out, &["cannot read", "toolbox.conf"]);
    std::fs::write(&conf, "image=hostforge/toolbox:1\n").unwrap();
    let out = node_toolbox(&conf, &storage, &["pull"]);
    assert_fails_with(&out, &["toolbox.conf", "registry="]);
    std::fs::write(
        &conf,
        format!("registry=127.0.0.1:{port}\nimage=hostforge/toolbox:1\ntls-verify=false\n"),
    )
    .unwrap();
    let out = node_toolbox(&conf, &storage, &["pull"]);
    assert_fails_with(&out, &["cannot read", &format!("127.0.0.1:{port}")]);
}

/// The node image ships the `toolbox` command and its config.
#[test]
fn node_image_ships_the_toolbox_command() {
    let (repo, _) = composed_node();
    let ls = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args([
            "ls",
            "hostforge/x86_64/node",
            "/usr/bin/toolbox",
            "/usr/etc/hostforge/toolbox.conf",
            "/usr/sbin/grub-mkconfig",
        ])
        .output()
        .unwrap();
    assert_ok(&ls);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("/usr/bin/toolbox") && ls.contains("-00755"),
        "{ls}"
    );
    assert!(ls.contains("/usr/etc/hostforge/toolbox.conf"), "{ls}");
    assert!(ls.contains("/usr/sbin/grub-mkconfig"), "{ls}");
}
