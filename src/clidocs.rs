//! Man pages and shell completions from the clap definitions (`cargo xtask docs` writes them
//! into docs/cli/ through the binaries' hidden `generate-docs`; a test keeps them current).

use anyhow::{Context, Result};
use std::path::Path;

/// Writes `cmd`'s man pages (one per visible subcommand, `hostforge-compose-tree.1`) into
/// `out/man` and its bash, zsh and fish completions into `out/completions`.
pub fn write(cmd: clap::Command, out: &Path) -> Result<()> {
    let (man, completions) = (out.join("man"), out.join("completions"));
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    let name = cmd.get_name().to_string();
    // Completions offer what `--help` shows: the hidden subcommands are left out.
    let visible = clap::Command::new(name.clone())
        .version(cmd.get_version().map(str::to_string).unwrap_or_default())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut visible.clone(), &name, &completions).with_context(
            || format!("writing {shell} completions into {}", completions.display()),
        )?;
    }
    Ok(())
}

/// The hidden `generate-docs` subcommand's arguments, shared by both binaries.
#[derive(Debug, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write man/ and completions/ into
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
}
