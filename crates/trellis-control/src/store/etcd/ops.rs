//! The etcd requests behind each store operation.
use super::{header_revision, rev_i64, revision, Client, EtcdStore};
use crate::store::{Lease, LeaseId, Listing, ResourceKey, Result, Revision, StoreError, Stored};
use etcdv3client::pb::{self, compare, request_op, response_op};
use etcdv3client::ErrKind;
use futures_util::{stream, StreamExt};
use std::time::Duration;
use trellis_api::Resource;

/// Keys per page when listing, so no response nears gRPC's 4 MiB message limit.
const PAGE: i64 = 500;

fn cmp(key: &[u8], result: compare::CompareResult, target: compare::TargetUnion) -> pb::Compare {
    let target_kind = match target {
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    pb::Compare {
        result: result as i32,
        target: target_kind as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(target),
    }
}

/// `mod_revision == expected`, and the key exists (a missing key has `mod_revision` 0).
fn at_version(key: &[u8], expected: Revision) -> Vec<pb::Compare> {
    vec![
        cmp(
            key,
            compare::CompareResult::Equal,
            compare::TargetUnion::ModRevision(rev_i64(expected)),
        ),
        cmp(
            key,
            compare::CompareResult::Greater,
            compare::TargetUnion::CreateRevision(0),
        ),
    ]
}

fn op(request: request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    }
}

fn read(key: &[u8]) -> pb::RequestOp {
    op(request_op::Request::RequestRange(pb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }))
}

/// The mod_revision the failure branch's read found, if the key exists.
fn found(response: &pb::TxnResponse) -> Option<Revision> {
    response.responses.iter().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(range)) => {
            range.kvs.first().map(|kv| revision(kv.mod_revision))
        }
        _ => None,
    })
}

impl EtcdStore {
    pub(super) async fn get_key(&self, key: &ResourceKey) -> Result<Option<Stored>> {
        let request = pb::RangeRequest {
            key: self.key(key),
            ..Default::default()
        };
        let response = self.read_range(&format!("get {key}"), request).await?;
        let first = response.kvs.first();
        first.map(|kv| self.decode_kv(kv)).transpose()
    }

    /// Lists page by page, every page read at the first page's revision (one consistent view).
    pub(super) async fn list_range(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Listing> {
        let (mut start, end) = self.range(kind, namespace);
        let mut listing = Listing::default();
        loop {
            let request = pb::RangeRequest {
                key: start.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision: rev_i64(listing.revision),
                ..Default::default()
            };
            let response = self.read_range("list", request).await?;
            if listing.revision == 0 {
                listing.revision = header_revision(response.header.as_ref());
            }
            for kv in &response.kvs {
                let stored = self.decode_kv(kv)?;
                if namespace.is_none_or(|ns| stored.resource.metadata().namespace == ns) {
                    listing.items.push(stored);
                }
            }
            match response.kvs.last() {
                Some(last) if response.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    pub(super) async fn create_key(
        &self,
        key: ResourceKey,
        resource: Resource,
        json: Vec<u8>,
    ) -> Result<Stored> {
        let k = self.key(&key);
        let request = pb::TxnRequest {
            compare: vec![cmp(
                &k,
                compare::CompareResult::Equal,
                compare::TargetUnion::CreateRevision(0),
            )],
            success: vec![op(request_op::Request::RequestPut(put(&k, json, 0)))],
            failure: vec![read(&k)],
        };
        let response = self.txn(&format!("create {key}"), request).await?;
        if !response.succeeded {
            let version = found(&response).unwrap_or(0);
            return Err(StoreError::AlreadyExists { key, version });
        }
        Ok(Stored {
            resource,
            version: header_revision(response.header.as_ref()),
            lease: None,
        })
    }

    pub(super) async fn replace_key(
        &self,
        key: ResourceKey,
        resource: Resource,
        json: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Stored> {
        let k = self.key(&key);
        let request = pb::TxnRequest {
            compare: expected.map(|v| at_version(&k, v)).unwrap_or_default(),
            success: vec![op(request_op::Request::RequestPut(put(&k, json, 0)))],
            failure: vec![read(&k)],
        };
        let response = self.txn(&format!("replace {key}"), request).await?;
        if !response.succeeded {
            return Err(refused(key, &response, expected));
        }
        Ok(Stored {
            resource,
            version: header_revision(response.header.as_ref()),
            lease: None,
        })
    }

    pub(super) async fn delete_key(
        &self,
        key: ResourceKey,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let k = self.key(&key);
        let compare = match expected {
            Some(v) => at_version(&k, v),
            None => vec![cmp(
                &k,
                compare::CompareResult::Greater,
                compare::TargetUnion::CreateRevision(0),
            )],
        };
        let delete = pb::DeleteRangeRequest {
            key: k.clone(),
            ..Default::default()
        };
        let request = pb::TxnRequest {
            compare,
            success: vec![op(request_op::Request::RequestDeleteRange(delete))],
            failure: vec![read(&k)],
        };
        let response = self.txn(&format!("delete {key}"), request).await?;
        if !response.succeeded {
            return Err(refused(key, &response, expected));
        }
        Ok(header_revision(response.header.as_ref()))
    }

    pub(super) async fn put_key(
        &self,
        key: ResourceKey,
        resource: Resource,
        json: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Stored> {
        let request = put(&self.key(&key), json, lease.0);
        let what = format!("put {key} under lease {lease}");
        let attempt = |mut c: Client| {
            let request = request.clone();
            async move { c.kv.put(request).await }
        };
        let response = match self.within(&what, true, attempt).await? {
            Err(e) if e.kind() == ErrKind::LeaseNotFound => {
                return Err(StoreError::LeaseNotFound { lease })
            }
            answer => answer.map_err(|e| self.error(&what, &e))?,
        };
        Ok(Stored {
            resource,
            version: header_revision(response.header.as_ref()),
            lease: Some(lease),
        })
    }

    pub(super) async fn compact_to(&self, to: Revision) -> Result<()> {
        let request = pb::CompactionRequest {
            revision: rev_i64(to),
            physical: true,
        };
        let attempt = |mut c: Client| async move { c.kv.compact(request).await };
        match self.within("compact", true, attempt).await? {
            // Already compacted that far: nothing to do.
            Err(e) if e.kind() == ErrKind::Compacted => Ok(()),
            answer => answer.map(drop).map_err(|e| self.error("compact", &e)),
        }
    }

    pub(super) async fn grant(&self, ttl: i64) -> Result<Lease> {
        let attempt = |mut c: Client| async move {
            let request = pb::LeaseGrantRequest { ttl, id: 0 };
            c.lease.lease_grant(request).await
        };
        let response = self.call("grant lease", true, attempt).await?;
        if !response.error.is_empty() {
            return Err(StoreError::Backend {
                store: self.name.clone(),
                detail: format!("grant lease: {}", response.error),
            });
        }
        Ok(Lease {
            id: LeaseId(response.id),
            ttl: Duration::from_secs(u64::try_from(response.ttl).unwrap_or(0)),
        })
    }

    /// One keep-alive on a fresh stream; etcd answers TTL 0 for a lease it does not know.
    /// Renewing twice is harmless, so this fails over like a read.
    pub(super) async fn renew(&self, id: LeaseId) -> Result<()> {
        let what = format!("keep lease {id} alive");
        let exchange = |mut c: Client| async move {
            let request = pb::LeaseKeepAliveRequest { id: id.0 };
            // Keep our side open until the answer is read: a closed request stream ends the call.
            let requests = stream::iter([request]).chain(stream::pending());
            let mut responses = c.lease.lease_keep_alive(requests).await?;
            Ok::<_, etcdv3client::Error>(responses.message().await?)
        };
        match self.call(&what, false, exchange).await? {
            Some(response) if response.ttl > 0 => Ok(()),
            Some(_) => Err(StoreError::LeaseNotFound { lease: id }),
            None => Err(StoreError::Unavailable {
                store: self.name.clone(),
                detail: format!("{what}: etcd closed the stream without answering"),
            }),
        }
    }

    pub(super) async fn revoke(&self, id: LeaseId) -> Result<()> {
        let what = format!("revoke lease {id}");
        let attempt = |mut c: Client| async move {
            let request = pb::LeaseRevokeRequest { id: id.0 };
            c.lease.lease_revoke(request).await
        };
        match self.within(&what, true, attempt).await? {
            Err(e) if e.kind() == ErrKind::LeaseNotFound => {
                Err(StoreError::LeaseNotFound { lease: id })
            }
            answer => answer.map(drop).map_err(|e| self.error(&what, &e)),
        }
    }
}

/// Why a versioned (or existence-checked) write's compare failed.
fn refused(key: ResourceKey, response: &pb::TxnResponse, expected: Option<Revision>) -> StoreError {
    match (found(response), expected) {
        (Some(current), Some(expected)) => StoreError::Conflict {
            key,
            expected,
            current,
        },
        _ => StoreError::NotFound { key },
    }
}
