//! The node's first-boot configuration, written into the deployments of an installed disk or
//! a built image: the provisioning spec's host name, root's password hash and SSH keys, its
//! network and time zone. (Its kernel arguments go to the deploy itself.) Every value was
//! held to its place by [`crate::provision::Spec::validate`]; nothing here adds a line that
//! the spec did not check.

use crate::provision::{Network, Spec};
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The networkd file the config's network lands in; it sorts before the node's own DHCP
/// default (`80-hostforge-dhcp.network`), so it wins for the links it matches.
pub const NETWORK_FILE: &str = "etc/systemd/network/10-hostforge-first-boot.network";

/// Writes `spec` into each deployment directory in `deployments` (their /etc) and into the
/// stateroot's shared `/var` at `var` (root's home); returns what it set, for the step line.
pub fn apply(deployments: &[&Path], var: &Path, spec: &Spec) -> Result<String> {
    let mut done = Vec::new();
    let network = network_file(&spec.network)?;
    for dep in deployments {
        let etc = dep.join("etc");
        if let Some(h) = &spec.network.hostname {
            write(&etc.join("hostname"), &format!("{h}\n"), 0o644)?;
        }
        // Without a hash root's password is locked, as the spec says: a fixture tree's empty
        // password must not survive into a node someone can reach.
        set_root_password(&etc.join("shadow"), spec.root_password_hash.as_deref())?;
        if let Some(text) = &network {
            write(&dep.join(NETWORK_FILE), text, 0o644)?;
        }
        if spec.timezone != "Etc/UTC" {
            let zone = dep.join("usr/share/zoneinfo").join(&spec.timezone);
            if !zone.is_file() {
                bail!(
                    "timezone {}: the tree has no /usr/share/zoneinfo/{} (install tzdata)",
                    spec.timezone,
                    spec.timezone
                );
            }
            let link = etc.join("localtime");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(
                Path::new("../usr/share/zoneinfo").join(&spec.timezone),
                &link,
            )
            .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    if let Some(h) = &spec.network.hostname {
        done.push(format!("hostname {h}"));
    }
    done.push(match spec.root_password_hash {
        Some(_) => "root password".to_string(),
        None => "root password locked".to_string(),
    });
    if !spec.ssh_keys.is_empty() {
        let home = var.join("roothome");
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
        for d in [&home, &ssh] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        let keys: String = spec.ssh_keys.iter().map(|k| format!("{k}\n")).collect();
        write(&ssh.join("authorized_keys"), &keys, 0o600)?;
        done.push(format!("{} ssh key(s)", spec.ssh_keys.len()));
    }
    if network.is_some() {
        done.push("network".to_string());
    }
    Ok(done.join(", "))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Sets root's password field in `shadow` to `hash`, or locks it (`!`) without one.
fn set_root_password(shadow: &Path, hash: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(shadow)
        .with_context(|| format!("reading {} (root's password goes there)", shadow.display()))?;
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut fields: Vec<&str> = l.split(':').collect();
            if fields.first() == Some(&"root") && fields.len() >= 2 {
                found = true;
                fields[1] = hash.unwrap_or("!");
            }
            fields.join(":")
        })
        .collect();
    if !found {
        bail!("{} has no entry for root", shadow.display());
    }
    let meta = std::fs::metadata(shadow)?;
    std::fs::write(shadow, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", shadow.display()))?;
    std::fs::set_permissions(shadow, meta.permissions())?;
    Ok(())
}

/// The networkd file for `net`, or `None` when it asks for nothing beyond DHCP on every
/// wired link (what the node does anyway).
pub fn network_file(net: &Network) -> Result<Option<String>> {
    let default = Network::default();
    if net.bootproto == "dhcp" && net.device == default.device && net.nameservers.is_empty() {
        return Ok(None);
    }
    let mut text = String::from("# Written by hostforge from the first-boot config.\n[Match]\n");
    if net.device == "link" {
        text.push_str("Type=ether\n");
    } else if net.device.split(':').count() == 6 {
        text.push_str(&format!("MACAddress={}\n", net.device));
    } else {
        text.push_str(&format!("Name={}\n", net.device));
    }
    text.push_str("\n[Network]\n");
    if net.bootproto == "static" {
        let (ip, mask, gw) = match (&net.ip, &net.netmask, &net.gateway) {
            (Some(ip), Some(mask), Some(gw)) => (ip, mask, gw),
            _ => bail!("network: bootproto static needs ip, netmask and gateway"),
        };
        text.push_str(&format!("Address={ip}/{}\n", prefix_len(mask)?));
        text.push_str(&format!("Gateway={gw}\n"));
    } else {
        text.push_str("DHCP=yes\n");
    }
    for ns in &net.nameservers {
        text.push_str(&format!("DNS={ns}\n"));
    }
    Ok(Some(text))
}

/// `24` or `255.255.255.0` as a prefix length.
fn prefix_len(mask: &str) -> Result<u8> {
    if let Ok(n) = mask.parse::<u8>() {
        return Ok(n);
    }
    let bits = u32::from(
        mask.parse::<std::net::Ipv4Addr>()
            .map_err(|_| anyhow!("network.netmask {mask:?}: a prefix length or a netmask"))?,
    );
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        bail!("network.netmask {mask:?} is not a contiguous netmask");
    }
    Ok(bits.leading_ones() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<Spec> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spec.yaml");
        std::fs::write(&p, yaml).unwrap();
        Spec::load(&p)
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("dep/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("shadow"),
            "root::19000:0:99999:7:::\nbin:*:19000::::::\n",
        )
        .unwrap();
        std::fs::write(etc.join("hostname"), "node\n").unwrap();
        d
    }

    #[test]
    fn hostname_password_keys_and_static_network_land_in_place() {
        let s = spec(
            "root-password-hash: $6$salt$abc\nssh-keys: [ssh-ed25519 AAAAC3Nz test@host]\n\
             network: {bootproto: static, device: eth0, ip: 10.0.2.15, netmask: 255.255.255.0, \
             gateway: 10.0.2.2, nameservers: [10.0.2.3], hostname: worker-7}\n",
        )
        .unwrap();
        let d = tree();
        let dep = d.path().join("dep");
        let detail = apply(&[&dep], &d.path().join("var"), &s).unwrap();
        assert_eq!(
            detail,
            "hostname worker-7, root password, 1 ssh key(s), network"
        );
        let r = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(r("dep/etc/hostname"), "worker-7\n");
        assert_eq!(
            r("dep/etc/shadow"),
            "root:$6$salt$abc:19000:0:99999:7:::\nbin:*:19000::::::\n"
        );
        assert_eq!(
            r("var/roothome/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3Nz test@host\n"
        );
        let mode = |p: &str| {
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("var/roothome/.ssh"), 0o700);
        assert_eq!(mode("var/roothome/.ssh/authorized_keys"), 0o600);
        assert_eq!(
            r(&format!("dep/{NETWORK_FILE}")),
            "# Written by hostforge from the first-boot config.\n[Match]\nName=eth0\n\n\
             [Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\n"
        );
    }

    #[test]
    fn keys_alone_lock_roots_password_and_dhcp_needs_no_file() {
        let s = spec("ssh-keys: [ssh-ed25519 AAAAC3Nz]\n").unwrap();
        let d = tree();
        let dep = d.path().join("dep");
        apply(&[&dep], &d.path().join("var"), &s).unwrap();
        let shadow = std::fs::read_to_string(dep.join("etc/shadow")).unwrap();
        assert!(shadow.starts_with("root:!:19000:"), "{shadow}");
        assert!(!dep.join(NETWORK_FILE).exists());
        assert_eq!(
            std::fs::read_to_string(dep.join("etc/hostname")).unwrap(),
            "node\n"
        );
    }

    /// A newline (or anything else out of place) in a value never reaches a file: the
    /// spec is refused with the key named.
    #[test]
    fn smuggled_lines_are_refused_by_key() {
        for (yaml, key) in [
            ("ssh-keys: [\"ssh-ed25519 AAAA\\nroot2\"]\n", "ssh-keys"),
            (
                "ssh-keys: [ssh-ed25519 AAAA]\nnetwork: {hostname: \"a\\nb\"}\n",
                "network.hostname",
            ),
            (
                "ssh-keys: [ssh-ed25519 AAAA]\nnetwork: {device: \"eth0\\n[Network]\"}\n",
                "network.device",
            ),
            (
                "root-password-hash: \"$6$a\\nroot2::0:0\"\n",
                "root-password-hash",
            ),
            (
                "ssh-keys: [ssh-ed25519 AAAA]\nkargs: [\"quiet\\ninit=/bin/sh\"]\n",
                "kargs",
            ),
            (
                "ssh-keys: [ssh-ed25519 AAAA]\ntimezone: \"../../etc/shadow\"\n",
                "timezone",
            ),
        ] {
            let err = format!("{:#}", spec(yaml).unwrap_err());
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_len("24").unwrap(), 24);
        assert_eq!(prefix_len("255.255.0.0").unwrap(), 16);
        assert!(prefix_len("255.0.255.0").is_err());
    }
}
