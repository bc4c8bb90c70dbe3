//! Shared test fixtures: a small mesh, a server on its own runtime (so a test can kill it the way
//! a crash would: every connection drops at once), raw ADS clients for checking what is on the
//! wire, and bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;
use trellis_api::Resource;
use trellis_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use trellis_xds::server::{AdsServer, Registry, ServerConfig, SharedViews, View, ViewSource};
use trellis_xds::NodeInfo;

/// The bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// A mesh whose `reviews` route has the given timeout, plus `workloads` reviews instances.
pub fn mesh(timeout: &str, workloads: usize) -> Vec<Resource> {
    let mut yaml = format!(
        r#"
apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec: {{trustDomain: cluster.local}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, protocol: http}}]
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: ratings}}
spec:
  selector: {{app: ratings}}
  ports: [{{name: http, port: 9080, protocol: http}}]
---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {{name: reviews}}
spec:
  service: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: reviews}}
spec:
  service: reviews
  rules:
    - backends: [{{service: reviews, subset: v1}}]
      timeout: {timeout}
"#
    );
    for i in 0..workloads {
        yaml.push_str(&format!(
            r#"---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {{name: reviews-{i}, labels: {{app: reviews, version: v1}}}}
spec: {{service: reviews, address: 127.0.0.1, port: {port}}}
"#,
            port = 10000 + i
        ));
    }
    trellis_api::parse_documents("test-mesh.yaml", &yaml)
        .expect("test mesh is valid")
        .resources
}

pub fn view(resources: &[Resource]) -> View {
    View::from_resources(resources)
}

pub fn node(id: &str) -> NodeInfo {
    NodeInfo::new(id, "productpage", "default")
}

/// A control plane on its own runtime and thread.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Registry,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(views: Arc<SharedViews>) -> TestServer {
        TestServer::start_with(views, ServerConfig::default(), "127.0.0.1:0")
    }

    pub fn start_with(views: impl ViewSource, config: ServerConfig, addr: &str) -> TestServer {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let server = AdsServer::new(views, config);
        let registry = server.registry();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = server.serve(listener, std::future::pending());
                tokio::select! {
                    r = serve => r.expect("server runs"),
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection: what a crash looks like to a peer.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        TestServer {
            addr,
            registry,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> Uri {
        format!("http://{}", self.addr).parse().expect("uri")
    }

    /// Stops the server abruptly; its port is free again when this returns.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 5 ms until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn channel(uri: Uri) -> Channel {
    let endpoint = Endpoint::from(uri).connect_timeout(WAIT);
    tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .expect("connected in time")
        .expect("connect")
}

/// A hand-driven ADS stream: send exactly the requests a test wants, see exactly what came back.
pub struct Raw<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

pub type RawSotw = Raw<DiscoveryRequest, DiscoveryResponse>;
pub type RawDelta = Raw<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl RawSotw {
    pub async fn open(uri: Uri) -> Result<RawSotw, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        let mut client = AggregatedDiscoveryServiceClient::new(channel(uri).await);
        let open = client.stream_aggregated_resources(ReceiverStream::new(rx));
        let rx = tokio::time::timeout(WAIT, open)
            .await
            .expect("stream opened in time")?
            .into_inner();
        Ok(Raw { tx, rx })
    }
}

impl RawDelta {
    pub async fn open(uri: Uri) -> Result<RawDelta, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        let mut client = AggregatedDiscoveryServiceClient::new(channel(uri).await);
        let open = client.delta_aggregated_resources(ReceiverStream::new(rx));
        let rx = tokio::time::timeout(WAIT, open)
            .await
            .expect("stream opened in time")?
            .into_inner();
        Ok(Raw { tx, rx })
    }
}

impl<Req, Resp> Raw<Req, Resp> {
    pub async fn send(&self, req: Req) {
        tokio::time::timeout(WAIT, self.tx.send(req))
            .await
            .expect("request queued in time")
            .expect("request stream open");
    }

    /// The next response or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<Resp>, tonic::Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response within the wait bound")
    }

    pub async fn recv(&mut self) -> Resp {
        self.next()
            .await
            .expect("stream healthy")
            .expect("stream open")
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(r) = tokio::time::timeout(quiet, self.rx.message()).await {
            panic!("expected no response, got {:?}", r.map(|o| o.is_some()));
        }
    }
}
