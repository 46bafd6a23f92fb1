//! Routing and parsing: HTTP method + path + body → a typed, validated [`ApiRequest`].
//!
//! Pure functions, independent of the socket, so every endpoint's validation is unit-tested
//! without a server. Whatever reaches the VMM has passed these checks.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{BootSource, MachineConfig};
use crate::migration::{MigrationReceive, MigrationSend};
use crate::models::{
    ActionBody, ActionType, Drive, DrivePatch, EntropyDevice, LoggerBody, LoggerConfig,
    MachineConfigBody, MachineConfigUpdate, MetricsConfig, NetworkInterface, NetworkInterfacePatch,
    SnapshotCreate, SnapshotLoad, SnapshotLoadBody, VmState, VmStateBody, Vsock,
};
use crate::validate::check_id;

/// A validated request for the VMM. `GET /version` never gets here: the API thread answers it.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    /// `GET /`: answer with [`crate::InstanceInfo`].
    GetInstanceInfo,
    /// `GET /machine-config`: answer with the [`MachineConfig`].
    GetMachineConfig,
    /// `PUT /machine-config` (pre-boot), with the CPU template it names (absent: `None`, keep
    /// the current one; see `VmConfig::put_machine`).
    PutMachineConfig(MachineConfig, Option<crate::StaticCpuTemplate>),
    /// `PATCH /machine-config` (pre-boot): [`MachineConfigUpdate::apply`] to the current one.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source` (pre-boot).
    PutBootSource(BootSource),
    /// `PUT /drives/{id}` (pre-boot): add or replace a drive; [`Drive::to_config`].
    PutDrive(Drive),
    /// `PATCH /drives/{id}` (post-boot): new path or same path (online resize), rate limiter.
    PatchDrive(DrivePatch),
    /// `PUT /network-interfaces/{id}` (pre-boot); [`NetworkInterface::to_config`].
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}` (post-boot): rate limiters.
    PatchNetworkInterface(NetworkInterfacePatch),
    /// `PUT /entropy` (pre-boot): the entropy device; [`EntropyDevice::to_config`].
    PutEntropy(EntropyDevice),
    /// `PUT /vsock` (pre-boot): the vsock device; [`Vsock::to_config`].
    PutVsock(Vsock),
    /// `GET /balloon`: answer with [`crate::BalloonInfo`] (400 without a balloon).
    GetBalloon,
    /// `PUT /balloon` (pre-boot): the balloon device; [`crate::Balloon::to_config`].
    PutBalloon(crate::Balloon),
    /// `PATCH /balloon` (post-boot): a new target.
    PatchBalloon(crate::BalloonUpdate),
    /// `GET /balloon/statistics` (post-boot, statistics enabled): [`crate::BalloonStats`].
    GetBalloonStats,
    /// `PATCH /balloon/statistics` (post-boot): a new polling interval.
    PatchBalloonStats(crate::BalloonStatsUpdate),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmState),
    /// `GET /vm/config`: answer with [`crate::FullVmConfiguration`].
    GetVmConfig,
    /// `PUT /snapshot/create` (VM paused).
    SnapshotCreate(SnapshotCreate),
    /// `PUT /snapshot/load` (before configuration).
    SnapshotLoad(SnapshotLoad),
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`: where `FlushMetrics` writes.
    PutMetrics(MetricsConfig),
    /// `PUT /cpu-config` (before boot): a custom CPU template.
    PutCpuConfig(crate::CpuTemplate),
    /// `PUT /migration/send` (extension): start; answer 204 at once.
    MigrationSend(MigrationSend),
    /// `PUT /migration/receive` (extension): listen; answer 204 once listening.
    MigrationReceive(MigrationReceive),
    /// `GET /migration` (extension): answer with [`crate::MigrationStatus`].
    GetMigration,
    /// `GET /metrics` (extension): answer with Prometheus text.
    GetMetrics,
}

/// Why a request was refused before reaching the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 400 with this fault message.
    BadRequest(String),
    /// 404: no such path.
    NotFound(String),
    /// 405: the path exists; `allow` lists its methods.
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    /// 413: the body is over the server's limit (`size`: its declared length, if declared).
    PayloadTooLarge { limit: usize, size: Option<u64> },
}

impl RequestError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::PayloadTooLarge { .. } => 413,
        }
    }

    /// The `fault_message` of the error body.
    pub fn fault_message(&self) -> String {
        match self {
            Self::BadRequest(msg) => msg.clone(),
            Self::NotFound(path) => format!("no such resource: {path}"),
            Self::MethodNotAllowed {
                method,
                path,
                allow,
            } => {
                format!("method {method} is not allowed on {path} (allowed: {allow})")
            }
            Self::PayloadTooLarge {
                limit,
                size: Some(size),
            } => format!("request body of {size} bytes is larger than the limit of {limit} bytes"),
            Self::PayloadTooLarge { limit, size: None } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError::BadRequest(msg.into())
}

/// What the router decided: answer locally, or forward to the VMM.
// Returned by value once per request and matched at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub(crate) enum Routed {
    Version,
    Vmm(ApiRequest),
}

/// Firecracker endpoints ferry does not implement: a clear 400 instead of a bare 404.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("mmds", "the microVM metadata service (MMDS)"),
    ("hotplug", "hotplug"),
    ("serial", "serial configuration over the API"),
];

/// Keys whose values are JSON arrays in request bodies (`PUT /migration/receive`'s maps and
/// allow-list, `PUT /snapshot/load`'s overrides and diff chain).
const ARRAY_KEYS: &[&str] = &[
    "drives",
    "network_interfaces",
    "allow_paths",
    "network_overrides",
    "mem_diff_paths",
    "kvm_capabilities",
    "cpuid_modifiers",
    "modifiers",
    "msr_modifiers",
];

/// serde's derived structs also accept a JSON array of their fields in order (`[1, 128]` as a
/// machine-config); the API documents objects only, so arrays are refused except where a body
/// really has a list.
fn check_no_positional_structs(value: &Value, array_allowed: bool) -> Result<(), RequestError> {
    match value {
        Value::Array(items) if array_allowed => items
            .iter()
            .try_for_each(|item| check_no_positional_structs(item, false)),
        Value::Array(_) => Err(bad("invalid JSON body: expected an object, found an array")),
        Value::Object(fields) => fields.iter().try_for_each(|(key, field)| {
            check_no_positional_structs(field, ARRAY_KEYS.contains(&key.as_str()))
        }),
        _ => Ok(()),
    }
}

/// Parses `body` as JSON into `T`, with Firecracker's kind of message on failure.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad(
            "the request body is empty; this request needs a JSON body",
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    check_no_positional_structs(&value, false)?;
    serde_json::from_value(value).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Parses a body and runs its check, turning the check's message into a 400.
fn checked<T: DeserializeOwned>(
    body: &[u8],
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, RequestError> {
    let value: T = json(body)?;
    check(&value).map_err(bad)?;
    Ok(value)
}

/// The id in a `/drives/{id}`-style path must be valid and equal the body's id.
fn check_path_id(what: &str, path_id: &str, body_id: &str) -> Result<(), RequestError> {
    check_id(what, path_id).map_err(bad)?;
    if path_id != body_id {
        return Err(bad(format!(
            "the {what} in the path ({path_id}) differs from the one in the body ({body_id})"
        )));
    }
    Ok(())
}

/// Routes and parses one request. `path` is the URI path without the query string.
pub(crate) fn route(method: &str, path: &str, body: &[u8]) -> Result<Routed, RequestError> {
    use ApiRequest as R;
    let not_allowed = |allow: &'static str| RequestError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_string(),
        allow,
    };
    let trimmed = path
        .strip_prefix('/')
        .ok_or_else(|| RequestError::NotFound(path.into()))?;
    let segments: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    };
    let request = match (segments.as_slice(), method) {
        ([], "GET") => R::GetInstanceInfo,
        ([], _) => return Err(not_allowed("GET")),
        (["version"], "GET") => return Ok(Routed::Version),
        (["version"], _) => return Err(not_allowed("GET")),
        (["machine-config"], "GET") => R::GetMachineConfig,
        (["machine-config"], "PUT") => {
            let body: MachineConfigBody = json(body)?;
            let (machine, template) = body.into_config().map_err(bad)?;
            R::PutMachineConfig(machine, template)
        }
        (["machine-config"], "PATCH") => {
            R::PatchMachineConfig(checked(body, MachineConfigUpdate::validate)?)
        }
        (["machine-config"], _) => return Err(not_allowed("GET, PUT, PATCH")),
        (["boot-source"], "PUT") => R::PutBootSource(checked(body, BootSource::validate)?),
        (["boot-source"], _) => return Err(not_allowed("PUT")),
        (["drives"] | ["drives", ""], "PUT" | "PATCH") => {
            return Err(bad("missing drive id in the path"))
        }
        (["drives", id], "PUT") => {
            let drive: Drive = checked(body, Drive::validate)?;
            check_path_id("drive_id", id, &drive.drive_id)?;
            R::PutDrive(drive)
        }
        (["drives", id], "PATCH") => {
            let patch: DrivePatch = checked(body, DrivePatch::validate)?;
            check_path_id("drive_id", id, &patch.drive_id)?;
            R::PatchDrive(patch)
        }
        (["drives"] | ["drives", _], _) => return Err(not_allowed("PUT, PATCH")),
        (["network-interfaces"] | ["network-interfaces", ""], "PUT" | "PATCH") => {
            return Err(bad("missing iface id in the path"))
        }
        (["network-interfaces", id], "PUT") => {
            let iface: NetworkInterface = checked(body, NetworkInterface::validate)?;
            check_path_id("iface_id", id, &iface.iface_id)?;
            R::PutNetworkInterface(iface)
        }
        (["network-interfaces", id], "PATCH") => {
            let patch: NetworkInterfacePatch = checked(body, NetworkInterfacePatch::validate)?;
            check_path_id("iface_id", id, &patch.iface_id)?;
            R::PatchNetworkInterface(patch)
        }
        (["network-interfaces"] | ["network-interfaces", _], _) => {
            return Err(not_allowed("PUT, PATCH"))
        }
        (["entropy"], "PUT") => R::PutEntropy(checked(body, EntropyDevice::validate)?),
        (["entropy"], _) => return Err(not_allowed("PUT")),
        (["vsock"], "PUT") => R::PutVsock(checked(body, Vsock::validate)?),
        (["vsock"], _) => return Err(not_allowed("PUT")),
        (["balloon"], "GET") => R::GetBalloon,
        (["balloon"], "PUT") => R::PutBalloon(checked(body, crate::Balloon::validate)?),
        (["balloon"], "PATCH") => R::PatchBalloon(json(body)?),
        (["balloon"], _) => return Err(not_allowed("GET, PUT, PATCH")),
        (["balloon", "statistics"], "GET") => R::GetBalloonStats,
        (["balloon", "statistics"], "PATCH") => R::PatchBalloonStats(json(body)?),
        (["balloon", "statistics"], _) => return Err(not_allowed("GET, PATCH")),
        (["balloon", "hinting", ..], _) => {
            return Err(bad(
                "ferry does not implement free page hinting (/balloon/hinting)",
            ))
        }
        (["actions"], "PUT") => R::Action(json::<ActionBody>(body)?.action_type),
        (["actions"], _) => return Err(not_allowed("PUT")),
        (["vm"], "PATCH") => R::PatchVm(json::<VmStateBody>(body)?.state),
        (["vm"], _) => return Err(not_allowed("PATCH")),
        (["vm", "config"], "GET") => R::GetVmConfig,
        (["vm", "config"], _) => return Err(not_allowed("GET")),
        (["snapshot", "create"], "PUT") => {
            R::SnapshotCreate(checked(body, SnapshotCreate::validate)?)
        }
        (["snapshot", "load"], "PUT") => R::SnapshotLoad(
            json::<SnapshotLoadBody>(body)?
                .into_request()
                .map_err(bad)?,
        ),
        (["snapshot", "create" | "load"], _) => return Err(not_allowed("PUT")),
        (["logger"], "PUT") => R::PutLogger(json::<LoggerBody>(body)?.into_request().map_err(bad)?),
        (["logger"], _) => return Err(not_allowed("PUT")),
        (["metrics"], "GET") => R::GetMetrics,
        (["metrics"], "PUT") => R::PutMetrics(checked(body, |m: &MetricsConfig| m.validate())?),
        (["metrics"], _) => return Err(not_allowed("GET, PUT")),
        (["cpu-config"], "PUT") => R::PutCpuConfig(
            json::<crate::cpu_template::CpuConfigBody>(body)?
                .into_template()
                .map_err(bad)?,
        ),
        (["cpu-config"], _) => return Err(not_allowed("PUT")),
        (["migration"], "GET") => R::GetMigration,
        (["migration"], _) => return Err(not_allowed("GET")),
        (["migration", "send"], "PUT") => R::MigrationSend(checked(body, MigrationSend::validate)?),
        (["migration", "receive"], "PUT") => {
            R::MigrationReceive(checked(body, MigrationReceive::validate)?)
        }
        (["migration", "send" | "receive"], _) => return Err(not_allowed("PUT")),
        ([first, ..], _) => {
            return Err(match UNSUPPORTED.iter().find(|(name, _)| name == first) {
                Some((_, what)) => bad(format!("ferry does not implement {what} (/{first})")),
                None => RequestError::NotFound(path.into()),
            })
        }
    };
    Ok(Routed::Vmm(request))
}

/// Parses one request into what the VMM would receive. `GET /version` (answered by the API
/// thread itself) comes back as a 404 here.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, RequestError> {
    match route(method, path, body)? {
        Routed::Vmm(request) => Ok(request),
        Routed::Version => Err(RequestError::NotFound(path.into())),
    }
}
