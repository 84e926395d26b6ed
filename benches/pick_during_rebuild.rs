//! What a pick costs while loadfactors change, at 1000 members of distinct loadfactors (the
//! worst case for `byweight`'s cycle): every 50 ms a member's loadfactor changes, as an
//! administrator's clicks in balancer-manager would, and each pick's duration is measured.
//!
//! Two ways to get the new tables are compared, in one run:
//! - `in the pick`: the pick that notices the change builds the tables itself, under httpd's
//!   balancer lock, as this module did before (every other thread of the process waits);
//! - `builder thread`: the pick hands the member list to the process's builder thread and goes
//!   on with the tables it has (what the module does, `methods::tables`).
//!
//! Run with `cargo bench --bench pick_during_rebuild`; it prints one line per method and way:
//! picks measured, p50, p99, p99.9 and the longest pick. docs/benchmark.md has one run.

// The plain-Rust modules are compiled into this bench, as in benches/selection.rs.
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
use methods::tables::Builder;
use methods::{Candidate, LocalState, Member, Pick, Reserve, Shelves, TablesOf, Tier};
use shm::{Capacity, Segment};
use std::hint::black_box;
use std::time::{Duration, Instant};

const MEMBERS: usize = 1000;
const CHANGE_EVERY: Duration = Duration::from_millis(50);
const RUN: Duration = Duration::from_secs(3);

/// A reservation that always succeeds and counts nothing.
struct Free;

impl Reserve for Free {
    fn reserve(&mut self, _: &Candidate, _: u64) -> bool {
        true
    }
}

fn spawn(body: Box<dyn FnOnce() + Send>) -> bool {
    std::thread::spawn(body);
    true
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("pick_during_rebuild: bench");
        return;
    }
    let segment =
        Segment::create(Capacity { balancers: 1, members: MEMBERS as u32, processes: 1 }).expect("mmap");
    let slot = segment.claim_balancer(shm::name_key(b"balancer://bench"), MEMBERS as u32).expect("a slot");
    println!(
        "pick while a loadfactor changes every {CHANGE_EVERY:?}, {MEMBERS} members of distinct loadfactors"
    );
    println!(
        "{:<10} {:<15} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "method", "tables built", "picks", "p50", "p99", "p99.9", "longest"
    );
    for method in ["byweight", "byhash"] {
        for (way, builder) in [("in the pick", Builder::Inline), ("builder thread", Builder::Thread(spawn))] {
            let mut times =
                run(&segment, slot, methods::by_name(method.as_bytes()).expect("registered"), builder);
            times.sort_unstable();
            let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
            println!(
                "{method:<10} {way:<15} {:>9} {:>9} {:>9} {:>9} {:>10}",
                times.len(),
                show(at(0.5)),
                show(at(0.99)),
                show(at(0.999)),
                show(*times.last().expect("picks"))
            );
        }
    }
    // SAFETY: nothing of this segment is used after this point.
    unsafe { segment.unmap() };
}

fn show(d: Duration) -> String {
    if d < Duration::from_micros(10) {
        format!("{} ns", d.as_nanos())
    } else if d < Duration::from_millis(10) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// Picks for [`RUN`], changing a loadfactor every [`CHANGE_EVERY`]; each pick's duration.
fn run(segment: &Segment, slot: usize, registered: &methods::Registered, builder: Builder) -> Vec<Duration> {
    let shared = segment.balancer(slot).expect("the slot");
    let settings = BalancerSettings::default();
    let mut all: Vec<Candidate> = (0..MEMBERS)
        .map(|i| Candidate {
            worker_index: i as u32,
            member: Some(i as u32),
            lbfactor: 100 + i as u32 * 9,
            weight: 100 + i as u32 * 9,
            inflight: (i as u32 * 7) % 13,
            limit: methods::NO_LIMIT,
            full: false,
            tier: Tier::default(),
        })
        .collect();
    let members = |all: &[Candidate]| -> Vec<Member> {
        all.iter()
            .map(|c| Member {
                worker_index: c.worker_index,
                key: shm::name_key(
                    format!("http://10.0.{}.{}:8080", c.worker_index / 256, c.worker_index % 256).as_bytes(),
                ),
                lbfactor: c.lbfactor,
                tier: c.tier,
            })
            .collect()
    };
    let shelves = Shelves::new(1, builder);
    shelves.publish_now(
        0,
        std::sync::Arc::new(methods::Tables::build(&members(&all), registered.method.uses_hash_key())),
    );
    let tables = TablesOf { shelves: &shelves, balancer: 0 };
    let mut local = LocalState::default();
    local.sync_members((all.len(), 0), |list| list.extend(members(&all)));
    let mut times = Vec::with_capacity(4_000_000);
    let (start, mut next_change, mut changes) = (Instant::now(), Instant::now() + CHANGE_EVERY, 0u32);
    let mut user = 0u64;
    while start.elapsed() < RUN {
        if Instant::now() >= next_change {
            changes += 1;
            let changed = (changes as usize * 37) % MEMBERS;
            all[changed].lbfactor = 100 + (changes % 50) * 11;
            all[changed].weight = all[changed].lbfactor;
            next_change += CHANGE_EVERY;
        }
        user += 1;
        let key = user.to_le_bytes();
        let began = Instant::now();
        local.candidates_mut().extend_from_slice(&all);
        let mut free = Free;
        let mut pick =
            Pick::new(shared, &settings, segment, 1_000_000, Some(&key), tables, &mut local, &mut free);
        black_box(registered.method.choose(&mut pick));
        times.push(began.elapsed());
    }
    times
}
