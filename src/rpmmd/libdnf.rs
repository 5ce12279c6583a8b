//! The libdnf binding: the only module with `unsafe`. Bindgen generates the declarations from
//! Debian's `libdnf/libdnf.h` at build time; this file wraps the few calls depsolving needs
//! (DnfContext to load repos, HyGoal to solve) behind a safe function.
#![allow(unsafe_code)]

use anyhow::{bail, Result};
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::Path;

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/libdnf_bindings.rs"));
}

/// What to solve: repos in `reposdir/*.repo`, metadata cached under `cachedir`.
pub struct Request<'a> {
    pub reposdir: &'a Path,
    pub cachedir: &'a Path,
    pub installroot: &'a Path,
    pub releasever: Option<&'a str>,
    pub packages: &'a [String],
    pub excludes: &'a [String],
    pub recommends: bool,
}

/// One package of the solution, as the repo metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Solved {
    pub name: String,
    pub epoch: u64,
    pub version: String,
    pub release: String,
    pub arch: String,
    pub repo_id: String,
    /// Path of the RPM relative to the repo's baseurl.
    pub location: String,
    /// e.g. "sha256".
    pub checksum_type: String,
    pub checksum: String,
    pub download_size: u64,
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in libdnf arguments")
}

fn path_cstr(p: &Path) -> CString {
    cstr(&p.to_string_lossy())
}

/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: caller guarantees a valid C string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Takes ownership of a GError, returning its message.
///
/// # Safety
/// `err` must be NULL or a GError owned by the caller.
unsafe fn take_error(err: *mut sys::GError) -> String {
    if err.is_null() {
        return "unknown libdnf error".into();
    }
    // SAFETY: err is a valid GError we own; we free it after copying the message.
    unsafe {
        let msg = owned((*err).message);
        sys::g_error_free(err);
        msg
    }
}

/// Owns a DnfContext and unrefs it on drop.
struct Context(*mut sys::DnfContext);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: self.0 came from dnf_context_new and is unreffed exactly once.
        unsafe { sys::g_object_unref(self.0 as sys::gpointer) }
    }
}

/// Loads the repos and solves the install of `req.packages`.
pub fn depsolve(req: &Request) -> Result<Vec<Solved>> {
    let reposdir = path_cstr(req.reposdir);
    let cache = path_cstr(&req.cachedir.join("repomd"));
    let solv = path_cstr(&req.cachedir.join("solv"));
    let lock = path_cstr(&req.cachedir.join("lock"));
    let vars = path_cstr(&req.cachedir.join("vars"));
    let root = path_cstr(req.installroot);
    let empty = cstr("");
    for d in ["repomd", "solv", "lock", "vars"] {
        std::fs::create_dir_all(req.cachedir.join(d))?;
    }

    // SAFETY: every pointer passed below is either a live CString from this function or a
    // value libdnf returned; the context outlives all borrowed pointers (sack, goal, repos).
    unsafe {
        sys::dnf_context_set_config_file_path(empty.as_ptr());
        sys::dnf_context_set_plugins_all_disabled(1);
        sys::dnf_context_set_install_weak_deps(if req.recommends { 1 } else { 0 });
        let ctx = Context(sys::dnf_context_new());
        let c = ctx.0;
        sys::dnf_context_set_repo_dir(c, reposdir.as_ptr());
        sys::dnf_context_set_cache_dir(c, cache.as_ptr());
        sys::dnf_context_set_solv_dir(c, solv.as_ptr());
        sys::dnf_context_set_lock_dir(c, lock.as_ptr());
        sys::dnf_context_set_vars_dir(c, [vars.as_ptr(), std::ptr::null()].as_ptr());
        sys::dnf_context_set_install_root(c, root.as_ptr());
        // Without a release version libdnf reads os-release from the install root, which
        // is empty here; $releasever only matters to repos that use it.
        let rv = cstr(req.releasever.unwrap_or("0"));
        sys::dnf_context_set_release_ver(c, rv.as_ptr());
        sys::dnf_context_set_check_disk_space(c, 0);
        sys::dnf_context_set_check_transaction(c, 0);
        sys::dnf_context_set_keep_cache(c, 1);
        sys::dnf_context_set_enable_filelists(c, 1);
        sys::dnf_context_set_cache_age(c, 0);

        let mut err: *mut sys::GError = std::ptr::null_mut();
        if sys::dnf_context_setup(c, std::ptr::null_mut(), &mut err) == 0 {
            bail!("setting up libdnf: {}", take_error(err));
        }
        let state = sys::dnf_state_new();
        let ok = sys::dnf_context_setup_sack_with_flags(
            c,
            state,
            sys::DnfContextSetupSackFlags_DNF_CONTEXT_SETUP_SACK_FLAG_SKIP_RPMDB,
            &mut err,
        );
        sys::g_object_unref(state as sys::gpointer);
        if ok == 0 {
            bail!("loading repository metadata: {}", take_error(err));
        }
        let sack = sys::dnf_context_get_sack(c);

        add_excludes(sack, req.excludes);

        for pkg in req.packages {
            let p = cstr(pkg);
            if sys::dnf_context_install(c, p.as_ptr(), &mut err) == 0 {
                let msg = take_error(err);
                let excluded = req.excludes.iter().any(|e| e == pkg);
                let hint = if excluded {
                    " (it is listed in exclude-packages)"
                } else {
                    ""
                };
                bail!("package {pkg:?} not found in the enabled repos{hint}: {msg}");
            }
        }
        let goal = sys::dnf_context_get_goal(c);
        let mut flags = sys::DnfGoalActions_DNF_INSTALL;
        if !req.recommends {
            flags |= sys::DnfGoalActions_DNF_IGNORE_WEAK_DEPS;
        }
        if sys::dnf_goal_depsolve(goal, flags, &mut err) == 0 {
            bail!("depsolve failed: {}", take_error(err));
        }
        let installs = sys::hy_goal_list_installs(goal, &mut err);
        if installs.is_null() {
            bail!("listing the solution: {}", take_error(err));
        }
        let arr = &*installs;
        let mut out = Vec::with_capacity(arr.len as usize);
        for i in 0..arr.len as usize {
            out.push(solved_from(*arr.pdata.add(i) as *mut sys::DnfPackage));
        }
        sys::g_ptr_array_unref(installs);
        out.sort();
        Ok(out)
    }
}

/// Hides every package with one of these names from the solver (`exclude-packages`).
///
/// # Safety
/// `sack` is the live sack of a set-up libdnf context.
unsafe fn add_excludes(sack: *mut sys::DnfSack, names: &[String]) {
    for name in names {
        let n = cstr(name);
        let q = sys::hy_query_create(sack);
        sys::hy_query_filter(
            q,
            sys::_hy_key_name_e_HY_PKG_NAME as i32,
            sys::_hy_comparison_type_e_HY_EQ as i32,
            n.as_ptr(),
        );
        let set = sys::hy_query_run_set(q);
        sys::dnf_sack_add_excludes(sack, set);
        sys::dnf_packageset_free(set);
        sys::hy_query_free(q);
    }
}

/// One package of the solution, copied out of libdnf.
///
/// # Safety
/// `pkg` is a live package of the goal's install list.
unsafe fn solved_from(pkg: *mut sys::DnfPackage) -> Solved {
    let mut ctype: i32 = 0;
    let sum = sys::dnf_package_get_chksum(pkg, &mut ctype);
    let (checksum_type, checksum) = if sum.is_null() {
        (String::new(), String::new())
    } else {
        let hex = sys::hy_chksum_str(sum, ctype);
        let s = owned(hex);
        sys::g_free(hex as sys::gpointer);
        (owned(sys::hy_chksum_name(ctype)), s)
    };
    Solved {
        name: owned(sys::dnf_package_get_name(pkg)),
        epoch: sys::dnf_package_get_epoch(pkg),
        version: owned(sys::dnf_package_get_version(pkg)),
        release: owned(sys::dnf_package_get_release(pkg)),
        arch: owned(sys::dnf_package_get_arch(pkg)),
        repo_id: owned(sys::dnf_package_get_reponame(pkg)),
        location: owned(sys::dnf_package_get_location(pkg)),
        checksum_type,
        checksum,
        download_size: sys::dnf_package_get_downloadsize(pkg),
    }
}
