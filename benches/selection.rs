//! What one pick of each method costs, and what the per-process rebuilds cost (`byweight`'s
//! cycle, `byhash`'s table), for 2 to 1024 members.
//!
//! `<method>/pick` runs [`Method::choose`] as the finder does, against a balancer slot in a
//! real shared segment (the ticket and the rotation are atomics in an `mmap`ed page, as in
//! httpd), with the per-process tables already built, over candidates with varied loadfactors
//! (and, for `byinflight` and `bylatency`, in-flight counts and latency estimates): one
//! steady-state pick. The reservation always succeeds and counts nothing, so the figure is the
//! method's own cost. `byhash/pick` hashes a fresh key each time. `byweight/pick-most-down`
//! offers only 2 of the members (the others down), so most tickets land on members that cannot
//! take the request: the pick's worst case. `byweight/rebuild` and `byhash/build` are the
//! table builds alone: what a process's builder thread pays once when a loadfactor changes or a
//! member is added. `byweight/pick-during-rebuild` is a pick while loadfactors change.
//!
//! Run with `cargo bench --bench selection`; docs/benchmark.md explains the output.

// The crate is a cdylib whose httpd glue needs httpd's symbols, so a bench binary cannot link
// it. The plain-Rust modules are compiled into this bench instead; they refer to each other as
// `crate::methods`, `crate::shm` and `crate::config`, which these declarations at the crate
// root provide. Much of what they offer is unused here. And `cargo clippy --all-targets`
// checks benches with `--cfg test` but without libtest, so their unit-test modules compile
// with the `#[test]` functions stripped, leaving imports unused.
#[allow(dead_code)]
#[cfg_attr(test, allow(unused_imports))]
#[path = "../src/config/mod.rs"]
mod config;
#[allow(dead_code)]
#[cfg_attr(test, allow(unused_imports))]
#[path = "../src/methods/mod.rs"]
mod methods;
#[allow(dead_code)]
#[cfg_attr(test, allow(unused_imports))]
#[path = "../src/shm/mod.rs"]
mod shm;

use config::BalancerSettings;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use methods::byhash::Table;
use methods::byweight::Schedule;
use methods::tables::Builder;
use methods::{
    Candidate, LocalState, METHODS, Member, Pick, Registered, Reserve, Shelves, TablesOf, Tier, bylatency,
};
use shm::{Capacity, Segment};
use std::hint::black_box;
use std::sync::Arc;

const SIZES: [usize; 5] = [2, 16, 256, 1000, 1024];

/// Loadfactors 1, 2, 3, 5 and 10 (lbfactor 100..=1000) repeating: a few distinct weights, as a
/// real pool of mixed machine sizes has. `distinct` gives every member its own loadfactor
/// instead (the worst case for `byweight`'s cycle).
fn candidates(members: usize, distinct: bool, segment: &Segment, slot: usize) -> Vec<Candidate> {
    const LBFACTORS: [u32; 5] = [100, 200, 300, 500, 1000];
    let shared = segment.balancer(slot).expect("the slot just claimed");
    (0..members)
        .map(|i| {
            let lbfactor = if distinct { 100 + i as u32 * 9 } else { LBFACTORS[i % LBFACTORS.len()] };
            Candidate {
                worker_index: i as u32,
                member: segment.member_index(shared, i).map(|m| m as u32),
                lbfactor,
                weight: lbfactor,
                inflight: (i as u32 * 7) % 13,
                limit: methods::NO_LIMIT,
                full: false,
                tier: Tier::default(),
            }
        })
        .collect()
}

/// A reservation that always succeeds and counts nothing: the methods' own cost alone.
struct Free;

impl Reserve for Free {
    fn reserve(&mut self, _: &Candidate, _: u64) -> bool {
        true
    }
}

/// A segment with one balancer of `members` member slots, latency estimates from 2 to 40 ms
/// and in-flight counts from 0 to 12 spread over them.
fn segment(members: usize) -> (Segment, usize) {
    let capacity = Capacity { balancers: 1, members: members as u32, processes: 1 };
    let segment = Segment::create(capacity).expect("map a shared segment");
    let slot =
        segment.claim_balancer(shm::name_key(b"balancer://bench"), members as u32).expect("a free slot");
    let counts = shm::Counts::new(segment, None);
    for i in 0..members {
        let member = segment.member(i).expect("in range");
        // Two samples: a member ranks on its estimate from its second.
        for _ in 0..2 {
            bylatency::record(member, 2_000.0 + (i * 5 % 39) as f64 * 1_000.0, false, false, 1, 10_000_000);
        }
        for _ in 0..(i as u64 * 7) % 13 {
            // Held for the whole run: in flight (an attempt stays counted until it is ended).
            let _held = counts.begin(i, u64::MAX);
        }
    }
    (segment, slot)
}

fn members_of(candidates: &[Candidate]) -> impl Iterator<Item = Member> + '_ {
    candidates.iter().map(|c| Member {
        worker_index: c.worker_index,
        key: shm::name_key(
            format!("http://10.0.{}.{}:8080", c.worker_index / 256, c.worker_index % 256).as_bytes(),
        ),
        lbfactor: c.lbfactor,
        tier: c.tier,
    })
}

/// One process's tables for one balancer, with its tables built for `all` before the picks.
fn tables_for(all: &[Candidate], hash: bool) -> Arc<Shelves> {
    let shelves = Shelves::new(1, Builder::Inline);
    shelves.publish_now(0, Arc::new(methods::Tables::build(&members_of(all).collect::<Vec<_>>(), hash)));
    shelves
}

/// One pick of `registered` per iteration, `offered` of the members offered.
fn bench_method(
    c: &mut Criterion,
    group: &str,
    registered: &Registered,
    offered: fn(&[Candidate]) -> Vec<Candidate>,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    let settings = BalancerSettings::default();
    for members in SIZES {
        let (segment, slot) = segment(members);
        let shared = segment.balancer(slot).expect("the slot just claimed");
        let all = candidates(members, members == 1000, &segment, slot);
        let shelves = tables_for(&all, registered.method.uses_hash_key());
        let tables = TablesOf { shelves: &shelves, balancer: 0 };
        let mut local = LocalState::default();
        local.sync_members((all.len(), 0), |list| list.extend(members_of(&all)));
        local.candidates_mut().extend_from_slice(&offered(&all));
        let mut user = 0u64;
        let mut key = [0u8; 16];
        group.bench_function(BenchmarkId::from_parameter(members), |b| {
            b.iter(|| {
                user += 1;
                key[..8].copy_from_slice(&user.to_le_bytes());
                let mut free = Free;
                let mut pick = Pick::new(
                    shared,
                    &settings,
                    &segment,
                    1_000_000,
                    Some(&key),
                    tables,
                    &mut local,
                    &mut free,
                );
                black_box(registered.method.choose(&mut pick))
            })
        });
        // SAFETY: nothing of this segment is used after this point.
        unsafe { segment.unmap() };
    }
    group.finish();
}

/// The finder's per-request work after httpd's eligibility walk, for every method.
fn finder(c: &mut Criterion) {
    let settings = BalancerSettings::default();
    for registered in &METHODS {
        let mut group = c.benchmark_group(format!("{}/finder", registered.name()));
        group.throughput(Throughput::Elements(1));
        for members in SIZES {
            let (segment, slot) = segment(members);
            let shared = segment.balancer(slot).expect("the slot just claimed");
            let all = candidates(members, members == 1000, &segment, slot);
            let process = shm::Counts::new(segment, segment.claim_process(std::process::id()));
            let shelves = tables_for(&all, registered.method.uses_hash_key());
            let tables = TablesOf { shelves: &shelves, balancer: 0 };
            let mut local = LocalState::default();
            local.sync_members((all.len(), 0), |list| list.extend(members_of(&all)));
            let mut user = 0u64;
            let mut key = [0u8; 16];
            group.bench_function(BenchmarkId::from_parameter(members), |b| {
                b.iter(|| {
                    user += 1;
                    key[..8].copy_from_slice(&user.to_le_bytes());
                    local.sync_members((all.len(), 0), |_| unreachable!("no member added"));
                    let candidates = local.candidates_mut();
                    for offered in &all {
                        let member = offered.member.and_then(|m| segment.member(m as usize));
                        let inflight =
                            offered.member.map_or(0, |m| shm::attempt::inflight(&segment, m as usize)) as u32;
                        let weight = methods::slow_start::member_weight(
                            offered.lbfactor,
                            member,
                            settings.slow_start,
                            1,
                        );
                        candidates.push(Candidate { inflight, weight, ..*offered });
                    }
                    let mut counts = methods::SharedCounts::new(process);
                    let mut pick = Pick::new(
                        shared,
                        &settings,
                        &segment,
                        1_000_000,
                        Some(&key),
                        tables,
                        &mut local,
                        &mut counts,
                    );
                    let choice = registered.method.choose(&mut pick);
                    if let Some(attempt) = counts.taken.take() {
                        attempt.end(shm::Outcome::Completed);
                    }
                    black_box(choice)
                })
            });
            // SAFETY: nothing of this segment is used after this point.
            unsafe { segment.unmap() };
        }
        group.finish();
    }
}

fn pick(c: &mut Criterion) {
    for registered in &METHODS {
        bench_method(c, &format!("{}/pick", registered.name()), registered, |all| all.to_vec());
    }
    let byweight = methods::by_name(b"byweight").expect("registered");
    bench_method(c, "byweight/pick-most-down", byweight, |all| vec![all[0], all[all.len() - 1]]);
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("byweight/rebuild");
    group.sample_size(10);
    for members in SIZES {
        let (segment, slot) = segment(members);
        let weights: Vec<u32> =
            candidates(members, members == 1000, &segment, slot).iter().map(|c| c.lbfactor).collect();
        group.bench_with_input(BenchmarkId::from_parameter(members), &weights, |b, weights| {
            b.iter(|| Schedule::build(black_box(weights)))
        });
        // SAFETY: nothing of this segment is used after this point.
        unsafe { segment.unmap() };
    }
    group.finish();
}

fn build_byhash(c: &mut Criterion) {
    let mut group = c.benchmark_group("byhash/build");
    group.sample_size(10);
    for members in SIZES {
        let (segment, slot) = segment(members);
        let weighted: Vec<(u64, u32)> = members_of(&candidates(members, members == 1000, &segment, slot))
            .map(|m| (m.key, m.lbfactor))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(members), &weighted, |b, weighted| {
            b.iter(|| Table::build(black_box(weighted)))
        });
        // SAFETY: nothing of this segment is used after this point.
        unsafe { segment.unmap() };
    }
    group.finish();
}

/// One pick in 500 comes after a loadfactor changed, at 1000 members of distinct loadfactors:
/// `byweight/pick-during-rebuild` with the tables built by the process's builder thread (what
/// the module does), `byweight/pick-building-in-the-pick` with the pick that notices the change
/// building them itself (what it did before). benches/pick_during_rebuild.rs gives the tail.
fn pick_during_rebuild(c: &mut Criterion) {
    fn spawn(body: Box<dyn FnOnce() + Send>) -> bool {
        std::thread::spawn(body);
        true
    }
    let settings = BalancerSettings::default();
    let (segment, slot) = segment(1000);
    let shared = segment.balancer(slot).expect("the slot just claimed");
    let byweight = methods::by_name(b"byweight").expect("registered");
    for (name, builder) in
        [("pick-during-rebuild", Builder::Thread(spawn)), ("pick-building-in-the-pick", Builder::Inline)]
    {
        let mut group = c.benchmark_group(format!("byweight/{name}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        let mut all = candidates(1000, true, &segment, slot);
        let shelves = Shelves::new(1, builder);
        shelves
            .publish_now(0, Arc::new(methods::Tables::build(&members_of(&all).collect::<Vec<_>>(), false)));
        let tables = TablesOf { shelves: &shelves, balancer: 0 };
        let mut local = LocalState::default();
        local.sync_members((all.len(), 0), |list| list.extend(members_of(&all)));
        let mut picks = 0u64;
        group.bench_function(BenchmarkId::from_parameter(1000), |b| {
            b.iter(|| {
                picks += 1;
                if picks.is_multiple_of(500) {
                    let changed = (picks / 500 % 1000) as usize;
                    all[changed].lbfactor = 100 + (picks / 500 % 50) as u32 * 11;
                    all[changed].weight = all[changed].lbfactor;
                }
                local.candidates_mut().extend_from_slice(&all);
                let mut free = Free;
                let mut pick =
                    Pick::new(shared, &settings, &segment, 1_000_000, None, tables, &mut local, &mut free);
                black_box(byweight.method.choose(&mut pick))
            })
        });
        group.finish();
    }
    // SAFETY: nothing of this segment is used after this point.
    unsafe { segment.unmap() };
}

criterion_group!(benches, pick, finder, rebuild, build_byhash, pick_during_rebuild);
criterion_main!(benches);
