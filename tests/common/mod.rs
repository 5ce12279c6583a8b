//! Shared helpers for the integration tests: a scratch dir with a treefile, a .repo file
//! pointing at the fixture repos, an ostree repo, and runners for hostforge and ostree.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The hostforge binary under test, as a command to add arguments to.
pub fn hostforge_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hostforge"))
}

/// The fixture repos built by `cargo xtask fixtures`; `cargo xtask test` sets the variable.
pub fn fixtures() -> PathBuf {
    let p = std::env::var("HOSTFORGE_FIXTURES").expect(
        "HOSTFORGE_FIXTURES is not set: run the tests with `cargo xtask test`, which builds \
         the fixture repos first",
    );
    let p = PathBuf::from(p);
    assert!(
        p.join("stamp").exists(),
        "fixtures at {} are incomplete",
        p.display()
    );
    p
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A scratch dir with `tf/` (treefile + fixtures.repo), an archive repo and a cachedir.
    pub fn new() -> Env {
        let fx = fixtures();
        let dir = tempfile::tempdir().unwrap();
        let tf = dir.path().join("tf");
        std::fs::create_dir_all(&tf).unwrap();
        let repo = format!(
            "[base]\nname=fixture base\nbaseurl=file://{base}\ngpgcheck=0\n\n\
             [hostile]\nbaseurl=file://{hostile}\n\n\
             [signed]\nbaseurl=file://{signed}\ngpgcheck=1\ngpgkey=file://{key}\n",
            base = fx.join("base").display(),
            hostile = fx.join("hostile").display(),
            signed = fx.join("signed").display(),
            key = fx.join("RPM-GPG-KEY-hostforge-fixtures").display(),
        );
        std::fs::write(tf.join("fixtures.repo"), repo).unwrap();
        let env = Env { dir };
        let st = Command::new("ostree")
            .arg(format!("--repo={}", env.repo().display()))
            .args(["init", "--mode=archive"])
            .status()
            .unwrap();
        assert!(st.success());
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn repo(&self) -> PathBuf {
        self.path().join("repo")
    }
    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
    pub fn compose_json(&self) -> PathBuf {
        self.path().join("compose.json")
    }

    /// Writes `tf/NAME` and returns its path.
    pub fn treefile(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join("tf").join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs `hostforge compose tree` on `treefile` with this env's repo and cache.
    pub fn compose(&self, treefile: &Path, extra: &[&str]) -> Output {
        self.compose_env(treefile, extra, &[])
    }

    pub fn compose_env(&self, treefile: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.compose_cmd(treefile, extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// The `hostforge compose tree` command of [`Env::compose`], not yet run.
    pub fn compose_cmd(&self, treefile: &Path, extra: &[&str]) -> Command {
        let mut cmd = hostforge_cmd();
        cmd.args(["compose", "tree", "--repo"])
            .arg(self.repo())
            .arg("--cachedir")
            .arg(self.cache())
            .arg("--write-composejson-to")
            .arg(self.compose_json())
            .args(extra)
            .arg(treefile)
            .env_remove("HOSTFORGE_FAULT")
            .env("SOURCE_DATE_EPOCH", "1700000000");
        cmd
    }

    pub fn ostree(&self, args: &[&str]) -> String {
        ostree_at(&self.repo(), args)
    }

    /// The commit `r` points at, if any.
    pub fn rev(&self, r: &str) -> Option<String> {
        let out = Command::new("ostree")
            .arg(format!("--repo={}", self.repo().display()))
            .args(["rev-parse", r])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.compose_json()).unwrap()).unwrap()
    }

    /// Checks out `r` into a fresh dir and returns it.
    pub fn checkout(&self, r: &str) -> PathBuf {
        let dest = self.path().join(format!("co-{}", r.replace('/', "_")));
        let _ = std::fs::remove_dir_all(&dest);
        self.ostree(&["checkout", "-U", r, dest.to_str().unwrap()]);
        dest
    }
}

pub fn ostree_at(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ostree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the compose failed (exit 1, not a signal) with all `needles` in its message.
pub fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {:?}: {err}",
        o.status
    );
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}:\n{err}");
    }
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "compose failed: {}", stderr(o));
}

/// The base fixture node that composes cleanly. The synthetic repo ships no SELinux policy,
/// so it says `selinux: false` (the default, true, would refuse a tree without one).
pub const GOOD: &str =
    "ref: test/node\nrepos: [base]\npackages: [filesystem, busybox, setup, app, triggerer]\n\
automatic-version-prefix: \"1\"\nselinux: false\n";

/// The fixture distro repo built by `cargo xtask fixtures`; `cargo xtask test` sets the variable.
pub fn distro() -> PathBuf {
    let p = PathBuf::from(std::env::var("HOSTFORGE_DISTRO").expect(
        "HOSTFORGE_DISTRO is not set: run the tests with `cargo xtask test`, which builds the \
         fixture distro first",
    ));
    assert!(
        p.join("stamp").exists(),
        "fixture distro at {} is incomplete",
        p.display()
    );
    p
}

/// The repository of the `hostforge-update` package (xtask/src/agent.rs), built from this
/// workspace by `cargo xtask test`, which sets the variable.
pub fn agent_repo() -> PathBuf {
    let p = PathBuf::from(std::env::var("HOSTFORGE_AGENT_REPO").expect(
        "HOSTFORGE_AGENT_REPO is not set: run the tests with `cargo xtask test`, which builds \
         the agent package first",
    ));
    assert!(
        p.join("repodata/repomd.xml").exists(),
        "no agent repo at {}",
        p.display()
    );
    p
}

/// Tests of one binary run in parallel; one of them writes the shared treefile directory and
/// composes into the shared repo at a time.
static COMPOSE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// treefiles/node.yaml composed from the fixture distro into an archive repo shared by the
/// boot-tier tests (target/test-node): the first caller composes, later ones find no changes.
/// Returns the repo and the commit.
pub fn composed_node() -> (PathBuf, String) {
    let _guard = COMPOSE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = top.join("target/test-node");
    let tf_dir = work.join("tf");
    write_node_treefiles(&tf_dir);
    let repo = work.join("repo");
    if !repo.join("config").exists() {
        ostree_at(&repo, &["init", "--mode=archive"]);
    }
    let commit = compose_node_treefile(&repo, &tf_dir.join("node.yaml"), "hostforge/x86_64/node");
    (repo, commit)
}

/// Writes treefiles/node.yaml, the files it adds (treefiles/node/) and the .repo files of
/// the fixture distro and the agent package into `tf_dir`.
pub fn write_node_treefiles(tf_dir: &Path) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(tf_dir).unwrap();
    std::fs::copy(top.join("treefiles/node.yaml"), tf_dir.join("node.yaml")).unwrap();
    std::fs::create_dir_all(tf_dir.join("node")).unwrap();
    for f in std::fs::read_dir(top.join("treefiles/node")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tf_dir.join("node").join(f.file_name())).unwrap();
    }
    std::fs::write(
        tf_dir.join("fixture-distro.repo"),
        format!("[fixture-distro]\nbaseurl=file://{}\n", distro().display()),
    )
    .unwrap();
    std::fs::write(
        tf_dir.join("hostforge-agent.repo"),
        format!(
            "[hostforge-agent]\nbaseurl=file://{}\n",
            agent_repo().display()
        ),
    )
    .unwrap();
}

/// Composes a node treefile into the shared test-node repo and cache; returns `r`'s commit.
fn compose_node_treefile(repo: &Path, treefile: &Path, r: &str) -> String {
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-node");
    let out = hostforge_cmd()
        .args(["compose", "tree", "--repo"])
        .arg(repo)
        .arg("--cachedir")
        .arg(work.join("cache"))
        .arg(treefile)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_ok(&out);
    ostree_at(repo, &["rev-parse", r]).trim().to_string()
}

/// A background server for a test, listening on 127.0.0.1: started by [`Daemon::start`]
/// with the port it should take, waited for until it accepts connections (bounded), and
/// killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Runs `cmd` (made by `make` for a free port) and waits up to 10 s for the port to open.
    /// The port is free when picked, but another test may take it before the daemon binds
    /// it (the daemon then exits and the port answers for someone else): a daemon that is
    /// gone shortly after its port opened is started again on another port (3 tries).
    pub fn start(what: &str, make: impl Fn(u16) -> Command) -> Daemon {
        for _ in 0..3 {
            let port = free_port();
            let mut child = make(port)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {what} (cargo xtask deps installs it): {e}"));
            let opened = (0..100).any(|_| {
                let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if !up {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                up
            });
            if !opened {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not start on port {port}");
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            if matches!(child.try_wait(), Ok(None)) {
                return Daemon {
                    child,
                    port,
                    _dir: None,
                };
            }
        }
        panic!("{what} exited right after starting, three times (its port taken each time?)");
    }

    /// Keeps `dir` (the daemon's state) until the daemon is dropped.
    pub fn with_dir(mut self, dir: tempfile::TempDir) -> Daemon {
        self._dir = Some(dir);
        self
    }

    /// Serves `dir` over HTTP (python3's http.server).
    pub fn http(dir: &Path) -> Daemon {
        Daemon::start("python3 -m http.server", |port| {
            let mut c = Command::new("python3");
            c.args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(dir);
            c
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's docker-registry on 127.0.0.1, storing under a temp dir, until dropped.
pub struct Registry(Daemon);

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = dir.path().join("config.yml");
        let daemon = Daemon::start("docker-registry", |port| {
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    data.display()
                ),
            )
            .unwrap();
            let mut c = Command::new("docker-registry");
            c.arg("serve").arg(&cfg);
            c
        });
        Registry(daemon.with_dir(dir))
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.0.port)
    }

    /// Its port; a QEMU guest with user networking reaches it at 10.0.2.2 on this port.
    pub fn port(&self) -> u16 {
        self.0.port
    }
}

/// Pushes the image at `tag` (in a registry without TLS) again under a Docker v2 manifest:
/// the same layers, a new digest, which this returns.
pub fn retag_as_docker_v2(tag: &str) -> String {
    run(Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(["--format", "v2s2"])
        .arg(format!("docker://{tag}"))
        .arg(format!("docker://{tag}")));
    let out = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{tag}")));
    out.trim().to_string()
}

/// `hostforge toolbox build --quiet --json TF --tag TAG --cachedir CACHEDIR` with a fixed
/// SOURCE_DATE_EPOCH; callers add flags (`--push`, ...).
pub fn toolbox_build_cmd(tf: &Path, tag: &str, cachedir: &Path) -> Command {
    let mut cmd = hostforge_cmd();
    cmd.args(["toolbox", "build", "--quiet", "--json"])
        .arg(tf)
        .args(["--tag", tag, "--cachedir"])
        .arg(cachedir)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    cmd
}

/// treefiles/ copied beside a fixture-distro.repo; returns toolbox.yaml's path there.
pub fn toolbox_treefile(dir: &Path) -> PathBuf {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(top.join("treefiles/toolbox.yaml"), dir.join("toolbox.yaml")).unwrap();
    std::fs::write(
        dir.join("fixture-distro.repo"),
        format!("[fixture-distro]\nbaseurl=file://{}\n", distro().display()),
    )
    .unwrap();
    dir.join("toolbox.yaml")
}

/// A second bootable commit, B: node.yaml with one file added, on ref hostforge/x86_64/node-b
/// in the same shared repo as [`composed_node`]. Returns B's commit.
pub fn composed_node_b() -> String {
    let (repo, _) = composed_node();
    // composed_node() rewrites tf/ (B's treefile refers to tf/node/) and composes into the
    // same repo and cache: not while B is being written and composed.
    let _guard = COMPOSE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = top.join("target/test-node");
    let tf = std::fs::read_to_string(top.join("treefiles/node.yaml"))
        .unwrap()
        .replace(
            "ref: hostforge/${basearch}/node",
            "ref: hostforge/${basearch}/node-b",
        );
    let tf = format!("{tf}  - echo B > /usr/share/hostforge-variant\n");
    assert!(
        tf.contains("node-b") && tf.trim_end().ends_with("hostforge-variant"),
        "{tf}"
    );
    std::fs::write(work.join("tf/node-b.yaml"), tf).unwrap();
    compose_node_treefile(
        &repo,
        &work.join("tf/node-b.yaml"),
        "hostforge/x86_64/node-b",
    )
}

/// A QEMU guest (TCG unless HOSTFORGE_QEMU_ACCEL says otherwise, 1 GiB, one vCPU) whose
/// serial console is read line by line; killed and its log written to
/// target/boot-logs/NAME.log when dropped.
pub struct Vm {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    /// Everything the console printed so far.
    pub log: String,
    name: String,
    /// QEMU's monitor socket (in `_monitor_dir`), for [`Vm::reset`].
    monitor: PathBuf,
    _monitor_dir: tempfile::TempDir,
    /// The serial console's input (QEMU's stdin), for [`Vm::type_line`].
    stdin: std::process::ChildStdin,
}

impl Vm {
    /// Starts the guest with `args` added; `reboot` lets a guest reboot (else QEMU exits).
    pub fn start(args: &[String], name: &str, reboot: bool) -> Vm {
        use std::io::BufReader;
        use std::process::Stdio;
        let accel = std::env::var("HOSTFORGE_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            &accel,
            "-m",
            "1024",
            // One vCPU: boot tests run two guests at once on a 2-core host; with two vCPUs
            // each, a descheduled vCPU stalled the other in the kernel's cross-CPU text
            // patching (RCU stall, udev hung; seen once in CI, metal BIOS boot).
            "-smp",
            "1",
            "-nographic",
        ]);
        if !reboot {
            cmd.arg("-no-reboot");
        }
        let monitor_dir = tempfile::tempdir().unwrap();
        let monitor = monitor_dir.path().join("monitor.sock");
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()));
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting qemu-system-x86_64 (cargo xtask deps installs it)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The console also goes to target/boot-logs/NAME.live.log as it comes, to follow a
        // long boot test while it runs (`tail -f`).
        let logs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut live = std::fs::File::create(logs.join(format!("{name}.live.log"))).unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut out = BufReader::new(stdout);
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                // Whole lines go on; so does a prompt that waits for input without a newline.
                let mut lines = Vec::new();
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    lines.push(pending.drain(..=i).take(i).collect::<Vec<u8>>());
                }
                if is_prompt(&pending) {
                    lines.push(std::mem::take(&mut pending));
                }
                for line in lines {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let _ = writeln!(live, "{line}");
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        Vm {
            child,
            rx,
            log: String::new(),
            name: name.to_string(),
            monitor,
            _monitor_dir: monitor_dir,
            stdin,
        }
    }

    /// Whether QEMU has exited (the guest powered off), waiting up to `secs` for it.
    pub fn exited_within(&mut self, secs: u64) -> bool {
        for _ in 0..secs * 10 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Types `text` and Enter on the serial console.
    pub fn type_line(&mut self, text: &str) {
        use std::io::Write;
        self.stdin
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .expect("typing on the serial console");
        self.log.push_str(&format!("[test typed: {text}]\n"));
    }

    /// Logs in on the serial console as `user` with `password` and runs `command` in the
    /// shell; returns what it printed (the lines up to a marker echoed after it).
    pub fn login_and_run(&mut self, user: &str, password: &str, command: &str) -> String {
        // Enter makes getty show its prompt again, whether or not it was read already.
        self.type_line("");
        self.wait_for("login: ", 600);
        self.type_line(user);
        self.wait_for("Password: ", 60);
        self.type_line(password);
        self.wait_for("# ", 60);
        self.run(command, 60)
    }

    /// Runs `command` in the shell a [`Vm::login_and_run`] left; returns what it printed
    /// (the lines up to a marker echoed after it, which must come within `secs`).
    pub fn run(&mut self, command: &str, secs: u64) -> String {
        // The marker as typed (echoed by the terminal) differs from what the shell prints.
        self.type_line(&format!("{command}; echo END-OF-$((6*7))"));
        self.wait_for("END-OF-42", secs)
    }

    /// Presses the reset button (QEMU's `system_reset`): the guest restarts at once, with
    /// nothing shut down or synced.
    pub fn reset(&mut self) {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor)
            .expect("connecting to QEMU's monitor");
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        until_prompt(&mut s);
        s.write_all(b"system_reset\n").unwrap();
        until_prompt(&mut s);
        self.log.push_str("[test: system_reset]\n");
    }

    /// Reads the console until a line satisfies `done` (true) or `secs` pass or QEMU exits
    /// (false). Lines read are added to [`Vm::log`] and returned (the lines of this wait).
    pub fn until(&mut self, secs: u64, mut done: impl FnMut(&str) -> bool) -> (bool, String) {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut since = String::new();
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => {
                    let found = done(&line);
                    for out in [&mut self.log, &mut since] {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    if found {
                        return (true, since);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(_) => break,
            }
        }
        (false, since)
    }

    /// Waits up to `secs` for a line containing `needle`; panics (naming the log) if none
    /// comes. Returns the lines read meanwhile.
    pub fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        let (found, since) = self.until(secs, |l| l.contains(needle));
        if !found {
            self.save_log();
            panic!(
                "{needle:?} not seen on the serial console within {secs} s; log in \
                 target/boot-logs/{}.log",
                self.name
            );
        }
        since
    }

    fn save_log(&self) {
        let logs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot-logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join(format!("{}.log", self.name)), &self.log).unwrap();
    }
}

/// A console line still waiting for its newline that is a prompt for input: login's, its
/// password's, a root shell's.
fn is_prompt(pending: &[u8]) -> bool {
    [&b"login: "[..], b"Password: ", b"# "]
        .iter()
        .any(|p| pending.ends_with(p))
}

/// Reads QEMU's monitor until it shows its prompt (it echoes a command character by
/// character; a connection closed before the line is read drops the command).
fn until_prompt(s: &mut std::os::unix::net::UnixStream) {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..30 {
        if seen.ends_with(b"(qemu) ") {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
            Err(_) => continue,
        }
    }
    panic!(
        "QEMU's monitor did not answer: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.save_log();
    }
}

/// Boots a guest with `args` added (QEMU exits on reboot) and reads its serial console
/// until `done` says so (at most 10 minutes); returns whether it did and the console log,
/// also written to target/boot-logs/LOG_NAME.log.
pub fn qemu_serial_until(
    args: &[String],
    log_name: &str,
    done: impl FnMut(&str) -> bool,
) -> (bool, String) {
    let mut vm = Vm::start(args, log_name, false);
    let (found, _) = vm.until(600, done);
    (found, vm.log.clone())
}

/// Lifts the immutable flag ostree puts on deployments, so a temp dir can be removed.
pub fn unlock_tree(dir: &Path) {
    let _ = Command::new("chattr")
        .arg("-R")
        .arg("-i")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `hostforge image build` of `r` with `layout` into `out`.
pub fn image_build(
    repo: &Path,
    r: &str,
    layout: &str,
    format: &str,
    out: &Path,
    fault: Option<&str>,
) -> std::process::Output {
    image_build_cmd(repo, r, layout, format, out, fault)
        .output()
        .unwrap()
}

/// The command of [`image_build`], to add arguments to.
pub fn image_build_cmd(
    repo: &Path,
    r: &str,
    layout: &str,
    format: &str,
    out: &Path,
    fault: Option<&str>,
) -> Command {
    let mut cmd = hostforge_cmd();
    cmd.args(["image", "build", "--repo"])
        .arg(repo)
        .args(["--ref", r, "--layout"])
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("images")
                .join(layout),
        )
        .args(["--format", format, "-o"])
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    if let Some(f) = fault {
        cmd.env("HOSTFORGE_FAULT", f);
    }
    cmd
}

/// The sysroot of a raw image built with images/qemu.yaml (/boot at 2 MiB, / at 514 MiB),
/// read out into `dir` as it stands on a node: the root filesystem with /boot inside.
pub fn extract_sysroot(img: &Path, dir: &Path) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let at = |mib: u64| format!("{}?offset={}", img.display(), mib << 20);
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dir.display()))
        .arg(at(514)));
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dir.join("boot").display()))
        .arg(at(2)));
}

/// A GRUB environment block with `boot_success=0` and `boot_counter=counter`: an update on
/// trial, as the update agent leaves it.
pub fn trial_block(counter: i32) -> String {
    format!(
        "{:#<1024}",
        format!("# GRUB Environment Block\nboot_success=0\nboot_counter={counter}\n")
    )
}

/// Replaces `/grub/grubenv` of the /boot filesystem at `offset` bytes into the raw image.
pub fn write_grubenv(img: &Path, offset: u64, block: &str) {
    let fs = format!("{}?offset={offset}", img.display());
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), block).unwrap();
    run(Command::new("debugfs")
        .args(["-w", "-R", "rm /grub/grubenv"])
        .arg(&fs));
    run(Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} /grub/grubenv", local.path().display()))
        .arg(&fs));
    assert_eq!(read_grubenv(img, offset), block);
}

/// `/grub/grubenv` of the /boot filesystem at `offset` bytes into the raw image.
pub fn read_grubenv(img: &Path, offset: u64) -> String {
    let fs = format!("{}?offset={offset}", img.display());
    run(Command::new("debugfs")
        .args(["-R", "cat /grub/grubenv"])
        .arg(&fs))
}

pub fn image_status(img: &Path) -> serde_json::Value {
    let out = hostforge_cmd()
        .args(["image", "status", "--json"])
        .arg(img)
        .output()
        .unwrap();
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A small seeded generator (xorshift64*) for the crash tests. The seed is
/// `HOSTFORGE_CRASH_SEED` when set, else the clock; it is printed, so a failing run can be
/// replayed with the same kill times (as far as timing repeats).
pub struct Rng(u64);

impl Rng {
    pub fn seeded(what: &str) -> Rng {
        let seed = std::env::var("HOSTFORGE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: HOSTFORGE_CRASH_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Runs `cmd` in a process group of its own and kills the whole group with SIGKILL after
/// `after` (as a cancelled CI job or `systemctl stop` would), unless it ended first.
/// Returns whether it ended by itself, with its output.
pub fn kill_after(cmd: &mut Command, after: std::time::Duration) -> (bool, Output) {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() && start.elapsed() < after {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let ended = waiter.is_finished();
    if !ended {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    (ended, waiter.join().unwrap())
}

/// The mount points below `dir`, not `dir` itself (a killed run's FUSE view would show here).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir) && Path::new(m) != dir)
        .collect()
}

/// A small tmpfs mounted at `dir` for full-disk tests, unmounted (lazily) on drop.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        SmallFs(dir.to_path_buf())
    }

    /// Fills the filesystem until `free` bytes are left (a file `filler` takes the rest).
    pub fn leave_free(&self, free: u64) {
        let filler = self.0.join("filler");
        let _ = std::fs::remove_file(&filler);
        let out = run(Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.0));
        let f: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let avail = f[0] * f[1];
        if avail > free {
            let f = std::fs::File::create(&filler).unwrap();
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, avail - free)
                .unwrap();
        }
    }

    pub fn unfill(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        unlock_tree(&self.0);
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A throwaway GPG signing key in a GnuPG home of its own, made by gpg in batch mode without
/// a passphrase; its agent is stopped when dropped.
pub struct GpgKey {
    pub home: PathBuf,
    /// The key's fingerprint.
    pub id: String,
    /// The armored public key, as a node or client imports it.
    pub public: PathBuf,
    _dir: tempfile::TempDir,
}

impl GpgKey {
    pub fn new(name: &str) -> GpgKey {
        // Short path: gpg-agent's socket lives in the home and socket paths are short.
        let dir = tempfile::Builder::new()
            .prefix("hfgpg")
            .tempdir_in("/tmp")
            .unwrap();
        let home = dir.path().join("g");
        std::fs::create_dir(&home).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| run(Command::new("gpg").arg("--homedir").arg(&home).args(args));
        gpg(&[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("{name} <{name}@hostforge.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let id = gpg(&["--with-colons", "--list-keys"])
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .expect("gpg listed no fingerprint");
        let public = dir.path().join("public.asc");
        let armored = gpg(&["--armor", "--export", &id]);
        std::fs::write(&public, armored).unwrap();
        GpgKey {
            home,
            id,
            public,
            _dir: dir,
        }
    }

    pub fn home_str(&self) -> &str {
        self.home.to_str().unwrap()
    }
}

impl Drop for GpgKey {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// One request a [`FleetLockServer`] answered.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetLockCall {
    /// `pre-reboot` or `steady-state`.
    pub op: String,
    pub id: String,
    pub group: String,
    /// Whether the server said yes (200).
    pub granted: bool,
}

#[derive(Default)]
struct FleetLockState {
    deny: bool,
    /// Holder of each group's single reboot slot.
    holders: std::collections::HashMap<String, String>,
    calls: Vec<FleetLockCall>,
}

/// A FleetLock server on 127.0.0.1 (the protocol of coreos/zincati's
/// `docs/development/fleetlock/protocol.md`): one reboot slot per group, taken by
/// `POST /v1/pre-reboot` and given back by `POST /v1/steady-state`; [`FleetLockServer::deny`]
/// makes it refuse every lock until [`FleetLockServer::grant`]. Requests without the
/// `fleet-lock-protocol: true` header or with a malformed body get 400, as a real server's.
pub struct FleetLockServer {
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<FleetLockState>>,
}

impl FleetLockServer {
    pub fn start() -> FleetLockServer {
        let state = std::sync::Arc::new(std::sync::Mutex::new(FleetLockState::default()));
        let shared = state.clone();
        let port = serve_loopback(move |req| FleetLockServer::answer(req, &shared));
        FleetLockServer { port, state }
    }

    fn answer(req: Option<&Request>, state: &std::sync::Mutex<FleetLockState>) -> (u16, String) {
        let err = |kind: &str, value: &str| serde_json::json!({"kind": kind, "value": value});
        let Some(req) = req else {
            return (400, err("bad_request", "unreadable or short").to_string());
        };
        let op = match req.line.split_whitespace().collect::<Vec<_>>()[..] {
            ["POST", "/v1/pre-reboot", _] => "pre-reboot",
            ["POST", "/v1/steady-state", _] => "steady-state",
            _ => return (404, err("not_found", req.line.trim()).to_string()),
        };
        if req.header("fleet-lock-protocol") != Some("true") {
            return (
                400,
                err("missing_header", "fleet-lock-protocol").to_string(),
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let node = &v["client_params"]["node"];
        let (Some(id), Some(group)) = (node["id"].as_str(), node["group"].as_str()) else {
            return (
                400,
                err("bad_body", "client_params.node.{id,group}").to_string(),
            );
        };
        let mut s = state.lock().unwrap();
        let granted = match op {
            "pre-reboot" => {
                let holder = s.holders.get(group).cloned();
                let ok = !s.deny && holder.as_deref().is_none_or(|h| h == id);
                if ok {
                    s.holders.insert(group.to_string(), id.to_string());
                }
                ok
            }
            _ => {
                if s.holders.get(group).map(String::as_str) == Some(id) {
                    s.holders.remove(group);
                }
                true
            }
        };
        s.calls.push(FleetLockCall {
            op: op.to_string(),
            id: id.to_string(),
            group: group.to_string(),
            granted,
        });
        if granted {
            (200, "{}".to_string())
        } else {
            (
                409,
                err("failed_lock", "reboot slots are taken").to_string(),
            )
        }
    }

    pub fn deny(&self) {
        self.state.lock().unwrap().deny = true;
    }

    pub fn grant(&self) {
        self.state.lock().unwrap().deny = false;
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<FleetLockCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Who holds `group`'s reboot slot.
    pub fn holder(&self, group: &str) -> Option<String> {
        self.state.lock().unwrap().holders.get(group).cloned()
    }
}

/// An HTTP endpoint on loopback that answers every request with 200 and remembers the paths
/// asked for (a stand-in for nothing: it is the receiving end of a callback URL, such as
/// Foreman's "built", whose only job is to be called).
pub struct Reports {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Reports {
    pub fn listen() -> Reports {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let port = serve_loopback(move |req| {
            if let Some(path) = req.and_then(|r| r.line.split_whitespace().nth(1)) {
                record.lock().unwrap().push(path.to_string());
            }
            (200, String::new())
        });
        Reports { port, seen }
    }

    /// The paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// One HTTP request as a loopback test server read it.
pub struct Request {
    /// The request line, e.g. `POST /v1/pre-reboot HTTP/1.1`.
    pub line: String,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads a request line, headers and a `Content-Length` body (at most 64 KiB); None when
    /// the connection broke or the body came short.
    fn read(conn: &mut std::net::TcpStream) -> Option<Request> {
        use std::io::{BufRead, Read};
        let mut r = std::io::BufReader::new(conn);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((&h, ""));
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut req = Request {
            line,
            headers,
            body: Vec::new(),
        };
        let length: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        req.body = vec![0; length.min(65536)];
        r.read_exact(&mut req.body).ok()?;
        Some(req)
    }
}

/// Serves HTTP on 127.0.0.1 (a free port, returned) from a thread for the rest of the test:
/// each connection's request (None when unreadable) goes to `handler`, whose status and JSON
/// body are sent back before the connection is closed.
pub fn serve_loopback(handler: impl Fn(Option<&Request>) -> (u16, String) + Send + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let req = Request::read(&mut conn);
            let (status, body) = handler(req.as_ref());
            let reason = if status == 200 { "OK" } else { "Error" };
            let _ = std::io::Write::write_all(
                &mut conn,
                format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}
