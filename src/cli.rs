//! The command line: one enum per noun, doc comments as help text.

use crate::compose;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Build immutable, ostree-based host operating systems for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "hostforge", version, max_term_width = 80)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compose operating system trees from RPM repositories
    #[command(subcommand)]
    Compose(ComposeCmd),
    /// Work with hostforge's ostree dracut module
    #[command(subcommand)]
    Dracut(DracutCmd),
    /// Render kickstart, PXE/GRUB/iPXE and Foreman files for a network install
    Provision(ProvisionArgs),
    /// Build bootable disk images from commits
    #[command(subcommand)]
    Image(ImageCmd),
    /// Install a commit onto a disk: partitions, filesystems, deployment, boot loader and
    /// the first-boot config
    Install(InstallArgs),
    /// Build debug toolbox container images
    #[command(subcommand)]
    Toolbox(ToolboxCmd),
    /// Write the GRUB menu for a loader directory's entries (ostree's grub2 hook)
    ///
    /// ostree's grub2 backend runs this, through the script `image build` and the image
    /// operations leave in their scratch directory and name in OSTREE_GRUB2_EXEC, while the
    /// new `boot/loader.N` is still unpublished; nodes carry a shell twin at
    /// /usr/sbin/grub-mkconfig.
    #[command(hide = true)]
    GrubMkconfig(GrubMkconfigArgs),
    /// Write the man pages and shell completions (`cargo xtask docs` runs this)
    #[command(hide = true)]
    GenerateDocs(crate::clidocs::GenerateDocsArgs),
}

#[derive(Debug, clap::Args)]
pub struct GrubMkconfigArgs {
    /// The config to write: SYSROOT/boot/loader.N/grub.cfg
    #[arg(short = 'o', value_name = "PATH")]
    pub output: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ToolboxCmd {
    /// Compose a `container: true` treefile and build its image with buildah
    Build(ToolboxBuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct ToolboxBuildArgs {
    /// The toolbox treefile (treefiles/toolbox.yaml)
    pub treefile: PathBuf,
    /// The image name, REGISTRY/NAME:TAG
    #[arg(long, value_name = "REF")]
    pub tag: String,
    /// Push the image to the registry in --tag
    #[arg(long)]
    pub push: bool,
    /// Also write the image as an OCI layout directory
    #[arg(long, value_name = "DIR")]
    pub oci_dir: Option<PathBuf>,
    /// Require HTTPS and verify certificates (false for a plain-HTTP registry)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Registry credentials (containers-auth.json)
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Cache for packages, builds and buildah's storage
    #[arg(long, value_name = "PATH", default_value = "/var/cache/hostforge")]
    pub cachedir: PathBuf,
    /// Print nothing but errors and the result
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a raw or qcow2 disk image with the ref deployed
    Build(ImageBuildArgs),
    /// Deploy a ref as the new default, keeping the old one as rollback
    Deploy(ImageDeployArgs),
    /// Show the deployments of an image or sysroot, default first
    Status(ImageStatusArgs),
    /// Make the rollback deployment the default, atomically
    Rollback(ImageRollbackArgs),
    /// Pin a deployment so later deploys do not prune it (or --unpin it)
    Pin(ImagePinArgs),
}

/// An image file, or with --sysroot a live sysroot such as a booted node's /.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The disk image (raw or qcow2); edits replace it in one rename
    pub image: Option<PathBuf>,
    /// Work on a live sysroot instead (`/` on a booted node)
    #[arg(long, value_name = "PATH")]
    pub sysroot: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImageDeployArgs {
    #[command(flatten)]
    pub target: Target,
    /// The ostree repo holding the ref
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The ref to deploy
    #[arg(long = "ref", value_name = "REF")]
    pub treeref: String,
}

#[derive(Debug, clap::Args)]
pub struct ImageStatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImageRollbackArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ImagePinArgs {
    #[command(flatten)]
    pub target: Target,
    /// The deployment's index in `image status` (0 is the default)
    #[arg(long, value_name = "N")]
    pub index: usize,
    /// Remove the pin instead
    #[arg(long)]
    pub unpin: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, clap::Args)]
pub struct ImageBuildArgs {
    /// The ostree repo holding the ref
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The ref to deploy as the default
    #[arg(long = "ref", value_name = "REF")]
    pub treeref: String,
    /// Deploy this ref first, so the image ships with a rollback entry
    #[arg(long, value_name = "REF")]
    pub previous: Option<String>,
    /// Disk layout (images/*.yaml)
    #[arg(long, value_name = "FILE")]
    pub layout: PathBuf,
    /// Output format (default: the layout's)
    #[arg(long, value_enum)]
    pub format: Option<ImageFormat>,
    /// Compress the image: zstd clusters in qcow2, a zstd stream for raw
    #[arg(long, value_enum, value_name = "ALGO")]
    pub compress: Option<Compression>,
    /// Random disk, partition and filesystem IDs instead of the layout's fixed ones
    #[arg(long)]
    pub random_uuids: bool,
    /// Scratch space for the staging sysroot and intermediate disk (default: /dev/shm when
    /// it has room for twice the layout's disk size, else beside the output)
    #[arg(long, value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,
    /// Print nothing but errors and the output path
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The first-boot config, a provisioning spec (its network, root-password-hash,
    /// ssh-keys, kargs and timezone), so somebody can log in to the image
    #[arg(long, value_name = "SPEC")]
    pub first_boot: Option<PathBuf>,
    /// The image file to write (replaced only when complete)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// The remote a built node follows for updates.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// URL of the ostree repo the node updates from (http://, https:// or file:///); the
    /// deployments follow REMOTE:REF
    #[arg(long, value_name = "URL")]
    pub remote_url: Option<String>,
    /// Name of that remote on the node
    #[arg(
        long,
        value_name = "NAME",
        default_value = "hostforge",
        requires = "remote_url"
    )]
    pub remote_name: String,
    /// The GPG public key (armored or binary) the node trusts for the remote's commits and
    /// summary; gpg-verify is on
    #[arg(long, value_name = "FILE", requires = "remote_url")]
    pub remote_gpg_key: Option<PathBuf>,
    /// Follow the remote without verifying signatures (instead of --remote-gpg-key)
    #[arg(long, requires = "remote_url", conflicts_with = "remote_gpg_key")]
    pub remote_no_gpg_verify: bool,
}

impl RemoteArgs {
    /// The remote to configure, checked; `None` without `--remote-url`.
    pub fn remote(&self) -> Result<Option<crate::image::sysroot::Remote>> {
        let Some(url) = &self.remote_url else {
            return Ok(None);
        };
        let gpg_key = match (&self.remote_gpg_key, self.remote_no_gpg_verify) {
            (Some(p), _) => Some(
                std::fs::read(p)
                    .with_context(|| format!("reading --remote-gpg-key {}", p.display()))?,
            ),
            (None, true) => None,
            (None, false) => anyhow::bail!(
                "--remote-url needs --remote-gpg-key FILE, the public key nodes trust for \
                 the remote's commits (or --remote-no-gpg-verify to follow it unverified)"
            ),
        };
        let remote = crate::image::sysroot::Remote {
            name: self.remote_name.clone(),
            url: url.clone(),
            gpg_key,
        };
        remote.validate()?;
        if let (Some(key), Some(p)) = (&remote.gpg_key, &self.remote_gpg_key) {
            crate::validate::openpgp_public_key("--remote-gpg-key", key)
                .with_context(|| p.display().to_string())?;
        }
        Ok(Some(remote))
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["repo", "url"])))]
pub struct InstallArgs {
    /// The disk to install onto (a block device, or a raw file standing for one); everything
    /// on it is replaced
    #[arg(long, value_name = "DEV")]
    pub device: PathBuf,
    /// Disk layout (images/*.yaml); the last partition grows to fill the disk
    #[arg(long, value_name = "FILE")]
    pub layout: PathBuf,
    /// A local ostree repo holding the ref
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// The ostree repo to pull from over the network (http:// or https://); signatures are
    /// verified with --gpg-key, and the node follows this remote for updates
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The ref to install
    #[arg(long = "ref", value_name = "REF")]
    pub treeref: String,
    /// The GPG public key (armored or binary) the commits and summary must be signed with;
    /// the node keeps trusting it for its updates
    #[arg(long, value_name = "FILE")]
    pub gpg_key: Option<PathBuf>,
    /// Install from --url without verifying signatures (instead of --gpg-key)
    #[arg(long, conflicts_with = "gpg_key")]
    pub no_gpg_verify: bool,
    /// The URL the node follows for updates, when it reaches the repo by another address
    /// than the installer (default: --url)
    #[arg(long, value_name = "URL")]
    pub remote_url: Option<String>,
    /// Name of that remote on the node
    #[arg(long, value_name = "NAME", default_value = "hostforge")]
    pub remote_name: String,
    /// The first-boot config, a provisioning spec (its network, root-password-hash,
    /// ssh-keys, kargs and timezone)
    #[arg(long, value_name = "SPEC")]
    pub config: Option<PathBuf>,
    /// Scratch space for the sysroot (default: /dev/shm)
    #[arg(long, value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,
    /// Print nothing but errors and the device
    #[arg(long, short)]
    pub quiet: bool,
}

impl InstallArgs {
    /// The remote the installed node follows: `--remote-url` or `--url`, with `--gpg-key`;
    /// `None` for a local `--repo` without `--remote-url`.
    fn remote(&self) -> Result<Option<crate::image::sysroot::Remote>> {
        let Some(url) = self.remote_url.as_ref().or(self.url.as_ref()) else {
            if self.gpg_key.is_some() || self.no_gpg_verify {
                bail!("--gpg-key and --no-gpg-verify are for --url or --remote-url");
            }
            return Ok(None);
        };
        let gpg_key = match (&self.gpg_key, self.no_gpg_verify) {
            (Some(p), _) => {
                let key = std::fs::read(p)
                    .with_context(|| format!("reading --gpg-key {}", p.display()))?;
                crate::validate::openpgp_public_key("--gpg-key", &key)
                    .with_context(|| p.display().to_string())?;
                Some(key)
            }
            (None, true) => None,
            (None, false) => bail!(
                "--url needs --gpg-key FILE, the public key the commits are signed with \
                 (or --no-gpg-verify to install and follow an unverified remote)"
            ),
        };
        let remote = crate::image::sysroot::Remote {
            name: self.remote_name.clone(),
            url: url.clone(),
            gpg_key,
        };
        remote.validate()?;
        Ok(Some(remote))
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Compression {
    Zstd,
}

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The archive-mode ostree repo that URL serves
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The ref to install
    #[arg(long = "ref", value_name = "REF")]
    pub treeref: String,
    /// The HTTP(S) URL installers pull the repo from
    #[arg(long)]
    pub url: String,
    /// Directory to write ks/, tftp/ and foreman/ into (replaced whole)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Provisioning spec (YAML): users, disk, network, kernel args, %post
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DracutCmd {
    /// Write the ostree dracut module into a modules.d directory
    Emit(EmitArgs),
}

#[derive(Debug, clap::Args)]
pub struct EmitArgs {
    /// The modules.d directory to write NNNAME/ into
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Module name, as passed to `dracut --add`
    #[arg(long, default_value = "ostree")]
    pub name: String,
    /// Ordering number of the module directory (00-99)
    #[arg(long, default_value_t = 98)]
    pub number: u8,
    /// Add SECTION.KEY=VALUE to prepare-root.conf (e.g. sysroot.readonly=true)
    #[arg(long, value_name = "SECTION.KEY=VALUE")]
    pub prepare_root: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ComposeCmd {
    /// Compose a treefile into an ostree commit
    Tree(TreeArgs),
}

#[derive(Debug, clap::Args)]
pub struct TreeArgs {
    /// The treefile (YAML or JSON, rpm-ostree's format)
    pub treefile: PathBuf,
    /// The ostree repository to commit into (archive or bare)
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Cache for repo metadata, packages and builds
    #[arg(long, value_name = "PATH", default_value = "/var/cache/hostforge")]
    pub cachedir: PathBuf,
    /// Write the commit checksum to FILE
    #[arg(long, value_name = "FILE")]
    pub write_commitid_to: Option<PathBuf>,
    /// Write a JSON summary of the compose to FILE
    #[arg(long, value_name = "FILE")]
    pub write_composejson_to: Option<PathBuf>,
    /// Add KEY=VALUE string metadata to the commit (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub add_metadata_string: Vec<String>,
    /// Compose even if the inputs did not change
    #[arg(long)]
    pub force_nocache: bool,
    /// Resolve and print the package set; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print the flattened treefile (includes merged) as JSON and exit; no repo, cache or
    /// network is touched
    #[arg(long)]
    pub print_only: bool,
    /// Pin packages to an rpm-ostree lockfile (JSON or YAML; repeatable, a later file's
    /// entry for a package wins)
    #[arg(long = "ex-lockfile", value_name = "FILE")]
    pub lockfiles: Vec<PathBuf>,
    /// Install nothing but packages the lockfiles pin
    #[arg(long = "ex-lockfile-strict", requires = "lockfiles")]
    pub lockfile_strict: bool,
    /// Write the resolved package set as an rpm-ostree lockfile to FILE
    #[arg(long = "ex-write-lockfile-to", value_name = "FILE")]
    pub write_lockfile_to: Option<PathBuf>,
    /// Sign the commit and the repo summary with this GPG key (wins over the treefile's
    /// `gpg-key`)
    #[arg(long, value_name = "KEYID")]
    pub gpg_sign: Option<String>,
    /// GnuPG home directory holding the signing key
    #[arg(long, value_name = "DIR")]
    pub gpg_homedir: Option<PathBuf>,
    /// After moving the ref, generate a static delta from its previous commit (listed in the
    /// regenerated summary), so nodes on that commit download one delta
    #[arg(long)]
    pub static_delta: bool,
    /// Run dracut even when the initramfs kept in the cachedir was built from the same kernel,
    /// dracut, configuration and files
    #[arg(long)]
    pub rebuild_initramfs: bool,
    /// Do not label the files with the tree's SELinux policy, even if the treefile asks for it
    #[arg(long)]
    pub disable_selinux: bool,
    /// Print nothing but errors
    #[arg(long, short)]
    pub quiet: bool,
    /// Print progress and the summary as JSON lines
    #[arg(long)]
    pub json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--add-metadata-string {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(anyhow!("--add-metadata-string {s:?}: empty key"));
    }
    if k == "version" {
        // The version is written into os-release, which shells source.
        crate::validate::one_line_text("--add-metadata-string version", v)?;
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    // libostree takes two settings only from the environment: they are set now, before any
    // thread exists, for the commands that deploy; skip-sync only where the sysroot is a
    // scratch copy bound for an image.
    let _ostree_env = match &cli.command {
        Command::Image(op) => Some(crate::image::grub::OstreeEnv::set_up(matches!(
            op,
            ImageCmd::Build(_)
        ))?),
        // The sysroot of an install is a scratch copy bound for the disk, as a build's.
        Command::Install(_) => Some(crate::image::grub::OstreeEnv::set_up(true)?),
        _ => None,
    };
    dispatch(cli)
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compose(ComposeCmd::Tree(a)) => compose_tree(a),
        Command::Provision(a) => provision(a),
        Command::Image(ImageCmd::Build(a)) => image_build(a),
        Command::Image(op) => image_op(op),
        Command::Install(a) => install(a),
        Command::Toolbox(ToolboxCmd::Build(a)) => toolbox_build(a),
        Command::GrubMkconfig(a) => crate::image::grub::mkconfig(&a.output),
        Command::GenerateDocs(a) => {
            use clap::CommandFactory;
            crate::clidocs::write(Cli::command(), &a.out)
        }
        Command::Dracut(DracutCmd::Emit(a)) => {
            let module = crate::dracut::Module {
                name: a.name,
                number: a.number,
                prepare_root: a.prepare_root,
            };
            let dir = module.write(&a.out)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

fn compose_tree(a: TreeArgs) -> Result<()> {
    if a.print_only {
        let tf = crate::treefile::Treefile::load(&a.treefile)?;
        println!("{}", tf.flattened_json());
        return Ok(());
    }
    let opts = compose::Options {
        treefile: a.treefile,
        repo: a.repo,
        cachedir: a.cachedir,
        write_commitid_to: a.write_commitid_to,
        write_composejson_to: a.write_composejson_to,
        add_metadata: a
            .add_metadata_string
            .iter()
            .map(|s| parse_kv(s))
            .collect::<Result<_>>()?,
        force_nocache: a.force_nocache,
        dry_run: a.dry_run,
        quiet: a.quiet,
        json: a.json,
        lockfiles: a.lockfiles,
        lockfile_strict: a.lockfile_strict,
        write_lockfile_to: a.write_lockfile_to,
        disable_selinux: a.disable_selinux,
        gpg_sign: a.gpg_sign,
        gpg_homedir: a.gpg_homedir,
        static_delta: a.static_delta,
        rebuild_initramfs: a.rebuild_initramfs,
    };
    let json = opts.json;
    let doc = compose::compose_tree(opts)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "summary", "compose": doc})
        );
    }
    Ok(())
}

fn provision(a: ProvisionArgs) -> Result<()> {
    let spec = match &a.spec {
        Some(p) => crate::provision::Spec::load(p)?,
        None => crate::provision::Spec::default(),
    };
    let written = crate::provision::provision(&crate::provision::Request {
        repo: &a.repo,
        treeref: &a.treeref,
        url: &a.url,
        out: &a.out,
        spec,
    })?;
    for w in written {
        println!("{}", w.display());
    }
    Ok(())
}

fn image_build(a: ImageBuildArgs) -> Result<()> {
    use crate::image::layout::Format;
    // Refs end up in the deployments' origin files.
    crate::validate::ostree_ref("--ref", &a.treeref)?;
    if let Some(p) = &a.previous {
        crate::validate::ostree_ref("--previous", p)?;
    }
    let first_boot = a
        .first_boot
        .as_deref()
        .map(crate::provision::Spec::load)
        .transpose()?;
    crate::image::build(&crate::image::BuildRequest {
        source: crate::image::Source::Repo(&a.repo),
        treeref: &a.treeref,
        previous: a.previous.as_deref(),
        layout: &a.layout,
        format: a.format.map(|f| match f {
            ImageFormat::Raw => Format::Raw,
            ImageFormat::Qcow2 => Format::Qcow2,
        }),
        compress: matches!(a.compress, Some(Compression::Zstd)),
        random_uuids: a.random_uuids,
        quiet: a.quiet,
        tmpdir: a.tmpdir.as_deref(),
        out: &a.output,
        device: false,
        remote: a.remote.remote()?,
        first_boot: first_boot.as_ref(),
    })
    .context("image build")?;
    println!("{}", a.output.display());
    Ok(())
}

fn install(a: InstallArgs) -> Result<()> {
    crate::validate::ostree_ref("--ref", &a.treeref)?;
    let remote = a.remote()?;
    let source = match (&a.repo, &a.url) {
        (Some(repo), _) => crate::image::Source::Repo(repo),
        (None, Some(url)) => {
            crate::validate::http_url("--url", url)?;
            crate::image::Source::Url(url)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let config = a
        .config
        .as_deref()
        .map(crate::provision::Spec::load)
        .transpose()?;
    crate::image::build(&crate::image::BuildRequest {
        source,
        treeref: &a.treeref,
        previous: None,
        layout: &a.layout,
        format: None,
        compress: false,
        // Every node gets its own disk, partition and filesystem IDs.
        random_uuids: true,
        quiet: a.quiet,
        tmpdir: a.tmpdir.as_deref(),
        out: &a.device,
        device: true,
        remote,
        first_boot: config.as_ref(),
    })
    .with_context(|| format!("installing {} onto {}", a.treeref, a.device.display()))?;
    println!("{}", a.device.display());
    Ok(())
}

/// The A/B operations, on an image file or (`--sysroot`) a live sysroot.
fn image_op(cmd: ImageCmd) -> Result<()> {
    use crate::image::ops;
    let (target, json) = match &cmd {
        ImageCmd::Build(_) => unreachable!("image_build"),
        ImageCmd::Deploy(a) => (&a.target, false),
        ImageCmd::Status(a) => (&a.target, a.json),
        ImageCmd::Rollback(a) => (&a.target, false),
        ImageCmd::Pin(a) => (&a.target, false),
    };
    if let ImageCmd::Deploy(a) = &cmd {
        crate::validate::ostree_ref("--ref", &a.treeref)?;
    }
    // Only status reads what the node's update agent did last.
    let (deps, update) = match (&target.image, &target.sysroot, &cmd) {
        (Some(img), _, ImageCmd::Status(_)) => ops::status(img)?,
        (Some(img), _, ImageCmd::Deploy(a)) => (ops::deploy(img, &a.repo, &a.treeref)?, None),
        (Some(img), _, ImageCmd::Rollback(_)) => (ops::rollback(img)?, None),
        (Some(img), _, ImageCmd::Pin(a)) => (ops::pin(img, a.index, !a.unpin)?, None),
        (None, Some(s), ImageCmd::Status(_)) => ops::live_status(s)?,
        (None, Some(s), ImageCmd::Deploy(a)) => (ops::live_deploy(s, &a.repo, &a.treeref)?, None),
        (None, Some(s), ImageCmd::Rollback(_)) => (ops::live_rollback(s)?, None),
        (None, Some(s), ImageCmd::Pin(a)) => (ops::live_pin(s, a.index, !a.unpin)?, None),
        _ => unreachable!("clap requires an image or --sysroot"),
    };
    print_deployments(&deps, update.as_ref(), json)
}

fn toolbox_build(a: ToolboxBuildArgs) -> Result<()> {
    let built = crate::toolbox::build(&crate::toolbox::BuildRequest {
        treefile: &a.treefile,
        tag: &a.tag,
        push: a.push,
        oci_dir: a.oci_dir.as_deref(),
        tls_verify: a.tls_verify,
        authfile: a.authfile.as_deref(),
        cachedir: &a.cachedir,
        quiet: a.quiet || a.json,
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        println!("{} (commit {})", built.tag, built.commit);
        if let Some(d) = &built.digest {
            println!("pushed: {d}");
        }
        if let Some(d) = &built.oci_dir {
            println!("OCI layout: {}", d.display());
        }
    }
    Ok(())
}

fn print_deployments(
    deps: &[crate::image::ops::Deployment],
    update: Option<&crate::image::ops::UpdateState>,
    json: bool,
) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "deployments": deps, "update": update })
            )?
        );
        return Ok(());
    }
    for d in deps {
        let mark = if d.default {
            "* "
        } else if d.rollback {
            "  (rollback) "
        } else {
            "  "
        };
        let pin = if d.pinned { " (pinned)" } else { "" };
        println!("{mark}{} {}{pin}", d.osname, d.commit);
        if let Some(v) = &d.version {
            println!("    version: {v}");
        }
        println!("    {}\n    kargs: {}", d.title, d.kargs);
    }
    if let Some(u) = update {
        // The agent's message comes from the node: printed as data, one line.
        println!(
            "update agent: {} ({})",
            u.state.escape_debug(),
            u.message.escape_debug()
        );
        if let Some(t) = &u.target {
            println!("    target: {}", t.escape_debug());
        }
        for r in &u.rollbacks {
            println!(
                "    rolled back from {} to {}: {}",
                r.from.escape_debug(),
                r.to.escape_debug(),
                r.reason.escape_debug()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_rpm_ostree_flags() {
        let cli = Cli::try_parse_from([
            "hostforge",
            "compose",
            "tree",
            "--repo=/r",
            "--cachedir",
            "/c",
            "--add-metadata-string",
            "a=b",
            "--dry-run",
            "t.yaml",
        ])
        .unwrap();
        let Command::Compose(ComposeCmd::Tree(a)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(a.repo.as_deref(), Some(std::path::Path::new("/r")));
        assert!(a.dry_run);
        assert_eq!(
            parse_kv(&a.add_metadata_string[0]).unwrap(),
            ("a".into(), "b".into())
        );
    }

    /// ostree's grub2 backend runs `hostforge grub-mkconfig -o PATH` (through the hook
    /// script): a subcommand clap knows, kept out of `--help`.
    #[test]
    fn grub_mkconfig_is_a_hidden_subcommand() {
        let cli = Cli::try_parse_from(["hostforge", "grub-mkconfig", "-o", "/b/loader.1/grub.cfg"])
            .unwrap();
        let Command::GrubMkconfig(a) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(a.output, PathBuf::from("/b/loader.1/grub.cfg"));
        let help = Cli::command().render_help().to_string();
        assert!(!help.contains("grub-mkconfig"), "{help}");
    }

    /// Refs land in the deployments' origin files: a flag that would add a line or a second
    /// argument is refused, named, before anything is read or written.
    #[test]
    fn image_ref_flags_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("x.qcow2");
        let out = out.to_str().unwrap();
        for (args, flag) in [
            (
                vec![
                    "build", "--ref", "a/b\n[x]", "--layout", "l.yaml", "-o", out,
                ],
                "--ref",
            ),
            (
                vec![
                    "build",
                    "--ref",
                    "a/b",
                    "--previous",
                    "a b",
                    "--layout",
                    "l",
                    "-o",
                    out,
                ],
                "--previous",
            ),
            (vec!["deploy", out, "--ref", "a/b;c"], "--ref"),
        ] {
            let mut argv = vec!["hostforge", "image", "--repo=/nonexistent"];
            argv.splice(2..2, args);
            let cli = Cli::try_parse_from(&argv).unwrap();
            let e = format!("{:#}", dispatch(cli).unwrap_err());
            assert!(e.starts_with(flag), "{argv:?}: {e}");
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_version_that_would_break_os_release_is_refused() {
        for v in ["1'; reboot; '", "1\nID=evil", "$(id)", "1\"x"] {
            let e = parse_kv(&format!("version={v}")).unwrap_err();
            assert!(
                format!("{e:#}").contains("--add-metadata-string version"),
                "{v:?}: {e:#}"
            );
        }
        parse_kv("version=39.20240101.0").unwrap();
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command();
        for path in [
            vec![],
            vec!["compose"],
            vec!["compose", "tree"],
            vec!["dracut"],
            vec!["dracut", "emit"],
            vec!["provision"],
            vec!["image"],
            vec!["image", "build"],
            vec!["image", "status"],
            vec!["image", "deploy"],
            vec!["image", "rollback"],
            vec!["image", "pin"],
            vec!["toolbox"],
            vec!["toolbox", "build"],
        ] {
            let mut c = &mut cmd;
            for p in &path {
                c = c.find_subcommand_mut(p).unwrap();
            }
            let help = c.render_long_help().to_string();
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{path:?}: {line:?}");
            }
        }
    }
}
