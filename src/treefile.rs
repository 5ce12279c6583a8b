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
    pub include: IncludeSpec,
}

/// What a `conditional-include` brings in: files (a path or a list), or, as rpm-ostree also
/// allows, a treefile written inline.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum IncludeSpec {
    Files(OneOrMany),
    Inline(Box<TreefileDoc>),
}

impl<'de> Deserialize<'de> for IncludeSpec {
    /// Read by the parser itself (no buffering), so errors inside an inline treefile keep
    /// their line and column.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IncludeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file, a list of files or an inline treefile")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<IncludeSpec, E> {
                Ok(IncludeSpec::Files(OneOrMany::One(v.to_string())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> std::result::Result<IncludeSpec, A::Error> {
                let v =
                    Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(IncludeSpec::Files(OneOrMany::Many(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<IncludeSpec, A::Error> {
                let doc =
                    TreefileDoc::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(IncludeSpec::Inline(Box::new(doc)))
            }
        }
        d.deserialize_any(V)
    }
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
    #[serde(alias = "b-d-b")]
    Bdb,
    Ndb,
    /// The target's own default: sqlite for every rpm hostforge composes with.
    Target,
    /// The build host's default; hostforge's rpm writes sqlite.
    Host,
}

/// rpm-ostree's `edition`: which generation of defaults applies.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Edition {
    #[default]
    #[serde(rename = "2014")]
    E2014,
    #[serde(rename = "2024")]
    E2024,
}

impl<'de> Deserialize<'de> for Edition {
    /// `"2024"` as rpm-ostree writes it, or the bare number YAML readers also write.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Clone, Copy)]
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Edition;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("edition \"2014\" or \"2024\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Edition, E> {
                match v {
                    "2014" => Ok(Edition::E2014),
                    "2024" => Ok(Edition::E2024),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Edition, E> {
                V.visit_str::<E>(&v.to_string())
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Edition, E> {
                V.visit_str::<E>(&v.to_string())
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SysUsers {
    ComposeAuto,
    ComposeForced,
}

/// Where `/opt` and `/usr/local` live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptUsrLocal {
    /// Links into `/var` (rpm-ostree's default): writable, not part of the commit.
    #[default]
    Var,
    /// Real directories in the commit, read-only like `/usr`.
    Root,
    /// ostree's state overlays, which need a newer ostree than Debian 12's: refused.
    #[serde(alias = "stateoverlay")]
    StateOverlay,
}

/// `repo-metadata` / `advisories-metadata`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataTarget {
    #[default]
    Inline,
    Detached,
    Disabled,
}

/// One `repo-packages` entry: these packages come from that repo only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoPackages {
    pub repo: String,
    pub packages: Vec<String>,
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
    /// rpm-ostree's defaults epoch: `2024` makes `tmp-is-dir` default to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<Edition>,
    /// Free-form data for tools around the compose; hostforge keeps it in the flattened
    /// treefile and does nothing else with it, as rpm-ostree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Must be the architecture composed for (no cross-composes, as in rpm-ostree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basearch: Option<String>,
    /// `$name` values for the `.repo` files (besides `$releasever` and `$basearch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repovars: Option<BTreeMap<String, String>>,
    /// rpm-ostree's retired rojig packaging: accepted, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rojig: Option<Value>,
    /// Repos whose packages are visible only where a lockfile pins them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockfile_repos: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_devices: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_label_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysusers: Option<SysUsers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima: Option<bool>,
    #[serde(default, alias = "gpg_key", skip_serializing_if = "Option::is_none")]
    pub gpg_key: Option<String>,
    /// Folded into `packages`, as rpm-ostree does.
    #[serde(default, skip_serializing)]
    pub bootstrap_packages: Option<Vec<String>>,
    /// Refs in the target repo whose trees are laid over the packages, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostree_layers: Option<Vec<String>>,
    /// Like `ostree-layers`, but their files may replace files from packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostree_override_layers: Option<Vec<String>>,
    /// A modularity platform id; the fixture repos have no modules, so it changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_usrlocal: Option<OptUsrLocal>,
    /// `false`: `check-passwd`/`check-groups` `previous` compare with nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_passwd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_removed_users: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_removed_groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_metadata: Option<MetadataTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisories_metadata: Option<MetadataTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpmdb_normalize: Option<bool>,
    /// The command of the container image made from the commit (`ostree.container-cmd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_cmd: Option<Vec<String>>,
    /// Packages that must come from one repo: `[{repo: ID, packages: [...]}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_packages: Option<Vec<RepoPackages>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cliwrap: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cliwrap_binaries: Option<Vec<String>>,
    // rpm-ostree's client-side (derivation) keys, which its `compose tree` refuses too:
    // parsed so that the refusal names them (see `DERIVE_KEYS`).
    #[serde(rename = "base-refspec", default, skip_serializing)]
    pub base_refspec: Option<Value>,
    #[serde(rename = "container-image-reference", default, skip_serializing)]
    pub container_image_reference: Option<Value>,
    #[serde(rename = "packages-local", default, skip_serializing)]
    pub packages_local: Option<Value>,
    #[serde(rename = "packages-local-fileoverride", default, skip_serializing)]
    pub packages_local_fileoverride: Option<Value>,
    #[serde(rename = "override-remove", default, skip_serializing)]
    pub override_remove: Option<Value>,
    #[serde(rename = "ex-override-replace", default, skip_serializing)]
    pub ex_override_replace: Option<Value>,
    #[serde(rename = "override-replace-local", default, skip_serializing)]
    pub override_replace_local: Option<Value>,
    #[serde(rename = "initramfs", default, skip_serializing)]
    pub initramfs: Option<Value>,
    #[serde(rename = "custom", default, skip_serializing)]
    pub custom: Option<Value>,
    #[serde(rename = "override-commit", default, skip_serializing)]
    pub override_commit: Option<Value>,
    #[serde(rename = "unconfigured-state", default, skip_serializing)]
    pub unconfigured_state: Option<Value>,
}

/// rpm-ostree's keys for deriving from an existing commit (client-side), not composing.
pub const DERIVE_KEYS: &[&str] = &[
    "base-refspec",
    "container-image-reference",
    "packages-local",
    "packages-local-fileoverride",
    "override-remove",
    "ex-override-replace",
    "override-replace-local",
    "initramfs",
    "custom",
    "override-commit",
    "unconfigured-state",
];

/// `s` with each `(pattern, value)` of `subs` replaced in turn.
fn substitute_with(subs: &[(String, String)], s: &str) -> String {
    subs.iter()
        .fold(s.to_string(), |out, (pat, val)| out.replace(pat, val))
}

/// rpm-ostree's package list syntax: entries split at whitespace except inside single
/// quotes (`'foo >= 5.0'` is one spec); the result sorted and without repeats, as its set.
fn split_package_specs(entries: &[String]) -> Result<Vec<String>> {
    let mut out = std::collections::BTreeSet::new();
    for entry in entries {
        let mut rest = entry.as_str();
        while let Some(open) = rest.find('\'') {
            out.extend(rest[..open].split_whitespace().map(str::to_string));
            let after = &rest[open + 1..];
            let close = after
                .find('\'')
                .ok_or_else(|| anyhow!("missing closing quote in {entry:?}"))?;
            let spec = after[..close].trim();
            if !spec.is_empty() {
                out.insert(spec.to_string());
            }
            rest = &after[close + 1..];
        }
        out.extend(rest.split_whitespace().map(str::to_string));
    }
    for spec in &out {
        crate::validate::one_line_text("package", spec)?;
    }
    Ok(out.into_iter().collect())
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

/// One file's document, with its `packages-ARCH` lists (any ARCH) taken aside.
struct Parsed {
    doc: TreefileDoc,
    arch_packages: BTreeMap<String, Vec<String>>,
}

/// A map reader that hands every key to the document except `packages-ARCH` (kept in `arch`)
/// and, for JSON, the keys in `skip` (rpm-ostree ignores unknown JSON keys). Errors keep the
/// parser's line and column since the values are read by the parser itself.
struct ArchKeys<'a, M> {
    inner: M,
    arch: &'a mut BTreeMap<String, Vec<String>>,
    skip: &'a std::collections::BTreeSet<String>,
}

impl<'de, M: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for ArchKeys<'_, M> {
    type Error = M::Error;
    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> std::result::Result<Option<K::Value>, M::Error> {
        use serde::de::IntoDeserializer;
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            if self.skip.contains(&key) {
                self.inner.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            if let Some(arch) = key.strip_prefix("packages-") {
                if !DERIVE_KEYS.contains(&key.as_str()) {
                    let v: Vec<String> = self.inner.next_value()?;
                    self.arch.entry(arch.to_string()).or_default().extend(v);
                    continue;
                }
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }
    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> std::result::Result<V::Value, M::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// Deserializes a [`TreefileDoc`] through [`ArchKeys`].
struct DocSeed<'a> {
    arch: &'a mut BTreeMap<String, Vec<String>>,
    skip: &'a std::collections::BTreeSet<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DocSeed<'_> {
    type Value = TreefileDoc;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<TreefileDoc, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DocSeed<'_> {
    type Value = TreefileDoc;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a treefile (a map of keys)")
    }
    fn visit_map<M: serde::de::MapAccess<'de>>(
        self,
        map: M,
    ) -> std::result::Result<TreefileDoc, M::Error> {
        let filtered = ArchKeys {
            inner: map,
            arch: self.arch,
            skip: self.skip,
        };
        TreefileDoc::deserialize(serde::de::value::MapAccessDeserializer::new(filtered))
    }
}

fn parse_doc(path: &Path, text: &str) -> Result<Parsed> {
    use serde::de::DeserializeSeed;
    let is_json = path.extension().is_some_and(|e| e == "json");
    let mut skip = std::collections::BTreeSet::new();
    loop {
        let mut arch = BTreeMap::new();
        let seed = DocSeed {
            arch: &mut arch,
            skip: &skip,
        };
        let res = if is_json {
            let mut de = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut de).and_then(|d| de.end().map(|_| d))
        } else {
            let res = seed.deserialize(serde_yaml::Deserializer::from_str(text));
            return res
                .map(|doc| Parsed {
                    doc,
                    arch_packages: arch,
                })
                .map_err(|e| yaml_error(path, text, e));
        };
        match res {
            Ok(doc) => {
                return Ok(Parsed {
                    doc,
                    arch_packages: arch,
                })
            }
            Err(e) => {
                // rpm-ostree ignores keys it does not know in JSON treefiles (and FCOS uses
                // that for comments); a warning says which, an error stays an error.
                match unknown_field(&e.to_string()).map(str::to_string) {
                    Some(k) if !skip.contains(&k) => {
                        eprintln!(
                            "warning: {}:{}: unknown key {k:?} ignored (rpm-ostree ignores \
                             unknown keys in JSON treefiles)",
                            path.display(),
                            e.line()
                        );
                        skip.insert(k);
                    }
                    _ => return Err(json_error(path, &e)),
                }
            }
        }
    }
}

/// The key of serde's "unknown field `KEY`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k)
}

/// A JSON parse or schema error as `file:line:column: message`.
pub fn json_error(path: &Path, e: &serde_json::Error) -> anyhow::Error {
    anyhow!(
        "{}:{}:{}: {}",
        path.display(),
        e.line(),
        e.column(),
        strip_loc(&e.to_string())
    )
}

fn yaml_error(path: &Path, text: &str, e: serde_yaml::Error) -> anyhow::Error {
    if let Some(key) = unknown_field(&e.to_string()) {
        // The parser reports a top-level unknown key at the document's start: point at the
        // key itself, and keep the message short (the keys are in docs/treefile.md).
        let line = line_of_key(text, key).or(e.location().map(|l| l.line()));
        return anyhow!(
            "{}:{}: unknown key `{key}` (rpm-ostree's treefile keys and what hostforge \
             does with each are listed in docs/treefile.md)",
            path.display(),
            line.unwrap_or(1)
        );
    }
    match e.location() {
        Some(loc) => anyhow!(
            "{}:{}:{}: {}",
            path.display(),
            loc.line(),
            loc.column(),
            strip_loc(&e.to_string())
        ),
        None => anyhow!("{}: {}", path.display(), e),
    }
}

/// Parses YAML from `path`; a parse or schema error starts with `file:line:column:`.
pub fn yaml_from_str<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| yaml_error(path, text, e))
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
        edition,
        metadata,
        basearch,
        repovars,
        rojig,
        lockfile_repos,
        ignore_devices,
        selinux_label_version,
        sysusers,
        ima,
        gpg_key,
        bootstrap_packages,
        ostree_layers,
        ostree_override_layers,
        platform_module,
        opt_usrlocal,
        preserve_passwd,
        ignore_removed_users,
        ignore_removed_groups,
        repo_metadata,
        advisories_metadata,
        rpmdb_normalize,
        container_cmd,
        repo_packages,
        cliwrap,
        cliwrap_binaries,
        base_refspec,
        container_image_reference,
        packages_local,
        packages_local_fileoverride,
        override_remove,
        ex_override_replace,
        override_replace_local,
        initramfs,
        custom,
        override_commit,
        unconfigured_state,
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
    scalar(&mut base.edition, edition);
    scalar(&mut base.basearch, basearch);
    scalar(&mut base.rojig, rojig);
    scalar(&mut base.ignore_devices, ignore_devices);
    scalar(&mut base.selinux_label_version, selinux_label_version);
    scalar(&mut base.sysusers, sysusers);
    scalar(&mut base.ima, ima);
    scalar(&mut base.gpg_key, gpg_key);
    scalar(&mut base.platform_module, platform_module);
    scalar(&mut base.opt_usrlocal, opt_usrlocal);
    scalar(&mut base.preserve_passwd, preserve_passwd);
    scalar(&mut base.repo_metadata, repo_metadata);
    scalar(&mut base.advisories_metadata, advisories_metadata);
    scalar(&mut base.rpmdb_normalize, rpmdb_normalize);
    scalar(&mut base.container_cmd, container_cmd);
    scalar(&mut base.cliwrap, cliwrap);
    for (b, o) in [
        (&mut base.base_refspec, base_refspec),
        (
            &mut base.container_image_reference,
            container_image_reference,
        ),
        (&mut base.packages_local, packages_local),
        (
            &mut base.packages_local_fileoverride,
            packages_local_fileoverride,
        ),
        (&mut base.override_remove, override_remove),
        (&mut base.ex_override_replace, ex_override_replace),
        (&mut base.override_replace_local, override_replace_local),
        (&mut base.initramfs, initramfs),
        (&mut base.custom, custom),
        (&mut base.override_commit, override_commit),
        (&mut base.unconfigured_state, unconfigured_state),
    ] {
        scalar(b, o);
    }
    merge_map(&mut base.metadata, metadata);
    merge_map(&mut base.repovars, repovars);
    merge_list(&mut base.lockfile_repos, lockfile_repos);
    merge_list(&mut base.bootstrap_packages, bootstrap_packages);
    merge_list(&mut base.ostree_layers, ostree_layers);
    merge_list(&mut base.ostree_override_layers, ostree_override_layers);
    merge_list(&mut base.ignore_removed_users, ignore_removed_users);
    merge_list(&mut base.ignore_removed_groups, ignore_removed_groups);
    merge_list(&mut base.cliwrap_binaries, cliwrap_binaries);
    // A package named again in a later entry comes from that entry's repo (rpm-ostree).
    merge_list(&mut base.repo_packages, repo_packages);
    if let Some(rp) = base.repo_packages.as_mut() {
        let mut seen = std::collections::BTreeSet::new();
        for entry in rp.iter_mut().rev() {
            entry.packages.retain(|p| seen.insert(p.clone()));
        }
        rp.retain(|e| !e.packages.is_empty());
    }
    merge_map(&mut base.variables, variables);
    merge_map(&mut base.add_commit_metadata, add_commit_metadata);
    merge_list(&mut base.repos, repos);
    merge_list(&mut base.packages, packages);
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
        let Parsed {
            mut doc,
            arch_packages,
        } = parse_doc(path, &text)?;
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
        if let Some(arch) = &doc.basearch {
            if arch != self.basearch {
                bail!(
                    "{}:{}: basearch {arch:?} but composing for {}: cross-composes are not \
                     supported",
                    path.display(),
                    line_of_key(&text, "basearch").unwrap_or(1),
                    self.basearch
                );
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
        let mut inlines: Vec<TreefileDoc> = Vec::new();
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
                match ci.include {
                    IncludeSpec::Files(f) => includes.extend(f.into_vec()),
                    IncludeSpec::Inline(inline) => inlines.push(*inline),
                }
            }
        }
        // Other arches' packages-$basearch lists are dropped.
        let mut arch_packages = arch_packages;
        fold_packages(&mut doc, arch_packages.remove(self.basearch)).with_context(|| {
            let line = line_of_key(&text, "repo-packages").unwrap_or(1);
            format!("{}:{line}: repo-packages", path.display())
        })?;

        validate(path, &text, &doc)?;
        let ext = Externals::read(path, &text, &doc)?;
        let (mut doc, mut ext) = merge_inlines(path, &text, doc, ext, inlines)?;

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
            (doc, ext) = merge_under((sub, sub_ext), (doc, ext));
        }
        stack.pop();
        Ok((doc, ext))
    }
}

/// Merges the inline treefiles of `conditional-include` whose condition held under `doc`
/// (the file at `path` that holds them), as rpm-ostree does: at once, before the included
/// files. They are part of that file, so their keys are checked and their files found like
/// its own. (A function of its own: its locals stay off the recursive loader's stack.)
#[inline(never)]
fn merge_inlines(
    path: &Path,
    text: &str,
    mut doc: TreefileDoc,
    mut ext: Externals,
    inlines: Vec<TreefileDoc>,
) -> Result<(TreefileDoc, Externals)> {
    for mut inline in inlines {
        let at = line_of_key(text, "conditional-include").unwrap_or(1);
        let nested = inline.include.is_some()
            || inline.arch_include.is_some()
            || inline.conditional_include.is_some();
        if nested {
            bail!(
                "{}:{at}: conditional-include: an inline treefile cannot include others; \
                 put the includes in a file",
                path.display()
            );
        }
        fold_packages(&mut inline, None)
            .with_context(|| format!("{}:{at}: repo-packages", path.display()))?;
        validate(path, text, &inline)?;
        let inline_ext = Externals::read(path, text, &inline)?;
        (doc, ext) = merge_under((inline, inline_ext), (doc, ext));
    }
    Ok((doc, ext))
}

/// `over` (a file, with the files its keys name) merged onto `under` (what it includes):
/// the rules of [`merge`] and [`Externals::merge`].
fn merge_under(
    under: (TreefileDoc, Externals),
    over: (TreefileDoc, Externals),
) -> (TreefileDoc, Externals) {
    let ((mut doc, mut ext), (over_doc, over_ext)) = (under, over);
    ext.merge(over_ext, &over_doc);
    merge(&mut doc, over_doc);
    (doc, ext)
}

/// One file's package keys in their merged form: `repo-packages` entries split into specs,
/// and `packages-$basearch` (`arch`) and `bootstrap-packages` joined to `packages`.
fn fold_packages(doc: &mut TreefileDoc, arch: Option<Vec<String>>) -> Result<()> {
    for rp in doc.repo_packages.iter_mut().flatten() {
        rp.packages = split_package_specs(&rp.packages)?;
    }
    merge_list(&mut doc.packages, arch);
    merge_list(&mut doc.packages, doc.bootstrap_packages.take());
    Ok(())
}

/// Checks that serde cannot express; each error points at the key's line.
fn validate(path: &Path, text: &str, doc: &TreefileDoc) -> Result<()> {
    let at = |key: &str| format!("{}:{}", path.display(), line_of_key(text, key).unwrap_or(1));
    let mut derive: Vec<&str> = [
        (&doc.base_refspec, "base-refspec"),
        (&doc.container_image_reference, "container-image-reference"),
        (&doc.packages_local, "packages-local"),
        (
            &doc.packages_local_fileoverride,
            "packages-local-fileoverride",
        ),
        (&doc.override_remove, "override-remove"),
        (&doc.ex_override_replace, "ex-override-replace"),
        (&doc.override_replace_local, "override-replace-local"),
        (&doc.initramfs, "initramfs"),
        (&doc.custom, "custom"),
        (&doc.override_commit, "override-commit"),
        (&doc.unconfigured_state, "unconfigured-state"),
    ]
    .into_iter()
    .filter(|(v, _)| v.is_some())
    .map(|(_, k)| k)
    .collect();
    derive.sort_by_key(|k| line_of_key(text, k));
    if let Some(first) = derive.first() {
        bail!(
            "{}: {} derive(s) from an existing commit on a client (rpm-ostree's derivation \
             keys); a compose builds a tree from packages, so remove {}",
            at(first),
            derive.join(", "),
            if derive.len() == 1 { "it" } else { "them" }
        );
    }
    for (key, map) in [
        (
            "variables",
            doc.variables.as_ref().map(|m| m.keys().collect::<Vec<_>>()),
        ),
        (
            "repovars",
            doc.repovars.as_ref().map(|m| m.keys().collect()),
        ),
    ] {
        for name in map.into_iter().flatten() {
            if name == "releasever" || name == "basearch" {
                bail!(
                    "{}: {key} cannot define {name:?}: it is set for you (use the \
                     `releasever` key for the release)",
                    at(key)
                );
            }
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
                bail!(
                    "{}: {key} name {name:?} must be letters, digits and '_'",
                    at(key)
                );
            }
        }
    }
    if let Some(Value::String(rv)) = &doc.releasever {
        // Substituted into .repo file URLs.
        crate::validate::one_line_text("releasever", rv).with_context(|| at("releasever"))?;
    }
    for (name, value) in doc.repovars.iter().flatten() {
        // Substituted into .repo files, which are line based.
        crate::validate::one_line_text("repovars", value)
            .with_context(|| format!("{}: repovars {name}", at("repovars")))?;
    }
    if let Some(v) = doc.selinux_label_version {
        if v > 1 {
            bail!(
                "{}: selinux-label-version must be 0 or 1, not {v}",
                at("selinux-label-version")
            );
        }
    }
    if doc.opt_usrlocal == Some(OptUsrLocal::StateOverlay) {
        bail!(
            "{}: opt-usrlocal: stateoverlay needs ostree's state overlays (ostree 2023.9), which \
             Debian 12's ostree 2022.7 lacks; use `var` (the default) or `root`",
            at("opt-usrlocal")
        );
    }
    if let Some(db @ (RpmdbBackend::Bdb | RpmdbBackend::Ndb)) = doc.rpmdb {
        bail!(
            "{}: rpmdb: {} cannot be written: the rpm hostforge writes the rpmdb with (Debian \
             12's) has only the sqlite backend; use `rpmdb: sqlite` (or `target`/`host`, which \
             mean sqlite here)",
            at("rpmdb"),
            if db == RpmdbBackend::Bdb {
                "bdb"
            } else {
                "ndb"
            }
        );
    }
    if doc.ima == Some(true) {
        bail!(
            "{}: ima: true (IMA signatures from the RPMs as security.ima xattrs) is not \
             supported; remove the key or set it to false",
            at("ima")
        );
    }
    if let Some(key) = &doc.gpg_key {
        let name = if line_of_key(text, "gpg_key").is_some() {
            "gpg_key"
        } else {
            "gpg-key"
        };
        crate::validate::one_line_text(name, key).with_context(|| at(name))?;
    }
    for rp in doc.repo_packages.iter().flatten() {
        if rp.packages.is_empty() {
            bail!(
                "{}: repo-packages entry for repo {:?} lists no packages",
                at("repo-packages"),
                rp.repo
            );
        }
    }
    validate_values(path, text, doc)
}

/// The values [`validate`] leaves: package lists, files and the text that reaches generated
/// files; each error points at the key's line.
fn validate_values(path: &Path, text: &str, doc: &TreefileDoc) -> Result<()> {
    let at = |key: &str| format!("{}:{}", path.display(), line_of_key(text, key).unwrap_or(1));
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
        // Includes nest up to 50 deep and each level holds whole documents: the load runs
        // on a thread with room for that whatever the build profile.
        let (mut doc, externals) = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("treefile-load".into())
                .stack_size(64 << 20)
                .spawn_scoped(s, || loader.load(path, &mut Vec::new()))
                .expect("spawning the treefile loader")
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
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
        // Packages may be listed several to an entry, separated by spaces, a quoted one
        // ('foo >= 5.0') kept whole; as in rpm-ostree they form a sorted set.
        if let Some(pkgs) = doc.packages.take() {
            doc.packages = Some(
                split_package_specs(&pkgs)
                    .with_context(|| format!("{}: packages", path.display()))?,
            );
        }

        let mut tf = Treefile {
            path: path.to_path_buf(),
            dir,
            basearch: basearch.to_string(),
            doc,
            sources: loader.sources,
            externals,
        };
        tf.substitute_vars()?;
        tf.check_complete()?;
        Ok(tf)
    }

    fn check_complete(&self) -> Result<()> {
        let p = self.path.display();
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
        substitute_with(&self.substitutions(), s)
    }

    /// `(${name}, value)` for `basearch`, `releasever` and the treefile's `variables`.
    fn substitutions(&self) -> Vec<(String, String)> {
        let mut out = vec![("${basearch}".to_string(), self.basearch.clone())];
        if let Some(rv) = self.releasever() {
            out.push(("${releasever}".into(), rv));
        }
        for (k, v) in self.doc.variables.iter().flatten() {
            let val = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((format!("${{{k}}}"), val));
        }
        out
    }

    /// The ref (variables substituted at load); a treefile without `ref` commits without
    /// moving one (rpm-ostree's rule).
    pub fn treeref(&self) -> Option<String> {
        self.doc.treeref.clone()
    }

    /// Substitutes the variables once, at load, where rpm-ostree does: `ref`, string values
    /// of `metadata` and `add-commit-metadata`, `automatic-version-prefix`,
    /// `mutate-os-release` and `platform-module`. Values may not hold `$`, `{` or `}` (as in
    /// rpm-ostree), so nothing is substituted twice; results bound for os-release are
    /// checked again.
    fn substitute_vars(&mut self) -> Result<()> {
        let p = self.path.display().to_string();
        for (k, v) in self.doc.variables.iter().flatten() {
            if let Value::String(s) = v {
                if s.contains(['$', '{', '}']) {
                    bail!("{p}: variables: {k}: the value {s:?} may not contain '$', '{{' or '}}'");
                }
            }
        }
        let subs = self.substitutions();
        let sub = |s: &mut String| *s = substitute_with(&subs, s);
        let doc = &mut self.doc;
        for s in [
            &mut doc.treeref,
            &mut doc.automatic_version_prefix,
            &mut doc.mutate_os_release,
            &mut doc.platform_module,
        ]
        .into_iter()
        .flatten()
        {
            sub(s);
        }
        for map in [&mut doc.metadata, &mut doc.add_commit_metadata]
            .into_iter()
            .flatten()
        {
            for v in map.values_mut() {
                if let Value::String(s) = v {
                    sub(s);
                }
            }
        }
        for (key, v) in [
            (
                "automatic-version-prefix",
                &self.doc.automatic_version_prefix,
            ),
            ("mutate-os-release", &self.doc.mutate_os_release),
        ] {
            if let Some(v) = v {
                crate::validate::one_line_text(&format!("{key} (substituted)"), v)
                    .with_context(|| p.clone())?;
            }
        }
        if let Some(r) = &self.doc.treeref {
            crate::validate::ostree_ref("ref (substituted)", r).with_context(|| p.clone())?;
        }
        Ok(())
    }

    /// `tmp-is-dir`, whose default is true from edition 2024 on and for containers.
    pub fn tmp_is_dir(&self) -> bool {
        self.doc
            .tmp_is_dir
            .unwrap_or(self.container() || self.doc.edition >= Some(Edition::E2024))
    }

    /// The variables of the `.repo` files: `releasever`, `basearch` and `repovars`.
    pub fn repo_vars(&self) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = self.doc.repovars.clone().unwrap_or_default();
        vars.insert("basearch".into(), self.basearch.clone());
        if let Some(rv) = self.releasever() {
            vars.insert("releasever".into(), rv);
        }
        vars
    }

    /// `repo-packages` as (repo id, package names).
    pub fn repo_packages(&self) -> Vec<(String, Vec<String>)> {
        self.doc
            .repo_packages
            .iter()
            .flatten()
            .map(|rp| (rp.repo.clone(), rp.packages.clone()))
            .collect()
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

    /// rpm-ostree's inline form: `include:` of a conditional-include may be a treefile
    /// object, merged under the file that holds it when the condition holds.
    #[test]
    fn conditional_include_takes_inline_treefiles() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "motd", "hi\n");
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\npackages: [top]\nrecommends: true\nvariables: {prod: false}\n\
             conditional-include:\n\
             \x20 - if: prod == false\n    include:\n      packages: [\"'debug-tools >= 2'\"]\n\
             \x20     recommends: false\n      documentation: false\n\
             \x20     add-files: [[motd, /etc/motd]]\n\
             \x20 - if: prod == true\n    include: {packages: [prod-only]}\n",
        );
        let tf = Treefile::load(&p).unwrap();
        assert_eq!(tf.packages(), ["debug-tools >= 2", "top"]);
        // The file itself wins a scalar over what it includes inline.
        assert!(tf.recommends());
        assert!(!tf.documentation());
        assert_eq!(tf.externals.add_files[0].1.data, b"hi\n");
        // Errors inside the inline treefile keep their line.
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\npackages: [top]\nconditional-include:\n  - if: basearch == \"x86_64\"\n\
             \x20   include:\n      recommends: maybe\n",
        );
        let e = format!("{:#}", Treefile::load_for_arch(&p, "x86_64").unwrap_err());
        assert!(e.contains("t.yaml:6"), "{e}");
        let p = write(
            d.path(),
            "t.yaml",
            "ref: a/b\npackages: [top]\nconditional-include:\n  - if: basearch == \"x86_64\"\n\
             \x20   include:\n      include: other.yaml\n",
        );
        let e = format!("{:#}", Treefile::load_for_arch(&p, "x86_64").unwrap_err());
        assert!(e.contains("cannot include others"), "{e}");
    }

    /// rpm-ostree's examples use `${releasever}` in these values: references pass the check
    /// and are substituted at load (their results checked then), the legacy underscore
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
            Some("40.<date:%Y%m%d>")
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
    fn json_unknown_keys_are_ignored_like_rpm_ostree_and_errors_keep_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.json",
            "{\n \"ref\": \"a/b\",\n \"repos\": [\"r\"],\n \"packages\": [\"x\"],\n \"comment-packages\": \"why\",\n \"nope\": 1\n}\n",
        );
        let tf = Treefile::load(&p).unwrap();
        assert_eq!(tf.packages(), ["x"]);
        let p = write(
            d.path(),
            "t.json",
            "{\n \"ref\": \"a/b\",\n \"nope\": 1,\n \"packages\": 5\n}\n",
        );
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("t.json:4:"), "{err}");
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
        assert_eq!(tf.treeref().as_deref(), Some("top/x86_64"));
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
    fn ref_is_optional_but_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "t.yaml", "repos: [r]\npackages: [p]\n");
        assert_eq!(Treefile::load(&p).unwrap().treeref(), None);
        let p = write(d.path(), "t.yaml", "ref: ''\npackages: [p]\n");
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(
            err.contains("ref (substituted): \"\" is not an ostree ref"),
            "{err}"
        );
    }

    #[test]
    fn packages_for_any_arch_bootstrap_and_quoted_specs() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "t.yaml",
            "packages: [b a, \"'foo >= 5.0' c\", a]\nbootstrap-packages: [boot]\n\
             packages-x86_64: [grub2]\npackages-hal9000: [pod-bay-doors]\n\
             packages-local: {x: y}\n",
        );
        // packages-local is a derivation key, not an arch: refused by name.
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(
            err.contains("t.yaml:5") && err.contains("packages-local"),
            "{err}"
        );
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("packages-local: {x: y}\n", "");
        std::fs::write(&p, text).unwrap();
        let tf = Treefile::load_for_arch(&p, "x86_64").unwrap();
        assert_eq!(
            tf.packages(),
            ["a", "b", "boot", "c", "foo >= 5.0", "grub2"]
        );
        let tf = Treefile::load_for_arch(&p, "hal9000").unwrap();
        assert_eq!(
            tf.packages(),
            ["a", "b", "boot", "c", "foo >= 5.0", "pod-bay-doors"]
        );
        let p = write(d.path(), "t.yaml", "packages: [\"'foo >= 5\"]\n");
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("missing closing quote"), "{err}");
        let p = write(d.path(), "t.yaml", "packages-x86_64: [a, 5, {b: c}]\n");
        let err = format!("{:#}", Treefile::load(&p).unwrap_err());
        assert!(err.contains("t.yaml:1"), "{err}");
    }

    #[test]
    fn every_rpm_ostree_key_loads() {
        // One treefile with every key rpm-ostree's compose accepts (derivation keys aside).
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "f.txt", "x\n");
        write(d.path(), "pp.sh", "#!/bin/sh\n");
        let p = write(
            d.path(),
            "t.yaml",
            r#"ref: os/${basearch}/${stream}
edition: "2024"
metadata: {summary: test, nested: {a: [1, 2]}}
basearch: x86_64
variables: {stream: stable}
repovars: {contentdir: pub}
rojig: {name: x, summary: y, license: MIT}
repos: [r]
lockfile-repos: [locked]
selinux: false
ignore-devices: true
selinux-label-version: 1
sysusers: compose-auto
ima: false
include: []
arch-include: {}
conditional-include: []
bootstrap-packages: [b]
packages: [p]
packages-x86_64: [q]
repo-packages: [{repo: r, packages: [p]}]
ostree-layers: [overlay/a]
ostree-override-layers: [overlay/b]
exclude-packages: [x]
platform-module: platform:f40
container: false
recommends: false
documentation: false
install-langs: [en_US]
initramfs-args: [--no-compress]
no-initramfs: false
readonly-executables: true
boot-location: modules
tmp-is-dir: false
opt-usrlocal: root
units: [a.service]
default-target: multi-user.target
machineid-compat: false
releasever: 40
automatic-version-prefix: "40.<date:%Y%m%d>"
automatic-version-suffix: "-"
mutate-os-release: "40"
etc-group-members: [wheel]
preserve-passwd: true
check-passwd: {type: none}
check-groups: {type: previous}
ignore-removed-users: [games]
ignore-removed-groups: [games]
postprocess-script: pp.sh
postprocess: ["true"]
add-files: [[f.txt, /etc/f.txt]]
remove-files: [etc/x]
remove-from-packages: [[p, /usr/x]]
add-commit-metadata: {k: v}
repo-metadata: detached
advisories-metadata: disabled
rpmdb: sqlite
rpmdb-normalize: true
container-cmd: [/usr/bin/bash]
cliwrap: false
cliwrap-binaries: [rpm]
"#,
        );
        let tf = Treefile::load_for_arch(&p, "x86_64").unwrap();
        assert_eq!(tf.treeref().as_deref(), Some("os/x86_64/stable"));
        assert_eq!(tf.packages(), ["b", "p", "q"]);
        assert_eq!(tf.doc.edition, Some(Edition::E2024));
        assert_eq!(tf.doc.opt_usrlocal, Some(OptUsrLocal::Root));
        // The explicit `tmp-is-dir: false` wins over edition 2024's default.
        assert!(!tf.tmp_is_dir());
        let json: Value = serde_json::from_str(&tf.flattened_json()).unwrap();
        assert_eq!(json["metadata"]["nested"]["a"][1], 2);
        assert_eq!(json["container-cmd"][0], "/usr/bin/bash");
        // Every key of the file is known (the legacy spellings are tested elsewhere).
        let text = std::fs::read_to_string(&p).unwrap();
        let without_tmp = text.replace("tmp-is-dir: false\n", "");
        std::fs::write(&p, without_tmp).unwrap();
        assert!(Treefile::load_for_arch(&p, "x86_64").unwrap().tmp_is_dir());
    }

    /// The public Fedora CoreOS manifest (vendored unchanged in tests/upstream) loads, with
    /// rpm-ostree's results for its includes, conditionals, variables and arch packages.
    #[test]
    fn fedora_coreos_manifest_loads_unchanged() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/upstream/fedora-coreos-config/manifest.yaml");
        for arch in ["x86_64", "aarch64", "s390x"] {
            let tf = Treefile::load_for_arch(&p, arch).unwrap();
            let json: Value = serde_json::from_str(&tf.flattened_json()).unwrap();
            assert_eq!(
                tf.treeref().unwrap(),
                format!("fedora/{arch}/coreos/testing-devel")
            );
            assert_eq!(json["mutate-os-release"], "40");
            assert_eq!(json["automatic-version-prefix"], "40.<date:%Y%m%d>.dev");
            assert_eq!(json["lockfile-repos"][0], "fedora-coreos-pool");
            assert!(tf.packages().iter().any(|p| p == "ignition"));
            // packages-x86_64 brings the UEFI GRUB; s390x has its own bootloader and skips
            // grub2-removals.yaml (`basearch != "s390x"`); prod == false adds
            // disable-zincati.yaml.
            let grub_pc = tf.packages().iter().any(|p| p == "grub2-efi-x64");
            assert_eq!(grub_pc, arch == "x86_64", "{arch}");
            let names: Vec<String> = tf
                .sources
                .iter()
                .map(|s| s.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names.contains(&"grub2-removals.yaml".into()),
                arch != "s390x"
            );
            assert!(names.contains(&"disable-zincati.yaml".into()));
            assert_eq!(tf.externals.check_passwd.as_ref().unwrap().name, "passwd");
        }
    }

    #[test]
    fn keys_refused_with_their_reason() {
        let d = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("basearch: aarch64\n", "cross-composes"),
            ("variables: {basearch: x}\n", "cannot define \"basearch\""),
            (
                "repovars: {releasever: 9}\n",
                "cannot define \"releasever\"",
            ),
            ("repovars: {a: \"x\\ny\"}\n", "repovars a"),
            ("selinux-label-version: 2\n", "0 or 1"),
            ("opt-usrlocal: stateoverlay\n", "Debian 12"),
            ("ima: true\n", "security.ima"),
            ("gpg_key: \"AB\\nCD\"\n", "gpg_key"),
            (
                "override-remove: [a]\nbase-refspec: x\n",
                "override-remove, base-refspec",
            ),
            ("edition: 2023\n", "2014"),
            ("sysusers: sometimes\n", "sysusers"),
            ("rpmdb: bdb\n", "only the sqlite backend"),
            ("rpmdb: ndb\n", "only the sqlite backend"),
        ];
        for (extra, want) in cases {
            let p = write(
                d.path(),
                "t.yaml",
                &format!("ref: r\npackages: [p]\n{extra}"),
            );
            let err = format!("{:#}", Treefile::load_for_arch(&p, "x86_64").unwrap_err());
            assert!(
                err.contains("t.yaml:3") && err.contains(want),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn repo_packages_later_entry_wins_a_package() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.yaml",
            "repo-packages: [{repo: a, packages: [x, y]}]\n",
        );
        let p = write(
            d.path(),
            "t.yaml",
            "include: base.yaml\npackages: [p]\nrepo-packages: [{repo: b, packages: ['y z']}]\n",
        );
        let tf = Treefile::load(&p).unwrap();
        let rp = tf.doc.repo_packages.unwrap();
        assert_eq!(rp.len(), 2);
        assert_eq!(
            (rp[0].repo.as_str(), rp[0].packages.clone()),
            ("a", vec!["x".to_string()])
        );
        assert_eq!(
            (rp[1].repo.as_str(), rp[1].packages.clone()),
            ("b", vec!["y".to_string(), "z".to_string()])
        );
    }
}
