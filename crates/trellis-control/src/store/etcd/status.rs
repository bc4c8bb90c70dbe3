//! The shared status area on etcd (`…/status/`): what each replica knows of itself and of the
//! proxies connected to it, under that replica's lease, so any replica can answer for the whole
//! mesh and a replica that dies takes its entries with it after one TTL.
use super::{Client, EtcdStore};
use crate::store::{LeaseId, Result, StoreError};
use etcdv3client::pb::{self, request_op};
use etcdv3client::ErrKind;

/// Entries per transaction (etcd's default `--max-txn-ops` is 128).
const PER_TXN: usize = 100;

impl EtcdStore {
    pub(super) async fn write_status(
        &self,
        lease: LeaseId,
        entries: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let area = self.area("status");
        for chunk in entries.chunks(PER_TXN) {
            let success = chunk
                .iter()
                .map(|(path, value)| {
                    let key = format!("{area}{path}").into_bytes();
                    let request = match value {
                        Some(v) => request_op::Request::RequestPut(pb::PutRequest {
                            key,
                            value: v.clone(),
                            lease: lease.0,
                            ..Default::default()
                        }),
                        None => request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key,
                            ..Default::default()
                        }),
                    };
                    pb::RequestOp {
                        request: Some(request),
                    }
                })
                .collect();
            let request = pb::TxnRequest {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            };
            let attempt = |mut c: Client| {
                let request = request.clone();
                async move { c.kv.txn(request).await }
            };
            match self.within("write status", true, attempt).await? {
                Err(e) if e.kind() == ErrKind::LeaseNotFound => {
                    return Err(StoreError::LeaseNotFound { lease })
                }
                answer => {
                    answer.map_err(|e| self.error("write status", &e))?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn read_status(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let area = self.area("status");
        Ok(self
            .list_area("status", false)
            .await?
            .into_iter()
            .filter_map(|(raw, value, _)| {
                let path = String::from_utf8(raw)
                    .ok()?
                    .strip_prefix(&area)?
                    .to_string();
                Some((path, value))
            })
            .collect())
    }
}
