//! Integration tests: the built `hostforge` binary composes the fixture repos; results are
//! checked with ostree, rpm and the files a user would look at.

mod common;
use common::*;

#[test]
fn composes_fixture_node_into_a_valid_commit() {
    let env = Env::new();
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}units: [app.service]\ndefault-target: multi-user.target\nadd-commit-metadata:\n  team: platform\n"),
    );
    let out = env.compose(&tf, &["--add-metadata-string", "build=42"]);
    assert_ok(&out);
    let commit = env.rev("test/node").expect("ref written");
    env.ostree(&["fsck"]);

    // Exactly the resolved set is in the rpmdb, dependencies included.
    let co = env.checkout("test/node");
    let rpm = std::process::Command::new("rpm")
        .arg("-qa")
        .arg("--dbpath")
        .arg(co.join("usr/share/rpm"))
        .output()
        .unwrap();
    let mut listed: Vec<String> = String::from_utf8_lossy(&rpm.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "app-1.0-1.x86_64",
            "app-extras-1.0-1.noarch",
            "busybox-1.35.0-1.x86_64",
            "config-tool-2.0-1.noarch",
            "filesystem-1.0-1.noarch",
            "libfoo-1.2-1.x86_64",
            "setup-2.14-1.noarch",
            "triggerer-1.0-1.noarch"
        ]
    );

    // Modes, owners, capabilities, symlinks and hardlinks as the RPMs declare them.
    let ls = env.ostree(&[
        "ls",
        "-X",
        "test/node",
        "/usr/bin/app-su",
        "/usr/bin/app-ping",
        "/usr/share/app/owned",
        "/usr/bin/app-link",
    ]);
    assert!(ls.contains("-04755 0 0"), "{ls}");
    assert!(ls.contains("security.capability"), "{ls}");
    assert!(ls.contains("-00644 990 990"), "{ls}");
    // The package cache's bookkeeping xattr (bare-user) never reaches the commit.
    assert!(!ls.contains("ostreemeta"), "{ls}");
    assert!(ls.contains("/usr/bin/app-link -> app"), "{ls}");
    let ls = env.ostree(&[
        "ls",
        "-C",
        "test/node",
        "/usr/share/app/hard-a",
        "/usr/share/app/hard-b",
    ]);
    let sums: Vec<&str> = ls
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(sums[0], sums[1], "{ls}");

    // Scriptlets ran in the root, in order, with their arguments.
    assert_eq!(
        std::fs::read_to_string(co.join("usr/share/app/post-marker")).unwrap(),
        "post ran with 1\n"
    );
    assert!(co.join("usr/share/app/posttrans-marker").exists());
    let seen = std::fs::read_to_string(co.join("usr/share/triggerer/seen")).unwrap();
    assert!(seen.contains("/usr/lib64/libfoo.so.1.2"), "{seen}");
    assert!(std::fs::read_to_string(co.join("usr/etc/passwd"))
        .unwrap()
        .contains("appuser:x:990"));

    // The ostree layout: /etc in /usr/etc, /var empty with tmpfiles.d entries.
    assert!(!co.join("etc").exists());
    assert!(co.join("usr/etc/app.conf").exists());
    assert_eq!(std::fs::read_dir(co.join("var")).unwrap().count(), 0);
    let tmpfiles = std::fs::read_to_string(co.join("usr/lib/tmpfiles.d/pkg-app.conf")).unwrap();
    assert!(
        tmpfiles.contains("d /var/lib/app 0750 root root"),
        "{tmpfiles}"
    );
    assert!(tmpfiles.contains("C /var/lib/app/seed.db"), "{tmpfiles}");
    assert!(co.join("usr/share/factory/var/lib/app/seed.db").exists());
    assert_eq!(
        std::fs::read_link(co.join("home")).unwrap().to_str(),
        Some("var/home")
    );
    assert_eq!(
        std::fs::read_link(co.join("usr/etc/systemd/system/multi-user.target.wants/app.service"))
            .unwrap()
            .to_str(),
        Some("/usr/lib/systemd/system/app.service")
    );
    assert!(co
        .join("usr/etc/systemd/system/default.target")
        .is_symlink());
    let flat = std::fs::read_to_string(co.join("usr/share/hostforge/treefile.json")).unwrap();
    assert!(flat.contains("\"ref\": \"test/node\""), "{flat}");

    // Commit metadata and compose.json.
    let show = env.ostree(&["show", "--print-metadata-key=version", "test/node"]);
    assert_eq!(show.trim(), "'1'");
    let team = env.ostree(&["show", "--print-metadata-key=team", "test/node"]);
    assert_eq!(team.trim(), "'platform'");
    let build = env.ostree(&["show", "--print-metadata-key=build", "test/node"]);
    assert_eq!(build.trim(), "'42'");
    let j = env.json();
    assert_eq!(j["commit"], commit.as_str());
    assert_eq!(j["changed"], true);
    assert_eq!(j["packages"]["total"], 8);
    assert!(j["seconds"]["commit"].is_number());
    assert_eq!(j["downloaded"], 8);
}

#[test]
fn unchanged_inputs_skip_all_work() {
    let env = Env::new();
    let tf = env.treefile("node.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    let first = env.rev("test/node").unwrap();
    let out = env.compose(&tf, &[]);
    assert_ok(&out);
    assert!(stderr(&out).contains("no changes"), "{}", stderr(&out));
    assert_eq!(env.rev("test/node").unwrap(), first);
    let j = env.json();
    assert_eq!(j["changed"], false);
    assert_eq!(j["commit"], first.as_str());
    // Every step after the input hash was skipped.
    assert!(j["seconds"].get("fetch").is_none(), "{j}");

    // A changed input composes again, with the old commit as parent and the version bumped.
    let tf2 = env.treefile(
        "node.yaml",
        &format!("{GOOD}remove-files: [usr/share/app/extras]\n"),
    );
    assert_ok(&env.compose(&tf2, &[]));
    let j = env.json();
    assert_eq!(j["changed"], true);
    assert_eq!(j["parent"], first.as_str());
    assert_eq!(j["version"], "1.1");
    assert_eq!(j["cache_hits"], 8);
    assert_eq!(j["downloaded"], 0);
}

#[test]
fn same_inputs_give_the_same_commit_from_cold_and_warm_caches() {
    let a = Env::new();
    let b = Env::new();
    let tf_a = a.treefile("node.yaml", GOOD);
    let tf_b = b.treefile("node.yaml", GOOD);
    assert_ok(&a.compose(&tf_a, &[]));
    assert_ok(&b.compose(&tf_b, &[]));
    let ca = a.rev("test/node").unwrap();
    assert_eq!(ca, b.rev("test/node").unwrap());
    // Warm cache, fresh target repo: still the same checksum.
    let repo2 = a.path().join("repo2");
    common::ostree_at(&repo2, &["init", "--mode=bare-user"]);
    let out = hostforge_cmd()
        .args(["compose", "tree", "--repo"])
        .arg(&repo2)
        .arg("--cachedir")
        .arg(a.cache())
        .arg(&tf_a)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(
        common::ostree_at(&repo2, &["rev-parse", "test/node"]).trim(),
        ca
    );
}

/// With no room in /dev/shm (a small tmpfs there, in a mount namespace of the compose's own),
/// the rpmdb is written again on disk, the run says so, and the commit is the one a compose
/// with room makes.
#[test]
fn an_rpmdb_that_does_not_fit_in_dev_shm_is_written_on_disk() {
    let (roomy, full) = (Env::new(), Env::new());
    let tf = roomy.treefile("node.yaml", GOOD);
    assert_ok(&roomy.compose(&tf, &[]));
    let tf = full.treefile("node.yaml", GOOD);
    let compose = full.compose_cmd(&tf, &[]);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=4k hostforge-test /dev/shm && exec \"$@\"")
        .arg("sh")
        .arg(compose.get_program())
        .args(compose.get_args());
    for (k, v) in compose.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("the rpmdb did not fit in /dev/shm/hostforge-rpmdb-"),
        "{err}"
    );
    assert_eq!(full.rev("test/node"), roomy.rev("test/node"));
}

#[test]
fn dry_run_prints_the_package_set_and_writes_nothing() {
    let env = Env::new();
    let tf = env.treefile("node.yaml", GOOD);
    let out = env.compose(&tf, &["--dry-run"]);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("libfoo-1.2-1.x86_64"), "{stdout}");
    assert!(stdout.contains("config-tool-2.0-1.noarch"), "{stdout}");
    assert_eq!(env.rev("test/node"), None);
    assert!(!env.cache().join("repo/refs/heads/hostforge/pkg").exists());
}

#[test]
fn treefile_options_shape_the_tree() {
    let env = Env::new();
    std::fs::write(env.path().join("tf/motd"), "hello node\n").unwrap();
    std::fs::write(
        env.path().join("tf/post.sh"),
        "#!/bin/sh\necho from-script > /usr/share/post-script\n",
    )
    .unwrap();
    let tf = env.treefile(
        "node.yaml",
        "ref: test/opts\nrepos: [base]\nselinux: false\npackages: [filesystem busybox setup, app, config-tool-1.0]\n\
         recommends: false\ndocumentation: false\ninstall-langs: [de]\n\
         remove-files: [usr/bin/app-link]\nremove-from-packages: [[app, \"/usr/share/app/hard-.*\"]]\n\
         add-files: [[motd, /etc/motd]]\npostprocess-script: post.sh\n\
         postprocess: [\"echo inline > /usr/share/inline\", \"grep -h OSTREE_VERSION /usr/lib/os-release > /usr/share/saw-version; cat /etc/motd > /usr/share/saw-motd; test ! -e /usr/bin/app-link && echo gone > /usr/share/saw-removed\"]\ntmp-is-dir: true\n\
         mutate-os-release: \"1 (Anvil)\"\nautomatic-version-prefix: \"7\"\n\
         opt-usrlocal: root\ncontainer-cmd: [/usr/bin/sh, -l]\n",
    );
    assert_ok(&env.compose(&tf, &[]));
    let co = env.checkout("test/opts");
    assert!(
        !co.join("usr/share/app/extras").exists(),
        "recommends: false"
    );
    assert!(
        !co.join("usr/share/doc/app/README").exists(),
        "documentation: false"
    );
    assert!(co.join("usr/share/locale/de/LC_MESSAGES/app.mo").exists());
    assert!(!co.join("usr/share/locale/fr/LC_MESSAGES/app.mo").exists());
    assert!(!co.join("usr/bin/app-link").exists());
    assert!(!co.join("usr/share/app/hard-a").exists());
    assert_eq!(
        std::fs::read_to_string(co.join("usr/etc/motd")).unwrap(),
        "hello node\n"
    );
    assert!(co.join("usr/share/post-script").exists());
    assert!(co.join("usr/share/inline").exists());
    assert!(co.join("tmp").is_dir() && !co.join("tmp").is_symlink());
    assert!(std::fs::read_to_string(co.join("usr/bin/config-tool"))
        .unwrap()
        .contains("one"));
    let osr = std::fs::read_to_string(co.join("usr/lib/os-release")).unwrap();
    assert!(
        osr.contains("VERSION=\"7\"") && osr.contains("OSTREE_VERSION='7'"),
        "{osr}"
    );
    // Postprocess runs last, as in rpm-ostree: after mutate-os-release, remove-files and
    // add-files, with the tree's /etc at /etc.
    let saw = |f: &str| std::fs::read_to_string(co.join("usr/share").join(f)).unwrap();
    assert_eq!(saw("saw-version"), "OSTREE_VERSION='7'\n");
    assert_eq!(saw("saw-motd"), "hello node\n");
    assert_eq!(saw("saw-removed"), "gone\n");
    // opt-usrlocal: root keeps both as directories of the commit.
    for d in ["opt", "usr/local"] {
        let m = std::fs::symlink_metadata(co.join(d)).unwrap();
        assert!(m.is_dir(), "{d} is not a directory");
    }
    let cmd = env.ostree(&[
        "show",
        "--print-metadata-key=ostree.container-cmd",
        "test/opts",
    ]);
    assert_eq!(cmd.trim(), "['/usr/bin/sh', '-l']");
    // rpm-ostree's record of the repos, inline by default, detached when asked.
    let repos = env.ostree(&[
        "show",
        "--print-metadata-key=rpmostree.rpmmd-repos",
        "test/opts",
    ]);
    assert!(
        repos.contains("'id': <'base'>") && repos.contains("'timestamp': <uint64 "),
        "{repos}"
    );
    let tf = env.treefile(
        "det.yaml",
        &(GOOD.replace("ref: test/node", "ref: test/det") + "repo-metadata: detached\n"),
    );
    assert_ok(&env.compose(&tf, &[]));
    let repos = env.ostree(&[
        "show",
        "--print-detached-metadata-key=rpmostree.rpmmd-repos",
        "test/det",
    ]);
    assert!(repos.contains("'id': <'base'>"), "{repos}");
}

#[test]
fn exclude_packages_keeps_a_package_out() {
    let env = Env::new();
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}exclude-packages: [app-extras]\n"),
    );
    assert_ok(&env.compose(&tf, &[]));
    let co = env.checkout("test/node");
    assert!(!co.join("usr/share/app/extras").exists());
    let tf = env.treefile(
        "x.yaml",
        "ref: test/x\nrepos: [base]\nselinux: false\npackages: [app-extras]\nexclude-packages: [app-extras]\n",
    );
    let out = env.compose(&tf, &[]);
    assert_fails_with(&out, &["app-extras", "exclude-packages"]);
}

#[test]
fn package_version_change_is_reported() {
    let env = Env::new();
    let tf = env.treefile(
        "node.yaml",
        &GOOD.replace("triggerer]", "triggerer, config-tool-1.0]"),
    );
    assert_ok(&env.compose(&tf, &[]));
    let tf = env.treefile("node.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    let j = env.json();
    assert_eq!(j["packages"]["changed"][0][0], "config-tool-1.0-1.noarch");
    assert_eq!(j["packages"]["changed"][0][1], "config-tool-2.0-1.noarch");
    assert_eq!(j["downloaded"], 1);
}

#[test]
fn http_repos_are_loaded_and_downloaded() {
    // A real HTTP server on loopback serving the fixture repo.
    let server = Daemon::http(&fixtures().join("base"));
    let port = server.port;
    let env = Env::new();
    std::fs::write(
        env.path().join("tf/fixtures.repo"),
        format!("[web]\nbaseurl=http://127.0.0.1:{port}/\n"),
    )
    .unwrap();
    let tf = env.treefile("node.yaml", &GOOD.replace("[base]", "[web]"));
    let out = env.compose(&tf, &["--json"]);
    drop(server);
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .expect("a JSON summary line");
    assert_eq!(summary["compose"]["downloaded"], 8);
    assert!(
        stdout.lines().any(|l| l.contains("\"step\":\"fetch\"")),
        "{stdout}"
    );
    // The commit step reports its files as it goes: a progress event per tenth, counting up
    // to all of them.
    let commit: Vec<(u64, u64)> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "progress" && v["step"] == "commit")
        .map(|v| (v["done"].as_u64().unwrap(), v["total"].as_u64().unwrap()))
        .collect();
    assert!((2..=10).contains(&commit.len()), "{stdout}");
    assert!(commit.windows(2).all(|w| w[0].0 < w[1].0), "{commit:?}");
    let (done, total) = *commit.last().unwrap();
    assert_eq!(done, total);
    assert!(env.checkout("test/node").join("usr/bin/app").exists());
}

#[test]
fn debian_style_kernel_is_placed_for_ostree() {
    let env = Env::new();
    let tf = env.treefile(
        "k.yaml",
        &format!(
            "{}no-initramfs: true\n",
            GOOD.replace("triggerer]", "triggerer, kernel-deb]")
        ),
    );
    assert_ok(&env.compose(&tf, &[]));
    let co = env.checkout("test/node");
    let kdir = co.join("usr/lib/modules/6.1.0-fx1");
    assert_eq!(
        std::fs::read_to_string(kdir.join("vmlinuz")).unwrap(),
        "fake kernel image 6.1.0-fx1\n"
    );
    assert!(kdir.join("config").exists());
    assert!(kdir.join("modules.dep").exists(), "depmod ran");
    assert!(!co.join("boot/vmlinuz-6.1.0-fx1").exists());
    assert!(!kdir.join("initramfs.img").exists());
    let bootable = env.ostree(&["show", "--print-metadata-key=ostree.bootable", "test/node"]);
    assert_eq!(bootable.trim(), "true");
    let linux = env.ostree(&["show", "--print-metadata-key=ostree.linux", "test/node"]);
    assert_eq!(linux.trim(), "'6.1.0-fx1'");
}

#[test]
fn kernel_without_dracut_is_a_clear_error() {
    let env = Env::new();
    let tf = env.treefile(
        "k.yaml",
        &GOOD.replace("triggerer]", "triggerer, kernel-fed]"),
    );
    let out = env.compose(&tf, &[]);
    assert_fails_with(&out, &["kernel 6.2.0-fx2", "no dracut", "no-initramfs"]);
    assert_eq!(env.rev("test/node"), None);
}

#[test]
fn tree_without_kernel_is_not_bootable() {
    let env = Env::new();
    let tf = env.treefile("n.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    let out = std::process::Command::new("ostree")
        .arg(format!("--repo={}", env.repo().display()))
        .args(["show", "--print-metadata-key=ostree.bootable", "test/node"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a tree without a kernel must not claim to be bootable"
    );
}

/// The public Fedora CoreOS manifest, unchanged with its own repo files beside it, prints
/// as a flattened treefile (the done-when of rpm-ostree compatibility), and touches nothing.
#[test]
fn fedora_coreos_manifest_prints_flattened() {
    let env = Env::new();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/upstream/fedora-coreos-config/manifest.yaml");
    let cwd = env.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let out = hostforge_cmd()
        .current_dir(&cwd)
        .args(["compose", "tree", "--print-only"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_ok(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ref"], "fedora/x86_64/coreos/testing-devel");
    assert_eq!(j["repos"], serde_json::json!(["fedora", "fedora-updates"]));
    assert!(j["packages"].as_array().unwrap().len() > 100);
    assert_eq!(j["container-cmd"], serde_json::json!(["/usr/bin/bash"]));
    assert!(
        std::fs::read_dir(&cwd).unwrap().next().is_none(),
        "--print-only wrote files"
    );
}

/// rpm-ostree's treefile rules: variables substituted in the ref, the version prefix,
/// `mutate-os-release` and string values of `add-commit-metadata`; `<date:FORMAT>`
/// versions with `automatic-version-suffix`; the legacy underscore spellings; and
/// `--print-only`, which prints the flattened treefile without touching any repo.
#[test]
fn variables_dates_and_legacy_spellings_work_as_in_rpm_ostree() {
    let env = Env::new();
    let tf = env.treefile(
        "vars.yaml",
        "ref: test/${stream}\nrepos: [base]\nselinux: false\nvariables:\n  stream: testing\n  osver: \"1 (Anvil)\"\n\
         packages: [filesystem, busybox, setup, app, triggerer]\n\
         automatic_version_prefix: \"${stream}.<date:%Y%m%d>\"\nautomatic-version-suffix: \"-\"\n\
         mutate-os-release: \"${osver}\"\ndefault_target: multi-user.target\n\
         add-commit-metadata:\n  os.stream: \"${stream}\"\n  os.count: 3\n",
    );
    let out = hostforge_cmd()
        .args(["compose", "tree", "--print-only"])
        .arg(&tf)
        .output()
        .unwrap();
    assert_ok(&out);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Substituted at load, as rpm-ostree's --print-only shows them.
    assert_eq!(j["ref"], "test/testing");
    assert_eq!(j["automatic-version-prefix"], "testing.<date:%Y%m%d>");
    assert_eq!(j["default-target"], "multi-user.target");
    assert_eq!(j["add-commit-metadata"]["os.count"], 3);
    assert!(
        !env.path().join("cache").exists(),
        "--print-only made a cachedir"
    );

    // SOURCE_DATE_EPOCH=1700000000 is 2023-11-14 (UTC).
    let tf = env.treefile(
        "vars.yaml",
        &std::fs::read_to_string(&tf)
            .unwrap()
            .replace("default_target: multi-user.target\n", ""),
    );
    assert_ok(&env.compose(&tf, &[]));
    assert_eq!(env.json()["version"], "testing.20231114-0");
    let show = |key: &str| env.ostree(&["show", "--print-metadata-key", key, "test/testing"]);
    assert_eq!(show("os.stream").trim(), "'testing'");
    assert!(show("os.count").contains('3'));
    let osr =
        std::fs::read_to_string(env.checkout("test/testing").join("usr/lib/os-release")).unwrap();
    assert!(osr.contains("VERSION=\"testing.20231114-0\""), "{osr}");
    assert_ok(&env.compose(&tf, &["--force-nocache"]));
    assert_eq!(env.json()["version"], "testing.20231114-1");
}

/// A repo dir beside the env holding the base fixture packages that `keep` accepts.
fn sub_repo(env: &Env, name: &str, keep: impl Fn(&str) -> bool) -> std::path::PathBuf {
    let dir = env.path().join(name);
    std::fs::create_dir_all(dir.join("Packages")).unwrap();
    for e in std::fs::read_dir(fixtures().join("base/Packages")).unwrap() {
        let e = e.unwrap();
        let file = e.file_name().to_string_lossy().into_owned();
        if keep(&file) {
            std::fs::copy(e.path(), dir.join("Packages").join(&file)).unwrap();
        }
    }
    run(std::process::Command::new("createrepo_c")
        .arg("-q")
        .arg(&dir));
    dir
}

/// What `--dry-run` resolved, one NEVRA per line.
fn dry_run(env: &Env, tf: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--dry-run"];
    args.extend(extra);
    let out = env.compose(tf, &args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    (out.status.success(), text)
}

/// Package selection as in rpm-ostree: quoted specs with version constraints,
/// `repo-packages`, and lockfiles (`--ex-lockfile`, strict mode, digests, `lockfile-repos`,
/// `--ex-write-lockfile-to`).
#[test]
fn version_constraints_repo_packages_and_lockfiles_pick_packages() {
    let env = Env::new();
    // pool: only config-tool (1.0 and 2.0); nocfg: base without config-tool.
    let pool = sub_repo(&env, "pool", |f| f.starts_with("config-tool-"));
    let nocfg = sub_repo(&env, "nocfg", |f| !f.starts_with("config-tool-"));
    let old = sub_repo(&env, "old", |f| f.starts_with("config-tool-1.0"));
    let repos = std::fs::read_to_string(env.path().join("tf/fixtures.repo")).unwrap();
    std::fs::write(
        env.path().join("tf/fixtures.repo"),
        format!(
            "{repos}\n[pool]\nbaseurl=file://{}\nenabled=0\n\n[nocfg]\nbaseurl=file://{}\n\
             enabled=0\n\n[old]\nbaseurl=file://{}\nenabled=0\n",
            pool.display(),
            nocfg.display(),
            old.display()
        ),
    )
    .unwrap();
    let base_pkgs = "packages: [filesystem, busybox, setup, app]\nselinux: false\n";

    // 'config-tool < 2.0' is one spec, and picks the older version.
    let tf = env.treefile(
        "q.yaml",
        &format!("ref: test/q\nrepos: [base]\n{base_pkgs}bootstrap-packages: [\"'config-tool < 2.0'\"]\n"),
    );
    let (ok, out) = dry_run(&env, &tf, &[]);
    assert!(ok && out.contains("config-tool-1.0-1.noarch"), "{out}");
    assert!(!out.contains("config-tool-2.0"), "{out}");

    // repo-packages: config-tool from old only, although base has a newer one and app's
    // dependency would take that.
    let tf = env.treefile(
        "rp.yaml",
        &format!(
            "ref: test/rp\nrepos: [base, old]\n{base_pkgs}\
             repo-packages: [{{repo: old, packages: [config-tool]}}]\n"
        ),
    );
    let (ok, out) = dry_run(&env, &tf, &[]);
    assert!(ok && out.contains("config-tool-1.0-1.noarch"), "{out}");
    assert!(!out.contains("config-tool-2.0"), "{out}");
    let tf_bad = env.treefile(
        "rp-bad.yaml",
        &format!("ref: test/rp\nrepos: [base]\n{base_pkgs}repo-packages: [{{repo: pool, packages: [config-tool]}}]\n"),
    );
    let (ok, out) = dry_run(&env, &tf_bad, &[]);
    assert!(
        !ok && out.contains("repo-packages names repo [pool]"),
        "{out}"
    );

    // A lockfile pins config-tool to 1.0 although 2.0 is newer; --ex-write-lockfile-to
    // writes the solution, which read back strictly resolves the same set.
    let tf = env.treefile(
        "l.yaml",
        &format!("ref: test/l\nrepos: [base]\n{base_pkgs}"),
    );
    let lock = env.path().join("pin.yaml");
    std::fs::write(&lock, "packages:\n  config-tool:\n    evr: 1.0-1\n").unwrap();
    let written = env.path().join("written.json");
    let (ok, out) = dry_run(
        &env,
        &tf,
        &[
            "--ex-lockfile",
            lock.to_str().unwrap(),
            "--ex-write-lockfile-to",
            written.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("config-tool-1.0-1.noarch"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(doc["packages"]["config-tool"]["evra"], "1.0-1.noarch");
    assert!(doc["packages"]["app"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(doc["metadata"]["rpmmd_repos"]["base"]["generated"].is_string());
    let (ok, strict_out) = dry_run(
        &env,
        &tf,
        &[
            "--ex-lockfile",
            written.to_str().unwrap(),
            "--ex-lockfile-strict",
        ],
    );
    assert!(ok, "{strict_out}");
    let set = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains(".noarch") || l.contains(".x86_64"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(set(&strict_out), set(&out));
    // Strict with a lockfile that lacks app's dependency: nothing else may come in.
    std::fs::write(&lock, "packages:\n  app:\n    evr: 1.0-1\n").unwrap();
    let (ok, out) = dry_run(
        &env,
        &tf,
        &[
            "--ex-lockfile",
            lock.to_str().unwrap(),
            "--ex-lockfile-strict",
        ],
    );
    assert!(!ok, "{out}");
    // A digest that does not match the repodata: that package is not admitted (warned).
    std::fs::write(
        &lock,
        format!(
            "packages:\n  config-tool:\n    evra: 1.0-1.noarch\n    digest: sha256:{}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let (ok, out) = dry_run(&env, &tf, &["--ex-lockfile", lock.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("no repo has the locked package config-tool-1.0-1.noarch"),
        "{out}"
    );

    // lockfile-repos: pool lends only locked packages, and only when a lockfile is given.
    let tf = env.treefile(
        "lr.yaml",
        &format!("ref: test/lr\nrepos: [nocfg]\nlockfile-repos: [pool]\n{base_pkgs}"),
    );
    let (ok, out) = dry_run(&env, &tf, &[]);
    assert!(
        !ok && out.contains("config-tool"),
        "without a lockfile pool is not used: {out}"
    );
    std::fs::write(&lock, "packages:\n  config-tool:\n    evra: 1.0-1.noarch\n").unwrap();
    let (ok, out) = dry_run(&env, &tf, &["--ex-lockfile", lock.to_str().unwrap()]);
    assert!(ok && out.contains("config-tool-1.0-1.noarch"), "{out}");
}

/// Commits `files` (path, content) as `branch` in the env's target repo.
fn commit_layer(env: &Env, branch: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    let tree = format!("--tree=dir={}", dir.path().display());
    env.ostree(&["commit", "-b", branch, &tree])
        .trim()
        .to_string()
}

/// `ostree-layers` and `ostree-override-layers`: refs of the target repo laid over the
/// packages in order, a layer's commit an input of the compose, conflicts refused unless the
/// layer may override.
#[test]
fn ostree_layers_are_laid_over_the_packages() {
    let env = Env::new();
    commit_layer(&env, "overlay/a", &[("usr/share/layer/a", "from a\n")]);
    commit_layer(
        &env,
        "overlay/over",
        &[
            ("usr/bin/config-tool", "overridden\n"),
            ("usr/share/layer/a", "over wins\n"),
        ],
    );
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}ostree-layers: [overlay/a]\nostree-override-layers: [overlay/over]\n"),
    );
    assert_ok(&env.compose(&tf, &[]));
    let first = env.rev("test/node").unwrap();
    let co = env.checkout("test/node");
    let read = |p: &str| std::fs::read_to_string(co.join(p)).unwrap();
    assert_eq!(read("usr/bin/config-tool"), "overridden\n");
    assert_eq!(read("usr/share/layer/a"), "over wins\n");
    assert!(
        co.join("usr/bin/busybox").exists(),
        "packages are still there"
    );

    // A new commit of a layer is a new input.
    commit_layer(
        &env,
        "overlay/a",
        &[
            ("usr/share/layer/a", "from a\n"),
            ("usr/share/layer/b", "b\n"),
        ],
    );
    assert_ok(&env.compose(&tf, &[]));
    assert_ne!(env.rev("test/node").unwrap(), first);
    assert!(env.checkout("test/node").join("usr/share/layer/b").exists());
    let second = env.rev("test/node").unwrap();

    // A plain layer may not replace a package's file; a missing layer is named.
    commit_layer(&env, "overlay/bad", &[("usr/bin/config-tool", "sneaky\n")]);
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}ostree-layers: [overlay/bad]\n"),
    );
    assert_fails_with(
        &env.compose(&tf, &[]),
        &["overlay/bad", "ostree-override-layers"],
    );
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}ostree-layers: [overlay/none]\n"),
    );
    assert_fails_with(
        &env.compose(&tf, &[]),
        &["ostree-layers", "overlay/none", "not in the target repo"],
    );
    assert_eq!(
        env.rev("test/node").unwrap(),
        second,
        "a failed compose moved the ref"
    );
}

/// Repo files as dnf reads them: `$releasever`, `$basearch` and the treefile's `repovars`
/// substituted; `mirrorlist=` and `metalink=` (local files) give the first working mirror,
/// a metalink's mirror only when its repomd.xml has a listed SHA-256.
#[test]
fn mirrorlists_metalinks_and_repo_variables_work() {
    use sha2::Digest;
    let env = Env::new();
    let fx = fixtures();
    let base_url = format!("file://{}", fx.join("base").display());
    let missing = format!("file://{}/nowhere", env.path().display());
    std::fs::write(
        env.path().join("mirrors.txt"),
        format!("# first one is down\n{missing}\n\n{base_url}\n"),
    )
    .unwrap();
    let repomd = std::fs::read(fx.join("base/repodata/repomd.xml")).unwrap();
    let sum = hex::encode(sha2::Sha256::digest(&repomd));
    let metalink = |sum: &str| {
        format!(
            "<metalink><files><file name=\"repomd.xml\"><verification>\
             <hash type=\"sha256\">{sum}</hash></verification><resources>\
             <url protocol=\"file\">{missing}/repodata/repomd.xml</url>\
             <url protocol=\"file\">{base_url}/repodata/repomd.xml</url>\
             </resources></file></files></metalink>"
        )
    };
    std::fs::write(env.path().join("good.metalink"), metalink(&sum)).unwrap();
    std::fs::write(env.path().join("bad.metalink"), metalink(&"0".repeat(64))).unwrap();
    // $mirror/r$releasever/$basearch leads to the base fixture repo.
    std::fs::create_dir_all(env.path().join("mirror/r7")).unwrap();
    std::os::unix::fs::symlink(fx.join("base"), env.path().join("mirror/r7/x86_64")).unwrap();
    std::fs::write(
        env.path().join("tf/more.repo"),
        format!(
            "[ml]\nmirrorlist=file://{p}/mirrors.txt\nenabled=0\n\n\
             [mlink]\nmetalink=file://{p}/good.metalink\nenabled=0\n\n\
             [badlink]\nmetalink=file://{p}/bad.metalink\nenabled=0\n\n\
             [vars]\nname=fixtures $releasever $basearch\n\
             baseurl=file://{p}/${{mirror}}/r$releasever/$basearch/\nenabled=0\n\n\
             [novar]\nbaseurl=file://{p}/$nope/base\nenabled=0\n",
            p = env.path().display()
        ),
    )
    .unwrap();
    let pkgs = "packages: [filesystem, busybox, setup, app]\nreleasever: 7\nselinux: false\n";
    for repo in ["ml", "mlink"] {
        let tf = env.treefile("m.yaml", &format!("ref: test/m\nrepos: [{repo}]\n{pkgs}"));
        let out = env.compose(&tf, &["--dry-run"]);
        assert_ok(&out);
        assert!(String::from_utf8_lossy(&out.stdout).contains("app-1.0-1.x86_64"));
    }
    let tf = env.treefile("m.yaml", &format!("ref: test/m\nrepos: [badlink]\n{pkgs}"));
    assert_fails_with(
        &env.compose(&tf, &["--dry-run"]),
        &[
            "[badlink]",
            "no usable mirror in the metalink",
            "does not list",
            "nowhere",
        ],
    );
    let tf = env.treefile(
        "m.yaml",
        &format!("ref: test/m\nrepos: [vars]\nrepovars: {{mirror: mirror}}\n{pkgs}"),
    );
    let out = env.compose(&tf, &["--dry-run"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("app-1.0-1.x86_64"));
    let tf = env.treefile("m.yaml", &format!("ref: test/m\nrepos: [novar]\n{pkgs}"));
    assert_fails_with(
        &env.compose(&tf, &["--dry-run"]),
        &["[novar]", "$nope is not defined"],
    );
}

/// Scriptlets as rpm-ostree runs them: Lua marked `-- rpm-ostree-skip` is skipped, Lua it
/// has a shell replacement for runs that (with `%{_install_langs}`), other Lua is refused by
/// package and kind, and %pretrans, the uninstall kinds and %verifyscript never run.
#[test]
fn scriptlets_follow_rpm_ostree_rules() {
    let env = Env::new();
    let tf = env.treefile(
        "s.yaml",
        &format!(
            "{GOOD}install-langs: [de, fr]\npackages-x86_64: [lua-skip, rpmostree-lua-override-test, ignored-kinds]\n"
        ),
    );
    assert_ok(&env.compose(&tf, &[]));
    let co = env.checkout("test/node");
    assert_eq!(
        std::fs::read_to_string(co.join("usr/share/rpmostree-lua-override-test")).unwrap(),
        "de:fr\n"
    );
    assert_eq!(
        std::fs::read_to_string(co.join("usr/share/ignored-kinds-post")).unwrap(),
        "post\n"
    );
    let tf = env.treefile("s.yaml", &format!("{GOOD}packages-x86_64: [lua-unknown]\n"));
    assert_fails_with(
        &env.compose(&tf, &[]),
        &[
            "lua-unknown-1.0-1.noarch %post scriptlet",
            "Lua",
            "rpm-ostree-skip",
        ],
    );
}

/// `selinux: true` is rpm-ostree's default, so with the key absent every directory, file and
/// symlink of the commit carries the label the tree's own policy (the fixture distro's
/// selinux-policy-default) gives its path: what libselinux's lookup, the tree's own
/// `matchpathcon` run inside the checked-out tree, answers. `--disable-selinux` leaves no label.
#[test]
fn commit_is_labelled_from_the_trees_own_policy() {
    let env = Env::new();
    std::fs::write(
        env.path().join("tf/fixture-distro.repo"),
        format!("[fixture-distro]\nbaseurl=file://{}\n", distro().display()),
    )
    .unwrap();
    let tf = env.treefile(
        "labelled.yaml",
        "ref: test/labelled\nrepos: [fixture-distro]\n\
         packages: [base-files, base-passwd, bash, coreutils, selinux-policy-default, selinux-utils]\n\
         recommends: false\ndocumentation: false\n",
    );
    let out = env.compose(&tf, &[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("SELinux policy default"),
        "{}",
        stderr(&out)
    );
    // The tree's own libselinux answers, run in the tree (whose /etc is at /usr/etc).
    let tree = env.checkout("test/labelled");

    // `ostree ls -X` lines: "d00755 0 0 0 { [(b'security.selinux', b'LABEL')] } /path".
    let listing = env.ostree(&["ls", "-R", "-X", "test/labelled", "/"]);
    let mut by_kind: std::collections::BTreeMap<&str, Vec<(String, String)>> = Default::default();
    for line in listing.lines() {
        let kind = match line.chars().next() {
            Some('d') => "dir",
            Some('-') => "file",
            Some('l') => "lnk_file",
            _ => panic!("unexpected entry: {line}"),
        };
        let (meta, path) = line.split_once("} ").unwrap();
        let path = path.split(" -> ").next().unwrap().to_string();
        let label = meta
            .split("b'security.selinux', b'")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("no SELinux label: {line}"))
            .to_string();
        by_kind.entry(kind).or_default().push((path, label));
    }
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (kind, entries) in &by_kind {
        let out = std::process::Command::new("bwrap")
            .arg("--ro-bind")
            .arg(&tree)
            .arg("/")
            .args(["--dev", "/dev", "--proc", "/proc", "--unshare-all"])
            .args(["matchpathcon", "-n", "-P", "/usr/etc/selinux/default"])
            .args(["-m", kind])
            // libostree labels the /proc mount point as /mnt: the policy says "<<none>>"
            // (never relabel) for /proc, and a mount point needs a label.
            .args(
                entries
                    .iter()
                    .map(|(p, _)| if p == "/proc" { "/mnt" } else { p }),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "matchpathcon: {}", stderr(&out));
        let answers = String::from_utf8(out.stdout).unwrap();
        let answers: Vec<&str> = answers.lines().collect();
        assert_eq!(answers.len(), entries.len());
        for ((path, label), answer) in entries.iter().zip(answers) {
            checked += 1;
            if label != answer {
                mismatches.push(format!("{kind} {path}: commit {label}, policy {answer}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(checked > 500, "only {checked} paths in the commit");
    // Paths the policy gives types of their own, so the comparison is not of two defaults.
    let label_of = |kind: &str, path: &str| {
        by_kind[kind]
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path} not in the commit"))
            .1
            .clone()
    };
    assert_eq!(
        label_of("file", "/usr/bin/bash"),
        "system_u:object_r:shell_exec_t:s0"
    );
    assert_eq!(
        label_of("file", "/usr/etc/passwd"),
        "system_u:object_r:etc_t:s0"
    );
    assert_eq!(label_of("dir", "/usr/lib"), "system_u:object_r:lib_t:s0");
    assert_eq!(label_of("lnk_file", "/bin"), "system_u:object_r:bin_t:s0");

    let out = env.compose(&tf, &["--disable-selinux"]);
    assert_ok(&out);
    let listing = env.ostree(&["ls", "-R", "-X", "test/labelled", "/usr/bin"]);
    assert!(!listing.contains("security.selinux"), "{listing}");

    // selinux-label-version: 1 labels /usr/etc as /etc, which libostree does from 2023.7 on;
    // with an older one it is refused, never silently labelled the version-0 way.
    let text = std::fs::read_to_string(&tf).unwrap() + "selinux-label-version: 1\n";
    let tf = env.treefile("labelled.yaml", &text);
    let out = env.compose(&tf, &[]);
    let version = std::process::Command::new("pkg-config")
        .args(["--modversion", "ostree-1"])
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let (year, release) = version.trim().split_once('.').unwrap();
    let (year, release): (u32, u32) = (year.parse().unwrap(), release.parse().unwrap());
    if (year, release) >= (2023, 7) {
        assert_ok(&out);
        let listing = env.ostree(&["ls", "-X", "test/labelled", "/usr/etc/selinux"]);
        assert!(listing.contains("selinux_config_t"), "{listing}");
    } else {
        assert_fails_with(
            &out,
            &["labelled.yaml", "selinux-label-version: 1", "2023.7"],
        );
    }
}

/// `--gpg-sign KEYID --gpg-homedir DIR` (rpm-ostree's flags) sign the commit and the repo
/// summary: a client that trusts the key pulls with `gpg-verify` and `gpg-verify-summary`, a
/// client that trusts another key is refused. A key gpg cannot use fails before the ref moves;
/// unchanged inputs still get the commit signed.
#[test]
fn signed_commits_and_summary_verify_on_a_client() {
    let env = Env::new();
    let key = GpgKey::new("signer");
    let other = GpgKey::new("other");
    let tf = env.treefile("node.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    let unsigned = env.rev("test/node").unwrap();

    // The other key is not in the signer's keyring: refused, naming key and keyring.
    let out = env.compose(
        &tf,
        &["--gpg-sign", &other.id, "--gpg-homedir", key.home_str()],
    );
    assert_fails_with(&out, &[&other.id, key.home_str(), "signing commit"]);
    let sign = ["--gpg-sign", &key.id, "--gpg-homedir", key.home_str()];
    // Unchanged inputs: the existing commit gets its signature.
    assert_ok(&env.compose(&tf, &sign));
    assert_eq!(env.rev("test/node").unwrap(), unsigned);
    let shown = env.ostree(&["show", "test/node"]);
    assert!(shown.contains(&key.id[key.id.len() - 16..]), "{shown}");

    // A new commit is signed before its ref moves.
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}remove-files: [usr/share/app/extras]\n"),
    );
    assert_ok(&env.compose(&tf, &sign));
    let signed = env.rev("test/node").unwrap();
    assert_ne!(signed, unsigned);
    assert!(env.repo().join("summary.sig").exists());

    let client = |name: &str, trusted: &GpgKey| {
        let repo = env.path().join(name);
        ostree_at(&repo, &["init", "--mode=archive"]);
        ostree_at(
            &repo,
            &[
                "remote",
                "add",
                "--set=gpg-verify=true",
                "--set=gpg-verify-summary=true",
                &format!("--gpg-import={}", trusted.public.display()),
                "origin",
                &format!("file://{}", env.repo().display()),
            ],
        );
        std::process::Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(["pull", "origin", "test/node"])
            .output()
            .unwrap()
    };
    assert_ok(&client("trusting", &key));
    let refused = client("distrusting", &other);
    assert!(!refused.status.success(), "pulled with the wrong key");
    let err = stderr(&refused);
    assert!(
        err.contains("GPG") || err.contains("signature"),
        "refusal does not say why: {err}"
    );
}

/// `--static-delta` publishes a static delta from the ref's previous commit, listed in the
/// summary: a client on the old commit updates by fetching the delta, and gets the same
/// commit as one that fetches objects (`--disable-static-deltas`).
#[test]
fn static_delta_serves_an_update_as_one_delta() {
    let env = Env::new();
    let tf = env.treefile("node.yaml", GOOD);
    assert_ok(&env.compose(&tf, &["--static-delta"]));
    let a = env.rev("test/node").unwrap();
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}remove-files: [usr/share/app/extras]\n"),
    );
    assert_ok(&env.compose(&tf, &["--static-delta"]));
    let b = env.rev("test/node").unwrap();
    let deltas = env.ostree(&["static-delta", "list"]);
    assert_eq!(deltas.lines().count(), 1, "{deltas}");
    let summary = env.ostree(&["summary", "--view"]);
    assert!(summary.contains("Static Deltas"), "{summary}");

    // Over HTTP, as nodes fetch (a file:// remote is imported locally, deltas unused).
    let server = Daemon::http(&env.repo());
    let pull = |name: &str, extra: &[&str]| {
        // A bare repo, as a node's: libostree applies deltas to no archive repo.
        let client = env.path().join(name);
        ostree_at(&client, &["init", "--mode=bare"]);
        let url = format!("http://127.0.0.1:{}", server.port);
        ostree_at(
            &client,
            &["remote", "add", "--no-gpg-verify", "origin", &url],
        );
        // The node is on A: its ref `origin:test/node` names A.
        ostree_at(&client, &["pull", "origin", &format!("test/node@{a}")]);
        let mut args = vec!["pull"];
        args.extend(extra);
        args.extend(["origin", "test/node"]);
        let out = ostree_at(&client, &args);
        assert_eq!(
            ostree_at(&client, &["rev-parse", "origin:test/node"]).trim(),
            b
        );
        out
    };
    let with = pull("with-delta", &[]);
    assert!(with.contains("delta part"), "{with}");
    let without = pull("without-delta", &["--disable-static-deltas"]);
    assert!(!without.contains("delta part"), "{without}");
}

/// The assembly lays the packages out as libostree's user-mode, union checkout of their cache
/// commits does (what it did before): committing both trees gives the same files, modes,
/// owners, extended attributes and checksums.
#[test]
fn assembly_matches_a_libostree_checkout_of_the_packages() {
    let env = Env::new();
    let tf = env.treefile("node.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    let cache_repo = env.cache().join("repo");
    let cache = ostree::Repo::new_for_path(&cache_repo);
    cache.open(ostree::gio::Cancellable::NONE).unwrap();
    let mut refs: Vec<String> = ostree_at(&cache_repo, &["refs", "--list", "hostforge/pkg"])
        .lines()
        .map(str::to_string)
        .collect();
    refs.sort();
    assert!(refs.len() >= 8, "{refs:?}");
    let mut infos = Vec::new();
    let checked_out = env.path().join("checked-out");
    let placed = env.path().join("placed");
    std::fs::create_dir_all(&checked_out).unwrap();
    std::fs::create_dir_all(&placed).unwrap();
    for r in &refs {
        let commit = ostree_at(&cache_repo, &["rev-parse", r]).trim().to_string();
        infos.push(hostforge::pkgcache::read_info(&cache, &commit).unwrap());
        ostree_at(
            &cache_repo,
            &[
                "checkout",
                "--user-mode",
                "--union",
                "--require-hardlinks",
                &commit,
                checked_out.to_str().unwrap(),
            ],
        );
    }
    hostforge::compose::place::place_packages(&cache_repo, &placed, &infos, |_| {}).unwrap();
    // The fixtures exercise every kind of entry.
    let kinds: std::collections::BTreeSet<&str> = infos
        .iter()
        .flat_map(|i| &i.layout)
        .map(|p| match p {
            hostforge::pkgcache::Placed::Dir(..) => "dir",
            hostforge::pkgcache::Placed::Link(..) => "link",
            hostforge::pkgcache::Placed::Copy(..) => "copy",
            hostforge::pkgcache::Placed::Symlink(..) => "symlink",
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let scratch = env.path().join("scratch");
    ostree_at(&scratch, &["init", "--mode=archive"]);
    let mut listings = Vec::new();
    for (branch, dir) in [("a", &checked_out), ("b", &placed)] {
        ostree_at(
            &scratch,
            &[
                "commit",
                "-b",
                branch,
                &format!("--tree=dir={}", dir.display()),
            ],
        );
        listings.push(ostree_at(&scratch, &["ls", "-R", "-X", "-C", branch]));
    }
    assert!(listings[0].lines().count() > 50, "{}", listings[0]);
    assert_eq!(listings[0], listings[1]);

    // The compose's own tree, as its scriptlets, postprocessing and ostree layout left it:
    // placed over, it becomes the checkout again, keeping what it can.
    let old = env.cache().join("work/root.old");
    assert!(old.join("usr/etc").is_dir(), "{}", old.display());
    let reused = hostforge::compose::place::place_packages_over(&cache_repo, &old, &infos, |_| {})
        .unwrap()
        .expect("the fixtures lay out no directory through a symlink");
    assert!(reused.kept > 20 && reused.removed > 0, "{reused:?}");
    ostree_at(
        &scratch,
        &[
            "commit",
            "-b",
            "c",
            &format!("--tree=dir={}", old.display()),
        ],
    );
    assert_eq!(
        listings[0],
        ostree_at(&scratch, &["ls", "-R", "-X", "-C", "c"])
    );
}
