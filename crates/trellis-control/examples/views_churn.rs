//! What one endpoint change costs the control plane: a mesh of N services with 10 workloads
//! each and one subscribed view per service (a proxy of every service connected), then 100
//! single-workload changes. Prints the CPU time per change (p50/p99) of publishing the model
//! and bringing every view up to date with [`ViewEngine`], and — for comparison — of
//! recomputing views from scratch as the control plane did before (`views::compute` per view;
//! timed on a sample of views and scaled to all of them, since doing all would take minutes).
//!
//! ```sh
//! cargo run --release -p trellis-control --example views_churn -- --services 1000,10000
//! ```
use std::sync::Arc;
use std::time::Instant;
use trellis_api::Resource;
use trellis_control::model::Model;
use trellis_control::views::{compute, ViewEngine};
use trellis_control::{Stored, WatchEvent};
use trellis_xds::View;

const WORKLOADS: usize = 10;
const CHANGES: usize = 100;

/// CPU time of this thread, in nanoseconds.
fn cpu_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or_default()
}

fn parse(yaml: &str) -> Vec<Resource> {
    trellis_api::parse_documents("mesh.yaml", yaml)
        .expect("valid mesh")
        .resources
}

fn workload(service: usize, i: usize, generation: usize) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: svc-{service}-{i}, labels: {{app: svc-{service}}}}}\nspec: {{address: 10.{}.{}.{}, port: 8080}}\n---\n",
        (service / 250) % 250,
        service % 250,
        (i + generation * WORKLOADS) % 250 + 1
    )
}

fn mesh(services: usize) -> Model {
    let mut model = Model::default();
    let mut revision = 0;
    for s in 0..services {
        let mut yaml = format!(
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec: {{selector: {{app: svc-{s}}}, ports: [{{port: 80}}]}}\n---\n"
        );
        for i in 0..WORKLOADS {
            yaml.push_str(&workload(s, i, 0));
        }
        for r in parse(&yaml) {
            revision += 1;
            model.apply(WatchEvent::Put(Stored {
                resource: r,
                version: revision,
                lease: None,
            }));
        }
    }
    model
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.3} ms, p99 {:.3} ms",
        percentile(&v, 0.5),
        percentile(&v, 0.99)
    )
}

/// The k-th change: one workload of one service moves to another address.
fn change(services: usize, k: usize, revision: u64) -> WatchEvent {
    let service = (k * 7919) % services;
    let resource = parse(&workload(service, k % WORKLOADS, k + 1)).remove(0);
    WatchEvent::Put(Stored {
        resource,
        version: revision,
        lease: None,
    })
}

fn bench(services: usize, sample: usize) {
    println!("== {services} services x {WORKLOADS} workloads, {services} subscribed views");
    let t = Instant::now();
    let mut model = mesh(services);
    println!(
        "model built: {} resources in {:.1} s",
        model.items.len(),
        t.elapsed().as_secs_f64()
    );
    let t = cpu_ns();
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let receivers: Vec<_> = (0..services)
        .map(|s| engine.subscribe("default", &format!("svc-{s}")))
        .collect();
    println!(
        "engine: index and {services} subscriptions in {:.0} ms CPU ({} shared groups, {} resources per view)",
        (cpu_ns() - t) as f64 / 1e6,
        engine.groups(),
        receivers[0].borrow().types().map(|(_, t)| t.len()).sum::<usize>()
    );

    let mut revision = model.revision + 1;
    let mut after = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        let event = change(services, k, revision);
        revision += 1;
        let t = cpu_ns();
        model.apply(event);
        engine.update(Arc::new(model.clone()));
        after.push((cpu_ns() - t) as f64 / 1e6);
    }
    println!(
        "incremental (publish + update every view): {}",
        summary(after)
    );

    // Before: every view recomputed from the whole model, then encoded and hashed again.
    let keys: Vec<String> = (0..sample.min(services))
        .map(|s| format!("svc-{}", s * services / sample.min(services)))
        .collect();
    let mut previous: Vec<View> = keys.iter().map(|k| compute(&model, "default", k)).collect();
    let mut per_view = Vec::new();
    for k in 0..5 {
        model.apply(change(services, CHANGES + k, revision));
        revision += 1;
        for (key, prev) in keys.iter().zip(previous.iter_mut()) {
            let t = cpu_ns();
            let mut next = compute(&model, "default", key);
            next.share_unchanged(prev);
            let _ = next.same_as(prev);
            per_view.push((cpu_ns() - t) as f64 / 1e6);
            *prev = next;
        }
    }
    per_view.sort_by(f64::total_cmp);
    let p50 = percentile(&per_view, 0.5);
    println!(
        "full recompute (before): {p50:.1} ms per view (p50 of {} views x 5 changes) -> ~{:.1} s per change for {services} views",
        keys.len(),
        p50 * services as f64 / 1e3
    );
    drop(receivers);
}

fn main() {
    let mut sizes = vec![1000];
    let mut sample = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => {
                sizes = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .collect()
            }
            "--sample" => sample = args.next().and_then(|s| s.parse().ok()).unwrap_or(10),
            other => {
                eprintln!("unknown argument {other}; use --services N[,N] --sample K");
                std::process::exit(2);
            }
        }
    }
    for n in sizes {
        bench(n, sample.max(1));
    }
}
