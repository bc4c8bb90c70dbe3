//! Hostile and heavy conditions: garbage on the gRPC port, undecodable gRPC messages, a proxy
//! that stops reading, and a hundred proxies at once.
mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Endpoint;
use trellis_api::Resource;
use trellis_xds::client::{AdsClient, Backoff, ClientConfig};
use trellis_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryRequest};
use trellis_xds::resource::{ROUTE, SERVICE};
use trellis_xds::server::SharedViews;

fn counting_client(server: &TestServer, id: &str, applied: Arc<AtomicUsize>) -> AdsClient {
    let mut c = ClientConfig::new(vec![server.uri()], node(id));
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(500),
    };
    AdsClient::spawn(c, move |_| {
        applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
    .expect("client starts")
}

/// Writes `bytes` on a raw TCP connection and reads until the server closes it.
async fn send_garbage(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.write_all(bytes).await;
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server closes a connection that sends garbage"
    );
}

/// Bytes that decode as a DeltaDiscoveryRequest frame-wise but not message-wise: field 2
/// (`type_url`, a string) holding invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "2")]
    type_url: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_disturb_a_real_client() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let server = TestServer::start(views.clone());
    let applied = Arc::new(AtomicUsize::new(0));
    let client = counting_client(&server, "real", applied.clone());
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready")
        .expect("running");

    // Not HTTP/2 at all; an HTTP/2 preface followed by junk frames; random bytes.
    send_garbage(server.addr, b"GET / HTTP/1.1\r\nHost: xds\r\n\r\n").await;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(std::iter::repeat_n(0xAB, 4096));
    send_garbage(server.addr, &preface).await;
    let noise: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_garbage(server.addr, &noise).await;

    // Valid gRPC framing around a message that is not a DeltaDiscoveryRequest.
    let mut grpc = tonic::client::Grpc::new(channel(server.uri()).await);
    tokio::time::timeout(WAIT, grpc.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    );
    let codec: tonic_prost::ProstCodec<Garbage, DeltaDiscoveryResponse> = Default::default();
    let garbage = Garbage {
        type_url: vec![0xff, 0xfe, 0xfd],
    };
    let request = tonic::Request::new(tokio_stream::iter(vec![garbage]));
    let mut stream = tokio::time::timeout(WAIT, grpc.streaming(request, path, codec))
        .await
        .expect("opened in time")
        .expect("stream opens")
        .into_inner();
    let status = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an answer in time")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("cannot read"), "{status}");

    // The real client is still connected and still gets changes.
    assert_eq!(server.registry.len(), 1);
    views.set(view(&mesh("3s", 1)));
    wait_until("the real client applies the change", || {
        applied.load(Ordering::Relaxed) == 2
    })
    .await;
}

fn services(n: usize, port: u16) -> Vec<Resource> {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: service-{i}, labels: {{team: team-{i}}}}}\nspec:\n  selector: {{app: service-{i}, tier: backend}}\n  ports: [{{name: http, port: {port}, protocol: http}}, {{name: admin, port: 9901}}]\n"
        ));
    }
    trellis_api::parse_documents("services.yaml", &yaml)
        .expect("valid")
        .resources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_stops_reading_gets_fewer_newer_responses() {
    let views = Arc::new(SharedViews::new(view(&services(100, 1000))));
    let server = TestServer::start(views.clone());
    // A small HTTP/2 window, so flow control holds the server back after a few responses.
    let endpoint = Endpoint::from(server.uri())
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535));
    let channel = tokio::time::timeout(WAIT, endpoint.connect())
        .await
        .expect("connected in time")
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node("slow").to_node()),
        type_url: SERVICE.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let open = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut stream = tokio::time::timeout(WAIT, open)
        .await
        .expect("opened in time")
        .expect("open")
        .into_inner();

    // 300 changes of roughly 12 KB each, one per millisecond, while nothing is read.
    const CHANGES: u16 = 300;
    let mut resources = services(100, 1000);
    for port in 1001..=1000 + CHANGES {
        if let Some(Resource::Service(s)) = resources.first_mut() {
            s.spec.ports[0].port = port;
        }
        views.set(view(&resources));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let latest = views
        .current()
        .get(SERVICE)
        .expect("type")
        .version()
        .to_string();
    let mut received = 0;
    loop {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("responses keep coming")
            .expect("stream healthy")
            .expect("stream open");
        received += 1;
        if r.version_info == latest {
            break;
        }
    }
    println!("slow reader: {CHANGES} changes arrived as {received} responses");
    assert!(
        received < usize::from(CHANGES) / 3,
        "{received} responses for {CHANGES} changes"
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_clients_receive_and_ack_an_update() {
    const N: usize = 100;
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 3))));
    let server = TestServer::start(views.clone());
    let applied = Arc::new(AtomicUsize::new(0));
    let clients: Vec<AdsClient> = (0..N)
        .map(|i| counting_client(&server, &format!("proxy-{i}"), applied.clone()))
        .collect();
    for c in &clients {
        tokio::time::timeout(WAIT, c.ready())
            .await
            .expect("ready")
            .expect("running");
    }
    wait_until("every stream registered", || server.registry.len() == N).await;

    let start = Instant::now();
    views.set(view(&mesh("3s", 3)));
    let version = views
        .current()
        .get(ROUTE)
        .expect("routes")
        .version()
        .to_string();
    wait_until("every client ACKed the change", || {
        server.registry.all_acked(ROUTE, &version)
    })
    .await;
    let elapsed = start.elapsed();
    println!("{N} clients: apply to the last ACK took {elapsed:?}");
    assert_eq!(applied.load(Ordering::Relaxed), 2 * N);
    assert!(server.registry.nodes().iter().all(|n| n.in_sync()));
    drop(clients);
}
