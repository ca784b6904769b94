//! Server settings: defaults, overridden by an optional YAML config file (`--config`),
//! overridden by flags or their `HALLPASS_*` environment variables.
//!
//! Everything is parsed and validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

/// Values given on the command line (or in `HALLPASS_*` variables).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--policy`.
    pub policy: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--grpc-listen`.
    pub grpc_listen: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

fn addr(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{what} `{s}` is not an address such as 127.0.0.1:9191"))
}

impl ServerSettings {
    /// Combine defaults, the config file and overrides; errors are messages to print.
    pub fn resolve(o: Overrides) -> Result<ServerSettings, String> {
        let (file, base): (ConfigFile, Option<PathBuf>) = match &o.config {
            None => (ConfigFile::default(), None),
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
                let cfg: ConfigFile =
                    serde_yaml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?;
                (cfg, p.parent().map(Path::to_path_buf))
            }
        };
        let policy = match (o.policy, file.policy) {
            (Some(p), _) => p,
            (None, Some(p)) => match (&base, p.is_relative()) {
                (Some(b), true) => b.join(p),
                _ => p,
            },
            (None, None) => return Err("no policy: pass --policy FILE (or `policy:` in --config)".into()),
        };
        let grpc = o.grpc_listen.or(file.grpc_listen).unwrap_or_else(|| DEFAULT_GRPC_LISTEN.into());
        let admin = o.admin_listen.or(file.admin_listen).unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
        Ok(ServerSettings {
            policy,
            grpc_listen: addr("--grpc-listen", &grpc)?,
            admin_listen: addr("--admin-listen", &admin)?,
            log_format: o.log_format.or(file.log_format).unwrap_or(LogFormat::Json),
            log_level: o.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
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
        let s = ServerSettings::resolve(Overrides {
            config: Some(cfg),
            grpc_listen: Some("127.0.0.1:7000".into()),
            log_format: Some(LogFormat::Text),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.grpc_listen.port(), 7000);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(ServerSettings::resolve(Overrides::default()).is_err(), "no policy");
        let bad =
            Overrides { policy: Some("p.yaml".into()), grpc_listen: Some("localhost".into()), ..Default::default() };
        assert!(ServerSettings::resolve(bad).is_err());
    }
}
