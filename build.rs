//! Generates the FFI bindings from Debian's headers, so they always match the libraries we
//! link against: libdnf (`src/rpmmd/libdnf.rs` includes them) and libext2fs
//! (`src/image/ext2fs.rs`).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let libdnf = pkg_config::Config::new()
        .atleast_version("0.60")
        .probe("libdnf")
        .expect("libdnf not found: install libdnf-dev and librepo-dev (cargo xtask deps)");
    let mut builder = bindgen::Builder::default()
        .header_contents("wrapper.h", "#include <libdnf/libdnf.h>\n")
        .allowlist_function("dnf_.*|hy_.*|g_ptr_array_unref|g_error_free|g_object_unref|g_free")
        .allowlist_type("Dnf.*|Hy.*|_hy_.*|GError|GPtrArray")
        .allowlist_var("DNF_.*|HY_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .layout_tests(false)
        .generate_comments(false);
    for path in &libdnf.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    let bindings = builder.generate().expect("generating libdnf bindings");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("libdnf_bindings.rs");
    bindings
        .write_to_file(out)
        .expect("writing libdnf bindings");

    let ext2fs = pkg_config::Config::new()
        .atleast_version("1.46")
        .probe("ext2fs")
        .expect("libext2fs not found: install libext2fs-dev (cargo xtask deps)");
    pkg_config::Config::new()
        .probe("com_err")
        .expect("libcom_err not found: install comerr-dev (cargo xtask deps)");
    let mut builder = bindgen::Builder::default()
        .header_contents(
            "wrapper.h",
            "#include <ext2fs/ext2fs.h>\n#include <et/com_err.h>\n",
        )
        .allowlist_function(
            "ext2fs_(open2|close_free|free|read_bitmaps|new_inode|inode_alloc_stats2|\
             write_new_inode|read_inode|write_inode|inode_size_set|link|expand_dir|mkdir|\
             symlink|lookup|fallocate|extent_open2|extent_get|extent_free|xattrs_open|\
             xattrs_read|xattr_set|xattrs_close|namei|file_open|file_read|file_close|\
             file_get_lsize|is_fast_symlink)|error_message",
        )
        .allowlist_var("unix_io_manager|EXT2_.*|EXT4_.*|LINUX_S_.*")
        .allowlist_type(
            "ext2_filsys|ext2_extent_handle_t|ext2fs_extent|ext2_xattr_handle|ext2_file_t",
        )
        .default_enum_style(bindgen::EnumVariation::Consts)
        .layout_tests(false)
        .generate_comments(false);
    for path in &ext2fs.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    builder
        .generate()
        .expect("generating libext2fs bindings")
        .write_to_file(PathBuf::from(env::var("OUT_DIR").unwrap()).join("ext2fs_bindings.rs"))
        .expect("writing libext2fs bindings");
}
