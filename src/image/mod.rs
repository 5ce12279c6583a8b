//! Disk images from commits, and A/B operations on them. An image build deploys commits into
//! an ostree sysroot in scratch space (a tmpfs when there is room) and writes filesystems,
//! boot loader and partition table straight into the image file: nothing is mounted, and the
//! output appears by rename only when complete.
//!
//! | module | responsibility |
//! |---|---|
//! | [`mod@build`] | `image build` and `install` as a list of named, timed steps |
//! | [`firstboot`] | the first-boot config (host name, root's password and keys, network) |
//! | [`ops`] | `status`, `deploy`, `rollback`, `pin` on image files and live sysroots |
//! | [`sysroot`] | pulling commits into a sysroot; the one deploy everything uses |
//! | [`filesystems`] | ext4 (through `ext2fs`, times pinned by `ext4`) and the ESP |
//! | [`scratch`] | workspaces: claimed under a lock, on tmpfs when there is room, swept |
//! | [`grub`] | GRUB's menu from ostree's entries, its images and BIOS boot code |
//! | [`gpt`], [`layout`] | the partition table; disk layouts (`images/*.yaml`) |
//! | `qcow2` | qcow2 images, written while the raw disk is filled |

pub mod build;
mod ext2fs;
mod ext4;
pub mod filesystems;
pub mod firstboot;
pub mod gpt;
pub mod grub;
pub mod layout;
pub mod ops;
mod qcow2;
pub mod scratch;
pub mod sysroot;

pub use build::{build, BuildRequest, Source};
