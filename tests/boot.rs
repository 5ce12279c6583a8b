//! Boot tier: compose treefiles/node.yaml from the fixture distro, check the kernel and the
//! initramfs in the commit, then boot it under QEMU and read the serial console until the
//! node prints which commit it booted.
//!
//! The disk comes from `hostforge image build` with `images/qemu.yaml`.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// Boots the disk image and waits for `needle` on the serial console.
fn boot_until(disk: &Path, format: &str, needle: &str) -> String {
    let tag: String = needle.chars().rev().take(12).collect();
    let args = [
        "-drive".to_string(),
        format!("file={},if=virtio,format={format}", disk.display()),
    ];
    let (found, log) = qemu_serial_until(&args, &format!("boot-{tag}"), |l| l.contains(needle));
    assert!(
        found,
        "{needle:?} not seen on the serial console; log in target/boot-logs/boot-{tag}.log"
    );
    log
}

#[test]
fn node_commit_is_bootable_and_boots() {
    let (repo, commit) = composed_node();
    let r = "hostforge/x86_64/node";
    let env = Env::new();
    // Look at the commit through this test's own repo.
    env.ostree(&["pull-local", repo.to_str().unwrap(), r]);
    assert_eq!(
        env.ostree(&["show", "--print-metadata-key=ostree.bootable", r])
            .trim(),
        "true"
    );
    let kver = env.ostree(&["show", "--print-metadata-key=ostree.linux", r]);
    let kver = kver.trim().trim_matches('\'');
    let ls = env.ostree(&["ls", r, &format!("/usr/lib/modules/{kver}")]);
    assert!(
        ls.contains(&format!("/usr/lib/modules/{kver}/vmlinuz")),
        "{ls}"
    );
    assert!(
        ls.contains(&format!("/usr/lib/modules/{kver}/initramfs.img")),
        "{ls}"
    );
    let initramfs = env.path().join("initramfs.img");
    let cat = Command::new("ostree")
        .arg(format!("--repo={}", env.repo().display()))
        .args(["cat", r, &format!("/usr/lib/modules/{kver}/initramfs.img")])
        .output()
        .unwrap();
    // hostforge compressed dracut's archive on every core: several gzip members (libdeflate's
    // header, mtime 0, level 9), which lsinitrd reads below and the kernel unpacks in the boot.
    let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    let members = cat.stdout.windows(10).filter(|w| *w == header).count();
    assert!(
        cat.stdout.starts_with(&header) && members >= 2,
        "{members} gzip members"
    );
    std::fs::write(&initramfs, cat.stdout).unwrap();
    let listing = run(Command::new("lsinitrd").arg(&initramfs));
    assert!(
        listing.contains("usr/lib/ostree/ostree-prepare-root"),
        "{listing}"
    );
    assert!(
        listing.contains("initrd-root-fs.target.wants/ostree-prepare-root.service"),
        "{listing}"
    );
    let unit = run(Command::new("lsinitrd")
        .arg(&initramfs)
        .args(["-f", "usr/lib/systemd/system/ostree-prepare-root.service"]));
    assert!(
        unit.contains("hostforge's ostree dracut module"),
        "our unit, not the distro's: {unit}"
    );

    // The image issue's code makes the disk: BIOS GRUB, /boot and / on ext4.
    let disk = env.path().join("node.qcow2");
    let out = image_build(&repo, r, "qemu.yaml", "qcow2", &disk, None);
    assert_ok(&out);
    run(Command::new("qemu-img").arg("check").arg(&disk));
    let log = boot_until(&disk, "qcow2", &format!("hostforge-booted: {commit}"));
    assert!(log.contains("GRUB"), "booted through GRUB");
    assert!(
        log.contains("ostree-prepare-root"),
        "the initramfs ran ostree-prepare-root"
    );
}

#[test]
fn ab_image_deploy_boot_rollback_boot() {
    let (repo, a) = composed_node();
    let b = composed_node_b();
    assert_ne!(a, b);
    let dir = tempfile::tempdir().unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/qemu.yaml");
    let hf = || hostforge_cmd();

    // --previous ships an image with the rollback entry already there.
    let ab = dir.path().join("ab.qcow2");
    assert_ok(
        &hf()
            .args(["image", "build", "--repo"])
            .arg(&repo)
            .args([
                "--ref",
                "hostforge/x86_64/node-b",
                "--previous",
                "hostforge/x86_64/node",
                "--layout",
            ])
            .arg(&layout)
            .arg("-o")
            .arg(&ab)
            .output()
            .unwrap(),
    );
    let st = image_status(&ab);
    assert_eq!(st["deployments"][0]["commit"], b.as_str(), "{st}");
    assert_eq!(st["deployments"][1]["commit"], a.as_str(), "{st}");

    // Image of A; deploy B offline; B boots; roll back; A boots.
    let img = dir.path().join("node.qcow2");
    assert_ok(
        &hf()
            .args(["image", "build", "--repo"])
            .arg(&repo)
            .args(["--ref", "hostforge/x86_64/node", "--layout"])
            .arg(&layout)
            .arg("-o")
            .arg(&img)
            .output()
            .unwrap(),
    );
    assert_eq!(
        image_status(&img)["deployments"].as_array().unwrap().len(),
        1
    );
    assert_ok(
        &hf()
            .args(["image", "deploy"])
            .arg(&img)
            .arg("--repo")
            .arg(&repo)
            .args(["--ref", "hostforge/x86_64/node-b"])
            .output()
            .unwrap(),
    );
    run(Command::new("qemu-img").arg("check").arg(&img));
    let st = image_status(&img);
    let deps = st["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{st}");
    assert_eq!(deps[0]["commit"], b.as_str());
    assert_eq!(deps[0]["default"], true);
    assert_eq!(deps[1]["commit"], a.as_str());
    assert_eq!(deps[1]["rollback"], true);
    assert!(
        deps[0]["kargs"].as_str().unwrap().contains("console=ttyS0"),
        "kargs carried over"
    );
    // The deployments still share inodes with the repo's objects after the offline edit.
    let raw = dir.path().join("check.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&img)
        .arg(&raw));
    let stat = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!(
            "stat /ostree/deploy/node/deploy/{a}.0/usr/bin/bash"
        ))
        .arg(format!("{}?offset={}", raw.display(), 514u64 << 20)));
    let links: u32 = stat
        .split("Links: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        links >= 2,
        "bash is no longer hardlinked to its object: {stat}"
    );
    std::fs::remove_file(&raw).unwrap();
    boot_until(&img, "qcow2", &format!("hostforge-booted: {b}"));

    let out = hf().args(["image", "rollback"]).arg(&img).output().unwrap();
    assert_ok(&out);
    run(Command::new("qemu-img").arg("check").arg(&img));
    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["commit"], a.as_str(), "{st}");
    assert_eq!(st["deployments"][1]["commit"], b.as_str(), "{st}");
    boot_until(&img, "qcow2", &format!("hostforge-booted: {a}"));

    // A killed rollback leaves the image as it was.
    let before = std::fs::read(&img).unwrap();
    let out = hf()
        .args(["image", "rollback"])
        .arg(&img)
        .env("HOSTFORGE_FAULT", "rollback")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a killed rollback changed the image"
    );
    unlock_tree(dir.path());
}

/// `images/metal.yaml`: one raw disk that boots through legacy BIOS and through UEFI (OVMF).
/// Its default deployment is on trial with no boots left (as after failed boots), so each
/// GRUB boots the previous deployment and records the fallback with `save_env`; the node
/// then makes that deployment the default again: boot counting works with both firmwares.
#[test]
fn metal_image_boots_with_bios_and_with_uefi() {
    let (repo, commit) = composed_node();
    let previous = composed_node_b();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("metal.raw");
    assert_ok(
        &image_build_cmd(
            &repo,
            "hostforge/x86_64/node",
            "metal.yaml",
            "raw",
            &disk,
            None,
        )
        .args(["--previous", "hostforge/x86_64/node-b"])
        .output()
        .unwrap(),
    );
    // /boot follows the 1 MiB BIOS boot partition and the 127 MiB ESP (images/metal.yaml).
    write_grubenv(&disk, 129 << 20, &trial_block(0));
    // The ESP holds GRUB as the removable-media loader.
    let esp = format!("{}@@{}", disk.display(), 2 << 20);
    let listing = run(Command::new("mdir").args(["-i", &esp, "::/EFI/BOOT"]));
    assert!(listing.contains("BOOTX64  EFI"), "{listing}");
    let needle = format!("rolled back from {commit} to {previous}");
    let drive = [
        "-drive".to_string(),
        format!("file={},if=virtio,format=raw,snapshot=on", disk.display()),
    ];
    let (found, log) = qemu_serial_until(&drive, "metal-bios", |l| l.contains(&needle));
    assert!(found, "BIOS boot: see target/boot-logs/metal-bios.log");
    assert!(log.contains(&format!("hostforge-booted: {previous}")));
    let mut uefi = vec!["-bios".to_string(), "/usr/share/ovmf/OVMF.fd".to_string()];
    uefi.extend(drive);
    let (found, log) = qemu_serial_until(&uefi, "metal-uefi", |l| l.contains(&needle));
    assert!(found, "UEFI boot: see target/boot-logs/metal-uefi.log");
    assert!(
        log.contains("BdsDxe") || log.contains("UEFI"),
        "went through OVMF"
    );
    assert!(log.contains(&format!("hostforge-booted: {previous}")));
    unlock_tree(dir.path());
}

/// Waits (10 minutes at most) until the console has shown every one of `needles`, in any order.
fn wait_all(vm: &mut Vm, needles: &[&str]) {
    let mut seen = vec![false; needles.len()];
    let (done, _) = vm.until(600, |l| {
        for (i, n) in needles.iter().enumerate() {
            seen[i] |= l.contains(n);
        }
        seen.iter().all(|s| *s)
    });
    assert!(
        done,
        "not all of {needles:?} seen; log in target/boot-logs/"
    );
}

/// A remote served over HTTP on 127.0.0.1 (QEMU's gateway, 10.0.2.2, in the guest), the
/// node treefile as shipped plus `files` (this node's agent configuration, quicker timers,
/// the agent's lines on the console), and the signed composes published there.
struct Publisher {
    dir: tempfile::TempDir,
    served: std::path::PathBuf,
    http: Daemon,
    tf: std::path::PathBuf,
    node: String,
}

const UPDATES_REF: &str = "hostforge/x86_64/updates";

impl Publisher {
    /// `files`: (name, destination, text, mode) added to the node.
    fn new(files: &[(&str, &str, String, u32)]) -> Publisher {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        ostree_at(&served, &["init", "--mode=archive"]);
        let http = Daemon::http(&served);
        let tf = dir.path().join("tf");
        write_node_treefiles(&tf);
        let quick = [
            (
                "timer.conf",
                "/etc/systemd/system/hostforge-update.timer.d/10-test.conf",
                // An empty assignment resets every trigger of the timer, once, before the new ones.
                "[Timer]\nOnBootSec=\nOnBootSec=3\nOnUnitInactiveSec=4\nRandomizedDelaySec=0\n\
                 AccuracySec=1\n"
                    .to_string(),
                0o644,
            ),
            (
                "service.conf",
                "/etc/systemd/system/hostforge-update.service.d/10-test.conf",
                "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n\
                 ExecStartPost=/usr/bin/hostforge-update status\n"
                    .to_string(),
                0o644,
            ),
        ];
        let mut add = String::new();
        for (name, dest, text, mode) in files.iter().chain(quick.iter()) {
            let p = tf.join("node").join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
            add.push_str(&format!("  - [node/{name}, {dest}]\n"));
        }
        let node = std::fs::read_to_string(tf.join("node.yaml"))
            .unwrap()
            .replace(
                "ref: hostforge/${basearch}/node",
                &format!("ref: {UPDATES_REF}"),
            )
            .replace("add-files:\n", &format!("add-files:\n{add}"));
        assert!(
            node.contains("updates.conf") && node.contains(UPDATES_REF),
            "{node}"
        );
        Publisher {
            dir,
            served,
            http,
            tf,
            node,
        }
    }

    /// Composes the node as `variant` (in /usr/share/hostforge-variant), with `top` added to
    /// the treefile's top level, signed by `signer`, into the served repo; returns the commit.
    fn compose(&self, variant: &str, top: &str, signer: Option<&GpgKey>) -> String {
        let tfile = self.tf.join(format!("{variant}.yaml"));
        std::fs::write(
            &tfile,
            format!(
                "{top}{}  - echo {variant} > /usr/share/hostforge-variant\n",
                self.node
            ),
        )
        .unwrap();
        let mut cmd = hostforge_cmd();
        cmd.args(["compose", "tree", "--repo"])
            .arg(&self.served)
            .arg("--cachedir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-node/cache"));
        if let Some(k) = signer {
            cmd.args(["--gpg-sign", &k.id, "--gpg-homedir", k.home_str()]);
        }
        let out = cmd.arg(&tfile).output().unwrap();
        assert_ok(&out);
        ostree_at(&self.served, &["rev-parse", UPDATES_REF])
            .trim()
            .to_string()
    }

    /// The qcow2 image of the current commit, following the remote, trusting `key`; and the
    /// QEMU arguments that boot it with user networking.
    fn image(&self, key: &GpgKey) -> (std::path::PathBuf, Vec<String>) {
        let img = self.dir.path().join("node.qcow2");
        let remote = format!("http://10.0.2.2:{}", self.http.port);
        assert_ok(
            &image_build_cmd(&self.served, UPDATES_REF, "qemu.yaml", "qcow2", &img, None)
                .args(["--remote-url", &remote, "--remote-gpg-key"])
                .arg(&key.public)
                .output()
                .unwrap(),
        );
        let args = vec![
            "-drive".to_string(),
            format!("file={},if=virtio,format=qcow2", img.display()),
            "-nic".to_string(),
            "user,model=virtio-net-pci".to_string(),
        ];
        (img, args)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        unlock_tree(self.dir.path());
    }
}

fn fleet_lock_conf(
    lock: &FleetLockServer,
    extra: &str,
) -> (&'static str, &'static str, String, u32) {
    (
        "updates.conf",
        "/etc/hostforge/updates.conf",
        format!(
            "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\n\
             base_url = \"http://10.0.2.2:{}\"\n[identity]\ngroup = \"workers\"\n{extra}",
            lock.port
        ),
        0o644,
    )
}

/// Issue 16's proof. A node built from a signed remote served over HTTP (QEMU's gateway,
/// 10.0.2.2, is the host's loopback) runs the update agent with `fleet_lock`:
/// - B is composed, signed and published; the agent pulls, stages, takes the lock, reboots
///   into B and gives the lock back;
/// - while the FleetLock server denies, D is staged and the node stays on B; after the grant
///   it reboots into D and gives the lock back;
/// - E, signed by another key, and F, not signed, are refused: the node stays on D, and
///   `hostforge image status` reads the failure from the disk afterwards.
#[test]
fn nodes_follow_their_signed_remote_and_reboot_by_fleet_lock() {
    let key = GpgKey::new("publisher");
    let stranger = GpgKey::new("stranger");
    let lock = FleetLockServer::start();
    let publisher = Publisher::new(&[fleet_lock_conf(&lock, "")]);
    let compose = |variant: &str, signer: Option<&GpgKey>| publisher.compose(variant, "", signer);

    let a = compose("A", Some(&key));
    let (img, args) = publisher.image(&key);
    let mut vm = Vm::start(&args, "updates", true);
    vm.wait_for(&format!("hostforge-booted: {a}"), 600);
    vm.wait_for(&format!("is at {a}, which is booted"), 300);

    // B: published, pulled, staged, lock taken, rebooted into, lock given back.
    let b = compose("B", Some(&key));
    vm.wait_for(&format!("staged {b}"), 300);
    vm.wait_for(&format!("rebooting into {b} (strategy fleet_lock)"), 120);
    wait_all(
        &mut vm,
        &[
            &format!("hostforge-booted: {b}"),
            "released the reboot lock",
        ],
    );
    assert_eq!(lock.holder("workers"), None, "{:?}", lock.calls());
    let calls = lock.calls();
    let taken = calls
        .iter()
        .find(|c| c.op == "pre-reboot" && c.granted)
        .expect("no lock was taken");
    assert_eq!(taken.group, "workers");
    assert!(
        calls
            .iter()
            .any(|c| c.op == "steady-state" && c.id == taken.id),
        "the lock was given back by another node id: {calls:?}"
    );

    // D while the server denies: staged, no reboot; after the grant, rebooted into.
    lock.deny();
    let d = compose("D", Some(&key));
    vm.wait_for(&format!("staged {d}"), 300);
    let mut waited = vm.wait_for("denied the reboot lock", 120);
    waited += &vm.wait_for("denied the reboot lock", 120);
    waited += &vm.wait_for(&format!("staged:   {d}"), 120);
    assert!(
        !waited.contains("hostforge-booted:") && !waited.contains("rebooting into"),
        "rebooted without the lock:\n{waited}"
    );
    lock.grant();
    vm.wait_for(&format!("rebooting into {d}"), 120);
    wait_all(
        &mut vm,
        &[
            &format!("hostforge-booted: {d}"),
            "released the reboot lock",
        ],
    );
    assert_eq!(lock.holder("workers"), None);

    // E, signed by a stranger: refused, the node stays on D.
    let e = compose("E", Some(&stranger));
    assert_ne!(e, d);
    let refused = vm.wait_for(&format!("failed; staying on {d}"), 300);
    assert!(
        refused.contains("public key not found"),
        "refused for another reason:\n{refused}"
    );
    // F, not signed at all: its summary has no signature either, and the node refuses it.
    let f = compose("F", None);
    assert_ne!(f, e);
    let refused = vm.wait_for("no summary.sig found", 300);
    assert!(
        refused.contains(&format!("failed; staying on {d}")),
        "{refused}"
    );
    let (rebooted, _) = vm.until(20, |l| l.contains("rebooting into"));
    assert!(!rebooted, "rebooted after a refused update");
    drop(vm);

    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["commit"], d.as_str(), "{st}");
    assert_eq!(st["update"]["state"], "failed", "{st}");
    assert_eq!(st["update"]["booted"], d.as_str(), "{st}");
    assert!(
        st["update"]["message"]
            .as_str()
            .unwrap()
            .contains("staying on"),
        "{st}"
    );
}

/// How many lines of `text` start with `needle` (a line the node prints to the console
/// directly, not its copy in the journal's console output).
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.starts_with(needle)).count()
}

/// Issue 17's proof. A node on B (fleet_lock strategy, two boot attempts, a health check
/// that fails on variant C) follows its remote without anyone touching it:
/// - C fails its health check on both of its boots; GRUB's counter runs out and boots B,
///   which makes itself the default again, remembers C, gives the lock back, and stays on B
///   across a reset; the agent does not install C again;
/// - D's initramfs is garbage (dracut's compressor swapped for `cksum`): the kernel cannot
///   unpack it, cannot mount the root and panics; it never reaches userspace, and GRUB's
///   counter alone takes the node back to B;
/// - E, good, is installed and ends its trial; `image status` reads both rollbacks offline.
#[test]
fn nodes_roll_back_by_themselves_when_an_update_fails() {
    let key = GpgKey::new("publisher");
    let lock = FleetLockServer::start();
    let check = "#!/bin/sh\n\
                 v=$(cat /usr/share/hostforge-variant)\n\
                 if [ \"$v\" = C ]; then echo \"variant $v is broken on purpose\"; exit 1; fi\n\
                 echo \"variant $v is healthy\"\n";
    let publisher = Publisher::new(&[
        fleet_lock_conf(&lock, "[rollback]\nboot_attempts = 2\n"),
        (
            "health-variant",
            "/usr/lib/hostforge/health.d/50-variant",
            check.to_string(),
            0o755,
        ),
        // A check as a unit, in the node's own directory: boot-complete.target requires it.
        (
            "health-unit",
            "/etc/hostforge/health.d/hostforge-test-unit.service",
            "[Unit]\nDescription=a health check unit of the test\n[Service]\nType=oneshot\n\
             ExecStart=/bin/echo health unit ran\nStandardOutput=journal+console\n"
                .to_string(),
            0o644,
        ),
    ]);
    let b = publisher.compose("B", "", Some(&key));
    let (img, args) = publisher.image(&key);
    let mut vm = Vm::start(&args, "rollback", true);
    wait_all(
        &mut vm,
        &[
            &format!("hostforge-booted: {b}"),
            "50-variant: variant B is healthy",
            "health unit ran",
            &format!("boot of {b} is good"),
            &format!("is at {b}, which is booted"),
        ],
    );

    // C: staged and put on trial; both boots fail the check; GRUB goes back to B.
    let c = publisher.compose("C", "", Some(&key));
    vm.wait_for(&format!("staged {c}"), 300);
    let saga = vm.wait_for(
        &format!(
            "rolled back from {c} to {b}: health check 50-variant failed (exit status 1): \
             variant C is broken on purpose"
        ),
        900,
    );
    assert_eq!(count(&saga, &format!("hostforge-booted: {c}")), 2, "{saga}");
    assert!(saga.contains("(1 boot(s) left"), "{saga}");
    assert!(saga.contains("(0 boot(s) left"), "{saga}");
    assert!(
        saga.contains("health check 50-variant failed (exit status 1): variant C is broken"),
        "{saga}"
    );
    let after = saga
        .rsplit(&format!("hostforge-booted: {c}"))
        .next()
        .unwrap();
    assert!(after.contains(&format!("hostforge-booted: {b}")), "{saga}");
    vm.wait_for("released the reboot lock", 120);
    vm.wait_for("which failed on this node", 120);
    assert_eq!(lock.holder("workers"), None, "{:?}", lock.calls());
    let ops: Vec<String> = lock.calls().iter().map(|c| c.op.clone()).collect();
    assert_eq!(ops, ["pre-reboot", "steady-state"], "{:?}", lock.calls());

    // The reset button: B again, C not tried again.
    vm.reset();
    let again = vm.wait_for(&format!("boot of {b} is good"), 600);
    assert!(again.contains(&format!("hostforge-booted: {b}")), "{again}");
    let again = vm.wait_for("which failed on this node", 120);
    assert!(!again.contains("staged"), "{again}");

    // D: an initramfs the kernel cannot unpack; GRUB's counter alone goes back.
    let d = publisher.compose("D", "initramfs-args: [--compress, cksum]\n", Some(&key));
    vm.wait_for(&format!("rebooting into {d}"), 300);
    let saga = vm.wait_for(&format!("rolled back from {d} to {b}"), 900);
    assert!(!saga.contains(&format!("hostforge-booted: {d}")), "{saga}");
    assert_eq!(
        saga.matches("] Linux version ").count(),
        3,
        "two boots of D and one of B:\n{saga}"
    );
    assert!(saga.contains("Unable to mount root fs"), "{saga}");
    assert!(
        saga.contains("did not come up healthy in 2 boot(s)"),
        "{saga}"
    );
    vm.wait_for("released the reboot lock", 120);

    // E: good, installed normally, trial ended.
    let e = publisher.compose("E", "", Some(&key));
    vm.wait_for(&format!("rebooting into {e}"), 300);
    wait_all(
        &mut vm,
        &[
            &format!("hostforge-booted: {e}"),
            &format!("boot of {e} is good; its trial is over"),
            "released the reboot lock",
        ],
    );
    assert_eq!(lock.holder("workers"), None);
    drop(vm);

    let st = image_status(&img);
    assert_eq!(st["deployments"][0]["commit"], e.as_str(), "{st}");
    assert_eq!(st["deployments"][1]["commit"], b.as_str(), "{st}");
    let rb = st["update"]["rollbacks"].as_array().unwrap();
    assert_eq!(rb.len(), 2, "{st}");
    assert_eq!(rb[0]["from"], c.as_str());
    assert_eq!(rb[1]["from"], d.as_str());
    assert_eq!(rb[1]["to"], b.as_str());
    assert_eq!(st["update"]["health"]["commit"], e.as_str(), "{st}");
    assert_eq!(st["update"]["health"]["ok"], true, "{st}");
}

/// `openssl passwd -6 -salt hfsalt letmein`: the first-boot config's root password.
const ROOT_HASH: &str =
    "$6$hfsalt$H/9RMoTj02hUdFVo.u/CceURmy0pQY/MdWLBtMHyhySU0WiP6RwNeFQK.Zj438B38vQ4oVHGZPXMgo8sZyZqm0";
const ROOT_PASSWORD: &str = "letmein";
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostforgeInstallTestKey0000 test@installer";

/// `hostforge install` onto a blank disk from a signed remote over HTTP, with a first-boot
/// config, then the disk boots (BIOS; the netboot test below boots installs with UEFI too):
/// the serial console shows the installed commit, root logs in with the config's password, and the host name,
/// root's SSH key and the kernel arguments are the config's; the node follows the remote it
/// was installed from (its agent finds that commit up to date).
#[test]
fn installs_onto_a_blank_disk_and_boots_with_its_first_boot_config() {
    let key = GpgKey::new("install");
    let p = Publisher::new(&[]);
    let commit = p.compose("installed", "", Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let digest = push_toolbox(&reg, &dir.path().join("toolbox"));
    let spec = dir.path().join("first-boot.yaml");
    std::fs::write(
        &spec,
        format!(
            "root-password-hash: \"{ROOT_HASH}\"\nssh-keys: [\"{SSH_KEY}\"]\n\
             network: {{hostname: worker-7}}\nkargs: [hostforge.test=first-boot]\n"
        ),
    )
    .unwrap();
    let disk = dir.path().join("blank.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/metal.yaml");
    let out = hostforge_cmd()
        .args(["install", "--device"])
        .arg(&disk)
        .arg("--layout")
        .arg(&layout)
        .args(["--url", &format!("http://127.0.0.1:{}", p.http.port)])
        .args(["--remote-url", &format!("http://10.0.2.2:{}", p.http.port)])
        .arg("--gpg-key")
        .arg(&key.public)
        .args(["--ref", UPDATES_REF, "--config"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("objects") && err.contains("MiB fetched"),
        "{err}"
    );
    let status = image_status(&disk);
    let dep = &status["deployments"][0];
    assert_eq!(dep["commit"], commit.as_str());
    assert_eq!(dep["refspec"], format!("hostforge:{UPDATES_REF}").as_str());
    assert!(dep["kargs"]
        .as_str()
        .unwrap()
        .contains("hostforge.test=first-boot"));

    let drive = vec![
        "-drive".to_string(),
        format!("file={},if=virtio,format=raw", disk.display()),
        "-nic".to_string(),
        "user,model=virtio-net-pci".to_string(),
    ];
    let mut vm = Vm::start(&drive, "install-bios", false);
    wait_all(
        &mut vm,
        &[
            &format!("hostforge-booted: {commit}"),
            &format!("is at {commit}, which is booted"),
        ],
    );
    let shown = vm.login_and_run(
        "root",
        ROOT_PASSWORD,
        "cat /proc/sys/kernel/hostname /root/.ssh/authorized_keys /proc/cmdline",
    );
    assert!(shown.contains("\nworker-7"), "{shown}");
    assert!(shown.contains(&format!("\n{SSH_KEY}")), "{shown}");
    assert!(shown.contains("hostforge.test=first-boot"), "{shown}");
    containers_run_on_the_node(&mut vm, &reg, &digest);
    drop(vm);

    unlock_tree(dir.path());
}

/// The debug toolbox pushed to `reg` (by [`push_toolbox`], as `hostforge/toolbox:1` with
/// `digest`): on the node (logged in as root on `vm`), `toolbox` pulls it and runs a tool in
/// it, a second run finds it current, a newer image under the tag is pulled; containerd runs
/// a container from the same image imported with `ctr`.
fn containers_run_on_the_node(vm: &mut Vm, reg: &Registry, digest: &str) {
    let name = format!("10.0.2.2:{}/hostforge/toolbox:1", reg.port());
    // The node's registry: this machine's loopback, through QEMU's user networking.
    vm.run(
        &format!(
            "printf 'registry=10.0.2.2:{}\\nimage=hostforge/toolbox:1\\ntls-verify=false\\n' \
             > /etc/hostforge/toolbox.conf",
            reg.port()
        ),
        60,
    );
    let first = vm.run("toolbox strace -V", 900);
    assert!(
        first.contains(&format!("toolbox: pulling {name} ({digest})")),
        "{first}"
    );
    assert!(first.contains("strace -- version"), "{first}");
    let second = vm.run(
        "toolbox strace -V; podman info --format 'store={{.Store.GraphRoot}} {{.Store.GraphDriverName}}'",
        600,
    );
    assert!(
        second.contains(&format!("{name} is up to date ({digest})")) && !second.contains("pulling"),
        "{second}"
    );
    assert!(second.contains("strace -- version"), "{second}");
    assert!(
        second.contains("store=/var/lib/containers/storage overlay"),
        "{second}"
    );
    let newer = retag_as_docker_v2(&format!("{}/hostforge/toolbox:1", reg.host()));
    assert_ne!(newer, digest);
    let third = vm.run("toolbox pull", 600);
    assert!(
        third.contains(&format!("toolbox: pulling {name} ({newer})")),
        "{third}"
    );

    // containerd, as a kubelet would use it: running, its state under /var; a container
    // from an image imported with ctr.
    let ctr = vm.run(
        &format!(
            "systemctl is-active containerd; ls /var/lib/containerd; \
             skopeo copy -q --src-tls-verify=false docker://{name} \
             docker-archive:/var/tmp/toolbox.tar:hostforge/toolbox:1 && \
             ctr image import /var/tmp/toolbox.tar && \
             ctr run --rm docker.io/hostforge/toolbox:1 probe strace -V"
        ),
        900,
    );
    assert!(ctr.lines().any(|l| l.trim() == "active"), "{ctr}");
    assert!(
        ctr.contains("io.containerd.snapshotter.v1.overlayfs"),
        "{ctr}"
    );
    assert!(ctr.contains("docker.io/hostforge/toolbox:1"), "{ctr}");
    assert!(ctr.contains("strace -- version"), "{ctr}");
}

/// Builds the debug toolbox (treefiles/toolbox.yaml) and pushes it to `reg` as
/// `hostforge/toolbox:1`; returns its digest.
fn push_toolbox(reg: &Registry, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let tf = toolbox_treefile(dir);
    let out = toolbox_build_cmd(
        &tf,
        &format!("{}/hostforge/toolbox:1", reg.host()),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-boot/toolbox-cache"),
    )
    .args(["--push", "--tls-verify=false"])
    .output()
    .unwrap();
    assert_ok(&out);
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    built["digest"].as_str().unwrap().to_string()
}

/// Bare metal from nothing: `provision` with `installer: hostforge` renders the boot files
/// and builds the live installer (the commit's kernel, an initramfs with hostforge in it);
/// a machine with a blank disk netboots it (iPXE from QEMU's NIC ROM over user-net TFTP),
/// the installer takes a DHCP lease, pulls the signed commit from the repo served on
/// 127.0.0.1 (10.0.2.2 for the guest), installs it with the spec as first-boot config and
/// reboots; the disk then boots the node, on which root logs in with the spec's password.
#[test]
fn a_blank_machine_netboots_the_installer_and_boots_what_it_installed() {
    let key = GpgKey::new("pxe");
    let p = Publisher::new(&[]);
    let commit = p.compose("pxe", "", Some(&key));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&key.public, dir.path().join("publisher.asc")).unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: rack1\ninstaller: hostforge\ndisk: vda\nlayout: metal\n\
             gpg-key: publisher.asc\nroot-password-hash: \"{ROOT_HASH}\"\n\
             ssh-keys: [\"{SSH_KEY}\"]\nnetwork: {{hostname: pxe-node-1}}\n\
             kargs: [console=ttyS0]\n"
        ),
    )
    .unwrap();
    let url = format!("http://10.0.2.2:{}", p.http.port);
    let out = dir.path().join("out");
    let o = hostforge_cmd()
        .args(["provision", "--repo"])
        .arg(&p.served)
        .args(["--ref", UPDATES_REF, "--url", &url, "--out"])
        .arg(&out)
        .arg("--spec")
        .arg(&spec)
        .output()
        .unwrap();
    assert_ok(&o);
    let ipxe = std::fs::read_to_string(out.join("tftp/boot.ipxe")).unwrap();
    for arg in [
        format!("hostforge.inst.url={url}"),
        format!("hostforge.inst.ref={UPDATES_REF}"),
        "hostforge.inst.device=/dev/vda".to_string(),
    ] {
        assert!(ipxe.contains(&arg), "{ipxe}");
    }
    let foreman = std::fs::read_to_string(out.join("foreman/iPXE.erb")).unwrap();
    assert!(
        foreman.contains("hostforge.inst.done-url=<%= foreman_url('built') %>"),
        "{foreman}"
    );

    // BIOS: the NIC's iPXE runs boot.ipxe; UEFI (OVMF): its network boot loads GRUB
    // (grubx64.efi), which reads grub.cfg. The disk comes first in the boot order: blank, it
    // boots nothing and the firmware goes on to the network; installed, it boots the node.
    let tftp = out.join("tftp");
    let bios = ["-boot", "order=cn"].map(String::from).to_vec();
    let uefi = ["-bios", "/usr/share/ovmf/OVMF.fd"]
        .map(String::from)
        .to_vec();
    let machine = |name: &str, firmware: &[String], bootfile: &str, size: u64| {
        let disk = dir.path().join(format!("{name}.raw"));
        std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
        let mut args = firmware.to_vec();
        args.extend([
            "-m".to_string(),
            "2048".to_string(),
            "-drive".to_string(),
            format!("file={},if=none,id=d0,format=raw", disk.display()),
            "-device".to_string(),
            "virtio-blk-pci,drive=d0,bootindex=1".to_string(),
            "-netdev".to_string(),
            format!("user,id=n0,tftp={},bootfile={bootfile}", tftp.display()),
            "-device".to_string(),
            "virtio-net-pci,netdev=n0,bootindex=2".to_string(),
        ]);
        (disk, args)
    };

    // Failures are shown on the console with their reason and leave the disk as it was: a
    // repo whose summary a key the installer does not carry signed, and a disk smaller than
    // the layout.
    let stranger = GpgKey::new("stranger");
    let forged = dir.path().join("forged");
    ostree_at(&forged, &["init", "--mode=archive"]);
    ostree_at(
        &forged,
        &["pull-local", p.served.to_str().unwrap(), &commit],
    );
    ostree_at(
        &forged,
        &["refs", &format!("--create={UPDATES_REF}"), &commit],
    );
    let home = format!("--gpg-homedir={}", stranger.home_str());
    ostree_at(&forged, &["gpg-sign", &home, &commit, &stranger.id]);
    ostree_at(
        &forged,
        &[
            "summary",
            "-u",
            &format!("--gpg-sign={}", stranger.id),
            &home,
        ],
    );
    let forged_http = Daemon::http(&forged);
    let forged_url = format!("http://10.0.2.2:{}", forged_http.port);
    std::fs::write(tftp.join("forged.ipxe"), ipxe.replace(&url, &forged_url)).unwrap();
    // Nothing listens on this port: the guest's connection is refused.
    let nobody = format!("http://10.0.2.2:{}", free_port());
    std::fs::write(tftp.join("nobody.ipxe"), ipxe.replace(&url, &nobody)).unwrap();
    // hostforge install's error names the pull and the URL (the "installing" line says the
    // URL too, but not this).
    let unreachable = format!("pulling {UPDATES_REF} from {nobody}: ");
    for (name, bootfile, size, reason) in [
        (
            "pxe-install-unreachable",
            "nobody.ipxe",
            5u64 << 30,
            unreachable.as_str(),
        ),
        (
            "pxe-install-forged",
            "forged.ipxe",
            5u64 << 30,
            "not signed by a key",
        ),
        (
            "pxe-install-small",
            "boot.ipxe",
            1 << 30,
            "is too small: 1024 MiB",
        ),
    ] {
        let (disk, args) = machine(name, &bios, bootfile, size);
        let mut vm = Vm::start(&args, name, false);
        let log = vm.wait_for("hostforge-installer: FAILED", 600);
        assert!(
            log.contains(reason),
            "{name}: {reason:?} not on the console"
        );
        drop(vm);
        let mut head = vec![0u8; 1 << 20];
        use std::io::Read;
        std::fs::File::open(&disk)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert!(head.iter().all(|b| *b == 0), "{name}: the disk was written");
    }

    // BIOS reboots into what it installed with the installer's built-in config. On UEFI the
    // operator's GRUB entry adds a power-off, a first-boot config fetched over HTTP (another
    // hostname) and a URL to report to once installed (as Foreman's "built"), and the disk
    // boots after.
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    std::fs::write(
        configs.join("node-2.yaml"),
        format!(
            "root-password-hash: \"{ROOT_HASH}\"\nssh-keys: [\"{SSH_KEY}\"]\n\
             network: {{hostname: pxe-node-2}}\n"
        ),
    )
    .unwrap();
    let configs_http = Daemon::http(&configs);
    let reports = Reports::listen();
    let grub_cfg = tftp.join("grub.cfg");
    let cfg = std::fs::read_to_string(&grub_cfg).unwrap();
    let linux = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("linux "))
        .unwrap();
    let cfg = cfg.replace(
        linux,
        &format!(
            "{linux} hostforge.inst.poweroff \
             hostforge.inst.config=http://10.0.2.2:{}/node-2.yaml \
             hostforge.inst.done-url=http://10.0.2.2:{}/built/pxe-node-2",
            configs_http.port, reports.port
        ),
    );
    std::fs::write(&grub_cfg, cfg).unwrap();
    for (name, firmware, bootfile, then, hostname) in [
        (
            "pxe-install-bios",
            &bios,
            "boot.ipxe",
            "rebooting into it",
            "pxe-node-1",
        ),
        (
            "pxe-install-uefi",
            &uefi,
            "grubx64.efi",
            "powering off",
            "pxe-node-2",
        ),
    ] {
        let (disk, args) = machine(name, firmware, bootfile, 5 << 30);
        let mut vm = Vm::start(&args, name, true);
        vm.wait_for("hostforge-installer: network up on", 600);
        let log = vm.wait_for(
            &format!("hostforge-installer: installed {UPDATES_REF} on /dev/vda; {then}"),
            1200,
        );
        assert!(log.contains("pulling: "), "{name}: no progress shown");
        if then == "powering off" {
            vm.until(120, |_| false);
            assert!(
                vm.exited_within(10),
                "{name}: the machine did not power off"
            );
            assert_eq!(
                reports.paths(),
                ["/built/pxe-node-2"],
                "{name}: the done URL was not fetched once"
            );
            let disk_only = vec![
                firmware[0].clone(),
                firmware[1].clone(),
                "-drive".to_string(),
                format!("file={},if=virtio,format=raw", disk.display()),
            ];
            vm = Vm::start(&disk_only, &format!("{name}-disk"), false);
        }
        vm.wait_for(&format!("hostforge-booted: {commit}"), 600);
        let shown = vm.login_and_run(
            "root",
            ROOT_PASSWORD,
            "cat /proc/sys/kernel/hostname /root/.ssh/authorized_keys",
        );
        assert!(shown.contains(&format!("\n{hostname}")), "{name}: {shown}");
        assert!(shown.contains(&format!("\n{SSH_KEY}")), "{name}: {shown}");
        drop(vm);
    }
    unlock_tree(dir.path());
}
