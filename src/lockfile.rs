//! rpm-ostree's lockfiles: `{"packages": {NAME: {"evra": "EVR.ARCH" | "evr": "EVR",
//! "digest": "sha256:HEX"}}, "metadata": {...}}`, JSON or YAML. `compose tree --ex-lockfile`
//! reads them (several: a later file's entry for a name wins), `--ex-lockfile-strict` admits
//! only locked packages, and `--ex-write-lockfile-to` writes the solution as one.

use crate::rpmmd::Solved;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file as rpm-ostree writes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockfileDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<BTreeMap<String, LockedEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<LockfileMetadata>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockfileMetadata {
    /// When the lockfile was written (RFC 3339, the day only, as rpm-ostree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpmmd_repos: Option<BTreeMap<String, RepoGenerated>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepoGenerated {
    pub generated: String,
}

/// One package entry: `evra` (`EVR.ARCH`) or `evr`, an optional repodata `digest`, and
/// free-form `metadata` (rpm-ostree records the source package there).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockedEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evra: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, serde_json::Value>>,
}

/// What a locked name admits: that EVR, on that arch when given, with that repodata digest
/// (`TYPE:HEX`) when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub evr: String,
    pub arch: Option<String>,
    pub digest: Option<String>,
    /// The lockfile that said so, for messages.
    pub from: PathBuf,
}

impl Locked {
    /// Whether a package of the repos (`evr` as libdnf writes it, epoch only when not 0) is
    /// the locked one.
    pub fn admits(&self, evr: &str, arch: &str, digest: &str) -> bool {
        self.evr == evr
            && self.arch.as_deref().is_none_or(|a| a == arch)
            && self.digest.as_deref().is_none_or(|d| d == digest)
    }

    pub fn spec(&self, name: &str) -> String {
        match &self.arch {
            Some(a) => format!("{name}-{}.{a}", self.evr),
            None => format!("{name}-{}", self.evr),
        }
    }
}

/// The lockfiles of one compose, merged, and how strictly they apply.
#[derive(Debug, Clone, Default)]
pub struct Lock {
    pub packages: BTreeMap<String, Locked>,
    /// `--ex-lockfile-strict`: nothing but locked packages can be installed.
    pub strict: bool,
}

fn parse(path: &Path) -> Result<LockfileDoc> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading lockfile {}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(&text).map_err(|e| crate::treefile::json_error(path, &e))
    } else {
        crate::treefile::yaml_from_str(path, &text)
    }
}

impl Lock {
    /// Reads `files` in order; a later file's entry for a name replaces an earlier one's.
    pub fn read(files: &[PathBuf], strict: bool) -> Result<Lock> {
        let mut lock = Lock {
            strict,
            ..Default::default()
        };
        for f in files {
            let doc = parse(f)?;
            let Some(pkgs) = doc.packages else {
                bail!("{}: lockfile has no `packages` key", f.display());
            };
            for (name, e) in pkgs {
                let locked = match (&e.evra, &e.evr) {
                    (Some(evra), None) => {
                        let (evr, arch) = evra.rsplit_once('.').ok_or_else(|| {
                            anyhow!(
                                "{}: package {name}: evra {evra:?} is not EVR.ARCH",
                                f.display()
                            )
                        })?;
                        Locked {
                            evr: evr.to_string(),
                            arch: Some(arch.to_string()),
                            digest: e.digest.clone(),
                            from: f.clone(),
                        }
                    }
                    (None, Some(evr)) => Locked {
                        evr: evr.clone(),
                        arch: None,
                        digest: e.digest.clone(),
                        from: f.clone(),
                    },
                    _ => bail!(
                        "{}: package {name}: give exactly one of `evra` and `evr`",
                        f.display()
                    ),
                };
                if !locked.evr.contains('-') || locked.evr.contains(char::is_whitespace) {
                    bail!(
                        "{}: package {name}: {:?} is not VERSION-RELEASE (with an optional EPOCH:)",
                        f.display(),
                        locked.evr
                    );
                }
                if let Some(d) = &locked.digest {
                    let ok = d.split_once(':').is_some_and(|(t, h)| {
                        !t.is_empty() && !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())
                    });
                    if !ok {
                        bail!(
                            "{}: package {name}: digest {d:?} is not TYPE:HEX (e.g. sha256:...)",
                            f.display()
                        );
                    }
                }
                lock.packages.insert(name, locked);
            }
        }
        Ok(lock)
    }
}

/// `EPOCH:VERSION-RELEASE` as libdnf and rpm-ostree write it (no epoch when it is 0).
pub fn evr(p: &Solved) -> String {
    if p.epoch == 0 {
        format!("{}-{}", p.version, p.release)
    } else {
        format!("{}:{}-{}", p.epoch, p.version, p.release)
    }
}

/// The repodata digest of a package as lockfiles write it: `TYPE:HEX`.
pub fn digest(p: &Solved) -> String {
    format!("{}:{}", p.checksum_type, p.checksum)
}

/// The day of `epoch` at midnight UTC in RFC 3339 (rpm-ostree's coarse `generated`).
fn day_rfc3339(epoch: u64) -> String {
    crate::utctime::rfc3339(epoch - epoch % 86400)
}

/// Writes the solution as an rpm-ostree lockfile (replacing `path` whole).
pub fn write(
    path: &Path,
    solved: &[Solved],
    repo_generated: &BTreeMap<String, u64>,
    now: u64,
) -> Result<()> {
    let packages = solved
        .iter()
        .map(|p| {
            let entry = LockedEntry {
                evra: Some(format!("{}.{}", evr(p), p.arch)),
                evr: None,
                digest: Some(digest(p)),
                metadata: None,
            };
            (p.name.clone(), entry)
        })
        .collect();
    let repos = repo_generated
        .iter()
        .map(|(id, t)| {
            let generated = crate::utctime::rfc3339(*t);
            (id.clone(), RepoGenerated { generated })
        })
        .collect();
    let doc = LockfileDoc {
        packages: Some(packages),
        metadata: Some(LockfileMetadata {
            generated: Some(day_rfc3339(now)),
            rpmmd_repos: Some(repos),
        }),
    };
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    crate::fsutil::write_replacing(path, text.as_bytes())
        .with_context(|| format!("writing lockfile {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rpm_ostree_lockfiles_later_wins() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.json");
        std::fs::write(
            &a,
            r#"{"packages": {"foo": {"evra": "1.0-1.noarch", "digest": "sha256:deadcafe"},
                "bar": {"evra": "1:0.8-15.x86_64", "metadata": {"sourcerpm": "bar"}},
                "baz": {"evr": "2.1.1-1"}},
               "metadata": {"generated": "2024-10-24T00:00:00Z",
                "rpmmd_repos": {"fedora": {"generated": "2024-04-14T18:51:44Z"}}}}"#,
        )
        .unwrap();
        let b = d.path().join("b.yaml");
        std::fs::write(&b, "packages:\n  foo:\n    evr: 2.0-1\n").unwrap();
        let lock = Lock::read(&[a.clone(), b.clone()], false).unwrap();
        assert_eq!(lock.packages["foo"].evr, "2.0-1");
        assert_eq!(lock.packages["foo"].from, b);
        assert_eq!(lock.packages["bar"].evr, "1:0.8-15");
        assert_eq!(lock.packages["bar"].arch.as_deref(), Some("x86_64"));
        assert!(lock.packages["bar"].admits("1:0.8-15", "x86_64", "sha256:00"));
        assert!(!lock.packages["bar"].admits("1:0.8-15", "aarch64", "sha256:00"));
        let foo_a = Lock::read(&[a], false).unwrap().packages["foo"].clone();
        assert!(foo_a.admits("1.0-1", "noarch", "sha256:deadcafe"));
        assert!(!foo_a.admits("1.0-1", "noarch", "sha256:cafedead"));
    }

    #[test]
    fn the_vendored_fedora_coreos_lockfiles_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/fedora-coreos-config");
        let files = [
            dir.join("manifest-lock.x86_64.json"),
            dir.join("manifest-lock.overrides.yaml"),
        ];
        let lock = Lock::read(&files, false).unwrap();
        assert!(lock.packages.len() > 400, "{}", lock.packages.len());
        assert_eq!(lock.packages["kernel"].evr, "6.11.4-201.fc40");
        // The overrides file comes later: its `evr` for ignition wins, without an arch.
        assert_eq!(lock.packages["ignition"].evr, "2.20.0-1.fc40");
        assert_eq!(lock.packages["ignition"].arch, None);
    }

    #[test]
    fn bad_lockfiles_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (r#"{"metadata": {}}"#, "no `packages`"),
            (
                r#"{"packages": {"a": {"evra": "1.0-1"}}}"#,
                "not VERSION-RELEASE",
            ),
            (r#"{"packages": {"a": {"evra": "noarch"}}}"#, "not EVR.ARCH"),
            (
                r#"{"packages": {"a": {"evr": "1-1", "evra": "1-1.x"}}}"#,
                "exactly one",
            ),
            (
                r#"{"packages": {"a": {"evr": "1-1", "digest": "deadbeef"}}}"#,
                "TYPE:HEX",
            ),
            (
                "{\"packages\": {\"a\": {\"evr\": \"1-1\",\n \"sha\": 1}}}",
                "l.json:2",
            ),
        ];
        for (text, want) in cases {
            let p = d.path().join("l.json");
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", Lock::read(&[p], false).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.json");
        let s = Solved {
            name: "app".into(),
            epoch: 2,
            version: "1.0".into(),
            release: "1".into(),
            arch: "x86_64".into(),
            repo_id: "base".into(),
            location: "Packages/app.rpm".into(),
            checksum_type: "sha256".into(),
            checksum: "ab".repeat(32),
            download_size: 1,
        };
        let repos = BTreeMap::from([("base".to_string(), 1_700_000_123u64)]);
        write(&p, &[s], &repos, 1_700_000_000).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(doc["packages"]["app"]["evra"], "2:1.0-1.x86_64");
        assert_eq!(doc["metadata"]["generated"], "2023-11-14T00:00:00Z");
        assert_eq!(
            doc["metadata"]["rpmmd_repos"]["base"]["generated"],
            "2023-11-14T22:15:23Z"
        );
        let lock = Lock::read(&[p], true).unwrap();
        assert!(lock.packages["app"].admits(
            "2:1.0-1",
            "x86_64",
            &format!("sha256:{}", "ab".repeat(32))
        ));
    }
}
