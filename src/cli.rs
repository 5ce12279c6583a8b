//! The command line: one enum per noun, doc comments as help text.

use crate::compose;
use anyhow::{anyhow, Result};
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
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a raw or qcow2 disk image with the ref deployed
    Build(ImageBuildArgs),
    /// Deploy a ref into an image as the new default, keeping the old as rollback
    Deploy(ImageDeployArgs),
    /// Show an image's deployments (default first), offline
    Status(ImageStatusArgs),
    /// Make the rollback deployment of an image the default, offline and atomically
    Rollback(ImageRollbackArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImageDeployArgs {
    /// The disk image (raw or qcow2), replaced when the deployment is complete
    pub image: PathBuf,
    /// The ostree repo holding the ref
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The ref to deploy
    #[arg(long = "ref", value_name = "REF")]
    pub treeref: String,
}

#[derive(Debug, clap::Args)]
pub struct ImageStatusArgs {
    /// The disk image (raw or qcow2)
    pub image: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImageRollbackArgs {
    /// The disk image (raw or qcow2), replaced when the rollback is complete
    pub image: PathBuf,
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
    /// The image file to write (replaced only when complete)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
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
    Ok((k.to_string(), v.to_string()))
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Compose(ComposeCmd::Tree(a)) => {
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
        Command::Provision(a) => {
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
        Command::Image(ImageCmd::Build(a)) => {
            use crate::image::layout::Format;
            crate::image::build(&crate::image::BuildRequest {
                repo: &a.repo,
                treeref: &a.treeref,
                previous: a.previous.as_deref(),
                layout: &a.layout,
                format: a.format.map(|f| match f {
                    ImageFormat::Raw => Format::Raw,
                    ImageFormat::Qcow2 => Format::Qcow2,
                }),
                out: &a.output,
            })?;
            println!("{}", a.output.display());
            Ok(())
        }
        Command::Image(ImageCmd::Deploy(a)) => {
            let deps = crate::image::ops::deploy(&a.image, &a.repo, &a.treeref)?;
            print_deployments(&deps, false)
        }
        Command::Image(ImageCmd::Status(a)) => {
            let deps = crate::image::ops::status(&a.image)?;
            print_deployments(&deps, a.json)
        }
        Command::Image(ImageCmd::Rollback(a)) => {
            let deps = crate::image::ops::rollback(&a.image)?;
            print_deployments(&deps, false)
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

fn print_deployments(deps: &[crate::image::ops::Deployment], json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "deployments": deps }))?
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
        println!(
            "{mark}{} {}\n    {}\n    kargs: {}",
            d.osname, d.commit, d.title, d.kargs
        );
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
