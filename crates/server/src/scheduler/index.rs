//! The placement decision without a pass over the fleet. Agents are grouped by the templates
//! they serve (a fleet has a handful of distinct template sets, however many hosts), so a
//! request's labels are matched once per group; each group keeps its schedulable agents ordered
//! by free slots, so the best one is the first that has room. The fleet updates an agent's entry
//! whenever its session, cordon, templates or runners change; [`PlacementIndex::place`] gives
//! the same answer as [`super::place`] over a full view.

use super::{
    describe, extra_labels, meaningful_labels, serves, template_fits, Placement, PlacementError,
    Slots,
};
use crate::config::SchedulerConfig;
use crate::store::TemplateRecord;
use shoes_vz_model::{AgentId, ResourceSpec};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Whether new runners may go to an agent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Online, synced and not cordoned.
    Schedulable,
    Offline,
    Cordoned,
}

struct Member {
    templates: Arc<[TemplateRecord]>,
    availability: Availability,
    slots: Slots,
}

impl Member {
    /// Its key in its group's ordered set, when it can take a runner of some size now.
    fn open_key(&self, agent_id: &AgentId) -> Option<(Reverse<u32>, AgentId)> {
        (self.availability == Availability::Schedulable && self.slots.free() > 0)
            .then(|| (Reverse(self.slots.free()), agent_id.clone()))
    }
}

#[derive(Default)]
struct Group {
    members: BTreeSet<AgentId>,
    /// Schedulable members with a free slot, most free first.
    open: BTreeSet<(Reverse<u32>, AgentId)>,
    offline: usize,
    cordoned: usize,
}

#[derive(Default)]
pub struct PlacementIndex {
    groups: HashMap<Arc<[TemplateRecord]>, Group>,
    members: HashMap<AgentId, Member>,
}

impl PlacementIndex {
    /// Sets the templates an agent serves (on registration); it keeps its slots and
    /// availability, or starts offline with none.
    pub fn set_templates(&mut self, agent_id: &AgentId, templates: &[TemplateRecord]) {
        let templates = match self.groups.get_key_value(templates) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(templates),
        };
        self.replace(agent_id, |old| match old {
            Some(member) => Member {
                templates,
                ..member
            },
            None => Member {
                templates,
                availability: Availability::Offline,
                slots: Slots::default(),
            },
        });
    }

    /// Records an agent's availability and slots (called whenever either may have changed;
    /// cheap). An agent without templates yet serves nothing until [`Self::set_templates`].
    pub fn set_slots(&mut self, agent_id: &AgentId, availability: Availability, slots: Slots) {
        self.replace(agent_id, |old| Member {
            templates: old.map_or_else(|| Arc::from(Vec::new()), |member| member.templates),
            availability,
            slots,
        });
    }

    fn replace(&mut self, agent_id: &AgentId, change: impl FnOnce(Option<Member>) -> Member) {
        let member = change(self.remove(agent_id));
        self.insert(agent_id, member);
    }

    /// Forgets an agent (revoked).
    pub fn forget(&mut self, agent_id: &AgentId) {
        self.remove(agent_id);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn insert(&mut self, agent_id: &AgentId, member: Member) {
        let group = self
            .groups
            .entry(Arc::clone(&member.templates))
            .or_default();
        group.members.insert(agent_id.clone());
        match member.availability {
            Availability::Offline => group.offline += 1,
            Availability::Cordoned => group.cordoned += 1,
            Availability::Schedulable => {}
        }
        if let Some(key) = member.open_key(agent_id) {
            group.open.insert(key);
        }
        self.members.insert(agent_id.clone(), member);
    }

    fn remove(&mut self, agent_id: &AgentId) -> Option<Member> {
        let member = self.members.remove(agent_id)?;
        if let Some(group) = self.groups.get_mut(&member.templates) {
            group.members.remove(agent_id);
            match member.availability {
                Availability::Offline => group.offline -= 1,
                Availability::Cordoned => group.cordoned -= 1,
                Availability::Schedulable => {}
            }
            if let Some(key) = member.open_key(agent_id) {
                group.open.remove(&key);
            }
            if group.members.is_empty() {
                self.groups.remove(&member.templates);
            }
        }
        Some(member)
    }

    /// The agent with the most free slots among those serving `labels` with room for `spec`,
    /// and its closest template; or why none.
    pub fn place(
        &self,
        config: &SchedulerConfig,
        labels: &[String],
        spec: ResourceSpec,
    ) -> Result<Placement, PlacementError> {
        if self.members.is_empty() {
            return Err(PlacementError::NoAgents);
        }
        let wanted = meaningful_labels(config, labels);
        let mut best: Option<(u32, &AgentId, &TemplateRecord)> = None;
        let mut matching: Vec<&Group> = Vec::new();
        for (templates, group) in &self.groups {
            let Some(template) = templates
                .iter()
                .filter(|t| serves(config, t, &wanted) && template_fits(t, spec))
                .min_by(|a, b| {
                    (extra_labels(a, &wanted), &a.name).cmp(&(extra_labels(b, &wanted), &b.name))
                })
            else {
                continue;
            };
            matching.push(group);
            // Most free first: the first with room for this size is the group's best.
            let found = group
                .open
                .iter()
                .find(|(_, id)| self.members.get(id).is_some_and(|m| m.slots.has_room(spec)));
            if let Some((Reverse(free), agent_id)) = found {
                if best.is_none_or(|(most, _, _)| *free > most) {
                    best = Some((*free, agent_id, template));
                }
            }
        }
        if let Some((_, agent_id, template)) = best {
            return Ok(Placement {
                agent_id: agent_id.clone(),
                template: template.name.clone(),
            });
        }
        self.why_not(&matching, &wanted, spec)
    }

    /// No agent has room: is it for now (full, offline, cordoned) or for ever (no agent of a
    /// matching group is big enough)? Only this path looks at agents one by one, and only
    /// until it finds one big enough.
    fn why_not(
        &self,
        matching: &[&Group],
        wanted: &[String],
        spec: ResourceSpec,
    ) -> Result<Placement, PlacementError> {
        let big_enough = |group: &&Group| {
            group.members.iter().any(|id| {
                self.members
                    .get(id)
                    .is_some_and(|m| m.slots.fits_ever(spec))
            })
        };
        let matching: Vec<&Group> = matching.iter().copied().filter(big_enough).collect();
        if matching.is_empty() {
            return Err(PlacementError::NeverFits(describe(wanted, spec)));
        }
        let count = |f: fn(&Group) -> usize| matching.iter().map(|g| f(g)).sum::<usize>();
        let total = count(|g| g.members.len());
        let offline = count(|g| g.offline);
        let cordoned = count(|g| g.cordoned);
        Err(PlacementError::NoRoomNow(format!(
            "{total} matching agent(s): {} full, {offline} offline, {cordoned} cordoned",
            total - offline - cordoned
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{place, AgentView};
    use super::*;

    fn template(name: &str, labels: &[&str], max_vcpus: u32) -> TemplateRecord {
        let mac = name.starts_with("macos");
        TemplateRecord {
            os: if mac { "macOS" } else { "Linux" }.into(),
            arch: if mac { "ARM64" } else { "X64" }.into(),
            name: name.into(),
            version: "1".into(),
            backend: "test".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            max_vcpus,
            max_memory_mib: 65536,
        }
    }

    const SMALL: ResourceSpec = ResourceSpec {
        vcpus: 2,
        memory_mib: 4096,
    };
    const LARGE: ResourceSpec = ResourceSpec {
        vcpus: 8,
        memory_mib: 16384,
    };

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The index and the reference agree on every decision, after every kind of change an
    /// agent goes through, in a fleet of mixed template sets and sizes.
    #[test]
    fn the_index_decides_as_a_full_scan_does() {
        let sets = [
            vec![template("linux", &["linux"], 8)],
            vec![
                template("linux", &["linux"], 8),
                template("linux-warm", &["linux", "warm"], 8),
            ],
            vec![template("macos", &["macos"], 4)],
        ];
        let config = SchedulerConfig::default();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut views: Vec<AgentView> = Vec::new();
        let mut index = PlacementIndex::default();
        let requests: [(&[&str], ResourceSpec); 5] = [
            (&["self-hosted", "linux"], SMALL),
            (&["linux", "warm"], SMALL),
            (&["macos"], SMALL),
            (&["macos"], LARGE),
            (&["linux"], LARGE),
        ];
        let mut outcomes = [0usize; 3];
        for step in 0..4000 {
            match rng.below(6) {
                // A new agent, or one re-registering with other templates.
                0 if views.len() < 40 => {
                    let templates = sets[rng.below(3) as usize].clone();
                    let cores = [4, 8, 16][rng.below(3) as usize];
                    let view = AgentView {
                        agent_id: AgentId::generate(),
                        ready: false,
                        cordoned: false,
                        max_runners: 1 + rng.below(3) as u32,
                        cpu_cores: cores,
                        memory_mib: u64::from(cores) * 4096,
                        templates,
                        used_runners: 0,
                        used_vcpus: 0,
                        used_memory_mib: 0,
                    };
                    index.set_templates(&view.agent_id, &view.templates);
                    views.push(view);
                }
                1 if !views.is_empty() => {
                    let i = rng.below(views.len() as u64) as usize;
                    views[i].templates = sets[rng.below(3) as usize].clone();
                    index.set_templates(&views[i].agent_id, &views[i].templates);
                }
                2 if !views.is_empty() => {
                    let i = rng.below(views.len() as u64) as usize;
                    views[i].ready = rng.below(4) != 0;
                    views[i].cordoned = rng.below(5) == 0;
                }
                // A runner starts or ends.
                3 | 4 if !views.is_empty() => {
                    let i = rng.below(views.len() as u64) as usize;
                    let v = &mut views[i];
                    if rng.below(2) == 0 && v.used_runners > 0 {
                        v.used_runners -= 1;
                        v.used_vcpus = v.used_vcpus.saturating_sub(2);
                        v.used_memory_mib = v.used_memory_mib.saturating_sub(4096);
                    } else if v.used_runners < v.max_runners {
                        v.used_runners += 1;
                        v.used_vcpus += 2;
                        v.used_memory_mib += 4096;
                    }
                }
                5 if views.len() > 1 && rng.below(8) == 0 => {
                    let i = rng.below(views.len() as u64) as usize;
                    index.forget(&views.remove(i).agent_id);
                }
                _ => {}
            }
            for v in &views {
                let availability = match (v.ready, v.cordoned) {
                    (false, _) => Availability::Offline,
                    (true, true) => Availability::Cordoned,
                    (true, false) => Availability::Schedulable,
                };
                index.set_slots(&v.agent_id, availability, v.slots());
            }
            for (labels, spec) in &requests {
                let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
                let expected = place(&config, &views, &labels, *spec);
                let got = index.place(&config, &labels, *spec);
                let free = |p: &Placement| {
                    views
                        .iter()
                        .find(|v| v.agent_id == p.agent_id)
                        .map(|v| v.slots().free())
                };
                outcomes[match &got {
                    Ok(_) => 0,
                    Err(PlacementError::NeverFits(_)) => 1,
                    Err(_) => 2,
                }] += 1;
                match (&expected, &got) {
                    (Ok(e), Ok(g)) => {
                        assert_eq!(free(e), free(g), "step {step}: {labels:?}");
                        // Ties may pick another agent; its template is the one the reference
                        // picks for that agent.
                        let chosen: Vec<AgentView> = views
                            .iter()
                            .filter(|v| v.agent_id == g.agent_id)
                            .cloned()
                            .collect();
                        let alone = place(&config, &chosen, &labels, *spec);
                        assert_eq!(alone.as_ref(), Ok(g), "step {step}: {labels:?}");
                    }
                    (Err(PlacementError::NoAgents), Err(PlacementError::NoAgents))
                    | (Err(PlacementError::NoRoomNow(_)), Err(PlacementError::NoRoomNow(_)))
                    | (Err(PlacementError::NeverFits(_)), Err(PlacementError::NeverFits(_))) => {}
                    _ => panic!(
                        "step {step}: {labels:?} {spec:?}: reference {expected:?}, index {got:?}"
                    ),
                }
            }
        }
        assert_eq!(index.len(), views.len());
        assert!(
            outcomes.iter().all(|n| *n > 100),
            "every outcome was tried: {outcomes:?}"
        );
    }

    #[test]
    fn groups_share_one_copy_of_their_templates_and_vanish_when_empty() {
        let mut index = PlacementIndex::default();
        let templates = vec![template("linux", &["linux"], 8)];
        let (a, b) = (AgentId::generate(), AgentId::generate());
        index.set_templates(&a, &templates);
        index.set_templates(&b, &templates);
        assert_eq!(index.groups.len(), 1);
        let shared = |id: &AgentId| Arc::as_ptr(&index.members[id].templates);
        assert_eq!(shared(&a), shared(&b));
        index.forget(&a);
        index.forget(&b);
        assert!(index.groups.is_empty() && index.is_empty());
    }
}
