//! Treefiles: rpm-ostree's YAML/JSON compose description, parsed strictly (unknown keys are
//! errors with file and line), includes resolved, arch keys folded in, and flattened into the
//! one document that is hashed and stored in the commit.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Deepest include chain accepted, as in rpm-ostree.
const MAX_INCLUDE_DEPTH: usize = 50;

/// A string or a list of strings, as rpm-ostree accepts for `include`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// One `conditional-include` entry: `if` (one condition or a list that must all hold) and
/// the files to include when it holds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConditionalInclude {
    #[serde(rename = "if")]
    pub condition: OneOrMany,
    pub include: OneOrMany,
}

/// Evaluates one `VAR OP VALUE` condition as rpm-ostree does: VALUE is `true`, `false`,
/// digits or a double-quoted string; it must have the variable's type; `<`, `<=`, `>`, `>=`
/// compare numbers only; an undefined variable is an error.
fn condition_holds(cond: &str, vars: &BTreeMap<String, Value>) -> Result<bool> {
    let re = regex::Regex::new(r#"^\s*([[:alnum:]_]+)\s*(\S+?)\s*(true|false|[0-9]+|"(.*)")\s*$"#)
        .expect("valid regex");
    let caps = re.captures(cond).ok_or_else(|| {
        anyhow!("condition {cond:?}: expected VARIABLE OP VALUE, VALUE being true, false, a number or a \"string\"")
    })?;
    let (name, op, raw) = (&caps[1], &caps[2], &caps[3]);
    let value = match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => match caps.get(4) {
            Some(s) => Value::String(s.as_str().to_string()),
            None => Value::Number(
                raw.parse::<u64>()
                    .map_err(|e| anyhow!("condition {cond:?}: {e}"))?
                    .into(),
            ),
        },
    };
    let var = vars
        .get(name)
        .ok_or_else(|| anyhow!("condition {cond:?}: undefined variable {name:?}"))?;
    let same_type = matches!(
        (var, &value),
        (Value::Bool(_), Value::Bool(_))
            | (Value::Number(_), Value::Number(_))
            | (Value::String(_), Value::String(_))
    );
    if !same_type {
        bail!("condition {cond:?}: {name} is {var}, not the same type as {raw}");
    }
    Ok(match op {
        "==" => var == &value,
        "!=" => var != &value,
        "<" | "<=" | ">" | ">=" => {
            let (Some(a), Some(b)) = (var.as_f64(), value.as_f64()) else {
                bail!("condition {cond:?}: {op} compares numbers only");
            };
            match op {
                "<" => a < b,
                "<=" => a <= b,
                ">" => a > b,
                _ => a >= b,
            }
        }
        _ => bail!("condition {cond:?}: expected one of ==, !=, <, <=, >, >= but got {op}"),
    })
}

/// `check-passwd` / `check-groups`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckPasswd {
    #[serde(rename = "type")]
    pub kind: CheckPasswdType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CheckPasswdType {
    None,
    Previous,
    File,
    Data,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BootLocation {
    /// Kernel and initramfs only in `/usr/lib/modules/KVER` (rpm-ostree's default).
    #[default]
    Modules,
    /// Also in `/boot` (rpm-ostree's deprecated `both`).
    Both,
    /// Deprecated name rpm-ostree still accepts; treated like `modules`.
    New,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RpmdbBackend {
    #[default]
    Sqlite,
    Bdb,
    Ndb,
    Target,
}

/// One treefile document exactly as written; all keys optional so includes can merge.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TreefileDoc {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub treeref: Option<String>,
    #[serde(default, skip_serializing)]
    pub include: Option<OneOrMany>,
    #[serde(default, skip_serializing)]
    pub arch_include: Option<BTreeMap<String, OneOrMany>>,
    #[serde(default, skip_serializing)]
    pub conditional_include: Option<Vec<ConditionalInclude>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub releasever: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<String>>,
    #[serde(rename = "packages-x86_64", default, skip_serializing)]
    pub packages_x86_64: Option<Vec<String>>,
    #[serde(rename = "packages-aarch64", default, skip_serializing)]
    pub packages_aarch64: Option<Vec<String>>,
    #[serde(rename = "packages-ppc64le", default, skip_serializing)]
    pub packages_ppc64le: Option<Vec<String>>,
    #[serde(rename = "packages-s390x", default, skip_serializing)]
    pub packages_s390x: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_packages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommends: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documentation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_langs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_from_packages: Option<Vec<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_files: Option<Vec<(String, String)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess_script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<String>>,
    #[serde(
        default,
        alias = "default_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_commit_metadata: Option<BTreeMap<String, Value>>,
    #[serde(
        default,
        alias = "automatic_version_prefix",
        skip_serializing_if = "Option::is_none"
    )]
    pub automatic_version_prefix: Option<String>,
    /// One ASCII character between the prefix and the build number (default `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_version_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutate_os_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etc_group_members: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_passwd: Option<CheckPasswd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_groups: Option<CheckPasswd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_is_dir: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machineid_compat: Option<bool>,
    #[serde(
        default,
        alias = "boot_location",
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_location: Option<BootLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs_args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_initramfs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_executables: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpmdb: Option<RpmdbBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<bool>,
    /// A container root, not a bootable host: no kernel handling, no ostree layout, /etc
    /// stays /etc, /tmp is a directory and documentation is dropped unless asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
}

/// `s` with each `${name}` reference (a plain variable name) replaced by `x`, for checks of
/// the text around the references.
fn without_var_refs(s: &str) -> String {
    let re = regex::Regex::new(r"\$\{[A-Za-z0-9_]+\}").expect("valid regex");
    re.replace_all(s, "x").into_owned()
}

/// A loaded treefile: the flattened document plus where it came from.
#[derive(Debug, Clone)]
pub struct Treefile {
    /// The main treefile's path.
    pub path: PathBuf,
    /// Directory of the main treefile, where the `*.repo` files are.
    pub dir: PathBuf,
    pub basearch: String,
    pub doc: TreefileDoc,
    /// Every file read (main + includes), for error messages and hashing.
    pub sources: Vec<PathBuf>,
    /// The files the treefile references, read at load time.
    pub externals: Externals,
}

/// A file a treefile references, read once when the treefile is loaded, from the directory
/// of the file that names it (rpm-ostree's rule): what the input hash covers is what the
/// compose uses.
#[derive(Debug, Clone)]
pub struct External {
    /// The name as the treefile wrote it.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    pub data: Vec<u8>,
    /// Permission bits of the file (add-files keeps them).
    pub mode: u32,
}

/// Every file the treefile references, merged across includes like the keys naming them.
#[derive(Debug, Clone, Default)]
pub struct Externals {
    /// `add-files`, in the flattened order: (destination, source).
    pub add_files: Vec<(String, External)>,
    pub postprocess_script: Option<External>,
    /// `check-passwd` / `check-groups` with `type: file`.
    pub check_passwd: Option<External>,
    pub check_groups: Option<External>,
}

impl External {
    fn read(declared_in: &Path, text: &str, key: &str, name: &str) -> Result<External> {
        use std::os::unix::fs::PermissionsExt;
        let dir = declared_in.parent().unwrap_or(Path::new("."));
        let path = dir.join(name);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "{}:{}: {key}: reading {}",
                declared_in.display(),
                line_of_key(text, key).unwrap_or(1),
                path.display()
            )
        })?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
        Ok(External {
            name: name.to_string(),
            path,
            data,
            mode,
        })
    }
}

impl Externals {
    /// Reads the files `doc` (from `path`, whose text is `text`) names itself.
    fn read(path: &Path, text: &str, doc: &TreefileDoc) -> Result<Externals> {
        let mut ext = Externals::default();
        for (src, dest) in doc.add_files.iter().flatten() {
            ext.add_files
                .push((dest.clone(), External::read(path, text, "add-files", src)?));
        }
        if let Some(ps) = &doc.postprocess_script {
            ext.postprocess_script = Some(External::read(path, text, "postprocess-script", ps)?);
        }
        let check_file = |key: &str, c: &Option<CheckPasswd>| -> Result<Option<External>> {
            match c {
                Some(c) if c.kind == CheckPasswdType::File => {
                    let name = c.filename.as_deref().unwrap_or_default();
                    External::read(path, text, key, name).map(Some)
                }
                _ => Ok(None),
            }
        };
        ext.check_passwd = check_file("check-passwd", &doc.check_passwd)?;
        ext.check_groups = check_file("check-groups", &doc.check_groups)?;
        Ok(ext)
    }

    /// `over` (the including file's) onto `self`, by the rules [`merge`] applies to the keys
    /// that name these files: lists concatenate, scalars are replaced when `over_doc` sets them.
    fn merge(&mut self, over: Externals, over_doc: &TreefileDoc) {
        self.add_files.extend(over.add_files);
        if over_doc.postprocess_script.is_some() {
            self.postprocess_script = over.postprocess_script;
        }
        if over_doc.check_passwd.is_some() {
            self.check_passwd = over.check_passwd;
        }
        if over_doc.check_groups.is_some() {
            self.check_groups = over.check_groups;
        }
    }
}

/// The architecture names rpm-ostree uses for `packages-$basearch` and `arch-include`.
pub fn host_basearch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// The 1-based line where `key:` (YAML) or `"key":` (JSON) first appears, for messages.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\""))
        })
        .map(|i| i + 1)
}

fn parse_doc(path: &Path, text: &str) -> Result<TreefileDoc> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(text).map_err(|e| {
            anyhow!(
                "{}:{}:{}: {}",
                path.display(),
                e.line(),
                e.column(),
                strip_loc(&e.to_string())
            )
        })
    } else {
        yaml_from_str(path, text)
    }
}

/// Parses YAML from `path`; a parse or schema error starts with `file:line:column:`.
pub fn yaml_from_str<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(loc) => anyhow!(
            "{}:{}:{}: {}",
            path.display(),
            loc.line(),
            loc.column(),
            strip_loc(&e.to_string())
        ),
        None => anyhow!("{}: {}", path.display(), e),
    })
}

/// serde's messages end in " at line X column Y"; we print the location up front instead.
fn strip_loc(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn merge_list<T: Clone>(base: &mut Option<Vec<T>>, over: Option<Vec<T>>) {
    if let Some(over) = over {
        base.get_or_insert_with(Vec::new).extend(over);
    }
}

fn merge_map<V>(base: &mut Option<BTreeMap<String, V>>, over: Option<BTreeMap<String, V>>) {
    if let Some(over) = over {
        base.get_or_insert_with(BTreeMap::new).extend(over);
    }
}

/// Merges `over` (the including file) onto `base` (what it included): lists concatenate with
/// the includer's entries last, maps merge with the includer winning, scalars are overridden.
/// `over` is taken apart field by field: a field added to [`TreefileDoc`] does not compile
/// until it is merged here.
fn merge(base: &mut TreefileDoc, over: TreefileDoc) {
    let TreefileDoc {
        treeref,
        include: _,
        arch_include: _,
        conditional_include: _,
        variables,
        releasever,
        repos,
        packages,
        packages_x86_64,
        packages_aarch64,
        packages_ppc64le,
        packages_s390x,
        exclude_packages,
        recommends,
        documentation,
        install_langs,
        remove_files,
        remove_from_packages,
        add_files,
        postprocess,
        postprocess_script,
        units,
        default_target,
        add_commit_metadata,
        automatic_version_prefix,
        automatic_version_suffix,
        mutate_os_release,
        etc_group_members,
        check_passwd,
        check_groups,
        tmp_is_dir,
        machineid_compat,
        boot_location,
        initramfs_args,
        no_initramfs,
        readonly_executables,
        rpmdb,
        selinux,
        container,
    } = over;
    fn scalar<T>(base: &mut Option<T>, over: Option<T>) {
        if over.is_some() {
            *base = over;
        }
    }
    scalar(&mut base.treeref, treeref);
    scalar(&mut base.releasever, releasever);
    scalar(&mut base.recommends, recommends);
    scalar(&mut base.documentation, documentation);
    scalar(&mut base.postprocess_script, postprocess_script);
    scalar(&mut base.default_target, default_target);
    scalar(&mut base.automatic_version_prefix, automatic_version_prefix);
    scalar(&mut base.automatic_version_suffix, automatic_version_suffix);
    scalar(&mut base.mutate_os_release, mutate_os_release);
    scalar(&mut base.check_passwd, check_passwd);
    scalar(&mut base.check_groups, check_groups);
    scalar(&mut base.tmp_is_dir, tmp_is_dir);
    scalar(&mut base.machineid_compat, machineid_compat);
    scalar(&mut base.boot_location, boot_location);
    scalar(&mut base.no_initramfs, no_initramfs);
    scalar(&mut base.readonly_executables, readonly_executables);
    scalar(&mut base.rpmdb, rpmdb);
    scalar(&mut base.selinux, selinux);
    scalar(&mut base.container, container);
    merge_map(&mut base.variables, variables);
    merge_map(&mut base.add_commit_metadata, add_commit_metadata);
    merge_list(&mut base.repos, repos);
    merge_list(&mut base.packages, packages);
    // Folded into `packages` by the loader before merging; kept per arch otherwise.
    merge_list(&mut base.packages_x86_64, packages_x86_64);
    merge_list(&mut base.packages_aarch64, packages_aarch64);
    merge_list(&mut base.packages_ppc64le, packages_ppc64le);
    merge_list(&mut base.packages_s390x, packages_s390x);
    merge_list(&mut base.exclude_packages, exclude_packages);
    merge_list(&mut base.install_langs, install_langs);
    merge_list(&mut base.remove_files, remove_files);
    merge_list(&mut base.remove_from_packages, remove_from_packages);
    merge_list(&mut base.add_files, add_files);
    merge_list(&mut base.postprocess, postprocess);
    merge_list(&mut base.units, units);
    merge_list(&mut base.etc_group_members, etc_group_members);
    merge_list(&mut base.initramfs_args, initramfs_args);
}

struct Loader<'a> {
    basearch: &'a str,
    sources: Vec<PathBuf>,
    /// The variables `conditional-include` sees: one map for the whole load, the first
    /// definition winning (with `basearch`, and `releasever` once set), as in rpm-ostree.
    vars: BTreeMap<String, Value>,
}

impl Loader<'_> {
    fn load(&mut self, path: &Path, stack: &mut Vec<PathBuf>) -> Result<(TreefileDoc, Externals)> {
        let canon = path
            .canonicalize()
            .with_context(|| format!("reading treefile {}", path.display()))?;
        if stack.contains(&canon) {
            let chain: Vec<String> = stack.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "{}: include cycle: {} -> {}",
                path.display(),
                chain.join(" -> "),
                canon.display()
            );
        }
        if self.sources.contains(&canon) {
            bail!(
                "{}: this file is included twice (rpm-ostree refuses that too)",
                path.display()
            );
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            bail!(
                "{}: includes nested deeper than {MAX_INCLUDE_DEPTH} levels",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading treefile {}", path.display()))?;
        let mut doc = parse_doc(path, &text)?;
        self.sources.push(canon.clone());
        stack.push(canon);

        let dir = path.parent().unwrap_or(Path::new("."));
        let mut includes = doc
            .include
            .take()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if let Some(arch_inc) = doc.arch_include.take() {
            if let Some(v) = arch_inc.get(self.basearch) {
                includes.extend(v.clone().into_vec());
            }
        }
        for (k, v) in doc.variables.iter().flatten() {
            self.vars.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let Some(rv) = &doc.releasever {
            self.vars
                .entry("releasever".into())
                .or_insert_with(|| rv.clone());
        }
        for ci in doc.conditional_include.take().into_iter().flatten() {
            let conds = ci.condition.into_vec();
            let mut holds = true;
            // All are evaluated, so a mistake in a later one shows even when an earlier fails.
            for c in &conds {
                let at = line_of_key(&text, "conditional-include").unwrap_or(1);
                holds &= condition_holds(c, &self.vars)
                    .with_context(|| format!("{}:{at}: conditional-include", path.display()))?;
            }
            if holds {
                includes.extend(ci.include.into_vec());
            }
        }
        // Fold packages-$basearch into packages; other arches' lists are dropped.
        let arch_pkgs = match self.basearch {
            "x86_64" => doc.packages_x86_64.take(),
            "aarch64" => doc.packages_aarch64.take(),
            "ppc64le" => doc.packages_ppc64le.take(),
            "s390x" => doc.packages_s390x.take(),
            _ => None,
        };
        merge_list(&mut doc.packages, arch_pkgs);
        doc.packages_x86_64 = None;
        doc.packages_aarch64 = None;
        doc.packages_ppc64le = None;
        doc.packages_s390x = None;

        validate(path, &text, &doc)?;
        let mut ext = Externals::read(path, &text, &doc)?;

        // rpm-ostree's order: each include in turn is merged *under* what is there so far.
        // The including file wins a scalar over its includes, an earlier include over a later
        // one; an include's lists come before the includer's, a later include's before an
        // earlier one's (so a later include's postprocess runs first).
        for inc in includes {
            let inc_path = dir.join(&inc);
            let (sub, sub_ext) = self.load(&inc_path, stack).with_context(|| {
                let line = line_of_key(&text, "include")
                    .or_else(|| line_of_key(&text, "arch-include"))
                    .unwrap_or(1);
                format!("{}:{line}: in include {inc:?}", path.display())
            })?;
            let mut under_ext = sub_ext;
            under_ext.merge(ext, &doc);
            ext = under_ext;
            let mut under = sub;
            merge(&mut under, doc);
            doc = under;
        }
        stack.pop();
        Ok((doc, ext))
    }
}

/// Checks that serde cannot express; each error points at the key's line.
fn validate(path: &Path, text: &str, doc: &TreefileDoc) -> Result<()> {
    let at = |key: &str| format!("{}:{}", path.display(), line_of_key(text, key).unwrap_or(1));
    if doc.selinux == Some(true) {
        bail!(
            "{}: selinux: true is not supported yet: hostforge composes without SELinux \
             labels; set `selinux: false` or remove the key",
            at("selinux")
        );
    }
    if let Some(rfp) = &doc.remove_from_packages {
        for entry in rfp {
            if entry.len() < 2 {
                bail!(
                    "{}: remove-from-packages entries are [PACKAGE, REGEX, ...]; got {entry:?}",
                    at("remove-from-packages")
                );
            }
        }
    }
    if let Some(af) = &doc.add_files {
        for (_, dest) in af {
            if !dest.starts_with('/') {
                bail!(
                    "{}: add-files destination {dest:?} must be an absolute path",
                    at("add-files")
                );
            }
        }
    }
    // Values that reach generated files: unit names become paths, the version prefix and
    // mutate-os-release's text end up in os-release (which shells source).
    for unit in doc.units.iter().flatten() {
        crate::validate::unit_name("units", unit).with_context(|| at("units"))?;
    }
    if let Some(t) = &doc.default_target {
        crate::validate::unit_name("default-target", t).with_context(|| at("default-target"))?;
    }
    // `${name}` references are checked here as written and the values again once
    // substituted (the compose checks the result).
    if let Some(p) = &doc.automatic_version_prefix {
        crate::validate::one_line_text("automatic-version-prefix", &without_var_refs(p))
            .with_context(|| at("automatic-version-prefix"))?;
    }
    if let Some(s) = &doc.automatic_version_suffix {
        if s.len() != 1 || !s.is_ascii() || s.chars().any(|c| c.is_ascii_control()) {
            bail!(
                "{}: automatic-version-suffix must be one ASCII character, not {s:?}",
                at("automatic-version-suffix")
            );
        }
    }
    if let Some(m) = &doc.mutate_os_release {
        crate::validate::one_line_text("mutate-os-release", &without_var_refs(m))
            .with_context(|| at("mutate-os-release"))?;
    }
    if let Some(cp) = &doc.check_passwd {
        if cp.kind == CheckPasswdType::File && cp.filename.is_none() {
            bail!(
                "{}: check-passwd type file needs `filename`",
                at("check-passwd")
            );
        }
    }
    Ok(())
}

impl Treefile {
    /// Loads `path` and everything it includes for the host's architecture.
    pub fn load(path: &Path) -> Result<Treefile> {
        Self::load_for_arch(path, host_basearch())
    }

    pub fn load_for_arch(path: &Path, basearch: &str) -> Result<Treefile> {
        let mut loader = Loader {
            basearch,
            sources: Vec::new(),
            vars: BTreeMap::from([("basearch".to_string(), Value::String(basearch.into()))]),
        };
        let (mut doc, externals) = loader.load(path, &mut Vec::new())?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // Packages may be listed several to an entry, separated by spaces, as in rpm-ostree.
        if let Some(pkgs) = doc.packages.take() {
            doc.packages = Some(
                pkgs.iter()
                    .flat_map(|p| p.split_whitespace().map(str::to_string))
                    .collect(),
            );
        }
        let tf = Treefile {
            path: path.to_path_buf(),
            dir,
            basearch: basearch.to_string(),
            doc,
            sources: loader.sources,
            externals,
        };
        tf.check_complete()?;
        Ok(tf)
    }

    fn check_complete(&self) -> Result<()> {
        let p = self.path.display();
        if self.doc.treeref.as_deref().unwrap_or("").is_empty() {
            bail!("{p}: treefile has no `ref`: add e.g. `ref: myos/x86_64/node`");
        }
        if self.packages().is_empty() {
            bail!("{p}: treefile lists no `packages`");
        }
        Ok(())
    }

    pub fn packages(&self) -> &[String] {
        self.doc.packages.as_deref().unwrap_or_default()
    }

    pub fn releasever(&self) -> Option<String> {
        self.doc.releasever.as_ref().map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Replaces `${basearch}`, `${releasever}` and treefile `variables` in a string.
    pub fn substitute(&self, s: &str) -> String {
        let mut out = s.replace("${basearch}", &self.basearch);
        if let Some(rv) = self.releasever() {
            out = out.replace("${releasever}", &rv);
        }
        if let Some(vars) = &self.doc.variables {
            for (k, v) in vars {
                let val = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("${{{k}}}"), &val);
            }
        }
        out
    }

    /// The ref with variables substituted.
    pub fn treeref(&self) -> String {
        self.substitute(self.doc.treeref.as_deref().unwrap_or_default())
    }

    pub fn recommends(&self) -> bool {
        self.doc.recommends.unwrap_or(true)
    }

    pub fn documentation(&self) -> bool {
        self.doc.documentation.unwrap_or(!self.container())
    }

    /// `container: true`: see [`TreefileDoc::container`].
    pub fn container(&self) -> bool {
        self.doc.container == Some(true)
    }

    /// The flattened treefile as canonical JSON (sorted keys through serde's struct order).
    pub fn flattened_json(&self) -> String {
        serde_json::to_string_pretty(&self.doc).expect("treefile serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\nrepos: [r]\npackages: [x]\nbogus-key: 1\n",
        );
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("bogus-key"), "{err}");
        assert!(err.contains("t.yaml:4:"), "{err}");
    }

    #[test]
    fn values_bound_for_generated_files_are_checked_at_their_line() {
        let d = tempfile::tempdir().unwrap();
        for (key, value, line) in [
            ("units", "[\"../../etc/shadow.service\"]", "units"),
            ("units", "[\"a b.service\"]", "units"),
            (
                "default-target",
                "\"multi-user.target\\n\"",
                "default-target",
            ),
            (
                "automatic-version-prefix",
                "\"39'; reboot; '\"",
                "automatic-version-prefix",
            ),
            (
                "automatic-version-prefix",
                "\"39\\nID=x\"",
                "automatic-version-prefix",
            ),
            ("mutate-os-release", "\"$(id)\"", "mutate-os-release"),
            ("mutate-os-release", "\"${a}$(id)\"", "mutate-os-release"),
            (
                "automatic-version-suffix",
                "\"--\"",
                "automatic-version-suffix",
            ),
        ] {
            let p = write(
                d.path(),
                "t.yaml",
                &format!("ref: a/b\nrepos: [r]\npackages: [x]\n{key}: {value}\n"),
            );
            let err = format!("{:#}", Treefile::load(&p).unwrap_err());
            assert!(err.contains("t.yaml:4:"), "{key}: {err}");
            assert!(err.contains(line), "{key}: {err}");
        }
    }

    /// rpm-ostree's include rules, with its documented postprocess example: includes'
    /// lists before the includer's, a later sibling's before an earlier one's; the includer
    /// wins a scalar (and a map key), then the earlier sibling; a file included twice (here
    /// through two siblings) is an error.
    #[test]
    fn includes_merge_in_rpm_ostree_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("manifests")).unwrap();
        write(
            d.path(),
            "manifests/kernel.yaml",
            "postprocess: [echo bar]\npackages: [kernel]\nreleasever: 1\n\
             automatic-version-prefix: kernel\nvariables: {a: kernel, b: kernel}\n",
        );
        write(
            d.path(),
            "manifests/bootupd.yaml",
            "postprocess: [echo baz]\npackages: [bootupd]\nreleasever: 2\n\
             automatic-version-prefix: bootupd\nmutate-os-release: bootupd\n\
             variables: {a: bootupd, c: bootupd}\n",
        );
        let p = write(
            d.path(),
            "manifest.yaml",
            "ref: a/b\nrepos: [r]\ninclude: [manifests/kernel.yaml, manifests/bootupd.yaml]\n\
             postprocess: [echo foo]\npackages: [top]\nautomatic-version-prefix: top\n\
             variables: {b: top}\n",
        );
        let tf = Treefile::load(&p).unwrap();
        let doc = &tf.doc;
        assert_eq!(
            doc.postprocess.as_deref().unwrap(),
            ["echo baz", "echo bar", "echo foo"]
        );
        assert_eq!(tf.packages(), ["bootupd", "kernel", "top"]);
        assert_eq!(doc.automatic_version_prefix.as_deref(), Some("top"));
        assert_eq!(
            tf.releasever().as_deref(),
            Some("1"),
            "the earlier sibling wins"
        );
        assert_eq!(doc.mutate_os_release.as_deref(), Some("bootupd"));
        let vars = doc.variables.as_ref().unwrap();
        assert_eq!(vars["a"], "kernel");
        assert_eq!(vars["b"], "top");
        assert_eq!(vars["c"], "bootupd");

        write(d.path(), "manifests/common.yaml", "packages: [common]\n");
        write(d.path(), "manifests/x.yaml", "include: common.yaml\n");
        write(d.path(), "manifests/y.yaml", "include: common.yaml\n");
        let p = write(
            d.path(),
            "twice.yaml",
            "ref: a/b\nrepos: [r]\npackages: [p]\ninclude: [manifests/x.yaml, manifests/y.yaml]\n",
        );
        let e = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(
            e.contains("common.yaml") && e.contains("included twice"),
            "{e}"
        );
    }

    /// `conditional-include` over releasever, basearch and variables (defined by the includer
    /// and seen by its includes), with rpm-ostree's operators; mistakes are errors at the
    /// key's line.
    #[test]
    fn conditional_includes_follow_rpm_ostree() {
        let d = tempfile::tempdir().unwrap();
        for name in ["dev", "f35", "x86", "not-dev", "old", "both"] {
            write(
                d.path(),
                &format!("{name}.yaml"),
                &format!("packages: [{name}]\n"),
            );
        }
        write(
            d.path(),
            "mid.yaml",
            "conditional-include:\n  - if: stream == \"dev\"\n    include: dev.yaml\n",
        );
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\nrepos: [r]\npackages: [top]\nreleasever: 35\n\
             variables:\n  stream: \"dev\"\n  devpackages: true\ninclude: mid.yaml\n\
             conditional-include:\n\
             \x20 - if: releasever >= 35\n    include: f35.yaml\n\
             \x20 - if: basearch == \"x86_64\"\n    include: [x86.yaml]\n\
             \x20 - if: stream != \"dev\"\n    include: not-dev.yaml\n\
             \x20 - if: releasever<30\n    include: old.yaml\n\
             \x20 - if: [devpackages == true, releasever > 34]\n    include: both.yaml\n",
        );
        let tf = Treefile::load_for_arch(&p, "x86_64").unwrap();
        let mut pkgs = tf.packages().to_vec();
        pkgs.sort();
        assert_eq!(pkgs, ["both", "dev", "f35", "top", "x86"]);

        for (cond, needle) in [
            ("nosuch == 1", "undefined variable"),
            ("releasever == \"35\"", "not the same type"),
            ("stream > \"a\"", "compares numbers only"),
            ("releasever =~ 3", "expected one of"),
            ("releasever", "expected VARIABLE OP VALUE"),
        ] {
            let p = write(
                d.path(),
                "bad.yaml",
                &format!(
                    "ref: a/b\nrepos: [r]\npackages: [x]\nreleasever: 35\nvariables: {{stream: s}}\n\
                     conditional-include:\n  - if: '{cond}'\n    include: dev.yaml\n"
                ),
            );
            let e = format!("{:#}", Treefile::load(&p).unwrap_err());
            assert!(
                e.contains("bad.yaml:6") && e.contains(needle),
                "{cond}: {e}"
            );
        }
    }

    /// rpm-ostree's examples use `${releasever}` in these values: references pass the check
    /// (their values are checked once substituted, by the compose), the legacy underscore
    /// spellings load as the dashed keys.
    #[test]
    fn variable_references_and_underscore_spellings_load() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\nrepos: [r]\npackages: [x]\nreleasever: 40\n\
             automatic_version_prefix: \"${releasever}.<date:%Y%m%d>\"\n\
             mutate-os-release: \"${releasever}\"\ndefault_target: multi-user.target\n\
             boot_location: modules\n",
        );
        let tf = Treefile::load(&p).unwrap();
        assert_eq!(
            tf.doc.automatic_version_prefix.as_deref(),
            Some("${releasever}.<date:%Y%m%d>")
        );
        assert_eq!(tf.doc.default_target.as_deref(), Some("multi-user.target"));
        assert!(tf.doc.boot_location.is_some());
        assert_eq!(tf.substitute("${releasever}"), "40");
    }

    /// rpm-ostree's rule: a referenced file is found beside the treefile that names it; the
    /// bytes read then are what compose hashes and writes.
    #[test]
    fn externals_resolve_from_the_declaring_file_and_are_read_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        write(d.path(), "f.txt", "top's f\n");
        write(d.path(), "sub/f.txt", "sub's f\n");
        write(d.path(), "sub/post.sh", "echo sub\n");
        write(d.path(), "post.sh", "echo top\n");
        write(d.path(), "sub/passwd", "root:x:0:0::/root:/bin/sh\n");
        write(
            d.path(),
            "sub/inc.yaml",
            "add-files: [[f.txt, /etc/from-sub]]\npostprocess-script: post.sh\n\
             check-passwd: {type: file, filename: passwd}\n",
        );
        let p = write(
            d.path(),
            "top.yaml",
            "include: sub/inc.yaml\nref: a/b\nrepos: [r]\npackages: [x]\n\
             add-files: [[f.txt, /etc/from-top]]\npostprocess-script: post.sh\n",
        );
        let tf = Treefile::load(&p).unwrap();
        let ext = &tf.externals;
        let added: Vec<(&str, &[u8])> = ext
            .add_files
            .iter()
            .map(|(dest, e)| (dest.as_str(), e.data.as_slice()))
            .collect();
        assert_eq!(
            added,
            [
                ("/etc/from-sub", b"sub's f\n".as_slice()),
                ("/etc/from-top", b"top's f\n".as_slice())
            ]
        );
        // The includer's scalar wins, with its own file.
        assert_eq!(ext.postprocess_script.as_ref().unwrap().data, b"echo top\n");
        assert_eq!(
            ext.check_passwd.as_ref().unwrap().path,
            d.path().join("sub/passwd")
        );
        // Changing the file after loading changes nothing of what was read.
        write(d.path(), "sub/f.txt", "changed\n");
        assert_eq!(tf.externals.add_files[0].1.data, b"sub's f\n");
        // A missing file is named with the line of the key that references it.
        write(
            d.path(),
            "sub/inc.yaml",
            "add-files: [[missing.txt, /etc/x]]\n",
        );
        let e = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(
            e.contains("inc.yaml:1: add-files: reading") && e.contains("missing.txt"),
            "{e}"
        );
    }

    #[test]
    fn json_unknown_key_has_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.json",
            "{\n \"ref\": \"a/b\",\n \"repos\": [\"r\"],\n \"packages\": [\"x\"],\n \"nope\": 1\n}\n",
        );
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("nope") && err.contains("t.json:5:"), "{err}");
    }

    #[test]
    fn includes_merge_lists_and_override_scalars() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.yaml",
            "ref: base/ref\nrepos: [r1]\npackages: [a b]\nrecommends: true\n",
        );
        let p = write(
            d.path(),
            "top.yaml",
            "include: base.yaml\nref: top/${basearch}\nrepos: [r2]\npackages: [c]\n\
             packages-x86_64: [xa]\npackages-aarch64: [aa]\nrecommends: false\n",
        );
        let tf = Treefile::load_for_arch(&p, "x86_64").unwrap();
        assert_eq!(tf.treeref(), "top/x86_64");
        assert_eq!(tf.packages(), ["a", "b", "c", "xa"]);
        assert_eq!(tf.doc.repos.as_deref().unwrap(), ["r1", "r2"]);
        assert!(!tf.recommends());
        assert!(!tf.flattened_json().contains("include"));
    }

    #[test]
    fn arch_include_only_for_matching_arch() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "x.yaml", "packages: [onlyx86]\n");
        write(d.path(), "a.yaml", "packages: [onlyarm]\n");
        let p = write(
            d.path(),
            "t.yaml",
            "ref: r\nrepos: [r]\npackages: [p]\narch-include:\n  x86_64: x.yaml\n  aarch64: a.yaml\n",
        );
        let tf = Treefile::load_for_arch(&p, "x86_64").unwrap();
        assert_eq!(tf.packages(), ["onlyx86", "p"]);
    }

    #[test]
    fn include_cycle_rejected() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a.yaml", "include: b.yaml\n");
        write(d.path(), "b.yaml", "include: a.yaml\n");
        let err = format!(
            "{:#}",
            Treefile::load(&d.path().join("a.yaml")).unwrap_err()
        );
        assert!(err.contains("include cycle"), "{err}");
    }

    #[test]
    fn include_depth_limited() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..60 {
            write(
                d.path(),
                &format!("t{i}.yaml"),
                &format!("include: t{}.yaml\n", i + 1),
            );
        }
        write(d.path(), "t60.yaml", "ref: r\n");
        let err = format!(
            "{:#}",
            Treefile::load(&d.path().join("t0.yaml")).unwrap_err()
        );
        assert!(err.contains("deeper than 50"), "{err}");
    }

    #[test]
    fn selinux_true_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.yaml",
            "ref: r\nrepos: [r]\npackages: [p]\nselinux: true\n",
        );
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(
            err.contains("t.yaml:4") && err.contains("not supported"),
            "{err}"
        );
    }

    #[test]
    fn missing_ref_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "t.yaml", "repos: [r]\npackages: [p]\n");
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("no `ref`"), "{err}");
    }
}
