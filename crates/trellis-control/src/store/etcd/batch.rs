//! Batches on etcd: one `Txn` for the whole batch, however many documents it has.
//!
//! etcd caps a transaction at `--max-txn-ops` operations per list (128 by default) and a request
//! at `--max-request-bytes` (1.5 MiB). Both limits are checked per level: a nested transaction
//! in the success list gets the budget its parent leaves (128 minus the parent's largest list).
//! So a batch is written as
//!
//! * **compares**, at most [`MAX_COMPARES`]: one exact compare per key when the batch reads few
//!   keys (`create_revision == 0` for "absent", `mod_revision == v` for a version); otherwise
//!   the sorted keys are split into contiguous runs and each run gets one *range* compare,
//!   "no key in `[first, last]` was modified after the read revision". A range compare cannot
//!   see a key deleted in between, and may trip on an unrelated key written in the range; the
//!   first costs a versioned write its precision in that rare race, the second only a retry;
//! * **puts**, in nested transactions of at most [`PUTS_PER_NEST`] each: up to
//!   `MAX_NESTED * PUTS_PER_NEST` (4 032) documents in one atomic commit, in one revision.
//!
//! A receipt is one more compare (`create_revision == 0` on its key) and one more put, under a
//! lease of [`RECEIPT_TTL`] shared by the receipts of about an hour. If the compare on the
//! receipt fails, the batch was committed before: the failure branch reads the receipt back.
use super::{header_revision, rev_i64, revision, Client, EtcdStore};
use crate::store::batch::holds;
use crate::store::batch::BatchLimits;
use crate::store::codec::encode;
use crate::store::{
    Batch, Committed, Expect, LeaseId, ResourceKey, Result, Revision, StoreError, Stored,
    RECEIPT_TTL,
};
use etcd_prost::Message;
use etcdv3client::pb::{self, compare, request_op, response_op};
use std::time::{Duration, Instant};

/// Compares in the top-level list (one slot is the receipt's).
const MAX_COMPARES: usize = 60;
/// Nested transactions in the top-level success list (one slot is the receipt's put).
const MAX_NESTED: usize = 63;
/// Puts per nested transaction: etcd's default budget (128) minus the top level's lists (64).
const PUTS_PER_NEST: usize = 64;
/// Keys read per transaction by `get_many` (etcd's default `--max-txn-ops`).
const READS_PER_TXN: usize = 128;
/// Stay under etcd's default `--max-request-bytes` (1.5 MiB) with room for framing.
const MAX_REQUEST_BYTES: usize = 1_400_000;
/// What the documents of a batch may weigh ([`document_cost`]): the request less room for the
/// compares (at most [`MAX_COMPARES`] ranges of two keys) and the receipt's own fields.
const MAX_BATCH_COST: usize = MAX_REQUEST_BYTES - 100_000;

/// What one etcd transaction of a batch holds: see the module docs.
pub(super) const LIMITS: BatchLimits = BatchLimits {
    documents: Some(MAX_NESTED * PUTS_PER_NEST),
    bytes: Some(MAX_BATCH_COST),
};

fn op(request: request_op::Request) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request),
    }
}

fn compare_key(key: Vec<u8>, range_end: Vec<u8>, expect: Expect) -> pb::Compare {
    let (result, target, union) = match expect {
        Expect::Absent => (
            compare::CompareResult::Equal,
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(0),
        ),
        Expect::Version(v) => (
            compare::CompareResult::Equal,
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(rev_i64(v)),
        ),
    };
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end,
        target_union: Some(union),
    }
}

/// "No key in `[first, last]` was modified after `read_at`."
fn unchanged_since(first: Vec<u8>, last: &[u8], read_at: Revision) -> pb::Compare {
    let mut range_end = last.to_vec();
    range_end.push(0);
    pb::Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Mod as i32,
        key: first,
        range_end,
        target_union: Some(compare::TargetUnion::ModRevision(rev_i64(
            read_at.saturating_add(1),
        ))),
    }
}

fn range_op(key: Vec<u8>, revision: i64) -> pb::RequestOp {
    op(request_op::Request::RequestRange(pb::RangeRequest {
        key,
        revision,
        ..Default::default()
    }))
}

fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    op(request_op::Request::RequestPut(pb::PutRequest {
        key,
        value,
        lease,
        ..Default::default()
    }))
}

/// The key-values of a transaction's range responses, in order (`None` for a missing key).
fn ranges(response: &pb::TxnResponse) -> Vec<Option<&pb::KeyValue>> {
    response
        .responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(response_op::Response::ResponseRange(range)) => Some(range.kvs.first()),
            _ => None,
        })
        .collect()
}

impl EtcdStore {
    /// Where receipts live: beside the resource prefix (`/trellis/v1/applies/`), outside the
    /// range the model watches.
    fn receipt_key(&self, id: &str) -> Vec<u8> {
        format!("{}{id}", self.area("applies")).into_bytes()
    }

    /// `keys` read at revision `at` (0: the latest), and the revision read at.
    pub(super) async fn get_many_keys(
        &self,
        keys: &[ResourceKey],
        mut at: Revision,
    ) -> Result<(Vec<Option<Stored>>, Revision)> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READS_PER_TXN) {
            let request = pb::TxnRequest {
                compare: Vec::new(),
                success: chunk
                    .iter()
                    .map(|k| range_op(self.key(k), rev_i64(at)))
                    .collect(),
                failure: Vec::new(),
            };
            let response = self.call_txn("read a batch's keys", request).await?;
            if at == 0 {
                at = header_revision(response.header.as_ref());
            }
            for kv in ranges(&response) {
                out.push(kv.map(|kv| self.decode_kv(kv)).transpose()?);
            }
        }
        if at == 0 {
            at = self.revision().await?;
        }
        Ok((out, at))
    }

    pub(super) async fn commit_batch(&self, batch: Batch) -> Result<Committed> {
        if let Some(r) = &batch.receipt {
            if let Some((revision, body)) = self.read_receipt(&r.id).await? {
                return Ok(Committed::Replayed { revision, body });
            }
        }
        let mut expectations: Vec<(Vec<u8>, ResourceKey, Expect)> = batch
            .expectations()
            .map(|(k, e)| (self.key(&k), k, e))
            .collect();
        expectations.sort_by(|a, b| a.0.cmp(&b.0));
        if expectations.len() > MAX_COMPARES {
            // Range compares only say nothing moved since `read_at`: check that the
            // expectations held then.
            self.check_at(&expectations, batch.read_at).await?;
        }
        let mut compares = compares(&expectations, batch.read_at);
        let mut puts = Vec::with_capacity(batch.puts.len());
        for p in batch.puts {
            let (key, _, json) = encode(p.resource)?;
            puts.push(put_op(self.key(&key), json, 0));
        }
        let documents = puts.len();
        let mut success = nest(puts)?;
        let mut failure = Vec::new();
        if let Some(r) = &batch.receipt {
            let key = self.receipt_key(&r.id);
            let lease = self.receipt_lease().await?;
            compares.push(compare_key(key.clone(), Vec::new(), Expect::Absent));
            success.push(put_op(key.clone(), r.body.clone(), lease.0));
            failure.push(range_op(key, 0));
        }
        let request = pb::TxnRequest {
            compare: compares,
            success,
            failure,
        };
        let size = request.encoded_len();
        if size > MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge {
                detail: format!(
                    "this apply is {size} bytes as one etcd transaction ({documents} documents); \
                     etcd takes at most 1.5 MiB per request by default: split the manifest, or \
                     raise etcd's --max-request-bytes"
                ),
            });
        }
        let response = self.call_txn("commit a batch", request).await?;
        if response.succeeded {
            return Ok(Committed::Done {
                revision: header_revision(response.header.as_ref()),
            });
        }
        if let Some(Some(kv)) = ranges(&response).first() {
            return Ok(Committed::Replayed {
                revision: revision(kv.mod_revision),
                body: kv.value.clone(),
            });
        }
        Err(self.why_refused(&expectations).await)
    }

    /// Fails with the first expectation that did not hold at revision `at` (0: now).
    async fn check_at(
        &self,
        expectations: &[(Vec<u8>, ResourceKey, Expect)],
        at: Revision,
    ) -> Result<()> {
        let keys: Vec<ResourceKey> = expectations.iter().map(|(_, k, _)| k.clone()).collect();
        let (current, _) = self.get_many_keys(&keys, at).await?;
        for ((_, key, expect), now) in expectations.iter().zip(current) {
            let now = now.map(|s| s.version);
            if !holds(*expect, now) {
                return Err(crate::store::batch::refusal(key.clone(), *expect, now));
            }
        }
        Ok(())
    }

    /// After a refused commit: which expectation no longer holds, read afresh.
    async fn why_refused(&self, expectations: &[(Vec<u8>, ResourceKey, Expect)]) -> StoreError {
        if let Err(e) = self.check_at(expectations, 0).await {
            return e;
        }
        StoreError::BatchConflict {
            detail: "a resource in the range this apply writes changed while it was committed"
                .into(),
        }
    }

    async fn read_receipt(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>> {
        let request = pb::RangeRequest {
            key: self.receipt_key(id),
            ..Default::default()
        };
        let response = self
            .read_range(&format!("read apply receipt {id}"), request)
            .await?;
        Ok(response
            .kvs
            .first()
            .map(|kv| (revision(kv.mod_revision), kv.value.clone())))
    }

    pub(super) async fn receipt_of(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>> {
        self.read_receipt(id).await
    }

    /// A lease receipts are written under: granted for twice [`RECEIPT_TTL`] and used for one,
    /// so each receipt lives between one and two TTLs.
    async fn receipt_lease(&self) -> Result<LeaseId> {
        {
            let held = self
                .receipt_lease
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((id, until)) = *held {
                if Instant::now() < until {
                    return Ok(id);
                }
            }
        }
        let lease = self.grant(rev_i64(RECEIPT_TTL.as_secs() * 2)).await?;
        let until = Instant::now() + RECEIPT_TTL.min(lease.ttl / 2).max(Duration::from_secs(1));
        *self
            .receipt_lease
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((lease.id, until));
        Ok(lease.id)
    }

    async fn call_txn(&self, what: &str, request: pb::TxnRequest) -> Result<pb::TxnResponse> {
        let attempt = |mut c: Client| {
            let request = request.clone();
            async move { c.kv.txn(request).await }
        };
        match self.within(what, true, attempt).await? {
            Err(e) if e.kind() == etcdv3client::ErrKind::TooManyOps => Err(StoreError::TooLarge {
                detail: format!(
                    "{what}: etcd refused the transaction as too many operations; this etcd runs \
                     with a --max-txn-ops below its default (128): raise it, or split the manifest"
                ),
            }),
            answer => answer.map_err(|e| self.error(what, &e)),
        }
    }
}

/// The compares for sorted expectations: exact per key when they fit, else one range compare per
/// contiguous run. A run never spans two kinds: the range between the last Service and the first
/// Workload holds every ServiceAddress, which the control plane writes for services just created
/// (an earlier chunk of the same big apply, say), and a compare there would trip on them.
fn compares(sorted: &[(Vec<u8>, ResourceKey, Expect)], read_at: Revision) -> Vec<pb::Compare> {
    if sorted.len() <= MAX_COMPARES {
        return sorted
            .iter()
            .map(|(k, _, e)| compare_key(k.clone(), Vec::new(), *e))
            .collect();
    }
    let kinds = sorted.chunk_by(|a, b| a.1.kind == b.1.kind);
    // Each kind takes at most ceil(len / run) <= len / run + 1 runs: within MAX_COMPARES in all.
    let spare = MAX_COMPARES.saturating_sub(kinds.clone().count()).max(1);
    let run = sorted.len().div_ceil(spare);
    kinds
        .flat_map(|kind| kind.chunks(run))
        .filter_map(|chunk| {
            let (first, last) = (chunk.first()?, chunk.last()?);
            Some(unchanged_since(first.0.clone(), &last.0, read_at))
        })
        .collect()
}

/// Puts as they fit in one transaction: flat when few, else nested transactions.
fn nest(puts: Vec<pb::RequestOp>) -> Result<Vec<pb::RequestOp>> {
    if puts.len() <= MAX_NESTED {
        return Ok(puts);
    }
    if puts.len() > MAX_NESTED * PUTS_PER_NEST {
        return Err(StoreError::TooLarge {
            detail: format!(
                "this apply has {} documents; one etcd transaction takes at most {}: split the \
                 manifest",
                puts.len(),
                MAX_NESTED * PUTS_PER_NEST
            ),
        });
    }
    let mut out = Vec::new();
    let mut puts = puts.into_iter().peekable();
    while puts.peek().is_some() {
        let chunk: Vec<pb::RequestOp> = puts.by_ref().take(PUTS_PER_NEST).collect();
        out.push(op(request_op::Request::RequestTxn(pb::TxnRequest {
            compare: Vec::new(),
            success: chunk,
            failure: Vec::new(),
        })));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation(kind: &str, name: &str) -> (Vec<u8>, ResourceKey, Expect) {
        let key = ResourceKey {
            kind: kind.into(),
            namespace: "default".into(),
            name: name.into(),
        };
        (
            format!("/trellis/v1/resources/{key}").into_bytes(),
            key,
            Expect::Absent,
        )
    }

    #[test]
    fn range_compares_stay_within_a_kind_and_within_the_cap() {
        let mut sorted: Vec<_> = (0..500)
            .map(|i| expectation("Service", &format!("svc-{i:04}")))
            .chain((0..5000).map(|i| expectation("Workload", &format!("w-{i:05}"))))
            .chain(std::iter::once(expectation("Route", "r")))
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let compares = compares(&sorted, 7);
        assert!(compares.len() <= MAX_COMPARES, "{}", compares.len());
        let mut covered = 0;
        for c in &compares {
            let (first, end) = (
                String::from_utf8_lossy(&c.key),
                String::from_utf8_lossy(&c.range_end),
            );
            let kind = |k: &str| k.split('/').nth(4).unwrap_or_default().to_string();
            assert_eq!(
                kind(&first),
                kind(end.trim_end_matches('\0')),
                "{first}..{end}"
            );
            covered += sorted
                .iter()
                .filter(|(k, _, _)| {
                    k.as_slice() >= c.key.as_slice() && k.as_slice() < c.range_end.as_slice()
                })
                .count();
        }
        assert_eq!(
            covered,
            sorted.len(),
            "every key is under exactly one compare"
        );
    }
}
