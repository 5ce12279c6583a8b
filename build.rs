//! Generates the libdnf bindings (`src/rpmmd/libdnf_sys.rs` includes them) from Debian's
//! libdnf-dev headers, so the FFI always matches the library we link against.

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
}
