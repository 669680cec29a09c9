//! Node settings: flags, then a TOML file (`--config`), then `TASKBROKER_*` environment
//! variables, in that order of precedence, then the embedded single-node defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use taskbroker_storage::io::BackendChoice;

/// Default client API (and Raft) address of a single node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default HTTP address (metrics, health, UI).
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./taskbroker-data";
/// Default largest task (key + payload + headers): 1 MiB, what the Kafka deployment allowed.
pub const DEFAULT_MAX_TASK_BYTES: u64 = 1 << 20;
/// Default largest record batch: 16 MiB, one Raft entry replicated in one append.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 << 20;

/// Configuration errors: a clear message, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file does not parse or has unknown keys.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting has a bad value.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Invalid {
        /// Setting name.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// Settings as they may appear in any one source; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialConfig {
    /// This node's id (>= 1).
    pub node_id: Option<u64>,
    /// Address for the client API and (unless `raft_listen`) Raft traffic.
    pub listen: Option<String>,
    /// Address other nodes and clients should use to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// Separate address for Raft traffic (optional).
    pub raft_listen: Option<String>,
    /// HTTP address (metrics, health, UI, admin API).
    pub http: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Initial cluster: `1=host:port,2=host:port,...`.
    pub peers: Option<String>,
    /// Storage backend: `auto`, `uring` or `std`.
    pub storage_backend: Option<String>,
    /// Raft heartbeat period, ms.
    pub heartbeat_interval_ms: Option<u64>,
    /// Raft election timeout lower bound, ms.
    pub election_timeout_min_ms: Option<u64>,
    /// Raft election timeout upper bound, ms.
    pub election_timeout_max_ms: Option<u64>,
    /// Largest task accepted (key + payload + headers), bytes.
    pub max_task_bytes: Option<u64>,
    /// Largest record batch accepted, bytes.
    pub max_batch_bytes: Option<u64>,
    /// Hand partition leadership back to the preferred replica (the first in placement) once
    /// it is up and caught up (default true).
    pub rebalance_leaders: Option<bool>,
}

impl PartialConfig {
    /// Fills every unset field of `self` from `other`.
    pub fn or(self, other: PartialConfig) -> PartialConfig {
        PartialConfig {
            node_id: self.node_id.or(other.node_id),
            listen: self.listen.or(other.listen),
            advertise: self.advertise.or(other.advertise),
            raft_listen: self.raft_listen.or(other.raft_listen),
            http: self.http.or(other.http),
            data_dir: self.data_dir.or(other.data_dir),
            peers: self.peers.or(other.peers),
            storage_backend: self.storage_backend.or(other.storage_backend),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(other.heartbeat_interval_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(other.election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(other.election_timeout_max_ms),
            max_task_bytes: self.max_task_bytes.or(other.max_task_bytes),
            max_batch_bytes: self.max_batch_bytes.or(other.max_batch_bytes),
            rebalance_leaders: self.rebalance_leaders.or(other.rebalance_leaders),
        }
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<PartialConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads `TASKBROKER_*` variables from `vars` (pass `std::env::vars()`).
    pub fn from_env(
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<PartialConfig, ConfigError> {
        let mut c = PartialConfig::default();
        for (k, v) in vars {
            let Some(name) = k.strip_prefix("TASKBROKER_") else {
                continue;
            };
            let num = |name: &'static str, v: &str| {
                v.parse::<u64>().map_err(|e| ConfigError::Invalid {
                    name,
                    value: v.to_string(),
                    reason: e.to_string(),
                })
            };
            match name {
                "NODE_ID" => c.node_id = Some(num("TASKBROKER_NODE_ID", &v)?),
                "LISTEN" => c.listen = Some(v),
                "ADVERTISE" => c.advertise = Some(v),
                "RAFT_LISTEN" => c.raft_listen = Some(v),
                "HTTP" => c.http = Some(v),
                "DATA_DIR" => c.data_dir = Some(v.into()),
                "PEERS" => c.peers = Some(v),
                "STORAGE_BACKEND" => c.storage_backend = Some(v),
                "HEARTBEAT_INTERVAL_MS" => {
                    c.heartbeat_interval_ms = Some(num("TASKBROKER_HEARTBEAT_INTERVAL_MS", &v)?)
                }
                "ELECTION_TIMEOUT_MIN_MS" => {
                    c.election_timeout_min_ms = Some(num("TASKBROKER_ELECTION_TIMEOUT_MIN_MS", &v)?)
                }
                "ELECTION_TIMEOUT_MAX_MS" => {
                    c.election_timeout_max_ms = Some(num("TASKBROKER_ELECTION_TIMEOUT_MAX_MS", &v)?)
                }
                "MAX_TASK_BYTES" => c.max_task_bytes = Some(num("TASKBROKER_MAX_TASK_BYTES", &v)?),
                "REBALANCE_LEADERS" => {
                    c.rebalance_leaders =
                        Some(v.parse::<bool>().map_err(|e| ConfigError::Invalid {
                            name: "TASKBROKER_REBALANCE_LEADERS",
                            value: v.clone(),
                            reason: e.to_string(),
                        })?)
                }
                "MAX_BATCH_BYTES" => {
                    c.max_batch_bytes = Some(num("TASKBROKER_MAX_BATCH_BYTES", &v)?)
                }
                // Client-side variables (e.g. TASKBROKER_BROKERS) are not node settings.
                _ => {}
            }
        }
        Ok(c)
    }
}

/// Fully resolved, validated node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: u64,
    /// Client API (and Raft) listen address.
    pub listen: String,
    /// Advertised address.
    pub advertise: String,
    /// Optional separate Raft listen address.
    pub raft_listen: Option<String>,
    /// HTTP listen address; empty serves no HTTP (simulations).
    pub http: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Initial voters: id -> address.
    pub peers: BTreeMap<u64, String>,
    /// Storage backend choice.
    pub storage_backend: BackendChoice,
    /// Raft heartbeat, ms.
    pub heartbeat_interval_ms: u64,
    /// Election timeout bounds, ms.
    pub election_timeout_min_ms: u64,
    /// Election timeout bounds, ms.
    pub election_timeout_max_ms: u64,
    /// Largest task accepted, bytes (`TooLarge` above).
    pub max_task_bytes: u64,
    /// Largest record batch accepted, bytes (`TooLarge` above).
    pub max_batch_bytes: u64,
    /// Hand partition leadership back to preferred replicas (`controller::rebalance_loop`).
    pub rebalance_leaders: bool,
    /// Segment-log settings of every group (defaults; simulations use small segments).
    pub log: taskbroker_storage::LogConfig,
}

/// See [`NodeConfig::advertised_http`]: `http` with its wildcard host replaced by the host of
/// `advertise` (kept as is when that is a wildcard too, or either has no port).
pub fn advertised_http(http: &str, advertise: &str) -> String {
    let split = |a: &str| {
        a.rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.to_owned()))
    };
    let wildcard = |h: &str| matches!(h, "" | "0.0.0.0" | "[::]" | "::" | "*");
    match (split(http), split(advertise)) {
        (Some((host, port)), Some((adv_host, _))) if wildcard(&host) && !wildcard(&adv_host) => {
            format!("{adv_host}:{port}")
        }
        _ => http.to_owned(),
    }
}

fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let bad = |reason: String| ConfigError::Invalid {
        name: "peers",
        value: s.to_string(),
        reason,
    };
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("{id:?} is not a node id")))?;
        if id == 0 {
            return Err(bad("node ids start at 1".into()));
        }
        check_addr("peers", addr.trim())?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(bad(format!("node {id} listed twice")));
        }
    }
    if peers.is_empty() {
        return Err(bad("no peers given".into()));
    }
    Ok(peers)
}

fn check_addr(name: &'static str, addr: &str) -> Result<(), ConfigError> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| ConfigError::Invalid {
        name,
        value: addr.to_string(),
        reason: "expected HOST:PORT".into(),
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ConfigError::Invalid {
            name,
            value: addr.to_string(),
            reason: "expected HOST:PORT with a port number".into(),
        });
    }
    Ok(())
}

impl NodeConfig {
    /// Resolves the merged settings, applying defaults and validating everything.
    ///
    /// ```
    /// use taskbroker_node::config::{NodeConfig, PartialConfig};
    /// let c = NodeConfig::resolve(PartialConfig::default()).unwrap();
    /// assert_eq!(c.listen, "127.0.0.1:7070");
    /// assert_eq!(c.peers.len(), 1);
    /// ```
    pub fn resolve(p: PartialConfig) -> Result<NodeConfig, ConfigError> {
        let node_id = p.node_id.unwrap_or(1);
        if node_id == 0 {
            return Err(ConfigError::Invalid {
                name: "node-id",
                value: "0".into(),
                reason: "node ids start at 1".into(),
            });
        }
        let listen = p.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        check_addr("listen", &listen)?;
        let advertise = p.advertise.unwrap_or_else(|| listen.clone());
        check_addr("advertise", &advertise)?;
        if let Some(r) = &p.raft_listen {
            check_addr("raft-listen", r)?;
        }
        let http = p.http.unwrap_or_else(|| DEFAULT_HTTP.to_string());
        check_addr("http", &http)?;
        let peers = match &p.peers {
            Some(s) => parse_peers(s)?,
            None => BTreeMap::from([(node_id, advertise.clone())]),
        };
        if !peers.contains_key(&node_id) {
            return Err(ConfigError::Invalid {
                name: "peers",
                value: p.peers.clone().unwrap_or_default(),
                reason: format!("this node's id {node_id} is not among the peers"),
            });
        }
        let backend = p.storage_backend.unwrap_or_else(|| "auto".into());
        let storage_backend =
            backend
                .parse::<BackendChoice>()
                .map_err(|_| ConfigError::Invalid {
                    name: "storage-backend",
                    value: backend.clone(),
                    reason: "expected auto, uring or std".into(),
                })?;
        let heartbeat_interval_ms = p.heartbeat_interval_ms.unwrap_or(300);
        let election_timeout_min_ms = p.election_timeout_min_ms.unwrap_or(1000);
        let election_timeout_max_ms = p.election_timeout_max_ms.unwrap_or(2000);
        if heartbeat_interval_ms == 0
            || election_timeout_min_ms <= heartbeat_interval_ms
            || election_timeout_max_ms <= election_timeout_min_ms
        {
            return Err(ConfigError::Invalid {
                name: "election-timeout",
                value: format!(
                    "heartbeat={heartbeat_interval_ms} min={election_timeout_min_ms} max={election_timeout_max_ms}"
                ),
                reason: "need 0 < heartbeat < election min < election max".into(),
            });
        }
        let max_task_bytes = p.max_task_bytes.unwrap_or(DEFAULT_MAX_TASK_BYTES);
        let max_batch_bytes = p.max_batch_bytes.unwrap_or(DEFAULT_MAX_BATCH_BYTES);
        let hard = taskbroker_client::batch::BATCH_BYTES_MAX as u64;
        if max_task_bytes == 0 || max_batch_bytes == 0 || max_batch_bytes > hard {
            return Err(ConfigError::Invalid {
                name: "max-batch-bytes",
                value: format!("task={max_task_bytes} batch={max_batch_bytes}"),
                reason: format!("need 0 < max_task_bytes and 0 < max_batch_bytes <= {hard}"),
            });
        }
        Ok(NodeConfig {
            node_id,
            listen,
            advertise,
            raft_listen: p.raft_listen,
            http,
            data_dir: p.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            peers,
            storage_backend,
            heartbeat_interval_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            max_task_bytes,
            max_batch_bytes,
            rebalance_leaders: p.rebalance_leaders.unwrap_or(true),
            log: taskbroker_storage::LogConfig::default(),
        })
    }

    /// The HTTP address other nodes, the CLI and the web UI should use: the HTTP address
    /// itself, unless it binds every interface (`0.0.0.0`, `[::]` or no host), which cannot be
    /// dialled: then the advertised address's host with the HTTP port. Empty when no HTTP is
    /// served.
    ///
    /// ```
    /// use taskbroker_node::config::advertised_http;
    /// assert_eq!(advertised_http("0.0.0.0:8080", "node1:7070"), "node1:8080");
    /// assert_eq!(advertised_http("127.0.0.1:8001", "127.0.0.1:7001"), "127.0.0.1:8001");
    /// ```
    pub fn advertised_http(&self) -> String {
        advertised_http(&self.http, &self.advertise)
    }

    /// The HTTP address as a socket address.
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http
            .parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                name: "http",
                value: self.http.clone(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_http_never_names_a_wildcard_address() {
        assert_eq!(advertised_http("0.0.0.0:8080", "node1:7070"), "node1:8080");
        assert_eq!(
            advertised_http("[::]:8080", "10.0.0.5:7070"),
            "10.0.0.5:8080"
        );
        assert_eq!(advertised_http(":8080", "[fd00::1]:7070"), "[fd00::1]:8080");
        assert_eq!(
            advertised_http("127.0.0.1:8001", "node1:7001"),
            "127.0.0.1:8001"
        );
        // Nothing better known: keep what was given.
        assert_eq!(
            advertised_http("0.0.0.0:8080", "0.0.0.0:7070"),
            "0.0.0.0:8080"
        );
        assert_eq!(advertised_http("", "node1:7070"), "");
    }

    #[test]
    fn precedence_flags_then_file_then_env() {
        let flags = PartialConfig {
            listen: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let file: PartialConfig =
            toml::from_str("listen = \"127.0.0.1:2\"\nhttp = \"127.0.0.1:3\"").unwrap();
        let env = PartialConfig::from_env(
            [
                ("TASKBROKER_HTTP".to_string(), "127.0.0.1:4".to_string()),
                ("TASKBROKER_NODE_ID".to_string(), "1".to_string()),
            ]
            .into_iter(),
        )
        .unwrap();
        let c = NodeConfig::resolve(flags.or(file).or(env)).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.http, "127.0.0.1:3");
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let p = |s: &str| PartialConfig {
            peers: Some(s.into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(p("1=127.0.0.1:7001,2=127.0.0.1:7002")).is_ok());
        for bad in [
            "1=nope",
            "x=127.0.0.1:1",
            "2=127.0.0.1:7002",
            "1=a:1,1=a:2",
            "",
        ] {
            let e = NodeConfig::resolve(p(bad)).unwrap_err();
            assert!(e.to_string().contains("peers"), "{bad}: {e}");
        }
        let e = PartialConfig::from_env([("TASKBROKER_NODE_ID".into(), "abc".into())].into_iter());
        assert!(e.is_err());
        let e = toml::from_str::<PartialConfig>("no_such_key = 1").unwrap_err();
        assert!(e.to_string().contains("no_such_key"));
    }
}
