//! Let's Encrypt mode (`--acme-domain`): one certificate for the listed domains from an ACME server,
//! obtained with HTTP-01 (answered on the HTTP port's `/.well-known/acme-challenge/`) or TLS-ALPN-01
//! (a certificate for ALPN `acme-tls/1` on the HTTPS port), kept in the store (the data directory's
//! `acme/`, or etcd) and renewed before it expires. As Rancher's autocert mode, `/cacerts` is empty.
//!
//! Until the first certificate arrives, clients get the fallback certificate; a failed attempt is
//! logged and retried with a growing delay.
//!
//! Replicas on a shared store order once for all: the replica holding the `corral/acme-orderer`
//! lease orders and stores the account, certificate and key; the others serve what is stored and
//! follow it as it changes. HTTP-01 answers are stored too, so a validation that the balancer sends
//! to another replica is answered there. (TLS-ALPN-01 answers are not shared: with several replicas
//! behind a balancer, use HTTP-01.)

use std::collections::BTreeMap;
use std::net::IpAddr;
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
use rustls::pki_types::CertificateDer;

use super::CertError;
use super::files::{FilesError, parse_pair};
use super::minter::Minter;
use super::source::CertSource;
use super::template::{Served, alpn_challenge_config};
use crate::config::{AcmeChallenge, AcmeSettings};
use crate::store::{Backend, Changes, Key, Leadership, StoreError, put};
use crate::support::unix_now;

/// Why no certificate was obtained (this time: the attempt is repeated).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Account {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the ACME server offers no {0:?} challenge")]
    NoChallenge(ChallengeType),
    #[error("the order is {0:?}, not ready")]
    NotReady(OrderStatus),
    #[error("cannot make the key or request: {0}")]
    Request(#[from] rcgen::Error),
    #[error("the certificate received: {0}")]
    Received(#[from] FilesError),
    #[error("cannot answer the challenge: {0}")]
    Challenge(#[source] Box<CertError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another replica orders the certificate (it holds the ACME lease); waiting for it")]
    OrderedElsewhere,
}

/// The ACME account's credentials (a secret).
pub const ACME_ACCOUNT: Key = Key::secret("acme/account.json", "corral/acme-account");
/// The certificate chain obtained, and its key.
pub const ACME_CERT: Key = Key::public("acme/cert.pem", "corral/acme-cert");
pub const ACME_KEY: Key = Key::secret("acme/key.pem", "corral/acme-key");
/// HTTP-01 answers being validated, token → key authorization (shared stores only).
pub const ACME_CHALLENGES: Key = Key::secret("acme/challenges.json", "corral/acme-challenges");
/// The lease of the replica that orders.
const ORDERER: &str = "corral/acme-orderer";
const ORDERER_TTL: Duration = Duration::from_secs(10);

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate this close to expiry is renewed (Let's Encrypt's advice: a third of 90 days).
const RENEW_WITHIN: i64 = 30 * 86_400;
/// How often the certificate's expiry is checked once obtained.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// The first and the longest wait after a failed attempt.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(3600);

pub struct AcmeCert {
    settings: AcmeSettings,
    /// Where the account, certificate and key are kept (`acme/` of the data directory, or etcd).
    store: Arc<dyn Backend>,
    /// `None` when the store has no leases (one process: it orders).
    leadership: Option<Leadership>,
    /// Whether other replicas share the store (HTTP-01 answers are stored for them).
    shared: bool,
    resumption: bool,
    /// Serves the fallback certificate until the first certificate arrives.
    minter: Arc<Minter>,
    current: ArcSwapOption<Served>,
    /// HTTP-01 tokens being validated → their key authorizations.
    challenges: DashMap<String, String>,
    /// TLS-ALPN-01: domains being validated → the config presenting their challenge certificate.
    alpn_challenges: DashMap<String, Arc<ServerConfig>>,
}

impl AcmeCert {
    /// Restores a stored certificate for the same domains, if there is one.
    pub fn new(
        settings: AcmeSettings,
        data_dir: &Path,
        store: Arc<dyn Backend>,
        resumption: bool,
        minter: Arc<Minter>,
    ) -> Result<Self, AcmeError> {
        // The data directory's `acme/`, for the file store's keys.
        let dir = data_dir.join("acme");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let replica = crate::secrets::random_suffix();
        let acme = Self {
            settings,
            leadership: store.campaign(ORDERER, &replica, ORDERER_TTL)?,
            shared: store.has_paths(),
            store,
            resumption,
            minter,
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

    /// The obtained certificate, or the fallback until there is one.
    fn current_or_fallback(&self) -> Arc<Served> {
        self.current
            .load_full()
            .unwrap_or_else(|| self.minter.fallback())
    }

    /// Obtains and renews for as long as the process runs; on a shared store, follows the
    /// certificate another replica stores.
    fn run(self: Arc<Self>) {
        // The certificate is written after its key: its change means both are there.
        if let Some(mut changes) = Changes::of(self.store.as_ref(), |path| path == ACME_CERT.path) {
            let acme = Arc::downgrade(&self);
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    let Some(acme) = acme.upgrade() else { return };
                    acme.follow();
                }
            });
        }
        tokio::spawn(async move {
            let mut retry = RETRY_FIRST;
            loop {
                match self.ensure().await {
                    Ok(()) => {
                        retry = RETRY_FIRST;
                        tokio::time::sleep(CHECK_EVERY).await;
                    }
                    // Not this replica's to order: look again soon (the orderer may be gone).
                    Err(AcmeError::OrderedElsewhere) => tokio::time::sleep(RETRY_FIRST).await,
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
    async fn ensure(&self) -> Result<(), AcmeError> {
        if let Some(current) = self.current.load_full()
            && !current.expires_within(unix_now(), RENEW_WITHIN)
        {
            return Ok(());
        }
        if !self.leadership.as_ref().is_none_or(Leadership::is_leader) {
            return Err(AcmeError::OrderedElsewhere);
        }
        let (chain, key) = self.obtain().await?;
        let served = self.serve(chain.as_bytes(), key.as_bytes())?;
        // The key first: a certificate is never stored without its key.
        put(self.store.as_ref(), &ACME_KEY, key.as_bytes())?;
        put(self.store.as_ref(), &ACME_CERT, chain.as_bytes())?;
        self.current.store(Some(Arc::new(served)));
        tracing::info!(
            "ACME: obtained a certificate for {} from {}",
            self.settings.domains.join(", "),
            self.settings.directory
        );
        Ok(())
    }

    /// Serves the stored certificate when another replica stored a new one.
    fn follow(&self) {
        match self.restore() {
            Ok(Some(served)) => {
                let current = self.current.load_full();
                if current.is_none_or(|c| c.leaf() != served.leaf()) {
                    tracing::info!(
                        "ACME: serving the certificate for {} stored by another replica",
                        self.settings.domains.join(", ")
                    );
                    self.current.store(Some(Arc::new(served)));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("ACME: the stored certificate is unusable: {e}"),
        }
    }

    /// The stored certificate, if it is for exactly the configured domains.
    fn restore(&self) -> Result<Option<Served>, AcmeError> {
        let read = |key: Key| Ok::<_, StoreError>(self.store.read(&key)?.map(|(bytes, _)| bytes));
        let (Some(chain), Some(key)) = (read(ACME_CERT)?, read(ACME_KEY)?) else {
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

    fn serve(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Served, AcmeError> {
        Ok(parse_pair(chain_pem, key_pem, self.resumption)?)
    }

    /// The stored account, or a new one (its credentials are a secret: 0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = match &self.settings.ca_cert {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }?;
        let path = PathBuf::from(self.store.location(&ACME_ACCOUNT));
        let unreadable = |source| AcmeError::Account {
            path: path.clone(),
            source,
        };
        if let Some((stored, _)) = self.store.read(&ACME_ACCOUNT)? {
            let credentials: AccountCredentials =
                serde_json::from_slice(&stored).map_err(unreadable)?;
            return Ok(builder.from_credentials(credentials).await?);
        }
        let new = NewAccount {
            contact: &[],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder
            .create(&new, self.settings.directory.clone(), None)
            .await?;
        let json = serde_json::to_vec(&credentials).map_err(unreadable)?;
        put(self.store.as_ref(), &ACME_ACCOUNT, &json)?;
        Ok(account)
    }

    /// One order, answered with HTTP-01: the chain and the new key, as PEM.
    async fn obtain(&self) -> Result<(String, String), AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let (mut tokens, mut domains) = (Vec::new(), Vec::new());
        // Whatever happens, the challenge answers are withdrawn afterwards.
        let finished = async {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization?;
                if authorization.status == AuthorizationStatus::Valid {
                    continue;
                }
                let kind = match self.settings.challenge {
                    AcmeChallenge::Http01 => ChallengeType::Http01,
                    AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge = authorization
                    .challenge(kind.clone())
                    .ok_or(AcmeError::NoChallenge(kind))?;
                let key_authorization = challenge.key_authorization();
                match self.settings.challenge {
                    AcmeChallenge::Http01 => {
                        let answer = key_authorization.as_str().to_string();
                        self.challenges
                            .insert(challenge.token.clone(), answer.clone());
                        self.share_answer(&challenge.token, Some(answer))?;
                        tokens.push(challenge.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let domain = challenge.identifier().to_string();
                        let config = alpn_challenge_config(&domain, key_authorization.digest())
                            .map_err(|e| AcmeError::Challenge(Box::new(e)))?;
                        self.alpn_challenges.insert(domain.clone(), config);
                        domains.push(domain);
                    }
                }
                challenge.set_ready().await?;
            }
            let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retries).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::NotReady(status));
            }
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::new(self.settings.domains.clone())
                .and_then(|params| params.serialize_request(&key))?;
            order.finalize_csr(csr.der()).await?;
            let chain = order.poll_certificate(&retries).await?;
            Ok((chain, key.serialize_pem()))
        }
        .await;
        for token in tokens {
            self.challenges.remove(&token);
            if let Err(e) = self.share_answer(&token, None) {
                tracing::warn!("ACME: cannot withdraw a stored HTTP-01 answer: {e}");
            }
        }
        for domain in domains {
            self.alpn_challenges.remove(&domain);
        }
        finished
    }
}

impl AcmeCert {
    /// On a shared store, stores (`Some`) or withdraws (`None`) the HTTP-01 answer for `token`, so
    /// that every replica answers the validation.
    fn share_answer(&self, token: &str, answer: Option<String>) -> Result<(), StoreError> {
        if !self.shared {
            return Ok(());
        }
        for _ in 0..8 {
            let (mut answers, version) = self.stored_answers()?;
            match &answer {
                Some(answer) => answers.insert(token.to_string(), answer.clone()),
                None => answers.remove(token),
            };
            let bytes = serde_json::to_vec(&answers).expect("a map of strings serializes");
            match self.store.write(&ACME_CHALLENGES, &bytes, version) {
                Err(StoreError::Conflict(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(StoreError::Conflict(ACME_CHALLENGES.name.to_string()))
    }

    fn stored_answers(
        &self,
    ) -> Result<(BTreeMap<String, String>, Option<crate::store::Version>), StoreError> {
        Ok(match self.store.read(&ACME_CHALLENGES)? {
            Some((bytes, version)) => (
                serde_json::from_slice(&bytes).unwrap_or_default(),
                Some(version),
            ),
            None => (BTreeMap::new(), None),
        })
    }
}

impl CertSource for AcmeCert {
    fn ready(&self, _: Option<&str>, _: IpAddr) -> Option<Arc<ServerConfig>> {
        Some(self.current_or_fallback().config.clone())
    }

    fn choose(&self, _: Option<&str>, _: IpAddr, _: IpAddr) -> Arc<Served> {
        self.current_or_fallback()
    }

    fn current_leaf(&self) -> CertificateDer<'static> {
        self.current_or_fallback().leaf().clone()
    }

    fn start(self: Arc<Self>) {
        self.run();
    }

    /// The key authorization for an HTTP-01 `token`, while it is being validated.
    fn acme_challenge(&self, token: &str) -> Option<String> {
        if let Some(answer) = self.challenges.get(token) {
            return Some(answer.clone());
        }
        // Another replica's order, validated through this one.
        let (answers, _) = self.shared.then(|| self.stored_answers().ok())??;
        answers.get(token).cloned()
    }

    /// TLS-ALPN-01: the config to present to a validator asking for `domain` with ALPN `acme-tls/1`.
    fn alpn_challenge(&self, domain: &str) -> Option<Arc<ServerConfig>> {
        self.alpn_challenges.get(domain).map(|c| c.clone())
    }
}
