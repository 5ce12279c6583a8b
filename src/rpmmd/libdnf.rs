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
    /// `repo-packages`: (repo id, package names) that come from that repo only.
    pub repo_packages: &'a [(String, Vec<String>)],
    /// The lockfiles' pins, and the repos (`lockfile-repos`) that only lend locked packages.
    pub lock: Option<&'a crate::lockfile::Lock>,
    pub lockfile_repos: &'a [String],
}

/// The solution, and what a lockfile written from it records.
pub struct Solution {
    pub packages: Vec<Solved>,
    /// Repo id -> when its metadata was generated (seconds since the epoch).
    pub repo_generated: std::collections::BTreeMap<String, u64>,
    /// Locked packages no repo offers (rpm-ostree warns about them, then solves).
    pub missing_locks: Vec<String>,
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
pub fn depsolve(req: &Request) -> Result<Solution> {
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
        let missing_locks = apply_lock(sack, req)?;
        pin_to_repos(c, req.repo_packages)?;

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
            let mut msg = take_error(err);
            if !missing_locks.is_empty() {
                msg.push_str(&format!(
                    "\n(no repo has the locked package {}: the lockfile admits no other \
                     version of it)",
                    missing_locks.join(", no repo has the locked package ")
                ));
            }
            bail!("depsolve failed: {msg}");
        }
        let installs = sys::hy_goal_list_installs(goal, &mut err);
        if installs.is_null() {
            bail!("listing the solution: {}", take_error(err));
        }
        let mut out: Vec<Solved> = ptr_items(installs).map(|p| solved_from(p)).collect();
        sys::g_ptr_array_unref(installs);
        out.sort();
        let mut repo_generated = std::collections::BTreeMap::new();
        for r in ptr_items::<sys::DnfRepo>(sys::dnf_context_get_repos(c)) {
            if sys::dnf_repo_get_enabled(r) != sys::DnfRepoEnabled_DNF_REPO_ENABLED_NONE {
                repo_generated.insert(
                    owned(sys::dnf_repo_get_id(r)),
                    sys::dnf_repo_get_timestamp_generated(r),
                );
            }
        }
        Ok(Solution {
            packages: out,
            repo_generated,
            missing_locks,
        })
    }
}

/// Every package the repos offer, owned (the array holds the only references to the
/// package objects: they live as long as it does).
struct PkgList(*mut sys::GPtrArray);

impl PkgList {
    /// # Safety
    /// `sack` is the live sack of a set-up libdnf context.
    unsafe fn all(sack: *mut sys::DnfSack) -> PkgList {
        let q = sys::hy_query_create(sack);
        let arr = sys::hy_query_run(q);
        sys::hy_query_free(q);
        PkgList(arr)
    }

    fn iter(&self) -> impl Iterator<Item = *mut sys::DnfPackage> + '_ {
        // SAFETY: self.0 is a live GPtrArray of DnfPackage pointers until drop.
        unsafe { ptr_items(self.0) }
    }
}

/// The pointers a GPtrArray holds, as `*mut T`.
///
/// # Safety
/// `arr` is a live GPtrArray of `T` pointers, alive and unchanged while the iterator is used.
unsafe fn ptr_items<'a, T>(arr: *const sys::GPtrArray) -> impl Iterator<Item = *mut T> + 'a {
    // SAFETY: the caller keeps `arr` alive and unchanged while iterating.
    let (len, data) = unsafe { ((*arr).len as usize, (*arr).pdata) };
    (0..len).map(move |i| unsafe { *data.add(i) as *mut T })
}

impl Drop for PkgList {
    fn drop(&mut self) {
        // SAFETY: hy_query_run gave us this array; it is unreffed once.
        unsafe { sys::g_ptr_array_unref(self.0) }
    }
}

/// Hides what the lockfiles rule out, as rpm-ostree does: in strict mode every package that
/// is not a locked one; otherwise the other versions of locked names, and every package of a
/// `lockfile-repos` repo that is not locked. Returns the locked packages no repo offers.
///
/// # Safety
/// `sack` is the live sack of a set-up libdnf context.
unsafe fn apply_lock(sack: *mut sys::DnfSack, req: &Request) -> Result<Vec<String>> {
    let Some(lock) = req.lock else {
        return Ok(Vec::new());
    };
    let pkgs = PkgList::all(sack);
    let mut found = std::collections::BTreeSet::new();
    let hide = sys::dnf_packageset_new(sack);
    for p in pkgs.iter() {
        let name = owned(sys::dnf_package_get_name(p));
        let evr = owned(sys::dnf_package_get_evr(p));
        let arch = owned(sys::dnf_package_get_arch(p));
        let repo = owned(sys::dnf_package_get_reponame(p));
        let locked = lock.packages.get(&name);
        let admitted = locked.is_some_and(|l| {
            // The repodata checksum is read only when the lockfile gives a digest.
            let digest = match &l.digest {
                Some(_) => crate::lockfile::digest(&solved_from(p)),
                None => String::new(),
            };
            l.admits(&evr, &arch, &digest)
        });
        if admitted {
            found.insert(name.clone());
        }
        let hidden = if lock.strict {
            !admitted
        } else {
            !admitted && (locked.is_some() || req.lockfile_repos.contains(&repo))
        };
        if hidden {
            sys::dnf_packageset_add(hide, p);
        }
    }
    sys::dnf_sack_add_excludes(sack, hide);
    sys::dnf_packageset_free(hide);
    Ok(lock
        .packages
        .iter()
        .filter(|(n, _)| !found.contains(*n))
        .map(|(n, l)| format!("{} (from {})", l.spec(n), l.from.display()))
        .collect())
}

/// `repo-packages`: the same names in every other repo are hidden, so that each comes from
/// its repo, for the install and for any dependency; then the names are installed.
///
/// # Safety
/// `c` is a set-up libdnf context.
unsafe fn pin_to_repos(c: *mut sys::DnfContext, pins: &[(String, Vec<String>)]) -> Result<()> {
    if pins.is_empty() {
        return Ok(());
    }
    let sack = sys::dnf_context_get_sack(c);
    let pkgs = PkgList::all(sack);
    let hide = sys::dnf_packageset_new(sack);
    for (repo, names) in pins {
        for name in names {
            let mut any = false;
            for p in pkgs.iter() {
                if owned(sys::dnf_package_get_name(p)) != *name {
                    continue;
                }
                if owned(sys::dnf_package_get_reponame(p)) == *repo {
                    any = true;
                } else {
                    sys::dnf_packageset_add(hide, p);
                }
            }
            if !any {
                sys::dnf_packageset_free(hide);
                bail!("repo-packages: package {name:?} is not in repo [{repo}]");
            }
        }
    }
    sys::dnf_sack_add_excludes(sack, hide);
    sys::dnf_packageset_free(hide);
    for name in pins.iter().flat_map(|(_, n)| n) {
        let n = cstr(name);
        let mut err: *mut sys::GError = std::ptr::null_mut();
        if sys::dnf_context_install(c, n.as_ptr(), &mut err) == 0 {
            bail!("repo-packages: installing {name:?}: {}", take_error(err));
        }
    }
    Ok(())
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
