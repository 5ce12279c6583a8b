//! Checks and quoting for strings that end up in generated files (kickstarts, PXE/GRUB/iPXE
//! configs, Foreman templates, GRUB menus, os-release, tmpfiles.d, keyfiles): each value is
//! held to what its place can carry, so no input adds a line, a directive, an argument or a
//! command. Every error names the field the user has to fix.

use anyhow::{bail, Result};

/// Characters that need no quoting in a kernel command line, a PXELINUX `APPEND`, a GRUB
/// `linux` line, an iPXE `kernel` line, a kickstart option or an ERB template.
fn plain_arg_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._,:/=@+%~-".contains(c)
}

/// `c` in a message: printable characters as they are, others by their escape.
fn shown(c: char) -> String {
    format!("{c:?}")
}

fn first_bad(v: &str, ok: impl Fn(char) -> bool) -> Option<char> {
    v.chars().find(|&c| !ok(c))
}

/// One kernel argument (`console=ttyS0,115200`), for command lines written into boot configs.
pub fn kernel_arg(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        bail!("{field}: empty kernel argument");
    }
    if let Some(c) = first_bad(v, plain_arg_char) {
        bail!(
            "{field}: kernel argument {v:?} contains {}; use one argument of letters, digits \
             and . _ , : / = @ + % ~ -",
            shown(c)
        );
    }
    Ok(())
}

/// An http:// or https:// URL without characters that a boot loader, a shell or a template
/// would read as syntax (percent-encode anything else).
pub fn http_url(field: &str, v: &str) -> Result<()> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"));
    let Some(rest) = rest else {
        bail!("{field}: {v:?} must be an http:// or https:// URL");
    };
    if rest.is_empty() || rest.starts_with('/') {
        bail!("{field}: {v:?} has no host");
    }
    if let Some(c) = first_bad(v, |c| plain_arg_char(c) || "?#[]!".contains(c)) {
        bail!(
            "{field}: URL {v:?} contains {}; percent-encode it (only letters, digits and \
             . _ , : / = @ + % ~ - ? # [ ] ! may appear as they are)",
            shown(c)
        );
    }
    Ok(())
}

/// An ostree ref (`hostforge/x86_64/node`): segments of letters, digits, `.`, `_` and `-`
/// separated by `/`, each starting with a letter, a digit or `_`, as ostree itself has them.
pub fn ostree_ref(field: &str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.split('/').all(|seg| {
            seg.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    if !ok {
        bail!(
            "{field}: {v:?} is not an ostree ref (segments of letters, digits, '.', '_' and '-' \
             separated by '/')"
        );
    }
    Ok(())
}

/// A name made of letters, digits, `-`, `_` and `.` (file names, stateroots, remotes, ...).
pub fn plain_name(field: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v == "."
        || v == ".."
        || first_bad(v, |c| c.is_ascii_alphanumeric() || "-_.".contains(c)).is_some()
    {
        bail!("{field}: {v:?} must be letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// A word of letters, digits and the characters in `extra` (locale names, keymaps, time
/// zones, crypt hashes, ...); `example` shows the user what is meant.
pub fn word(field: &str, v: &str, extra: &str, example: &str) -> Result<()> {
    if v.is_empty() {
        bail!("{field}: empty; expected something like {example}");
    }
    if let Some(c) = first_bad(v, |c| c.is_ascii_alphanumeric() || extra.contains(c)) {
        bail!(
            "{field}: {v:?} contains {}; expected something like {example}",
            shown(c)
        );
    }
    Ok(())
}

/// A host name as RFC 1123 has it: dot-separated labels of letters, digits and inner `-`.
pub fn hostname(field: &str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        bail!(
            "{field}: {v:?} is not a host name (labels of letters, digits and '-', dot-separated)"
        );
    }
    Ok(())
}

/// An IPv4 or IPv6 address.
pub fn ip_addr(field: &str, v: &str) -> Result<()> {
    if v.parse::<std::net::IpAddr>().is_err() {
        bail!("{field}: {v:?} is not an IP address");
    }
    Ok(())
}

/// Free text on one line (a version, a title): no control characters, nothing that shell
/// quoting would have to escape.
pub fn one_line_text(field: &str, v: &str) -> Result<()> {
    if let Some(c) = first_bad(v, |c| !c.is_control() && !"'\"`$\\".contains(c)) {
        bail!(
            "{field}: {v:?} contains {}; use one line without quotes, '`', '$' or '\\'",
            shown(c)
        );
    }
    Ok(())
}

/// An OpenPGP public key, armored (`-----BEGIN PGP PUBLIC KEY BLOCK-----`) or binary, as the
/// binary packets ostree's keyrings hold: checked to start with a public-key packet.
pub fn openpgp_public_key(field: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let binary = match std::str::from_utf8(bytes) {
        Ok(text) if text.trim_start().starts_with(BEGIN) => {
            // Armor: the header line, "Key: value" headers, a blank line, base64 lines, an
            // optional "=CRC" line, the END line.
            let mut lines = text.trim_start().lines().skip(1);
            for l in lines.by_ref() {
                if l.trim().is_empty() {
                    break;
                }
            }
            let body: String = lines
                .take_while(|l| !l.starts_with('=') && !l.starts_with("-----END"))
                .map(str::trim)
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| {
                    anyhow::anyhow!("{field}: the armored key's body is not base64: {e}")
                })?
        }
        _ => bytes.to_vec(),
    };
    // Packet tag 6 (public key), old format (0b10tttt_ll) or new format (0b11tttttt).
    let tag = match binary.first() {
        Some(b) if b & 0xc0 == 0x80 => (b >> 2) & 0x0f,
        Some(b) if b & 0xc0 == 0xc0 => b & 0x3f,
        _ => 0,
    };
    if tag != 6 {
        bail!("{field}: not an OpenPGP public key (export one with `gpg --export --armor KEYID`)");
    }
    Ok(binary)
}

/// An SSH public key line, `TYPE BASE64 [COMMENT]`, safe inside double or single quotes.
pub fn ssh_key(field: &str, v: &str) -> Result<()> {
    let mut parts = v.split(' ');
    let kind = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let comment: Vec<&str> = parts.collect();
    let ok = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-@.".contains(c))
        && !blob.is_empty()
        && blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        && comment.iter().all(|w| {
            w.chars()
                .all(|c| c.is_ascii_graphic() && !"'\"`$\\<>".contains(c))
        });
    if !ok {
        bail!(
            "{field}: {v:?} is not a public key line like \"ssh-ed25519 AAAA... user@host\" \
             (one line; no quotes, '`', '$', '\\', '<' or '>' in the comment)"
        );
    }
    Ok(())
}

/// A script placed inside a kickstart section: no line may start a section of its own.
pub fn kickstart_script(field: &str, v: &str) -> Result<()> {
    for (i, line) in v.lines().enumerate() {
        if line.trim_start().starts_with('%') {
            bail!(
                "{field}: line {}: {line:?} starts with '%', which kickstart reads as a section \
                 marker (%end, %include, ...); indent it inside a shell construct or drop it",
                i + 1
            );
        }
    }
    if v.contains('\r') {
        bail!("{field}: contains a carriage return; use Unix line ends");
    }
    Ok(())
}

/// Text shown literally by an ERB template (Foreman): `<%` would open Ruby code.
pub fn erb_literal(v: &str) -> String {
    v.replace("<%", "<%%")
}

/// `v` as one word in a GRUB script: as it is when it has no special characters, else in
/// single quotes (a `'` inside as `'\''`). The node's `grub-mkconfig` applies the same rule.
pub fn grub_word(v: &str) -> String {
    if !v.is_empty() && v.chars().all(plain_arg_char) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// A path as one field of a tmpfiles.d line: `%` doubled (specifiers), spaces, quotes and
/// backslashes escaped with a backslash, as systemd-tmpfiles reads them back. A control
/// character cannot be written in a field: such a path is refused.
pub fn tmpfiles_path(v: &str) -> Result<String> {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            c if c.is_control() => {
                bail!("{v:?}: a path with control characters cannot be written to tmpfiles.d")
            }
            '%' => out.push_str("%%"),
            ' ' | '\\' | '"' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A symlink target as the last field of a tmpfiles.d `L` line: `%` doubled (specifiers);
/// control characters or spaces around it cannot be written there, so such a target is
/// refused, `path` (the link) named.
pub fn tmpfiles_link_target(path: &str, target: &str) -> Result<String> {
    if target.chars().any(char::is_control) || target.trim() != target {
        bail!(
            "{path}: the symlink's target {target:?} cannot be written as a tmpfiles.d line \
             (control characters or surrounding spaces)"
        );
    }
    Ok(target.replace('%', "%%"))
}

/// A systemd unit name (`foo.service`, `getty@ttyS0.service`), never a path.
pub fn unit_name(field: &str, v: &str) -> Result<()> {
    let ok = v.contains('.')
        && !v.starts_with('.')
        && v.len() <= 255
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c));
    if !ok {
        bail!("{field}: {v:?} is not a systemd unit name like sshd.service");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings that try to add a line, a directive, an argument or a command.
    pub const SMUGGLED: &[&str] = &[
        "x\nreboot",
        "x\r\n%post",
        "x y",
        "x\ty",
        "x;reboot",
        "x$(id)",
        "x`id`",
        "x'y",
        "x\"y",
        "x<%= 1 %>",
        "x}y",
        "x&&y",
        "x|y",
        "",
    ];

    #[test]
    fn smuggled_strings_are_refused_everywhere() {
        for s in SMUGGLED {
            assert!(kernel_arg("kargs", s).is_err(), "{s:?}");
            if !s.is_empty() {
                assert!(http_url("url", &format!("http://h/{s}")).is_err(), "{s:?}");
            }
            assert!(ostree_ref("ref", s).is_err(), "{s:?}");
            assert!(plain_name("name", s).is_err(), "{s:?}");
            assert!(word("lang", s, "_.@-", "en_US.UTF-8").is_err(), "{s:?}");
            assert!(hostname("hostname", s).is_err(), "{s:?}");
            assert!(ip_addr("ip", s).is_err(), "{s:?}");
            assert!(unit_name("units", s).is_err(), "{s:?}");
            if s.chars().any(|c| c.is_control() || "'\"`$".contains(c)) {
                assert!(one_line_text("version", s).is_err(), "{s:?}");
            }
            assert!(
                ssh_key("ssh-keys", &format!("ssh-ed25519 AAAA {s}")).is_err()
                    || !s.chars().any(|c| c.is_control() || "'\"`$<>".contains(c)),
                "{s:?}"
            );
        }
    }

    #[test]
    fn ordinary_values_pass() {
        kernel_arg("kargs", "console=ttyS0,115200n8").unwrap();
        kernel_arg("kargs", "root=UUID=0b4c-11").unwrap();
        http_url("url", "http://10.0.2.2:8080/repo").unwrap();
        http_url("url", "https://[::1]:8443/a/b?c=d#e").unwrap();
        ostree_ref("ref", "hostforge/x86_64/node").unwrap();
        ostree_ref("ref", "fedora/39/x86_64/coreos").unwrap();
        assert!(ostree_ref("ref", "a//b").is_err());
        assert!(ostree_ref("ref", "/a").is_err());
        hostname("hostname", "node7.example.net").unwrap();
        assert!(hostname("hostname", "-a.b").is_err());
        ip_addr("ip", "192.0.2.1").unwrap();
        ip_addr("ip", "2001:db8::1").unwrap();
        ssh_key("ssh-keys", "ssh-ed25519 AAAAC3Nz+/= ops@example").unwrap();
        ssh_key("ssh-keys", "ssh-rsa AAAAB3").unwrap();
        assert!(ssh_key("ssh-keys", "ssh-rsa").is_err());
        unit_name("units", "getty@ttyS0.service").unwrap();
        assert!(unit_name("units", "../x.service").is_err());
        one_line_text("version", "39.20240101.0 (Forty)").unwrap();
    }

    #[test]
    fn kickstart_scripts_cannot_close_their_section() {
        kickstart_script("post", "echo 100% done\nsystemctl enable sshd\n").unwrap();
        let e = kickstart_script("post", "echo hi\n%end\nrootpw x\n").unwrap_err();
        assert!(format!("{e:#}").contains("post: line 2"), "{e:#}");
        assert!(kickstart_script("post", "  %include http://x/y").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(grub_word("console=ttyS0"), "console=ttyS0");
        assert_eq!(grub_word("a;b"), "'a;b'");
        assert_eq!(grub_word("it's"), "'it'\\''s'");
        assert_eq!(grub_word(""), "''");
        assert_eq!(erb_literal("a <%= x %> b"), "a <%%= x %> b");
        assert_eq!(tmpfiles_path("/var/a b%h").unwrap(), "/var/a\\ b%%h");
        assert!(tmpfiles_path("/var/a\nb").is_err());
        assert_eq!(
            tmpfiles_link_target("/var/l", "../x%y z").unwrap(),
            "../x%%y z"
        );
        assert!(tmpfiles_link_target("/var/l", "x\ny").is_err());
        assert!(tmpfiles_link_target("/var/l", " x").is_err());
    }
    #[test]
    fn openpgp_keys_are_checked_and_dearmored() {
        use base64::Engine;
        let packets: Vec<u8> = [0x99u8, 0x00, 0x33, 0x04, 1, 2, 3].to_vec();
        let body = base64::engine::general_purpose::STANDARD.encode(&packets);
        let armored = format!(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: test\n\n{body}\n=abcd\n\
             -----END PGP PUBLIC KEY BLOCK-----\n"
        );
        assert_eq!(
            openpgp_public_key("k", armored.as_bytes()).unwrap(),
            packets
        );
        assert_eq!(openpgp_public_key("k", &packets).unwrap(), packets);
        // New packet format, tag 6.
        assert!(openpgp_public_key("k", &[0xc6, 0x01, 0x00]).is_ok());
        for bad in [
            &b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nreboot\n%end\n"[..],
            b"ssh-ed25519 AAAA",
            &[0x95, 0x00][..],
            b"",
        ] {
            assert!(openpgp_public_key("k", bad).is_err(), "{bad:?}");
        }
    }
}
