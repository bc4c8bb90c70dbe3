//! Registrations on etcd that survive an outage of every control-plane replica.
//!
//! etcd outlives the replicas: if a workload lived under its sidecar's lease, an outage longer
//! than the TTL (nobody renews the leases) would delete every workload, and the replicas would
//! come back to an empty registry and push empty endpoint sets. So a registration is three keys,
//! written in one transaction:
//!
//! * the `Workload` itself, with **no** lease (what every caller's endpoint set is built from);
//! * `…/presence/Workload/ns/name` under the sidecar's lease: "someone is renewing this";
//! * `…/registered/Workload/ns/name`, no lease: "this workload came from a registration",
//!   holding `lease-id/ttl-seconds`; its `mod_revision` names the registration.
//!
//! When a presence key lapses, the workload is *not* deleted by etcd; a replica's reaper
//! (`crate::registry`) deletes it — but only once that replica has been up and able to reach
//! the store for a full lease TTL plus a margin, so every live sidecar has had the time to
//! renew or register again. The delete is a compare-and-delete (presence still absent, the
//! registration unchanged), so it never races a sidecar that has just come back.
use super::{header_revision, revision, Client, EtcdStore};
use crate::store::codec::encode;
use crate::store::{Lapsed, Lease, LeaseId, ResourceKey, Result, Revision, StoreError, Stored};
use etcdv3client::pb::{self, compare, request_op};
use etcdv3client::ErrKind;
use std::collections::HashSet;
use std::time::Duration;
use trellis_api::Resource;

fn op(request: request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    op(request_op::Request::RequestPut(pb::PutRequest {
        key,
        value,
        lease,
        ..Default::default()
    }))
}

fn delete(key: Vec<u8>) -> pb::RequestOp {
    op(request_op::Request::RequestDeleteRange(
        pb::DeleteRangeRequest {
            key,
            ..Default::default()
        },
    ))
}

fn compare(key: Vec<u8>, target: compare::TargetUnion) -> pb::Compare {
    let kind = match target {
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        _ => compare::CompareTarget::Mod,
    };
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: kind as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(target),
    }
}

impl EtcdStore {
    /// `{parent of the resource prefix}/{area}/`: beside the resources, outside their watch.
    pub(super) fn area(&self, area: &str) -> String {
        let base = self.options.prefix.trim_end_matches('/');
        let parent = base.rsplit_once('/').map_or("", |(p, _)| p);
        format!("{parent}/{area}/")
    }

    fn presence_key(&self, key: &ResourceKey) -> Vec<u8> {
        format!("{}{key}", self.area("presence")).into_bytes()
    }

    fn registered_key(&self, key: &ResourceKey) -> Vec<u8> {
        format!("{}{key}", self.area("registered")).into_bytes()
    }

    pub(super) async fn register_workload(
        &self,
        workload: Resource,
        granted: Lease,
    ) -> Result<Stored> {
        let lease = granted.id;
        let (key, workload, json) = encode(workload)?;
        let marker = format!("{}/{}", lease.0, granted.ttl.as_secs()).into_bytes();
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![
                put(self.key(&key), json, 0),
                put(self.presence_key(&key), Vec::new(), lease.0),
                put(self.registered_key(&key), marker, 0),
            ],
            failure: Vec::new(),
        };
        let what = format!("register {key} under lease {lease}");
        let attempt = |mut c: Client| {
            let request = request.clone();
            async move { c.kv.txn(request).await }
        };
        let response = match self.within(&what, true, attempt).await? {
            Err(e) if e.kind() == ErrKind::LeaseNotFound => {
                return Err(StoreError::LeaseNotFound { lease })
            }
            answer => answer.map_err(|e| self.error(&what, &e))?,
        };
        Ok(Stored {
            resource: workload,
            version: header_revision(response.header.as_ref()),
            lease: None,
        })
    }

    /// Removes the registrations made under `lease` (found by the lease id their marker holds),
    /// then revokes the lease.
    pub(super) async fn deregister_lease(&self, lease: LeaseId) -> Result<()> {
        let marker = format!("{}/", lease.0).into_bytes();
        let registered = self.list_area("registered", false).await?;
        for (raw, value, _) in registered {
            if !value.starts_with(&marker) {
                continue;
            }
            let Some(key) = self.area_key("registered", &raw) else {
                continue;
            };
            let request = pb::TxnRequest {
                compare: vec![compare(raw.clone(), compare::TargetUnion::Value(value))],
                success: vec![
                    delete(self.key(&key)),
                    delete(raw),
                    delete(self.presence_key(&key)),
                ],
                failure: Vec::new(),
            };
            self.txn(&format!("deregister {key}"), request).await?;
        }
        self.revoke(lease).await
    }

    pub(super) async fn lapsed(&self) -> Result<Vec<Lapsed>> {
        let present: HashSet<Vec<u8>> = self
            .list_area("presence", true)
            .await?
            .into_iter()
            .filter_map(|(raw, _, _)| {
                let key = self.area_key("presence", &raw)?;
                Some(self.registered_key(&key))
            })
            .collect();
        let registered = self.list_area("registered", false).await?;
        Ok(registered
            .into_iter()
            .filter(|(raw, _, _)| !present.contains(raw))
            .filter_map(|(raw, value, registration)| {
                Some(Lapsed {
                    key: self.area_key("registered", &raw)?,
                    registration,
                    ttl: marker_ttl(&value),
                })
            })
            .collect())
    }

    pub(super) async fn expire(&self, key: &ResourceKey, registration: Revision) -> Result<bool> {
        let request = pb::TxnRequest {
            compare: vec![
                compare(
                    self.presence_key(key),
                    compare::TargetUnion::CreateRevision(0),
                ),
                compare(
                    self.registered_key(key),
                    compare::TargetUnion::ModRevision(super::rev_i64(registration)),
                ),
            ],
            success: vec![delete(self.key(key)), delete(self.registered_key(key))],
            failure: Vec::new(),
        };
        let response = self.txn(&format!("expire {key}"), request).await?;
        Ok(response.succeeded)
    }

    /// Every key of an area: raw key, value (empty with `keys_only`), mod revision.
    pub(super) async fn list_area(
        &self,
        area: &str,
        keys_only: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>, Revision)>> {
        let start = self.area(area).into_bytes();
        let mut end = start.clone();
        end.pop();
        end.push(b'0');
        let mut from = start;
        let mut out = Vec::new();
        loop {
            let request = pb::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: 1000,
                keys_only,
                ..Default::default()
            };
            let response = self.read_range(&format!("list {area}"), request).await?;
            for kv in &response.kvs {
                out.push((kv.key.clone(), kv.value.clone(), revision(kv.mod_revision)));
            }
            match response.kvs.last() {
                Some(last) if response.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// The resource key an area key names, if it is well formed (anything else is skipped).
    fn area_key(&self, area: &str, raw: &[u8]) -> Option<ResourceKey> {
        let text = std::str::from_utf8(raw).ok()?;
        let rest = text.strip_prefix(&self.area(area))?;
        crate::store::codec::parse_key(&self.name, rest).ok()
    }
}

/// The TTL in a registration marker (`lease-id/ttl-seconds`); the longest a registration may ask
/// for when it cannot be read.
fn marker_ttl(value: &[u8]) -> Duration {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.split_once('/'))
        .and_then(|(_, ttl)| ttl.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}
