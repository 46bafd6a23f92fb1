//! Login text keys (RFC 7143 §6, §13): parsing `key=value\0` data segments and negotiating the
//! operational parameters with the rules of each key (min, max, boolean AND/OR, declarative,
//! list selection).

/// Longest key name (RFC 7143 §6.1).
const MAX_KEY: usize = 63;
/// Longest value accepted (RFC 7143 §6.1 allows 8192 for some values; binary items in CHAP may
/// be longer in hex, bounded by the total text limit).
const MAX_VALUE: usize = 8192;
/// Bound on the text of one login exchange, including continuations.
pub const MAX_TEXT: usize = 65536;

/// Parses a text data segment. Duplicate keys, empty keys, missing `=`, over-long items and
/// non-UTF-8 bytes are errors.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    if data.len() > MAX_TEXT {
        return Err("login text too long".into());
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for item in data.split(|&b| b == 0).filter(|i| !i.is_empty()) {
        let item = std::str::from_utf8(item).map_err(|_| "login text is not UTF-8".to_string())?;
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("text item without '=': {item:.40}"))?;
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return Err(format!("bad text key or value length for {k:.40}"));
        }
        if !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-+@_:".contains(&c))
        {
            return Err(format!("bad character in key {k:.40}"));
        }
        if out.iter().any(|(ok, _)| ok == k) {
            return Err(format!("key {k} sent twice"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Appends `key=value\0` to a data segment being built.
pub fn push(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Parses an iSCSI numerical value (decimal or `0x` hex).
pub fn number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) if !h.is_empty() && h.len() <= 16 => u64::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None if !v.is_empty() && v.len() <= 20 && v.bytes().all(|c| c.is_ascii_digit()) => {
            v.parse().ok()
        }
        None => None,
    }
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// The initiator's proposals for the operational stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Value offered for HeaderDigest / DataDigest, e.g. `None,CRC32C`.
    pub header_digest: &'static str,
    pub data_digest: &'static str,
    /// What we can receive in one PDU (declarative).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            header_digest: "None",
            data_digest: "None",
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16_776_192,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
        }
    }
}

impl Offer {
    /// The key list sent in the first operational-stage request.
    pub fn keys(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", self.header_digest.to_string()),
            ("DataDigest", self.data_digest.to_string()),
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("ImmediateData", yes_no(self.immediate_data).to_string()),
            ("InitialR2T", yes_no(self.initial_r2t).to_string()),
            ("MaxOutstandingR2T", self.max_outstanding_r2t.to_string()),
            ("DataPDUInOrder", "Yes".to_string()),
            ("DataSequenceInOrder", "Yes".to_string()),
            ("ErrorRecoveryLevel", "0".to_string()),
            ("DefaultTime2Wait", "2".to_string()),
            ("DefaultTime2Retain", "0".to_string()),
            ("MaxConnections", "1".to_string()),
        ]
    }
}

/// The negotiated session parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we may send (the target's declaration; 8192 if it declares none).
    pub target_max_recv_dsl: u32,
    /// Largest data segment the target may send us (our declaration).
    pub our_max_recv_dsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
}

impl Params {
    /// What holds if the target answers nothing: our offer combined with the RFC defaults.
    pub fn from_offer(o: &Offer) -> Self {
        Params {
            header_digest: false,
            data_digest: false,
            target_max_recv_dsl: 8192,
            our_max_recv_dsl: o.max_recv_data_segment_length,
            max_burst_length: o.max_burst_length.min(262_144),
            first_burst_length: o.first_burst_length.min(65_536),
            immediate_data: o.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }

    /// Applies one key from a login response. Returns the answer we owe if the target proposed
    /// a key we did not offer.
    pub fn apply(
        &mut self,
        offer: &Offer,
        key: &str,
        value: &str,
    ) -> Result<Option<String>, String> {
        let bad = || format!("target answered {key}={value:.40}, which is not acceptable");
        let num = |lo: u64, hi: u64| {
            number(value)
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(bad)
        };
        // Answers that carry no value: the default stays in force.
        if matches!(value, "Irrelevant" | "NotUnderstood" | "Reject") {
            return match key {
                "HeaderDigest" | "DataDigest" if !offered_none(offer, key) => Err(bad()),
                _ => Ok(None),
            };
        }
        match key {
            "HeaderDigest" | "DataDigest" => {
                let on = match value {
                    "CRC32C" => true,
                    "None" => false,
                    _ => return Err(bad()),
                };
                let offered = if key == "HeaderDigest" {
                    offer.header_digest
                } else {
                    offer.data_digest
                };
                if !offered.split(',').any(|o| o == value) {
                    return Err(bad());
                }
                if key == "HeaderDigest" {
                    self.header_digest = on;
                } else {
                    self.data_digest = on;
                }
            }
            "MaxRecvDataSegmentLength" => self.target_max_recv_dsl = num(512, 16_777_215)? as u32,
            "MaxBurstLength" => {
                self.max_burst_length = offer.max_burst_length.min(num(512, 16_777_215)? as u32)
            }
            "FirstBurstLength" => {
                self.first_burst_length = offer.first_burst_length.min(num(512, 16_777_215)? as u32)
            }
            "MaxOutstandingR2T" => {
                self.max_outstanding_r2t = offer.max_outstanding_r2t.min(num(1, 65_535)? as u32)
            }
            "ImmediateData" => {
                self.immediate_data = offer.immediate_data && boolean(value).ok_or_else(bad)?
            }
            "InitialR2T" => {
                self.initial_r2t = offer.initial_r2t || boolean(value).ok_or_else(bad)?
            }
            "DataPDUInOrder" => self.data_pdu_in_order = boolean(value).ok_or_else(bad)?,
            "DataSequenceInOrder" => {
                self.data_sequence_in_order = boolean(value).ok_or_else(bad)?
            }
            "ErrorRecoveryLevel" => {
                // min(0, x) is 0 whatever the target says, but the value must be well formed.
                num(0, 2)?;
            }
            "MaxConnections" => {
                num(1, 65_535)?;
            }
            "DefaultTime2Wait" | "DefaultTime2Retain" => {
                num(0, 3600)?;
            }
            // Declarations we take note of but do not use.
            "TargetAlias"
            | "TargetPortalGroupTag"
            | "TargetAddress"
            | "SessionType"
            | "TargetName"
            | "InitiatorName"
            | "InitiatorAlias"
            | "IFMarker"
            | "OFMarker" => {}
            _ => return Ok(Some("NotUnderstood".into())),
        }
        // The result must satisfy FirstBurstLength <= MaxBurstLength (RFC 7143 §13.14).
        self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
        Ok(None)
    }
}

fn offered_none(offer: &Offer, key: &str) -> bool {
    let o = if key == "HeaderDigest" {
        offer.header_digest
    } else {
        offer.data_digest
    };
    o.split(',').any(|v| v == "None")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_build() {
        let mut d = Vec::new();
        push(&mut d, "A", "1");
        push(&mut d, "TargetName", "iqn.x:y");
        assert_eq!(d, b"A=1\0TargetName=iqn.x:y\0");
        let kv = parse(&d).unwrap();
        assert_eq!(
            kv,
            vec![
                ("A".into(), "1".into()),
                ("TargetName".into(), "iqn.x:y".into())
            ]
        );
        assert!(parse(b"A=1\0A=2\0").is_err());
        assert!(parse(b"novalue\0").is_err());
        assert!(parse(b"=x\0").is_err());
        assert!(parse(b"A=\xff\0").is_err());
        assert_eq!(parse(b"A=\0").unwrap(), vec![("A".into(), String::new())]);
        assert_eq!(number("0x10"), Some(16));
        assert_eq!(number("42"), Some(42));
        assert_eq!(number("-1"), None);
        assert_eq!(number("0x"), None);
    }

    fn negotiate(offer: &Offer, answers: &[(&str, &str)]) -> Result<Params, String> {
        let mut p = Params::from_offer(offer);
        for (k, v) in answers {
            p.apply(offer, k, v)?;
        }
        Ok(p)
    }

    #[test]
    fn rfc_rules() {
        let offer = Offer {
            header_digest: "CRC32C,None",
            data_digest: "None,CRC32C",
            ..Offer::default()
        };
        let p = negotiate(
            &offer,
            &[
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "8192"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "524288"),
                ("ImmediateData", "No"),
                ("InitialR2T", "Yes"),
                ("MaxOutstandingR2T", "16"),
                ("ErrorRecoveryLevel", "0"),
            ],
        )
        .unwrap();
        assert!(p.header_digest && !p.data_digest);
        assert_eq!(p.target_max_recv_dsl, 8192);
        // min functions.
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.max_outstanding_r2t, 1);
        // FirstBurstLength: min(ours 262144, theirs 524288), then capped by MaxBurstLength.
        assert_eq!(p.first_burst_length, 262_144);
        // AND / OR.
        assert!(!p.immediate_data);
        assert!(p.initial_r2t);
        let p = negotiate(&offer, &[("ImmediateData", "Yes"), ("InitialR2T", "No")]).unwrap();
        assert!(p.immediate_data && !p.initial_r2t);
        // OR: our No with their Yes is Yes; our Yes with their No is still Yes.
        let yes = Offer {
            initial_r2t: true,
            ..offer
        };
        assert!(
            negotiate(&yes, &[("InitialR2T", "No")])
                .unwrap()
                .initial_r2t
        );
        let no_imm = Offer {
            immediate_data: false,
            ..offer
        };
        assert!(
            !negotiate(&no_imm, &[("ImmediateData", "Yes")])
                .unwrap()
                .immediate_data
        );
    }

    #[test]
    fn defaults_and_refusals() {
        let offer = Offer::default();
        let p = negotiate(&offer, &[]).unwrap();
        assert_eq!(p.target_max_recv_dsl, 8192);
        assert_eq!(p.first_burst_length, 65_536);
        assert!(p.initial_r2t);
        // A digest we did not offer, out-of-range numbers, bad booleans.
        assert!(negotiate(&offer, &[("HeaderDigest", "CRC32C")]).is_err());
        assert!(negotiate(&offer, &[("MaxRecvDataSegmentLength", "100")]).is_err());
        assert!(negotiate(&offer, &[("MaxBurstLength", "99999999999")]).is_err());
        assert!(negotiate(&offer, &[("ImmediateData", "maybe")]).is_err());
        let crc_only = Offer {
            data_digest: "CRC32C",
            ..offer
        };
        assert!(negotiate(&crc_only, &[("DataDigest", "Reject")]).is_err());
        assert!(
            !negotiate(&offer, &[("DataDigest", "Reject")])
                .unwrap()
                .data_digest
        );
        let mut p = Params::from_offer(&offer);
        assert_eq!(
            p.apply(&offer, "X-Vendor", "1").unwrap().as_deref(),
            Some("NotUnderstood")
        );
        assert_eq!(p.apply(&offer, "TargetAlias", "disk").unwrap(), None);
    }
}
