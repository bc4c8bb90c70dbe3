//! Arbitrary bytes from an arbitrary peer into the inbound side's protocol detection and then
//! into the decision the gate makes on them, under a policy shaped like the one a hostile
//! caller attacks: `defaultAction: Deny`, an ALLOW for one identity, a DENY on `/admin`.
//!
//! What must hold, whatever the bytes:
//! - nothing panics; detection replays exactly the bytes it read;
//! - bytes detection does not call HTTP are decided as a connection, and that decision is a
//!   denial (the DENY rule on a path denies opaque TCP);
//! - an HTTP request whose path normalizes to `/admin` or below is denied, whoever sends it;
//! - path normalization is idempotent (the app is given the path that was authorized).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use trellis_api::parse_documents;
use trellis_identity::authz::{normalize_path, RequestAttrs};
use trellis_identity::Authorizer;
use trellis_proxy::detect::{detect, Detected};

const POLICY: &str = r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: guard}
spec:
  service: backend
  defaultAction: Deny
  rules:
    - name: no-admin
      action: Deny
      to: {paths: ["/admin", "/admin/*"]}
    - name: frontend
      action: Allow
      from: {principals: ["spiffe://cluster.local/ns/default/sa/frontend"]}
"#;

fn authorizer() -> &'static Authorizer {
    static AUTHZ: std::sync::OnceLock<Authorizer> = std::sync::OnceLock::new();
    AUTHZ.get_or_init(|| {
        let set = parse_documents("policy.yaml", POLICY).expect("the fuzz policy parses");
        Authorizer::new(set.authorization_policies())
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the peer: none (plaintext), the allowed identity, or another one.
    let Some((&who, bytes)) = data.split_first() else {
        return;
    };
    let source = match who % 3 {
        0 => None,
        1 => Some("spiffe://cluster.local/ns/default/sa/frontend"),
        _ => Some("spiffe://cluster.local/ns/default/sa/intruder"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (detected, prefix) = runtime.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(bytes.len().max(1));
        client.write_all(bytes).await.expect("duplex write");
        drop(client);
        detect(&mut server, std::time::Duration::from_secs(5))
            .await
            .expect("detection on a duplex never fails")
    });
    assert_eq!(prefix, bytes[..prefix.len()], "detection replays what it read");

    let authz = authorizer();
    match detected {
        Detected::Http1 => {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = req.parse(bytes) {
                let (Some(method), Some(path)) = (req.method, req.path) else {
                    return;
                };
                let normalized = normalize_path(path);
                assert_eq!(normalize_path(&normalized), normalized, "idempotent");
                let decision = authz.decide(&RequestAttrs {
                    source,
                    method,
                    path,
                    port: 8080,
                    ..Default::default()
                });
                if normalized == "/admin" || normalized.starts_with("/admin/") {
                    assert!(!decision.allowed, "{method} {path} reached /admin: {decision}");
                }
            }
        }
        Detected::Http2 => {}
        Detected::Tcp | Detected::Timeout | Detected::Closed => {
            let decision = authz.decide_connection(source, 8080);
            assert!(!decision.allowed, "opaque bytes allowed: {decision}");
        }
    }
});
