//! The one place that runs external programs: stdin closed, output captured, and the tail of
//! stderr (or of the combined output) put into the error so the user sees why it failed.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output, Stdio};

/// Host programs hostforge needs, with the Debian package that provides each.
pub const REQUIRED_PROGRAMS: &[(&str, &str)] = &[
    ("bwrap", "bubblewrap"),
    ("rofiles-fuse", "ostree"),
    ("fusermount3", "fuse3"),
    ("rpmdb", "rpm"),
    ("rpm", "rpm"),
];

/// Fails with one message listing every missing program and the packages to install.
pub fn check_required_programs() -> Result<()> {
    let missing: Vec<String> = REQUIRED_PROGRAMS
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(prog, pkg)| format!("{prog} (apt-get install {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing required programs: {}", missing.join(", "));
    }
    Ok(())
}

pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args().take(6) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if cmd.get_args().len() > 6 {
        s.push_str(" ...");
    }
    s
}

/// Runs `cmd` to completion; returns stdout. On failure the error names the command, its exit
/// status (or signal) and the last lines of stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_with_stdin(cmd, Stdio::null())
}

/// Like [`run`], with `stdin` as the program's standard input.
pub fn run_with_stdin(cmd: &mut Command, stdin: impl Into<Stdio>) -> Result<String> {
    let out = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    check(cmd, &out, &[0])
}

/// Like [`run`], counting the exit codes in `ok` as success (e2fsck's 1: "errors fixed").
pub fn run_accepting(cmd: &mut Command, ok: &[i32]) -> Result<String> {
    let out = output_with_input(cmd, None)?;
    check(cmd, &out, ok)
}

/// Runs `cmd` where failing is expected and harmless (best-effort cleanup, such as
/// unmounting what may not be mounted): output discarded, the result ignored.
pub fn run_best_effort(cmd: &mut Command) {
    let _ = output_with_input(cmd, None);
}

/// `out`'s stdout when its exit code is in `ok`; else an error naming the command, its
/// status and the last lines of stderr (or of stdout, when stderr is empty).
fn check(cmd: &Command, out: &Output, ok: &[i32]) -> Result<String> {
    if !out.status.code().is_some_and(|c| ok.contains(&c)) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        bail!(
            "{} failed ({}):\n{}",
            describe(cmd),
            status_text(&out.status),
            tail(&detail, 15)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion with `input` as its standard input (none: /dev/null) and returns
/// its output whatever the exit status. The input is written on its own thread while stdout
/// and stderr are read, so a program that prints a lot before reading cannot deadlock with us;
/// a program that exits without reading all of it is not an error.
pub fn output_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    let stdin = child.stdin.take();
    std::thread::scope(|s| {
        if let (Some(mut pipe), Some(data)) = (stdin, input) {
            s.spawn(move || {
                use std::io::Write;
                // EPIPE when the program stops reading early; dropping the pipe closes it.
                let _ = pipe.write_all(data);
            });
        }
        child
            .wait_with_output()
            .with_context(|| format!("waiting for {}", describe(cmd)))
    })
}

/// Exit code or signal name in words.
pub fn status_text(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// A program that runs while hostforge goes on with other work: stdout discarded, stderr
/// into the file `log` (its tail goes into the error). [`Background::wait`] waits for it and
/// fails as [`run`] does; dropped before that (the work failed), it is killed and reaped.
pub struct Background {
    child: Option<std::process::Child>,
    what: String,
    log: std::path::PathBuf,
}

impl Background {
    /// Starts `cmd` with `stdin` as its standard input.
    pub fn start(
        cmd: &mut Command,
        stdin: impl Into<Stdio>,
        log: &std::path::Path,
    ) -> Result<Background> {
        let what = describe(cmd);
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Background {
            child: Some(child),
            what,
            log: log.to_path_buf(),
        })
    }

    /// Waits for the program; an error names it, its status and the end of its log.
    pub fn wait(mut self) -> Result<()> {
        let mut child = self.child.take().expect("a Background is waited for once");
        let status = child
            .wait()
            .with_context(|| format!("waiting for {}", self.what))?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!(
                "{} failed ({}):\n{}",
                self.what,
                status_text(&status),
                tail(&log, 15)
            );
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Crash-test hook: when `HOSTFORGE_FAULT` names this point, the process aborts here, as a
/// kill or power loss would stop it. The interruption tests use it; it costs one env lookup.
pub fn fault_point(name: &str) {
    if std::env::var("HOSTFORGE_FAULT").is_ok_and(|v| v == name) {
        eprintln!("HOSTFORGE_FAULT: aborting at {name}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a script that prints more than a pipe holds before reading its input
    /// deadlocked when the input was written first.
    #[test]
    fn big_input_and_big_output_do_not_deadlock() {
        let input = vec![b'x'; 3 << 20];
        let out = output_with_input(
            Command::new("sh").args(["-c", "head -c 2097152 /dev/zero; wc -c"]),
            Some(&input),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), (2 << 20) + "3145728\n".len());
        assert!(out.stdout.ends_with(b"3145728\n"));
        // A program that never reads its input is fine too.
        let out = output_with_input(&mut Command::new("true"), Some(&input)).unwrap();
        assert!(out.status.success());
    }

    /// A background program's failure reads like a foreground one's; one dropped before it
    /// ends is killed, not left running.
    #[test]
    fn background_programs_fail_clearly_and_die_with_their_work() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let ok = Background::start(&mut Command::new("true"), Stdio::null(), &log).unwrap();
        ok.wait().unwrap();
        let failing = Background::start(
            Command::new("sh").args(["-c", "echo first >&2; echo 'no such table' >&2; exit 3"]),
            Stdio::null(),
            &log,
        )
        .unwrap();
        let e = format!("{:#}", failing.wait().unwrap_err());
        assert!(e.contains("sh -c"), "{e}");
        assert!(e.contains("exit code 3"), "{e}");
        assert!(e.contains("first\nno such table"), "{e}");
        let long = Background::start(
            Command::new("sh").args(["-c", "echo $$ >&2; exec sleep 60"]),
            Stdio::null(),
            &log,
        )
        .unwrap();
        let pid = (0..100)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                std::fs::read_to_string(&log)
                    .ok()?
                    .trim()
                    .parse::<i32>()
                    .ok()
            })
            .expect("the child wrote its pid");
        let started = std::time::Instant::now();
        drop(long);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Killed and reaped: the pid names no process any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
