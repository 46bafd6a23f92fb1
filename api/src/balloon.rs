//! The balloon's API bodies (Firecracker's `Balloon`, `BalloonUpdate`, `BalloonStatsUpdate`,
//! `BalloonStats`).

use serde::{Deserialize, Serialize};

use crate::config::BalloonConfig;

/// `PUT /balloon` (pre-boot) and the config file's `balloon` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Accepted for Firecracker's schema; `true` is refused (ferry has no free page hinting).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_page_hinting: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_page_reporting: bool,
}

impl Balloon {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.free_page_hinting {
            return Err(
                "ferry does not implement free page hinting (free_page_hinting: true); \
                        free page reporting (free_page_reporting) is supported"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn to_config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.amount_mib,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_polling_interval_s,
            free_page_reporting: self.free_page_reporting,
        }
    }

    pub fn from_config(config: &BalloonConfig) -> Self {
        Self {
            amount_mib: config.amount_mib,
            deflate_on_oom: config.deflate_on_oom,
            stats_polling_interval_s: config.stats_polling_interval_s,
            free_page_hinting: false,
            free_page_reporting: config.free_page_reporting,
        }
    }
}

/// `GET /balloon`: the configuration (the current target as `amount_mib`) and, ferry's
/// addition, `actual_mib`: what the guest holds now (0 before boot or before its driver
/// starts). Output only: `PUT /balloon` does not take it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInfo {
    #[serde(flatten)]
    pub config: Balloon,
    pub actual_mib: u32,
}

/// `PATCH /balloon` (post-boot): a new target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics` (post-boot): a new polling interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `GET /balloon/statistics`: target and actual size, and each statistic the guest reported
/// (absent until it reports it). Memory sizes in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}
