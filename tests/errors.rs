//! Bad input: hostile packages, bad treefiles, failing scriptlets and interrupted composes.
//! Each checks the exit code, that the message names what to fix, and that the ref did not
//! move (a good commit is made first on the same ref).

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Composes GOOD so the ref exists, then returns the commit it points at.
fn good_first(env: &Env) -> String {
    let tf = env.treefile("good.yaml", GOOD);
    assert_ok(&env.compose(&tf, &[]));
    env.rev("test/node").unwrap()
}

/// A treefile on the same ref as GOOD with extra packages and repos.
fn bad(env: &Env, repos: &str, extra_pkgs: &str) -> std::path::PathBuf {
    env.treefile(
        "bad.yaml",
        &format!(
            "ref: test/node\nrepos: [{repos}]\npackages: [filesystem, busybox, setup, app, triggerer, {extra_pkgs}]\nselinux: false\n"
        ),
    )
}

fn check_refused(repos: &str, pkg: &str, needles: &[&str]) {
    let env = Env::new();
    let before = good_first(&env);
    let out = env.compose(&bad(&env, repos, pkg), &[]);
    assert_fails_with(&out, needles);
    assert_eq!(env.rev("test/node").unwrap(), before, "ref moved");
    // The cache is still usable: the good treefile composes (nothing changed).
    let out = env.compose(&env.path().join("tf/good.yaml"), &[]);
    assert_ok(&out);
}

#[test]
fn dotdot_path_is_refused() {
    check_refused(
        "base, hostile",
        "evil-dotdot",
        &["evil-dotdot-1.0-1.noarch", "refusing", ".."],
    );
}

#[test]
fn symlink_out_of_root_is_refused() {
    check_refused(
        "base, hostile",
        "evil-symlink",
        &[
            "evil-symlink-1.0-1.noarch",
            "/usr/share/evil/escape",
            "outside the root",
        ],
    );
}

#[test]
fn corrupted_payload_is_refused() {
    check_refused(
        "base, hostile",
        "evil-corrupt",
        &["evil-corrupt-1.0-1.noarch", "corrupt"],
    );
}

#[test]
fn unsigned_package_in_gpgcheck_repo_is_refused() {
    check_refused(
        "base, signed",
        "signed-unsigned",
        &["signed-unsigned-1.0-1.noarch", "not signed", "[signed]"],
    );
}

#[test]
fn package_signed_by_another_key_is_refused() {
    check_refused(
        "base, signed",
        "signed-wrongkey",
        &["signed-wrongkey-1.0-1.noarch", "signature"],
    );
}

#[test]
fn signed_package_with_the_right_key_is_accepted() {
    let env = Env::new();
    let out = env.compose(&bad(&env, "base, signed", "signed-ok"), &[]);
    assert_ok(&out);
    let co = env.checkout("test/node");
    assert!(co.join("usr/share/signed/ok").exists());
}

#[test]
fn conflicting_files_name_both_packages() {
    check_refused(
        "base",
        "clash-a, clash-b",
        &[
            "file conflict",
            "/usr/share/clash/file",
            "clash-a-1.0-1.noarch",
            "clash-b-1.0-1.noarch",
        ],
    );
}

#[test]
fn unsatisfiable_dependency_names_package_and_requirement() {
    check_refused(
        "base",
        "needs-missing",
        &["needs-missing", "does-not-exist"],
    );
}

#[test]
fn unknown_package_is_named() {
    check_refused("base", "no-such-package", &["no-such-package", "not found"]);
}

#[test]
fn failing_scriptlet_names_package_scriptlet_and_output() {
    check_refused(
        "base",
        "failing-post",
        &[
            "failing-post-1.0-1.noarch %post scriptlet",
            "exit code 3",
            "disk on fire",
        ],
    );
}

#[test]
fn scriptlet_cannot_write_through_cache_hardlinks() {
    let env = Env::new();
    let before = good_first(&env);
    let out = env.compose(&bad(&env, "base", "inplace-writer"), &[]);
    assert_fails_with(
        &out,
        &[
            "inplace-writer-1.0-1.noarch %post scriptlet",
            "Read-only file system",
        ],
    );
    assert_eq!(env.rev("test/node").unwrap(), before);
    // The cached /usr/bin/app is untouched: a fresh compose has the packaged content.
    common::ostree_at(&env.cache().join("repo"), &["fsck", "--quiet"]);
    let out = env.compose(&env.path().join("tf/good.yaml"), &["--force-nocache"]);
    assert_ok(&out);
    let co = env.checkout("test/node");
    assert_eq!(
        std::fs::read_to_string(co.join("usr/bin/app")).unwrap(),
        "#!/bin/sh\necho app\n"
    );
}

#[test]
fn unknown_treefile_key_names_key_file_and_line() {
    let env = Env::new();
    let before = good_first(&env);
    let tf = env.treefile(
        "bad.yaml",
        "ref: test/node\nrepos: [base]\npackages: [app]\npackage-list: [x]\n",
    );
    let out = env.compose(&tf, &[]);
    assert_fails_with(&out, &["bad.yaml:4:", "package-list"]);
    assert_eq!(env.rev("test/node").unwrap(), before);
}

#[test]
fn undefined_repo_is_named() {
    let env = Env::new();
    let tf = env.treefile(
        "bad.yaml",
        "ref: test/node\nrepos: [base, updates]\npackages: [app]\nselinux: false\n",
    );
    let out = env.compose(&tf, &[]);
    assert_fails_with(&out, &["\"updates\"", "found: base, hostile, signed"]);
}

/// Labels are on unless a treefile says `selinux: false` (rpm-ostree's default); a tree
/// without a policy is refused before anything is committed, never committed unlabelled.
#[test]
fn labelling_a_tree_without_a_policy_is_a_clear_error() {
    let env = Env::new();
    let before = good_first(&env);
    let unlabelled = GOOD.replace("selinux: false\n", "");
    for (name, text) in [
        ("absent.yaml", unlabelled.clone()),
        ("true.yaml", format!("{unlabelled}selinux: true\n")),
    ] {
        let tf = env.treefile(name, &text);
        let out = env.compose(&tf, &[]);
        assert_fails_with(
            &out,
            &[name, "no SELinux policy", "SELINUXTYPE=", "selinux: false"],
        );
        assert_eq!(env.rev("test/node").unwrap(), before, "ref moved");
    }
    // rpm-ostree's --disable-selinux composes it as `selinux: false` would: the same inputs
    // as the good treefile, so nothing changes.
    let tf = env.path().join("tf/true.yaml");
    assert_ok(&env.compose(&tf, &["--disable-selinux"]));
    assert_eq!(env.rev("test/node").unwrap(), before);
}

#[test]
fn missing_repo_dir_is_a_clear_error() {
    let env = Env::new();
    let tf = env.treefile("node.yaml", GOOD);
    let out = hostforge_cmd()
        .args(["compose", "tree", "--repo"])
        .arg(env.path().join("nope"))
        .arg(&tf)
        .output()
        .unwrap();
    assert_fails_with(&out, &["is not an ostree repository", "ostree init"]);
}

#[test]
fn check_passwd_catches_a_changed_uid() {
    let env = Env::new();
    std::fs::write(
        env.path().join("tf/passwd"),
        "root:x:0:0::/root:/bin/sh\nappuser:x:500:500::/:/bin/sh\n",
    )
    .unwrap();
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}check-passwd:\n  type: file\n  filename: passwd\n"),
    );
    assert_fails_with(
        &env.compose(&tf, &[]),
        &["check-passwd", "appuser", "990", "500"],
    );
    assert_eq!(env.rev("test/node"), None);
}

/// rpm-ostree's default `check-passwd`/`check-groups: previous`: a user or group of the
/// previous commit that the new tree lacks is refused unless ignored by name or `*`; `data`
/// entries check ids too.
#[test]
fn removed_users_and_groups_are_refused_unless_ignored() {
    let env = Env::new();
    let first = good_first(&env);
    // preserve-passwd (default true) keeps the previous commit's users, as rpm-ostree does:
    // a tree without app still has appuser with its ids.
    let tf = env.treefile("node.yaml", &GOOD.replace(", app,", ","));
    let id_file = env.path().join("commitid");
    assert_ok(&env.compose(&tf, &["--write-commitid-to", id_file.to_str().unwrap()]));
    let kept = std::fs::read_to_string(&id_file).unwrap();
    let co = env.checkout(kept.trim());
    let passwd = std::fs::read_to_string(co.join("usr/etc/passwd")).unwrap();
    assert!(passwd.contains("appuser:x:990:990:"), "{passwd}");
    assert!(!co.join("usr/bin/app").exists(), "app itself is gone");
    assert_eq!(
        env.rev("test/node").unwrap(),
        first,
        "--write-commitid-to moved the ref"
    );
    let without_app = GOOD.replace(", app,", ",") + "preserve-passwd: false\n";
    let tf = env.treefile("node.yaml", &without_app);
    assert_fails_with(
        &env.compose(&tf, &[]),
        &[
            "check-passwd",
            "appuser",
            "missing from the new tree",
            "ignore-removed-users",
        ],
    );
    assert_eq!(env.rev("test/node").unwrap(), first);
    let tf = env.treefile(
        "node.yaml",
        &format!(
            "{without_app}ignore-removed-users: [appuser]
"
        ),
    );
    assert_fails_with(
        &env.compose(&tf, &[]),
        &["check-group", "appgroup", "ignore-removed-groups"],
    );
    let tf = env.treefile(
        "node.yaml",
        &format!(
            "{without_app}ignore-removed-users: [appuser]
ignore-removed-groups: ['*']
"
        ),
    );
    assert_ok(&env.compose(&tf, &[]));
    // `data`: NAME: UID (or [UID, GID]) for users, NAME: GID for groups.
    let tf = env.treefile(
        "node.yaml",
        &format!("{GOOD}check-passwd:\n  type: data\n  entries:\n    appuser: [990, 991]\n"),
    );
    assert_fails_with(
        &env.compose(&tf, &[]),
        &["check-passwd", "appuser", "990:990", "990:991"],
    );
}

/// Aborts the compose at `point`, then checks the ref and that the next compose succeeds.
fn interrupted_at(point: &str) {
    let env = Env::new();
    let before = good_first(&env);
    // A different package set so every step has work to do.
    let tf = env.treefile(
        "next.yaml",
        &GOOD.replace("triggerer]", "triggerer, config-tool-1.0]"),
    );
    let out = env.compose_env(&tf, &["--force-nocache"], &[("HOSTFORGE_FAULT", point)]);
    assert!(
        !out.status.success(),
        "fault {point} did not stop the compose"
    );
    assert!(
        stderr(&out).contains(&format!("aborting at {point}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.rev("test/node").unwrap(),
        before,
        "ref moved after abort at {point}"
    );
    let out = env.compose(&tf, &[]);
    assert_ok(&out);
    assert_ne!(env.rev("test/node").unwrap(), before);
    env.ostree(&["fsck", "--quiet"]);
    common::ostree_at(&env.cache().join("repo"), &["fsck", "--quiet"]);
    let co = env.checkout("test/node");
    assert!(std::fs::read_to_string(co.join("usr/bin/config-tool"))
        .unwrap()
        .contains("one"));
}

#[test]
fn interrupted_during_import_recovers() {
    interrupted_at("import");
}

#[test]
fn interrupted_during_scripts_recovers() {
    interrupted_at("scripts");
}

#[test]
fn interrupted_during_commit_recovers() {
    interrupted_at("commit");
}

/// A package whose cache commit is still marked partial (a crash between its objects being
/// renamed in and its import being marked complete: the syncs are done by then, the marker's
/// removal is not) is imported again rather than trusted.
#[test]
fn a_partial_package_import_is_imported_again() {
    let env = Env::new();
    good_first(&env);
    let cache = env.cache().join("repo");
    let r = common::ostree_at(&cache, &["refs", "--list", "hostforge/pkg"])
        .lines()
        .find(|l| l.contains("/app-1"))
        .expect("app in the cache")
        .to_string();
    let commit = common::ostree_at(&cache, &["rev-parse", &r])
        .trim()
        .to_string();
    std::fs::write(
        cache.join("state").join(format!("{commit}.commitpartial")),
        "",
    )
    .unwrap();
    let tf = env.treefile("good.yaml", GOOD);
    assert_ok(&env.compose(&tf, &["--force-nocache"]));
    assert_eq!(env.json()["downloaded"], 1);
    assert!(!cache
        .join("state")
        .join(format!("{commit}.commitpartial"))
        .exists());
    common::ostree_at(&cache, &["fsck", "--quiet"]);
}

/// A compose sets its build root aside as `work/root.old`; the next one that builds lays
/// its packages out over it, and removes any `trash-*`, or second root, a killed compose
/// left while it works. A root a killed compose left alone is built on.
#[test]
fn earlier_build_roots_are_built_on_or_removed_by_the_next_compose() {
    let env = Env::new();
    let first = good_first(&env);
    let work = env.cache().join("work");
    assert!(work.join("root.old/usr").is_dir());
    let left = work.join("trash-4194304");
    std::fs::create_dir_all(left.join("usr/bin")).unwrap();
    std::fs::write(left.join("usr/bin/stale"), "x").unwrap();
    // A killed compose's root beside the previous one.
    std::fs::create_dir_all(work.join("root/usr/bin")).unwrap();
    std::fs::write(work.join("root/usr/bin/half"), "x").unwrap();
    // Something no package has, in the previous root.
    std::fs::write(work.join("root.old/usr/bin/stray"), "x").unwrap();
    let first_old = std::fs::metadata(work.join("root.old")).unwrap();
    let tf = env.treefile("good.yaml", GOOD);
    let out = env.compose_env(
        &tf,
        &["--force-nocache"],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("from the previous tree:"), "{said}");
    assert!(!left.exists());
    let trash: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("trash-"))
        .collect();
    assert!(trash.is_empty(), "{trash:?}");
    // This compose's root is the previous one, made right, and set aside again.
    use std::os::unix::fs::MetadataExt;
    let now_old = std::fs::metadata(work.join("root.old")).unwrap();
    assert_eq!(first_old.ino(), now_old.ino());
    assert!(!work.join("root.old/usr/bin/stray").exists());
    assert!(!work.join("root").exists());
    // The same tree as the first compose's.
    let second = env.rev("test/node").unwrap();
    let tree = |c: &str| common::ostree_at(&env.repo(), &["ls", "-R", "-X", "-C", c]);
    assert_eq!(tree(&first), tree(&second));

    // A root a killed compose left, and no previous one: it is built on.
    std::fs::rename(work.join("root.old"), work.join("root")).unwrap();
    std::fs::write(work.join("root/usr/bin/stray"), "x").unwrap();
    let out = env.compose(&tf, &["--force-nocache"]);
    assert_ok(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("from the previous tree:"), "{said}");
    assert_eq!(tree(&first), tree(&env.rev("test/node").unwrap()));
    assert!(!work.join("root.old/usr/bin/stray").exists());
}

/// Two composes on one repo and cachedir at once: the second waits for the first (it says
/// so) and both end with the ref at a complete commit; the repos stay consistent.
#[test]
fn concurrent_composes_on_one_cachedir_wait_for_each_other() {
    let env = Env::new();
    let a = env.treefile("a.yaml", GOOD);
    let b = env.treefile(
        "b.yaml",
        &GOOD
            .replace("test/node", "test/other")
            .replace("triggerer]", "triggerer, config-tool-1.0]"),
    );
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| env.compose(&a, &[]));
        let tb = s.spawn(|| env.compose(&b, &[]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_ok(&out_a);
    assert_ok(&out_b);
    // Deterministically: while another holder has the cachedir's lock, a compose waits.
    std::fs::create_dir_all(env.cache()).unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg(env.cache().join("lock"))
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let out = env.compose(&a, &["--force-nocache"]);
    holder.wait().unwrap();
    assert_ok(&out);
    assert!(
        stderr(&out).contains("waiting for another compose using this cachedir"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(env.rev("test/node").is_some() && env.rev("test/other").is_some());
    env.ostree(&["fsck", "--quiet"]);
    common::ostree_at(&env.cache().join("repo"), &["fsck", "--quiet"]);
    let co = env.checkout("test/other");
    assert!(co.join("usr/bin/config-tool").exists());
}

/// SIGKILL at random moments (beyond the named fault points), many times: after each kill
/// both repos pass `ostree fsck`, the ref is where it was or at a complete commit of the
/// treefile, and the next run succeeds and leaves no FUSE mount and no build root behind.
/// Cold runs (a fresh cachedir) give the fetch and import steps work to be killed in.
#[test]
fn compose_killed_at_random_moments_recovers() {
    let env = Env::new();
    let sets = [
        env.treefile("a.yaml", GOOD),
        env.treefile(
            "b.yaml",
            &GOOD.replace("triggerer]", "triggerer, config-tool-1.0]"),
        ),
    ];
    // a.yaml gets config-tool 2.0 (the newest), b.yaml pins 1.0.
    let pinned_tool = |r: &str| {
        let co = env.checkout(r);
        let yes = std::fs::read_to_string(co.join("usr/bin/config-tool"))
            .unwrap()
            .contains("one");
        unlock_tree(&co);
        std::fs::remove_dir_all(&co).unwrap();
        yes
    };
    // How long whole cold and warm composes take here: kill times are spread over them.
    let timed = |tf: &std::path::Path| {
        let start = std::time::Instant::now();
        assert_ok(&env.compose(tf, &["--force-nocache"]));
        start.elapsed().as_millis() as u64
    };
    let mut cold = timed(&sets[0]);
    let mut warm = timed(&sets[0]);
    let mut rng = Rng::seeded("compose kills");
    let (mut killed, mut ended) = (0, 0);
    for i in 0..16 {
        let tf = &sets[i % 2];
        let mut whole = warm;
        if rng.below(3) == 0 {
            std::fs::remove_dir_all(env.cache()).unwrap();
            whole = cold;
        }
        let before = env.rev("test/node").unwrap();
        let after = std::time::Duration::from_millis(rng.below(whole));
        let started = std::time::Instant::now();
        let (done, out) = kill_after(&mut env.compose_cmd(tf, &["--force-nocache"]), after);
        if done {
            assert_ok(&out);
            ended += 1;
            // Runs are faster than measured (a busy machine while measuring): aim within.
            let took = started.elapsed().as_millis() as u64;
            if whole == warm {
                warm = warm.min(took);
            } else {
                cold = cold.min(took);
            }
        } else {
            killed += 1;
        }
        env.ostree(&["fsck", "--quiet"]);
        // (A run killed early may not have made the cache repo yet.)
        if env.cache().join("repo/config").exists() {
            common::ostree_at(&env.cache().join("repo"), &["fsck", "--quiet"]);
        }
        let now = env.rev("test/node").unwrap();
        if now != before {
            assert_eq!(
                pinned_tool(&now),
                i % 2 == 1,
                "kill {i} after {after:?}: wrong tree"
            );
        }
        // The next run succeeds and cleans up after the killed one.
        assert_ok(&env.compose(tf, &["--force-nocache"]));
        assert_eq!(pinned_tool("test/node"), i % 2 == 1);
        assert_eq!(mounts_under(env.path()), Vec::<String>::new(), "kill {i}");
        assert!(
            !env.cache().join("work/root").exists(),
            "kill {i}: build root left"
        );
    }
    eprintln!("{killed} runs killed, {ended} ended before their kill time");
    assert!(
        killed >= 8,
        "too few runs were killed ({killed}) to test anything"
    );
}

/// Repo and cachedir on a small filesystem that fills up at different moments of a
/// compose: each run fails with an error that says the disk is full and names the cachedir
/// and repo, the ref stays where it was, both repos stay consistent, the build root is
/// removed and the previous compose.json is intact; with room again, the compose works.
#[test]
fn compose_on_a_full_disk_fails_clearly_and_loses_nothing() {
    let env = Env::new();
    let fs = SmallFs::mount(&env.path().join("small"), "96m");
    let (repo, cache) = (fs.0.join("repo"), fs.0.join("cache"));
    common::ostree_at(&repo, &["init", "--mode=archive"]);
    let json = fs.0.join("compose.json");
    let compose = |tf: &std::path::Path| {
        hostforge_cmd()
            .args(["compose", "tree", "--force-nocache", "--repo"])
            .arg(&repo)
            .arg("--cachedir")
            .arg(&cache)
            .arg("--write-composejson-to")
            .arg(&json)
            .arg(tf)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap()
    };
    let a = env.treefile("a.yaml", GOOD);
    let b = env.treefile(
        "b.yaml",
        &GOOD.replace("triggerer]", "triggerer, config-tool-1.0]"),
    );
    // Cold: the disk fills while packages are imported. Then warm (every package cached)
    // with libostree's free-space reserve off: it fills in the later steps instead.
    let mut failed = 0;
    for warm in [false, true] {
        if warm {
            assert_ok(&compose(&b));
            for r in [&repo, &cache.join("repo")] {
                common::ostree_at(r, &["config", "set", "core.min-free-space-percent", "0"]);
            }
        }
        assert_ok(&compose(&a));
        failed += fill_and_compose(&fs, &repo, &cache, &json, &|| compose(&b));
    }
    assert!(failed >= 6, "only {failed} runs ran out of space");
    assert_ok(&compose(&b));
    common::ostree_at(&repo, &["fsck", "--quiet"]);
}

/// Runs `compose` with less and less room left on `fs`; checks each failure as
/// [`compose_on_a_full_disk_fails_clearly_and_loses_nothing`] says. Returns how many failed.
fn fill_and_compose(
    fs: &SmallFs,
    repo: &std::path::Path,
    cache: &std::path::Path,
    json: &std::path::Path,
    compose: &dyn Fn() -> std::process::Output,
) -> usize {
    let before = common::ostree_at(repo, &["rev-parse", "test/node"]);
    let json_before = std::fs::read(json).unwrap();
    let mut failed = 0;
    for free_kib in [16, 64, 256, 512, 1024, 2048] {
        fs.leave_free(free_kib * 1024);
        let out = compose();
        fs.unfill();
        if out.status.success() {
            continue;
        }
        failed += 1;
        eprintln!(
            "{free_kib} KiB free: {}",
            stderr(&out).trim().lines().last().unwrap()
        );
        assert_fails_with(
            &out,
            &[
                "out of disk space",
                cache.to_str().unwrap(),
                repo.to_str().unwrap(),
            ],
        );
        assert_eq!(
            common::ostree_at(repo, &["rev-parse", "test/node"]),
            before,
            "{free_kib} KiB free: the ref moved"
        );
        common::ostree_at(repo, &["fsck", "--quiet"]);
        common::ostree_at(&cache.join("repo"), &["fsck", "--quiet"]);
        assert!(
            !cache.join("work/root").exists(),
            "{free_kib} KiB free: build root left"
        );
        assert_eq!(mounts_under(&fs.0), Vec::<String>::new());
        assert_eq!(std::fs::read(json).unwrap(), json_before);
    }
    failed
}

/// A copy of the base fixture repo spoiled by `spoil`, as repo `[copy]` in a treefile that
/// uses only it; the compose must fail naming `needles`, and leave the ref unmoved and no
/// package of the copy in the cache.
fn spoiled_repo_is_refused(spoil: impl Fn(&std::path::Path), extra: &str, needles: &[&str]) {
    let env = Env::new();
    let before = good_first(&env);
    let copy = env.path().join("copy");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(fixtures().join("base"))
        .arg(&copy));
    spoil(&copy);
    std::fs::write(
        env.path().join("tf/copy.repo"),
        format!("[copy]\nbaseurl=file://{}\ngpgcheck=0\n", copy.display()),
    )
    .unwrap();
    let tf = env.treefile(
        "spoiled.yaml",
        &GOOD
            .replace("[base]", "[copy]")
            .replace("triggerer]", &format!("triggerer{extra}]")),
    );
    let out = env.compose(&tf, &["--force-nocache"]);
    eprintln!("{}", stderr(&out).trim());
    assert_fails_with(&out, needles);
    assert_eq!(env.rev("test/node").unwrap(), before, "ref moved");
    env.ostree(&["fsck", "--quiet"]);
}

fn truncate_half(p: &std::path::Path) {
    let len = std::fs::metadata(p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// Truncated metadata (repomd.xml, or primary.xml.gz against its checksum in repomd.xml)
/// and a package file that is not the one the repodata lists: clear errors naming the repo.
#[test]
fn truncated_metadata_and_wrong_package_files_are_refused() {
    spoiled_repo_is_refused(
        |r| truncate_half(&r.join("repodata/repomd.xml")),
        "",
        &["[copy]", "resolving packages"],
    );
    spoiled_repo_is_refused(
        |r| truncate_half(&r.join("repodata/primary.xml.gz")),
        "",
        &["[copy]", "resolving packages"],
    );
    // config-tool 2.0's bytes where the repodata lists 1.0's checksum (1.0 is not in the
    // package cache yet, so it is downloaded).
    spoiled_repo_is_refused(
        |r| {
            std::fs::copy(
                r.join("Packages/config-tool-2.0-1.noarch.rpm"),
                r.join("Packages/config-tool-1.0-1.noarch.rpm"),
            )
            .unwrap();
        },
        ", config-tool-1.0",
        &["config-tool-1.0-1.noarch", "checksum mismatch", "[copy]"],
    );
}

/// A metadata decompression bomb: primary.xml.gz unpacks to 256 MiB of zeros, and
/// repomd.xml vouches for it (checksums and sizes match). libsolv reads it as a stream and
/// stops at the first byte that is not XML: a clear error naming the repo, quickly, with
/// nothing unpacked to disk.
#[test]
fn metadata_decompression_bomb_is_refused() {
    let started = std::time::Instant::now();
    spoiled_repo_is_refused(
        |r| {
            let gz = r.join("repodata/primary.xml.gz");
            let sh = |script: &str| {
                run(std::process::Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .arg("sh")
                    .arg(&gz))
            };
            sh("head -c 256M /dev/zero | gzip -1 > \"$1\"");
            let sum = sh("sha256sum < \"$1\"");
            let open = sh("head -c 256M /dev/zero | sha256sum");
            let size = std::fs::metadata(&gz).unwrap().len();
            let repomd = r.join("repodata/repomd.xml");
            let text = std::fs::read_to_string(&repomd).unwrap();
            let (head, rest) = text.split_once("<data type=\"filelists\">").unwrap();
            let re = |pat: &str, with: &str, s: &str| {
                regex::Regex::new(pat)
                    .unwrap()
                    .replace(s, with)
                    .into_owned()
            };
            let mut head = re(
                r#"<checksum type="sha256">[0-9a-f]+<"#,
                &format!(r#"<checksum type="sha256">{}<"#, &sum[..64]),
                head,
            );
            head = re(
                r#"<open-checksum type="sha256">[0-9a-f]+<"#,
                &format!(r#"<open-checksum type="sha256">{}<"#, &open[..64]),
                &head,
            );
            head = re(r"<size>\d+<", &format!("<size>{size}<"), &head);
            head = re(
                r"<open-size>\d+<",
                &format!("<open-size>{}<", 256u64 << 20),
                &head,
            );
            std::fs::write(&repomd, format!("{head}<data type=\"filelists\">{rest}")).unwrap();
        },
        "",
        &["[copy]", "resolving packages"],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "the bomb took {:?}",
        started.elapsed()
    );
}

/// A variable's value reaches os-release through `mutate-os-release` and the version: the
/// substituted text is checked like the text written there, so a newline or `$(...)` in a
/// variable cannot add a line or a command to os-release.
#[test]
fn substituted_variables_cannot_smuggle_into_os_release() {
    for (key, value) in [
        ("mutate-os-release", "\"${v}\""),
        ("automatic-version-prefix", "\"${v}\""),
    ] {
        for bad in ["1\\nID=evil", "$(reboot)"] {
            let env = Env::new();
            let before = good_first(&env);
            let tf = env.treefile(
                "vars.yaml",
                // (GOOD's own version prefix stays for mutate-os-release, which needs a version.)
                &format!("{GOOD}variables:\n  v: \"{bad}\"\n{key}: {value}\n").replacen(
                    "automatic-version-prefix: \"1\"\n",
                    "",
                    usize::from(key == "automatic-version-prefix"),
                ),
            );
            let out = env.compose(&tf, &["--force-nocache"]);
            // A '$' in a variable is refused where it is defined (rpm-ostree's rule); a
            // newline gets through substitution and is refused in the substituted value.
            if bad.contains('$') {
                assert_fails_with(&out, &["variables: v", "may not contain '$'"]);
            } else {
                assert_fails_with(&out, &[key, "substituted"]);
            }
            assert_eq!(env.rev("test/node").unwrap(), before, "ref moved");
        }
    }
}

/// The man pages and completions in docs/cli/ are what the clap definitions make now (the
/// message says how to refresh them), and they work: bash completes `hostforge comp` to
/// `compose`, and `man` renders a subcommand's page.
#[test]
fn cli_docs_are_current_and_work() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for bin in [
        env!("CARGO_BIN_EXE_hostforge"),
        env!("CARGO_BIN_EXE_hostforge-update"),
    ] {
        let o = Command::new(bin)
            .arg("generate-docs")
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert_ok(&o);
    }
    let list = |root: &Path| -> Vec<String> {
        let mut v = Vec::new();
        for sub in ["man", "completions"] {
            for e in std::fs::read_dir(root.join(sub)).unwrap() {
                v.push(format!(
                    "{sub}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        v.sort();
        v
    };
    let committed = top.join("docs/cli");
    let fresh = list(dir.path());
    assert_eq!(
        list(&committed),
        fresh,
        "docs/cli/ has other files than the CLI makes: run `cargo xtask docs`"
    );
    for f in &fresh {
        assert!(
            std::fs::read(committed.join(f)).unwrap() == std::fs::read(dir.path().join(f)).unwrap(),
            "docs/cli/{f} is stale: run `cargo xtask docs`"
        );
    }
    let script = committed.join("completions/hostforge.bash");
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(hostforge comp); COMP_CWORD=1; _hostforge hostforge comp hostforge; \
         echo \"${{COMPREPLY[@]}}\"",
        script.display()
    )));
    assert_eq!(out.trim(), "compose");
    let page = run(Command::new("man")
        .env("MANWIDTH", "80")
        .arg("-l")
        .arg(committed.join("man/hostforge-compose-tree.1")));
    assert!(page.contains("--rebuild-initramfs"), "{page}");
}
