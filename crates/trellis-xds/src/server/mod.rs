//! The control plane's end of xDS: Envoy's `AggregatedDiscoveryService` (state of the world and
//! delta) serving each node the [`View`] its [`ViewSource`] computes.
//!
//! The server decides nothing about policy — which resources a node may see is the view
//! source's job — and keeps no history: per stream, it remembers only what the proxy holds,
//! what was sent and what was acknowledged (the [`Registry`]). It must never buffer without
//! bound for a slow proxy, never panic on a request, and never let one stream's failure reach
//! another: each stream is its own task, and a request that breaks the rules ends only that
//! stream, with a status that says why.
mod delta;
pub(crate) mod registry;
mod sotw;
mod stream;
mod view;

pub use registry::{Mode, Nack, NodeStatus, Registry, TypeStatus};
pub use stream::{MAX_NAMES_PER_TYPE, MAX_TYPES_PER_STREAM};
pub use view::{NodeAuth, Scope, SharedViews, TypeResources, VersionedResource, View, ViewSource};

use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use stream::ResponseStream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// Decides who a stream belongs to from its request metadata (a join token, a client
/// certificate's identity); an `Err` refuses the stream with that status.
pub type AuthHook = Arc<dyn Fn(&MetadataMap) -> Result<NodeAuth, Status> + Send + Sync>;

/// Limits and identity of an [`AdsServer`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request or response message, in bytes (default 4 MiB).
    pub max_message_bytes: usize,
    /// Responses queued per stream before the stream waits and coalesces (default 4).
    pub stream_buffer: usize,
    /// How long a new stream may take to send its first request (default 30 s).
    pub first_request_timeout: Duration,
    /// Sent in every response as `control_plane.identifier` (e.g. the replica's name).
    pub control_plane_id: String,
    /// HTTP/2 PINGs to find dead proxies (default every 30 s, 10 s to answer).
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// Streams one connection may open at once (default 8; a proxy needs one).
    pub max_concurrent_streams: u32,
    /// `None` lets every stream in (anonymous).
    pub auth: Option<AuthHook>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 4 * 1024 * 1024,
            stream_buffer: 4,
            first_request_timeout: Duration::from_secs(30),
            control_plane_id: String::new(),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 8,
            auth: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("stream_buffer", &self.stream_buffer)
            .field("first_request_timeout", &self.first_request_timeout)
            .field("control_plane_id", &self.control_plane_id)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("auth", &self.auth.as_ref().map(|_| "hook"))
            .finish()
    }
}

/// Why [`AdsServer::serve`] stopped.
#[derive(Debug, thiserror::Error)]
#[error("xDS server failed: {0}")]
pub struct ServeError(#[from] tonic::transport::Error);

pub(crate) struct Shared {
    source: Box<dyn ViewSource>,
    registry: Registry,
    config: ServerConfig,
    shutdown: watch::Sender<bool>,
}

/// The ADS server; cheap to clone (all clones serve the same registry).
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl AdsServer {
    pub fn new(source: impl ViewSource, config: ServerConfig) -> Self {
        AdsServer {
            shared: Arc::new(Shared {
                source: Box::new(source),
                registry: Registry::default(),
                config,
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// The connected streams and what each holds.
    pub fn registry(&self) -> Registry {
        self.shared.registry.clone()
    }

    /// The gRPC service with this server's message limits, to mount on a tonic server of one's
    /// own (next to other services of the control plane).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        let limit = self.shared.config.max_message_bytes;
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// Ends every open stream with UNAVAILABLE, so proxies move to another replica at once
    /// (a graceful HTTP/2 shutdown alone would wait for streams that never end).
    pub fn close_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Serves ADS on `listener` until `shutdown` resolves, then closes the streams and returns
    /// once every connection is gone.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let cfg = &self.shared.config;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(cfg.keepalive_interval)
            .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .http2_max_header_list_size(16 * 1024);
        let this = self.clone();
        let signal = async move {
            shutdown.await;
            this.close_streams();
        };
        server
            .serve_with_incoming_shutdown(self.service(), incoming, signal)
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        stream::start::<sotw::Sotw>(self.shared.clone(), request)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        stream::start::<delta::Delta>(self.shared.clone(), request)
    }
}
