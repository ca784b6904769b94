//! Server settings: defaults, overridden by an optional YAML config file (`--config`),
//! overridden by flags or their `HALLPASS_*` environment variables.
//!
//! Everything is parsed and validated before any port is bound; unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cache::CacheOptions;
use crate::reload::ReloadOptions;
use crate::service::DEFAULT_MAX_BODY_BYTES;

/// Default ext_authz gRPC address: loopback, for Envoy in the same pod.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:9191";
/// Default admin HTTP address: all interfaces, so Prometheus and kubelet probes reach it.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9192";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable text.
    Text,
}

/// `cache:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Cache decisions at all (default true).
    pub enabled: Option<bool>,
    /// How long a decision is reused, e.g. `5s` (default 5s).
    pub ttl: Option<String>,
    /// Most entries kept (default 10000).
    pub max_entries: Option<u64>,
}

/// `limits:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Longest body parsed; longer is treated as truncated (default 1 MiB).
    pub max_body_bytes: Option<usize>,
}

/// `reload:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSection {
    /// Re-hash the policy file this often regardless of file events (default 10s).
    pub interval: Option<String>,
    /// Wait this long after a file event for the burst to end (default 100ms).
    pub debounce: Option<String>,
}

/// `shutdown:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// Health NOT_SERVING for this long before closing the listener (default 1s).
    pub drain_delay: Option<String>,
    /// Most time to finish in-flight Checks after that (default 10s).
    pub grace: Option<String>,
}

/// `decision_log:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogSection {
    /// `stdout` (default), `stderr`, `off`, or a file path (appended to).
    pub sink: Option<String>,
    /// Records queued before new ones are dropped (default 8192).
    pub buffer: Option<usize>,
    /// Add the decoded query parameters to records (default false: queries may carry tokens).
    pub include_query: Option<bool>,
    /// `off` (default) or `full`: also write every Check's input (`hallpass.input/v1`) for
    /// `hallpass replay`.
    pub inputs: Option<String>,
    /// Where inputs go (a file path, appended to; required with `inputs: full`).
    pub inputs_path: Option<PathBuf>,
    /// JSON Pointers into bodies whose values inputs replace by a marker.
    pub mask: Option<Vec<String>>,
    /// Input records queued before new ones are dropped (default 256: a record holds a body).
    pub inputs_buffer: Option<usize>,
}

/// `state:` in the config file (agent-controls.md §7).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// `memory` (default) or `redis`.
    pub backend: Option<StateBackendDef>,
    /// Memory store: keep quarantines (and, later, grants) here across restarts.
    pub dir: Option<PathBuf>,
    /// Memory store: most limit buckets kept (default 100000).
    pub max_keys: Option<usize>,
    /// Most limit buckets one agent may have in use at once (default 1000; both stores).
    pub max_keys_per_agent: Option<usize>,
    /// Redis store.
    #[serde(default)]
    pub redis: RedisSection,
}

/// `memory` | `redis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StateBackendDef {
    /// In process (one replica).
    Memory,
    /// Redis (replicas share limits, deny counts and quarantines).
    Redis,
}

/// `state.redis:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: Option<String>,
    /// Prefix of every key (default `hallpass:`).
    pub key_prefix: Option<String>,
    /// Deadline of each operation (default 50ms).
    pub timeout: Option<String>,
}

/// The state store `serve` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOptions {
    /// In process.
    Memory {
        /// Where quarantines persist.
        dir: Option<PathBuf>,
        /// Most limit buckets.
        max_keys: usize,
        /// Most limit buckets per agent.
        max_keys_per_agent: usize,
    },
    /// Redis.
    Redis {
        /// The URL (may carry a password: never logged).
        url: String,
        /// Key prefix.
        prefix: String,
        /// Per-operation deadline.
        timeout: Duration,
        /// Most limit buckets per agent.
        max_keys_per_agent: usize,
    },
}

/// `control:` in the config file (agent-controls.md §3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Listen address of the control API (off unless set; never the admin port).
    pub listen: Option<String>,
}

/// Where decision records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Nowhere.
    Off,
    /// Appended to this file.
    File(PathBuf),
}

impl LogSink {
    fn parse(s: &str) -> LogSink {
        match s {
            "stdout" | "-" => LogSink::Stdout,
            "stderr" => LogSink::Stderr,
            "off" | "none" => LogSink::Off,
            path => LogSink::File(PathBuf::from(path)),
        }
    }
}

/// The config file (`--config FILE`); every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Policy file path (relative paths are relative to the config file).
    pub policy: Option<PathBuf>,
    /// ext_authz gRPC listen address.
    pub grpc_listen: Option<String>,
    /// Admin HTTP listen address.
    pub admin_listen: Option<String>,
    /// `json` or `text`.
    pub log_format: Option<LogFormat>,
    /// A tracing filter such as `info` or `hallpass=debug`.
    pub log_level: Option<String>,
    /// Decision cache.
    #[serde(default)]
    pub cache: CacheSection,
    /// Input limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Policy reloading.
    #[serde(default)]
    pub reload: ReloadSection,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// Decision records.
    #[serde(default)]
    pub decision_log: DecisionLogSection,
    /// The state store.
    #[serde(default)]
    pub state: StateSection,
    /// The control API.
    #[serde(default)]
    pub control: ControlSection,
}

/// The settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Policy file.
    pub policy: PathBuf,
    /// ext_authz gRPC address.
    pub grpc_listen: SocketAddr,
    /// Admin HTTP address.
    pub admin_listen: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// `None` = no decision cache.
    pub cache: Option<CacheOptions>,
    /// Longest body parsed.
    pub max_body_bytes: usize,
    /// Reload behaviour.
    pub reload: ReloadOptions,
    /// Health NOT_SERVING this long before the listener closes.
    pub drain_delay: Duration,
    /// Most time for in-flight Checks after that.
    pub grace: Duration,
    /// Where decision records go.
    pub decision_log: LogSink,
    /// Queue length of the decision log.
    pub decision_log_buffer: usize,
    /// Whether records include the query.
    pub decision_log_query: bool,
    /// Input capture for replay, if on.
    pub inputs: Option<InputCapture>,
    /// The state store.
    pub state: StateOptions,
    /// The control API's address, if on.
    pub control_listen: Option<SocketAddr>,
}

/// `hallpass serve` flags (each also a `HALLPASS_*` variable); they override the config file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// The policy file.
    #[arg(long, env = "HALLPASS_POLICY")]
    pub policy: Option<PathBuf>,
    /// A server config file (YAML); flags override it.
    #[arg(long, env = "HALLPASS_CONFIG")]
    pub config: Option<PathBuf>,
    /// ext_authz gRPC listen address [default: 127.0.0.1:9191].
    #[arg(long, env = "HALLPASS_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// Admin HTTP listen address [default: 0.0.0.0:9192].
    #[arg(long, env = "HALLPASS_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Log format [default: json].
    #[arg(long, env = "HALLPASS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `hallpass=debug` [default: info].
    #[arg(long, env = "HALLPASS_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Turn the decision cache off.
    #[arg(long, env = "HALLPASS_NO_CACHE")]
    pub no_cache: bool,
    /// How long a decision is reused, e.g. 5s [default: 5s].
    #[arg(long, env = "HALLPASS_CACHE_TTL")]
    pub cache_ttl: Option<String>,
    /// Most cached decisions [default: 10000].
    #[arg(long, env = "HALLPASS_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<u64>,
    /// Longest body parsed; longer is treated as truncated [default: 1048576].
    #[arg(long, env = "HALLPASS_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Re-hash the policy file this often even without file events [default: 10s].
    #[arg(long, env = "HALLPASS_RELOAD_INTERVAL")]
    pub reload_interval: Option<String>,
    /// On SIGTERM, report NOT_SERVING this long before closing the listener [default: 1s].
    #[arg(long, env = "HALLPASS_DRAIN_DELAY")]
    pub drain_delay: Option<String>,
    /// Then give in-flight Checks at most this long [default: 10s].
    #[arg(long, env = "HALLPASS_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Decision records: stdout, stderr, off, or a file path [default: stdout].
    #[arg(long, env = "HALLPASS_DECISION_LOG")]
    pub decision_log: Option<String>,
    /// The state store: memory or redis [default: memory].
    #[arg(long, env = "HALLPASS_STATE_BACKEND", value_enum)]
    pub state_backend: Option<StateBackendDef>,
    /// Memory store: keep quarantines in this directory across restarts.
    #[arg(long, env = "HALLPASS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Redis store URL, e.g. redis://redis:6379 (implies --state-backend redis).
    #[arg(long, env = "HALLPASS_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The control API (approvals, grants, quarantine) listen address [default: off].
    #[arg(long, env = "HALLPASS_CONTROL_LISTEN")]
    pub control_listen: Option<String>,
}

fn addr(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{what} `{s}` is not an address such as 127.0.0.1:9191"))
}

/// Parse a duration such as `250ms`, `5s`, `2m`.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    let bad = || format!("{what} `{s}` is not a duration such as 250ms, 5s, 2m, 1h or 1d");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = (t.get(..split).ok_or_else(bad)?, t.get(split..).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3_600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(bad()),
    }
}

fn duration(what: &str, flag: Option<String>, file: Option<String>, default: Duration) -> Result<Duration, String> {
    match flag.or(file) {
        Some(s) => parse_duration(what, &s),
        None => Ok(default),
    }
}

/// `decision_log.inputs: full`: where inputs go and what of bodies is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputCapture {
    /// The inputs file (appended to).
    pub path: PathBuf,
    /// Masked JSON Pointers (`/a/b`), as written.
    pub mask: Vec<String>,
    /// Records queued before new ones are dropped.
    pub buffer: usize,
}

impl InputCapture {
    fn resolve(d: &DecisionLogSection, base: Option<&std::path::Path>) -> Result<Option<InputCapture>, SettingsError> {
        let bad = SettingsError::Value;
        match d.inputs.as_deref() {
            None | Some("off") => {
                if d.inputs_path.is_some() || d.mask.is_some() || d.inputs_buffer.is_some() {
                    return Err(bad("`decision_log.inputs_path` and `mask` need `decision_log.inputs: full`".into()));
                }
                Ok(None)
            }
            Some("full") => {
                let Some(p) = &d.inputs_path else {
                    return Err(bad(
                        "`decision_log.inputs: full` needs `decision_log.inputs_path` (its own file)".into()
                    ));
                };
                let path = match base {
                    Some(b) if p.is_relative() => b.join(p),
                    _ => p.clone(),
                };
                let mask = d.mask.clone().unwrap_or_default();
                if let Some(m) = mask.iter().find(|m| !m.starts_with('/')) {
                    return Err(bad(format!("`decision_log.mask`: `{m}` is not a JSON Pointer (it starts with `/`)")));
                }
                Ok(Some(InputCapture { path, mask, buffer: d.inputs_buffer.unwrap_or(256).max(1) }))
            }
            Some(o) => Err(bad(format!("`decision_log.inputs` `{o}` is not off or full"))),
        }
    }
}

/// Why the server settings are not usable (a configuration error: `hallpass serve` exits 64).
#[derive(Debug)]
pub enum SettingsError {
    /// The config file could not be read.
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid (YAML, unknown keys, types).
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, located.
        message: String,
    },
    /// No policy file was given.
    NoPolicy,
    /// A value (a duration, an address, the reload interval) is not acceptable.
    Value(String),
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::ReadConfig { path, source } => write!(f, "cannot read config {}: {source}", path.display()),
            SettingsError::ParseConfig { path, message } => write!(f, "config {}: {message}", path.display()),
            SettingsError::NoPolicy => f.write_str("no policy: pass --policy FILE (or `policy:` in --config)"),
            SettingsError::Value(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SettingsError {}

impl From<String> for SettingsError {
    fn from(m: String) -> Self {
        SettingsError::Value(m)
    }
}

impl ServerSettings {
    /// Combine defaults, the config file and overrides.
    pub fn resolve(o: Overrides) -> Result<ServerSettings, SettingsError> {
        let (file, base): (ConfigFile, Option<PathBuf>) = match &o.config {
            None => (ConfigFile::default(), None),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| SettingsError::ReadConfig { path: p.clone(), source })?;
                let cfg: ConfigFile = serde_yaml::from_str(&text)
                    .map_err(|e| SettingsError::ParseConfig { path: p.clone(), message: e.to_string() })?;
                (cfg, p.parent().map(Path::to_path_buf))
            }
        };
        let policy = match (o.policy, file.policy) {
            (Some(p), _) => p,
            (None, Some(p)) => match (&base, p.is_relative()) {
                (Some(b), true) => b.join(p),
                _ => p,
            },
            (None, None) => return Err(SettingsError::NoPolicy),
        };
        let grpc = o.grpc_listen.or(file.grpc_listen).unwrap_or_else(|| DEFAULT_GRPC_LISTEN.into());
        let admin = o.admin_listen.or(file.admin_listen).unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
        let defaults = CacheOptions::default();
        let cache_on = !o.no_cache && file.cache.enabled.unwrap_or(true);
        let ttl = duration("cache ttl", o.cache_ttl, file.cache.ttl, defaults.ttl)?;
        let max_entries = o.cache_max_entries.or(file.cache.max_entries).unwrap_or(defaults.max_entries);
        let cache =
            if cache_on && !ttl.is_zero() && max_entries > 0 { Some(CacheOptions { ttl, max_entries }) } else { None };
        let reload_defaults = ReloadOptions::default();
        let interval = duration("reload interval", o.reload_interval, file.reload.interval, reload_defaults.interval)?;
        if interval.is_zero() {
            return Err(SettingsError::Value("reload interval must be more than 0".into()));
        }
        let debounce = duration("reload debounce", None, file.reload.debounce, reload_defaults.debounce)?;
        let redis_url = o.redis_url.or(file.state.redis.url);
        let backend = o.state_backend.or(file.state.backend).unwrap_or(if redis_url.is_some() {
            StateBackendDef::Redis
        } else {
            StateBackendDef::Memory
        });
        // A directory from the config file is relative to it; one from a flag, to the cwd.
        let dir = match (o.state_dir, file.state.dir) {
            (Some(d), _) => Some(d),
            (None, Some(d)) => Some(match (&base, d.is_relative()) {
                (Some(b), true) => b.join(d),
                _ => d,
            }),
            (None, None) => None,
        };
        let max_keys_per_agent =
            file.state.max_keys_per_agent.unwrap_or(crate::state::DEFAULT_MAX_KEYS_PER_AGENT).max(1);
        let state = match backend {
            StateBackendDef::Memory => StateOptions::Memory {
                dir,
                max_keys: file.state.max_keys.unwrap_or(crate::state::memory::DEFAULT_MAX_KEYS).max(1),
                max_keys_per_agent,
            },
            StateBackendDef::Redis => {
                if dir.is_some() || file.state.max_keys.is_some() {
                    return Err(SettingsError::Value(
                        "`state.dir` and `state.max_keys` are for the memory store; with redis, Redis keeps the state"
                            .into(),
                    ));
                }
                let timeout = duration(
                    "state.redis.timeout",
                    None,
                    file.state.redis.timeout,
                    crate::state::redis::DEFAULT_TIMEOUT,
                )?;
                if timeout.is_zero() {
                    return Err(SettingsError::Value("`state.redis.timeout` must be longer than 0".into()));
                }
                StateOptions::Redis {
                    url: redis_url.ok_or_else(|| {
                        SettingsError::Value("the redis state store needs `state.redis.url` (or --redis-url)".into())
                    })?,
                    prefix: file.state.redis.key_prefix.unwrap_or_else(|| crate::state::redis::DEFAULT_PREFIX.into()),
                    timeout,
                    max_keys_per_agent,
                }
            }
        };
        let control_listen = match o.control_listen.or(file.control.listen) {
            None => None,
            Some(a) => Some(addr("--control-listen", &a)?),
        };
        Ok(ServerSettings {
            policy,
            grpc_listen: addr("--grpc-listen", &grpc)?,
            admin_listen: addr("--admin-listen", &admin)?,
            log_format: o.log_format.or(file.log_format).unwrap_or(LogFormat::Json),
            log_level: o.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
            cache,
            max_body_bytes: o.max_body_bytes.or(file.limits.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES),
            reload: ReloadOptions { debounce, interval },
            drain_delay: duration("drain delay", o.drain_delay, file.shutdown.drain_delay, Duration::from_secs(1))?,
            grace: duration("shutdown grace", o.shutdown_grace, file.shutdown.grace, Duration::from_secs(10))?,
            inputs: InputCapture::resolve(&file.decision_log, base.as_deref())?,
            decision_log: LogSink::parse(o.decision_log.or(file.decision_log.sink).as_deref().unwrap_or("stdout")),
            decision_log_buffer: file.decision_log.buffer.unwrap_or(8192).max(1),
            decision_log_query: file.decision_log.include_query.unwrap_or(false),
            state,
            control_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_loads_and_flags_override_it() {
        let cfg = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/hallpass.yaml"));
        let s = ServerSettings::resolve(Overrides { config: Some(cfg.clone()), ..Default::default() }).unwrap();
        assert!(s.policy.ends_with("config/policy.yaml"));
        assert!(s.policy.exists(), "policy path is resolved relative to the config file");
        assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:9191");
        assert_eq!(s.admin_listen.to_string(), "0.0.0.0:9192");
        assert_eq!(s.log_format, LogFormat::Json);
        let c = s.cache.unwrap();
        assert_eq!((c.ttl, c.max_entries), (Duration::from_secs(5), 10_000));
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.reload.interval, Duration::from_secs(10));
        assert_eq!(s.reload.debounce, Duration::from_millis(100));
        assert_eq!((s.drain_delay, s.grace), (Duration::from_secs(1), Duration::from_secs(10)));
        assert_eq!(s.decision_log, LogSink::Stdout);
        assert_eq!((s.decision_log_buffer, s.decision_log_query), (8192, false));
        let s = ServerSettings::resolve(Overrides {
            config: Some(cfg),
            grpc_listen: Some("127.0.0.1:7000".into()),
            log_format: Some(LogFormat::Text),
            no_cache: true,
            shutdown_grace: Some("3s".into()),
            decision_log: Some("/var/log/hallpass/decisions.jsonl".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.grpc_listen.port(), 7000);
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(s.cache.is_none());
        assert_eq!(s.grace, Duration::from_secs(3));
        assert_eq!(s.decision_log, LogSink::File("/var/log/hallpass/decisions.jsonl".into()));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(ServerSettings::resolve(Overrides::default()).is_err(), "no policy");
        let p = || Some(PathBuf::from("p.yaml"));
        let bad = Overrides { policy: p(), grpc_listen: Some("localhost".into()), ..Default::default() };
        assert!(ServerSettings::resolve(bad).is_err());
        let bad = Overrides { policy: p(), cache_ttl: Some("5 seconds".into()), ..Default::default() };
        assert!(ServerSettings::resolve(bad).is_err());
        let bad = Overrides { policy: p(), reload_interval: Some("0s".into()), ..Default::default() };
        assert!(ServerSettings::resolve(bad).is_err());
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("hallpass-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("typo.yaml");
        std::fs::write(&f, "policy: p.yaml\ncache:\n  ttl: 5s\n  max_entrys: 3\n").unwrap();
        let err = ServerSettings::resolve(Overrides { config: Some(f), ..Default::default() }).unwrap_err();
        assert!(matches!(err, SettingsError::ParseConfig { .. }), "{err}");
        assert!(err.to_string().contains("max_entrys"), "{err}");
        let err = ServerSettings::resolve(Overrides::default()).unwrap_err();
        assert!(matches!(err, SettingsError::NoPolicy), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("x", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("x", "5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("x", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("x", "3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("x", "1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "5", "5w", "-1s", "1.5s", "1m30s"] {
            assert!(parse_duration("x", bad).is_err(), "{bad}");
        }
    }
}
