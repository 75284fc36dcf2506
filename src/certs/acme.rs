//! Let's Encrypt mode (`--acme-domain`): one certificate for the listed domains from an ACME server,
//! obtained with HTTP-01 (answered on the HTTP port's `/.well-known/acme-challenge/`) or TLS-ALPN-01
//! (a certificate for ALPN `acme-tls/1` on the HTTPS port), kept in the data directory and renewed
//! before it expires. As Rancher's autocert mode, `/cacerts` is empty.
//!
//! Until the first certificate arrives, clients get the fallback certificate; a failed attempt is
//! logged and retried with a growing delay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::ServerConfig;

use super::byo::parse_pair;
use super::served::{Served, alpn_challenge_config, unix_now};
use crate::config::{AcmeChallenge, AcmeSettings};
use crate::store::{PUBLIC_MODE, SECRET_MODE, read_optional, write_atomic};

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub use crate::pki::ACME_TLS_ALPN;

/// A certificate this close to expiry is renewed (Let's Encrypt's advice: a third of 90 days).
const RENEW_WITHIN: i64 = 30 * 86_400;
/// How often the certificate's expiry is checked once obtained.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// The first and the longest wait after a failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);

pub struct AcmeCert {
    settings: AcmeSettings,
    /// `<data dir>/acme`: account.json, cert.pem, key.pem.
    dir: PathBuf,
    resumption: bool,
    current: ArcSwapOption<Served>,
    /// HTTP-01 tokens being validated → their key authorizations.
    challenges: DashMap<String, String>,
    /// TLS-ALPN-01: domains being validated → the config presenting their challenge certificate.
    alpn_challenges: DashMap<String, Arc<ServerConfig>>,
}

impl AcmeCert {
    /// Restores a stored certificate for the same domains, if there is one.
    pub fn new(settings: AcmeSettings, data_dir: &Path, resumption: bool) -> Result<Self, String> {
        let dir = data_dir.join("acme");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let acme = Self {
            settings,
            dir,
            resumption,
            current: ArcSwapOption::empty(),
            challenges: DashMap::new(),
            alpn_challenges: DashMap::new(),
        };
        match acme.restore() {
            Ok(Some(served)) => acme.current.store(Some(Arc::new(served))),
            Ok(None) => {}
            Err(e) => tracing::warn!("ignoring the stored ACME certificate: {e}"),
        }
        Ok(acme)
    }

    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.load_full()
    }

    /// The key authorization for an HTTP-01 `token`, while it is being validated.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges.get(token).map(|k| k.clone())
    }

    /// TLS-ALPN-01: the config to present to a validator asking for `domain` with ALPN `acme-tls/1`.
    pub fn alpn_challenge(&self, domain: &str) -> Option<Arc<ServerConfig>> {
        self.alpn_challenges.get(domain).map(|c| c.clone())
    }

    /// Obtains and renews for as long as the process runs.
    pub fn run(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut retry = RETRY_FIRST;
            loop {
                match self.ensure().await {
                    Ok(()) => {
                        retry = RETRY_FIRST;
                        tokio::time::sleep(CHECK_EVERY).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "ACME: no certificate for {} yet ({e}); retrying in {retry:?}",
                            self.settings.domains.join(", ")
                        );
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        });
    }

    /// Obtains a certificate unless the current one is good for a while yet.
    async fn ensure(&self) -> Result<(), String> {
        if let Some(current) = self.current()
            && !current.expires_within(unix_now(), RENEW_WITHIN)
        {
            return Ok(());
        }
        let (chain, key) = self.obtain().await?;
        let served = self.serve(chain.as_bytes(), key.as_bytes())?;
        write_atomic(&self.dir.join("key.pem"), key.as_bytes(), SECRET_MODE)
            .and_then(|()| write_atomic(&self.dir.join("cert.pem"), chain.as_bytes(), PUBLIC_MODE))
            .map_err(|e| format!("cannot store the certificate: {e}"))?;
        self.current.store(Some(Arc::new(served)));
        tracing::info!(
            "ACME: obtained a certificate for {} from {}",
            self.settings.domains.join(", "),
            self.settings.directory
        );
        Ok(())
    }

    /// The stored certificate, if it is for exactly the configured domains.
    fn restore(&self) -> Result<Option<Served>, String> {
        let read = |name: &str| read_optional(&self.dir.join(name)).map_err(|e| e.to_string());
        let (Some(chain), Some(key)) = (read("cert.pem")?, read("key.pem")?) else {
            return Ok(None);
        };
        let served = self.serve(&chain, &key)?;
        let mut names: Vec<String> = crate::pki::inspect::summarize(served.leaf())
            .map(|s| s.sans)
            .unwrap_or_default();
        let mut wanted: Vec<String> = self
            .settings
            .domains
            .iter()
            .map(|d| format!("DNS:{d}"))
            .collect();
        names.sort();
        wanted.sort();
        Ok((names == wanted).then_some(served))
    }

    fn serve(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Served, String> {
        parse_pair(chain_pem, key_pem, self.resumption)
    }

    /// The stored account, or a new one (its credentials are a secret: 0600).
    async fn account(&self) -> Result<Account, String> {
        let text = |e: instant_acme::Error| e.to_string();
        let builder = match &self.settings.ca_cert {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(text)?;
        let path = self.dir.join("account.json");
        if let Some(stored) = read_optional(&path).map_err(|e| e.to_string())? {
            let credentials: AccountCredentials =
                serde_json::from_slice(&stored).map_err(|e| format!("{}: {e}", path.display()))?;
            return builder.from_credentials(credentials).await.map_err(text);
        }
        let new = NewAccount {
            contact: &[],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder
            .create(&new, self.settings.directory.clone(), None)
            .await
            .map_err(text)?;
        let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
        write_atomic(&path, &json, SECRET_MODE).map_err(|e| e.to_string())?;
        Ok(account)
    }

    /// One order, answered with HTTP-01: the chain and the new key, as PEM.
    async fn obtain(&self) -> Result<(String, String), String> {
        let text = |e: instant_acme::Error| e.to_string();
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(text)?;
        let (mut tokens, mut domains) = (Vec::new(), Vec::new());
        // Whatever happens, the challenge answers are withdrawn afterwards.
        let finished = async {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization.map_err(text)?;
                if authorization.status == AuthorizationStatus::Valid {
                    continue;
                }
                let kind = match self.settings.challenge {
                    AcmeChallenge::Http01 => ChallengeType::Http01,
                    AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let missing = format!("the ACME server offers no {kind:?} challenge");
                let mut challenge = authorization.challenge(kind).ok_or(missing)?;
                let key_authorization = challenge.key_authorization();
                match self.settings.challenge {
                    AcmeChallenge::Http01 => {
                        let answer = key_authorization.as_str().to_string();
                        self.challenges.insert(challenge.token.clone(), answer);
                        tokens.push(challenge.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let domain = challenge.identifier().to_string();
                        let config = alpn_challenge_config(&domain, key_authorization.digest())?;
                        self.alpn_challenges.insert(domain.clone(), config);
                        domains.push(domain);
                    }
                }
                challenge.set_ready().await.map_err(text)?;
            }
            let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retries).await.map_err(text)?;
            if status != OrderStatus::Ready {
                return Err(format!("the order is {status:?}, not ready"));
            }
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let csr = rcgen::CertificateParams::new(self.settings.domains.clone())
                .and_then(|params| params.serialize_request(&key))
                .map_err(|e| e.to_string())?;
            order.finalize_csr(csr.der()).await.map_err(text)?;
            let chain = order.poll_certificate(&retries).await.map_err(text)?;
            Ok((chain, key.serialize_pem()))
        }
        .await;
        for token in tokens {
            self.challenges.remove(&token);
        }
        for domain in domains {
            self.alpn_challenges.remove(&domain);
        }
        finished
    }
}
