//! Compiles a Route's rules into [`Rule`]s: one small function per part of a rule (matches,
//! backends, fault, rewrite, headers, retries, mirror), each reporting a bad value with the field
//! path it came from.
use super::{
    BackendRef, BuildError, Fault, FaultAbort, HeaderModifier, MirrorTarget, Rewrite, RouteMatcher,
    Rule, ValueMatcher, WeightedBackend,
};
use crate::retry::{RetryBudget, RetryPolicy};
use std::sync::Arc;
use trellis_api::route::{self, RouteRule};
use trellis_api::service::Service;
use trellis_api::Route;

/// The rule of a service no Route names: everything to the whole service, no retries beyond
/// the implicit ones, no timeout.
pub(super) fn default_for(svc: &Service) -> Rule {
    Rule {
        name: "default".into(),
        matches: Vec::new(),
        ports: Vec::new(),
        backends: vec![whole(&svc.metadata.namespace, &svc.metadata.name)],
        total_weight: 1,
        timeout: None,
        retry: None,
        budget: Arc::new(RetryBudget::unlimited()),
        fault: None,
        mirror: None,
        request_headers: None,
        response_headers: None,
        rewrite: None,
        rate_limit: None,
        redirect: None,
        direct_response: None,
    }
}

/// Rule number `index` of `route`.
pub(super) fn compile(route: &Route, index: usize, rule: &RouteRule) -> Result<Rule, BuildError> {
    let at = At { route, index };
    let backends = backends(route, rule);
    // Fields that can fail first, in the order their errors have always been reported.
    Ok(Rule {
        matches: matches(&at, rule)?,
        ports: rule.ports.clone(),
        fault: rule.fault.as_ref().map(|f| fault(&at, f)).transpose()?,
        rewrite: rule.rewrite.as_ref().map(|r| rewrite(&at, r)).transpose()?,
        request_headers: modifier(&at, &rule.request_headers, "requestHeaders")?,
        response_headers: modifier(&at, &rule.response_headers, "responseHeaders")?,
        name: name(route, rule).into(),
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        timeout: rule.timeout.map(|t| t.as_std()),
        retry: rule
            .retries
            .as_ref()
            .map(|r| Arc::new(RetryPolicy::from_config(r))),
        budget: Arc::new(budget(rule)),
        mirror: rule.mirror.as_ref().map(|m| MirrorTarget {
            backend: backend_ref(route, &m.service, m.subset.as_ref()),
            percent: m.percent,
        }),
        rate_limit: rule
            .rate_limit
            .as_ref()
            .map(|l| Arc::new(crate::ratelimit::RouteLimit::new(l))),
        redirect: rule.redirect.clone(),
        direct_response: rule
            .direct_response
            .as_ref()
            .map(|d| direct_response(&at, d))
            .transpose()?,
    })
}

fn direct_response(
    at: &At<'_>,
    d: &route::DirectResponse,
) -> Result<super::DirectResponse, BuildError> {
    let status = http::StatusCode::from_u16(d.status).map_err(|_| {
        at.error(
            "directResponse.status",
            format!("{} is not an HTTP status", d.status),
        )
    })?;
    Ok(super::DirectResponse {
        status,
        body: bytes::Bytes::from(d.body.clone().unwrap_or_default()),
        weight: d.weight.map(u64::from),
    })
}

/// Where in the config a rule came from, for errors.
struct At<'a> {
    route: &'a Route,
    index: usize,
}

impl At<'_> {
    fn error(&self, field: &str, message: String) -> BuildError {
        BuildError {
            resource: format!("Route {}", self.route.metadata.name),
            field: format!("spec.rules[{}].{field}", self.index),
            message,
        }
    }
}

/// The label for metrics and logs: the Route's name, plus `/rule` when the rule is named.
fn name(route: &Route, rule: &RouteRule) -> String {
    match &rule.name {
        Some(n) => format!("{}/{n}", route.metadata.name),
        None => route.metadata.name.clone(),
    }
}

fn matches(at: &At<'_>, rule: &RouteRule) -> Result<Vec<RouteMatcher>, BuildError> {
    rule.matches
        .iter()
        .enumerate()
        .map(|(i, m)| RouteMatcher::compile(m).map_err(|e| at.error(&format!("matches[{i}]"), e)))
        .collect()
}

/// The rule's backends, or the Route's own service when it names none.
fn backends(route: &Route, rule: &RouteRule) -> Vec<WeightedBackend> {
    if rule.backends.is_empty() {
        return vec![whole(&route.metadata.namespace, &route.spec.service)];
    }
    rule.backends
        .iter()
        .map(|b| WeightedBackend {
            backend: backend_ref(route, &b.service, b.subset.as_ref()),
            weight: b.weight,
            subset_label: Arc::from(b.subset.as_deref().unwrap_or("")),
        })
        .collect()
}

/// All of a service's traffic to all of it.
fn whole(namespace: &str, service: &str) -> WeightedBackend {
    WeightedBackend {
        backend: BackendRef {
            namespace: namespace.to_string(),
            service: service.to_string(),
            subset: None,
        },
        weight: 1,
        subset_label: Arc::from(""),
    }
}

/// A service in the Route's namespace.
fn backend_ref(route: &Route, service: &str, subset: Option<&String>) -> BackendRef {
    BackendRef {
        namespace: route.metadata.namespace.clone(),
        service: service.to_string(),
        subset: subset.cloned(),
    }
}

fn budget(rule: &RouteRule) -> RetryBudget {
    rule.retries
        .as_ref()
        .and_then(|r| r.budget.as_ref())
        .map(RetryBudget::from_config)
        .unwrap_or_else(RetryBudget::unlimited)
}

fn fault(at: &At<'_>, f: &route::FaultPolicy) -> Result<Fault, BuildError> {
    Ok(Fault {
        delay: f
            .delay
            .as_ref()
            .map(|d| (d.fixed_delay.as_std(), d.percent)),
        abort: f
            .abort
            .as_ref()
            .map(|a| match (a.grpc_status, a.http_status) {
                (Some(code), _) => FaultAbort::Grpc {
                    code,
                    percent: a.percent,
                },
                (None, status) => FaultAbort::Http {
                    status: status
                        .and_then(|s| http::StatusCode::from_u16(s).ok())
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                    percent: a.percent,
                },
            }),
        headers: f
            .headers
            .iter()
            .map(|h| ValueMatcher::header(h).map_err(|e| at.error("fault.headers", e.to_string())))
            .collect::<Result<_, _>>()?,
    })
}

fn rewrite(at: &At<'_>, r: &route::Rewrite) -> Result<Rewrite, BuildError> {
    let host = r
        .host
        .as_deref()
        .map(|h| {
            http::HeaderValue::from_str(h)
                .map_err(|_| at.error("rewrite.host", format!("invalid host {h:?}")))
        })
        .transpose()?;
    Ok(Rewrite {
        path: r.path.clone(),
        full_path: r.full_path.clone(),
        host,
    })
}

fn modifier(
    at: &At<'_>,
    m: &Option<route::HeaderModifier>,
    field: &str,
) -> Result<Option<HeaderModifier>, BuildError> {
    m.as_ref()
        .map(|m| HeaderModifier::compile(m).map_err(|e| at.error(field, e)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rules: &str) -> Route {
        let text = format!(
            "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: web, namespace: shop}}\nspec:\n  service: web\n  rules:\n{rules}"
        );
        let set = trellis_api::parse_documents("test", &text).expect("parses");
        let route = set.routes().next().expect("a route").clone();
        route
    }

    #[test]
    fn a_rule_without_backends_goes_to_the_routes_service() {
        let r = route("    - name: all\n      timeout: 2s\n");
        let rule = compile(&r, 0, &r.spec.rules[0]).expect("compiles");
        assert_eq!(&*rule.name, "web/all");
        assert_eq!(rule.total_weight, 1);
        assert_eq!(
            rule.backends[0].backend,
            BackendRef {
                namespace: "shop".into(),
                service: "web".into(),
                subset: None
            }
        );
        assert_eq!(rule.timeout, Some(std::time::Duration::from_secs(2)));
        assert!(rule.retry.is_none() && rule.budget.is_unlimited());
    }

    #[test]
    fn weights_add_up_and_backends_stay_in_the_routes_namespace() {
        let r = route(
            "    - backends: [{service: web, subset: v1, weight: 90}, {service: web-v2, weight: 10}]\n      mirror: {service: shadow, percent: 5}\n",
        );
        let rule = compile(&r, 0, &r.spec.rules[0]).expect("compiles");
        assert_eq!(&*rule.name, "web");
        assert_eq!(rule.total_weight, 100);
        assert_eq!(rule.backends[0].backend.subset.as_deref(), Some("v1"));
        assert_eq!(rule.backends[1].backend.service, "web-v2");
        let mirror = rule.mirror.expect("mirror");
        assert_eq!(mirror.backend.namespace, "shop");
        assert_eq!(mirror.backend.service, "shadow");
    }

    #[test]
    fn a_bad_value_names_its_field() {
        // Validation refuses this before a snapshot is built; the compiler still must not panic.
        let r = route("    - rewrite: {host: fine}\n");
        let mut rule = r.spec.rules[0].clone();
        if let Some(rw) = rule.rewrite.as_mut() {
            rw.host = Some("bad\nhost".into());
        }
        let e = compile(&r, 0, &rule).expect_err("refused");
        assert_eq!(e.resource, "Route web");
        assert_eq!(e.field, "spec.rules[0].rewrite.host");
    }
}
