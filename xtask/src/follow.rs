//! The demo's last act: a node follows its signed remote. A throwaway GPG key signs the node's
//! commit; the repo is served over HTTP on 127.0.0.1 (QEMU's user network shows it to the
//! guest as 10.0.2.2); the image follows it; a new commit is published and the booted node's
//! update agent pulls it, stages it and reboots into it by itself.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A GPG key made in batch mode in its own home; returns (home, fingerprint, public key file).
pub fn throwaway_key(dir: &Path) -> Result<(PathBuf, String, PathBuf)> {
    let home = dir.join("gnupg");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home)?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let (armored, _) = crate::fixtures::gen_key(&home, "hostforge demo <demo@hostforge.invalid>")?;
    let listing = crate::distro::run_out(
        Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--with-colons", "--list-keys"]),
    )?;
    let id = listing
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .context("gpg listed no fingerprint")?;
    let public = dir.join("demo-key.asc");
    std::fs::write(&public, armored)?;
    Ok((home, id, public))
}

/// What the demo's node adds to treefiles/node.yaml: the agent checks every few seconds (not
/// every 15 minutes) and prints what it does on the console.
pub fn quick_agent(treefile: &Path) -> Result<()> {
    let dir = treefile.parent().unwrap().join("node");
    std::fs::write(
        dir.join("demo-timer.conf"),
        "[Timer]\nOnBootSec=\nOnBootSec=3\nOnUnitInactiveSec=5\nRandomizedDelaySec=0\nAccuracySec=1\n",
    )?;
    std::fs::write(
        dir.join("demo-service.conf"),
        "[Service]\nStandardOutput=journal+console\n",
    )?;
    let tf = std::fs::read_to_string(treefile)?.replace(
        "add-files:\n",
        "add-files:\n  - [node/demo-timer.conf, /etc/systemd/system/hostforge-update.timer.d/demo.conf]\n  \
         - [node/demo-service.conf, /etc/systemd/system/hostforge-update.service.d/demo.conf]\n",
    );
    if !tf.contains("demo-timer.conf") {
        bail!("{} has no add-files list to extend", treefile.display());
    }
    std::fs::write(treefile, tf)?;
    Ok(())
}

/// `python3 -m http.server` over `dir` on a free port of 127.0.0.1; killed on drop.
pub struct Server(Child, pub u16);

impl Server {
    pub fn start(dir: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Server(child, port));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the HTTP server did not open port {port}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The node under QEMU (TCG, user networking); its console lines go to `log`.
pub struct Node {
    child: Child,
    rx: Receiver<String>,
    log: PathBuf,
    seen: String,
}

impl Node {
    pub fn boot(disk: &Path, log: &Path) -> Result<Node> {
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-nographic"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .args(["-nic", "user,model=virtio-net-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                if tx.send(String::from_utf8_lossy(&l).into_owned()).is_err() {
                    break;
                }
            }
        });
        Ok(Node {
            child,
            rx,
            log: log.to_path_buf(),
            seen: String::new(),
        })
    }

    /// Waits (bounded) for a console line containing `needle`, echoing the agent's lines.
    pub fn wait_for(&mut self, needle: &str, secs: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if let Some(i) = line.find("hostforge-update: ") {
                        eprintln!("   node: {}", &line[i..]);
                    }
                    if line.contains(needle) {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        let _ = std::fs::write(&self.log, &self.seen);
        bail!(
            "{needle:?} not seen on the node's console; its log is {}",
            self.log.display()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::write(&self.log, &self.seen);
    }
}
