//! Connections to etcd's members, deadlines, failover, and etcd's errors as store errors.
//!
//! Each endpoint gets its own lazily connecting gRPC channel (it reconnects by itself after a
//! failure). Requests go to the member that answered last; when it cannot be reached they move on
//! to the next, within the same deadline. Reads move on after any connectivity failure; writes
//! only when the request provably never left (the connection could not be made), so a write is
//! never sent twice. (tonic's own load-balanced channel was tried first: it keeps a dead member
//! "ready" and fails every request routed to it.)
use super::{header_revision, Client, EtcdOptions, EtcdStore, Member};
use crate::store::{Result, Revision, StoreError};
use etcd_tonic::transport::Endpoint;
use etcdv3client::grpc::TonicClient;
use etcdv3client::{pb, ErrKind};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

impl EtcdStore {
    /// Connects and checks with one read that etcd answers; [`StoreError::Unavailable`] if not.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let name = format!("etcd {}", options.endpoints.join(","));
        let config = |detail: String| StoreError::Config {
            setting: options.endpoints.join(","),
            detail,
        };
        if !options.prefix.starts_with('/') || !options.prefix.ends_with('/') {
            return Err(config(format!(
                "key prefix {:?} must start and end with '/'",
                options.prefix
            )));
        }
        if options.endpoints.is_empty() {
            return Err(config("no endpoints".into()));
        }
        let mut members = Vec::new();
        for url in &options.endpoints {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| config(format!("bad endpoint {url:?}: {e}")))?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy();
            members.push(Member {
                url: url.clone(),
                client: Client::with_service(TonicClient::new(channel)),
            });
        }
        let store = Self {
            name,
            options,
            members,
            current: AtomicUsize::new(0),
            receipt_lease: std::sync::Mutex::new(None),
        };
        store.revision().await?;
        Ok(store)
    }

    /// etcd's current revision.
    pub async fn revision(&self) -> Result<Revision> {
        let (key, range_end) = self.range(None, None);
        let request = pb::RangeRequest {
            key,
            range_end,
            count_only: true,
            ..Default::default()
        };
        let response = self.read_range("read", request).await?;
        Ok(header_revision(response.header.as_ref()))
    }

    pub(super) async fn read_range(
        &self,
        what: &str,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse> {
        self.call(what, false, |mut c| {
            let request = request.clone();
            async move { c.kv.range(request).await }
        })
        .await
    }

    pub(super) async fn txn(&self, what: &str, request: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.call(what, true, |mut c| {
            let request = request.clone();
            async move { c.kv.txn(request).await }
        })
        .await
    }

    /// One request under the deadline, with failover, mapping failures to store errors.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, is_write: bool, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcdv3client::Error>>,
    {
        self.within(what, is_write, f)
            .await?
            .map_err(|e| self.error(what, &e))
    }

    /// Like [`EtcdStore::call`], but hands back etcd's own error for callers that turn some of
    /// them (lease not found, compacted) into specific store errors. `Err` means no member
    /// answered before the deadline.
    pub(super) async fn within<T, F, Fut>(
        &self,
        what: &str,
        is_write: bool,
        mut f: F,
    ) -> Result<Result<T, etcdv3client::Error>>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcdv3client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed);
        for attempt in 0..n {
            let i = (first + attempt) % n;
            let member = &self.members[i];
            match tokio::time::timeout_at(deadline, f(member.client.clone())).await {
                Ok(Err(e)) if attempt + 1 < n && self.may_fail_over(&e, is_write) => {
                    tracing::debug!(endpoint = %member.url, error = %e, "{what}: trying the next etcd endpoint");
                }
                Ok(answer) => {
                    if attempt > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Err(_) => break,
            }
        }
        Err(self.timeout(what, is_write))
    }

    /// A future (on an already chosen member) under the request deadline.
    pub(super) async fn timed<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, etcdv3client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.options.request_timeout, request).await {
            Ok(answer) => answer.map_err(|e| self.error(what, &e)),
            Err(_) => Err(self.timeout(what, false)),
        }
    }

    fn timeout(&self, what: &str, is_write: bool) -> StoreError {
        let mut detail = format!(
            "{what}: no answer within {:?}",
            self.options.request_timeout
        );
        if is_write {
            detail.push_str(" (the write may or may not have been applied; read before retrying)");
        }
        StoreError::Unavailable {
            store: self.name.clone(),
            detail,
        }
    }

    fn may_fail_over(&self, e: &etcdv3client::Error, is_write: bool) -> bool {
        let unreachable = matches!(self.error("", e), StoreError::Unavailable { .. });
        // The connection could not be made, so the request was never sent.
        let never_sent = matches!(e.kind(), ErrKind::ConnectFailed | ErrKind::Grpc)
            && e.to_string().to_ascii_lowercase().contains("connect");
        unreachable && (!is_write || never_sent)
    }

    pub(super) fn error(&self, what: &str, e: &etcdv3client::Error) -> StoreError {
        let detail = format!("{what}: {}", describe(e));
        match e.kind() {
            ErrKind::NoSpace
            | ErrKind::RequestTooLarge
            | ErrKind::EmptyKey
            | ErrKind::TooManyOps
            | ErrKind::DuplicateKey
            | ErrKind::InvalidSortOption
            | ErrKind::FutureRev
            | ErrKind::LeaseTTLTooLarge
            | ErrKind::PermissionDenied
            | ErrKind::InvalidAuthToken
            | ErrKind::AuthFailed
            | ErrKind::Corrupt => StoreError::Backend {
                store: self.name.clone(),
                detail,
            },
            _ => StoreError::Unavailable {
                store: self.name.clone(),
                detail,
            },
        }
    }
}

/// etcdv3client's errors print as `[Kind] Status { code: .., message: "..", .. }`; keep what a
/// person needs.
fn describe(e: &etcdv3client::Error) -> String {
    let text = e.to_string();
    let message = text
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(message, _)| message);
    match message {
        Some(m) => format!("{:?}: {m}", e.kind()),
        None => text,
    }
}
