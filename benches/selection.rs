//! What one pick of each method costs, and what the per-process rebuilds cost (`byweight`'s
//! schedule, `byhash`'s table), for 2 to 1024 members.
//!
//! `byweight/pick` runs the per-request path the finder runs: `LocalBalancer::choose` against a
//! balancer slot in a real shared segment (the ticket is an atomic in an `mmap`ed page, as in
//! httpd), with the schedule already built, so each iteration is one steady-state pick.
//! `byweight/rebuild` is `Schedule::build` alone: what a process pays once when a member leaves
//! or comes back or a loadfactor changes. `byinflight/pick` is `LocalBalancer::choose` for
//! `byinflight` on the same kind of slot (the scan's starting point is a shared atomic there),
//! over candidates with varied in-flight counts and weights: one scan of every candidate.
//! `bylatency/pick` is the same call for `bylatency`, with a latency per candidate: two
//! weighted draws and one comparison. `byhash/place` hashes a key and places it with the cached
//! table (every member admits it). `byhash/build` is `Table::build` alone: what a process pays
//! once when the members or their loadfactors change.
//!
//! Run with `cargo bench --bench selection`; docs/benchmark.md explains the output.

// The crate is a cdylib whose httpd glue needs httpd's symbols, so a bench binary cannot link
// it. The plain-Rust modules are compiled into this bench instead; they refer to each other as
// `crate::methods` and `crate::shm`, which these two declarations at the crate root provide.
// Much of what they offer (status counters, carry-over, names) is unused here. And
// `cargo clippy --all-targets` checks benches with `--cfg test` but without libtest, so their
// unit-test modules compile with the `#[test]` functions stripped, leaving imports unused.
#[allow(dead_code)]
#[cfg_attr(test, allow(unused_imports))]
#[path = "../src/methods/mod.rs"]
mod methods;
#[allow(dead_code)]
#[cfg_attr(test, allow(unused_imports))]
#[path = "../src/shm/mod.rs"]
mod shm;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use methods::byhash::{self, Admission, Table};
use methods::byweight::Schedule;
use methods::{Candidate, LocalBalancer, Method};
use shm::{Capacity, Segment};
use std::hint::black_box;

const SIZES: [usize; 4] = [2, 16, 256, 1024];

/// Loadfactors 1, 2, 3, 5 and 10 (lbfactor 100..=1000) repeating: a few distinct weights, as a
/// real pool of mixed machine sizes has.
fn candidates(members: usize) -> Vec<Candidate> {
    const LBFACTORS: [u32; 5] = [100, 200, 300, 500, 1000];
    (0..members)
        .map(|i| Candidate {
            worker_index: i as u32,
            weight: LBFACTORS[i % LBFACTORS.len()],
            inflight: 0,
            full: false,
        })
        .collect()
}

/// One pick of `method` per iteration over `candidates(members)`, with `latencies(members)`,
/// against a balancer slot in a real shared segment.
fn bench_pick(
    c: &mut Criterion,
    method: Method,
    candidates: fn(usize) -> Vec<Candidate>,
    latencies: fn(usize) -> Vec<f64>,
) {
    let mut group = c.benchmark_group(format!("{}/pick", method.name()));
    group.throughput(Throughput::Elements(1));
    for members in SIZES {
        let capacity = Capacity { balancers: 1, members: members as u32, processes: 1 };
        let segment = Segment::create(capacity).expect("map a shared segment");
        let slot = segment
            .claim_balancer(shm::name_key(b"balancer://bench"), members as u32)
            .expect("a free balancer slot");
        let shared = segment.balancer(slot).expect("the slot just claimed");
        let candidates = candidates(members);
        let latencies = latencies(members);
        let local = LocalBalancer::default();
        // The first pick builds what the method caches (byweight's schedule); every measured
        // pick finds it built.
        local.choose(method, shared, &candidates, &latencies).expect("a choice");
        group.bench_with_input(BenchmarkId::from_parameter(members), &candidates, |b, candidates| {
            b.iter(|| local.choose(method, shared, black_box(candidates), black_box(&latencies)))
        });
        // SAFETY: nothing of this segment is used after this point.
        unsafe { segment.unmap() };
    }
    group.finish();
}

/// The same loadfactors as [`candidates`], with in-flight counts from 0 to 12 spread over the
/// members, as the finder reads them from the shared counters under load; no member is full.
fn busy_candidates(members: usize) -> Vec<Candidate> {
    candidates(members)
        .into_iter()
        .enumerate()
        .map(|(i, candidate)| Candidate { inflight: (i as u64 * 7) % 13, ..candidate })
        .collect()
}

/// No latencies: the methods other than bylatency read none.
fn no_latencies(_members: usize) -> Vec<f64> {
    Vec::new()
}

/// Latencies from 2 to 40 ms, in microseconds, spread over the members.
fn spread_latencies(members: usize) -> Vec<f64> {
    (0..members).map(|i| 2_000.0 + (i * 5 % 39) as f64 * 1_000.0).collect()
}

fn pick(c: &mut Criterion) {
    bench_pick(c, Method::ByWeight, candidates, no_latencies);
    bench_pick(c, Method::ByInflight, busy_candidates, no_latencies);
    bench_pick(c, Method::ByLatency, busy_candidates, spread_latencies);
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("byweight/rebuild");
    for members in SIZES {
        let weights: Vec<u32> = candidates(members).iter().map(|c| c.weight).collect();
        group.bench_with_input(BenchmarkId::from_parameter(members), &weights, |b, weights| {
            b.iter(|| Schedule::build(black_box(weights)))
        });
    }
    group.finish();
}

/// (name key, weight) of each member, as the finder passes them to `hash_table`.
fn hash_members(members: usize) -> Vec<(u64, u32)> {
    candidates(members)
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (shm::name_key(format!("http://10.0.{}.{}:8080", i / 256, i % 256).as_bytes()), c.weight)
        })
        .collect()
}

fn place_byhash(c: &mut Criterion) {
    let mut group = c.benchmark_group("byhash/place");
    group.throughput(Throughput::Elements(1));
    for members in SIZES {
        let local = LocalBalancer::default();
        let members = hash_members(members);
        local.hash_table(&members);
        let mut user = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(members.len()), &members, |b, members| {
            b.iter(|| {
                user += 1;
                let key = format!("user-{user}");
                let table = local.hash_table(black_box(members));
                byhash::place(
                    &table,
                    byhash::key_hash(key.as_bytes()),
                    |_| Admission::UpTo(u64::MAX),
                    |_, _| true,
                )
            })
        });
    }
    group.finish();
}

fn build_byhash(c: &mut Criterion) {
    let mut group = c.benchmark_group("byhash/build");
    group.sample_size(10);
    for members in SIZES {
        let members = hash_members(members);
        group.bench_with_input(BenchmarkId::from_parameter(members.len()), &members, |b, members| {
            b.iter(|| Table::build(black_box(members)))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, rebuild, place_byhash, build_byhash);
criterion_main!(benches);
