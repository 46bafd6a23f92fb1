//! Token-bucket rate limiting for virtio devices, with Firecracker's semantics.
//!
//! # Buckets
//! A [`TokenBucket`] holds up to `size` tokens (bytes or operations) and refills linearly: `size`
//! tokens every `refill_time` milliseconds, never above `size`. It starts full. `one_time_burst`
//! is an extra budget, spent before the bucket's own tokens, that never refills. A request takes
//! its tokens at once or not at all, except a request larger than the bucket itself: it could
//! never fit, so (as on Firecracker) it goes through when the bucket is not already in debt,
//! takes every token there is and leaves the rest as a *debt* the refill pays back before
//! anything else passes. Over any long interval the rate therefore stays `size / refill_time`.
//! Refill arithmetic is exact (integer nanoseconds, remainder kept), so no rate drifts.
//!
//! # Limiter
//! A [`RateLimiter`] has an optional bandwidth bucket (bytes) and an optional ops bucket
//! (requests or frames). With neither, [`RateLimiter::consume`] is two `Option` checks: no
//! clock read, no syscall, no allocation. When a bucket refuses, the limiter becomes *blocked*
//! and arms its timerfd (non-blocking, `CLOCK_MONOTONIC`) for the moment enough tokens will be
//! there (at least [`MIN_WAKE_NS`] away, so a device is woken at most 1000 times a second per
//! limiter). While blocked every `consume` refuses without looking at the clock. The device
//! watches [`RateLimiter::timer_fd`] in its event loop; on readiness it calls
//! [`RateLimiter::on_timer`] (which unblocks) and retries the work it held back. No thread ever
//! spins or sleeps on a limit.
//!
//! # Reconfiguration and save/restore
//! [`RateLimiter::set_config`] replaces the buckets whose configuration changed with new, full
//! ones (a bucket whose configuration is unchanged keeps its tokens), and wakes the device if
//! it was blocked so held-back work is retried under the new limits. [`RateLimiter::save_state`]
//! captures each bucket's configuration and tokens (budget, burst left, debt);
//! [`RateLimiter::restore_state`] applies them to the buckets whose configuration matches, so a
//! migrated or restored guest does not get a fresh burst. Time already accumulated towards the
//! next token is not carried (the monotonic clocks of two hosts do not compare): at most one
//! token per bucket is lost.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

/// Shortest timer a blocked limiter arms, in nanoseconds (1 ms).
pub const MIN_WAKE_NS: u64 = 1_000_000;
/// Longest `refill_time` accepted, in milliseconds (one day): a bound on absurd values.
pub const MAX_REFILL_TIME_MS: u64 = 24 * 3600 * 1000;
const NS_PER_MS: u64 = 1_000_000;

/// One bucket's configuration (Firecracker's `TokenBucket`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full; also what refills every `refill_time_ms`.
    pub size: u64,
    /// Extra tokens spent first, once; they never refill.
    pub one_time_burst: u64,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time_ms: u64,
}

impl TokenBucketConfig {
    /// Checks the values a bucket can be built from. `size == 0` means "no bucket" and is
    /// accepted (that is how an API client removes a limit).
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 {
            return Ok(());
        }
        if self.refill_time_ms == 0 {
            return Err(format!(
                "refill_time must be at least 1 ms for a bucket of size {}",
                self.size
            ));
        }
        if self.refill_time_ms > MAX_REFILL_TIME_MS {
            return Err(format!(
                "refill_time {} ms is above the limit of {MAX_REFILL_TIME_MS} ms (one day)",
                self.refill_time_ms
            ));
        }
        Ok(())
    }
}

/// A limiter's configuration: `None` (or a bucket of size 0) means no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterConfig {
    pub bandwidth: Option<TokenBucketConfig>,
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(b) = &self.bandwidth {
            b.validate().map_err(|e| format!("bandwidth: {e}"))?;
        }
        if let Some(b) = &self.ops {
            b.validate().map_err(|e| format!("ops: {e}"))?;
        }
        Ok(())
    }

    /// Whether no bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none_or(|b| b.size == 0) && self.ops.is_none_or(|b| b.size == 0)
    }
}

/// What a token counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Bytes,
    Ops,
}

/// Saved tokens of one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    pub config: TokenBucketConfig,
    pub budget: u64,
    pub one_time_burst: u64,
    pub debt: u64,
}

/// Saved state of a limiter (see the module docs for what is carried).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    pub bandwidth: Option<BucketState>,
    pub ops: Option<BucketState>,
}

/// A token bucket; time is passed in (nanoseconds on a monotonic clock) so the arithmetic can
/// be tested with any clock.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    config: TokenBucketConfig,
    /// `refill_time` in nanoseconds (> 0).
    refill_ns: u64,
    budget: u64,
    one_time_burst: u64,
    /// Tokens taken beyond the budget by a request larger than the bucket.
    debt: u64,
    /// Refill progress towards the next token: elapsed ns × size not yet turned into tokens
    /// (always below `refill_ns`).
    partial: u128,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket, or `None` when `size` is 0 (no limit). `refill_time_ms == 0` with a
    /// non-zero size is refused by [`TokenBucketConfig::validate`]; here it is treated as 1 ms.
    pub fn new(config: TokenBucketConfig, now_ns: u64) -> Option<Self> {
        if config.size == 0 {
            return None;
        }
        let refill_ms = config.refill_time_ms.clamp(1, MAX_REFILL_TIME_MS);
        Some(Self {
            config,
            refill_ns: refill_ms * NS_PER_MS,
            budget: config.size,
            one_time_burst: config.one_time_burst,
            debt: 0,
            partial: 0,
            last_ns: now_ns,
        })
    }

    pub fn config(&self) -> TokenBucketConfig {
        self.config
    }

    /// Tokens available now (after a refill at the last call's time), burst included.
    pub fn available(&self) -> u64 {
        self.budget.saturating_add(self.one_time_burst)
    }

    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// Adds the tokens earned since the last refill: pays the debt first, then fills up to
    /// `size`. Time never runs backwards here (a stale `now` adds nothing).
    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        if elapsed == 0 {
            return;
        }
        if self.debt == 0 && self.budget >= self.config.size {
            self.partial = 0;
            return;
        }
        // u64 × u64 fits in u128; `partial` < refill_ns keeps the sum in range.
        let numer = u128::from(elapsed) * u128::from(self.config.size) + self.partial;
        let refill = u128::from(self.refill_ns);
        let earned = numer / refill;
        self.partial = numer % refill;
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        let paid = earned.min(self.debt);
        self.debt -= paid;
        let left = earned - paid;
        self.budget = self.budget.saturating_add(left);
        if self.budget >= self.config.size {
            self.budget = self.config.size;
            self.partial = 0;
        }
    }

    /// Whether [`Self::reduce`] would take `tokens` now (refills first; takes nothing).
    pub fn would_admit(&mut self, tokens: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        let need = tokens.saturating_sub(self.one_time_burst);
        need == 0 || (self.debt == 0 && (self.budget >= need || need > self.config.size))
    }

    /// Takes `tokens` if the bucket can give them (see the module docs: burst first, then the
    /// budget; a request larger than `size` passes when there is no debt and leaves one).
    pub fn reduce(&mut self, tokens: u64, now_ns: u64) -> bool {
        if !self.would_admit(tokens, now_ns) {
            return false;
        }
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        let need = tokens - from_burst;
        if need <= self.budget {
            self.budget -= need;
        } else {
            // Larger than the bucket: everything now, the rest as debt.
            self.debt = need - self.budget;
            self.budget = 0;
        }
        true
    }

    /// Nanoseconds from the last refill until [`Self::reduce`] of `tokens` would succeed (0 if
    /// it would now).
    pub fn wait_ns(&self, tokens: u64) -> u64 {
        let need = tokens.saturating_sub(self.one_time_burst);
        let short: u128 = if need == 0 {
            0
        } else if need > self.config.size {
            // Passes as soon as the debt is paid.
            u128::from(self.debt)
        } else {
            (u128::from(need) + u128::from(self.debt)).saturating_sub(u128::from(self.budget))
        };
        self.ns_for(short)
    }

    /// Nanoseconds from the last refill until the debt is paid (0 without one).
    pub fn debt_wait_ns(&self) -> u64 {
        self.ns_for(u128::from(self.debt))
    }

    fn ns_for(&self, short: u128) -> u64 {
        if short == 0 {
            return 0;
        }
        let numer = (short * u128::from(self.refill_ns)).saturating_sub(self.partial);
        let size = u128::from(self.config.size);
        u64::try_from(numer.div_ceil(size)).unwrap_or(u64::MAX)
    }

    fn save(&self) -> BucketState {
        BucketState {
            config: self.config,
            budget: self.budget,
            one_time_burst: self.one_time_burst,
            debt: self.debt,
        }
    }

    fn restore(&mut self, state: &BucketState, now_ns: u64) {
        self.budget = state.budget.min(self.config.size);
        self.one_time_burst = state.one_time_burst.min(self.config.one_time_burst);
        self.debt = state.debt;
        self.partial = 0;
        self.last_ns = now_ns;
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock the timerfd runs on).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A bandwidth bucket and an ops bucket, with the timerfd that wakes a blocked device.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: OwnedFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with `config`'s buckets (none: unlimited). The timerfd is created either way,
    /// so a limit set later on a running device needs no new registration in the event loop.
    pub fn new(config: &RateLimiterConfig) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        let now = monotonic_ns();
        Ok(Self {
            bandwidth: config.bandwidth.and_then(|c| TokenBucket::new(c, now)),
            ops: config.ops.and_then(|c| TokenBucket::new(c, now)),
            timer,
            blocked: false,
        })
    }

    /// An unlimited limiter (see [`Self::new`]).
    pub fn unlimited() -> io::Result<Self> {
        Self::new(&RateLimiterConfig::default())
    }

    /// The current configuration (buckets of size 0 are absent).
    pub fn config(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::config),
            ops: self.ops.as_ref().map(TokenBucket::config),
        }
    }

    /// Whether neither bucket is configured.
    #[inline]
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether a refusal armed the timer and it has not fired yet.
    #[inline]
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to watch (readable when a blocked limiter may admit again).
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Takes `tokens` of `kind`; `false` (and blocked, timer armed) when the bucket refuses.
    #[inline]
    pub fn consume(&mut self, tokens: u64, kind: TokenKind) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.consume_at(tokens, kind, monotonic_ns())
    }

    /// One operation of `bytes` bytes, both or neither (a request, a frame).
    #[inline]
    pub fn consume_op(&mut self, bytes: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.consume_op_at(bytes, monotonic_ns())
    }

    /// [`Self::consume`] at a given time (tests inject their clock here).
    pub fn consume_at(&mut self, tokens: u64, kind: TokenKind, now_ns: u64) -> bool {
        if self.blocked {
            return false;
        }
        let bucket = match kind {
            TokenKind::Bytes => &mut self.bandwidth,
            TokenKind::Ops => &mut self.ops,
        };
        let Some(b) = bucket else {
            return true;
        };
        if b.reduce(tokens, now_ns) {
            let debt_wait = b.debt_wait_ns();
            if debt_wait > 0 {
                // A request larger than the bucket left a debt: nothing else passes until it
                // is paid.
                self.block(debt_wait);
            }
            true
        } else {
            let wait = b.wait_ns(tokens);
            self.block(wait);
            false
        }
    }

    /// [`Self::consume_op`] at a given time.
    pub fn consume_op_at(&mut self, bytes: u64, now_ns: u64) -> bool {
        if self.blocked {
            return false;
        }
        // Look at the ops bucket first without taking, so a refusal of the bytes never needs
        // an op given back (and a refused op never takes bytes).
        if let Some(ops) = &mut self.ops {
            if !ops.would_admit(1, now_ns) {
                let wait = ops.wait_ns(1);
                self.block(wait);
                return false;
            }
        }
        if !self.consume_at(bytes, TokenKind::Bytes, now_ns) {
            return false;
        }
        if let Some(ops) = &mut self.ops {
            // Admitted above and nothing changed since: always succeeds.
            ops.reduce(1, now_ns);
        }
        true
    }

    /// Call when the timerfd is readable: clears it and unblocks. Returns whether the limiter
    /// was blocked (the device has work to retry).
    pub fn on_timer(&mut self) -> bool {
        let mut ticks = [0u8; 8];
        // SAFETY: reads 8 bytes into our buffer from our non-blocking timerfd; EAGAIN (nothing
        // expired: a stale event) is harmless.
        unsafe { libc::read(self.timer.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
        std::mem::replace(&mut self.blocked, false)
    }

    /// Applies a new configuration (see the module docs). A blocked limiter's timer is set to
    /// fire at once so the device retries under the new limits.
    pub fn set_config(&mut self, config: &RateLimiterConfig) {
        let now = monotonic_ns();
        let rebuild = |old: &mut Option<TokenBucket>, new: Option<TokenBucketConfig>| {
            let new = new.filter(|c| c.size != 0);
            if old.as_ref().map(TokenBucket::config) != new {
                *old = new.and_then(|c| TokenBucket::new(c, now));
            }
        };
        rebuild(&mut self.bandwidth, config.bandwidth);
        rebuild(&mut self.ops, config.ops);
        if self.blocked {
            self.blocked = self.arm(1);
        }
    }

    /// The buckets' configuration and tokens.
    pub fn save_state(&self) -> RateLimiterState {
        RateLimiterState {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::save),
            ops: self.ops.as_ref().map(TokenBucket::save),
        }
    }

    /// Applies saved tokens to the buckets configured the same way; others stay as they are.
    pub fn restore_state(&mut self, state: &RateLimiterState) {
        let now = monotonic_ns();
        for (bucket, saved) in [
            (&mut self.bandwidth, &state.bandwidth),
            (&mut self.ops, &state.ops),
        ] {
            if let (Some(b), Some(s)) = (bucket.as_mut(), saved) {
                if b.config == s.config {
                    b.restore(s, now);
                }
            }
        }
    }

    fn block(&mut self, wait_ns: u64) {
        // Should arming fail (it cannot with a valid fd), stay unblocked: the next event
        // retries, rather than a device asleep for good.
        self.blocked = self.arm(wait_ns.max(MIN_WAKE_NS));
    }

    /// Arms the timer `ns` from now; false if the kernel refused.
    fn arm(&self, ns: u64) -> bool {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid itimerspec for our own timerfd; no old value wanted.
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc < 0 {
            log::error!(
                "rate limiter: cannot arm the timer: {}",
                io::Error::last_os_error()
            );
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> TokenBucket {
        TokenBucket::new(
            TokenBucketConfig {
                size,
                one_time_burst: burst,
                refill_time_ms: refill_ms,
            },
            0,
        )
        .unwrap()
    }

    fn limiter(bw: Option<(u64, u64, u64)>, ops: Option<(u64, u64, u64)>) -> RateLimiter {
        let cfg = |t: Option<(u64, u64, u64)>| {
            t.map(|(size, one_time_burst, refill_time_ms)| TokenBucketConfig {
                size,
                one_time_burst,
                refill_time_ms,
            })
        };
        let mut l = RateLimiter::new(&RateLimiterConfig {
            bandwidth: cfg(bw),
            ops: cfg(ops),
        })
        .unwrap();
        // Put the buckets on the test clock.
        for b in [&mut l.bandwidth, &mut l.ops].into_iter().flatten() {
            b.last_ns = 0;
        }
        l
    }

    #[test]
    fn size_zero_is_no_bucket_and_validation() {
        assert!(TokenBucket::new(TokenBucketConfig::default(), 0).is_none());
        let bad = TokenBucketConfig {
            size: 10,
            one_time_burst: 0,
            refill_time_ms: 0,
        };
        assert!(bad.validate().unwrap_err().contains("refill_time"));
        let absurd = TokenBucketConfig {
            refill_time_ms: MAX_REFILL_TIME_MS + 1,
            ..bad
        };
        assert!(absurd.validate().is_err());
        let off = TokenBucketConfig {
            size: 0,
            one_time_burst: 0,
            refill_time_ms: 0,
        };
        assert!(off.validate().is_ok());
        let cfg = RateLimiterConfig {
            bandwidth: Some(off),
            ops: None,
        };
        assert!(cfg.is_unlimited());
        assert!(RateLimiterConfig {
            ops: Some(bad),
            ..cfg
        }
        .validate()
        .unwrap_err()
        .starts_with("ops:"));
    }

    #[test]
    fn refill_is_linear_and_exact() {
        // 1000 tokens per 100 ms: 10 per ms.
        let mut b = bucket(1000, 0, 100);
        assert!(b.reduce(1000, 0));
        assert!(!b.reduce(1, 0));
        assert_eq!(b.wait_ns(10), MS);
        assert!(!b.reduce(10, MS - 1));
        assert!(b.reduce(10, MS));
        // Fractions are kept: 3 tokens of 1/10 ms each over 30 steps of 0.1 ms + 1 ns.
        let mut b = bucket(10, 0, 1); // 10 tokens per ms: one per 100 µs
        assert!(b.reduce(10, 0));
        let mut got = 0;
        let mut now = 0;
        for _ in 0..1000 {
            now += 33_333; // a third of a token
            if b.reduce(1, now) {
                got += 1;
            }
        }
        // 33.333 ms of refill at 10/ms = 333 tokens, nothing lost to rounding.
        assert_eq!(got, 333);
        // Never above size.
        let mut b = bucket(100, 0, 10);
        b.refill(SEC);
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn long_run_rate_is_the_configured_one() {
        // 4000 KiB/s as 400 KiB every 100 ms; a 4 KiB consumer retrying every 0.7 ms for 10 s.
        let mut b = bucket(409_600, 0, 100);
        let (mut now, mut bytes) = (0u64, 0u64);
        while now < 10 * SEC {
            while b.reduce(4096, now) {
                bytes += 4096;
            }
            now += 700_000;
        }
        let expected = 409_600 * 100 + 409_600; // 10 s of refill + the full start
        assert!(bytes.abs_diff(expected) <= 4096, "{bytes} vs {expected}");
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let mut b = bucket(100, 500, 1000);
        assert_eq!(b.available(), 600);
        assert!(b.reduce(550, 0)); // 500 burst + 50 budget
        assert_eq!(b.available(), 50);
        assert!(!b.reduce(60, 0));
        // A refusal takes nothing, burst included.
        assert_eq!(b.available(), 50);
        b.refill(10 * SEC);
        assert_eq!(b.available(), 100);
        // A partly used burst covers the start of a request.
        let mut b = bucket(100, 30, 1000);
        assert!(b.reduce(120, 0));
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_and_leaves_a_debt() {
        // 100 tokens per 100 ms; a 350-token request.
        let mut b = bucket(100, 0, 100);
        assert!(b.reduce(10, 0));
        assert!(b.reduce(350, 0)); // 90 in the bucket, 260 owed
        assert_eq!(b.debt(), 260);
        assert_eq!(b.debt_wait_ns(), 260 * MS);
        assert!(!b.reduce(1, 259 * MS));
        assert!(!b.reduce(350, 259 * MS)); // a second big one waits for the debt too
                                           // One token of debt left, then one for the request.
        assert_eq!(b.wait_ns(1), 2 * MS);
        assert!(!b.reduce(1, 260 * MS));
        assert!(b.reduce(1, 261 * MS));
        // Rate preserved: 10 + 350 + 1 tokens by 261 ms from a full bucket of 100.
        assert_eq!(b.debt(), 0);
    }

    #[test]
    fn limiter_blocks_until_its_timer() {
        let mut l = limiter(Some((1000, 0, 100)), None);
        assert!(l.consume_at(1000, TokenKind::Bytes, 0));
        assert!(!l.consume_at(500, TokenKind::Bytes, MS));
        assert!(l.is_blocked());
        // Blocked: refuses even once tokens are there, until the timer event.
        assert!(!l.consume_at(1, TokenKind::Bytes, 60 * MS));
        assert!(l.on_timer());
        assert!(!l.on_timer());
        assert!(l.consume_at(500, TokenKind::Bytes, 60 * MS));
        // Ops are not limited by this limiter.
        assert!(l.consume_at(1_000_000, TokenKind::Ops, 60 * MS));
        // The timer really is armed and fires.
        assert!(!l.consume_at(1000, TokenKind::Bytes, 60 * MS));
        let mut pfd = libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 5_000) };
        assert_eq!(n, 1);
        assert!(l.on_timer());
    }

    #[test]
    fn ops_and_bytes_are_taken_together_or_not_at_all() {
        let mut l = limiter(Some((1000, 0, 1000)), Some((2, 0, 1000)));
        assert!(l.consume_op_at(600, 0));
        // Bytes refused: the op is not taken.
        assert!(!l.consume_op_at(600, 0));
        l.on_timer();
        assert_eq!(l.ops.as_ref().unwrap().available(), 1);
        assert!(l.consume_op_at(400, 0));
        // Ops refused: no bytes taken.
        assert!(!l.consume_op_at(0, 0));
        l.on_timer();
        assert_eq!(l.bandwidth.as_ref().unwrap().available(), 0);
        assert_eq!(l.ops.as_ref().unwrap().wait_ns(1), 500 * MS);
    }

    #[test]
    fn unlimited_and_reconfiguration() {
        let mut l = RateLimiter::unlimited().unwrap();
        assert!(l.is_unlimited());
        assert!(l.consume(u64::MAX, TokenKind::Bytes));
        assert!(l.consume_op(u64::MAX));
        assert!(!l.is_blocked());
        let cfg = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
            ops: None,
        };
        l.set_config(&cfg);
        assert_eq!(l.config(), cfg);
        assert!(l.consume(100, TokenKind::Bytes));
        assert!(!l.consume(50, TokenKind::Bytes));
        assert!(l.is_blocked());
        // The same configuration again keeps the tokens (still empty) ...
        l.set_config(&cfg);
        l.on_timer();
        assert!(!l.consume(50, TokenKind::Bytes));
        // ... a new one starts full, and wakes the blocked device at once.
        let bigger = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                ..cfg.bandwidth.unwrap()
            }),
            ops: None,
        };
        l.set_config(&bigger);
        let mut pfd = libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5_000) }, 1);
        assert!(l.on_timer());
        assert!(l.consume(1000, TokenKind::Bytes));
        // Size 0 removes the limit.
        l.set_config(&RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig::default()),
            ops: None,
        });
        assert!(l.is_unlimited());
        assert_eq!(l.config(), RateLimiterConfig::default());
    }

    #[test]
    fn save_and_restore_carry_tokens_for_the_same_config() {
        let mut l = limiter(Some((1000, 500, 1000)), Some((10, 0, 1000)));
        assert!(l.consume_op_at(1200, 0));
        let saved = l.save_state();
        assert_eq!(
            saved.bandwidth.map(|b| (b.budget, b.one_time_burst)),
            Some((300, 0))
        );
        let mut other = limiter(Some((1000, 500, 1000)), Some((20, 0, 1000)));
        other.restore_state(&saved);
        assert_eq!(other.bandwidth.as_ref().unwrap().available(), 300);
        // The ops bucket is configured differently here: it keeps its own (full) tokens.
        assert_eq!(other.ops.as_ref().unwrap().available(), 20);
    }
}
