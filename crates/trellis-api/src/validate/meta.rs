//! `metadata`: names and namespaces are DNS-1123 labels; label and annotation keys are
//! Kubernetes qualified names.
use super::checks::{dns_label_problem, label_key_problem, labels, Problems};
use crate::meta::ObjectMeta;

pub(super) fn check(p: &mut Problems, meta: &ObjectMeta) {
    p.check("metadata.name", dns_label_problem(&meta.name));
    p.check("metadata.namespace", dns_label_problem(&meta.namespace));
    labels(p, "metadata.labels", &meta.labels);
    for key in meta.annotations.keys() {
        p.check("metadata.annotations", label_key_problem(key));
    }
}
