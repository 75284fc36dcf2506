//! Names a certificate can be minted for: validation of what clients send, and the allow-list.
//!
//! SNI comes from strangers, so it is treated as hostile input: lower-cased, checked against a DNS-name
//! pattern and length limits, wildcards refused. Anything that fails gets the default certificate instead.

use std::fmt;
use std::net::IpAddr;

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::RegexSet;

/// Longest DNS name accepted (RFC 1035: 253 characters in text form).
const MAX_NAME_LEN: usize = 253;
/// Longest single label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// A name a leaf certificate is issued for: a DNS SAN or an IP SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectName {
    Dns(String),
    Ip(IpAddr),
}

impl SubjectName {
    /// An IP name, with IPv4-mapped IPv6 addresses (from dual-stack sockets) folded to IPv4.
    pub fn ip(ip: IpAddr) -> Self {
        SubjectName::Ip(ip.to_canonical())
    }

    /// Parses a client-supplied host name (SNI or a `Host` header without its port): an IP literal
    /// becomes an IP name, anything else must be a valid, non-wildcard DNS name.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::ip(ip));
        }
        validate_dns_name(trimmed).map(SubjectName::Dns)
    }

    /// The text form, as stored and as matched against the allow-list.
    pub fn as_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectName::Dns(name) => f.write_str(name),
            SubjectName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a client-supplied name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name is {0} characters, over {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("a label is over {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("empty label")]
    EmptyLabel,
    #[error("wildcards are not accepted from clients")]
    Wildcard,
    #[error("character {0:?} is not allowed in a DNS name")]
    BadCharacter(char),
    #[error("a label starts or ends with '-'")]
    HyphenAtLabelEdge,
    #[error("the last label is all digits")]
    AllNumericTld,
}

/// Lower-cases and validates a DNS name (letters, digits, `-`, `_` in labels; dots between labels).
fn validate_dns_name(raw: &str) -> Result<String, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(raw.len()));
    }
    let name = raw.to_ascii_lowercase();
    for label in name.split('.') {
        check_label(label)?;
    }
    // "1.2.3.4.5" or "10.0.0" would be read as an IP by some clients: refuse numeric TLDs.
    let tld = name.rsplit('.').next().unwrap_or_default();
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::AllNumericTld);
    }
    Ok(name)
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong);
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(if c == '*' {
            NameError::Wildcard
        } else {
            NameError::BadCharacter(c)
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtLabelEdge);
    }
    Ok(())
}

/// Why an `allowed-names` entry is not a pattern.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    #[error("bad glob {entry:?}: {source}")]
    Glob {
        entry: String,
        source: globset::Error,
    },
    #[error("{0}")]
    Globs(globset::Error),
    #[error("bad regex: {0}")]
    Regex(regex::Error),
}

/// The `allowed-names` setting: globs (`*.lab.test`, `10.0.*`) and regular expressions (`re:^…$`).
/// An empty list allows every valid name.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    globs: Option<GlobSet>,
    regexes: Option<RegexSet>,
    patterns: Vec<String>,
}

impl AllowList {
    /// Builds the list from its entries; each is a glob, or a regex when prefixed with `re:`.
    pub fn new(entries: &[String]) -> Result<Self, AllowListError> {
        let mut globs = GlobSetBuilder::new();
        let mut regexes = Vec::new();
        let (mut any_glob, mut patterns) = (false, Vec::new());
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            patterns.push(entry.to_string());
            if let Some(re) = entry.strip_prefix("re:") {
                regexes.push(re.to_string());
            } else {
                let glob = Glob::new(&entry.to_ascii_lowercase()).map_err(|source| {
                    AllowListError::Glob {
                        entry: entry.into(),
                        source,
                    }
                })?;
                globs.add(glob);
                any_glob = true;
            }
        }
        let globs = match any_glob {
            true => Some(globs.build().map_err(AllowListError::Globs)?),
            false => None,
        };
        let regexes = match regexes.is_empty() {
            true => None,
            false => Some(RegexSet::new(&regexes).map_err(AllowListError::Regex)?),
        };
        Ok(Self {
            globs,
            regexes,
            patterns,
        })
    }

    pub fn is_unrestricted(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn allows(&self, name: &SubjectName) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        let text = name.as_text();
        self.globs.as_ref().is_some_and(|g| g.is_match(&text))
            || self.regexes.as_ref().is_some_and(|r| r.is_match(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends: refused, or a name that is short, clean and stable.
        #[test]
        fn any_sni_is_refused_or_a_clean_name(raw in "\\PC{0,300}") {
            if let Ok(name) = SubjectName::parse(&raw) {
                let text = name.to_string();
                prop_assert!(text.len() <= MAX_NAME_LEN);
                prop_assert!(!text.contains('*'));
                prop_assert!(!text.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()));
                prop_assert_eq!(SubjectName::parse(&text), Ok(name));
            }
        }

        #[test]
        fn dns_like_names_are_accepted_lower_cased(labels in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9-]{0,20}[a-zA-Z0-9]", 1..5)) {
            let raw = format!("{}.lab.test", labels.join("."));
            let name = SubjectName::parse(&raw).unwrap();
            prop_assert_eq!(name.to_string(), raw.to_ascii_lowercase());
        }
    }

    #[test]
    fn folds_case_and_trailing_dot() {
        assert_eq!(
            SubjectName::parse("Alpha.LAB.test.").unwrap(),
            SubjectName::Dns("alpha.lab.test".into())
        );
    }

    #[test]
    fn parses_ips_and_maps_v4_in_v6() {
        assert_eq!(
            SubjectName::parse("[::1]").unwrap(),
            SubjectName::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            SubjectName::ip("::ffff:127.0.0.7".parse().unwrap()),
            SubjectName::Ip("127.0.0.7".parse().unwrap())
        );
    }

    #[test]
    fn refuses_hostile_names() {
        let long_label = format!("{}.test", "a".repeat(64));
        let long_name = format!("{}test", "abcdefghi.".repeat(26));
        for (name, err) in [
            ("", NameError::Empty),
            ("*.lab.test", NameError::Wildcard),
            ("a..b", NameError::EmptyLabel),
            ("-a.test", NameError::HyphenAtLabelEdge),
            ("a b.test", NameError::BadCharacter(' ')),
            ("é.test", NameError::BadCharacter('é')),
            ("1.2.3.4.5", NameError::AllNumericTld),
            (long_label.as_str(), NameError::LabelTooLong),
            (long_name.as_str(), NameError::TooLong(long_name.len())),
        ] {
            assert_eq!(SubjectName::parse(name), Err(err), "{name:?}");
        }
    }

    #[test]
    fn allow_list_globs_and_regexes() {
        let list = AllowList::new(&["*.lab.test".into(), "re:^10\\.0\\.".into()]).unwrap();
        assert!(list.allows(&SubjectName::parse("a.lab.test").unwrap()));
        assert!(list.allows(&SubjectName::parse("10.0.0.9").unwrap()));
        assert!(!list.allows(&SubjectName::parse("evil.test").unwrap()));
        assert!(
            AllowList::new(&[])
                .unwrap()
                .allows(&SubjectName::parse("x.y").unwrap())
        );
        assert!(AllowList::new(&["re:(".into()]).is_err());
    }
}
