//! hostforge: builds immutable, ostree-based host operating systems.
#![deny(unsafe_code)]

mod cli;
mod compose;
mod dracut;
mod image;
mod ostreeutil;
mod pkgcache;
mod process;
mod progress;
mod provision;
mod rpmmd;
mod toolbox;
mod treefile;

/// This build's version, recorded in commits and hashed into the input hash.
pub const HOSTFORGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the epoch for everything hostforge stamps (commit times, filesystem times):
/// `SOURCE_DATE_EPOCH` when set, for reproducible output, else now.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()),
    }
}

fn main() {
    // ostree's grub2 backend runs us as `$OSTREE_GRUB2_EXEC -o loader.N/grub.cfg`.
    if let Some(r) = image::grub_generator_main() {
        if let Err(e) = r {
            eprintln!("hostforge (GRUB config generator): {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
