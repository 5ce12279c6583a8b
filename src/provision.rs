//! `hostforge provision`: from one composed ref and a small spec, the files a network install
//! needs: a kickstart with `ostreesetup`, a TFTP tree (kernel, initramfs, PXELINUX, GRUB and
//! iPXE configs) and Foreman templates. Templates live in `kickstart/` and are compiled in.

use crate::ostreeutil;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const TEMPLATES: &[(&str, &str)] = &[
    ("node.ks", include_str!("../kickstart/node.ks.j2")),
    ("pxelinux.cfg", include_str!("../kickstart/pxelinux.cfg.j2")),
    ("grub.cfg", include_str!("../kickstart/grub.cfg.j2")),
    ("boot.ipxe", include_str!("../kickstart/boot.ipxe.j2")),
    (
        "foreman/provision",
        include_str!("../kickstart/foreman/provision.erb.j2"),
    ),
    (
        "foreman/PXELinux",
        include_str!("../kickstart/foreman/PXELinux.erb.j2"),
    ),
    (
        "foreman/PXEGrub2",
        include_str!("../kickstart/foreman/PXEGrub2.erb.j2"),
    ),
    (
        "foreman/iPXE",
        include_str!("../kickstart/foreman/iPXE.erb.j2"),
    ),
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Network {
    /// `dhcp` or `static`.
    #[serde(default = "default_bootproto")]
    pub bootproto: String,
    /// Interface name, or `link` for the first with a link.
    #[serde(default = "default_device")]
    pub device: String,
    pub ip: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    pub hostname: Option<String>,
}

fn default_bootproto() -> String {
    "dhcp".into()
}
fn default_device() -> String {
    "link".into()
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bootproto: default_bootproto(),
            device: default_device(),
            ip: None,
            netmask: None,
            gateway: None,
            nameservers: Vec::new(),
            hostname: None,
        }
    }
}

/// The provisioning spec (`--spec FILE`, YAML); every key has a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Spec {
    /// Base name of the rendered files (`ks/NAME.ks`).
    pub name: String,
    /// The ostree stateroot (`ostreesetup --osname`).
    pub osname: String,
    /// The remote name the installed node keeps (`ostreesetup --remote`).
    pub remote: String,
    /// Verify the commit's GPG signature on pull (the default); off gives `--nogpg`.
    pub gpg: bool,
    /// The public key (armored or binary) the remote's commits are signed with, relative to
    /// the spec: the installer trusts it for the install, the node for its updates. Without
    /// it the installer must already trust the key.
    pub gpg_key: Option<PathBuf>,
    /// The key's binary packets, read by [`Spec::load`].
    #[serde(skip)]
    pub gpg_key_binary: Option<Vec<u8>>,
    /// Target disk (e.g. `vda`); all disks when unset.
    pub disk: Option<String>,
    /// Root filesystem: `xfs` or `ext4`.
    pub fstype: String,
    pub network: Network,
    /// A crypt(3) hash for root; without it root's password is locked.
    pub root_password_hash: Option<String>,
    /// SSH public keys for root.
    pub ssh_keys: Vec<String>,
    /// Kernel arguments for the installer and the installed system.
    pub kargs: Vec<String>,
    /// A `%post` script.
    pub post: Option<String>,
    /// Where nodes fetch the kickstart; default: `ks/NAME.ks` beside the repo URL.
    pub ks_url: Option<String>,
    /// The installer's stage2 (`inst.stage2=`), when it is not in the initramfs.
    pub stage2: Option<String>,
    /// MAC addresses that get their own PXELINUX and GRUB config files.
    pub macs: Vec<String>,
    pub lang: String,
    pub keyboard: String,
    pub timezone: String,
    /// Who installs: `anaconda` (the kickstart) or `hostforge` (hostforge's live installer,
    /// an initramfs `provision` builds; the boot files then start it).
    pub installer: String,
    /// The disk layout hostforge's installer uses: `metal` or `qemu` (images/*.yaml).
    pub layout: String,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            name: "node".into(),
            osname: "hostforge".into(),
            remote: "hostforge".into(),
            gpg: true,
            gpg_key: None,
            gpg_key_binary: None,
            disk: None,
            fstype: "xfs".into(),
            network: Network::default(),
            root_password_hash: None,
            ssh_keys: Vec::new(),
            kargs: Vec::new(),
            post: None,
            ks_url: None,
            stage2: None,
            macs: Vec::new(),
            lang: "en_US.UTF-8".into(),
            keyboard: "us".into(),
            timezone: "Etc/UTC".into(),
            installer: "anaconda".into(),
            layout: "metal".into(),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` as PXELINUX names it: `01-aa-bb-cc-dd-ee-ff`.
pub fn pxelinux_mac_name(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        bail!("macs: {mac:?} is not a MAC address like 52:54:00:12:34:56");
    }
    Ok(format!("01-{}", parts.join("-").to_ascii_lowercase()))
}

/// `data` as base64 in lines of 76 characters, as `base64 -d` reads it.
fn base64_lines(data: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    lines.join("\n")
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading spec {}", path.display()))?;
        let mut spec: Spec = crate::treefile::yaml_from_str(path, &text)?;
        if let Some(key) = &spec.gpg_key {
            let key = path.parent().unwrap_or(Path::new(".")).join(key);
            let bytes = std::fs::read(&key).with_context(|| {
                format!("spec {}: reading gpg-key {}", path.display(), key.display())
            })?;
            spec.gpg_key_binary = Some(
                crate::validate::openpgp_public_key("gpg-key", &bytes)
                    .with_context(|| format!("spec {}: {}", path.display(), key.display()))?,
            );
        }
        spec.validate()
            .with_context(|| format!("spec {}", path.display()))?;
        Ok(spec)
    }

    /// Holds every field to what its place in the kickstart and boot configs can carry; an
    /// error names the spec key.
    pub fn validate(&self) -> Result<()> {
        use crate::validate as v;
        v::plain_name("name", &self.name)?;
        v::plain_name("osname", &self.osname)?;
        v::plain_name("remote", &self.remote)?;
        if !self.gpg && self.gpg_key.is_some() {
            bail!("gpg-key is given but gpg is false: verify with the key, or drop it");
        }
        if let Some(d) = &self.disk {
            v::plain_name("disk", d)?;
        }
        if !matches!(self.fstype.as_str(), "xfs" | "ext4") {
            bail!("fstype {:?}: use xfs or ext4", self.fstype);
        }
        self.network.validate()?;
        if let Some(h) = &self.root_password_hash {
            if !h.starts_with('$') {
                bail!(
                    "root-password-hash must be a crypt(3) hash such as $6$...; \
                     make one with `openssl passwd -6`"
                );
            }
            v::word(
                "root-password-hash",
                h,
                "./$=,_-",
                "a crypt(3) hash such as $6$salt$...",
            )?;
        }
        if self.root_password_hash.is_none() && self.ssh_keys.is_empty() {
            bail!("give root-password-hash or ssh-keys: otherwise nobody can log in to the node");
        }
        for k in &self.ssh_keys {
            v::ssh_key("ssh-keys", k)?;
        }
        for m in &self.macs {
            pxelinux_mac_name(m)?;
        }
        for k in &self.kargs {
            v::kernel_arg("kargs", k)?;
        }
        if let Some(p) = &self.post {
            v::kickstart_script("post", p)?;
        }
        if let Some(u) = &self.ks_url {
            v::http_url("ks-url", u)?;
        }
        if let Some(u) = &self.stage2 {
            v::http_url("stage2", u)?;
        }
        v::word("lang", &self.lang, "_.@-", "en_US.UTF-8")?;
        v::word("keyboard", &self.keyboard, "_.-", "us or de-nodeadkeys")?;
        v::word(
            "timezone",
            &self.timezone,
            "_/+-",
            "Etc/UTC or Europe/Berlin",
        )?;
        let layouts: Vec<&str> = crate::image::layout::BUILTIN.iter().map(|b| b.0).collect();
        if !layouts.contains(&self.layout.as_str()) {
            bail!(
                "layout {:?}: use one of {}",
                self.layout,
                layouts.join(", ")
            );
        }
        match self.installer.as_str() {
            "anaconda" => {}
            "hostforge" => {
                if self.disk.is_none() {
                    bail!("installer hostforge needs disk (e.g. vda): it installs onto one disk");
                }
            }
            other => bail!("installer {other:?}: use anaconda or hostforge"),
        }
        Ok(())
    }
}

impl Network {
    fn validate(&self) -> Result<()> {
        use crate::validate as v;
        match self.bootproto.as_str() {
            "dhcp" => {}
            "static" => {
                for (k, val) in [
                    ("ip", &self.ip),
                    ("netmask", &self.netmask),
                    ("gateway", &self.gateway),
                ] {
                    if val.is_none() {
                        bail!("network: bootproto static needs {k}");
                    }
                }
            }
            other => bail!("network: bootproto {other:?}: use dhcp or static"),
        }
        if self.device != "link" {
            v::word(
                "network.device",
                &self.device,
                ":_.-",
                "eno1, link or a MAC address",
            )?;
        }
        for (k, val) in [("network.ip", &self.ip), ("network.gateway", &self.gateway)] {
            if let Some(a) = val {
                v::ip_addr(k, a)?;
            }
        }
        if let Some(m) = &self.netmask {
            if !(m.parse::<u8>().is_ok_and(|n| n <= 128)) {
                v::ip_addr("network.netmask", m)?;
            }
        }
        for ns in &self.nameservers {
            v::ip_addr("network.nameservers", ns)?;
        }
        if let Some(h) = &self.hostname {
            v::hostname("network.hostname", h)?;
        }
        Ok(())
    }
}

/// What to render.
pub struct Request<'a> {
    pub repo: &'a Path,
    pub treeref: &'a str,
    pub url: &'a str,
    pub out: &'a Path,
    pub spec: Spec,
}

/// The kickstart URL: the spec's, or `ks/NAME.ks` next to the repo URL's last segment.
fn ks_url(url: &str, spec: &Spec) -> String {
    if let Some(u) = &spec.ks_url {
        return u.clone();
    }
    let base = url.trim_end_matches('/');
    let parent = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |j| j + 2) => &base[..i],
        _ => base,
    };
    format!("{parent}/ks/{}.ks", spec.name)
}

/// Renders the text files for `spec`: (path relative to the output dir, content).
pub fn render_all(
    spec: &Spec,
    url: &str,
    treeref: &str,
    commit: &str,
) -> Result<Vec<(String, String)>> {
    if spec.installer == "hostforge" {
        // hostforge's live installer: the arguments say what to install where; it brings the
        // network up with DHCP itself. Every value was checked for one kernel argument.
        let disk = spec.disk.as_deref().expect("validated");
        let mut args = vec![
            format!("hostforge.inst.url={url}"),
            format!("hostforge.inst.ref={treeref}"),
            format!("hostforge.inst.device=/dev/{disk}"),
            format!("hostforge.inst.layout={}", spec.layout),
        ];
        args.extend(spec.kargs.iter().cloned());
        let cmdline = args.join(" ");
        // Foreman learns that the host is built (and boots it from its disk from then on).
        let foreman = format!("{cmdline} hostforge.inst.done-url=<%= foreman_url('built') %>");
        return render_files(spec, url, treeref, commit, &cmdline, &cmdline, &foreman);
    }
    let ks = ks_url(url, spec);
    let mut extra: Vec<String> = vec!["ip=dhcp".into()];
    if spec.network.bootproto == "static" {
        let n = &spec.network;
        extra = vec![format!(
            "ip={}::{}:{}:{}:{}:none",
            n.ip.as_deref().unwrap_or_default(),
            n.gateway.as_deref().unwrap_or_default(),
            n.netmask.as_deref().unwrap_or_default(),
            n.hostname.as_deref().unwrap_or_default(),
            if n.device == "link" { "" } else { &n.device }
        )];
        if let Some(ns) = n.nameservers.first() {
            extra.push(format!("nameserver={ns}"));
        }
    }
    if let Some(s2) = &spec.stage2 {
        extra.push(format!("inst.stage2={s2}"));
    }
    extra.extend(spec.kargs.iter().cloned());
    let cmdline_no_ks = extra.join(" ");
    let cmdline = format!("inst.ks={ks} {cmdline_no_ks}");
    let foreman = format!("inst.ks=<%= foreman_url('provision') %> {cmdline_no_ks}");
    render_files(
        spec,
        url,
        treeref,
        commit,
        &cmdline,
        &cmdline_no_ks,
        &foreman,
    )
}

/// Renders every template with the installer's kernel command line (`cmdline`), the same
/// without the kickstart (`cmdline_no_ks`) and Foreman's (`foreman_cmdline`, ERB in it).
fn render_files(
    spec: &Spec,
    url: &str,
    treeref: &str,
    commit: &str,
    cmdline: &str,
    cmdline_no_ks: &str,
    foreman_cmdline: &str,
) -> Result<Vec<(String, String)>> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    // Foreman renders its templates with ERB: a literal `<%` must reach it as `<%%`.
    env.add_filter("erb", |v: String| crate::validate::erb_literal(&v));
    for (name, src) in TEMPLATES {
        env.add_template(name, src)?;
    }
    let ctx = minijinja::context! {
        name => &spec.name,
        osname => &spec.osname,
        remote => &spec.remote,
        gpg => spec.gpg,
        // Base64 lines only: nothing in the key can become a kickstart directive.
        gpg_key_base64 => spec.gpg_key_binary.as_deref().map(base64_lines),
        disk => &spec.disk,
        fstype => &spec.fstype,
        network => &spec.network,
        root_password_hash => &spec.root_password_hash,
        ssh_keys => &spec.ssh_keys,
        kargs => &spec.kargs,
        post => spec.post.as_deref().map(str::trim_end),
        lang => &spec.lang,
        keyboard => &spec.keyboard,
        timezone => &spec.timezone,
        url => url,
        ref => treeref,
        commit => commit,
        cmdline => cmdline,
        cmdline_no_ks => cmdline_no_ks,
        foreman_cmdline => foreman_cmdline,
        installer => &spec.installer,
    };
    let render = |t: &str| -> Result<String> {
        env.get_template(t)?
            .render(&ctx)
            .with_context(|| format!("rendering template {t}"))
    };
    let mut files = vec![(format!("ks/{}.ks", spec.name), render("node.ks")?)];
    let pxe = render("pxelinux.cfg")?;
    let grub = render("grub.cfg")?;
    files.push(("tftp/pxelinux.cfg/default".into(), pxe.clone()));
    files.push(("tftp/grub.cfg".into(), grub.clone()));
    for mac in &spec.macs {
        let name = pxelinux_mac_name(mac)?;
        files.push((format!("tftp/pxelinux.cfg/{name}"), pxe.clone()));
        files.push((format!("tftp/grub.cfg-{name}"), grub.clone()));
    }
    files.push(("tftp/boot.ipxe".into(), render("boot.ipxe")?));
    for kind in ["provision", "PXELinux", "PXEGrub2", "iPXE"] {
        files.push((
            format!("foreman/{kind}.erb"),
            render(&format!("foreman/{kind}"))?,
        ));
    }
    Ok(files)
}

/// Renders everything into `out`, with the kernel and initramfs of the ref; returns the
/// files written.
pub fn provision(req: &Request) -> Result<Vec<PathBuf>> {
    let spec = &req.spec;
    spec.validate()?;
    if spec.installer == "hostforge" && spec.gpg && spec.gpg_key_binary.is_none() {
        bail!(
            "installer hostforge verifies what it pulls with the key it carries: give gpg-key \
             (or gpg: false to install unverified)"
        );
    }
    crate::validate::http_url("--url", req.url)?;
    crate::validate::ostree_ref("--ref", req.treeref)?;
    let repo = ostreeutil::open_existing(req.repo)?;
    if repo.mode() != ostree::RepoMode::Archive {
        bail!(
            "{} is not an archive-mode repo, so a web server cannot serve it; pull the ref into \
             one: `ostree init --repo=R --mode=archive && ostree pull-local --repo=R {} {}`",
            req.repo.display(),
            req.repo.display(),
            req.treeref
        );
    }
    let commit = ostreeutil::resolve(&repo, req.treeref)?.ok_or_else(|| {
        anyhow!(
            "ref {} is not in {}; compose it first",
            req.treeref,
            req.repo.display()
        )
    })?;
    // A summary lets `ostree remote refs` and installers list what the URL serves. A compose
    // writes (and signs) one; it is made here only when missing, since a new one would drop
    // the signature nodes and installers verify.
    if !req.repo.join("summary").exists() {
        repo.regenerate_summary(None, ostree::gio::Cancellable::NONE)
            .context("regenerating the repo summary")?;
    }

    let kvers = ostreeutil::list_commit_dir(&repo, &commit, "usr/lib/modules")?;
    let kver = match kvers.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "{}: commit {commit} has no kernel in /usr/lib/modules",
            req.treeref
        ),
        many => bail!(
            "{}: commit has several kernels: {}",
            req.treeref,
            many.join(", ")
        ),
    };

    let files = render_all(spec, req.url, req.treeref, &commit)?;

    // Render into a staging dir, then swap it in: a failure leaves the old output whole.
    let out = req.out;
    let staging = out.with_extension("hostforge-tmp");
    let _ = std::fs::remove_dir_all(&staging);
    let mut written = Vec::new();
    let mut write = |rel: &str, data: &[u8]| -> Result<()> {
        let p = staging.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        written.push(out.join(rel));
        Ok(())
    };
    for (rel, text) in &files {
        write(rel, text.as_bytes())?;
    }
    let modules = format!("usr/lib/modules/{kver}");
    write(
        "tftp/vmlinuz",
        &ostreeutil::read_commit_file(&repo, &commit, &format!("{modules}/vmlinuz"))?,
    )?;
    let initramfs =
        ostreeutil::read_commit_file(&repo, &commit, &format!("{modules}/initramfs.img"))
            .with_context(|| {
                format!(
                    "{}: the commit has no initramfs to network-boot",
                    req.treeref
                )
            })?;
    // UEFI clients netboot GRUB, which reads tftp/grub.cfg (BIOS clients: boot.ipxe or
    // PXELINUX).
    let grub_efi = staging.join("tftp/grubx64.efi");
    crate::image::grub::efi_netboot(&grub_efi)?;
    if spec.installer == "hostforge" {
        // The boot files start hostforge's installer, carrying the key and the first-boot
        // config (the spec itself, without the key's path).
        let mut config = spec.clone();
        config.gpg_key = None;
        let config = serde_yaml::to_string(&config).context("writing the first-boot config")?;
        let path = staging.join("tftp/initramfs.img");
        crate::installer::build(&crate::installer::Request {
            repo: &repo,
            commit: &commit,
            kver: &kver,
            gpg_key: if spec.gpg {
                spec.gpg_key_binary.as_deref()
            } else {
                None
            },
            config: Some(&config),
            out: &path,
        })?;
    } else {
        write("tftp/initramfs.img", &initramfs)?;
    }
    for f in ["tftp/grubx64.efi", "tftp/initramfs.img"] {
        let f = out.join(f);
        if !written.contains(&f) {
            written.push(f);
        }
    }
    if std::fs::symlink_metadata(out).is_ok() {
        let old = out.with_extension("hostforge-old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old)?;
        std::fs::rename(&staging, out)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&staging, out)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            ssh_keys: vec!["ssh-ed25519 AAAAC3 test@host".into()],
            ..Default::default()
        }
    }

    #[test]
    fn hostforge_installer_needs_a_disk_and_a_known_layout() {
        let s = Spec {
            installer: "hostforge".into(),
            ..spec()
        };
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("needs disk"));
        let s = Spec {
            disk: Some("vda".into()),
            layout: "laptop".into(),
            ..s
        };
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("layout \"laptop\""));
        let s = Spec {
            installer: "kickstart".into(),
            layout: "metal".into(),
            ..s
        };
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("anaconda or hostforge"));
    }

    /// The installer's scripts are valid shell (dracut sources them with bash, busybox's sh
    /// runs the DHCP hook).
    #[test]
    fn installer_scripts_parse() {
        for f in [
            "module-setup.sh",
            "parse-hostforge-inst.sh",
            "hostforge-installer.sh",
            "udhcpc.script",
        ] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("dracut/installer")
                .join(f);
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success(), "{f}");
        }
    }

    #[test]
    fn mac_names() {
        assert_eq!(
            pxelinux_mac_name("52:54:00:AB:cd:01").unwrap(),
            "01-52-54-00-ab-cd-01"
        );
        assert!(pxelinux_mac_name("52:54:00:ab:cd").is_err());
    }

    #[test]
    fn ks_url_defaults_beside_the_repo() {
        assert_eq!(ks_url("http://h:8/repo", &spec()), "http://h:8/ks/node.ks");
        assert_eq!(ks_url("http://h:8/", &spec()), "http://h:8/ks/node.ks");
    }

    #[test]
    fn specs_without_login_or_with_bad_values_are_refused() {
        let s = Spec::default();
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("nobody can log in"));
        let mut s = spec();
        s.fstype = "vfat".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.network.bootproto = "static".into();
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("needs ip"));
        let mut s = spec();
        s.root_password_hash = Some("hunter2".into());
        assert!(format!("{:#}", s.validate().unwrap_err()).contains("crypt(3)"));
    }
}

#[cfg(test)]
mod smuggling {
    //! Every string of the spec, and each flag that lands in a file, is tried with values that
    //! would add a line, a directive, an argument or a command: each must be refused with an
    //! error naming the key. A field added later without a check fails here.
    use super::*;
    use serde_json::Value;

    /// Appended to a valid value: each would escape its place in some generated file.
    const ANYWHERE: &[&str] = &[
        "\nreboot",
        "\r\n%post",
        "$(reboot)",
        "`reboot`",
        "'x",
        "\"x",
        "<%= `reboot` %>",
    ];
    /// Also refused where a value is one word of a command line or a directive.
    const IN_A_WORD: &[&str] = &[" --reboot", "\tx", ";reboot", "}", "&&reboot", "|reboot"];

    fn full() -> Spec {
        super::golden::variants().pop().unwrap().1
    }

    /// (key path, value) of every string leaf of `v`; arrays give their key for each element.
    fn leaves(v: &Value, path: &str, out: &mut Vec<(String, Vec<usize>)>, idx: Vec<usize>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(x, &p, out, idx.clone());
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let mut j = idx.clone();
                    j.push(i);
                    leaves(x, path, out, j);
                }
            }
            Value::String(_) => out.push((path.to_string(), idx)),
            _ => {}
        }
    }

    fn set(v: &mut Value, path: &str, idx: &[usize], f: &dyn Fn(&str) -> String) {
        let mut cur = v;
        for k in path.split('.') {
            cur = cur.get_mut(k).unwrap();
        }
        for i in idx {
            cur = cur.get_mut(i).unwrap();
        }
        let old = cur.as_str().unwrap().to_string();
        *cur = Value::String(f(&old));
    }

    #[test]
    fn every_spec_string_refuses_smuggled_text() {
        let base = serde_json::to_value(full()).unwrap();
        full().validate().unwrap();
        let mut fields = Vec::new();
        leaves(&base, "", &mut fields, Vec::new());
        assert!(fields.len() > 15, "{fields:?}");
        let mut tried = 0;
        for (path, idx) in &fields {
            // `post` is a script (its own test); `gpg-key` is a path read by Spec::load and
            // never rendered: the key goes into files as base64 lines only.
            if path == "post" || path == "gpg-key" {
                continue;
            }
            let key = path.rsplit('.').next().unwrap();
            let payloads: Vec<&str> = if path == "ssh-keys" {
                ANYWHERE.to_vec()
            } else {
                ANYWHERE.iter().chain(IN_A_WORD).copied().collect()
            };
            for p in payloads {
                let mut doc = base.clone();
                set(&mut doc, path, idx, &|old| format!("{old}{p}"));
                let spec: Spec = serde_json::from_value(doc).unwrap();
                let err = spec
                    .validate()
                    .err()
                    .unwrap_or_else(|| panic!("{path}: {p:?} was accepted"));
                let msg = format!("{err:#}");
                assert!(
                    msg.contains(key),
                    "{path}: {p:?}: error does not name it: {msg}"
                );
                tried += 1;
            }
        }
        assert!(tried > 150);
    }

    #[test]
    fn post_cannot_end_its_section_and_is_literal_for_foreman() {
        for bad in [
            "echo\n%end\nrootpw --plaintext x",
            "  %include http://h/x",
            "%pre",
        ] {
            let spec = Spec {
                post: Some(bad.into()),
                ..full()
            };
            let msg = format!("{:#}", spec.validate().unwrap_err());
            assert!(msg.contains("post: line"), "{bad:?}: {msg}");
        }
        let spec = Spec {
            post: Some("echo '<%= `reboot` %>' > /etc/motd".into()),
            ..full()
        };
        spec.validate().unwrap();
        let files = render_all(&spec, "http://h/repo", "a/b", "0").unwrap();
        let (_, foreman) = files
            .iter()
            .find(|(r, _)| r == "foreman/provision.erb")
            .unwrap();
        assert!(
            foreman.contains("echo '<%%= `reboot` %>' > /etc/motd"),
            "{foreman}"
        );
        let (_, ks) = files.iter().find(|(r, _)| r.starts_with("ks/")).unwrap();
        assert!(ks.contains("echo '<%= `reboot` %>' > /etc/motd"), "{ks}");
    }

    #[test]
    fn url_and_ref_flags_are_checked_before_anything_is_written() {
        let out = tempfile::tempdir().unwrap();
        let req = |url: &'static str, treeref: &'static str| Request {
            repo: Path::new("/nonexistent"),
            treeref,
            url,
            out: out.path(),
            spec: full(),
        };
        for (url, treeref, flag) in [
            ("http://h/repo\nreboot", "a/b", "--url"),
            ("http://h/repo inst.ks=http://evil/x", "a/b", "--url"),
            ("http://h/repo;reboot", "a/b", "--url"),
            ("ftp://h/repo", "a/b", "--url"),
            ("http://h/repo", "a/b --nogpg", "--ref"),
            ("http://h/repo", "a/b\nreboot", "--ref"),
            ("http://h/repo", "../b", "--ref"),
        ] {
            let msg = format!("{:#}", provision(&req(url, treeref)).unwrap_err());
            assert!(msg.contains(flag), "{url:?} {treeref:?}: {msg}");
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod golden {
    //! The rendered files for two specs are compared with `tests/golden/provision/`;
    //! `UPDATE_GOLDEN=1 cargo test` rewrites them after an intended template change.
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub(super) fn variants() -> Vec<(&'static str, Spec)> {
        let minimal = Spec {
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture ops@example".into()],
            ..Default::default()
        };
        let full = Spec {
            name: "rack1-node7".into(),
            osname: "node".into(),
            remote: "fleet".into(),
            gpg: true,
            gpg_key: Some("fleet.gpg".into()),
            // Stands for a key's packets: a public-key packet header, then filler.
            gpg_key_binary: Some((0..90u8).map(|i| if i == 0 { 0x99 } else { i }).collect()),
            disk: Some("nvme0n1".into()),
            fstype: "ext4".into(),
            network: Network {
                bootproto: "static".into(),
                device: "eno1".into(),
                ip: Some("192.0.2.17".into()),
                netmask: Some("255.255.255.0".into()),
                gateway: Some("192.0.2.1".into()),
                nameservers: vec!["192.0.2.53".into(), "192.0.2.54".into()],
                hostname: Some("node7.example.net".into()),
            },
            root_password_hash: Some("$6$fixture$Jm0fq0Rn2Xx0bYH7VtFQ2c".into()),
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture ops@example".into(),
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABFixture backup@example".into(),
            ],
            kargs: vec![
                "console=ttyS0,115200".into(),
                "systemd.unified_cgroup_hierarchy=1".into(),
            ],
            post: Some(
                "echo provisioned > /etc/hostforge-provisioned\nsystemctl enable sshd\n".into(),
            ),
            ks_url: Some("http://pxe.example.net/ks/rack1-node7.ks".into()),
            stage2: Some("http://mirror.example.net/rhel9/".into()),
            macs: vec!["52:54:00:12:34:56".into(), "52:54:00:AB:CD:EF".into()],
            ..Default::default()
        };
        // hostforge's live installer boots instead of Anaconda.
        let installer = Spec {
            installer: "hostforge".into(),
            disk: Some("vda".into()),
            layout: "qemu".into(),
            kargs: vec!["console=ttyS0".into()],
            ..minimal.clone()
        };
        // The last one is the fullest: the smuggling tests start from it.
        vec![
            ("minimal", minimal),
            ("installer", installer),
            ("full", full),
        ]
    }

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/provision")
    }

    #[test]
    fn rendered_files_match_golden() {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        for (variant, spec) in variants() {
            spec.validate().unwrap();
            let files = render_all(
                &spec,
                "http://repo.example.net/hostforge/repo",
                "hostforge/x86_64/node",
                COMMIT,
            )
            .unwrap();
            let dir = golden_dir().join(variant);
            for (rel, text) in &files {
                let p = dir.join(rel);
                if update {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, text).unwrap();
                }
                let want = std::fs::read_to_string(&p)
                    .unwrap_or_else(|_| panic!("missing golden file {}", p.display()));
                assert_eq!(text, &want, "{variant}/{rel} differs from the golden file");
            }
        }
    }

    fn newest_fedora() -> String {
        let out = std::process::Command::new("ksvalidator")
            .arg("-l")
            .output()
            .expect("ksvalidator (pip install pykickstart; cargo xtask deps does it)");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|v| v.strip_prefix('F').and_then(|n| n.parse::<u32>().ok()))
            .max()
            .map(|n| format!("F{n}"))
            .expect("ksvalidator knows a Fedora version")
    }

    #[test]
    fn every_kickstart_passes_ksvalidator() {
        let dir = tempfile::tempdir().unwrap();
        let versions = ["RHEL9".to_string(), "RHEL10".to_string(), newest_fedora()];
        for (variant, spec) in variants() {
            let files = render_all(
                &spec,
                "http://repo.example.net/repo",
                "hostforge/x86_64/node",
                COMMIT,
            )
            .unwrap();
            let (_, ks) = files.iter().find(|(r, _)| r.starts_with("ks/")).unwrap();
            let path = dir.path().join(format!("{variant}.ks"));
            std::fs::write(&path, ks).unwrap();
            for v in &versions {
                let out = std::process::Command::new("ksvalidator")
                    .args(["-e", "-v", v])
                    .arg(&path)
                    .output()
                    .expect("running ksvalidator");
                assert!(
                    out.status.success(),
                    "{variant} kickstart fails ksvalidator -v {v}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}
