//! Debug toolbox images: a `container: true` treefile composed like any other (same package
//! cache), checked out, and packed into an OCI image by buildah with a fixed timestamp, so the
//! same commit always gives the same digest. Pushed to a registry and/or written as an OCI
//! layout directory. Nodes pull it on demand with `/usr/bin/toolbox` (treefiles/node/toolbox).

use crate::{compose, ostreeutil, process};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct BuildRequest<'a> {
    pub treefile: &'a Path,
    pub tag: &'a str,
    pub push: bool,
    pub oci_dir: Option<&'a Path>,
    pub tls_verify: bool,
    pub authfile: Option<&'a Path>,
    pub cachedir: &'a Path,
    pub quiet: bool,
}

/// What was built.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    pub tag: String,
    pub commit: String,
    /// The manifest digest in the registry, when pushed.
    pub digest: Option<String>,
    pub oci_dir: Option<PathBuf>,
}

/// Checks `REGISTRY/NAME:TAG` the way registries do, before anything is built.
pub fn check_tag(tag: &str) -> Result<()> {
    let explain = "use REGISTRY/NAME:TAG, e.g. registry.example.com/hostforge/toolbox:1";
    let (name, t) = tag
        .rsplit_once(':')
        .filter(|(n, t)| !t.contains('/') && !n.is_empty())
        .ok_or_else(|| anyhow!("--tag {tag:?}: no :TAG; {explain}"))?;
    let (registry, path) = name
        .split_once('/')
        .ok_or_else(|| anyhow!("--tag {tag:?}: no registry; {explain}"))?;
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
        bail!("--tag {tag:?}: {registry:?} is not a registry host (it needs a dot, a port or to be localhost); {explain}");
    }
    let tag_ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !tag_ok {
        bail!("--tag {tag:?}: tag {t:?} may only have letters, digits, _ . - (at most 128, not starting with . or -)");
    }
    let path_ok = path.split('/').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
    });
    if !path_ok {
        bail!("--tag {tag:?}: repository {path:?} must be lowercase letters, digits and . _ - separated by /");
    }
    Ok(())
}

/// buildah with hostforge's own storage under the cachedir (vfs: works anywhere as root),
/// so builds neither see nor touch the host's containers.
struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn new(cachedir: &Path) -> Result<Buildah> {
        if process::which("buildah").is_none() {
            bail!("buildah is not installed; toolbox images are built with it (apt-get install buildah)");
        }
        let base = cachedir.join("toolbox");
        Ok(Buildah {
            root: base.join("storage"),
            runroot: base.join("run"),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn run(&self, args: &[&str], what: &str) -> Result<String> {
        process::run(self.cmd().args(args)).with_context(|| what.to_string())
    }
}

/// Checks out `commit` into `dest`, replacing what a failed run left there.
fn checkout(repo: &ostree::Repo, commit: &str, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest)
            .with_context(|| format!("removing a stale checkout {}", dest.display()))?;
    }
    ostreeutil::checkout(repo, commit, dest)
}

/// Composes the toolbox treefile and builds (and pushes) its image.
pub fn build(req: &BuildRequest) -> Result<Built> {
    check_tag(req.tag)?;
    if !req.push && req.oci_dir.is_none() {
        bail!("nothing to deliver the image to: give --push, --oci-dir DIR, or both");
    }
    let buildah = Buildah::new(req.cachedir)?;
    let tf = crate::treefile::Treefile::load(req.treefile)?;
    if !tf.container() {
        bail!(
            "{}: a toolbox treefile needs `container: true` (no kernel, no ostree layout)",
            req.treefile.display()
        );
    }

    // Compose into a repo of our own beside the package cache; unchanged inputs skip all work.
    std::fs::create_dir_all(req.cachedir)?;
    let repo_path = req.cachedir.join("toolbox/repo");
    std::fs::create_dir_all(repo_path.parent().unwrap())?;
    let repo = ostreeutil::open_or_create(&repo_path, ostree::RepoMode::BareUser)?;
    let summary = compose::compose_tree(compose::Options {
        treefile: req.treefile.to_path_buf(),
        repo: Some(repo_path.clone()),
        cachedir: req.cachedir.to_path_buf(),
        quiet: req.quiet,
        ..Default::default()
    })?;
    // The new commit, or with unchanged inputs the one the ref already names.
    let commit = summary
        .commit
        .ok_or_else(|| anyhow!("the compose of {} left no commit", req.treefile.display()))?;
    let meta = ostreeutil::commit_meta(&repo, &commit)?;
    let version = ostreeutil::meta_str(&meta, "version");
    let epoch = ostreeutil::commit_epoch(&repo, &commit)?;

    // Per process: two builds sharing a cachedir must not check out over each other.
    let rootfs = req
        .cachedir
        .join(format!("toolbox/rootfs.{}", std::process::id()));
    checkout(&repo, &commit, &rootfs)?;
    let result = pack(&buildah, req, &rootfs, &commit, version.as_deref(), epoch);
    let _ = std::fs::remove_dir_all(&rootfs);
    result
}

/// A buildah working container, removed when dropped.
struct Container<'b> {
    buildah: &'b Buildah,
    name: String,
}

impl<'b> Container<'b> {
    fn from_scratch(buildah: &'b Buildah) -> Result<Self> {
        let name = format!("hostforge-toolbox-{}", std::process::id());
        let _ = buildah.run(&["rm", &name], "removing a stale build container");
        buildah.run(
            &["from", "--name", &name, "scratch"],
            "starting an empty image (buildah from scratch)",
        )?;
        Ok(Container { buildah, name })
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .buildah
            .run(&["rm", &self.name], "removing the build container");
    }
}

fn pack(
    buildah: &Buildah,
    req: &BuildRequest,
    rootfs: &Path,
    commit: &str,
    version: Option<&str>,
    epoch: u64,
) -> Result<Built> {
    let container = Container::from_scratch(buildah)?;
    let name = container.name.as_str();
    let mut root_arg = rootfs.as_os_str().to_owned();
    root_arg.push("/");
    process::run(buildah.cmd().arg("add").arg(name).arg(&root_arg).arg("/"))
        .context("adding the composed root to the image")?;
    configure(buildah, name, req, commit, version, epoch)?;
    let epoch_s = epoch.to_string();
    buildah.run(
        &[
            "commit",
            "--quiet",
            "--format",
            "oci",
            "--timestamp",
            &epoch_s,
            name,
            req.tag,
        ],
        "committing the image (buildah commit)",
    )?;
    if let Some(dir) = req.oci_dir {
        write_oci_dir(buildah, req.tag, dir)?;
    }
    let digest = match req.push {
        true => Some(push(buildah, req)?),
        false => None,
    };
    Ok(Built {
        tag: req.tag.to_string(),
        commit: commit.to_string(),
        digest,
        oci_dir: req.oci_dir.map(Path::to_path_buf),
    })
}

/// The image config: toolbox's entrypoint and environment, labels naming the commit.
fn configure(
    buildah: &Buildah,
    name: &str,
    req: &BuildRequest,
    commit: &str,
    version: Option<&str>,
    epoch: u64,
) -> Result<()> {
    let mut labels = vec![
        "com.github.containers.toolbox=true".to_string(),
        format!("org.opencontainers.image.revision={commit}"),
        format!("io.hostforge.commit={commit}"),
        format!(
            "io.hostforge.treefile={}",
            req.treefile
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ),
        format!(
            "org.opencontainers.image.created={}",
            crate::utctime::rfc3339(epoch)
        ),
    ];
    if let Some(v) = version {
        labels.push(format!("org.opencontainers.image.version={v}"));
    }
    let mut config: Vec<String> = [
        "config",
        "--os",
        "linux",
        "--arch",
        "amd64",
        "--entrypoint",
        r#"["/usr/bin/env"]"#,
        "--cmd",
        "/bin/bash",
        "--env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--env",
        "HOST=/host",
        "--workingdir",
        "/",
        "--created-by",
    ]
    .map(String::from)
    .to_vec();
    config.push(format!("hostforge {}", compose::HOSTFORGE_VERSION));
    for l in &labels {
        config.push("--label".into());
        config.push(l.clone());
    }
    config.push(name.to_string());
    let config_ref: Vec<&str> = config.iter().map(String::as_str).collect();
    buildah.run(&config_ref, "setting the image config")?;
    Ok(())
}

/// The committed image `tag` as an OCI layout directory.
fn write_oci_dir(buildah: &Buildah, tag: &str, dir: &Path) -> Result<()> {
    let t = tag.rsplit_once(':').map(|x| x.1).unwrap_or("latest");
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    buildah.run(
        &[
            "push",
            "--quiet",
            tag,
            &format!("oci:{}:{t}", dir.display()),
        ],
        &format!("writing the OCI layout {}", dir.display()),
    )?;
    Ok(())
}

/// Pushes the committed image to its registry; returns the manifest digest.
fn push(buildah: &Buildah, req: &BuildRequest) -> Result<String> {
    let digestfile = buildah
        .root
        .with_file_name(format!("digest-{}", std::process::id()));
    let mut cmd = buildah.cmd();
    cmd.args(["push", "--quiet", "--retry", "1", "--retry-delay", "1s"])
        .arg(format!("--tls-verify={}", req.tls_verify))
        .arg("--digestfile")
        .arg(&digestfile);
    if let Some(a) = req.authfile {
        cmd.arg("--authfile").arg(a);
    }
    cmd.arg(req.tag).arg(format!("docker://{}", req.tag));
    process::run(&mut cmd).map_err(|e| {
        let registry = req.tag.split('/').next().unwrap_or_default();
        anyhow!(
            "pushing {} failed; is the registry {registry} up and reachable{}?\n{e:#}",
            req.tag,
            if req.tls_verify {
                " over HTTPS (--tls-verify=false for plain HTTP)"
            } else {
                ""
            }
        )
    })?;
    let digest = std::fs::read_to_string(&digestfile)?.trim().to_string();
    let _ = std::fs::remove_file(&digestfile);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        check_tag("127.0.0.1:5000/hostforge/toolbox:1").unwrap();
        check_tag("localhost/toolbox:latest").unwrap();
        check_tag("registry.example.com/a/b-c_d.e:v1.2").unwrap();
        for bad in [
            "toolbox:1",
            "registry.example.com/toolbox",
            "registry.example.com/Toolbox:1",
            "registry.example.com/toolbox:bad tag",
            "nodots/toolbox:1",
            "registry.example.com/toolbox:-x",
        ] {
            let e = check_tag(bad).unwrap_err().to_string();
            assert!(e.contains("--tag"), "{bad}: {e}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(crate::utctime::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            crate::utctime::rfc3339(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(crate::utctime::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
