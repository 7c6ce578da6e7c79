//! Deterministic simulation of the call state machine (`voxmachina::calls::machine`): 10 000
//! seeded random histories (caller and agent turns, tools with random latency and failures,
//! escalations by every trigger, REFER outcomes, link drops and reconnects, duplicated and
//! reordered events, store write failures, crash and resume from the serialised state,
//! operator commands, maximum duration, shutdown), with the invariants of
//! `tests/support/sim.rs` checked after every step and at the end. `SIM_SEED` and
//! `SIM_HISTORIES` choose the range; a failure prints the shrunk history, its input trace and
//! a one-line replay command. More histories: `cargo bench --bench simulate` (docs/simulation.md).

#[path = "support/sim.rs"]
mod sim;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn ten_thousand_seeded_histories_keep_every_invariant() {
    let base = env_u64("SIM_SEED", 0);
    let n = env_u64("SIM_HISTORIES", 10_000);
    let (mut inputs, mut checks, mut escalated) = (0u64, 0u64, 0u64);
    for seed in base..base + n {
        match sim::run_and_shrink(&sim::generate(seed)) {
            Ok(s) => {
                inputs += s.inputs;
                checks += s.checks;
                escalated += u64::from(s.escalated);
            }
            Err((h, f)) => panic!("{}", sim::report(&h, &f)),
        }
    }
    // The histories reach the interesting parts (not only greetings).
    assert!(
        escalated > n / 20,
        "only {escalated} of {n} histories escalated"
    );
    assert!(inputs > n * 10, "{inputs} inputs for {n} histories");
    assert!(checks > inputs, "{checks} checks for {inputs} inputs");
}

#[test]
fn the_same_seed_gives_the_same_history_and_run() {
    for seed in [1u64, 77, 4242] {
        let (a, b) = (sim::generate(seed), sim::generate(seed));
        assert_eq!(a.acts, b.acts);
        let (ra, rb) = (sim::run(&a, true), sim::run(&b, true));
        let trace = |r: &Result<sim::Stats, sim::Failure>| match r {
            Ok(s) => format!("{} {}", s.inputs, s.checks),
            Err(f) => f.message.clone(),
        };
        assert_eq!(trace(&ra), trace(&rb));
    }
}

/// Found by the simulator (seed 81): a duplicated `response.function_call_arguments.done` for
/// a tool still running started a second job for the same function call (two outputs for one
/// `call_id`). Now the duplicate is ignored.
#[test]
fn a_duplicated_tool_call_runs_one_job() {
    use sim::{Act, CallSetup, History};
    use voxmachina::calls::machine::Attach;
    use voxmachina::calls::record::Api;
    let h = History {
        seed: 81,
        setup: CallSetup {
            profile: 0,
            attach: Attach::Resume,
            api: Api::Realtime,
            model_summary: false,
            crm: false,
            filler_after_ms: 0,
            attach_fails: None,
        },
        acts: vec![
            Act::ResponseCreated,
            Act::Dtmf('5'),
            Act::Duplicate,
            Act::ToolCall(0),
            Act::ToolCall(0),
            Act::AgentTurn { audio: true },
            Act::Duplicate,
        ],
    };
    if let Err(f) = sim::run(&h, true) {
        panic!("{}", sim::report(&h, &f));
    }
}
