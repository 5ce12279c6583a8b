//! Image tier: `hostforge image build` and the A/B operations on image files and on a live
//! sysroot, without booting (the boot tier boots what these build).

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn image_builds_are_reproducible_and_never_half_written() {
    let (repo, _) = composed_node();
    let r = "hostforge/x86_64/node";
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    assert_ok(&image_build(&repo, r, "qemu.yaml", "raw", &a, None));
    assert_ok(&image_build(&repo, r, "qemu.yaml", "raw", &b, None));
    let same = Command::new("cmp")
        .arg("-s")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(same.success(), "two builds of the same commit differ");
    // qcow2, written while the disk is filled: the same disk, and the same file each time.
    let (qa, qb) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
    assert_ok(&image_build(&repo, r, "qemu.yaml", "qcow2", &qa, None));
    assert_ok(&image_build(&repo, r, "qemu.yaml", "qcow2", &qb, None));
    run(Command::new("qemu-img").arg("check").arg(&qa));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&a)
        .arg(&qa));
    let same = Command::new("cmp")
        .arg("-s")
        .arg(&qa)
        .arg(&qb)
        .status()
        .unwrap();
    assert!(same.success(), "two qcow2 builds of the same commit differ");

    // An interrupted build leaves the previous image as it was, and no new one.
    let before = std::fs::metadata(&a).unwrap().modified().unwrap();
    let out = image_build(&repo, r, "qemu.yaml", "raw", &a, Some("image"));
    assert!(!out.status.success());
    assert_eq!(std::fs::metadata(&a).unwrap().modified().unwrap(), before);
    let c = dir.path().join("c.raw");
    assert!(
        !image_build(&repo, r, "qemu.yaml", "raw", &c, Some("image"))
            .status
            .success()
    );
    assert!(!c.exists(), "a killed build left an output");

    // Clear errors for a missing ref and a bad layout.
    assert_fails_with(
        &image_build(&repo, "no/such/ref", "qemu.yaml", "raw", &c, None),
        &["no/such/ref"],
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "format: raw\nsize: 1GiB\ndisk-guid: x\nbootloader: grub2-bios\npartitions: []\n",
    )
    .unwrap();
    let out = hostforge_cmd()
        .args(["image", "build", "--repo"])
        .arg(&repo)
        .args(["--ref", r, "--layout"])
        .arg(&bad)
        .arg("-o")
        .arg(&c)
        .output()
        .unwrap();
    assert_fails_with(&out, &["bad.yaml", "disk-guid"]);
    assert!(!c.exists());
    // The aborted builds' staging dirs hold immutable ostree deployments.
    unlock_tree(dir.path());
}

/// `--compress zstd` and `--random-uuids`.
#[test]
fn image_build_compression_and_random_ids() {
    let (repo, _) = composed_node();
    let r = "hostforge/x86_64/node";
    let dir = tempfile::tempdir().unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml");
    let build = |out: &Path, extra: &[&str]| {
        let out = hostforge_cmd()
            .args(["image", "build", "--repo"])
            .arg(&repo)
            .args(["--ref", r, "--layout"])
            .arg(&layout)
            .args(extra)
            .arg("-o")
            .arg(out)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert_ok(&out);
    };
    let plain = dir.path().join("plain.raw");
    build(&plain, &["--format", "raw"]);
    // A compressed raw image is the same disk as a zstd stream.
    let zst = dir.path().join("node.raw.zst");
    build(&zst, &["--format", "raw", "--compress", "zstd"]);
    let unpacked = dir.path().join("unpacked.raw");
    run(Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&unpacked)
        .arg(&zst));
    assert!(Command::new("cmp")
        .arg("-s")
        .arg(&plain)
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    assert!(std::fs::metadata(&zst).unwrap().len() < std::fs::metadata(&plain).unwrap().len());
    // qcow2 with zstd-compressed clusters.
    let q = dir.path().join("node.qcow2");
    build(&q, &["--compress", "zstd"]);
    let info = run(Command::new("qemu-img").arg("info").arg(&q));
    assert!(info.contains("compression type: zstd"), "{info}");
    run(Command::new("qemu-img").arg("check").arg(&q));

    // Random IDs: a different disk GUID and root UUID each time, still a working image.
    let (r1, r2) = (dir.path().join("r1.raw"), dir.path().join("r2.raw"));
    build(&r1, &["--format", "raw", "--random-uuids"]);
    build(&r2, &["--format", "raw", "--random-uuids"]);
    // The disk GUID: 16 bytes at offset 56 of the GPT header in LBA 1.
    let guid = |p: &Path| {
        std::fs::read(p)
            .map(|b| b[512 + 56..512 + 72].to_vec())
            .unwrap()
    };
    assert_ne!(guid(&r1), guid(&r2));
    assert_ne!(guid(&r1), guid(&plain));
    let st = image_status(&r1);
    let kargs = st["deployments"][0]["kargs"].as_str().unwrap().to_string();
    assert!(
        !kargs.contains("5f607182-93a4-4b5c-c6d7-e8f901234567"),
        "root=UUID follows the random UUID: {kargs}"
    );
    unlock_tree(dir.path());
}

/// The A/B operations on a live sysroot (`--sysroot`): a node's root filesystem with its
/// /boot, read out of a built image, stands in for `/` on a booted node.
#[test]
fn live_sysroot_deploy_prune_pin_rollback() {
    let (repo, a) = composed_node();
    let b = composed_node_b();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.raw");
    assert_ok(&image_build(
        &repo,
        "hostforge/x86_64/node",
        "qemu.yaml",
        "raw",
        &img,
        None,
    ));
    let sysroot = dir.path().join("sysroot");
    extract_sysroot(&img, &sysroot);
    let hf = |args: &[&str]| {
        let out = hostforge_cmd()
            .arg("image")
            .args(args)
            .arg("--sysroot")
            .arg(&sysroot)
            .output()
            .unwrap();
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = || -> Vec<(String, bool)> {
        let v: serde_json::Value = serde_json::from_str(&hf(&["status", "--json"])).unwrap();
        v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["commit"].as_str().unwrap().to_string(),
                    d["pinned"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let commits = || status().into_iter().map(|d| d.0).collect::<Vec<_>>();
    // GRUB's menu, read where GRUB reads it: the config inside the current loader directory.
    // Its first entry boots the deployment `ostree=` names; status says whose that is.
    let ostree_arg = |line: &str| {
        line.split_whitespace()
            .find(|w| w.starts_with("ostree="))
            .unwrap()
            .to_string()
    };
    let first_menu_commit = || {
        let cfg = std::fs::read_to_string(sysroot.join("boot/loader/grub.cfg")).unwrap();
        let first = ostree_arg(cfg.lines().find(|l| l.contains("ostree=")).unwrap());
        let v: serde_json::Value = serde_json::from_str(&hf(&["status", "--json"])).unwrap();
        v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| ostree_arg(d["kargs"].as_str().unwrap()) == first)
            .map(|d| d["commit"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("menu entry {first} is no deployment's:\n{cfg}\n{v}"))
    };
    assert_eq!(commits(), vec![a.clone()]);
    let repo_s = repo.to_str().unwrap();
    hf(&[
        "deploy",
        "--repo",
        repo_s,
        "--ref",
        "hostforge/x86_64/node-b",
    ]);
    assert_eq!(commits(), vec![b.clone(), a.clone()]);
    assert_eq!(first_menu_commit(), b);
    // A third deployment prunes to two: the new one and the previous default.
    hf(&["deploy", "--repo", repo_s, "--ref", "hostforge/x86_64/node"]);
    assert_eq!(commits(), vec![a.clone(), b.clone()]);
    assert_eq!(first_menu_commit(), a);
    // ... unless the older one is pinned.
    hf(&["pin", "--index", "1"]);
    assert_eq!(status()[1], (b.clone(), true));
    hf(&[
        "deploy",
        "--repo",
        repo_s,
        "--ref",
        "hostforge/x86_64/node-b",
    ]);
    let st = status();
    assert_eq!(st.len(), 3, "{st:?}");
    assert_eq!(st[0], (b.clone(), false));
    assert_eq!(st[1], (a.clone(), false));
    assert_eq!(st[2], (b.clone(), true));
    // Rollback swaps default and rollback, entries and GRUB menu together, and ends a
    // boot-counting trial the update agent left (the choice is made by hand).
    let grubenv = sysroot.join("boot/grub/grubenv");
    let empty = std::fs::read_to_string(&grubenv).unwrap();
    assert!(
        empty.starts_with("# GRUB Environment Block\n#") && empty.len() == 1024,
        "images start with an empty environment block: {empty:?}"
    );
    std::fs::write(&grubenv, trial_block(2)).unwrap();
    hf(&["rollback"]);
    assert_settled(&std::fs::read_to_string(&grubenv).unwrap());
    assert_eq!(commits()[..2], [a.clone(), b.clone()]);
    assert_eq!(first_menu_commit(), a);
    let loader = std::fs::read_link(sysroot.join("boot/loader")).unwrap();
    assert!(
        sysroot.join("boot").join(&loader).join("grub.cfg").exists(),
        "the GRUB config lives in the loader directory ({loader:?})"
    );

    // The node's own generator (installed as /usr/sbin/grub-mkconfig) writes the same menu...
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/node/grub-mkconfig");
    let theirs = sysroot.join("boot/loader/grub.cfg.node");
    run(Command::new("sh").arg(&script).arg("-o").arg(&theirs));
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        std::fs::read_to_string(sysroot.join("boot/loader/grub.cfg")).unwrap(),
        "the node's grub-mkconfig and hostforge's generator disagree"
    );
    std::fs::remove_file(&theirs).unwrap();
    // ... so ostree's own `admin deploy` on the node keeps GRUB's menu right.
    run(Command::new("ostree")
        .args(["admin", "deploy", "--os=node"])
        .arg(format!("--sysroot={}", sysroot.display()))
        .arg("hostforge/x86_64/node-b")
        .env("OSTREE_GRUB2_EXEC", &script));
    assert_eq!(commits()[0], b);
    assert_eq!(first_menu_commit(), b);
    unlock_tree(dir.path());
}

fn assert_settled(block: &str) {
    assert_eq!(block.len(), 1024);
    assert!(
        block.starts_with("# GRUB Environment Block\nboot_success=1\n#"),
        "the trial is not over: {block:?}"
    );
}

/// `image rollback` on an image ends the boot-counting trial in its /boot, so GRUB boots
/// the deployment chosen by hand (and nothing counts down to undo it).
#[test]
fn offline_rollback_ends_a_boot_counting_trial() {
    let (repo, a) = composed_node();
    let b = composed_node_b();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.raw");
    assert_ok(
        &image_build_cmd(
            &repo,
            "hostforge/x86_64/node-b",
            "qemu.yaml",
            "raw",
            &img,
            None,
        )
        .args(["--previous", "hostforge/x86_64/node"])
        .output()
        .unwrap(),
    );
    // /boot is the filesystem at 2 MiB (images/qemu.yaml).
    let boot = 2u64 << 20;
    write_grubenv(&img, boot, &trial_block(2));
    let read = || read_grubenv(&img, boot);
    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["commit"], b.as_str());
    assert_ok(
        &hostforge_cmd()
            .args(["image", "rollback"])
            .arg(&img)
            .output()
            .unwrap(),
    );
    assert_settled(&read());
    assert_eq!(image_status(&img)["deployments"][0]["commit"], a.as_str());
    unlock_tree(dir.path());
}

/// Two operations on one image file at once: the second is refused with a clear message
/// while the first holds the image's workspace, and the first still completes; the image
/// is whole afterwards.
#[test]
fn a_second_operation_on_the_same_image_is_refused_while_the_first_runs() {
    let (repo, _) = composed_node();
    let b = composed_node_b();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.raw");
    assert_ok(&image_build(
        &repo,
        "hostforge/x86_64/node",
        "qemu.yaml",
        "raw",
        &img,
        None,
    ));
    // The workspace is named after the image's path; on tmpfs when there is room.
    let hash = run(Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$1\" | sha256sum")
        .arg("sh")
        .arg(&img));
    let scratch = Path::new("/dev/shm").join(format!("hostforge-image-{}", &hash[..16]));
    let fallback = dir.path().join(".node.raw.hostforge-scratch");
    let first = hostforge_cmd()
        .args(["image", "deploy"])
        .arg(&img)
        .arg("--repo")
        .arg(&repo)
        .args(["--ref", "hostforge/x86_64/node-b"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !(scratch.join(".lock").exists() || fallback.join(".lock").exists()) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the first operation never claimed its workspace"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = hostforge_cmd()
        .args(["image", "rollback"])
        .arg(&img)
        .output()
        .unwrap();
    assert_fails_with(
        &second,
        &["in use by another hostforge image build or operation"],
    );
    let first = first.wait_with_output().unwrap();
    assert_ok(&first);
    // Each phase of the offline deploy says when it is done, with its size.
    let said = stderr(&first);
    for phase in ["read ", "deploy ", "filesystems ", "output "] {
        assert!(
            said.lines()
                .any(|l| l.starts_with(phase) && l.contains("GiB") != (phase == "deploy ")),
            "no {phase:?} line in {said}"
        );
    }
    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["commit"].as_str().unwrap(), b);
    assert!(!scratch.exists() && !fallback.exists());
    unlock_tree(dir.path());
}

/// The tmpfs scratch directory of operations on `img` (named after its path), and the stale
/// claim and half-removed directories of dead processes in the tmpfs.
fn leftovers(img: &Path) -> Vec<String> {
    let hash = run(Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$1\" | sha256sum")
        .arg("sh")
        .arg(img));
    let mut left = Vec::new();
    let scratch = Path::new("/dev/shm").join(format!("hostforge-image-{}", &hash[..16]));
    if scratch.exists() {
        left.push(scratch.display().to_string());
    }
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(".hostforge-claim-")
            .or_else(|| name.strip_prefix(".hostforge-trash-"))
            .map(|rest| rest.split('-').next().unwrap_or(rest));
        if let Some(pid) = pid {
            if !Path::new("/proc").join(pid).exists() {
                left.push(name);
            }
        }
    }
    // Staging directories beside the image.
    for e in std::fs::read_dir(img.parent().unwrap()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            left.push(name);
        }
    }
    left
}

/// SIGKILL at random moments of `image build` and of each offline operation (seeded, several
/// times each): the image is then either the previous bytes or a complete new image (the
/// same bytes as an uninterrupted build; for operations, the same deployments as an
/// uninterrupted run), the next run succeeds, and it leaves no scratch or staging behind.
#[test]
fn image_build_and_operations_killed_at_random_moments() {
    let (repo, a) = composed_node();
    let b = composed_node_b();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let img = work.join("node.raw");
    let same = |x: &Path, y: &Path| {
        Command::new("cmp")
            .arg("-s")
            .arg(x)
            .arg(y)
            .status()
            .unwrap()
            .success()
    };
    let copy = |from: &Path, to: &Path| {
        run(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
    };
    let build = |r: &str, out: &Path| {
        let mut cmd = hostforge_cmd();
        cmd.args(["image", "build", "-q", "--repo"])
            .arg(&repo)
            .args(["--ref", r, "--layout"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml"))
            .args(["--format", "raw", "-o"])
            .arg(out)
            .env("SOURCE_DATE_EPOCH", "1700000000");
        cmd
    };
    let timed = |cmd: &mut Command| {
        let start = std::time::Instant::now();
        assert_ok(&cmd.output().unwrap());
        start.elapsed().as_millis() as u64
    };
    let mut rng = Rng::seeded("image kills");
    let mut killed = 0;

    // image build over an existing image of B; the new one is A's.
    let old = dir.path().join("old.raw");
    let new = dir.path().join("new.raw");
    timed(&mut build("hostforge/x86_64/node-b", &old));
    let whole = timed(&mut build("hostforge/x86_64/node", &new));
    for i in 0..3 {
        copy(&old, &img);
        let after = std::time::Duration::from_millis(rng.below(whole));
        let (ended, out) = kill_after(&mut build("hostforge/x86_64/node", &img), after);
        if ended {
            assert_ok(&out);
        } else {
            killed += 1;
        }
        assert!(
            same(&img, &old) || same(&img, &new),
            "build killed after {after:?} (run {i}): the output is neither the old image nor the new one"
        );
        assert_ok(&build("hostforge/x86_64/node", &img).output().unwrap());
        assert!(same(&img, &new));
        assert_eq!(leftovers(&img), Vec::<String>::new(), "build run {i}");
    }

    // The offline operations, each from one starting image (A default, B deployed for pin
    // and rollback to have two deployments).
    let two = dir.path().join("two.raw");
    copy(&new, &two);
    let deploy_b = |target: &Path| {
        let mut cmd = hostforge_cmd();
        cmd.args(["image", "deploy"])
            .arg(target)
            .arg("--repo")
            .arg(&repo)
            .args(["--ref", "hostforge/x86_64/node-b"]);
        cmd
    };
    timed(&mut deploy_b(&two));
    type Op<'a> = (&'a str, &'a Path, Box<dyn Fn(&Path) -> Command + 'a>);
    let ops: [Op; 3] = [
        ("deploy", &new, Box::new(deploy_b)),
        (
            "rollback",
            &two,
            Box::new(|t: &Path| {
                let mut cmd = hostforge_cmd();
                cmd.args(["image", "rollback"]).arg(t);
                cmd
            }),
        ),
        (
            "pin",
            &two,
            Box::new(|t: &Path| {
                let mut cmd = hostforge_cmd();
                cmd.args(["image", "pin", "--index", "1"]).arg(t);
                cmd
            }),
        ),
    ];
    for (name, start, op) in &ops {
        let reference = dir.path().join(format!("{name}.raw"));
        copy(start, &reference);
        let whole = timed(&mut op(&reference));
        let expected = image_status(&reference);
        for i in 0..2 {
            copy(start, &img);
            let after = std::time::Duration::from_millis(rng.below(whole));
            let (ended, out) = kill_after(&mut op(&img), after);
            if ended {
                assert_ok(&out);
            } else {
                killed += 1;
            }
            assert!(
                same(&img, start) || image_status(&img) == expected,
                "{name} killed after {after:?} (run {i}): the image is neither as before nor as after"
            );
            assert_ok(&op(&img).output().unwrap());
            image_status(&img);
            assert_eq!(leftovers(&img), Vec::<String>::new(), "{name} run {i}");
        }
    }
    eprintln!("{killed} runs killed");
    assert!(
        killed >= 5,
        "too few runs were killed ({killed}) to test anything"
    );
    let _ = (a, b);
    unlock_tree(dir.path());
}

/// `image build` onto a small filesystem, with its scratch space there too (it fills while
/// the commit is pulled and deployed) or elsewhere (it fills while the image is written): a
/// clear error naming the places, the previous image as it was, no staging or scratch left.
#[test]
fn image_build_on_a_full_disk_fails_clearly_and_loses_nothing() {
    let (repo, _) = composed_node();
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(&dir.path().join("small"), "48m");
    let img = fs.0.join("node.qcow2");
    std::fs::write(&img, "the previous image").unwrap();
    let tmp = fs.0.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for with_tmpdir in [true, false] {
        let mut cmd = hostforge_cmd();
        cmd.args(["image", "build", "-q", "--repo"])
            .arg(&repo)
            .args(["--ref", "hostforge/x86_64/node", "--layout"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml"))
            .arg("-o")
            .arg(&img);
        if with_tmpdir {
            cmd.arg("--tmpdir").arg(&tmp);
        }
        let out = cmd.output().unwrap();
        eprintln!("--tmpdir {with_tmpdir}: {}", stderr(&out).trim());
        assert_fails_with(&out, &["out of disk space", fs.0.to_str().unwrap()]);
        assert_eq!(std::fs::read(&img).unwrap(), b"the previous image");
        let mut left: Vec<String> = std::fs::read_dir(&fs.0)
            .unwrap()
            .chain(std::fs::read_dir(&tmp).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "node.qcow2" && n != "tmp")
            .collect();
        left.extend(leftovers(&img));
        assert_eq!(left, Vec::<String>::new(), "--tmpdir {with_tmpdir}");
    }
}

/// An image built with `--remote-url` and `--remote-gpg-key` follows that remote: its
/// deployments' origins say `REMOTE:REF`, and ostree's own upgrader on the node's sysroot
/// refuses a newer commit and summary signed by a key the node does not trust, then pulls
/// them once the trusted key signs.
#[test]
fn image_nodes_follow_a_signed_remote() {
    let (repo, _) = composed_node();
    let b = composed_node_b();
    let key = GpgKey::new("publisher");
    let stranger = GpgKey::new("stranger");
    let dir = tempfile::tempdir().unwrap();
    let r = "hostforge/x86_64/node";

    // The published repo has B on the node's ref.
    let served = dir.path().join("served");
    ostree_at(&served, &["init", "--mode=archive"]);
    ostree_at(&served, &["pull-local", repo.to_str().unwrap(), &b]);
    ostree_at(&served, &["refs", &format!("--create={r}"), &b]);
    let sign = |k: &GpgKey| {
        let home = format!("--gpg-homedir={}", k.home_str());
        ostree_at(&served, &["gpg-sign", &home, &b, &k.id]);
        ostree_at(
            &served,
            &["summary", "-u", &format!("--gpg-sign={}", k.id), &home],
        );
    };
    sign(&stranger);

    let img = dir.path().join("node.raw");
    let url = format!("file://{}", served.display());
    let out = image_build_cmd(&repo, r, "qemu.yaml", "raw", &img, None)
        .args(["--remote-url", &url, "--remote-gpg-key"])
        .arg(&key.public)
        .output()
        .unwrap();
    assert_ok(&out);
    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["refspec"], format!("hostforge:{r}"));

    let sysroot = dir.path().join("sysroot");
    extract_sysroot(&img, &sysroot);
    let srepo = sysroot.join("ostree/repo");
    let remotes = ostree_at(&srepo, &["remote", "list", "-u"]);
    assert!(remotes.contains(&url), "{remotes}");
    let upgrade = || {
        Command::new("ostree")
            .args(["admin", "upgrade", "--os=node", "--pull-only"])
            .arg(format!("--sysroot={}", sysroot.display()))
            .output()
            .unwrap()
    };
    let refused = upgrade();
    assert!(!refused.status.success(), "pulled what a stranger signed");
    assert!(
        stderr(&refused).contains("signature"),
        "{}",
        stderr(&refused)
    );
    assert_ne!(
        ostree_at(&srepo, &["rev-parse", &format!("hostforge:{r}")]).trim(),
        b
    );
    sign(&key);
    assert_ok(&upgrade());
    assert_eq!(
        ostree_at(&srepo, &["rev-parse", &format!("hostforge:{r}")]).trim(),
        b
    );
    unlock_tree(dir.path());
}

/// `hostforge install`'s failures are named and safe: a disk smaller than the layout, an
/// unreachable URL and a commit signed by a key the installer does not trust are refused
/// before the disk is touched; an install that dies once it started writing leaves no
/// partition table (nothing boots a half-written OS); then a good install from the signed
/// remote carries its first-boot config. (The boot tier boots such a disk.)
#[test]
fn install_fails_clearly_and_never_leaves_half_an_os() {
    let (repo, commit) = composed_node();
    let key = GpgKey::new("installer");
    let stranger = GpgKey::new("stranger");
    let dir = tempfile::tempdir().unwrap();
    let r = "hostforge/x86_64/node";
    let served = dir.path().join("served");
    ostree_at(&served, &["init", "--mode=archive"]);
    ostree_at(&served, &["pull-local", repo.to_str().unwrap(), &commit]);
    ostree_at(&served, &["refs", &format!("--create={r}"), &commit]);
    let sign = |k: &GpgKey| {
        let home = format!("--gpg-homedir={}", k.home_str());
        ostree_at(&served, &["gpg-sign", &home, &commit, &k.id]);
        ostree_at(
            &served,
            &["summary", "-u", &format!("--gpg-sign={}", k.id), &home],
        );
    };
    sign(&stranger);
    let http = Daemon::http(&served);
    let url = format!("http://127.0.0.1:{}", http.port);
    let spec = dir.path().join("first-boot.yaml");
    std::fs::write(
        &spec,
        "ssh-keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInstallTest]\n\
         network: {hostname: rack3-node9, bootproto: static, device: eth0, ip: 10.0.2.15, \
         netmask: 24, gateway: 10.0.2.2}\n",
    )
    .unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/metal.yaml");
    let install = |disk: &Path, url: &str, env: &[(&str, &str)]| {
        let mut cmd = hostforge_cmd();
        cmd.args(["install", "--device"])
            .arg(disk)
            .arg("--layout")
            .arg(&layout)
            .args(["--url", url, "--ref", r, "--gpg-key"])
            .arg(&key.public)
            .arg("--config")
            .arg(&spec);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // A disk with something on it, recognizable at both ends.
    let disk = dir.path().join("disk.raw");
    let old = |disk: &Path| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(disk)
            .unwrap();
        f.set_len(5 << 30).unwrap();
        f.write_all_at(b"an old OS", 512).unwrap();
        f.write_all_at(b"an old OS", (5 << 30) - 512).unwrap();
    };
    let ends = |disk: &Path| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(disk).unwrap();
        let mut a = [0u8; 9];
        let mut b = [0u8; 9];
        f.read_exact_at(&mut a, 512).unwrap();
        f.read_exact_at(&mut b, (5 << 30) - 512).unwrap();
        (a.to_vec(), b.to_vec())
    };
    let untouched = (b"an old OS".to_vec(), b"an old OS".to_vec());
    old(&disk);

    let small = dir.path().join("small.raw");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    assert_fails_with(
        &install(&small, &url, &[]),
        &[
            "small.raw is too small: 1024 MiB",
            "needs at least 4096 MiB",
        ],
    );

    let nobody = format!("http://127.0.0.1:{}", free_port());
    assert_fails_with(&install(&disk, &nobody, &[]), &[&nobody, "pulling"]);
    assert_eq!(ends(&disk), untouched);

    let o = install(&disk, &url, &[]);
    assert!(!o.status.success(), "installed what a stranger signed");
    let e = stderr(&o).to_lowercase();
    assert!(e.contains("gpg") || e.contains("signature"), "{e}");
    assert_eq!(ends(&disk), untouched);

    sign(&key);
    let o = install(&disk, &url, &[("HOSTFORGE_FAULT", "gpt")]);
    assert!(!o.status.success());
    let (head, tail) = ends(&disk);
    assert_ne!(
        &head[..8],
        b"EFI PART",
        "a primary GPT after a failed install"
    );
    assert_ne!(head, untouched.0, "the old partition table survived");
    assert_ne!(tail, untouched.1, "the old backup GPT survived");
    assert!(
        !hostforge_cmd()
            .args(["image", "status"])
            .arg(&disk)
            .output()
            .unwrap()
            .status
            .success(),
        "a half-installed disk has deployments to show"
    );

    let o = install(&disk, &url, &[]);
    assert_ok(&o);
    let st = image_status(&disk);
    assert_eq!(st["deployments"][0]["commit"], commit.as_str());
    assert_eq!(st["deployments"][0]["refspec"], format!("hostforge:{r}"));
    // The root filesystem follows bios-boot, the ESP and /boot (1 + 127 + 512 MiB).
    let cat = |path: &str| {
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(format!("{}?offset={}", disk.display(), 641u64 << 20)))
    };
    let dep = format!("/ostree/deploy/node/deploy/{commit}.0");
    assert_eq!(cat(&format!("{dep}/etc/hostname")), "rack3-node9\n");
    assert!(cat(&format!("{dep}/etc/shadow")).starts_with("root:!:"));
    assert_eq!(
        cat("/ostree/deploy/node/var/roothome/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInstallTest\n"
    );
    let net = cat(&format!(
        "{dep}/etc/systemd/network/10-hostforge-first-boot.network"
    ));
    assert!(
        net.contains("Name=eth0") && net.contains("Address=10.0.2.15/24"),
        "{net}"
    );
    unlock_tree(dir.path());
}

/// A node recompose reuses the initramfs kept from an earlier dracut run while nothing dracut
/// reads changed (a file added under /usr/share), and that image is byte for byte what dracut
/// builds anew (`--rebuild-initramfs`); a file added where dracut takes a whole directory
/// (`/usr/lib/modprobe.d/*.conf`) makes dracut run again, and the new initramfs has it. The
/// image is compressed by hostforge unless the tree's dracut config chose a compressor.
#[test]
fn node_recompose_reuses_the_initramfs_until_an_input_changes() {
    let (_, node) = composed_node();
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let tf_dir = dir.path().join("tf");
    write_node_treefiles(&tf_dir);
    let repo = dir.path().join("repo");
    ostree_at(&repo, &["init", "--mode=archive"]);
    let (shared, _) = composed_node();
    ostree_at(&repo, &["pull-local", shared.to_str().unwrap(), &node]);
    let base = std::fs::read_to_string(tf_dir.join("node.yaml")).unwrap();
    let compose = |name: &str, postprocess: &str, flags: &[&str]| {
        let tf = tf_dir.join(format!("{name}.yaml"));
        let text = base.replace(
            "ref: hostforge/${basearch}/node",
            &format!("ref: test/{name}"),
        );
        std::fs::write(&tf, format!("{text}  - {postprocess}\n")).unwrap();
        let o = hostforge_cmd()
            .args(["compose", "tree", "--repo"])
            .arg(&repo)
            .arg("--cachedir")
            .arg(top.join("target/test-node/cache"))
            .args(flags)
            .arg(&tf)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert_ok(&o);
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        let line = said
            .lines()
            .find(|l| l.contains("initramfs") && l.contains("kernel "))
            .unwrap_or_else(|| panic!("no initramfs step line in {said}"))
            .to_string();
        let kver = ostree_at(
            &repo,
            &[
                "show",
                "--print-metadata-key=ostree.linux",
                &format!("test/{name}"),
            ],
        );
        let kver = kver.trim().trim_matches('\'').to_string();
        let image = Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args([
                "cat",
                &format!("test/{name}"),
                &format!("/usr/lib/modules/{kver}/initramfs.img"),
            ])
            .output()
            .unwrap();
        assert!(image.status.success());
        (line, image.stdout)
    };
    // Whatever the cache held, this leaves an initramfs of these inputs kept.
    compose("seed", "echo seed > /usr/share/hostforge-x", &[]);
    let (said, reused) = compose("share", "echo x > /usr/share/hostforge-x", &[]);
    assert!(said.contains("initramfs reused"), "{said}");
    let (said, fresh) = compose(
        "share-fresh",
        "echo x > /usr/share/hostforge-x",
        &["--rebuild-initramfs"],
    );
    assert!(
        said.contains("initramfs built by dracut (--rebuild-initramfs), gzip by hostforge"),
        "{said}"
    );
    assert!(
        reused == fresh,
        "the reused initramfs differs from a fresh one"
    );

    let (said, changed) = compose(
        "modprobe",
        "mkdir -p /usr/lib/modprobe.d && \
         echo 'options loop max_loop=9' > /usr/lib/modprobe.d/hostforge-test.conf",
        &[],
    );
    assert!(
        said.contains("initramfs built by dracut (/usr/lib") && said.contains(" changed)"),
        "{said}"
    );
    assert!(changed != fresh);
    let img = dir.path().join("modprobe.img");
    std::fs::write(&img, &changed).unwrap();
    let listing = run(Command::new("lsinitrd").arg(&img));
    assert!(
        listing.contains("usr/lib/modprobe.d/hostforge-test.conf"),
        "{listing}"
    );

    // A compressor chosen in the tree's dracut config is dracut's to use (dracut runs: an
    // earlier run of this test may have kept this very image).
    let (said, zstd) = compose(
        "zstd",
        "mkdir -p /etc/dracut.conf.d && echo compress=zstd > /etc/dracut.conf.d/zstd.conf",
        &["--rebuild-initramfs"],
    );
    assert!(
        said.contains("compressed by dracut: /etc/dracut.conf.d/zstd.conf sets compress="),
        "{said}"
    );
    assert!(zstd.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "not zstd");
    std::fs::write(&img, &zstd).unwrap();
    let listing = run(Command::new("lsinitrd").arg(&img));
    assert!(
        listing.contains("usr/lib/ostree/ostree-prepare-root"),
        "{listing}"
    );
}
