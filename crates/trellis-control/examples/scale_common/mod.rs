//! What the control-plane scale examples (`control_scale`, `control_restart`, `dashboard_scale`)
//! share: the control plane they start, the mesh they load, the Route each round changes, how a
//! proxy's round is read back from its config, the API call and the percentile, so they measure
//! the same thing the same way.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use trellis_api::Resource;
use trellis_control::server::{run, ControlOptions};
use trellis_control::StoreSpec;

/// The join token the control plane requires from the API client and every xDS client.
pub const TOKEN: &str = "control-scale-token";

pub type Http = Client<HttpConnector, Full<Bytes>>;

/// Starts a control plane in this process on loopback, its embedded store in `dir`, requiring
/// [`TOKEN`]; returns its API address and the sender that stops it.
pub async fn start_control(dir: &Path) -> Result<(SocketAddr, oneshot::Sender<()>), String> {
    let opts = ControlOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: StoreSpec::Embedded {
            data_dir: dir.to_path_buf(),
        },
        lease_ttl: Duration::from_secs(10),
        join_token: Some(TOKEN.into()),
        join_token_file: None,
        ca: None,
        connections: Default::default(),
        max_apply_documents: None,
        dashboard: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(run(
        opts,
        async {
            let _ = stopped.await;
        },
        move |a| {
            let _ = ready_tx.send(a);
        },
    ));
    let addr = ready_rx
        .await
        .map_err(|_| "control plane did not start".to_string())?;
    Ok((addr, stop))
}

/// The Route each round changes: round `r` sets the timeout to `r + 1` seconds.
pub fn route(round: usize) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  rules:\n    - timeout: {}s\n",
        round + 1
    )
}

/// Three services with `workloads` workloads each.
pub fn mesh(workloads: usize) -> String {
    let mut yaml = String::new();
    for svc in ["reviews", "ratings", "details"] {
        yaml.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec: {{ports: [{{port: 80, protocol: http}}]}}\n"
        ));
        for i in 0..workloads {
            yaml.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: {svc}-{i}}}\nspec: {{service: {svc}, address: 127.0.{}.{}, port: 9080}}\n",
                i / 250,
                i % 250 + 1
            ));
        }
    }
    yaml
}

/// The round a proxy's config is at: the route timeout minus one.
pub fn round_of(resources: &[Resource]) -> Option<usize> {
    resources.iter().find_map(|r| match r {
        Resource::Route(route) => route
            .spec
            .rules
            .first()?
            .timeout
            .map(|t| (t.as_std().as_secs() as usize).saturating_sub(1)),
        _ => None,
    })
}

/// `POST`s `body` with the join token; `Err` carries the status and body of a refusal.
pub async fn post(client: &Http, url: &str, body: String) -> Result<(), String> {
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let rsp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// The nearest-rank percentile of sorted figures (zero for none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
