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
mod treefile;

/// This build's version, recorded in commits and hashed into the input hash.
pub const HOSTFORGE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
