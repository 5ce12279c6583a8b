//! The FleetLock client (coreos/zincati's `docs/development/fleetlock/protocol.md`): a node
//! takes its group's reboot lock with `POST /v1/pre-reboot` before rebooting into an update
//! and gives it back with `POST /v1/steady-state` once it has booted well. A 200 answer means
//! yes; anything else means no, with the server's `{"kind", "value"}` as the reason.

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// systemd's `sd_id128_get_machine_app_specific` for this program's application id: a stable
/// node id that does not reveal the machine id (Zincati reports its node the same way).
pub fn app_specific_id(machine_id: &str) -> Result<String> {
    const APP: [u8; 16] = [
        0x7c, 0x1e, 0x52, 0x0a, 0x93, 0x4d, 0x4b, 0x61, 0xa5, 0x0e, 0x2f, 0x6b, 0x88, 0xd1, 0x3c,
        0x57,
    ];
    let m = machine_id.trim();
    if m.len() != 32 {
        bail!("/etc/machine-id {m:?} is not a machine id (32 hex digits)");
    }
    let key = hex::decode(m).with_context(|| format!("/etc/machine-id {m:?} is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(&APP);
    let mut id: [u8; 16] = mac.finalize().into_bytes()[..16].try_into().unwrap();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

pub struct Client {
    base_url: String,
    id: String,
    group: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base_url: &str, id: &str, group: &str) -> Client {
        Client {
            base_url: base_url.to_string(),
            id: id.to_string(),
            group: group.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// Ok(true) when the server granted (`pre-reboot`) or released (`steady-state`) the lock;
    /// Ok(false) with the reason printed when it said no; Err when it could not be asked.
    fn call(&self, op: &str) -> Result<Result<(), String>> {
        let url = format!("{}/v1/{op}", self.base_url);
        let body = serde_json::json!({
            "client_params": {"node": {"id": self.id, "group": self.group}}
        });
        match self
            .agent
            .post(&url)
            .set("fleet-lock-protocol", "true")
            .set("content-type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) if r.status() == 200 => Ok(Ok(())),
            Ok(r) => Ok(Err(format!("HTTP {}", r.status()))),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let why = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .map(|v| {
                        format!(
                            "{}: {}",
                            v["kind"].as_str().unwrap_or("?"),
                            v["value"].as_str().unwrap_or("")
                        )
                    })
                    .unwrap_or_else(|| text.chars().take(200).collect());
                Ok(Err(format!("HTTP {code} ({})", why.escape_debug())))
            }
            Err(e) => Err(e).with_context(|| format!("asking the FleetLock server at {url}")),
        }
    }

    /// Asks for the reboot lock.
    pub fn pre_reboot(&self) -> Result<Result<(), String>> {
        self.call("pre-reboot")
    }

    /// Gives the lock back.
    pub fn steady_state(&self) -> Result<Result<(), String>> {
        self.call("steady-state")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids_are_stable_uuid4_shaped_and_hide_the_machine_id() {
        let m = "0123456789abcdef0123456789abcdef";
        let a = super::app_specific_id(m).unwrap();
        assert_eq!(a, super::app_specific_id(&format!("{m}\n")).unwrap());
        assert_eq!(a.len(), 32);
        assert_eq!(&a[12..13], "4", "{a}");
        assert!("89ab".contains(&a[16..17]), "{a}");
        assert_ne!(a, m);
        assert!(super::app_specific_id("").is_err());
        assert!(super::app_specific_id("zz23456789abcdef0123456789abcdef").is_err());
    }
}
