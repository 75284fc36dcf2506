//! Just enough of Kubernetes' protobuf encoding for a simulated cluster to take what kubectl's typed
//! clients send (`application/vnd.kubernetes.protobuf`): the `k8s\0` envelope (`runtime.Unknown`)
//! around a Namespace, of which the name and labels are read. Malformed input is `None`, never a
//! panic: every length is checked against what is left.

use std::collections::BTreeMap;

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";
/// Labels read at most (as the JSON path keeps).
const MAX_LABELS: usize = 64;

/// A Namespace's `metadata.name` and `metadata.labels` from an enveloped protobuf body.
pub fn namespace(body: &[u8]) -> Option<(String, BTreeMap<String, String>)> {
    let unknown = body.strip_prefix(MAGIC)?;
    // runtime.Unknown: 1 typeMeta, 2 raw, 3 contentEncoding, 4 contentType.
    let raw = field(unknown, 2)?;
    // Namespace: 1 metadata, 2 spec, 3 status.
    let metadata = field(raw, 1).unwrap_or_default();
    // ObjectMeta: 1 name, 11 labels (map entries: 1 key, 2 value).
    let name = String::from_utf8(field(metadata, 1).unwrap_or_default().to_vec()).ok()?;
    let mut labels = BTreeMap::new();
    for entry in fields(metadata, 11).take(MAX_LABELS) {
        let text = |n| String::from_utf8(field(entry, n).unwrap_or_default().to_vec()).ok();
        labels.insert(text(1)?, text(2)?);
    }
    Some((name, labels))
}

/// The first length-delimited field `number` of `message`.
fn field(message: &[u8], number: u64) -> Option<&[u8]> {
    fields(message, number).next()
}

/// Every length-delimited field `number` of `message`, until the end or the first malformed byte.
fn fields(message: &[u8], number: u64) -> impl Iterator<Item = &[u8]> {
    let mut rest = message;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let key = varint(&mut rest)?;
            let value = match key & 7 {
                0 => {
                    varint(&mut rest)?;
                    None
                }
                1 => Some(take(&mut rest, 8)?),
                2 => {
                    let len = usize::try_from(varint(&mut rest)?).ok()?;
                    Some(take(&mut rest, len)?)
                }
                5 => Some(take(&mut rest, 4)?),
                _ => return None,
            };
            if key >> 3 == number
                && key & 7 == 2
                && let Some(value) = value
            {
                return Some(value);
            }
        }
        None
    })
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    *rest = after;
    Some(value)
}

fn varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, after) = rest.split_first()?;
        *rest = after;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What kubectl 1.32 sent for `kubectl create namespace survives` (from its -v=9 log).
    const KUBECTL_CREATE: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0f, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x09, 0x4e, 0x61, 0x6d,
        0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x12, 0x20, 0x0a, 0x18, 0x0a, 0x08, 0x73, 0x75, 0x72,
        0x76, 0x69, 0x76, 0x65, 0x73, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00,
        0x38, 0x00, 0x42, 0x00, 0x12, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00,
    ];

    #[test]
    fn kubectls_namespace_is_read() {
        let (name, labels) = namespace(KUBECTL_CREATE).unwrap();
        assert_eq!(name, "survives");
        assert!(labels.is_empty());
        assert_eq!(namespace(b"{\"metadata\":{}}"), None, "not enveloped");
    }

    proptest! {
        #[test]
        fn any_body_is_read_or_refused_without_panic(bytes: Vec<u8>, cut in 0usize..60) {
            let mut enveloped = MAGIC.to_vec();
            enveloped.extend(&bytes);
            let _ = namespace(&enveloped);
            let _ = namespace(&KUBECTL_CREATE[..cut.min(KUBECTL_CREATE.len())]);
        }
    }
}
