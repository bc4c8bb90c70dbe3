//! Which instance called: the `source_workload` label of inbound requests.
//!
//! mTLS tells the inbound side the caller's identity (its service), not which of its instances
//! called. The caller's sidecar says so in a header, `trellis-source-workload`, on every try it
//! sends over mTLS, as Istio's sidecars exchange workload metadata in headers. The header is
//! believed only on an mTLS connection, from a caller the mesh's CA vouched for, and is always
//! taken out before the request reaches the app; an outbound sidecar sets it itself (replacing
//! whatever the app sent) towards mesh peers and removes it towards anything else.
//!
//! A caller with a certificate could still send a new name on every request, and every name
//! would become a series. So names are checked (a Workload name's characters, at most 253
//! bytes) and interned into a table of at most [`MAX_NAMES`]; once it is full, unseen names are
//! labelled `other` (and a warning says so once). The interned name is shared by every request
//! from that instance: no allocation per request.
use super::bounded::{BoundedNames, OVERFLOW};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The header a sidecar names its own workload in, towards mesh peers.
pub const SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("trellis-source-workload");

/// Distinct caller workloads one sidecar labels by name.
pub const MAX_NAMES: usize = 1024;

/// The interned `source_workload` labels of one sidecar's callers.
pub struct WorkloadNames {
    names: BoundedNames,
    overflow_warned: AtomicBool,
}

impl Default for WorkloadNames {
    fn default() -> Self {
        Self {
            names: BoundedNames::new(MAX_NAMES),
            overflow_warned: AtomicBool::new(false),
        }
    }
}

impl WorkloadNames {
    /// Takes the header out of `headers`; on an mTLS connection (`mutual`), returns the label of
    /// the name it carried (`None`: no header, or one that is not a workload name).
    pub fn take(&self, headers: &mut HeaderMap, mutual: bool) -> Option<Arc<str>> {
        let value = headers.remove(SOURCE_WORKLOAD)?;
        if !mutual {
            return None;
        }
        self.label(&value)
    }

    /// The shared label for a header value, or `None` when it is not a workload name.
    pub fn label(&self, value: &HeaderValue) -> Option<Arc<str>> {
        let bytes = value.as_bytes();
        if !is_workload_name(bytes) {
            return None;
        }
        // Checked above: ASCII only.
        let (name, full) = self.names.label(std::str::from_utf8(bytes).ok()?);
        if full && !self.overflow_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = MAX_NAMES,
                "more distinct caller workloads than the metrics label by name; further ones are labelled source_workload=\"{OVERFLOW}\""
            );
        }
        Some(name)
    }
}

/// A Workload name as the API accepts them: 1 to 253 bytes of `a-z A-Z 0-9 . - _`.
pub fn is_workload_name(bytes: &[u8]) -> bool {
    (1..=253).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SOURCE_WORKLOAD, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_name_is_believed_only_over_mtls_and_always_taken_out() {
        let names = WorkloadNames::default();
        let mut h = headers("web-0");
        assert_eq!(names.take(&mut h, true).as_deref(), Some("web-0"));
        assert!(h.is_empty());
        let mut h = headers("web-0");
        assert_eq!(names.take(&mut h, false), None);
        assert!(
            h.is_empty(),
            "a plaintext caller's header must not reach the app"
        );
        assert_eq!(names.take(&mut HeaderMap::new(), true), None);
    }

    #[test]
    fn garbage_is_not_a_label() {
        let names = WorkloadNames::default();
        for bad in ["", "a b", "web/0", "wéb", &"x".repeat(254)] {
            let Ok(v) = HeaderValue::from_bytes(bad.as_bytes()) else {
                continue;
            };
            assert_eq!(names.label(&v), None, "{bad:?}");
        }
    }

    #[test]
    fn one_shared_label_per_name_and_a_bounded_table() {
        let names = WorkloadNames::default();
        let a = names.label(&HeaderValue::from_static("web-0")).unwrap();
        let b = names.label(&HeaderValue::from_static("web-0")).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "interned: one allocation per name");
        for i in 1..MAX_NAMES {
            let v = HeaderValue::from_str(&format!("w-{i}")).unwrap();
            assert_eq!(names.label(&v).as_deref(), Some(format!("w-{i}").as_str()));
        }
        let late = names.label(&HeaderValue::from_static("late")).unwrap();
        assert_eq!(&*late, OVERFLOW);
        assert_eq!(
            names.label(&HeaderValue::from_static("web-0")).as_deref(),
            Some("web-0"),
            "names seen before the table filled keep their label"
        );
        assert_eq!(names.names.len(), MAX_NAMES);
    }
}
