//! A batch of writes as the fewest statements: each runner written once, with its last record
//! (inserted when the batch first inserts it, else updated), and every state it went through
//! appended to its history with numbers the writer already knows. Pure: the stored states it
//! starts from are given.

use super::batch::Write;
use super::records::{AgentRecord, RunnerRecord};
use shoes_vz_model::{AgentId, RunnerId, RunnerState};
use std::collections::HashMap;

/// What the store holds for a runner: its state (`None` when unreadable, so any state counts
/// as a change) and its history's last number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub state: Option<RunnerState>,
    pub last_seq: i64,
}

/// One history row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow<'a> {
    pub runner_id: &'a RunnerId,
    pub seq: i64,
    pub state: RunnerState,
    pub at_ms: i64,
    /// The runner's error at that time.
    pub detail: &'a str,
}

/// An agent write, kept in order.
#[derive(Debug, Clone, Copy)]
pub enum AgentWrite<'a> {
    Upsert(&'a AgentRecord),
    Online(&'a AgentId, bool, i64),
}

#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub agents: Vec<AgentWrite<'a>>,
    /// Runners new in this batch, as their last record.
    pub inserts: Vec<&'a RunnerRecord>,
    /// Runners the store has, as their last record.
    pub updates: Vec<&'a RunnerRecord>,
    pub history: Vec<HistoryRow<'a>>,
    /// What the store holds for every runner written, once the batch is committed.
    pub after: HashMap<&'a RunnerId, Stored>,
}

/// Runners the batch updates without inserting and `known` cannot say anything about: their
/// stored state must be read first.
pub fn unknown<'a>(
    writes: &[Write<'a>],
    known: impl Fn(&RunnerId) -> Option<Stored>,
) -> Vec<&'a RunnerId> {
    let mut seen: HashMap<&RunnerId, ()> = HashMap::new();
    let mut unknown = Vec::new();
    for write in writes {
        let (runner, inserted) = match write {
            Write::InsertRunner(r) => (*r, true),
            Write::UpdateRunner(r) => (*r, false),
            _ => continue,
        };
        if seen.insert(&runner.runner_id, ()).is_none()
            && !inserted
            && known(&runner.runner_id).is_none()
        {
            unknown.push(&runner.runner_id);
        }
    }
    unknown
}

/// The statements for `writes`, given what the store holds for every runner updated without
/// being inserted (`stored` must answer for each of [`unknown`]'s and the writer's known ones).
pub fn plan<'a>(
    writes: &[Write<'a>],
    stored: impl Fn(&RunnerId) -> Option<Stored>,
) -> Result<Plan<'a>, &'a RunnerId> {
    let mut plan = Plan::default();
    // Per runner: index into inserts or updates, and whether it was inserted here.
    let mut slot: HashMap<&RunnerId, (bool, usize)> = HashMap::new();
    for write in writes {
        match *write {
            Write::UpsertAgent(agent) => plan.agents.push(AgentWrite::Upsert(agent)),
            Write::AgentOnline(id, online, at) => {
                plan.agents.push(AgentWrite::Online(id, online, at))
            }
            Write::InsertRunner(runner) => {
                let id = &runner.runner_id;
                slot.insert(id, (true, plan.inserts.len()));
                plan.inserts.push(runner);
                let seq = 1;
                plan.history.push(row(runner, seq, runner.created_at_ms));
                plan.after.insert(
                    id,
                    Stored {
                        state: Some(runner.state),
                        last_seq: seq,
                    },
                );
            }
            Write::UpdateRunner(runner) => {
                let id = &runner.runner_id;
                let before = match plan.after.get(id) {
                    Some(before) => *before,
                    None => stored(id).ok_or(id)?,
                };
                match slot.get(id) {
                    Some((true, index)) => plan.inserts[*index] = runner,
                    Some((false, index)) => plan.updates[*index] = runner,
                    None => {
                        slot.insert(id, (false, plan.updates.len()));
                        plan.updates.push(runner);
                    }
                }
                let mut after = before;
                if before.state != Some(runner.state) {
                    after.last_seq += 1;
                    after.state = Some(runner.state);
                    plan.history
                        .push(row(runner, after.last_seq, runner.updated_at_ms));
                }
                plan.after.insert(id, after);
            }
        }
    }
    Ok(plan)
}

fn row(runner: &RunnerRecord, seq: i64, at_ms: i64) -> HistoryRow<'_> {
    HistoryRow {
        runner_id: &runner.runner_id,
        seq,
        state: runner.state,
        at_ms,
        detail: &runner.error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewRunner;
    use shoes_vz_model::{ResourceSpec, ResourceType};

    fn runner() -> RunnerRecord {
        RunnerRecord::new(
            RunnerId::generate(),
            NewRunner {
                runner_name: "myshoes-plan".into(),
                agent_id: AgentId::generate(),
                template: "linux".into(),
                resource_type: ResourceType::Small,
                spec: ResourceSpec {
                    vcpus: 1,
                    memory_mib: 512,
                },
                labels: Vec::new(),
            },
            1_000,
        )
    }

    fn at(runner: &RunnerRecord, state: RunnerState, ms: i64) -> RunnerRecord {
        let mut next = runner.clone();
        next.state = state;
        next.updated_at_ms = ms;
        next
    }

    #[test]
    fn a_new_runners_whole_start_is_one_insert_and_one_history_row_per_state() {
        let first = runner();
        let steps = [
            at(&first, RunnerState::Booting, 1_010),
            at(&first, RunnerState::Booting, 1_020),
            at(&first, RunnerState::SshReady, 1_030),
        ];
        let mut writes = vec![Write::InsertRunner(&first)];
        writes.extend(steps.iter().map(Write::UpdateRunner));
        assert!(unknown(&writes, |_| None).is_empty());
        let plan = plan(&writes, |_| None).expect("no reads needed");
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(
            plan.inserts[0].state,
            RunnerState::SshReady,
            "the last record"
        );
        assert!(plan.updates.is_empty());
        let rows: Vec<(i64, RunnerState, i64)> = plan
            .history
            .iter()
            .map(|r| (r.seq, r.state, r.at_ms))
            .collect();
        assert_eq!(
            rows,
            [
                (1, RunnerState::Creating, 1_000),
                (2, RunnerState::Booting, 1_010),
                (3, RunnerState::SshReady, 1_030),
            ]
        );
        assert_eq!(
            plan.after[&first.runner_id],
            Stored {
                state: Some(RunnerState::SshReady),
                last_seq: 3
            }
        );
    }

    #[test]
    fn updates_of_stored_runners_continue_their_history_or_need_a_read() {
        let known = at(&runner(), RunnerState::Running, 1_500);
        let unread = runner();
        let writes = [
            Write::UpdateRunner(&known),
            Write::UpdateRunner(&unread),
            Write::UpdateRunner(&known),
        ];
        let stored_known = Stored {
            state: Some(RunnerState::Running),
            last_seq: 4,
        };
        let lookup = |id: &RunnerId| (id == &known.runner_id).then_some(stored_known);
        assert_eq!(unknown(&writes, lookup), vec![&unread.runner_id]);
        assert_eq!(
            plan(&writes, lookup).expect_err("unread"),
            &unread.runner_id
        );

        let deleted = at(&known, RunnerState::Deleted, 2_000);
        let writes = [Write::UpdateRunner(&known), Write::UpdateRunner(&deleted)];
        let plan = plan(&writes, lookup).expect("known");
        assert_eq!(plan.updates.len(), 1, "written once");
        assert_eq!(plan.updates[0].state, RunnerState::Deleted);
        assert_eq!(plan.history.len(), 1, "running was stored already");
        assert_eq!(
            (plan.history[0].seq, plan.history[0].state),
            (5, RunnerState::Deleted)
        );
    }

    #[test]
    fn an_unreadable_stored_state_counts_as_a_change() {
        let r = runner();
        let writes = [Write::UpdateRunner(&r)];
        let plan = plan(&writes, |_| {
            Some(Stored {
                state: None,
                last_seq: 2,
            })
        })
        .expect("read");
        assert_eq!(plan.history.len(), 1);
        assert_eq!(plan.history[0].seq, 3);
    }
}
