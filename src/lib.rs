//! hostforge: builds immutable, ostree-based host operating systems. The library holds every
//! pipeline and operation; `src/main.rs` only parses the command line ([`cli::run`]).
//! ARCHITECTURE.md maps the modules.
#![deny(unsafe_code)]

pub mod cli;
pub mod clidocs;
pub mod compose;
pub mod dracut;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod grubenv;
pub mod image;
pub mod installer;
pub mod lockfile;
pub mod ostreeutil;
pub mod pkgcache;
pub mod pool;
pub mod process;
pub mod progress;
pub mod provision;
pub mod rpmmd;
pub mod toolbox;
pub mod treefile;
pub mod utctime;
pub mod validate;
