//! Resources to bytes and back, and the checks on keys and writes both stores share.
//!
//! Values are the resource's JSON (what `trellis_api` serializes, `apiVersion`/`kind`/`metadata`/
//! `spec`), so `etcdctl get` shows something a person can read. Reading back goes through
//! `trellis_api::parse_documents` — JSON is YAML — so a stored value gets the same parsing and
//! validation as a file would, and anything that fails is [`StoreError::Corrupt`] naming its key.
use super::{ResourceKey, Result, StoreError};
use trellis_api::parse::KINDS;
use trellis_api::Resource;

/// Checks a resource as every write does before touching the store: the same per-resource
/// validation as `trellis validate`. Callers may run it early to report problems sooner; the
/// stores run it again, so an invalid resource is never written.
pub fn validate(resource: &Resource) -> Result<()> {
    let problems = trellis_api::validate::resource(resource);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            key: resource.key(),
            problems,
        })
    }
}

/// Validates and serializes a resource for storage. `metadata.resourceVersion` is dropped: it
/// belongs to the API layer (which turns it into an expected version), and a stored copy would be
/// stale the moment it was written. [`super::Stored::version`] is the version.
pub(crate) fn encode(mut resource: Resource) -> Result<(ResourceKey, Resource, Vec<u8>)> {
    validate(&resource)?;
    resource.metadata_mut().resource_version = None;
    let key = ResourceKey::of(&resource);
    let bytes = serde_json::to_vec(&resource).map_err(|e| StoreError::Invalid {
        key: key.to_string(),
        problems: vec![(String::new(), format!("cannot be serialized: {e}"))],
    })?;
    Ok((key, resource, bytes))
}

/// Decodes a stored value, which must hold exactly the resource at `key`.
pub(crate) fn decode(store: &str, key: &ResourceKey, bytes: &[u8]) -> Result<Resource> {
    let corrupt = |detail: String| StoreError::Corrupt {
        store: store.to_string(),
        key: key.to_string(),
        detail,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
    let set = trellis_api::parse_documents(&key.to_string(), text)
        .map_err(|e| corrupt(format!("not a valid resource: {e}")))?;
    let mut resources = set.resources.into_iter();
    match (resources.next(), resources.next()) {
        (Some(mut r), None) if ResourceKey::of(&r) == *key => {
            r.metadata_mut().resource_version = None;
            Ok(r)
        }
        (Some(r), None) => Err(corrupt(format!("holds {} instead", r.key()))),
        (None, _) => Err(corrupt("empty value".into())),
        (Some(_), Some(_)) => Err(corrupt("holds more than one resource".into())),
    }
}

/// Checks the parts of a key a caller passed in: a known kind, and a namespace and name that are
/// non-empty and free of `/` (so a key can never reach into another key's range).
pub(crate) fn check_key(kind: &str, namespace: &str, name: &str) -> Result<ResourceKey> {
    check_kind(kind)?;
    check_part("namespace", namespace)?;
    check_part("name", name)?;
    Ok(ResourceKey::new(kind, namespace, name))
}

pub(crate) fn check_kind(kind: &str) -> Result<()> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(StoreError::InvalidKey {
            detail: format!(
                "unknown kind {kind:?}; expected one of {}",
                KINDS.join(", ")
            ),
        })
    }
}

pub(crate) fn check_part(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains('/') || value.chars().any(char::is_control) {
        Err(StoreError::InvalidKey {
            detail: format!(
                "{what} {value:?} must be non-empty, without '/' or control characters"
            ),
        })
    } else {
        Ok(())
    }
}

/// Parses `Kind/namespace/name` read back from the store.
pub(crate) fn parse_key(store: &str, raw: &str) -> Result<ResourceKey> {
    let mut parts = raw.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(ns), Some(name)) => check_key(kind, ns, name),
        _ => Err(StoreError::InvalidKey {
            detail: "expected Kind/namespace/name".into(),
        }),
    }
    .map_err(|e| StoreError::Corrupt {
        store: store.to_string(),
        key: raw.to_string(),
        detail: format!("not a resource key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Resource {
        let text = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: web}\n\
                    spec: {ports: [{port: 80}]}\n";
        trellis_api::parse_documents("t", text)
            .map(|s| s.resources[0].clone())
            .expect("fixture parses")
    }

    #[test]
    fn round_trip() {
        let mut r = service();
        r.metadata_mut().resource_version = Some("7".into());
        let (key, clean, bytes) = encode(r.clone()).expect("encodes");
        assert_eq!(key.to_string(), "Service/default/web");
        assert_eq!(clean.metadata().resource_version, None, "never stored");
        assert_eq!(decode("s", &key, &bytes).expect("decodes"), clean);
        assert_eq!(clean, service());
    }

    #[test]
    fn garbage_is_corrupt_naming_the_key() {
        let key = ResourceKey::new("Service", "default", "web");
        for bytes in [
            &b"\xff\xfe"[..],
            b"{",
            b"[]",
            b"null",
            b"{\"kind\":\"Service\"}",
        ] {
            let err = decode("s", &key, bytes).expect_err("must fail");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("Service/default/web"), "{err}");
        }
        let (_, _, bytes) = encode(service()).expect("encodes");
        let other = ResourceKey::new("Service", "default", "api");
        let err = decode("s", &other, &bytes).expect_err("wrong key");
        assert!(
            err.to_string().contains("holds Service/default/web"),
            "{err}"
        );
    }

    #[test]
    fn invalid_resource_is_refused() {
        let mut r = service();
        if let Resource::Service(s) = &mut r {
            s.spec.ports.clear();
        }
        let err = encode(r).expect_err("no ports");
        assert!(err.to_string().contains("spec.ports"), "{err}");
        assert!(err.to_string().contains("Service/default/web"), "{err}");
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("Service", "default", "web").is_ok());
        assert!(check_key("Nope", "default", "web").is_err());
        assert!(check_key("Service", "a/b", "web").is_err());
        assert!(check_key("Service", "default", "").is_err());
        assert!(parse_key("s", "Service/default/web").is_ok());
        assert!(matches!(
            parse_key("s", "Service/web"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
