//! Configuration: embedded defaults < TOML file (`--config`) < environment < command-line flags.
//!
//! One struct, [`ServeArgs`], is all four layers: clap reads flags and their environment variables
//! into it, serde reads the TOML file into it, and the defaults are `config/corral.toml` itself,
//! embedded in the binary — the file that documents every setting is the one place its default is
//! written. The layers are merged, then validated once, so a bad value is reported with the
//! setting's name before anything listens.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pki::{AllowList, CaProfile, ServerUrl, SubjectName};

pub mod tls;
pub use tls::{
    AcmeChallenge, AcmeSettings, Cacerts, CertOrigin, HostnameCertificate, TlsInputs, TlsSetup,
    TlsSetupError, TlsTermination,
};

/// The documented configuration file, every setting at its default: the bottom layer.
const EMBEDDED_DEFAULTS: &str = include_str!("../../config/corral.toml");

/// How certificates are chosen for clients before setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CertMode {
    /// One leaf per SNI name (or per local IP without SNI), minted on first contact.
    PerHost,
    /// dynamiclistener's way: one leaf whose SAN list grows with every learned name.
    Shared,
}

/// An on/off setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    On,
    Off,
}

/// The `serve` settings: as flags and environment variables (clap), as the TOML file and the
/// embedded defaults (serde). `None` is "not set in this layer".
#[derive(Debug, Default, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML configuration file (see config/corral.toml).
    #[arg(long, env = "CORRAL_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory holding the CA, keys and state [default: $XDG_DATA_HOME/corral or ~/.local/share/corral].
    #[arg(long, env = "CORRAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the CA, keys, accounts and clusters in etcd instead, shared by replicas:
    /// etcd://HOST:PORT[,HOST:PORT…] [default: the data directory].
    #[arg(long, env = "CORRAL_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With --store: HOST:PORT where the other replicas reach this one's HTTPS port, its peer id
    /// [default: the first --bind address (127.0.0.1 for ::) and the HTTPS port bound].
    #[arg(long, env = "CORRAL_ADVERTISE_ADDRESS", value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,
    /// With --store: the CA (PEM) that signed etcd's certificate: TLS to etcd.
    #[arg(long, env = "CORRAL_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// With --store: the client certificate (PEM) presented to etcd (with --etcd-key).
    #[arg(long, env = "CORRAL_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// With --store: the client certificate's key (PEM).
    #[arg(long, env = "CORRAL_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// With --store: seconds between compactions of etcd's history (kube-apiserver's
    /// --etcd-compaction-interval); 0 leaves it to etcd's own settings [default: 300].
    #[arg(long, env = "CORRAL_ETCD_COMPACTION_INTERVAL", value_name = "SECONDS")]
    pub etcd_compaction_interval: Option<u64>,
    /// Addresses to listen on, comma separated [default: :: (all interfaces, IPv4 and IPv6)].
    #[arg(long, env = "CORRAL_BIND", value_delimiter = ',', value_name = "IP")]
    pub bind: Option<Vec<IpAddr>>,
    /// HTTPS port [default: 8443]; 0 picks a free port.
    #[arg(long, env = "CORRAL_HTTPS_PORT", value_name = "PORT")]
    pub https_port: Option<u16>,
    /// HTTP port, which redirects to HTTPS like Rancher's [default: 8080]; 0 picks a free port.
    #[arg(long, env = "CORRAL_HTTP_PORT", value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Certificate strategy before setup [default: per-host].
    #[arg(long, env = "CORRAL_CERT_MODE", value_name = "MODE")]
    pub cert_mode: Option<CertMode>,
    /// Naming of a newly created CA [default: cattle].
    #[arg(long, env = "CORRAL_CA_PROFILE", value_name = "PROFILE")]
    pub ca_profile: Option<CaProfile>,
    /// Names that may get their own certificate: globs, or regexes prefixed `re:` [default: any].
    #[arg(
        long,
        env = "CORRAL_ALLOWED_NAMES",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub allowed_names: Option<Vec<String>>,
    /// Most certificates kept (per-host; the most used stay) or names carried (shared) [default: 10000].
    #[arg(long, env = "CORRAL_MAX_NAMES", value_name = "N")]
    pub max_names: Option<usize>,
    /// Most new names minted per second, 0 for no limit [default: 100].
    #[arg(long, env = "CORRAL_MINT_RATE", value_name = "PER_SECOND")]
    pub mint_rate: Option<u32>,
    /// Most new names minted per second for one client IP (IPv6: one /64), 0 for no limit
    /// [default: 20].
    #[arg(long, env = "CORRAL_MINT_RATE_PER_CLIENT", value_name = "PER_SECOND")]
    pub mint_rate_per_client: Option<u32>,
    /// Leaf lifetime in days [default: 365].
    #[arg(
        long,
        env = "CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS",
        value_name = "DAYS"
    )]
    pub cert_expiration_days: Option<u32>,
    /// Re-mint a leaf when it expires within this many days [default: 7].
    #[arg(
        long,
        env = "CATTLE_ROTATE_CERTS_IF_EXPIRING_IN_DAYS",
        value_name = "DAYS"
    )]
    pub rotate_days: Option<u32>,
    /// Seconds a client has to complete its TLS handshake [default: 10].
    #[arg(long, env = "CORRAL_HANDSHAKE_TIMEOUT", value_name = "SECONDS")]
    pub handshake_timeout: Option<u64>,
    /// Most connections open at once, HTTPS and HTTP together, tunnels and other upgraded
    /// connections included; more wait to be accepted [default: 10000].
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most tunnels one cluster (or node, or peer replica) may hold open at once; 0 for no limit
    /// [default: 10].
    #[arg(long, env = "CORRAL_MAX_TUNNELS_PER_CLUSTER", value_name = "N")]
    pub max_tunnels_per_cluster: Option<usize>,
    /// TLS session resumption (tickets and a session cache) [default: on]; off forces full handshakes.
    #[arg(long, env = "CORRAL_SESSION_TICKETS", value_name = "on|off")]
    pub session_tickets: Option<Toggle>,
    /// Seconds the cluster proxy waits for an agent, to be connected and to answer through its tunnel,
    /// before answering 503 [default: 15].
    #[arg(long, env = "CORRAL_AGENT_WAIT", value_name = "SECONDS")]
    pub agent_wait: Option<u64>,
    /// The HA install's hostname (helm's `--set hostname=`): every replica serves one certificate
    /// for it, issued by the CA and kept as `tls-rancher-ingress`; nothing is minted per name.
    #[arg(long, env = "CORRAL_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// With --hostname: the certificate as Rancher's chart makes it (`rancher`: the leaf lifetime,
    /// the shared leaf key) or as cert-manager does (`cert-manager`: 90 days, its own key, renewed
    /// 30 days before its end) [default: rancher].
    #[arg(
        long,
        env = "CORRAL_HOSTNAME_CERTIFICATE",
        value_name = "rancher|cert-manager"
    )]
    pub hostname_certificate: Option<HostnameCertificate>,
    /// Pin server-url from boot (the HA-style install): one certificate for its host, read-only.
    #[arg(long, env = "CATTLE_SERVER_URL", value_name = "URL")]
    pub server_url: Option<String>,
    /// Who terminates TLS: corral, or a proxy in front (`external`: plain HTTP) [default: corral].
    #[arg(long, env = "CORRAL_TLS", value_name = "corral|external")]
    pub tls: Option<TlsTermination>,
    /// Bring-your-own certificate chain (PEM), served as given [default: SSL_DIR/cert.pem if present].
    #[arg(long, env = "CORRAL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM) [default: SSL_DIR/key.pem if present].
    #[arg(long, env = "CORRAL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle /cacerts distributes (the private CA of the certificate) [default: SSL_DIR/cacerts.pem if present].
    #[arg(long, env = "CORRAL_CACERTS", value_name = "FILE")]
    pub cacerts: Option<PathBuf>,
    /// The certificate is from a CA clients trust: /cacerts is empty.
    #[arg(long, env = "CORRAL_NO_CACERTS")]
    #[serde(default)]
    pub no_cacerts: bool,
    /// Where Rancher's layout (cert.pem, key.pem, cacerts.pem) is looked for [default: /etc/rancher/ssl].
    #[arg(long, env = "CORRAL_SSL_DIR", value_name = "DIR")]
    pub ssl_dir: Option<PathBuf>,
    /// Get the certificate from Let's Encrypt (ACME) for this domain; repeatable. /cacerts is empty.
    #[arg(
        long = "acme-domain",
        env = "ACME_DOMAIN",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub acme_domains: Option<Vec<String>>,
    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, env = "CORRAL_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// How the ACME server validates the domains [default: http-01].
    #[arg(
        long,
        env = "CORRAL_ACME_CHALLENGE",
        value_name = "http-01|tls-alpn-01"
    )]
    pub acme_challenge: Option<AcmeChallenge>,
    /// CA to trust for the ACME directory's HTTPS (a private ACME server) [default: system roots].
    #[arg(long, env = "CORRAL_ACME_CA_CERT", value_name = "FILE")]
    pub acme_ca_cert: Option<PathBuf>,
    /// Log every request: method, path (no query but norman's action, no token), status, duration,
    /// client and user, as Rancher's API audit log at level 1.
    #[arg(long, env = "CORRAL_ACCESS_LOG")]
    #[serde(default)]
    pub access_log: bool,
    /// Lab faults active from the start: the file's `[[lab_faults]]` tables, with the fields of
    /// `POST /v3/corral/faults`. None unless the file asks.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab_faults: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

impl ServeArgs {
    /// `config/corral.toml` as embedded: every setting that has a default, at its default.
    pub fn embedded_defaults() -> Self {
        toml::from_str(EMBEDDED_DEFAULTS).expect("config/corral.toml parses (a unit test checks)")
    }

    /// `self` over `under`: each setting set here wins (`no_cacerts` only when set, as a flag is).
    fn over(self, under: ServeArgs) -> Result<ServeArgs, ConfigError> {
        let as_map = |settings: &ServeArgs| match serde_json::to_value(settings) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("a struct of plain settings serializes to an object"),
        };
        let mut merged = as_map(&under);
        for (name, value) in as_map(&self) {
            if !value.is_null() && value != serde_json::Value::Bool(false) {
                merged.insert(name, value);
            }
        }
        let mut settings: ServeArgs = serde_json::from_value(merged.into())
            .map_err(|e| invalid("settings", format!("cannot merge the layers: {e}")))?;
        settings.config = self.config.or(under.config);
        Ok(settings)
    }

    /// The TLS inputs, from settings merged over the embedded defaults.
    pub fn tls_inputs(&self) -> TlsInputs {
        TlsInputs {
            termination: self.tls.unwrap_or(TlsTermination::Corral),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            cacerts: self.cacerts.clone(),
            no_cacerts: self.no_cacerts,
            ssl_dir: self.ssl_dir.clone().unwrap_or_default(),
            acme_domains: self
                .acme_domains
                .iter()
                .flatten()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
            acme_directory: self.acme_directory.clone().unwrap_or_default(),
            acme_challenge: self.acme_challenge.unwrap_or(AcmeChallenge::Http01),
            acme_ca_cert: self.acme_ca_cert.clone(),
        }
    }
}

/// etcd, when it keeps the state (`--store`), and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `etcd://HOST:PORT[,HOST:PORT…]`.
    pub url: String,
    /// TLS to etcd: all `None` for plain HTTP.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How often etcd's history is compacted (`None`: not by corral; the offline commands).
    pub compaction: Option<Duration>,
}

impl StoreSettings {
    /// The store settings, if `--store` is given; the etcd TLS flags without it, or a certificate
    /// without its key, are refused.
    pub fn resolve(
        url: Option<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, ConfigError> {
        let url = url.filter(|u| !u.trim().is_empty());
        let Some(url) = url else {
            if ca.is_some() || cert.is_some() || key.is_some() {
                return Err(invalid("etcd-ca/etcd-cert/etcd-key", "they need --store"));
            }
            return Ok(None);
        };
        if cert.is_some() != key.is_some() {
            return Err(invalid(
                "etcd-cert/etcd-key",
                "a client certificate needs its key, and a key its certificate",
            ));
        }
        Ok(Some(Self {
            url,
            ca,
            cert,
            key,
            compaction: None,
        }))
    }
}

/// `--store` and etcd's TLS flags, for the commands that read the state without serving
/// (`reset-password`, `ca checksum`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreFlags {
    /// Read and change the state in etcd instead of the data directory: etcd://HOST:PORT[,…].
    #[arg(long, env = "CORRAL_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The CA (PEM) that signed etcd's certificate.
    #[arg(long, env = "CORRAL_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "CORRAL_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, env = "CORRAL_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
}

impl StoreFlags {
    pub fn resolve(self) -> Result<Option<StoreSettings>, ConfigError> {
        StoreSettings::resolve(self.store, self.etcd_ca, self.etcd_cert, self.etcd_key)
    }
}

/// The validated configuration a server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where durable state is kept: `None` for the data directory, else etcd.
    pub store: Option<StoreSettings>,
    /// Where peers reach this replica (`None`: computed from the bind address and port).
    pub advertise_address: Option<String>,
    pub bind: Vec<IpAddr>,
    pub https_port: u16,
    pub http_port: u16,
    pub cert_mode: CertMode,
    pub ca_profile: CaProfile,
    pub allowed_names: AllowList,
    pub max_names: usize,
    /// New names per second; `None` means unlimited.
    pub mint_rate: Option<u32>,
    /// New names per second per client; `None` means unlimited.
    pub mint_rate_per_client: Option<u32>,
    pub cert_expiration_days: u32,
    pub rotate_days: u32,
    pub handshake_timeout: Duration,
    pub agent_wait: Duration,
    pub max_connections: usize,
    /// Tunnels per cluster, node or peer at once (`None`: no limit).
    pub max_tunnels_per_cluster: Option<usize>,
    /// Whether clients may resume TLS sessions.
    pub session_tickets: bool,
    pub server_url: Option<ServerUrl>,
    /// `--hostname`: the one DNS name every replica serves a certificate for.
    pub hostname: Option<SubjectName>,
    /// How that certificate is made and renewed.
    pub hostname_certificate: HostnameCertificate,
    /// Lab faults to start with (the config file's `[[lab_faults]]`), as written: the server
    /// reads them as the API reads a body.
    pub lab_faults: Vec<serde_json::Map<String, serde_json::Value>>,
    /// `CATTLE_BOOTSTRAP_PASSWORD` (environment only, so it never shows in `ps`).
    pub bootstrap_password: Option<Secret>,
    /// `CORRAL_PEER_TOKEN` (environment only): one peer token for every replica, as Rancher's.
    pub peer_token: Option<Secret>,
    /// Who terminates TLS, which certificate is served, what `/cacerts` says.
    pub tls: TlsSetup,
    /// Whether each request is logged.
    pub access_log: bool,
}

/// A secret that must not appear in logs or debug output.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why corral will not start with these settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting that could not be used, named as the user wrote it.
    #[error("invalid {setting}: {reason}")]
    Invalid { setting: String, reason: String },
    /// A TLS set-up Rancher refuses too: its start-up error, word for word.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

fn invalid(setting: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        reason: reason.to_string(),
    }
}

/// A setting every layer left unset: only if the embedded defaults lost it (a unit test checks).
fn given<T>(value: Option<T>, setting: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(setting, "has no value, and no default"))
}

impl Config {
    /// Merges flags/env over the file over the defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let s = args.over(file)?.over(ServeArgs::embedded_defaults())?;
        let data_dir = s.data_dir.clone().map_or_else(default_data_dir, Ok)?;
        let tls = s.tls_inputs().resolve()?;
        let config = Config {
            data_dir,
            store: StoreSettings::resolve(
                s.store.clone(),
                s.etcd_ca.clone(),
                s.etcd_cert.clone(),
                s.etcd_key.clone(),
            )?
            .map(|store| StoreSettings {
                compaction: s.etcd_compaction_interval.map(Duration::from_secs),
                ..store
            }),
            advertise_address: s.advertise_address.clone().filter(|a| !a.trim().is_empty()),
            bind: given(s.bind, "bind")?,
            https_port: given(s.https_port, "https-port")?,
            http_port: given(s.http_port, "http-port")?,
            cert_mode: given(s.cert_mode, "cert-mode")?,
            ca_profile: given(s.ca_profile, "ca-profile")?,
            allowed_names: AllowList::new(&s.allowed_names.unwrap_or_default())
                .map_err(|e| invalid("allowed-names", e))?,
            max_names: given(s.max_names, "max-names")?,
            mint_rate: Some(given(s.mint_rate, "mint-rate")?).filter(|r| *r > 0),
            mint_rate_per_client: Some(given(s.mint_rate_per_client, "mint-rate-per-client")?)
                .filter(|r| *r > 0),
            cert_expiration_days: given(s.cert_expiration_days, "cert-expiration-days")?,
            rotate_days: given(s.rotate_days, "rotate-days")?,
            handshake_timeout: Duration::from_secs(given(
                s.handshake_timeout,
                "handshake-timeout",
            )?),
            agent_wait: Duration::from_secs(given(s.agent_wait, "agent-wait")?),
            session_tickets: given(s.session_tickets, "session-tickets")? == Toggle::On,
            max_connections: given(s.max_connections, "max-connections")?,
            max_tunnels_per_cluster: Some(given(
                s.max_tunnels_per_cluster,
                "max-tunnels-per-cluster",
            )?)
            .filter(|n| *n > 0),
            hostname_certificate: given(s.hostname_certificate, "hostname-certificate")?,
            lab_faults: s.lab_faults.clone().unwrap_or_default(),
            hostname: s
                .hostname
                .filter(|h| !h.trim().is_empty())
                .map(|h| match SubjectName::parse(h.trim()) {
                    Ok(name @ SubjectName::Dns(_)) if !name.as_text().contains('*') => Ok(name),
                    Ok(_) => Err(invalid("hostname", format!("{h:?} is not a DNS name"))),
                    Err(e) => Err(invalid("hostname", e)),
                })
                .transpose()?,
            server_url: s
                .server_url
                .filter(|u| !u.trim().is_empty())
                .map(|u| ServerUrl::parse(&u))
                .transpose()
                .map_err(|e| invalid("server-url", e))?,
            bootstrap_password: std::env::var("CATTLE_BOOTSTRAP_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret),
            peer_token: std::env::var("CORRAL_PEER_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .map(Secret),
            tls,
            access_log: s.access_log,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.is_empty() {
            return Err(invalid("bind", "no address given"));
        }
        if self.https_port != 0 && self.https_port == self.http_port {
            return Err(invalid("http-port", "must differ from https-port"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max-connections", "must be at least 1"));
        }
        if self.max_names == 0 {
            return Err(invalid("max-names", "must be at least 1"));
        }
        if self.cert_expiration_days == 0 {
            return Err(invalid("cert-expiration-days", "must be at least 1"));
        }
        if self.rotate_days >= self.cert_expiration_days {
            return Err(invalid(
                "rotate-days",
                format!(
                    "{} would renew every leaf at once: it must be below cert-expiration-days ({})",
                    self.rotate_days, self.cert_expiration_days
                ),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake-timeout", "must be at least 1 second"));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let setting = format!("config file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| invalid(&setting, e))?;
    toml::from_str(&text).map_err(|e| {
        // The line and the key, from where the error is: serde's message alone names neither.
        let located = e.span().map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(key, _)| key.trim().to_string())
                .filter(|key| !key.is_empty() && !key.starts_with('#'));
            match key {
                Some(key) => format!("{setting}, line {line}, {key}"),
                None => format!("{setting}, line {line}"),
            }
        });
        invalid(located.as_deref().unwrap_or(&setting), e.message())
    })
}

/// `$XDG_DATA_HOME/corral`, else `~/.local/share/corral`: writable by a non-root newcomer.
pub fn default_data_dir() -> Result<PathBuf, ConfigError> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("corral"));
    }
    non_empty("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/corral"))
        .ok_or_else(|| {
            invalid(
                "data-dir",
                "neither XDG_DATA_HOME nor HOME is set; pass --data-dir",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            data_dir: Some("/tmp/x".into()),
            ..ServeArgs::default()
        }
    }

    /// Every setting with a default has it in the embedded file, and `--help` says the same.
    #[test]
    fn the_embedded_file_is_every_default() {
        let defaults = ServeArgs::embedded_defaults();
        let json = serde_json::to_value(&defaults).unwrap();
        let unset: Vec<_> = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_null())
            .map(|(k, _)| k.as_str())
            .collect();
        // Unset by design: a computed default, or nothing unless given.
        let optional = [
            "acme_ca_cert",
            "acme_domains",
            "advertise_address",
            "cacerts",
            "data_dir",
            "etcd_ca",
            "etcd_cert",
            "etcd_key",
            "hostname",
            "server_url",
            "store",
            "tls_cert",
            "tls_key",
        ];
        assert_eq!(unset, optional);
        let help = {
            use clap::CommandFactory;
            #[derive(clap::Parser)]
            struct Probe {
                #[command(flatten)]
                args: ServeArgs,
            }
            Probe::command().render_long_help().to_string()
        };
        for (flag, value) in [
            ("--https-port", "8443"),
            ("--http-port", "8080"),
            ("--cert-mode", "per-host"),
            ("--ca-profile", "cattle"),
            ("--max-names", "10000"),
            ("--mint-rate ", "100"),
            ("--mint-rate-per-client", "20"),
            ("--cert-expiration-days", "365"),
            ("--rotate-days", "7"),
            ("--handshake-timeout", "10"),
            ("--max-connections", "10000"),
            ("--max-tunnels-per-cluster", "10"),
            ("--session-tickets", "on"),
            ("--agent-wait", "15"),
            ("--tls ", "corral"),
            ("--acme-challenge", "http-01"),
        ] {
            let at = help
                .find(flag)
                .unwrap_or_else(|| panic!("{flag} in --help"));
            let text = &help[at..];
            let text = &text[..text.find("\n\n").unwrap_or(text.len())];
            assert!(
                text.contains(&format!("[default: {value}]")),
                "{flag}: {text}"
            );
            let key = flag.trim().trim_start_matches("--").replace('-', "_");
            let embedded = json[key.as_str()].to_string();
            assert_eq!(
                embedded.trim_matches('"'),
                value,
                "{flag} in config/corral.toml"
            );
        }
    }

    #[test]
    fn defaults_match_rancher() {
        let c = Config::resolve(args()).unwrap();
        assert_eq!((c.https_port, c.http_port), (8443, 8080));
        assert_eq!((c.cert_expiration_days, c.rotate_days), (365, 7));
        assert_eq!(c.cert_mode, CertMode::PerHost);
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "https_port = 9443\nhttp_port = 9080\ncert_mode = \"shared\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file);
        a.https_port = Some(7443);
        let c = Config::resolve(a).unwrap();
        assert_eq!((c.https_port, c.http_port), (7443, 9080));
        assert_eq!(c.cert_mode, CertMode::Shared);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "https_prot = 1\n").unwrap();
        let mut a = args();
        a.config = Some(file);
        assert!(
            Config::resolve(a)
                .unwrap_err()
                .to_string()
                .contains("https_prot")
        );
        let mut a = args();
        a.rotate_days = Some(400);
        assert!(
            Config::resolve(a)
                .unwrap_err()
                .to_string()
                .contains("rotate-days")
        );
        let mut a = args();
        a.allowed_names = Some(vec!["re:(".into()]);
        assert!(
            Config::resolve(a)
                .unwrap_err()
                .to_string()
                .contains("allowed-names")
        );
    }
}
