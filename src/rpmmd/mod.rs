//! RPM repositories: `*.repo` files beside the treefile, metadata loading and depsolving
//! through libdnf, and downloads checked against the repodata checksums (and signatures for
//! `gpgcheck=1` repos).

pub mod libdnf;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use libdnf::Solved;

/// One `[section]` of a `.repo` file.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoDef {
    pub id: String,
    pub file: PathBuf,
    pub line: usize,
    pub keys: BTreeMap<String, String>,
}

impl RepoDef {
    pub fn baseurl(&self) -> Option<&str> {
        self.keys
            .get("baseurl")
            .and_then(|v| v.split_whitespace().next())
    }

    /// `enabled=` as dnf reads it: on unless 0, false or no.
    pub fn enabled(&self) -> bool {
        !matches!(
            self.keys
                .get("enabled")
                .map(|s| s.trim().to_ascii_lowercase())
                .as_deref(),
            Some("0" | "false" | "no")
        )
    }

    pub fn gpgcheck(&self) -> bool {
        matches!(
            self.keys.get("gpgcheck").map(|s| s.trim()),
            Some("1" | "true" | "yes" | "True")
        )
    }

    pub fn gpgkeys(&self) -> Vec<String> {
        self.keys
            .get("gpgkey")
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// Parses every `*.repo` file in `dir` (sorted, for stable results).
pub fn load_repo_files(dir: &Path) -> Result<Vec<RepoDef>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "repo"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        out.extend(parse_repo_file(&f, &text)?);
    }
    Ok(out)
}

/// A minimal INI reader for yum/dnf `.repo` syntax (sections, `key=value`, `#`/`;` comments,
/// continuation lines starting with whitespace).
pub fn parse_repo_file(path: &Path, text: &str) -> Result<Vec<RepoDef>> {
    let mut out: Vec<RepoDef> = Vec::new();
    let mut last_key: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            let id = trimmed
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| anyhow!("{}:{}: malformed section header", path.display(), i + 1))?;
            let id = id.trim();
            // The id is written back into the .repo file libdnf reads.
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                bail!(
                    "{}:{}: repo id [{id}] must be letters, digits, '-', '_', '.' or ':'",
                    path.display(),
                    i + 1
                );
            }
            out.push(RepoDef {
                id: id.to_string(),
                file: path.to_path_buf(),
                line: i + 1,
                keys: BTreeMap::new(),
            });
            last_key = None;
            continue;
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            bail!(
                "{}:{}: control character in the line; a .repo file is plain text",
                path.display(),
                i + 1
            );
        }
        let Some(cur) = out.last_mut() else {
            bail!("{}:{}: key outside of a [section]", path.display(), i + 1);
        };
        if line.starts_with(char::is_whitespace) {
            if let Some(k) = &last_key {
                let v = cur.keys.get_mut(k).expect("key exists");
                v.push(' ');
                v.push_str(trimmed);
                continue;
            }
        }
        let (k, v) = trimmed
            .split_once('=')
            .ok_or_else(|| anyhow!("{}:{}: expected key=value", path.display(), i + 1))?;
        let k = k.trim().to_string();
        cur.keys.insert(k.clone(), v.trim().to_string());
        last_key = Some(k);
    }
    Ok(out)
}

/// Picks the repos a treefile names, failing with the names that exist when one is missing.
/// The repos a treefile composes from: those its `repos` names (enabled or not), or, without
/// `repos`, every repo enabled in the `.repo` files beside it (rpm-ostree's rule).
pub fn select_repos(
    all: &[RepoDef],
    wanted: Option<&[String]>,
    treefile: &Path,
) -> Result<Vec<RepoDef>> {
    let Some(wanted) = wanted else {
        let enabled: Vec<String> = all
            .iter()
            .filter(|r| r.enabled())
            .map(|r| r.id.clone())
            .collect();
        if enabled.is_empty() {
            bail!(
                "{}: the treefile has no `repos` and no *.repo file beside it enables a repo",
                treefile.display()
            );
        }
        return select_repos(all, Some(&enabled), treefile);
    };
    if wanted.is_empty() {
        bail!(
            "{}: `repos` is empty: name the [sections] of *.repo files beside it, or leave \
             `repos` out to use every enabled one",
            treefile.display()
        );
    }
    let mut out = Vec::new();
    for w in wanted {
        match all.iter().find(|r| &r.id == w) {
            Some(r) => {
                if ["baseurl", "mirrorlist", "metalink"]
                    .iter()
                    .all(|k| r.keys.get(*k).is_none_or(|v| v.trim().is_empty()))
                {
                    bail!(
                        "{}:{}: repo [{}] has no baseurl, mirrorlist or metalink",
                        r.file.display(),
                        r.line,
                        r.id
                    );
                }
                out.push(r.clone())
            }
            None => {
                let known: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
                bail!(
                    "{}: repo {w:?} is not defined in any *.repo file beside the treefile \
                     (found: {})",
                    treefile.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
    }
    Ok(out)
}

/// Replaces `$name` and `${name}` of `vars` in a repo file value (dnf's variables:
/// `releasever`, `basearch` and the treefile's `repovars`); a reference to any other
/// variable is an error rather than a URL with a `$` in it.
pub fn substitute_repo_vars(value: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let re = regex::Regex::new(r"\$(\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))").expect("valid regex");
    let mut missing = None;
    let out = re.replace_all(value, |c: &regex::Captures| {
        let name = c.get(2).or(c.get(3)).expect("one group matches").as_str();
        match vars.get(name) {
            Some(v) => v.clone(),
            None => {
                missing.get_or_insert_with(|| name.to_string());
                c[0].to_string()
            }
        }
    });
    if let Some(name) = missing {
        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
        bail!(
            "${name} is not defined (defined: {}; add it to the treefile's repovars)",
            known.join(", ")
        );
    }
    Ok(out.into_owned())
}

/// Settles each repo's URL the way dnf would: variables substituted in every value, and a
/// `mirrorlist=` or `metalink=` turned into the first mirror whose `repomd.xml` can be read
/// (for a metalink: whose `repomd.xml` has a SHA-256 the metalink lists). The result is the
/// repo's `baseurl`, used for the metadata and the packages alike.
pub fn resolve_urls(repos: &mut [RepoDef], vars: &BTreeMap<String, String>) -> Result<()> {
    for r in repos.iter_mut() {
        let at = format!("{}:{}: repo [{}]", r.file.display(), r.line, r.id);
        for (k, v) in r.keys.iter_mut() {
            if ["baseurl", "mirrorlist", "metalink", "gpgkey", "name"].contains(&k.as_str()) {
                *v = substitute_repo_vars(v, vars).with_context(|| format!("{at}: {k}"))?;
            }
        }
        if r.baseurl().is_some() {
            continue;
        }
        let (key, candidates, hashes) = if let Some(ml) = r.keys.get("mirrorlist") {
            let text = read_url(ml.trim()).with_context(|| format!("{at}: mirrorlist"))?;
            let urls = String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>();
            ("mirrorlist", urls, Vec::new())
        } else {
            let ml = r.keys.get("metalink").cloned().unwrap_or_default();
            let text = read_url(ml.trim()).with_context(|| format!("{at}: metalink"))?;
            let (urls, hashes) = parse_metalink(&String::from_utf8_lossy(&text));
            ("metalink", urls, hashes)
        };
        let mut tried = Vec::new();
        let mut chosen = None;
        for url in candidates.iter().take(50) {
            let base = url.trim_end_matches('/').to_string();
            if !(base.starts_with("file://")
                || base.starts_with("http://")
                || base.starts_with("https://"))
                || base.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                tried.push(format!("{base} (not a file://, http:// or https:// URL)"));
                continue;
            }
            match read_url(&format!("{base}/repodata/repomd.xml")) {
                Ok(data) => {
                    let sum = hex::encode(Sha256::digest(&data));
                    if hashes.is_empty() || hashes.contains(&sum) {
                        chosen = Some(base);
                        break;
                    }
                    tried.push(format!(
                        "{base} (its repomd.xml has sha256 {sum}, which the metalink does not list)"
                    ));
                }
                Err(e) => tried.push(format!("{base} ({e:#})")),
            }
        }
        let Some(base) = chosen else {
            bail!(
                "{at}: no usable mirror in the {key}: {}",
                if tried.is_empty() {
                    "it lists none".to_string()
                } else {
                    tried.join("; ")
                }
            );
        };
        r.keys.insert("baseurl".into(), base);
    }
    Ok(())
}

/// The repo base URLs (`.../repodata/repomd.xml` stripped) and the SHA-256 sums of
/// `repomd.xml` (the current one and its alternates) that a metalink lists.
fn parse_metalink(xml: &str) -> (Vec<String>, Vec<String>) {
    let url_re = regex::Regex::new(r"<url[^>]*>\s*([^<\s]+)\s*</url>").expect("valid regex");
    let hash_re = regex::Regex::new(r#"<hash\s+type="sha256"\s*>\s*([0-9a-fA-F]{64})\s*</hash>"#)
        .expect("valid regex");
    let urls = url_re
        .captures_iter(xml)
        .map(|c| {
            let u = c[1].replace("&amp;", "&");
            u.strip_suffix("/repodata/repomd.xml")
                .unwrap_or(&u)
                .to_string()
        })
        .collect();
    let hashes = hash_re
        .captures_iter(xml)
        .map(|c| c[1].to_ascii_lowercase())
        .collect();
    (urls, hashes)
}

/// Writes the selected repos as one `.repo` file for libdnf, enabled, with signature checks
/// left to us (we verify after download with the repo's own keys).
pub fn write_libdnf_reposdir(repos: &[RepoDef], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut text = String::new();
    for r in repos {
        text.push_str(&format!("[{}]\n", r.id));
        text.push_str(&format!("name={}\n", r.id));
        text.push_str(&format!("baseurl={}\n", r.baseurl().unwrap_or_default()));
        text.push_str("enabled=1\ngpgcheck=0\nrepo_gpgcheck=0\nskip_if_unavailable=0\n\n");
    }
    std::fs::write(dir.join("hostforge.repo"), text)?;
    Ok(())
}

/// Where a solved package is downloaded from.
/// The repodata's `location href` must stay inside the repo: a relative path without `..`.
pub fn package_url(repo: &RepoDef, pkg: &Solved) -> Result<String> {
    let loc = &pkg.location;
    if loc.is_empty()
        || loc.starts_with('/')
        || loc.contains("://")
        || loc.split('/').any(|c| c == "..")
        || loc.chars().any(char::is_control)
    {
        bail!(
            "{}: repo [{}] gives the location {loc:?}, which points outside the repo; \
             its repodata is broken or hostile",
            nevra(pkg),
            repo.id
        );
    }
    Ok(format!(
        "{}/{}",
        repo.baseurl().unwrap_or_default().trim_end_matches('/'),
        loc
    ))
}

fn read_url(url: &str) -> Result<Vec<u8>> {
    if let Some(path) = url.strip_prefix("file://") {
        std::fs::read(path).with_context(|| format!("reading {url}"))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let resp = ureq::get(url)
            .timeout(std::time::Duration::from_secs(300))
            .call()
            .with_context(|| format!("downloading {url}"))?;
        let mut buf = Vec::new();
        resp.into_reader()
            .read_to_end(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        Ok(buf)
    } else {
        bail!("unsupported URL scheme in {url}: use file://, http:// or https://")
    }
}

/// Where a package checked against the repodata is read from: the file in a local
/// (`file://`) repo itself, or a download (`temporary`: removed after the import).
pub struct Fetched {
    pub path: std::path::PathBuf,
    pub size: u64,
    pub temporary: bool,
}

/// The package's file, its checksum checked against the repodata: in place for a local repo
/// (never copied), downloaded into `dest` otherwise.
pub fn fetch(repo: &RepoDef, pkg: &Solved, dest: &Path) -> Result<Fetched> {
    let url = package_url(repo, pkg)?;
    let Some(path) = url.strip_prefix("file://") else {
        let size = download(repo, pkg, dest)?;
        return Ok(Fetched {
            path: dest.to_path_buf(),
            size,
            temporary: true,
        });
    };
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {url}"))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {url}"))?;
    check_checksum(repo, pkg, &url, &hex::encode(hasher.finalize()))?;
    Ok(Fetched {
        path: path.into(),
        size,
        temporary: false,
    })
}

fn check_checksum(repo: &RepoDef, pkg: &Solved, url: &str, got: &str) -> Result<()> {
    if pkg.checksum_type != "sha256" {
        bail!(
            "{}: repo [{}] uses {} checksums; only sha256 repodata is supported",
            nevra(pkg),
            repo.id,
            pkg.checksum_type
        );
    }
    if got != pkg.checksum {
        bail!(
            "{}: checksum mismatch for {url}: repodata says sha256:{} but the file has \
             sha256:{got}; the repo metadata is stale or the file is corrupt",
            nevra(pkg),
            pkg.checksum
        );
    }
    Ok(())
}

/// Downloads one package into `dest`, checking its checksum against the repodata.
fn download(repo: &RepoDef, pkg: &Solved, dest: &Path) -> Result<u64> {
    let url = package_url(repo, pkg)?;
    let data = read_url(&url)?;
    check_checksum(repo, pkg, &url, &hex::encode(Sha256::digest(&data)))?;
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest)?;
    Ok(data.len() as u64)
}

/// Reads a repo's `gpgkey=` keys into one verifier.
pub fn load_verifier(repo: &RepoDef) -> Result<rpm::signature::pgp::Verifier> {
    let keys = repo.gpgkeys();
    if keys.is_empty() {
        bail!(
            "{}:{}: repo [{}] has gpgcheck=1 but no gpgkey",
            repo.file.display(),
            repo.line,
            repo.id
        );
    }
    let mut verifier: Option<rpm::signature::pgp::Verifier> = None;
    for k in keys {
        let data = read_url(&k).with_context(|| format!("repo [{}] gpgkey", repo.id))?;
        match &mut verifier {
            None => {
                verifier = Some(
                    rpm::signature::pgp::Verifier::from_asc_bytes(&data)
                        .with_context(|| format!("repo [{}]: reading gpgkey {k}", repo.id))?,
                )
            }
            Some(v) => v
                .load_from_asc_bytes(&data)
                .with_context(|| format!("repo [{}]: reading gpgkey {k}", repo.id))?,
        }
    }
    Ok(verifier.expect("at least one key"))
}

/// `name-[epoch:]version-release.arch`, as rpm prints it.
pub fn nevra(p: &Solved) -> String {
    if p.epoch > 0 {
        format!(
            "{}-{}:{}-{}.{}",
            p.name, p.epoch, p.version, p.release, p.arch
        )
    } else {
        format!("{}-{}-{}.{}", p.name, p.version, p.release, p.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `location href` of `../../x` read a file outside a file:// repo.
    #[test]
    fn package_locations_stay_inside_the_repo() {
        let repo =
            &parse_repo_file(Path::new("x.repo"), "[base]\nbaseurl=file:///srv/r/\n").unwrap()[0];
        let pkg = |location: &str| Solved {
            name: "p".into(),
            epoch: 0,
            version: "1".into(),
            release: "1".into(),
            arch: "x86_64".into(),
            repo_id: "base".into(),
            location: location.into(),
            checksum_type: "sha256".into(),
            checksum: String::new(),
            download_size: 0,
        };
        assert_eq!(
            package_url(repo, &pkg("Packages/p.rpm")).unwrap(),
            "file:///srv/r/Packages/p.rpm"
        );
        for bad in [
            "../../etc/shadow",
            "/etc/shadow",
            "a/../../x.rpm",
            "http://evil/x.rpm",
            "",
        ] {
            let e = format!("{:#}", package_url(repo, &pkg(bad)).unwrap_err());
            assert!(
                e.contains("outside the repo") && e.contains("[base]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn repo_ids_and_values_cannot_add_lines_to_libdnfs_repo_file() {
        for (text, line) in [
            ("[base]\nbaseurl=file:///a\r[evil]\n", 2),
            ("[ba se]\nbaseurl=file:///a\n", 1),
            ("[a]b]\nbaseurl=file:///a\n", 1),
            ("[]\n", 1),
        ] {
            let e = parse_repo_file(Path::new("x.repo"), text).unwrap_err();
            assert!(
                format!("{e:#}").contains(&format!("x.repo:{line}:")),
                "{text:?}: {e:#}"
            );
        }
    }

    #[test]
    fn repo_variables_are_substituted_and_unknown_ones_refused() {
        let vars = BTreeMap::from([
            ("releasever".to_string(), "40".to_string()),
            ("basearch".to_string(), "x86_64".to_string()),
            ("contentdir".to_string(), "pub".to_string()),
        ]);
        assert_eq!(
            substitute_repo_vars("https://h/$contentdir/${releasever}/$basearch/os/", &vars)
                .unwrap(),
            "https://h/pub/40/x86_64/os/"
        );
        let e = format!(
            "{:#}",
            substitute_repo_vars("https://h/$mirror/", &vars).unwrap_err()
        );
        assert!(
            e.contains("$mirror is not defined") && e.contains("repovars"),
            "{e}"
        );
    }

    #[test]
    fn metalinks_give_mirrors_and_repomd_sums() {
        let xml = r#"<?xml version="1.0"?><metalink version="3.0" xmlns="http://www.metalinker.org/">
 <files><file name="repomd.xml"><verification>
   <hash type="md5">00</hash>
   <hash type="sha256">AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA</hash>
  </verification>
  <mm0:alternates><mm0:alternate><verification>
   <hash type="sha256">bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb</hash>
  </verification></mm0:alternate></mm0:alternates>
  <resources>
   <url protocol="https" type="https" preference="100">https://m1/f/40/x86_64/os/repodata/repomd.xml</url>
   <url protocol="http" type="http" preference="99">http://m2/f/?a=1&amp;b=2/repodata/repomd.xml</url>
  </resources></file></files></metalink>"#;
        let (urls, hashes) = parse_metalink(xml);
        assert_eq!(urls, ["https://m1/f/40/x86_64/os", "http://m2/f/?a=1&b=2"]);
        assert_eq!(hashes, ["a".repeat(64), "b".repeat(64)]);
    }

    #[test]
    fn parses_repo_sections() {
        let text = "# c\n[base]\nname=Base\nbaseurl=file:///srv/a\n  file:///srv/b\ngpgcheck=1\n\
                    gpgkey=file:///k.asc\n\n[other]\nbaseurl=http://x/\n";
        let repos = parse_repo_file(Path::new("f.repo"), text).unwrap();
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[0].baseurl(), Some("file:///srv/a"));
        assert!(repos[0].gpgcheck());
        assert_eq!(repos[0].gpgkeys(), ["file:///k.asc"]);
        assert_eq!(repos[1].line, 9);
    }

    #[test]
    fn missing_repo_lists_known_ones() {
        let repos = parse_repo_file(Path::new("f.repo"), "[a]\nbaseurl=file:///x\n").unwrap();
        let err = select_repos(&repos, Some(&["b".into()]), Path::new("t.yaml")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("\"b\"") && msg.contains("found: a"), "{msg}");
    }

    /// Without `repos`, every enabled repo is used (rpm-ostree's rule); a named repo is used
    /// even when its file disables it.
    #[test]
    fn without_repos_every_enabled_repo_is_used() {
        let repos = parse_repo_file(
            Path::new("f.repo"),
            "[a]\nbaseurl=file:///a\n[b]\nbaseurl=file:///b\nenabled=0\n[c]\nbaseurl=file:///c\nenabled=1\n",
        )
        .unwrap();
        let ids = |v: Vec<RepoDef>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let t = Path::new("t.yaml");
        assert_eq!(ids(select_repos(&repos, None, t).unwrap()), ["a", "c"]);
        assert_eq!(
            ids(select_repos(&repos, Some(&["b".into()]), t).unwrap()),
            ["b"]
        );
        let off =
            parse_repo_file(Path::new("f.repo"), "[a]\nbaseurl=file:///a\nenabled=0\n").unwrap();
        let e = format!("{:#}", select_repos(&off, None, t).unwrap_err());
        assert!(e.contains("no `repos`"), "{e}");
        assert!(select_repos(&repos, Some(&[]), t).is_err());
    }
}
