//! `hostforge dracut emit` against the host's stock dracut: the emitted module must be
//! accepted, and `lsinitrd` must show ostree-prepare-root and its unit in the initramfs.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

/// Removes the module from the host's dracut again, even if the test fails.
struct Installed(PathBuf);
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host_kver() -> String {
    let mut kvers: Vec<String> = std::fs::read_dir("/lib/modules")
        .expect("no /lib/modules: cargo xtask deps installs linux-image-cloud-amd64")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    kvers.sort();
    kvers.pop().expect("a kernel in /lib/modules")
}

#[test]
fn stock_dracut_accepts_the_emitted_module() {
    let name = format!("hf-ostree-test{}", std::process::id());
    let out = hostforge_cmd()
        .args([
            "dracut",
            "emit",
            "--out",
            "/usr/lib/dracut/modules.d",
            "--number",
            "99",
            "--name",
            &name,
        ])
        .args(["--prepare-root", "sysroot.readonly=true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let _guard = Installed(dir.clone());
    assert_eq!(
        dir,
        PathBuf::from(format!("/usr/lib/dracut/modules.d/99{name}"))
    );

    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("initramfs.img");
    let kver = host_kver();
    let st = Command::new("dracut")
        .args([
            "--no-hostonly",
            "--reproducible",
            "--no-kernel",
            "--force",
            "--modules",
        ])
        .arg(&name)
        .args(["--kver", &kver])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "dracut failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ls = Command::new("lsinitrd").arg(&img).output().unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("usr/lib/ostree/ostree-prepare-root"),
        "{listing}"
    );
    assert!(listing.contains("ostree-prepare-root.service"), "{listing}");
    assert!(
        listing.contains("initrd-root-fs.target.wants/ostree-prepare-root.service"),
        "{listing}"
    );
    assert!(listing.contains(&name), "module not listed: {listing}");
    let conf = Command::new("lsinitrd")
        .arg(&img)
        .args(["-f", "usr/lib/ostree/prepare-root.conf"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conf.stdout),
        "[sysroot]\nreadonly = true\n"
    );
}
