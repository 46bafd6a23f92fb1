//! Rate limiters between the configuration and the devices: the API's (Firecracker's) shapes
//! to `ferry_devices::rate_limiter`'s, the command-line forms (`--disk …,bps=,iops=` and
//! `--net …,rx-bps=,tx-pps=`), and the PATCH of a running guest's limiters, which updates the
//! device and the configuration together (so `GET /vm/config`, snapshots and migrations carry
//! the new limits).

use ferry_api::{RateLimiter, TokenBucket, VmConfig};
use ferry_devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

use crate::virtio_devices::VirtioDevices;
use crate::VmmError;

/// The device form of a configured limiter (`None`: unlimited).
pub fn device_config(limiter: Option<&RateLimiter>) -> RateLimiterConfig {
    let bucket = |b: &Option<TokenBucket>| {
        b.as_ref()
            .filter(|b| b.size != 0)
            .map(|b| TokenBucketConfig {
                size: b.size,
                one_time_burst: b.one_time_burst.unwrap_or(0),
                refill_time_ms: b.refill_time,
            })
    };
    limiter.map_or_else(RateLimiterConfig::default, |l| RateLimiterConfig {
        bandwidth: bucket(&l.bandwidth),
        ops: bucket(&l.ops),
    })
}

/// Applies `PATCH /drives/{id}`'s `rate_limiter` to the running device and the configuration.
pub fn patch_drive(
    config: &mut VmConfig,
    virtio: &VirtioDevices,
    drive_id: &str,
    patch: &RateLimiter,
) -> Result<(), VmmError> {
    let drive = config
        .drives
        .iter_mut()
        .find(|d| d.drive_id == drive_id)
        .ok_or_else(|| VmmError::Config(format!("no drive '{drive_id}'")))?;
    let new = RateLimiter::patched(drive.rate_limiter.as_ref(), patch);
    virtio.set_drive_rate_limiter(drive_id, &device_config(new.as_ref()))?;
    drive.rate_limiter = new;
    Ok(())
}

/// Applies `PATCH /network-interfaces/{id}`'s limiters to the running device and the
/// configuration; a direction not given stays as it is.
pub fn patch_net(
    config: &mut VmConfig,
    virtio: &VirtioDevices,
    iface_id: &str,
    rx: Option<&RateLimiter>,
    tx: Option<&RateLimiter>,
) -> Result<(), VmmError> {
    let net = config
        .nets
        .iter_mut()
        .find(|n| n.iface_id == iface_id)
        .ok_or_else(|| VmmError::Config(format!("no network interface '{iface_id}'")))?;
    let new_rx = rx.map(|p| RateLimiter::patched(net.rx_rate_limiter.as_ref(), p));
    let new_tx = tx.map(|p| RateLimiter::patched(net.tx_rate_limiter.as_ref(), p));
    virtio.set_net_rate_limiters(
        iface_id,
        new_rx.as_ref().map(|l| device_config(l.as_ref())).as_ref(),
        new_tx.as_ref().map(|l| device_config(l.as_ref())).as_ref(),
    )?;
    if let Some(rx) = new_rx {
        net.rx_rate_limiter = rx;
    }
    if let Some(tx) = new_tx {
        net.tx_rate_limiter = tx;
    }
    Ok(())
}

/// One direction's limits as given on the command line.
#[derive(Debug, Default)]
pub struct CliLimit {
    bytes: Option<u64>,
    ops: Option<u64>,
    bytes_burst: Option<u64>,
    ops_burst: Option<u64>,
}

impl CliLimit {
    /// Takes `key=value` when `key` is one of `bps`, `<ops_name>`, `bps-burst`,
    /// `<ops_name>-burst`; `Ok(false)` for any other key.
    pub fn accept(&mut self, key: &str, value: &str, ops_name: &str) -> Result<bool, String> {
        let slot = match key.strip_suffix("-burst") {
            Some("bps") => &mut self.bytes_burst,
            Some(k) if k == ops_name => &mut self.ops_burst,
            Some(_) => return Ok(false),
            None if key == "bps" => &mut self.bytes,
            None if key == ops_name => &mut self.ops,
            None => return Ok(false),
        };
        *slot = Some(parse_amount(key, value)?);
        Ok(true)
    }

    /// The limiter these flags describe (`None`: no rate given). `prefix` names the flags in
    /// errors (`""` or `"rx-"`).
    pub fn build(self, prefix: &str, ops_name: &str) -> Result<Option<RateLimiter>, String> {
        let bucket = |rate: Option<u64>, burst: Option<u64>, name: &str| match (rate, burst) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(format!(
                "{prefix}{name}-burst needs {prefix}{name}= (the rate it adds to)"
            )),
            (Some(0), _) => Err(format!(
                "{prefix}{name}=0: give a rate of at least 1 per second, or leave it out for \
                     no limit"
            )),
            (Some(rate), burst) => Ok(Some(rate_bucket(rate, burst))),
        };
        let limiter = RateLimiter {
            bandwidth: bucket(self.bytes, self.bytes_burst, "bps")?,
            ops: bucket(self.ops, self.ops_burst, ops_name)?,
        };
        Ok((limiter.bandwidth.is_some() || limiter.ops.is_some()).then_some(limiter))
    }
}

/// A bucket for `rate` tokens per second: 100 ms worth refilled every 100 ms (a short initial
/// burst, smooth flow), or `rate` per second when `rate` is not a multiple of 10.
pub fn rate_bucket(rate: u64, burst: Option<u64>) -> TokenBucket {
    let (size, refill_time) = if rate.is_multiple_of(10) {
        (rate / 10, 100)
    } else {
        (rate, 1000)
    };
    TokenBucket {
        size,
        one_time_burst: burst.filter(|&b| b != 0),
        refill_time,
    }
}

/// `N`, `NK`, `NM` or `NG` (powers of 1024).
fn parse_amount(key: &str, value: &str) -> Result<u64, String> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{key}={value}: expected a number, optionally with K, M or G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)], ops_name: &str) -> Result<Option<RateLimiter>, String> {
        let mut l = CliLimit::default();
        for (k, v) in pairs {
            assert!(l.accept(k, v, ops_name)?, "{k}");
        }
        l.build("", ops_name)
    }

    #[test]
    fn command_line_rates_become_buckets() {
        let l = parse(
            &[("bps", "4M"), ("iops", "1000"), ("iops-burst", "50")],
            "iops",
        )
        .unwrap()
        .unwrap();
        let bw = l.bandwidth.unwrap();
        assert_eq!((bw.size, bw.refill_time), (4 << 20, 1000)); // 4 MiB isn't a multiple of 10
        let ops = l.ops.unwrap();
        assert_eq!(
            (ops.size, ops.refill_time, ops.one_time_burst),
            (100, 100, Some(50))
        );
        assert_eq!(parse(&[], "iops").unwrap(), None);
        let d = device_config(Some(&rate_limiter_of(rate_bucket(1000, None))));
        assert_eq!(
            d.bandwidth.map(|b| (b.size, b.refill_time_ms)),
            Some((100, 100))
        );
        assert_eq!(device_config(None), RateLimiterConfig::default());
    }

    fn rate_limiter_of(b: TokenBucket) -> RateLimiter {
        RateLimiter {
            bandwidth: Some(b),
            ops: None,
        }
    }

    #[test]
    fn bad_command_line_rates() {
        for (pairs, want) in [
            (vec![("bps", "0")], "bps=0"),
            (vec![("bps", "x")], "expected a number"),
            (vec![("bps", "99999999999G")], "expected a number"),
            (vec![("bps-burst", "10")], "needs bps="),
            (vec![("pps-burst", "10")], "needs pps="),
        ] {
            let err = parse(&pairs, "pps").unwrap_err();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
        let mut l = CliLimit::default();
        assert!(!l.accept("iops", "1", "pps").unwrap());
        assert!(!l.accept("size-burst", "1", "pps").unwrap());
    }
}
