//! `/etc/hostforge/updates.conf`: TOML in the shape of Zincati's configuration, so an operator
//! who knows one knows the other. Every key is optional; a missing file means the defaults
//! (follow the booted deployment's origin, reboot as soon as an update is staged).

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    updates: Updates,
    #[serde(default)]
    identity: Identity,
    #[serde(default)]
    remote: RemoteSection,
    #[serde(default)]
    rollback: RollbackSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackSection {
    boot_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Updates {
    strategy: Option<String>,
    fleet_lock: Option<FleetLockSection>,
    periodic: Option<PeriodicSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetLockSection {
    base_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodicSection {
    #[serde(default)]
    window: Vec<WindowSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    days: Vec<String>,
    start_time: String,
    length_minutes: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    group: Option<String>,
    node_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteSection {
    refspec: Option<String>,
}

/// When a staged update may reboot the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Immediate,
    Periodic(Vec<Window>),
    FleetLock { base_url: String },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Periodic(_) => "periodic",
            Strategy::FleetLock { .. } => "fleet_lock",
        }
    }
}

/// A weekly reboot window in UTC: starts on each of `days` (0 = Monday) at `start` minutes
/// after midnight and lasts `length` minutes (it may run into the next day).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub days: Vec<u32>,
    pub start: u32,
    pub length: u32,
}

const WEEK: u64 = 7 * 24 * 60;

impl Window {
    /// Whether `unix` (seconds since the epoch, UTC) falls inside the window.
    pub fn contains(&self, unix: u64) -> bool {
        let minutes = unix / 60;
        // 1970-01-01 was a Thursday: shift so that 0 is Monday 00:00.
        let in_week = (minutes + 3 * 24 * 60) % WEEK;
        self.days.iter().any(|d| {
            let start = u64::from(*d) * 24 * 60 + u64::from(self.start);
            (in_week + WEEK - start) % WEEK < u64::from(self.length)
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub strategy: Strategy,
    pub group: String,
    pub node_id: Option<String>,
    pub refspec: Option<String>,
    /// Boots a new deployment gets to come up healthy before GRUB goes back to the previous.
    pub boot_attempts: u8,
}

/// Boots a new deployment gets by default (greenboot's default too).
pub const DEFAULT_BOOT_ATTEMPTS: u8 = 3;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// FleetLock groups and node ids: what the protocol allows, nothing that could break a
/// JSON string or a log line.
fn check_name(what: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 253
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        bail!("{what} {v:?}: use letters, digits, '-', '.' and '_' (1 to 253 characters)");
    }
    Ok(())
}

fn parse_time(v: &str) -> Option<u32> {
    let (h, m) = v.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Config {
    /// Parses the file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let f: File = toml::from_str(text).with_context(|| format!("{origin}: not valid"))?;
        let strategy = match f.updates.strategy.as_deref().unwrap_or("immediate") {
            "immediate" => Strategy::Immediate,
            "periodic" => {
                let windows = f.updates.periodic.map(|p| p.window).unwrap_or_default();
                if windows.is_empty() {
                    bail!(
                        "{origin}: strategy \"periodic\" needs at least one \
                         [[updates.periodic.window]] (days, start_time, length_minutes)"
                    );
                }
                let mut out = Vec::new();
                for (i, w) in windows.into_iter().enumerate() {
                    let at = format!("{origin}: updates.periodic.window[{i}]");
                    let days = w
                        .days
                        .iter()
                        .map(|d| {
                            DAYS.iter()
                                .position(|n| n == d)
                                .map(|p| p as u32)
                                .with_context(|| {
                                    format!("{at}: day {d:?} is not one of {}", DAYS.join(", "))
                                })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    if days.is_empty() {
                        bail!("{at}: days is empty");
                    }
                    let start = parse_time(&w.start_time).with_context(|| {
                        format!("{at}: start_time {:?} is not HH:MM (UTC)", w.start_time)
                    })?;
                    if w.length_minutes == 0 || u64::from(w.length_minutes) > WEEK {
                        bail!("{at}: length_minutes must be 1 to {WEEK}");
                    }
                    out.push(Window {
                        days,
                        start,
                        length: w.length_minutes,
                    });
                }
                Strategy::Periodic(out)
            }
            "fleet_lock" => {
                let url = f.updates.fleet_lock.map(|s| s.base_url).with_context(|| {
                    format!("{origin}: strategy \"fleet_lock\" needs [updates.fleet_lock] base_url")
                })?;
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && !url.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    bail!("{origin}: updates.fleet_lock.base_url {url:?} is not an http(s) URL");
                }
                Strategy::FleetLock {
                    base_url: url.trim_end_matches('/').to_string(),
                }
            }
            other => bail!(
                "{origin}: updates.strategy {other:?} is not one of immediate, periodic, fleet_lock"
            ),
        };
        let group = f.identity.group.unwrap_or_else(|| "default".into());
        check_name(&format!("{origin}: identity.group"), &group)?;
        if let Some(id) = &f.identity.node_id {
            check_name(&format!("{origin}: identity.node_id"), id)?;
        }
        if let Some(r) = &f.remote.refspec {
            if !r.contains(':') || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("{origin}: remote.refspec {r:?} is not REMOTE:REF");
            }
        }
        let max = i64::from(crate::grubenv::MAX_ATTEMPTS);
        let boot_attempts = match f.rollback.boot_attempts {
            None => DEFAULT_BOOT_ATTEMPTS,
            Some(n) if (1..=max).contains(&n) => n as u8,
            Some(n) => bail!("{origin}: rollback.boot_attempts {n} is not between 1 and {max}"),
        };
        Ok(Config {
            strategy,
            group,
            node_id: f.identity.node_id,
            refspec: f.remote.refspec,
            boot_attempts,
        })
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &std::path::Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => Config::parse(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Config::parse("", &path.display().to_string())
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_origin_and_reboot_at_once() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.strategy, Strategy::Immediate);
        assert_eq!(c.group, "default");
        assert_eq!(c.refspec, None);
        assert_eq!(c.boot_attempts, DEFAULT_BOOT_ATTEMPTS);
        let c = Config::parse("[rollback]\nboot_attempts = 2\n", "t").unwrap();
        assert_eq!(c.boot_attempts, 2);
    }

    #[test]
    fn zincati_shaped_files_parse() {
        let c = Config::parse(
            "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\n\
             base_url = \"http://10.0.2.2:8080/\"\n[identity]\ngroup = \"workers\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.strategy,
            Strategy::FleetLock {
                base_url: "http://10.0.2.2:8080".into()
            }
        );
        assert_eq!(c.group, "workers");
        let c = Config::parse(
            "[updates]\nstrategy = \"periodic\"\n[[updates.periodic.window]]\n\
             days = [\"Sat\", \"Sun\"]\nstart_time = \"23:30\"\nlength_minutes = 60\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.strategy,
            Strategy::Periodic(vec![Window {
                days: vec![5, 6],
                start: 23 * 60 + 30,
                length: 60
            }])
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("[updates]\nstrategy = \"later\"\n", "updates.strategy"),
            ("[updates]\nstrategy = \"fleet_lock\"\n", "base_url"),
            (
                "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\nbase_url = \"http://a\\nb\"\n",
                "base_url",
            ),
            ("[updates]\nstrategy = \"periodic\"\n", "window"),
            (
                "[updates]\nstrategy = \"periodic\"\n[[updates.periodic.window]]\ndays = [\"Caturday\"]\nstart_time = \"01:00\"\nlength_minutes = 5\n",
                "Caturday",
            ),
            (
                "[updates]\nstrategy = \"periodic\"\n[[updates.periodic.window]]\ndays = [\"Mon\"]\nstart_time = \"25:00\"\nlength_minutes = 5\n",
                "start_time",
            ),
            ("[identity]\ngroup = \"a\\\"b\"\n", "identity.group"),
            ("[identity]\nnode_id = \"x\\ny\"\n", "identity.node_id"),
            ("[remote]\nrefspec = \"noremote\"\n", "remote.refspec"),
            ("[updates]\nstrategi = \"immediate\"\n", "strategi"),
            ("[rollback]\nboot_attempts = 0\n", "rollback.boot_attempts"),
            ("[rollback]\nboot_attempts = 10\n", "rollback.boot_attempts"),
        ] {
            let e = format!("{:#}", Config::parse(text, "updates.conf").unwrap_err());
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.contains("updates.conf"), "{e}");
        }
    }

    #[test]
    fn windows_wrap_over_midnight_and_the_week() {
        // 2026-12-05 is a Saturday.
        let sat_2340 = 1_796_428_800 + (23 * 60 + 40) * 60;
        let w = Window {
            days: vec![5],
            start: 23 * 60 + 30,
            length: 60,
        };
        assert!(w.contains(sat_2340));
        assert!(
            w.contains(sat_2340 + 40 * 60),
            "Sunday 00:20 is still inside"
        );
        assert!(
            !w.contains(sat_2340 + 60 * 60),
            "Sunday 00:40 is past the end"
        );
        assert!(!w.contains(sat_2340 - 20 * 60), "Saturday 23:20 is before");
        let sun = Window {
            days: vec![6],
            start: 23 * 60,
            length: 120,
        };
        // Sunday 23:00 + 90 minutes is Monday 00:30 of the next week.
        assert!(sun.contains(sat_2340 + (23 * 60 + 20) * 60 + 90 * 60));
    }
}
