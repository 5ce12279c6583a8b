//! Parsers never panic: every parser of user input is fed mutations of a corpus kept in
//! `tests/corpus/` (seeded, so a failure repeats), and must return Ok or an error.
//! `HOSTFORGE_FUZZ_ROUNDS` raises the number of mutations per corpus file (default 1000).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Fragments that mean something to YAML, JSON, INI files, shells and paths.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"&a ",
    b"*a",
    b"!!str ",
    b"!!binary ",
    b"%",
    b"${basearch}",
    b"${",
    b"..",
    b"/",
    b"\t",
    b"\0",
    b"=",
    b"[x]\n",
    b"99999999999999999999999",
    b"-1",
    b"0x",
    b"~",
    b"null",
    b"include: x.yaml\n",
    b"<<: *a\n",
    b"\xff\xfe",
    b"\xe2\x80\xae",
    b"#",
    b"?",
    b"|",
    b">",
    b",",
];

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `input`: byte changes, deletions, duplications, insertions
/// of tokens, truncation.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if at < v.len() => v[at] = rng.below(256) as u8,
            1 if at < v.len() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            2 if at < v.len() => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            3 => v.truncate(at),
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Feeds mutations of each corpus file of `kind` to `parse` (the file written under its
/// own name in a scratch dir, so includes and relative paths resolve there). A panic fails
/// the test and names the seed and the input.
fn fuzz(kind: &str, parse: impl Fn(&Path)) {
    let rounds: usize = std::env::var("HOSTFORGE_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    for (i, file) in corpus(kind).iter().enumerate() {
        let original = std::fs::read(file).unwrap();
        let target = dir.path().join(file.file_name().unwrap());
        // The unmutated corpus must not panic either.
        std::fs::write(&target, &original).unwrap();
        parse(&target);
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
        let mut rng = Rng(seed);
        for round in 0..rounds {
            let input = mutate(&original, &mut rng);
            std::fs::write(&target, &input).unwrap();
            if catch_unwind(AssertUnwindSafe(|| parse(&target))).is_err() {
                panic!(
                    "{kind} parser panicked on mutation {round} of {} (seed {seed:#x}):\n{}",
                    file.display(),
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}

#[test]
fn treefile_parser_never_panics() {
    fuzz("treefile", |p| {
        let _ = crate::treefile::Treefile::load(p);
    });
}

#[test]
fn lockfile_parser_never_panics() {
    fuzz("lockfile", |p| {
        let _ = crate::lockfile::Lock::read(&[p.to_path_buf()], false);
    });
}

#[test]
fn layout_parser_never_panics() {
    fuzz("layout", |p| {
        let _ = crate::image::layout::Layout::load(p);
    });
}

#[test]
fn provisioning_spec_parser_never_panics() {
    fuzz("spec", |p| {
        let _ = crate::provision::Spec::load(p);
    });
}

#[test]
fn repo_file_parser_never_panics() {
    fuzz("repo", |p| {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        let _ = crate::rpmmd::parse_repo_file(p, &text);
    });
}

#[test]
fn rpm_header_and_payload_readers_never_panic() {
    fuzz("rpm", crate::pkgcache::read_all_for_tests);
}
