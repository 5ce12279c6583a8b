//! `hostforge provision` end to end: render from the composed node, serve the repo over HTTP
//! and pull it with ostree, and PXE-boot the rendered TFTP tree under QEMU (iPXE from QEMU's
//! NIC ROM, user networking) until the kernel shows the kickstart on its command line.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn provision(repo: &Path, url: &str, out: &Path, spec: Option<&Path>) -> std::process::Output {
    let mut cmd = hostforge_cmd();
    cmd.args(["provision", "--repo"])
        .arg(repo)
        .args(["--ref", "hostforge/x86_64/node", "--url", url, "--out"])
        .arg(out);
    if let Some(s) = spec {
        cmd.arg("--spec").arg(s);
    }
    cmd.output().unwrap()
}

const SPEC: &str = "name: node1\nosname: node\ndisk: vda\n\
ssh-keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture ops@example\"]\n\
kargs: [console=ttyS0]\nmacs: [\"52:54:00:12:34:56\"]\n";

#[test]
fn provisions_and_network_boots_the_node() {
    let (repo, commit) = composed_node();
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("spec.yaml");
    // The installer and the node verify the commits with the publisher's key.
    let key = GpgKey::new("publisher");
    std::fs::copy(&key.public, work.path().join("publisher.asc")).unwrap();
    std::fs::write(&spec, format!("{SPEC}gpg-key: publisher.asc\n")).unwrap();
    // The web root: the repo at /repo, the rendered files beside it (ks/ at /ks).
    let www = work.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::os::unix::fs::symlink(&repo, www.join("repo")).unwrap();
    let server = Daemon::http(&www);
    let url = format!("http://10.0.2.2:{}/repo", server.port);
    let out = www.join("out");
    let o = provision(&repo, &url, &out, Some(&spec));
    assert_ok(&o);
    std::os::unix::fs::symlink(out.join("ks"), www.join("ks")).unwrap();

    // The kickstart installs this ref from this URL.
    let ks = std::fs::read_to_string(out.join("ks/node1.ks")).unwrap();
    assert!(
        ks.contains(&format!(
        "ostreesetup --osname=node --remote=hostforge --url={url} --ref=hostforge/x86_64/node\n"
    )),
        "{ks}"
    );
    // The key reaches the installer's ostree and the installed repo as base64 of its packets.
    use base64::Engine;
    let armored = std::fs::read_to_string(&key.public).unwrap();
    let body: String = armored
        .lines()
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .take_while(|l| !l.starts_with('=') && !l.starts_with("-----"))
        .collect();
    let packets = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let embedded: String = ks
        .split("<<'HOSTFORGE_KEY'\n")
        .nth(1)
        .unwrap()
        .split("\nHOSTFORGE_KEY")
        .next()
        .unwrap()
        .lines()
        .collect();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(embedded)
            .unwrap(),
        packets
    );
    assert!(
        ks.contains("/usr/share/ostree/trusted.gpg.d/hostforge.gpg"),
        "{ks}"
    );
    assert!(ks.contains("remote gpg-import --stdin hostforge"), "{ks}");
    assert!(ks.contains("reqpart --add-boot"), "{ks}");
    let st = Command::new("ksvalidator")
        .args(["-e", "-v", "RHEL9"])
        .arg(out.join("ks/node1.ks"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // Kernel and initramfs are the commit's own.
    let kver = ostree_at(
        &repo,
        &[
            "show",
            "--print-metadata-key=ostree.linux",
            "hostforge/x86_64/node",
        ],
    );
    let kver = kver.trim().trim_matches('\'');
    let cat = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args([
            "cat",
            "hostforge/x86_64/node",
            &format!("/usr/lib/modules/{kver}/vmlinuz"),
        ])
        .output()
        .unwrap();
    assert_eq!(std::fs::read(out.join("tftp/vmlinuz")).unwrap(), cat.stdout);
    for f in [
        "tftp/pxelinux.cfg/default",
        "tftp/pxelinux.cfg/01-52-54-00-12-34-56",
        "tftp/grub.cfg",
        "tftp/grub.cfg-01-52-54-00-12-34-56",
        "tftp/boot.ipxe",
    ] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            text.contains(&format!(
                "inst.ks=http://10.0.2.2:{}/ks/node1.ks",
                server.port
            )),
            "{f}: {text}"
        );
    }
    for f in ["provision", "PXELinux", "PXEGrub2", "iPXE"] {
        let text = std::fs::read_to_string(out.join(format!("foreman/{f}.erb"))).unwrap();
        assert!(text.starts_with("<%#\nkind: "), "{f}: {text}");
    }

    // Pull the ref over HTTP, as an installer would.
    let fresh = work.path().join("fresh");
    ostree_at(&fresh, &["init", "--mode=archive"]);
    let local_url = format!("http://127.0.0.1:{}/repo", server.port);
    ostree_at(
        &fresh,
        &["remote", "add", "--no-gpg-verify", "hostforge", &local_url],
    );
    let refs = ostree_at(&fresh, &["remote", "refs", "hostforge"]);
    assert!(
        refs.contains("hostforge:hostforge/x86_64/node"),
        "summary lists the ref: {refs}"
    );
    ostree_at(&fresh, &["pull", "hostforge", "hostforge/x86_64/node"]);
    assert_eq!(
        ostree_at(&fresh, &["rev-parse", "hostforge:hostforge/x86_64/node"]).trim(),
        commit
    );

    // PXE: QEMU's iPXE ROM fetches boot.ipxe over TFTP, then the kernel and initramfs.
    let args = [
        "-boot".to_string(),
        "n".into(),
        "-netdev".into(),
        format!(
            "user,id=n0,tftp={},bootfile=boot.ipxe",
            out.join("tftp").display()
        ),
        "-device".into(),
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
    ];
    let want_ks = format!("inst.ks=http://10.0.2.2:{}/ks/node1.ks", server.port);
    let (mut cmdline_ok, mut initramfs_ok) = (false, false);
    qemu_serial_until(&args, "pxe-boot", |line| {
        cmdline_ok |= line.contains("Command line:") && line.contains(&want_ks);
        initramfs_ok |= line.contains("Run /init as init process");
        cmdline_ok && initramfs_ok
    });
    assert!(
        cmdline_ok,
        "kernel command line with {want_ks} not seen; see target/boot-logs/pxe-boot.log"
    );
    assert!(
        initramfs_ok,
        "the initramfs did not start; see target/boot-logs/pxe-boot.log"
    );
}

#[test]
fn bad_specs_and_repos_are_clear_errors() {
    let (repo, _) = composed_node();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let url = "http://127.0.0.1:1/repo";

    let spec = work.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "name: n\nssh-keys: [\"ssh-ed25519 AAAA x\"]\ndisks: vda\n",
    )
    .unwrap();
    assert_fails_with(
        &provision(&repo, url, &out, Some(&spec)),
        &["bad.yaml:3", "disks"],
    );
    std::fs::write(&spec, "name: n\n").unwrap();
    assert_fails_with(
        &provision(&repo, url, &out, Some(&spec)),
        &["nobody can log in"],
    );
    std::fs::write(
        &spec,
        "ssh-keys: [\"ssh-ed25519 AAAA x\"]\nmacs: [\"52:54:00\"]\n",
    )
    .unwrap();
    assert_fails_with(
        &provision(&repo, url, &out, Some(&spec)),
        &["52:54:00", "MAC"],
    );
    assert!(!out.exists(), "nothing is written for a bad spec");

    std::fs::write(&spec, "ssh-keys: [\"ssh-ed25519 AAAA x\"]\n").unwrap();
    let bare = work.path().join("bare");
    ostree_at(&bare, &["init", "--mode=bare-user"]);
    assert_fails_with(
        &provision(&bare, url, &out, Some(&spec)),
        &["not an archive-mode repo"],
    );
    let empty = work.path().join("empty");
    ostree_at(&empty, &["init", "--mode=archive"]);
    assert_fails_with(
        &provision(&empty, url, &out, Some(&spec)),
        &["hostforge/x86_64/node", "compose it first"],
    );
    assert_fails_with(
        &provision(&repo, "ftp://x/repo", &out, Some(&spec)),
        &["http://"],
    );
}

/// The loopback servers the boot tests rely on answer as the protocols say: FleetLock's one
/// reboot slot per group (409 while another node holds it, 400 without the protocol header)
/// and the done-URL receiver's record of the paths called.
#[test]
fn loopback_test_servers_answer_as_their_protocols_say() {
    let curl = |port: u16, path: &str, header: bool, body: &str| -> String {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ]);
        if header {
            cmd.args(["-H", "fleet-lock-protocol: true"]);
        }
        if !body.is_empty() {
            cmd.args(["-X", "POST", "--data", body]);
        }
        run(cmd.arg(format!("http://127.0.0.1:{port}{path}")))
    };
    let node =
        |id: &str| format!(r#"{{"client_params":{{"node":{{"id":"{id}","group":"workers"}}}}}}"#);
    let lock = FleetLockServer::start();
    assert_eq!(curl(lock.port, "/v1/pre-reboot", true, &node("a")), "200");
    assert_eq!(curl(lock.port, "/v1/pre-reboot", true, &node("b")), "409");
    assert_eq!(curl(lock.port, "/v1/pre-reboot", false, &node("b")), "400");
    assert_eq!(curl(lock.port, "/v1/nothing", true, &node("b")), "404");
    assert_eq!(lock.holder("workers").as_deref(), Some("a"));
    assert_eq!(curl(lock.port, "/v1/steady-state", true, &node("a")), "200");
    assert_eq!(lock.holder("workers"), None);
    assert_eq!(curl(lock.port, "/v1/pre-reboot", true, &node("b")), "200");
    let ops: Vec<(String, bool)> = lock
        .calls()
        .into_iter()
        .map(|c| (c.op, c.granted))
        .collect();
    assert_eq!(ops.len(), 4, "{ops:?}");

    let reports = Reports::listen();
    assert_eq!(curl(reports.port, "/built?host=node1", false, ""), "200");
    assert_eq!(reports.paths(), ["/built?host=node1"]);
}
