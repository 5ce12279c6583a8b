//! Fixture RPM repositories, built from the recipes below with the `rpm` crate and indexed
//! with createrepo_c. Deterministic (fixed build time and host) and cached: the output
//! directory is named after a hash of this file, so editing a recipe rebuilds.

use anyhow::{bail, Context, Result};
use rpm::{Dependency, FileMode, FileOptions, PackageBuilder, Scriptlet};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const RECIPES_SOURCE: &str = include_str!("fixtures.rs");
const BUILD_TIME: u32 = 1_700_000_000;

/// Where fixtures of this recipe version live.
pub fn out_dir(top: &Path) -> PathBuf {
    let h = hex::encode(Sha256::digest(RECIPES_SOURCE.as_bytes()));
    top.join("fixtures/out").join(&h[..16])
}

fn config() -> rpm::BuildConfig {
    rpm::BuildConfig::v4()
        .compression(rpm::CompressionType::Gzip)
        .source_date(BUILD_TIME)
}

fn pkg(name: &str, version: &str, arch: &str) -> PackageBuilder {
    let mut b = PackageBuilder::new(
        name,
        version,
        "MIT",
        arch,
        &format!("hostforge fixture {name}"),
    );
    b.using_config(config())
        .release("1")
        .build_host("fixtures.hostforge.invalid")
        .description(format!("{name}: a synthetic package for hostforge's tests"));
    b
}

fn f(path: &str) -> rpm::FileOptionsBuilder {
    FileOptions::new(path)
}

fn sh(body: &str) -> Scriptlet {
    Scriptlet::new(body).prog(vec!["/bin/sh"])
}

/// Adds `line` to an /etc file the way useradd does: write a new file, rename over.
fn append_etc(file: &str, line: &str) -> String {
    format!(
        "grep -q '^{name}:' /etc/{file} || {{ cp /etc/{file} /etc/{file}.new && echo '{line}' >> /etc/{file}.new && mv /etc/{file}.new /etc/{file}; }}\n",
        name = line.split(':').next().unwrap()
    )
}

type Built = (String, rpm::Package);

fn base_packages(busybox: &[u8]) -> Result<Vec<Built>> {
    let mut out = Vec::new();

    let mut b = pkg("filesystem", "1.0", "noarch");
    for d in [
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/usr/share",
        "/etc",
        "/var",
        "/var/lib",
        "/var/log",
        "/usr/lib/systemd/system",
    ] {
        b.with_dir_entry(FileOptions::dir(d).permissions(0o755))?;
    }
    b.with_dir_entry(FileOptions::dir("/var/tmp").permissions(0o1777))?;
    b.with_symlink(FileOptions::symlink("/bin", "usr/bin"))?;
    b.with_symlink(FileOptions::symlink("/sbin", "usr/sbin"))?;
    b.with_symlink(FileOptions::symlink("/lib", "usr/lib"))?;
    b.with_symlink(FileOptions::symlink("/lib64", "usr/lib64"))?;
    out.push(("filesystem".into(), b.build()?));

    // A real shell (static busybox) so scriptlets run in the composed root.
    let mut b = pkg("busybox", "1.35.0", "x86_64");
    b.with_file_contents(
        busybox.to_vec(),
        f("/usr/bin/busybox").mode(FileMode::regular(0o755)),
    )?;
    for tool in [
        "sh", "cat", "cp", "mv", "grep", "echo", "mkdir", "ls", "sort", "rm", "sed", "touch",
        "chmod", "id", "tr", "wc", "head",
    ] {
        b.with_symlink(FileOptions::symlink(format!("/usr/bin/{tool}"), "busybox"))?;
    }
    b.provides(Dependency::any("/bin/sh"));
    b.requires(Dependency::any("filesystem"));
    out.push(("busybox".into(), b.build()?));

    let mut b = pkg("setup", "2.14", "noarch");
    b.with_file_contents(
        "root:x:0:0:root:/root:/bin/sh\n",
        f("/etc/passwd")
            .config()
            .noreplace()
            .mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents(
        "root:x:0:\nwheel:x:10:\n",
        f("/etc/group")
            .config()
            .noreplace()
            .mode(FileMode::regular(0o644)),
    )?;
    b.with_file_contents("NAME=\"Forge Fixture\"\nID=forgefixture\nVERSION=\"1 (Anvil)\"\nVERSION_ID=1\nPRETTY_NAME=\"Forge Fixture 1 (Anvil)\"\n", f("/usr/lib/os-release").mode(FileMode::regular(0o644)))?;
    b.with_symlink(FileOptions::symlink(
        "/etc/os-release",
        "../usr/lib/os-release",
    ))?;
    b.with_file_contents("", f("/etc/machine-id").mode(FileMode::regular(0o444)))?;
    b.requires(Dependency::any("filesystem"));
    out.push(("setup".into(), b.build()?));

    let mut b = pkg("libfoo", "1.2", "x86_64");
    b.with_file_contents(
        "libfoo shared object (fixture)\n",
        f("/usr/lib64/libfoo.so.1.2").mode(FileMode::regular(0o755)),
    )?;
    b.with_symlink(FileOptions::symlink(
        "/usr/lib64/libfoo.so.1",
        "libfoo.so.1.2",
    ))?;
    b.provides(Dependency::any("libfoo.so.1()(64bit)"));
    b.requires(Dependency::any("filesystem"));
    out.push(("libfoo".into(), b.build()?));

    for (ver, text) in [("1.0", "config-tool one\n"), ("2.0", "config-tool two\n")] {
        let mut b = pkg("config-tool", ver, "noarch");
        b.with_file_contents(
            format!("#!/bin/sh\necho '{}'\n", text.trim()),
            f("/usr/bin/config-tool").mode(FileMode::regular(0o755)),
        )?;
        b.requires(Dependency::any("/bin/sh"));
        out.push((format!("config-tool-{ver}"), b.build()?));
    }

    let mut b = pkg("app", "1.0", "x86_64");
    b.with_file_contents(
        "#!/bin/sh\necho app\n",
        f("/usr/bin/app").mode(FileMode::regular(0o755)),
    )?;
    b.with_file_contents(
        "ping\n",
        f("/usr/bin/app-ping")
            .mode(FileMode::regular(0o755))
            .caps("cap_net_raw=ep")?,
    )?;
    b.with_file_contents("su\n", f("/usr/bin/app-su").mode(FileMode::regular(0o4755)))?;
    b.with_symlink(FileOptions::symlink("/usr/bin/app-link", "app"))?;
    b.with_file_contents(
        "shared inode\n",
        f("/usr/share/app/hard-a").hardlink("app-hard"),
    )?;
    b.with_file_contents(
        "shared inode\n",
        f("/usr/share/app/hard-b").hardlink("app-hard"),
    )?;
    b.with_file_contents("listen=8080\n", f("/etc/app.conf").config().noreplace())?;
    b.with_dir_entry(FileOptions::dir("/var/lib/app").permissions(0o750))?;
    b.with_file_contents("seed\n", f("/var/lib/app/seed.db"))?;
    b.with_file_contents("docs\n", f("/usr/share/doc/app/README").doc())?;
    b.with_file_contents(
        "de\n",
        f("/usr/share/locale/de/LC_MESSAGES/app.mo").language("de"),
    )?;
    b.with_file_contents(
        "fr\n",
        f("/usr/share/locale/fr/LC_MESSAGES/app.mo").language("fr"),
    )?;
    b.with_file_contents(
        "owned\n",
        f("/usr/share/app/owned").user("appuser").group("appgroup"),
    )?;
    b.with_file_contents("[Unit]\nDescription=app\n[Service]\nExecStart=/usr/bin/app\n[Install]\nWantedBy=multi-user.target\n", f("/usr/lib/systemd/system/app.service"))?;
    b.pre_install_script(sh(&(append_etc("group", "appgroup:x:990:")
        + &append_etc("passwd", "appuser:x:990:990:app:/var/lib/app:/bin/sh"))));
    b.post_install_script(sh(
        "echo \"post ran with $1\" > /usr/share/app/post-marker\nmkdir -p /var/lib/app/cache\n",
    ));
    b.post_trans_script(sh("echo posttrans > /usr/share/app/posttrans-marker\n"));
    b.requires(Dependency::any("libfoo.so.1()(64bit)"));
    b.requires(Dependency::any("/bin/sh"));
    b.requires(Dependency::greater_eq("config-tool", "1.0"));
    b.requires(Dependency::any("setup"));
    b.recommends(Dependency::any("app-extras"));
    out.push(("app".into(), b.build()?));

    let mut b = pkg("app-extras", "1.0", "noarch");
    b.with_file_contents("extras\n", f("/usr/share/app/extras"))?;
    out.push(("app-extras".into(), b.build()?));

    let mut b = pkg("triggerer", "1.0", "noarch");
    b.with_dir_entry(FileOptions::dir("/usr/share/triggerer"))?;
    b.trans_file_trigger_in(
        "/usr/lib64",
        None,
        Scriptlet::new("cat > /usr/share/triggerer/seen\n").prog(vec!["/bin/sh"]),
    );
    b.requires(Dependency::any("/bin/sh"));
    out.push(("triggerer".into(), b.build()?));

    // A scriptlet that fails, to check the error names it.
    let mut b = pkg("failing-post", "1.0", "noarch");
    b.with_file_contents("x\n", f("/usr/share/failing-post/x"))?;
    b.post_install_script(sh("echo 'about to fail: disk on fire' >&2\nexit 3\n"));
    b.requires(Dependency::any("/bin/sh"));
    out.push(("failing-post".into(), b.build()?));

    // A scriptlet that writes into a file shared with the package cache.
    let mut b = pkg("inplace-writer", "1.0", "noarch");
    b.post_install_script(sh("echo tampered >> /usr/bin/app\n"));
    b.requires(Dependency::any("app"));
    out.push(("inplace-writer".into(), b.build()?));

    for (n, content) in [("clash-a", "from a\n"), ("clash-b", "from b\n")] {
        let mut b = pkg(n, "1.0", "noarch");
        b.with_file_contents(content, f("/usr/share/clash/file"))?;
        b.with_file_contents("same\n", f("/usr/share/clash/identical"))?;
        out.push((n.into(), b.build()?));
    }

    // Kernels placed the Debian way (/boot/vmlinuz-KVER) and the Fedora way.
    for (name, kver, debian) in [
        ("kernel-deb", "6.1.0-fx1", true),
        ("kernel-fed", "6.2.0-fx2", false),
    ] {
        let mut b = pkg(name, "1.0", "x86_64");
        let image = format!("fake kernel image {kver}\n");
        if debian {
            b.with_file_contents(image, f(&format!("/boot/vmlinuz-{kver}")))?;
            b.with_file_contents("CONFIG_X=y\n", f(&format!("/boot/config-{kver}")))?;
        } else {
            b.with_file_contents(image, f(&format!("/usr/lib/modules/{kver}/vmlinuz")))?;
        }
        b.with_file_contents(
            "not a real module\n",
            f(&format!("/usr/lib/modules/{kver}/kernel/fx.ko")),
        )?;
        out.push((name.into(), b.build()?));
    }

    let mut b = pkg("needs-missing", "1.0", "noarch");
    b.requires(Dependency::greater_eq("does-not-exist", "3"));
    out.push(("needs-missing".into(), b.build()?));

    // Scriptlets as rpm-ostree treats them: Lua with the skip mark, Lua rpm-ostree knows a
    // shell replacement for, Lua it does not know, and the kinds a compose never runs.
    // (The rpm crate adds a requirement on the interpreter, `<lua>` here, which rpmbuild
    // does not for Lua; each of these packages provides it itself so it resolves.)
    let lua = |body: &str| Scriptlet::new(body).prog(vec!["<lua>"]);
    let mut b = pkg("lua-skip", "1.0", "noarch");
    b.post_install_script(lua(
        "-- only for live systems\n-- rpm-ostree-skip\nerror('ran')\n",
    ));
    b.provides(Dependency::any("<lua>"));
    out.push(("lua-skip".into(), b.build()?));
    let mut b = pkg("rpmostree-lua-override-test", "1.0", "noarch");
    b.post_install_script(lua("error('the Lua itself must not run')\n"));
    b.requires(Dependency::any("/bin/sh"));
    b.provides(Dependency::any("<lua>"));
    out.push(("rpmostree-lua-override-test".into(), b.build()?));
    let mut b = pkg("lua-unknown", "1.0", "noarch");
    b.post_install_script(lua("print('hello')\n"));
    b.provides(Dependency::any("<lua>"));
    out.push(("lua-unknown".into(), b.build()?));
    let mut b = pkg("ignored-kinds", "1.0", "noarch");
    let fail = |kind: &str| sh(&format!("echo '{kind} ran' >&2\nexit 1\n"));
    b.pre_trans_script(fail("%pretrans"));
    b.pre_uninstall_script(fail("%preun"));
    b.post_uninstall_script(fail("%postun"));
    b.pre_untrans_script(fail("%preuntrans"));
    b.post_untrans_script(fail("%postuntrans"));
    b.verify_script(fail("%verifyscript"));
    b.post_install_script(sh("echo post > /usr/share/ignored-kinds-post\n"));
    b.requires(Dependency::any("/bin/sh"));
    out.push(("ignored-kinds".into(), b.build()?));
    Ok(out)
}

fn hostile_packages() -> Result<Vec<Built>> {
    let mut out = Vec::new();
    let mut b = pkg("evil-dotdot", "1.0", "noarch");
    b.with_file_contents("gotcha\n", f("/usr/share/../../../etc/evil"))?;
    out.push(("evil-dotdot".into(), b.build()?));

    let mut b = pkg("evil-symlink", "1.0", "noarch");
    b.with_symlink(FileOptions::symlink(
        "/usr/share/evil/escape",
        "../../../../../etc/shadow",
    ))?;
    out.push(("evil-symlink".into(), b.build()?));

    let mut b = pkg("evil-corrupt", "1.0", "noarch");
    // Incompressible bytes, so the payload is large and the damage lands inside it.
    let mut x: u32 = 12345;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    b.with_file_contents(noise, f("/usr/share/evil/blob"))?;
    out.push(("evil-corrupt".into(), b.build()?));
    Ok(out)
}

fn write_repo(dir: &Path, pkgs: &[Built]) -> Result<()> {
    std::fs::create_dir_all(dir.join("Packages"))?;
    for (_, p) in pkgs {
        let name = p.canonical_filename()?;
        p.write_file(dir.join("Packages").join(name))?;
    }
    Ok(())
}

fn createrepo(dir: &Path) -> Result<()> {
    let st = Command::new("createrepo_c")
        .args([
            "--quiet",
            "--no-database",
            "--simple-md-filenames",
            "--revision",
            &BUILD_TIME.to_string(),
            "--set-timestamp-to-revision",
        ])
        .arg(dir)
        .status()
        .context("running createrepo_c (apt-get install createrepo-c)")?;
    if !st.success() {
        bail!("createrepo_c failed on {}", dir.display());
    }
    Ok(())
}

/// Flips bytes inside the payload so the header is intact but the payload digest is wrong.
fn corrupt_payload(path: &Path) -> Result<()> {
    let mut data = std::fs::read(path)?;
    let n = data.len();
    for b in &mut data[n - 2000..n - 1900] {
        *b ^= 0x5a;
    }
    std::fs::write(path, data)?;
    Ok(())
}

/// A signing key made by gpg in batch mode in `home`: its armored public and secret parts.
pub(crate) fn gen_key(home: &Path, uid: &str) -> Result<(String, String)> {
    std::fs::create_dir_all(home)?;
    let gpg = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .context("running gpg (apt-get install gnupg)")?;
        if !out.status.success() {
            bail!(
                "gpg {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    gpg(&["--quick-gen-key", uid, "rsa2048", "sign", "never"])?;
    let public = String::from_utf8(gpg(&["--armor", "--export", uid])?)?;
    let secret = String::from_utf8(gpg(&["--armor", "--export-secret-keys", uid])?)?;
    Ok((public, secret))
}

fn signed_repo(out: &Path) -> Result<()> {
    let dir = out.join("signed");
    let (public, secret) = gen_key(
        &out.join("gnupg"),
        "hostforge fixtures <fixtures@hostforge.invalid>",
    )?;
    let (_, other_secret) = gen_key(
        &out.join("gnupg-other"),
        "someone else <other@hostforge.invalid>",
    )?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(out.join("RPM-GPG-KEY-hostforge-fixtures"), &public)?;
    let signer = rpm::signature::pgp::Signer::from_asc_bytes(secret.as_bytes())?;
    let other = rpm::signature::pgp::Signer::from_asc_bytes(other_secret.as_bytes())?;
    let mut pkgs = Vec::new();
    let mut b = pkg("signed-ok", "1.0", "noarch");
    b.with_file_contents("signed\n", f("/usr/share/signed/ok"))?;
    pkgs.push(("signed-ok".to_string(), b.build_and_sign(&signer)?));
    let mut b = pkg("signed-unsigned", "1.0", "noarch");
    b.with_file_contents("unsigned\n", f("/usr/share/signed/unsigned"))?;
    pkgs.push(("signed-unsigned".to_string(), b.build()?));
    let mut b = pkg("signed-wrongkey", "1.0", "noarch");
    b.with_file_contents("wrong key\n", f("/usr/share/signed/wrongkey"))?;
    pkgs.push(("signed-wrongkey".to_string(), b.build_and_sign(&other)?));
    write_repo(&dir, &pkgs)?;
    createrepo(&dir)
}

/// Builds all fixture repos unless this recipe version is already built; returns the dir.
pub fn build(top: &Path) -> Result<PathBuf> {
    let out = out_dir(top);
    if out.join("stamp").exists() {
        return Ok(out);
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let t = std::time::Instant::now();
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    let base = base_packages(&busybox)?;
    write_repo(&out.join("base"), &base)?;
    createrepo(&out.join("base"))?;

    let hostile = hostile_packages()?;
    write_repo(&out.join("hostile"), &hostile)?;
    let corrupt = std::fs::read_dir(out.join("hostile/Packages"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().contains("evil-corrupt"))
        .expect("corrupt package written");
    corrupt_payload(&corrupt)?;
    createrepo(&out.join("hostile"))?;
    signed_repo(&out)?;
    std::fs::write(out.join("stamp"), "ok\n")?;
    eprintln!(
        "fixtures built in {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(out)
}

/// Deterministic filler that compresses about 2:1, like typical binaries.
fn filler(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            b"abcdefghijklmnop"[((x >> 16) & 15) as usize]
        })
        .collect()
}

fn bench_package(i: u32, version: &str) -> Result<rpm::Package> {
    let name = format!("bench-{i:03}");
    let mut b = pkg(&name, version, "x86_64");
    for j in 0..BENCH_FILES {
        let len = 1024 + ((i * 7919 + j * 104_729) % 96) as usize * 1024;
        let seed = i * 1000 + j + if version == "1.0" { 0 } else { 500_000 };
        b.with_file_contents(
            filler(seed, len),
            f(&format!("/usr/lib/{name}/file-{j:03}")).mode(FileMode::regular(0o644)),
        )?;
    }
    b.requires(Dependency::any("filesystem"));
    Ok(b.build()?)
}

const BENCH_PACKAGES: u32 = 120;
const BENCH_FILES: u32 = 40;

/// Two benchmark repos: `bench-a`, and `bench-b` where only bench-000 has a new version.
pub fn bench_repos(top: &Path) -> Result<(PathBuf, PathBuf, Vec<String>)> {
    let out = out_dir(top).join("bench");
    let names: Vec<String> = std::iter::once("filesystem".to_string())
        .chain((0..BENCH_PACKAGES).map(|i| format!("bench-{i:03}")))
        .collect();
    if out.join("stamp").exists() {
        return Ok((out.join("bench-a"), out.join("bench-b"), names));
    }
    let _ = std::fs::remove_dir_all(&out);
    let t = std::time::Instant::now();
    let fs = base_packages(b"")?
        .into_iter()
        .filter(|(n, _)| n == "filesystem")
        .collect::<Vec<_>>();
    for (repo, bumped) in [("bench-a", false), ("bench-b", true)] {
        let mut pkgs = fs
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect::<Vec<_>>();
        for i in 0..BENCH_PACKAGES {
            let version = if bumped && i == 0 { "1.1" } else { "1.0" };
            pkgs.push((format!("bench-{i:03}"), bench_package(i, version)?));
        }
        write_repo(&out.join(repo), &pkgs)?;
        createrepo(&out.join(repo))?;
    }
    std::fs::write(out.join("stamp"), "ok\n")?;
    eprintln!("bench repos built in {:.1}s", t.elapsed().as_secs_f64());
    Ok((out.join("bench-a"), out.join("bench-b"), names))
}
