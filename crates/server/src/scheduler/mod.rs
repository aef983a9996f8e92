//! Placement: which agent and template serve a request. Pure logic, so every rule is
//! unit-tested without a network.
//!
//! # Layout
//! - `mod.rs`: the rules, as [`place`] over a full view of the fleet (the reference the index
//!   is checked against).
//! - [`index`]: the same decision from an index kept up to date as agents and runners change,
//!   without a pass over the fleet: what the server uses.

pub mod index;

use crate::config::SchedulerConfig;
use crate::store::TemplateRecord;
use shoes_vz_model::{AgentId, ResourceSpec};

/// What the scheduler knows of one agent at the moment of a decision.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub agent_id: AgentId,
    /// Online with a synced stream: commands can reach it now.
    pub ready: bool,
    /// An operator took it out of rotation: its live runners finish, no new ones come.
    pub cordoned: bool,
    pub max_runners: u32,
    pub cpu_cores: u32,
    pub memory_mib: u64,
    pub templates: Vec<TemplateRecord>,
    /// Runners holding a slot, in-flight creates included (they are reservations).
    pub used_runners: u32,
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub agent_id: AgentId,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no agent has registered yet; start a shoes-vz-agent pointed at this server")]
    NoAgents,
    /// Retryable: a matching agent exists but has no room or is offline right now.
    #[error("no capacity right now: {0}")]
    NoRoomNow(String),
    /// Never satisfiable with the fleet as registered: myshoes should drop the job.
    #[error("no registered template can serve this request: {0}")]
    NeverFits(String),
}

/// Picks the ready agent with the most free slots among those whose template matches the
/// labels and that have room for `spec`. A label matches a template's name, one of its
/// labels, or the OS and arch labels every runner of it registers with (GitHub's `Linux`,
/// `macOS`, `X64`, `ARM64`), all case-insensitively; ignored labels (myshoes' own) match
/// anything.
pub fn place(
    config: &SchedulerConfig,
    agents: &[AgentView],
    labels: &[String],
    spec: ResourceSpec,
) -> Result<Placement, PlacementError> {
    if agents.is_empty() {
        return Err(PlacementError::NoAgents);
    }
    let wanted = meaningful_labels(config, labels);
    let (mut matching, mut offline, mut cordoned) = (0usize, 0usize, 0usize);
    let mut best: Option<(&AgentView, &TemplateRecord)> = None;
    for agent in agents {
        // The closest match wins: a request for `linux` gets the plain template, not its warm
        // sibling that carries `linux` plus `warm`.
        let Some(template) = agent
            .templates
            .iter()
            .filter(|t| serves(config, t, &wanted) && fits_ever(agent, t, spec))
            .min_by_key(|t| (extra_labels(t, &wanted), t.name.clone()))
        else {
            continue;
        };
        matching += 1;
        if !agent.ready {
            offline += 1;
            continue;
        }
        if agent.cordoned {
            cordoned += 1;
            continue;
        }
        if !has_room(agent, spec) {
            continue;
        }
        let better = match best {
            None => true,
            Some((current, _)) => free_slots(agent) > free_slots(current),
        };
        if better {
            best = Some((agent, template));
        }
    }
    match best {
        Some((agent, template)) => Ok(Placement {
            agent_id: agent.agent_id.clone(),
            template: template.name.clone(),
        }),
        None if matching == 0 => Err(PlacementError::NeverFits(describe(&wanted, spec))),
        None => Err(PlacementError::NoRoomNow(format!(
            "{matching} matching agent(s): {} full, {offline} offline, {cordoned} cordoned",
            matching - offline - cordoned
        ))),
    }
}

pub(crate) fn meaningful_labels(config: &SchedulerConfig, labels: &[String]) -> Vec<String> {
    labels
        .iter()
        .filter(|label| {
            !config
                .ignored_labels
                .iter()
                .any(|ignored| ignored.eq_ignore_ascii_case(label))
        })
        .cloned()
        .collect()
}

pub(crate) fn serves(
    config: &SchedulerConfig,
    template: &TemplateRecord,
    wanted: &[String],
) -> bool {
    if wanted.is_empty() {
        return config
            .default_template
            .as_ref()
            .is_none_or(|default| default == &template.name);
    }
    wanted.iter().all(|label| {
        template.name.eq_ignore_ascii_case(label)
            || template
                .labels
                .iter()
                .chain([&template.os, &template.arch])
                .any(|l| !l.is_empty() && l.eq_ignore_ascii_case(label))
    })
}

/// Labels a template has that the request did not ask for.
pub(crate) fn extra_labels(template: &TemplateRecord, wanted: &[String]) -> usize {
    template
        .labels
        .iter()
        .filter(|label| !wanted.iter().any(|w| w.eq_ignore_ascii_case(label)))
        .count()
}

fn fits_ever(agent: &AgentView, template: &TemplateRecord, spec: ResourceSpec) -> bool {
    template_fits(template, spec) && agent.slots().fits_ever(spec)
}

/// The template allows a VM this size.
pub(crate) fn template_fits(template: &TemplateRecord, spec: ResourceSpec) -> bool {
    spec.vcpus <= template.max_vcpus && spec.memory_mib <= template.max_memory_mib
}

fn has_room(agent: &AgentView, spec: ResourceSpec) -> bool {
    agent.slots().has_room(spec)
}

fn free_slots(agent: &AgentView) -> u32 {
    agent.slots().free()
}

/// An agent's size and what its live runners hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    pub max_runners: u32,
    pub cpu_cores: u32,
    pub memory_mib: u64,
    /// Runners holding a slot, in-flight creates included (they are reservations).
    pub used_runners: u32,
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
}

impl Slots {
    /// Could ever run a VM this size.
    pub fn fits_ever(&self, spec: ResourceSpec) -> bool {
        self.max_runners > 0 && spec.vcpus <= self.cpu_cores && spec.memory_mib <= self.memory_mib
    }

    /// Can take a VM this size now.
    pub fn has_room(&self, spec: ResourceSpec) -> bool {
        self.used_runners < self.max_runners
            && self.used_vcpus + spec.vcpus <= self.cpu_cores
            && self.used_memory_mib + spec.memory_mib <= self.memory_mib
    }

    pub fn free(&self) -> u32 {
        self.max_runners.saturating_sub(self.used_runners)
    }
}

impl AgentView {
    pub fn slots(&self) -> Slots {
        Slots {
            max_runners: self.max_runners,
            cpu_cores: self.cpu_cores,
            memory_mib: self.memory_mib,
            used_runners: self.used_runners,
            used_vcpus: self.used_vcpus,
            used_memory_mib: self.used_memory_mib,
        }
    }
}

pub(crate) fn describe(wanted: &[String], spec: ResourceSpec) -> String {
    format!(
        "labels {wanted:?} with {} vCPUs and {} MiB; check the labels, the resource type mapping and the templates' limits",
        spec.vcpus, spec.memory_mib
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, labels: &[&str]) -> TemplateRecord {
        let linux = name.contains("linux") || labels.contains(&"linux");
        TemplateRecord {
            os: if linux { "Linux" } else { "macOS" }.into(),
            arch: if linux { "X64" } else { "ARM64" }.into(),
            name: name.into(),
            version: "1".into(),
            backend: "test".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            max_vcpus: 8,
            max_memory_mib: 16384,
        }
    }

    fn agent(used: u32, max: u32, templates: Vec<TemplateRecord>) -> AgentView {
        AgentView {
            cordoned: false,
            agent_id: AgentId::generate(),
            ready: true,
            max_runners: max,
            cpu_cores: 16,
            memory_mib: 65536,
            templates,
            used_runners: used,
            used_vcpus: used * 2,
            used_memory_mib: u64::from(used) * 4096,
        }
    }

    const SMALL: ResourceSpec = ResourceSpec {
        vcpus: 2,
        memory_mib: 4096,
    };

    fn labels(list: &[&str]) -> Vec<String> {
        list.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn picks_the_least_loaded_matching_agent() {
        let busy = agent(1, 2, vec![template("macos-26", &["macos"])]);
        let idle = agent(0, 2, vec![template("macos-26", &["macos"])]);
        let other = agent(0, 4, vec![template("linux", &["linux"])]);
        let placement = place(
            &SchedulerConfig::default(),
            &[busy, idle.clone(), other],
            &labels(&["self-hosted", "macOS"]),
            SMALL,
        )
        .expect("placed");
        assert_eq!(placement.agent_id, idle.agent_id);
        assert_eq!(placement.template, "macos-26");
    }

    #[test]
    fn full_or_offline_agents_mean_retry_later() {
        let full = agent(2, 2, vec![template("macos-26", &[])]);
        let mut offline = agent(0, 2, vec![template("macos-26", &[])]);
        offline.ready = false;
        let mut cordoned = agent(0, 2, vec![template("macos-26", &[])]);
        cordoned.cordoned = true;
        let result = place(
            &SchedulerConfig::default(),
            &[full, offline, cordoned.clone()],
            &[],
            SMALL,
        );
        match result {
            Err(PlacementError::NoRoomNow(why)) => {
                assert_eq!(why, "3 matching agent(s): 1 full, 1 offline, 1 cordoned")
            }
            other => panic!("{other:?}"),
        }
        // Uncordoned, the idle agent is the one.
        cordoned.cordoned = false;
        let placed =
            place(&SchedulerConfig::default(), &[cordoned.clone()], &[], SMALL).expect("placed");
        assert_eq!(placed.agent_id, cordoned.agent_id);
    }

    #[test]
    fn memory_is_a_limit_as_well_as_slots() {
        let mut tight = agent(1, 4, vec![template("t", &[])]);
        tight.memory_mib = 6000;
        let result = place(&SchedulerConfig::default(), &[tight], &[], SMALL);
        assert!(
            matches!(result, Err(PlacementError::NoRoomNow(_))),
            "{result:?}"
        );
    }

    #[test]
    fn unservable_labels_or_sizes_never_fit() {
        let a = agent(0, 2, vec![template("macos-26", &["macos", "arm64"])]);
        let config = SchedulerConfig::default();
        let result = place(
            &config,
            std::slice::from_ref(&a),
            &labels(&["windows"]),
            SMALL,
        );
        assert!(
            matches!(result, Err(PlacementError::NeverFits(_))),
            "{result:?}"
        );
        let huge = ResourceSpec {
            vcpus: 64,
            memory_mib: 4096,
        };
        let result = place(&config, &[a], &[], huge);
        assert!(
            matches!(result, Err(PlacementError::NeverFits(_))),
            "{result:?}"
        );
    }

    #[test]
    fn labels_match_names_or_template_labels_and_default_applies_when_none() {
        let a = agent(
            0,
            2,
            vec![template("linux", &[]), template("macos-26", &["macos"])],
        );
        let mut config = SchedulerConfig::default();
        let by_label = place(
            &config,
            std::slice::from_ref(&a),
            &labels(&["MacOS"]),
            SMALL,
        )
        .expect("placed");
        assert_eq!(by_label.template, "macos-26");
        let by_name = place(
            &config,
            std::slice::from_ref(&a),
            &labels(&["linux"]),
            SMALL,
        )
        .expect("placed");
        assert_eq!(by_name.template, "linux");
        config.default_template = Some("macos-26".into());
        let default = place(&config, &[a], &labels(&["self-hosted"]), SMALL).expect("placed");
        assert_eq!(default.template, "macos-26");
    }

    #[test]
    fn the_template_with_the_fewest_unrequested_labels_wins() {
        let warm_first = vec![
            template("guest-warm", &["linux", "warm"]),
            template("guest", &["linux"]),
        ];
        let a = agent(0, 2, warm_first);
        let config = SchedulerConfig::default();
        let plain = place(
            &config,
            std::slice::from_ref(&a),
            &labels(&["linux"]),
            SMALL,
        )
        .expect("placed");
        assert_eq!(plain.template, "guest");
        let warm = place(&config, &[a], &labels(&["linux", "warm"]), SMALL).expect("placed");
        assert_eq!(warm.template, "guest-warm");
    }

    #[test]
    fn the_labels_myshoes_and_github_use_are_served() {
        let a = agent(
            0,
            2,
            vec![
                template("macos-26", &["macos"]),
                template("linux", &["linux"]),
            ],
        );
        let config = SchedulerConfig::default();
        let mut default_linux = config.clone();
        default_linux.default_template = Some("linux".into());
        for (request, expected) in [
            (&["myshoes"][..], "linux"),
            (&["dependabot"][..], "linux"),
            (&["self-hosted", "MYSHOES", "Dependabot"][..], "linux"),
            (&["self-hosted", "Linux", "X64"][..], "linux"),
            (&["self-hosted", "linux", "x64"][..], "linux"),
            (&["self-hosted", "macOS", "ARM64"][..], "macos-26"),
        ] {
            let placed = place(
                &default_linux,
                std::slice::from_ref(&a),
                &labels(request),
                SMALL,
            )
            .unwrap_or_else(|e| panic!("{request:?}: {e}"));
            assert_eq!(placed.template, expected, "{request:?}");
        }
        let arm_linux = place(&config, &[a], &labels(&["Linux", "ARM64"]), SMALL);
        assert!(
            matches!(arm_linux, Err(PlacementError::NeverFits(_))),
            "{arm_linux:?}"
        );
    }

    #[test]
    fn no_agents_is_its_own_retryable_error() {
        assert_eq!(
            place(&SchedulerConfig::default(), &[], &[], SMALL),
            Err(PlacementError::NoAgents)
        );
    }
}
