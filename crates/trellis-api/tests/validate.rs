//! Semantic validation of every kind, and the checks across a set. Each case edits one field of a
//! valid fixture document and expects a problem at an exact path whose message says what is
//! allowed.
mod common;

use common::*;

/// One fixture document with edits applied; Routes come with the DestinationPolicy that declares
/// their subsets, so only the edited problem shows.
fn edited(kind: &str, name: &str, edits: &[(&str, &str)]) -> String {
    let mut text = doc(kind, name);
    for (path, value) in edits {
        text = with(&text, path, value);
    }
    if kind == "Route" {
        text = format!("{text}---\n{}", doc("DestinationPolicy", "reviews"));
    }
    text
}

/// `(edits, expected path, message fragment)`.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[track_caller]
fn run(kind: &str, name: &str, cases: &[Case]) {
    valid(&edited(kind, name, &[]));
    for (edits, path, fragment) in cases {
        let e = expect(&edited(kind, name, edits), path, fragment);
        assert_eq!(e.kind.as_deref(), Some(kind));
        assert_eq!(e.document, 1);
    }
}

#[track_caller]
fn ok(kind: &str, name: &str, edits: &[(&str, &str)]) {
    valid(&edited(kind, name, edits));
}

#[test]
fn metadata() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("metadata.name", "\"\"")], "metadata.name", "must not be empty"),
        (&[("metadata.name", "Ratings")], "metadata.name", "uppercase is not allowed"),
        (&[("metadata.name", "rat_ings")], "metadata.name", "contains '_'"),
        (&[("metadata.name", "-ratings")], "metadata.name", "start and end"),
        (&[("metadata.name", &"r".repeat(64))], "metadata.name", "at most 63"),
        (&[("metadata.namespace", "Shop")], "metadata.namespace", "lowercase"),
        (&[("metadata.namespace", "\"\"")], "metadata.namespace", "must not be empty"),
        (&[("metadata.labels", "{\"\": x}")], "metadata.labels", "keys must not be empty"),
        (&[("metadata.labels", "{\"bad key\": x}")], "metadata.labels", "key \"bad key\" is invalid"),
        (&[("metadata.labels", "{version: \"v 1\"}")], "metadata.labels", "value \"v 1\" of label \"version\""),
        (&[("metadata.annotations", "{\"\": x}")], "metadata.annotations", "keys must not be empty"),
    ];
    run("Service", "ratings", cases);
    ok(
        "Service",
        "ratings",
        &[(
            "metadata.labels",
            "{app.kubernetes.io/name: ratings, tier: \"\"}",
        )],
    );
    // The name is reported even when it is the problem.
    let e = expect(
        &edited("Service", "ratings", &[("metadata.name", "Bad")]),
        "metadata.name",
        "",
    );
    assert_eq!(e.name.as_deref(), Some("Bad"));
}

#[test]
fn service() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.ports", "[]")], "spec.ports", "at least one port"),
        (&[("spec.ports[0].port", "0")], "spec.ports[0].port", "between 1 and 65535"),
        (&[("spec.ports[1].port", "8080")], "spec.ports[1].port", "port 8080 is declared twice"),
        (&[("spec.ports[1].name", "http")], "spec.ports[1].name", "\"http\" is used twice"),
        (&[("spec.ports[1].name", "GRPC")], "spec.ports[1].name", "lowercase"),
        (&[("spec.selector", "{\"\": x}")], "spec.selector", "keys must not be empty"),
        (&[("spec.egress", "[ratings, \"\"]")], "spec.egress[1]", "must not be empty"),
        (&[("spec.egress", "[a/b/c]")], "spec.egress[0]", "\"a/b/c\" has more than one '/'"),
        (&[("spec.egress", "[\"*/ratings\"]")], "spec.egress[0]", "'*' may only be the whole name"),
        (&[("spec.egress", "[\"shop/rat*\"]")], "spec.egress[0]", "'*' may only be the whole name"),
        (&[("spec.egress", "[\"*\"]")], "spec.egress[0]", "`NAMESPACE/*`"),
        (&[("spec.egress", "[Ratings]")], "spec.egress[0]", "the service name \"Ratings\" contains 'R'"),
        (&[("spec.egress", "[shop/ratings, Shop/ratings]")], "spec.egress[1]", "the namespace \"Shop\""),
        (&[("spec.egress", "{ratings: 1}")], "spec.egress", "expected a sequence"),
    ];
    run("Service", "reviews", cases);
    ok("Service", "reviews", &[("spec.egress", "[]")]);
    ok(
        "Service",
        "reviews",
        &[("spec.egress", "[ratings, other/ratings, \"payments/*\"]")],
    );
}

#[test]
fn workload() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.address", "reviews.local")], "spec.address", "not an IP address"),
        (&[("spec.address", "10.0.0.1:80")], "spec.address", "IPv4 or IPv6"),
        (&[("spec.port", "0")], "spec.port", "between 1 and 65535"),
        (&[("spec.appPort", "0")], "spec.appPort", "between 1 and 65535"),
        (&[("spec.weight", "0")], "spec.weight", "at least 1"),
        (&[("metadata.labels", "{}")], "spec.service", "spec.service or metadata.labels"),
        (&[("spec.service", "\"\"")], "spec.service", "must name a service"),
        (&[("spec.zone", "\"\"")], "spec.zone", "not a zone name"),
        (&[("spec.identity", "cluster.local/ns/shop/sa/reviews")], "spec.identity", "SPIFFE ID"),
    ];
    run("Workload", "reviews-v1-0", cases);
    ok("Workload", "reviews-v1-0", &[("spec.address", "\"::1\"")]);
    ok("Workload", "ratings-0", &[]);
    let text = edited("Workload", "reviews-v1-0", &[("spec.health", "Sick")]);
    expect(&text, "spec.health", "unknown variant `Sick`");
}

#[test]
fn route_matches() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.service", "\"\"")], "spec.service", "must name a service"),
        (&[("spec.service", "Reviews")], "spec.service", "not a valid DNS name"),
        (&[("spec.rules", "[]")], "spec.rules", "at least one rule"),
        (&[("spec.rules[1].name", "canary-testers")], "spec.rules[1].name", "used twice"),
        (&[("spec.rules[0].matches[0].path.value", "api")], "spec.rules[0].matches[0].path.value", "must start with '/' for type PathPrefix"),
        (&[("spec.rules[1].matches[1].path.value", "healthz")], "spec.rules[1].matches[1].path.value", "must start with '/' for type Exact"),
        (&[("spec.rules[0].matches[0].path.value", "/api?x=1")], "spec.rules[0].matches[0].path.value", "must not contain '?'"),
        (&[("spec.rules[1].matches[0].path.value", "\"[a-\"")], "spec.rules[1].matches[0].path.value", "invalid regular expression"),
        (&[("spec.rules[0].matches[0].method", "get")], "spec.rules[0].matches[0].method", "write \"GET\""),
        (&[("spec.rules[0].matches[0].method", "\"GE T\"")], "spec.rules[0].matches[0].method", "not an HTTP method"),
        (&[("spec.rules[0].matches[0].headers[0].name", "\"\"")], "spec.rules[0].matches[0].headers[0].name", "must not be empty"),
        (&[("spec.rules[0].matches[0].headers[0].name", "\"x canary\"")], "spec.rules[0].matches[0].headers[0].name", "not a valid HTTP header name"),
        (&[("spec.rules[0].matches[0].headers[0].value", "~")], "spec.rules[0].matches[0].headers[0].value", "required with type Exact"),
        (&[("spec.rules[0].matches[0].headers[1].value", "x")], "spec.rules[0].matches[0].headers[1].value", "must not be set with type Present"),
        (&[("spec.rules[0].matches[0].headers[0].value", "\"a\\r\\nb\"")], "spec.rules[0].matches[0].headers[0].value", "CR, LF"),
        (&[("spec.rules[0].matches[0].headers[1].name", "X-Canary")], "spec.rules[0].matches[0].headers[1].name", "matched twice"),
        (&[("spec.rules[0].matches[0].queryParams[0].value", "\"(\"")], "spec.rules[0].matches[0].queryParams[0].value", "invalid regular expression"),
        (&[("spec.rules[0].matches[0].queryParams[0].name", "\"\"")], "spec.rules[0].matches[0].queryParams[0].name", "must not be empty"),
        (&[("spec.rules[0].matches[0].queryParams[0].value", "~")], "spec.rules[0].matches[0].queryParams[0].value", "required with type RegularExpression"),
    ];
    run("Route", "reviews", cases);
    ok(
        "Route",
        "reviews",
        &[("spec.rules[0].matches[0].method", "PURGE")],
    );
}

#[test]
fn route_backends_and_timeouts() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.rules[1].backends[1].weight", "10001")], "spec.rules[1].backends[1].weight", "between 0 and 10000 (got 10001)"),
        (&[("spec.rules[1].backends[0].weight", "0"), ("spec.rules[1].backends[1].weight", "0")], "spec.rules[1].backends", "every backend has weight 0"),
        (&[("spec.rules[1].backends[0].service", "\"\"")], "spec.rules[1].backends[0].service", "must name a service"),
        (&[("spec.rules[1].backends[0].subset", "\"\"")], "spec.rules[1].backends[0].subset", "must not be empty"),
        (&[("spec.rules[1].backends[0].port", "0")], "spec.rules[1].backends[0].port", "between 1 and 65535"),
        (&[("spec.rules[1].timeout", "0")], "spec.rules[1].timeout", "greater than 0"),
        (&[("spec.rules[1].timeout", "5")], "spec.rules[1].timeout", "needs a unit"),
    ];
    run("Route", "reviews", cases);
    // One zero weight among others is a valid way to drain a backend.
    ok(
        "Route",
        "reviews",
        &[("spec.rules[1].backends[1].weight", "0")],
    );
    ok(
        "Route",
        "reviews",
        &[("spec.rules[1].backends[1].weight", "10000")],
    );
}

#[test]
fn route_retries() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.rules[1].retries.attempts", "0")], "spec.rules[1].retries.attempts", "between 1 and 10 (got 0)"),
        (&[("spec.rules[1].retries.attempts", "11")], "spec.rules[1].retries.attempts", "between 1 and 10 (got 11)"),
        (&[("spec.rules[1].retries.perTryTimeout", "0s")], "spec.rules[1].retries.perTryTimeout", "greater than 0"),
        (&[("spec.rules[1].retries.perTryTimeout", "4s")], "spec.rules[1].retries.perTryTimeout", "4s must not exceed the rule's timeout (3s)"),
        (&[("spec.rules[1].retries.retryOn[0]", "\"503\"")], "spec.rules[1].retries.retryOn[0]", "allowed: 5xx, gateway-error"),
        (&[("spec.rules[1].retries.retryOn[0]", "unavailable")], "spec.rules[1].retries.retryOn[3]", "listed twice"),
        (&[("spec.rules[1].retries.retriableStatusCodes", "~")], "spec.rules[1].retries.retriableStatusCodes", "at least one status code"),
        (&[("spec.rules[1].retries.retryOn", "[5xx]")], "spec.rules[1].retries.retryOn", "must include retriable-status-codes"),
        (&[("spec.rules[1].retries.retriableStatusCodes[1]", "600")], "spec.rules[1].retries.retriableStatusCodes[1]", "between 100 and 599"),
        (&[("spec.rules[1].retries.backoff.baseInterval", "0")], "spec.rules[1].retries.backoff.baseInterval", "greater than 0"),
        (&[("spec.rules[1].retries.backoff.maxInterval", "10ms")], "spec.rules[1].retries.backoff.maxInterval", "at least baseInterval (25ms)"),
        (&[("spec.rules[1].retries.budget.ratio", "1.5")], "spec.rules[1].retries.budget.ratio", "between 0.0 and 1.0"),
        (&[("spec.rules[1].retries.budget.ratio", ".nan")], "spec.rules[1].retries.budget.ratio", "(got NaN)"),
        (&[("spec.rules[1].retries.budget.ratio", "-.inf")], "spec.rules[1].retries.budget.ratio", "between 0.0 and 1.0"),
        (&[("spec.rules[1].retries.budget.ttl", "0")], "spec.rules[1].retries.budget.ttl", "greater than 0"),
        (&[("spec.rules[1].retries.maxBufferBytes", "67108865")], "spec.rules[1].retries.maxBufferBytes", "at most 67108864 (64 MiB)"),
    ];
    run("Route", "reviews", cases);
    // perTryTimeout may be anything without a rule timeout; retries may be disabled.
    ok(
        "Route",
        "reviews",
        &[
            ("spec.rules[1].timeout", "~"),
            ("spec.rules[1].retries.perTryTimeout", "1h"),
        ],
    );
    ok(
        "Route",
        "reviews",
        &[("spec.rules[1].retries", "{attempts: 1}")],
    );
    ok(
        "Route",
        "reviews",
        &[("spec.rules[1].retries.maxBufferBytes", "67108864")],
    );
}

#[test]
fn route_fault_mirror_headers_rewrite() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.rules[1].fault", "{}")], "spec.rules[1].fault", "delay, abort or both"),
        (&[("spec.rules[1].fault.delay.percent", "100.5")], "spec.rules[1].fault.delay.percent", "between 0 and 100"),
        (&[("spec.rules[1].fault.delay.fixedDelay", "0")], "spec.rules[1].fault.delay.fixedDelay", "greater than 0"),
        (&[("spec.rules[1].fault.abort.percent", "-1")], "spec.rules[1].fault.abort.percent", "between 0 and 100 (got -1)"),
        (&[("spec.rules[1].fault.abort.grpcStatus", "14")], "spec.rules[1].fault.abort", "exactly one of httpStatus and grpcStatus"),
        (&[("spec.rules[1].fault.abort.httpStatus", "~")], "spec.rules[1].fault.abort", "exactly one of httpStatus and grpcStatus"),
        (&[("spec.rules[1].fault.abort.httpStatus", "199")], "spec.rules[1].fault.abort.httpStatus", "between 200 and 599"),
        (&[("spec.rules[1].fault.abort.httpStatus", "~"), ("spec.rules[1].fault.abort.grpcStatus", "0")], "spec.rules[1].fault.abort.grpcStatus", "between 1 and 16"),
        (&[("spec.rules[1].fault.abort.httpStatus", "~"), ("spec.rules[1].fault.abort.grpcStatus", "17")], "spec.rules[1].fault.abort.grpcStatus", "between 1 and 16"),
        (&[("spec.rules[1].fault.headers[0].name", "\"\"")], "spec.rules[1].fault.headers[0].name", "must not be empty"),
        (&[("spec.rules[1].mirror.percent", "101")], "spec.rules[1].mirror.percent", "between 0 and 100"),
        (&[("spec.rules[1].mirror.service", "\"\"")], "spec.rules[1].mirror.service", "must name a service"),
        (&[("spec.rules[1].mirror.subset", "\"\"")], "spec.rules[1].mirror.subset", "must not be empty"),
        (&[("spec.rules[1].requestHeaders.set", "{\"bad name\": x}")], "spec.rules[1].requestHeaders.set", "\"bad name\" is not a valid HTTP header name"),
        (&[("spec.rules[1].requestHeaders.add", "{x-a: \"1\\n2\"}")], "spec.rules[1].requestHeaders.add.x-a", "CR, LF"),
        (&[("spec.rules[1].requestHeaders.remove[0]", "\":authority\"")], "spec.rules[1].requestHeaders.remove[0]", "pseudo-headers"),
        (&[("spec.rules[1].requestHeaders.remove[0]", "X-Route")], "spec.rules[1].requestHeaders.remove[0]", "modified more than once (also at spec.rules[1].requestHeaders.set.x-route)"),
        (&[("spec.rules[1].requestHeaders.set", "{Host: a}")], "spec.rules[1].requestHeaders.set.Host", "use rewrite.host"),
        (&[("spec.rules[1].responseHeaders.set", "{x-a: \"\\r\"}")], "spec.rules[1].responseHeaders.set.x-a", "CR, LF"),
        (&[("spec.rules[1].rewrite.path", "v1")], "spec.rules[1].rewrite.path", "must start with '/'"),
        (&[("spec.rules[1].rewrite.host", "\"\"")], "spec.rules[1].rewrite.host", "must not be empty"),
        (&[("spec.rules[1].rewrite.host", "\"a b\"")], "spec.rules[1].rewrite.host", "not a host"),
    ];
    run("Route", "reviews", cases);
    // Responses may set Host-like headers; gRPC aborts are valid alone.
    ok(
        "Route",
        "reviews",
        &[("spec.rules[1].responseHeaders.set", "{host: a}")],
    );
    ok(
        "Route",
        "reviews",
        &[
            ("spec.rules[1].fault.abort.httpStatus", "~"),
            ("spec.rules[1].fault.abort.grpcStatus", "14"),
        ],
    );
    ok("Route", "reviews", &[("spec.rules[1].fault.delay", "~")]);
}

#[test]
fn destination_policy() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.service", "\"\"")], "spec.service", "must name a service"),
        (&[("spec.subsets[1].name", "v1")], "spec.subsets[1].name", "subset \"v1\" is declared twice"),
        (&[("spec.subsets[1].name", "\"\"")], "spec.subsets[1].name", "must not be empty"),
        (&[("spec.subsets[1].name", "V2")], "spec.subsets[1].name", "lowercase"),
        (&[("spec.subsets[0].labels", "{}")], "spec.subsets[0].labels", "at least one label"),
        (&[("spec.subsets[1].loadBalancer.hashOn", "~")], "spec.subsets[1].loadBalancer.hashOn", "required with algorithm RingHash"),
        (&[("spec.subsets[1].loadBalancer.hashOn.sourceIp", "true")], "spec.subsets[1].loadBalancer.hashOn", "exactly one of header, cookie and sourceIp (2 are set)"),
        (&[("spec.subsets[1].loadBalancer.hashOn", "{}")], "spec.subsets[1].loadBalancer.hashOn", "(0 are set)"),
        (&[("spec.subsets[1].loadBalancer.hashOn.header", "\"x y\"")], "spec.subsets[1].loadBalancer.hashOn.header", "header name"),
        (&[("spec.subsets[1].loadBalancer.hashOn", "{cookie: \"\"}")], "spec.subsets[1].loadBalancer.hashOn.cookie", "cookie name"),
        (&[("spec.loadBalancer.hashOn", "{sourceIp: true}")], "spec.loadBalancer.hashOn", "only used by RingHash and Maglev"),
        (&[("spec.connectionPool.maxConnections", "0")], "spec.connectionPool.maxConnections", "at least 1"),
        (&[("spec.connectionPool.maxPendingRequests", "0")], "spec.connectionPool.maxPendingRequests", "at least 1"),
        (&[("spec.connectionPool.maxRequests", "0")], "spec.connectionPool.maxRequests", "at least 1"),
        (&[("spec.connectionPool.maxRetries", "0")], "spec.connectionPool.maxRetries", "at least 1"),
        (&[("spec.connectionPool.connectTimeout", "0")], "spec.connectionPool.connectTimeout", "greater than 0"),
        (&[("spec.outlierDetection.consecutive5xxErrors", "0")], "spec.outlierDetection.consecutive5xxErrors", "at least 1"),
        (&[("spec.outlierDetection.consecutiveGatewayErrors", "0")], "spec.outlierDetection.consecutiveGatewayErrors", "at least 1"),
        (&[("spec.outlierDetection.consecutiveConnectErrors", "0")], "spec.outlierDetection.consecutiveConnectErrors", "at least 1"),
        (&[("spec.outlierDetection.interval", "0")], "spec.outlierDetection.interval", "greater than 0"),
        (&[("spec.outlierDetection.baseEjectionTime", "0s")], "spec.outlierDetection.baseEjectionTime", "greater than 0"),
        (&[("spec.outlierDetection.maxEjectionTime", "10s")], "spec.outlierDetection.maxEjectionTime", "at least baseEjectionTime (30s)"),
        (&[("spec.outlierDetection.maxEjectionPercent", "101")], "spec.outlierDetection.maxEjectionPercent", "between 0 and 100"),
        (&[("spec.outlierDetection.minHealthPercent", "200")], "spec.outlierDetection.minHealthPercent", "between 0 and 100"),
        (&[("spec.healthCheck.tcp", "{}")], "spec.healthCheck", "exactly one of http, tcp and grpc (2 are set)"),
        (&[("spec.healthCheck.http", "~")], "spec.healthCheck", "(0 are set)"),
        (&[("spec.healthCheck.interval", "0")], "spec.healthCheck.interval", "greater than 0"),
        (&[("spec.healthCheck.timeout", "0")], "spec.healthCheck.timeout", "greater than 0"),
        (&[("spec.healthCheck.timeout", "6s")], "spec.healthCheck.timeout", "6s must not exceed interval (5s)"),
        (&[("spec.healthCheck.healthyThreshold", "0")], "spec.healthCheck.healthyThreshold", "at least 1"),
        (&[("spec.healthCheck.unhealthyThreshold", "0")], "spec.healthCheck.unhealthyThreshold", "at least 1"),
        (&[("spec.healthCheck.http.path", "healthz")], "spec.healthCheck.http.path", "must start with '/'"),
        (&[("spec.healthCheck.http.expectedStatuses[1]", "99")], "spec.healthCheck.http.expectedStatuses[1]", "between 100 and 599"),
        (&[("spec.locality.minHealthyPercent", "101")], "spec.locality.minHealthyPercent", "between 0 and 100"),
        (&[("spec.locality.failover[1]", "us-east-1b")], "spec.locality.failover[1]", "listed twice"),
        (&[("spec.locality.failover[0]", "\"\"")], "spec.locality.failover[0]", "not a zone name"),
    ];
    run("DestinationPolicy", "reviews", cases);
    ok(
        "DestinationPolicy",
        "reviews",
        &[
            ("spec.healthCheck.http", "~"),
            ("spec.healthCheck.grpc", "{service: reviews}"),
        ],
    );
    ok(
        "DestinationPolicy",
        "ratings",
        &[(
            "spec.loadBalancer",
            "{algorithm: RingHash, hashOn: {cookie: session}}",
        )],
    );
    run(
        "DestinationPolicy",
        "ratings",
        &[(
            &[("spec.loadBalancer.hashOn", "~")],
            "spec.loadBalancer.hashOn",
            "required with algorithm Maglev",
        )],
    );
}

#[test]
fn authorization_policy() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.service", "\"\"")], "spec.service", "must name a service"),
        (&[("spec.rules[1].name", "block-admin")], "spec.rules[1].name", "used twice"),
        (&[("spec.rules[1].from.principals[0]", "cluster.local/ns/shop/sa/frontend")], "spec.rules[1].from.principals[0]", "not a SPIFFE ID"),
        (&[("spec.rules[1].from.principals[0]", "\"\"")], "spec.rules[1].from.principals[0]", "must not be empty"),
        (&[("spec.rules[1].from.principals[0]", "\"spiffe://\"")], "spec.rules[1].from.principals[0]", "not a SPIFFE ID"),
        (&[("spec.rules[1].from.principals[0]", "\"spiffe://*/ns/shop\"")], "spec.rules[1].from.principals[0]", "only allowed as the last character"),
        (&[("spec.rules[1].from.namespaces[0]", "Shop")], "spec.rules[1].from.namespaces[0]", "prefix ending in '*'"),
        (&[("spec.rules[1].from.requestPrincipals[0]", "\"\"")], "spec.rules[1].from.requestPrincipals[0]", "not a request principal"),
        (&[("spec.rules[1].to.methods[0]", "get")], "spec.rules[1].to.methods[0]", "uppercase"),
        (&[("spec.rules[1].to.paths[0]", "api/*")], "spec.rules[1].to.paths[0]", "must start with '/'"),
        (&[("spec.rules[1].to.paths[0]", "/api/*/x")], "spec.rules[1].to.paths[0]", "only allowed as the last character"),
        (&[("spec.rules[1].to.ports[0]", "0")], "spec.rules[1].to.ports[0]", "between 1 and 65535"),
        (&[("spec.rules[1].when[0].claim", "\"\"")], "spec.rules[1].when[0].claim", "must name a JWT claim"),
        (&[("spec.rules[1].when[0].values", "[]")], "spec.rules[1].when[0].values", "at least one"),
        (&[("spec.rules[1].when[0].values[1]", "\"\"")], "spec.rules[1].when[0].values[1]", "must not be empty"),
        (&[("spec.rules[1].action", "Audit")], "spec.rules[1].action", "unknown variant"),
    ];
    run("AuthorizationPolicy", "reviews", cases);
    ok(
        "AuthorizationPolicy",
        "reviews",
        &[
            (
                "spec.rules[1].from.principals",
                "[\"*\", \"spiffe://cluster.local/*\"]",
            ),
            ("spec.rules[1].to.paths", "[\"*\"]"),
        ],
    );
}

#[test]
fn request_authentication() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.service", "\"\"")], "spec.service", "must name a service"),
        (&[("spec.jwtRules", "[]")], "spec.jwtRules", "at least one JWT rule"),
        (&[("spec.jwtRules[0].issuer", "\"\"")], "spec.jwtRules[0].issuer", "must not be empty"),
        (&[("spec.jwtRules[2].issuer", "test-issuer")], "spec.jwtRules[2].issuer", "two rules"),
        (&[("spec.jwtRules[0].audiences[0]", "\"\"")], "spec.jwtRules[0].audiences[0]", "must not be empty"),
        (&[("spec.jwtRules[0].jwks", "{}")], "spec.jwtRules[0].jwks", "exactly one of inline, file and uri (0 are set)"),
        (&[("spec.jwtRules[0].jwks.file", "/x")], "spec.jwtRules[0].jwks", "(2 are set)"),
        (&[("spec.jwtRules[1].jwks.inline", "\"{keys: []}\"")], "spec.jwtRules[1].jwks.inline", "is not valid JSON"),
        (&[("spec.jwtRules[1].jwks.inline", "'{\"key\": []}'")], "spec.jwtRules[1].jwks.inline", "a \"keys\" array"),
        (&[("spec.jwtRules[1].jwks.inline", "'[1]'")], "spec.jwtRules[1].jwks.inline", "a \"keys\" array"),
        (&[("spec.jwtRules[1].jwks.inline", "'{\"keys\": {}}'")], "spec.jwtRules[1].jwks.inline", "a \"keys\" array"),
        (&[("spec.jwtRules[2].jwks.file", "\"\"")], "spec.jwtRules[2].jwks.file", "must name a file"),
        (&[("spec.jwtRules[0].jwks.uri", "ftp://auth.example.com/jwks")], "spec.jwtRules[0].jwks.uri", "http:// or https://"),
        (&[("spec.jwtRules[0].jwks.uri", "\"https://\"")], "spec.jwtRules[0].jwks.uri", "http:// or https://"),
        (&[("spec.jwtRules[0].fromHeaders[0].name", "\"x y\"")], "spec.jwtRules[0].fromHeaders[0].name", "header name"),
        (&[("spec.jwtRules[0].fromHeaders[0].prefix", "\"a\\nb\"")], "spec.jwtRules[0].fromHeaders[0].prefix", "CR, LF"),
        (&[("spec.jwtRules[0].fromParams[0]", "\"\"")], "spec.jwtRules[0].fromParams[0]", "must name a query parameter"),
    ];
    run("RequestAuthentication", "reviews", cases);
}

#[test]
fn mesh_config() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.trustDomain", "\"\"")], "spec.trustDomain", "must not be empty"),
        (&[("spec.trustDomain", "spiffe://cluster.local")], "spec.trustDomain", "not a valid trust domain"),
        (&[("spec.trustDomain", "\"cluster local\"")], "spec.trustDomain", "no scheme, '/', ':' or spaces"),
        (&[("spec.certificateLifetime", "59s")], "spec.certificateLifetime", "between 1m and 2160h (90 days) (got 59s)"),
        (&[("spec.certificateLifetime", "2161h")], "spec.certificateLifetime", "between 1m and 2160h"),
        (&[("spec.telemetry.tracingSamplePercent", "100.01")], "spec.telemetry.tracingSamplePercent", "between 0 and 100"),
        (&[("spec.telemetry.tracingSamplePercent", ".inf")], "spec.telemetry.tracingSamplePercent", "between 0 and 100"),
        (&[("spec.mtls.mode", "STRICT")], "spec.mtls.mode", "unknown variant"),
        (&[("spec.serviceAddressRange", "240.240.0.0")], "spec.serviceAddressRange", "not IPv4 CIDR notation"),
        (&[("spec.serviceAddressRange", "240.240.0.1/16")], "spec.serviceAddressRange", "host bits set; the network is 240.240.0.0/16"),
        (&[("spec.serviceAddressRange", "240.240.0.0/31")], "spec.serviceAddressRange", "between /8 and /30 (got /31)"),
        (&[("spec.serviceAddressRange", "fd00::/64")], "spec.serviceAddressRange", "not IPv4 CIDR"),
        (&[("spec.dnsDomain", "\"\"")], "spec.dnsDomain", "1 to 253 characters"),
        (&[("spec.dnsDomain", "Cluster.local")], "spec.dnsDomain", "label \"Cluster\" is not a DNS label"),
        (&[("spec.dnsDomain", "cluster..local")], "spec.dnsDomain", "label \"\" is not"),
        (&[("spec.telemetry.accessLog", "{enabled: true, output: logs/a.log}")], "spec.telemetry.accessLog.output", "\"stdout\" or an absolute file path (got \"logs/a.log\")"),
        (&[("spec.telemetry.accessLog", "{enabled: true, samplePercent: 101}")], "spec.telemetry.accessLog.samplePercent", "between 0 and 100"),
        (&[("spec.telemetry.accessLog", "{enabled: true, fields: [time, status, time]}")], "spec.telemetry.accessLog.fields[2]", "time is listed twice"),
        (&[("spec.telemetry.accessLog", "{enabled: true, fields: [latency]}")], "spec.telemetry.accessLog.fields[0]", "unknown variant `latency`"),
        (&[("spec.telemetry.accessLog", "sometimes")], "spec.telemetry.accessLog", "true, false, or {enabled"),
        (&[("spec.telemetry.otlpEndpoint", "collector:4317")], "spec.telemetry.otlpEndpoint", "http://HOST:PORT (TLS to the collector is not supported) (got \"collector:4317\")"),
        (&[("spec.telemetry.otlpEndpoint", "https://collector:4317")], "spec.telemetry.otlpEndpoint", "TLS to the collector is not supported"),
        (&[("spec.telemetry.otlpEndpoint", "http://collector")], "spec.telemetry.otlpEndpoint", "http://HOST:PORT"),
        (&[("spec.telemetry.otlpEndpoint", "http://:4317")], "spec.telemetry.otlpEndpoint", "http://HOST:PORT"),
    ];
    run("MeshConfig", "mesh", cases);
    ok(
        "MeshConfig",
        "mesh",
        &[(
            "spec.telemetry.accessLog",
            "{enabled: true, samplePercent: 0.5, fields: [traceId, status], output: /var/log/trellis.log}",
        )],
    );
    ok(
        "MeshConfig",
        "mesh",
        &[
            ("spec.serviceAddressRange", "10.96.0.0/12"),
            ("spec.dnsDomain", "mesh.example"),
        ],
    );
    ok(
        "MeshConfig",
        "mesh",
        &[
            ("spec.certificateLifetime", "1m"),
            ("spec.telemetry.tracingSamplePercent", "100"),
            (
                "spec.telemetry.otlpEndpoint",
                "http://otel-collector.observability:4317",
            ),
        ],
    );
    ok(
        "MeshConfig",
        "mesh",
        &[("spec.certificateLifetime", "2160h")],
    );
    // A MeshConfig may leave out its spec entirely.
    let set = valid(&with(&doc("MeshConfig", "mesh"), "spec", "~"));
    assert_eq!(set.mesh_config().trust_domain, "cluster.local");
    assert_eq!(set.mesh_config().service_address_range, "240.240.0.0/16");
    assert_eq!(set.mesh_config().dns_domain, "cluster.local");
}

#[test]
fn service_address() {
    let text = "apiVersion: trellis.dev/v1\nkind: ServiceAddress\nmetadata: {name: ratings, namespace: shop}\nspec: {address: 240.240.0.1}\n";
    let set = valid(text);
    let a = set.service_addresses().next().unwrap();
    assert_eq!(a.spec.ip(), Some(std::net::Ipv4Addr::new(240, 240, 0, 1)));
    assert_eq!(a.metadata.namespace, "shop");
    expect(
        &text.replace("240.240.0.1", "240.240.0.300"),
        "spec.address",
        "\"240.240.0.300\" is not an IPv4 address",
    );
    expect(
        &text.replace("240.240.0.1", "\"::1\""),
        "spec.address",
        "is not an IPv4 address",
    );
}

#[test]
fn deployment() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (&[("spec.service", "\"\"")], "spec.service", "must not be empty"),
        (&[("spec.service", "reviews.shop")], "spec.service", "contains '.'"),
        (&[("metadata.name", &"d".repeat(61))], "metadata.name", "at most 60 so that its instances"),
        (&[("spec.replicas", "0")], "spec.replicas", "between 1 and 64 (got 0)"),
        (&[("spec.replicas", "65")], "spec.replicas", "between 1 and 64 (got 65)"),
        (&[("spec.demoApp.errorRate", "1.01")], "spec.demoApp.errorRate", "between 0.0 and 1.0"),
        (&[("spec.demoApp.errorRate", "-0.1")], "spec.demoApp.errorRate", "between 0.0 and 1.0"),
        (&[("spec.demoApp.version", "\"\"")], "spec.demoApp.version", "must not be empty"),
        (&[("spec.labels", "{\"\": x}")], "spec.labels", "keys must not be empty"),
        (&[("spec.zone", "\"us east\"")], "spec.zone", "not a zone name"),
    ];
    run("Deployment", "reviews-v2", cases);
    ok(
        "Deployment",
        "reviews-v2",
        &[("spec.replicas", "64"), ("spec.demoApp.errorRate", "1")],
    );
    ok(
        "Deployment",
        "reviews-v2",
        &[("metadata.name", &"d".repeat(60))],
    );
}

#[test]
fn set_one_mesh_config() {
    let mc = doc("MeshConfig", "mesh");
    let second = with(&mc, "metadata.name", "mesh-two");
    let text = format!("{mc}---\n{second}");
    let e = expect(&text, "", "only one MeshConfig is allowed");
    assert_eq!(e.document, 2);
    assert_eq!(e.name.as_deref(), Some("mesh-two"));
    assert!(e.message.contains("\"mesh\""), "{}", e.message);
}

#[test]
fn set_one_destination_policy_per_service() {
    let dp = doc("DestinationPolicy", "ratings");
    let second = with(&dp, "metadata.name", "ratings-2");
    let e = expect(
        &format!("{dp}---\n{second}"),
        "spec.service",
        "already applies to service \"ratings\"",
    );
    assert_eq!((e.document, e.name.as_deref()), (2, Some("ratings-2")));
    // Same service in another namespace is a different service.
    valid(&format!(
        "{dp}---\n{}",
        with(&second, "metadata.namespace", "other")
    ));
}

#[test]
fn set_route_subsets_must_be_declared() {
    let route = doc("Route", "reviews");
    let dp = doc("DestinationPolicy", "reviews");

    // Declared in a policy for the service: fine.
    valid(&format!("{route}---\n{dp}"));

    // A subset the policy does not declare.
    let bad = with(&route, "spec.rules[1].backends[1].subset", "v3");
    let e = expect(
        &format!("{bad}---\n{dp}"),
        "spec.rules[1].backends[1].subset",
        "subset \"v3\" is not declared in DestinationPolicy \"reviews\" for service \"reviews\"; declared subsets: v1, v2",
    );
    assert_eq!(
        (e.document, e.kind.as_deref(), e.name.as_deref()),
        (1, Some("Route"), Some("reviews"))
    );

    // Mirror subsets too.
    let bad = with(&route, "spec.rules[1].mirror.subset", "v9");
    expect(
        &format!("{bad}---\n{dp}"),
        "spec.rules[1].mirror.subset",
        "subset \"v9\" is not declared",
    );

    // No policy for the service in this source: accepted, since the policy may come from
    // another file or be applied later (a control plane receives resources one at a time).
    trellis_api::parse_documents("route-alone.yaml", &route).expect("a lone route is valid");
}

#[test]
fn validate_api_directly() {
    use trellis_api::validate;
    let set = valid(FULL);
    for r in &set.resources {
        assert!(validate::resource(r).is_empty(), "{}", r.key());
    }
    assert!(validate::set(&set.resources).is_empty());
    let mut twice = set.resources.clone();
    twice.extend(set.resources.iter().cloned());
    let problems = validate::set(&twice);
    // Each of the 17 resources is a duplicate; the MeshConfig and both policies are also repeats.
    assert_eq!(
        problems
            .iter()
            .filter(|(_, p, _)| p == "metadata.name")
            .count(),
        17
    );
    assert_eq!(problems.iter().filter(|(_, p, _)| p.is_empty()).count(), 1);
    assert_eq!(
        problems
            .iter()
            .filter(|(_, p, _)| p == "spec.service")
            .count(),
        2
    );
    assert!(problems.iter().all(|(i, _, _)| *i >= 11));
}
