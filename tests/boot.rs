//! Boot tier: compose treefiles/node.yaml from the fixture distro, check the kernel and the
//! initramfs in the commit, then boot it under QEMU and read the serial console until the
//! node prints which commit it booted.
//!
//! Until `hostforge image build` exists (issue 4), the test makes the root disk itself with
//! ostree's own CLI (init-fs, os-init, pull-local, deploy) and `mkfs.ext4 -d`.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deployed sysroot on an ext4 disk image; returns (disk, kernel, initrd, kernel args).
fn make_disk(env: &Env, r: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let sysroot = env.path().join("sysroot");
    let sr = format!("--sysroot={}", sysroot.display());
    std::fs::create_dir_all(&sysroot).unwrap();
    run(Command::new("ostree")
        .args(["admin", "init-fs"])
        .arg(&sysroot));
    run(Command::new("ostree").args(["admin", "os-init", "node", &sr]));
    run(Command::new("ostree")
        .arg(format!("--repo={}", sysroot.join("ostree/repo").display()))
        .arg("pull-local")
        .arg(env.repo())
        .arg(r));
    run(Command::new("ostree")
        .args(["admin", "deploy", &sr, "--os=node"])
        .args([
            "--karg=root=/dev/vda",
            "--karg=rw",
            "--karg=console=ttyS0",
            r,
        ]));
    let entries = sysroot.join("boot/loader/entries");
    let entry = std::fs::read_dir(&entries)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(entry).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("BLS entry lacks {k}: {text}"))
            .to_string()
    };
    let kernel = sysroot.join(format!("boot{}", field("linux")));
    let initrd = sysroot.join(format!("boot{}", field("initrd")));
    let disk = env.path().join("disk.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "root", "-d"])
        .arg(&sysroot)
        .arg(&disk)
        .arg("1G"));
    (disk, kernel, initrd, field("options"))
}

/// Boots and waits for `needle` on the serial console; keeps the log in target/boot-logs.
fn boot_until(disk: &Path, kernel: &Path, initrd: &Path, args: &str, needle: &str) -> String {
    let logs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log_path = logs.join("node-boot.log");
    let accel = std::env::var("HOSTFORGE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            &accel,
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{args} panic=-1"))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64 (cargo xtask deps installs it)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut log = String::new();
    let mut found = false;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(needle) {
                    found = true;
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::write(&log_path, &log).unwrap();
    assert!(
        found,
        "{needle:?} not seen on the serial console; log in {}",
        log_path.display()
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

    let (disk, kernel, initrd, args) = make_disk(&env, r);
    let log = boot_until(
        &disk,
        &kernel,
        &initrd,
        &args,
        &format!("hostforge-booted: {commit}"),
    );
    assert!(
        log.contains("ostree-prepare-root"),
        "the initramfs ran ostree-prepare-root"
    );
}
